//! QMP commands, run on the VMM's main loop ([`qmp::QmpBackend`] over
//! [`Vmm`]).
//!
//! The socket is served by the `qmp` crate on its own threads; its request
//! EventFd is an event-manager subscriber (`event_loop::QmpSubscriber`)
//! that moves each request to the mailbox, and [`handle`] runs it here with
//! the whole VMM at hand. `qmp_capabilities`, `query-version` and
//! `query-commands` are answered by the server itself.
//!
//! Events (QEMU's names and data unless marked as ours):
//! - `STOP`, `RESUME`: vCPUs parked/running again (`stop`/`cont`, the
//!   `pause` panic action, [`crate::VmmHandle::pause`]/`resume`).
//! - `RESET` {guest, reason}: the VM was rebuilt (`guest-reset`,
//!   `host-qmp-system-reset`, `guest-panic` for `--on-panic restart`).
//! - `SHUTDOWN` {guest, reason}: the VMM is about to exit (`guest-shutdown`,
//!   `guest-reset` under `--on-reboot exit`, `host-qmp-quit`,
//!   `host-signal`, `guest-panic`, `host-error`).
//! - `POWERDOWN`: `system_powerdown` pressed the ACPI power button.
//! - `GUEST_PANICKED` {action: run|pause|poweroff|reset}, `GUEST_CRASHLOADED`
//!   {action: run}, `GUEST_PVSHUTDOWN`: pvpanic events.
//! - `NMI` {cpus: [..]} (ours): `inject-nmi` sent an NMI to these vCPUs.
//! - `KDUMP_COMPLETED` {path, source: "kdump", cpu, guest_notes} and
//!   `KDUMP_FALLBACK` {reason, cause, detail, path, error?} (ours): the
//!   kdump vmcore was written, or a host-side dump replaced it
//!   ([`crate::kdump`]).

use qmp::{
    CommandError, CpuInfoFast, CpuInstanceProperties, CrashTypeInfo, DumpGuestMemory,
    DumpQueryResult, PendingRequest, QmpBackend, QmpResult, RebootAction, SetAction,
    ShutdownAction, StatusInfo, SysEmuTarget, XInjectCrash,
};

use crate::config::OnReboot;
use crate::control::RunState;
use crate::runtime::{Error, ExitReason, Vmm};

/// The VMM as a QMP backend, for one request.
struct Backend<'a> {
    vmm: &'a mut Vmm,
    /// What the main loop does after the reply: go on, exit, or fail.
    outcome: Result<Option<ExitReason>, Error>,
}

/// Runs one QMP request, replies, and tells the main loop whether to end.
/// The reply is queued before the VMM exits, and flushed when `Vmm::run`
/// drops the server.
pub(crate) fn handle(vmm: &mut Vmm, pending: PendingRequest) -> Result<Option<ExitReason>, Error> {
    let PendingRequest { request, responder } = pending;
    log::debug!("qmp: {}", request.name());
    let mut backend = Backend {
        vmm,
        outcome: Ok(None),
    };
    let reply = request.dispatch(&mut backend);
    responder.respond(reply);
    backend.outcome
}

fn failed(e: impl std::fmt::Display) -> CommandError {
    CommandError::generic(e.to_string())
}

impl Backend<'_> {
    fn set_outcome(&mut self, outcome: Result<Option<ExitReason>, Error>) -> QmpResult<()> {
        let result = match &outcome {
            Ok(_) => Ok(()),
            Err(e) => Err(failed(e)),
        };
        self.outcome = outcome;
        result
    }
}

impl QmpBackend for Backend<'_> {
    fn query_status(&mut self) -> QmpResult<StatusInfo> {
        Ok(StatusInfo::new(match self.vmm.state() {
            RunState::Running => qmp::RunState::Running,
            RunState::Paused => qmp::RunState::Paused,
            RunState::GuestPanicked => qmp::RunState::GuestPanicked,
        }))
    }

    fn query_cpus_fast(&mut self) -> QmpResult<Vec<CpuInfoFast>> {
        Ok(self
            .vmm
            .vm()
            .vcpus()
            .iter()
            .map(|c| CpuInfoFast {
                cpu_index: c.id(),
                qom_path: format!("/machine/cpu[{}]", c.id()),
                thread_id: i64::try_from(c.thread_id()).unwrap_or(0),
                target: SysEmuTarget::X86_64,
                props: CpuInstanceProperties {
                    node_id: None,
                    socket_id: Some(0),
                    die_id: Some(0),
                    core_id: Some(c.id()),
                    thread_id: Some(0),
                },
            })
            .collect())
    }

    fn stop(&mut self) -> QmpResult<()> {
        self.vmm.pause_vm(RunState::Paused).map_err(failed)
    }

    fn cont(&mut self) -> QmpResult<()> {
        self.vmm.resume_vm().map_err(failed)
    }

    fn system_reset(&mut self) -> QmpResult<()> {
        let outcome = self
            .vmm
            .reset(false, qmp::ShutdownCause::HostQmpSystemReset);
        self.set_outcome(outcome)
    }

    /// Presses the ACPI power button and emits `POWERDOWN`. What happens
    /// next is the guest's business: this guest kernel has no SCI handler
    /// (it never enables PWRBTN_EN), so it keeps running, as a guest without
    /// ACPI does under QEMU.
    fn system_powerdown(&mut self) -> QmpResult<()> {
        if !self.vmm.vm().press_power_button() {
            log::info!("qmp: system_powerdown: the guest has not enabled the power button event");
        }
        self.vmm.emit(qmp::QmpEvent::Powerdown);
        Ok(())
    }

    fn quit(&mut self) -> QmpResult<()> {
        self.outcome = Ok(Some(ExitReason::Quit));
        Ok(())
    }

    fn inject_nmi(&mut self) -> QmpResult<()> {
        self.vmm.inject_nmi();
        Ok(())
    }

    /// `panic` and `reboot` are applied; `shutdown: pause` and `watchdog`
    /// are refused. Nothing changes unless everything is accepted.
    fn set_action(&mut self, args: SetAction) -> QmpResult<()> {
        if args.shutdown == Some(ShutdownAction::Pause) {
            return Err(CommandError::generic(
                "shutdown action 'pause' is not supported: a guest shutdown ends the VMM",
            ));
        }
        if args.watchdog.is_some() {
            return Err(CommandError::generic(
                "watchdog actions are not supported: there is no watchdog device",
            ));
        }
        if let Some(action) = args.panic {
            self.vmm.set_panic_action(action);
        }
        match args.reboot {
            Some(RebootAction::Reset) => self.vmm.set_on_reboot(OnReboot::Restart),
            Some(RebootAction::Shutdown) => self.vmm.set_on_reboot(OnReboot::Exit),
            None => {}
        }
        Ok(())
    }

    fn dump_guest_memory(&mut self, args: DumpGuestMemory) -> QmpResult<()> {
        crate::vmcore_hooks::dump_guest_memory(self.vmm, args)
    }

    fn query_dump(&mut self) -> QmpResult<DumpQueryResult> {
        crate::vmcore_hooks::query_dump(self.vmm)
    }

    fn x_inject_crash(&mut self, args: XInjectCrash) -> QmpResult<()> {
        self.vmm
            .inject_crash(&args.crash_type, args.cpu)
            .map_err(failed)
    }

    fn query_crash_types(&mut self) -> QmpResult<Vec<CrashTypeInfo>> {
        Ok(self.vmm.crash_types())
    }
}
