//! Real tools read our vmcores: readelf lists every note and PT_LOAD, and
//! pyelftools parses the file independently.

mod common;

use std::process::Command;

use common::*;

fn tool(cmd: &str, args: &[&str]) -> Option<String> {
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            assert!(
                o.status.success(),
                "{cmd} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(String::from_utf8_lossy(&o.stdout).into_owned())
        }
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: {cmd}: {e}");
            None
        }
        Err(e) => panic!("{cmd} is required in CI: {e}"),
    }
}

#[test]
fn readelf_lists_every_note_and_load() {
    let dir = test_dir("readelf");
    let path = dump(&guest(&[0, 1, 2, 3], &[]), &dir);
    let p = path.to_str().expect("utf8 path");
    let Some(notes) = tool("readelf", &["-n", p]) else {
        return;
    };
    let count = |needle: &str| {
        notes
            .lines()
            .filter(|l| l.trim_start().starts_with(needle))
            .count()
    };
    assert_eq!(count("CORE "), 4, "{notes}");
    assert_eq!(count("QEMU "), 4, "{notes}");
    assert_eq!(count("VMMVMX "), 4, "{notes}");
    assert_eq!(count("VMCOREINFO "), 1, "{notes}");
    assert_eq!(count("VMMPVPANIC "), 1, "{notes}");
    assert!(notes.contains("NT_PRSTATUS"), "{notes}");

    let Some(loads) = tool("readelf", &["-lW", p]) else {
        return;
    };
    let load_lines: Vec<&str> = loads
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .collect();
    assert_eq!(load_lines.len(), 3, "{loads}");
    assert!(load_lines[1].contains("0xffffffff80000000"), "{loads}");
    assert!(load_lines[1].contains("0x0000000001000000"), "{loads}");
    assert!(loads.contains("NOTE"));
    assert!(loads.contains("CORE (Core file)"));
}

#[test]
fn pyelftools_parses_notes_and_loads() {
    let dir = test_dir("pyelftools");
    let g = guest(&[0, 1, 2, 3], &[]);
    let path = dump(&g, &dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/check_vmcore.py");
    let Some(out) = tool("python3", &[script, path.to_str().expect("utf8")]) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&out).expect("script prints JSON");
    assert_eq!(v["class"], 64);
    assert_eq!(v["type"], "ET_CORE");
    assert_eq!(v["machine"], "EM_X86_64");
    let notes = v["notes"].as_array().expect("notes");
    let named = |n: &str| notes.iter().filter(|x| x["name"] == n).collect::<Vec<_>>();
    let core = named("CORE");
    assert_eq!(core.len(), 4);
    for (i, n) in core.iter().enumerate() {
        assert_eq!(n["pr_pid"], i as u64 + 1);
        assert_eq!(n["rip"], g.cpus[i].rip);
    }
    assert_eq!(named("QEMU").len(), 4);
    assert!(named("QEMU").iter().all(|n| n["descsz"] == 440));
    assert_eq!(named("VMMVMX").len(), 4);
    assert!(named("VMMVMX").iter().all(|n| n["descsz"] == 40));
    assert_eq!(named("VMCOREINFO").len(), 1);
    assert_eq!(named("VMMPVPANIC").len(), 1);
    assert_eq!(named("VMMPVPANIC")[0]["descsz"], 16 + 2 * 24);

    let loads = v["loads"].as_array().expect("loads");
    assert_eq!(loads.len(), 3);
    assert_eq!(loads[1]["paddr"], HIGH_GPA);
    assert_eq!(loads[1]["vaddr"], HIGH_VA);
    assert_eq!(loads[1]["head"], hex(b"high-half-bytes!"));
    assert_eq!(loads[0]["memsz"], 4u64 << 20);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn gdb_shows_one_thread_per_vcpu_and_reads_high_half() {
    let dir = test_dir("gdb");
    let g = guest(&[0, 1, 2, 3], &[]);
    let path = dump(&g, &dir);
    let Some(out) = tool(
        "gdb",
        &[
            "-nx",
            "-batch",
            "-ex",
            "info threads",
            "-ex",
            "x/2gx 0xffffffff80000000",
            "-c",
            path.to_str().expect("utf8"),
        ],
    ) else {
        return;
    };
    for (i, c) in g.cpus.iter().enumerate() {
        let line = format!("LWP {}", i + 1);
        let rip = format!("{:#018x}", c.rip);
        assert!(
            out.lines().any(|l| l.contains(&line) && l.contains(&rip)),
            "{line} at {rip} missing:\n{out}"
        );
    }
    // "high-half-bytes!" as two little-endian u64.
    assert!(
        out.contains("0x6c61682d68676968\t0x2173657479622d66"),
        "{out}"
    );
}
