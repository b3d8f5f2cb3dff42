//! The checker: does the dump hold, for every vCPU, what a crash dump needs?
//!
//! # JSON schema (version 1)
//!
//! ```text
//! {
//!   "version": 1,
//!   "ok": bool,                       // true iff no verdict is fail/missing/corrupt
//!   "checks": [                       // whole-dump checks
//!     {"name": "structure"|"host_notes"|"vmcoreinfo"|"cpu_sets_agree"
//!              |"guest_fault"|"panic_path",
//!      "verdict": V, "detail": str}
//!   ],
//!   "vcpus": [                        // one per host-captured vCPU, by vcpu
//!     {"vcpu": u32,
//!      "host_rip": u64|null, "guest_rip": u64|null, "guest_cs": u64|null,
//!      "host_note":     {"verdict": V, "detail": str},  // CORE/NT_PRSTATUS from KVM
//!      "guest_note":    {"verdict": V, "detail": str},  // crash note in guest RAM
//!      "guest_context": {"verdict": V, "detail": str},  // RIP in text, kernel CS
//!      "vmx":           {"verdict": V, "detail": str},  // VMX off, VMCS flushed
//!      "host_parked":   {"verdict": V, "detail": str}}  // non-panicking CPU's host
//!                                                       // RIP in the guest's stop loop
//!   ],
//!   "failures": [str]                 // one line per non-passing verdict
//! }
//! V = "pass" | "fail" | "missing" | "corrupt" | "skipped"
//! ```
//!
//! The same checks run on both kinds of vmcore ([`Vmcore::is_kdump`]): in a
//! host-side dump `host_note` is the `CORE`/NT_PRSTATUS note and the guest
//! note is read from RAM through VMCOREINFO; in a kdump vmcore `host_note`
//! is the `VMMHOST` note and the guest note is the `CORE`/NT_PRSTATUS note
//! with `pr_pid == vcpu + 1` that the elfcorehdr's PT_NOTEs supplied.
//!
//! `guest_fault` fails when the VMM recorded a vCPU stopped by a guest fault
//! (a `VMMFAULT` note, [`crate::GuestFault`]); `panic_path` reads the
//! guest's kmsg and fails on nested panics or a path that had not finished
//! when the dump was taken, naming the step and notifier it was in
//! (skipped when the guest did not panic). Both are in
//! [`crate::check_faults`].
//!
//! `missing` means the thing was never written (a guest that did not panic,
//! a CPU that was stopped before saving); `corrupt` means something is there
//! but is not what the contract says.

use guest_abi::elfnote::{
    self, ElfPrstatus, CRASH_NOTE_BYTES, CRASH_NOTE_PRSTATUS_OFFSET, ELF_PRSTATUS_SIZE,
    NOTE_NAME_CORE, NT_PRSTATUS,
};
use serde::Serialize;

use crate::reader::{HostCpu, Vmcore};
use crate::vmcoreinfo::VmcoreInfo;

/// Most CPUs whose guest notes are read (bounds a hostile `nr_cpus`).
const MAX_GUEST_CPUS: u64 = 4096;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Holds.
    Pass,
    /// Present but wrong (VMX left on, RIP outside text...).
    Fail,
    /// Never written.
    Missing,
    /// Present but malformed.
    Corrupt,
    /// Not applicable (an earlier check did not pass).
    Skipped,
}

impl Verdict {
    /// Whether this verdict makes the dump fail the check.
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Missing | Verdict::Corrupt)
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Missing => "MISSING",
            Verdict::Corrupt => "CORRUPT",
            Verdict::Skipped => "skipped",
        }
    }
}

/// A verdict with its explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in a few words.
    pub detail: String,
}

impl CheckResult {
    pub(crate) fn new(verdict: Verdict, detail: impl Into<String>) -> Self {
        CheckResult {
            verdict,
            detail: detail.into(),
        }
    }
}

/// A named whole-dump check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamedCheck {
    /// Check name.
    pub name: &'static str,
    /// Outcome.
    #[serde(flatten)]
    pub result: CheckResult,
}

/// The checks of one vCPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VcpuCheck {
    /// vCPU index.
    pub vcpu: u32,
    /// RIP from the host-captured note.
    pub host_rip: Option<u64>,
    /// RIP from the guest-saved note.
    pub guest_rip: Option<u64>,
    /// CS from the guest-saved note.
    pub guest_cs: Option<u64>,
    /// Host-captured CORE/NT_PRSTATUS present and well-formed.
    pub host_note: CheckResult,
    /// Guest-saved crash note present and well-formed.
    pub guest_note: CheckResult,
    /// Guest-saved RIP inside kernel text, CS the kernel's.
    pub guest_context: CheckResult,
    /// VMX off and VMCS flushed.
    pub vmx: CheckResult,
    /// A CPU other than the panicking one is halted in the guest's stop loop
    /// (host-captured RIP inside `SYMBOL(stop_loop_start..=stop_loop_end)`).
    /// Skipped when the guest published no stop loop or no panic CPU.
    pub host_parked: CheckResult,
}

