//! `vmm scenario run` as a user runs it: the real binary over small
//! scenario files (tests/scenarios/), each booting the real guest under
//! KVM. Asserts on the table, the JSON and the exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name)
}

fn scenario_run(args: &[&str]) -> Output {
    Command::new(VMM)
        .args(["scenario", "run", "--timeout", "60"])
        .args(args)
        .output()
        .expect("run vmm")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The table row of scenario `name`, split into its cells.
fn cells(table: &str, name: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"));
    // Cells are separated by two or more spaces ("PANICKED (no kdump)" has one).
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn host_dump_and_pause_rows_match_their_expectations() {
    let json = std::env::temp_dir().join(format!("vmm-scenario-cli-{}.json", std::process::id()));
    let coredump = fixture("coredump.toml");
    let pause = fixture("pause.toml");
    let out = scenario_run(&[
        coredump.to_str().unwrap(),
        pause.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let header = stdout.lines().next().unwrap();
    for column in [
        "scenario",
        "pvpanic",
        "vmcore",
        "saved",
        "vmx off",
        "kmsg",
        "panic->vmcore",
        "result",
    ] {
        assert!(header.contains(column), "{header}");
    }

    // PANICKED with no crash kernel: the VMM's own host-side vmcore, with no
    // guest crash notes (smp_send_stop saves nothing) and VMX still on.
    let row = cells(&stdout, "coredump");
    assert_eq!(
        row[1..6],
        ["PANICKED (no kdump)", "host", "0/2", "0/2", "no"],
        "{stdout}"
    );
    assert!(row[6].ends_with(" ms"), "{row:?}");
    assert_eq!(row[7], "match");

    // Paused on PANICKED before kdump: no vmcore; the runner's dump (marked
    // *) shows nothing was saved.
    let row = cells(&stdout, "pause");
    assert_eq!(
        row[1..8],
        [
            "PANICKED (no kdump)",
            "none",
            "0/2*",
            "0/2*",
            "no",
            "-",
            "match"
        ],
        "{stdout}"
    );
    assert!(stdout.contains("* no vmcore was produced"), "{stdout}");
    assert!(stderr.contains("scenario 2/2 pause: ok"), "{stderr}");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).unwrap();
    std::fs::remove_file(&json).unwrap();
    assert_eq!(v["ok"], true);
    let rows = v["scenarios"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "coredump");
    assert_eq!(rows[0]["vmcore"], "host");
    assert_eq!(rows[0]["runner_dump"], false);
    assert!(rows[0]["panic_to_vmcore_ms"].as_u64().unwrap() < 20_000);
    assert_eq!(rows[1]["vmcore"], "none");
    assert_eq!(rows[1]["runner_dump"], true);
    assert_eq!(rows[1]["saved"], "0/2");
    assert!(rows[1]["panic_to_vmcore_ms"].is_null());
}

#[test]
fn a_mismatch_exits_1_and_names_each_field() {
    let wrong = fixture("wrong.toml");
    let out = scenario_run(&[wrong.to_str().unwrap(), "--json", "-"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    // --json -: JSON on stdout, the table on stderr.
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(v["ok"], false);
    let fields: Vec<&str> = v["scenarios"][0]["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["saved", "kmsg"], "{stdout}");
    assert!(stderr.contains("MISMATCH(saved,kmsg)"), "{stderr}");
    assert!(
        stderr.contains("wrong: saved: expected 2/2, got 0/2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("wrong: kmsg: expected yes, got no"),
        "{stderr}"
    );
}

#[test]
fn bad_files_exit_2_naming_file_and_key() {
    let dir = std::env::temp_dir().join(format!("vmm-scenario-cli-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = std::fs::read_to_string(fixture("coredump.toml")).unwrap();
    for (name, body, needle) in [
        (
            "key.toml",
            base.replace("cpu = 1", "cpu = 1\nspeed = 3"),
            "speed",
        ),
        (
            "type.toml",
            base.replace("\"PANIC\"", "\"MELTDOWN\""),
            "MELTDOWN",
        ),
        (
            "cpu.toml",
            base.replace("cpu = 1", "cpu = 9"),
            "crash.cpu 9",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        let out = scenario_run(&[path.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(name) && stderr.contains(needle), "{stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing runs");
    }
    let out = scenario_run(&[dir.join("missing.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}
