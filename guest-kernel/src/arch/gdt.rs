//! Per-CPU GDT and TSS.

use core::arch::asm;

use guest_kernel::x86::descriptors::{percpu_gdt, IST_COUNT, KERNEL_CS, KERNEL_DS, TSS_SEL};

use super::cpu::DescriptorPointer;
use super::percpu::{ist_stack_top, PerCpu};

/// Fills `pc`'s TSS with its IST stacks, builds its GDT, and loads both
/// (LGDT, segment reload, LTR) on the running CPU.
///
/// Must run on the CPU that owns `pc`, once, before it enables interrupts.
pub fn load(cpu: usize, pc: &PerCpu) {
    let tss = pc.tss.get();
    let gdt = pc.gdt.get();
    // SAFETY: the owning CPU is the only writer, once, before the TSS and
    // GDT are loaded (the `PerCpu` Sync contract).
    unsafe {
        let mut ists = [0u64; 7];
        for (i, slot) in ists.iter_mut().take(IST_COUNT).enumerate() {
            *slot = ist_stack_top(cpu, i + 1);
        }
        (*tss).ist = ists;
        *gdt = percpu_gdt(tss as u64);
    }
    let ptr = DescriptorPointer {
        limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
        base: gdt as u64,
    };
    // SAFETY: the new GDT has the same code/data selectors as the boot GDT,
    // so reloading CS (far return) and the data segments keeps the flat
    // mapping; the TSS descriptor points at this CPU's TSS, which lives
    // forever. The push/retfq pair uses the current stack, not an
    // interrupted one.
    unsafe {
        asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:e}",
            "mov es, {ds:e}",
            "mov ss, {ds:e}",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            cs = in(reg) KERNEL_CS as u64,
            ds = in(reg) KERNEL_DS as u32,
            tss = in(reg) TSS_SEL,
            tmp = out(reg) _,
        )
    };
}
