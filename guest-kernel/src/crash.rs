//! Stopping the other CPUs, crash notes, and `crash_kexec` (Linux
//! `arch/x86/kernel/{smp.c,crash.c,reboot.c}` and `kernel/kexec_core.c`).
//!
//! - [`smp_send_stop`]: a normal IPI ([`REBOOT_VECTOR`]); each CPU marks
//!   itself offline and halts, saving nothing. CPUs that don't answer
//!   within 1 s (interrupts off) get an NMI that stops them the same way.
//! - [`crash_smp_send_stop`] (`nmi_shootdown_cpus`): runs once; an NMI to
//!   every CPU still online. Each runs [`crash_save_cpu`] on its NMI frame,
//!   tears down VMX (VMCLEAR, VMXOFF), acknowledges and halts. CPUs a plain
//!   stop already took offline are not shot down: that is the 2016 bug.
//! - [`crash_kexec`]: nothing unless a capture kernel is loaded
//!   (`kexec_jump`); then `machine_crash_shutdown` (the shootdown, the
//!   panicking CPU's own save and VMX teardown), purgatory's digest check
//!   and the jump to the capture kernel on this CPU. A corrupt image is
//!   reported and unloaded, and the panic carries on.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use guest_abi::elfnote::{CrashNote, CRASH_NOTE_BYTES};
use guest_kernel::cmdline::ElfcorehdrScribble;
use guest_kernel::crashnote::{prstatus_from_frame, SegmentState};
use guest_kernel::elfcorehdr::{build_elfcorehdr, scribble_elfcorehdr, CoreHdrLayout, PhysRange};
use guest_kernel::x86::trapframe::TrapFrame;
use guest_kernel::MAX_CPUS;

use crate::arch::cpu::{cli, data_selectors, rdtsc, IA32_FS_BASE, IA32_GS_BASE};
use crate::arch::traps::{register_irq_handler, register_nmi_handler, NmiAction};
use crate::arch::{apic, percpu::current_cpu};
use crate::time::{self, Deadline};
use crate::{console, kexec_jump, panic, pv, smp};

// The stop loop: where every stopped CPU halts for good (with interrupts
// off; an NMI runs its handler and returns here). Its bounds are published
// in VMCOREINFO (`SYMBOL(stop_loop_start)`, `SYMBOL(stop_loop_end)`,
// inclusive) so the host can check that stopped vCPUs are parked in it.
// Register contract: entered by call, never returns, clobbers nothing.
core::arch::global_asm!(
    r#"
    .pushsection .text.stop_loop, "ax"
    .globl stop_loop_start
    .globl stop_loop_end
stop_loop_start:
    cli
1:  hlt
    jmp 1b
stop_loop_end:
    .popsection
    "#
);

extern "C" {
    fn stop_loop_start() -> !;
    static stop_loop_end: u8;
}

/// Bounds of the stop loop, `[start, end]`.
pub fn stop_loop_bounds() -> (u64, u64) {
    (
        stop_loop_start as *const () as u64,
        (&raw const stop_loop_end) as u64,
    )
}

/// Halts this CPU for good in the stop loop.
fn park() -> ! {
    // SAFETY: the loop only disables interrupts and halts.
    unsafe { stop_loop_start() }
}

/// The stop IPI vector (Linux x86 `REBOOT_VECTOR`).
pub const REBOOT_VECTOR: u8 = 0xf8;

/// How long the stop paths wait for the other CPUs.
const STOP_WAIT_US: u64 = 1_000_000;

/// A CPU's state on the crash path (for `panic_print=0x40`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuCrashState {
    /// Running (or never seen).
    Running = 0,
    /// Stopped by `smp_send_stop` (IPI or NMI): nothing saved.
    Stopped = 1,
    /// Saved its registers in the NMI shootdown and stopped.
    SavedByNmi = 2,
    /// The panicking CPU, registers saved by `crash_setup_regs`.
    SavedSelf = 3,
    /// Stopped itself after losing the race to panic (still online).
    SelfStopped = 4,
}

impl CpuCrashState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Stopped,
            2 => Self::SavedByNmi,
            3 => Self::SavedSelf,
            4 => Self::SelfStopped,
            _ => Self::Running,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped (not saved)",
            Self::SavedByNmi => "saved by NMI",
            Self::SavedSelf => "saved (panic CPU)",
            Self::SelfStopped => "self-stopped",
        }
    }
}

static CPU_STATE: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

