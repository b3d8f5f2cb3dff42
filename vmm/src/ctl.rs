//! `vmm ctl`: a one-shot QMP client for a running VMM's `--api-socket`.

use std::io::Write;

use qmp::{ClientError, QmpClient};

use crate::cli::CtlArgs;

/// Runs `vmm ctl` and returns the process exit status: 0 when the command
/// returned (or the event stream ended), 1 on a QMP error or a socket
/// problem. The reply (or each event) is printed as one JSON line on
/// `out`; errors go to stderr.
pub fn run(args: &CtlArgs, out: &mut dyn Write) -> i32 {
    let mut client = match QmpClient::connect(&args.api_socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "vmm: error: cannot connect to {}: {}",
                args.api_socket.display(),
                crate::dump::error_chain(&e)
            );
            return 1;
        }
    };
    if args.command == "events" {
        for event in client.events() {
            match event {
                Ok(event) => {
                    let line = serde_json::to_string(&event).unwrap_or_default();
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        return 1;
                    }
                }
                Err(ClientError::Closed) => return 0,
                Err(e) => {
                    eprintln!("vmm: error: {}", crate::dump::error_chain(&e));
                    return 1;
                }
            }
        }
        return 0;
    }
    match client.execute(&args.command, args.arguments.clone()) {
        Ok(value) => {
            let _ = writeln!(out, "{value}");
            0
        }
        Err(ClientError::Command(e)) => {
            eprintln!("vmm: error: {}: {}", e.class.as_str(), e.desc);
            1
        }
        Err(e) => {
            eprintln!("vmm: error: {}", crate::dump::error_chain(&e));
            1
        }
    }
}
