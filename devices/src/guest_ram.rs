//! Guest RAM as the paravirtual devices see it: checked reads and writes by
//! GPA, nothing else.
//!
//! Devices take an `Arc<dyn GuestRam>`, so the VMM passes its
//! `vm_memory::GuestMemoryMmap` and unit tests a [`VecRam`].

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Errors from guest RAM accesses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestRamError {
    /// Some byte of the range is not guest RAM (or the range wraps).
    #[error("{len:#x} bytes at GPA {gpa:#x} are not all guest RAM")]
    OutOfRange {
        /// First address of the access.
        gpa: u64,
        /// Length of the access.
        len: usize,
    },
}

/// Checked access to guest physical memory. Implementations must fail, not
/// panic, on any range that is not entirely RAM.
pub trait GuestRam: Send + Sync {
    /// Whether `[gpa, gpa + len)` is entirely guest RAM.
    fn contains(&self, gpa: u64, len: usize) -> bool;
    /// Reads `buf.len()` bytes at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestRamError>;
    /// Writes `buf` at `gpa`.
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), GuestRamError>;
}

impl GuestRam for vm_memory::GuestMemoryMmap<()> {
    fn contains(&self, gpa: u64, len: usize) -> bool {
        gpa.checked_add(len as u64).is_some()
            && GuestMemory::check_range(
                self,
                GuestAddress(gpa),
                len,
                vm_memory::Permissions::ReadWrite,
            )
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestRamError> {
        let len = buf.len();
        if !GuestRam::contains(self, gpa, len) {
            return Err(GuestRamError::OutOfRange { gpa, len });
        }
        self.read_slice(buf, GuestAddress(gpa))
            .map_err(|_| GuestRamError::OutOfRange { gpa, len })
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), GuestRamError> {
        let len = buf.len();
        if !GuestRam::contains(self, gpa, len) {
            return Err(GuestRamError::OutOfRange { gpa, len });
        }
        self.write_slice(buf, GuestAddress(gpa))
            .map_err(|_| GuestRamError::OutOfRange { gpa, len })
    }
}

/// Guest RAM backed by a vector, starting at a base GPA: for tests, and for
/// tools that work on a copy of guest memory.
#[derive(Debug)]
pub struct VecRam {
    base: u64,
    bytes: std::sync::Mutex<Vec<u8>>,
}

impl VecRam {
    /// `len` zero bytes of RAM at `base`.
    pub fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            bytes: std::sync::Mutex::new(vec![0; len]),
        }
    }

    /// The byte range inside the vector for an access, if it is all RAM.
    fn span(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(gpa.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(len)?;
        let size = self.lock().len();
        (end <= size).then_some(start..end)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl GuestRam for VecRam {
    fn contains(&self, gpa: u64, len: usize) -> bool {
        self.span(gpa, len).is_some()
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestRamError> {
        let len = buf.len();
        let span = self
            .span(gpa, len)
            .ok_or(GuestRamError::OutOfRange { gpa, len })?;
        buf.copy_from_slice(&self.lock()[span]);
        Ok(())
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), GuestRamError> {
        let len = buf.len();
        let span = self
            .span(gpa, len)
            .ok_or(GuestRamError::OutOfRange { gpa, len })?;
        self.lock()[span].copy_from_slice(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_bounds(ram: &dyn GuestRam, base: u64, len: u64) {
        let end = base + len;
        assert!(ram.contains(base, 16));
        assert!(ram.contains(end - 16, 16));
        assert!(!ram.contains(end - 15, 16));
        assert!(!ram.contains(u64::MAX - 3, 8));
        ram.write(end - 4, &[1, 2, 3, 4]).unwrap();
        let mut four = [0; 4];
        ram.read(end - 4, &mut four).unwrap();
        assert_eq!(four, [1, 2, 3, 4]);
        assert_eq!(
            ram.write(end - 2, &[0; 4]),
            Err(GuestRamError::OutOfRange {
                gpa: end - 2,
                len: 4
            })
        );
        assert!(ram.read(u64::MAX, &mut four).is_err());
        // Nothing was written past the end.
        ram.read(end - 4, &mut four).unwrap();
        assert_eq!(four, [1, 2, 3, 4]);
    }

    #[test]
    fn vec_ram_is_bounds_checked() {
        let ram = VecRam::new(0x1000, 0x2000);
        check_bounds(&ram, 0x1000, 0x2000);
        assert!(!ram.contains(0xfff, 1));
    }

    #[test]
    fn guest_memory_mmap_is_bounds_checked() {
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)])
            .expect("small anonymous mapping");
        check_bounds(&mem, 0, 0x4000);
    }
}
