//! The guest's ELF core header (elfcorehdr), parsed as hostile input.
//!
//! The first kernel builds it (guest-kernel `elfcorehdr.rs`) the way Linux's
//! `crash_prepare_elf64_headers` does: PT_NOTEs for the per-CPU crash-note
//! buffers and VMCOREINFO, PT_LOADs for RAM minus the crash-kernel region,
//! and in every entry `p_offset` is the **physical address** of the data.
//! The capture kernel reports where the header is; the VMM then writes the
//! vmcore from it ([`crate::write_kdump_vmcore`]), as `/proc/vmcore` would.
//!
//! Every field is checked before use: header size and kind, `e_phnum`
//! (at most [`MAX_PHNUM`], no PN_XNUM), the program header table inside the
//! buffer, each segment inside one guest RAM range without wrapping,
//! `p_offset == p_paddr` and `p_filesz == p_memsz` (the elfcorehdr
//! convention: the data is read from `p_offset`, so a different `p_paddr`
//! would be ambiguous), no overlapping PT_LOADs, and at most
//! [`MAX_NOTES_BYTES`] of notes. The notes themselves live in guest RAM and
//! are checked when they are read ([`ElfCoreHdr::read_guest_notes`]).

use guest_abi::elfnote::{NHDR_SIZE, NOTE_NAME_QEMU};

use crate::elf::{self, Phdr};
use crate::ram::RamRegion;

/// Most program headers accepted (Linux builds one per CPU plus one per
/// RAM range; 4096 is far above any guest this VMM runs).
pub const MAX_PHNUM: u16 = 4096;
/// Most bytes of PT_NOTE segments accepted in total.
pub const MAX_NOTES_BYTES: u64 = 1 << 20;
/// Most bytes of elfcorehdr the VMM reads from the guest.
pub const MAX_ELFCOREHDR_BYTES: usize = elf::EHDR_SIZE + MAX_PHNUM as usize * elf::PHDR_SIZE;

