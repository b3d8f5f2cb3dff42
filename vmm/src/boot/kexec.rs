//! The VMM plays `kexec -p`: at VM build time it loads the capture kernel
//! into the region `crashkernel=` reserves (the contract is
//! `guest_abi::kexec`).
//!
//! On a real machine the kdump service runs `kexec -p` after boot and the
//! kernel copies the image into the reservation at CPL0. This host emulates
//! every CPL0 guest instruction, so the VMM does that work before the first
//! instruction instead: it computes the region exactly as the guest will
//! (`guest_abi::crashkernel::reserve` over the memory map the VMM writes),
//! copies the same kernel ELF there, builds the capture kernel's page
//! tables and boot data, and hands the first kernel a
//! [`KexecDescriptor`] (with a digest, for the purgatory check) as PVH
//! module 0.
//!
//! Layout inside the region `[start, end)`, offsets from `start`:
//!
//! ```text
//! 0                 the image: every PT_LOAD at p_paddr - KERNEL_LOAD_ADDR
//!                   (bss zeroed), up to the image end rounded to 4 KiB
//! tables            page tables (TABLES_* below), 4 KiB each: PML4,
//!                   identity PDPT, 4 identity PDs, one PT per 2 MiB slot the
//!                   image's link-time window touches, alias PDPT, then an
//!                   alias PD for each alias GiB whose identity PD has PTs
//! boot              boot data (BOOT_* offsets): descriptor, modlist entry,
//!                   module command line, hvm_start_info, memory map, then
//!                   the capture command line at boot + 0x1000
//! end - 16 KiB      the elfcorehdr (ELFCOREHDR_RESERVE; the first kernel's)
//! ```

use core::mem::size_of;

use guest_abi::cmdline::{key_eq, params};
use guest_abi::crashkernel;
use guest_abi::kexec::{
    digest_bytes, KexecDescriptor, KexecRange, CAPTURE_CMDLINE_DROP, DESCRIPTOR_MAGIC,
    DESCRIPTOR_VERSION, DIGEST_INIT, ELFCOREHDR_RESERVE, MAX_RANGES, MODULE_CMDLINE, NOTE_NAME,
    NT_KEXEC_ENTRY64, OLDMEM_ALIAS_BASE, OLDMEM_ALIAS_SIZE,
};
use guest_abi::pvh::{HvmMemmapEntry, HVM_START_MAGIC, MEMMAP_TYPE_RAM};
use guest_abi::KERNEL_LOAD_ADDR;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::pvh;

/// Page size of the tables and of the image window's mapping.
const PAGE: u64 = 0x1000;
/// A large page.
const HUGE: u64 = 2 << 20;
const GIB: u64 = 1 << 30;
/// Entries per table.
const ENTRIES: usize = 512;

/// Page-table entry bits, as the guest's boot tables use them
/// (`guest-kernel/src/x86/paging.rs`).
pub const PTE_PRESENT: u64 = 1 << 0;
/// Writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-level write-through.
pub const PTE_PWT: u64 = 1 << 3;
/// Page-level cache disable.
pub const PTE_PCD: u64 = 1 << 4;
/// In a PD entry: a 2 MiB page.
pub const PTE_HUGE: u64 = 1 << 7;
/// From here to 4 GiB the guest maps uncached (PCI hole, LAPIC, IOAPIC).
pub const UNCACHED_START: u64 = 0xC000_0000;
/// What the identity part of the capture tables maps (as the guest's).
pub const IDENTITY_BYTES: u64 = 4 << 30;

/// Offset of the [`KexecDescriptor`] in the boot data.
pub const BOOT_DESCRIPTOR: u64 = 0;
/// Offset of the first kernel's `hvm_modlist_entry` (module 0).
pub const BOOT_MODLIST: u64 = 0x100;
/// Offset of module 0's command line ([`MODULE_CMDLINE`], NUL-terminated).
pub const BOOT_MODULE_CMDLINE: u64 = 0x120;
/// Offset of the capture kernel's `hvm_start_info`.
pub const BOOT_START_INFO: u64 = 0x140;
/// Offset of the capture kernel's memory map.
pub const BOOT_MEMMAP: u64 = 0x180;
/// Offset of the capture kernel's command line (NUL-terminated).
pub const BOOT_CMDLINE: u64 = 0x1000;
/// Most memory map entries the boot data holds.
pub const BOOT_MEMMAP_MAX: usize = ((BOOT_CMDLINE - BOOT_MEMMAP) / 24) as usize;

const _: () = {
    assert!(BOOT_DESCRIPTOR + size_of::<KexecDescriptor>() as u64 <= BOOT_MODLIST);
    assert!(BOOT_MODLIST + 32 <= BOOT_MODULE_CMDLINE);
    assert!(BOOT_MODULE_CMDLINE + (MODULE_CMDLINE.len() as u64) < BOOT_START_INFO);
    assert!(BOOT_START_INFO + 56 <= BOOT_MEMMAP);
    assert!(BOOT_MODLIST.is_multiple_of(8));
    // The alias is whole PDPT entries of one PML4 slot.
    assert!(OLDMEM_ALIAS_BASE.is_multiple_of(512 * GIB));
    assert!(OLDMEM_ALIAS_SIZE.is_multiple_of(GIB) && OLDMEM_ALIAS_SIZE <= 512 * GIB);
    assert!(IDENTITY_BYTES <= OLDMEM_ALIAS_BASE);
    assert!(KERNEL_LOAD_ADDR.is_multiple_of(PAGE));
};

