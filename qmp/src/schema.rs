//! The QMP subset this VMM speaks: error classes, typed arguments and
//! return values, and the typed requests the VMM receives.
//!
//! Names and shapes follow QEMU's QAPI schema (`qapi/*.json`) so that
//! unmodified QMP clients work. Extensions are marked as such.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// QEMU's error classes (QAPI `QapiErrorClass`). Almost everything is
/// `GenericError`; the others exist for compatibility with older clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorClass {
    /// Every error without a more specific class.
    GenericError,
    /// The command doesn't exist, or isn't available yet (before
    /// `qmp_capabilities`) or any more (a second `qmp_capabilities`).
    CommandNotFound,
    /// A device exists but is not active.
    DeviceNotActive,
    /// A requested device doesn't exist.
    DeviceNotFound,
    /// KVM lacks a capability the command needs.
    #[serde(rename = "KVMMissingCap")]
    KvmMissingCap,
}

impl ErrorClass {
    /// The class as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KvmMissingCap => "KVMMissingCap",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed command, as sent in `{"error": {"class": ..., "desc": ...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct CommandError {
    /// The error class.
    pub class: ErrorClass,
    /// A human-readable description.
    pub desc: String,
}

impl CommandError {
    /// A `GenericError` with `desc`.
    pub fn generic(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// A `CommandNotFound` error with `desc`.
    pub fn command_not_found(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }
}

/// The outcome of one command: its `return` value, or its error.
pub type CommandResult = Result<Value, CommandError>;

/// A QEMU-style version triple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionTriple {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

/// `query-version`'s return value, also the greeting's `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The QEMU version whose QMP this server imitates.
    pub qemu: VersionTriple,
    /// Who really answers: `"vmm <crate version>"`.
    pub package: String,
}

impl Default for VersionInfo {
    /// QEMU 7.2 (the QMP schema these commands follow) and this crate's version.
    fn default() -> Self {
        Self {
            qemu: VersionTriple {
                major: 7,
                minor: 2,
                micro: 0,
            },
            package: format!("vmm {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A VM run state (QAPI `RunState`), the subset a VMM without migration has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Not started yet.
    Prelaunch,
    /// vCPUs are running.
    Running,
    /// Stopped by `stop` or a pause action.
    Paused,
    /// Stopped because the guest panicked (panic action `pause`).
    GuestPanicked,
    /// The guest shut down and the VMM was asked not to exit.
    Shutdown,
    /// A vCPU hit an error KVM or the VMM couldn't handle.
    InternalError,
    /// Stopped by a debugger.
    Debug,
    /// The guest is suspended (ACPI S3).
    Suspended,
}

/// `query-status`'s return value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs are running.
    pub running: bool,
    /// Always false: there is no single-stepping (kept for QEMU 7.2 clients).
    pub singlestep: bool,
    /// The run state.
    pub status: RunState,
}

impl StatusInfo {
    /// The status for `state`, with `running` derived from it.
    pub fn new(status: RunState) -> Self {
        Self {
            running: status == RunState::Running,
            singlestep: false,
            status,
        }
    }
}

/// The emulated target (QAPI `SysEmuTarget`); only x86_64 here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SysEmuTarget {
    /// 64-bit x86.
    X86_64,
}

/// Where a CPU sits in the topology (QAPI `CpuInstanceProperties`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInstanceProperties {
    /// NUMA node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u32>,
    /// Socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<u32>,
    /// Die within the socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub die_id: Option<u32>,
    /// Core within the die.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core_id: Option<u32>,
    /// Thread within the core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<u32>,
}

/// One element of `query-cpus-fast`'s return value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInfoFast {
    /// The vCPU index.
    pub cpu_index: u32,
    /// A QOM-like path naming the vCPU, e.g. `/machine/cpu[0]`.
    pub qom_path: String,
    /// The host thread ID (TID) running this vCPU.
    pub thread_id: i64,
    /// Always x86_64.
    pub target: SysEmuTarget,
    /// Topology.
    pub props: CpuInstanceProperties,
}

