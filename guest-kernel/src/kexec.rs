//! Checks on what the VMM loaded as `kexec -p` (`guest_abi::kexec`): the
//! first kernel trusts a [`KexecDescriptor`] only if it describes the region
//! the kernel itself reserved, and everything it points at lies inside it.
//! Pure logic, host-tested; the kernel reads the descriptor and runs these
//! checks at boot, and [`image_digest`] before the jump.

use guest_abi::kexec::{
    digest_words, KexecDescriptor, KexecRange, DESCRIPTOR_MAGIC, DESCRIPTOR_VERSION, DIGEST_INIT,
    ELFCOREHDR_RESERVE, MAX_RANGES, MODULE_CMDLINE,
};
use guest_abi::pvh::HvmModlistEntry;

/// Why a descriptor is not trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorError {
    /// PVH module 0 does not carry [`MODULE_CMDLINE`].
    NotKexecModule,
    /// The module is smaller than a descriptor or lies outside the region.
    ModuleOutsideRegion,
    /// Wrong magic.
    BadMagic,
    /// A version this kernel does not know.
    BadVersion,
    /// `nr_ranges` is 0 or above [`MAX_RANGES`].
    BadRangeCount,
    /// The region is not the one the kernel reserved.
    RegionMismatch,
    /// `entry`, `cr3` or `start_info` lies outside the region.
    PointerOutsideRegion,
    /// The elfcorehdr is not at `region_end - ELFCOREHDR_RESERVE`.
    BadElfcorehdr,
    /// A digest range is unaligned, wraps, or leaves the region.
    BadRange,
}

impl DescriptorError {
    /// A short description for the console.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotKexecModule => "module 0 is not kexec_crash_image",
            Self::ModuleOutsideRegion => "descriptor outside the crashkernel region",
            Self::BadMagic => "bad descriptor magic",
            Self::BadVersion => "unknown descriptor version",
            Self::BadRangeCount => "bad number of digest ranges",
            Self::RegionMismatch => "region differs from the reservation",
            Self::PointerOutsideRegion => "entry, page tables or start_info outside the region",
            Self::BadElfcorehdr => "elfcorehdr not at the end of the region",
            Self::BadRange => "digest range outside the region",
        }
    }
}

/// Whether `[start, start + len)` lies inside `[lo, hi)` (no wrap).
fn inside(start: u64, len: u64, lo: u64, hi: u64) -> bool {
    match start.checked_add(len) {
        Some(end) => start >= lo && end <= hi,
        None => false,
    }
}

/// Checks PVH module 0 (`module`, whose command line reads `module_cmdline`,
/// up to its NUL) against the reserved region `[start, end)`.
pub fn check_module(
    module: &HvmModlistEntry,
    module_cmdline: &[u8],
    region: (u64, u64),
) -> Result<(), DescriptorError> {
    if module_cmdline != MODULE_CMDLINE.as_bytes() {
        return Err(DescriptorError::NotKexecModule);
    }
    let need = core::mem::size_of::<KexecDescriptor>() as u64;
    if module.size < need || !inside(module.paddr, need, region.0, region.1) {
        return Err(DescriptorError::ModuleOutsideRegion);
    }
    Ok(())
}

/// Checks `d` against the reserved region `[start, end)`.
pub fn check_descriptor(d: &KexecDescriptor, region: (u64, u64)) -> Result<(), DescriptorError> {
    let (lo, hi) = region;
    if d.magic != DESCRIPTOR_MAGIC {
        return Err(DescriptorError::BadMagic);
    }
    if d.version != DESCRIPTOR_VERSION {
        return Err(DescriptorError::BadVersion);
    }
    if d.nr_ranges == 0 || d.nr_ranges as usize > MAX_RANGES {
        return Err(DescriptorError::BadRangeCount);
    }
    if d.region_start != lo || d.region_end != hi {
        return Err(DescriptorError::RegionMismatch);
    }
    // The entry stub needs a few bytes, the PML4 and start_info whole ones.
    let pointers_ok = inside(d.entry, 16, lo, hi)
        && d.cr3 & 0xfff == 0
        && inside(d.cr3, 4096, lo, hi)
        && inside(d.start_info, 56, lo, hi);
    if !pointers_ok {
        return Err(DescriptorError::PointerOutsideRegion);
    }
    if hi.checked_sub(ELFCOREHDR_RESERVE) != Some(d.elfcorehdr) || d.elfcorehdr < lo {
        return Err(DescriptorError::BadElfcorehdr);
    }
    for r in ranges(d) {
        if r.gpa % 8 != 0 || r.len % 8 != 0 || !inside(r.gpa, r.len, lo, hi) {
            return Err(DescriptorError::BadRange);
        }
    }
    Ok(())
}

