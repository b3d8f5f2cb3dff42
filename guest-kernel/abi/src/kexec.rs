//! `kexec -p`: the capture kernel the VMM loads into the crashkernel region.
//!
//! On a real machine a distribution's kdump service runs `kexec -p` after
//! boot: it loads a second kernel into the region `crashkernel=` reserved,
//! prepares that kernel's boot data, and records a checksum of everything it
//! loaded so that purgatory can refuse a corrupted image before jumping. This
//! host runs every CPL0 guest instruction through an emulator, so copying an
//! image at CPL0 is costly; the VMM plays the part of `kexec -p` instead, at
//! boot, and tells the first kernel what it loaded through a
//! [`KexecDescriptor`] passed as PVH module 0.
//!
//! The capture kernel is the same guest ELF. It is not relocated: the VMM
//! copies it to `region_start + (p_paddr - KERNEL_LOAD_ADDR)` and builds page
//! tables (at [`KexecDescriptor::cr3`]) in which the image's link-time virtual
//! addresses map onto that copy, 4 KiB page by page, while every other
//! address below 4 GiB stays identity-mapped. The first kernel's memory, which
//! the copy's window hides, stays readable at [`OLDMEM_ALIAS_BASE`] + GPA, as
//! `/proc/vmcore` reads "old memory".
//!
//! The jump (the first kernel, after `machine_crash_shutdown`, interrupts off,
//! on the panicking CPU only): `rdi` = [`KexecDescriptor::cr3`], `rsi` =
//! [`KexecDescriptor::start_info`], then `jmp` to [`KexecDescriptor::entry`],
//! the GPA of the copy's `kexec_entry64`. That stub is position independent:
//! it loads CR3 (its own page is identity-mapped in both page tables) and jumps
//! to the capture kernel's 64-bit entry at its link-time address.

/// Name of the ELF note (in the guest ELF's PT_NOTE) that gives the 64-bit
/// kexec entry: type [`NT_KEXEC_ENTRY64`], desc = the link-time virtual
/// address (u64 LE) of `kexec_entry64`. Ours; Linux has no such note.
pub const NOTE_NAME: &str = "VMMKEXEC";
/// Note type of the kexec entry note.
pub const NT_KEXEC_ENTRY64: u32 = 1;

/// Where the capture kernel sees the first kernel's memory: GPA `p` is at
/// virtual `OLDMEM_ALIAS_BASE + p`, for `p` below [`OLDMEM_ALIAS_SIZE`]
/// (PML4 slot 1, 2 MiB pages).
pub const OLDMEM_ALIAS_BASE: u64 = 0x80_0000_0000;
/// Bytes of the first kernel's physical space the alias covers.
pub const OLDMEM_ALIAS_SIZE: u64 = 4 << 30;

/// Room for the elfcorehdr the first kernel prepares at boot, at the end of
/// the crashkernel region (`region_end - ELFCOREHDR_RESERVE`). The VMM puts
/// nothing there; the capture kernel's command line names it.
pub const ELFCOREHDR_RESERVE: u64 = 16 * 1024;

/// [`KexecDescriptor::magic`]: `"KEXECDSC"`.
pub const DESCRIPTOR_MAGIC: u64 = u64::from_le_bytes(*b"KEXECDSC");
/// [`KexecDescriptor::version`] this crate describes.
pub const DESCRIPTOR_VERSION: u32 = 1;
/// Most ranges a descriptor's digest covers.
pub const MAX_RANGES: usize = 8;
/// Command line of PVH module 0 when it carries the descriptor.
pub const MODULE_CMDLINE: &str = "kexec_crash_image";

/// Parameters the VMM drops from the first kernel's command line when it
/// writes the capture kernel's: one-shot actions, the reservation itself, and
/// what the capture kernel sets on its own (`nr_cpus=1 vmx=off
/// elfcorehdr=ADDR` are appended). Keys compare with `-` and `_` equal.
pub const CAPTURE_CMDLINE_DROP: &[&str] = &[
    "crashkernel",
    "crash_after_boot",
    "post_boot",
    "nr_cpus",
    "vmx",
    "elfcorehdr",
    "kexec_corrupt_image",
    "elfcorehdr_scribble",
];

/// One range the digest covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KexecRange {
    /// First byte (GPA, inside the region, 8-byte aligned).
    pub gpa: u64,
    /// Length in bytes (a multiple of 8).
    pub len: u64,
}

/// What the VMM loaded, at `modlist[0].paddr` (inside the region).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KexecDescriptor {
    /// [`DESCRIPTOR_MAGIC`].
    pub magic: u64,
    /// [`DESCRIPTOR_VERSION`].
    pub version: u32,
    /// Ranges used in `ranges` (1..=[`MAX_RANGES`]).
    pub nr_ranges: u32,
    /// The crashkernel region `[region_start, region_end)` the VMM computed
    /// (the guest checks it equals its own reservation).
    pub region_start: u64,
    /// End of the region (exclusive).
    pub region_end: u64,
    /// GPA of the copy's `kexec_entry64`.
    pub entry: u64,
    /// GPA of the capture kernel's PML4.
    pub cr3: u64,
    /// GPA of the capture kernel's `hvm_start_info`.
    pub start_info: u64,
    /// GPA of the elfcorehdr the capture command line names
    /// (`region_end - ELFCOREHDR_RESERVE`).
    pub elfcorehdr: u64,
    /// [`digest`] over `ranges[..nr_ranges]`, in order.
    pub digest: u64,
    /// What the digest covers: the image's file-backed bytes, the page
    /// tables and the boot data.
    pub ranges: [KexecRange; MAX_RANGES],
}

/// FNV-1a 64 offset basis.
pub const DIGEST_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Folds little-endian u64 words into a digest: FNV-1a 64 with a word, not a
/// byte, per step (`h = (h ^ w) * prime`). Word-wise because the guest runs
/// it at CPL0, where this host emulates every instruction; it detects stray
/// writes and bit flips, it is not a cryptographic hash (purgatory uses
/// SHA-256).
pub fn digest_words(mut h: u64, words: impl IntoIterator<Item = u64>) -> u64 {
    for w in words {
        h = (h ^ w).wrapping_mul(FNV_PRIME);
    }
    h
}

/// [`digest_words`] over bytes whose length is a multiple of 8 (any tail is
/// ignored).
pub fn digest_bytes(h: u64, bytes: &[u8]) -> u64 {
    digest_words(
        h,
        bytes.chunks_exact(8).map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn descriptor_layout() {
        assert_eq!(size_of::<KexecRange>(), 16);
        assert_eq!(offset_of!(KexecDescriptor, region_start), 16);
        assert_eq!(offset_of!(KexecDescriptor, digest), 64);
        assert_eq!(offset_of!(KexecDescriptor, ranges), 72);
        assert_eq!(size_of::<KexecDescriptor>(), 72 + 16 * MAX_RANGES);
    }

    #[test]
    fn digest_sees_every_word_and_its_order() {
        let a = digest_bytes(
            DIGEST_INIT,
            &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
        );
        let b = digest_bytes(
            DIGEST_INIT,
            &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        );
        assert_ne!(a, b);
        assert_eq!(a, digest_words(DIGEST_INIT, [1, 2]));
        assert_ne!(
            digest_words(DIGEST_INIT, [1, 2]),
            digest_words(DIGEST_INIT, [1, 3])
        );
        assert_eq!(digest_words(DIGEST_INIT, []), DIGEST_INIT);
    }
}
