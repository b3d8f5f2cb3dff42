//! ACPI fixed-hardware PM1a registers: the event block and the control block.
//!
//! The event block holds PM1_STS (write-1-to-clear) and PM1_EN. The only
//! fixed event is the power button ([`Pm1EventBlock::press_power_button`],
//! the VMM's `system_powerdown`): it sets PWRBTN_STS and, when PWRBTN_EN
//! is set, raises the SCI through an injected trigger. The control block
//! holds PM1_CNT; writing SLP_EN with SLP_TYP = S5 (the value the DSDT's
//! `\_S5` package gives) reports [`VmEvent::Poweroff`]. Other sleep states
//! are not supported: they are ignored and counted.

use std::sync::Arc;

use guest_abi::ports::{
    PM1A_CNT_LEN, PM1A_EVT_LEN, PM1_CNT_SLP_EN, PM1_CNT_SLP_TYP_MASK, PM1_CNT_SLP_TYP_SHIFT,
    SLP_TYP_S5,
};
use log::{debug, info, warn};
use vm_superio::Trigger;

use crate::bus::{Access, BusDevice};
use crate::{EventSink, VmEvent};

/// PM1_STS offset in the event block.
const PM1_STS: usize = 0;
/// PM1_EN offset in the event block.
const PM1_EN: usize = 2;
/// PM1_STS / PM1_EN bit 8: the fixed power button.
pub const PWRBTN: u16 = 1 << 8;
/// PM1_CNT: SCI_EN, bit 0. There is no SMI_CMD port, so the platform is
/// always in ACPI mode and this bit reads as set.
const PM1_CNT_SCI_EN: u16 = 1;

/// Reads `data.len()` bytes at `offset` of a little-endian register file,
/// or returns false when the access is not 1, 2 or 4 bytes inside it.
fn read_le(regs: &[u8], offset: u64, data: &mut [u8]) -> bool {
    let Some(range) = checked_range(regs.len(), offset, data.len()) else {
        return false;
    };
    data.copy_from_slice(&regs[range]);
    true
}

fn checked_range(regs: usize, offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
    let offset = usize::try_from(offset).ok()?;
    let end = offset.checked_add(len)?;
    (matches!(len, 1 | 2 | 4) && end <= regs).then_some(offset..end)
}

/// PM1a_EVT_BLK: PM1_STS then PM1_EN, two bytes each.
pub struct Pm1EventBlock<T: Trigger> {
    regs: [u8; PM1A_EVT_LEN as usize],
    sci: T,
    ignored: u64,
}

impl<T: Trigger> std::fmt::Debug for Pm1EventBlock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pm1EventBlock")
            .field("regs", &self.regs)
            .field("ignored", &self.ignored)
            .finish()
    }
}

impl<T: Trigger> Pm1EventBlock<T> {
    /// All status and enable bits clear; `sci` raises the SCI.
    pub fn new(sci: T) -> Self {
        Self {
            regs: [0; PM1A_EVT_LEN as usize],
            sci,
            ignored: 0,
        }
    }

    /// Accesses dropped because of their width or offset.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    fn reg(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.regs[offset], self.regs[offset + 1]])
    }

    /// The current PM1_STS value.
    pub fn status(&self) -> u16 {
        self.reg(PM1_STS)
    }

    /// The current PM1_EN value.
    pub fn enable(&self) -> u16 {
        self.reg(PM1_EN)
    }

    /// A press of the fixed power button: sets PWRBTN_STS and raises the
    /// SCI if the guest enabled it. Returns whether the SCI was raised.
    pub fn press_power_button(&mut self) -> bool {
        let status = self.status() | PWRBTN;
        self.regs[PM1_STS..PM1_EN].copy_from_slice(&status.to_le_bytes());
        self.raise_sci_if_pending()
    }

    fn raise_sci_if_pending(&mut self) -> bool {
        if self.status() & self.enable() == 0 {
            return false;
        }
        if let Err(e) = self.sci.trigger() {
            warn!("acpi-pm: raising the SCI failed: {e:?}");
        }
        true
    }
}

