//! The ELF core header ("elfcorehdr") the first kernel hands to the capture
//! kernel, laid out as Linux's `crash_prepare_elf64_headers` does:
//!
//! ```text
//! Elf64_Ehdr   ET_CORE, EM_X86_64, e_phoff = 64, no section headers
//! PT_NOTE      one per CPU: p_offset = p_paddr = the CPU's crash-note
//!              buffer (physical), p_filesz = p_memsz = its size
//! PT_NOTE      VMCOREINFO: p_offset = p_paddr = its physical address
//! PT_LOAD      one per RAM range, minus the crash-kernel region (a range
//!              that contains it is split in two): p_offset = p_paddr =
//!              start, p_vaddr = start (identity-mapped kernel),
//!              p_filesz = p_memsz = length, flags RWX, p_align 0
//! ```
//!
//! In an elfcorehdr `p_offset` is a physical address, not a file offset:
//! `/proc/vmcore` (and this VMM) read each segment from old memory there.
//!
//! Runs at CPL0 while the kernel panics, so: no allocation, no `core::fmt`,
//! no indexing that could pull in a panic path (every store goes through
//! `first_chunk_mut`), and nothing but integer stores into the caller's
//! buffer. The header is written field by field; the buffer needs no
//! zeroing first.

/// Size of `Elf64_Ehdr`.
pub const EHDR_SIZE: usize = 64;
/// Size of `Elf64_Phdr`.
pub const PHDR_SIZE: usize = 56;
/// Most program headers: `e_phnum` is 16 bits and 0xffff means PN_XNUM,
/// which this builder does not use.
pub const MAX_PHNUM: usize = 0xfffe;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_RWX: u32 = 7;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;

/// A physical address range `[start, start + len)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl PhysRange {
    /// The range `[start, start + len)`.
    pub const fn new(start: u64, len: u64) -> Self {
        PhysRange { start, len }
    }

    /// Exclusive end, or None if the range wraps the address space.
    pub const fn end(&self) -> Option<u64> {
        self.start.checked_add(self.len)
    }
}

/// What the header describes.
#[derive(Clone, Copy, Debug)]
pub struct CoreHdrLayout<'a> {
    /// RAM ranges, in the order their PT_LOADs should appear. Empty ranges
    /// are skipped.
    pub ram: &'a [PhysRange],
    /// The crash-kernel reservation, left out of the PT_LOADs (len 0: none).
    pub crash_kernel: PhysRange,
    /// Physical address of each CPU's crash-note buffer, CPU 0 first.
    pub crash_notes: &'a [u64],
    /// Bytes of each crash-note buffer (`CRASH_NOTE_BYTES` or the stride).
    pub crash_note_size: u64,
    /// The VMCOREINFO note: physical address and size of the whole note.
    pub vmcoreinfo: PhysRange,
}

/// Why the header could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfcorehdrError {
    /// The buffer is shorter than the header.
    BufferTooSmall {
        /// Bytes the header needs.
        needed: usize,
    },
    /// More than [`MAX_PHNUM`] program headers would be needed.
    TooManyRanges,
    /// A range wraps the address space or overlaps another RAM range.
    BadRange {
        /// Start of the offending range.
        start: u64,
    },
}

impl ElfcorehdrError {
    /// A short description for the console.
    pub fn as_str(&self) -> &'static str {
        match self {
            ElfcorehdrError::BufferTooSmall { .. } => "elfcorehdr buffer too small",
            ElfcorehdrError::TooManyRanges => "too many program headers for an elfcorehdr",
            ElfcorehdrError::BadRange { .. } => "memory range wraps or overlaps another",
        }
    }
}

/// The parts of `r` left after removing `hole`: below it and above it.
/// Either may be empty (len 0). `r` and `hole` must not wrap.
fn split_around(r: PhysRange, hole: PhysRange) -> (PhysRange, PhysRange) {
    let r_end = r.start + r.len;
    let h_end = hole.start + hole.len;
    if hole.len == 0 || h_end <= r.start || r_end <= hole.start {
        return (r, PhysRange::default());
    }
    let below = if hole.start > r.start {
        PhysRange::new(r.start, hole.start - r.start)
    } else {
        PhysRange::default()
    };
    let above = if h_end < r_end {
        PhysRange::new(h_end, r_end - h_end)
    } else {
        PhysRange::default()
    };
    (below, above)
}

