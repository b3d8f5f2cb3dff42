//! The vmcore writer: notes, PT_LOADs and a sparse, atomically renamed file.
//!
//! Cost follows touched memory: pages `mincore` reports non-resident in an
//! anonymous mapping are skipped without being read, all-zero pages become
//! holes, and the remaining runs go out in large `pwrite`s straight from
//! guest memory (no copy, no per-page syscall).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use guest_abi::elfnote::{
    PvpanicLogHeader, NOTE_NAME_CORE, NOTE_NAME_PVPANIC, NOTE_NAME_QEMU, NOTE_NAME_VMCOREINFO,
    NOTE_NAME_VMX, NT_PRSTATUS, NT_QEMU_CPUSTATE, NT_VMCOREINFO, NT_VMM_PVPANIC, NT_VMM_VMX,
    PVPANIC_LOG_ENTRY_SIZE, PVPANIC_LOG_VERSION,
};

use crate::cpu::{CpuState, PvpanicLog, VmxState};
use crate::elf::{self, Phdr, PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE};
use crate::elfcorehdr::ElfCoreHdrError;
use crate::pagewalk::{physical_to_virtual, walk_page_tables};
use crate::ram::RamRegion;

const PAGE: usize = 4096;
/// Largest single write: big enough to amortise the syscall, small enough to
/// report progress often.
const MAX_RUN: usize = 8 << 20;

/// Errors of [`write_vmcore`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The destination has no file name or no parent directory.
    #[error("bad destination path {0}")]
    BadPath(PathBuf),
    /// Creating the temporary file failed.
    #[error("cannot create {path}")]
    Create {
        /// The temporary file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing, syncing or sizing the temporary file failed (ENOSPC, EIO...).
    #[error("cannot write {path}")]
    Write {
        /// The temporary file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Renaming into place, or syncing the directory, failed.
    #[error("cannot rename into {path}")]
    Rename {
        /// The final path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Two RAM regions overlap, or a region wraps the address space (or,
    /// for a kdump vmcore, a PT_LOAD is not inside one RAM region).
    #[error("RAM regions overlap or wrap at GPA {0:#x}")]
    BadRam(u64),
    /// The guest's elfcorehdr (or the notes it points at) is invalid.
    #[error("bad elfcorehdr")]
    ElfCoreHdr(#[source] ElfCoreHdrError),
}

/// What to dump.
#[derive(Clone, Copy, Debug, Default)]
pub struct DumpInput<'a> {
    /// Guest RAM.
    pub ram: &'a [RamRegion<'a>],
    /// Host-captured registers, one per vCPU, in vCPU order.
    pub cpus: &'a [CpuState],
    /// VMX state per vCPU (matched to `cpus` by `vcpu`; may be empty).
    pub vmx: &'a [VmxState],
    /// The VMCOREINFO text the guest registered, if any.
    pub vmcoreinfo: Option<&'a [u8]>,
    /// The pvpanic event log, if the VM has the device.
    pub pvpanic: Option<&'a PvpanicLog>,
    /// The guest fault that stopped a vCPU, if one did (`VMMFAULT` note).
    pub fault: Option<&'a crate::GuestFault>,
    /// CR3 whose page tables give the PT_LOADs their virtual addresses
    /// (typically the panicking or first vCPU's). None: no walk, every
    /// `p_vaddr` is 0.
    pub paging_cr3: Option<u64>,
}

/// Knobs of [`write_vmcore`].
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// fsync the file and its directory (on by default).
    pub sync: bool,
    /// Split PT_LOADs so none is longer than this (0: no limit). Used by
    /// tests to force many program headers (the PN_XNUM path).
    pub max_load_len: u64,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            sync: true,
            max_load_len: 0,
        }
    }
}

/// Progress of a dump, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// RAM bytes processed so far.
    pub done: u64,
    /// RAM bytes in the dump.
    pub total: u64,
}

/// What a finished dump did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// RAM bytes covered by PT_LOADs.
    pub ram_bytes: u64,
    /// Bytes of memory actually written (non-zero, touched pages).
    pub data_bytes: u64,
    /// Logical file size.
    pub file_size: u64,
    /// Number of PT_LOAD headers.
    pub loads: u64,
    /// Number of notes.
    pub notes: u64,
    /// Wall time, including fsync.
    pub elapsed: Duration,
}

