//! `panic()`: Linux's `vpanic()`, walking the steps `panic_steps()` gives
//! for the configured policy.
//!
//! - Only one CPU runs the panic path: the first to swap its number into
//!   [`PANIC_CPU`]. Others that panic meanwhile stop themselves
//!   (`panic_smp_self_stop`, still answering the crash NMI).
//! - A panic on the panicking CPU (a notifier that faults, an NMI) is a
//!   nested panic: it is logged and the path resumes with the step after
//!   the one that was running, on the nested caller's stack. After
//!   [`MAX_NESTED`] of them the CPU just halts, so it never recurses forever.
//! - Each step is logged as `panic: step <name>` as it starts.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use guest_kernel::cmdline::PanicKnobs;
use guest_kernel::notifier::{Notifier, NotifierList, NotifierTable};
use guest_kernel::panic_policy::{panic_steps, Step};
use guest_kernel::sync::{SetOnce, SpinLock};

use crate::arch::cpu::{cli, halt_forever};
use crate::arch::percpu::current_cpu;
use crate::{console, crash, dump, power, time};

/// No CPU is panicking (Linux `PANIC_CPU_INVALID`).
pub const PANIC_CPU_NONE: u32 = u32::MAX;

/// The panicking CPU (`SYMBOL(panic_cpu)` in VMCOREINFO).
#[no_mangle]
pub static PANIC_CPU: AtomicU32 = AtomicU32::new(PANIC_CPU_NONE);

/// Capacity of the panic message buffer (`NUMBER(panic_msg_len)`).
pub const PANIC_MSG_LEN: usize = 256;

/// The NUL-terminated panic message (`SYMBOL(panic_msg)`).
#[repr(C, align(64))]
pub struct PanicMsg(UnsafeCell<[u8; PANIC_MSG_LEN]>);

// SAFETY: written once, by the CPU that won `PANIC_CPU`; read by the VMM.
unsafe impl Sync for PanicMsg {}

/// The panic message buffer.
#[no_mangle]
pub static PANIC_MSG: PanicMsg = PanicMsg(UnsafeCell::new([0; PANIC_MSG_LEN]));

/// Nested panics tolerated before the CPU just halts.
const MAX_NESTED: u32 = 4;
/// Index of the running step; `usize::MAX` before the first.
static STEP: AtomicUsize = AtomicUsize::new(usize::MAX);
static NESTED: AtomicU32 = AtomicU32::new(0);

/// The panic knobs (set once at boot; defaults if a panic comes earlier).
static KNOBS: SetOnce<PanicKnobs> = SetOnce::new();

/// A panic notifier: gets the panic message.
pub type NotifierFn = fn(&[u8]);

static NOTIFIERS: SpinLock<NotifierTable<NotifierFn>> = SpinLock::new(NotifierTable::new());

/// Records the knobs from the command line (boot CPU, once).
pub fn configure(knobs: PanicKnobs) {
    KNOBS.set(knobs);
}

/// The knobs in force.
pub fn knobs() -> PanicKnobs {
    KNOBS.get().unwrap_or(PanicKnobs::DEFAULT)
}

/// The panicking CPU, if any.
pub fn panic_cpu() -> Option<u32> {
    match PANIC_CPU.load(Ordering::Acquire) {
        PANIC_CPU_NONE => None,
        c => Some(c),
    }
}

/// Adds a notifier (Linux `atomic_notifier_chain_register`).
pub fn register_notifier(list: NotifierList, priority: i32, name: &'static str, func: NotifierFn) {
    let n = Notifier {
        list,
        priority,
        name,
        func,
    };
    if NOTIFIERS.lock().register(n).is_err() {
        console::line()
            .str("panic: notifier table full; ")
            .str(name)
            .str(" not registered\n");
    }
}

/// `panic()`. Never returns.
pub fn panic(msg: &str) -> ! {
    panic_bytes(msg.as_bytes())
}

/// `panic()` with a byte-string message.
pub fn panic_bytes(msg: &[u8]) -> ! {
    cli();
    let cpu = current_cpu() as u32;
    match PANIC_CPU.compare_exchange(PANIC_CPU_NONE, cpu, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        Err(owner) if owner == cpu => nested_panic(msg),
        Err(_) => crash::panic_smp_self_stop(cpu as usize),
    }
    store_message(msg);
    console::line()
        .str("Kernel panic - not syncing: ")
        .bytes(msg)
        .str("\n");
    run_steps(0, msg)
}

fn nested_panic(msg: &[u8]) -> ! {
    let n = NESTED.fetch_add(1, Ordering::AcqRel) + 1;
    let step = STEP.load(Ordering::Acquire);
    let steps = panic_steps(&knobs().panic_config());
    let name = steps.get(step).map_or("setup", Step::name);
    console::line()
        .str("panic: nested panic during ")
        .str(name)
        .str(": ")
        .bytes(msg)
        .str("\n");
    if n > MAX_NESTED {
        console::line().str("panic: too many nested panics; halting\n");
        console::panic_flush();
        halt_forever();
    }
    let next = if step == usize::MAX { 0 } else { step + 1 };
    run_steps(next, stored_message())
}

