//! The order of the steps `panic()` takes, per policy.
//!
//! This is a plain function of the configuration so it can be tested on the
//! host; the kernel's `panic()` walks the returned steps in order. Each
//! policy transcribes one version of Linux's `kernel/panic.c`:
//!
//! * [`Policy::Linux`]: mainline `vpanic()` today. kdump first unless
//!   `crash_kexec_post_notifiers`; then the other CPUs are stopped, by
//!   `crash_smp_send_stop()` (NMI shootdown that saves registers and turns
//!   VMX off) when post-notifiers is set, else `smp_send_stop()`; then the
//!   one notifier list, `panic_print`, `kmsg_dump`, kdump if post-notifiers.
//! * [`Policy::Linux2016`]: the code before Hidehiro Kawai's 2016 fix (seed
//!   `2016-07-kexec-panic_smp_send_stop.txt`): the CPUs are always stopped
//!   with plain `smp_send_stop()`. With post-notifiers, kdump's own
//!   shootdown later finds them already offline: no registers, VMX left on.
//! * [`Policy::Proposal2022`]: Petr Mladek's pseudo-code (seed
//!   `2022-01-panic-notifiers-ordering.txt`): info, hypervisor and reboot
//!   lists; hypervisor notifiers before kdump when
//!   `crash_kexec_post_hypervisor` is set (the name reads "kdump comes after
//!   the hypervisor notifiers"), else after; CPUs stopped with
//!   `crash_smp_send_stop()` first whenever anything runs before kdump.
//!
//! `CrashKexec` is listed even when no crash kernel is loaded: as in Linux,
//! `__crash_kexec()` then does nothing and `panic()` carries on.

/// Which version of the panic path to follow (`panic_policy=` on the command line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Mainline Linux today (the default).
    #[default]
    Linux,
    /// Linux before the 2016 `crash_smp_send_stop()` fix.
    Linux2016,
    /// The 2022 three-list proposal.
    Proposal2022,
}

impl Policy {
    /// Parses a `panic_policy=` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "linux" => Some(Self::Linux),
            "linux-2016" => Some(Self::Linux2016),
            "proposal-2022" => Some(Self::Proposal2022),
            _ => None,
        }
    }

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::Linux2016 => "linux-2016",
            Self::Proposal2022 => "proposal-2022",
        }
    }
}

/// The knobs that decide the order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PanicConfig {
    /// `panic_policy=`.
    pub policy: Policy,
    /// `crash_kexec_post_notifiers`: run notifiers and kmsg_dump before kdump.
    pub crash_kexec_post_notifiers: bool,
    /// `crash_kexec_post_hypervisor` (proposal-2022 only): hypervisor
    /// notifiers run before kdump.
    pub crash_kexec_post_hypervisor: bool,
    /// `panic_print=` bits; non-zero means extra info is printed.
    pub panic_print: u32,
    /// Whether a kmsg dumper is registered (`kmsg_dump=` on the command line).
    pub kmsg_dumper: bool,
}

/// One step of `panic()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `__crash_kexec()`: if a crash kernel is loaded, `machine_crash_shutdown()`
    /// (NMI shootdown of the CPUs still online, own save and VMX off) and the
    /// jump to the capture kernel. Does not return when it succeeds.
    CrashKexec,
    /// `smp_send_stop()`: a normal IPI, then an NMI for CPUs that ignore it.
    /// Stopped CPUs save nothing and leave VMX as it was.
    SmpSendStop,
    /// `crash_smp_send_stop()`: the NMI shootdown; every other CPU saves its
    /// registers and turns VMX off. Runs at most once.
    CrashSmpSendStop,
    /// The single `panic_notifier_list` (Linux, Linux2016).
    Notifiers,
    /// proposal-2022: `panic_info_notifier_list`.
    InfoNotifiers,
    /// proposal-2022: `panic_hypervisor_notifier_list` (pvpanic lives here).
    HypervisorNotifiers,
    /// proposal-2022: `panic_reboot_notifier_list`.
    RebootNotifiers,
    /// `panic_print_sys_info()`.
    PanicPrint,
    /// `kmsg_dump(KMSG_DUMP_PANIC)`.
    KmsgDump,
    /// Console flush and the `panic=` timeout: reboot or halt.
    FlushAndReboot,
}

