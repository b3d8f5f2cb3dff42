//! `crashkernel=SIZE[@OFFSET]` (Linux syntax, `K`/`M`/`G` suffixes) and
//! the choice of the reserved region in the memory map.

use guest_abi::pvh::{HvmMemmapEntry, MEMMAP_TYPE_RAM};

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

/// Parses a memory size: decimal or `0x` hex, optional `K`, `M` or `G`
/// suffix (either case), as Linux's `memparse`.
pub fn memparse(s: &[u8]) -> Option<u64> {
    let (digits, shift) = match s.last()? {
        b'k' | b'K' => (s.get(..s.len() - 1)?, 10),
        b'm' | b'M' => (s.get(..s.len() - 1)?, 20),
        b'g' | b'G' => (s.get(..s.len() - 1)?, 30),
        _ => (s, 0),
    };
    let v = crate::cmdline::parse_u64(digits)?;
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
        (start >= min_start && end <= limit && crate::memmap::range_is_ram(entries, start, end))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(addr: u64, size: u64) -> HvmMemmapEntry {
        HvmMemmapEntry {
            addr,
            size,
            type_: MEMMAP_TYPE_RAM,
            reserved: 0,
        }
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
    }
}
