//! `touch_mem=SIZE` (ours, for benchmarks): after boot, write one non-zero
//! word into every 4 KiB page of SIZE bytes of RAM just above the kernel
//! image, so a dump of a large, mostly untouched guest has a known amount
//! of non-zero data (a sparse dump then holds about SIZE bytes).
//!
//! It costs about five instructions per page (each one emulated at about
//! 1 us on a host without VMX): 64 MiB takes roughly 80 ms.

use guest_kernel::cmdline::{key_eq, params};
use guest_kernel::crashkernel::memparse;
use guest_kernel::memmap::range_is_ram;
use guest_kernel::x86::paging::UNCACHED_START;

use crate::console;
use crate::platform::BootInfo;

const PAGE: u64 = 4096;
const ALIGN: u64 = 2 << 20;

extern "C" {
    static __kernel_end: u8;
}

/// The last `touch_mem=` value on `cmdline`, if any and valid.
fn requested(cmdline: &[u8]) -> Option<u64> {
    params(cmdline)
        .filter(|p| key_eq(p.key, b"touch_mem"))
        .filter_map(|p| p.value.and_then(memparse))
        .last()
}

/// Runs `touch_mem=` if the command line asks for it; prints what it did.
pub fn run(boot: &BootInfo) {
    let Some(size) = requested(boot.cmdline()) else {
        return;
    };
    let size = size.div_ceil(PAGE) * PAGE;
    let kernel_end = (&raw const __kernel_end) as u64;
    let start = kernel_end.next_multiple_of(ALIGN);
    let end = start.saturating_add(size);
    if size == 0 || end > UNCACHED_START || !range_is_ram(boot.memmap(), start, end) {
        console::line()
            .str("touch_mem: ")
            .dec(size >> 20)
            .str(" MiB does not fit in RAM above the kernel; nothing touched\n");
        return;
    }
    let mut addr = start;
    while addr < end {
        // SAFETY: [start, end) is RAM per the memory map, identity-mapped
        // (below UNCACHED_START) and above the kernel image and its .bss,
        // so nothing of the kernel lives there.
        unsafe { core::ptr::write_volatile(addr as *mut u64, addr | 1) };
        addr += PAGE;
    }
    console::line()
        .str("touch_mem: touched ")
        .dec(size >> 20)
        .str(" MiB at ")
        .hex(start)
        .str("-")
        .hex(end)
        .str("\n");
}
