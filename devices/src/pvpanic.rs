//! The ISA pvpanic device (QEMU `docs/specs/pvpanic.rst`).
//!
//! One byte-wide register at [`guest_abi::ports::PVPANIC`]:
//! - a read returns the events the device supports;
//! - a write reports every event whose bit is set and supported, in QEMU's
//!   order: PANICKED, then CRASH_LOADED, then SHUTDOWN.
//!
//! What an event *does* (pause, poweroff, a dump...) is the VMM's business:
//! the device only turns writes into [`VmEvent::Pvpanic`]s on its
//! [`EventSink`]. Unknown bits, masked-out events and accesses that are not
//! one byte wide are ignored, logged and counted, never fatal.

use std::sync::Arc;

use guest_abi::ports::{PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, PVPANIC_SHUTDOWN};

use crate::bus::{Access, BusDevice};
use crate::{EventSink, VmEvent};

/// Length of the register block in port space.
pub const PVPANIC_LEN: u64 = 1;
/// Offset of the single event register.
const EVENT_REGISTER: u64 = 0;
/// Every event bit this implementation knows.
pub const PVPANIC_KNOWN_EVENTS: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN;
/// The default supported-event mask, as QEMU's (all three events).
pub const PVPANIC_DEFAULT_EVENTS: u8 = PVPANIC_KNOWN_EVENTS;

/// One event a guest can report through pvpanic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PvpanicEvent {
    /// The guest panicked and no crash kernel will take over.
    Panicked,
    /// The guest panicked and a crash kernel is about to run: keep it running.
    CrashLoaded,
    /// The guest is shutting down.
    Shutdown,
}

impl PvpanicEvent {
    /// All events, in the order QEMU reports them when several bits are set.
    pub const IN_REPORT_ORDER: [PvpanicEvent; 3] = [
        PvpanicEvent::Panicked,
        PvpanicEvent::CrashLoaded,
        PvpanicEvent::Shutdown,
    ];

    /// The event's bit in the register.
    pub const fn bit(self) -> u8 {
        match self {
            PvpanicEvent::Panicked => PVPANIC_PANICKED,
            PvpanicEvent::CrashLoaded => PVPANIC_CRASH_LOADED,
            PvpanicEvent::Shutdown => PVPANIC_SHUTDOWN,
        }
    }
}

/// Errors from configuring a pvpanic device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PvpanicError {
    /// The requested event mask has bits no pvpanic event uses.
    #[error("pvpanic event mask {0:#x} has unknown bits (known: {PVPANIC_KNOWN_EVENTS:#x})")]
    UnknownEvents(u8),
}

/// What the device ignored or reported, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvpanicCounters {
    /// Events reported to the sink.
    pub events_reported: u64,
    /// Writes that carried bits no pvpanic event uses.
    pub unknown_bit_writes: u64,
    /// Writes that carried known events this device was configured not to support.
    pub masked_event_writes: u64,
    /// Accesses that were not one byte wide at offset 0 (ignored; reads return 0xff).
    pub bad_accesses: u64,
}

/// The pvpanic device.
pub struct Pvpanic {
    supported: u8,
    sink: Arc<dyn EventSink>,
    counters: PvpanicCounters,
}

impl std::fmt::Debug for Pvpanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pvpanic")
            .field("supported", &format_args!("{:#x}", self.supported))
            .field("counters", &self.counters)
            .finish()
    }
}

impl Pvpanic {
    /// A device that supports the events in `supported` (a mask of
    /// `guest_abi::ports::PVPANIC_*` bits) and reports them to `sink`.
    /// A mask of 0 is a device that supports nothing; the VMM normally
    /// doesn't create one at all then.
    pub fn new(supported: u8, sink: Arc<dyn EventSink>) -> Result<Self, PvpanicError> {
        if supported & !PVPANIC_KNOWN_EVENTS != 0 {
            return Err(PvpanicError::UnknownEvents(supported));
        }
        Ok(Self {
            supported,
            sink,
            counters: PvpanicCounters::default(),
        })
    }

