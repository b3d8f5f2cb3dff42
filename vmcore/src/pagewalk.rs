//! A walk of the guest's 4-level x86_64 page tables, to give PT_LOADs the
//! kernel virtual addresses gdb needs.
//!
//! The tables are guest-controlled: the walk never trusts them. Entries that
//! point outside RAM are skipped, and the number of entries visited is
//! bounded, so tables that point back at themselves cannot make it run away.

use std::collections::BTreeMap;

const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Most page-table entries one walk examines (all levels together).
const MAX_VISITS: usize = 1 << 24;
/// Most (merged) mappings one walk returns.
const MAX_RUNS: usize = 1 << 20;
/// Most interval steps spent turning mappings into a physical-to-virtual map.
const MAX_ASSIGN_STEPS: usize = 1 << 23;

/// A run of virtual addresses mapped to contiguous physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtRun {
    /// Canonical virtual start.
    pub va: u64,
    /// Physical start.
    pub pa: u64,
    /// Length in bytes.
    pub len: u64,
}

fn canonical(va: u64) -> u64 {
    // Sign-extend bit 47.
    (((va << 16) as i64) >> 16) as u64
}

/// Walk the 4-level tables rooted at `cr3`, calling `table(pa)` for the 4 KiB
/// of each table (None when `pa` is not RAM). Returns the present mappings in
/// virtual-address order, adjacent ones merged. 5-level paging is not
/// supported (the guest uses 4 levels).
pub fn walk_page_tables<'a>(cr3: u64, table: &dyn Fn(u64) -> Option<&'a [u8]>) -> Vec<VirtRun> {
    let mut runs: Vec<VirtRun> = Vec::new();
    let mut visits = 0usize;
    walk_level(cr3 & ADDR_MASK, 4, 0, table, &mut runs, &mut visits);
    if visits >= MAX_VISITS || runs.len() >= MAX_RUNS {
        log::warn!(
            "page walk stopped after {visits} entries, {} mappings: some PT_LOADs lack p_vaddr",
            runs.len()
        );
    }
    runs
}

fn entry(t: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&t[i * 8..i * 8 + 8]);
    u64::from_le_bytes(b)
}

fn walk_level<'a>(
    table_pa: u64,
    level: u32,
    va_base: u64,
    table: &dyn Fn(u64) -> Option<&'a [u8]>,
    runs: &mut Vec<VirtRun>,
    visits: &mut usize,
) {
    let Some(t) = table(table_pa) else { return };
    if t.len() < 4096 {
        return;
    }
    let shift = 12 + 9 * (level - 1);
    for i in 0..512 {
        if *visits >= MAX_VISITS || runs.len() >= MAX_RUNS {
            return;
        }
        *visits += 1;
        let e = entry(t, i);
        if e & PRESENT == 0 {
            continue;
        }
        let va = va_base | ((i as u64) << shift);
        let leaf = level == 1 || (e & PAGE_SIZE_BIT != 0 && (level == 2 || level == 3));
        if leaf {
            let size = 1u64 << shift;
            let pa = e & ADDR_MASK & !(size - 1);
            push_run(runs, canonical(va), pa, size);
        } else if level > 1 && (level != 4 || e & PAGE_SIZE_BIT == 0) {
            walk_level(e & ADDR_MASK, level - 1, va, table, runs, visits);
        }
    }
}

fn push_run(runs: &mut Vec<VirtRun>, va: u64, pa: u64, len: u64) {
    if let Some(last) = runs.last_mut() {
        if last.va.wrapping_add(last.len) == va && last.pa.wrapping_add(last.len) == pa {
            last.len += len;
            return;
        }
    }
    runs.push(VirtRun { va, pa, len });
}