/// The checker's report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Schema version (1).
    pub version: u32,
    /// True iff nothing failed.
    pub ok: bool,
    /// Whole-dump checks.
    pub checks: Vec<NamedCheck>,
    /// Per-vCPU checks.
    pub vcpus: Vec<VcpuCheck>,
    /// One line per failing verdict.
    pub failures: Vec<String>,
}

/// Knobs of [`check`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckOptions {
    /// Kernel text `[start, end)` to use when VMCOREINFO lacks
    /// `SYMBOL(_stext)`/`SYMBOL(_etext)` (e.g. from the guest ELF).
    pub text_range: Option<(u64, u64)>,
    /// Kernel CS to require; otherwise `NUMBER(kernel_cs)` from VMCOREINFO,
    /// otherwise any non-null selector with RPL 0.
    pub kernel_cs: Option<u16>,
}

/// A guest-saved crash note as found in dumped memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestNote {
    /// A valid CORE/NT_PRSTATUS note.
    Valid(Box<ElfPrstatus>),
    /// Never written (all-zero buffer, or the guest published no notes).
    Missing(String),
    /// Something is there but it is not a valid note.
    Corrupt(String),
}

/// CPU `cpu`'s crash note. In a host-side dump it is found in dumped RAM
/// through VMCOREINFO; in a kdump vmcore it is the `CORE`/NT_PRSTATUS note
/// with `pr_pid == cpu + 1` in the note segment (see [`guest_abi::elfnote`]
/// for both contracts).
pub fn guest_crash_note(core: &Vmcore, info: Option<&VmcoreInfo>, cpu: u32) -> GuestNote {
    if core.is_kdump() {
        return kdump_crash_note(core, cpu);
    }
    let Some(info) = info else {
        return GuestNote::Missing("guest registered no VMCOREINFO".into());
    };
    let Some(base) = info.hex(elfnote::VMCOREINFO_CRASH_NOTES) else {
        return match info.get(elfnote::VMCOREINFO_CRASH_NOTES) {
            Some(v) => GuestNote::Corrupt(format!(
                "VMCOREINFO SYMBOL(crash_notes)={v:?} is not an address"
            )),
            None => GuestNote::Missing("VMCOREINFO has no SYMBOL(crash_notes)".into()),
        };
    };
    let stride = info
        .number(elfnote::VMCOREINFO_CRASH_NOTES_STRIDE)
        .unwrap_or(CRASH_NOTE_BYTES as u64);
    if stride < CRASH_NOTE_BYTES as u64 {
        return GuestNote::Corrupt(format!("crash_notes_stride {stride} too small"));
    }
    let nr = info.number(elfnote::VMCOREINFO_NR_CPUS).unwrap_or(0);
    if cpu as u64 >= nr {
        return GuestNote::Missing(format!("cpu {cpu} beyond guest nr_cpus {nr}"));
    }
    let Some(addr) = (cpu as u64)
        .checked_mul(stride)
        .and_then(|o| o.checked_add(base))
    else {
        return GuestNote::Corrupt("crash note address overflows".into());
    };
    let mut buf = [0u8; CRASH_NOTE_BYTES];
    if let Err(e) = core.read_phys(addr, &mut buf) {
        return GuestNote::Corrupt(format!("crash note at {addr:#x}: {e}"));
    }
    if buf.iter().all(|&b| b == 0) {
        return GuestNote::Missing("never saved (buffer is zero)".into());
    }
    let namesz = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let descsz = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let n_type = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let bad_field = if namesz as usize != NOTE_NAME_CORE.len() + 1 {
        Some(format!("n_namesz {namesz}, expected 5"))
    } else if &buf[12..16] != NOTE_NAME_CORE || buf[16] != 0 {
        Some(format!(
            "note name {:?}, expected \"CORE\"",
            String::from_utf8_lossy(&buf[12..17])
        ))
    } else if n_type != NT_PRSTATUS {
        Some(format!(
            "n_type {n_type}, expected {NT_PRSTATUS} (NT_PRSTATUS)"
        ))
    } else if descsz as usize != ELF_PRSTATUS_SIZE {
        Some(format!("n_descsz {descsz}, expected {ELF_PRSTATUS_SIZE}"))
    } else {
        None
    };
    if let Some(field) = bad_field {
        return GuestNote::Corrupt(format!("crash note at {addr:#x}: {field}"));
    }
    match ElfPrstatus::from_bytes(&buf[CRASH_NOTE_PRSTATUS_OFFSET..]) {
        Some(p) => GuestNote::Valid(Box::new(p)),
        None => GuestNote::Corrupt("short descriptor".into()),
    }
}

