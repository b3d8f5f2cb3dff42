//! Boots the real guest kernel on 1, 2, 4 and 8 vCPUs and checks that every
//! CPU came online exactly once, with the APIC ID the VMM gave it.

use tests::{summary, GuestRun};
use vmm::ExitReason;

fn boot_all_cpus(cpus: u32) {
    let mut run = GuestRun::boot(cpus, "");
    let line = run.wait_for_line("CPUs online:");
    assert!(line.contains(&summary(cpus)), "summary line was {line:?}");
    let (reason, transcript) = run.stop();
    assert!(matches!(reason, ExitReason::Stopped), "{reason:?}");

    for n in 0..cpus {
        let want = format!("CPU {n} online (apic {n})");
        let seen = transcript.iter().filter(|l| l.contains(&want)).count();
        assert_eq!(
            seen,
            1,
            "{want:?} seen {seen} times in:\n{}",
            transcript.join("\n")
        );
    }
    let extra = transcript
        .iter()
        .filter(|l| l.contains(&format!("CPU {cpus} online")))
        .count();
    assert_eq!(extra, 0, "a CPU beyond {cpus} came online");
    let summaries = transcript
        .iter()
        .filter(|l| l.contains("CPUs online:"))
        .count();
    assert_eq!(summaries, 1, "summary printed {summaries} times");
}

#[test]
fn boots_one_vcpu() {
    boot_all_cpus(1);
}

#[test]
fn boots_two_vcpus() {
    boot_all_cpus(2);
}

#[test]
fn boots_four_vcpus() {
    boot_all_cpus(4);
}

#[test]
fn boots_eight_vcpus() {
    boot_all_cpus(8);
}

#[test]
fn nr_cpus_limits_the_cpus_brought_up() {
    let mut run = GuestRun::boot(4, "nr_cpus=2");
    let line = run.wait_for_line("CPUs online:");
    assert!(line.contains(&summary(2)), "summary line was {line:?}");
    let (_, transcript) = run.stop();
    assert!(transcript
        .iter()
        .any(|l| l.contains("CPU 1 online (apic 1)")));
    for n in 2..4 {
        let never = format!("CPU {n} online");
        assert!(
            !transcript.iter().any(|l| l.contains(&never)),
            "{never} despite nr_cpus=2"
        );
    }
}

#[test]
fn guest_reads_its_command_line() {
    let mut run = GuestRun::boot(1, "nr_cpus=1 foo=bar");
    run.wait_for_line("foo=bar");
    run.wait_for_line("CPUs online:");
}
