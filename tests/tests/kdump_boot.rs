//! kdump end to end: the VMM loads the capture kernel at boot (`kexec -p`),
//! the first kernel panics on CPU 2 and jumps to it, and the capture kernel
//! reports which CPUs saved their registers and that the vmcore is ready.
//!
//! Each case asserts the serial lines of both kernels, the kdump device's
//! events in order (KEXEC_HANDOVER, then VMCORE_READY or CAPTURE_FAILED) with
//! the elfcorehdr the first kernel printed, and the pvpanic log; then the
//! vmcore the VMM wrote into the run's dump directory: a kdump vmcore from
//! that elfcorehdr (read by the checker, `vmm vmcore check` and gdb), or the
//! host-side dump it fell back to, with the reason.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use devices::kdump::CaptureFailure;
use devices::VmEvent;
use guest_abi::ports::{PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, PVPANIC_SHUTDOWN};
use tests::{check_named, gdb_all_threads, summary, GuestRun, DEFAULT_TIMEOUT};
use vmcore::{CheckOptions, CheckReport, Verdict, Vmcore};
use vmm::Notification;

const CPUS: u32 = 4;
/// The CPU the panic is injected on.
const TARGET: u32 = 2;

fn boot(extra: &str) -> GuestRun {
    boot_crash("PANIC", extra, |_| {}, |_| {})
}

/// Boots 4 vCPUs with `crashkernel=64M`, crash `what` on CPU 2 and `extra`
/// on the command line; `config` and `setup` adjust the VM and the VMM.
fn boot_crash(
    what: &str,
    extra: &str,
    config: impl FnOnce(&mut vmm::VmConfig),
    setup: impl FnOnce(&mut vmm::Vmm),
) -> GuestRun {
    let mut cfg = vmm::VmConfig {
        cpus: CPUS,
        cmdline: format!("crashkernel=64M crash_after_boot={what}@{TARGET} {extra}"),
        // A PANICKED would end the VM at once; the cases that expect one
        // wait for it instead.
        on_panic: qmp::PanicAction::None,
        ..vmm::VmConfig::default()
    };
    config(&mut cfg);
    GuestRun::start_with(cfg, setup)
}

/// What the VMM did with the crash: a kdump vmcore, or a host-side dump.
#[derive(Debug)]
enum Outcome {
    Kdump { path: PathBuf, guest_notes: u64 },
    Fallback { reason: String, path: PathBuf },
}

/// Waits for KDUMP_COMPLETED or KDUMP_FALLBACK; the vmcore exists under
/// its final name in the run's dump directory (and nothing else is there).
fn outcome(run: &mut GuestRun, timeout: Duration) -> Outcome {
    let n = run.wait_notification("KDUMP_COMPLETED or KDUMP_FALLBACK", timeout, |n| {
        matches!(
            n,
            Notification::KdumpCompleted { .. } | Notification::KdumpFallback { .. }
        )
    });
    let out = match n {
        Notification::KdumpCompleted { path, guest_notes } => Outcome::Kdump { path, guest_notes },
        Notification::KdumpFallback {
            reason,
            path,
            result,
        } => {
            assert_eq!(result, Ok(()), "fallback dump not written ({reason})");
            Outcome::Fallback { reason, path }
        }
        _ => unreachable!(),
    };
    let path = match &out {
        Outcome::Kdump { path, .. } | Outcome::Fallback { path, .. } => path,
    };
    let files: Vec<PathBuf> = std::fs::read_dir(run.dump_dir())
        .expect("dump dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    assert_eq!(files, std::slice::from_ref(path), "{out:?}");
    out
}

/// The kdump vmcore the VMM wrote from elfcorehdr `hdr`, with the crash
/// notes of the CPUs in `saved` (empty ones are left out, as
/// `/proc/vmcore` does) and VMCOREINFO; returns it and
/// the checker's report, which `vmm vmcore check` agrees with.
fn kdump_vmcore(run: &mut GuestRun, hdr: u64, saved: &[u32]) -> (PathBuf, CheckReport) {
    let Outcome::Kdump { path, guest_notes } = outcome(run, DEFAULT_TIMEOUT) else {
        panic!("no kdump vmcore; serial:\n{}", run.transcript().join("\n"));
    };
    let core = Vmcore::open(&path).expect("the kdump vmcore parses");
    let note = core.kdump_note().expect("a VMMKDUMP note");
    assert_eq!(note.elfcorehdr, hdr, "{note:?}");
    assert_eq!(u64::from(note.guest_notes), guest_notes, "{note:?}");
    assert_eq!(guest_notes, saved.len() as u64 + 1, "{note:?}");
    let report = checked(&path);
    (path, report)
}

/// The checker's report on `path`; `vmm vmcore check` exits 0 exactly
/// when it passes and prints the same failures.
fn checked(path: &Path) -> CheckReport {
    let core = Vmcore::open(path).expect("the vmcore parses");
    let report = vmcore::check(&core, &CheckOptions::default());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let cmd = vmm::vmcore_cmd::VmcoreCommand::Check {
        file: path.to_path_buf(),
        json: false,
    };
    let code = vmm::vmcore_cmd::run(&cmd, &mut out, &mut err);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, if report.ok { 0 } else { 1 }, "{out}");
    for f in &report.failures {
        assert!(out.contains(f.as_str()), "{f:?} not in\n{out}");
    }
    report
}

