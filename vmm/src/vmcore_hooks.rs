//! THE place where host-side vmcores meet the control plane.
//!
//! Until the vmcore writer (`dump.rs`, `VmmHandle::dump_guest_memory`) is
//! merged, everything here refuses clearly, and nothing is faked:
//! - `--on-panic coredump-destroy|coredump-restart` is refused at startup
//!   ([`check_panic_action`], called by `Vmm::new`) and by QMP `set-action`
//!   (same function, called by the QMP backend);
//! - QMP `dump-guest-memory` and `query-dump` answer a GenericError
//!   ([`dump_guest_memory`], [`query_dump`]);
//! - [`write_panic_vmcore`] is what the coredump panic actions would run
//!   before destroying or restarting the guest.
//!
//! To connect the writer: make [`check_panic_action`] accept the coredump
//! actions, and implement the three functions below with the dump code.

use qmp::{CommandError, DumpGuestMemory, DumpQueryResult, PanicAction, QmpResult};

use crate::runtime::Vmm;

/// Why the vmcore features are refused for now.
pub const VMCORE_WRITER_MISSING: &str = "requires the vmcore writer; not wired yet";

/// Whether `action` can be used as the panic action: the coredump actions
/// need the vmcore writer.
pub fn check_panic_action(action: PanicAction) -> Result<(), String> {
    match action {
        PanicAction::CoredumpDestroy | PanicAction::CoredumpRestart => {
            Err(format!("panic action {action} {VMCORE_WRITER_MISSING}"))
        }
        _ => Ok(()),
    }
}

/// QMP `dump-guest-memory`, run on the VMM's main loop.
pub fn dump_guest_memory(_vmm: &mut Vmm, _args: DumpGuestMemory) -> QmpResult<()> {
    Err(CommandError::generic(format!(
        "dump-guest-memory {VMCORE_WRITER_MISSING}"
    )))
}

/// QMP `query-dump`, run on the VMM's main loop.
pub fn query_dump(_vmm: &mut Vmm) -> QmpResult<DumpQueryResult> {
    Err(CommandError::generic(format!(
        "query-dump {VMCORE_WRITER_MISSING}"
    )))
}

/// Writes the host-side vmcore for a coredump panic action (vCPUs are
/// paused when this runs). Unreachable while [`check_panic_action`]
/// refuses those actions.
pub fn write_panic_vmcore(_vmm: &mut Vmm, action: PanicAction) -> Result<(), String> {
    Err(format!("panic action {action} {VMCORE_WRITER_MISSING}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coredump_actions_are_refused_with_the_reason() {
        for action in PanicAction::ALL {
            let r = check_panic_action(action);
            match action {
                PanicAction::CoredumpDestroy | PanicAction::CoredumpRestart => {
                    let e = r.unwrap_err();
                    assert!(
                        e.contains(action.as_str()) && e.contains("vmcore writer"),
                        "{e}"
                    );
                }
                _ => assert!(r.is_ok(), "{action}"),
            }
        }
    }
}