/// What is wrong with an elfcorehdr.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfCoreHdrError {
    /// The buffer ends before the structure.
    #[error("{what} needs {need:#x} bytes, elfcorehdr has {have:#x}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed from the start of the header.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// No ELF magic.
    #[error("no ELF magic")]
    NotElf,
    /// `e_ident[EI_CLASS]` is not ELFCLASS64.
    #[error("ELF class {0} is not ELFCLASS64")]
    WrongClass(u8),
    /// `e_ident[EI_DATA]` is not little-endian.
    #[error("ELF data encoding {0} is not little-endian")]
    WrongEndian(u8),
    /// `e_ident[EI_VERSION]` or `e_version` is not EV_CURRENT.
    #[error("ELF version {0} is not EV_CURRENT")]
    WrongVersion(u32),
    /// `e_type` is not ET_CORE.
    #[error("e_type {0} is not ET_CORE")]
    WrongType(u16),
    /// `e_machine` is not EM_X86_64.
    #[error("e_machine {0} is not EM_X86_64")]
    WrongMachine(u16),
    /// `e_ehsize` is not 64.
    #[error("e_ehsize {0} is not 64")]
    BadEhsize(u16),
    /// `e_phentsize` is not 56.
    #[error("e_phentsize {0} is not 56")]
    BadPhentsize(u16),
    /// `e_phnum` is 0.
    #[error("no program headers")]
    NoPhdrs,
    /// `e_phnum` is PN_XNUM (an elfcorehdr never needs extended numbering).
    #[error("e_phnum is PN_XNUM (0xffff), not accepted in an elfcorehdr")]
    PnXnum,
    /// `e_phnum` is above [`MAX_PHNUM`].
    #[error("e_phnum {phnum} exceeds the limit of {max}")]
    TooManyPhdrs {
        /// The header's count.
        phnum: u16,
        /// [`MAX_PHNUM`].
        max: u16,
    },
    /// The program header table overlaps the ELF header or leaves the buffer.
    #[error("program headers at e_phoff {phoff:#x} ({len:#x} bytes) outside header bytes 0x40..{have:#x}")]
    PhdrsOutOfBounds {
        /// `e_phoff`.
        phoff: u64,
        /// Table length.
        len: u64,
        /// Buffer length.
        have: u64,
    },
    /// A segment's `p_offset` and `p_paddr` differ.
    #[error("{kind} {index}: p_offset {offset:#x} != p_paddr {paddr:#x}")]
    OffsetNotPaddr {
        /// "PT_LOAD" or "PT_NOTE".
        kind: &'static str,
        /// Program header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_paddr`.
        paddr: u64,
    },
    /// A segment's `p_filesz` and `p_memsz` differ.
    #[error("{kind} {index}: p_filesz {filesz:#x} != p_memsz {memsz:#x}")]
    SizeMismatch {
        /// "PT_LOAD" or "PT_NOTE".
        kind: &'static str,
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// `p_offset + p_memsz` overflows.
    #[error("{kind} {index} at {start:#x} + {len:#x} wraps the address space")]
    Wraps {
        /// "PT_LOAD" or "PT_NOTE".
        kind: &'static str,
        /// Program header index.
        index: usize,
        /// Start.
        start: u64,
        /// Length.
        len: u64,
    },
    /// A segment is not inside one guest RAM range.
    #[error("{kind} {index} [{start:#x}-{end:#x}] lies outside guest RAM")]
    OutsideRam {
        /// "PT_LOAD" or "PT_NOTE".
        kind: &'static str,
        /// Program header index.
        index: usize,
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// Two PT_LOADs cover the same memory.
    #[error("PT_LOAD {first} [{first_start:#x}-{first_end:#x}] overlaps PT_LOAD {second} [{second_start:#x}-{second_end:#x}]")]
    OverlappingLoads {
        /// Index of the lower one.
        first: usize,
        /// Its start.
        first_start: u64,
        /// Its end (exclusive).
        first_end: u64,
        /// Index of the other.
        second: usize,
        /// Its start.
        second_start: u64,
        /// Its end (exclusive).
        second_end: u64,
    },
    /// No PT_LOAD: the vmcore would hold no memory.
    #[error("no PT_LOAD: no memory to dump")]
    NoLoads,
    /// The PT_NOTE segments add up to more than [`MAX_NOTES_BYTES`].
    #[error("PT_NOTE segments total {total:#x} bytes, limit {max:#x}")]
    NotesTooLarge {
        /// Sum so far.
        total: u64,
        /// [`MAX_NOTES_BYTES`].
        max: u64,
    },
    /// A note (header, name and descriptor, each padded to 4) does not fit
    /// in what is left of its segment.
    #[error(
        "PT_NOTE {index}: note at +{offset:#x} ({size:#x} bytes) runs past p_filesz {filesz:#x}"
    )]
    NoteOverrunsSegment {
        /// Program header index.
        index: usize,
        /// Offset of the note in the segment.
        offset: u64,
        /// The note's padded size (saturated at u64::MAX).
        size: u64,
        /// The segment's size.
        filesz: u64,
    },
    /// A guest note uses a name reserved for the VMM's own notes.
    #[error("PT_NOTE {index}: note at +{offset:#x} uses the reserved name {name:?}")]
    ReservedNoteName {
        /// Program header index.
        index: usize,
        /// Offset of the note in the segment.
        offset: u64,
        /// The name (lossy UTF-8).
        name: String,
    },
    /// A segment's bytes could not be read from guest memory.
    #[error("{kind} {index} [{start:#x}-{end:#x}] is not backed by guest memory")]
    Unreadable {
        /// "PT_LOAD" or "PT_NOTE".
        kind: &'static str,
        /// Program header index.
        index: usize,
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
}

/// A PT_NOTE: a guest note buffer in RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoteSegment {
    /// Program header index.
    pub index: usize,
    /// Guest physical address (`p_offset` = `p_paddr`).
    pub paddr: u64,
    /// Bytes (`p_filesz` = `p_memsz`).
    pub size: u64,
}

