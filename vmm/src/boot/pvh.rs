//! PVH direct boot: load the kernel ELF, write `hvm_start_info`, the memory
//! map and the command line, and give the BSP its 32-bit entry state.

use std::io::Cursor;

use guest_abi::pvh::{
    HVM_START_MAGIC, MEMMAP_TYPE_ACPI, MEMMAP_TYPE_RAM, MEMMAP_TYPE_RESERVED,
    XEN_ELFNOTE_PHYS32_ENTRY,
};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_TABLES_START, BOOT_GDT_ADDR, CMDLINE_ADDR, CMDLINE_MAX_SIZE, EBDA_START,
    HIGH_MEMORY_START, MEMMAP_ADDR, MEMMAP_MAX_ENTRIES, START_INFO_ADDR,
};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// Errors loading the kernel and writing the boot information.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// The file is not a 64-bit ELF.
    #[error("kernel is not a 64-bit ELF file")]
    NotElf,
    /// The ELF headers are cut short or inconsistent.
    #[error("kernel ELF is malformed: {0}")]
    Malformed(&'static str),
    /// The kernel has no `XEN_ELFNOTE_PHYS32_ENTRY` note.
    #[error("kernel has no PVH entry note")]
    NoPvhNote,
    /// A loadable segment does not fit in guest RAM.
    #[error("memory too small for the kernel: segment {start:#x}..{end:#x} is outside guest RAM")]
    SegmentOutsideRam {
        /// First byte of the segment.
        start: u64,
        /// One past its last byte.
        end: u64,
    },
    /// linux-loader refused the image.
    #[error("loading the kernel failed")]
    Load(#[source] linux_loader::loader::Error),
    /// The command line is too long or has a NUL.
    #[error("invalid kernel command line (at most {CMDLINE_MAX_SIZE} bytes, no NUL)")]
    Cmdline,
    /// Writing boot structures to guest memory failed.
    #[error("writing boot information failed")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// Writing to guest memory failed.
    #[error("writing guest memory failed")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

type Result<T> = std::result::Result<T, PvhError>;

/// A loadable segment's guest-physical range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Physical load address.
    pub start: u64,
    /// One past the last byte (p_paddr + p_memsz).
    pub end: u64,
}

fn field<const N: usize>(bytes: &[u8], off: usize) -> Result<[u8; N]> {
    bytes
        .get(off..off + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(PvhError::Malformed("header runs past the end of the file"))
}

/// The PT_LOAD segments of a 64-bit little-endian ELF, checked enough to
/// give a clear error before anything touches guest memory.
pub fn load_segments(elf: &[u8]) -> Result<Vec<Segment>> {
    if elf.len() < EHDR_SIZE || &elf[..4] != ELF_MAGIC || elf[4] != ELFCLASS64 {
        return Err(PvhError::NotElf);
    }
    let phoff = u64::from_le_bytes(field(elf, 32)?) as usize;
    let phentsize = usize::from(u16::from_le_bytes(field(elf, 54)?));
    let phnum = usize::from(u16::from_le_bytes(field(elf, 56)?));
    if phentsize != PHDR_SIZE {
        return Err(PvhError::Malformed("unexpected program header size"));
    }
    let mut segments = Vec::new();
    let mut has_pvh_note = false;
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * PHDR_SIZE)
            .ok_or(PvhError::Malformed("program header offset overflows"))?;
        let p_type = u32::from_le_bytes(field(elf, ph)?);
        if p_type == PT_NOTE {
            let offset = u64::from_le_bytes(field(elf, ph + 8)?) as usize;
            let size = u64::from_le_bytes(field(elf, ph + 32)?) as usize;
            let notes = offset
                .checked_add(size)
                .and_then(|end| elf.get(offset..end))
                .ok_or(PvhError::Malformed(
                    "note segment runs past the end of the file",
                ))?;
            has_pvh_note |= has_pvh_entry_note(notes);
            continue;
        }
        if p_type != PT_LOAD {
            continue;
        }
        let paddr = u64::from_le_bytes(field(elf, ph + 24)?);
        let memsz = u64::from_le_bytes(field(elf, ph + 40)?);
        if memsz == 0 {
            continue;
        }
        let end = paddr
            .checked_add(memsz)
            .ok_or(PvhError::Malformed("segment wraps the address space"))?;
        segments.push(Segment { start: paddr, end });
    }
    if !has_pvh_note {
        return Err(PvhError::NoPvhNote);
    }
    if segments.is_empty() {
        return Err(PvhError::Malformed("no loadable segment"));
    }
    Ok(segments)
}

