//! Trap entry and dispatch.
//!
//! Every vector enters on an IST stack (see `descriptors::ist_for_vector`),
//! through a 16-byte stub that pushes an error code (0 when the CPU pushes
//! none) and the vector, then `trap_common`, which pushes the GPRs to form a
//! [`TrapFrame`] and calls [`trap_dispatch`] with it.
//!
//! NMI: handlers registered with [`register_nmi_handler`] run in order (as
//! Linux's `nmi_handle(NMI_LOCAL)`); if none claims the NMI, the unknown-NMI
//! hook set with [`set_unknown_nmi_hook`] runs (the panic issue makes it
//! honour `unknown_nmi_panic`), else the NMI is logged and ignored.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use guest_kernel::x86::descriptors::{exception_name, FIRST_IRQ_VECTOR, VECTOR_NMI};
use guest_kernel::x86::layout::{TRAP_STUBS, TRAP_STUB_SIZE};
pub use guest_kernel::x86::trapframe::TrapFrame;

use super::apic;
use super::percpu::current_cpu;
use crate::console;

// Register contract.
// Stub for vector V (at TRAP_STUBS + 16 * V), entered by the CPU on the
// gate's IST stack with [rsp] = rip, cs, rflags, rsp, ss (plus an error code
// below rip for some exceptions): pushes 0 if the CPU pushed no error code,
// pushes V, jumps to trap_common.
// trap_common: pushes rdi..r15 (TrapFrame order), calls
// trap_dispatch(rdi = &mut TrapFrame) with rsp 16-byte aligned (the IST top
// is aligned and the frame is 176 bytes), restores every GPR from the
// (possibly modified) frame, drops vector and error code, and IRETQs.
global_asm!(
    r#"
    .pushsection .text.trap_stubs, "ax"
    .globl trap_stubs
    .globl __layout_trap_stubs
    .set __layout_trap_stubs, {stubs_addr}

    .macro trap_stub v
    .balign {stub_size}
    .if (\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    .else
    push 0
    .endif
    push \v
    jmp trap_common
    .endm

trap_stubs:
    .altmacro
    .set trap_vector, 0
    .rept 256
    trap_stub %trap_vector
    .set trap_vector, trap_vector + 1
    .endr
    .noaltmacro
    .balign {stub_size}
    /* Fails to assemble if any stub outgrew its slot. */
    .org trap_stubs + 256 * {stub_size}

trap_common:
    push rdi
    push rsi
    push rdx
    push rcx
    push rax
    push r8
    push r9
    push r10
    push r11
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call trap_dispatch
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    pop r11
    pop r10
    pop r9
    pop r8
    pop rax
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    add rsp, 16
    iretq
    .popsection
    "#,
    stubs_addr = const TRAP_STUBS,
    stub_size = const TRAP_STUB_SIZE,
);

/// The APIC spurious-interrupt vector (no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// What an NMI handler did with the NMI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NmiAction {
    /// It was this handler's NMI.
    Handled,
    /// Not this handler's; try the next one.
    NotMine,
}

/// An NMI handler: runs on the NMI IST stack with NMIs blocked, gets the
/// interrupted context (which it may read or modify) and the CPU number.
pub type NmiHandler = fn(&mut TrapFrame, usize) -> NmiAction;
/// The hook for an NMI no handler claimed.
pub type UnknownNmiHook = fn(&mut TrapFrame, usize);

/// Why an NMI handler could not be registered.
// Used by the panic/crash-injection work (issue 4).
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapError {
    /// All handler slots are taken.
    NmiSlotsFull,
}

