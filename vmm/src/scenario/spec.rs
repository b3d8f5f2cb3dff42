//! Scenario files: one TOML file per scenario, every key checked.
//!
//! ```toml
//! name = "kawai-fix"
//! description = "what the row teaches"
//! cpus = 4                      # default 4
//! memory = "256M"               # default 256M
//! on_panic = "none"             # the VMM's --on-panic action; default none
//! pvpanic_events = 7            # the device's event mask; default 0x7
//! kdump_timeout = 3             # the VMM's --kdump-timeout (s); default the VMM's
//!
//! [cmdline]                     # the guest's panic knobs (all optional)
//! panic_policy = "linux"        # linux | linux-2016 | proposal-2022
//! crash_kexec_post_notifiers = true
//! crash_kexec_post_hypervisor = false
//! crashkernel = "64M"
//! panic_print = 0x40
//! kmsg_dump = true
//! pvpanic_crash_loaded = true
//! vmx = true
//! panic = 0
//! extra = "any other parameters, verbatim"
//!
//! [crash]
//! type = "PANIC"                # a crash-control type name (any case)
//! cpu = 2                       # default 0; not allowed with PANIC_ALL
//! at_boot = false               # true: crash_after_boot= instead of the device
//!
//! [expect]                      # optional; every column may be stated
//! pvpanic = "CRASH_LOADED<kdump"
//! vmcore = "kdump"              # kdump | host | none
//! saved = "4/4"                 # CPUs with a guest crash note
//! vmx_off = "4/4"               # CPUs with VMX off and the VMCS flushed
//! kmsg = true                   # the kmsg dumper's pstore region holds text
//! max_panic_to_vmcore_ms = 5000
//! ```
//!
//! Unknown keys, a bad crash type, a CPU beyond `cpus` and malformed
//! `n/N` counts are errors naming the file (and, from the TOML parser, the
//! key and its line).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ScenarioError;
use crate::config::parse_size;

/// The policies the guest knows (`panic_policy=`).
pub const POLICIES: [&str; 3] = ["linux", "linux-2016", "proposal-2022"];

/// Where a row's vmcore came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Written by the VMM from the capture kernel's elfcorehdr (the file
    /// carries a `VMMKDUMP` note).
    Kdump,
    /// Written by the VMM from the host side (a panic action, the kdump
    /// watchdog's fallback): no `VMMKDUMP` note.
    Host,
    /// The VMM wrote no vmcore.
    None,
}

impl Source {
    /// The column text.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Kdump => "kdump",
            Source::Host => "host",
            Source::None => "none",
        }
    }
}

/// A CPU count out of a total, written `n/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    /// How many.
    pub n: u32,
    /// Out of.
    pub of: u32,
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.n, self.of)
    }
}

impl std::str::FromStr for Count {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a count n/N");
        let (n, of) = s.trim().split_once('/').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let of: u32 = of.trim().parse().map_err(|_| bad())?;
        if n > of {
            return Err(format!("{s:?}: {n} is more than {of}"));
        }
        Ok(Count { n, of })
    }
}

impl Serialize for Count {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The guest command line, knob by knob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cmdline {
    /// `panic_policy=`.
    pub panic_policy: Option<String>,
    /// `crash_kexec_post_notifiers`.
    #[serde(default)]
    pub crash_kexec_post_notifiers: bool,
    /// `crash_kexec_post_hypervisor` (proposal-2022).
    #[serde(default)]
    pub crash_kexec_post_hypervisor: bool,
    /// `crashkernel=SIZE[@OFFSET]`.
    pub crashkernel: Option<String>,
    /// `panic_print=BITS`.
    pub panic_print: Option<u32>,
    /// `kmsg_dump=on`.
    #[serde(default)]
    pub kmsg_dump: bool,
    /// `pvpanic_crash_loaded=on|off`.
    pub pvpanic_crash_loaded: Option<bool>,
    /// `vmx=on|off`.
    pub vmx: Option<bool>,
    /// `panic=N`.
    pub panic: Option<i64>,
    /// Anything else, appended verbatim.
    pub extra: Option<String>,
}

/// The crash to inject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    /// A crash-control type name (`PANIC`, `HARDLOCKUP`...), any case.
    #[serde(rename = "type")]
    pub kind: String,
    /// The CPU that runs it (default 0).
    pub cpu: Option<u32>,
    /// Inject with `crash_after_boot=` on the command line instead of the
    /// crash-control device after boot.
    #[serde(default)]
    pub at_boot: bool,
}

/// The expected outcome, column by column; absent columns are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The pvpanic column, verbatim (`CRASH_LOADED<kdump`, `-`...).
    pub pvpanic: Option<String>,
    /// The vmcore source.
    pub vmcore: Option<Source>,
    /// CPUs with a saved guest crash note.
    pub saved: Option<Count>,
    /// CPUs with VMX off and the VMCS flushed.
    pub vmx_off: Option<Count>,
    /// Whether the kmsg dump reached the pstore region.
    pub kmsg: Option<bool>,
    /// Upper bound on the time from the panic to the vmcore.
    pub max_panic_to_vmcore_ms: Option<u64>,
}