/// What to do when the guest panics (`set-action panic=...`, `--on-panic`).
///
/// QEMU's values are `pause`, `shutdown`, `exit-failure` and `none`;
/// `shutdown` is accepted as a synonym of `poweroff`. `poweroff`, `restart`,
/// `coredump-destroy` and `coredump-restart` are extensions covering
/// libvirt's `<on_crash>` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PanicAction {
    /// Record the panic and keep the vCPUs running.
    None,
    /// Stop the vCPUs (state `guest-panicked`), keep the VMM up.
    Pause,
    /// Power off: the VMM exits with status 0.
    #[serde(alias = "shutdown")]
    Poweroff,
    /// The VMM exits with a non-zero status.
    ExitFailure,
    /// Reset the VM.
    Restart,
    /// Write a host-side vmcore, then power off.
    CoredumpDestroy,
    /// Write a host-side vmcore, then reset.
    CoredumpRestart,
}

impl PanicAction {
    /// Every action, for help texts.
    pub const ALL: [PanicAction; 7] = [
        PanicAction::None,
        PanicAction::Pause,
        PanicAction::Poweroff,
        PanicAction::ExitFailure,
        PanicAction::Restart,
        PanicAction::CoredumpDestroy,
        PanicAction::CoredumpRestart,
    ];

    /// The action's name on the wire and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PanicAction::None => "none",
            PanicAction::Pause => "pause",
            PanicAction::Poweroff => "poweroff",
            PanicAction::ExitFailure => "exit-failure",
            PanicAction::Restart => "restart",
            PanicAction::CoredumpDestroy => "coredump-destroy",
            PanicAction::CoredumpRestart => "coredump-restart",
        }
    }
}

impl fmt::Display for PanicAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown panic action name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown panic action '{0}'")]
pub struct UnknownPanicAction(pub String);

impl FromStr for PanicAction {
    type Err = UnknownPanicAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(Value::String(s.to_owned()))
            .map_err(|_| UnknownPanicAction(s.to_owned()))
    }
}

/// `set-action reboot=...` (QAPI `RebootAction`): what a guest reset does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootAction {
    /// Reset the VM.
    Reset,
    /// Treat the reset as a shutdown.
    Shutdown,
}

/// `set-action shutdown=...` (QAPI `ShutdownAction`): what a guest shutdown does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownAction {
    /// Exit the VMM.
    Poweroff,
    /// Stop the vCPUs and keep the VMM up.
    Pause,
}

/// `set-action watchdog=...` (QAPI `WatchdogAction`). Parsed so that the
/// VMM can reject it with a clear message: there is no watchdog device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatchdogAction {
    /// Reset the VM.
    Reset,
    /// Shut the guest down.
    Shutdown,
    /// Power off.
    Poweroff,
    /// Pause.
    Pause,
    /// Stop for a debugger.
    Debug,
    /// Do nothing.
    None,
    /// Inject an NMI.
    InjectNmi,
}

/// `set-action`'s arguments; every member is optional, as in QEMU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAction {
    /// New panic action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic: Option<PanicAction>,
    /// New reboot action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<RebootAction>,
    /// New shutdown action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<ShutdownAction>,
    /// New watchdog action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<WatchdogAction>,
}

/// The vmcore format of `dump-guest-memory` (QAPI `DumpGuestMemoryFormat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpFormat {
    /// ELF core (the default).
    Elf,
    /// kdump-compressed, zlib per page.
    KdumpZlib,
    /// kdump-compressed, lzo per page.
    KdumpLzo,
    /// kdump-compressed, snappy per page.
    KdumpSnappy,
    /// kdump-compressed, zstd per page (extension: makedumpfile's flag 0x20).
    KdumpZstd,
    /// Windows crash dump.
    WinDmp,
}

/// Where `dump-guest-memory` writes, from its `protocol` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DumpProtocol {
    /// `file:PATH`.
    File(PathBuf),
    /// `fd:NAME`, a descriptor passed earlier with `getfd` (not supported
    /// by this server, which has no `getfd`; forwarded so the VMM can say so).
    Fd(String),
}

/// `dump-guest-memory`'s arguments, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpGuestMemory {
    /// Whether to walk the guest page tables to fill `p_vaddr`.
    pub paging: bool,
    /// Destination.
    pub protocol: DumpProtocol,
    /// Run in the background and report with `DUMP_COMPLETED`.
    pub detach: bool,
    /// Only dump `[begin, begin + length)` of guest physical memory.
    pub range: Option<(u64, u64)>,
    /// Output format.
    pub format: DumpFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DumpGuestMemoryWire {
    paging: bool,
    protocol: String,
    #[serde(default)]
    detach: Option<bool>,
    #[serde(default)]
    begin: Option<u64>,
    #[serde(default)]
    length: Option<u64>,
    #[serde(default)]
    format: Option<DumpFormat>,
}

