//! Bringing up the application processors, as Linux does: INIT, then two
//! SIPIs pointing at a real-mode trampoline, per AP in MADT order. The INITs
//! and SIPIs go to all APs first and the wait comes after, so the APs boot
//! in parallel.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use guest_kernel::acpi::CpuList;
use guest_kernel::MAX_CPUS;

use crate::arch::apic::{self, icr};
use crate::arch::percpu::percpu;
use crate::boot::{trampoline_code, TRAMPOLINE_ADDR};
use crate::console;
use crate::time::{udelay, Deadline};

/// CPU number by xAPIC ID (0xff: not ours). Read by `ap_start64` in boot.rs
/// before the AP has a stack.
#[no_mangle]
static APIC_TO_CPU: [AtomicU8; 256] = [const { AtomicU8::new(0xff) }; 256];

static ONLINE: AtomicU32 = AtomicU32::new(0);
/// Bit n set: CPU n is online (Linux's `cpu_online_mask`). The stop paths
/// clear a CPU's bit when it stops.
static ONLINE_MASK: AtomicU64 = AtomicU64::new(0);
/// CPUs the boot CPU expected (from the MADT, capped by nr_cpus).
static EXPECTED: AtomicU32 = AtomicU32::new(1);

/// xAPIC ID 0xff is the broadcast address: IDs from here on need x2APIC.
const XAPIC_BROADCAST: u32 = 0xff;

/// How long the boot CPU waits for all APs (Linux waits up to 10 s per CPU).
/// A VM usually answers in microseconds, but with many vCPU threads on a few
/// busy host cores (64 vCPUs on 2 loaded cores here) 1 s was seen to be too
/// short; the wait ends as soon as every AP is in, so only a dead AP pays.
const AP_BOOT_TIMEOUT_US: u64 = 10_000_000;
/// Linux's spacing: INIT to SIPI, and SIPI to the second SIPI.
const INIT_TO_SIPI_US: u64 = 10;
const SIPI_TO_SIPI_US: u64 = 200;

/// Records `cpu` as online (called by each CPU after its online line).
pub fn mark_online(cpu: usize) {
    if let Some(pc) = percpu(cpu) {
        pc.set_online();
    }
    ONLINE_MASK.fetch_or(1 << (cpu % 64), Ordering::AcqRel);
    ONLINE.fetch_add(1, Ordering::AcqRel);
}

/// The online mask (bit n = CPU n).
pub fn online_mask() -> u64 {
    ONLINE_MASK.load(Ordering::Acquire)
}

/// Takes `cpu` out of the online mask (it stopped).
pub fn set_offline(cpu: usize) {
    ONLINE_MASK.fetch_and(!(1 << (cpu % 64)), Ordering::AcqRel);
}

/// Number of CPUs the kernel knows about (crash-note buffers in use).
pub fn expected_cpus() -> u32 {
    EXPECTED.load(Ordering::Relaxed)
}

/// Records how many CPUs the boot CPU is bringing up.
pub fn set_expected(n: u32) {
    EXPECTED.store(n.max(1), Ordering::Relaxed);
}

/// The xAPIC ID of `cpu`.
pub fn apic_id_of(cpu: usize) -> Option<u32> {
    percpu(cpu).map(|pc| pc.apic_id())
}

/// CPUs online so far.
pub fn online_count() -> u32 {
    ONLINE.load(Ordering::Acquire)
}

/// Why no AP was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmpError {
    /// The trampoline page is not RAM in the memory map.
    TrampolineNotRam,
}

/// Starts every CPU of `order` but the first (the boot CPU, already online)
/// and waits a bounded time for them. Returns how many came online in all.
/// `trampoline_is_ram` tells whether the trampoline page may be written.
pub fn boot_secondaries(order: &CpuList, trampoline_is_ram: bool) -> Result<u32, SmpError> {
    let aps = order.as_slice().get(1..).unwrap_or(&[]);
    if aps.is_empty() {
        return Ok(online_count());
    }
    if !trampoline_is_ram {
        return Err(SmpError::TrampolineNotRam);
    }
    for (cpu, &apic_id) in order.as_slice().iter().enumerate().take(MAX_CPUS) {
        match APIC_TO_CPU.get(apic_id as usize) {
            Some(slot) if apic_id < XAPIC_BROADCAST => slot.store(cpu as u8, Ordering::Relaxed),
            // Reported as not online below; reaching it needs x2APIC mode.
            _ => console::line()
                .str("smp: apic ")
                .dec(apic_id as u64)
                .str(" is beyond xAPIC reach; not started\n")
                .done(),
        }
    }
    let code = trampoline_code();
    // SAFETY: the caller checked the trampoline page is RAM; nothing else
    // lives there (see TRAMPOLINE_ADDR), and the copy is a few hundred bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), TRAMPOLINE_ADDR as *mut u8, code.len());
    }
    // The APIC_TO_CPU stores and the copy must be visible before any AP runs;
    // the ICR writes are uncached MMIO, ordered after them on x86.

    let sipi = icr::STARTUP | (TRAMPOLINE_ADDR >> 12) as u32;
    let reachable = || aps.iter().copied().filter(|id| *id < XAPIC_BROADCAST);
    for apic_id in reachable() {
        send(apic_id, icr::INIT | icr::LEVEL | icr::ASSERT);
        send(apic_id, icr::INIT | icr::LEVEL);
    }
    udelay(INIT_TO_SIPI_US);
    for apic_id in reachable() {
        send(apic_id, sipi);
    }
    // The second SIPI goes only to APs that have not yet checked in (a CPU
    // already running ignores a SIPI anyway).
    let second = Deadline::after_us(SIPI_TO_SIPI_US);
    let expected = order.len() as u32;
    while online_count() < expected && !second.expired() {
        core::hint::spin_loop();
    }
    for (cpu, &apic_id) in aps.iter().enumerate() {
        if apic_id < XAPIC_BROADCAST && percpu(cpu + 1).is_some_and(|pc| !pc.is_online()) {
            send(apic_id, sipi);
        }
    }

    let deadline = Deadline::after_us(AP_BOOT_TIMEOUT_US);
    while online_count() < expected && !deadline.expired() {
        core::hint::spin_loop();
    }
    for (cpu, &apic_id) in aps.iter().enumerate() {
        if percpu(cpu + 1).is_some_and(|pc| !pc.is_online()) {
            console::line()
                .str("CPU ")
                .dec(cpu as u64 + 1)
                .str(" (apic ")
                .dec(apic_id as u64)
                .str(") did not come online\n");
        }
    }
    Ok(online_count())
}

fn send(apic_id: u32, command: u32) {
    if apic::send_ipi(apic_id, command).is_err() {
        console::line()
            .str("smp: IPI to apic ")
            .dec(apic_id as u64)
            .str(" not delivered\n");
    }
}