/// `vmm vmcore info` on `path`.
fn info(path: &Path) -> String {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let cmd = vmm::vmcore_cmd::VmcoreCommand::Info {
        file: path.to_path_buf(),
        kernel: None,
        json: false,
    };
    let code = vmm::vmcore_cmd::run(&cmd, &mut out, &mut err);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    String::from_utf8_lossy(&out).into_owned()
}

/// gdb on the guest ELF and `path`: one thread per CPU, and CPU 2's
/// backtrace (LWP 3: pr_pid is the CPU + 1) goes through panic.
fn gdb_sees_the_panic(path: &Path) {
    let bt = gdb_all_threads(path, CPUS);
    let thread = bt
        .split("\nThread ")
        .find(|t| t.starts_with(&format!("{0} (LWP {0})", TARGET + 1)))
        .unwrap_or_else(|| panic!("no thread for CPU {TARGET}:\n{bt}"));
    assert!(
        thread
            .lines()
            .any(|l| l.contains(" in guest_kernel::panic::panic")),
        "CPU {TARGET}'s backtrace does not go through panic:\n{bt}"
    );
}

/// `0x<hex>` after `prefix` in `line`.
fn hex_after(line: &str, prefix: &str) -> u64 {
    let rest = line
        .split(prefix)
        .nth(1)
        .unwrap_or_else(|| panic!("{prefix:?} not in {line:?}"));
    let digits: String = rest
        .trim_start_matches("0x")
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&digits, 16).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn kdump_event(n: &Notification) -> Option<&VmEvent> {
    match n {
        Notification::Guest(
            e @ (VmEvent::KexecHandover { .. }
            | VmEvent::VmcoreReady { .. }
            | VmEvent::CaptureFailed { .. }),
        ) => Some(e),
        _ => None,
    }
}

/// Boots to the prepared elfcorehdr and the panic; returns the elfcorehdr
/// address the first kernel printed and when the panic line arrived.
fn up_to_the_panic(run: &mut GuestRun) -> (u64, Instant) {
    let loaded = run.wait_for_line("kexec: capture kernel loaded (entry ");
    assert!(loaded.contains(", digest 0x"), "{loaded}");
    let line = run.wait_for_line("CPUs online:");
    assert!(line.contains(&summary(CPUS)), "{line}");
    let hdr = hex_after(
        &run.wait_for_line("kexec: elfcorehdr at "),
        "elfcorehdr at ",
    );
    run.wait_for_line("Kernel panic - not syncing: lkdtm: ");
    (hdr, Instant::now())
}

/// How long the kdump path took, as the host saw it.
#[derive(Debug)]
struct Timing {
    /// From the first kernel's panic line to VMCORE_READY.
    panic_to_ready: Duration,
    /// From KEXEC_HANDOVER (just before the jump) to VMCORE_READY: the
    /// capture kernel's boot and report.
    handover_to_ready: Duration,
}