impl<T: Trigger + Send> BusDevice for Pm1EventBlock<T> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if !read_le(&self.regs, access.offset, data) {
            self.ignored += 1;
            debug!(
                "acpi-pm: ignored {}-byte event read at {:#x}",
                data.len(),
                access.offset
            );
            data.fill(0xff);
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        let Some(range) = checked_range(self.regs.len(), access.offset, data.len()) else {
            self.ignored += 1;
            debug!(
                "acpi-pm: ignored {}-byte event write at {:#x}",
                data.len(),
                access.offset
            );
            return;
        };
        let mut enabled_more = false;
        for (i, &byte) in range.zip(data) {
            if (PM1_STS..PM1_EN).contains(&i) {
                // PM1_STS bits are cleared by writing 1.
                self.regs[i] &= !byte;
            } else {
                enabled_more |= byte & !self.regs[i] != 0;
                self.regs[i] = byte;
            }
        }
        // An event enabled while already pending is delivered now.
        if enabled_more {
            self.raise_sci_if_pending();
        }
    }
}

/// PM1a_CNT_BLK: the PM1 control register.
pub struct Pm1ControlBlock {
    value: u16,
    events: Arc<dyn EventSink>,
    ignored: u64,
    unsupported_sleep: u64,
}

impl std::fmt::Debug for Pm1ControlBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pm1ControlBlock")
            .field("value", &self.value)
            .field("ignored", &self.ignored)
            .field("unsupported_sleep", &self.unsupported_sleep)
            .finish()
    }
}

impl Pm1ControlBlock {
    /// A control block that reports S5 requests to `events`.
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        Self {
            value: PM1_CNT_SCI_EN,
            events,
            ignored: 0,
            unsupported_sleep: 0,
        }
    }

    /// Accesses dropped because of their width or offset.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Requests for a sleep state other than S5, which are ignored.
    pub fn unsupported_sleep(&self) -> u64 {
        self.unsupported_sleep
    }
}

