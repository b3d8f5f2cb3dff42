//! The boot page tables, computed at compile time.
//!
//! One PML4, one PDPT and four page directories identity-map the first 4 GiB
//! with 2 MiB pages. The range from 0xC000_0000 (PCI hole, LAPIC at
//! 0xFEE0_0000, IOAPIC, firmware) is mapped uncached. The tables sit at a
//! fixed address (`layout::PAGE_TABLES`), so the entries that point at other
//! tables are constants too and no CPU spends instructions building them.

/// Present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-level write-through.
pub const PTE_PWT: u64 = 1 << 3;
/// Page-level cache disable.
pub const PTE_PCD: u64 = 1 << 4;
/// Page size: in a PD entry, a 2 MiB page.
pub const PTE_HUGE: u64 = 1 << 7;

/// Entries per table.
pub const ENTRIES: usize = 512;
/// Tables: PML4, PDPT, then one PD per GiB.
pub const TABLES: usize = 6;
/// Size of the whole set.
pub const BOOT_PAGE_TABLE_BYTES: usize = TABLES * 4096;
/// Start of the uncached (MMIO) part of the low 4 GiB.
pub const UNCACHED_START: u64 = 0xC000_0000;
/// Bytes mapped by the boot tables.
pub const MAPPED_BYTES: u64 = 4 << 30;

/// The tables as an array of pages: `[0]` PML4, `[1]` PDPT, `[2..6]` PDs.
pub type BootPageTables = [[u64; ENTRIES]; TABLES];

/// Computes the boot page tables for tables placed at physical `base`.
pub const fn boot_page_tables(base: u64) -> BootPageTables {
    let mut t = [[0u64; ENTRIES]; TABLES];
    t[0][0] = (base + 0x1000) | PTE_PRESENT | PTE_WRITABLE;
    let mut gib = 0;
    while gib < 4 {
        t[1][gib] = (base + 0x2000 + 0x1000 * gib as u64) | PTE_PRESENT | PTE_WRITABLE;
        let mut i = 0;
        while i < ENTRIES {
            let addr = ((gib as u64) << 30) | ((i as u64) << 21);
            let mut e = addr | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE;
            if addr >= UNCACHED_START {
                e |= PTE_PCD | PTE_PWT;
            }
            t[2 + gib][i] = e;
            i += 1;
        }
        gib += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x10_0000;

    /// Walks the tables like the MMU would for a 2 MiB mapping.
    fn translate(t: &BootPageTables, va: u64) -> Option<(u64, u64)> {
        let pml4e = t[0][((va >> 39) & 511) as usize];
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        assert_eq!(pml4e & !0xfff, BASE + 0x1000);
        let pdpte = t[1][((va >> 30) & 511) as usize];
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        let pd = ((pdpte & !0xfff) - BASE) / 0x1000;
        let pde = t[pd as usize][((va >> 21) & 511) as usize];
        if pde & PTE_PRESENT == 0 {
            return None;
        }
        assert_ne!(pde & PTE_HUGE, 0);
        Some(((pde & !0x1f_ffff & !(1 << 63)) | (va & 0x1f_ffff), pde))
    }

    #[test]
    fn identity_maps_low_4gib() {
        let t = boot_page_tables(BASE);
        for va in [
            0u64,
            0x8000,
            0x10_0000,
            0x1234_5678,
            0xbfff_ffff,
            0xffff_ffff,
        ] {
            let (pa, pde) = translate(&t, va).expect("mapped");
            assert_eq!(pa, va);
            assert_ne!(pde & PTE_WRITABLE, 0);
        }
        assert!(translate(&t, MAPPED_BYTES).is_none());
        assert!(translate(&t, 0xffff_8000_0000_0000).is_none());
    }

    #[test]
    fn mmio_hole_is_uncached_and_ram_is_not() {
        let t = boot_page_tables(BASE);
        let (_, lapic) = translate(&t, 0xfee0_0000).unwrap();
        assert_ne!(lapic & PTE_PCD, 0);
        let (_, hole) = translate(&t, UNCACHED_START).unwrap();
        assert_ne!(hole & PTE_PCD, 0);
        let (_, ram) = translate(&t, UNCACHED_START - 1).unwrap();
        assert_eq!(ram & (PTE_PCD | PTE_PWT), 0);
    }

    #[test]
    fn only_expected_entries_are_present() {
        let t = boot_page_tables(BASE);
        let count = |i: usize| t[i].iter().filter(|e| **e & PTE_PRESENT != 0).count();
        assert_eq!(count(0), 1);
        assert_eq!(count(1), 4);
        for pd in 2..6 {
            assert_eq!(count(pd), 512);
        }
    }
}
