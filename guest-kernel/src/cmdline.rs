//! The kernel command line, parsed the way Linux's `next_arg()` does.
//!
//! Parameters are separated by spaces; each is `key` or `key=value`. Double
//! quotes group spaces (`key="a b"` or `"key=a b"`) and are stripped from the
//! value. As in Linux, `-` and `_` are the same in a key. Parsing works on
//! bytes (no UTF-8 validation, which is precompiled SSE code in `core`).

/// One `key` or `key=value` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    /// The name, quotes stripped.
    pub key: &'a [u8],
    /// The value after the first `=`, quotes stripped; `None` for a bare key.
    pub value: Option<&'a [u8]>,
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
            },
            Some(eq) => Param {
                key: strip_quotes(word.get(..eq)?),
                value: Some(strip_quotes(word.get(eq + 1..)?)),
            },
        })
    }
}

/// Whether parameter name `a` equals `b`, with `-` and `_` the same.
pub fn key_eq(a: &[u8], b: &[u8]) -> bool {
    let norm = |c: u8| if c == b'-' { b'_' } else { c };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| norm(x) == norm(y))
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

/// What the boot CPU does after printing the `CPUs online` summary
/// (`post_boot=`; our knob, used by the VMM's tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PostBoot {
    /// Stay up, halted until interrupted (the default).
    #[default]
    Idle,
    /// ACPI soft-off.
    Poweroff,
    /// Platform reset.
    Reboot,
}

/// The settings the kernel takes from its command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootConfig {
    /// `nr_cpus=N`: bring up at most N CPUs, the boot CPU included.
    pub nr_cpus: Option<u32>,
    /// `post_boot=idle|poweroff|reboot`.
    pub post_boot: PostBoot,
    /// How many known parameters had a value we could not use (they keep
    /// their defaults; the kernel reports the count).
    pub invalid: u32,
}

impl BootConfig {
    /// Reads the known parameters of `cmdline`; unknown ones are ignored,
    /// as Linux leaves them to other consumers.
    pub fn parse(cmdline: &[u8]) -> Self {
        let mut cfg = Self::default();
        for p in params(cmdline) {
            if key_eq(p.key, b"nr_cpus") {
                match p.value.and_then(parse_u64) {
                    Some(n) if n >= 1 && n <= u32::MAX as u64 => cfg.nr_cpus = Some(n as u32),
                    _ => cfg.invalid += 1,
                }
            } else if key_eq(p.key, guest_abi::boot::POST_BOOT_PARAM.as_bytes()) {
                match p.value {
                    Some(b"idle") => cfg.post_boot = PostBoot::Idle,
                    Some(b"poweroff") => cfg.post_boot = PostBoot::Poweroff,
                    Some(b"reboot") => cfg.post_boot = PostBoot::Reboot,
                    _ => cfg.invalid += 1,
                }
            }
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &str) -> Vec<(String, Option<String>)> {
        params(s.as_bytes())
            .map(|p| {
                (
                    String::from_utf8(p.key.to_vec()).unwrap(),
                    p.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn splits_keys_and_values() {
        assert_eq!(
            all("  quiet nr_cpus=2\tpanic=-1  "),
            vec![
                ("quiet".into(), None),
                ("nr_cpus".into(), Some("2".into())),
                ("panic".into(), Some("-1".into())),
            ]
        );
        assert!(all("").is_empty());
        assert!(all("   ").is_empty());
    }

    #[test]
    fn quotes_group_spaces_and_are_stripped() {
        assert_eq!(
            all(r#"a="x y" "b=c d" e=f=g"#),
            vec![
                ("a".into(), Some("x y".into())),
                ("b".into(), Some("c d".into())),
                ("e".into(), Some("f=g".into())),
            ]
        );
        assert_eq!(all("k="), vec![("k".into(), Some("".into()))]);
    }

    #[test]
    fn stops_at_nul() {
        assert_eq!(all("a b\0c"), vec![("a".into(), None), ("b".into(), None)]);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"42"), Some(42));
        assert_eq!(parse_u64(b"0x1F"), Some(31));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"0x"), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }

    #[test]
    fn boot_config() {
        assert_eq!(BootConfig::parse(b""), BootConfig::default());
        let c = BootConfig::parse(b"console=ttyS0 nr-cpus=3 post_boot=poweroff");
        assert_eq!(c.nr_cpus, Some(3));
        assert_eq!(c.post_boot, PostBoot::Poweroff);
        assert_eq!(c.invalid, 0);
        let c = BootConfig::parse(b"post_boot=reboot nr_cpus=0 post_boot=sideways nr_cpus");
        assert_eq!(c.nr_cpus, None);
        assert_eq!(c.post_boot, PostBoot::Reboot);
        assert_eq!(c.invalid, 3);
    }
}
