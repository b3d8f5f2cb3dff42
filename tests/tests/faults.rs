//! Fault injection (issue 7): the guest misbehaves on purpose through its
//! test-only `fault_*=` knobs (guest-kernel/README.md), or the host side
//! fails under a dump. In every case the VMM stays up and answers, a vmcore
//! is produced (a host-side dump where the guest cannot help), and the
//! checker names the precise cause.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::{
    check_named, next_event, qmp_connect, socket_path, summary, vmm_binary, GuestRun, VmmProcess,
    DEFAULT_TIMEOUT,
};
use vmcore::{CheckOptions, CheckReport, Verdict, Vmcore};
use vmm::{DumpRequest, Notification, RunState, VmConfig};

const CPUS: u32 = 4;

/// A scratch directory for a test's vmcores, removed when the test passes
/// (kept after a failure, for inspection).
struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn test_dir(name: &str) -> TestDir {
    let dir = std::env::temp_dir().join(format!("vmm-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    TestDir(dir)
}

/// Boots 4 vCPUs with `cmdline` under panic action `none` (the guest's
/// panic path runs to wherever it ends) and waits for the summary line.
fn boot(cmdline: &str) -> GuestRun {
    let mut run = GuestRun::start(VmConfig {
        cpus: CPUS,
        cmdline: cmdline.to_string(),
        on_panic: qmp::PanicAction::None,
        ..VmConfig::default()
    });
    let line = run.wait_for_line("CPUs online:");
    assert!(line.contains(&summary(CPUS)), "{line:?}");
    // Crashes injected before VMCOREINFO is registered leave dumps the
    // checker cannot read guest notes from.
    run.wait_for_line("vmcoreinfo: note at");
    run
}

/// A host-side dump of the running VM, checked.
fn dump_and_check(run: &GuestRun, dir: &Path, name: &str) -> (Vmcore, CheckReport) {
    let path = dir.join(name);
    run.handle()
        .dump_guest_memory(DumpRequest::new(&path))
        .expect("dump");
    let core = Vmcore::open(&path).expect("the dump parses");
    let report = vmcore::check(&core, &CheckOptions::default());
    (core, report)
}

fn vcpu(report: &CheckReport, n: u32) -> &vmcore::VcpuCheck {
    report
        .vcpus
        .iter()
        .find(|v| v.vcpu == n)
        .unwrap_or_else(|| panic!("no vcpu {n} in\n{}", report.render()))
}

/// Asserts CPUs `saved` have valid guest notes, are parked and left VMX.
fn assert_saved(report: &CheckReport, saved: &[u32]) {
    for &c in saved {
        let v = vcpu(report, c);
        assert_eq!(v.guest_note.verdict, Verdict::Pass, "{}", report.render());
        assert_eq!(
            v.guest_context.verdict,
            Verdict::Pass,
            "{}",
            report.render()
        );
        assert_eq!(v.vmx.verdict, Verdict::Pass, "{}", report.render());
        assert_eq!(v.host_parked.verdict, Verdict::Pass, "{}", report.render());
    }
}

/// `vmm vmcore <sub> <file>`: exit code and stdout.
fn vmcore_cmd(sub: &str, file: &Path) -> (i32, String) {
    let out = Command::new(vmm_binary())
        .args(["vmcore", sub])
        .arg(file)
        .output()
        .expect("run vmm vmcore");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn only_vmcore_in(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dump dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "expected one vmcore in {dir:?}: {files:?}");
    assert!(
        files[0]
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vmcore-") && n.ends_with(".elf")),
        "{files:?}"
    );
    files[0].clone()
}

/// `vmm run` with QMP and a dump directory, booted to the summary line.
fn spawn_vmm(
    name: &str,
    dir: &Path,
    cpus: u32,
    extra: &[&str],
    cmdline: &str,
) -> (VmmProcess, PathBuf) {
    let socket = socket_path(name);
    let cpus_s = cpus.to_string();
    let mut args = vec![
        "run",
        "--cpus",
        &cpus_s,
        "--serial",
        "stdio",
        "--api-socket",
        socket.to_str().expect("utf-8 path"),
        "--dump-dir",
        dir.to_str().expect("utf-8 path"),
        "--cmdline",
        cmdline,
    ];
    args.extend_from_slice(extra);
    let mut vm = VmmProcess::spawn(&args);
    vm.wait_for_guest(&summary(cpus));
    vm.wait_for_guest("vmcoreinfo: note at");
    (vm, socket)
}

// --- corrupted crash notes and VMCOREINFO --------------------------------

#[test]
fn a_corrupted_crash_note_is_named_by_cpu_and_field() {
    let dir = test_dir("note");
    for (field, want) in [
        ("name", "note name \"XORE\\0\", expected \"CORE\""),
        ("descsz", "n_descsz 100, expected 336"),
        ("pid", "pr_pid 103 in vCPU 2's note, expected 3"),
    ] {
        let mut run = boot(&format!(
            "crash_kexec_post_notifiers fault_note=2:{field} crash_after_boot=PANIC"
        ));
        run.wait_for_line("faults: corrupted the crash note of CPU 2");
        run.wait_for_line("end Kernel panic");
        let (_, report) = dump_and_check(&run, &dir, &format!("{field}.elf"));
        let v = vcpu(&report, 2);
        assert_eq!(
            v.guest_note.verdict,
            Verdict::Corrupt,
            "{}",
            report.render()
        );
        assert!(
            v.guest_note.detail.contains(want),
            "{field}: {:?}",
            v.guest_note
        );
        assert!(
            report
                .failures
                .iter()
                .any(|f| f.starts_with("vcpu 2: guest_note: CORRUPT") && f.contains(want)),
            "{:?}",
            report.failures
        );
        // The other stopped CPUs are untouched.
        assert_saved(&report, &[1, 3]);
    }
}

#[test]
fn a_corrupted_vmcoreinfo_is_named_by_key() {
    let dir = test_dir("vmcoreinfo");
    let mut run = boot("fault_vmcoreinfo=crash_notes");
    run.wait_for_line("faults: VMCOREINFO corrupted");
    let (_, report) = dump_and_check(&run, &dir, "crash_notes.elf");
    let c = check_named(&report, "vmcoreinfo");
    assert_eq!(c.verdict, Verdict::Corrupt, "{}", report.render());
    assert!(
        c.detail.contains("SYMBOL(crash_notes)=\"zzzzz") && c.detail.contains("not a hex address"),
        "{c:?}"
    );
    assert!(vcpu(&report, 0)
        .guest_note
        .detail
        .contains("SYMBOL(crash_notes)"));
    drop(run);

    let mut run = boot("fault_vmcoreinfo=nr_cpus");
    run.wait_for_line("faults: VMCOREINFO corrupted");
    let (_, report) = dump_and_check(&run, &dir, "nr_cpus.elf");
    let c = check_named(&report, "cpu_sets_agree");
    assert_eq!(c.verdict, Verdict::Fail, "{}", report.render());
    assert!(
        c.detail
            .contains("VMCOREINFO NUMBER(nr_cpus)=9, but the host has 4 vCPUs"),
        "{c:?}"
    );
}

// --- a triple fault in the middle of a panic --------------------------

#[test]
fn a_triple_fault_mid_panic_is_dumped_and_named() {
    let dir = test_dir("triple");
    let (mut vm, socket) = spawn_vmm(
        "triple",
        &dir,
        2,
        &["--on-panic", "coredump-destroy"],
        "fault_triple_fault",
    );
    let mut c = qmp_connect(&socket);
    c.execute("x-inject-crash", Some(json!({"type": "PANIC", "cpu": 1})))
        .expect("inject");
    let e = next_event(&mut c, "GUEST_FAULT");
    let data = e.data.clone().unwrap_or_default();
    assert_eq!(data["cpu"], 1, "{e:?}");
    let reason = data["reason"].as_str().expect("reason");
    // A hardware-virtualised host triple-faults; this host's emulating KVM
    // may give up earlier with an emulation failure.
    assert!(
        reason.contains("triple fault") || reason.contains("internal error"),
        "{reason}"
    );
    assert!(data["rip"].as_u64().is_some_and(|r| r > 0x100000), "{e:?}");
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT), vmm::exit_code::GUEST_FAULT);
    let core = only_vmcore_in(&dir);

    let (code, out) = vmcore_cmd("check", &core);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("guest_fault     FAIL     vCPU 1: "), "{out}");
    assert!(
        out.contains(
            "did not finish: last in step panic_notifier_list, notifier fault_triple_fault"
        ),
        "{out}"
    );
    let (code, out) = vmcore_cmd("info", &core);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("guest fault: vCPU 1: ") && out.contains("triple_fault_notifier"),
        "{out}"
    );
}