/// A PT_LOAD to be: which region, which bytes of it, where in the file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Load {
    /// Index into the RAM regions.
    pub region: usize,
    /// Offset of the first byte inside that region.
    pub start: u64,
    pub len: u64,
    pub vaddr: u64,
    /// File offset (set by [`layout`]).
    pub offset: u64,
}

/// Write a vmcore for `input` to `path`, atomically: the data goes to
/// `.<name>.tmp.<pid>.<n>` in the same directory, is fsynced, then renamed
/// over `path` and the directory fsynced. On any error the temporary file is
/// removed and nothing appears under `path`.
///
/// `progress` is called every few MiB with the RAM bytes processed.
pub fn write_vmcore(
    path: &Path,
    input: &DumpInput<'_>,
    opts: &WriteOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<DumpStats, WriteError> {
    write_atomically(path, opts, &mut |file| {
        write_to_file(file, input, opts, progress)
    })
}

/// Create `.<name>.tmp.<pid>.<n>` beside `path`, let `fill` write it, fsync
/// (per `opts`), rename over `path` and fsync the directory. On any error
/// the temporary file is removed and nothing appears under `path`.
pub(crate) fn write_atomically(
    path: &Path,
    opts: &WriteOptions,
    fill: &mut dyn FnMut(&File) -> Result<DumpStats, Inner>,
) -> Result<DumpStats, WriteError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let started = Instant::now();
    let name = path
        .file_name()
        .ok_or_else(|| WriteError::BadPath(path.to_path_buf()))?;
    let dir = match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(WriteError::BadPath(path.to_path_buf())),
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|source| WriteError::Create {
            path: tmp.clone(),
            source,
        })?;
    let guard = RemoveOnDrop(Some(tmp.clone()));

    let mut stats = fill(&file).map_err(|e| e.into_write_error(&tmp))?;
    if opts.sync {
        file.sync_all().map_err(|source| WriteError::Write {
            path: tmp.clone(),
            source,
        })?;
    }
    drop(file);
    std::fs::rename(&tmp, path).map_err(|source| WriteError::Rename {
        path: path.to_path_buf(),
        source,
    })?;
    guard.disarm();
    if opts.sync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| WriteError::Rename {
                path: path.to_path_buf(),
                source,
            })?;
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                log::warn!("cannot remove {}: {e}", p.display());
            }
        }
    }
}

pub(crate) enum Inner {
    Io(std::io::Error),
    BadRam(u64),
    Hdr(ElfCoreHdrError),
}

impl Inner {
    fn into_write_error(self, tmp: &Path) -> WriteError {
        match self {
            Inner::Io(source) => WriteError::Write {
                path: tmp.to_path_buf(),
                source,
            },
            Inner::BadRam(gpa) => WriteError::BadRam(gpa),
            Inner::Hdr(e) => WriteError::ElfCoreHdr(e),
        }
    }
}

impl From<std::io::Error> for Inner {
    fn from(e: std::io::Error) -> Self {
        Inner::Io(e)
    }
}

fn build_notes(input: &DumpInput<'_>) -> (Vec<u8>, u64) {
    let mut notes = Vec::new();
    let mut count = encode_host_cpu_notes(
        &mut notes,
        input.cpus,
        input.vmx,
        NOTE_NAME_CORE,
        NT_PRSTATUS,
    );
    if let Some(text) = input.vmcoreinfo {
        elf::encode_note(&mut notes, NOTE_NAME_VMCOREINFO, NT_VMCOREINFO, text);
        count += 1;
    }
    if let Some(log) = input.pvpanic {
        encode_pvpanic_note(&mut notes, log);
        count += 1;
    }
    if let Some(fault) = input.fault {
        fault.encode_note(&mut notes);
        count += 1;
    }
    (notes, count)
}

/// Per vCPU: the host registers as `prstatus_name`/`prstatus_type`, its
/// `QEMU` note and its `VMMVMX` note if `vmx` has one. Returns the count.
pub(crate) fn encode_host_cpu_notes(
    notes: &mut Vec<u8>,
    cpus: &[CpuState],
    vmx: &[VmxState],
    prstatus_name: &[u8],
    prstatus_type: u32,
) -> u64 {
    let mut count = 0;
    for cpu in cpus {
        elf::encode_note(
            notes,
            prstatus_name,
            prstatus_type,
            cpu.to_prstatus().as_bytes(),
        );
        elf::encode_note(
            notes,
            NOTE_NAME_QEMU,
            NT_QEMU_CPUSTATE,
            cpu.to_qemu().as_bytes(),
        );
        count += 2;
        if let Some(v) = vmx.iter().find(|v| v.vcpu == cpu.vcpu) {
            elf::encode_note(notes, NOTE_NAME_VMX, NT_VMM_VMX, v.to_note().as_bytes());
            count += 1;
        }
    }
    count
}

