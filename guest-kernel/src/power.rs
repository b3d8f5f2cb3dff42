//! Poweroff and reset.
//!
//! Poweroff: ACPI S5 through PM1a_CNT (values from the FADT and `\_S5`, or
//! the `guest_abi::ports` defaults). Reset: the FADT's RESET_REG, then port
//! 0xCF9, then the i8042 reset pulse, then a triple fault.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_abi::ports::{
    PM1A_CNT_BLK, PM1_CNT_SLP_EN, PM1_CNT_SLP_TYP_MASK, PM1_CNT_SLP_TYP_SHIFT, RESET_CONTROL,
    RESET_VALUE, SLP_TYP_S5,
};
use guest_kernel::acpi::{self, Fadt, Platform, GAS_SYSTEM_IO, GAS_SYSTEM_MEMORY};

use crate::arch::cpu::{cli, hlt, lidt, DescriptorPointer, Port};
use crate::platform::IdentityMap;
use crate::time::udelay;

/// PM1a_CNT port (0: the guest_abi default).
static PM1A_CNT: AtomicU32 = AtomicU32::new(0);
/// The DSDT holding `\_S5` (0: none known).
static DSDT: AtomicU64 = AtomicU64::new(0);
/// FADT reset register: address, and space << 8 | value in `RESET_INFO`.
static RESET_ADDR: AtomicU64 = AtomicU64::new(0);
static RESET_INFO: AtomicU32 = AtomicU32::new(0);
const RESET_VALID: u32 = 1 << 16;

/// Records the platform's power registers (call once at boot).
pub fn configure(platform: &Platform) {
    if let Some(fadt) = platform.fadt {
        if fadt.pm1a_cnt <= 0xffff {
            PM1A_CNT.store(fadt.pm1a_cnt, Ordering::Relaxed);
        }
        DSDT.store(fadt.dsdt, Ordering::Relaxed);
        if let Some(r) = fadt.reset {
            RESET_ADDR.store(r.addr, Ordering::Relaxed);
            RESET_INFO.store(
                RESET_VALID | (r.space as u32) << 8 | r.value as u32,
                Ordering::Relaxed,
            );
        }
    }
}

fn slp_en_value(typ: u16) -> u16 {
    ((typ & PM1_CNT_SLP_TYP_MASK) << PM1_CNT_SLP_TYP_SHIFT) | PM1_CNT_SLP_EN
}

/// Powers the machine off; halts if nothing works.
pub fn poweroff() -> ! {
    cli();
    crate::pvpanic::shutdown();
    let port = match PM1A_CNT.load(Ordering::Relaxed) {
        0 => PM1A_CNT_BLK,
        p => p as u16,
    };
    let dsdt = DSDT.load(Ordering::Relaxed);
    let typ = (dsdt != 0)
        .then(|| {
            let fadt = Fadt {
                pm1a_cnt: port as u32,
                reset: None,
                dsdt,
            };
            acpi::s5_slp_typ(&IdentityMap, &fadt)
        })
        .flatten()
        .map_or(SLP_TYP_S5, u16::from);
    // SAFETY: writing SLP_TYP|SLP_EN to PM1a_CNT is the ACPI soft-off request;
    // the machine is meant to stop here. The second write is the documented
    // fallback of our VMM (guest_abi::ports).
    unsafe {
        Port::<u16>::new(port).write(slp_en_value(typ));
        Port::<u16>::new(PM1A_CNT_BLK).write(slp_en_value(SLP_TYP_S5));
    }
    loop {
        hlt();
    }
}

/// Resets the machine.
pub fn reboot() -> ! {
    cli();
    let info = RESET_INFO.load(Ordering::Relaxed);
    if info & RESET_VALID != 0 {
        let addr = RESET_ADDR.load(Ordering::Relaxed);
        let value = info as u8;
        match (info >> 8) as u8 {
            // SAFETY: the FADT names this port as the reset register.
            GAS_SYSTEM_IO if addr <= 0xffff => unsafe { Port::<u8>::new(addr as u16).write(value) },
            // SAFETY: the FADT names this (identity-mapped) address as the
            // reset register.
            GAS_SYSTEM_MEMORY if addr != 0 && addr < (4 << 30) => unsafe {
                (addr as *mut u8).write_volatile(value)
            },
            _ => {}
        }
        udelay(50);
    }
    // SAFETY: the PC reset control register and the keyboard controller's
    // reset pulse; both only reset the machine.
    unsafe {
        Port::<u8>::new(RESET_CONTROL).write(RESET_VALUE);
        udelay(50);
        Port::<u8>::new(0x64).write(0xfe);
        udelay(50);
    }
    // Triple fault: no IDT, then an exception.
    let empty = DescriptorPointer { limit: 0, base: 0 };
    // SAFETY: deliberately breaks exception delivery so int3 triple-faults.
    unsafe {
        lidt(&empty);
        core::arch::asm!("int3", options(nomem, nostack));
    }
    loop {
        hlt();
    }
}
