//! Reset requests: the PC reset control register (0xCF9) and the i8042
//! keyboard controller's "pulse reset line" command (0xFE on port 0x64).
//!
//! Both report [`VmEvent::Reset`]; the VMM decides whether that restarts
//! the guest or ends the VM.

use std::sync::Arc;

use log::{debug, info};

use crate::bus::{Access, BusDevice};
use crate::{EventSink, VmEvent};

/// Reset control register bit 2, RST_CPU: writing it starts the reset.
/// (Bit 1, SYS_RST, picks hard over soft reset; both reset the whole VM here.)
pub const RST_CPU: u8 = 1 << 2;
/// i8042 command: pulse the output port's reset line.
pub const I8042_CMD_RESET: u8 = 0xfe;
/// i8042 status register value: output buffer empty, input buffer empty,
/// system flag set (self-test passed).
const I8042_STATUS_IDLE: u8 = 1 << 2;

/// The reset control register at 0xCF9.
pub struct ResetControl {
    value: u8,
    events: Arc<dyn EventSink>,
    ignored: u64,
}

impl std::fmt::Debug for ResetControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResetControl")
            .field("value", &self.value)
            .field("ignored", &self.ignored)
            .finish()
    }
}

impl ResetControl {
    /// A register reporting resets to `events`.
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        Self {
            value: 0,
            events,
            ignored: 0,
        }
    }

    /// Accesses dropped because of their width or offset.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if data.len() != 1 || access.offset != 0 {
            self.ignored += 1;
            debug!(
                "reset: ignored {}-byte read at {:#x}",
                data.len(),
                access.offset
            );
            data.fill(0xff);
            return;
        }
        data[0] = self.value;
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        if data.len() != 1 || access.offset != 0 {
            self.ignored += 1;
            debug!(
                "reset: ignored {}-byte write at {:#x}",
                data.len(),
                access.offset
            );
            return;
        }
        // RST_CPU is a trigger; the other bits are kept as written.
        self.value = data[0] & !RST_CPU;
        if data[0] & RST_CPU != 0 {
            info!(
                "reset: vcpu {} wrote {:#04x} to the reset control register",
                access.vcpu, data[0]
            );
            self.events.emit(VmEvent::Reset { vcpu: access.vcpu });
        }
    }
}

/// Just enough of the i8042 command/status port (0x64) for the reset pulse.
pub struct I8042Reset {
    events: Arc<dyn EventSink>,
    ignored: u64,
}

impl std::fmt::Debug for I8042Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042Reset")
            .field("ignored", &self.ignored)
            .finish()
    }
}

impl I8042Reset {
    /// A controller reporting resets to `events`.
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        Self { events, ignored: 0 }
    }

    /// Accesses and commands dropped (other commands, widths, offsets).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }
}

impl BusDevice for I8042Reset {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if data.len() != 1 || access.offset != 0 {
            self.ignored += 1;
            data.fill(0xff);
            return;
        }
        data[0] = I8042_STATUS_IDLE;
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        if data.len() != 1 || access.offset != 0 {
            self.ignored += 1;
            return;
        }
        if data[0] == I8042_CMD_RESET {
            info!("i8042: vcpu {} pulsed the reset line", access.vcpu);
            self.events.emit(VmEvent::Reset { vcpu: access.vcpu });
        } else {
            self.ignored += 1;
            debug!("i8042: ignored command {:#04x}", data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::Recorder as Events;

    fn at(offset: u64, vcpu: u32) -> Access {
        Access {
            base: 0xcf9,
            offset,
            vcpu,
        }
    }

    #[test]
    fn rst_cpu_resets_with_either_reset_type() {
        let events = Arc::new(Events::default());
        let mut dev = ResetControl::new(events.clone());
        dev.write(at(0, 1), &[guest_abi::ports::RESET_VALUE]);
        dev.write(at(0, 2), &[0x0e]);
        dev.write(at(0, 2), &[0x04]);
        assert_eq!(
            *events.0.lock().unwrap(),
            vec![
                VmEvent::Reset { vcpu: 1 },
                VmEvent::Reset { vcpu: 2 },
                VmEvent::Reset { vcpu: 2 }
            ]
        );
    }

    #[test]
    fn other_values_are_stored_and_read_back() {
        let events = Arc::new(Events::default());
        let mut dev = ResetControl::new(events.clone());
        dev.write(at(0, 0), &[0x02]);
        let mut v = [0u8];
        dev.read(at(0, 0), &mut v);
        assert_eq!(v, [0x02]);
        dev.write(at(0, 0), &[0x06]);
        dev.read(at(0, 0), &mut v);
        assert_eq!(v, [0x02], "RST_CPU does not read back");
        assert_eq!(events.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn reset_control_garbage_is_counted_never_fatal() {
        let events = Arc::new(Events::default());
        let mut dev = ResetControl::new(events.clone());
        dev.write(at(0, 0), &[0x06, 0x06]);
        dev.write(at(0, 0), &[]);
        dev.write(at(1, 0), &[0x06]);
        let mut w = [0u8; 2];
        dev.read(at(0, 0), &mut w);
        assert_eq!(w, [0xff; 2]);
        assert_eq!(dev.ignored(), 4);
        assert!(events.0.lock().unwrap().is_empty());
    }

    #[test]
    fn i8042_reset_command_resets_and_others_are_counted() {
        let events = Arc::new(Events::default());
        let mut dev = I8042Reset::new(events.clone());
        let mut status = [0u8];
        dev.read(at(0, 0), &mut status);
        assert_eq!(status[0] & 0x3, 0, "buffers empty");
        for cmd in [0x00, 0xaa, 0xd1, 0xff] {
            dev.write(at(0, 0), &[cmd]);
        }
        dev.write(at(0, 0), &[0xfe, 0xfe]);
        assert!(events.0.lock().unwrap().is_empty());
        assert_eq!(dev.ignored(), 5);
        dev.write(at(0, 5), &[I8042_CMD_RESET]);
        assert_eq!(*events.0.lock().unwrap(), vec![VmEvent::Reset { vcpu: 5 }]);
    }
}
