//! What the capture kernel checks before it reports the vmcore ready: the
//! elfcorehdr the first kernel prepared (Linux `parse_crash_elf64_headers`
//! in `fs/proc/vmcore.c`) and the CPU crash notes its PT_NOTEs point at.
//! Pure logic over bytes the kernel reads from old memory; host-tested.
//!
//! The checks are the ones the capture kernel needs to trust its own reading
//! of the header, not a full validation: PT_LOAD ranges are the VMM's to
//! bound (its parser treats the header as hostile input).

use guest_abi::elfnote::{
    ELF_PRSTATUS_SIZE, NHDR_SIZE, NOTE_NAME_CORE, NOTE_NAME_VMCOREINFO, NT_PRSTATUS,
};

use crate::elfcorehdr::{EHDR_SIZE, PHDR_SIZE};

/// `PT_NOTE`.
pub const PT_NOTE: u32 = 4;

/// Why the capture kernel refuses an elfcorehdr. The code
/// ([`HeaderError::code`]) is the detail of CAPTURE_FAILED(BAD_ELFCOREHDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than an `Elf64_Ehdr`.
    Truncated = 1,
    /// Not `\x7fELF`, ELFCLASS64, little-endian, version 1.
    BadIdent = 2,
    /// `e_type` is not ET_CORE.
    NotCore = 3,
    /// `e_machine` is not EM_X86_64.
    NotX86_64 = 4,
    /// `e_phentsize` is not the size of an `Elf64_Phdr`.
    BadPhentsize = 5,
    /// The program headers do not fit the reserved space.
    TooManyPhdrs = 6,
}

impl HeaderError {
    /// A short description for the console.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadIdent => "bad ELF identification",
            Self::NotCore => "not ET_CORE",
            Self::NotX86_64 => "not EM_X86_64",
            Self::BadPhentsize => "bad e_phentsize",
            Self::TooManyPhdrs => "program headers exceed the reserved space",
        }
    }

    /// The CAPTURE_FAILED detail value.
    pub fn code(self) -> u64 {
        self as u64
    }
}

/// Where the program headers of a checked elfcorehdr are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// `e_phoff`.
    pub phoff: usize,
    /// `e_phnum`.
    pub phnum: usize,
    /// Bytes of the whole header: `e_phoff + e_phnum * e_phentsize`.
    pub size: usize,
}

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..)
        .and_then(|s| s.first_chunk::<2>())
        .map_or(0, |c| u16::from_le_bytes(*c))
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..)
        .and_then(|s| s.first_chunk::<4>())
        .map_or(0, |c| u32::from_le_bytes(*c))
}

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..)
        .and_then(|s| s.first_chunk::<8>())
        .map_or(0, |c| u64::from_le_bytes(*c))
}

/// Checks the `Elf64_Ehdr` at the start of `ehdr`; the program headers must
/// end within `max` bytes (the space the first kernel reserved).
pub fn check_ehdr(ehdr: &[u8], max: usize) -> Result<HeaderInfo, HeaderError> {
    const ET_CORE: u16 = 4;
    const EM_X86_64: u16 = 62;
    let Some(ident) = ehdr.first_chunk::<EHDR_SIZE>() else {
        return Err(HeaderError::Truncated);
    };
    if ident.first_chunk::<7>() != Some(&[0x7f, b'E', b'L', b'F', 2, 1, 1]) {
        return Err(HeaderError::BadIdent);
    }
    if le16(ehdr, 16) != ET_CORE {
        return Err(HeaderError::NotCore);
    }
    if le16(ehdr, 18) != EM_X86_64 {
        return Err(HeaderError::NotX86_64);
    }
    if le16(ehdr, 54) as usize != PHDR_SIZE {
        return Err(HeaderError::BadPhentsize);
    }
    let phoff = le64(ehdr, 32);
    let phnum = le16(ehdr, 56) as u64;
    let end = phoff.checked_add(phnum * PHDR_SIZE as u64);
    match end {
        Some(end) if phoff >= EHDR_SIZE as u64 && end <= max as u64 => Ok(HeaderInfo {
            phoff: phoff as usize,
            phnum: phnum as usize,
            size: end as usize,
        }),
        _ => Err(HeaderError::TooManyPhdrs),
    }
}