impl TryFrom<DumpGuestMemoryWire> for DumpGuestMemory {
    type Error = CommandError;

    fn try_from(wire: DumpGuestMemoryWire) -> Result<Self, CommandError> {
        let protocol = if let Some(path) = wire.protocol.strip_prefix("file:") {
            if path.is_empty() {
                return Err(CommandError::generic("dump protocol 'file:' needs a path"));
            }
            DumpProtocol::File(PathBuf::from(path))
        } else if let Some(name) = wire.protocol.strip_prefix("fd:") {
            DumpProtocol::Fd(name.to_owned())
        } else {
            return Err(CommandError::generic(format!(
                "unsupported dump protocol: '{}'",
                wire.protocol
            )));
        };
        let range = match (wire.begin, wire.length) {
            (None, None) => None,
            (Some(begin), Some(length)) => Some((begin, length)),
            (Some(_), None) => {
                return Err(CommandError::generic(
                    "parameter 'length' is required with 'begin'",
                ))
            }
            (None, Some(_)) => {
                return Err(CommandError::generic(
                    "parameter 'begin' is required with 'length'",
                ))
            }
        };
        Ok(Self {
            paging: wire.paging,
            protocol,
            detach: wire.detach.unwrap_or(false),
            range,
            format: wire.format.unwrap_or(DumpFormat::Elf),
        })
    }
}

/// The state of a dump (QAPI `DumpStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpStatus {
    /// No dump was started.
    None,
    /// A dump is being written.
    Active,
    /// The last dump finished.
    Completed,
    /// The last dump failed.
    Failed,
}

/// `query-dump`'s return value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpQueryResult {
    /// State of the last dump.
    pub status: DumpStatus,
    /// Bytes written so far.
    pub completed: u64,
    /// Bytes to write in total.
    pub total: u64,
}

/// `x-inject-crash`'s arguments (extension): ask the guest to crash in a
/// given way, like Linux's LKDTM. The VMM decides which types exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XInjectCrash {
    /// The crash type, one of `query-crash-types`' names.
    #[serde(rename = "type")]
    pub crash_type: String,
    /// The vCPU that should crash; the VMM picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
}

/// One element of `query-crash-types`' return value (extension).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashTypeInfo {
    /// The name `x-inject-crash` takes.
    pub name: String,
    /// What the guest does.
    pub description: String,
}

/// A command for the VMM, with only its own arguments. Commands the server
/// answers itself (`qmp_capabilities`, `query-version`, `query-commands`)
/// never become requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QmpRequest {
    /// `query-status`.
    QueryStatus,
    /// `query-cpus-fast`.
    QueryCpusFast,
    /// `stop`: pause every vCPU (emit `STOP`).
    Stop,
    /// `cont`: resume (emit `RESUME`).
    Cont,
    /// `system_reset`: reset the VM (emit `RESET`).
    SystemReset,
    /// `system_powerdown`: ask the guest to power off (emit `POWERDOWN`).
    SystemPowerdown,
    /// `quit`: answer, then exit the VMM (emit `SHUTDOWN`, reason `host-qmp-quit`).
    Quit,
    /// `inject-nmi`: an NMI to every vCPU.
    InjectNmi,
    /// `set-action`.
    SetAction(SetAction),
    /// `dump-guest-memory`.
    DumpGuestMemory(DumpGuestMemory),
    /// `query-dump`.
    QueryDump,
    /// `x-inject-crash` (extension).
    XInjectCrash(XInjectCrash),
    /// `query-crash-types` (extension).
    QueryCrashTypes,
}

impl QmpRequest {
    /// The command's QMP name.
    pub fn name(&self) -> &'static str {
        match self {
            QmpRequest::QueryStatus => "query-status",
            QmpRequest::QueryCpusFast => "query-cpus-fast",
            QmpRequest::Stop => "stop",
            QmpRequest::Cont => "cont",
            QmpRequest::SystemReset => "system_reset",
            QmpRequest::SystemPowerdown => "system_powerdown",
            QmpRequest::Quit => "quit",
            QmpRequest::InjectNmi => "inject-nmi",
            QmpRequest::SetAction(_) => "set-action",
            QmpRequest::DumpGuestMemory(_) => "dump-guest-memory",
            QmpRequest::QueryDump => "query-dump",
            QmpRequest::XInjectCrash(_) => "x-inject-crash",
            QmpRequest::QueryCrashTypes => "query-crash-types",
        }
    }
}

