//! The kernel message ring (printk's log buffer), as plain logic.
//!
//! The ring is text: every console line is stored as `[<seq>] <text>\n`,
//! where `seq` counts lines from 0 (printk's record sequence number). The
//! writer keeps a `head`: the number of bytes ever written, so the byte for
//! position `p` lives at `p % len` and the ring holds positions
//! `head.saturating_sub(len)..head`. This is the VMCOREINFO contract
//! (`SYMBOL(log_buf)`, `NUMBER(log_buf_len)`, `SYMBOL(log_buf_head)`).
//!
//! The console prints from the ring (printk's `console_unlock` loop) with a
//! [`ConsoleFilter`] that drops the `[<seq>] ` prefixes, so serial lines look
//! exactly as before while the ring carries the sequence numbers.
//!
//! [`pstore_header`] encodes the header of the kmsg_dump region.

use crate::fmt;

/// Bytes of the ring the kernel uses.
pub const LOG_BUF_LEN: usize = 64 * 1024;

/// Writes bytes into a ring of any length, tracking line starts and the
/// sequence number of the next line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingWriter {
    /// Bytes ever written (the position of the next byte).
    pub head: u64,
    /// Sequence number of the next line to start.
    pub next_seq: u64,
    /// Whether the next byte begins a line (and gets a `[seq] ` prefix).
    pub at_line_start: bool,
}

impl RingWriter {
    /// An empty ring.
    pub const fn new() -> Self {
        Self {
            head: 0,
            next_seq: 0,
            at_line_start: true,
        }
    }

    fn put(&mut self, ring: &mut [u8], b: u8) {
        let len = ring.len() as u64;
        if len == 0 {
            return;
        }
        // A power-of-two ring (the kernel's) needs no division per byte.
        let at = if len.is_power_of_two() {
            self.head & (len - 1)
        } else {
            self.head % len
        };
        if let Some(slot) = ring.get_mut(at as usize) {
            *slot = b;
        }
        self.head += 1;
    }

    /// Appends `text`, prefixing each new line with `[seq] `. Text between
    /// line starts is copied in runs, not byte by byte: every instruction
    /// costs about a microsecond under this host's CPL0 emulation.
    pub fn write(&mut self, ring: &mut [u8], text: &[u8]) {
        let mut rest = text;
        while !rest.is_empty() {
            if self.at_line_start {
                let seq = fmt::dec(self.next_seq);
                self.next_seq += 1;
                self.put(ring, b'[');
                self.put_run(ring, seq.as_bytes());
                self.put(ring, b']');
                self.put(ring, b' ');
                self.at_line_start = false;
            }
            let end = find_newline(rest).map_or(rest.len(), |i| i + 1);
            let run = rest.get(..end).unwrap_or(rest);
            self.put_run(ring, run);
            if run.last() == Some(&b'\n') {
                self.at_line_start = true;
            }
            rest = rest.get(end..).unwrap_or(&[]);
        }
    }

    /// Copies `run` to the ring at `head`, wrapping at its end.
    fn put_run(&mut self, ring: &mut [u8], run: &[u8]) {
        let len = ring.len();
        if len == 0 {
            return;
        }
        let mut rest = run;
        while !rest.is_empty() {
            let at = (self.head % len as u64) as usize;
            let n = rest.len().min(len - at);
            if let (Some(dst), Some(src)) = (ring.get_mut(at..at + n), rest.get(..n)) {
                // SAFETY: both slices are exactly `n` bytes (from the ranges
                // above) and cannot overlap (`&mut` and `&`). Not
                // copy_from_slice: its length-mismatch panic would link
                // core::fmt, which uses SSE, into the guest.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), n) };
            }
            self.head += n as u64;
            rest = rest.get(n..).unwrap_or(&[]);
        }
    }

    /// The oldest position still in a ring of `len` bytes.
    pub fn tail(&self, len: usize) -> u64 {
        self.head.saturating_sub(len as u64)
    }
}

/// The index of the first `\n` in `s`, eight bytes per step (a per-byte
/// scan costs about four emulated instructions per byte on this host).
/// Uses the zero-byte test `(x - 0x01..) & !x & 0x80..` on `word ^ 0x0a..`:
/// its lowest set bit marks the first matching byte (a borrow can only
/// cause false hits above a true one).
pub fn find_newline(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NEWLINES: u64 = ONES * b'\n' as u64;
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let x = u64::from_le_bytes(<[u8; 8]>::try_from(w).unwrap_or([0; 8])) ^ NEWLINES;
        let hits = x.wrapping_sub(ONES) & !x & HIGHS;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| at + i)
}