const NMI_SLOTS: usize = 4;
static NMI_HANDLERS: [AtomicUsize; NMI_SLOTS] = [const { AtomicUsize::new(0) }; NMI_SLOTS];
static UNKNOWN_NMI_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Adds `handler` to the NMI chain (Linux: `register_nmi_handler(NMI_LOCAL)`).
/// Handlers run in registration order. Safe to call while NMIs arrive.
pub fn register_nmi_handler(handler: NmiHandler) -> Result<(), TrapError> {
    for slot in &NMI_HANDLERS {
        if slot
            .compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(TrapError::NmiSlotsFull)
}

/// Sets the hook for NMIs no handler claims (replacing the log message).
pub fn set_unknown_nmi_hook(hook: UnknownNmiHook) {
    UNKNOWN_NMI_HOOK.store(hook as usize, Ordering::Release);
}

/// Bit n set while CPU n runs its NMI handler (NMIs are blocked then).
static IN_NMI: AtomicU64 = AtomicU64::new(0);

/// Whether the running CPU is inside its NMI handler.
pub fn in_nmi(cpu: usize) -> bool {
    IN_NMI.load(Ordering::Acquire) & (1 << (cpu % 64)) != 0
}

fn nmi(frame: &mut TrapFrame, cpu: usize) {
    let bit = 1u64 << (cpu % 64);
    IN_NMI.fetch_or(bit, Ordering::AcqRel);
    nmi_handlers(frame, cpu);
    IN_NMI.fetch_and(!bit, Ordering::AcqRel);
}

fn nmi_handlers(frame: &mut TrapFrame, cpu: usize) {
    let mut handled = false;
    for slot in &NMI_HANDLERS {
        let raw = slot.load(Ordering::Acquire);
        if raw == 0 {
            continue;
        }
        // SAFETY: non-zero slot values are only ever stored from an
        // `NmiHandler` by `register_nmi_handler`.
        let handler: NmiHandler = unsafe { core::mem::transmute::<usize, NmiHandler>(raw) };
        if handler(frame, cpu) == NmiAction::Handled {
            handled = true;
        }
    }
    if handled {
        return;
    }
    let hook = UNKNOWN_NMI_HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: non-zero values are only ever stored from an
        // `UnknownNmiHook` by `set_unknown_nmi_hook`.
        let hook: UnknownNmiHook = unsafe { core::mem::transmute::<usize, UnknownNmiHook>(hook) };
        hook(frame, cpu);
        return;
    }
    if let Some(mut line) = console::line_in_trap(false) {
        line.str("Uhhuh. NMI received for unknown reason on CPU ")
            .dec(cpu as u64)
            .str(".\n");
    }
}

/// A kernel-mode exception: print an oops, then `panic("Fatal exception")`
/// (Linux's `die()` -> `oops_end()`). Everything runs in kernel mode here,
/// so every exception is fatal.
fn exception(frame: &TrapFrame, cpu: usize) -> ! {
    let vector = frame.vector as u8;
    if let Some(mut line) = console::line_in_trap(true) {
        line.str("Oops: ")
            .str(exception_name(vector))
            .str(" (vector ")
            .dec(vector as u64)
            .str(", error ")
            .hex(frame.error_code)
            .str(") RIP=")
            .hex(frame.rip)
            .str(" RSP=")
            .hex(frame.rsp)
            .str(" on CPU ")
            .dec(cpu as u64)
            .str("\n");
    }
    if vector == 14 {
        if let Some(mut line) = console::line_in_trap(true) {
            line.str("BUG: unable to handle page fault for address: ")
                .hex(super::cpu::read_cr2())
                .str("\n");
        }
    }
    crate::panic::panic("Fatal exception")
}

/// A handler for an interrupt vector (32-254). Runs on the IRQ IST stack
/// with interrupts off, after the EOI (so a handler may never return).
pub type IrqHandler = fn(&mut TrapFrame, usize);

static IRQ_HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

/// Routes `vector` to `handler` (the stop IPI, crash injection).
pub fn register_irq_handler(vector: u8, handler: IrqHandler) {
    if let Some(slot) = IRQ_HANDLERS.get(vector as usize) {
        slot.store(handler as usize, Ordering::Release);
    }
}

/// Entered from `trap_common` for every vector.
#[no_mangle]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let cpu = current_cpu();
    let vector = frame.vector as u8;
    if vector == VECTOR_NMI {
        nmi(frame, cpu);
    } else if vector < FIRST_IRQ_VECTOR {
        exception(frame, cpu);
    } else if vector != SPURIOUS_VECTOR {
        let raw = IRQ_HANDLERS
            .get(vector as usize)
            .map_or(0, |h| h.load(Ordering::Acquire));
        if raw != 0 {
            apic::eoi();
            // SAFETY: non-zero slot values are only ever stored from an
            // `IrqHandler` by `register_irq_handler`.
            let handler: IrqHandler = unsafe { core::mem::transmute::<usize, IrqHandler>(raw) };
            handler(frame, cpu);
            return;
        }
        // Normal code prints with interrupts on, so this CPU may hold the
        // console: never spin on our own lock here.
        if let Some(mut line) = console::line_in_trap(false) {
            line.str("unexpected interrupt vector ")
                .dec(vector as u64)
                .str(" on CPU ")
                .dec(cpu as u64)
                .str("\n");
        }
        apic::eoi();
    }
}
