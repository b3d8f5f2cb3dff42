//! The `vmm` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{
    parse_size, Kernel, OnReboot, SerialOutput, VmConfig, DEFAULT_MEMORY, DEFAULT_PANIC_ACTION,
};
use devices::pvpanic::PVPANIC_KNOWN_EVENTS;
use qmp::PanicAction;

/// Errors turning flags into a configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// `--serial` is not stdio, null or file:PATH.
    #[error("invalid --serial {0:?} (expected stdio, null or file:PATH)")]
    Serial(String),
}

const EXIT_CODES: &str = "\
Exit codes:
  0  the guest powered off, rebooted with --on-reboot exit, or the VMM was
     stopped (SIGINT/SIGTERM stop the VM cleanly and also exit 0)
  1  the VMM failed while running
  2  bad input (flags, kernel file, memory size, /dev/kvm)
  3  the guest faulted (triple fault, KVM internal error, failed VM entry);
     the vCPU, reason, RIP, RSP and CR3 are printed
  4  the guest panicked under --on-panic exit-failure
`quit` over QMP and a guest panic under --on-panic poweroff exit 0.";

const CTL_HELP: &str = "\
Examples:
  vmm ctl --api-socket /tmp/vm.sock query-status
  vmm ctl --api-socket /tmp/vm.sock set-action '{\"panic\": \"pause\"}'
  vmm ctl --api-socket /tmp/vm.sock events

Exit codes: 0 the command returned (its `return` value is printed as JSON);
1 the command failed (the QMP error is printed on stderr) or the socket
could not be used; 2 bad arguments. `events` prints one JSON event per line
until the VMM closes the socket, then exits 0.";

/// A small KVM VMM for the panic/kdump laboratory.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest kernel and run it until it powers off.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Read a vmcore: `info` (registers, panic, kmsg, pvpanic, VMX) or
    /// `check` (every vCPU left what a crash dump needs).
    #[command(subcommand)]
    Vmcore(crate::vmcore_cmd::VmcoreCommand),
    /// Run one QMP command on a running VMM's --api-socket and print the reply.
    #[command(after_help = CTL_HELP)]
    Ctl(CtlArgs),
    /// Run the panic-ordering scenario matrix (resources/scenarios/*.toml).
    #[command(subcommand)]
    Scenario(crate::scenario::ScenarioCommand),
    /// Write the embedded guest kernel ELF to a file (for gdb, readelf...).
    PrintKernel {
        /// Where to write it.
        #[arg(long, short)]
        output: PathBuf,
    },
}

/// What a guest reset does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnRebootArg {
    /// Boot the guest again.
    Restart,
    /// Exit with status 0.
    Exit,
}

/// Flags of `vmm run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// PVH kernel ELF [default: the guest kernel embedded in this binary].
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Number of vCPUs (1 up to KVM's maximum).
    #[arg(long, default_value_t = 1, value_parser = parse_cpus)]
    pub cpus: u32,
    /// Guest RAM, with an optional K/M/G/T suffix (binary units).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_memory)]
    pub memory: u64,
    /// Guest kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// COM1 output: stdio, null, or file:PATH.
    #[arg(long, value_name = "WHERE", default_value = "stdio")]
    pub serial: String,
    /// What a guest reset does.
    #[arg(long, value_enum, default_value_t = OnRebootArg::Restart)]
    pub on_reboot: OnRebootArg,
    /// Directory for guest memory dumps made by the VMM itself (the
    /// `--on-panic coredump-*` actions, kdump and its fallback), each named
    /// vmcore-TIME-PID-N.elf (TIME in Unix seconds; kdump's end in
    /// -kdump.elf) [default: the current directory].
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dump_dir: PathBuf,
    /// Events the pvpanic device (port 0x505, ACPI QEMU0001) supports: bits
    /// 0x1 PANICKED, 0x2 CRASH_LOADED, 0x4 SHUTDOWN; 0 = no device.
    #[arg(long, value_name = "MASK", default_value = "0x7", value_parser = parse_pvpanic_mask)]
    pub pvpanic_events: u8,
    /// What a guest panic (pvpanic PANICKED) does: none (record, keep
    /// running), pause (stop the vCPUs, state guest-panicked, VMM stays
    /// up), poweroff (exit 0; `shutdown` is a synonym), exit-failure (exit
    /// 4), restart (reset the guest), coredump-destroy and coredump-restart
    /// (write a vmcore into --dump-dir, then exit 0 or reset). The default, poweroff,
    /// is QEMU's default (-action panic=shutdown) and libvirt's
    /// (<on_crash>destroy): a panicked guest never lingers unnoticed; the
    /// GUEST_PANICKED event and a stderr line say why the VM ended. Use
    /// pause to inspect a panicked guest over QMP.
    #[arg(long, value_name = "ACTION", default_value_t = DEFAULT_PANIC_ACTION)]
    pub on_panic: PanicAction,
    /// Serve QMP (the QEMU Machine Protocol) on this Unix socket, mode 0600.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Seconds kdump may take from KEXEC_HANDOVER (or pvpanic
    /// CRASH_LOADED) to VMCORE_READY before the VMM writes a host-side dump
    /// into --dump-dir instead (KDUMP_FALLBACK); 0 disables the watchdog.
    #[arg(long, value_name = "SECONDS",
          default_value_t = crate::kdump::DEFAULT_KDUMP_TIMEOUT.as_secs() as u32)]
    pub kdump_timeout: u32,
    /// Per-thread seccomp filters: true (a forbidden syscall ends the VMM
    /// with status 159), false, or log (allowed, logged by the kernel).
    #[arg(long, value_name = "true|false|log", default_value = "true")]
    pub seccomp: crate::seccomp::SeccompLevel,
}