/// Why no capture kernel was loaded.
#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    /// The kernel ELF could not be parsed.
    #[error("kernel ELF: {0}")]
    Elf(#[source] goblin::error::Error),
    /// The kernel has no `VMMKEXEC` entry note: it cannot be a capture kernel.
    #[error("kernel has no {NOTE_NAME} entry note; it cannot be a capture kernel")]
    NoEntryNote,
    /// The image cannot be copied and mapped as the contract says.
    #[error("kernel image unsuitable as a capture kernel: {0}")]
    Image(&'static str),
    /// `crashkernel=` names no region the guest can reserve.
    #[error("crashkernel={size:#x}: no region fits in guest RAM above the kernel")]
    NoRegion {
        /// The requested size.
        size: u64,
    },
    /// The region does not start on a page.
    #[error("crashkernel region {0:#x} is not page aligned")]
    Unaligned(u64),
    /// Image, page tables and boot data do not fit below the elfcorehdr.
    #[error(
        "crashkernel region too small: need {need:#x} bytes below the elfcorehdr, have {have:#x}"
    )]
    TooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes available (region size minus ELFCOREHDR_RESERVE).
        have: u64,
    },
    /// The memory map does not fit in the boot data.
    #[error("too many memory map entries for the capture kernel")]
    MemmapTooBig,
    /// The entry stub's page is not identity-mapped in the new tables.
    #[error("entry {0:#x} is not identity-mapped in the capture page tables")]
    EntryNotIdentity(u64),
    /// The first kernel's start_info could not be updated.
    #[error(transparent)]
    Pvh(#[from] pvh::PvhError),
    /// Guest memory could not be read or written.
    #[error("guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

type Result<T> = std::result::Result<T, KexecError>;

/// A loadable segment of the capture image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSegment {
    /// Link-time (= physical) address.
    pub paddr: u64,
    /// Bytes from the file.
    pub data: Vec<u8>,
    /// Bytes in memory (`>= data.len()`; the rest is bss).
    pub memsz: u64,
}

/// What the loader needs from the kernel ELF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureImage {
    /// The PT_LOAD segments with memory.
    pub segments: Vec<ImageSegment>,
    /// Link-time address of `kexec_entry64` (the `VMMKEXEC` note).
    pub entry: u64,
    /// End of the last segment's memory: the guest's `__kernel_end`, the
    /// `min_start` of the crashkernel placement.
    pub kernel_end: u64,
}

impl CaptureImage {
    /// Reads the PT_LOADs and the `VMMKEXEC` note. Segments must be linked
    /// at their load address (`p_vaddr == p_paddr`), at or above
    /// `KERNEL_LOAD_ADDR`.
    pub fn parse(elf: &[u8]) -> Result<Self> {
        let parsed = goblin::elf::Elf::parse(elf).map_err(KexecError::Elf)?;
        let mut entry = None;
        if let Some(notes) = parsed.iter_note_headers(elf) {
            for note in notes.flatten() {
                if note.n_type == NT_KEXEC_ENTRY64 && note.name.trim_end_matches('\0') == NOTE_NAME
                {
                    let desc: [u8; 8] = note
                        .desc
                        .get(..8)
                        .and_then(|d| d.try_into().ok())
                        .ok_or(KexecError::Image("entry note shorter than 8 bytes"))?;
                    entry = Some(u64::from_le_bytes(desc));
                }
            }
        }
        let entry = entry.ok_or(KexecError::NoEntryNote)?;
        let mut segments = Vec::new();
        for ph in &parsed.program_headers {
            if ph.p_type != goblin::elf::program_header::PT_LOAD || ph.p_memsz == 0 {
                continue;
            }
            if ph.p_vaddr != ph.p_paddr {
                return Err(KexecError::Image(
                    "a segment is not linked at its load address",
                ));
            }
            if ph.p_paddr < KERNEL_LOAD_ADDR || ph.p_filesz > ph.p_memsz {
                return Err(KexecError::Image("a segment lies below the load address"));
            }
            if ph
                .p_paddr
                .checked_add(ph.p_memsz)
                .is_none_or(|e| e > IDENTITY_BYTES)
            {
                return Err(KexecError::Image("a segment lies above 4 GiB"));
            }
            let data = usize::try_from(ph.p_offset)
                .ok()
                .zip(usize::try_from(ph.p_filesz).ok())
                .and_then(|(off, len)| elf.get(off..off.checked_add(len)?))
                .ok_or(KexecError::Image("a segment runs past the end of the file"))?;
            segments.push(ImageSegment {
                paddr: ph.p_paddr,
                data: data.to_vec(),
                memsz: ph.p_memsz,
            });
        }
        let kernel_end = segments
            .iter()
            .map(|s| s.paddr + s.memsz)
            .max()
            .ok_or(KexecError::Image("no loadable segment"))?;
        let in_file = segments
            .iter()
            .any(|s| entry >= s.paddr && entry < s.paddr + s.data.len() as u64);
        if !in_file {
            return Err(KexecError::Image("the entry is not in a loaded segment"));
        }
        Ok(Self {
            segments,
            entry,
            kernel_end,
        })
    }

