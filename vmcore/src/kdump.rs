//! The kdump vmcore: written from the guest's own elfcorehdr, the way the
//! capture kernel's `/proc/vmcore` presents it, plus the VMM's notes.
//!
//! ```text
//! Elf64_Ehdr (ET_CORE, EM_X86_64)
//! Elf64_Phdr[0]      PT_NOTE  -> all notes, merged
//! Elf64_Phdr[1..]    PT_LOAD  one per elfcorehdr PT_LOAD, in its order:
//!                    p_paddr and p_vaddr as the guest gave them
//! notes: guest's     CORE/NT_PRSTATUS per CPU that saved its registers,
//!                    VMCOREINFO (copied from the PT_NOTE buffers, each up
//!                    to its empty terminator, as merge_note_headers_elf64)
//!        per vCPU    VMMHOST/NT_VMM_HOST_PRSTATUS, QEMU/0, VMMVMX
//!        then        VMMPVPANIC, VMMKDUMP (the marker, see guest_abi::elfnote)
//! memory, sparse, written through a temporary file renamed into place
//! ```

use std::fs::File;
use std::path::Path;

use guest_abi::elfnote::{
    KdumpNote, KDUMP_NOTE_VERSION, NOTE_NAME_KDUMP, NOTE_NAME_VMMHOST, NT_VMM_HOST_PRSTATUS,
    NT_VMM_KDUMP,
};

use crate::cpu::{CpuState, PvpanicLog, VmxState};
use crate::elf;
use crate::elfcorehdr::{ram_slice, ElfCoreHdr, ElfCoreHdrError};
use crate::ram::RamRegion;
use crate::writer::{
    encode_host_cpu_notes, encode_pvpanic_note, layout, write_atomically, write_image, DumpStats,
    Inner, Load, Progress, WriteError, WriteOptions,
};

/// What the VMM adds to the guest's elfcorehdr.
#[derive(Clone, Copy, Debug, Default)]
pub struct KdumpInput<'a> {
    /// Guest RAM (the elfcorehdr's segments are read from it).
    pub ram: &'a [RamRegion<'a>],
    /// Host-captured registers, one per vCPU, in vCPU order.
    pub cpus: &'a [CpuState],
    /// VMX state per vCPU (matched to `cpus` by `vcpu`; may be empty).
    pub vmx: &'a [VmxState],
    /// The pvpanic event log, if the VM has the device.
    pub pvpanic: Option<&'a PvpanicLog>,
    /// GPA and length of the elfcorehdr, recorded in the `VMMKDUMP` note.
    pub elfcorehdr: (u64, u64),
}

/// A kdump vmcore, planned but not written.
#[derive(Clone, Debug)]
pub struct KdumpPlan {
    notes: Vec<u8>,
    note_count: u64,
    guest_notes: u64,
    loads: Vec<Load>,
}

impl KdumpPlan {
    /// Number of notes the guest contributed.
    pub fn guest_notes(&self) -> u64 {
        self.guest_notes
    }

    /// Number of notes in total.
    pub fn notes(&self) -> u64 {
        self.note_count
    }

    /// Number of PT_LOADs.
    pub fn loads(&self) -> usize {
        self.loads.len()
    }
}

/// Read the guest's notes and map the PT_LOADs onto `input.ram`: everything
/// but the writing. Fails if a note is malformed or a segment is not in RAM.
pub fn plan_kdump_vmcore(
    hdr: &ElfCoreHdr,
    input: &KdumpInput<'_>,
    opts: &WriteOptions,
) -> Result<KdumpPlan, WriteError> {
    plan(hdr, input, opts).map_err(|e| match e {
        Inner::Hdr(h) => WriteError::ElfCoreHdr(h),
        Inner::BadRam(gpa) => WriteError::BadRam(gpa),
        Inner::Io(source) => WriteError::Write {
            path: Default::default(),
            source,
        },
    })
}

fn plan(hdr: &ElfCoreHdr, input: &KdumpInput<'_>, opts: &WriteOptions) -> Result<KdumpPlan, Inner> {
    let guest = hdr.read_guest_notes(input.ram).map_err(Inner::Hdr)?;
    let mut notes = guest.bytes;
    let mut note_count = guest.count;
    note_count += encode_host_cpu_notes(
        &mut notes,
        input.cpus,
        input.vmx,
        NOTE_NAME_VMMHOST,
        NT_VMM_HOST_PRSTATUS,
    );
    if let Some(log) = input.pvpanic {
        encode_pvpanic_note(&mut notes, log);
        note_count += 1;
    }
    let marker = KdumpNote {
        version: KDUMP_NOTE_VERSION,
        guest_notes: u32::try_from(guest.count).unwrap_or(u32::MAX),
        elfcorehdr: input.elfcorehdr.0,
        elfcorehdr_len: input.elfcorehdr.1,
    };
    elf::encode_note(&mut notes, NOTE_NAME_KDUMP, NT_VMM_KDUMP, marker.as_bytes());
    note_count += 1;

    let mut loads = Vec::with_capacity(hdr.loads.len());
    for l in &hdr.loads {
        let (region, start) = ram_slice(input.ram, l.paddr, l.len).ok_or(Inner::Hdr(
            ElfCoreHdrError::Unreadable {
                kind: "PT_LOAD",
                index: l.index,
                start: l.paddr,
                end: l.paddr.saturating_add(l.len),
            },
        ))?;
        let step = match opts.max_load_len {
            0 => l.len,
            n => n,
        };
        let mut done = 0;
        while done < l.len {
            let len = step.min(l.len - done);
            loads.push(Load {
                region,
                start: start + done,
                len,
                vaddr: l.vaddr.wrapping_add(done),
                offset: 0,
            });
            done += len;
        }
    }
    Ok(KdumpPlan {
        notes,
        note_count,
        guest_notes: guest.count,
        loads,
    })
}

/// Write the vmcore the guest's elfcorehdr describes to `path`, atomically
/// (as [`crate::write_vmcore`]). `hdr` comes from
/// [`crate::parse_elfcorehdr`] over the same RAM as `input.ram`.
pub fn write_kdump_vmcore(
    path: &Path,
    hdr: &ElfCoreHdr,
    input: &KdumpInput<'_>,
    opts: &WriteOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<DumpStats, WriteError> {
    // Plan before creating the file: a bad header leaves nothing behind.
    let mut plan = plan_kdump_vmcore(hdr, input, opts)?;
    write_atomically(path, opts, &mut |file: &File| {
        let (head, file_size) = layout(&plan.notes, &mut plan.loads, input.ram);
        write_image(
            file,
            &head,
            file_size,
            plan.note_count,
            &plan.loads,
            input.ram,
            progress,
        )
    })
}
