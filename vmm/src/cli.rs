//! The `vmm` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{parse_size, Kernel, OnReboot, SerialOutput, VmConfig, DEFAULT_MEMORY};

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
     the vCPU, reason, RIP, RSP and CR3 are printed";

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
    /// `--on-panic coredump-*` actions), each named
    /// vmcore-TIME-PID-N.elf (TIME in Unix seconds) [default: the current
    /// directory].
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dump_dir: PathBuf,
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