impl Step {
    /// The name in `panic: step <name>` log lines (Linux's function names).
    pub fn name(self) -> &'static str {
        match self {
            Self::CrashKexec => "crash_kexec",
            Self::SmpSendStop => "smp_send_stop",
            Self::CrashSmpSendStop => "crash_smp_send_stop",
            Self::Notifiers => "panic_notifier_list",
            Self::InfoNotifiers => "panic_info_notifier_list",
            Self::HypervisorNotifiers => "panic_hypervisor_notifier_list",
            Self::RebootNotifiers => "panic_reboot_notifier_list",
            Self::PanicPrint => "panic_print",
            Self::KmsgDump => "kmsg_dump",
            Self::FlushAndReboot => "flush_and_reboot",
        }
    }
}

/// The most steps any policy takes.
pub const MAX_STEPS: usize = 12;

/// A fixed-capacity step list (no allocator in the guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steps {
    steps: [Option<Step>; MAX_STEPS],
    len: usize,
}

impl Steps {
    const fn new() -> Self {
        Self {
            steps: [None; MAX_STEPS],
            len: 0,
        }
    }

    fn push(&mut self, step: Step) {
        // Capacity covers every policy's longest path (tested below).
        if self.len < MAX_STEPS {
            self.steps[self.len] = Some(step);
            self.len += 1;
        }
    }

    /// The steps in order.
    pub fn iter(&self) -> impl Iterator<Item = Step> + '_ {
        self.steps[..self.len].iter().flatten().copied()
    }

    /// Step `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<Step> {
        self.steps.get(i).copied().flatten()
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no steps.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The steps `panic()` takes, in order, for `cfg`.
pub fn panic_steps(cfg: &PanicConfig) -> Steps {
    let mut s = Steps::new();
    let post = cfg.crash_kexec_post_notifiers;
    match cfg.policy {
        Policy::Linux => {
            if !post {
                s.push(Step::CrashKexec);
            }
            s.push(if post {
                Step::CrashSmpSendStop
            } else {
                Step::SmpSendStop
            });
            s.push(Step::Notifiers);
            s.push(Step::PanicPrint);
            s.push(Step::KmsgDump);
            if post {
                s.push(Step::CrashKexec);
            }
        }
        Policy::Linux2016 => {
            if !post {
                s.push(Step::CrashKexec);
            }
            s.push(Step::SmpSendStop);
            s.push(Step::Notifiers);
            s.push(Step::PanicPrint);
            s.push(Step::KmsgDump);
            if post {
                s.push(Step::CrashKexec);
            }
        }
        Policy::Proposal2022 => {
            let hyper_first = cfg.crash_kexec_post_hypervisor;
            let stop_first = hyper_first || cfg.panic_print != 0 || cfg.kmsg_dumper;
            if stop_first {
                s.push(Step::CrashSmpSendStop);
            }
            if hyper_first {
                s.push(Step::HypervisorNotifiers);
            }
            if cfg.kmsg_dumper {
                s.push(Step::InfoNotifiers);
            }
            s.push(Step::PanicPrint);
            s.push(Step::KmsgDump);
            s.push(Step::CrashKexec);
            if !stop_first {
                s.push(Step::SmpSendStop);
            }
            if !hyper_first {
                s.push(Step::HypervisorNotifiers);
            }
            if !cfg.kmsg_dumper {
                s.push(Step::InfoNotifiers);
            }
            s.push(Step::RebootNotifiers);
        }
    }
    s.push(Step::FlushAndReboot);
    s
}

#[cfg(test)]
mod tests {
    use super::Step::*;
    use super::*;

    fn steps(cfg: PanicConfig) -> Vec<Step> {
        panic_steps(&cfg).iter().collect()
    }

    fn cfg(policy: Policy, post: bool) -> PanicConfig {
        PanicConfig {
            policy,
            crash_kexec_post_notifiers: post,
            ..Default::default()
        }
    }

    #[test]
    fn linux_runs_kdump_first_by_default() {
        assert_eq!(
            steps(cfg(Policy::Linux, false)),
            [
                CrashKexec,
                SmpSendStop,
                Notifiers,
                PanicPrint,
                KmsgDump,
                FlushAndReboot
            ]
        );
    }

