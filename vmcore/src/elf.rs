//! The few ELF64 constants and encoders the writer and reader share.

pub const EHDR_SIZE: usize = 64;
pub const PHDR_SIZE: usize = 56;
pub const SHDR_SIZE: usize = 64;
pub const ELFCLASS64: u8 = 2;
pub const ELFDATA2LSB: u8 = 1;
pub const EV_CURRENT: u8 = 1;
pub const ET_CORE: u16 = 4;
pub const EM_X86_64: u16 = 62;
pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
/// `e_phnum` value meaning "the count is in section header 0's `sh_info`".
pub const PN_XNUM: u16 = 0xffff;
pub const PF_R: u32 = 4;
pub const PF_W: u32 = 2;
pub const PF_X: u32 = 1;

/// Program header fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phdr {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_paddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}

impl Phdr {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.p_type.to_le_bytes());
        out.extend_from_slice(&self.p_flags.to_le_bytes());
        for v in [
            self.p_offset,
            self.p_vaddr,
            self.p_paddr,
            self.p_filesz,
            self.p_memsz,
            self.p_align,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// Decode from exactly [`PHDR_SIZE`] bytes.
    pub fn decode(b: &[u8; PHDR_SIZE]) -> Self {
        Phdr {
            p_type: le32(b, 0),
            p_flags: le32(b, 4),
            p_offset: le64(b, 8),
            p_vaddr: le64(b, 16),
            p_paddr: le64(b, 24),
            p_filesz: le64(b, 32),
            p_memsz: le64(b, 40),
            p_align: le64(b, 48),
        }
    }
}

/// An ELF64 core header for x86_64 with `phnum` program headers at 64.
/// With `phnum > 0xfffe` the header says PN_XNUM and points at one section
/// header at `shoff`.
pub fn encode_ehdr(out: &mut Vec<u8>, phnum: u64, shoff: u64) {
    let mut ident = [0u8; 16];
    ident[..4].copy_from_slice(b"\x7fELF");
    ident[4] = ELFCLASS64;
    ident[5] = ELFDATA2LSB;
    ident[6] = EV_CURRENT;
    out.extend_from_slice(&ident);
    out.extend_from_slice(&ET_CORE.to_le_bytes());
    out.extend_from_slice(&EM_X86_64.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    out.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    let xnum = phnum >= PN_XNUM as u64;
    out.extend_from_slice(&(if xnum { shoff } else { 0 }).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    out.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    out.extend_from_slice(&(if xnum { PN_XNUM } else { phnum as u16 }).to_le_bytes());
    out.extend_from_slice(&(if xnum { SHDR_SIZE as u16 } else { 0 }).to_le_bytes());
    out.extend_from_slice(&(if xnum { 1u16 } else { 0 }).to_le_bytes()); // e_shnum
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
}

/// Section header 0 carrying the real program header count (PN_XNUM).
pub fn encode_shdr0(out: &mut Vec<u8>, phnum: u64) {
    let mut sh = [0u8; SHDR_SIZE];
    // sh_info is the u32 at offset 44.
    sh[44..48].copy_from_slice(&(phnum as u32).to_le_bytes());
    out.extend_from_slice(&sh);
}

/// Append one note: header, NUL-terminated name, descriptor, padded to 4.
pub fn encode_note(out: &mut Vec<u8>, name: &[u8], n_type: u32, desc: &[u8]) {
    out.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&n_type.to_le_bytes());
    out.extend_from_slice(name);
    out.push(0);
    pad4(out);
    out.extend_from_slice(desc);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