/// The ranges in use (`ranges[..nr_ranges]`, clamped).
pub fn ranges(d: &KexecDescriptor) -> &[KexecRange] {
    let n = (d.nr_ranges as usize).min(MAX_RANGES);
    d.ranges.get(..n).unwrap_or(&[])
}

/// Total bytes the digest covers.
pub fn digest_bytes_covered(d: &KexecDescriptor) -> u64 {
    ranges(d)
        .iter()
        .fold(0u64, |acc, r| acc.saturating_add(r.len))
}

/// [`digest_words`] over a slice, four words per loop iteration: the same
/// value, in fewer instructions (each one costs ~1 us at CPL0 here).
pub fn digest_slice(mut h: u64, words: &[u64]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut quads = words.chunks_exact(4);
    for q in &mut quads {
        if let Some(&[a, b, c, d]) = q.first_chunk::<4>() {
            h = (h ^ a).wrapping_mul(PRIME);
            h = (h ^ b).wrapping_mul(PRIME);
            h = (h ^ c).wrapping_mul(PRIME);
            h = (h ^ d).wrapping_mul(PRIME);
        }
    }
    digest_words(h, quads.remainder().iter().copied())
}

/// The digest over `d`'s ranges, reading each range's words through
/// `words(gpa, len)` (the kernel maps a checked range to a `&[u64]`).
pub fn image_digest<'a>(d: &KexecDescriptor, mut words: impl FnMut(u64, u64) -> &'a [u64]) -> u64 {
    let mut h = DIGEST_INIT;
    for r in ranges(d) {
        h = digest_slice(h, words(r.gpa, r.len));
    }
    h
}

