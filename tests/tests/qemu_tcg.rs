//! Cross-checks the guest kernel against an independent peer: QEMU's own PVH
//! loader, firmware and ACPI tables (TCG, since QEMU's KVM mode does not
//! work on this host).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const QEMU: &str = "qemu-system-x86_64";

fn qemu_available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether QEMU can run; panics in CI when it cannot (CI installs it and
/// must never skip these tests).
fn require_qemu() -> bool {
    if qemu_available() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{QEMU} is required in CI");
    eprintln!("SKIPPED: {QEMU} not installed (apt-get install qemu-system-x86)");
    false
}

/// Runs the guest on 4 TCG CPUs with `extra` QEMU arguments and guest
/// command line `append` until QEMU exits; returns its exit code and the
/// serial lines.
fn run_qemu(extra: &[&str], append: &str) -> (Option<i32>, Vec<String>) {
    let mut child = Command::new(QEMU)
        .args([
            "-accel",
            "tcg",
            "-smp",
            "4",
            "-m",
            "256M",
            "-nographic",
            "-no-reboot",
            "-net",
            "none",
        ])
        .args(extra)
        .args(["-kernel", vmm::GUEST_KERNEL_PATH, "-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let line = match line {
                Ok(l) => String::from_utf8_lossy(&l).into_owned(),
                Err(e) => format!("<read error: {e}>"),
            };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut transcript = Vec::new();
    // QEMU exits by itself when the guest powers off (or panics, with
    // `-action panic=exit-failure`), closing its stdout and so the channel;
    // only a silent QEMU is killed. (Its stdout closes just before it
    // exits: killing it then would lose the exit status.)
    let timed_out = loop {
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(line) => transcript.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => break true,
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
        }
    };
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait qemu");
    (status.code(), transcript)
}

#[test]
fn boots_four_cpus_under_qemu_tcg() {
    if !require_qemu() {
        return;
    }
    let (status, transcript) = run_qemu(&[], "post_boot=poweroff");
    assert!(
        transcript.iter().any(|l| l.contains("CPUs online: 4/4")),
        "no 'CPUs online: 4/4' under QEMU (exit {status:?}); serial:\n{}",
        transcript.join("\n")
    );
    for n in 0..4 {
        let want = format!("CPU {n} online");
        assert!(
            transcript.iter().any(|l| l.contains(&want)),
            "missing {want:?}"
        );
    }
}

#[test]
fn without_a_loaded_capture_kernel_qemu_sees_panicked() {
    // QEMU reserves nothing and passes no kexec descriptor, so crashkernel=
    // alone is not kexec -p: crash_kexec is a no-op and pvpanic reports
    // PANICKED (not CRASH_LOADED), which `-action panic=exit-failure` turns
    // into QEMU's exit status 1. CRASH_LOADED would leave QEMU running
    // until the test's timeout.
    if !require_qemu() {
        return;
    }
    let (status, transcript) = run_qemu(
        &["-device", "pvpanic", "-action", "panic=exit-failure"],
        "crashkernel=64M crash_after_boot=PANIC@2",
    );
    let serial = transcript.join("\n");
    assert_eq!(
        status,
        Some(1),
        "QEMU did not see PANICKED; serial:\n{serial}"
    );
    for want in [
        "crashkernel: reserved ",
        "kexec: no capture kernel loaded",
        "Kernel panic - not syncing: lkdtm: PANIC",
        "panic: step crash_kexec",
        "panic: notifier pvpanic (hypervisor)",
    ] {
        assert!(serial.contains(want), "missing {want:?}; serial:\n{serial}");
    }
    assert!(
        !serial.contains("kexec: jumping to capture kernel"),
        "{serial}"
    );
}

#[test]
fn elfcorehdr_alone_makes_a_capture_kernel_that_refuses_a_bad_header() {
    // Linux's is_kdump_kernel(): elfcorehdr= on the command line. Booted
    // directly (no kexec, so old memory is read identity-mapped), it finds
    // zeroed RAM where the header should be, refuses it, brings up no other
    // CPU and does its final action.
    if !require_qemu() {
        return;
    }
    let (status, transcript) = run_qemu(&[], "elfcorehdr=0x7000000");
    let serial = transcript.join("\n");
    assert_eq!(status, Some(0), "{serial}");
    for want in [
        "kdump: capture kernel, elfcorehdr at 0x7000000 refused: bad ELF identification",
        "kdump: final action poweroff",
    ] {
        assert!(serial.contains(want), "missing {want:?}; serial:\n{serial}");
    }
    assert!(
        !serial.contains("CPU 1 online") && !serial.contains("crashkernel:"),
        "{serial}"
    );
}