#[test]
fn a_triple_fault_under_pause_keeps_the_vm_for_inspection() {
    let dir = test_dir("triple-pause");
    let mut run = GuestRun::start(VmConfig {
        cpus: 2,
        cmdline: "fault_triple_fault".into(),
        on_panic: qmp::PanicAction::Pause,
        ..VmConfig::default()
    });
    run.wait_for_line("vmcoreinfo: note at");
    run.handle().inject_crash("PANIC", Some(0)).expect("inject");
    run.wait_notification("pause after the fault", DEFAULT_TIMEOUT, |n| {
        matches!(n, Notification::Paused)
    });
    let status = run.handle().status().expect("the VMM still answers");
    assert_eq!(status.state, RunState::GuestPanicked);
    assert!(run.handle().resume().is_err(), "cont must be refused");
    let (core, report) = dump_and_check(&run, &dir, "paused.elf");
    let fault = core
        .guest_fault()
        .expect("VMMFAULT note")
        .expect("well-formed");
    assert_eq!(fault.vcpu, 0);
    assert_eq!(check_named(&report, "guest_fault").verdict, Verdict::Fail);
}

// --- panics in NMI context ---------------------------------------------

#[test]
fn a_panic_in_the_nmi_handler_completes_and_saves_the_others() {
    let dir = test_dir("nmi-panic");
    let mut run = boot("crash_kexec_post_notifiers");
    run.handle()
        .inject_crash("NMI_PANIC", Some(1))
        .expect("inject");
    run.wait_for_line("Kernel panic - not syncing: lkdtm: NMI_PANIC");
    run.wait_for_line("end Kernel panic");
    let (_, report) = dump_and_check(&run, &dir, "nmi.elf");
    assert_saved(&report, &[0, 2, 3]);
    // The panicking CPU saves its own note only in crash_kexec (no
    // crashkernel= here): the checker says so and nothing else.
    assert_eq!(vcpu(&report, 1).guest_note.verdict, Verdict::Missing);
    assert_eq!(check_named(&report, "panic_path").verdict, Verdict::Pass);
    assert!(
        report.failures.iter().all(|f| f.starts_with("vcpu 1: ")),
        "{:?}",
        report.failures
    );
}