fn default_cpus() -> u32 {
    4
}

fn default_memory() -> String {
    "256M".into()
}

fn default_pvpanic_events() -> u8 {
    devices::pvpanic::PVPANIC_DEFAULT_EVENTS
}

/// One scenario file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Row name.
    pub name: String,
    /// What the row teaches.
    pub description: String,
    /// vCPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Guest RAM (`256M`).
    #[serde(default = "default_memory")]
    pub memory: String,
    /// The VMM's `--on-panic` action.
    #[serde(default = "default_on_panic")]
    pub on_panic: qmp::PanicAction,
    /// The pvpanic device's supported events.
    #[serde(default = "default_pvpanic_events")]
    pub pvpanic_events: u8,
    /// The VMM's kdump watchdog in seconds (`--kdump-timeout`; 0 off);
    /// the VMM's default when absent.
    pub kdump_timeout: Option<u64>,
    /// The guest's command-line knobs.
    #[serde(default)]
    pub cmdline: Cmdline,
    /// The crash.
    pub crash: Crash,
    /// The expected row.
    pub expect: Option<Expect>,
}

fn default_on_panic() -> qmp::PanicAction {
    qmp::PanicAction::None
}

/// A scenario read from a file, with where it came from.
#[derive(Clone, Debug)]
pub struct ScenarioFile {
    /// The file.
    pub path: PathBuf,
    /// Its contents.
    pub scenario: Scenario,
}

impl Scenario {
    /// Parses and validates `text`; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |what: String| ScenarioError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        if s.name.trim().is_empty() || s.name.contains(char::is_whitespace) {
            return Err(invalid(format!(
                "name {:?} must be one word, not empty",
                s.name
            )));
        }
        if s.cpus == 0 {
            return Err(invalid("cpus must be at least 1".into()));
        }
        parse_size(&s.memory).map_err(|e| invalid(format!("memory: {e}")))?;
        if let Some(p) = &s.cmdline.panic_policy {
            if !POLICIES.contains(&p.as_str()) {
                return Err(invalid(format!(
                    "cmdline.panic_policy {p:?} is not one of {}",
                    POLICIES.join(", ")
                )));
            }
        }
        let Some(info) = devices::crash_control::crash_types()
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&s.crash.kind))
        else {
            let names: Vec<&str> = devices::crash_control::crash_types()
                .iter()
                .map(|t| t.name)
                .collect();
            return Err(invalid(format!(
                "crash.type {:?} is not one of {}",
                s.crash.kind,
                names.join(", ")
            )));
        };
        if let Some(cpu) = s.crash.cpu {
            if info.name == "PANIC_ALL" {
                return Err(invalid("crash.cpu: PANIC_ALL runs on every CPU".into()));
            }
            if cpu >= s.cpus {
                return Err(invalid(format!(
                    "crash.cpu {cpu} is not below cpus = {}",
                    s.cpus
                )));
            }
        }
        if let Some(e) = &s.expect {
            for (key, count) in [("saved", e.saved), ("vmx_off", e.vmx_off)] {
                if let Some(c) = count {
                    if c.of != s.cpus {
                        return Err(invalid(format!(
                            "expect.{key} = \"{c}\" but the scenario has {} CPUs",
                            s.cpus
                        )));
                    }
                }
            }
        }
        Ok(s)
    }

    /// Reads and validates the scenario file at `path`.
    pub fn load(path: &Path) -> Result<ScenarioFile, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ScenarioFile {
            path: path.to_path_buf(),
            scenario: Self::parse(path, &text)?,
        })
    }

    /// The crash type's canonical name.
    pub fn crash_name(&self) -> &'static str {
        devices::crash_control::crash_types()
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&self.crash.kind))
            .map(|t| t.name)
            .expect("validated by Scenario::parse")
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        parse_size(&self.memory).expect("validated by Scenario::parse")
    }

    /// The guest command line the knobs describe.
    pub fn guest_cmdline(&self) -> String {
        let c = &self.cmdline;
        let mut args: Vec<String> = Vec::new();
        if let Some(p) = &c.panic_policy {
            args.push(format!("panic_policy={p}"));
        }
        if c.crash_kexec_post_notifiers {
            args.push("crash_kexec_post_notifiers".into());
        }
        if c.crash_kexec_post_hypervisor {
            args.push("crash_kexec_post_hypervisor".into());
        }
        if let Some(ck) = &c.crashkernel {
            args.push(format!("crashkernel={ck}"));
        }
        if let Some(bits) = c.panic_print {
            args.push(format!("panic_print={bits:#x}"));
        }
        if c.kmsg_dump {
            args.push("kmsg_dump=on".into());
        }
        let on_off = |b: bool| if b { "on" } else { "off" };
        if let Some(v) = c.pvpanic_crash_loaded {
            args.push(format!("pvpanic_crash_loaded={}", on_off(v)));
        }
        if let Some(v) = c.vmx {
            args.push(format!("vmx={}", on_off(v)));
        }
        if let Some(n) = c.panic {
            args.push(format!("panic={n}"));
        }
        if self.crash.at_boot {
            let at = match self.crash.cpu {
                Some(cpu) => format!("@{cpu}"),
                None if self.crash_name() == "PANIC_ALL" => String::new(),
                None => "@0".into(),
            };
            args.push(format!("crash_after_boot={}{at}", self.crash_name()));
        }
        if let Some(extra) = &c.extra {
            args.push(extra.trim().to_string());
        }
        args.join(" ")
    }
}

