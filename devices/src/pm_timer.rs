//! The ACPI PM timer: a free-running 24-bit counter at 3.579545 MHz.
//!
//! The count is derived from a monotonic clock on every read, so the device
//! needs no thread and no timer. The clock is injected so tests can step it.

use std::time::Instant;

use guest_abi::ports::{PM_TMR_HZ, PM_TMR_LEN};
use log::debug;

use crate::bus::{Access, BusDevice};

/// The counter is 24 bits wide (the FADT does not set TMR_VAL_EXT).
pub const PM_TMR_MASK: u32 = 0x00ff_ffff;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A source of monotonic nanoseconds.
pub trait MonotonicClock: Send {
    /// Nanoseconds since an arbitrary fixed point; never decreases.
    fn now_ns(&self) -> u64;
}

/// The host's monotonic clock, counted from when it was created.
#[derive(Debug)]
pub struct HostClock(Instant);

impl Default for HostClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl MonotonicClock for HostClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The PM_TMR_BLK register.
pub struct PmTimer<C: MonotonicClock> {
    clock: C,
    ignored: u64,
}

impl<C: MonotonicClock> std::fmt::Debug for PmTimer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PmTimer")
            .field("ignored", &self.ignored)
            .finish()
    }
}

impl<C: MonotonicClock> PmTimer<C> {
    /// A timer counting from `clock`'s zero.
    pub fn new(clock: C) -> Self {
        Self { clock, ignored: 0 }
    }

    /// Accesses dropped: writes, and reads of the wrong width or offset.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The current 24-bit count.
    pub fn count(&self) -> u32 {
        let ticks = u128::from(self.clock.now_ns()) * u128::from(PM_TMR_HZ) / NANOS_PER_SEC;
        // Truncation is the point: the counter wraps at 24 bits.
        (ticks as u32) & PM_TMR_MASK
    }
}

impl<C: MonotonicClock> BusDevice for PmTimer<C> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        let len = data.len();
        let ok = matches!(len, 1 | 2 | 4)
            && access
                .offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= u64::from(PM_TMR_LEN));
        if !ok {
            self.ignored += 1;
            debug!("pm-timer: ignored {len}-byte read at {:#x}", access.offset);
            data.fill(0xff);
            return;
        }
        // In range, so the offset is below 4.
        let start = access.offset as usize;
        data.copy_from_slice(&self.count().to_le_bytes()[start..start + len]);
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        self.ignored += 1;
        debug!(
            "pm-timer: ignored {}-byte write at {:#x}",
            data.len(),
            access.offset
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct FakeClock(Arc<AtomicU64>);
    impl MonotonicClock for FakeClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn at(offset: u64) -> Access {
        Access {
            base: 0x608,
            offset,
            vcpu: 0,
        }
    }

    fn read32(dev: &mut PmTimer<FakeClock>) -> u32 {
        let mut v = [0u8; 4];
        dev.read(at(0), &mut v);
        u32::from_le_bytes(v)
    }

    #[test]
    fn counts_at_the_acpi_frequency() {
        let clock = FakeClock::default();
        let mut dev = PmTimer::new(clock.clone());
        assert_eq!(read32(&mut dev), 0);
        clock.0.store(1_000_000, Ordering::SeqCst); // 1 ms
        assert_eq!(read32(&mut dev), 3579);
        clock.0.store(1_000_000_000, Ordering::SeqCst); // 1 s
        assert_eq!(read32(&mut dev), 3_579_545);
    }

    #[test]
    fn wraps_at_24_bits() {
        let clock = FakeClock::default();
        let mut dev = PmTimer::new(clock.clone());
        // 2^24 ticks is about 4.687 s; 5 s is past one wrap.
        clock.0.store(5_000_000_000, Ordering::SeqCst);
        let expected = (5 * PM_TMR_HZ) as u32 & PM_TMR_MASK;
        assert_eq!(read32(&mut dev), expected);
        assert!(read32(&mut dev) <= PM_TMR_MASK);
        clock.0.store(u64::MAX, Ordering::SeqCst);
        assert!(read32(&mut dev) <= PM_TMR_MASK);
    }

    #[test]
    fn host_clock_never_goes_backwards() {
        let mut dev = PmTimer::new(HostClock::default());
        let mut v = [0u8; 4];
        dev.read(at(0), &mut v);
        let a = u32::from_le_bytes(v);
        dev.read(at(0), &mut v);
        let b = u32::from_le_bytes(v);
        assert!(b >= a, "{b} < {a} (no wrap possible this early)");
    }

    #[test]
    fn garbage_is_counted_never_fatal() {
        let clock = FakeClock::default();
        clock.0.store(1_000_000_000, Ordering::SeqCst);
        let mut dev = PmTimer::new(clock);
        dev.write(at(0), &[1, 2, 3, 4]);
        let mut three = [0u8; 3];
        dev.read(at(0), &mut three);
        assert_eq!(three, [0xff; 3]);
        let mut two = [0u8; 2];
        dev.read(at(3), &mut two);
        dev.read(at(u64::MAX), &mut two);
        assert_eq!(dev.ignored(), 4);
        // Narrow reads see the matching bytes of the count.
        let mut lo = [0u8; 2];
        dev.read(at(0), &mut lo);
        assert_eq!(u16::from_le_bytes(lo), (3_579_545u32 & 0xffff) as u16);
    }
}