/// The ring's contents from position `from` (clamped to what the ring still
/// holds) to `head`, in order, as at most two slices of `ring`.
pub fn contents_since(ring: &[u8], head: u64, from: u64) -> (&[u8], &[u8]) {
    let len = ring.len() as u64;
    if len == 0 || from >= head {
        return (&[], &[]);
    }
    let start = from.max(head.saturating_sub(len));
    let s = (start % len) as usize;
    let e = (head % len) as usize;
    let n = (head - start) as usize;
    if s + n <= ring.len() {
        (ring.get(s..s + n).unwrap_or(&[]), &[])
    } else {
        (ring.get(s..).unwrap_or(&[]), ring.get(..e).unwrap_or(&[]))
    }
}

/// Strips the `[<seq>] ` line prefixes from ring text on its way to the
/// console. Keeps its state between calls, so text can be fed in pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleFilter {
    state: FilterState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilterState {
    LineStart,
    InSeq,
    AfterBracket,
    Text,
}

impl Default for ConsoleFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleFilter {
    /// A filter positioned at the start of a line.
    pub const fn new() -> Self {
        Self {
            state: FilterState::LineStart,
        }
    }

    /// Whether `b` reaches the console.
    /// Whether the next byte begins a line (nothing of a line is pending).
    pub fn at_line_start(&self) -> bool {
        self.state == FilterState::LineStart
    }

    /// Whether byte `b` of the ring reaches the console.
    pub fn pass(&mut self, b: u8) -> bool {
        match self.state {
            FilterState::LineStart if b == b'[' => {
                self.state = FilterState::InSeq;
                false
            }
            FilterState::InSeq => {
                if b == b']' {
                    self.state = FilterState::AfterBracket;
                }
                false
            }
            FilterState::AfterBracket => {
                self.state = FilterState::Text;
                if b == b' ' {
                    return false;
                }
                if b == b'\n' {
                    self.state = FilterState::LineStart;
                }
                true
            }
            _ => {
                self.state = if b == b'\n' {
                    FilterState::LineStart
                } else {
                    FilterState::Text
                };
                true
            }
        }
    }
}

/// Magic at the start of the kmsg_dump (pstore-like) region.
pub const PSTORE_MAGIC: [u8; 8] = *b"PSTORE01";
/// Bytes of the region header.
pub const PSTORE_HEADER_LEN: usize = 32;

/// The region header: magic, then little-endian u32 text length, u32
/// reserved (0), u64 first and u64 one-past-last line sequence number the
/// text covers; the text (ring order, oldest first) follows at offset
/// [`PSTORE_HEADER_LEN`].
pub fn pstore_header(text_len: u32, first_seq: u64, end_seq: u64) -> [u8; PSTORE_HEADER_LEN] {
    let mut h = [0u8; PSTORE_HEADER_LEN];
    let fields: [(usize, &[u8]); 4] = [
        (0, &PSTORE_MAGIC),
        (8, &text_len.to_le_bytes()),
        (16, &first_seq.to_le_bytes()),
        (24, &end_seq.to_le_bytes()),
    ];
    for (at, bytes) in fields {
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(slot) = h.get_mut(at + i) {
                *slot = b;
            }
        }
    }
    h
}