/// Number of program headers `layout` needs, after validating its ranges.
pub fn phdr_count(layout: &CoreHdrLayout<'_>) -> Result<usize, ElfcorehdrError> {
    let ck = layout.crash_kernel;
    if ck.end().is_none() {
        return Err(ElfcorehdrError::BadRange { start: ck.start });
    }
    let mut count = layout.crash_notes.len() + 1;
    for r in layout.ram {
        if r.end().is_none() {
            return Err(ElfcorehdrError::BadRange { start: r.start });
        }
        let (below, above) = split_around(*r, ck);
        count += (below.len != 0) as usize + (above.len != 0) as usize;
    }
    if count > MAX_PHNUM {
        return Err(ElfcorehdrError::TooManyRanges);
    }
    // Overlapping RAM would give overlapping PT_LOADs, which the VMM
    // (rightly) rejects. The list is short: quadratic is fine.
    for (i, r) in layout.ram.iter().enumerate() {
        let end = r.start.wrapping_add(r.len);
        for other in layout.ram.iter().take(i) {
            if r.len != 0
                && other.len != 0
                && other.start < end
                && r.start < other.start.wrapping_add(other.len)
            {
                return Err(ElfcorehdrError::BadRange { start: r.start });
            }
        }
    }
    Ok(count)
}

/// Bytes the header for `layout` takes.
pub fn header_size(layout: &CoreHdrLayout<'_>) -> Result<usize, ElfcorehdrError> {
    Ok(EHDR_SIZE + phdr_count(layout)? * PHDR_SIZE)
}

/// Build the elfcorehdr for `layout` at the start of `buf`; returns its
/// length. Bytes of `buf` past that length are untouched.
pub fn build_elfcorehdr(
    layout: &CoreHdrLayout<'_>,
    buf: &mut [u8],
) -> Result<usize, ElfcorehdrError> {
    let phnum = phdr_count(layout)?;
    let needed = EHDR_SIZE + phnum * PHDR_SIZE;
    let too_small = ElfcorehdrError::BufferTooSmall { needed };
    if buf.len() < needed {
        return Err(too_small);
    }
    if !write_ehdr(buf, phnum as u16) {
        return Err(too_small);
    }
    let mut at = EHDR_SIZE;
    let mut ok = true;
    for &note in layout.crash_notes {
        ok &= write_phdr(buf, at, PT_NOTE, 0, note, note, layout.crash_note_size);
        at += PHDR_SIZE;
    }
    let vi = layout.vmcoreinfo;
    ok &= write_phdr(buf, at, PT_NOTE, 0, vi.start, vi.start, vi.len);
    at += PHDR_SIZE;
    for r in layout.ram {
        if r.len == 0 {
            continue;
        }
        let (below, above) = split_around(*r, layout.crash_kernel);
        for piece in [below, above] {
            if piece.len != 0 {
                // Identity-mapped kernel: the virtual address is the physical.
                ok &= write_phdr(
                    buf,
                    at,
                    PT_LOAD,
                    PF_RWX,
                    piece.start,
                    piece.start,
                    piece.len,
                );
                at += PHDR_SIZE;
            }
        }
    }
    if !ok {
        return Err(too_small);
    }
    Ok(at)
}

/// Bytes [`write_vmcoreinfo_note`] needs for a text of `text_len` bytes:
/// the note (header, `"VMCOREINFO\0"` padded, text padded) and an empty
/// terminating note header.
pub const fn vmcoreinfo_note_size(text_len: usize) -> usize {
    12 + 12 + ((text_len + 3) & !3) + 12
}

