//! Boot information: `hvm_start_info`, the command line, the memory map,
//! and ACPI tables read through the identity mapping.

use guest_abi::pvh::{HvmMemmapEntry, HvmModlistEntry, HvmStartInfo, HVM_START_MAGIC};
use guest_kernel::acpi::{self, AcpiError, PhysMem, Platform};
use guest_kernel::memmap;
use guest_kernel::x86::paging::MAPPED_BYTES;

use core::sync::atomic::{AtomicU64, Ordering};

use crate::console;

/// Physical memory through the boot identity map (the low 4 GiB).
#[derive(Debug)]
pub struct IdentityMap;

impl PhysMem for IdentityMap {
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        if addr == 0 || end > MAPPED_BYTES {
            return None;
        }
        // SAFETY: the range is inside the identity-mapped low 4 GiB and not
        // null. Firmware tables are not written while the kernel reads
        // them; an unbacked range reads as device memory, never faults.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }
}

/// The validated `hvm_start_info`.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    info: HvmStartInfo,
}

/// The longest command line the kernel reads.
const CMDLINE_MAX: usize = 4096;

impl BootInfo {
    /// Reads and validates the start info at `paddr` (from `%ebx`).
    pub fn new(paddr: u64) -> Option<Self> {
        let bytes = IdentityMap.read(paddr, core::mem::size_of::<HvmStartInfo>())?;
        // SAFETY: `bytes` covers a whole HvmStartInfo (plain integers, any
        // bit pattern is valid); read_unaligned makes no alignment demand.
        let info = unsafe { (bytes.as_ptr() as *const HvmStartInfo).read_unaligned() };
        (info.magic == HVM_START_MAGIC).then_some(Self { info })
    }

    /// The command line, up to its NUL (empty if none).
    pub fn cmdline(&self) -> &'static [u8] {
        let addr = self.info.cmdline_paddr;
        let Some(max) = IdentityMap
            .read(addr, CMDLINE_MAX)
            .or_else(|| IdentityMap.read(addr, 256))
        else {
            return &[];
        };
        let len = max.iter().position(|&b| b == 0).unwrap_or(max.len());
        // SAFETY: same range as `max`, which the identity map covers.
        unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
    }

    /// PVH module 0 and its command line (up to its NUL, at most 64
    /// bytes), if the loader passed any module.
    pub fn module0(&self) -> Option<(HvmModlistEntry, &'static [u8])> {
        if self.info.nr_modules == 0 {
            return None;
        }
        let size = core::mem::size_of::<HvmModlistEntry>();
        let bytes = IdentityMap.read(self.info.modlist_paddr, size)?;
        // SAFETY: `bytes` covers a whole entry (plain integers, any bit
        // pattern is valid); read_unaligned makes no alignment demand.
        let module = unsafe { (bytes.as_ptr() as *const HvmModlistEntry).read_unaligned() };
        let text = IdentityMap.read(module.cmdline_paddr, 64).unwrap_or(&[]);
        let len = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        Some((module, text.get(..len).unwrap_or(&[])))
    }

    /// `rsdp_paddr` (0: scan for it).
    pub fn rsdp_paddr(&self) -> u64 {
        self.info.rsdp_paddr
    }

    /// The memory map entries (empty for a version 0 start_info or a bad
    /// map). Also recorded for `panic_print`.
    pub fn memmap(&self) -> &'static [HvmMemmapEntry] {
        const MAX_ENTRIES: usize = 1024;
        let count = if self.info.version >= 1 {
            (self.info.memmap_entries as usize).min(MAX_ENTRIES)
        } else {
            0
        };
        let size = core::mem::size_of::<HvmMemmapEntry>();
        let Some(bytes) = IdentityMap.read(self.info.memmap_paddr, count.saturating_mul(size))
        else {
            return &[];
        };
        let first = bytes.as_ptr().cast::<HvmMemmapEntry>();
        if count == 0 || !first.is_aligned() {
            return &[];
        }
        MEMMAP_ADDR.store(first as u64, Ordering::Relaxed);
        MEMMAP_COUNT.store(count as u64, Ordering::Relaxed);
        // SAFETY: as in `is_ram`.
        unsafe { core::slice::from_raw_parts(first, count) }
    }

    /// Whether `[start, end)` lies in one RAM entry of the memory map.
    pub fn is_ram(&self, start: u64, end: u64) -> bool {
        // No loader sends more than a few dozen entries; a huge count is junk.
        const MAX_ENTRIES: usize = 1024;
        let count = if self.info.version >= 1 {
            (self.info.memmap_entries as usize).min(MAX_ENTRIES)
        } else {
            0
        };
        if count == 0 {
            return memmap::range_is_ram(&[], start, end);
        }
        let size = core::mem::size_of::<HvmMemmapEntry>();
        let Some(bytes) = IdentityMap.read(self.info.memmap_paddr, count.saturating_mul(size))
        else {
            return false;
        };
        let first = bytes.as_ptr().cast::<HvmMemmapEntry>();
        if !first.is_aligned() {
            return false;
        }
        // SAFETY: `bytes` holds `count` whole entries (plain integers, any bit
        // pattern is valid) at a suitably aligned address, and the firmware
        // does not change the map while the kernel runs.
        let entries = unsafe { core::slice::from_raw_parts(first, count) };
        memmap::range_is_ram(entries, start, end)
    }
}

/// The memory map, recorded at boot for `panic_print=0x02`.
static MEMMAP_ADDR: AtomicU64 = AtomicU64::new(0);
static MEMMAP_COUNT: AtomicU64 = AtomicU64::new(0);

/// Prints the memory map (panic_print 0x02).
pub fn print_memmap() {
    let (addr, count) = (
        MEMMAP_ADDR.load(Ordering::Relaxed),
        MEMMAP_COUNT.load(Ordering::Relaxed) as usize,
    );
    console::line().str("panic_print: memory map:\n");
    if addr == 0 {
        return;
    }
    // SAFETY: recorded by `BootInfo::memmap`, which validated the range.
    let entries = unsafe { core::slice::from_raw_parts(addr as *const HvmMemmapEntry, count) };
    for e in entries {
        console::line()
            .str("  [mem ")
            .hex(e.addr)
            .str("-")
            .hex(e.addr.saturating_add(e.size).saturating_sub(1))
            .str("] ")
            .str(if e.type_ == guest_abi::pvh::MEMMAP_TYPE_RAM {
                "usable"
            } else {
                "reserved"
            })
            .str("\n");
    }
}

/// The real-mode segment of the EBDA, from the BIOS data area.
fn ebda_segment() -> u16 {
    // SAFETY: 0x40E is in the identity-mapped BIOS data area; the read is
    // harmless even where no BIOS filled it in.
    unsafe { (0x40e as *const u16).read_volatile() }
}

/// Finds the RSDP and reads the MADT, FADT and DSDT.
pub fn discover_acpi(boot: &BootInfo) -> Result<Platform, AcpiError> {
    let rsdp = acpi::find_rsdp(&IdentityMap, boot.rsdp_paddr(), ebda_segment())?;
    acpi::discover(&IdentityMap, rsdp)
}
