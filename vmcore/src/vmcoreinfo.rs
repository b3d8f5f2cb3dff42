//! The guest's VMCOREINFO text: `KEY=value` lines (Linux format).

use serde::Serialize;

/// Parsed VMCOREINFO, keys in the order the guest wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VmcoreInfo {
    /// `(key, value)` pairs; lines without `=` are kept with an empty value.
    pub entries: Vec<(String, String)>,
}

impl VmcoreInfo {
    /// Parse the note descriptor (trailing NULs and invalid UTF-8 tolerated).
    pub fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let entries = text
            .split('\n')
            .map(|l| l.trim_end_matches(['\0', '\r']))
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        VmcoreInfo { entries }
    }

    /// The value of `key` (the first occurrence).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A `SYMBOL(...)`-style hex value (with or without `0x`).
    pub fn hex(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?.trim();
        let v = v
            .strip_prefix("0x")
            .or_else(|| v.strip_prefix("0X"))
            .unwrap_or(v);
        u64::from_str_radix(v, 16).ok()
    }

    /// A `NUMBER(...)`-style decimal value (or `0x` hex).
    pub fn number(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?.trim();
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_symbols_and_numbers() {
        let v = VmcoreInfo::parse(
            b"OSRELEASE=0.1\nSYMBOL(crash_notes)=1f000\nNUMBER(nr_cpus)=4\nbogus\n\0\0",
        );
        assert_eq!(v.get("OSRELEASE"), Some("0.1"));
        assert_eq!(v.hex("SYMBOL(crash_notes)"), Some(0x1f000));
        assert_eq!(v.number("NUMBER(nr_cpus)"), Some(4));
        assert_eq!(v.get("bogus"), Some(""));
        assert_eq!(v.number("OSRELEASE"), None);
        assert_eq!(v.entries.len(), 4);
    }
}
