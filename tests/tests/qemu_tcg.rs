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

#[test]
fn boots_four_cpus_under_qemu_tcg() {
    if !qemu_available() {
        // CI installs QEMU (.ci/run) and must never skip this.
        assert!(std::env::var_os("CI").is_none(), "{QEMU} is required in CI");
        eprintln!("SKIPPED: {QEMU} not installed (apt-get install qemu-system-x86)");
        return;
    }
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
        .args([
            "-kernel",
            vmm::GUEST_KERNEL_PATH,
            "-append",
            "post_boot=poweroff",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut transcript = Vec::new();
    let mut ok = false;
    // QEMU exits by itself when the guest powers off, closing the channel.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(180)) {
        ok |= line.contains("CPUs online: 4/4");
        transcript.push(line);
    }
    let _ = child.kill();
    let status = child.wait().expect("wait qemu");
    assert!(
        ok,
        "no 'CPUs online: 4/4' under QEMU (exit {status}); serial:\n{}",
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
