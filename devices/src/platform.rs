//! The guest-facing platform: every device at its `guest_abi::ports`
//! address on one port-I/O bus, in one function.
//!
//! The VMM's device manager supplies what needs KVM (irqfd-registered
//! EventFds for COM1 and the SCI, an MSI sender for crash-control) and calls
//! [`wire_platform`]; the `device_bus` fuzz target calls the same function
//! with plain EventFds and a recording interrupt sender, so it fuzzes the
//! bus exactly as the guest sees it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use guest_abi::ports;
use vmm_sys_util::eventfd::EventFd;

use crate::acpi_pm::{Pm1ControlBlock, Pm1EventBlock};
use crate::crash_control::{CpuInterrupt, CrashControl, CrashControlError};
use crate::guest_ram::GuestRam;
use crate::kdump::Kdump;
use crate::pm_timer::{HostClock, PmTimer};
use crate::pv_vmx::{PvVmx, PvVmxError};
use crate::pvpanic::{Pvpanic, PvpanicError, PVPANIC_LEN};
use crate::reset::{I8042Reset, ResetControl};
use crate::serial::{EventFdTrigger, SerialDevice};
use crate::vmcoreinfo::Vmcoreinfo;
use crate::{Bus, BusError, EventSink, SharedDevice};

pub use guest_abi::ports::I8042_COMMAND;

