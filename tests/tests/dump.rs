//! Guest memory dumps of the real guest through the library API
//! (`VmmHandle::dump_guest_memory`), read back by our checker and by real
//! tools (readelf, pyelftools, gdb), and the VM's state around a dump.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use tests::{gdb_all_threads, summary, tool, GuestRun, DEFAULT_TIMEOUT};
use vmcore::{CheckOptions, Verdict, Vmcore};
use vmm::{DumpError, DumpRequest, DumpState, Notification, RunState};

const CPUS: u32 = 4;
const GUEST_RAM: u64 = 256 << 20;
/// RIP's index in x86_64 `user_regs_struct` (elf_prstatus.pr_reg).
const PR_REG_RIP: usize = 16;

/// A fresh, empty directory for one test's files.
fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-dump-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// Boots the embedded guest on 4 vCPUs and waits until all are online.
fn boot_four() -> GuestRun {
    let mut run = GuestRun::boot(CPUS, "");
    let line = run.wait_for_line("CPUs online:");
    assert!(line.contains(&summary(CPUS)), "{line:?}");
    run
}

fn dump(run: &GuestRun, path: &Path) -> vmcore::DumpStats {
    run.handle()
        .dump_guest_memory(DumpRequest::new(path))
        .expect("dump")
        .expect("a blocking dump returns its statistics")
}

/// Notifications received so far, without waiting.
fn drain(rx: &Receiver<Notification>) -> Vec<Notification> {
    rx.try_iter().collect()
}