/// One program header's fields the capture kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// `p_type`.
    pub p_type: u32,
    /// `p_offset`: in an elfcorehdr, the physical address.
    pub p_offset: u64,
    /// `p_filesz`.
    pub p_filesz: u64,
}

/// Program header `i` of the checked header `hdr` (`info` from
/// [`check_ehdr`]); `None` past `phnum` or the bytes.
pub fn segment(hdr: &[u8], info: &HeaderInfo, i: usize) -> Option<Segment> {
    if i >= info.phnum {
        return None;
    }
    let at = info.phoff + i * PHDR_SIZE;
    hdr.get(at..at + PHDR_SIZE)?;
    Some(Segment {
        p_type: le32(hdr, at),
        p_offset: le64(hdr, at + 8),
        p_filesz: le64(hdr, at + 32),
    })
}

/// What a PT_NOTE segment of the elfcorehdr holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// A CPU's crash-note buffer with a valid `CORE`/NT_PRSTATUS note.
    CpuSaved,
    /// A CPU's crash-note buffer never written (or not a valid note).
    CpuMissing,
    /// The VMCOREINFO note.
    Vmcoreinfo,
}

/// Bytes of a note segment [`classify_note`] looks at.
pub const NOTE_PEEK: usize = NHDR_SIZE + 12;

/// Classifies a PT_NOTE segment from its first [`NOTE_PEEK`] bytes.
pub fn classify_note(head: &[u8]) -> NoteKind {
    let namesz = le32(head, 0) as usize;
    let name = head.get(NHDR_SIZE..NHDR_SIZE + namesz);
    let named = |want: &[u8]| {
        namesz == want.len() + 1
            && name.is_some_and(|n| n.get(..want.len()) == Some(want) && n.last() == Some(&0))
    };
    if named(NOTE_NAME_VMCOREINFO) {
        return NoteKind::Vmcoreinfo;
    }
    if named(NOTE_NAME_CORE)
        && le32(head, 4) as usize == ELF_PRSTATUS_SIZE
        && le32(head, 8) == NT_PRSTATUS
    {
        return NoteKind::CpuSaved;
    }
    NoteKind::CpuMissing
}

/// What the capture kernel does once it has reported (`kdump_final_action=`,
/// ours; kdump's `final_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalAction {
    /// Platform reset.
    Reboot,
    /// ACPI soft-off.
    Poweroff,
    /// Halt with interrupts off.
    Halt,
}

