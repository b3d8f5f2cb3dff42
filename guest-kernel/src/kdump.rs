//! Capture mode: this kernel was started by the first kernel's
//! `crash_kexec` (or has `elfcorehdr=` on its command line: Linux's
//! `is_kdump_kernel()`). It runs on one CPU inside the crashkernel region,
//! finds and checks the elfcorehdr, reports which CPUs saved their
//! registers, tells the VMM the vmcore is ready (the VMM writes it, as
//! `/proc/vmcore` plus makedumpfile would), then does its final action.
//!
//! The first kernel's memory is read through the old-memory alias
//! (`guest_abi::kexec::OLDMEM_ALIAS_BASE` + GPA): its `.bss`, where the crash
//! notes live, is hidden behind this kernel's own image window. Only the
//! kexec loader maps that alias; a kernel booted directly with
//! `elfcorehdr=` (no image window either) reads it identity-mapped.
//!
//! Kept lean: every instruction costs ~1 us at CPL0 on this host.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_abi::kexec::{ELFCOREHDR_RESERVE, OLDMEM_ALIAS_BASE, OLDMEM_ALIAS_SIZE};
use guest_abi::pv::kdump::reason;
use guest_kernel::capture::{
    check_ehdr, classify_note, segment, FinalAction, HeaderError, NoteKind, NOTE_PEEK, PT_NOTE,
};
use guest_kernel::cmdline::BootConfig;
use guest_kernel::elfcorehdr::EHDR_SIZE;

use crate::arch::cpu::halt_forever;
use crate::{console, power, pv};

/// Where old memory is mapped: [`OLDMEM_ALIAS_BASE`] when entered by
/// kexec, else 0 (identity, below 4 GiB).
static OLDMEM_BASE: AtomicU64 = AtomicU64::new(OLDMEM_ALIAS_BASE);

/// `len` bytes of the first kernel's memory at `gpa`.
fn oldmem(gpa: u64, len: usize) -> Option<&'static [u8]> {
    let end = gpa.checked_add(len as u64)?;
    if gpa == 0 || end > OLDMEM_ALIAS_SIZE {
        return None;
    }
    let base = OLDMEM_BASE.load(Ordering::Relaxed);
    // SAFETY: entered by kexec, the capture kernel's page tables (built by
    // the VMM, guest_abi::kexec) map [OLDMEM_ALIAS_BASE, +OLDMEM_ALIAS_SIZE)
    // onto the first kernel's physical memory; otherwise the boot tables
    // identity-map the same 4 GiB. The range is inside, not at null, and
    // the first kernel is stopped for good: nothing writes old memory now.
    Some(unsafe { core::slice::from_raw_parts((base + gpa) as *const u8, len) })
}

/// Why the capture failed: a `reason` code and its detail.
type Failure = (u32, u64);

/// Checks the elfcorehdr at `addr` and reports each CPU's crash note.
/// Returns the header's size.
fn examine(addr: u64) -> Result<u64, Failure> {
    let bad = |e: HeaderError| {
        console::line()
            .str("kdump: capture kernel, elfcorehdr at ")
            .hex(addr)
            .str(" refused: ")
            .str(e.as_str())
            .str("\n");
        (reason::BAD_ELFCOREHDR, e.code())
    };
    let max = ELFCOREHDR_RESERVE as usize;
    let ehdr = oldmem(addr, EHDR_SIZE).ok_or_else(|| bad(HeaderError::Truncated))?;
    let info = check_ehdr(ehdr, max).map_err(bad)?;
    let hdr = oldmem(addr, info.size).ok_or_else(|| bad(HeaderError::Truncated))?;
    console::line()
        .str("kdump: capture kernel, elfcorehdr at ")
        .hex(addr)
        .str(" (")
        .dec(info.size as u64)
        .str(" bytes)\n");
    let (mut cpus, mut saved) = (0u64, 0u64);
    for i in 0..info.phnum {
        let Some(seg) = segment(hdr, &info, i) else {
            break;
        };
        if seg.p_type != PT_NOTE {
            continue;
        }
        let kind = if seg.p_filesz < NOTE_PEEK as u64 {
            NoteKind::CpuMissing
        } else {
            oldmem(seg.p_offset, NOTE_PEEK).map_or(NoteKind::CpuMissing, classify_note)
        };
        if kind == NoteKind::Vmcoreinfo {
            continue;
        }
        let ok = kind == NoteKind::CpuSaved;
        console::line()
            .str("kdump: CPU ")
            .dec(cpus)
            .str(": crash note ")
            .str(if ok { "saved" } else { "missing" })
            .str("\n");
        cpus += 1;
        saved += ok as u64;
    }
    console::line()
        .str("kdump: ")
        .dec(saved)
        .str("/")
        .dec(cpus)
        .str(" CPUs saved registers\n");
    if saved == 0 {
        return Err((reason::NO_CRASH_NOTES, cpus));
    }
    Ok(info.size as u64)
}

/// The capture kernel's work after its (short) boot; never returns.
/// `from_kexec`: entered through `kexec_entry64` (the alias exists).
pub fn capture_main(config: &BootConfig, from_kexec: bool) -> ! {
    if !from_kexec {
        OLDMEM_BASE.store(0, Ordering::Relaxed);
    }
    let outcome = match config.kdump.elfcorehdr {
        Some(addr) => examine(addr).map(|size| (addr, size)),
        None => {
            console::line().str("kdump: capture kernel without elfcorehdr=\n");
            Err((reason::NO_ELFCOREHDR, 0))
        }
    };
    match outcome {
        Ok((addr, size)) => pv::kdump::vmcore_ready(addr, size),
        Err((why, detail)) => pv::kdump::capture_failed(why, detail),
    }
    let action = FinalAction::resolve(config.kdump.final_action, config.panic.panic_timeout);
    console::line()
        .str("kdump: final action ")
        .str(action.name())
        .str("\n");
    match action {
        FinalAction::Reboot => power::reboot(),
        FinalAction::Poweroff => power::poweroff(),
        FinalAction::Halt => halt_forever(),
    }
}
