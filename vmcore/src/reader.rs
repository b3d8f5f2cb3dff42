//! The vmcore reader. Its input may be hostile (a damaged file, a guest's
//! elfcorehdr): every offset and size is checked, and bad input is a
//! [`ReadError`], never a panic or a huge allocation.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use guest_abi::elfnote::{
    ElfPrstatus, KdumpNote, PvpanicLogEntry, PvpanicLogHeader, QemuCpuState, VmxStateNote,
    ELF_PRSTATUS_SIZE, NHDR_SIZE, NOTE_NAME_CORE, NOTE_NAME_KDUMP, NOTE_NAME_PVPANIC,
    NOTE_NAME_QEMU, NOTE_NAME_VMCOREINFO, NOTE_NAME_VMMHOST, NOTE_NAME_VMX, NT_PRSTATUS,
    NT_QEMU_CPUSTATE, NT_VMCOREINFO, NT_VMM_HOST_PRSTATUS, NT_VMM_KDUMP, NT_VMM_PVPANIC,
    NT_VMM_VMX, PVPANIC_LOG_ENTRY_SIZE, PVPANIC_LOG_HEADER_SIZE,
};
use serde::Serialize;

use crate::cpu::{PvpanicLog, VmxState};
use crate::elf::{self, Phdr};
use crate::vmcoreinfo::VmcoreInfo;

/// Most program headers accepted (PN_XNUM allows 2^32).
const MAX_PHNUM: u64 = 1 << 22;
/// Most bytes of notes accepted in total.
const MAX_NOTES_BYTES: u64 = 64 << 20;
/// Most notes accepted.
const MAX_NOTES: usize = 1 << 20;

/// Errors of the reader.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading the file failed.
    #[error("cannot read vmcore")]
    Io(#[source] std::io::Error),
    /// Not an ELF file.
    #[error("not an ELF file")]
    NotElf,
    /// ELF, but not a little-endian 64-bit x86_64 core file.
    #[error("not an x86_64 ELF64 core file: {0}")]
    WrongKind(&'static str),
    /// The file ends before a structure it declares.
    #[error("truncated: {what} at {offset:#x}+{len:#x} past end of file ({file_len:#x})")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A header field is inconsistent.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// A note does not fit its segment or is malformed.
    #[error("bad note at {offset:#x}: {why}")]
    BadNote {
        /// File offset of the note.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// Two segments claim the same file bytes.
    #[error("segments overlap in the file at {0:#x}")]
    Overlap(u64),
    /// A physical or virtual read is not covered by any PT_LOAD.
    #[error("address {0:#x} is not in the dump")]
    NotInDump(u64),
}

type Result<T> = std::result::Result<T, ReadError>;

/// Random-access bytes: a file, or memory (tests, fuzzing).
pub trait ReadAt: Send + Sync {
    /// Total length.
    fn len(&self) -> u64;
    /// Fill `buf` from `offset`; the caller has checked the range.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// True if empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReadAt for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

struct SizedFile {
    file: File,
    len: u64,
}

impl ReadAt for SizedFile {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
}

/// One note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Note {
    /// Name without trailing NULs.
    pub name: Vec<u8>,
    /// `n_type`.
    pub n_type: u32,
    /// Descriptor bytes.
    pub desc: Vec<u8>,
    /// File offset of the note header.
    pub offset: u64,
}

impl Note {
    /// Whether this note has `name` and `n_type`.
    pub fn is(&self, name: &[u8], n_type: u32) -> bool {
        self.name == name && self.n_type == n_type
    }
}

/// One PT_LOAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LoadSegment {
    /// File offset.
    pub offset: u64,
    /// Virtual address (0: no virtual mapping recorded, unless `paddr` is
    /// also 0).
    pub vaddr: u64,
    /// Guest physical address.
    pub paddr: u64,
    /// Bytes present in the file.
    pub filesz: u64,
    /// Bytes of memory (the tail past `filesz` reads as zero).
    pub memsz: u64,
}

/// A vCPU as recorded by the host: its PRSTATUS note and the notes after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCpu {
    /// vCPU index (`pr_pid - 1`; the note's position if `pr_pid` is not
    /// positive).
    pub vcpu: u32,
    /// The registers, or None if the note's descriptor is not 336 bytes.
    pub prstatus: Option<ElfPrstatus>,
    /// The matching QEMU note (the n-th QEMU note for the n-th PRSTATUS).
    pub qemu: Option<QemuCpuState>,
    /// The VMX state note for this vCPU, if any.
    pub vmx: Option<VmxState>,
}