#[test]
fn a_nested_panic_in_the_crash_nmi_callback_still_saves_that_cpu() {
    let dir = test_dir("nmi-callback");
    let mut run = boot("crash_kexec_post_notifiers fault_nmi_callback_panic=2");
    run.handle().inject_crash("PANIC", Some(0)).expect("inject");
    run.wait_for_line("faults: CPU 2 panics in the crash NMI callback");
    run.wait_for_line("end Kernel panic");
    let (_, report) = dump_and_check(&run, &dir, "callback.elf");
    // CPU 2 lost the race to panic, stopped itself in NMI context and ran
    // the callback again on its own registers.
    assert_saved(&report, &[1, 2, 3]);
    assert!(
        report.failures.iter().all(|f| f.starts_with("vcpu 0: ")),
        "{:?}",
        report.failures
    );
}

// --- notifiers that fault or hang, without crashkernel -----------------

#[test]
fn a_faulting_notifier_is_a_nested_panic_the_checker_names() {
    let dir = test_dir("notifier-fault");
    let mut run = boot("crash_kexec_post_notifiers");
    run.handle()
        .inject_crash("NOTIFIER_FAULT", Some(0))
        .expect("inject");
    run.wait_for_line("panic: nested panic during");
    run.wait_for_line("end Kernel panic");
    let (_, report) = dump_and_check(&run, &dir, "fault.elf");
    let c = check_named(&report, "panic_path");
    assert_eq!(c.verdict, Verdict::Fail, "{}", report.render());
    assert!(
        c.detail
            .contains("1 nested panic(s): during panic_notifier_list: Fatal exception"),
        "{c:?}"
    );
    assert_saved(&report, &[1, 2, 3]);
}

