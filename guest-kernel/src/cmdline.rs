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

use guest_abi::pv::crash::{CrashType, CRASH_TYPES};

use crate::crashkernel::{self, CrashKernelSpec};
use crate::panic_policy::{PanicConfig, Policy};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootConfig {
    /// `nr_cpus=N`: bring up at most N CPUs, the boot CPU included.
    pub nr_cpus: Option<u32>,
    /// `post_boot=idle|poweroff|reboot`.
    pub post_boot: PostBoot,
    /// The panic-path knobs.
    pub panic: PanicKnobs,
    /// How many known parameters had a value we could not use (they keep
    /// their defaults; the kernel reports the count).
    pub invalid: u32,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            nr_cpus: None,
            post_boot: PostBoot::Idle,
            panic: PanicKnobs::DEFAULT,
            invalid: 0,
        }
    }
}

/// A crash to inject right after boot (`crash_after_boot=TYPE[@CPU]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashAfterBoot {
    /// The crash type (`guest_abi::pv::crash::CrashType`).
    pub crash: CrashType,
    /// The CPU that runs it (default 0); [`ALL_CPUS`] for `@all`.
    pub cpu: u32,
}

/// Command-line knobs of the panic path (Linux names where Linux has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PanicKnobs {
    /// `panic_policy=linux|linux-2016|proposal-2022` (ours).
    pub policy: Policy,
    /// `crash_kexec_post_notifiers` (Linux).
    pub crash_kexec_post_notifiers: bool,
    /// `crash_kexec_post_hypervisor` (the 2022 seed's name).
    pub crash_kexec_post_hypervisor: bool,
    /// `panic_print=` bits (Linux).
    pub panic_print: u32,
    /// `kmsg_dump=on|off` (ours): register the pstore-like dumper.
    pub kmsg_dump: bool,
    /// `panic=N` (Linux): >0 reboot after N s, <0 at once, 0 halt.
    pub panic_timeout: i64,
    /// `crashkernel=SIZE[@OFFSET]` (Linux).
    pub crashkernel: Option<CrashKernelSpec>,
    /// `unknown_nmi_panic` (Linux).
    pub unknown_nmi_panic: bool,
    /// `vmx=on|off` (ours; default on).
    pub vmx: bool,
    /// `crash_after_boot=TYPE[@CPU]` (ours).
    pub crash_after_boot: Option<CrashAfterBoot>,
    /// `pvpanic_crash_loaded=on|off` (ours; default on). Off models the
    /// pvpanic driver from before CRASH_LOADED existed (2020), which wrote
    /// PANICKED even with a crash kernel loaded.
    pub pvpanic_crash_loaded: bool,
}

impl PanicKnobs {
    /// Defaults: Linux policy, everything optional off, VMX on.
    pub const DEFAULT: Self = Self {
        policy: Policy::Linux,
        crash_kexec_post_notifiers: false,
        crash_kexec_post_hypervisor: false,
        panic_print: 0,
        kmsg_dump: false,
        panic_timeout: 0,
        crashkernel: None,
        unknown_nmi_panic: false,
        vmx: true,
        crash_after_boot: None,
        pvpanic_crash_loaded: true,
    };

    /// The inputs of `panic_steps`.
    pub fn panic_config(&self) -> PanicConfig {
        PanicConfig {
            policy: self.policy,
            crash_kexec_post_notifiers: self.crash_kexec_post_notifiers,
            crash_kexec_post_hypervisor: self.crash_kexec_post_hypervisor,
            panic_print: self.panic_print,
            kmsg_dumper: self.kmsg_dump,
        }
    }
}

impl Default for PanicKnobs {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A Linux boolean parameter: bare key or `1/y/Y/on` true, `0/n/N/off` false.
pub fn parse_bool(value: Option<&[u8]>) -> Option<bool> {
    match value {
        None | Some(b"1" | b"y" | b"Y" | b"on" | b"yes") => Some(true),
        Some(b"0" | b"n" | b"N" | b"off" | b"no") => Some(false),
        _ => None,
    }
}

/// A signed decimal (`panic=-1`).
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    match s.strip_prefix(b"-") {
        Some(rest) => {
            let v = parse_u64(rest)?;
            (v <= i64::MAX as u64).then(|| -(v as i64))
        }
        None => {
            let v = parse_u64(s)?;
            (v <= i64::MAX as u64).then_some(v as i64)
        }
    }
}

fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// The crash type named `name` (`PANIC`, `nmi_panic`, ...; any case).
pub fn crash_type_by_name(name: &[u8]) -> Option<CrashType> {
    CRASH_TYPES
        .iter()
        .find(|info| eq_ignore_case(info.name.as_bytes(), name))
        .map(|info| info.crash)
}

/// `crash_after_boot=TYPE@all`: every online CPU runs the crash at once.
pub const ALL_CPUS: u32 = u32::MAX;

/// Parses `TYPE[@CPU|@all]`.
pub fn parse_crash_after_boot(value: &[u8]) -> Option<CrashAfterBoot> {
    let (name, cpu) = match value.iter().position(|&b| b == b'@') {
        Some(at) => match value.get(at + 1..)? {
            b"all" => (value.get(..at)?, ALL_CPUS as u64),
            n => (value.get(..at)?, parse_u64(n)?),
        },
        None => (value, 0),
    };
    Some(CrashAfterBoot {
        crash: crash_type_by_name(name)?,
        cpu: u32::try_from(cpu).ok()?,
    })
}

