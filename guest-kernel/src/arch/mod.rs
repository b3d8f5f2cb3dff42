//! x86-64 hardware: typed access to ports, MSRs and control registers, the
//! per-CPU descriptor tables, trap entry, and the local APIC.

pub mod apic;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod percpu;
pub mod traps;