/// The guest's note for `cpu` among a kdump vmcore's notes. The capture
/// path copies only saved notes, so absence means "never saved".
fn kdump_crash_note(core: &Vmcore, cpu: u32) -> GuestNote {
    let mut found = None;
    for n in core.find_notes(NOTE_NAME_CORE, NT_PRSTATUS) {
        if n.desc.len() != ELF_PRSTATUS_SIZE {
            continue;
        }
        let Some(p) = ElfPrstatus::from_bytes(&n.desc) else {
            continue;
        };
        if i64::from(p.pr_pid) != i64::from(cpu) + 1 {
            continue;
        }
        if found.is_some() {
            return GuestNote::Corrupt(format!("two CORE notes with pr_pid {}", p.pr_pid));
        }
        found = Some(p);
    }
    match found {
        Some(p) => GuestNote::Valid(Box::new(p)),
        None => {
            let bad = core
                .find_notes(NOTE_NAME_CORE, NT_PRSTATUS)
                .filter(|n| n.desc.len() != ELF_PRSTATUS_SIZE)
                .count();
            if bad > 0 {
                GuestNote::Corrupt(format!(
                    "no note for this CPU; {bad} CORE note(s) with a bad descriptor size"
                ))
            } else {
                GuestNote::Missing("no CORE note in the elfcorehdr's PT_NOTEs (never saved)".into())
            }
        }
    }
}

fn host_note_check(h: &HostCpu) -> CheckResult {
    match &h.prstatus {
        None => CheckResult::new(Verdict::Corrupt, "PRSTATUS descriptor is not 336 bytes"),
        Some(_) if h.qemu.is_none() => CheckResult::new(
            Verdict::Missing,
            "no QEMU CPU-state note (no CR3 for crash)",
        ),
        Some(_) => CheckResult::new(Verdict::Pass, "registers captured"),
    }
}

fn vmx_check(h: &HostCpu) -> CheckResult {
    match &h.vmx {
        None => CheckResult::new(Verdict::Missing, "no VMMVMX note"),
        Some(v) if v.vmx_on => CheckResult::new(Verdict::Fail, "VMX left on"),
        Some(v) if !v.vmcs_flushed => CheckResult::new(
            Verdict::Fail,
            match v.current_vmcs {
                Some(a) => format!("VMCS {a:#x} not flushed to memory"),
                None => "VMCS not flushed to memory".to_string(),
            },
        ),
        Some(_) => CheckResult::new(Verdict::Pass, "VMX off, VMCS flushed"),
    }
}

fn parked_check(h: &HostCpu, panic_cpu: Option<u32>, stop_loop: Option<(u64, u64)>) -> CheckResult {
    let Some(panic_cpu) = panic_cpu else {
        return CheckResult::new(Verdict::Skipped, "no panicking CPU published");
    };
    if h.vcpu == panic_cpu {
        return CheckResult::new(Verdict::Skipped, "the panicking CPU");
    }
    let Some((start, end)) = stop_loop else {
        return CheckResult::new(Verdict::Skipped, "guest published no stop loop");
    };
    let Some(rip) = h.prstatus.map(|p| p.rip()) else {
        return CheckResult::new(Verdict::Skipped, "no host registers");
    };
    if (start..=end).contains(&rip) {
        CheckResult::new(Verdict::Pass, "halted in the stop loop")
    } else {
        CheckResult::new(
            Verdict::Fail,
            format!("RIP {rip:#x} outside stop loop {start:#x}..={end:#x}"),
        )
    }
}

fn context_check(p: &ElfPrstatus, text: Option<(u64, u64)>, kernel_cs: Option<u64>) -> CheckResult {
    let (rip, cs) = (p.rip(), p.cs());
    let Some((start, end)) = text else {
        return CheckResult::new(
            Verdict::Fail,
            "no kernel text range (SYMBOL(_stext)/_etext)",
        );
    };
    if !(start..end).contains(&rip) {
        return CheckResult::new(
            Verdict::Fail,
            format!("RIP {rip:#x} outside text {start:#x}..{end:#x}"),
        );
    }
    let cs_ok = match kernel_cs {
        Some(k) => cs == k,
        None => cs != 0 && cs & 3 == 0 && cs <= 0xffff,
    };
    if !cs_ok {
        return CheckResult::new(Verdict::Fail, format!("CS {cs:#x} is not the kernel's"));
    }
    CheckResult::new(Verdict::Pass, "RIP in text, kernel CS")
}