    #[test]
    fn linux_post_notifiers_stops_cpus_with_the_crash_shootdown() {
        assert_eq!(
            steps(cfg(Policy::Linux, true)),
            [
                CrashSmpSendStop,
                Notifiers,
                PanicPrint,
                KmsgDump,
                CrashKexec,
                FlushAndReboot
            ]
        );
    }

    #[test]
    fn linux_2016_post_notifiers_stops_cpus_with_a_plain_ipi_before_kdump() {
        let s = steps(cfg(Policy::Linux2016, true));
        assert_eq!(
            s,
            [
                SmpSendStop,
                Notifiers,
                PanicPrint,
                KmsgDump,
                CrashKexec,
                FlushAndReboot
            ]
        );
        // The seed's Problem 2: nothing saved the other CPUs before kdump.
        assert!(!s.contains(&CrashSmpSendStop));
    }

    #[test]
    fn linux_2016_without_post_notifiers_matches_linux() {
        assert_eq!(
            steps(cfg(Policy::Linux2016, false)),
            steps(cfg(Policy::Linux, false))
        );
    }

    #[test]
    fn proposal_2022_kdump_first_when_nothing_runs_before_it() {
        assert_eq!(
            steps(cfg(Policy::Proposal2022, false)),
            [
                PanicPrint,
                KmsgDump,
                CrashKexec,
                SmpSendStop,
                HypervisorNotifiers,
                InfoNotifiers,
                RebootNotifiers,
                FlushAndReboot
            ]
        );
    }

    #[test]
    fn proposal_2022_hypervisor_before_kdump_stops_cpus_first() {
        let c = PanicConfig {
            crash_kexec_post_hypervisor: true,
            ..cfg(Policy::Proposal2022, false)
        };
        assert_eq!(
            steps(c),
            [
                CrashSmpSendStop,
                HypervisorNotifiers,
                PanicPrint,
                KmsgDump,
                CrashKexec,
                InfoNotifiers,
                RebootNotifiers,
                FlushAndReboot
            ]
        );
    }

    #[test]
    fn proposal_2022_kmsg_dumper_moves_info_notifiers_before_kdump() {
        let c = PanicConfig {
            kmsg_dumper: true,
            ..cfg(Policy::Proposal2022, false)
        };
        assert_eq!(
            steps(c),
            [
                CrashSmpSendStop,
                InfoNotifiers,
                PanicPrint,
                KmsgDump,
                CrashKexec,
                HypervisorNotifiers,
                RebootNotifiers,
                FlushAndReboot
            ]
        );
    }

    #[test]
    fn proposal_2022_panic_print_alone_stops_cpus_first() {
        let c = PanicConfig {
            panic_print: 1,
            ..cfg(Policy::Proposal2022, false)
        };
        let s = steps(c);
        assert_eq!(s[0], CrashSmpSendStop);
        assert!(!s.contains(&SmpSendStop));
    }

    #[test]
    fn every_path_stops_cpus_once_and_ends_with_flush() {
        for policy in [Policy::Linux, Policy::Linux2016, Policy::Proposal2022] {
            for bits in 0..16u32 {
                let c = PanicConfig {
                    policy,
                    crash_kexec_post_notifiers: bits & 1 != 0,
                    crash_kexec_post_hypervisor: bits & 2 != 0,
                    panic_print: bits & 4,
                    kmsg_dumper: bits & 8 != 0,
                };
                let s = steps(c);
                assert!(s.len() < MAX_STEPS, "{c:?}");
                let stops = s
                    .iter()
                    .filter(|x| matches!(x, SmpSendStop | CrashSmpSendStop))
                    .count();
                assert_eq!(stops, 1, "{c:?}: {s:?}");
                assert_eq!(s.iter().filter(|x| **x == CrashKexec).count(), 1, "{c:?}");
                assert_eq!(s.last(), Some(&FlushAndReboot));
            }
        }
    }

    #[test]
    fn policy_names_round_trip() {
        for p in [Policy::Linux, Policy::Linux2016, Policy::Proposal2022] {
            assert_eq!(Policy::parse(p.name()), Some(p));
        }
        assert_eq!(Policy::parse("bogus"), None);
    }
}
