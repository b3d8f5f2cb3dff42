//! TSC-based time: frequency discovery, delays and deadlines.
//!
//! The TSC frequency comes from, in order: CPUID 0x15 (crystal ratio), the
//! hypervisor leaf `guest_abi::cpuid::TSC_KHZ_LEAF` (our VMM fills it), or a
//! calibration against PIT channel 2 (best of three 2 ms runs, as Linux's
//! `pit_calibrate_tsc`).

use core::sync::atomic::{AtomicU64, Ordering};

use guest_abi::cpuid::{HYPERVISOR_BASE_LEAF, TSC_KHZ_LEAF};

use crate::arch::cpu::{cpuid, rdtsc, Port};

/// Assumed until `init` runs, and if every method fails.
const FALLBACK_KHZ: u64 = 1_000_000;
/// Frequencies outside this range are not believed.
const MIN_KHZ: u64 = 100_000;
const MAX_KHZ: u64 = 100_000_000;

static TSC_KHZ: AtomicU64 = AtomicU64::new(FALLBACK_KHZ);

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID leaf 0x15.
    Cpuid15,
    /// The hypervisor timing leaf.
    Hypervisor,
    /// Calibrated against the PIT.
    Pit,
    /// Nothing worked; a guess.
    Fallback,
}

impl TscSource {
    /// Name for the boot log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpuid15 => "cpuid 0x15",
            Self::Hypervisor => "hypervisor leaf",
            Self::Pit => "PIT calibration",
            Self::Fallback => "guess",
        }
    }
}

fn plausible(khz: u64) -> Option<u64> {
    (MIN_KHZ..=MAX_KHZ).contains(&khz).then_some(khz)
}

fn from_cpuid15() -> Option<u64> {
    if cpuid(0, 0).eax < 0x15 {
        return None;
    }
    let r = cpuid(0x15, 0);
    if r.eax == 0 || r.ebx == 0 || r.ecx == 0 {
        return None;
    }
    plausible(r.ecx as u64 * r.ebx as u64 / r.eax as u64 / 1000)
}

/// The "hypervisor present" bit (CPUID.1:ECX[31]) is not required: a VMM
/// that passes KVM's supported CPUID through may leave it clear. Bare metal
/// answers leaf 0x4000_0000 with its highest basic leaf (Intel) or zeros
/// (AMD), which the range check rejects.
fn from_hypervisor_leaf() -> Option<u64> {
    let max = cpuid(HYPERVISOR_BASE_LEAF, 0).eax;
    if !(TSC_KHZ_LEAF..HYPERVISOR_BASE_LEAF + 0x100).contains(&max) {
        return None;
    }
    plausible(cpuid(TSC_KHZ_LEAF, 0).eax as u64)
}

/// Best of three short runs: a run the host preempted only reads long.
fn from_pit() -> Option<u64> {
    (0..3).filter_map(|_| pit_run()).min()
}

fn pit_run() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const MS: u64 = 2;
    const LATCH: u64 = PIT_HZ * MS / 1000;
    const MAX_POLLS: u32 = 1 << 24;
    let ctrl = Port::<u8>::new(0x61);
    let mode = Port::<u8>::new(0x43);
    let ch2 = Port::<u8>::new(0x42);
    // SAFETY: standard PC PIT/port-0x61 programming: gate channel 2 on with
    // the speaker off, mode 0 (interrupt on terminal count), LSB then MSB.
    // Only channel 2, which nothing else uses, is touched.
    let (t0, t1, polls) = unsafe {
        let v = ctrl.read();
        ctrl.write((v & !0x02) | 0x01);
        mode.write(0xb0);
        ch2.write(LATCH as u8);
        ch2.write((LATCH >> 8) as u8);
        let t0 = rdtsc();
        let mut polls = 0;
        while ctrl.read() & 0x20 == 0 && polls < MAX_POLLS {
            polls += 1;
        }
        (t0, rdtsc(), polls)
    };
    if polls == 0 || polls >= MAX_POLLS {
        return None;
    }
    plausible((t1 - t0) / MS)
}

/// Determines the TSC frequency. Call once on the boot CPU.
pub fn init() -> (u64, TscSource) {
    let (khz, source) = if let Some(k) = from_cpuid15() {
        (k, TscSource::Cpuid15)
    } else if let Some(k) = from_hypervisor_leaf() {
        (k, TscSource::Hypervisor)
    } else if let Some(k) = from_pit() {
        (k, TscSource::Pit)
    } else {
        (FALLBACK_KHZ, TscSource::Fallback)
    };
    TSC_KHZ.store(khz, Ordering::Relaxed);
    (khz, source)
}

/// TSC frequency in kHz.
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// A point in time, for bounded waits.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    tsc: u64,
}

impl Deadline {
    /// `us` microseconds from now.
    pub fn after_us(us: u64) -> Self {
        Self {
            tsc: rdtsc().saturating_add(us.saturating_mul(tsc_khz()) / 1000),
        }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        rdtsc() >= self.tsc
    }
}

/// Busy-waits `us` microseconds.
pub fn udelay(us: u64) {
    let d = Deadline::after_us(us);
    while !d.expired() {
        core::hint::spin_loop();
    }
}

/// Busy-waits `ms` milliseconds.
pub fn mdelay(ms: u64) {
    udelay(ms.saturating_mul(1000));
}