/// Errors wiring the platform.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// Two devices overlap (a bug in this file).
    #[error("placing a device on the bus failed")]
    Bus(#[source] BusError),
    /// The pvpanic event mask is invalid.
    #[error("invalid pvpanic configuration")]
    Pvpanic(#[source] PvpanicError),
    /// The pv_vmx model could not be created.
    #[error("creating the pv_vmx device failed")]
    PvVmx(#[source] PvVmxError),
    /// The crash-control device could not be created.
    #[error("creating the crash-control device failed")]
    CrashControl(#[source] CrashControlError),
}

/// The serial device as the platform holds it.
pub type Serial = SerialDevice<EventFdTrigger>;

/// What one VM incarnation's devices are made from.
#[allow(missing_debug_implementations)]
pub struct PlatformSpec {
    /// vCPU count (ids = APIC IDs = `0..cpus`).
    pub cpus: u32,
    /// Guest RAM, for the devices that read or write it (pv_vmx).
    pub ram: Arc<dyn GuestRam>,
    /// pvpanic's supported events; 0 = no pvpanic device.
    pub pvpanic_events: u8,
    /// COM1's interrupt line (the VMM registers it as an irqfd on GSI 4).
    pub com1_irq: EventFd,
    /// The ACPI SCI line (an irqfd on the FADT's SCI GSI in the VMM).
    pub sci: EventFd,
    /// How crash-control interrupts vCPUs.
    pub interrupt: Arc<dyn CpuInterrupt>,
    /// Where devices report VM-level events.
    pub events: Arc<dyn EventSink>,
    /// Where COM1's transmitted bytes go.
    pub serial_out: Box<dyn Write + Send>,
}

/// The wired buses and the devices the VMM talks to directly.
#[derive(Debug)]
pub struct Platform {
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices (none yet: the APICs are in KVM).
    pub mmio: Bus,
    /// COM1, for host input.
    pub serial: Arc<Mutex<Serial>>,
    /// The PM1a event block, for the power button.
    pub pm1_events: Arc<Mutex<Pm1EventBlock<EventFdTrigger>>>,
    /// The VMX model, for its per-vCPU state.
    pub pv_vmx: Arc<Mutex<PvVmx>>,
    /// Crash injection.
    pub crash_control: Arc<Mutex<CrashControl>>,
    /// The guest's VMCOREINFO registration.
    pub vmcoreinfo: Arc<Mutex<Vmcoreinfo>>,
    /// kdump handover state.
    pub kdump: Arc<Mutex<Kdump>>,
}

/// Creates the devices and registers them: COM1, the ACPI PM1a event and
/// control blocks, the PM timer, the reset control register, the i8042
/// reset command, the pvpanic device (unless its mask is 0), and the
/// paravirtual pv_vmx, crash-control, vmcoreinfo and kdump devices.
pub fn wire_platform(spec: PlatformSpec) -> Result<Platform, PlatformError> {
    let PlatformSpec {
        cpus,
        ram,
        pvpanic_events,
        com1_irq,
        sci,
        interrupt,
        events,
        serial_out,
    } = spec;
    let mut pio = Bus::new();
    let mut add = |dev: SharedDevice, port: u16, len: u16| {
        pio.insert(dev, u64::from(port), u64::from(len))
            .map_err(PlatformError::Bus)
    };

    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger::new(com1_irq),
        serial_out,
    )));
    add(serial.clone(), ports::COM1, ports::COM1_LEN)?;
    let pm1_events = Arc::new(Mutex::new(Pm1EventBlock::new(EventFdTrigger::new(sci))));
    add(pm1_events.clone(), ports::PM1A_EVT_BLK, ports::PM1A_EVT_LEN)?;
    add(
        Arc::new(Mutex::new(Pm1ControlBlock::new(events.clone()))),
        ports::PM1A_CNT_BLK,
        ports::PM1A_CNT_LEN,
    )?;
    add(
        Arc::new(Mutex::new(PmTimer::new(HostClock::default()))),
        ports::PM_TMR_BLK,
        ports::PM_TMR_LEN,
    )?;
    add(
        Arc::new(Mutex::new(ResetControl::new(events.clone()))),
        ports::RESET_CONTROL,
        1,
    )?;
    add(
        Arc::new(Mutex::new(I8042Reset::new(events.clone()))),
        I8042_COMMAND,
        1,
    )?;
    let pv_vmx = Arc::new(Mutex::new(
        PvVmx::new(cpus, ram).map_err(PlatformError::PvVmx)?,
    ));
    add(pv_vmx.clone(), ports::PV_VMX, ports::PV_VMX_LEN)?;
    let crash_control = Arc::new(Mutex::new(
        CrashControl::new(cpus, interrupt, events.clone()).map_err(PlatformError::CrashControl)?,
    ));
    add(
        crash_control.clone(),
        ports::CRASH_CONTROL,
        ports::CRASH_CONTROL_LEN,
    )?;
    let vmcoreinfo = Arc::new(Mutex::new(Vmcoreinfo::new(events.clone())));
    add(vmcoreinfo.clone(), ports::VMCOREINFO, ports::VMCOREINFO_LEN)?;
    let kdump = Arc::new(Mutex::new(Kdump::new(events.clone())));
    add(kdump.clone(), ports::KDUMP, ports::KDUMP_LEN)?;
    if pvpanic_events != 0 {
        let pvpanic = Pvpanic::new(pvpanic_events, events).map_err(PlatformError::Pvpanic)?;
        add(
            Arc::new(Mutex::new(pvpanic)),
            ports::PVPANIC,
            PVPANIC_LEN as u16,
        )?;
    }

    Ok(Platform {
        pio,
        mmio: Bus::new(),
        serial,
        pm1_events,
        pv_vmx,
        crash_control,
        vmcoreinfo,
        kdump,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_ram::VecRam;
    use crate::test_utils::Recorder;
    use crate::VcpuId;

    struct NoInterrupts;
    impl CpuInterrupt for NoInterrupts {
        fn raise(&self, _: VcpuId, _: u8) {}
        fn nmi(&self, _: VcpuId) {}
    }

    fn platform(pvpanic_events: u8) -> Platform {
        wire_platform(PlatformSpec {
            cpus: 2,
            ram: Arc::new(VecRam::new(0, 0x1000)),
            pvpanic_events,
            com1_irq: EventFd::new(0).unwrap(),
            sci: EventFd::new(0).unwrap(),
            interrupt: Arc::new(NoInterrupts),
            events: Arc::new(Recorder::default()),
            serial_out: Box::new(std::io::sink()),
        })
        .unwrap()
    }

    #[test]
    fn every_device_answers_at_its_port() {
        let p = platform(0x7);
        let mut byte = [0u8; 1];
        let mut word = [0u8; 4];
        for port in [
            ports::COM1,
            ports::PVPANIC,
            ports::RESET_CONTROL,
            I8042_COMMAND,
        ] {
            assert!(p.pio.read(0, u64::from(port), &mut byte), "{port:#x}");
        }
        for port in [
            ports::PM_TMR_BLK,
            ports::PV_VMX,
            ports::CRASH_CONTROL,
            ports::VMCOREINFO,
            ports::KDUMP,
        ] {
            assert!(p.pio.read(0, u64::from(port), &mut word), "{port:#x}");
        }
        assert!(!platform(0)
            .pio
            .read(0, u64::from(ports::PVPANIC), &mut byte));
    }
}