/// Encode the `VMCOREINFO` note (type 0) with `text` at the start of
/// `buf`, followed by an empty terminating note header, as Linux keeps
/// `vmcoreinfo_note`. The elfcorehdr's VMCOREINFO PT_NOTE points at it.
/// Returns the bytes written ([`vmcoreinfo_note_size`]).
pub fn write_vmcoreinfo_note(buf: &mut [u8], text: &[u8]) -> Result<usize, ElfcorehdrError> {
    let needed = vmcoreinfo_note_size(text.len());
    let too_small = ElfcorehdrError::BufferTooSmall { needed };
    let Some(out) = buf.get_mut(..needed) else {
        return Err(too_small);
    };
    let mut ok = put(out, 0, 11u32.to_le_bytes()) // "VMCOREINFO" + NUL
        & put(out, 4, (text.len() as u32).to_le_bytes())
        & put(out, 8, 0u32.to_le_bytes())
        & put(out, 12, *b"VMCOREINFO\0\0");
    // Byte loop: no memcpy call into precompiled code, no panic path.
    let mut i = 24;
    for &b in text {
        if let Some(d) = out.get_mut(i) {
            *d = b;
        }
        i += 1;
    }
    while i < needed {
        if let Some(d) = out.get_mut(i) {
            *d = 0;
        }
        i += 1;
    }
    ok &= i == needed;
    if !ok {
        return Err(too_small);
    }
    Ok(needed)
}

/// `p_filesz`/`p_memsz` the `load` scribble gives a PT_LOAD: 1 TiB, far
/// beyond any RAM this VMM gives a guest.
pub const SCRIBBLE_LOAD_LEN: u64 = 1 << 40;

/// Test-only damage to a built header of `len` bytes (the
/// `elfcorehdr_scribble=` knob): `Magic` breaks `e_ident`, `Load` makes the
/// first PT_LOAD [`SCRIBBLE_LOAD_LEN`] long. Returns whether it found
/// something to damage.
pub fn scribble_elfcorehdr(
    buf: &mut [u8],
    len: usize,
    how: crate::cmdline::ElfcorehdrScribble,
) -> bool {
    use crate::cmdline::ElfcorehdrScribble;
    match how {
        ElfcorehdrScribble::Magic => put(buf, 1, *b"X"),
        ElfcorehdrScribble::Load => {
            let mut at = EHDR_SIZE;
            while at + PHDR_SIZE <= len {
                let is_load = buf
                    .get(at..)
                    .and_then(|s| s.first_chunk::<4>())
                    .is_some_and(|t| u32::from_le_bytes(*t) == PT_LOAD);
                if is_load {
                    return put(buf, at + 32, SCRIBBLE_LOAD_LEN.to_le_bytes())
                        & put(buf, at + 40, SCRIBBLE_LOAD_LEN.to_le_bytes());
                }
                at += PHDR_SIZE;
            }
            false
        }
    }
}

fn put<const N: usize>(buf: &mut [u8], at: usize, bytes: [u8; N]) -> bool {
    match buf.get_mut(at..).and_then(|s| s.first_chunk_mut::<N>()) {
        Some(dst) => {
            *dst = bytes;
            true
        }
        None => false,
    }
}

fn write_ehdr(buf: &mut [u8], phnum: u16) -> bool {
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE.
    let ok = put(buf, 0, [0x7f, b'E', b'L', b'F', 2, 1, 1, 0])
        & put(buf, 8, 0u64.to_le_bytes())
        & put(buf, 16, ET_CORE.to_le_bytes())
        & put(buf, 18, EM_X86_64.to_le_bytes())
        & put(buf, 20, 1u32.to_le_bytes()) // e_version
        & put(buf, 24, 0u64.to_le_bytes()) // e_entry
        & put(buf, 32, (EHDR_SIZE as u64).to_le_bytes()) // e_phoff
        & put(buf, 40, 0u64.to_le_bytes()) // e_shoff
        & put(buf, 48, 0u32.to_le_bytes()) // e_flags
        & put(buf, 52, (EHDR_SIZE as u16).to_le_bytes())
        & put(buf, 54, (PHDR_SIZE as u16).to_le_bytes());
    // e_phnum, then e_shentsize, e_shnum, e_shstrndx all zero.
    ok & put(buf, 56, phnum.to_le_bytes()) & put(buf, 58, [0u8; 6])
}

