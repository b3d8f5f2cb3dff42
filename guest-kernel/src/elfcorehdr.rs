//! The ELF core header the first kernel prepares for the capture kernel
//! (what `kexec -p` / `kexec_file_load` builds in Linux; DESIGN.md
//! section 7): an `ET_CORE` ELF header, then one `PT_NOTE` per CPU pointing
//! at its crash-note buffer, one `PT_NOTE` for the VMCOREINFO note, and one
//! `PT_LOAD` per RAM range with the crash-kernel region cut out. `p_vaddr`
//! equals `p_paddr` (the kernel identity-maps RAM).

/// Size of the ELF64 file header.
pub const EHDR_SIZE: usize = 64;
/// Size of one ELF64 program header.
pub const PHDR_SIZE: usize = 56;
/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;
/// `PT_NOTE`.
pub const PT_NOTE: u32 = 4;

/// One program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phdr {
    /// `PT_LOAD` or `PT_NOTE`.
    pub p_type: u32,
    /// Physical address (and, identity-mapped, virtual).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Why the header was not built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfcorehdrError {
    /// The buffer cannot hold every program header.
    TooSmall,
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(slot) = buf.get_mut(at + i) {
            *slot = b;
        }
    }
}

/// Bytes a header with `phnum` program headers needs.
pub const fn size_for(phnum: usize) -> usize {
    EHDR_SIZE + phnum * PHDR_SIZE
}

/// The ranges of `ram` (`[start, end)`) with `[hole_start, hole_end)` cut out.
pub fn ram_minus(ram: (u64, u64), hole: (u64, u64)) -> [Option<(u64, u64)>; 2] {
    let (s, e) = ram;
    let (hs, he) = hole;
    if he <= s || hs >= e || hs >= he {
        return [Some((s, e)).filter(|r| r.0 < r.1), None];
    }
    [
        Some((s, hs)).filter(|r| r.0 < r.1),
        Some((he, e)).filter(|r| r.0 < r.1),
    ]
}

/// Writes the header with `phdrs` (in order) into `buf`; returns its size.
pub fn build(
    buf: &mut [u8],
    phdrs: impl Iterator<Item = Phdr> + Clone,
) -> Result<usize, ElfcorehdrError> {
    let phnum = phdrs.clone().count();
    let size = size_for(phnum);
    if size > buf.len() || phnum > u16::MAX as usize {
        return Err(ElfcorehdrError::TooSmall);
    }
    // e_ident: ELF, 64-bit, little-endian, version 1, System V.
    put(
        buf,
        0,
        &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    put(buf, 16, &4u16.to_le_bytes()); // ET_CORE
    put(buf, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(buf, 20, &1u32.to_le_bytes()); // EV_CURRENT
    put(buf, 24, &0u64.to_le_bytes()); // e_entry
    put(buf, 32, &(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    put(buf, 40, &0u64.to_le_bytes()); // e_shoff
    put(buf, 48, &0u32.to_le_bytes()); // e_flags
    put(buf, 52, &(EHDR_SIZE as u16).to_le_bytes());
    put(buf, 54, &(PHDR_SIZE as u16).to_le_bytes());
    put(buf, 56, &(phnum as u16).to_le_bytes());
    put(buf, 58, &0u16.to_le_bytes()); // e_shentsize
    put(buf, 60, &0u16.to_le_bytes()); // e_shnum
    put(buf, 62, &0u16.to_le_bytes()); // e_shstrndx
    for (i, p) in phdrs.enumerate() {
        let at = EHDR_SIZE + i * PHDR_SIZE;
        let flags: u32 = if p.p_type == PT_LOAD { 7 } else { 0 };
        put(buf, at, &p.p_type.to_le_bytes());
        put(buf, at + 4, &flags.to_le_bytes());
        // p_offset: the physical address, as Linux's elfcorehdr (the
        // capture kernel rewrites offsets when it builds /proc/vmcore).
        put(buf, at + 8, &p.addr.to_le_bytes());
        put(buf, at + 16, &p.addr.to_le_bytes()); // p_vaddr
        put(buf, at + 24, &p.addr.to_le_bytes()); // p_paddr
        put(buf, at + 32, &p.size.to_le_bytes()); // p_filesz
        put(buf, at + 40, &p.size.to_le_bytes()); // p_memsz
        put(buf, at + 48, &0u64.to_le_bytes()); // p_align
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use goblin::elf::Elf;

    #[test]
    fn cuts_the_crash_kernel_out_of_ram() {
        assert_eq!(
            ram_minus((0, 100), (40, 60)),
            [Some((0, 40)), Some((60, 100))]
        );
        assert_eq!(ram_minus((0, 100), (0, 60)), [None, Some((60, 100))]);
        assert_eq!(ram_minus((0, 100), (200, 300)), [Some((0, 100)), None]);
        assert_eq!(ram_minus((0, 100), (0, 100)), [None, None]);
    }

    #[test]
    fn goblin_parses_the_header() {
        let phdrs = [
            Phdr {
                p_type: PT_NOTE,
                addr: 0x20_0000,
                size: 368,
            },
            Phdr {
                p_type: PT_NOTE,
                addr: 0x20_0170,
                size: 368,
            },
            Phdr {
                p_type: PT_NOTE,
                addr: 0x30_0000,
                size: 456,
            },
            Phdr {
                p_type: PT_LOAD,
                addr: 0,
                size: 0x9_fc00,
            },
            Phdr {
                p_type: PT_LOAD,
                addr: 0x10_0000,
                size: 0xbf0_0000,
            },
        ];
        let mut buf = vec![0u8; 4096];
        let n = build(&mut buf, phdrs.iter().copied()).unwrap();
        assert_eq!(n, 64 + 5 * 56);
        let elf = Elf::parse(&buf[..n]).unwrap();
        assert_eq!(elf.header.e_type, goblin::elf::header::ET_CORE);
        assert_eq!(elf.header.e_machine, goblin::elf::header::EM_X86_64);
        assert_eq!(elf.program_headers.len(), 5);
        let p = &elf.program_headers[1];
        assert_eq!(p.p_type, goblin::elf::program_header::PT_NOTE);
        assert_eq!((p.p_paddr, p.p_memsz), (0x20_0170, 368));
        let l = &elf.program_headers[4];
        assert_eq!(l.p_type, goblin::elf::program_header::PT_LOAD);
        assert_eq!(
            (l.p_paddr, l.p_vaddr, l.p_filesz),
            (0x10_0000, 0x10_0000, 0xbf0_0000)
        );
        assert!(build(&mut buf[..100], phdrs.iter().copied()).is_err());
    }
}
