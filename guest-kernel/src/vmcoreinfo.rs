//! Builds the VMCOREINFO ELF note (Linux's `crash_save_vmcoreinfo` text in
//! a `"VMCOREINFO"` note), without `core::fmt`.
//!
//! The note is `Elf64_Nhdr`, `"VMCOREINFO\0"` padded to 12 bytes, then the
//! `KEY=value\n` text padded to 4 bytes. `SYMBOL(...)` values are hex without
//! `0x` (Linux `%lx`), `NUMBER(...)` values decimal (Linux `%ld`). The keys
//! and their meaning are the contract in `guest_abi::elfnote`.

use guest_abi::elfnote::{align4, NHDR_SIZE, NOTE_NAME_VMCOREINFO, NT_VMCOREINFO};

use crate::fmt;

/// Capacity of the note buffer.
pub const VMCOREINFO_NOTE_MAX: usize = 1024;

/// Offset of the text in the note.
pub const TEXT_OFFSET: usize = NHDR_SIZE + align4(NOTE_NAME_VMCOREINFO.len() + 1);

/// A VMCOREINFO note being built into a fixed buffer.
#[derive(Debug)]
pub struct VmcoreinfoBuilder<'a> {
    buf: &'a mut [u8],
    /// Text bytes written so far.
    text_len: usize,
    /// Set when something did not fit (the text is then cut at a line end).
    overflow: bool,
}

impl<'a> VmcoreinfoBuilder<'a> {
    /// Starts a note in `buf` (which should be [`VMCOREINFO_NOTE_MAX`] bytes).
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            text_len: 0,
            overflow: false,
        }
    }

    fn append(&mut self, parts: &[&[u8]]) -> &mut Self {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // Keep room for the 4-byte padding of the text.
        if self.overflow || TEXT_OFFSET + self.text_len + total + 3 > self.buf.len() {
            self.overflow = true;
            return self;
        }
        for p in parts {
            for &b in *p {
                if let Some(slot) = self.buf.get_mut(TEXT_OFFSET + self.text_len) {
                    *slot = b;
                }
                self.text_len += 1;
            }
        }
        self
    }

    /// `KEY=value\n` with a string value.
    pub fn str(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.append(&[key.as_bytes(), b"=", value, b"\n"])
    }

    /// `KEY=<hex>\n` (for `SYMBOL(...)`).
    pub fn hex(&mut self, key: &str, value: u64) -> &mut Self {
        let v = fmt::hex(value);
        self.append(&[key.as_bytes(), b"=", v.as_bytes(), b"\n"])
    }

    /// `KEY=<decimal>\n` (for `NUMBER(...)`, `PAGESIZE`).
    pub fn dec(&mut self, key: &str, value: u64) -> &mut Self {
        let v = fmt::dec(value);
        self.append(&[key.as_bytes(), b"=", v.as_bytes(), b"\n"])
    }

    /// Whether some key did not fit.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Writes the note header and name and pads the text; returns the whole
    /// note's size in bytes.
    pub fn finish(&mut self) -> usize {
        let desc = self.text_len;
        let header: [u32; 3] = [
            NOTE_NAME_VMCOREINFO.len() as u32 + 1,
            desc as u32,
            NT_VMCOREINFO,
        ];
        let mut at = 0;
        for word in header {
            for b in word.to_le_bytes() {
                if let Some(slot) = self.buf.get_mut(at) {
                    *slot = b;
                }
                at += 1;
            }
        }
        while at < TEXT_OFFSET {
            let b = NOTE_NAME_VMCOREINFO
                .get(at - NHDR_SIZE)
                .copied()
                .unwrap_or(0);
            if let Some(slot) = self.buf.get_mut(at) {
                *slot = b;
            }
            at += 1;
        }
        let end = TEXT_OFFSET + align4(desc);
        for i in TEXT_OFFSET + desc..end {
            if let Some(slot) = self.buf.get_mut(i) {
                *slot = 0;
            }
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::elfnote::{
        VMCOREINFO_CRASH_NOTES, VMCOREINFO_NR_CPUS, VMCOREINFO_OSRELEASE, VMCOREINFO_PAGESIZE,
    };

    #[test]
    fn builds_a_vmcoreinfo_note() {
        let mut buf = [0xaau8; VMCOREINFO_NOTE_MAX];
        let mut b = VmcoreinfoBuilder::new(&mut buf);
        b.str(VMCOREINFO_OSRELEASE, b"0.1.0")
            .dec(VMCOREINFO_PAGESIZE, 4096)
            .hex(VMCOREINFO_CRASH_NOTES, 0x1f_2000)
            .dec(VMCOREINFO_NR_CPUS, 4);
        assert!(!b.overflowed());
        let size = b.finish();
        let text =
            b"OSRELEASE=0.1.0\nPAGESIZE=4096\nSYMBOL(crash_notes)=1f2000\nNUMBER(nr_cpus)=4\n";
        assert_eq!(TEXT_OFFSET, 24);
        assert_eq!(size, 24 + align4(text.len()));
        assert_eq!(u32::from_le_bytes(buf[0..4].try_into().unwrap()), 11);
        assert_eq!(
            u32::from_le_bytes(buf[4..8].try_into().unwrap()) as usize,
            text.len()
        );
        assert_eq!(u32::from_le_bytes(buf[8..12].try_into().unwrap()), 0);
        assert_eq!(&buf[12..24], b"VMCOREINFO\0\0");
        assert_eq!(&buf[24..24 + text.len()], text);
        assert!(buf[24 + text.len()..size].iter().all(|&b| b == 0));
    }

    #[test]
    fn overflow_drops_whole_lines() {
        let mut buf = [0u8; 40];
        let mut b = VmcoreinfoBuilder::new(&mut buf);
        b.dec("A", 1).dec("LONGKEY", 123456789);
        assert!(b.overflowed());
        let size = b.finish();
        assert_eq!(&buf[24..28], b"A=1\n");
        assert_eq!(size, 28);
    }
}