/// A PT_LOAD: a range of guest RAM to dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadRange {
    /// Program header index.
    pub index: usize,
    /// Guest physical address (`p_offset` = `p_paddr`).
    pub paddr: u64,
    /// Kernel virtual address (`p_vaddr`), kept as the guest gave it.
    pub vaddr: u64,
    /// Bytes (`p_filesz` = `p_memsz`), never 0.
    pub len: u64,
}

/// A validated elfcorehdr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfCoreHdr {
    /// PT_NOTE segments in header order (empty ones included).
    pub notes: Vec<NoteSegment>,
    /// PT_LOAD segments in header order, zero-length ones dropped; none
    /// overlap and each lies inside one guest RAM range.
    pub loads: Vec<LoadRange>,
}

/// The guest's notes, merged as Linux's `merge_note_headers_elf64` does:
/// each PT_NOTE's valid notes, up to its empty terminator, back to back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestNotes {
    /// The encoded notes.
    pub bytes: Vec<u8>,
    /// How many.
    pub count: u64,
    /// Notes taken from each PT_NOTE, in [`ElfCoreHdr::notes`] order (0 for
    /// a CPU whose buffer was never written).
    pub per_segment: Vec<u32>,
}

type Result<T> = std::result::Result<T, ElfCoreHdrError>;

/// The RAM range holding `[start, end)`, if one holds all of it.
fn inside_ram(ram: &[(u64, u64)], start: u64, end: u64) -> bool {
    ram.iter().any(|&(gpa, len)| {
        gpa.checked_add(len)
            .is_some_and(|ram_end| gpa <= start && end <= ram_end)
    })
}