/// The scenario files in `dir`: every `*.toml`, sorted by file name.
pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>, ScenarioError> {
    let read = |source| ScenarioError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "kawai-fix"
description = "post-notifiers with the NMI shootdown: every CPU saved"
on_panic = "none"
[cmdline]
panic_policy = "linux"
crash_kexec_post_notifiers = true
crashkernel = "64M"
panic_print = 0x40
kmsg_dump = true
[crash]
type = "panic"
cpu = 2
[expect]
pvpanic = "CRASH_LOADED<kdump"
vmcore = "kdump"
saved = "4/4"
vmx_off = "4/4"
kmsg = true
"#;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(Path::new("x/bad.toml"), text)
    }

    #[test]
    fn a_good_file() {
        let s = parse(GOOD).unwrap();
        assert_eq!((s.cpus, s.memory_bytes()), (4, 256 << 20));
        assert_eq!(s.on_panic, qmp::PanicAction::None);
        assert_eq!(s.crash_name(), "PANIC");
        assert_eq!(
            s.guest_cmdline(),
            "panic_policy=linux crash_kexec_post_notifiers crashkernel=64M panic_print=0x40 kmsg_dump=on"
        );
        let e = s.expect.unwrap();
        assert_eq!(e.saved, Some(Count { n: 4, of: 4 }));
        assert_eq!(e.vmcore, Some(Source::Kdump));
    }

    #[test]
    fn at_boot_goes_on_the_command_line() {
        let s = parse(&GOOD.replace("cpu = 2", "cpu = 2\nat_boot = true")).unwrap();
        assert!(s.guest_cmdline().ends_with("crash_after_boot=PANIC@2"));
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        for (text, key) in [
            (GOOD.replace("cpu = 2", "cpu = 2\ncpuu = 3"), "cpuu"),
            (GOOD.replace("kmsg = true", "kmesg = true"), "kmesg"),
            (
                GOOD.replace("kmsg_dump = true", "kmsg_dumper = true"),
                "kmsg_dumper",
            ),
            (format!("colour = 1\n{GOOD}"), "colour"),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains("x/bad.toml"), "{e}");
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn bad_values() {
        for (text, needle) in [
            (
                GOOD.replace("\"panic\"", "\"explode\""),
                "crash.type \"explode\"",
            ),
            (GOOD.replace("cpu = 2", "cpu = 4"), "crash.cpu 4"),
            (GOOD.replace("\"linux\"", "\"bsd\""), "panic_policy \"bsd\""),
            (
                GOOD.replace("\"4/4\"\nvmx", "\"5/4\"\nvmx"),
                "5 is more than 4",
            ),
            (GOOD.replace("\"4/4\"\nvmx", "\"all\"\nvmx"), "not a count"),
            (GOOD.replace("\"4/4\"\nvmx", "\"2/2\"\nvmx"), "expect.saved"),
            (GOOD.replace("\"kdump\"", "\"disk\""), "disk"),
            (
                GOOD.replace("on_panic = \"none\"", "on_panic = \"explode\""),
                "explode",
            ),
            (format!("memory = \"lots\"\n{GOOD}"), "memory"),
            (
                GOOD.replace("name = \"kawai-fix\"", "name = \"two words\""),
                "one word",
            ),
            (
                "name = \"x\"\ndescription = \"d\"".to_string(),
                "missing field `crash`",
            ),
            ("not toml at all [".to_string(), "x/bad.toml"),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle:?} not in {e}");
            assert!(e.contains("x/bad.toml"), "{e}");
        }
        let all = GOOD.replace("type = \"panic\"\ncpu = 2", "type = \"PANIC_ALL\"\ncpu = 1");
        assert!(parse(&all).unwrap_err().to_string().contains("PANIC_ALL"));
    }

    #[test]
    fn counts_round_trip() {
        let c: Count = " 3 / 4 ".parse().unwrap();
        assert_eq!(c.to_string(), "3/4");
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"3/4\"");
    }

    #[test]
    fn files_are_sorted_toml_only() {
        let dir = std::env::temp_dir().join(format!("vmm-scenario-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["b.toml", "a.toml", "notes.txt"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let names: Vec<String> = files_in(&dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.toml", "b.toml"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
