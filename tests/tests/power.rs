//! The guest's poweroff and reset paths, and what the VMM does with them.

use tests::{summary, GuestRun, DEFAULT_TIMEOUT};
use vmm::{ExitReason, OnReboot, VmConfig};

#[test]
fn acpi_poweroff_exits_zero() {
    let run = GuestRun::boot(2, "post_boot=poweroff");
    let (reason, transcript) = run.wait_exit(DEFAULT_TIMEOUT);
    assert!(matches!(reason, ExitReason::Poweroff), "{reason:?}");
    assert_eq!(reason.exit_code(), 0);
    assert!(
        transcript.iter().any(|l| l.contains(&summary(2))),
        "{transcript:?}"
    );
}

#[test]
fn reset_with_on_reboot_exit_ends_the_vm() {
    let run = GuestRun::start(VmConfig {
        cpus: 2,
        cmdline: "post_boot=reboot".into(),
        on_reboot: OnReboot::Exit,
        ..VmConfig::default()
    });
    let (reason, transcript) = run.wait_exit(DEFAULT_TIMEOUT);
    assert!(matches!(reason, ExitReason::Reboot), "{reason:?}");
    assert_eq!(reason.exit_code(), 0);
    let boots = transcript
        .iter()
        .filter(|l| l.contains("CPUs online:"))
        .count();
    assert_eq!(boots, 1, "guest booted {boots} times");
}

#[test]
fn reset_with_on_reboot_restart_boots_again() {
    let mut run = GuestRun::start(VmConfig {
        cpus: 2,
        cmdline: "post_boot=reboot".into(),
        on_reboot: OnReboot::Restart,
        ..VmConfig::default()
    });
    // The guest reboots itself after every boot; three boots prove the VM is
    // rebuilt each time with all its CPUs.
    for _ in 0..3 {
        let line = run.wait_for_line("CPUs online:");
        assert!(line.contains(&summary(2)), "{line:?}");
    }
    let (reason, _) = run.stop();
    assert!(matches!(reason, ExitReason::Stopped), "{reason:?}");
}