/// Flags of `vmm ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The VMM's QMP socket (its `vmm run --api-socket`).
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// A QMP command (query-status, stop, cont, quit, inject-nmi,
    /// set-action...), or `events` to print events as they arrive.
    pub command: String,
    /// The command's arguments, as a JSON object.
    #[arg(value_name = "JSON-ARGS", value_parser = parse_json_object)]
    pub arguments: Option<serde_json::Value>,
}

fn parse_json_object(s: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err("the arguments must be a JSON object".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// Parses a pvpanic event mask: decimal or 0x-prefixed hex, known bits only.
pub fn parse_pvpanic_mask(s: &str) -> Result<u8, String> {
    let t = s.trim();
    let value = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => t.parse::<u8>(),
    }
    .map_err(|_| format!("{s:?} is not an event mask (e.g. 0x7)"))?;
    if value & !PVPANIC_KNOWN_EVENTS != 0 {
        return Err(format!(
            "{s:?} has unknown bits (known: {PVPANIC_KNOWN_EVENTS:#x})"
        ));
    }
    Ok(value)
}

fn parse_cpus(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a vCPU count")),
    }
}

fn parse_memory(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// Parses `--serial`.
pub fn parse_serial(s: &str) -> Result<SerialOutput, CliError> {
    match s {
        "stdio" => Ok(SerialOutput::Stdio),
        "null" => Ok(SerialOutput::Null),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialOutput::File(path.into())),
            _ => Err(CliError::Serial(s.to_string())),
        },
    }
}

impl RunArgs {
    /// The library configuration these flags describe.
    pub fn to_config(&self) -> Result<VmConfig, CliError> {
        Ok(VmConfig {
            kernel: self.kernel.clone().map_or(Kernel::Embedded, Kernel::Path),
            cpus: self.cpus,
            memory: self.memory,
            cmdline: self.cmdline.clone(),
            serial: parse_serial(&self.serial)?,
            on_reboot: match self.on_reboot {
                OnRebootArg::Restart => OnReboot::Restart,
                OnRebootArg::Exit => OnReboot::Exit,
            },
            pvpanic_events: self.pvpanic_events,
            on_panic: self.on_panic,
            api_socket: self.api_socket.clone(),
        })
    }
}