/// The `VMMPVPANIC` note.
pub(crate) fn encode_pvpanic_note(notes: &mut Vec<u8>, log: &PvpanicLog) {
    let header = PvpanicLogHeader {
        version: PVPANIC_LOG_VERSION,
        entry_size: PVPANIC_LOG_ENTRY_SIZE as u32,
        count: log.entries.len() as u32,
        dropped: log.dropped,
    };
    let mut desc = header.as_bytes().to_vec();
    for e in &log.entries {
        desc.extend_from_slice(e.as_bytes());
    }
    elf::encode_note(notes, NOTE_NAME_PVPANIC, NT_VMM_PVPANIC, &desc);
}

/// Split RAM into PT_LOADs: at changes between mapped and unmapped, at
/// discontinuities of the virtual mapping, and at `max_load_len`.
fn plan_loads(input: &DumpInput<'_>, max_load_len: u64) -> Result<Vec<Load>, Inner> {
    let mut order: Vec<usize> = (0..input.ram.len()).collect();
    order.sort_by_key(|&i| input.ram[i].gpa);
    let mut prev_end = 0u64;
    for &i in &order {
        let r = &input.ram[i];
        let end = r
            .gpa
            .checked_add(r.data.len() as u64)
            .ok_or(Inner::BadRam(r.gpa))?;
        if r.gpa < prev_end {
            return Err(Inner::BadRam(r.gpa));
        }
        prev_end = end;
    }

    let p2v = match input.paging_cr3 {
        Some(cr3) => {
            let runs = walk_page_tables(cr3, &|pa| table_at(input.ram, pa));
            physical_to_virtual(&runs)
        }
        None => Default::default(),
    };

    let mut loads = Vec::new();
    for &i in &order {
        let r = &input.ram[i];
        let end = r.gpa + r.data.len() as u64;
        let mut cur = r.gpa;
        while cur < end {
            // The interval containing `cur`, or the next one.
            let containing = p2v.range(..=cur).next_back().filter(|(_, &(e, _))| e > cur);
            let (piece_end, vaddr) = match containing {
                Some((&s, &(e, va))) => (e.min(end), va + (cur - s)),
                None => {
                    let next = p2v.range(cur..).next().map(|(&s, _)| s).unwrap_or(end);
                    (next.min(end), 0)
                }
            };
            let mut s = cur;
            while s < piece_end {
                let mut len = piece_end - s;
                if max_load_len > 0 {
                    len = len.min(max_load_len);
                }
                loads.push(Load {
                    region: i,
                    start: s - r.gpa,
                    len,
                    vaddr: if vaddr == 0 { 0 } else { vaddr + (s - cur) },
                    offset: 0,
                });
                s += len;
            }
            cur = piece_end;
        }
    }
    Ok(loads)
}