/// A parsed vmcore.
pub struct Vmcore {
    src: Box<dyn ReadAt>,
    notes: Vec<Note>,
    loads: Vec<LoadSegment>,
    /// Indices of `loads` sorted by paddr.
    by_paddr: Vec<usize>,
    /// Indices of loads with a vaddr, sorted by vaddr.
    by_vaddr: Vec<usize>,
    xnum: bool,
}

impl std::fmt::Debug for Vmcore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmcore")
            .field("len", &self.src.len())
            .field("notes", &self.notes.len())
            .field("loads", &self.loads.len())
            .finish()
    }
}

fn read(src: &dyn ReadAt, what: &'static str, offset: u64, len: u64) -> Result<Vec<u8>> {
    let file_len = src.len();
    let trunc = ReadError::Truncated {
        what,
        offset,
        len,
        file_len,
    };
    match offset.checked_add(len) {
        Some(end) if end <= file_len => {}
        _ => return Err(trunc),
    }
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| ReadError::NotElf)?];
    src.read_exact_at(&mut buf, offset).map_err(ReadError::Io)?;
    Ok(buf)
}

impl Vmcore {
    /// Open and parse a vmcore file (memory is read on demand).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(ReadError::Io)?;
        let len = file.metadata().map_err(ReadError::Io)?.len();
        Self::parse(Box::new(SizedFile { file, len }))
    }

    /// Parse a vmcore held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Box::new(bytes))
    }

    /// Parse from any random-access source.
    pub fn parse(src: Box<dyn ReadAt>) -> Result<Self> {
        let file_len = src.len();
        if file_len < 4 {
            return Err(ReadError::NotElf);
        }
        let magic = read(&*src, "ELF magic", 0, 4)?;
        if magic != b"\x7fELF" {
            return Err(ReadError::NotElf);
        }
        let eh = read(&*src, "ELF header", 0, elf::EHDR_SIZE as u64)?;
        if eh[4] != elf::ELFCLASS64 {
            return Err(ReadError::WrongKind("not ELFCLASS64"));
        }
        if eh[5] != elf::ELFDATA2LSB {
            return Err(ReadError::WrongKind("not little-endian"));
        }
        if elf::le16(&eh, 16) != elf::ET_CORE {
            return Err(ReadError::WrongKind("not ET_CORE"));
        }
        if elf::le16(&eh, 18) != elf::EM_X86_64 {
            return Err(ReadError::WrongKind("not EM_X86_64"));
        }
        let phoff = elf::le64(&eh, 32);
        let shoff = elf::le64(&eh, 40);
        let phentsize = elf::le16(&eh, 54);
        let e_phnum = elf::le16(&eh, 56);
        let shentsize = elf::le16(&eh, 58);
        if phentsize as usize != elf::PHDR_SIZE {
            return Err(ReadError::BadHeader(format!("e_phentsize {phentsize}")));
        }
        let xnum = e_phnum == elf::PN_XNUM;
        let phnum: u64 = if xnum {
            if shoff == 0 {
                return Err(ReadError::BadHeader(
                    "PN_XNUM without section header".into(),
                ));
            }
            if shentsize as usize != elf::SHDR_SIZE {
                return Err(ReadError::BadHeader(format!("e_shentsize {shentsize}")));
            }
            let sh = read(&*src, "section header 0", shoff, elf::SHDR_SIZE as u64)?;
            let n = elf::le32(&sh, 44) as u64;
            if n < elf::PN_XNUM as u64 {
                return Err(ReadError::BadHeader(format!("PN_XNUM with sh_info {n}")));
            }
            n
        } else {
            e_phnum as u64
        };
        if phnum > MAX_PHNUM {
            return Err(ReadError::BadHeader(format!("{phnum} program headers")));
        }
        let ph_len = phnum * elf::PHDR_SIZE as u64;
        let phdrs = read(&*src, "program headers", phoff, ph_len)?;

        let mut notes = Vec::new();
        let mut loads = Vec::new();
        let mut notes_bytes = 0u64;
        // File ranges claimed so far (for the overlap check).
        let mut claimed: Vec<(u64, u64)> =
            vec![(0, elf::EHDR_SIZE as u64), (phoff, phoff + ph_len)];
        for raw in phdrs.chunks_exact(elf::PHDR_SIZE) {
            let ph = Phdr::decode(raw.try_into().expect("chunk of PHDR_SIZE"));
            let end = ph
                .p_offset
                .checked_add(ph.p_filesz)
                .ok_or_else(|| ReadError::BadHeader("segment wraps".into()))?;
            match ph.p_type {
                elf::PT_NOTE => {
                    notes_bytes = notes_bytes.saturating_add(ph.p_filesz);
                    if notes_bytes > MAX_NOTES_BYTES {
                        return Err(ReadError::BadHeader("notes too large".into()));
                    }
                    let bytes = read(&*src, "PT_NOTE", ph.p_offset, ph.p_filesz)?;
                    parse_notes(&bytes, ph.p_offset, &mut notes)?;
                    claimed.push((ph.p_offset, end));
                }
                elf::PT_LOAD => {
                    if end > file_len {
                        return Err(ReadError::Truncated {
                            what: "PT_LOAD",
                            offset: ph.p_offset,
                            len: ph.p_filesz,
                            file_len,
                        });
                    }
                    if ph.p_filesz > ph.p_memsz {
                        return Err(ReadError::BadHeader("p_filesz > p_memsz".into()));
                    }
                    if ph.p_paddr.checked_add(ph.p_memsz).is_none()
                        || ph.p_vaddr.checked_add(ph.p_memsz).is_none()
                    {
                        return Err(ReadError::BadHeader("PT_LOAD wraps".into()));
                    }
                    loads.push(LoadSegment {
                        offset: ph.p_offset,
                        vaddr: ph.p_vaddr,
                        paddr: ph.p_paddr,
                        filesz: ph.p_filesz,
                        memsz: ph.p_memsz,
                    });
                    claimed.push((ph.p_offset, end));
                }
                _ => {}
            }
        }
        claimed.retain(|&(s, e)| e > s);
        claimed.sort_unstable();
        for w in claimed.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(ReadError::Overlap(w[1].0));
            }
        }
        let mut by_paddr: Vec<usize> = (0..loads.len()).collect();
        by_paddr.sort_by_key(|&i| loads[i].paddr);
        // p_vaddr 0 means "no virtual mapping" (QEMU's convention), except
        // for a segment at p_paddr 0: an identity mapping of low memory.
        let mut by_vaddr: Vec<usize> = (0..loads.len())
            .filter(|&i| loads[i].vaddr != 0 || loads[i].paddr == 0)
            .collect();
        by_vaddr.sort_by_key(|&i| loads[i].vaddr);
        Ok(Vmcore {
            src,
            notes,
            loads,
            by_paddr,
            by_vaddr,
            xnum,
        })
    }

    /// All notes, in file order.
    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    /// All PT_LOADs, in file order.
    pub fn loads(&self) -> &[LoadSegment] {
        &self.loads
    }

    /// Whether the program header count was given through PN_XNUM.
    pub fn uses_pn_xnum(&self) -> bool {
        self.xnum
    }

    /// Notes with this name and type.
    pub fn find_notes<'a>(&'a self, name: &'a [u8], n_type: u32) -> impl Iterator<Item = &'a Note> {
        self.notes.iter().filter(move |n| n.is(name, n_type))
    }

    /// Whether this is a kdump vmcore (written from the guest's elfcorehdr):
    /// it has a `VMMKDUMP` note. See [`guest_abi::elfnote`] for the rule.
    pub fn is_kdump(&self) -> bool {
        self.find_notes(NOTE_NAME_KDUMP, NT_VMM_KDUMP)
            .next()
            .is_some()
    }

    /// The `VMMKDUMP` marker's contents, if this is a kdump vmcore with a
    /// well-formed marker.
    pub fn kdump_note(&self) -> Option<KdumpNote> {
        self.find_notes(NOTE_NAME_KDUMP, NT_VMM_KDUMP)
            .next()
            .and_then(|n| KdumpNote::from_bytes(&n.desc))
    }

    /// The host-captured vCPUs: each host PRSTATUS note, with the n-th
    /// `QEMU` note and the `VMMVMX` note of the same vCPU. Host PRSTATUS
    /// notes are `CORE`/NT_PRSTATUS in a host-side dump and
    /// `VMMHOST`/NT_VMM_HOST_PRSTATUS in a kdump vmcore (where `CORE` notes
    /// are the guest's).
    pub fn host_cpus(&self) -> Vec<HostCpu> {
        let (name, n_type) = if self.is_kdump() {
            (NOTE_NAME_VMMHOST, NT_VMM_HOST_PRSTATUS)
        } else {
            (NOTE_NAME_CORE, NT_PRSTATUS)
        };
        let qemu: Vec<&Note> = self.find_notes(NOTE_NAME_QEMU, NT_QEMU_CPUSTATE).collect();
        let vmx: Vec<VmxState> = self
            .find_notes(NOTE_NAME_VMX, NT_VMM_VMX)
            .filter_map(|n| VmxStateNote::from_bytes(&n.desc))
            .map(|n| VmxState::from_note(&n))
            .collect();
        self.find_notes(name, n_type)
            .enumerate()
            .map(|(i, n)| {
                let prstatus = (n.desc.len() == ELF_PRSTATUS_SIZE)
                    .then(|| ElfPrstatus::from_bytes(&n.desc))
                    .flatten();
                let vcpu = match prstatus {
                    Some(p) if p.pr_pid > 0 => (p.pr_pid - 1) as u32,
                    _ => i as u32,
                };
                HostCpu {
                    vcpu,
                    prstatus,
                    qemu: qemu.get(i).and_then(|q| QemuCpuState::from_bytes(&q.desc)),
                    vmx: vmx.iter().find(|v| v.vcpu == vcpu).copied(),
                }
            })
            .collect()
    }

    /// The guest's VMCOREINFO, if the dump has the note.
    pub fn vmcoreinfo(&self) -> Option<VmcoreInfo> {
        self.find_notes(NOTE_NAME_VMCOREINFO, NT_VMCOREINFO)
            .next()
            .map(|n| VmcoreInfo::parse(&n.desc))
    }

    /// The pvpanic log, if the dump has the note (a malformed one is an error).
    pub fn pvpanic_log(&self) -> Result<Option<PvpanicLog>> {
        let Some(n) = self.find_notes(NOTE_NAME_PVPANIC, NT_VMM_PVPANIC).next() else {
            return Ok(None);
        };
        let bad = |why| ReadError::BadNote {
            offset: n.offset,
            why,
        };
        let h = PvpanicLogHeader::from_bytes(&n.desc).ok_or(bad("pvpanic header too short"))?;
        let es = h.entry_size as usize;
        if es < PVPANIC_LOG_ENTRY_SIZE {
            return Err(bad("pvpanic entry too small"));
        }
        let body = &n.desc[PVPANIC_LOG_HEADER_SIZE..];
        if (h.count as usize)
            .checked_mul(es)
            .is_none_or(|l| l > body.len())
        {
            return Err(bad("pvpanic entries past the note"));
        }
        let entries = body
            .chunks_exact(es)
            .take(h.count as usize)
            .filter_map(PvpanicLogEntry::from_bytes)
            .collect();
        Ok(Some(PvpanicLog {
            entries,
            dropped: h.dropped,
        }))
    }

    fn read_segment(&self, seg: &LoadSegment, off_in_seg: u64, buf: &mut [u8]) -> Result<()> {
        // Bytes past p_filesz read as zero.
        let in_file = seg.filesz.saturating_sub(off_in_seg).min(buf.len() as u64) as usize;
        if in_file > 0 {
            let (head, _) = buf.split_at_mut(in_file);
            self.src
                .read_exact_at(head, seg.offset + off_in_seg)
                .map_err(ReadError::Io)?;
        }
        buf[in_file..].fill(0);
        Ok(())
    }

    fn read_by(
        &self,
        index: &[usize],
        key: fn(&LoadSegment) -> u64,
        mut addr: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = index.partition_point(|&i| key(&self.loads[i]) <= addr);
            let seg = pos
                .checked_sub(1)
                .map(|p| &self.loads[index[p]])
                .filter(|s| addr - key(s) < s.memsz)
                .or_else(|| {
                    // Overlapping segments: fall back to a linear search.
                    index
                        .iter()
                        .map(|&i| &self.loads[i])
                        .find(|s| addr >= key(s) && addr - key(s) < s.memsz)
                })
                .ok_or(ReadError::NotInDump(addr))?;
            let off = addr - key(seg);
            let n = ((seg.memsz - off) as usize).min(buf.len() - done);
            self.read_segment(seg, off, &mut buf[done..done + n])?;
            done += n;
            addr = addr
                .checked_add(n as u64)
                .ok_or(ReadError::NotInDump(addr))?;
        }
        Ok(())
    }

    /// Read guest-physical memory.
    pub fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.read_by(&self.by_paddr, |s| s.paddr, gpa, buf)
    }

    /// Read guest-virtual memory through the PT_LOADs' `p_vaddr`.
    pub fn read_virt(&self, va: u64, buf: &mut [u8]) -> Result<()> {
        self.read_by(&self.by_vaddr, |s| s.vaddr, va, buf)
    }
}

