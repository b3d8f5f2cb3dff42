//! The one place where devices are created and put on the buses.
//!
//! Every port, length and GSI is a named constant from `guest_abi::ports`;
//! the vCPU loop only sees the resulting buses.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::acpi_pm::{Pm1ControlBlock, Pm1EventBlock};
use devices::pm_timer::{HostClock, PmTimer};
use devices::reset::{I8042Reset, ResetControl};
use devices::serial::{EventFdTrigger, SerialDevice};
use devices::{Bus, BusError, EventSink};
use guest_abi::ports;
use kvm_ioctls::VmFd;
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
}

/// Creates the legacy devices and registers them: COM1 (irqfd on its
/// GSI), the ACPI PM1a event and control blocks, the PM timer, the reset
/// control register and the i8042 reset command.
pub fn create_devices(
    vm: &VmFd,
    events: Arc<dyn EventSink>,
    serial_out: SharedWriter,
) -> Result<Devices, DeviceManagerError> {
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
        Arc::new(Mutex::new(I8042Reset::new(events))),
        I8042_COMMAND,
        1,
    )?;
    // pvpanic (ports::PVPANIC, 1 byte) is wired here next.

    Ok(Devices {
        pio,
        mmio: Bus::new(),
        serial,
        pm1_events,
    })
}
