//! What the VMM does when a vCPU stops on a guest fault (a triple fault,
//! a KVM internal error, a failed entry).
//!
//! The faulted vCPU parks (its registers stay readable) and the main loop:
//! 1. logs the fault and emits the QMP event `GUEST_FAULT {cpu, reason,
//!    rip}`;
//! 2. records it for this VM's dumps (a `VMMFAULT` note, see
//!    [`vmcore::GuestFault`]), so `vmm vmcore check` and `info` name it;
//! 3. applies the panic action, because a guest that faults in the middle
//!    of a panic needs the same evidence a panicked one does:
//!    - `pause`: the VM stays, paused, in `guest-panicked` (QMP answers,
//!      `dump-guest-memory` works, `cont` is refused, `system_reset`
//!      rebuilds it);
//!    - `coredump-destroy` / `coredump-restart`: a host-side vmcore is
//!      written into `--dump-dir` first, then the VM ends (exit code 3) or
//!      is rebuilt;
//!    - any other action: the VM ends with exit code 3, as before.

use log::warn;
use qmp::PanicAction;
use serde_json::json;

use crate::control::RunState;
use crate::runtime::{Error, ExitReason, Vmm};
use crate::vcpu::VcpuFault;

/// Handles `fault` on the main loop; `Some` ends the run.
pub fn on_guest_fault(vmm: &mut Vmm, fault: VcpuFault) -> Result<Option<ExitReason>, Error> {
    eprintln!(
        "vmm: guest fault on vcpu {}: {} at RIP={:#x}",
        fault.vcpu, fault.reason, fault.rip
    );
    vmm.emit_raw(
        "GUEST_FAULT",
        json!({"cpu": fault.vcpu, "reason": fault.reason, "rip": fault.rip}),
    );
    vmm.vm_mut().record_fault(vmcore::GuestFault {
        vcpu: fault.vcpu,
        reason: fault.reason.clone(),
        rip: fault.rip,
        rsp: fault.rsp,
        cr3: fault.cr3,
    });
    let exit = ExitReason::GuestFault {
        vcpu: fault.vcpu,
        reason: fault.reason,
        rip: fault.rip,
        rsp: fault.rsp,
        cr3: fault.cr3,
    };
    let action = vmm.on_panic;
    match action {
        PanicAction::Pause => {
            if let Err(e) = vmm.pause_vm(RunState::GuestPanicked) {
                warn!("pausing the faulted guest failed: {e}");
            }
            Ok(None)
        }
        PanicAction::CoredumpDestroy | PanicAction::CoredumpRestart => {
            if let Err(e) = vmm.pause_vm(RunState::GuestPanicked) {
                warn!("pausing for the vmcore failed: {e}");
            }
            if let Err(e) = crate::vmcore_hooks::write_panic_vmcore(vmm, action) {
                eprintln!("vmm: error: no vmcore written: {e}");
            }
            if action == PanicAction::CoredumpRestart {
                vmm.reset(true, qmp::ShutdownCause::GuestPanic)
            } else {
                Ok(Some(exit))
            }
        }
        _ => Ok(Some(exit)),
    }
}