fn set_state(cpu: usize, s: CpuCrashState) {
    if let Some(slot) = CPU_STATE.get(cpu) {
        slot.store(s as u8, Ordering::Release);
    }
}

fn state(cpu: usize) -> CpuCrashState {
    CPU_STATE.get(cpu).map_or(CpuCrashState::Running, |s| {
        CpuCrashState::from_u8(s.load(Ordering::Acquire))
    })
}

/// Per-CPU crash-note buffers (`SYMBOL(crash_notes)`), all zero until saved.
#[repr(C, align(64))]
pub struct CrashNotes(UnsafeCell<[CrashNote; MAX_CPUS]>);

// SAFETY: CPU n writes only buffer n, once, from its NMI handler or from
// the panic path; the VMM reads them from outside.
unsafe impl Sync for CrashNotes {}

/// The crash notes, in .bss.
#[no_mangle]
pub static CRASH_NOTES: CrashNotes = CrashNotes(UnsafeCell::new([CrashNote::empty(); MAX_CPUS]));

/// Address of CPU 0's buffer and the stride (`NUMBER(crash_notes_stride)`).
pub fn crash_notes() -> (u64, usize) {
    (CRASH_NOTES.0.get() as u64, CRASH_NOTE_BYTES)
}

/// `crash_save_cpu`: writes CPU `cpu`'s note from `frame`.
fn crash_save_cpu(frame: &TrapFrame, cpu: usize) {
    if cpu >= MAX_CPUS {
        return;
    }
    let (ds, es, fs, gs) = data_selectors();
    // SAFETY: the FS/GS base MSRs exist on every x86-64 CPU.
    let (fs_base, gs_base) = unsafe { (IA32_FS_BASE.read(), IA32_GS_BASE.read()) };
    let seg = SegmentState {
        fs_base,
        gs_base,
        ds: ds as u64,
        es: es as u64,
        fs: fs as u64,
        gs: gs as u64,
    };
    let status = prstatus_from_frame(frame, &seg, cpu);
    // SAFETY: only CPU `cpu` writes buffer `cpu` (see `CrashNotes`).
    let notes = unsafe { &mut *CRASH_NOTES.0.get() };
    if let Some(note) = notes.get_mut(cpu) {
        note.write(&status);
    }
}

/// `crash_setup_regs`: the caller's running context, as Linux's macro of
/// the same name. Always inlined, so RIP, RSP and RBP belong to the
/// caller's frame: a backtrace from the note walks up through `panic()`
/// (frame pointers) for as long as the caller has not returned. (A saved
/// context of a returned function is overwritten by the next call at the
/// same depth.)
#[inline(always)]
fn crash_setup_regs() -> TrapFrame {
    let mut f = TrapFrame::default();
    let p: *mut TrapFrame = &mut f;
    // SAFETY: stores the GPRs, RIP, CS, RFLAGS, RSP and SS into `f` through
    // `p` (TrapFrame is repr(C) u64s; offsets from its layout test). The
    // pushfq/pop pair uses this function's own stack.
    unsafe {
        core::arch::asm!(
            "mov [{p} + 0], r15",
            "mov [{p} + 8], r14",
            "mov [{p} + 16], r13",
            "mov [{p} + 24], r12",
            "mov [{p} + 32], rbp",
            "mov [{p} + 40], rbx",
            "mov [{p} + 48], r11",
            "mov [{p} + 56], r10",
            "mov [{p} + 64], r9",
            "mov [{p} + 72], r8",
            "mov [{p} + 80], rax",
            "mov [{p} + 88], rcx",
            "mov [{p} + 96], rdx",
            "mov [{p} + 104], rsi",
            "mov [{p} + 112], rdi",
            "2:",
            "lea {t}, [rip + 2b]",
            "mov [{p} + 136], {t}",
            "xor {t:e}, {t:e}",
            "mov {t:x}, cs",
            "mov [{p} + 144], {t}",
            "pushfq",
            "pop {t}",
            "mov [{p} + 152], {t}",
            "mov [{p} + 160], rsp",
            "xor {t:e}, {t:e}",
            "mov {t:x}, ss",
            "mov [{p} + 168], {t}",
            p = in(reg) p,
            t = out(reg) _,
        )
    };
    f
}

// --- smp_send_stop ---------------------------------------------------------

/// Set while `smp_send_stop` wants CPUs to stop (its NMI fallback checks it).
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
/// CPUs the stop NMI fallback targets.
static STOP_NMI_TARGETS: AtomicU64 = AtomicU64::new(0);

