//! A bus that routes guest port-I/O or MMIO accesses to devices by address.
//!
//! The vCPU loop hands every PIO/MMIO exit to a [`Bus`] and never names a
//! port itself. Devices sit in non-overlapping ranges; an access is
//! dispatched to the device whose range contains its address, with the
//! offset from that range's base.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The identity of a vCPU, as KVM numbers it (also its APIC ID here).
pub type VcpuId = u32;

/// One guest access, as seen by a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Base address of the range the device was registered at.
    pub base: u64,
    /// Offset of the access from `base`.
    pub offset: u64,
    /// The vCPU that made the access.
    pub vcpu: VcpuId,
}

/// A device on the bus. Implementations must treat every access as hostile:
/// check `data.len()` first, never panic, and log and count what they ignore.
pub trait BusDevice: Send {
    /// Fills `data` for a guest read.
    fn read(&mut self, access: Access, data: &mut [u8]);
    /// Handles a guest write of `data`.
    fn write(&mut self, access: Access, data: &[u8]);
}

/// A shared, lockable device, as stored on the bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already registered.
    #[error("range {base:#x}+{len:#x} overlaps a registered device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or wraps past the end of the address space.
    #[error("invalid range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// Result alias for bus operations.
pub type Result<T> = std::result::Result<T, BusError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

impl Range {
    fn last(&self) -> u64 {
        // Cannot overflow: `insert` rejects ranges that wrap.
        self.base + (self.len - 1)
    }
}

/// Address-ordered devices; lookups are O(log n).
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<Range, SharedDevice>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.devices
                    .keys()
                    .map(|r| format!("{:#x}..={:#x}", r.base, r.last())),
            )
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` at `[base, base + len)`, rejecting overlaps.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<()> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let new = Range { base, len };
        // The nearest range starting at or below the new one, and the nearest
        // above it, are the only ones that can overlap.
        let below = self.devices.range(..=new).next_back().map(|(r, _)| *r);
        let above = self.devices.range(new..).next().map(|(r, _)| *r);
        let overlaps = |r: Range| r.base <= new.last() && new.base <= r.last();
        if below.is_some_and(overlaps) || above.is_some_and(overlaps) {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(new, device);
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(Range, &SharedDevice)> {
        let (range, dev) = self
            .devices
            .range(
                ..=Range {
                    base: addr,
                    len: u64::MAX,
                },
            )
            .next_back()?;
        let end = addr.checked_add((size as u64).saturating_sub(1))?;
        (addr >= range.base && end <= range.last()).then_some((*range, dev))
    }

    /// Dispatches a read. Returns false (leaving `data` untouched) when no
    /// device covers the whole access.
    pub fn read(&self, vcpu: VcpuId, addr: u64, data: &mut [u8]) -> bool {
        let Some((range, dev)) = self.find(addr, data.len()) else {
            return false;
        };
        let access = Access {
            base: range.base,
            offset: addr - range.base,
            vcpu,
        };
        lock(dev).read(access, data);
        true
    }

    /// Dispatches a write. Returns false when no device covers the access.
    pub fn write(&self, vcpu: VcpuId, addr: u64, data: &[u8]) -> bool {
        let Some((range, dev)) = self.find(addr, data.len()) else {
            return false;
        };
        let access = Access {
            base: range.base,
            offset: addr - range.base,
            vcpu,
        };
        lock(dev).write(access, data);
        true
    }
}

/// Locks a device, recovering from a poisoned lock: a device that panicked
/// once must not take the whole bus down with it.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every access it sees and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        seen: Vec<(Access, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, access: Access, data: &mut [u8]) {
            data.fill(access.offset as u8);
            self.seen.push((access, data.to_vec()));
        }
        fn write(&mut self, access: Access, data: &[u8]) {
            self.seen.push((access, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn overlapping_ranges_are_rejected() {
        let mut bus = Bus::new();
        bus.insert(probe(), 0x100, 0x10).unwrap();
        for (base, len) in [
            (0x100, 1),
            (0xf8, 0x9),
            (0x10f, 1),
            (0x0, 0x1000),
            (0x108, 0x100),
        ] {
            assert_eq!(
                bus.insert(probe(), base, len),
                Err(BusError::Overlap { base, len }),
                "{base:#x}+{len:#x}"
            );
        }
        // Touching ranges on either side are fine.
        bus.insert(probe(), 0xf0, 0x10).unwrap();
        bus.insert(probe(), 0x110, 0x10).unwrap();
    }

    #[test]
    fn empty_or_wrapping_ranges_are_rejected() {
        let mut bus = Bus::new();
        assert!(matches!(
            bus.insert(probe(), 0x10, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(probe(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(probe(), u64::MAX, 1).unwrap();
    }

    #[test]
    fn dispatch_by_offset_and_vcpu() {
        let mut bus = Bus::new();
        let a = probe();
        let b = probe();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x505, 1).unwrap();

        let mut byte = [0u8; 1];
        assert!(bus.read(2, 0x3fd, &mut byte));
        assert_eq!(byte, [5]);
        assert!(bus.write(3, 0x505, &[0x1]));

        let a = a.lock().unwrap();
        assert_eq!(
            a.seen,
            vec![(
                Access {
                    base: 0x3f8,
                    offset: 5,
                    vcpu: 2
                },
                vec![5]
            )]
        );
        let b = b.lock().unwrap();
        assert_eq!(
            b.seen,
            vec![(
                Access {
                    base: 0x505,
                    offset: 0,
                    vcpu: 3
                },
                vec![1]
            )]
        );
    }

    #[test]
    fn unclaimed_and_straddling_accesses_are_not_dispatched() {
        let mut bus = Bus::new();
        let a = probe();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        let mut word = [0xaau8; 2];
        assert!(!bus.read(0, 0x3f7, &mut word[..1]));
        assert!(
            !bus.read(0, 0x3ff, &mut word),
            "access runs past the device"
        );
        assert!(!bus.write(0, u64::MAX, &[0; 2]));
        assert_eq!(word, [0xaa; 2]);
        assert!(a.lock().unwrap().seen.is_empty());
    }
}