/// Check a parsed vmcore.
pub fn check(core: &Vmcore, opts: &CheckOptions) -> CheckReport {
    let hosts = core.host_cpus();
    let info = core.vmcoreinfo();
    let mut checks = Vec::new();

    let structure = if core.loads().is_empty() {
        CheckResult::new(Verdict::Fail, "no PT_LOAD: no memory in the dump")
    } else {
        CheckResult::new(
            Verdict::Pass,
            format!(
                "{} notes, {} PT_LOADs",
                core.notes().len(),
                core.loads().len()
            ),
        )
    };
    checks.push(NamedCheck {
        name: "structure",
        result: structure,
    });
    let mut seen = std::collections::BTreeSet::new();
    let dup = hosts.iter().find(|h| !seen.insert(h.vcpu));
    checks.push(NamedCheck {
        name: "host_notes",
        result: match (hosts.is_empty(), dup) {
            (true, _) => CheckResult::new(
                Verdict::Missing,
                if core.is_kdump() {
                    "no VMMHOST host-register notes"
                } else {
                    "no CORE/NT_PRSTATUS notes"
                },
            ),
            (_, Some(d)) => CheckResult::new(Verdict::Corrupt, format!("vCPU {} twice", d.vcpu)),
            _ => CheckResult::new(Verdict::Pass, format!("{} vCPUs", hosts.len())),
        },
    });
    checks.push(NamedCheck {
        name: "vmcoreinfo",
        result: crate::check_faults::vmcoreinfo_check(info.as_ref()),
    });
    checks.push(NamedCheck {
        name: "guest_fault",
        result: crate::check_faults::guest_fault_check(core),
    });
    let kmsg = crate::check_faults::kmsg_facts(core, info.as_ref());

    let text = info
        .as_ref()
        .and_then(|i| {
            Some((
                i.hex(elfnote::VMCOREINFO_STEXT)?,
                i.hex(elfnote::VMCOREINFO_ETEXT)?,
            ))
        })
        .or(opts.text_range);
    let kernel_cs = opts.kernel_cs.map(u64::from).or_else(|| {
        info.as_ref()
            .and_then(|i| i.number(elfnote::VMCOREINFO_KERNEL_CS))
    });

    let stop_loop = info.as_ref().and_then(|i| {
        Some((
            i.hex(elfnote::VMCOREINFO_STOP_LOOP_START)?,
            i.hex(elfnote::VMCOREINFO_STOP_LOOP_END)?,
        ))
    });
    let panic_cpu = info
        .as_ref()
        .and_then(|i| i.hex(elfnote::VMCOREINFO_PANIC_CPU))
        .and_then(|a| {
            let mut b = [0u8; 4];
            core.read_phys(a, &mut b).ok()?;
            Some(u32::from_le_bytes(b)).filter(|&c| c != u32::MAX)
        });

    let mut vcpus: Vec<VcpuCheck> = Vec::new();
    let mut guest_saved = std::collections::BTreeSet::new();
    for h in &hosts {
        let gn = guest_crash_note(core, info.as_ref(), h.vcpu);
        let (guest_note, guest_context, guest_rip, guest_cs) = match &gn {
            GuestNote::Valid(p) => {
                guest_saved.insert(h.vcpu);
                let pid_ok = p.pr_pid == h.vcpu as i32 + 1;
                let note = if pid_ok {
                    CheckResult::new(Verdict::Pass, "saved by the guest")
                } else {
                    CheckResult::new(
                        Verdict::Corrupt,
                        format!(
                            "pr_pid {} in vCPU {}'s note, expected {}",
                            p.pr_pid,
                            h.vcpu,
                            h.vcpu + 1
                        ),
                    )
                };
                (
                    note,
                    context_check(p, text, kernel_cs),
                    Some(p.rip()),
                    Some(p.cs()),
                )
            }
            GuestNote::Missing(why) => (
                CheckResult::new(
                    Verdict::Missing,
                    match kmsg.as_ref().and_then(|k| k.why_unsaved(h.vcpu)) {
                        Some(logged) => format!("{why}; {logged}"),
                        None => why.clone(),
                    },
                ),
                CheckResult::new(Verdict::Skipped, "no guest note"),
                None,
                None,
            ),
            GuestNote::Corrupt(why) => (
                CheckResult::new(Verdict::Corrupt, why.clone()),
                CheckResult::new(Verdict::Skipped, "no valid guest note"),
                None,
                None,
            ),
        };
        vcpus.push(VcpuCheck {
            vcpu: h.vcpu,
            host_rip: h.prstatus.map(|p| p.rip()),
            guest_rip,
            guest_cs,
            host_note: host_note_check(h),
            guest_note,
            guest_context,
            vmx: vmx_check(h),
            host_parked: parked_check(h, panic_cpu, stop_loop),
        });
    }

    // Guest and host must agree on the CPU set: the guest's nr_cpus is the
    // number of vCPUs, and the CPUs that saved notes are all host vCPUs.
    let nr = info
        .as_ref()
        .and_then(|i| i.number(elfnote::VMCOREINFO_NR_CPUS));
    let agree = match nr {
        None => CheckResult::new(Verdict::Missing, "guest published no NUMBER(nr_cpus)"),
        Some(n) if n != hosts.len() as u64 => CheckResult::new(
            Verdict::Fail,
            format!(
                "VMCOREINFO NUMBER(nr_cpus)={n}, but the host has {} vCPUs",
                hosts.len()
            ),
        ),
        Some(n) => {
            let extra: Vec<u32> = (0..n.min(MAX_GUEST_CPUS) as u32)
                .filter(|c| !seen.contains(c))
                .filter(|&c| {
                    matches!(
                        guest_crash_note(core, info.as_ref(), c),
                        GuestNote::Valid(_)
                    )
                })
                .collect();
            if extra.is_empty() {
                CheckResult::new(
                    Verdict::Pass,
                    format!("{} of {n} CPUs saved by the guest", guest_saved.len()),
                )
            } else {
                CheckResult::new(
                    Verdict::Fail,
                    format!("guest notes for CPUs the host lacks: {extra:?}"),
                )
            }
        }
    };
    checks.push(NamedCheck {
        name: "cpu_sets_agree",
        result: agree,
    });
    checks.push(NamedCheck {
        name: "panic_path",
        result: match &kmsg {
            Some(k) => k.panic_path_check(),
            None => CheckResult::new(Verdict::Skipped, "the guest published no kmsg"),
        },
    });

    let mut failures = Vec::new();
    for c in &checks {
        if c.result.verdict.is_failure() {
            failures.push(format!(
                "{}: {} ({})",
                c.name,
                c.result.verdict.label(),
                c.result.detail
            ));
        }
    }
    for v in &vcpus {
        for (name, r) in [
            ("host_note", &v.host_note),
            ("guest_note", &v.guest_note),
            ("guest_context", &v.guest_context),
            ("vmx", &v.vmx),
            ("host_parked", &v.host_parked),
        ] {
            if r.verdict.is_failure() {
                failures.push(format!(
                    "vcpu {}: {name}: {} ({})",
                    v.vcpu,
                    r.verdict.label(),
                    r.detail
                ));
            }
        }
    }
    CheckReport {
        version: 1,
        ok: failures.is_empty(),
        checks,
        vcpus,
        failures,
    }
}

