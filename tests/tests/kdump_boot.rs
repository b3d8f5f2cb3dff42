//! kdump end to end: the VMM loads the capture kernel at boot (`kexec -p`),
//! the first kernel panics on CPU 2 and jumps to it, and the capture kernel
//! reports which CPUs saved their registers and that the vmcore is ready.
//!
//! Each case asserts the serial lines of both kernels, the kdump device's
//! events in order (KEXEC_HANDOVER, then VMCORE_READY or CAPTURE_FAILED) with
//! the elfcorehdr the first kernel printed, and the pvpanic log.

use std::time::{Duration, Instant};

use devices::kdump::CaptureFailure;
use devices::VmEvent;
use guest_abi::ports::{PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, PVPANIC_SHUTDOWN};
use tests::{summary, GuestRun, DEFAULT_TIMEOUT};
use vmm::Notification;

const CPUS: u32 = 4;
/// The CPU the panic is injected on.
const TARGET: u32 = 2;

fn boot(extra: &str) -> GuestRun {
    GuestRun::start(vmm::VmConfig {
        cpus: CPUS,
        cmdline: format!("crashkernel=64M crash_after_boot=PANIC@{TARGET} {extra}"),
        // A PANICKED would end the VM at once; the cases that expect one
        // wait for it instead.
        on_panic: qmp::PanicAction::None,
        ..vmm::VmConfig::default()
    })
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
    run.wait_for_line("Kernel panic - not syncing: lkdtm: PANIC");
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
}

#[test]
fn kdump_first_every_cpu_saved_and_pvpanic_silent() {
    let mut run = boot("");
    let (hdr, panic_at) = up_to_the_panic(&mut run);
    let took = capture(&mut run, hdr, panic_at, &[0, 1, 2, 3]);
    eprintln!("kdump_first: {took:?}");
    let digest = run.transcript().iter().find(|l| l.contains("digest ok"));
    eprintln!("kdump_first: {digest:?}");
    powers_off(run, &[]);
}

#[test]
fn post_notifiers_one_crash_loaded_then_capture() {
    let mut run = boot("crash_kexec_post_notifiers");
    let (hdr, panic_at) = up_to_the_panic(&mut run);
    run.wait_for_line("panic: notifier pvpanic (hypervisor)");
    let took = capture(&mut run, hdr, panic_at, &[0, 1, 2, 3]);
    eprintln!("post_notifiers: {took:?}");
    crash_loaded_before_the_jump(&run);
    powers_off(run, &[PVPANIC_CRASH_LOADED]);
}

#[test]
fn post_notifiers_2016_capture_sees_only_the_panicking_cpu() {
    let mut run = boot("panic_policy=linux-2016 crash_kexec_post_notifiers");
    let (hdr, panic_at) = up_to_the_panic(&mut run);
    capture(&mut run, hdr, panic_at, &[TARGET]);
    crash_loaded_before_the_jump(&run);
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
    run.wait_for_line("kdump: final action halt");
    let _ = run.stop();
}
