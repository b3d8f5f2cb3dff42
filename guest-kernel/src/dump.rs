//! What the panic path leaves for the host: the VMCOREINFO note (built at
//! boot, registered through the vmcoreinfo device) and the kmsg_dump
//! region (a pstore-like copy of the kmsg ring).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_abi::elfnote::{
    VMCOREINFO_CRASH_NOTES, VMCOREINFO_CRASH_NOTES_STRIDE, VMCOREINFO_ETEXT, VMCOREINFO_KERNEL_CS,
    VMCOREINFO_LOG_BUF, VMCOREINFO_LOG_BUF_HEAD, VMCOREINFO_LOG_BUF_LEN, VMCOREINFO_NR_CPUS,
    VMCOREINFO_OSRELEASE, VMCOREINFO_PAGESIZE, VMCOREINFO_PANIC_CPU, VMCOREINFO_PANIC_MSG,
    VMCOREINFO_PANIC_MSG_LEN, VMCOREINFO_PSTORE, VMCOREINFO_PSTORE_LEN, VMCOREINFO_STOP_LOOP_END,
    VMCOREINFO_STOP_LOOP_START,
};
use guest_kernel::kmsg::{pstore_header, PSTORE_HEADER_LEN};
use guest_kernel::vmcoreinfo::{VmcoreinfoBuilder, VMCOREINFO_NOTE_MAX};
use guest_kernel::x86::descriptors::KERNEL_CS;

use crate::{console, crash, panic, pv, smp};

/// Bytes of the kmsg_dump region.
pub const PSTORE_LEN: usize = 64 * 1024;

/// The kmsg_dump region, reserved RAM in .bss (`SYMBOL(pstore)`).
#[repr(C, align(4096))]
pub struct Pstore(UnsafeCell<[u8; PSTORE_LEN]>);

// SAFETY: written only by the panicking CPU in `kmsg_dump`; read by the VMM.
unsafe impl Sync for Pstore {}

/// The region.
#[no_mangle]
pub static PSTORE: Pstore = Pstore(UnsafeCell::new([0; PSTORE_LEN]));

/// The VMCOREINFO note buffer.
#[repr(C, align(4096))]
pub struct VmcoreinfoNote(UnsafeCell<[u8; VMCOREINFO_NOTE_MAX]>);

// SAFETY: written once by the boot CPU before other CPUs run; then read-only.
unsafe impl Sync for VmcoreinfoNote {}

/// The note (`vmcoreinfo_note` in Linux).
#[no_mangle]
pub static VMCOREINFO_NOTE: VmcoreinfoNote =
    VmcoreinfoNote(UnsafeCell::new([0; VMCOREINFO_NOTE_MAX]));

static VMCOREINFO_SIZE: AtomicU64 = AtomicU64::new(0);

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
}

/// Address and size of the VMCOREINFO note (size 0 before it is built).
pub fn vmcoreinfo_note() -> (u64, u64) {
    (
        VMCOREINFO_NOTE.0.get() as u64,
        VMCOREINFO_SIZE.load(Ordering::Relaxed),
    )
}

/// Builds the VMCOREINFO note and registers it with the VMM (boot CPU,
/// after SMP bring-up so `nr_cpus` is known).
pub fn init_vmcoreinfo() {
    // SAFETY: the boot CPU is the only writer, once (see `VmcoreinfoNote`).
    let buf = unsafe { &mut *VMCOREINFO_NOTE.0.get() };
    let (notes, stride) = crash::crash_notes();
    let (log_buf, log_len) = console::log_buf();
    let text = (&raw const __text_start) as u64;
    let etext = (&raw const __text_end) as u64;
    let (stop_start, stop_end) = crash::stop_loop_bounds();
    let mut b = VmcoreinfoBuilder::new(buf);
    b.str(VMCOREINFO_OSRELEASE, env!("CARGO_PKG_VERSION").as_bytes())
        .dec(VMCOREINFO_PAGESIZE, 4096)
        .hex(VMCOREINFO_CRASH_NOTES, notes)
        .dec(VMCOREINFO_CRASH_NOTES_STRIDE, stride as u64)
        .dec(VMCOREINFO_NR_CPUS, smp::expected_cpus() as u64)
        .hex(VMCOREINFO_STEXT_KEY, text)
        .hex(VMCOREINFO_ETEXT, etext)
        .dec(VMCOREINFO_KERNEL_CS, KERNEL_CS as u64)
        .hex(VMCOREINFO_LOG_BUF, log_buf)
        .dec(VMCOREINFO_LOG_BUF_LEN, log_len as u64)
        .hex(
            VMCOREINFO_LOG_BUF_HEAD,
            (&raw const console::LOG_BUF_HEAD) as u64,
        )
        .hex(VMCOREINFO_PANIC_MSG, (&raw const panic::PANIC_MSG) as u64)
        .dec(VMCOREINFO_PANIC_MSG_LEN, panic::PANIC_MSG_LEN as u64)
        .hex(VMCOREINFO_PANIC_CPU, (&raw const panic::PANIC_CPU) as u64)
        .hex(VMCOREINFO_PSTORE, PSTORE.0.get() as u64)
        .dec(VMCOREINFO_PSTORE_LEN, PSTORE_LEN as u64)
        .hex(VMCOREINFO_STOP_LOOP_START, stop_start)
        .hex(VMCOREINFO_STOP_LOOP_END, stop_end);
    let overflow = b.overflowed();
    let size = b.finish();
    VMCOREINFO_SIZE.store(size as u64, Ordering::Relaxed);
    let addr = VMCOREINFO_NOTE.0.get() as u64;
    if overflow {
        console::line().str("vmcoreinfo: note truncated\n");
    }
    let mut line = console::line();
    line.str("vmcoreinfo: note at ")
        .hex(addr)
        .str(" (")
        .dec(size as u64)
        .str(" bytes), ");
    match pv::vmcoreinfo::register(addr, size as u32) {
        None => line.str("no vmcoreinfo device\n"),
        Some(0) => line.str("registered\n"),
        Some(s) => line.str("rejected (status ").dec(s as u64).str(")\n"),
    };
}

use guest_abi::elfnote::VMCOREINFO_STEXT as VMCOREINFO_STEXT_KEY;

/// Bytes of the last kmsg_dump (0: none yet).
static DUMPED: AtomicU64 = AtomicU64::new(0);

/// `kmsg_dump(KMSG_DUMP_PANIC)` to the pstore-like region: header, then
/// the ring's text, oldest first.
pub fn kmsg_dump() {
    // SAFETY: only the panicking CPU runs kmsg_dump (see `Pstore`).
    let region = unsafe { &mut *PSTORE.0.get() };
    let (n, first, end) =
        console::copy_ring(region.get_mut(PSTORE_HEADER_LEN..).unwrap_or(&mut []));
    let header = pstore_header(n as u32, first, end);
    console::copy_bytes(region, &header);
    DUMPED.store(n as u64, Ordering::Relaxed);
    console::line()
        .str("kmsg_dump: ")
        .dec(n as u64)
        .str(" bytes to pstore at ")
        .hex(PSTORE.0.get() as u64)
        .str("\n");
}