fn table_at<'a>(ram: &'a [RamRegion<'a>], pa: u64) -> Option<&'a [u8]> {
    ram.iter().find_map(|r| {
        let off = pa.checked_sub(r.gpa)?;
        let off = usize::try_from(off).ok()?;
        r.data.get(off..off.checked_add(PAGE)?)
    })
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn write_to_file(
    file: &File,
    input: &DumpInput<'_>,
    opts: &WriteOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<DumpStats, Inner> {
    let (notes, note_count) = build_notes(input);
    let mut loads = plan_loads(input, opts.max_load_len)?;
    let (head, file_size) = layout(&notes, &mut loads, input.ram);
    write_image(
        file, &head, file_size, note_count, &loads, input.ram, progress,
    )
}

/// Give each load its file offset and encode the ELF header, program
/// headers and notes. Returns (those head bytes, total file size).
pub(crate) fn layout(notes: &[u8], loads: &mut [Load], ram: &[RamRegion<'_>]) -> (Vec<u8>, u64) {
    let phnum = 1 + loads.len() as u64;
    let xnum = phnum >= elf::PN_XNUM as u64;
    let phdrs_end = elf::EHDR_SIZE as u64 + phnum * elf::PHDR_SIZE as u64;
    let shoff = phdrs_end;
    let notes_off = if xnum {
        shoff + elf::SHDR_SIZE as u64
    } else {
        phdrs_end
    };
    let mut offset = align_up(notes_off + notes.len() as u64, PAGE as u64);
    for l in loads.iter_mut() {
        l.offset = offset;
        offset = align_up(offset + l.len, PAGE as u64);
    }
    let file_size = loads.last().map(|l| l.offset + l.len).unwrap_or(offset);

    let mut head = Vec::with_capacity(notes_off as usize + notes.len());
    elf::encode_ehdr(&mut head, phnum, shoff);
    Phdr {
        p_type: PT_NOTE,
        p_offset: notes_off,
        p_filesz: notes.len() as u64,
        p_memsz: notes.len() as u64,
        p_align: 4,
        ..Default::default()
    }
    .encode(&mut head);
    for l in loads.iter() {
        let gpa = ram[l.region].gpa + l.start;
        Phdr {
            p_type: PT_LOAD,
            p_flags: PF_R | PF_W | PF_X,
            p_offset: l.offset,
            p_vaddr: l.vaddr,
            p_paddr: gpa,
            p_filesz: l.len,
            p_memsz: l.len,
            p_align: 0,
        }
        .encode(&mut head);
    }
    if xnum {
        elf::encode_shdr0(&mut head, phnum);
    }
    head.extend_from_slice(notes);
    (head, file_size)
}

/// Write `head` at 0 and each load's memory (sparse) at its offset.
pub(crate) fn write_image(
    file: &File,
    head: &[u8],
    file_size: u64,
    note_count: u64,
    loads: &[Load],
    ram: &[RamRegion<'_>],
    progress: &mut dyn FnMut(Progress),
) -> Result<DumpStats, Inner> {
    // Size the file first: everything not written below stays a hole.
    file.set_len(file_size)?;
    file.write_all_at(head, 0)?;

    let total: u64 = loads.iter().map(|l| l.len).sum();
    let mut done = 0u64;
    let mut data_bytes = 0u64;
    let mut residency: Vec<Option<Vec<u8>>> = vec![None; ram.len()];
    for (i, r) in ram.iter().enumerate() {
        if r.untouched_reads_zero {
            residency[i] = mincore(r.data);
        }
    }
    progress(Progress { done, total });
    for l in loads {
        let r = &ram[l.region];
        let start = l.start as usize;
        let data = &r.data[start..start + l.len as usize];
        data_bytes += write_sparse(
            file,
            data,
            l.offset,
            residency[l.region].as_deref().map(|res| (res, start)),
            &mut |n| {
                done += n;
                progress(Progress { done, total });
            },
        )?;
    }
    Ok(DumpStats {
        ram_bytes: total,
        data_bytes,
        file_size,
        loads: loads.len() as u64,
        notes: note_count,
        elapsed: Duration::ZERO,
    })
}

/// Per-page residency of `data` (which must start page-aligned), or None if
/// it cannot be determined (then every page is read).
fn mincore(data: &[u8]) -> Option<Vec<u8>> {
    let addr = data.as_ptr() as usize;
    if !addr.is_multiple_of(PAGE) || data.is_empty() {
        return None;
    }
    let pages = data.len().div_ceil(PAGE);
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr..addr+len` is mapped (it backs `data`); `vec` has one
    // byte per page of that range, as mincore requires.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, data.len(), vec.as_mut_ptr()) };
    if rc != 0 {
        log::debug!("mincore: {}", std::io::Error::last_os_error());
        return None;
    }
    Some(vec)
}

fn is_zero(chunk: &[u8]) -> bool {
    let mut blocks = chunk.chunks_exact(256);
    for b in &mut blocks {
        let mut acc = 0u64;
        for w in b.chunks_exact(8) {
            acc |= u64::from_ne_bytes(w.try_into().expect("8-byte chunk"));
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Write the non-zero, resident pages of `data` at `file_off`, coalesced into
/// runs of up to [`MAX_RUN`]. `residency` is (per-page mincore vector of the
/// whole region, byte offset of `data` in the region). Returns bytes written.
fn write_sparse(
    file: &File,
    data: &[u8],
    file_off: u64,
    residency: Option<(&[u8], usize)>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, Inner> {
    let mut written = 0u64;
    let mut run_start: Option<usize> = None;
    let mut reported = 0usize;
    let mut pos = 0usize;
    let flush = |from: usize, to: usize, written: &mut u64| -> Result<(), Inner> {
        file.write_all_at(&data[from..to], file_off + from as u64)?;
        *written += (to - from) as u64;
        Ok(())
    };
    while pos < data.len() {
        let end = (pos + PAGE).min(data.len());
        let resident = match residency {
            // Only whole pages can be proven untouched; `base + pos` is page
            // aligned because regions and loads start page aligned.
            Some((res, base)) if (base + pos).is_multiple_of(PAGE) => {
                res.get((base + pos) / PAGE).is_none_or(|&b| b & 1 != 0)
            }
            _ => true,
        };
        let keep = resident && !is_zero(&data[pos..end]);
        match (keep, run_start) {
            (true, None) => run_start = Some(pos),
            (true, Some(s)) if end - s > MAX_RUN => {
                flush(s, pos, &mut written)?;
                run_start = Some(pos);
            }
            (false, Some(s)) => {
                flush(s, pos, &mut written)?;
                run_start = None;
            }
            _ => {}
        }
        pos = end;
        if pos - reported >= MAX_RUN {
            progress((pos - reported) as u64);
            reported = pos;
        }
    }
    if let Some(s) = run_start {
        flush(s, data.len(), &mut written)?;
    }
    progress((data.len() - reported) as u64);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_a_single_byte() {
        let mut page = vec![0u8; PAGE];
        assert!(is_zero(&page));
        page[4095] = 1;
        assert!(!is_zero(&page));
        page[4095] = 0;
        page[17] = 0x80;
        assert!(!is_zero(&page));
        assert!(!is_zero(&[0, 0, 1]));
    }

    #[test]
    fn overlapping_ram_is_rejected() {
        let a = vec![0u8; 8192];
        let ram = [RamRegion::new(0, &a), RamRegion::new(4096, &a)];
        let input = DumpInput {
            ram: &ram,
            ..Default::default()
        };
        assert!(matches!(plan_loads(&input, 0), Err(Inner::BadRam(4096))));
    }

    /// The page walk reads guest page tables only through `table_at`, which
    /// answers None for any page not entirely inside one RAM region: at the
    /// end of RAM, beyond it, inside or across the MMIO hole.
    #[test]
    fn page_tables_outside_ram_are_never_read() {
        const HOLE: (u64, u64) = (0xc000_0000, 0x1_0000_0000);
        let below = vec![0u8; 0x4000];
        let above = vec![0u8; 0x4000];
        let ram = [
            RamRegion::new(HOLE.0 - 0x4000, &below),
            RamRegion::new(HOLE.1, &above),
        ];
        let end = HOLE.1 + 0x4000;
        assert!(table_at(&ram, HOLE.0 - 0x1000).is_some());
        assert!(table_at(&ram, end - 0x1000).is_some());
        for pa in [
            HOLE.0 - 0x800, // straddles the start of the hole
            HOLE.0,         // in the hole
            HOLE.1 - 0x800, // straddles the end of the hole
            end - 0x800,    // runs past the end of RAM
            end,            // beyond RAM
            u64::MAX - 0xfff,
        ] {
            assert!(table_at(&ram, pa).is_none(), "{pa:#x}");
        }

        // A PML4 at the last page below the hole whose entries point at
        // each of those places, and at itself (so the walk also meets them
        // as lower-level tables): every table the walk asks for outside RAM
        // is refused, and the walk ends.
        let mut pml4 = below.clone();
        let targets = [HOLE.0 - 0x1000, HOLE.0, HOLE.1 - 0x1000, end, end - 0x1000];
        for (i, pa) in targets.iter().enumerate() {
            let e = pa | 1;
            pml4[0x3000 + i * 8..0x3000 + i * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        let ram = [
            RamRegion::new(HOLE.0 - 0x4000, &pml4),
            RamRegion::new(HOLE.1, &above),
        ];
        let asked = std::cell::RefCell::new(Vec::new());
        walk_page_tables(HOLE.0 - 0x1000, &|pa| {
            let t = table_at(&ram, pa);
            asked.borrow_mut().push((pa, t.is_some()));
            t
        });
        let asked = asked.into_inner();
        for pa in [HOLE.0, end] {
            assert!(asked.contains(&(pa, false)), "{pa:#x} not refused");
        }
        assert!(asked
            .iter()
            .all(|&(pa, read)| !read || pa == HOLE.0 - 0x1000 || pa == end - 0x1000));
        // CR3 itself outside RAM: no walk at all.
        for cr3 in [HOLE.0, end, u64::MAX] {
            assert!(walk_page_tables(cr3, &|pa| table_at(&ram, pa)).is_empty());
        }
    }
}
