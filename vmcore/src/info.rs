//! `vmcore info`: what is in a dump, for a human (or as JSON).

use guest_abi::elfnote::{self, reg, PvpanicLogEntry};
use serde::Serialize;

use crate::check::{guest_crash_note, GuestNote};
use crate::cpu::VmxState;
use crate::reader::Vmcore;

/// Largest kmsg ring or panic message read from the dump.
const MAX_TEXT: u64 = 16 << 20;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    /// The kernel ELF could not be parsed.
    #[error("cannot parse kernel ELF")]
    Elf(#[source] goblin::error::Error),
}

/// Function symbols of the guest kernel, for symbolising addresses.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    /// (address, size, name), sorted by address.
    syms: Vec<(u64, u64, String)>,
}

impl Symbols {
    /// Read the symbol table of an ELF image (the guest kernel).
    pub fn from_elf(bytes: &[u8]) -> Result<Self, InfoError> {
        let elf = goblin::elf::Elf::parse(bytes).map_err(InfoError::Elf)?;
        let mut syms: Vec<(u64, u64, String)> = elf
            .syms
            .iter()
            .filter(|s| {
                s.st_value != 0
                    && matches!(
                        s.st_type(),
                        goblin::elf::sym::STT_FUNC | goblin::elf::sym::STT_NOTYPE
                    )
            })
            .filter_map(|s| {
                let name = elf.strtab.get_at(s.st_name)?;
                (!name.is_empty() && !name.starts_with(".L"))
                    .then(|| (s.st_value, s.st_size, name.to_string()))
            })
            .collect();
        syms.sort();
        Ok(Symbols { syms })
    }

    /// `name+0xoff` for `addr`: the symbol containing it, or the nearest one
    /// before it when sizes are unknown.
    pub fn lookup(&self, addr: u64) -> Option<String> {
        let i = self.syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (a, size, name) = &self.syms[i];
        if *size != 0 && addr - a >= *size {
            return None;
        }
        Some(if addr == *a {
            name.clone()
        } else {
            format!("{name}+{:#x}", addr - a)
        })
    }
}

/// One vCPU's registers.
#[derive(Clone, Debug, Serialize)]
pub struct CpuInfo {
    /// vCPU index.
    pub vcpu: u32,
    /// Where the registers come from: "host" (KVM at dump time) or "guest"
    /// (the guest's own crash note).
    pub source: &'static str,
    /// RIP.
    pub rip: u64,
    /// RIP as `symbol+off`, when symbols were given.
    pub rip_symbol: Option<String>,
    /// RSP.
    pub rsp: u64,
    /// RBP.
    pub rbp: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CS selector.
    pub cs: u64,
    /// CR3 (host notes only, from the QEMU note).
    pub cr3: Option<u64>,
}

/// Everything `vmcore info` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    /// Where the dump came from: "host" (the VMM's host-side dump) or
    /// "kdump" (written from the guest's elfcorehdr).
    pub kind: &'static str,
    /// For a kdump vmcore: GPA of the elfcorehdr it was written from.
    pub elfcorehdr: Option<u64>,
    /// Number of PT_LOADs and the RAM they cover.
    pub loads: usize,
    /// Bytes of memory covered.
    pub ram_bytes: u64,
    /// Registers per vCPU: host-captured, then guest-saved.
    pub cpus: Vec<CpuInfo>,
    /// VMCOREINFO entries.
    pub vmcoreinfo: Vec<(String, String)>,
    /// The panicking CPU, if published.
    pub panic_cpu: Option<u32>,
    /// The panic message, if published.
    pub panic_message: Option<String>,
    /// The kmsg text, if published.
    pub kmsg: Option<String>,
    /// pvpanic events.
    pub pvpanic: Vec<PvpanicEvent>,
    /// Events the VMM dropped.
    pub pvpanic_dropped: u32,
    /// VMX state per vCPU.
    pub vmx: Vec<VmxState>,
    /// The guest fault that stopped a vCPU (`VMMFAULT`), as one line
    /// (with the symbol of its RIP when known).
    pub guest_fault: Option<String>,
}

/// A pvpanic event, decoded.
#[derive(Clone, Debug, Serialize)]
pub struct PvpanicEvent {
    /// Sequence number.
    pub seq: u32,
    /// The raw event bits.
    pub events: u32,
    /// Names of the bits set.
    pub names: Vec<&'static str>,
    /// vCPU (u32::MAX if unknown).
    pub vcpu: u32,
    /// Nanoseconds since VM start.
    pub timestamp_ns: u64,
}