/// One `Elf64_Phdr` at `at`: `p_offset = p_paddr = paddr` (the elfcorehdr
/// convention), `p_filesz = p_memsz = len`, `p_align = 0`.
fn write_phdr(
    buf: &mut [u8],
    at: usize,
    p_type: u32,
    flags: u32,
    paddr: u64,
    vaddr: u64,
    len: u64,
) -> bool {
    put(buf, at, p_type.to_le_bytes())
        & put(buf, at + 4, flags.to_le_bytes())
        & put(buf, at + 8, paddr.to_le_bytes()) // p_offset
        & put(buf, at + 16, vaddr.to_le_bytes())
        & put(buf, at + 24, paddr.to_le_bytes())
        & put(buf, at + 32, len.to_le_bytes()) // p_filesz
        & put(buf, at + 40, len.to_le_bytes()) // p_memsz
        & put(buf, at + 48, 0u64.to_le_bytes()) // p_align
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn le64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// (type, flags, offset, vaddr, paddr, filesz, memsz, align)
    type RawPhdr = (u32, u32, u64, u64, u64, u64, u64, u64);

    fn phdrs(b: &[u8]) -> Vec<RawPhdr> {
        let n = le16(b, 56) as usize;
        (0..n)
            .map(|i| {
                let p = EHDR_SIZE + i * PHDR_SIZE;
                (
                    le32(b, p),
                    le32(b, p + 4),
                    le64(b, p + 8),
                    le64(b, p + 16),
                    le64(b, p + 24),
                    le64(b, p + 32),
                    le64(b, p + 40),
                    le64(b, p + 48),
                )
            })
            .collect()
    }

    const NOTES: [u64; 4] = [0x20_0000, 0x20_0170, 0x20_02e0, 0x20_0450];

    fn layout<'a>(ram: &'a [PhysRange], ck: PhysRange) -> CoreHdrLayout<'a> {
        CoreHdrLayout {
            ram,
            crash_kernel: ck,
            crash_notes: &NOTES,
            crash_note_size: 368,
            vmcoreinfo: PhysRange::new(0x21_0000, 0x400),
        }
    }

    #[test]
    fn every_field_of_a_four_cpu_header() {
        let ram = [
            PhysRange::new(0, 0x9_f000),
            PhysRange::new(0x10_0000, 0x7f0_0000),
        ];
        let ck = PhysRange::new(0x400_0000, 0x100_0000);
        let mut buf = [0xaau8; 4096];
        let len = build_elfcorehdr(&layout(&ram, ck), &mut buf).expect("fits");
        assert_eq!(len, EHDR_SIZE + 8 * PHDR_SIZE);
        assert_eq!(header_size(&layout(&ram, ck)), Ok(len));
        assert!(buf[len..].iter().all(|&b| b == 0xaa), "wrote past the end");
        let b = &buf[..];
        assert_eq!(&b[0..16], b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        assert_eq!(le16(b, 16), 4, "ET_CORE");
        assert_eq!(le16(b, 18), 62, "EM_X86_64");
        assert_eq!(le32(b, 20), 1);
        assert_eq!(le64(b, 24), 0);
        assert_eq!(le64(b, 32), 64, "e_phoff");
        assert_eq!(le64(b, 40), 0, "e_shoff");
        assert_eq!(le32(b, 48), 0);
        assert_eq!(le16(b, 52), 64);
        assert_eq!(le16(b, 54), 56);
        assert_eq!(le16(b, 56), 8);
        assert_eq!(&b[58..64], &[0u8; 6]);
        let ph = phdrs(b);
        for (i, &n) in NOTES.iter().enumerate() {
            assert_eq!(ph[i], (PT_NOTE, 0, n, n, n, 368, 368, 0), "cpu {i}");
        }
        assert_eq!(
            ph[4],
            (PT_NOTE, 0, 0x21_0000, 0x21_0000, 0x21_0000, 0x400, 0x400, 0)
        );
        assert_eq!(ph[5], (PT_LOAD, 7, 0, 0, 0, 0x9_f000, 0x9_f000, 0));
        // The big range is split around the crash kernel.
        let below = 0x400_0000 - 0x10_0000;
        assert_eq!(
            ph[6],
            (PT_LOAD, 7, 0x10_0000, 0x10_0000, 0x10_0000, below, below, 0)
        );
        let above = 0x800_0000 - 0x500_0000;
        assert_eq!(
            ph[7],
            (PT_LOAD, 7, 0x500_0000, 0x500_0000, 0x500_0000, above, above, 0)
        );
    }

    #[test]
    fn scribbles_break_what_they_say() {
        use crate::cmdline::ElfcorehdrScribble;
        let ram = [
            PhysRange::new(0, 0x9_f000),
            PhysRange::new(0x10_0000, 0x7f0_0000),
        ];
        let ck = PhysRange::new(0x400_0000, 0x100_0000);
        let mut buf = [0u8; 4096];
        let len = build_elfcorehdr(&layout(&ram, ck), &mut buf).unwrap();
        let clean = buf;
        assert!(scribble_elfcorehdr(
            &mut buf,
            len,
            ElfcorehdrScribble::Magic
        ));
        assert_eq!(&buf[..4], b"\x7fXLF");
        assert_eq!(buf[4..], clean[4..]);
        let mut buf = clean;
        assert!(scribble_elfcorehdr(&mut buf, len, ElfcorehdrScribble::Load));
        let ph = phdrs(&buf);
        assert_eq!(ph[5].0, PT_LOAD);
        assert_eq!((ph[5].5, ph[5].6), (SCRIBBLE_LOAD_LEN, SCRIBBLE_LOAD_LEN));
        assert_eq!(ph[6], phdrs(&clean)[6], "only the first PT_LOAD");
        // A header without PT_LOADs has nothing to scribble on.
        let mut buf = clean;
        assert!(!scribble_elfcorehdr(
            &mut buf,
            EHDR_SIZE + 5 * PHDR_SIZE,
            ElfcorehdrScribble::Load
        ));
    }

    #[test]
    fn exclusion_at_the_edges_and_across_ranges() {
        let r = PhysRange::new(0x1000, 0x4000);
        let none = PhysRange::default();
        // Hole at the start, at the end, covering all, outside, empty.
        assert_eq!(
            split_around(r, PhysRange::new(0x1000, 0x1000)),
            (none, PhysRange::new(0x2000, 0x3000))
        );
        assert_eq!(
            split_around(r, PhysRange::new(0x4000, 0x1000)),
            (PhysRange::new(0x1000, 0x3000), none)
        );
        assert_eq!(split_around(r, PhysRange::new(0, 0x10000)), (none, none));
        assert_eq!(split_around(r, PhysRange::new(0x5000, 0x1000)), (r, none));
        assert_eq!(split_around(r, PhysRange::new(0, 0x1000)), (r, none));
        assert_eq!(split_around(r, PhysRange::new(0x2000, 0)), (r, none));
        // A crash region spanning the end of one range and the start of the
        // next trims both; a fully covered range disappears.
        let ram = [
            PhysRange::new(0, 0x10000),
            PhysRange::new(0x10000, 0x1000),
            PhysRange::new(0x11000, 0x10000),
            PhysRange::new(0x30000, 0),
        ];
        let ck = PhysRange::new(0x8000, 0x10000);
        let mut buf = [0u8; 1024];
        let len = build_elfcorehdr(&layout(&ram, ck), &mut buf).expect("fits");
        let loads: Vec<(u64, u64)> = phdrs(&buf[..len])
            .into_iter()
            .filter(|p| p.0 == PT_LOAD)
            .map(|p| (p.4, p.5))
            .collect();
        assert_eq!(loads, vec![(0, 0x8000), (0x18000, 0x9000)]);
    }

    #[test]
    fn errors() {
        let ram = [PhysRange::new(0, 0x10000)];
        let l = layout(&ram, PhysRange::default());
        let need = EHDR_SIZE + 6 * PHDR_SIZE;
        let mut small = [0u8; 64 + 5 * 56];
        assert_eq!(
            build_elfcorehdr(&l, &mut small),
            Err(ElfcorehdrError::BufferTooSmall { needed: need })
        );
        let mut buf = [0u8; 64 + 6 * 56];
        assert_eq!(build_elfcorehdr(&l, &mut buf), Ok(need));

        let wrap = [PhysRange::new(u64::MAX - 10, 100)];
        assert_eq!(
            build_elfcorehdr(&layout(&wrap, PhysRange::default()), &mut buf),
            Err(ElfcorehdrError::BadRange {
                start: u64::MAX - 10
            })
        );
        let overlap = [PhysRange::new(0, 0x2000), PhysRange::new(0x1000, 0x2000)];
        assert_eq!(
            build_elfcorehdr(&layout(&overlap, PhysRange::default()), &mut buf),
            Err(ElfcorehdrError::BadRange { start: 0x1000 })
        );
        let ck_wrap = PhysRange::new(u64::MAX, 2);
        assert!(matches!(
            build_elfcorehdr(&layout(&ram, ck_wrap), &mut buf),
            Err(ElfcorehdrError::BadRange { .. })
        ));
        let many: Vec<PhysRange> = (0..MAX_PHNUM as u64)
            .map(|i| PhysRange::new(i * 0x2000, 0x1000))
            .collect();
        let mut big = vec![0u8; 64 + (MAX_PHNUM + 8) * 56];
        assert_eq!(
            build_elfcorehdr(&layout(&many, PhysRange::default()), &mut big),
            Err(ElfcorehdrError::TooManyRanges)
        );
        assert!(!ElfcorehdrError::TooManyRanges.as_str().is_empty());
    }

    #[test]
    fn vmcoreinfo_note_layout() {
        let text = b"OSRELEASE=1\nPAGESIZE=4096\n";
        let mut buf = [0xffu8; 128];
        let n = write_vmcoreinfo_note(&mut buf, text).expect("fits");
        assert_eq!(n, 12 + 12 + 28 + 12);
        assert_eq!(le32(&buf, 0), 11);
        assert_eq!(le32(&buf, 4), text.len() as u32);
        assert_eq!(le32(&buf, 8), 0);
        assert_eq!(&buf[12..24], b"VMCOREINFO\0\0");
        assert_eq!(&buf[24..24 + text.len()], text);
        assert!(buf[24 + text.len()..n].iter().all(|&b| b == 0));
        assert_eq!(buf[n], 0xff, "wrote past the note");
        assert_eq!(
            write_vmcoreinfo_note(&mut buf[..n - 1], text),
            Err(ElfcorehdrError::BufferTooSmall { needed: n })
        );
    }

    #[test]
    fn readelf_accepts_the_header() {
        let ram = [
            PhysRange::new(0, 0x9_f000),
            PhysRange::new(0x10_0000, 0x7f0_0000),
        ];
        let ck = PhysRange::new(0x400_0000, 0x100_0000);
        let mut buf = [0u8; 4096];
        let len = build_elfcorehdr(&layout(&ram, ck), &mut buf).expect("fits");
        let path = std::env::temp_dir().join(format!("elfcorehdr-{}.core", std::process::id()));
        std::fs::write(&path, &buf[..len]).expect("write temp file");
        let out = std::process::Command::new("readelf")
            .args(["-h", "-l", "-W"])
            .arg(&path)
            .output();
        std::fs::remove_file(&path).expect("remove temp file");
        let out = match out {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("readelf not installed: skipped");
                return;
            }
            Err(e) => panic!("readelf: {e}"),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("Error"), "{stderr}");
        assert!(stdout.contains("CORE (Core file)"), "{stdout}");
        assert!(stdout.contains("Advanced Micro Devices X86-64"), "{stdout}");
        assert_eq!(stdout.matches("  NOTE ").count(), 5, "{stdout}");
        assert_eq!(stdout.matches("  LOAD ").count(), 3, "{stdout}");
        assert!(
            stdout.contains(
                "LOAD           0x5000000 0x0000000005000000 0x0000000005000000 0x3000000 0x3000000 RWE"
            ),
            "{stdout}"
        );
    }
}