    /// Bytes the copy occupies in the region (the window, page rounded).
    pub fn window_len(&self) -> u64 {
        align_up(self.kernel_end, PAGE) - KERNEL_LOAD_ADDR
    }
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The `crashkernel=` spec the guest will use: the last parameter whose
/// value parses (an invalid one leaves the previous in force, as in the
/// guest's `BootConfig`).
pub fn crashkernel_spec(cmdline: &str) -> Option<crashkernel::CrashKernelSpec> {
    params(cmdline.as_bytes())
        .filter(|p| key_eq(p.key, b"crashkernel"))
        .filter_map(|p| p.value.and_then(crashkernel::parse))
        .last()
}

/// The region the guest reserves for `spec`, from the memory map the VMM
/// writes for `ram` and the image's end.
pub fn region(
    ram: &[(u64, u64)],
    spec: crashkernel::CrashKernelSpec,
    kernel_end: u64,
) -> Option<(u64, u64)> {
    let map: Vec<HvmMemmapEntry> = pvh::memmap(ram)
        .iter()
        .map(|e| HvmMemmapEntry {
            addr: e.addr,
            size: e.size,
            type_: e.type_,
            reserved: 0,
        })
        .collect();
    crashkernel::reserve(&map, spec, kernel_end)
}

/// The capture kernel's command line: `first` without the
/// [`CAPTURE_CMDLINE_DROP`] parameters, plus `elfcorehdr=0x.. nr_cpus=1
/// vmx=off`. Kept parameters are copied as written (quotes included).
pub fn capture_cmdline(first: &str, elfcorehdr: u64) -> String {
    let mut out = String::with_capacity(first.len() + 48);
    for p in params(first.as_bytes()) {
        if CAPTURE_CMDLINE_DROP
            .iter()
            .any(|k| key_eq(p.key, k.as_bytes()))
        {
            continue;
        }
        out.push_str(&String::from_utf8_lossy(p.raw));
        out.push(' ');
    }
    out.push_str(&format!("elfcorehdr={elfcorehdr:#x} nr_cpus=1 vmx=off"));
    out
}

/// The capture kernel's page tables for tables placed at GPA `base`:
/// identity for `[0, IDENTITY_BYTES)` with 2 MiB pages (uncached from
/// [`UNCACHED_START`]), except that the link-time window `[window.0,
/// window.1)` maps 4 KiB page by page onto `copy` (the rest of the slots it
/// touches stays identity), plus the old-memory alias. Returns the pages,
/// PML4 first.
pub fn build_page_tables(base: u64, window: (u64, u64), copy: u64) -> Vec<[u64; ENTRIES]> {
    let mut pages: Vec<[u64; ENTRIES]> = Vec::new();
    let gpa = |i: usize| base + i as u64 * PAGE;
    let alloc = |pages: &mut Vec<[u64; ENTRIES]>| {
        pages.push([0; ENTRIES]);
        pages.len() - 1
    };
    let table = PTE_PRESENT | PTE_WRITABLE;
    let huge = |addr: u64| {
        let e = addr | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE;
        if addr >= UNCACHED_START {
            e | PTE_PCD | PTE_PWT
        } else {
            e
        }
    };
    let pml4 = alloc(&mut pages);
    let pdpt = alloc(&mut pages);
    pages[pml4][0] = gpa(pdpt) | table;
    let gibs = (IDENTITY_BYTES / GIB) as usize;
    let mut split = vec![false; gibs];
    for (g, split_g) in split.iter_mut().enumerate() {
        let pd = alloc(&mut pages);
        pages[pdpt][g] = gpa(pd) | table;
        for i in 0..ENTRIES {
            let slot = g as u64 * GIB + i as u64 * HUGE;
            if slot + HUGE <= window.0 || slot >= window.1 {
                pages[pd][i] = huge(slot);
                continue;
            }
            *split_g = true;
            let pt = alloc(&mut pages);
            pages[pd][i] = gpa(pt) | table;
            for (j, pte) in pages[pt].iter_mut().enumerate() {
                let va = slot + j as u64 * PAGE;
                let pa = if va >= window.0 && va < window.1 {
                    copy + (va - window.0)
                } else {
                    va
                };
                let uncached = if va >= UNCACHED_START {
                    PTE_PCD | PTE_PWT
                } else {
                    0
                };
                *pte = pa | PTE_PRESENT | PTE_WRITABLE | uncached;
            }
        }
    }
    // The alias: pure 2 MiB pages onto GPA 0.. An identity PD without PTs
    // is exactly that, so it is shared.
    let alias_pdpt = alloc(&mut pages);
    pages[pml4][((OLDMEM_ALIAS_BASE >> 39) & 511) as usize] = gpa(alias_pdpt) | table;
    for g in 0..(OLDMEM_ALIAS_SIZE / GIB) as usize {
        let pd_gpa = match split.get(g) {
            Some(false) => pages[pdpt][g] & !(PAGE - 1),
            _ => {
                let pd = alloc(&mut pages);
                for (i, pde) in pages[pd].iter_mut().enumerate() {
                    *pde = huge(g as u64 * GIB + i as u64 * HUGE);
                }
                gpa(pd)
            }
        };
        pages[alias_pdpt][g] = pd_gpa | table;
    }
    pages
}

/// Walks 4-level tables in `mem` (4 KiB and 2 MiB pages): the GPA `va`
/// maps to and the leaf entry, or `None` if not present.
pub fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<(u64, u64)> {
    let entry = |table: u64, index: u64| -> Option<u64> {
        let e: u64 = mem
            .read_obj(GuestAddress((table & 0x000f_ffff_ffff_f000) + index * 8))
            .ok()?;
        (e & PTE_PRESENT != 0).then_some(e)
    };
    let pml4e = entry(cr3, (va >> 39) & 511)?;
    let pdpte = entry(pml4e, (va >> 30) & 511)?;
    let pde = entry(pdpte, (va >> 21) & 511)?;
    if pde & PTE_HUGE != 0 {
        return Some(((pde & 0x000f_ffff_ffe0_0000) | (va & (HUGE - 1)), pde));
    }
    let pte = entry(pde, (va >> 12) & 511)?;
    Some(((pte & 0x000f_ffff_ffff_f000) | (va & (PAGE - 1)), pte))
}

/// Where things went in the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The crashkernel region `[start, end)`.
    pub region: (u64, u64),
    /// GPA of the copy's `kexec_entry64`.
    pub entry: u64,
    /// GPA of the capture PML4.
    pub cr3: u64,
    /// GPA of the capture `hvm_start_info`.
    pub start_info: u64,
    /// GPA of the descriptor (module 0).
    pub descriptor: u64,
    /// GPA of the first kernel's modlist (one entry).
    pub modlist: u64,
    /// GPA of the elfcorehdr the capture command line names.
    pub elfcorehdr: u64,
    /// One past the last byte the VMM wrote in the region.
    pub used_end: u64,
    /// The digest in the descriptor.
    pub digest: u64,
}

