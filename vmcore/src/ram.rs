//! Guest RAM as the writer sees it: (GPA, host bytes) regions.

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// One contiguous range of guest RAM and the host bytes backing it.
#[derive(Clone, Copy, Debug)]
pub struct RamRegion<'a> {
    /// Guest physical address of `data[0]`.
    pub gpa: u64,
    /// The host mapping of the range.
    pub data: &'a [u8],
    /// The mapping is anonymous (or shmem) memory, so a page that `mincore`
    /// reports non-resident was never touched and reads as zero. Set it only
    /// for such mappings (not for file-backed memory) and only when the host
    /// has no swap; the writer then skips those pages without reading them.
    pub untouched_reads_zero: bool,
}

impl<'a> RamRegion<'a> {
    /// A region over plain bytes (tests, or memory not from an mmap): every
    /// page is scanned.
    pub fn new(gpa: u64, data: &'a [u8]) -> Self {
        RamRegion {
            gpa,
            data,
            untouched_reads_zero: false,
        }
    }
}

/// Whether the host has any swap configured (then a non-resident anonymous
/// page may hold data and `mincore` cannot prove it zero).
pub(crate) fn host_has_swap() -> bool {
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(s) => s
            .lines()
            .find(|l| l.starts_with("SwapTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .is_none_or(|kb| kb != 0),
        Err(_) => true,
    }
}

/// The regions of a vm-memory guest, anonymous mappings marked as such when
/// the host has no swap.
///
/// # Safety
///
/// The returned slices alias guest memory. The caller must make sure nothing
/// writes it (all vCPUs paused, no device DMA) while the regions are alive,
/// and that `mem` outlives them (enforced by the lifetime).
pub unsafe fn ram_regions_from_guest_memory(mem: &GuestMemoryMmap) -> Vec<RamRegion<'_>> {
    let no_swap = !host_has_swap();
    mem.iter()
        .map(|r| {
            let len = r.len() as usize;
            let ptr = r.as_ptr();
            // SAFETY: the region maps `len` bytes at `ptr` for as long as
            // `mem` lives (the borrow ties the slice to it); the caller
            // guarantees no concurrent writes for that time.
            let data = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
            RamRegion {
                gpa: r.start_addr().0,
                data,
                untouched_reads_zero: no_swap && r.file_offset().is_none(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn guest_memory_regions_are_listed_in_order() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x100_0000), 0x20_0000),
        ])
        .expect("anonymous mmap");
        // SAFETY: no vCPUs: nothing writes `mem` while the regions live.
        let regions = unsafe { ram_regions_from_guest_memory(&mem) };
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[1].gpa, 0x100_0000);
        assert_eq!(regions[1].data.len(), 0x20_0000);
        assert_eq!(regions[0].untouched_reads_zero, !host_has_swap());
    }
}
