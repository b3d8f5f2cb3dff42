//! Connects the guest platform to KVM: the irqfds of COM1 and the SCI and
//! the MSI sender crash-control uses. The devices themselves are created
//! and put on the buses in one place, `devices::platform::wire_platform`
//! (which the `device_bus` fuzz target also runs).
//!
//! Every port, length and GSI is a named constant from `guest_abi::ports`;
//! the vCPU loop only sees the resulting buses.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::crash_control::CpuInterrupt;
use devices::guest_ram::GuestRam;
use devices::platform::{wire_platform, PlatformError, PlatformSpec};
use devices::EventSink;
use devices::VcpuId;
use guest_abi::ports;
use kvm_bindings::kvm_msi;
use kvm_ioctls::Kvm;
use kvm_ioctls::VmFd;
use std::os::fd::AsRawFd;
use vmm_sys_util::eventfd::EventFd;

pub use devices::platform::I8042_COMMAND;
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
    /// A device could not be created or placed.
    #[error("wiring the devices failed")]
    Platform(#[source] PlatformError),
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
pub use devices::platform::Serial;

/// The wired buses and the devices the VMM talks to directly.
pub use devices::platform::Platform as Devices;

/// Registers COM1's and the SCI's interrupt lines as irqfds and an MSI
/// sender for crash-control, then wires every device at its
/// `guest_abi::ports` address ([`devices::platform::wire_platform`], which
/// the `device_bus` fuzz target also uses).
pub fn create_devices(
    vm: &VmFd,
    spec: DeviceSpec<'_>,
    events: Arc<dyn EventSink>,
    serial_out: SharedWriter,
) -> Result<Devices, DeviceManagerError> {
    let com1_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
    vm.register_irqfd(&com1_irq, ports::COM1_IRQ)
        .map_err(|e| DeviceManagerError::Irqfd(ports::COM1_IRQ, e))?;
    let sci = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
    vm.register_irqfd(&sci, SCI_GSI)
        .map_err(|e| DeviceManagerError::Irqfd(SCI_GSI, e))?;
    let interrupt = Arc::new(MsiInterrupt::new(spec.kvm, vm)?);
    wire_platform(PlatformSpec {
        cpus: spec.cpus,
        ram: spec.ram,
        pvpanic_events: spec.pvpanic_events,
        com1_irq,
        sci,
        interrupt,
        events,
        serial_out: Box::new(serial_out),
    })
    .map_err(DeviceManagerError::Platform)
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
