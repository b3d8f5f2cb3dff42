//! `crashkernel=SIZE[@OFFSET]` (Linux syntax, `K`/`M`/`G` suffixes) and the
//! choice of the reserved region in the memory map.
//!
//! Shared so that the guest (which reserves the region at boot) and the VMM
//! (which loads the capture kernel into it beforehand, playing `kexec -p`)
//! compute the same region from the same memory map with the same code:
//! [`reserve`] with the end of the kernel image is what both call.

use crate::cmdline::parse_u64;
use crate::pvh::{HvmMemmapEntry, MEMMAP_TYPE_RAM};

/// A parsed `crashkernel=` value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashKernelSpec {
    /// Bytes to reserve.
    pub size: u64,
    /// Fixed start, if `@OFFSET` was given.
    pub offset: Option<u64>,
}

/// Alignment of an automatically placed region (Linux x86-64 `CRASH_ALIGN`).
pub const CRASH_ALIGN: u64 = 16 << 20;

/// The end of what the guest kernel maps (its boot page tables cover the
/// low 4 GiB): a region must end at or below it. The guest checks at
/// compile time that its page tables map exactly this much.
pub const PLACE_LIMIT: u64 = 4 << 30;

/// Top of conventional memory, assumed RAM when there is no memory map.
pub const LOW_RAM_END: u64 = 0xa_0000;

/// Parses a memory size: decimal or `0x` hex, optional `K`, `M` or `G`
/// suffix (either case), as Linux's `memparse`.
pub fn memparse(s: &[u8]) -> Option<u64> {
    let (digits, shift) = match s.last()? {
        b'k' | b'K' => (s.get(..s.len() - 1)?, 10),
        b'm' | b'M' => (s.get(..s.len() - 1)?, 20),
        b'g' | b'G' => (s.get(..s.len() - 1)?, 30),
        _ => (s, 0),
    };
    let v = parse_u64(digits)?;
    v.checked_mul(1u64 << shift)
}

/// Parses `SIZE[@OFFSET]`. A zero size is rejected.
pub fn parse(value: &[u8]) -> Option<CrashKernelSpec> {
    let (size, offset) = match value.iter().position(|&b| b == b'@') {
        Some(at) => (value.get(..at)?, Some(memparse(value.get(at + 1..)?)?)),
        None => (value, None),
    };
    let size = memparse(size)?;
    (size != 0).then_some(CrashKernelSpec { size, offset })
}

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

/// Picks the region for `spec` in `entries`: at `offset` if given (it must
/// lie in one RAM entry), else the highest [`CRASH_ALIGN`]-aligned slot
/// below `limit` (the end of what the kernel maps). Either way the region
/// must start at or above `min_start` (the end of the kernel image).
/// Returns `[start, end)`.
pub fn place(
    entries: &[HvmMemmapEntry],
    spec: CrashKernelSpec,
    min_start: u64,
    limit: u64,
) -> Option<(u64, u64)> {
    let fits = |start: u64| -> Option<(u64, u64)> {
        let end = start.checked_add(spec.size)?;
        (start >= min_start && end <= limit && range_is_ram(entries, start, end))
            .then_some((start, end))
    };
    if let Some(off) = spec.offset {
        return fits(off);
    }
    let mut best: Option<(u64, u64)> = None;
    for e in entries.iter().filter(|e| e.type_ == MEMMAP_TYPE_RAM) {
        let top = e.addr.saturating_add(e.size).min(limit);
        let Some(start) = top.checked_sub(spec.size) else {
            continue;
        };
        let start = start & !(CRASH_ALIGN - 1);
        if start < e.addr {
            continue;
        }
        if let Some(r) = fits(start) {
            if best.is_none_or(|b| r.0 > b.0) {
                best = Some(r);
            }
        }
    }
    best
}

/// The region the guest reserves: [`place`] above the kernel image (which
/// ends at `kernel_end`, the guest's `__kernel_end`, i.e. the end of its
/// last PT_LOAD's memory) and below [`PLACE_LIMIT`].
pub fn reserve(
    entries: &[HvmMemmapEntry],
    spec: CrashKernelSpec,
    kernel_end: u64,
) -> Option<(u64, u64)> {
    place(entries, spec, kernel_end, PLACE_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pvh::MEMMAP_TYPE_RESERVED;

    fn e(addr: u64, size: u64, type_: u32) -> HvmMemmapEntry {
        HvmMemmapEntry {
            addr,
            size,
            type_,
            reserved: 0,
        }
    }

    fn ram(addr: u64, size: u64) -> HvmMemmapEntry {
        e(addr, size, MEMMAP_TYPE_RAM)
    }

    #[test]
    fn sizes() {
        assert_eq!(memparse(b"64M"), Some(64 << 20));
        assert_eq!(memparse(b"512k"), Some(512 << 10));
        assert_eq!(memparse(b"1G"), Some(1 << 30));
        assert_eq!(memparse(b"0x1000"), Some(0x1000));
        assert_eq!(memparse(b"M"), None);
        assert_eq!(memparse(b""), None);
        assert_eq!(memparse(b"99999999999G"), None);
    }

    #[test]
    fn specs() {
        assert_eq!(
            parse(b"64M"),
            Some(CrashKernelSpec {
                size: 64 << 20,
                offset: None
            })
        );
        assert_eq!(
            parse(b"32M@128M"),
            Some(CrashKernelSpec {
                size: 32 << 20,
                offset: Some(128 << 20)
            })
        );
        assert_eq!(parse(b"0"), None);
        assert_eq!(parse(b"32M@"), None);
        assert_eq!(parse(b"auto"), None);
    }

    #[test]
    fn placement() {
        let map = [ram(0, 0x9fc00), ram(0x10_0000, (256 << 20) - 0x10_0000)];
        let spec = parse(b"64M").unwrap();
        // Highest aligned slot: 256M - 64M = 192M.
        assert_eq!(
            place(&map, spec, 4 << 20, 4 << 30),
            Some((192 << 20, 256 << 20))
        );
        assert_eq!(reserve(&map, spec, 4 << 20), Some((192 << 20, 256 << 20)));
        let fixed = parse(b"16M@32M").unwrap();
        assert_eq!(
            place(&map, fixed, 4 << 20, 4 << 30),
            Some((32 << 20, 48 << 20))
        );
        // Overlapping the kernel, outside RAM, or too big: refused.
        assert_eq!(
            place(&map, parse(b"1M@1M").unwrap(), 4 << 20, 4 << 30),
            None
        );
        assert_eq!(
            place(&map, parse(b"1M@300M").unwrap(), 4 << 20, 4 << 30),
            None
        );
        assert_eq!(place(&map, parse(b"1G").unwrap(), 4 << 20, 4 << 30), None);
        // The limit caps the placement.
        assert_eq!(
            place(&map, spec, 4 << 20, 128 << 20),
            Some((64 << 20, 128 << 20))
        );
        // Above 4 GiB is not mapped by the guest: the reservation stays below.
        let big = [ram(0x10_0000, (3 << 30) - 0x10_0000), ram(4 << 30, 1 << 30)];
        assert_eq!(
            reserve(&big, spec, 4 << 20),
            Some(((3 << 30) - (64 << 20), 3 << 30))
        );
    }

    #[test]
    fn ram_ranges() {
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