/// `qmp_capabilities`' arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Capabilities {
    #[serde(default)]
    pub enable: Option<Vec<String>>,
}

/// A parsed command: one the server answers, or a request for the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Capabilities(Capabilities),
    QueryVersion,
    QueryCommands,
    Vmm(QmpRequest),
}

/// Every implemented command, as `query-commands` lists them.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "query-status",
    "query-cpus-fast",
    "stop",
    "cont",
    "system_reset",
    "system_powerdown",
    "quit",
    "inject-nmi",
    "set-action",
    "dump-guest-memory",
    "query-dump",
    "x-inject-crash",
    "query-crash-types",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

/// Parses `name` with `arguments` (`None` when the message had none).
pub(crate) fn parse_command(name: &str, arguments: Option<Value>) -> Result<Command, CommandError> {
    let args = arguments.unwrap_or_else(|| Value::Object(Default::default()));
    let no_args = |command: Command| -> Result<Command, CommandError> {
        typed::<NoArguments>(name, args.clone())?;
        Ok(command)
    };
    match name {
        "qmp_capabilities" => Ok(Command::Capabilities(typed(name, args)?)),
        "query-version" => no_args(Command::QueryVersion),
        "query-commands" => no_args(Command::QueryCommands),
        "query-status" => no_args(Command::Vmm(QmpRequest::QueryStatus)),
        "query-cpus-fast" => no_args(Command::Vmm(QmpRequest::QueryCpusFast)),
        "stop" => no_args(Command::Vmm(QmpRequest::Stop)),
        "cont" => no_args(Command::Vmm(QmpRequest::Cont)),
        "system_reset" => no_args(Command::Vmm(QmpRequest::SystemReset)),
        "system_powerdown" => no_args(Command::Vmm(QmpRequest::SystemPowerdown)),
        "quit" => no_args(Command::Vmm(QmpRequest::Quit)),
        "inject-nmi" => no_args(Command::Vmm(QmpRequest::InjectNmi)),
        "set-action" => Ok(Command::Vmm(QmpRequest::SetAction(typed(name, args)?))),
        "dump-guest-memory" => {
            let wire: DumpGuestMemoryWire = typed(name, args)?;
            Ok(Command::Vmm(QmpRequest::DumpGuestMemory(wire.try_into()?)))
        }
        "query-dump" => no_args(Command::Vmm(QmpRequest::QueryDump)),
        "x-inject-crash" => Ok(Command::Vmm(QmpRequest::XInjectCrash(typed(name, args)?))),
        "query-crash-types" => no_args(Command::Vmm(QmpRequest::QueryCrashTypes)),
        _ => Err(CommandError::command_not_found(format!(
            "The command {name} has not been found"
        ))),
    }
}