/// Where the test-only `kexec_corrupt_image` knob flips a byte: the middle
/// of the first range (the image, as a stray write would hit it).
pub fn corruption_target(d: &KexecDescriptor) -> Option<u64> {
    let r = ranges(d).first()?;
    (r.len != 0).then(|| r.gpa + r.len / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::kexec::digest_bytes;

    const REGION: (u64, u64) = (0xc00_0000, 0x1000_0000);

    fn good() -> KexecDescriptor {
        let mut ranges = [KexecRange::default(); MAX_RANGES];
        ranges[0] = KexecRange {
            gpa: 0xc00_0000,
            len: 0x1_0000,
        };
        ranges[1] = KexecRange {
            gpa: 0xd00_0000,
            len: 0x3000,
        };
        KexecDescriptor {
            magic: DESCRIPTOR_MAGIC,
            version: DESCRIPTOR_VERSION,
            nr_ranges: 2,
            region_start: REGION.0,
            region_end: REGION.1,
            entry: 0xc00_7040,
            cr3: 0xd00_0000,
            start_info: 0xd00_2000,
            elfcorehdr: REGION.1 - ELFCOREHDR_RESERVE,
            digest: 0x1234,
            ranges,
        }
    }

    #[test]
    fn a_well_formed_descriptor_passes() {
        assert_eq!(check_descriptor(&good(), REGION), Ok(()));
        assert_eq!(digest_bytes_covered(&good()), 0x1_3000);
        assert_eq!(ranges(&good()).len(), 2);
        assert_eq!(corruption_target(&good()), Some(0xc00_8000));
    }

    #[test]
    fn each_field_is_checked() {
        type Breaker = fn(&mut KexecDescriptor);
        let cases: [(Breaker, DescriptorError); 12] = [
            (|d| d.magic ^= 1, DescriptorError::BadMagic),
            (|d| d.version = 2, DescriptorError::BadVersion),
            (|d| d.nr_ranges = 0, DescriptorError::BadRangeCount),
            (|d| d.nr_ranges = 9, DescriptorError::BadRangeCount),
            (
                |d| d.region_start += 0x100_0000,
                DescriptorError::RegionMismatch,
            ),
            (
                |d| d.entry = 0x10_0000,
                DescriptorError::PointerOutsideRegion,
            ),
            (
                |d| d.cr3 = 0xd00_0008,
                DescriptorError::PointerOutsideRegion,
            ),
            (|d| d.cr3 = REGION.1, DescriptorError::PointerOutsideRegion),
            (
                |d| d.start_info = REGION.1 - 8,
                DescriptorError::PointerOutsideRegion,
            ),
            (|d| d.elfcorehdr -= 0x1000, DescriptorError::BadElfcorehdr),
            (
                |d| d.ranges[1].len = u64::MAX - 7,
                DescriptorError::BadRange,
            ),
            (|d| d.ranges[0].gpa += 4, DescriptorError::BadRange),
        ];
        for (i, (break_it, want)) in cases.iter().enumerate() {
            let mut d = good();
            break_it(&mut d);
            assert_eq!(check_descriptor(&d, REGION), Err(*want), "case {i}");
        }
        // A range ending past the region.
        let mut d = good();
        d.ranges[1].len = 0x400_0000;
        assert_eq!(check_descriptor(&d, REGION), Err(DescriptorError::BadRange));
    }

    #[test]
    fn the_module_must_be_ours_and_inside_the_region() {
        let m = HvmModlistEntry {
            paddr: 0xd00_1000,
            size: core::mem::size_of::<KexecDescriptor>() as u64,
            cmdline_paddr: 0xd00_1f00,
            reserved: 0,
        };
        assert_eq!(check_module(&m, b"kexec_crash_image", REGION), Ok(()));
        assert_eq!(
            check_module(&m, b"initrd", REGION),
            Err(DescriptorError::NotKexecModule)
        );
        let small = HvmModlistEntry { size: 8, ..m };
        assert_eq!(
            check_module(&small, b"kexec_crash_image", REGION),
            Err(DescriptorError::ModuleOutsideRegion)
        );
        let outside = HvmModlistEntry {
            paddr: 0x20_0000,
            ..m
        };
        assert_eq!(
            check_module(&outside, b"kexec_crash_image", REGION),
            Err(DescriptorError::ModuleOutsideRegion)
        );
    }

    #[test]
    fn the_digest_covers_every_range_in_order() {
        let image: Vec<u64> = (0..64).collect();
        let mut d = good();
        d.ranges[0] = KexecRange { gpa: 0, len: 256 };
        d.ranges[1] = KexecRange { gpa: 256, len: 256 };
        let whole = image_digest(&d, |gpa, len| {
            &image[(gpa / 8) as usize..((gpa + len) / 8) as usize]
        });
        let bytes: Vec<u8> = image.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(whole, digest_bytes(DIGEST_INIT, &bytes));
        let mut flipped = image.clone();
        flipped[40] ^= 1 << 17;
        let after = image_digest(&d, |gpa, len| {
            &flipped[(gpa / 8) as usize..((gpa + len) / 8) as usize]
        });
        assert_ne!(whole, after);
    }

    #[test]
    fn the_unrolled_digest_equals_the_contracts() {
        let words: Vec<u64> = (0..23u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for n in 0..words.len() {
            assert_eq!(
                digest_slice(DIGEST_INIT, &words[..n]),
                digest_words(DIGEST_INIT, words[..n].iter().copied()),
                "{n} words"
            );
        }
    }
}