impl BootConfig {
    /// Reads the known parameters of `cmdline`; unknown ones are ignored,
    /// as Linux leaves them to other consumers.
    pub fn parse(cmdline: &[u8]) -> Self {
        let mut cfg = Self::default();
        for p in params(cmdline) {
            let ok = cfg.apply(p);
            if !ok {
                cfg.invalid += 1;
            }
        }
        cfg
    }

    /// Applies one parameter; false if it is known but its value is bad.
    fn apply(&mut self, p: Param<'_>) -> bool {
        let k = |name: &str| key_eq(p.key, name.as_bytes());
        let pk = &mut self.panic;
        if k("nr_cpus") {
            match p.value.and_then(parse_u64) {
                Some(n) if n >= 1 && n <= u32::MAX as u64 => self.nr_cpus = Some(n as u32),
                _ => return false,
            }
        } else if k(guest_abi::boot::POST_BOOT_PARAM) {
            self.post_boot = match p.value {
                Some(b"idle") => PostBoot::Idle,
                Some(b"poweroff") => PostBoot::Poweroff,
                Some(b"reboot") => PostBoot::Reboot,
                _ => return false,
            };
        } else if k("panic_policy") {
            match p.value.and_then(policy_from_bytes) {
                Some(v) => pk.policy = v,
                None => return false,
            }
        } else if k("crash_kexec_post_notifiers") {
            match parse_bool(p.value) {
                Some(v) => pk.crash_kexec_post_notifiers = v,
                None => return false,
            }
        } else if k("crash_kexec_post_hypervisor") {
            match parse_bool(p.value) {
                Some(v) => pk.crash_kexec_post_hypervisor = v,
                None => return false,
            }
        } else if k("unknown_nmi_panic") {
            match parse_bool(p.value) {
                Some(v) => pk.unknown_nmi_panic = v,
                None => return false,
            }
        } else if k("panic_print") {
            match p.value.and_then(parse_u64) {
                Some(v) if v <= u32::MAX as u64 => pk.panic_print = v as u32,
                _ => return false,
            }
        } else if k("kmsg_dump") {
            match p.value.and_then(|v| parse_bool(Some(v))) {
                Some(v) => pk.kmsg_dump = v,
                None => return false,
            }
        } else if k("vmx") {
            match p.value.and_then(|v| parse_bool(Some(v))) {
                Some(v) => pk.vmx = v,
                None => return false,
            }
        } else if k("panic") {
            match p.value.and_then(parse_i64) {
                Some(v) => pk.panic_timeout = v,
                None => return false,
            }
        } else if k("crashkernel") {
            match p.value.and_then(crashkernel::parse) {
                Some(v) => pk.crashkernel = Some(v),
                None => return false,
            }
        } else if k("crash_after_boot") {
            match p.value.and_then(parse_crash_after_boot) {
                Some(v) => pk.crash_after_boot = Some(v),
                None => return false,
            }
        } else if k("pvpanic_crash_loaded") {
            match p.value.and_then(|v| parse_bool(Some(v))) {
                Some(v) => pk.pvpanic_crash_loaded = v,
                None => return false,
            }
        }
        true
    }
}

fn policy_from_bytes(v: &[u8]) -> Option<Policy> {
    [Policy::Linux, Policy::Linux2016, Policy::Proposal2022]
        .into_iter()
        .find(|p| p.name().as_bytes() == v)
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

    #[test]
    fn panic_knobs() {
        let c = BootConfig::parse(
            b"panic_policy=linux-2016 crash_kexec_post_notifiers panic_print=0x62 \
              kmsg_dump=on panic=-1 crashkernel=64M unknown_nmi_panic vmx=off \
              crash_after_boot=nmi_panic@2 crash-kexec-post-hypervisor=1",
        );
        assert_eq!(c.invalid, 0);
        let k = c.panic;
        assert_eq!(k.policy, Policy::Linux2016);
        assert!(k.crash_kexec_post_notifiers && k.crash_kexec_post_hypervisor);
        assert_eq!(k.panic_print, 0x62);
        assert!(k.kmsg_dump && k.unknown_nmi_panic && !k.vmx);
        assert_eq!(k.panic_timeout, -1);
        assert_eq!(k.crashkernel.unwrap().size, 64 << 20);
        assert_eq!(
            k.crash_after_boot,
            Some(CrashAfterBoot {
                crash: CrashType::NmiPanic,
                cpu: 2
            })
        );
        let pc = k.panic_config();
        assert!(pc.kmsg_dumper && pc.crash_kexec_post_notifiers);
        assert_eq!(BootConfig::parse(b"").panic, PanicKnobs::DEFAULT);
        assert!(BootConfig::parse(b"").panic.vmx);
        assert!(BootConfig::parse(b"").panic.pvpanic_crash_loaded);
        let legacy = BootConfig::parse(b"pvpanic_crash_loaded=off");
        assert_eq!(legacy.invalid, 0);
        assert!(!legacy.panic.pvpanic_crash_loaded);
        assert_eq!(BootConfig::parse(b"pvpanic_crash_loaded").invalid, 1);
        let bad = BootConfig::parse(
            b"panic_policy=bsd panic=x crashkernel=0 crash_after_boot=FOO kmsg_dump vmx=maybe \
              crash_kexec_post_notifiers=2 crash_after_boot=PANIC@",
        );
        assert_eq!(bad.invalid, 8);
        assert_eq!(bad.panic, PanicKnobs::DEFAULT);
        assert_eq!(parse_crash_after_boot(b"PANIC").unwrap().cpu, 0);
        assert_eq!(
            parse_crash_after_boot(b"nmi_panic@all").unwrap().cpu,
            ALL_CPUS
        );
        assert_eq!(parse_i64(b"30"), Some(30));
    }
}