/// `stop_this_cpu`: offline, halt with interrupts off. Saves nothing.
fn stop_this_cpu(cpu: usize) -> ! {
    set_state(cpu, CpuCrashState::Stopped);
    smp::set_offline(cpu);
    park()
}

fn reboot_vector_handler(_frame: &mut TrapFrame, cpu: usize) {
    if STOP_REQUESTED.load(Ordering::Acquire) && panic::panic_cpu() != Some(cpu as u32) {
        stop_this_cpu(cpu);
    }
}

fn others_online(me: usize) -> u64 {
    smp::online_mask() & !(1u64 << (me % 64))
}

fn for_each_cpu(mask: u64, mut f: impl FnMut(usize)) {
    let mut m = mask;
    while m != 0 {
        let cpu = m.trailing_zeros() as usize;
        m &= m - 1;
        f(cpu);
    }
}

fn wait_mask_clear(mask: impl Fn() -> u64) -> u64 {
    let deadline = Deadline::after_us(STOP_WAIT_US);
    loop {
        let m = mask();
        if m == 0 || deadline.expired() {
            return m;
        }
        core::hint::spin_loop();
    }
}

/// `smp_send_stop()`: the REBOOT_VECTOR IPI, then NMIs for the stragglers.
pub fn smp_send_stop() {
    let me = current_cpu();
    let targets = others_online(me);
    if targets == 0 {
        return;
    }
    STOP_REQUESTED.store(true, Ordering::Release);
    for_each_cpu(targets, |cpu| {
        if let Some(id) = smp::apic_id_of(cpu) {
            let _ = apic::send_vector(id, REBOOT_VECTOR);
        }
    });
    let left = wait_mask_clear(|| others_online(me) & targets);
    if left == 0 {
        return;
    }
    console::line()
        .str("smp: ")
        .dec(left.count_ones() as u64)
        .str(" CPU(s) did not stop by REBOOT_VECTOR, stopping them with NMI\n");
    STOP_NMI_TARGETS.store(left, Ordering::Release);
    for_each_cpu(left, |cpu| {
        if let Some(id) = smp::apic_id_of(cpu) {
            let _ = apic::send_nmi(id);
        }
    });
    let still = wait_mask_clear(|| others_online(me) & left);
    for_each_cpu(still, |cpu| {
        console::line()
            .str("smp: CPU ")
            .dec(cpu as u64)
            .str(" did not stop\n");
    });
}

// --- crash_smp_send_stop / nmi_shootdown_cpus ----------------------------

static SHOOTDOWN_DONE: AtomicBool = AtomicBool::new(false);
/// CPUs the shootdown NMI'd.
static SHOOTDOWN_TARGETS: AtomicU64 = AtomicU64::new(0);
/// CPUs that saved and acknowledged.
static SHOOTDOWN_ACKED: AtomicU64 = AtomicU64::new(0);

/// The crash NMI callback (`kdump_nmi_callback`): save, VMX off, stop.
fn crash_nmi_callback(frame: &TrapFrame, cpu: usize) -> ! {
    crash_save_cpu(frame, cpu);
    crate::faults::in_crash_nmi_callback(cpu);
    pv::vmx::emergency_disable(cpu);
    set_state(cpu, CpuCrashState::SavedByNmi);
    smp::set_offline(cpu);
    SHOOTDOWN_ACKED.fetch_or(1 << (cpu % 64), Ordering::AcqRel);
    park()
}

/// The first NMI handler: the crash shootdown and the stop fallback.
fn crash_nmi_handler(frame: &mut TrapFrame, cpu: usize) -> NmiAction {
    let bit = 1u64 << (cpu % 64);
    if panic::panic_cpu() == Some(cpu as u32) {
        return NmiAction::NotMine;
    }
    if SHOOTDOWN_TARGETS.load(Ordering::Acquire) & bit != 0 {
        crash_nmi_callback(frame, cpu);
    }
    if STOP_NMI_TARGETS.load(Ordering::Acquire) & bit != 0 {
        stop_this_cpu(cpu);
    }
    NmiAction::NotMine
}