/// Waits for the handover and the capture kernel's report; checks the
/// per-CPU lines against `saved`.
fn capture(run: &mut GuestRun, hdr: u64, panic_at: Instant, saved: &[u32]) -> Timing {
    let handover = run.wait_notification("KEXEC_HANDOVER", DEFAULT_TIMEOUT, |n| {
        kdump_event(n).is_some()
    });
    let Notification::Guest(VmEvent::KexecHandover {
        vcpu,
        entry,
        elfcorehdr,
    }) = handover
    else {
        panic!("first kdump event is not KEXEC_HANDOVER: {handover:?}");
    };
    let handover_at = Instant::now();
    assert_eq!((vcpu, elfcorehdr), (TARGET, hdr));
    let jump = run.wait_for_line("kexec: jumping to capture kernel at ");
    assert_eq!(hex_after(&jump, "kernel at "), entry, "{jump}");
    // The capture kernel boots on the panicking CPU.
    run.wait_for_line("guest-kernel: PVH boot");
    let cmdline = run.wait_for_line("Command line: ");
    assert!(
        cmdline.contains(&format!("elfcorehdr={hdr:#x}"))
            && cmdline.contains("nr_cpus=1")
            && !cmdline.contains("crash_after_boot"),
        "{cmdline}"
    );
    let found = run.wait_for_line("kdump: capture kernel, elfcorehdr at ");
    assert_eq!(hex_after(&found, "elfcorehdr at "), hdr, "{found}");
    for cpu in 0..CPUS {
        let line = run.wait_for_line(&format!("kdump: CPU {cpu}: crash note "));
        let want = if saved.contains(&cpu) {
            "saved"
        } else {
            "missing"
        };
        assert!(line.ends_with(want), "CPU {cpu}: {line}");
    }
    run.wait_for_line(&format!(
        "kdump: {}/{CPUS} CPUs saved registers",
        saved.len()
    ));
    let ready = run.wait_notification("VMCORE_READY", DEFAULT_TIMEOUT, |n| {
        kdump_event(n).is_some()
    });
    let timing = Timing {
        panic_to_ready: panic_at.elapsed(),
        handover_to_ready: handover_at.elapsed(),
    };
    assert!(
        timing.handover_to_ready <= timing.panic_to_ready,
        "the handover came before the panic line: {timing:?}"
    );
    let Notification::Guest(VmEvent::VmcoreReady {
        elfcorehdr, size, ..
    }) = ready
    else {
        panic!("second kdump event is not VMCORE_READY: {ready:?}");
    };
    assert_eq!(elfcorehdr, hdr);
    let header_size = bytes_in(&found);
    assert_eq!(size, header_size, "{found}");
    timing
}

/// `(<n> bytes)` in `line`.
fn bytes_in(line: &str) -> u64 {
    line.rsplit('(')
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {line:?}"))
}

/// The pvpanic notifier (which writes CRASH_LOADED) ran on the panicking
/// CPU before it jumped: its console lines say so, in order. (The pvpanic
/// log itself is checked whole once the capture kernel powered off.)
fn crash_loaded_before_the_jump(run: &GuestRun) {
    let at = |needle: &str| {
        run.transcript()
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?}"))
    };
    assert!(at("panic: notifier pvpanic (hypervisor)") < at("kexec: jumping to capture kernel"));
}

fn pvpanic_events(run: &GuestRun) -> Vec<u32> {
    run.handle()
        .pvpanic_log()
        .iter()
        .map(|e| e.events)
        .collect()
}

/// The capture kernel powers off (panic=0, no kdump_final_action); the
/// pvpanic log then holds `panic_path` (what the first kernel's panic path
/// sent), then the poweroff's SHUTDOWN.
fn powers_off(run: GuestRun, panic_path: &[u8]) {
    let handle = run.handle().clone();
    let dump_dir = run.dump_dir().to_path_buf();
    let (reason, transcript) = run.wait_exit(DEFAULT_TIMEOUT);
    assert!(
        transcript
            .iter()
            .any(|l| l == "kdump: final action poweroff"),
        "{reason:?}"
    );
    let mut want: Vec<u32> = panic_path.iter().map(|&e| u32::from(e)).collect();
    want.push(u32::from(PVPANIC_SHUTDOWN));
    let got: Vec<u32> = handle.pvpanic_log().iter().map(|e| e.events).collect();
    assert_eq!(got, want, "pvpanic log");
    // Passed: the vmcores (1 GiB, if sparse, for the timing case) go.
    let _ = std::fs::remove_dir_all(dump_dir);
}

