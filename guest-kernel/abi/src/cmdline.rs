//! The kernel command line, split the way Linux's `next_arg()` does.
//!
//! Parameters are separated by spaces; each is `key` or `key=value`. Double
//! quotes group spaces (`key="a b"` or `"key=a b"`) and are stripped from the
//! value. As in Linux, `-` and `_` are the same in a key. Parsing works on
//! bytes (no UTF-8 validation, which is precompiled SSE code in `core`), so
//! the guest (which interprets the line) and the VMM (which writes the
//! capture kernel's) split it identically.

/// One `key` or `key=value` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    /// The name, quotes stripped.
    pub key: &'a [u8],
    /// The value after the first `=`, quotes stripped; `None` for a bare key.
    pub value: Option<&'a [u8]>,
    /// The whole parameter as written (quotes kept), to copy it elsewhere.
    pub raw: &'a [u8],
}

/// Iterator over the parameters of a command line.
#[derive(Clone, Debug)]
pub struct Params<'a> {
    rest: &'a [u8],
}

/// The parameters of `cmdline` (which ends at its first NUL, if any).
pub fn params(cmdline: &[u8]) -> Params<'_> {
    let end = cmdline
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(cmdline.len());
    Params {
        rest: cmdline.get(..end).unwrap_or(&[]),
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn strip_quotes(s: &[u8]) -> &[u8] {
    let s = s.strip_prefix(b"\"").unwrap_or(s);
    s.strip_suffix(b"\"").unwrap_or(s)
}

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        let start = self.rest.iter().position(|&b| !is_space(b))?;
        let arg = self.rest.get(start..)?;
        let mut in_quote = false;
        let mut equals = None;
        let mut end = arg.len();
        for (i, &b) in arg.iter().enumerate() {
            if is_space(b) && !in_quote {
                end = i;
                break;
            }
            if equals.is_none() && b == b'=' {
                equals = Some(i);
            }
            if b == b'"' {
                in_quote = !in_quote;
            }
        }
        let word = arg.get(..end)?;
        self.rest = arg.get(end..).unwrap_or(&[]);
        Some(match equals {
            None => Param {
                key: strip_quotes(word),
                value: None,
                raw: word,
            },
            Some(eq) => Param {
                key: strip_quotes(word.get(..eq)?),
                value: Some(strip_quotes(word.get(eq + 1..)?)),
                raw: word,
            },
        })
    }
}

/// Whether parameter name `a` equals `b`, with `-` and `_` the same.
pub fn key_eq(a: &[u8], b: &[u8]) -> bool {
    let norm = |c: u8| if c == b'-' { b'_' } else { c };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| norm(x) == norm(y))
}

/// The value of the last `key=value` parameter named `key` in `cmdline`
/// (Linux: the last occurrence wins). A bare `key` has no value and is
/// skipped.
pub fn find_value<'a>(cmdline: &'a [u8], key: &str) -> Option<&'a [u8]> {
    params(cmdline)
        .filter(|p| key_eq(p.key, key.as_bytes()))
        .filter_map(|p| p.value)
        .last()
}

/// Parses a decimal or `0x` hexadecimal unsigned number.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix(b"0x").or_else(|| s.strip_prefix(b"0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        } as u64;
        if d >= radix {
            return None;
        }
        value = value.checked_mul(radix)?.checked_add(d)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &[u8]) -> usize {
        params(s).count()
    }

    #[test]
    fn splits_and_keeps_the_raw_word() {
        let mut it = params(br#"  a "b=c d"	e=f=g k= "#);
        let p = it.next().unwrap();
        assert_eq!((p.key, p.value, p.raw), (&b"a"[..], None, &b"a"[..]));
        let p = it.next().unwrap();
        assert_eq!(
            (p.key, p.value, p.raw),
            (&b"b"[..], Some(&b"c d"[..]), &br#""b=c d""#[..])
        );
        let p = it.next().unwrap();
        assert_eq!((p.key, p.value), (&b"e"[..], Some(&b"f=g"[..])));
        let p = it.next().unwrap();
        assert_eq!((p.key, p.value), (&b"k"[..], Some(&b""[..])));
        assert!(it.next().is_none());
        assert_eq!(keys(b""), 0);
        assert_eq!(keys(b"a b\0c"), 2);
    }

    #[test]
    fn finds_the_last_value_with_dashes_and_quotes() {
        let line = b"crash-kernel=1M x crashkernel=\"64M\" crashkernel post_boot=idle";
        assert_eq!(find_value(line, "crashkernel"), Some(&b"64M"[..]));
        assert_eq!(find_value(line, "crash_kernel"), Some(&b"1M"[..]));
        assert_eq!(find_value(line, "post-boot"), Some(&b"idle"[..]));
        assert_eq!(find_value(line, "x"), None);
        assert_eq!(find_value(line, "nope"), None);
        assert!(key_eq(b"a-b_c", b"a_b-c"));
        assert!(!key_eq(b"ab", b"abc"));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"42"), Some(42));
        assert_eq!(parse_u64(b"0x1F"), Some(31));
        assert_eq!(parse_u64(b"0X10"), Some(16));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"0x"), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }
}