/// `crash_smp_send_stop()`: the NMI shootdown of the CPUs still online.
/// Runs once.
pub fn crash_smp_send_stop() {
    if SHOOTDOWN_DONE.swap(true, Ordering::AcqRel) {
        return;
    }
    let me = current_cpu();
    let targets = others_online(me);
    if targets == 0 {
        console::line().str("crash: NMI shootdown: no other CPU online\n");
        return;
    }
    console::line()
        .str("crash: NMI shootdown of ")
        .dec(targets.count_ones() as u64)
        .str(" CPU(s)\n");
    SHOOTDOWN_TARGETS.store(targets, Ordering::Release);
    let t0 = rdtsc();
    for_each_cpu(targets, |cpu| {
        if let Some(id) = smp::apic_id_of(cpu) {
            let _ = apic::send_nmi(id);
        }
    });
    let missing = wait_mask_clear(|| targets & !SHOOTDOWN_ACKED.load(Ordering::Acquire));
    // The shootdown's latency, first NMI sent to last ack (benches read it).
    let us = rdtsc().wrapping_sub(t0).saturating_mul(1000) / time::tsc_khz().max(1);
    console::line()
        .str("crash: NMI shootdown: ")
        .dec((targets & !missing).count_ones() as u64)
        .str(" acked in ")
        .dec(us)
        .str(" us\n");
    for_each_cpu(missing, |cpu| {
        console::line()
            .str("crash: CPU ")
            .dec(cpu as u64)
            .str(" did not respond to NMI\n");
    });
}

/// `panic_smp_self_stop`: a CPU that lost the race to panic halts with
/// interrupts off; it stays online, so the crash NMI still saves it.
///
/// In NMI context (`nmi_panic_self_stop`) NMIs are blocked, so the crash
/// NMI could never arrive: the CPU polls for the shootdown (or the stop
/// fallback) instead and runs the callback itself on its current context,
/// as Linux's `run_crash_ipi_callback` does.
pub fn panic_smp_self_stop(cpu: usize) -> ! {
    set_state(cpu, CpuCrashState::SelfStopped);
    if !crate::arch::traps::in_nmi(cpu) {
        park()
    }
    cli();
    let bit = 1u64 << (cpu % 64);
    loop {
        if SHOOTDOWN_TARGETS.load(Ordering::Acquire) & bit != 0 {
            let regs = crash_setup_regs();
            crash_nmi_callback(&regs, cpu);
        }
        if STOP_NMI_TARGETS.load(Ordering::Acquire) & bit != 0 {
            stop_this_cpu(cpu);
        }
        core::hint::spin_loop();
    }
}

// --- crash_kexec -------------------------------------------------------------

/// The crashkernel region `[start, end)`, when one is reserved.
static CRASHK_START: AtomicU64 = AtomicU64::new(0);
static CRASHK_END: AtomicU64 = AtomicU64::new(0);

/// Records the reserved crashkernel region (a crash kernel counts as loaded
/// only once `kexec_jump::load` accepted the VMM's descriptor for it).
pub fn set_crashkernel(start: u64, end: u64) {
    CRASHK_START.store(start, Ordering::Relaxed);
    CRASHK_END.store(end, Ordering::Release);
}

/// Most RAM ranges the elfcorehdr describes (the PVH memmap has a handful).
const MAX_RAM_RANGES: usize = 32;
/// Room for the elfcorehdr at the end of the crashkernel region (the VMM
/// leaves it free and names it on the capture kernel's command line).
const ELFCOREHDR_MAX: u64 = guest_abi::kexec::ELFCOREHDR_RESERVE;