impl FinalAction {
    /// The knob's value for this action.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reboot => "reboot",
            Self::Poweroff => "poweroff",
            Self::Halt => "halt",
        }
    }

    /// Parses the knob's value.
    pub fn from_bytes(v: &[u8]) -> Option<Self> {
        [Self::Reboot, Self::Poweroff, Self::Halt]
            .into_iter()
            .find(|a| a.name().as_bytes() == v)
    }

    /// The action: the knob if given, else reboot when `panic=` is non-zero
    /// (the machine was meant to come back), else poweroff.
    pub fn resolve(knob: Option<Self>, panic_timeout: i64) -> Self {
        knob.unwrap_or(if panic_timeout != 0 {
            Self::Reboot
        } else {
            Self::Poweroff
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elfcorehdr::{build_elfcorehdr, CoreHdrLayout, PhysRange};
    use guest_abi::elfnote::{CrashNote, ElfPrstatus};
    use guest_abi::kexec::ELFCOREHDR_RESERVE;

    const MAX: usize = ELFCOREHDR_RESERVE as usize;

    fn header() -> Vec<u8> {
        let ram = [
            PhysRange::new(0, 0x9_f000),
            PhysRange::new(0x10_0000, 0xff0_0000),
        ];
        let layout = CoreHdrLayout {
            ram: &ram,
            crash_kernel: PhysRange::new(0xc00_0000, 0x400_0000),
            crash_notes: &[0x20_0000, 0x20_0170, 0x20_02e0, 0x20_0450],
            crash_note_size: 368,
            vmcoreinfo: PhysRange::new(0x21_0000, 0x400),
        };
        let mut buf = vec![0u8; MAX];
        let n = build_elfcorehdr(&layout, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn the_first_kernels_header_passes_and_lists_its_notes() {
        let h = header();
        let info = check_ehdr(&h, MAX).expect("valid");
        assert_eq!(info.phoff, 64);
        assert_eq!(
            info.phnum,
            4 + 1 + 2,
            "the region ends RAM: no PT_LOAD above it"
        );
        assert_eq!(info.size, h.len());
        let notes: Vec<u64> = (0..info.phnum)
            .filter_map(|i| segment(&h, &info, i))
            .filter(|s| s.p_type == PT_NOTE)
            .map(|s| s.p_offset)
            .collect();
        assert_eq!(
            notes,
            [0x20_0000, 0x20_0170, 0x20_02e0, 0x20_0450, 0x21_0000]
        );
        assert_eq!(segment(&h, &info, info.phnum), None);
        assert_eq!(segment(&h, &info, 5).unwrap().p_filesz, 0x9_f000);
    }

    #[test]
    fn each_header_field_is_checked() {
        let cases: [(usize, u8, HeaderError); 6] = [
            (0, 0, HeaderError::BadIdent),
            (4, 1, HeaderError::BadIdent),
            (5, 2, HeaderError::BadIdent),
            (16, 2, HeaderError::NotCore),
            (18, 3, HeaderError::NotX86_64),
            (54, 32, HeaderError::BadPhentsize),
        ];
        for (at, v, want) in cases {
            let mut h = header();
            h[at] = v;
            assert_eq!(check_ehdr(&h, MAX), Err(want), "byte {at}");
        }
        assert_eq!(
            check_ehdr(&header()[..63], MAX),
            Err(HeaderError::Truncated)
        );
        let mut h = header();
        h[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(check_ehdr(&h, MAX), Err(HeaderError::TooManyPhdrs));
        let mut h = header();
        h[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(check_ehdr(&h, MAX), Err(HeaderError::TooManyPhdrs));
        let mut h = header();
        h[32..40].copy_from_slice(&8u64.to_le_bytes());
        assert_eq!(check_ehdr(&h, MAX), Err(HeaderError::TooManyPhdrs));
        // The most headers that fit the reservation pass; one more fails.
        let fit = ((MAX - 64) / PHDR_SIZE) as u16;
        let mut h = header();
        h[56..58].copy_from_slice(&fit.to_le_bytes());
        assert_eq!(check_ehdr(&h, MAX).map(|i| i.phnum), Ok(fit as usize));
        h[56..58].copy_from_slice(&(fit + 1).to_le_bytes());
        assert_eq!(check_ehdr(&h, MAX), Err(HeaderError::TooManyPhdrs));
    }

    #[test]
    fn notes_are_told_apart() {
        let mut saved = CrashNote::empty();
        saved.write(&ElfPrstatus::zeroed());
        assert_eq!(classify_note(&saved.bytes[..NOTE_PEEK]), NoteKind::CpuSaved);
        let empty = CrashNote::empty();
        assert_eq!(
            classify_note(&empty.bytes[..NOTE_PEEK]),
            NoteKind::CpuMissing
        );
        let mut vmci = vec![0u8; NOTE_PEEK];
        vmci[0] = 11;
        vmci[12..22].copy_from_slice(b"VMCOREINFO");
        assert_eq!(classify_note(&vmci), NoteKind::Vmcoreinfo);
        // A note whose name is CORE but whose type or size is wrong.
        let mut bad = saved;
        bad.bytes[8] = 2;
        assert_eq!(classify_note(&bad.bytes[..NOTE_PEEK]), NoteKind::CpuMissing);
        let mut bad = saved;
        bad.bytes[4] = 0;
        assert_eq!(classify_note(&bad.bytes[..NOTE_PEEK]), NoteKind::CpuMissing);
        assert_eq!(classify_note(&[]), NoteKind::CpuMissing);
    }

    #[test]
    fn final_action_defaults_follow_panic() {
        assert_eq!(FinalAction::resolve(None, 0), FinalAction::Poweroff);
        assert_eq!(FinalAction::resolve(None, 10), FinalAction::Reboot);
        assert_eq!(FinalAction::resolve(None, -1), FinalAction::Reboot);
        assert_eq!(
            FinalAction::resolve(Some(FinalAction::Halt), 10),
            FinalAction::Halt
        );
        for a in [
            FinalAction::Reboot,
            FinalAction::Poweroff,
            FinalAction::Halt,
        ] {
            assert_eq!(FinalAction::from_bytes(a.name().as_bytes()), Some(a));
        }
        assert_eq!(FinalAction::from_bytes(b"kexec"), None);
    }
}