// Keep the documented default and the flag's default in step.
const _: () = assert!(DEFAULT_MEMORY == 256 << 20);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmm").chain(args.iter().copied()))
    }

    fn run_config(args: &[&str]) -> VmConfig {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        match parse(&full).unwrap().command {
            Command::Run(r) => r.to_config().unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run_config(&[]);
        assert_eq!(c.kernel, Kernel::Embedded);
        assert_eq!((c.cpus, c.memory), (1, 256 << 20));
        assert!(matches!(c.serial, SerialOutput::Stdio));
        assert_eq!(c.on_reboot, OnReboot::Restart);
        assert_eq!(c.pvpanic_events, 0x7);
        assert_eq!(c.on_panic, PanicAction::Poweroff);
        assert_eq!(c.api_socket, None);
    }

    #[test]
    fn panic_flags() {
        let c = run_config(&["--pvpanic-events", "0", "--on-panic", "pause"]);
        assert_eq!((c.pvpanic_events, c.on_panic), (0, PanicAction::Pause));
        let c = run_config(&["--pvpanic-events", "0x3", "--on-panic", "shutdown"]);
        assert_eq!((c.pvpanic_events, c.on_panic), (3, PanicAction::Poweroff));
        for action in PanicAction::ALL {
            assert_eq!(
                run_config(&["--on-panic", action.as_str()]).on_panic,
                action
            );
        }
        let c = run_config(&["--api-socket", "/tmp/s"]);
        assert_eq!(
            c.api_socket.as_deref(),
            Some(std::path::Path::new("/tmp/s"))
        );
        for bad in [
            &["run", "--pvpanic-events", "8"][..],
            &["run", "--pvpanic-events", "0x10"],
            &["run", "--pvpanic-events", "seven"],
            &["run", "--pvpanic-events", "256"],
            &["run", "--on-panic", "explode"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ctl_arguments() {
        match parse(&[
            "ctl",
            "--api-socket",
            "/s",
            "set-action",
            r#"{"panic":"none"}"#,
        ])
        .unwrap()
        .command
        {
            Command::Ctl(c) => {
                assert_eq!(c.command, "set-action");
                assert_eq!(c.arguments, Some(serde_json::json!({"panic": "none"})));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse(&["ctl", "--api-socket", "/s", "stop", "[1]"]).is_err());
        assert!(parse(&["ctl", "--api-socket", "/s", "stop", "{"]).is_err());
        assert!(parse(&["ctl", "query-status"]).is_err());
    }

    #[test]
    fn every_flag() {
        let c = run_config(&[
            "--kernel",
            "/k",
            "--cpus",
            "8",
            "--memory",
            "2G",
            "--cmdline",
            "nr_cpus=2",
            "--serial",
            "file:/tmp/x",
            "--on-reboot",
            "exit",
        ]);
        assert_eq!(c.kernel, Kernel::Path("/k".into()));
        assert_eq!((c.cpus, c.memory), (8, 2 << 30));
        assert_eq!(c.cmdline, "nr_cpus=2");
        assert!(matches!(c.serial, SerialOutput::File(ref p) if p.to_str() == Some("/tmp/x")));
        assert_eq!(c.on_reboot, OnReboot::Exit);
    }

    #[test]
    fn bad_flags_are_errors() {
        for args in [
            &["run", "--cpus", "0"][..],
            &["run", "--cpus", "-1"],
            &["run", "--cpus", "many"],
            &["run", "--memory", "12X"],
            &["run", "--memory", ""],
            &["run", "--memory", "1.5G"],
            &["run", "--on-reboot", "sometimes"],
            &["run", "--bogus"],
            &["print-kernel"],
            &[],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = parse(&["run", "--cpus", "0"]).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = parse(&["run", "--memory", "lots"]).unwrap_err().to_string();
        assert!(e.contains("invalid size"), "{e}");
    }

    #[test]
    fn kdump_timeout_flag() {
        let timeout = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Command::Run(r)) => Ok(r.kdump_timeout),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(timeout(&["run"]), Ok(10));
        assert_eq!(timeout(&["run", "--kdump-timeout", "0"]), Ok(0));
        assert_eq!(timeout(&["run", "--kdump-timeout", "120"]), Ok(120));
        for bad in ["-1", "1.5", "ten", "", "4294967296"] {
            assert!(
                timeout(&["run", "--kdump-timeout", bad]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn dump_dir_defaults_to_the_current_directory() {
        let dir = |args: &[&str]| match parse(args).unwrap().command {
            Command::Run(r) => r.dump_dir,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(dir(&["run"]), PathBuf::from("."));
        assert_eq!(dir(&["run", "--dump-dir", "/d"]), PathBuf::from("/d"));
    }

    #[test]
    fn vmcore_subcommands_parse() {
        for args in [
            &["vmcore", "check", "f"][..],
            &["vmcore", "check", "f", "--json"],
            &["vmcore", "info", "f", "--kernel", "k", "--json"],
        ] {
            assert!(parse(args).is_ok(), "{args:?}");
        }
        for args in [
            &["vmcore"][..],
            &["vmcore", "check"],
            &["vmcore", "fix", "f"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn serial_destinations() {
        assert!(matches!(parse_serial("null"), Ok(SerialOutput::Null)));
        assert!(matches!(parse_serial("stdio"), Ok(SerialOutput::Stdio)));
        for bad in ["", "file:", "tcp:1234", "STDIO"] {
            assert_eq!(parse_serial(bad).err(), Some(CliError::Serial(bad.into())));
        }
    }
}
