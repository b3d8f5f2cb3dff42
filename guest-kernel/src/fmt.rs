//! Tiny integer formatting for the console, without `core::fmt`.

/// A formatted number: up to 20 digits (u64::MAX in decimal), right-aligned.
#[derive(Clone, Copy, Debug)]
pub struct NumBuf {
    buf: [u8; 20],
    start: usize,
}

impl NumBuf {
    /// The digits, most significant first.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }
}

fn format(mut value: u64, radix: u64) -> NumBuf {
    let mut out = NumBuf {
        buf: [0; 20],
        start: 20,
    };
    loop {
        let digit = (value % radix) as u8;
        value /= radix;
        out.start -= 1;
        if let Some(slot) = out.buf.get_mut(out.start) {
            *slot = if digit < 10 {
                b'0' + digit
            } else {
                b'a' + digit - 10
            };
        }
        if value == 0 || out.start == 0 {
            return out;
        }
    }
}

/// `value` in decimal.
pub fn dec(value: u64) -> NumBuf {
    format(value, 10)
}

/// `value` in lowercase hexadecimal, without prefix or leading zeros.
pub fn hex(value: u64) -> NumBuf {
    format(value, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: NumBuf) -> String {
        String::from_utf8(n.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn decimal_matches_std() {
        for v in [0, 1, 9, 10, 99, 100, 12345, u32::MAX as u64, u64::MAX] {
            assert_eq!(s(dec(v)), v.to_string());
        }
    }

    #[test]
    fn hex_matches_std() {
        for v in [0, 1, 0xf, 0x10, 0xfee0_0000, 0xdead_beef_cafe, u64::MAX] {
            assert_eq!(s(hex(v)), format!("{v:x}"));
        }
    }
}
