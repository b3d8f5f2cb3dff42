//! Where host-side vmcores meet the control plane: QMP `dump-guest-memory`
//! and `query-dump`, and the `--on-panic coredump-destroy|coredump-restart`
//! actions, all run on the VMM's main loop and call the dump code in
//! [`crate::dump`] through [`Vmm`].

use std::sync::mpsc::channel;

use qmp::{
    CommandError, DumpFormat, DumpGuestMemory, DumpProtocol, DumpQueryResult, DumpStatus,
    PanicAction, QmpResult,
};

use crate::dump::{self, DumpRequest, DumpState};
use crate::runtime::Vmm;

/// QMP `dump-guest-memory`, run on the VMM's main loop. A blocking dump
/// holds the loop until the file is written (as QEMU holds its monitor);
/// `detach` writes on a worker thread and reports `DUMP_COMPLETED`.
pub fn dump_guest_memory(vmm: &mut Vmm, args: DumpGuestMemory) -> QmpResult<()> {
    let path = match args.protocol {
        DumpProtocol::File(path) => path,
        DumpProtocol::Fd(name) => {
            return Err(CommandError::generic(format!(
                "protocol fd:{name} is not supported (this VMM has no getfd); use file:PATH"
            )))
        }
    };
    if args.format != DumpFormat::Elf {
        return Err(CommandError::generic(
            "only format 'elf' is supported; kdump-compressed formats are not",
        ));
    }
    if args.range.is_some() {
        return Err(CommandError::generic(
            "partial dumps (begin/length) are not supported; dump the whole guest",
        ));
    }
    let request = DumpRequest {
        path,
        paging: args.paging,
        detach: args.detach,
    };
    let result = if args.detach {
        let (tx, rx) = channel();
        vmm.start_dump(request, tx);
        // start_dump answers a detached request before returning.
        rx.try_recv()
            .unwrap_or_else(|_| Err(dump::DumpError::Worker("no answer".into())))
            .map(|_| ())
    } else {
        vmm.dump_blocking(request, true).map(|_| ())
    };
    result.map_err(|e| CommandError::generic(dump::error_chain(&e)))
}

/// QMP `query-dump`, run on the VMM's main loop.
pub fn query_dump(vmm: &mut Vmm) -> QmpResult<DumpQueryResult> {
    Ok(dump_query_result(&vmm.handle().query_dump()))
}

/// The QMP shape of a dump's state and progress.
pub fn dump_query_result(status: &dump::DumpStatus) -> DumpQueryResult {
    DumpQueryResult {
        status: match status.status {
            DumpState::None => DumpStatus::None,
            DumpState::Active => DumpStatus::Active,
            DumpState::Completed => DumpStatus::Completed,
            DumpState::Failed => DumpStatus::Failed,
        },
        completed: status.completed,
        total: status.total,
    }
}

/// Writes the host-side vmcore for a coredump panic action (vCPUs are
/// paused when this runs) into the dump directory, unless kdump (or its
/// fallback) already wrote this crash's vmcore: one crash, one file (see
/// [`crate::kdump`]).
pub fn write_panic_vmcore(vmm: &mut Vmm, action: PanicAction) -> Result<(), String> {
    if let Some(path) = crate::kdump::crash_vmcore(vmm) {
        eprintln!(
            "vmm: {action}: this crash's vmcore is already {}; not writing another",
            path.display()
        );
        return Ok(());
    }
    let (path, stats) = vmm.dump_to_dir().map_err(|e| dump::error_chain(&e))?;
    eprintln!(
        "vmm: {action}: vmcore written to {} ({} bytes of guest RAM)",
        path.display(),
        stats.ram_bytes
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_state_maps_to_qmp_status() {
        let status = dump::DumpStatus {
            status: DumpState::Active,
            completed: 3,
            total: 9,
        };
        let q = dump_query_result(&status);
        assert_eq!((q.status, q.completed, q.total), (DumpStatus::Active, 3, 9));
    }
}
