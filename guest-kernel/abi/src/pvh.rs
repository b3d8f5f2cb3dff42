//! The PVH direct-boot protocol (Xen `arch-x86/hvm/start_info.h`).
//!
//! The loader finds the 32-bit entry point in an ELF note of type
//! [`XEN_ELFNOTE_PHYS32_ENTRY`] (name `"Xen"`), and enters it in flat 32-bit
//! protected mode, paging off, with `%ebx` holding the physical address of an
//! [`HvmStartInfo`].

/// ELF note type carrying the 32-bit physical entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Value of [`HvmStartInfo::magic`].
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// `struct hvm_start_info`, version 1 (with the memory map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmStartInfo {
    /// Must be [`HVM_START_MAGIC`].
    pub magic: u32,
    /// 0 has no memory map fields; 1 has them.
    pub version: u32,
    /// SIF_* flags.
    pub flags: u32,
    /// Number of entries at `modlist_paddr`.
    pub nr_modules: u32,
    /// Physical address of an array of [`HvmModlistEntry`].
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line (0 if none).
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP (0: the guest scans for it).
    pub rsdp_paddr: u64,
    /// Physical address of an array of [`HvmMemmapEntry`] (version >= 1).
    pub memmap_paddr: u64,
    /// Number of entries at `memmap_paddr`.
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `struct hvm_modlist_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmModlistEntry {
    /// Physical address of the module.
    pub paddr: u64,
    /// Size of the module in bytes.
    pub size: u64,
    /// Physical address of the module's command line.
    pub cmdline_paddr: u64,
    /// Must be zero.
    pub reserved: u64,
}

/// `struct hvm_memmap_table_entry`, an E820-style range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmMemmapEntry {
    /// Start of the range.
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// One of the `MEMMAP_TYPE_*` values.
    pub type_: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// Usable RAM.
pub const MEMMAP_TYPE_RAM: u32 = 1;
/// Reserved by the platform.
pub const MEMMAP_TYPE_RESERVED: u32 = 2;
/// ACPI tables, reclaimable after they are read.
pub const MEMMAP_TYPE_ACPI: u32 = 3;
/// ACPI non-volatile storage.
pub const MEMMAP_TYPE_NVS: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn start_info_matches_xen_header() {
        assert_eq!(size_of::<HvmStartInfo>(), 56);
        assert_eq!(offset_of!(HvmStartInfo, modlist_paddr), 16);
        assert_eq!(offset_of!(HvmStartInfo, cmdline_paddr), 24);
        assert_eq!(offset_of!(HvmStartInfo, rsdp_paddr), 32);
        assert_eq!(offset_of!(HvmStartInfo, memmap_paddr), 40);
        assert_eq!(offset_of!(HvmStartInfo, memmap_entries), 48);
    }

    #[test]
    fn memmap_and_modlist_entries_match_xen_header() {
        assert_eq!(size_of::<HvmMemmapEntry>(), 24);
        assert_eq!(offset_of!(HvmMemmapEntry, type_), 16);
        assert_eq!(size_of::<HvmModlistEntry>(), 32);
    }
}