/// For each physical byte, the virtual address of the lowest-VA mapping of
/// it: a map pa_start -> (pa_end, va_start) of disjoint intervals.
pub(crate) fn physical_to_virtual(runs: &[VirtRun]) -> BTreeMap<u64, (u64, u64)> {
    let mut sorted: Vec<VirtRun> = runs.to_vec();
    sorted.sort_by_key(|r| r.va);
    let mut map: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut steps = 0usize;
    for r in sorted {
        if steps >= MAX_ASSIGN_STEPS {
            log::warn!("too many overlapping mappings: some PT_LOADs lack p_vaddr");
            break;
        }
        let Some(end) = r.pa.checked_add(r.len) else {
            continue;
        };
        // Fill the gaps of [r.pa, end) not yet covered.
        let mut cur = r.pa;
        // An interval starting before `cur` may cover it.
        if let Some((_, &(e, _))) = map.range(..=cur).next_back() {
            if e > cur {
                cur = e;
            }
        }
        let mut gaps = Vec::new();
        while cur < end {
            steps += 1;
            match map.range(cur..end).next() {
                Some((&s, &(e, _))) => {
                    if s > cur {
                        gaps.push((cur, s));
                    }
                    cur = e.max(cur);
                }
                None => {
                    gaps.push((cur, end));
                    cur = end;
                }
            }
        }
        for (s, e) in gaps {
            map.insert(s, (e, r.va + (s - r.pa)));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build tables in a small RAM: identity-map 0..4 MiB with 2 MiB pages,
    /// and map VA 0xffff_8000_0000_0000 -> PA 0x20_0000 with 4 KiB pages.
    fn ram_with_tables() -> Vec<u8> {
        let mut ram = vec![0u8; 0x40_0000];
        let put = |ram: &mut Vec<u8>, at: usize, v: u64| {
            ram[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        // PML4 at 0x1000, PDPT (low) at 0x2000, PD at 0x3000.
        put(&mut ram, 0x1000, 0x2000 | 3);
        put(&mut ram, 0x2000, 0x3000 | 3);
        put(&mut ram, 0x3000, 3 | PAGE_SIZE_BIT);
        put(&mut ram, 0x3008, 0x20_0000 | 3 | PAGE_SIZE_BIT);
        // High half: PML4[256] -> PDPT 0x4000 -> PD 0x5000 -> PT 0x6000.
        put(&mut ram, 0x1000 + 256 * 8, 0x4000 | 3);
        put(&mut ram, 0x4000, 0x5000 | 3);
        put(&mut ram, 0x5000, 0x6000 | 3);
        put(&mut ram, 0x6000, 0x20_0000 | 3);
        put(&mut ram, 0x6008, 0x20_1000 | 3);
        // A self-referencing PML4 entry must not loop forever.
        put(&mut ram, 0x1000 + 8, 0x1000 | 3);
        ram
    }

    #[test]
    fn walk_finds_identity_and_high_mappings() {
        let ram = ram_with_tables();
        let runs = walk_page_tables(0x1000, &|pa| {
            let pa = pa as usize;
            ram.get(pa..pa + 4096)
        });
        assert!(runs.contains(&VirtRun {
            va: 0,
            pa: 0,
            len: 0x40_0000
        }));
        assert!(runs.contains(&VirtRun {
            va: 0xffff_8000_0000_0000,
            pa: 0x20_0000,
            len: 0x2000
        }));
        let p2v = physical_to_virtual(&runs);
        // The identity mapping (lowest VA) wins for PA 0x20_0000.
        let (&s, &(e, va)) = p2v.range(..=0x20_0000).next_back().expect("mapped");
        assert!(s <= 0x20_0000 && e > 0x20_0000);
        assert_eq!(va + (0x20_0000 - s), 0x20_0000);
    }

    #[test]
    fn self_referencing_tables_are_bounded() {
        // One table whose 512 entries all point at itself: 512^4 leaves.
        let mut ram = vec![0u8; 0x2000];
        for i in 0..512 {
            ram[0x1000 + i * 8..0x1000 + i * 8 + 8].copy_from_slice(&(0x1000u64 | 3).to_le_bytes());
        }
        let runs = walk_page_tables(0x1000, &|pa| {
            let pa = pa as usize;
            ram.get(pa..pa + 4096)
        });
        assert!(runs.len() <= MAX_RUNS);
        let p2v = physical_to_virtual(&runs);
        assert_eq!(p2v.len(), 1);
    }

    #[test]
    fn overlapping_runs_leave_disjoint_intervals() {
        let runs = [
            VirtRun {
                va: 0x1000_0000,
                pa: 0x2000,
                len: 0x4000,
            },
            VirtRun {
                va: 0x100,
                pa: 0x3000,
                len: 0x4000,
            },
        ];
        let m = physical_to_virtual(&runs);
        let v: Vec<_> = m.into_iter().collect();
        assert_eq!(
            v,
            vec![(0x2000, (0x3000, 0x1000_0000)), (0x3000, (0x7000, 0x100))]
        );
    }
}