#[test]
fn a_hanging_notifier_leaves_a_coredump_that_names_where_it_stopped() {
    let dir = test_dir("notifier-hang");
    let (mut vm, socket) = spawn_vmm(
        "hang",
        &dir,
        CPUS,
        &["--on-panic", "coredump-destroy"],
        "crash_kexec_post_notifiers",
    );
    let mut c = qmp_connect(&socket);
    c.execute(
        "x-inject-crash",
        Some(json!({"type": "NOTIFIER_HANG", "cpu": 0})),
    )
    .expect("inject");
    // pvpanic (the first notifier) reports PANICKED; the coredump action
    // dumps while the next notifier hangs, then ends the VM.
    next_event(&mut c, "GUEST_PANICKED");
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT), 0);
    let core = Vmcore::open(&only_vmcore_in(&dir)).expect("parses");
    let report = vmcore::check(&core, &CheckOptions::default());
    let p = check_named(&report, "panic_path");
    assert_eq!(p.verdict, Verdict::Fail, "{}", report.render());
    assert!(
        p.detail
            .contains("did not finish: last in step panic_notifier_list"),
        "{p:?}"
    );
    // What was lost: the panicking CPU's own registers and VMX teardown.
    let v = vcpu(&report, 0);
    assert_eq!(v.guest_note.verdict, Verdict::Missing);
    assert_eq!(v.vmx.verdict, Verdict::Fail);
    assert_saved(&report, &[1, 2, 3]);
}

// --- a CPU that never acknowledges the crash NMI -----------------------

#[test]
fn a_cpu_deaf_to_the_crash_nmi_is_named() {
    let dir = test_dir("deaf");
    let mut run = boot("crash_kexec_post_notifiers fault_nmi_deaf=3");
    run.wait_for_line("faults: CPU 3 is halted in its NMI handler");
    run.handle().inject_crash("PANIC", Some(0)).expect("inject");
    run.wait_for_line("crash: CPU 3 did not respond to NMI");
    run.wait_for_line("end Kernel panic");
    let (_, report) = dump_and_check(&run, &dir, "deaf.elf");
    let v = vcpu(&report, 3);
    assert_eq!(
        v.guest_note.verdict,
        Verdict::Missing,
        "{}",
        report.render()
    );
    assert!(
        v.guest_note
            .detail
            .contains("did not respond to the crash NMI"),
        "{:?}",
        v.guest_note
    );
    assert_eq!(v.host_parked.verdict, Verdict::Fail);
    assert_saved(&report, &[1, 2]);
}

// --- garbage to every device, and a serial flood -------------------------

