//! The kernel command line, parsed the way Linux's `next_arg()` does.
//!
//! The splitting itself (quotes, `-`/`_` equal in keys, numbers) lives in
//! `guest_abi::cmdline`, so the VMM splits the line the same way when it
//! writes the capture kernel's; this module interprets the parameters.

pub use guest_abi::cmdline::{key_eq, params, parse_u64, Param, Params};

use guest_abi::pv::crash::{CrashType, CRASH_TYPES};

use crate::capture::FinalAction;
use crate::crashkernel::{self, CrashKernelSpec};
use crate::panic_policy::{PanicConfig, Policy};

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
    /// The kdump knobs (capture mode and the test-only faults).
    pub kdump: KdumpKnobs,
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
            kdump: KdumpKnobs::default(),
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

/// Test-only damage to the elfcorehdr after the first kernel prepared it
/// (`elfcorehdr_scribble=`, ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfcorehdrScribble {
    /// Break `e_ident`: the capture kernel must refuse the header.
    Magic,
    /// Make one PT_LOAD run far beyond RAM: the capture kernel does not
    /// check PT_LOADs, the VMM's parser must refuse it.
    Load,
}

/// The kdump knobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KdumpKnobs {
    /// `elfcorehdr=[SIZE@]ADDR` (Linux): the first kernel's ELF core header.
    /// Its presence makes this the capture kernel (`is_kdump_kernel()`).
    pub elfcorehdr: Option<u64>,
    /// `kdump_final_action=reboot|poweroff|halt` (ours; kdump's
    /// `final_action`). `None`: by `panic=`.
    pub final_action: Option<FinalAction>,
    /// `kexec_corrupt_image` (ours, test-only): flip one byte of the loaded
    /// capture image at boot, as a stray write would.
    pub corrupt_image: bool,
    /// `elfcorehdr_scribble=magic|load` (ours, test-only).
    pub scribble: Option<ElfcorehdrScribble>,
}

/// Parses Linux's `elfcorehdr=[SIZE[KMG]@]ADDR[KMG]`: the address.
pub fn parse_elfcorehdr(value: &[u8]) -> Option<u64> {
    let addr = match value.iter().position(|&b| b == b'@') {
        Some(at) => {
            crashkernel::memparse(value.get(..at)?)?;
            value.get(at + 1..)?
        }
        None => value,
    };
    crashkernel::memparse(addr).filter(|&a| a != 0)
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
        } else {
            return self.apply_kdump(p);
        }
        true
    }

    /// The kdump knobs; false if known with a bad value.
    fn apply_kdump(&mut self, p: Param<'_>) -> bool {
        let k = |name: &str| key_eq(p.key, name.as_bytes());
        let kd = &mut self.kdump;
        if k("elfcorehdr") {
            match p.value.and_then(parse_elfcorehdr) {
                Some(v) => kd.elfcorehdr = Some(v),
                None => return false,
            }
        } else if k("kdump_final_action") {
            match p.value.and_then(FinalAction::from_bytes) {
                Some(v) => kd.final_action = Some(v),
                None => return false,
            }
        } else if k("kexec_corrupt_image") {
            match parse_bool(p.value) {
                Some(v) => kd.corrupt_image = v,
                None => return false,
            }
        } else if k("elfcorehdr_scribble") {
            kd.scribble = match p.value {
                Some(b"magic") => Some(ElfcorehdrScribble::Magic),
                Some(b"load") => Some(ElfcorehdrScribble::Load),
                _ => return false,
            };
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

    #[test]
    fn kdump_knobs() {
        let c = BootConfig::parse(
            b"elfcorehdr=0xfffc000 kdump-final-action=halt kexec_corrupt_image \
              elfcorehdr_scribble=load nr_cpus=1",
        );
        assert_eq!(c.invalid, 0);
        assert_eq!(
            c.kdump,
            KdumpKnobs {
                elfcorehdr: Some(0xfff_c000),
                final_action: Some(FinalAction::Halt),
                corrupt_image: true,
                scribble: Some(ElfcorehdrScribble::Load),
            }
        );
        assert_eq!(BootConfig::parse(b"").kdump, KdumpKnobs::default());
        // Linux's SIZE@ADDR form and suffixes.
        assert_eq!(parse_elfcorehdr(b"16K@0xfffc000"), Some(0xfff_c000));
        assert_eq!(parse_elfcorehdr(b"255M"), Some(255 << 20));
        assert_eq!(parse_elfcorehdr(b"0"), None);
        assert_eq!(parse_elfcorehdr(b"x@0x1000"), None);
        let bad = BootConfig::parse(
            b"elfcorehdr= kdump_final_action=kexec elfcorehdr_scribble=all kexec_corrupt_image=2",
        );
        assert_eq!(bad.invalid, 4);
        assert_eq!(bad.kdump, KdumpKnobs::default());
        assert_eq!(
            BootConfig::parse(b"elfcorehdr_scribble=magic")
                .kdump
                .scribble,
            Some(ElfcorehdrScribble::Magic)
        );
    }
}
