//! The local APIC in xAPIC (MMIO) mode.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu::{Port, IA32_APIC_BASE};
use super::traps::SPURIOUS_VECTOR;
use crate::time::Deadline;

/// The architectural default base, used until the MADT says otherwise.
pub const DEFAULT_BASE: u64 = 0xfee0_0000;

/// The LAPIC's physical (= virtual) base. Exported: `ap_start64` reads the
/// APIC ID register through it before the AP has a stack.
#[no_mangle]
static LAPIC_BASE: AtomicU64 = AtomicU64::new(DEFAULT_BASE);

/// Register offsets.
const ID: usize = 0x20;
const TPR: usize = 0x80;
const EOI: usize = 0xb0;
const SVR: usize = 0xf0;
const LVT_LINT0: usize = 0x350;
const LVT_LINT1: usize = 0x360;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_DELIVERY_NMI: u32 = 0x400;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;

/// ICR delivery modes and flags (Intel SDM 11.6.1, Linux `apicdef.h`).
#[allow(dead_code)] // the full set of delivery modes
pub mod icr {
    /// Fixed delivery of a vector.
    pub const FIXED: u32 = 0x000;
    /// NMI delivery.
    pub const NMI: u32 = 0x400;
    /// INIT.
    pub const INIT: u32 = 0x500;
    /// Start-up (SIPI); the low byte is the start page.
    pub const STARTUP: u32 = 0x600;
    /// Level assert.
    pub const ASSERT: u32 = 1 << 14;
    /// Level-triggered.
    pub const LEVEL: u32 = 1 << 15;
    /// Shorthand: all excluding self.
    pub const ALL_BUT_SELF: u32 = 3 << 18;
}

/// Why an IPI was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// The previous IPI stayed pending past the deadline.
    DeliveryTimeout,
}

/// Uses the LAPIC at `base` (from the MADT) from now on.
pub fn set_base(base: u64) {
    if base != 0 {
        LAPIC_BASE.store(base, Ordering::Relaxed);
    }
}

fn reg(offset: usize) -> *mut u32 {
    (LAPIC_BASE.load(Ordering::Relaxed) as usize + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: the LAPIC page is identity-mapped uncached by the boot page
    // tables; reading these registers has no side effects.
    unsafe { reg(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`; callers write only architecturally valid values.
    unsafe { reg(offset).write_volatile(value) }
}

/// Enables the running CPU's LAPIC: global enable in IA32_APIC_BASE,
/// software enable with the spurious vector, accept all priorities. As
/// Linux does: LINT0 (the 8259's ExtINT) is masked, and LINT1 delivers NMIs
/// on the boot CPU only.
pub fn enable(is_bsp: bool) {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; only the global
    // enable bit changes, the base stays.
    unsafe {
        let base = IA32_APIC_BASE.read();
        if base & APIC_BASE_ENABLE == 0 {
            IA32_APIC_BASE.write(base | APIC_BASE_ENABLE);
        }
    }
    write(TPR, 0);
    write(SVR, SVR_ENABLE | SPURIOUS_VECTOR as u32);
    write(LVT_LINT0, LVT_MASKED);
    write(
        LVT_LINT1,
        if is_bsp {
            LVT_DELIVERY_NMI
        } else {
            LVT_DELIVERY_NMI | LVT_MASKED
        },
    );
}

/// Masks every line of both 8259 PICs: interrupts come through the LAPIC
/// only. (The BIOS leaves the PIT's IRQ 0 on vector 8, which would look
/// like a double fault.)
pub fn mask_legacy_pic() {
    // SAFETY: writing OCW1 (the interrupt mask) of the master and slave PIC
    // only masks their inputs.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
    }
}

/// The running CPU's APIC ID from its LAPIC (the ID the MADT lists; KVM
/// sets it from the vCPU index whatever CPUID says).
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Signals end of interrupt.
pub fn eoi() {
    write(EOI, 0);
}

fn wait_idle(deadline: &Deadline) -> Result<(), ApicError> {
    while read(ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
        if deadline.expired() {
            return Err(ApicError::DeliveryTimeout);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Sends an IPI with ICR low word `command` to `dest` (an xAPIC ID; ignored
/// with a shorthand), waiting up to 1 ms for the previous one to be
/// delivered first (as Linux's `__default_send_IPI_dest_field`).
pub fn send_ipi(dest: u32, command: u32) -> Result<(), ApicError> {
    let deadline = Deadline::after_us(1000);
    wait_idle(&deadline)?;
    write(ICR_HIGH, dest << 24);
    write(ICR_LOW, command);
    Ok(())
}

/// Sends fixed interrupt `vector` to the CPU with xAPIC ID `dest`.
pub fn send_vector(dest: u32, vector: u8) -> Result<(), ApicError> {
    send_ipi(dest, icr::FIXED | icr::ASSERT | vector as u32)
}

/// Sends an NMI to the CPU with xAPIC ID `dest`.
pub fn send_nmi(dest: u32) -> Result<(), ApicError> {
    send_ipi(dest, icr::NMI | icr::ASSERT)
}