/// Deserialises `args` into `T`, phrasing the common errors as QEMU does.
fn typed<T: serde::de::DeserializeOwned>(command: &str, args: Value) -> Result<T, CommandError> {
    serde_json::from_value(args).map_err(|e| {
        let msg = e.to_string();
        let field = |prefix: &str| {
            msg.strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned)
        };
        let desc = if let Some(name) = field("unknown field `") {
            format!("Parameter '{name}' is unexpected")
        } else if let Some(name) = field("missing field `") {
            format!("Parameter '{name}' is missing")
        } else {
            format!("Invalid arguments for '{command}': {msg}")
        };
        CommandError::generic(desc)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Minimal valid arguments for each command.
    fn sample_args(name: &str) -> Option<Value> {
        match name {
            "dump-guest-memory" => Some(json!({"paging": false, "protocol": "file:/tmp/x"})),
            "x-inject-crash" => Some(json!({"type": "panic"})),
            _ => None,
        }
    }

    #[test]
    fn every_listed_command_parses_and_nothing_else() {
        for name in COMMANDS {
            let cmd = parse_command(name, sample_args(name)).unwrap();
            if let Command::Vmm(req) = cmd {
                assert_eq!(req.name(), *name);
            }
        }
        for name in ["query-cpus", "Quit", "", "human-monitor-command"] {
            let err = parse_command(name, None).unwrap_err();
            assert_eq!(err.class, ErrorClass::CommandNotFound, "{name}");
        }
    }

    #[test]
    fn argument_errors_are_generic_and_named() {
        let e = parse_command("stop", Some(json!({"now": true}))).unwrap_err();
        assert_eq!(e, CommandError::generic("Parameter 'now' is unexpected"));
        let e = parse_command("x-inject-crash", Some(json!({}))).unwrap_err();
        assert_eq!(e, CommandError::generic("Parameter 'type' is missing"));
        let e = parse_command("set-action", Some(json!({"panic": 3}))).unwrap_err();
        assert_eq!(e.class, ErrorClass::GenericError);
        assert!(
            e.desc.starts_with("Invalid arguments for 'set-action'"),
            "{e}"
        );
        let e = parse_command("set-action", Some(json!({"panic": "explode"}))).unwrap_err();
        assert_eq!(e.class, ErrorClass::GenericError);
    }

    #[test]
    fn set_action_values() {
        let Command::Vmm(QmpRequest::SetAction(a)) = parse_command(
            "set-action",
            Some(json!({"panic": "shutdown", "reboot": "shutdown", "watchdog": "inject-nmi"})),
        )
        .unwrap() else {
            panic!("not set-action")
        };
        assert_eq!(a.panic, Some(PanicAction::Poweroff));
        assert_eq!(a.reboot, Some(RebootAction::Shutdown));
        assert_eq!(a.watchdog, Some(WatchdogAction::InjectNmi));
        for action in PanicAction::ALL {
            assert_eq!(action.as_str().parse::<PanicAction>(), Ok(action));
            assert_eq!(json!(action), json!(action.as_str()));
        }
        assert!("explode".parse::<PanicAction>().is_err());
    }

    #[test]
    fn dump_guest_memory_is_validated() {
        let parse = |v: Value| parse_command("dump-guest-memory", Some(v));
        let Command::Vmm(QmpRequest::DumpGuestMemory(d)) = parse(json!({
            "paging": true, "protocol": "file:/tmp/vmcore", "begin": 4096, "length": 8192,
            "format": "kdump-zstd", "detach": true
        }))
        .unwrap() else {
            panic!("not dump-guest-memory")
        };
        assert_eq!(d.protocol, DumpProtocol::File("/tmp/vmcore".into()));
        assert_eq!(d.range, Some((4096, 8192)));
        assert_eq!(d.format, DumpFormat::KdumpZstd);
        assert!(d.paging && d.detach);
        for bad in [
            json!({"paging": true, "protocol": "tcp:1.2.3.4"}),
            json!({"paging": true, "protocol": "file:"}),
            json!({"paging": true, "protocol": "file:/x", "begin": 1}),
            json!({"paging": true, "protocol": "file:/x", "length": 1}),
            json!({"paging": "yes", "protocol": "file:/x"}),
            json!({"protocol": "file:/x"}),
            json!({"paging": true, "protocol": "file:/x", "format": "tar"}),
        ] {
            assert_eq!(
                parse(bad.clone()).unwrap_err().class,
                ErrorClass::GenericError,
                "{bad}"
            );
        }
    }

    #[test]
    fn status_and_cpu_shapes() {
        assert_eq!(
            json!(StatusInfo::new(RunState::GuestPanicked)),
            json!({"running": false, "singlestep": false, "status": "guest-panicked"})
        );
        let cpu = CpuInfoFast {
            cpu_index: 1,
            qom_path: "/machine/cpu[1]".into(),
            thread_id: 42,
            target: SysEmuTarget::X86_64,
            props: CpuInstanceProperties {
                socket_id: Some(0),
                core_id: Some(1),
                thread_id: Some(0),
                ..Default::default()
            },
        };
        assert_eq!(
            json!(cpu),
            json!({"cpu-index": 1, "qom-path": "/machine/cpu[1]", "thread-id": 42,
                   "target": "x86_64", "props": {"socket-id": 0, "core-id": 1, "thread-id": 0}})
        );
        assert_eq!(json!(ErrorClass::KvmMissingCap), json!("KVMMissingCap"));
    }
}