#[test]
fn kdump_first_every_cpu_saved_and_pvpanic_silent() {
    let mut run = boot("");
    let (hdr, panic_at) = up_to_the_panic(&mut run);
    let took = capture(&mut run, hdr, panic_at, &[0, 1, 2, 3]);
    eprintln!("kdump_first: {took:?}");
    let digest = run.transcript().iter().find(|l| l.contains("digest ok"));
    eprintln!("kdump_first: {digest:?}");
    let (path, report) = kdump_vmcore(&mut run, hdr, &[0, 1, 2, 3]);
    assert!(report.ok, "{}", report.render());
    gdb_sees_the_panic(&path);
    powers_off(run, &[]);
}

#[test]
fn post_notifiers_one_crash_loaded_then_capture() {
    // Under `--on-panic pause` a PANICKED would stop kdump; CRASH_LOADED
    // must not.
    let mut run = boot_crash(
        "PANIC",
        "crash_kexec_post_notifiers",
        |c| c.on_panic = qmp::PanicAction::Pause,
        |_| {},
    );
    let (hdr, panic_at) = up_to_the_panic(&mut run);
    run.wait_for_line("panic: notifier pvpanic (hypervisor)");
    let took = capture(&mut run, hdr, panic_at, &[0, 1, 2, 3]);
    eprintln!("post_notifiers: {took:?}");
    crash_loaded_before_the_jump(&run);
    let (_, report) = kdump_vmcore(&mut run, hdr, &[0, 1, 2, 3]);
    assert!(report.ok, "{}", report.render());
    let seen = run.notifications().to_vec();
    let pvpanic: Vec<usize> = (0..seen.len())
        .filter(|&i| {
            // From the panic path: the capture kernel's poweroff adds a
            // SHUTDOWN, early or late.
            matches!(
                seen[i],
                Notification::Guest(VmEvent::Pvpanic { event, .. })
                    if event != devices::pvpanic::PvpanicEvent::Shutdown
            )
        })
        .collect();
    let handover = seen
        .iter()
        .position(|n| matches!(n, Notification::Guest(VmEvent::KexecHandover { .. })))
        .expect("KEXEC_HANDOVER");
    assert_eq!(pvpanic.len(), 1, "{seen:#?}");
    assert!(pvpanic[0] < handover, "{seen:#?}");
    assert!(
        !seen
            .iter()
            .any(|n| matches!(n, Notification::Paused | Notification::GuestPanicked { .. })),
        "the VMM stopped the guest: {seen:#?}"
    );
    powers_off(run, &[PVPANIC_CRASH_LOADED]);
}

#[test]
fn post_notifiers_2016_capture_sees_only_the_panicking_cpu() {
    let mut run = boot("panic_policy=linux-2016 crash_kexec_post_notifiers");
    let (hdr, panic_at) = up_to_the_panic(&mut run);
    capture(&mut run, hdr, panic_at, &[TARGET]);
    crash_loaded_before_the_jump(&run);
    // The seed's Problem 2, read back from the kdump vmcore: the other
    // CPUs saved no registers and left VMX on.
    let (_, report) = kdump_vmcore(&mut run, hdr, &[TARGET]);
    assert!(!report.ok, "{}", report.render());
    for v in &report.vcpus {
        let (note, vmx) = if v.vcpu == TARGET {
            (Verdict::Pass, Verdict::Pass)
        } else {
            (Verdict::Missing, Verdict::Fail)
        };
        assert_eq!(
            (v.guest_note.verdict, v.vmx.verdict),
            (note, vmx),
            "vcpu {}:\n{}",
            v.vcpu,
            report.render()
        );
    }
    for cpu in [0, 1, 3] {
        assert!(
            report
                .failures
                .iter()
                .any(|f| f.starts_with(&format!("vcpu {cpu}: "))),
            "CPU {cpu} not named:\n{}",
            report.render()
        );
    }
    assert!(
        !report
            .failures
            .iter()
            .any(|f| f.starts_with(&format!("vcpu {TARGET}: "))),
        "{}",
        report.render()
    );
    powers_off(run, &[PVPANIC_CRASH_LOADED]);
}

