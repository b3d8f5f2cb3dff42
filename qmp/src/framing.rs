//! Splitting a byte stream into JSON texts.
//!
//! QMP is a stream of JSON values, not of lines (QEMU feeds its input to a
//! streaming JSON lexer): a message may arrive in pieces, and several may
//! share one line. The [`Framer`] finds where each top-level value ends by
//! tracking strings, escapes and bracket depth, without parsing; the caller
//! parses each frame with serde_json, so a malformed value costs one error
//! reply and the stream carries on after it.
//!
//! Resynchronisation rules (ours, documented because QEMU's lexer differs in
//! detail): an object or array ends where its brackets balance, whatever its
//! contents, or right after the first closer that doesn't match its opener
//! (`{"a": [}` is one bad frame, not the start of a longer one); a top-level string ends at its closing quote; any other
//! top-level token (a number, a literal, garbage) ends before the next
//! whitespace or structural character; a stray `}` or `]` is a frame of its
//! own. Everything but a complete object is then an error for the caller.

/// The largest frame accepted, in bytes: 1 MiB. A client that sends more
/// than this without completing a JSON value gets an error and is closed.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Errors from framing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    /// A JSON value grew beyond the limit before it was complete.
    #[error("message exceeds {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// Between values, skipping whitespace.
    Idle,
    /// Inside an object or array.
    Container,
    /// Inside a top-level string.
    String,
    /// Inside a top-level number, literal or garbage.
    Scalar,
}

/// Incremental splitter of a byte stream into top-level JSON texts.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Next byte to scan.
    pos: usize,
    /// Start of the value being scanned (meaningful unless idle).
    start: usize,
    token: Token,
    /// Open brackets of the current container, innermost last.
    open: Vec<u8>,
    in_string: bool,
    escaped: bool,
    limit: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new(MAX_MESSAGE_BYTES)
    }
}

impl Framer {
    /// A framer that rejects values longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            start: 0,
            token: Token::Idle,
            open: Vec::new(),
            in_string: false,
            escaped: false,
            limit,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete top-level JSON text, if one is buffered.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, FramingError>> {
        while self.pos < self.buf.len() {
            let byte = self.buf[self.pos];
            match self.token {
                Token::Idle => {
                    if !is_whitespace(byte) {
                        self.start = self.pos;
                        self.token = match byte {
                            b'{' | b'[' => {
                                self.open.push(byte);
                                Token::Container
                            }
                            b'"' => {
                                self.in_string = true;
                                Token::String
                            }
                            b'}' | b']' => {
                                self.pos += 1;
                                return Some(Ok(self.take_frame()));
                            }
                            _ => Token::Scalar,
                        };
                    }
                    self.pos += 1;
                }
                Token::Container if self.in_string => {
                    self.scan_string_byte(byte);
                    self.pos += 1;
                }
                Token::String => {
                    self.scan_string_byte(byte);
                    self.pos += 1;
                    if !self.in_string {
                        return Some(Ok(self.take_frame()));
                    }
                }
                Token::Container => {
                    let mut complete = false;
                    match byte {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => self.open.push(byte),
                        b'}' | b']' => {
                            let opener = if byte == b'}' { b'{' } else { b'[' };
                            // A mismatched closer ends the (bad) frame here.
                            complete = self.open.pop() != Some(opener) || self.open.is_empty();
                        }
                        _ => {}
                    }
                    self.pos += 1;
                    if complete {
                        return Some(Ok(self.take_frame()));
                    }
                }
                Token::Scalar => {
                    if is_whitespace(byte) || b"{}[]\",:".contains(&byte) {
                        return Some(Ok(self.take_frame()));
                    }
                    self.pos += 1;
                }
            }
            if self.token != Token::Idle && self.pos - self.start > self.limit {
                return Some(Err(FramingError::TooLarge { limit: self.limit }));
            }
        }
        // Drop what was scanned and is no longer needed, so that whitespace
        // or a slowly growing value doesn't keep old bytes around.
        let keep_from = if self.token == Token::Idle {
            self.pos
        } else {
            self.start
        };
        self.buf.drain(..keep_from);
        self.pos -= keep_from;
        self.start = 0;
        None
    }

    fn scan_string_byte(&mut self, byte: u8) {
        if self.escaped {
            self.escaped = false;
        } else if byte == b'\\' {
            self.escaped = true;
        } else if byte == b'"' {
            self.in_string = false;
        }
    }

    fn take_frame(&mut self) -> Vec<u8> {
        let frame = self.buf[self.start..self.pos].to_vec();
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.start = 0;
        self.token = Token::Idle;
        self.open.clear();
        self.in_string = false;
        self.escaped = false;
        frame
    }
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut Framer) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(frame) = framer.next_frame() {
            out.push(String::from_utf8(frame.unwrap()).unwrap());
        }
        out
    }

    #[test]
    fn several_values_on_one_line() {
        let mut f = Framer::default();
        f.push(br#"{"execute":"a"}{"execute":"b"} [1,[2]]  "x\"}" 12 true"#);
        assert_eq!(
            frames(&mut f),
            [
                r#"{"execute":"a"}"#,
                r#"{"execute":"b"}"#,
                "[1,[2]]",
                r#""x\"}""#,
                "12"
            ]
        );
        // `true` is not terminated yet: a later byte may extend it.
        f.push(b"\n");
        assert_eq!(frames(&mut f), ["true"]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn a_value_split_byte_by_byte() {
        let msg = br#"{"execute": "x", "arguments": {"s": "}]\\\"{"}}"#;
        let mut f = Framer::default();
        let mut got = Vec::new();
        for b in msg {
            f.push(&[*b]);
            got.extend(frames(&mut f));
        }
        assert_eq!(got, [std::str::from_utf8(msg).unwrap()]);
    }

    #[test]
    fn stray_closers_and_garbage_are_frames() {
        let mut f = Framer::default();
        f.push(b"}] abc{\"a\":1}, :\n");
        assert_eq!(frames(&mut f), ["}", "]", "abc", "{\"a\":1}", ",", ":"]);
    }

    #[test]
    fn a_mismatched_closer_ends_the_frame() {
        let mut f = Framer::default();
        f.push(b"{\"a\": [}\n{\"b\": {]}\n[{}]\n");
        assert_eq!(frames(&mut f), ["{\"a\": [}", "{\"b\": {]", "}", "[{}]"]);
    }

    #[test]
    fn oversize_value_is_reported() {
        let mut f = Framer::new(16);
        f.push(b"  {\"a\": \"01234");
        assert!(f.next_frame().is_none());
        f.push(b"0123456789\"}");
        assert_eq!(
            f.next_frame(),
            Some(Err(FramingError::TooLarge { limit: 16 }))
        );
        // Exactly at the limit is fine; whitespace never counts.
        let mut f = Framer::new(16);
        f.push(&[b' '; 100]);
        f.push(b"{\"a\": \"1234567\"}");
        assert_eq!(frames(&mut f), ["{\"a\": \"1234567\"}"]);
    }
}
