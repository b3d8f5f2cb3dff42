//! Queries on the PVH memory map (`hvm_memmap_table_entry` array).

use guest_abi::pvh::{HvmMemmapEntry, MEMMAP_TYPE_RAM};

/// Top of conventional memory, assumed RAM when there is no memory map.
pub const LOW_RAM_END: u64 = 0xa_0000;

/// Whether `[start, end)` lies inside a single RAM entry of `entries`.
/// An empty map (start_info version 0) means only the low 640 KiB are known
/// to be RAM.
pub fn range_is_ram(entries: &[HvmMemmapEntry], start: u64, end: u64) -> bool {
    if start >= end {
        return false;
    }
    if entries.is_empty() {
        return end <= LOW_RAM_END;
    }
    entries.iter().any(|e| {
        e.type_ == MEMMAP_TYPE_RAM && e.addr <= start && end <= e.addr.saturating_add(e.size)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::pvh::MEMMAP_TYPE_RESERVED;

    fn e(addr: u64, size: u64, type_: u32) -> HvmMemmapEntry {
        HvmMemmapEntry {
            addr,
            size,
            type_,
            reserved: 0,
        }
    }

    #[test]
    fn trampoline_page_checks() {
        let seabios = [
            e(0, 0x9fc00, MEMMAP_TYPE_RAM),
            e(0x9fc00, 0x400, MEMMAP_TYPE_RESERVED),
            e(0x10_0000, 0xff0_0000, MEMMAP_TYPE_RAM),
        ];
        assert!(range_is_ram(&seabios, 0x8000, 0x9000));
        assert!(
            !range_is_ram(&seabios, 0x9f000, 0xa0000),
            "straddles into reserved"
        );
        assert!(!range_is_ram(&seabios, 0xf0000, 0xf1000));
        let hole = [
            e(0, 0x8000, MEMMAP_TYPE_RAM),
            e(0x9000, 0x1000, MEMMAP_TYPE_RAM),
        ];
        assert!(!range_is_ram(&hole, 0x8000, 0x9000));
        let reserved = [e(0, 0x10_0000, MEMMAP_TYPE_RESERVED)];
        assert!(!range_is_ram(&reserved, 0x8000, 0x9000));
        assert!(range_is_ram(&[], 0x8000, 0x9000));
        assert!(!range_is_ram(&[], 0xa0000, 0xa1000));
        assert!(!range_is_ram(&seabios, 0x9000, 0x8000));
        assert!(!range_is_ram(
            &[e(u64::MAX - 10, 100, MEMMAP_TYPE_RAM)],
            0x8000,
            0x9000
        ));
    }
}
