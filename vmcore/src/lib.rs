//! ELF vmcores of a KVM guest: a writer (the equivalent of QEMU's
//! `dump-guest-memory` in ELF format), a reader that treats its input as
//! hostile, and a checker that tells whether every vCPU left what a crash dump
//! needs (host and guest-saved registers, VMX off).
//!
//! # File layout written
//!
//! ```text
//! Elf64_Ehdr (ET_CORE, EM_X86_64)
//! Elf64_Phdr[0]      PT_NOTE  -> all notes
//! Elf64_Phdr[1..]    PT_LOAD  p_paddr = GPA, p_vaddr = kernel VA or 0
//! [Elf64_Shdr[0]]    only with PN_XNUM: sh_info = real phdr count
//! notes: per vCPU  CORE/NT_PRSTATUS, QEMU/0 (QEMUCPUState), VMMVMX/NT_VMM_VMX
//!        then      VMCOREINFO/0 (guest text), VMMPVPANIC/NT_VMM_PVPANIC
//! memory, each PT_LOAD at a 4 KiB-aligned offset; zero and never-touched
//! pages are holes (the file is sparse)
//! ```
//!
//! `p_vaddr` comes from a walk of the 4-level page tables at
//! [`DumpInput::paging_cr3`]: each physical page gets the lowest virtual
//! address that maps it, and PT_LOADs split where that mapping stops being
//! contiguous. Physical ranges no page table maps get `p_vaddr = 0`, QEMU's
//! convention for "no virtual address"; the reader therefore ignores
//! `p_vaddr = 0` except on a segment at `p_paddr = 0` (an identity mapping
//! of low memory looks the same).
//!
//! # kdump vmcores
//!
//! [`parse_elfcorehdr`] validates the guest's elfcorehdr (hostile input) and
//! [`write_kdump_vmcore`] writes the vmcore from it, as `/proc/vmcore` would:
//! the guest's notes first, then the VMM's (host registers as `VMMHOST`, not
//! `CORE`), and a `VMMKDUMP` marker note. The reader and checker tell the two
//! kinds apart by that marker ([`Vmcore::is_kdump`]).
//!
//! The note layouts and the VMCOREINFO keys the guest publishes are defined
//! in [`guest_abi::elfnote`].

mod check;
mod check_faults;
mod cpu;
mod elf;
mod elfcorehdr;
mod fault;
mod info;
mod kdump;
mod pagewalk;
mod ram;
mod reader;
mod vmcoreinfo;
mod writer;

pub use check::{
    check, guest_crash_note, CheckOptions, CheckReport, CheckResult, GuestNote, NamedCheck,
    VcpuCheck, Verdict,
};
pub use cpu::{CpuState, DescriptorTable, PvpanicLog, Segment, VmxState};
pub use elfcorehdr::{
    parse_elfcorehdr, ElfCoreHdr, ElfCoreHdrError, GuestNotes, LoadRange, NoteSegment,
    MAX_ELFCOREHDR_BYTES, MAX_NOTES_BYTES, MAX_PHNUM,
};
pub use fault::{GuestFault, NOTE_NAME_FAULT, NT_VMM_FAULT};
pub use info::{info, CpuInfo, Info, InfoError, PvpanicEvent, Symbols};
pub use kdump::{plan_kdump_vmcore, write_kdump_vmcore, KdumpInput, KdumpPlan};
pub use pagewalk::{walk_page_tables, VirtRun};
pub use ram::{ram_regions_from_guest_memory, RamRegion};
pub use reader::{HostCpu, LoadSegment, Note, ReadAt, ReadError, Vmcore};
pub use vmcoreinfo::VmcoreInfo;
pub use writer::{write_vmcore, DumpInput, DumpStats, Progress, WriteError, WriteOptions};