fn store_message(msg: &[u8]) {
    let n = msg.len().min(PANIC_MSG_LEN - 1);
    // SAFETY: only the CPU that won PANIC_CPU writes, once; the buffer was
    // zero, so the byte after the message is already the NUL.
    let buf = unsafe { &mut *PANIC_MSG.0.get() };
    console::copy_bytes(buf.get_mut(..n).unwrap_or(&mut []), msg);
}

fn stored_message() -> &'static [u8] {
    // SAFETY: written once before any step runs; read-only afterwards.
    let buf = unsafe { &*PANIC_MSG.0.get() };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(PANIC_MSG_LEN);
    buf.get(..len).unwrap_or(&[])
}

/// Runs steps `from..` of the configured policy.
fn run_steps(from: usize, msg: &[u8]) -> ! {
    let knobs = knobs();
    let steps = panic_steps(&knobs.panic_config());
    let mut i = from;
    while let Some(step) = steps.get(i) {
        STEP.store(i, Ordering::Release);
        console::line()
            .str("panic: step ")
            .str(step.name())
            .str("\n");
        match step {
            Step::CrashKexec => crash::crash_kexec(),
            Step::SmpSendStop => crash::smp_send_stop(),
            Step::CrashSmpSendStop => crash::crash_smp_send_stop(),
            Step::Notifiers => call_notifiers(None, msg),
            Step::InfoNotifiers => call_notifiers(Some(NotifierList::Info), msg),
            Step::HypervisorNotifiers => call_notifiers(Some(NotifierList::Hypervisor), msg),
            Step::RebootNotifiers => call_notifiers(Some(NotifierList::Reboot), msg),
            Step::PanicPrint => panic_print(knobs.panic_print),
            Step::KmsgDump => {
                if knobs.kmsg_dump {
                    dump::kmsg_dump();
                }
            }
            Step::FlushAndReboot => flush_and_reboot(&knobs, msg),
        }
        i += 1;
    }
    flush_and_reboot(&knobs, msg)
}

fn notifier_table() -> NotifierTable<NotifierFn> {
    if let Some(t) = NOTIFIERS.try_lock() {
        return *t;
    }
    // SAFETY: only boot code and crash injection register notifiers; a
    // holder now is a CPU the panic path stopped mid-registration.
    unsafe { NOTIFIERS.force_unlock() };
    *NOTIFIERS.lock()
}

fn call_notifiers(list: Option<NotifierList>, msg: &[u8]) {
    let table = notifier_table();
    let mut i = 0;
    while let Some(n) = table.nth(list, i) {
        console::line()
            .str("panic: notifier ")
            .str(n.name)
            .str(" (")
            .str(n.list.name())
            .str(")\n");
        (n.func)(msg);
        i += 1;
    }
}

/// `panic_print=` bits this kernel supports.
pub mod print_bits {
    /// Memory map (Linux: `PANIC_PRINT_MEM_INFO`).
    pub const MEM_INFO: u32 = 0x02;
    /// Replay every kmsg record (Linux: `PANIC_PRINT_ALL_PRINTK_MSG`).
    pub const ALL_PRINTK_MSG: u32 = 0x20;
    /// All CPUs' states (Linux: `PANIC_PRINT_ALL_CPU_BT`; here no stacks,
    /// the crash-path state of each CPU).
    pub const ALL_CPU: u32 = 0x40;
}

fn panic_print(bits: u32) {
    if bits & print_bits::MEM_INFO != 0 {
        crate::platform::print_memmap();
    }
    if bits & print_bits::ALL_CPU != 0 {
        crash::print_cpu_states();
    }
    if bits & print_bits::ALL_PRINTK_MSG != 0 {
        console::replay_all();
    }
}

fn flush_and_reboot(knobs: &PanicKnobs, msg: &[u8]) -> ! {
    console::panic_flush();
    let timeout = knobs.panic_timeout;
    if timeout > 0 {
        console::line()
            .str("Rebooting in ")
            .dec(timeout as u64)
            .str(" seconds..\n");
        time::mdelay((timeout as u64).saturating_mul(1000));
    }
    if timeout != 0 {
        console::line().str("panic: rebooting\n");
        power::reboot();
    }
    console::line()
        .str("---[ end Kernel panic - not syncing: ")
        .bytes(msg)
        .str(" ]---\n");
    halt_forever()
}

/// The unknown-NMI hook with `unknown_nmi_panic` (Linux `unknown_nmi_error`).
///
/// As Linux's `nmi_panic`: if another CPU is already panicking, this one
/// stops itself (polling for the crash shootdown, since NMIs are blocked).
pub fn unknown_nmi_panic(_frame: &mut crate::arch::traps::TrapFrame, cpu: usize) {
    if panic_cpu() == Some(cpu as u32) {
        return;
    }
    if panic_cpu().is_none() {
        if let Some(mut line) = console::line_in_trap(false) {
            line.str("Uhhuh. NMI received for unknown reason on CPU ")
                .dec(cpu as u64)
                .str(".\n");
        }
    }
    panic("NMI: Not continuing")
}
