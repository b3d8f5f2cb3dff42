//! `vmm vmcore info|check FILE`: read a vmcore this VMM (or QEMU) wrote.
//!
//! Exit codes: `info` 0, or 2 on unreadable input; `check` 0 when every
//! check holds, 1 with the failures listed otherwise, 2 on unreadable
//! input (not ELF, truncated, malformed headers or notes). Errors are one
//! line on stderr; malformed input never panics (the reader is defensive).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use vmcore::{CheckOptions, Symbols, Vmcore};

/// Exit status: every check holds.
pub const EXIT_OK: i32 = 0;
/// Exit status: the dump parsed, but some checks failed.
pub const EXIT_CHECK_FAILED: i32 = 1;
/// Exit status: the file (or the kernel ELF) could not be read or parsed.
pub const EXIT_BAD_INPUT: i32 = 2;

const EXIT_CODES: &str = "\
Exit codes:
  0  info printed / every check holds
  1  (check) the dump is readable but some checks fail; they are listed
  2  the vmcore or kernel ELF cannot be read or is malformed";

/// `vmm vmcore` subcommands.
#[derive(Debug, Subcommand)]
#[command(after_help = EXIT_CODES)]
pub enum VmcoreCommand {
    /// Registers per vCPU (RIP symbolised), panic message, kmsg, pvpanic
    /// events and VMX state.
    #[command(after_help = EXIT_CODES)]
    Info {
        /// The vmcore.
        file: PathBuf,
        /// The guest kernel ELF for symbols [default: the embedded guest].
        #[arg(long, value_name = "ELF")]
        kernel: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check structure, host and guest-saved registers and VMX state of
    /// every vCPU; print a per-vCPU verdict table.
    #[command(after_help = EXIT_CODES)]
    Check {
        /// The vmcore.
        file: PathBuf,
        /// Print the report as JSON (vmcore::CheckReport's documented schema).
        #[arg(long)]
        json: bool,
    },
}

/// Errors of these commands (all mean exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum VmcoreCmdError {
    /// The vmcore could not be opened or parsed.
    #[error("{path}")]
    Read {
        /// The vmcore.
        path: PathBuf,
        /// Why.
        #[source]
        source: vmcore::ReadError,
    },
    /// The kernel ELF could not be read.
    #[error("cannot read kernel {path}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel ELF could not be parsed.
    #[error("bad kernel ELF")]
    Symbols(#[source] vmcore::InfoError),
}

/// Runs one subcommand, writing to `out` (stdout) and `err` (stderr);
/// returns the exit status.
pub fn run(cmd: &VmcoreCommand, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let result = match cmd {
        VmcoreCommand::Info { file, kernel, json } => info(file, kernel.as_deref(), *json, out),
        VmcoreCommand::Check { file, json } => check(file, *json, out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "vmm: error: {}", crate::dump::error_chain(&e));
            EXIT_BAD_INPUT
        }
    }
}

fn open(path: &Path) -> Result<Vmcore, VmcoreCmdError> {
    Vmcore::open(path).map_err(|source| VmcoreCmdError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn symbols(kernel: Option<&Path>) -> Result<Symbols, VmcoreCmdError> {
    let bytes = match kernel {
        Some(path) => std::fs::read(path).map_err(|source| VmcoreCmdError::Kernel {
            path: path.to_path_buf(),
            source,
        })?,
        None => crate::GUEST_KERNEL.to_vec(),
    };
    Symbols::from_elf(&bytes).map_err(VmcoreCmdError::Symbols)
}

fn info(
    file: &Path,
    kernel: Option<&Path>,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32, VmcoreCmdError> {
    let core = open(file)?;
    let symbols = symbols(kernel)?;
    let info = vmcore::info(&core, Some(&symbols));
    let text = if json {
        serde_json::to_string_pretty(&info).expect("plain data serialises")
    } else {
        info.render()
    };
    let _ = writeln!(out, "{}", text.trim_end());
    Ok(EXIT_OK)
}

fn check(file: &Path, json: bool, out: &mut dyn Write) -> Result<i32, VmcoreCmdError> {
    let core = open(file)?;
    let report = vmcore::check(&core, &CheckOptions::default());
    let text = if json {
        report.to_json()
    } else {
        report.render()
    };
    let _ = writeln!(out, "{}", text.trim_end());
    Ok(if report.ok {
        EXIT_OK
    } else {
        EXIT_CHECK_FAILED
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(cmd: VmcoreCommand) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(&cmd, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmcore-cmd-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn bad_input_is_one_line_and_status_2() {
        let not_elf = temp_file("not-elf", b"hello, not an ELF file");
        // A truncated ELF header: magic, ELFCLASS64, little-endian, then EOF.
        let truncated = temp_file("truncated", b"\x7fELF\x02\x01\x01\x00");
        for file in [
            not_elf.clone(),
            truncated.clone(),
            PathBuf::from("/nonexistent/vmcore"),
        ] {
            for cmd in [
                VmcoreCommand::Check {
                    file: file.clone(),
                    json: false,
                },
                VmcoreCommand::Info {
                    file: file.clone(),
                    kernel: None,
                    json: true,
                },
            ] {
                let (code, out, err) = run_on(cmd);
                assert_eq!(code, EXIT_BAD_INPUT, "{file:?}: {err}");
                assert!(out.is_empty(), "{out}");
                assert_eq!(err.lines().count(), 1, "{err}");
                assert!(err.starts_with("vmm: error: "), "{err}");
                assert!(err.contains(&file.display().to_string()), "{err}");
            }
        }
        let (code, _, err) = run_on(VmcoreCommand::Check {
            file: not_elf.clone(),
            json: false,
        });
        assert_eq!(code, EXIT_BAD_INPUT);
        assert!(err.contains("not an ELF file"), "{err}");
        std::fs::remove_file(not_elf).unwrap();
        std::fs::remove_file(truncated).unwrap();
    }

    #[test]
    fn a_bad_kernel_elf_is_bad_input() {
        let (code, _, err) = run_on(VmcoreCommand::Info {
            file: PathBuf::from("/nonexistent/vmcore"),
            kernel: Some(PathBuf::from("/nonexistent/kernel")),
            json: false,
        });
        assert_eq!(code, EXIT_BAD_INPUT);
        assert!(err.contains("vmcore"), "{err}");
    }

    #[test]
    fn the_embedded_guest_has_symbols() {
        let syms = symbols(None).unwrap();
        let elf = std::fs::read(crate::GUEST_KERNEL_PATH).unwrap();
        assert_eq!(elf, crate::GUEST_KERNEL);
        // The PVH entry point is somewhere in a named function.
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
        assert!(syms.lookup(entry).is_some(), "entry {entry:#x}");
    }
}