impl CheckReport {
    /// The report as JSON (schema in the module docs).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises: plain data")
    }

    /// A human-readable table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for c in &self.checks {
            let _ = writeln!(
                s,
                "{:<15} {:<8} {}",
                c.name,
                c.result.verdict.label(),
                c.result.detail
            );
        }
        let _ = writeln!(
            s,
            "\n{:>4}  {:<18} {:<18} {:<9} {:<9} {:<13} {:<9} {:<9}",
            "vcpu", "host rip", "guest rip", "host", "guest", "guest ctx", "vmx", "parked"
        );
        let hex = |v: Option<u64>| v.map(|v| format!("{v:#x}")).unwrap_or_else(|| "-".into());
        for v in &self.vcpus {
            let _ = writeln!(
                s,
                "{:>4}  {:<18} {:<18} {:<9} {:<9} {:<13} {:<9} {:<9}",
                v.vcpu,
                hex(v.host_rip),
                hex(v.guest_rip),
                v.host_note.verdict.label(),
                v.guest_note.verdict.label(),
                v.guest_context.verdict.label(),
                v.vmx.verdict.label(),
                v.host_parked.verdict.label()
            );
        }
        if self.ok {
            let _ = writeln!(s, "\nOK: every check passed");
        } else {
            let _ = writeln!(s, "\n{} failure(s):", self.failures.len());
            for f in &self.failures {
                let _ = writeln!(s, "  {f}");
            }
        }
        s
    }
}
