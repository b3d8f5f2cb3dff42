//! The checker's diagnosis of guest misbehaviour: a malformed VMCOREINFO, a
//! guest fault the VMM recorded, and where the panic path got to (read
//! from the guest's kmsg in the dump). [`crate::check`] adds these to its
//! whole-dump checks and uses [`KmsgFacts`] to say why a CPU's note is
//! missing.

use std::collections::BTreeSet;

use guest_abi::elfnote;

use crate::check::{CheckResult, Verdict};
use crate::reader::Vmcore;
use crate::vmcoreinfo::VmcoreInfo;

/// Keys of the guest's VMCOREINFO contract whose values are addresses.
const HEX_KEYS: [&str; 9] = [
    elfnote::VMCOREINFO_CRASH_NOTES,
    elfnote::VMCOREINFO_STEXT,
    elfnote::VMCOREINFO_ETEXT,
    elfnote::VMCOREINFO_LOG_BUF,
    elfnote::VMCOREINFO_LOG_BUF_HEAD,
    elfnote::VMCOREINFO_PANIC_MSG,
    elfnote::VMCOREINFO_PANIC_CPU,
    elfnote::VMCOREINFO_STOP_LOOP_START,
    elfnote::VMCOREINFO_STOP_LOOP_END,
];

/// Keys of the contract whose values are numbers.
const NUMBER_KEYS: [&str; 5] = [
    elfnote::VMCOREINFO_CRASH_NOTES_STRIDE,
    elfnote::VMCOREINFO_NR_CPUS,
    elfnote::VMCOREINFO_KERNEL_CS,
    elfnote::VMCOREINFO_LOG_BUF_LEN,
    elfnote::VMCOREINFO_PANIC_MSG_LEN,
];

/// The `vmcoreinfo` check: present, and every contract key that is there
/// has a value of its kind. Names the first bad key and its value.
pub(crate) fn vmcoreinfo_check(info: Option<&VmcoreInfo>) -> CheckResult {
    let Some(info) = info else {
        return CheckResult::new(Verdict::Missing, "guest registered no VMCOREINFO");
    };
    for key in HEX_KEYS {
        if let Some(v) = info.get(key) {
            if info.hex(key).is_none() {
                return CheckResult::new(
                    Verdict::Corrupt,
                    format!("VMCOREINFO {key}={} is not a hex address", shorten(v)),
                );
            }
        }
    }
    for key in NUMBER_KEYS {
        if let Some(v) = info.get(key) {
            if info.number(key).is_none() {
                return CheckResult::new(
                    Verdict::Corrupt,
                    format!("VMCOREINFO {key}={} is not a number", shorten(v)),
                );
            }
        }
    }
    CheckResult::new(Verdict::Pass, format!("{} keys", info.entries.len()))
}

fn shorten(v: &str) -> String {
    let mut s: String = v.chars().take(40).collect();
    if s.len() < v.len() {
        s.push_str("...");
    }
    format!("{s:?}")
}

/// The `guest_fault` check: a `VMMFAULT` note fails it and names the vCPU,
/// the fault and the RIP.
pub(crate) fn guest_fault_check(core: &Vmcore) -> CheckResult {
    match core.guest_fault() {
        None => CheckResult::new(Verdict::Pass, "no vCPU stopped on a guest fault"),
        Some(Ok(f)) => CheckResult::new(Verdict::Fail, f.to_string()),
        Some(Err(e)) => CheckResult::new(Verdict::Corrupt, e),
    }
}

/// What the guest's kmsg says about its panic path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KmsgFacts {
    /// The guest panicked (`Kernel panic - not syncing:` seen).
    pub panicked: bool,
    /// The panic message.
    pub message: Option<String>,
    /// The last `panic: step` line's step.
    pub last_step: Option<String>,
    /// The last `panic: notifier` line's notifier, if after the last step.
    pub last_notifier: Option<String>,
    /// `panic: nested panic during <step>: <msg>` lines.
    pub nested: Vec<String>,
    /// CPUs the shootdown reported as `did not respond to NMI`.
    pub nmi_unanswered: BTreeSet<u32>,
    /// CPUs `smp_send_stop` reported as `did not stop`.
    pub not_stopped: BTreeSet<u32>,
    /// The path ended: the end-of-panic line, a reboot, or the handover to
    /// a capture kernel.
    pub finished: Option<String>,
}

impl KmsgFacts {
    /// Reads the facts from the kmsg text (lines may carry `[seq] `).
    pub fn parse(kmsg: &str) -> Self {
        let mut f = KmsgFacts::default();
        for line in kmsg.lines() {
            let line = match line.strip_prefix('[') {
                Some(rest) => rest.split_once("] ").map_or(line, |(_, l)| l),
                None => line,
            };
            let cpu_of = |rest: &str| {
                rest.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
            };
            if let Some(m) = line.strip_prefix("Kernel panic - not syncing: ") {
                if !f.panicked {
                    f.message = Some(m.to_string());
                }
                f.panicked = true;
            } else if let Some(s) = line.strip_prefix("panic: step ") {
                f.last_step = Some(s.to_string());
                f.last_notifier = None;
            } else if let Some(n) = line.strip_prefix("panic: notifier ") {
                f.last_notifier = n.split_whitespace().next().map(str::to_string);
            } else if let Some(n) = line.strip_prefix("panic: nested panic during ") {
                f.nested.push(n.to_string());
            } else if let Some(rest) = line.strip_prefix("crash: CPU ") {
                if rest.ends_with("did not respond to NMI") {
                    f.nmi_unanswered.extend(cpu_of(rest));
                }
            } else if let Some(rest) = line.strip_prefix("smp: CPU ") {
                if rest.ends_with("did not stop") {
                    f.not_stopped.extend(cpu_of(rest));
                }
            } else if line.starts_with("---[ end Kernel panic")
                || line.starts_with("panic: rebooting")
                || line.starts_with("kexec: jumping to capture kernel")
                || line.starts_with("panic: too many nested panics")
            {
                f.finished = Some(line.to_string());
            }
        }
        f
    }