/// Whether a PT_NOTE segment holds a `"Xen"` note of type
/// `XEN_ELFNOTE_PHYS32_ENTRY`. Malformed notes end the scan.
fn has_pvh_entry_note(mut notes: &[u8]) -> bool {
    let align4 = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let word =
            |i: usize| u32::from_le_bytes([notes[i], notes[i + 1], notes[i + 2], notes[i + 3]]);
        let (namesz, descsz, ty) = (word(0) as usize, word(4) as usize, word(8));
        let name_end = 12usize.saturating_add(align4(namesz));
        let end = name_end.saturating_add(align4(descsz));
        if end > notes.len() {
            return false;
        }
        if ty == XEN_ELFNOTE_PHYS32_ENTRY && notes[12..12 + namesz].starts_with(b"Xen") {
            return true;
        }
        notes = &notes[end..];
    }
    false
}

/// Checks that every segment lies in RAM at or above high memory.
pub fn check_segments_fit(segments: &[Segment], ram: &[(u64, u64)]) -> Result<()> {
    for s in segments {
        let inside = ram
            .iter()
            .any(|&(base, size)| s.start >= base.max(HIGH_MEMORY_START) && s.end <= base + size);
        if !inside {
            return Err(PvhError::SegmentOutsideRam {
                start: s.start,
                end: s.end,
            });
        }
    }
    Ok(())
}

/// Loads the kernel; returns its 32-bit PVH entry point.
pub fn load_kernel(mem: &GuestMemoryMmap, elf: &[u8], ram: &[(u64, u64)]) -> Result<u64> {
    check_segments_fit(&load_segments(elf)?, ram)?;
    let loaded = Elf::load(mem, None, &mut Cursor::new(elf), None).map_err(PvhError::Load)?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(entry.0),
        _ => Err(PvhError::NoPvhNote),
    }
}

/// The PVH memory map for guest RAM `ram` (from `layout::ram_ranges`).
pub fn memmap(ram: &[(u64, u64)]) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_: u32| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, EBDA_START, MEMMAP_TYPE_RAM),
        entry(
            EBDA_START,
            ACPI_TABLES_START - EBDA_START,
            MEMMAP_TYPE_RESERVED,
        ),
        entry(
            ACPI_TABLES_START,
            HIGH_MEMORY_START - ACPI_TABLES_START,
            MEMMAP_TYPE_ACPI,
        ),
    ];
    for &(base, size) in ram {
        let start = base.max(HIGH_MEMORY_START);
        if base + size > start {
            map.push(entry(start, base + size - start, MEMMAP_TYPE_RAM));
        }
    }
    debug_assert!(map.len() <= MEMMAP_MAX_ENTRIES);
    map
}