fn parse_notes(bytes: &[u8], base: u64, out: &mut Vec<Note>) -> Result<()> {
    let mut pos = 0usize;
    while pos + NHDR_SIZE <= bytes.len() {
        let offset = base + pos as u64;
        let bad = |why| ReadError::BadNote { offset, why };
        let namesz = elf::le32(bytes, pos) as usize;
        let descsz = elf::le32(bytes, pos + 4) as usize;
        let n_type = elf::le32(bytes, pos + 8);
        if namesz == 0 && descsz == 0 && n_type == 0 {
            // The empty final note ends a note list (Linux's final_note).
            break;
        }
        let name_start = pos + NHDR_SIZE;
        let name_end = name_start
            .checked_add(namesz)
            .filter(|&e| e <= bytes.len())
            .ok_or(bad("name past end of segment"))?;
        let desc_start = name_start
            .checked_add(namesz.checked_add(3).ok_or(bad("name size"))? & !3)
            .ok_or(bad("name size"))?;
        let desc_end = desc_start
            .checked_add(descsz)
            .filter(|&e| e <= bytes.len())
            .ok_or(bad("descriptor past end of segment"))?;
        if out.len() >= MAX_NOTES {
            return Err(bad("too many notes"));
        }
        let mut name = bytes[name_start..name_end].to_vec();
        while name.last() == Some(&0) {
            name.pop();
        }
        out.push(Note {
            name,
            n_type,
            desc: bytes[desc_start..desc_end].to_vec(),
            offset,
        });
        pos = desc_end.checked_add(3).ok_or(bad("descriptor size"))? & !3;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_elf() {
        assert!(matches!(Vmcore::from_bytes(vec![]), Err(ReadError::NotElf)));
        assert!(matches!(
            Vmcore::from_bytes(b"hello world".to_vec()),
            Err(ReadError::NotElf)
        ));
        assert!(matches!(
            Vmcore::from_bytes(b"\x7fELF".to_vec()),
            Err(ReadError::Truncated { .. })
        ));
    }

    #[test]
    fn notes_past_their_segment_are_rejected() {
        let mut n = Vec::new();
        elf::encode_note(&mut n, b"CORE", 1, &[1, 2, 3]);
        n[4] = 200; // descsz
        let mut out = Vec::new();
        assert!(matches!(
            parse_notes(&n, 0, &mut out),
            Err(ReadError::BadNote { .. })
        ));
        n[4] = 3;
        n[0] = 0xff; // namesz
        n[1] = 0xff;
        n[2] = 0xff;
        n[3] = 0xff;
        assert!(parse_notes(&n, 0, &mut out).is_err());
    }
}