/// The sequence number of the first complete line in `text` (ring text that
/// may start mid-line after a wrap): parses the first `[<seq>]` that follows
/// a newline, or at offset 0 when `at_start` says the text starts a line.
pub fn first_seq(text: &[u8], at_start: bool) -> Option<u64> {
    let mut i = if at_start {
        0
    } else {
        text.iter().position(|&b| b == b'\n')? + 1
    };
    if text.get(i) != Some(&b'[') {
        return None;
    }
    i += 1;
    let mut v: u64 = 0;
    let mut digits = 0;
    while let Some(&b) = text.get(i) {
        match b {
            b'0'..=b'9' => {
                v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
                digits += 1;
            }
            b']' if digits > 0 => return Some(v),
            _ => return None,
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(ring: &[u8], w: &RingWriter, from: u64) -> Vec<u8> {
        let (a, b) = contents_since(ring, w.head, from);
        [a, b].concat()
    }

    #[test]
    fn lines_get_sequence_prefixes() {
        let mut ring = vec![0u8; 64];
        let mut w = RingWriter::new();
        w.write(&mut ring, b"hello\n");
        w.write(&mut ring, b"wor");
        w.write(&mut ring, b"ld\n");
        assert_eq!(text(&ring, &w, 0), b"[0] hello\n[1] world\n");
        assert_eq!(w.next_seq, 2);
        assert_eq!(w.head, 20);
    }

    #[test]
    fn wraps_and_keeps_the_newest_bytes() {
        let mut ring = vec![0u8; 16];
        let mut w = RingWriter::new();
        w.write(&mut ring, b"aaaa\nbbbb\ncccc\n");
        // "[0] aaaa\n[1] bbbb\n[2] cccc\n" is 27 bytes; the ring keeps 16.
        assert_eq!(w.head, 27);
        assert_eq!(w.tail(16), 11);
        assert_eq!(text(&ring, &w, 0), b"] bbbb\n[2] cccc\n");
        assert_eq!(text(&ring, &w, 20), b"] cccc\n");
        assert!(text(&ring, &w, 27).is_empty());
        assert!(text(&ring, &w, 99).is_empty());
    }

    #[test]
    fn contents_split_at_the_wrap() {
        let mut ring = vec![0u8; 8];
        let mut w = RingWriter {
            at_line_start: false,
            ..RingWriter::new()
        };
        w.write(&mut ring, b"0123456789");
        let (a, b) = contents_since(&ring, w.head, 0);
        assert_eq!(a, b"234567");
        assert_eq!(b, b"89");
        let (a, b) = contents_since(&ring, w.head, 8);
        assert_eq!((a, b), (&b"89"[..], &b""[..]));
    }

    #[test]
    fn console_filter_drops_prefixes_only() {
        let mut ring = vec![0u8; 256];
        let mut w = RingWriter::new();
        w.write(&mut ring, b"CPU 0 online\n\n[not a prefix]\nx] y\n");
        let mut f = ConsoleFilter::new();
        let out: Vec<u8> = text(&ring, &w, 0)
            .into_iter()
            .filter(|&b| f.pass(b))
            .collect();
        assert_eq!(out, b"CPU 0 online\n\n[not a prefix]\nx] y\n");
    }

    #[test]
    fn console_filter_works_across_pieces() {
        let mut ring = vec![0u8; 256];
        let mut w = RingWriter::new();
        w.write(&mut ring, b"ab\ncd\n");
        let all = text(&ring, &w, 0);
        let mut f = ConsoleFilter::new();
        let mut out = Vec::new();
        for chunk in all.chunks(3) {
            out.extend(chunk.iter().copied().filter(|&b| f.pass(b)));
        }
        assert_eq!(out, b"ab\ncd\n");
    }

    #[test]
    fn pstore_header_layout() {
        let h = pstore_header(0x1234, 7, 9);
        assert_eq!(&h[..8], b"PSTORE01");
        assert_eq!(u32::from_le_bytes(h[8..12].try_into().unwrap()), 0x1234);
        assert_eq!(&h[12..16], &[0; 4]);
        assert_eq!(u64::from_le_bytes(h[16..24].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(h[24..32].try_into().unwrap()), 9);
    }

    #[test]
    fn first_seq_after_a_wrap() {
        assert_eq!(first_seq(b"[12] x\n", true), Some(12));
        assert_eq!(first_seq(b"2] x\n[13] y\n", false), Some(13));
        assert_eq!(first_seq(b"no newline", false), None);
        assert_eq!(first_seq(b"[] x", true), None);
        assert_eq!(first_seq(b"[1x] x", true), None);
    }

    #[test]
    fn find_newline_matches_a_bytewise_scan() {
        let mut buf = [b'a'; 40];
        assert_eq!(find_newline(&buf), None);
        assert_eq!(find_newline(&[]), None);
        for nl in 0..buf.len() {
            buf[nl] = b'\n';
            for start in 0..=nl {
                let s = &buf[start..];
                assert_eq!(find_newline(s), s.iter().position(|&b| b == b'\n'));
            }
            // A byte just below and just above '\n' never matches.
            buf[nl] = b'\n' - 1;
            assert_eq!(find_newline(&buf), None);
            buf[nl] = b'\n' + 1;
            assert_eq!(find_newline(&buf), None);
            buf[nl] = b'a';
        }
        // Several newlines and high bytes: the first one wins.
        assert_eq!(find_newline(b"\x80\x81\xff\x0b\x09ab\n\n\x8a"), Some(7));
        assert_eq!(find_newline(b"\x0a\x0a"), Some(0));
    }
}