/// Writes the command line, memory map and `hvm_start_info`.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    ram: &[(u64, u64)],
    cmdline: &str,
    rsdp_addr: u64,
) -> Result<()> {
    if cmdline.len() >= CMDLINE_MAX_SIZE || cmdline.contains('\0') {
        return Err(PvhError::Cmdline);
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(PvhError::Memory)?;

    let map = memmap(ram);
    let start_info = hvm_start_info {
        magic: HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(START_INFO_ADDR));
    params.set_sections(&map, GuestAddress(MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(PvhError::BootParams)
}

/// Points the `hvm_start_info` that [`write_boot_info`] wrote at `count`
/// modules at `modlist_paddr` (boot/kexec.rs: the capture kernel's
/// descriptor). Without a call the guest sees no modules.
pub fn set_modules(mem: &GuestMemoryMmap, modlist_paddr: u64, count: u32) -> Result<()> {
    let mut si: hvm_start_info = mem
        .read_obj(GuestAddress(START_INFO_ADDR))
        .map_err(PvhError::Memory)?;
    si.nr_modules = count;
    si.modlist_paddr = modlist_paddr;
    mem.write_obj(si, GuestAddress(START_INFO_ADDR))
        .map_err(PvhError::Memory)
}

/// Flat 32-bit GDT: null, code, data, TSS (the guest replaces it).
const BOOT_GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff, // code: base 0, limit 4 GiB, execute/read, 32-bit
    0x00cf_9300_0000_ffff, // data: base 0, limit 4 GiB, read/write, 32-bit
    0x008b_0000_0000_0067, // TSS: present, busy
];
const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;
const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const RFLAGS_RESERVED: u64 = 1 << 1;

fn segment(selector: u16, type_: u8, s: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the boot GDT to guest memory.
pub fn write_boot_gdt(mem: &GuestMemoryMmap) -> Result<()> {
    let bytes: Vec<u8> = BOOT_GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_ADDR))
        .map_err(PvhError::Memory)
}

/// The BSP's segment state at the PVH entry: flat 32-bit protected mode,
/// paging off. Other fields (APIC base, EFER...) are kept from `sregs`.
pub fn bsp_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.cs = segment(CODE_SELECTOR, 0xb, 1);
    let data = segment(DATA_SELECTOR, 0x3, 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        limit: 0x67,
        g: 0,
        db: 0,
        ..segment(TSS_SELECTOR, 0xb, 0)
    };
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// The BSP's registers at the PVH entry: EIP = entry, EBX = start_info.
pub fn bsp_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rbx: START_INFO_ADDR,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    /// A minimal ELF64 with one PT_LOAD at `paddr` and optionally a PVH note.
    pub(crate) fn tiny_elf(paddr: u64, memsz: u64, pvh_entry: Option<u32>) -> Vec<u8> {
        tiny_elf_with_code(paddr, memsz, pvh_entry, &[0xf4; 16])
    }

    /// Like [`tiny_elf`], with `code` at the start of the segment.
    pub(crate) fn tiny_elf_with_code(
        paddr: u64,
        memsz: u64,
        pvh_entry: Option<u32>,
        code: &[u8],
    ) -> Vec<u8> {
        let mut note = Vec::new();
        if let Some(entry) = pvh_entry {
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&18u32.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&entry.to_le_bytes());
        }
        let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
        let code_off = 64 + 56 * u64::from(phnum);
        let note_off = code_off + code.len() as u64;
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes());
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[24..32].copy_from_slice(&paddr.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[52..54].copy_from_slice(&64u16.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&phnum.to_le_bytes());
        let mut ph = |ty: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
            let mut p = vec![0u8; 56];
            p[..4].copy_from_slice(&ty.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&addr.to_le_bytes());
            p[24..32].copy_from_slice(&addr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            p[48..56].copy_from_slice(&4u64.to_le_bytes());
            elf.extend_from_slice(&p);
        };
        ph(PT_LOAD, code_off, paddr, code.len() as u64, memsz);
        if pvh_entry.is_some() {
            ph(4, note_off, 0, note.len() as u64, note.len() as u64);
        }
        elf.extend_from_slice(code);
        elf.extend_from_slice(&note);
        elf
    }

    #[test]
    fn loads_a_pvh_kernel_and_returns_its_entry() {
        let m = mem(4 << 20);
        let elf = tiny_elf(0x10_0000, 0x1000, Some(0x10_0000));
        let entry = load_kernel(&m, &elf, &[(0, 4 << 20)]).unwrap();
        assert_eq!(entry, 0x10_0000);
        let mut b = [0u8; 1];
        m.read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(b, [0xf4]);
    }

    #[test]
    fn kernel_without_pvh_note_is_refused() {
        let m = mem(4 << 20);
        let elf = tiny_elf(0x10_0000, 0x1000, None);
        let err = load_kernel(&m, &elf, &[(0, 4 << 20)]).unwrap_err();
        assert_eq!(err.to_string(), "kernel has no PVH entry note");
        // The note is found before the segments are judged.
        let low = tiny_elf(0, 0x1000, None);
        assert!(matches!(load_segments(&low), Err(PvhError::NoPvhNote)));
        assert!(!has_pvh_entry_note(&[0xff; 12]));
        assert!(!has_pvh_entry_note(&[]));
    }

    #[test]
    fn non_elf_and_truncated_elf_are_refused() {
        let m = mem(4 << 20);
        let ram = [(0, 4 << 20)];
        assert!(matches!(
            load_kernel(&m, b"#!/bin/sh\n", &ram),
            Err(PvhError::NotElf)
        ));
        assert!(matches!(
            load_kernel(&m, &[0u8; 200], &ram),
            Err(PvhError::NotElf)
        ));
        let mut elf = tiny_elf(0x10_0000, 0x1000, Some(0x10_0000));
        elf.truncate(80);
        assert!(matches!(
            load_kernel(&m, &elf, &ram),
            Err(PvhError::Malformed(_))
        ));
    }

    #[test]
    fn segments_must_fit_in_ram() {
        let m = mem(2 << 20);
        let ram = [(0, 2 << 20)];
        let elf = tiny_elf(0x10_0000, 0x20_0000, Some(0x10_0000));
        let err = load_kernel(&m, &elf, &ram).unwrap_err();
        assert!(matches!(err, PvhError::SegmentOutsideRam { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with("memory too small for the kernel"));
        // Below high memory is refused too: it would clobber boot data.
        let low = [Segment {
            start: 0x6000,
            end: 0x7000,
        }];
        assert!(check_segments_fit(&low, &ram).is_err());
    }

    #[test]
    fn memmap_reserves_low_areas_and_skips_the_hole() {
        let map = memmap(&[(0, 3 << 30), (4 << 30, 1 << 30)]);
        let v: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.type_)).collect();
        assert_eq!(
            v,
            vec![
                (0, 0x9fc00, MEMMAP_TYPE_RAM),
                (0x9fc00, 0xe0000 - 0x9fc00, MEMMAP_TYPE_RESERVED),
                (0xe0000, 0x20000, MEMMAP_TYPE_ACPI),
                (0x10_0000, (3 << 30) - 0x10_0000, MEMMAP_TYPE_RAM),
                (4 << 30, 1 << 30, MEMMAP_TYPE_RAM),
            ]
        );
    }

    #[test]
    fn start_info_points_at_cmdline_memmap_and_rsdp() {
        let m = mem(4 << 20);
        let ram = [(0, 4 << 20)];
        write_boot_info(&m, &ram, "post_boot=poweroff", 0xe0000).unwrap();
        let si: hvm_start_info = m.read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
        assert_eq!(si.magic, HVM_START_MAGIC);
        assert_eq!(si.version, 1);
        assert_eq!(si.rsdp_paddr, 0xe0000);
        assert_eq!(si.memmap_paddr, MEMMAP_ADDR);
        assert_eq!(si.memmap_entries, 4);
        let mut cmd = [0u8; 19];
        m.read_slice(&mut cmd, GuestAddress(si.cmdline_paddr))
            .unwrap();
        assert_eq!(&cmd, b"post_boot=poweroff\0");
        let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(MEMMAP_ADDR + 3 * 24)).unwrap();
        assert_eq!(
            (e.addr, e.size, e.type_),
            (0x10_0000, (4 << 20) - 0x10_0000, 1)
        );
        assert!(m.last_addr().0 > 0);
    }

    #[test]
    fn bad_cmdlines_are_refused() {
        let m = mem(4 << 20);
        let ram = [(0, 4 << 20)];
        assert!(matches!(
            write_boot_info(&m, &ram, "a\0b", 0),
            Err(PvhError::Cmdline)
        ));
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_boot_info(&m, &ram, &long, 0),
            Err(PvhError::Cmdline)
        ));
    }

    #[test]
    fn bsp_enters_flat_protected_mode() {
        let s = bsp_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & CR0_PE, CR0_PE);
        assert_eq!(s.cr0 & (1 << 31), 0, "paging off");
        assert_eq!((s.cs.selector, s.cs.db, s.cs.l), (CODE_SELECTOR, 1, 0));
        assert_eq!(s.ss.limit, 0xffff_ffff);
        let r = bsp_regs(0x10_0000);
        assert_eq!((r.rip, r.rbx), (0x10_0000, START_INFO_ADDR));
    }
}