#[test]
fn corrupt_image_is_refused_and_the_panic_goes_on() {
    let mut run = boot("kexec_corrupt_image");
    run.wait_for_line("kexec: kexec_corrupt_image: flipped the byte at ");
    run.wait_for_line("Kernel panic - not syncing: lkdtm: PANIC");
    run.wait_for_line("kexec: capture kernel image corrupt (digest mismatch); kdump unavailable");
    let failed = run.wait_notification("CAPTURE_FAILED", DEFAULT_TIMEOUT, |n| {
        kdump_event(n).is_some()
    });
    assert!(
        matches!(
            failed,
            Notification::Guest(VmEvent::CaptureFailed {
                vcpu: TARGET,
                reason: CaptureFailure::ImageCorrupt,
                ..
            })
        ),
        "{failed:?}"
    );
    let Outcome::Fallback { reason, path } = outcome(&mut run, DEFAULT_TIMEOUT) else {
        panic!("a kdump vmcore without a capture kernel");
    };
    assert!(reason.contains("CAPTURE_FAILED IMAGE_CORRUPT"), "{reason}");
    // Dumped while the first kernel goes on down the no-kdump path (how
    // far it got varies): its log names the cause, and the path checked
    // never reached the jump.
    let report = checked(&path);
    let p = check_named(&report, "panic_path");
    assert!(!p.detail.contains("jumping to capture kernel"), "{p:?}");
    let info = info(&path);
    assert!(
        info.contains("kexec: capture kernel image corrupt (digest mismatch); kdump unavailable"),
        "{info}"
    );
    // The no-kdump path: the notifiers run, pvpanic says PANICKED.
    run.wait_notification("GUEST_PANICKED", DEFAULT_TIMEOUT, |n| {
        matches!(n, Notification::GuestPanicked { .. })
    });
    run.wait_for_line("---[ end Kernel panic - not syncing: lkdtm: PANIC ]---");
    assert_eq!(pvpanic_events(&run), [u32::from(PVPANIC_PANICKED)]);
    let (_, transcript) = run.stop();
    assert!(
        !transcript
            .iter()
            .any(|l| l.contains("jumping to capture kernel")
                || l.contains("KEXEC_HANDOVER")
                || l.starts_with("kdump: capture kernel")),
        "{transcript:#?}"
    );
}

#[test]
fn scribbled_elfcorehdr_magic_is_refused_by_the_capture_kernel() {
    let mut run = boot("elfcorehdr_scribble=magic kdump_final_action=halt");
    run.wait_for_line("kexec: elfcorehdr_scribble=magic applied (test only)");
    run.wait_for_line("kexec: jumping to capture kernel at ");
    let refused = run.wait_for_line("kdump: capture kernel, elfcorehdr at ");
    assert!(
        refused.ends_with("refused: bad ELF identification"),
        "{refused}"
    );
    let failed = run.wait_notification("CAPTURE_FAILED", DEFAULT_TIMEOUT, |n| {
        matches!(
            kdump_event(n),
            Some(VmEvent::VmcoreReady { .. } | VmEvent::CaptureFailed { .. })
        )
    });
    assert!(
        matches!(
            failed,
            Notification::Guest(VmEvent::CaptureFailed {
                reason: CaptureFailure::BadElfcorehdr,
                detail: 2,
                ..
            })
        ),
        "{failed:?}"
    );
    let Outcome::Fallback { reason, path } = outcome(&mut run, DEFAULT_TIMEOUT) else {
        panic!("a kdump vmcore from a refused header");
    };
    assert!(reason.contains("CAPTURE_FAILED BAD_ELFCOREHDR"), "{reason}");
    // The first kernel's memory is intact: its notes and path check out.
    let report = checked(&path);
    assert!(report.ok, "{}", report.render());
    assert!(
        check_named(&report, "panic_path")
            .detail
            .starts_with("finished: kexec: jumping to capture kernel"),
        "{}",
        report.render()
    );
    run.wait_for_line("kdump: final action halt");
    let _ = run.stop();
}

