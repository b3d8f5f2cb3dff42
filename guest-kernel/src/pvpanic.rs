//! The pvpanic driver (Linux `drivers/misc/pvpanic`, QEMU
//! docs/specs/pvpanic.rst): one byte-wide port. A read gives the events the
//! device supports (0xFF: no device); the panic notifier writes
//! CRASH_LOADED when a crash kernel is loaded, else PANICKED, masked by
//! that capability; the poweroff path writes SHUTDOWN if supported. With
//! `pvpanic_crash_loaded=off` it behaves as the driver did before
//! CRASH_LOADED existed: PANICKED whether or not a crash kernel is loaded.

use core::sync::atomic::{AtomicU8, Ordering};

use guest_abi::ports::{PVPANIC, PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, PVPANIC_SHUTDOWN};
use guest_kernel::notifier::{NotifierList, PRIORITY_MAX};

use crate::arch::cpu::Port;
use crate::{console, crash, panic};

/// Supported events; 0 without a device.
static EVENTS: AtomicU8 = AtomicU8::new(0);

const ALL_EVENTS: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN;

/// Probes the device and registers the notifier (highest priority, on the
/// hypervisor list, as Linux does).
pub fn init() {
    // SAFETY: reading the pvpanic port only returns the capability mask.
    let mask = unsafe { Port::<u8>::new(PVPANIC).read() };
    if mask == 0xff || mask & ALL_EVENTS == 0 {
        console::line().str("pvpanic: no device\n");
        return;
    }
    EVENTS.store(mask & ALL_EVENTS, Ordering::Relaxed);
    console::line()
        .str("pvpanic: events ")
        .hex(mask as u64)
        .str("\n");
    panic::register_notifier(NotifierList::Hypervisor, PRIORITY_MAX, "pvpanic", notifier);
}

fn send(event: u8) {
    // SAFETY: writing supported event bits to the pvpanic port only reports
    // them to the host.
    unsafe { Port::<u8>::new(PVPANIC).write(event) };
}

/// `pvpanic_panic_notify`.
fn notifier(_msg: &[u8]) {
    let event = if crash::crash_kernel_loaded() && panic::knobs().pvpanic_crash_loaded {
        PVPANIC_CRASH_LOADED
    } else {
        PVPANIC_PANICKED
    };
    let event = event & EVENTS.load(Ordering::Relaxed);
    if event != 0 {
        send(event);
    }
}

/// The SHUTDOWN event on the poweroff path, if supported.
pub fn shutdown() {
    if EVENTS.load(Ordering::Relaxed) & PVPANIC_SHUTDOWN != 0 {
        send(PVPANIC_SHUTDOWN);
    }
}