/// Validate `bytes` as an elfcorehdr for a guest whose RAM is `ram`
/// (`(gpa, len)` ranges).
pub fn parse_elfcorehdr(bytes: &[u8], ram: &[(u64, u64)]) -> Result<ElfCoreHdr> {
    let have = bytes.len() as u64;
    if bytes.len() < elf::EHDR_SIZE {
        return Err(ElfCoreHdrError::Truncated {
            what: "ELF header",
            need: elf::EHDR_SIZE as u64,
            have,
        });
    }
    if &bytes[..4] != b"\x7fELF" {
        return Err(ElfCoreHdrError::NotElf);
    }
    if bytes[4] != elf::ELFCLASS64 {
        return Err(ElfCoreHdrError::WrongClass(bytes[4]));
    }
    if bytes[5] != elf::ELFDATA2LSB {
        return Err(ElfCoreHdrError::WrongEndian(bytes[5]));
    }
    if bytes[6] != elf::EV_CURRENT {
        return Err(ElfCoreHdrError::WrongVersion(bytes[6].into()));
    }
    let e_type = elf::le16(bytes, 16);
    if e_type != elf::ET_CORE {
        return Err(ElfCoreHdrError::WrongType(e_type));
    }
    let machine = elf::le16(bytes, 18);
    if machine != elf::EM_X86_64 {
        return Err(ElfCoreHdrError::WrongMachine(machine));
    }
    let version = elf::le32(bytes, 20);
    if version != u32::from(elf::EV_CURRENT) {
        return Err(ElfCoreHdrError::WrongVersion(version));
    }
    let ehsize = elf::le16(bytes, 52);
    if ehsize as usize != elf::EHDR_SIZE {
        return Err(ElfCoreHdrError::BadEhsize(ehsize));
    }
    let phentsize = elf::le16(bytes, 54);
    if phentsize as usize != elf::PHDR_SIZE {
        return Err(ElfCoreHdrError::BadPhentsize(phentsize));
    }
    let phnum = elf::le16(bytes, 56);
    if phnum == 0 {
        return Err(ElfCoreHdrError::NoPhdrs);
    }
    if phnum == elf::PN_XNUM {
        return Err(ElfCoreHdrError::PnXnum);
    }
    if phnum > MAX_PHNUM {
        return Err(ElfCoreHdrError::TooManyPhdrs {
            phnum,
            max: MAX_PHNUM,
        });
    }
    let phoff = elf::le64(bytes, 32);
    let len = phnum as u64 * elf::PHDR_SIZE as u64;
    let table = phoff
        .checked_add(len)
        .filter(|&end| phoff >= elf::EHDR_SIZE as u64 && end <= have)
        .map(|end| &bytes[phoff as usize..end as usize])
        .ok_or(ElfCoreHdrError::PhdrsOutOfBounds { phoff, len, have })?;

    let mut hdr = ElfCoreHdr::default();
    let mut notes_total = 0u64;
    for (index, raw) in table.chunks_exact(elf::PHDR_SIZE).enumerate() {
        let ph = Phdr::decode(raw.try_into().expect("chunk of PHDR_SIZE"));
        let kind = match ph.p_type {
            elf::PT_LOAD => "PT_LOAD",
            elf::PT_NOTE => "PT_NOTE",
            // Linux's /proc/vmcore ignores other types too.
            _ => continue,
        };
        if ph.p_offset != ph.p_paddr {
            return Err(ElfCoreHdrError::OffsetNotPaddr {
                kind,
                index,
                offset: ph.p_offset,
                paddr: ph.p_paddr,
            });
        }
        if ph.p_filesz != ph.p_memsz {
            return Err(ElfCoreHdrError::SizeMismatch {
                kind,
                index,
                filesz: ph.p_filesz,
                memsz: ph.p_memsz,
            });
        }
        let (start, size) = (ph.p_paddr, ph.p_memsz);
        let end = start.checked_add(size).ok_or(ElfCoreHdrError::Wraps {
            kind,
            index,
            start,
            len: size,
        })?;
        if size == 0 {
            if ph.p_type == elf::PT_NOTE {
                hdr.notes.push(NoteSegment {
                    index,
                    paddr: start,
                    size,
                });
            }
            continue;
        }
        if !inside_ram(ram, start, end) {
            return Err(ElfCoreHdrError::OutsideRam {
                kind,
                index,
                start,
                end,
            });
        }
        if ph.p_type == elf::PT_NOTE {
            notes_total = notes_total.saturating_add(size);
            if notes_total > MAX_NOTES_BYTES {
                return Err(ElfCoreHdrError::NotesTooLarge {
                    total: notes_total,
                    max: MAX_NOTES_BYTES,
                });
            }
            hdr.notes.push(NoteSegment {
                index,
                paddr: start,
                size,
            });
        } else {
            hdr.loads.push(LoadRange {
                index,
                paddr: start,
                vaddr: ph.p_vaddr,
                len: size,
            });
        }
    }
    if hdr.loads.is_empty() {
        return Err(ElfCoreHdrError::NoLoads);
    }
    let mut sorted: Vec<&LoadRange> = hdr.loads.iter().collect();
    sorted.sort_by_key(|l| l.paddr);
    for w in sorted.windows(2) {
        let (a, b) = (w[0], w[1]);
        // Inside RAM, so neither end overflows.
        if b.paddr < a.paddr + a.len {
            return Err(ElfCoreHdrError::OverlappingLoads {
                first: a.index,
                first_start: a.paddr,
                first_end: a.paddr + a.len,
                second: b.index,
                second_start: b.paddr,
                second_end: b.paddr + b.len,
            });
        }
    }
    Ok(hdr)
}

/// Whether a guest note's name (without trailing NULs) is reserved for the
/// VMM's own notes (see [`guest_abi::elfnote`]).
fn reserved_name(name: &[u8]) -> bool {
    name.starts_with(b"VMM") || name == NOTE_NAME_QEMU
}

