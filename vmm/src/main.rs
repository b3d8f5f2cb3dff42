//! The `vmm` binary: see `vmm --help`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use vmm::cli::{Cli, Command};
use vmm::dump::error_chain;
use vmm::{exit_code, Vmm};

fn fail(code: i32, e: &dyn std::error::Error) -> ExitCode {
    eprintln!("vmm: error: {}", error_chain(e));
    ExitCode::from(code as u8)
}

fn main() -> ExitCode {
    // Before any thread exists, so that every thread inherits the mask and
    // SIGINT/SIGTERM reach only the main loop's signalfd.
    if let Err(e) = vmm::block_exit_signals() {
        return fail(exit_code::VMM_ERROR, &e);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0; usage errors are
            // one line on stderr.
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(exit_code::BAD_INPUT as u8);
            }
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("vmm: error: {}", first.trim_start_matches("error: "));
            return ExitCode::from(exit_code::BAD_INPUT as u8);
        }
    };

    match cli.command {
        Command::Ctl(args) => ExitCode::from(vmm::ctl::run(&args, &mut std::io::stdout()) as u8),
        Command::PrintKernel { output } => match std::fs::write(&output, vmm::GUEST_KERNEL) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmm: error: cannot write {}: {e}", output.display());
                ExitCode::from(exit_code::BAD_INPUT as u8)
            }
        },
        Command::Scenario(cmd) => {
            let code = vmm::scenario::run(&cmd, &mut std::io::stdout(), &mut std::io::stderr());
            ExitCode::from(code as u8)
        }
        Command::Vmcore(cmd) => {
            let code = vmm::vmcore_cmd::run(&cmd, &mut std::io::stdout(), &mut std::io::stderr());
            ExitCode::from(code as u8)
        }
        Command::Run(args) => {
            if !args.dump_dir.is_dir() {
                eprintln!(
                    "vmm: error: --dump-dir {} is not a directory",
                    args.dump_dir.display()
                );
                return ExitCode::from(exit_code::BAD_INPUT as u8);
            }
            let config = match args.to_config() {
                Ok(c) => c,
                Err(e) => return fail(exit_code::BAD_INPUT, &e),
            };
            if let Err(e) = vmm::seccomp::configure(args.seccomp) {
                return fail(exit_code::VMM_ERROR, &e);
            }
            let console = matches!(config.serial, vmm::SerialOutput::Stdio);
            let mut vmm = match Vmm::new(config) {
                Ok(v) => v,
                Err(e) => return fail(e.exit_code(), &e),
            };
            if let Err(e) = vmm.handle_signals() {
                return fail(e.exit_code(), &e);
            }
            if console {
                vmm.forward_stdin();
            }
            vmm.set_dump_dir(args.dump_dir.clone());
            vmm.set_kdump_timeout(std::time::Duration::from_secs(args.kdump_timeout.into()));
            vmm.show_dump_progress(std::io::stderr().is_terminal());
            match vmm.run() {
                Ok(reason) => {
                    if reason != vmm::ExitReason::Poweroff {
                        eprintln!("vmm: {reason}");
                    }
                    ExitCode::from(reason.exit_code() as u8)
                }
                Err(e) => fail(e.exit_code(), &e),
            }
        }
    }
}
