//! Every crash type of the crash-control device (QMP `x-inject-crash`),
//! injected into a running 4-vCPU guest through the VMM library: the guest
//! must take the LKDTM-style path the type names, on the CPU it was sent to.

use tests::{summary, GuestRun};
use vmm::VmConfig;

const CPUS: u32 = 4;

/// Boots, injects `crash` on `cpu`, and waits for each of `lines` in order.
fn inject(crash: &str, cpu: Option<u32>, lines: &[&str]) -> Vec<String> {
    let mut run = GuestRun::start(VmConfig {
        cpus: CPUS,
        // Panic action none: the guest's panic path runs to its end.
        on_panic: qmp::PanicAction::None,
        ..VmConfig::default()
    });
    let line = run.wait_for_line("CPUs online:");
    assert!(line.contains(&summary(CPUS)), "{line:?}");
    run.wait_for_line("vmcoreinfo: note at");
    run.handle().inject_crash(crash, cpu).expect("inject");
    for want in lines {
        run.wait_for_line(want);
    }
    let (_, transcript) = run.stop();
    transcript
}

#[test]
fn panic_runs_on_the_chosen_cpu() {
    inject(
        "PANIC",
        Some(2),
        &[
            "lkdtm: PANIC on CPU 2",
            "Kernel panic - not syncing: lkdtm: PANIC",
            "end Kernel panic",
        ],
    );
}

#[test]
fn bug_is_an_invalid_opcode_oops() {
    inject(
        "BUG",
        Some(1),
        &["Oops: ", "Kernel panic - not syncing: Fatal exception"],
    );
}

#[test]
fn exception_is_a_page_fault_oops() {
    inject(
        "EXCEPTION",
        Some(3),
        &[
            "BUG: unable to handle page fault for address",
            "Kernel panic - not syncing: Fatal exception",
        ],
    );
}

#[test]
fn hardlockup_makes_another_cpu_panic_and_the_nmi_stops_the_spinner() {
    let t = inject(
        "HARDLOCKUP",
        Some(2),
        &[
            "Kernel panic - not syncing: lkdtm: panic requested by another CPU",
            "did not stop by REBOOT_VECTOR",
        ],
    );
    // A CPU spinning with interrupts off ignores the stop IPI: only the NMI
    // fallback stops it.
    assert!(
        t.iter().any(|l| l.contains("stopping them with NMI")),
        "{t:?}"
    );
}

#[test]
fn panic_all_lets_exactly_one_cpu_through() {
    let t = inject(
        "PANIC_ALL",
        None,
        &[
            "Kernel panic - not syncing: lkdtm: PANIC_ALL",
            "panic: step",
        ],
    );
    let panics = t
        .iter()
        .filter(|l| l.contains("Kernel panic - not syncing"))
        .count();
    assert_eq!(panics, 1, "{t:?}");
}

#[test]
fn nmi_panic_panics_from_nmi_context() {
    inject(
        "NMI_PANIC",
        Some(1),
        &["Kernel panic - not syncing: lkdtm: NMI_PANIC"],
    );
}

#[test]
fn notifier_hang_stops_the_panic_path_in_the_notifier() {
    inject(
        "NOTIFIER_HANG",
        Some(0),
        &[
            "Kernel panic - not syncing: lkdtm: NOTIFIER_HANG",
            "lkdtm: notifier hangs",
        ],
    );
}

#[test]
fn notifier_fault_is_a_nested_panic_that_carries_on() {
    inject(
        "NOTIFIER_FAULT",
        Some(0),
        &[
            "lkdtm: notifier faults",
            "panic: nested panic during",
            "end Kernel panic",
        ],
    );
}

#[test]
fn console_locked_still_prints_the_end_of_the_panic() {
    // Another CPU holds the console lock when it is stopped; the panic path
    // must break the lock to print its last line.
    inject(
        "CONSOLE_LOCKED",
        Some(2),
        &["Kernel panic - not syncing", "end Kernel panic"],
    );
}

#[test]
fn bad_types_and_cpus_are_refused() {
    let mut run = GuestRun::boot(2, "");
    run.wait_for_line("CPUs online:");
    let h = run.handle();
    let e = h
        .inject_crash("NOT_A_CRASH", Some(0))
        .expect_err("bad type");
    assert!(e.to_string().contains("PANIC"), "{e}");
    let e = h.inject_crash("PANIC", Some(7)).expect_err("bad cpu");
    assert!(
        e.to_string().contains('7') || e.to_string().contains("0-1"),
        "{e}"
    );
    assert_eq!(h.crash_types().len(), 9);
}