/// Walk one PT_NOTE's bytes: append its notes up to the first note with
/// `n_namesz == 0` (Linux's terminator) or the end, to `out`. Returns the
/// number of notes taken.
pub(crate) fn merge_note_segment(seg_index: usize, bytes: &[u8], out: &mut Vec<u8>) -> Result<u32> {
    let filesz = bytes.len() as u64;
    let mut pos = 0usize;
    let mut count = 0u32;
    while pos + NHDR_SIZE <= bytes.len() {
        let namesz = elf::le32(bytes, pos);
        let descsz = elf::le32(bytes, pos + 4);
        if namesz == 0 {
            break;
        }
        // u32 fields, rounded up to 4, in u64: cannot overflow.
        let size =
            NHDR_SIZE as u64 + ((u64::from(namesz) + 3) & !3) + ((u64::from(descsz) + 3) & !3);
        let end = (pos as u64).saturating_add(size);
        if end > filesz {
            return Err(ElfCoreHdrError::NoteOverrunsSegment {
                index: seg_index,
                offset: pos as u64,
                size,
                filesz,
            });
        }
        let name_start = pos + NHDR_SIZE;
        let mut name = &bytes[name_start..name_start + namesz as usize];
        while let [rest @ .., 0] = name {
            name = rest;
        }
        if reserved_name(name) {
            return Err(ElfCoreHdrError::ReservedNoteName {
                index: seg_index,
                offset: pos as u64,
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        let end = end as usize;
        out.extend_from_slice(&bytes[pos..end]);
        count += 1;
        pos = end;
    }
    Ok(count)
}

/// Guest bytes at `[gpa, gpa + len)` if one region holds all of them.
pub(crate) fn ram_slice<'a>(ram: &[RamRegion<'a>], gpa: u64, len: u64) -> Option<(usize, u64)> {
    ram.iter().enumerate().find_map(|(i, r)| {
        let off = gpa.checked_sub(r.gpa)?;
        let end = off.checked_add(len)?;
        (end <= r.data.len() as u64).then_some((i, off))
    })
}

impl ElfCoreHdr {
    /// The RAM layout of `ram`, as [`parse_elfcorehdr`] takes it.
    pub fn ram_layout(ram: &[RamRegion<'_>]) -> Vec<(u64, u64)> {
        ram.iter().map(|r| (r.gpa, r.data.len() as u64)).collect()
    }

    /// Read and merge the guest's notes from `ram` through the PT_NOTEs.
    pub fn read_guest_notes(&self, ram: &[RamRegion<'_>]) -> Result<GuestNotes> {
        let mut out = GuestNotes::default();
        for seg in &self.notes {
            if seg.size == 0 {
                out.per_segment.push(0);
                continue;
            }
            let unreadable = ElfCoreHdrError::Unreadable {
                kind: "PT_NOTE",
                index: seg.index,
                start: seg.paddr,
                end: seg.paddr.saturating_add(seg.size),
            };
            let (region, off) = ram_slice(ram, seg.paddr, seg.size).ok_or(unreadable)?;
            let bytes = &ram[region].data[off as usize..(off + seg.size) as usize];
            let n = merge_note_segment(seg.index, bytes, &mut out.bytes)?;
            out.count += u64::from(n);
            out.per_segment.push(n);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_walk_stops_at_terminator_and_rejects_overruns() {
        let mut seg = Vec::new();
        elf::encode_note(&mut seg, b"CORE", 1, &[7; 5]);
        let first = seg.len();
        seg.extend_from_slice(&[0; 12]);
        elf::encode_note(&mut seg, b"AFTER", 1, &[1]);
        let mut out = Vec::new();
        assert_eq!(merge_note_segment(0, &seg, &mut out), Ok(1));
        assert_eq!(out, seg[..first]);

        // namesz 0xffffffff: the rounding must not overflow.
        let mut bad = seg.clone();
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            merge_note_segment(3, &bad, &mut Vec::new()),
            Err(ElfCoreHdrError::NoteOverrunsSegment {
                index: 3,
                offset: 0,
                ..
            })
        ));
        let mut bad = seg.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(merge_note_segment(0, &bad, &mut Vec::new()).is_err());
        // A note that ends one byte past the segment.
        assert!(merge_note_segment(0, &seg[..first - 1], &mut Vec::new()).is_err());

        let mut host = Vec::new();
        elf::encode_note(&mut host, b"VMMHOST", 0x564d_5803, &[0; 8]);
        let err = merge_note_segment(2, &host, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PT_NOTE 2: note at +0x0 uses the reserved name \"VMMHOST\""
        );
    }
}
