//! The COM1 16550 UART, as `vm_superio::Serial` behind the bus.
//!
//! vm-superio does the register emulation; this wrapper adapts it to the
//! byte-at-a-time [`BusDevice`] interface and refuses accesses of any other
//! width. The interrupt line is an injected [`Trigger`]: in the VMM, an
//! EventFd that KVM's irqfd turns into GSI 4; in tests, a counter.

use std::io::Write;

use log::{debug, warn};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Access, BusDevice};

/// Number of registers of a 16550 (offsets 0..=7 from the base port).
pub const SERIAL_REGISTERS: u64 = guest_abi::ports::COM1_LEN as u64;

/// Raises an interrupt by writing to an EventFd (registered as a KVM irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`, which the VMM registers with KVM as an irqfd.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A 16550 UART whose output goes to `Box<dyn Write + Send>`.
pub struct SerialDevice<T: Trigger> {
    uart: Serial<T, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    ignored: u64,
}

impl<T: Trigger> std::fmt::Debug for SerialDevice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("ignored", &self.ignored)
            .finish()
    }
}

impl<T: Trigger> SerialDevice<T> {
    /// A UART raising `interrupt` and writing transmitted bytes to `out`.
    pub fn new(interrupt: T, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(interrupt, out),
            ignored: 0,
        }
    }

    /// Accesses dropped because of their width or offset.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Queues bytes for the guest to read (the host side of the line).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or_else(|e| {
            warn!("serial: input dropped: {e:?}");
            0
        })
    }

    fn register(&mut self, access: Access, len: usize) -> Option<u8> {
        if len != 1 || access.offset >= SERIAL_REGISTERS {
            self.ignored += 1;
            debug!(
                "serial: ignored {len}-byte access at offset {:#x}",
                access.offset
            );
            return None;
        }
        // Checked above: the offset is below 8.
        Some(access.offset as u8)
    }
}

impl<T: Trigger + Send> BusDevice for SerialDevice<T> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        match self.register(access, data.len()) {
            Some(offset) => data[0] = self.uart.read(offset),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        let Some(offset) = self.register(access, data.len()) else {
            return;
        };
        if let Err(e) = self.uart.write(offset, data[0]) {
            // An output error (a closed pipe) must not stop the guest.
            self.ignored += 1;
            debug!("serial: write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct CountingTrigger(Arc<AtomicU32>);
    impl Trigger for CountingTrigger {
        type E = ();
        fn trigger(&self) -> Result<(), ()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LCR: u64 = 3;

    fn at(offset: u64) -> Access {
        Access {
            base: 0x3f8,
            offset,
            vcpu: 0,
        }
    }

    fn device() -> (SerialDevice<CountingTrigger>, SharedBuf, CountingTrigger) {
        let out = SharedBuf::default();
        let irq = CountingTrigger::default();
        (
            SerialDevice::new(irq.clone(), Box::new(out.clone())),
            out,
            irq,
        )
    }

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let (mut dev, out, _) = device();
        for b in b"hi\n" {
            dev.write(at(THR), &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn transmitter_empty_interrupt_fires_when_enabled() {
        let (mut dev, _, irq) = device();
        // Enable "THR empty" interrupts, then transmit.
        dev.write(at(IER), &[0x02]);
        let before = irq.0.load(Ordering::SeqCst);
        assert!(before > 0, "enabling with THR empty raises it at once");
        // Reading IIR acknowledges it; the next transmit raises it again.
        dev.read(at(2), &mut [0u8]);
        dev.write(at(THR), b"x");
        assert!(irq.0.load(Ordering::SeqCst) > before);
    }

    #[test]
    fn line_status_reports_transmitter_empty() {
        let (mut dev, _, _) = device();
        let mut lsr = [0u8];
        dev.read(at(LSR), &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "THRE and TEMT set");
        let mut lcr = [0u8];
        dev.write(at(LCR), &[0x03]);
        dev.read(at(LCR), &mut lcr);
        assert_eq!(lcr[0], 0x03);
    }

    #[test]
    fn wrong_widths_and_offsets_are_ignored_and_counted() {
        let (mut dev, out, _) = device();
        dev.write(at(THR), b"ab");
        dev.write(at(THR), &[]);
        dev.write(at(8), b"c");
        dev.write(at(u64::MAX), b"c");
        let mut word = [0u8; 2];
        dev.read(at(LSR), &mut word);
        assert_eq!(word, [0xff, 0xff]);
        let mut empty: [u8; 0] = [];
        dev.read(at(LSR), &mut empty);
        assert_eq!(dev.ignored(), 6);
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let (mut dev, _, _) = device();
        assert_eq!(dev.enqueue_input(b"k"), 1);
        let mut rbr = [0u8];
        dev.read(at(THR), &mut rbr);
        assert_eq!(rbr[0], b'k');
    }
}
