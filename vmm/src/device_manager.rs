//! The one place where devices are created and put on the buses.
//!
//! Every port, length and GSI is a named constant from `guest_abi::ports`;
//! the vCPU loop only sees the resulting buses.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::acpi_pm::{Pm1ControlBlock, Pm1EventBlock};
use devices::crash_control::{CpuInterrupt, CrashControl};
use devices::guest_ram::GuestRam;
use devices::kdump::Kdump;
use devices::pm_timer::{HostClock, PmTimer};
use devices::pv_vmx::PvVmx;
use devices::pvpanic::{Pvpanic, PVPANIC_LEN};
use devices::reset::{I8042Reset, ResetControl};
use devices::serial::{EventFdTrigger, SerialDevice};
use devices::vmcoreinfo::Vmcoreinfo;
use devices::VcpuId;
use devices::{Bus, BusError, EventSink};
use guest_abi::ports;
use kvm_bindings::kvm_msi;
use kvm_ioctls::Kvm;
use kvm_ioctls::VmFd;
use std::os::fd::AsRawFd;
use vmm_sys_util::eventfd::EventFd;

/// The i8042 command/status port (only its reset command is emulated).
pub const I8042_COMMAND: u16 = 0x64;
/// The ACPI SCI's GSI (ISA IRQ 9, as the FADT's SCI_INT says).
pub const SCI_GSI: u32 = 9;

