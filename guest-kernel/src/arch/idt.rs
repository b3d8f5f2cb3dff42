//! The IDT, shared by all CPUs and computed at compile time.
//!
//! The trap entry stubs (in `traps.rs`) sit at the fixed address
//! `layout::TRAP_STUBS`, 16 bytes apart, so every gate is a constant.

use guest_kernel::x86::descriptors::{build_idt, IDT_ENTRIES};
use guest_kernel::x86::layout::{TRAP_STUBS, TRAP_STUB_SIZE};

use super::cpu::{lidt, DescriptorPointer};

#[repr(C, align(16))]
struct Idt([[u64; 2]; IDT_ENTRIES]);

static IDT: Idt = Idt(build_idt(TRAP_STUBS, TRAP_STUB_SIZE));

/// Loads the IDT on the running CPU.
pub fn load() {
    let ptr = DescriptorPointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: &IDT as *const Idt as u64,
    };
    // SAFETY: IDT is a static with a gate for every vector, each pointing at
    // its stub (the link-time layout assertion keeps the stub address right).
    unsafe { lidt(&ptr) };
}
