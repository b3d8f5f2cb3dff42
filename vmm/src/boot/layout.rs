//! The guest physical address map, in one place.
//!
//! ```text
//! 0x0000_0500  GDT for the 32-bit PVH entry
//! 0x0000_6000  hvm_start_info
//! 0x0000_7000  PVH memory map entries
//! 0x0002_0000  kernel command line (NUL-terminated)
//! 0x0009_fc00  .. 0x000e_0000 reserved (EBDA, VGA, option ROMs)
//! 0x000e_0000  .. 0x0010_0000 ACPI tables (typed ACPI in the memory map)
//! 0x0010_0000  kernel (guest_abi::KERNEL_LOAD_ADDR), then RAM up to 3 GiB
//! 0xc000_0000  .. 4 GiB: MMIO hole (IOAPIC, LAPIC, KVM's TSS/identity map)
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```

/// GDT used by the BSP at the PVH entry (the guest loads its own).
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// `hvm_start_info`, whose address the BSP gets in EBX.
pub const START_INFO_ADDR: u64 = 0x6000;
/// The PVH memory map (`hvm_memmap_table_entry` array).
pub const MEMMAP_ADDR: u64 = 0x7000;
/// Room for memory map entries (up to the next page).
pub const MEMMAP_MAX_ENTRIES: usize = 0x1000 / 24;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line, including its terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Top of conventional memory: the EBDA starts here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the ACPI tables live (RSDP first, 16-byte aligned).
pub const ACPI_TABLES_START: u64 = 0xe_0000;
/// End of the ACPI tables region and start of high memory.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// RAM stops here and the 32-bit MMIO hole begins.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole; RAM beyond `MMIO_HOLE_START` resumes here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The IOAPIC's MMIO base (KVM's in-kernel IOAPIC).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Three pages KVM needs for its real-mode TSS (Intel only), in the hole.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// One page KVM needs for its real-mode identity map, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// The smallest guest memory size accepted (the fixed low areas plus a
/// little room for the kernel).
pub const MIN_MEMORY: u64 = 2 << 20;

// The fixed areas must not overlap; checked at compile time.
const _: () = {
    assert!(BOOT_GDT_ADDR + 0x100 <= START_INFO_ADDR);
    assert!(START_INFO_ADDR + 56 <= MEMMAP_ADDR);
    assert!(MEMMAP_ADDR + (MEMMAP_MAX_ENTRIES * 24) as u64 <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(ACPI_TABLES_START < HIGH_MEMORY_START);
    assert!(HIGH_MEMORY_START == guest_abi::KERNEL_LOAD_ADDR);
    assert!(KVM_IDENTITY_MAP_ADDR + 0x1000 <= KVM_TSS_ADDR);
    assert!((LAPIC_ADDR as u64) < KVM_IDENTITY_MAP_ADDR);
    assert!(MMIO_HOLE_START < IOAPIC_ADDR as u64);
};

/// Guest RAM ranges `(start, size)` for `memory` bytes of RAM: below the
/// MMIO hole, then above 4 GiB for what does not fit.
pub fn ram_ranges(memory: u64) -> Vec<(u64, u64)> {
    if memory <= MMIO_HOLE_START {
        vec![(0, memory)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, memory - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }
}