impl BusDevice for Pm1ControlBlock {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if !read_le(&self.value.to_le_bytes(), access.offset, data) {
            self.ignored += 1;
            debug!(
                "acpi-pm: ignored {}-byte control read at {:#x}",
                data.len(),
                access.offset
            );
            data.fill(0xff);
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        let mut bytes = self.value.to_le_bytes();
        let Some(range) = checked_range(PM1A_CNT_LEN as usize, access.offset, data.len()) else {
            self.ignored += 1;
            debug!(
                "acpi-pm: ignored {}-byte control write at {:#x}",
                data.len(),
                access.offset
            );
            return;
        };
        bytes[range].copy_from_slice(data);
        let value = u16::from_le_bytes(bytes);
        // SLP_EN is a write-only trigger: it never reads back as set.
        self.value = (value & !PM1_CNT_SLP_EN) | PM1_CNT_SCI_EN;
        if value & PM1_CNT_SLP_EN == 0 {
            return;
        }
        let slp_typ = (value >> PM1_CNT_SLP_TYP_SHIFT) & PM1_CNT_SLP_TYP_MASK;
        if slp_typ == SLP_TYP_S5 {
            info!("acpi-pm: vcpu {} requested S5 (poweroff)", access.vcpu);
            self.events.emit(VmEvent::Poweroff { vcpu: access.vcpu });
        } else {
            self.unsupported_sleep += 1;
            info!(
                "acpi-pm: vcpu {} requested unsupported sleep type {slp_typ}",
                access.vcpu
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use crate::test_utils::Recorder as Events;

    fn at(offset: u64, vcpu: u32) -> Access {
        Access {
            base: 0x600,
            offset,
            vcpu,
        }
    }

    fn control() -> (Pm1ControlBlock, Arc<Events>) {
        let events = Arc::new(Events::default());
        (Pm1ControlBlock::new(events.clone()), events)
    }

    fn slp(typ: u16) -> [u8; 2] {
        (PM1_CNT_SLP_EN | (typ << PM1_CNT_SLP_TYP_SHIFT)).to_le_bytes()
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut dev, events) = control();
        dev.write(at(0, 3), &slp(SLP_TYP_S5));
        assert_eq!(
            *events.0.lock().unwrap(),
            vec![VmEvent::Poweroff { vcpu: 3 }]
        );
    }

    #[test]
    fn s5_without_slp_en_does_nothing() {
        let (mut dev, events) = control();
        dev.write(
            at(0, 0),
            &(SLP_TYP_S5 << PM1_CNT_SLP_TYP_SHIFT).to_le_bytes(),
        );
        assert!(events.0.lock().unwrap().is_empty());
        let mut v = [0u8; 2];
        dev.read(at(0, 0), &mut v);
        assert_eq!(
            u16::from_le_bytes(v),
            (SLP_TYP_S5 << PM1_CNT_SLP_TYP_SHIFT) | 1
        );
    }

    #[test]
    fn s5_written_as_two_bytes_powers_off_on_the_high_byte() {
        let (mut dev, events) = control();
        let [lo, hi] = slp(SLP_TYP_S5);
        dev.write(at(0, 1), &[lo]);
        assert!(events.0.lock().unwrap().is_empty());
        dev.write(at(1, 1), &[hi]);
        assert_eq!(events.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn other_sleep_types_are_ignored_and_counted() {
        let (mut dev, events) = control();
        for typ in [0, 1, 3, 7] {
            dev.write(at(0, 0), &slp(typ));
        }
        assert!(events.0.lock().unwrap().is_empty());
        assert_eq!(dev.unsupported_sleep(), 4);
    }

    #[test]
    fn sci_en_reads_set_and_slp_en_reads_clear() {
        let (mut dev, _) = control();
        let mut v = [0u8; 2];
        dev.read(at(0, 0), &mut v);
        assert_eq!(u16::from_le_bytes(v), PM1_CNT_SCI_EN);
        dev.write(at(0, 0), &slp(1));
        dev.read(at(0, 0), &mut v);
        assert_eq!(u16::from_le_bytes(v) & PM1_CNT_SLP_EN, 0);
    }

    #[test]
    fn control_garbage_is_counted_never_fatal() {
        let (mut dev, events) = control();
        dev.write(at(0, 0), &[0xff; 3]);
        dev.write(at(0, 0), &[0xff; 4]);
        dev.write(at(0, 0), &[]);
        dev.write(at(2, 0), &[0xff]);
        dev.write(at(u64::MAX, 0), &[0xff]);
        let mut four = [0u8; 4];
        dev.read(at(0, 0), &mut four);
        assert_eq!(four, [0xff; 4]);
        assert_eq!(dev.ignored(), 6);
        assert!(events.0.lock().unwrap().is_empty());
    }

    #[derive(Clone, Default)]
    struct Sci(Arc<std::sync::atomic::AtomicU32>);
    impl Trigger for Sci {
        type E = ();
        fn trigger(&self) -> Result<(), ()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }
    impl Sci {
        fn count(&self) -> u32 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn power_button_raises_the_sci_only_when_enabled() {
        let sci = Sci::default();
        let mut dev = Pm1EventBlock::new(sci.clone());
        assert!(!dev.press_power_button());
        assert_eq!(dev.status(), PWRBTN);
        assert_eq!(sci.count(), 0);
        // Enabling a pending event delivers it.
        dev.write(at(2, 0), &PWRBTN.to_le_bytes());
        assert_eq!(sci.count(), 1);
        // The guest acknowledges by writing 1 to the status bit.
        dev.write(at(0, 0), &PWRBTN.to_le_bytes());
        assert_eq!(dev.status(), 0);
        assert!(dev.press_power_button());
        assert_eq!(sci.count(), 2);
    }

    #[test]
    fn event_status_is_write_one_to_clear_and_enable_is_storage() {
        let mut dev = Pm1EventBlock::new(Sci::default());
        dev.regs[0] = 0x31;
        dev.write(at(0, 0), &[0x11, 0, 0x20, 0x01]);
        let mut all = [0u8; 4];
        dev.read(at(0, 0), &mut all);
        assert_eq!(all, [0x20, 0, 0x20, 0x01]);
        assert_eq!(dev.enable(), 0x0120);
        let mut b = [0u8; 1];
        dev.read(at(2, 0), &mut b);
        assert_eq!(b, [0x20]);
    }

    #[test]
    fn event_garbage_is_counted_never_fatal() {
        let mut dev = Pm1EventBlock::new(Sci::default());
        dev.write(at(3, 0), &[1, 2]);
        dev.write(at(0, 0), &[1, 2, 3]);
        dev.write(at(0, 0), &[0; 8]);
        let mut three = [0u8; 3];
        dev.read(at(0, 0), &mut three);
        assert_eq!(three, [0xff; 3]);
        assert_eq!(dev.ignored(), 4);
        assert_eq!(dev.regs, [0; 4]);
    }
}