#[test]
fn four_vcpu_dump_is_read_by_the_checker_and_real_tools() {
    let dir = test_dir("four");
    let run = boot_four();
    let path = dir.join("vmcore.elf");
    let stats = dump(&run, &path);
    assert_eq!(stats.ram_bytes, GUEST_RAM);
    assert_eq!(run.handle().status().unwrap().state, RunState::Running);

    // Our reader and checker: host notes for every vCPU; this guest never
    // panicked, so its crash notes are missing (not corrupt) and the check
    // fails.
    let core = Vmcore::open(&path).expect("the dump parses");
    let hosts = core.host_cpus();
    assert_eq!(hosts.len(), CPUS as usize);
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h.vcpu, i as u32);
        assert!(h.prstatus.is_some() && h.qemu.is_some(), "vcpu {i}: {h:?}");
    }
    let report = vmcore::check(&core, &CheckOptions::default());
    assert!(!report.ok, "{}", report.render());
    assert_eq!(report.vcpus.len(), CPUS as usize, "{}", report.render());
    for v in &report.vcpus {
        assert_eq!(v.host_note.verdict, Verdict::Pass, "{}", report.render());
        assert_eq!(
            v.guest_note.verdict,
            Verdict::Missing,
            "{}",
            report.render()
        );
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let cmd = vmm::vmcore_cmd::VmcoreCommand::Check {
        file: path.clone(),
        json: false,
    };
    assert_eq!(vmm::vmcore_cmd::run(&cmd, &mut out, &mut err), 1);
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("MISSING") && !out.contains("CORRUPT"), "{out}");
    assert!(err.is_empty());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let cmd = vmm::vmcore_cmd::VmcoreCommand::Info {
        file: path.clone(),
        kernel: None,
        json: false,
    };
    assert_eq!(vmm::vmcore_cmd::run(&cmd, &mut out, &mut err), 0);
    let info = String::from_utf8(out).unwrap();
    assert!(info.contains("memory: "), "{info}");

    // The file is sparse: an idle 256 MiB guest touches little memory.
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.len() >= GUEST_RAM, "{} bytes", meta.len());
    let on_disk = meta.blocks() * 512;
    assert!(on_disk < GUEST_RAM / 8, "{on_disk} bytes on disk");

    let p = path.to_str().unwrap();
    let notes = tool("readelf", &["-n", p]);
    let count = |needle: &str| notes.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("NT_PRSTATUS"), CPUS as usize, "{notes}");
    assert_eq!(
        notes
            .lines()
            .filter(|l| l.trim_start().starts_with("QEMU"))
            .count(),
        CPUS as usize,
        "{notes}"
    );

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vmcore/tests/check_vmcore.py"
    );
    let parsed: serde_json::Value =
        serde_json::from_str(&tool("python3", &[script, p])).expect("script prints JSON");
    let notes = parsed["notes"].as_array().expect("notes");
    let pids: Vec<i64> = notes
        .iter()
        .filter(|n| n["name"] == "CORE")
        .map(|n| n["pr_pid"].as_i64().expect("pr_pid"))
        .collect();
    assert_eq!(pids, [1, 2, 3, 4], "{parsed}");
    for (n, h) in notes.iter().filter(|n| n["name"] == "CORE").zip(&hosts) {
        let rip = h.prstatus.as_ref().unwrap().pr_reg[PR_REG_RIP];
        assert_eq!(n["rip"].as_u64(), Some(rip));
    }
    let loaded: u64 = parsed["loads"]
        .as_array()
        .expect("loads")
        .iter()
        .map(|l| l["memsz"].as_u64().unwrap())
        .sum();
    assert_eq!(loaded, GUEST_RAM);

    // gdb: one thread per vCPU, each stopped in a named guest function.
    let bt = gdb_all_threads(&path, CPUS);
    // The innermost frame of each "Thread N (LWP N):" section.
    let mut top_frames = Vec::new();
    let mut in_thread = false;
    for l in bt.lines() {
        if l.starts_with("Thread ") {
            in_thread = true;
        } else if in_thread && l.starts_with("#0 ") {
            top_frames.push(l);
            in_thread = false;
        }
    }
    assert_eq!(top_frames.len(), CPUS as usize, "{bt}");
    for f in &top_frames {
        assert!(
            f.contains(" in ") && !f.contains("??"),
            "unsymbolised frame {f:?}:\n{bt}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_running_guest_runs_again_and_a_paused_one_stays_paused() {
    let dir = test_dir("states");
    let run = boot_four();
    let h = run.handle();
    let events = h.subscribe();

    dump(&run, &dir.join("running.elf"));
    assert_eq!(h.status().unwrap().state, RunState::Running);
    let seen = drain(&events);
    // The guest's own events (VMCOREINFO registered after the summary
    // line) may come in between; the VM states come in order.
    let first_state = seen.iter().find(|n| !matches!(n, Notification::Guest(_)));
    assert_eq!(first_state, Some(&Notification::Paused), "{seen:?}");
    assert!(seen.contains(&Notification::Resumed), "{seen:?}");
    assert!(
        seen.iter()
            .any(|n| matches!(n, Notification::DumpCompleted { result: Ok(_), .. })),
        "{seen:?}"
    );

    h.pause().unwrap();
    dump(&run, &dir.join("paused.elf"));
    assert_eq!(h.status().unwrap().state, RunState::Paused);
    let seen = drain(&events);
    assert!(!seen.contains(&Notification::Resumed), "{seen:?}");
    h.resume().unwrap();
    assert_eq!(h.status().unwrap().state, RunState::Running);

    // Both dumps hold the same CPUs; query-dump reports the last one.
    for name in ["running.elf", "paused.elf"] {
        let core = Vmcore::open(&dir.join(name)).unwrap();
        assert_eq!(core.host_cpus().len(), CPUS as usize);
    }
    let q = h.query_dump();
    assert_eq!(q.status, DumpState::Completed);
    assert_eq!((q.completed, q.total), (GUEST_RAM, GUEST_RAM));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_detached_dump_reports_completion_by_notification() {
    let dir = test_dir("detach");
    let run = boot_four();
    let h = run.handle();
    let events = h.subscribe();
    let path = dir.join("detached.elf");
    let started = h
        .dump_guest_memory(DumpRequest {
            path: path.clone(),
            paging: false,
            detach: true,
        })
        .expect("dump starts");
    assert_eq!(started, None);
    let stats = loop {
        match events.recv_timeout(DEFAULT_TIMEOUT).expect("DumpCompleted") {
            Notification::DumpCompleted { path: p, result } => {
                assert_eq!(p, path);
                break result.expect("the dump succeeded");
            }
            _ => continue,
        }
    };
    assert_eq!(h.query_dump().status, DumpState::Completed);
    let core = Vmcore::open(&path).unwrap();
    assert_eq!(core.loads().len() as u64, stats.loads);
    // paging: false gives no virtual addresses.
    assert!(core.loads().iter().all(|l| l.vaddr == 0));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_dump_to_an_unwritable_place_fails_cleanly_and_the_vm_goes_on() {
    let dir = test_dir("unwritable");
    let run = boot_four();
    let h = run.handle();
    // A missing directory, and /proc, where nobody (not even root) may
    // create files.
    for path in [
        dir.join("missing").join("vmcore.elf"),
        PathBuf::from("/proc/vmm-dump-test.elf"),
    ] {
        let e = h
            .dump_guest_memory(DumpRequest::new(&path))
            .expect_err("the dump must fail");
        assert!(matches!(e, DumpError::Write(_)), "{e:?}");
        assert!(!path.exists(), "{path:?} left behind");
        assert_eq!(h.status().unwrap().state, RunState::Running);
        assert_eq!(h.query_dump().status, DumpState::Failed);
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    // Still usable: the next dump works.
    dump(&run, &dir.join("after.elf"));
    assert_eq!(h.query_dump().status, DumpState::Completed);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn after_a_guest_panic_gdb_sees_the_panicking_cpu_in_panic() {
    let dir = test_dir("panic");
    // Panic action none: the VM must outlive the panic to be dumped.
    let mut run = GuestRun::start(vmm::VmConfig {
        cpus: CPUS,
        cmdline: "crash_after_boot=PANIC@2".into(),
        on_panic: qmp::PanicAction::None,
        ..vmm::VmConfig::default()
    });
    run.wait_for_line("Kernel panic - not syncing");
    run.wait_for_line("---[ end Kernel panic");
    let path = dir.join("vmcore.elf");
    dump(&run, &path);
    let p = path.to_str().unwrap();
    let bt = tool(
        "gdb",
        &[
            "-nx",
            "-batch",
            "-ex",
            "thread apply all bt",
            vmm::GUEST_KERNEL_PATH,
            p,
        ],
    );
    // CPU 2 is LWP 3 (pr_pid = vCPU + 1).
    let thread = bt
        .split("\nThread ")
        .find(|t| t.starts_with("3 (LWP 3)"))
        .unwrap_or_else(|| panic!("no thread for CPU 2:\n{bt}"));
    assert!(
        thread
            .lines()
            .any(|l| l.contains(" in guest_kernel::panic::panic")),
        "CPU 2's backtrace does not go through panic:\n{bt}"
    );
    // The others were stopped and park in the stop loop.
    for lwp in [1, 2, 4] {
        let t = bt
            .split("\nThread ")
            .find(|t| t.starts_with(&format!("{lwp} (LWP {lwp})")))
            .unwrap_or_else(|| panic!("no LWP {lwp}:\n{bt}"));
        assert!(
            t.lines()
                .any(|l| l.starts_with("#0 ") && l.contains("stop_loop")),
            "LWP {lwp} is not in the stop loop:\n{bt}"
        );
    }
    // No VMCOREINFO device yet: the checker cannot find the guest's notes,
    // and says they are missing (not corrupt).
    let core = Vmcore::open(&path).unwrap();
    let report = vmcore::check(&core, &CheckOptions::default());
    assert!(!report.ok);
    for v in &report.vcpus {
        assert_eq!(v.host_note.verdict, Verdict::Pass, "{}", report.render());
        assert_ne!(
            v.guest_note.verdict,
            Verdict::Corrupt,
            "{}",
            report.render()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