/// Errors wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// Creating an EventFd failed.
    #[error("creating an eventfd failed")]
    EventFd(#[source] std::io::Error),
    /// Registering an irqfd with KVM failed.
    #[error("registering irqfd for GSI {0} failed")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    /// Two devices overlap (a bug in this file).
    #[error("placing a device on the bus failed")]
    Bus(#[source] BusError),
    /// The pvpanic event mask is invalid.
    #[error("invalid pvpanic configuration")]
    Pvpanic(#[source] devices::pvpanic::PvpanicError),
    /// The pv_vmx model could not be created.
    #[error("creating the pv_vmx device failed")]
    PvVmx(#[source] devices::pv_vmx::PvVmxError),
    /// The crash-control device could not be created.
    #[error("creating the crash-control device failed")]
    CrashControl(#[source] devices::crash_control::CrashControlError),
    /// Duplicating the VM fd for MSI delivery failed.
    #[error("duplicating the VM fd failed")]
    DupVmFd(#[source] std::io::Error),
    /// Wrapping the duplicated VM fd failed.
    #[error("wrapping the duplicated VM fd failed")]
    VmFd(#[source] kvm_ioctls::Error),
}

/// MSI address base: the local APICs' window (fixed destination mode,
/// physical, no redirection hint).
pub const MSI_ADDRESS_BASE: u32 = 0xFEE0_0000;
/// Where the destination APIC ID goes in an MSI address.
pub const MSI_DEST_SHIFT: u32 = 12;
/// MSI data delivery mode NMI (bits 10:8 = 100b); fixed is 0, edge trigger is 0.
pub const MSI_DELIVERY_NMI: u32 = 0x400;

/// Interrupts vCPUs for the crash-control device with `KVM_SIGNAL_MSI` to
/// their APIC ID (the vCPU index): a fixed, edge-triggered interrupt, or an
/// NMI. The ioctl only queues the interrupt in KVM's APIC: it never blocks
/// on the target vCPU.
pub struct MsiInterrupt {
    vm: VmFd,
}

impl std::fmt::Debug for MsiInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MsiInterrupt")
    }
}

impl MsiInterrupt {
    /// A sender on its own duplicate of `vm`'s fd.
    pub fn new(kvm: &Kvm, vm: &VmFd) -> Result<Self, DeviceManagerError> {
        // SAFETY: F_DUPFD_CLOEXEC on a valid open fd only creates a new descriptor.
        let fd = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(DeviceManagerError::DupVmFd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh duplicate of a KVM VM fd, owned by nothing
        // else; the VmFd takes ownership and closes it.
        let vm = unsafe { kvm.create_vmfd_from_rawfd(fd) }.map_err(DeviceManagerError::VmFd)?;
        Ok(Self { vm })
    }

    /// The MSI message for `apic_id` with `data`.
    pub fn message(apic_id: u32, data: u32) -> kvm_msi {
        kvm_msi {
            address_lo: MSI_ADDRESS_BASE | ((apic_id & 0xff) << MSI_DEST_SHIFT),
            address_hi: 0,
            data,
            ..Default::default()
        }
    }

    fn send(&self, vcpu: VcpuId, data: u32) {
        match self.vm.signal_msi(Self::message(vcpu, data)) {
            Ok(n) if n > 0 => {}
            Ok(_) => log::warn!("MSI {data:#x} to APIC {vcpu} was not delivered (masked?)"),
            Err(e) => log::warn!("KVM_SIGNAL_MSI {data:#x} to APIC {vcpu} failed: {e}"),
        }
    }
}

impl CpuInterrupt for MsiInterrupt {
    fn raise(&self, vcpu: VcpuId, vector: u8) {
        self.send(vcpu, u32::from(vector));
    }

    fn nmi(&self, vcpu: VcpuId) {
        self.send(vcpu, MSI_DELIVERY_NMI);
    }
}

/// What the devices of one VM incarnation are made from.
#[allow(missing_debug_implementations)]
pub struct DeviceSpec<'a> {
    /// KVM (to duplicate the VM fd for MSIs).
    pub kvm: &'a Kvm,
    /// vCPU count (ids = APIC IDs = `0..cpus`).
    pub cpus: u32,
    /// Guest RAM, for devices that read it (pv_vmx).
    pub ram: Arc<dyn GuestRam>,
    /// pvpanic's supported events; 0 = no pvpanic device.
    pub pvpanic_events: u8,
}

/// A writer shared by every incarnation of a VM (it survives restarts).
#[derive(Clone)]
pub struct SharedWriter(pub Arc<Mutex<Box<dyn Write + Send>>>);

impl std::fmt::Debug for SharedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedWriter")
    }
}

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = w.write(buf)?;
        // The guest console is interactive: never hold bytes back. The
        // bytes are accepted either way, so a flush error must not make the
        // caller write them again (vCPU kicks can interrupt it).
        loop {
            match w.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("serial output flush failed: {e}");
                    break;
                }
                Ok(()) => break,
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// The serial device as the VMM holds it.
pub type Serial = SerialDevice<EventFdTrigger>;

/// The wired buses and the devices the VMM talks to directly.
#[derive(Debug)]
pub struct Devices {
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

/// Creates the devices and registers them: COM1 (irqfd on its GSI), the
/// ACPI PM1a event and control blocks, the PM timer, the reset control
/// register, the i8042 reset command, the pvpanic device (unless its mask
/// is 0), and the paravirtual pv_vmx, crash-control, vmcoreinfo and kdump
/// devices at their `guest_abi::ports`.
pub fn create_devices(
    vm: &VmFd,
    spec: DeviceSpec<'_>,
    events: Arc<dyn EventSink>,
    serial_out: SharedWriter,
) -> Result<Devices, DeviceManagerError> {
    let pvpanic_events = spec.pvpanic_events;
    let mut pio = Bus::new();
    let mut add = |dev: devices::SharedDevice, port: u16, len: u16| {
        pio.insert(dev, u64::from(port), u64::from(len))
            .map_err(DeviceManagerError::Bus)
    };

    let com1_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
    vm.register_irqfd(&com1_irq, ports::COM1_IRQ)
        .map_err(|e| DeviceManagerError::Irqfd(ports::COM1_IRQ, e))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger::new(com1_irq),
        Box::new(serial_out),
    )));
    add(serial.clone(), ports::COM1, ports::COM1_LEN)?;

    let sci = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
    vm.register_irqfd(&sci, SCI_GSI)
        .map_err(|e| DeviceManagerError::Irqfd(SCI_GSI, e))?;
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
        PvVmx::new(spec.cpus, spec.ram).map_err(DeviceManagerError::PvVmx)?,
    ));
    add(pv_vmx.clone(), ports::PV_VMX, ports::PV_VMX_LEN)?;
    let interrupt = Arc::new(MsiInterrupt::new(spec.kvm, vm)?);
    let crash_control = Arc::new(Mutex::new(
        CrashControl::new(spec.cpus, interrupt, events.clone())
            .map_err(DeviceManagerError::CrashControl)?,
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
        let pvpanic = Pvpanic::new(pvpanic_events, events).map_err(DeviceManagerError::Pvpanic)?;
        add(
            Arc::new(Mutex::new(pvpanic)),
            ports::PVPANIC,
            PVPANIC_LEN as u16,
        )?;
    }

    Ok(Devices {
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

    #[test]
    fn msi_messages_target_the_apic_id() {
        let m = MsiInterrupt::message(3, 0xf3);
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xFEE0_3000, 0, 0xf3));
        let m = MsiInterrupt::message(0, MSI_DELIVERY_NMI);
        assert_eq!((m.address_lo, m.data), (0xFEE0_0000, 0x400));
        assert_eq!(MsiInterrupt::message(254, 0).address_lo, 0xFEEF_E000);
    }
}