fn event_names(bits: u32) -> Vec<&'static str> {
    let mut v = Vec::new();
    for (bit, name) in [(1, "PANICKED"), (2, "CRASH_LOADED"), (4, "SHUTDOWN")] {
        if bits & bit != 0 {
            v.push(name);
        }
    }
    if bits & !7 != 0 {
        v.push("UNKNOWN");
    }
    v
}

fn read_text(core: &Vmcore, addr: u64, len: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len.min(MAX_TEXT) as usize];
    core.read_phys(addr, &mut buf).ok()?;
    Some(buf)
}

fn until_nul(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub(crate) fn kmsg(core: &Vmcore, vi: &crate::VmcoreInfo) -> Option<String> {
    let buf = vi.hex(elfnote::VMCOREINFO_LOG_BUF)?;
    let len = vi.number(elfnote::VMCOREINFO_LOG_BUF_LEN)?;
    let ring = read_text(core, buf, len)?;
    let head = vi.hex(elfnote::VMCOREINFO_LOG_BUF_HEAD).and_then(|h| {
        let mut b = [0u8; 8];
        core.read_phys(h, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    });
    let n = ring.len() as u64;
    let text = match head {
        Some(h) if n > 0 && h > n => {
            let at = (h % n) as usize;
            let mut t = ring[at..].to_vec();
            t.extend_from_slice(&ring[..at]);
            t
        }
        Some(h) => ring[..h.min(n) as usize].to_vec(),
        None => ring,
    };
    Some(until_nul(&text))
}

/// Gather what the dump holds; `symbols` symbolises RIPs.
pub fn info(core: &Vmcore, symbols: Option<&Symbols>) -> Info {
    let vi = core.vmcoreinfo();
    let mut cpus = Vec::new();
    let hosts = core.host_cpus();
    for h in &hosts {
        if let Some(p) = h.prstatus {
            cpus.push(CpuInfo {
                vcpu: h.vcpu,
                source: "host",
                rip: p.rip(),
                rip_symbol: symbols.and_then(|s| s.lookup(p.rip())),
                rsp: p.pr_reg[reg::RSP],
                rbp: p.pr_reg[reg::RBP],
                rflags: p.pr_reg[reg::EFLAGS],
                cs: p.cs(),
                cr3: h.qemu.map(|q| q.cr[3]),
            });
        }
    }
    let nr = vi
        .as_ref()
        .and_then(|v| v.number(elfnote::VMCOREINFO_NR_CPUS))
        .unwrap_or(0)
        .min(4096) as u32;
    for cpu in 0..nr {
        if let GuestNote::Valid(p) = guest_crash_note(core, vi.as_ref(), cpu) {
            cpus.push(CpuInfo {
                vcpu: cpu,
                source: "guest",
                rip: p.rip(),
                rip_symbol: symbols.and_then(|s| s.lookup(p.rip())),
                rsp: p.pr_reg[reg::RSP],
                rbp: p.pr_reg[reg::RBP],
                rflags: p.pr_reg[reg::EFLAGS],
                cs: p.cs(),
                cr3: None,
            });
        }
    }
    let (panic_cpu, panic_message, kmsg_text) = match &vi {
        Some(v) => {
            let panic_cpu = v.hex(elfnote::VMCOREINFO_PANIC_CPU).and_then(|a| {
                let mut b = [0u8; 4];
                core.read_phys(a, &mut b).ok()?;
                Some(u32::from_le_bytes(b)).filter(|&c| c != u32::MAX)
            });
            let msg = v.hex(elfnote::VMCOREINFO_PANIC_MSG).and_then(|a| {
                let len = v.number(elfnote::VMCOREINFO_PANIC_MSG_LEN).unwrap_or(256);
                read_text(core, a, len).map(|b| until_nul(&b))
            });
            (panic_cpu, msg.filter(|m| !m.is_empty()), kmsg(core, v))
        }
        None => (None, None, None),
    };
    let log = core.pvpanic_log().ok().flatten().unwrap_or_default();
    let pvpanic = log
        .entries
        .iter()
        .map(|e: &PvpanicLogEntry| PvpanicEvent {
            seq: e.seq,
            events: e.events,
            names: event_names(e.events),
            vcpu: e.vcpu,
            timestamp_ns: e.timestamp_ns,
        })
        .collect();
    Info {
        kind: if core.is_kdump() { "kdump" } else { "host" },
        elfcorehdr: core.kdump_note().map(|k| k.elfcorehdr),
        loads: core.loads().len(),
        // Saturating: p_memsz is file data, and the sizes may add up past u64.
        ram_bytes: core
            .loads()
            .iter()
            .fold(0u64, |sum, l| sum.saturating_add(l.memsz)),
        cpus,
        vmcoreinfo: vi.map(|v| v.entries).unwrap_or_default(),
        panic_cpu,
        panic_message,
        kmsg: kmsg_text,
        pvpanic,
        pvpanic_dropped: log.dropped,
        vmx: hosts.iter().filter_map(|h| h.vmx).collect(),
        guest_fault: core.guest_fault().map(|f| match f {
            Ok(f) => match symbols.and_then(|s| s.lookup(f.rip)) {
                Some(sym) => format!("{f} in {sym}"),
                None => f.to_string(),
            },
            Err(e) => format!("malformed VMMFAULT note: {e}"),
        }),
    }
}

impl Info {
    /// A human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = match self.elfcorehdr {
            Some(a) => writeln!(s, "dump: {} (elfcorehdr at {a:#x})", self.kind),
            None => writeln!(s, "dump: {}", self.kind),
        };
        let _ = writeln!(
            s,
            "memory: {} PT_LOADs, {} MiB",
            self.loads,
            self.ram_bytes >> 20
        );
        if let Some(f) = &self.guest_fault {
            let _ = writeln!(s, "guest fault: {f}");
        }
        let _ = writeln!(
            s,
            "\n{:>4} {:<6} {:<18} {:<18} {:<18} {:<8} {:<6} {:<18} symbol",
            "cpu", "from", "rip", "rsp", "rbp", "rflags", "cs", "cr3"
        );
        for c in &self.cpus {
            let _ = writeln!(
                s,
                "{:>4} {:<6} {:<18} {:<18} {:<18} {:<8x} {:<6x} {:<18} {}",
                c.vcpu,
                c.source,
                format!("{:#x}", c.rip),
                format!("{:#x}", c.rsp),
                format!("{:#x}", c.rbp),
                c.rflags,
                c.cs,
                c.cr3
                    .map(|v| format!("{v:#x}"))
                    .unwrap_or_else(|| "-".into()),
                c.rip_symbol.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(s, "\nVMX state:");
        for v in &self.vmx {
            let a = |x: Option<u64>| x.map(|v| format!("{v:#x}")).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "  vcpu {}: vmx {} vmcs {} flushed {} vmxon {} current {} last-cleared {}{}",
                v.vcpu,
                if v.vmx_on { "ON" } else { "off" },
                if v.vmcs_loaded { "loaded" } else { "none" },
                if v.vmcs_flushed { "yes" } else { "NO" },
                a(v.vmxon_region),
                a(v.current_vmcs),
                a(v.last_cleared_vmcs),
                if v.model_not_hardware { " (model)" } else { "" }
            );
        }
        let _ = writeln!(s, "\npvpanic events ({} dropped):", self.pvpanic_dropped);
        for e in &self.pvpanic {
            let _ = writeln!(
                s,
                "  #{} t={}ns vcpu {} {}",
                e.seq,
                e.timestamp_ns,
                e.vcpu,
                e.names.join("|")
            );
        }
        if let Some(c) = self.panic_cpu {
            let _ = writeln!(s, "\npanic cpu: {c}");
        }
        if let Some(m) = &self.panic_message {
            let _ = writeln!(s, "panic message: {m}");
        }
        let _ = writeln!(s, "\nVMCOREINFO:");
        for (k, v) in &self.vmcoreinfo {
            let _ = writeln!(s, "  {k}={v}");
        }
        if let Some(k) = &self.kmsg {
            let _ = writeln!(s, "\nkmsg:\n{k}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF core header with one PT_NOTE (empty) and two PT_LOADs of
    /// `memsz` bytes each, holding no file data.
    fn core_with_loads(memsz: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        b.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
        b.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // e_entry
        b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [64u16, 56, 3, 64, 0, 0] {
            b.extend_from_slice(&half.to_le_bytes());
        }
        let end = 64 + 3 * 56u64;
        let phdr = |b: &mut Vec<u8>, p_type: u32, paddr: u64, memsz: u64| {
            b.extend_from_slice(&p_type.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            for v in [end, 0, paddr, 0, memsz, 0] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        };
        phdr(&mut b, 4, 0, 0);
        phdr(&mut b, 1, 0, memsz);
        phdr(&mut b, 1, 0, memsz);
        b
    }

    #[test]
    fn huge_segment_sizes_saturate_instead_of_overflowing() {
        // Found by the vmcore_reader fuzz target: the PT_LOAD sizes of a
        // hostile file added up past u64::MAX.
        let Ok(core) = Vmcore::from_bytes(core_with_loads(u64::MAX / 2 + 2)) else {
            panic!("the header is well-formed");
        };
        assert_eq!(info(&core, None).ram_bytes, u64::MAX);
    }
}