/// Prepares the elfcorehdr in the last 16 KiB of the crashkernel region,
/// as `kexec -p` does when it loads the crash kernel: a PT_NOTE per CPU's
/// crash note, one for VMCOREINFO, and PT_LOADs for RAM minus the region.
/// `scribble`: the test-only `elfcorehdr_scribble=` damage, applied after.
pub fn prepare_elfcorehdr(
    ram: &[guest_abi::pvh::HvmMemmapEntry],
    vmcoreinfo: (u64, u64),
    scribble: Option<ElfcorehdrScribble>,
) {
    let (start, end) = (
        CRASHK_START.load(Ordering::Relaxed),
        CRASHK_END.load(Ordering::Acquire),
    );
    if end == 0 || end - start < ELFCOREHDR_MAX {
        return;
    }
    let at = end - ELFCOREHDR_MAX;
    let (notes, stride) = crash_notes();
    let cpus = (smp::expected_cpus() as usize).min(guest_abi::MAX_CPUS);
    let mut note_addrs = [0u64; guest_abi::MAX_CPUS];
    for (c, addr) in note_addrs.iter_mut().enumerate().take(cpus) {
        *addr = notes + c as u64 * stride as u64;
    }
    // No indexing below: a failed bounds check would pull in core::fmt.
    let mut ram_ranges = [PhysRange::default(); MAX_RAM_RANGES];
    let mut nr_ram = 0;
    let ram_entries = ram
        .iter()
        .filter(|e| e.type_ == guest_abi::pvh::MEMMAP_TYPE_RAM);
    for (slot, e) in ram_ranges.iter_mut().zip(ram_entries) {
        *slot = PhysRange::new(e.addr, e.size);
        nr_ram += 1;
    }
    let layout = CoreHdrLayout {
        ram: ram_ranges.get(..nr_ram).unwrap_or(&[]),
        crash_kernel: PhysRange::new(start, end - start),
        crash_notes: note_addrs.get(..cpus).unwrap_or(&[]),
        crash_note_size: CRASH_NOTE_BYTES as u64,
        vmcoreinfo: PhysRange::new(vmcoreinfo.0, vmcoreinfo.1),
    };
    // SAFETY: the region is reserved RAM below 4 GiB (identity-mapped) that
    // nothing else uses; only the boot CPU writes it, once.
    let buf = unsafe { core::slice::from_raw_parts_mut(at as *mut u8, ELFCOREHDR_MAX as usize) };
    match build_elfcorehdr(&layout, buf) {
        Ok(size) => {
            console::line()
                .str("kexec: elfcorehdr at ")
                .hex(at)
                .str(" (")
                .dec(size as u64)
                .str(" bytes)\n");
            if let Some(how) = scribble {
                let done = scribble_elfcorehdr(buf, size, how);
                console::line()
                    .str("kexec: elfcorehdr_scribble=")
                    .str(match how {
                        ElfcorehdrScribble::Magic => "magic",
                        ElfcorehdrScribble::Load => "load",
                    })
                    .str(if done {
                        " applied"
                    } else {
                        " found nothing to damage"
                    })
                    .str(" (test only)\n");
            }
        }
        Err(e) => console::line()
            .str("kexec: no elfcorehdr prepared: ")
            .str(e.as_str())
            .str("\n")
            .done(),
    }
}

/// The reserved crashkernel region `[start, end)`, if any.
pub fn crashkernel_region() -> Option<(u64, u64)> {
    let end = CRASHK_END.load(Ordering::Acquire);
    (end != 0).then(|| (CRASHK_START.load(Ordering::Relaxed), end))
}

/// Whether a crash kernel is loaded (`kexec_crash_image != NULL`): a region
/// reserved and a valid capture image in it.
pub fn crash_kernel_loaded() -> bool {
    crashkernel_region().is_some() && kexec_jump::loaded()
}

/// `machine_crash_shutdown`: stop and save the others, then this CPU.
fn machine_crash_shutdown(regs: &TrapFrame) {
    cli();
    crash_smp_send_stop();
    let me = current_cpu();
    crash_save_cpu(regs, me);
    set_state(me, CpuCrashState::SavedSelf);
    pv::vmx::emergency_disable(me);
}

/// `__crash_kexec()`: nothing without a crash kernel. Otherwise
/// `machine_crash_shutdown` and the jump; returns only when the image
/// failed purgatory's check (the panic then goes on without kdump).
pub fn crash_kexec() {
    if !crash_kernel_loaded() {
        return;
    }
    // In this frame, which stays live until the jump (or the return on a
    // corrupt image), as in Linux's `__crash_kexec`.
    let regs = crash_setup_regs();
    machine_crash_shutdown(&regs);
    kexec_jump::kexec_crash();
}

/// Prints every CPU's crash-path state (panic_print 0x40).
pub fn print_cpu_states() {
    let online = smp::online_mask();
    let (notes, stride) = crash_notes();
    for cpu in 0..smp::expected_cpus() as usize {
        let saved = {
            // SAFETY: reading the first byte of CPU `cpu`'s note buffer
            // (inside the static; a racing writer only changes 0 to 5).
            let first = unsafe { ((notes as usize + cpu * stride) as *const u8).read_volatile() };
            first != 0
        };
        console::line()
            .str("CPU ")
            .dec(cpu as u64)
            .str(": ")
            .str(if online & (1 << (cpu % 64)) != 0 {
                "online"
            } else {
                "offline"
            })
            .str(", ")
            .str(state(cpu).name())
            .str(", note ")
            .str(if saved { "saved" } else { "missing" })
            .str(", vmx ")
            .str(pv::vmx::state_name(cpu))
            .str("\n");
    }
}

/// Registers the stop vector and the crash NMI handler (boot CPU, once).
pub fn init() {
    register_irq_handler(REBOOT_VECTOR, reboot_vector_handler);
    if register_nmi_handler(crash_nmi_handler).is_err() {
        console::line().str("crash: no NMI handler slot\n");
    }
}