#[test]
fn garbage_to_every_device_is_survived_and_a_later_crash_still_dumps() {
    let dir = test_dir("garbage");
    let mut run = boot("crash_kexec_post_notifiers fault_device_garbage=0x1234");
    for want in ["garbage values to every device port", "vmx: on 4/4 CPUs"] {
        assert!(
            run.transcript().iter().any(|l| l.contains(want)),
            "no {want:?} in {:?}",
            run.transcript()
        );
    }
    run.handle().inject_crash("PANIC", Some(1)).expect("inject");
    run.wait_for_line("end Kernel panic");
    let (_, report) = dump_and_check(&run, &dir, "garbage.elf");
    assert_saved(&report, &[0, 2, 3]);
    assert_eq!(check_named(&report, "vmcoreinfo").verdict, Verdict::Pass);
    assert!(
        report.failures.iter().all(|f| f.starts_with("vcpu 1: ")),
        "{:?}",
        report.failures
    );
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_serial_flood_keeps_qmp_prompt_and_memory_bounded() {
    const FLOOD: u64 = 512 * 1024;
    let dir = test_dir("flood");
    let (mut vm, socket) = spawn_vmm(
        "flood",
        &dir,
        1,
        &["--on-panic", "coredump-destroy"],
        &format!("serial_flood={FLOOD}"),
    );
    let rss_before = vm_rss_kib(vm.pid());
    let mut c = qmp_connect(&socket);
    let mut worst = Duration::ZERO;
    let mut replies = 0;
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    // Ask as fast as replies come until the guest says the flood is over.
    let mut failed = None;
    let done = std::thread::scope(|s| {
        let waiter = s.spawn(|| vm.wait_for_guest("faults: serial flood of"));
        while !waiter.is_finished() && Instant::now() < deadline {
            let t = Instant::now();
            match c.execute("query-status", None) {
                Ok(st) => {
                    worst = worst.max(t.elapsed());
                    replies += 1;
                    assert_eq!(st["status"], "running", "{st}");
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        waiter.join()
    });
    if let Some(e) = failed {
        panic!("query-status: {e:?}; VMM output:\n{}", vm.transcript());
    }
    let done = done.expect("waiter");
    assert!(done.contains(&FLOOD.to_string()), "{done}");
    let rss_after = vm_rss_kib(vm.pid());
    eprintln!(
        "serial flood of {FLOOD} bytes: {replies} query-status replies, worst {worst:?}; \
         VmRSS {rss_before} -> {rss_after} KiB"
    );
    assert!(replies > 0);
    assert!(worst < Duration::from_secs(2), "worst reply {worst:?}");
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "VmRSS grew {rss_before} -> {rss_after} KiB"
    );
    c.execute("x-inject-crash", Some(json!({"type": "PANIC", "cpu": 0})))
        .expect("inject");
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT), 0);
    let core = Vmcore::open(&only_vmcore_in(&dir)).expect("the dump parses");
    assert_eq!(core.host_cpus().len(), 1);
}

// --- host side: a full disk, and kill -9 during a dump --------------------

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs ({}); the full-disk test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_full_disk_fails_the_dump_cleanly_and_the_vm_carries_on() {
    let dir = test_dir("full-disk");
    let small = dir.join("small");
    std::fs::create_dir_all(&small).expect("mkdir");
    let Some(_mount) = Tmpfs::mount(&small, "8m") else {
        return;
    };
    // Leave 64 KiB: far less than the guest's non-zero pages.
    let filler = std::fs::File::create(small.join("filler")).expect("filler");
    let stat = nix_free_bytes(&small);
    filler
        .set_len(0)
        .and_then(|_| {
            use std::io::Write;
            let mut f = &filler;
            let chunk = vec![0xa5u8; 1 << 16];
            let mut left = stat.saturating_sub(64 << 10);
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            f.sync_all()
        })
        .expect("fill the tmpfs");

    let run = boot("");
    let target = small.join("vmcore.elf");
    let err = run
        .handle()
        .dump_guest_memory(DumpRequest::new(&target))
        .expect_err("the disk is full");
    let chain = error_chain(&err);
    assert!(
        chain.contains("No space left on device"),
        "error does not name ENOSPC: {chain}"
    );
    assert_eq!(names_in(&small), vec!["filler".to_string()], "leftovers");
    // The VM is still usable: running, and a dump to a good directory works.
    assert_eq!(
        run.handle().status().expect("status").state,
        RunState::Running
    );
    let good = dir.join("good.elf");
    run.handle()
        .dump_guest_memory(DumpRequest::new(&good))
        .expect("a dump to a good directory");
    Vmcore::open(&good).expect("parses");
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn nix_free_bytes(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs writes into the zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs");
    st.f_bavail as u64 * st.f_frsize as u64
}

#[test]
fn kill_9_during_a_dump_leaves_no_file_under_the_final_name() {
    let dir = test_dir("kill9");
    let (mut vm, socket) = spawn_vmm("kill9", &dir, 1, &["--memory", "4G"], "");
    let mut c = qmp_connect(&socket);
    let target = dir.join("vmcore.elf");
    c.execute(
        "dump-guest-memory",
        Some(json!({"paging": false, "protocol": format!("file:{}", target.display()), "detach": true})),
    )
    .expect("detached dump");
    let q = c.execute("query-dump", None).expect("query-dump");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(vm.pid() as libc::pid_t, libc::SIGKILL) };
    let status = vm.wait_status(DEFAULT_TIMEOUT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_eq!(
        q["status"], "active",
        "the dump finished before the kill; the test proved nothing: {q}"
    );
    assert!(
        !target.exists(),
        "a file under the final name: {:?}",
        names_in(&dir)
    );
    // The temporary file may remain (nobody is left to remove it); it never
    // carries the final name.
    let left = names_in(&dir);
    eprintln!("after kill -9 during a dump the dump dir holds: {left:?}");
    assert!(left.iter().all(|n| n != "vmcore.elf"), "{left:?}");
}