#[test]
fn scribbled_elfcorehdr_load_passes_the_guest_and_reaches_the_vmm() {
    // The capture kernel checks the header's own fields, not the PT_LOAD
    // ranges: a 1 TiB PT_LOAD goes to the VMM in VMCORE_READY, whose
    // hostile-input parser must refuse it.
    let mut run = boot("elfcorehdr_scribble=load kdump_final_action=halt");
    let (hdr, panic_at) = up_to_the_panic(&mut run);
    assert!(
        run.transcript()
            .iter()
            .any(|l| l == "kexec: elfcorehdr_scribble=load applied (test only)"),
        "{:#?}",
        run.transcript()
    );
    capture(&mut run, hdr, panic_at, &[0, 1, 2, 3]);
    let Outcome::Fallback { reason, path } = outcome(&mut run, DEFAULT_TIMEOUT) else {
        panic!("a kdump vmcore from a 1 TiB PT_LOAD");
    };
    assert!(
        reason.contains("PT_LOAD") && reason.contains("lies outside guest RAM"),
        "{reason}"
    );
    let report = checked(&path);
    assert!(report.ok, "{}", report.render());
    run.wait_for_line("kdump: final action halt");
    let _ = run.stop();
}

// --- faults that need kdump (issue 7) ------------------------------------

#[test]
fn a_notifier_hanging_before_kdump_leaves_the_watchdogs_dump() {
    let mut run = boot_crash(
        "NOTIFIER_HANG",
        "crash_kexec_post_notifiers",
        |_| {},
        |vmm| vmm.set_kdump_timeout(Duration::from_secs(2)),
    );
    up_to_the_panic(&mut run);
    // pvpanic's CRASH_LOADED armed the watchdog; the next notifier hangs.
    run.wait_for_line("panic: notifier pvpanic (hypervisor)");
    let Outcome::Fallback { reason, path } = outcome(&mut run, DEFAULT_TIMEOUT) else {
        panic!("kdump ran past a hanging notifier");
    };
    assert_eq!(reason, "kdump did not report a vmcore within 2s");
    let status = run.handle().status().expect("the VMM answers");
    assert_eq!(status.vcpus.len(), CPUS as usize, "{status:?}");
    let report = checked(&path);
    let p = check_named(&report, "panic_path");
    assert_eq!(p.verdict, Verdict::Fail, "{}", report.render());
    assert!(
        p.detail
            .contains("did not finish: last in step panic_notifier_list"),
        "{p:?}"
    );
    assert!(
        !run.transcript()
            .iter()
            .any(|l| l.contains("jumping to capture kernel")),
        "{:#?}",
        run.transcript()
    );
}

#[test]
fn a_hanging_notifier_after_kdump_never_runs() {
    let mut run = boot_crash("NOTIFIER_HANG", "", |_| {}, |_| {});
    let (hdr, panic_at) = up_to_the_panic(&mut run);
    capture(&mut run, hdr, panic_at, &[0, 1, 2, 3]);
    let (_, report) = kdump_vmcore(&mut run, hdr, &[0, 1, 2, 3]);
    assert!(report.ok, "{}", report.render());
    powers_off(run, &[]);
}

/// Not a pass/fail bound: prints how long kdump takes on 1 GiB.
#[test]
fn time_from_panic_to_kdump_vmcore_with_1_gib() {
    let mut run = boot_crash("PANIC", "", |c| c.memory = 1 << 30, |_| {});
    let (hdr, panic_at) = up_to_the_panic(&mut run);
    let took = capture(&mut run, hdr, panic_at, &[0, 1, 2, 3]);
    let (path, report) = kdump_vmcore(&mut run, hdr, &[0, 1, 2, 3]);
    let total = panic_at.elapsed();
    assert!(report.ok, "{}", report.render());
    let size = std::fs::metadata(&path).expect("vmcore").len();
    eprintln!(
        "1 GiB, 4 vCPUs: panic line to KDUMP_COMPLETED {total:?} ({took:?}); vmcore {size} bytes"
    );
    powers_off(run, &[]);
}