    /// The supported-event mask, as a guest reads it.
    pub fn supported_events(&self) -> u8 {
        self.supported
    }

    /// What the device has reported and ignored so far.
    pub fn counters(&self) -> PvpanicCounters {
        self.counters
    }

    fn report(&mut self, value: u8, vcpu: crate::VcpuId) {
        let unknown = value & !PVPANIC_KNOWN_EVENTS;
        if unknown != 0 {
            self.counters.unknown_bit_writes += 1;
            log::warn!("pvpanic: vCPU {vcpu} wrote unknown event bits {unknown:#x}, ignored");
        }
        let masked = value & PVPANIC_KNOWN_EVENTS & !self.supported;
        if masked != 0 {
            self.counters.masked_event_writes += 1;
            log::warn!("pvpanic: vCPU {vcpu} wrote unsupported event bits {masked:#x}, ignored");
        }
        for event in PvpanicEvent::IN_REPORT_ORDER {
            if value & self.supported & event.bit() != 0 {
                self.counters.events_reported += 1;
                self.sink.emit(VmEvent::Pvpanic { event, vcpu });
            }
        }
    }
}

impl BusDevice for Pvpanic {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        match (access.offset, data) {
            (EVENT_REGISTER, [byte]) => *byte = self.supported,
            (offset, data) => {
                self.counters.bad_accesses += 1;
                log::warn!(
                    "pvpanic: vCPU {} read {} bytes at offset {offset}, ignored",
                    access.vcpu,
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match (access.offset, data) {
            (EVENT_REGISTER, [value]) => self.report(*value, access.vcpu),
            (offset, data) => {
                self.counters.bad_accesses += 1;
                log::warn!(
                    "pvpanic: vCPU {} wrote {} bytes at offset {offset}, ignored",
                    access.vcpu,
                    data.len()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::test_utils::Recorder;

    fn device(mask: u8) -> (Pvpanic, Arc<Recorder>) {
        let sink = Arc::new(Recorder::default());
        (Pvpanic::new(mask, sink.clone()).unwrap(), sink)
    }

    fn at(offset: u64, vcpu: u32) -> Access {
        Access {
            base: u64::from(guest_abi::ports::PVPANIC),
            offset,
            vcpu,
        }
    }

    fn pv(event: PvpanicEvent, vcpu: u32) -> VmEvent {
        VmEvent::Pvpanic { event, vcpu }
    }

    #[test]
    fn read_returns_the_configured_mask() {
        for mask in [0, 1, 2, 4, 5, PVPANIC_DEFAULT_EVENTS] {
            let (mut dev, _) = device(mask);
            let mut byte = [0xaa];
            dev.read(at(0, 0), &mut byte);
            assert_eq!(byte, [mask]);
        }
        assert_eq!(PVPANIC_DEFAULT_EVENTS, 0x7);
    }

    #[test]
    fn mask_with_unknown_bits_is_rejected() {
        let sink = Arc::new(Recorder::default());
        assert_eq!(
            Pvpanic::new(0x8, sink.clone()).unwrap_err(),
            PvpanicError::UnknownEvents(0x8)
        );
        assert!(Pvpanic::new(0xff, sink).is_err());
    }

    #[test]
    fn each_bit_reports_its_event_with_the_vcpu() {
        let (mut dev, sink) = device(PVPANIC_DEFAULT_EVENTS);
        dev.write(at(0, 3), &[PVPANIC_PANICKED]);
        assert_eq!(sink.take(), vec![pv(PvpanicEvent::Panicked, 3)]);
        dev.write(at(0, 1), &[PVPANIC_CRASH_LOADED]);
        assert_eq!(sink.take(), vec![pv(PvpanicEvent::CrashLoaded, 1)]);
        dev.write(at(0, 0), &[PVPANIC_SHUTDOWN]);
        assert_eq!(sink.take(), vec![pv(PvpanicEvent::Shutdown, 0)]);
        assert_eq!(dev.counters().events_reported, 3);
        dev.write(at(0, 0), &[0]);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn combined_bits_are_reported_in_qemu_order() {
        let (mut dev, sink) = device(PVPANIC_DEFAULT_EVENTS);
        dev.write(at(0, 2), &[0x7]);
        assert_eq!(
            sink.take(),
            vec![
                pv(PvpanicEvent::Panicked, 2),
                pv(PvpanicEvent::CrashLoaded, 2),
                pv(PvpanicEvent::Shutdown, 2),
            ]
        );
        dev.write(at(0, 2), &[PVPANIC_SHUTDOWN | PVPANIC_CRASH_LOADED]);
        assert_eq!(
            sink.take(),
            vec![
                pv(PvpanicEvent::CrashLoaded, 2),
                pv(PvpanicEvent::Shutdown, 2)
            ]
        );
    }

    #[test]
    fn unknown_bits_are_ignored_and_counted() {
        let (mut dev, sink) = device(PVPANIC_DEFAULT_EVENTS);
        dev.write(at(0, 0), &[0xf8]);
        assert!(sink.take().is_empty());
        dev.write(at(0, 0), &[0x80 | PVPANIC_PANICKED]);
        assert_eq!(sink.take(), vec![pv(PvpanicEvent::Panicked, 0)]);
        let c = dev.counters();
        assert_eq!(c.unknown_bit_writes, 2);
        assert_eq!(c.events_reported, 1);
        assert_eq!(c.masked_event_writes, 0);
    }

    #[test]
    fn wrong_sizes_and_offsets_are_ignored_and_counted() {
        let (mut dev, sink) = device(PVPANIC_DEFAULT_EVENTS);
        dev.write(at(0, 0), &[1, 1]);
        dev.write(at(0, 0), &[1, 0, 0, 0]);
        dev.write(at(0, 0), &[]);
        dev.write(at(1, 0), &[1]);
        assert!(sink.take().is_empty());
        let mut word = [0u8; 2];
        dev.read(at(0, 0), &mut word);
        assert_eq!(word, [0xff, 0xff]);
        let mut empty: [u8; 0] = [];
        dev.read(at(0, 0), &mut empty);
        assert_eq!(dev.counters().bad_accesses, 6);
        assert_eq!(dev.counters().events_reported, 0);
    }

    #[test]
    fn masked_out_events_are_not_reported() {
        let (mut dev, sink) = device(PVPANIC_PANICKED);
        dev.write(at(0, 0), &[PVPANIC_CRASH_LOADED]);
        dev.write(at(0, 0), &[PVPANIC_SHUTDOWN]);
        assert!(sink.take().is_empty());
        dev.write(at(0, 0), &[0x7]);
        assert_eq!(sink.take(), vec![pv(PvpanicEvent::Panicked, 0)]);
        assert_eq!(dev.counters().masked_event_writes, 3);

        let (mut none, sink) = device(0);
        none.write(at(0, 0), &[0x7]);
        assert!(sink.take().is_empty());
        assert_eq!(none.counters().masked_event_writes, 1);
    }

    #[test]
    fn works_through_the_bus() {
        let sink = Arc::new(Recorder::default());
        let dev = Arc::new(Mutex::new(
            Pvpanic::new(PVPANIC_DEFAULT_EVENTS, sink.clone()).unwrap(),
        ));
        let mut bus = crate::Bus::new();
        let port = u64::from(guest_abi::ports::PVPANIC);
        bus.insert(dev, port, PVPANIC_LEN).unwrap();
        let mut byte = [0];
        assert!(bus.read(0, port, &mut byte));
        assert_eq!(byte, [0x7]);
        assert!(bus.write(1, port, &[PVPANIC_CRASH_LOADED]));
        assert_eq!(sink.take(), vec![pv(PvpanicEvent::CrashLoaded, 1)]);
        // A word access starting at the port spills past the device: the bus refuses it.
        assert!(!bus.write(1, port, &[1, 0]));
    }
}