fn write(mem: &GuestMemoryMmap, bytes: &[u8], gpa: u64) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(gpa))
        .map_err(KexecError::Memory)
}

fn put(buf: &mut [u8], off: u64, bytes: &[u8]) {
    let off = off as usize;
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// The descriptor's bytes (little endian, `#[repr(C)]` layout).
fn descriptor_bytes(d: &KexecDescriptor) -> Vec<u8> {
    let mut b = Vec::with_capacity(size_of::<KexecDescriptor>());
    b.extend_from_slice(&d.magic.to_le_bytes());
    b.extend_from_slice(&d.version.to_le_bytes());
    b.extend_from_slice(&d.nr_ranges.to_le_bytes());
    for v in [
        d.region_start,
        d.region_end,
        d.entry,
        d.cr3,
        d.start_info,
        d.elfcorehdr,
        d.digest,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for r in &d.ranges {
        b.extend_from_slice(&r.gpa.to_le_bytes());
        b.extend_from_slice(&r.len.to_le_bytes());
    }
    b
}

/// The digest over `ranges` as the guest computes it, read from `mem`.
pub fn digest_of(mem: &GuestMemoryMmap, ranges: &[KexecRange]) -> Result<u64> {
    let mut h = DIGEST_INIT;
    for r in ranges {
        let mut buf = vec![0u8; r.len as usize];
        mem.read_slice(&mut buf, GuestAddress(r.gpa))
            .map_err(KexecError::Memory)?;
        h = digest_bytes(h, &buf);
    }
    Ok(h)
}

/// Loads the capture kernel if `cmdline` has a usable `crashkernel=`:
/// `Ok(None)` when it has none, an error (nothing loaded, the first
/// kernel's start_info untouched) when the image or region does not allow
/// it. Call after [`pvh::write_boot_info`]: on success module 0 of the
/// first kernel's start_info is the descriptor.
pub fn load(
    mem: &GuestMemoryMmap,
    elf: &[u8],
    cmdline: &str,
    ram: &[(u64, u64)],
    rsdp: u64,
) -> Result<Option<Loaded>> {
    let Some(spec) = crashkernel_spec(cmdline) else {
        return Ok(None);
    };
    let image = CaptureImage::parse(elf)?;
    let (start, end) =
        region(ram, spec, image.kernel_end).ok_or(KexecError::NoRegion { size: spec.size })?;
    if !start.is_multiple_of(PAGE) {
        return Err(KexecError::Unaligned(start));
    }
    let copy = |link: u64| start + (link - KERNEL_LOAD_ADDR);
    let window = (KERNEL_LOAD_ADDR, KERNEL_LOAD_ADDR + image.window_len());

    let tables_at = start + image.window_len();
    let tables = build_page_tables(tables_at, window, start);
    let tables_len = tables.len() as u64 * PAGE;
    let boot = tables_at + tables_len;
    let elfcorehdr = end - ELFCOREHDR_RESERVE;
    let cmd = capture_cmdline(cmdline, elfcorehdr);
    let boot_len = align_up(BOOT_CMDLINE + cmd.len() as u64 + 1, 8);
    let need = boot + boot_len - start;
    let have = (end - start).saturating_sub(ELFCOREHDR_RESERVE);
    if need > have {
        return Err(KexecError::TooSmall { need, have });
    }

    // The capture kernel's memory map: its region (less the elfcorehdr) is
    // its only RAM; the first kernel's reserved and ACPI ranges stay listed
    // so that it finds the ACPI tables where the first kernel did.
    let mut map: Vec<hvm_memmap_table_entry> = pvh::memmap(ram)
        .into_iter()
        .filter(|e| e.type_ != MEMMAP_TYPE_RAM)
        .collect();
    map.push(hvm_memmap_table_entry {
        addr: start,
        size: elfcorehdr - start,
        type_: MEMMAP_TYPE_RAM,
        reserved: 0,
    });
    map.sort_by_key(|e| e.addr);
    if map.len() > BOOT_MEMMAP_MAX {
        return Err(KexecError::MemmapTooBig);
    }
    let start_info = hvm_start_info {
        magic: HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: boot + BOOT_CMDLINE,
        rsdp_paddr: rsdp,
        memmap_paddr: boot + BOOT_MEMMAP,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let modlist = hvm_modlist_entry {
        paddr: boot + BOOT_DESCRIPTOR,
        size: size_of::<KexecDescriptor>() as u64,
        cmdline_paddr: boot + BOOT_MODULE_CMDLINE,
        reserved: 0,
    };
    let mut data = vec![0u8; boot_len as usize];
    put(&mut data, BOOT_MODLIST, modlist.as_slice());
    put(&mut data, BOOT_MODULE_CMDLINE, MODULE_CMDLINE.as_bytes());
    put(&mut data, BOOT_START_INFO, start_info.as_slice());
    for (i, e) in map.iter().enumerate() {
        put(&mut data, BOOT_MEMMAP + 24 * i as u64, e.as_slice());
    }
    put(&mut data, BOOT_CMDLINE, cmd.as_bytes());

    // The digest covers the image's file-backed bytes, the tables and the
    // boot data after the descriptor (which holds the digest).
    let mut ranges = Vec::new();
    for s in image.segments.iter().filter(|s| !s.data.is_empty()) {
        let lo = copy(s.paddr) & !7;
        let hi = align_up(copy(s.paddr) + s.data.len() as u64, 8);
        ranges.push(KexecRange {
            gpa: lo,
            len: hi - lo,
        });
    }
    ranges.push(KexecRange {
        gpa: tables_at,
        len: tables_len,
    });
    ranges.push(KexecRange {
        gpa: boot + BOOT_MODLIST,
        len: boot_len - BOOT_MODLIST,
    });
    if ranges.len() > MAX_RANGES {
        return Err(KexecError::Image(
            "too many loadable segments for the digest",
        ));
    }

    // Everything checked: write.
    for s in &image.segments {
        write(mem, &s.data, copy(s.paddr))?;
        let bss = vec![0u8; (s.memsz - s.data.len() as u64) as usize];
        write(mem, &bss, copy(s.paddr) + s.data.len() as u64)?;
    }
    let table_bytes: Vec<u8> = tables
        .iter()
        .flat_map(|t| t.iter().flat_map(|e| e.to_le_bytes()))
        .collect();
    write(mem, &table_bytes, tables_at)?;
    write(mem, &data, boot)?;

    // The stub runs at its copy's GPA under both the old and the new
    // tables: the region lies above the image's window, so this holds by
    // construction; checked on the written tables all the same.
    let entry = copy(image.entry);
    if translate(mem, tables_at, entry).map(|t| t.0) != Some(entry) {
        return Err(KexecError::EntryNotIdentity(entry));
    }

    let mut d = KexecDescriptor {
        magic: DESCRIPTOR_MAGIC,
        version: DESCRIPTOR_VERSION,
        nr_ranges: ranges.len() as u32,
        region_start: start,
        region_end: end,
        entry,
        cr3: tables_at,
        start_info: boot + BOOT_START_INFO,
        elfcorehdr,
        digest: 0,
        ranges: [KexecRange::default(); MAX_RANGES],
    };
    d.ranges[..ranges.len()].copy_from_slice(&ranges);
    d.digest = digest_of(mem, &ranges)?;
    write(mem, &descriptor_bytes(&d), boot + BOOT_DESCRIPTOR)?;
    pvh::set_modules(mem, boot + BOOT_MODLIST, 1)?;
    Ok(Some(Loaded {
        region: (start, end),
        entry,
        cr3: tables_at,
        start_info: d.start_info,
        descriptor: boot + BOOT_DESCRIPTOR,
        modlist: boot + BOOT_MODLIST,
        elfcorehdr,
        used_end: boot + boot_len,
        digest: d.digest,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::pvh::{MEMMAP_TYPE_ACPI, MEMMAP_TYPE_RESERVED};

    use crate::boot::layout::{self, START_INFO_ADDR};

    const MEM: u64 = 256 << 20;
    /// The test image's entry (in segment B).
    const ENTRY: u64 = 0x10_2040;
    /// The test image's end: segment C's bss crosses into the second 2 MiB
    /// slot.
    const END: u64 = 0x30_1000;

    /// (paddr, file bytes, memsz) of the test image's PT_LOADs.
    fn segments() -> Vec<(u64, Vec<u8>, u64)> {
        let pattern = |len: usize, seed: u8| -> Vec<u8> {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect()
        };
        vec![
            (0x10_0000, pattern(0x2000, 0xa1), 0x2000),
            (0x10_2000, pattern(0x1010, 0xb2), 0x1010),
            (0x10_4000, pattern(0x100, 0xc3), END - 0x10_4000),
        ]
    }

    /// An ELF64 with [`segments`] and, if `entry` is given, a VMMKEXEC note.
    fn test_elf(entry: Option<u64>) -> Vec<u8> {
        let segs = segments();
        let mut note = Vec::new();
        if let Some(entry) = entry {
            note.extend_from_slice(&9u32.to_le_bytes());
            note.extend_from_slice(&8u32.to_le_bytes());
            note.extend_from_slice(&NT_KEXEC_ENTRY64.to_le_bytes());
            note.extend_from_slice(b"VMMKEXEC\0\0\0\0");
            note.extend_from_slice(&entry.to_le_bytes());
        }
        let phnum = segs.len() + usize::from(entry.is_some());
        let mut off = 64 + 56 * phnum as u64;
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes());
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&ENTRY.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[52..54].copy_from_slice(&64u16.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let mut body = Vec::new();
        let mut ph = |ty: u32, addr: u64, data: &[u8], memsz: u64, elf: &mut Vec<u8>| {
            let mut p = vec![0u8; 56];
            p[..4].copy_from_slice(&ty.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&addr.to_le_bytes());
            p[24..32].copy_from_slice(&addr.to_le_bytes());
            p[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            p[48..56].copy_from_slice(&4u64.to_le_bytes());
            elf.extend_from_slice(&p);
            body.extend_from_slice(data);
            off += data.len() as u64;
        };
        for (addr, data, memsz) in &segs {
            ph(1, *addr, data, *memsz, &mut elf);
        }
        if entry.is_some() {
            ph(4, 0, &note, note.len() as u64, &mut elf);
        }
        elf.extend_from_slice(&body);
        elf
    }

    fn boot(cmdline: &str, elf: &[u8]) -> (GuestMemoryMmap, Result<Option<Loaded>>) {
        let ram = layout::ram_ranges(MEM);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        pvh::write_boot_info(&mem, &ram, cmdline, 0xe_0000).unwrap();
        let r = load(&mem, elf, cmdline, &ram, 0xe_0000);
        (mem, r)
    }

    fn loaded(cmdline: &str) -> (GuestMemoryMmap, Loaded) {
        let (mem, r) = boot(cmdline, &test_elf(Some(ENTRY)));
        (mem, r.unwrap().expect("loaded"))
    }

    fn read_descriptor(mem: &GuestMemoryMmap, gpa: u64) -> KexecDescriptor {
        let u64_at = |off: u64| -> u64 { mem.read_obj(GuestAddress(gpa + off)).unwrap() };
        let u32_at = |off: u64| -> u32 { mem.read_obj(GuestAddress(gpa + off)).unwrap() };
        let mut d = KexecDescriptor {
            magic: u64_at(0),
            version: u32_at(8),
            nr_ranges: u32_at(12),
            region_start: u64_at(16),
            region_end: u64_at(24),
            entry: u64_at(32),
            cr3: u64_at(40),
            start_info: u64_at(48),
            elfcorehdr: u64_at(56),
            digest: u64_at(64),
            ranges: Default::default(),
        };
        for (i, r) in d.ranges.iter_mut().enumerate() {
            r.gpa = u64_at(72 + 16 * i as u64);
            r.len = u64_at(80 + 16 * i as u64);
        }
        d
    }

    fn cstr(mem: &GuestMemoryMmap, gpa: u64) -> String {
        let mut buf = vec![0u8; 256];
        mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        let n = buf.iter().position(|&b| b == 0).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn the_region_is_the_guests_and_the_layout_is_packed() {
        let (_, l) = loaded("crashkernel=16M");
        // Highest 16 MiB-aligned slot below 256 MiB.
        assert_eq!(l.region, (240 << 20, 256 << 20));
        let start = l.region.0;
        // Image window (1 MiB .. END), then 4 + 2 + 2 + 1 + 1 table pages
        // (PML4, PDPT, 4 PDs, 2 PTs, alias PDPT, alias PD for GiB 0).
        assert_eq!(l.cr3, start + (END - KERNEL_LOAD_ADDR));
        let boot = l.cr3 + 10 * PAGE;
        assert_eq!(l.descriptor, boot);
        assert_eq!(l.modlist, boot + BOOT_MODLIST);
        assert_eq!(l.start_info, boot + BOOT_START_INFO);
        assert_eq!(l.elfcorehdr, l.region.1 - ELFCOREHDR_RESERVE);
        assert_eq!(l.entry, start + (ENTRY - KERNEL_LOAD_ADDR));
        assert!(l.used_end <= l.elfcorehdr);
        // A fixed offset is honoured.
        let (_, l) = loaded("crashkernel=8M@32M");
        assert_eq!(l.region, (32 << 20, 40 << 20));
    }

    #[test]
    fn page_tables_map_the_image_onto_the_copy_and_the_rest_identity() {
        let (mem, l) = loaded("crashkernel=16M");
        let start = l.region.0;
        let map = |va: u64| translate(&mem, l.cr3, va);
        for va in [0x10_0000, ENTRY, 0x10_4000, 0x20_0000, END - 1] {
            assert_eq!(
                map(va).map(|t| t.0),
                Some(start + va - KERNEL_LOAD_ADDR),
                "image va {va:#x}"
            );
        }
        // The copy holds the image; bss is zero.
        for (paddr, data, memsz) in segments() {
            let mut got = vec![0u8; memsz as usize];
            mem.read_slice(&mut got, GuestAddress(start + paddr - KERNEL_LOAD_ADDR))
                .unwrap();
            assert_eq!(&got[..data.len()], &data[..]);
            assert!(got[data.len()..].iter().all(|&b| b == 0));
        }
        // Low memory, boot data, ACPI, the rest of the split slots, RAM and
        // the region itself are identity.
        for va in [
            0,
            0x6000,
            0x8000,
            0xe_0000,
            0xf_ffff,
            END,
            0x3f_f000,
            0x40_0000,
            0x1234_5678,
            start,
            l.cr3,
            l.start_info,
            0xbfff_ffff,
            0xffff_ffff,
        ] {
            let (pa, e) = map(va).unwrap_or_else(|| panic!("{va:#x} unmapped"));
            assert_eq!(pa, va, "identity {va:#x}");
            assert_ne!(e & PTE_WRITABLE, 0);
            let uncached = e & (PTE_PCD | PTE_PWT) == PTE_PCD | PTE_PWT;
            assert_eq!(uncached, va >= UNCACHED_START, "caching of {va:#x}");
        }
        assert!(map(IDENTITY_BYTES).is_none());
        // The 4 KiB and 2 MiB split: image slots use PTs, others huge pages.
        assert_eq!(map(0x10_0000).unwrap().1 & PTE_HUGE, 0);
        assert_ne!(map(0x40_0000).unwrap().1 & PTE_HUGE, 0);
        // The old-memory alias sees the first kernel's memory, image included.
        for pa in [
            0,
            0x10_0000,
            ENTRY,
            0x1234_5678,
            start,
            OLDMEM_ALIAS_SIZE - 1,
        ] {
            let (got, e) = map(OLDMEM_ALIAS_BASE + pa).unwrap();
            assert_eq!(got, pa, "alias of {pa:#x}");
            assert_ne!(e & PTE_HUGE, 0);
        }
        let (_, mmio) = map(OLDMEM_ALIAS_BASE + 0xfee0_0000).unwrap();
        assert_ne!(mmio & PTE_PCD, 0);
        assert!(map(OLDMEM_ALIAS_BASE + OLDMEM_ALIAS_SIZE).is_none());
        // The entry stub's page is identity.
        assert_eq!(map(l.entry).unwrap().0, l.entry);
    }

    #[test]
    fn descriptor_digest_matches_and_sees_one_flipped_byte() {
        let (mem, l) = loaded("console=ttyS0 crashkernel=16M panic=-1");
        let d = read_descriptor(&mem, l.descriptor);
        assert_eq!((d.magic, d.version), (DESCRIPTOR_MAGIC, DESCRIPTOR_VERSION));
        assert_eq!((d.region_start, d.region_end), l.region);
        assert_eq!(
            (d.entry, d.cr3, d.start_info),
            (l.entry, l.cr3, l.start_info)
        );
        assert_eq!(d.elfcorehdr, l.elfcorehdr);
        // Three file-backed segments, the tables, the boot data.
        assert_eq!(d.nr_ranges, 5);
        let ranges = &d.ranges[..d.nr_ranges as usize];
        for r in ranges {
            assert_eq!((r.gpa % 8, r.len % 8), (0, 0));
            assert!(r.gpa >= l.region.0 && r.gpa + r.len <= l.elfcorehdr);
            assert!(r.gpa >= l.descriptor + 200 || r.gpa + r.len <= l.descriptor);
        }
        assert_eq!(digest_of(&mem, ranges).unwrap(), d.digest);
        assert_eq!(d.digest, l.digest);
        // One image byte changes the digest.
        let at = GuestAddress(l.entry);
        let b: u8 = mem.read_obj(at).unwrap();
        mem.write_obj(!b, at).unwrap();
        assert_ne!(digest_of(&mem, ranges).unwrap(), d.digest);
        mem.write_obj(b, at).unwrap();
        // So does one bit of the tables or of the boot data.
        for at in [l.cr3 + 8, l.start_info + 8] {
            let at = GuestAddress(at);
            let b: u8 = mem.read_obj(at).unwrap();
            mem.write_obj(b ^ 1, at).unwrap();
            assert_ne!(digest_of(&mem, ranges).unwrap(), d.digest);
            mem.write_obj(b, at).unwrap();
        }
        assert_eq!(digest_of(&mem, ranges).unwrap(), d.digest);

        // The first kernel's module 0 is the descriptor.
        let si: hvm_start_info = mem.read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
        assert_eq!((si.nr_modules, si.modlist_paddr), (1, l.modlist));
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(l.modlist)).unwrap();
        assert_eq!(m.paddr, l.descriptor);
        assert_eq!(m.size, size_of::<KexecDescriptor>() as u64);
        assert_eq!(cstr(&mem, m.cmdline_paddr), MODULE_CMDLINE);
    }

    #[test]
    fn capture_boot_data_names_its_region_the_acpi_tables_and_the_elfcorehdr() {
        let (mem, l) = loaded("console=ttyS0 crashkernel=16M post_boot=poweroff");
        let si: hvm_start_info = mem.read_obj(GuestAddress(l.start_info)).unwrap();
        assert_eq!(
            (si.magic, si.version, si.nr_modules),
            (HVM_START_MAGIC, 1, 0)
        );
        assert_eq!(si.rsdp_paddr, 0xe_0000);
        assert_eq!(
            cstr(&mem, si.cmdline_paddr),
            format!(
                "console=ttyS0 elfcorehdr={:#x} nr_cpus=1 vmx=off",
                l.elfcorehdr
            )
        );
        let map: Vec<_> = (0..u64::from(si.memmap_entries))
            .map(|i| {
                let e: hvm_memmap_table_entry = mem
                    .read_obj(GuestAddress(si.memmap_paddr + 24 * i))
                    .unwrap();
                (e.addr, e.size, e.type_)
            })
            .collect();
        assert_eq!(
            map,
            vec![
                (0x9_fc00, 0xe_0000 - 0x9_fc00, MEMMAP_TYPE_RESERVED),
                (0xe_0000, 0x2_0000, MEMMAP_TYPE_ACPI),
                (l.region.0, l.elfcorehdr - l.region.0, MEMMAP_TYPE_RAM),
            ]
        );
    }

    #[test]
    fn capture_cmdline_drops_the_one_shot_and_kdump_keys() {
        let first = "console=ttyS0 crashkernel=64M post-boot=poweroff nr_cpus=4 vmx=on \
                     panic=-1 \"foo=a b\" crash_after_boot=PANIC@2 kexec_corrupt_image \
                     elfcorehdr_scribble=load elfcorehdr=0x1000 panic_policy=linux";
        assert_eq!(
            capture_cmdline(first, 0xfffc000),
            "console=ttyS0 panic=-1 \"foo=a b\" panic_policy=linux \
             elfcorehdr=0xfffc000 nr_cpus=1 vmx=off"
        );
        assert_eq!(
            capture_cmdline("", 0x1000),
            "elfcorehdr=0x1000 nr_cpus=1 vmx=off"
        );
    }

    #[test]
    fn crashkernel_spec_follows_the_guests_parser() {
        assert_eq!(crashkernel_spec("quiet"), None);
        assert_eq!(crashkernel_spec("crashkernel=auto"), None);
        assert_eq!(crashkernel_spec("crashkernel"), None);
        let s = crashkernel_spec("crashkernel=64M crashkernel=bad crashkernel").unwrap();
        assert_eq!((s.size, s.offset), (64 << 20, None));
        let s = crashkernel_spec("crashkernel=64M crashkernel=8M@32M").unwrap();
        assert_eq!((s.size, s.offset), (8 << 20, Some(32 << 20)));
    }

    fn nr_modules(mem: &GuestMemoryMmap) -> u32 {
        let si: hvm_start_info = mem.read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
        si.nr_modules
    }

    #[test]
    fn refusals_load_nothing() {
        let elf = test_elf(Some(ENTRY));
        let (mem, r) = boot("console=ttyS0", &elf);
        assert!(r.unwrap().is_none());
        assert_eq!(nr_modules(&mem), 0);
        let (mem, r) = boot("crashkernel=bogus", &elf);
        assert!(r.unwrap().is_none());
        assert_eq!(nr_modules(&mem), 0);

        let (mem, r) = boot("crashkernel=16M", &test_elf(None));
        assert!(matches!(r, Err(KexecError::NoEntryNote)), "{r:?}");
        assert_eq!(nr_modules(&mem), 0);

        // 1 MiB cannot hold a 2 MiB image.
        let (mem, r) = boot("crashkernel=1M", &elf);
        let e = r.unwrap_err();
        assert!(matches!(e, KexecError::TooSmall { .. }), "{e}");
        assert!(e.to_string().contains("too small"));
        assert_eq!(nr_modules(&mem), 0);
        // Just too small: the image and tables fit, the elfcorehdr does not.
        let (_, l) = loaded("crashkernel=16M");
        let tight = l.used_end - l.region.0 + ELFCOREHDR_RESERVE;
        let fits = format!("crashkernel={tight:#x}@64M");
        assert!(boot(&fits, &elf).1.unwrap().is_some());
        let short = format!("crashkernel={:#x}@64M", tight - 8);
        assert!(matches!(
            boot(&short, &elf).1,
            Err(KexecError::TooSmall { .. })
        ));

        let (mem, r) = boot("crashkernel=1G", &elf);
        assert!(matches!(r, Err(KexecError::NoRegion { .. })), "{r:?}");
        assert_eq!(nr_modules(&mem), 0);
        // Inside the image: the guest refuses it, so does the VMM.
        let (_, r) = boot("crashkernel=16M@1M", &elf);
        assert!(matches!(r, Err(KexecError::NoRegion { .. })), "{r:?}");
        let (_, r) = boot("crashkernel=16M@0x4000800", &elf);
        assert!(matches!(r, Err(KexecError::Unaligned(_))), "{r:?}");

        // An entry outside the image is not a kexec_entry64.
        let (_, r) = boot("crashkernel=16M", &test_elf(Some(0x50_0000)));
        assert!(matches!(r, Err(KexecError::Image(_))), "{r:?}");
        let (_, r) = boot("crashkernel=16M", b"not an elf");
        assert!(r.is_err());
    }

    #[test]
    fn the_embedded_guest_ends_where_its_linker_script_says() {
        let elf = crate::GUEST_KERNEL;
        let parsed = goblin::elf::Elf::parse(elf).unwrap();
        let sym = |name: &str| {
            parsed
                .syms
                .iter()
                .find(|s| parsed.strtab.get_at(s.st_name) == Some(name))
                .map(|s| s.st_value)
        };
        let kernel_end = sym("__kernel_end").expect("__kernel_end in the guest symtab");
        match CaptureImage::parse(elf) {
            Ok(image) => {
                assert_eq!(image.kernel_end, kernel_end);
                assert_eq!(Some(image.entry), sym("kexec_entry64"));
            }
            // Before the guest has the entry stub.
            Err(KexecError::NoEntryNote) => assert_eq!(sym("kexec_entry64"), None),
            Err(e) => panic!("{e}"),
        }
    }
}
