//! The first kernel's side of `kexec -p`, which the VMM performed at boot
//! (`guest_abi::kexec`): the descriptor it passed as PVH module 0, the
//! purgatory check before the jump, and the jump itself.
//!
//! A crash kernel counts as loaded (`kexec_crash_image != NULL`) only when
//! `crashkernel=` reserved a region AND a valid descriptor describes it; as
//! on Linux, the reservation alone is not `kexec -p`.

use core::sync::atomic::{AtomicBool, Ordering};

use guest_abi::kexec::KexecDescriptor;
use guest_abi::pv::kdump::reason;
use guest_kernel::kexec::{
    check_descriptor, check_module, corruption_target, digest_bytes_covered, image_digest,
    DescriptorError,
};
use guest_kernel::sync::SetOnce;

use crate::arch::cpu::rdtsc;
use crate::platform::BootInfo;
use crate::{console, pv, time};

/// The descriptor, copied out of the region at boot.
static IMAGE: SetOnce<KexecDescriptor> = SetOnce::new();
/// Whether the image is loaded (cleared when the purgatory check fails).
static LOADED: AtomicBool = AtomicBool::new(false);

/// Whether a capture kernel is loaded.
pub fn loaded() -> bool {
    LOADED.load(Ordering::Acquire)
}

fn read_descriptor(
    boot: &BootInfo,
    region: (u64, u64),
) -> Result<KexecDescriptor, DescriptorError> {
    let Some((module, cmdline)) = boot.module0() else {
        return Err(DescriptorError::NotKexecModule);
    };
    check_module(&module, cmdline, region)?;
    // SAFETY: `check_module` put a whole descriptor inside the reserved
    // region, which is RAM below 4 GiB (identity-mapped) that only the VMM
    // wrote; any bit pattern is a valid descriptor, read_unaligned makes no
    // alignment demand.
    let d = unsafe { (module.paddr as *const KexecDescriptor).read_unaligned() };
    check_descriptor(&d, region)?;
    Ok(d)
}

/// Reads and checks PVH module 0 against the reserved `region` and prints
/// the boot line. `corrupt`: the test-only `kexec_corrupt_image` knob.
pub fn load(boot: &BootInfo, region: (u64, u64), corrupt: bool) {
    let d = match read_descriptor(boot, region) {
        Ok(d) => d,
        Err(DescriptorError::NotKexecModule) if boot.module0().is_none() => {
            console::line().str("kexec: no capture kernel loaded\n");
            return;
        }
        Err(e) => {
            console::line()
                .str("kexec: no capture kernel loaded (")
                .str(e.as_str())
                .str(")\n");
            return;
        }
    };
    IMAGE.set(d);
    LOADED.store(true, Ordering::Release);
    console::line()
        .str("kexec: capture kernel loaded (entry ")
        .hex(d.entry)
        .str(", digest ")
        .hex(d.digest)
        .str(")\n");
    if corrupt {
        if let Some(at) = corruption_target(&d) {
            // SAFETY: the target lies in a digest range, which
            // `check_descriptor` put inside the reserved region (RAM below
            // 4 GiB, identity-mapped, used by nothing else). This is the
            // deliberate stray write the test-only knob asks for.
            unsafe {
                let p = at as *mut u8;
                p.write_volatile(!p.read_volatile());
            }
            console::line()
                .str("kexec: kexec_corrupt_image: flipped the byte at ")
                .hex(at)
                .str(" (test only)\n");
        }
    }
}

/// Recomputes the digest over the loaded ranges (purgatory's check).
fn image_digest_now(d: &KexecDescriptor) -> u64 {
    image_digest(d, |gpa, len| {
        // SAFETY: `check_descriptor` made every range 8-byte aligned, a
        // multiple of 8 long and inside the reserved region (identity-mapped
        // RAM below 4 GiB); the other CPUs are stopped, nothing writes it.
        unsafe { core::slice::from_raw_parts(gpa as *const u64, (len / 8) as usize) }
    })
}

/// After `machine_crash_shutdown`, on the panicking CPU: verifies the image
/// and jumps to the capture kernel. Returns only when there is nothing to
/// jump to: no image, or a corrupt one (then reported, and unloaded, so
/// the panic goes on down the no-kdump path and pvpanic says PANICKED).
pub fn kexec_crash() {
    let Some(d) = IMAGE.get().filter(|_| loaded()) else {
        return;
    };
    let t0 = rdtsc();
    let digest = image_digest_now(&d);
    let us = rdtsc().wrapping_sub(t0).saturating_mul(1000) / time::tsc_khz().max(1);
    if digest != d.digest {
        LOADED.store(false, Ordering::Release);
        console::line()
            .str("kexec: capture kernel image corrupt (digest mismatch); kdump unavailable\n");
        pv::kdump::capture_failed(reason::IMAGE_CORRUPT, digest);
        return;
    }
    console::line()
        .str("kexec: capture image digest ok (")
        .dec(digest_bytes_covered(&d))
        .str(" bytes in ")
        .dec(us)
        .str(" us)\n");
    // The elfcorehdr the capture kernel's command line names; the first
    // kernel prepared it there at boot (`crash::prepare_elfcorehdr`).
    pv::kdump::kexec_handover(d.entry, d.elfcorehdr);
    console::line()
        .str("kexec: jumping to capture kernel at ")
        .hex(d.entry)
        .str("\n");
    console::panic_flush();
    // SAFETY: the digest matched, so `entry` is the VMM's `kexec_entry64`
    // stub inside the region and `cr3`/`start_info` the tables and boot data
    // it built there (checked at boot). The stub's page is identity-mapped in
    // both page tables; it takes rdi = CR3, rsi = start_info with interrupts
    // off and never returns. The other CPUs are parked in the stop loop.
    unsafe {
        core::arch::asm!(
            "cli",
            "jmp {entry}",
            entry = in(reg) d.entry,
            in("rdi") d.cr3,
            in("rsi") d.start_info,
            options(noreturn),
        )
    }
}
