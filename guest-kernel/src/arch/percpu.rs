//! Per-CPU data and stacks, all statically allocated for `MAX_CPUS` CPUs.
//!
//! Each CPU's `IA32_GS_BASE` points at its [`PerCpu`], so any code (trap
//! handlers included) finds its CPU number with one `gs`-relative load.
//! Stacks are in `.bss`: the loader hands them over zeroed, at no cost.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use guest_kernel::x86::descriptors::{Tss, IST_COUNT, PERCPU_GDT_ENTRIES};
use guest_kernel::MAX_CPUS;

use super::cpu::IA32_GS_BASE;

/// Kernel (boot and idle) stack per CPU.
pub const KERNEL_STACK_SIZE: usize = 16 * 1024;
/// Each IST stack.
pub const IST_STACK_SIZE: usize = 8 * 1024;

/// A page-aligned block of stack memory.
#[repr(C, align(4096))]
pub struct StackArea<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: the memory is only ever used as stacks, each by the one CPU that
// owns its slice (see `kernel_stack_top` / `ist_stack_top`); Rust code never
// forms references into it.
unsafe impl<const N: usize> Sync for StackArea<N> {}

impl<const N: usize> StackArea<N> {
    fn base(&self) -> u64 {
        self.0.get() as u64
    }
}

/// All kernel stacks; `boot.rs` sets RSP from this symbol before any Rust runs.
#[no_mangle]
pub static KERNEL_STACKS: StackArea<{ KERNEL_STACK_SIZE * MAX_CPUS }> =
    StackArea(UnsafeCell::new([0; KERNEL_STACK_SIZE * MAX_CPUS]));

static IST_STACKS: StackArea<{ IST_STACK_SIZE * IST_COUNT * MAX_CPUS }> =
    StackArea(UnsafeCell::new([0; IST_STACK_SIZE * IST_COUNT * MAX_CPUS]));

/// Top of IST stack `ist` (1-based) of `cpu`.
pub fn ist_stack_top(cpu: usize, ist: usize) -> u64 {
    IST_STACKS.base() + ((cpu * IST_COUNT + ist) * IST_STACK_SIZE) as u64
}

/// Data owned by one CPU. `cpu` must stay the first field: `current_cpu()`
/// reads it at `gs:0`.
#[repr(C)]
pub struct PerCpu {
    /// This CPU's number (0 = boot CPU). Offset 0.
    cpu: AtomicU32,
    /// Its APIC ID.
    apic_id: AtomicU32,
    /// Set once the CPU has printed its online line.
    online: AtomicBool,
    /// The CPU's GDT (null, code, data, TSS).
    pub(super) gdt: UnsafeCell<[u64; PERCPU_GDT_ENTRIES]>,
    /// The CPU's TSS (its IST pointers).
    pub(super) tss: UnsafeCell<Tss>,
}

// SAFETY: the atomics are shared; `gdt` and `tss` are written only by the
// owning CPU while it loads them (`gdt::load`), before anything else can
// reach them, and only read by the CPU hardware afterwards.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    const fn new() -> Self {
        Self {
            cpu: AtomicU32::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            gdt: UnsafeCell::new([0; PERCPU_GDT_ENTRIES]),
            tss: UnsafeCell::new(Tss::new()),
        }
    }

    /// The CPU's APIC ID.
    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Ordering::Relaxed)
    }

    /// Whether the CPU has come online.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Marks the CPU online (after its online line is printed).
    pub fn set_online(&self) {
        self.online.store(true, Ordering::Release);
    }
}

static PERCPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// The per-CPU data of `cpu`, if it is a valid CPU number.
pub fn percpu(cpu: usize) -> Option<&'static PerCpu> {
    PERCPU.get(cpu)
}

/// Makes `cpu` the running CPU's identity: records its APIC ID and points
/// GS at its [`PerCpu`]. The first thing each CPU does in Rust.
pub fn init(cpu: usize, apic_id: u32) -> &'static PerCpu {
    let pc = PERCPU.get(cpu).unwrap_or(&PERCPU[0]);
    pc.cpu.store(cpu as u32, Ordering::Relaxed);
    pc.apic_id.store(apic_id, Ordering::Relaxed);
    // SAFETY: GS_BASE exists on every x86-64 CPU; nothing else uses GS.
    unsafe { IA32_GS_BASE.write(pc as *const PerCpu as u64) };
    pc
}

/// The running CPU's number.
pub fn current_cpu() -> usize {
    let cpu: u32;
    // SAFETY: GS points at this CPU's PerCpu (set by `init` before any code
    // that can call this), whose first field is the CPU number.
    unsafe {
        core::arch::asm!("mov {:e}, gs:[0]", out(reg) cpu, options(readonly, nostack, preserves_flags))
    };
    cpu as usize
}