    /// Why CPU `cpu`'s note may be missing, as the guest logged it.
    pub fn why_unsaved(&self, cpu: u32) -> Option<&'static str> {
        if self.nmi_unanswered.contains(&cpu) {
            Some("the guest logged: did not respond to the crash NMI")
        } else if self.not_stopped.contains(&cpu) {
            Some("the guest logged: did not stop")
        } else {
            None
        }
    }

    /// The `panic_path` check. Skipped when the guest did not panic (or
    /// published no kmsg); passes when the path finished without a nested
    /// panic; fails naming the nested panics, or the step (and notifier)
    /// the path was in when the dump was taken.
    pub fn panic_path_check(&self) -> CheckResult {
        if !self.panicked {
            return CheckResult::new(Verdict::Skipped, "the guest did not panic");
        }
        let where_ = match (&self.last_step, &self.last_notifier) {
            (Some(s), Some(n)) => format!("step {s}, notifier {n}"),
            (Some(s), None) => format!("step {s}"),
            (None, _) => "before its first step".to_string(),
        };
        let mut problems = Vec::new();
        if !self.nested.is_empty() {
            problems.push(format!(
                "{} nested panic(s): during {}",
                self.nested.len(),
                self.nested.join("; during ")
            ));
        }
        match &self.finished {
            Some(end) if problems.is_empty() => {
                return CheckResult::new(Verdict::Pass, format!("finished: {end}"))
            }
            Some(_) => problems.push(format!("then finished after {where_}")),
            None => problems.push(format!("did not finish: last in {where_}")),
        }
        CheckResult::new(Verdict::Fail, problems.join("; "))
    }
}

/// The kmsg facts of the dump, if the guest published its log.
pub(crate) fn kmsg_facts(core: &Vmcore, info: Option<&VmcoreInfo>) -> Option<KmsgFacts> {
    let text = crate::info::kmsg(core, info?)?;
    Some(KmsgFacts::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_facts_follow_the_panic_path() {
        let f = KmsgFacts::parse(
            "[1] CPUs online: 4/4\n[2] Kernel panic - not syncing: lkdtm: NOTIFIER_HANG\n\
             [3] panic: step crash_smp_send_stop\n[4] crash: CPU 2 did not respond to NMI\n\
             [5] panic: step panic_notifier_list\n[6] panic: notifier pvpanic (hypervisor)\n\
             [7] panic: notifier lkdtm_hang (info)\n",
        );
        assert!(f.panicked);
        assert_eq!(f.message.as_deref(), Some("lkdtm: NOTIFIER_HANG"));
        assert_eq!(f.nmi_unanswered, BTreeSet::from([2]));
        assert!(f.why_unsaved(2).unwrap().contains("crash NMI"));
        assert_eq!(f.why_unsaved(1), None);
        let c = f.panic_path_check();
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.detail
                .contains("did not finish: last in step panic_notifier_list, notifier lkdtm_hang"),
            "{}",
            c.detail
        );

        let f = KmsgFacts::parse(
            "Kernel panic - not syncing: x\npanic: step panic_notifier_list\n\
             panic: nested panic during panic_notifier_list: Fatal exception\n\
             panic: step flush_and_reboot\n---[ end Kernel panic - not syncing: x ]---\n",
        );
        let c = f.panic_path_check();
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c
            .detail
            .contains("1 nested panic(s): during panic_notifier_list: Fatal exception"));
        let ok = KmsgFacts::parse("Kernel panic - not syncing: x\n---[ end Kernel panic ]---\n");
        assert_eq!(ok.panic_path_check().verdict, Verdict::Pass);
        assert_eq!(
            KmsgFacts::parse("CPUs online: 1/1\n")
                .panic_path_check()
                .verdict,
            Verdict::Skipped
        );
    }

    #[test]
    fn vmcoreinfo_check_names_the_bad_key() {
        let v = VmcoreInfo::parse(b"SYMBOL(crash_notes)=zzzz\nNUMBER(nr_cpus)=4\n");
        let c = vmcoreinfo_check(Some(&v));
        assert_eq!(c.verdict, Verdict::Corrupt);
        assert!(c
            .detail
            .contains("SYMBOL(crash_notes)=\"zzzz\" is not a hex address"));
        let v = VmcoreInfo::parse(b"SYMBOL(crash_notes)=1000\nNUMBER(nr_cpus)=four\n");
        assert!(vmcoreinfo_check(Some(&v))
            .detail
            .contains("NUMBER(nr_cpus)"));
        assert_eq!(vmcoreinfo_check(None).verdict, Verdict::Missing);
        let v = VmcoreInfo::parse(b"SYMBOL(crash_notes)=1000\nNUMBER(nr_cpus)=4\n");
        assert_eq!(vmcoreinfo_check(Some(&v)).verdict, Verdict::Pass);
    }
}
