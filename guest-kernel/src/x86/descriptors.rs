//! GDT, TSS and IDT encodings (Intel SDM vol. 3, 3.4.5, 7.2.3, 6.14.1).

/// Kernel code selector (both GDTs).
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector (both GDTs).
pub const KERNEL_DS: u16 = 0x10;
/// Boot GDT only: flat 32-bit code, used by the AP trampoline to leave real mode.
pub const BOOT_CS32: u16 = 0x18;
/// Per-CPU GDT only: the 64-bit TSS (a 16-byte descriptor).
pub const TSS_SEL: u16 = 0x18;

/// Flat 64-bit code: present, DPL 0, execute/read, L=1, G=1.
pub const CODE64: u64 = 0x00af_9a00_0000_ffff;
/// Flat 32-bit code: present, DPL 0, execute/read, D=1, G=1.
pub const CODE32: u64 = 0x00cf_9a00_0000_ffff;
/// Flat data: present, DPL 0, read/write, B=1, G=1.
pub const DATA: u64 = 0x00cf_9200_0000_ffff;

/// The boot GDT used by the PVH entry and the AP trampoline.
pub const BOOT_GDT: [u64; 4] = [0, CODE64, DATA, CODE32];

/// Entries of a per-CPU GDT: null, code, data, TSS (two slots).
pub const PERCPU_GDT_ENTRIES: usize = 5;

/// The two GDT slots of an available 64-bit TSS at `base` with `limit`.
pub const fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let low = (limit as u64 & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x9 << 40) // type: available 64-bit TSS
        | (1 << 47) // present
        | (((limit as u64 >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
}

/// A per-CPU GDT whose TSS lives at `tss_base`.
pub const fn percpu_gdt(tss_base: u64) -> [u64; PERCPU_GDT_ENTRIES] {
    let tss = tss_descriptor(tss_base, TSS_SIZE as u32 - 1);
    [0, CODE64, DATA, tss[0], tss[1]]
}

/// The 64-bit task-state segment: only the stack pointers matter here.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tss {
    reserved0: u32,
    /// Stacks for privilege changes (unused: everything runs at CPL0).
    pub rsp: [u64; 3],
    reserved1: u64,
    /// Interrupt stack table: `ist[0]` is IST1.
    pub ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    /// Offset of the I/O permission bitmap; beyond the limit means none.
    pub iomap_base: u16,
}

/// Bytes of a [`Tss`].
pub const TSS_SIZE: usize = 104;

impl Tss {
    /// An empty TSS with no I/O bitmap.
    pub const fn new() -> Self {
        Self {
            reserved0: 0,
            rsp: [0; 3],
            reserved1: 0,
            ist: [0; 7],
            reserved2: 0,
            reserved3: 0,
            iomap_base: TSS_SIZE as u16,
        }
    }
}

/// IST slots (1-based, as in the gate).
pub const IST_NMI: u8 = 1;
/// Double fault.
pub const IST_DOUBLE_FAULT: u8 = 2;
/// Machine check.
pub const IST_MACHINE_CHECK: u8 = 3;
/// All other exceptions (vectors 0..32).
pub const IST_EXCEPTION: u8 = 4;
/// External interrupts and IPIs (vectors 32..256).
pub const IST_IRQ: u8 = 5;
/// IST stacks per CPU.
pub const IST_COUNT: usize = 5;

/// Vectors.
pub const VECTOR_NMI: u8 = 2;
/// Double fault.
pub const VECTOR_DOUBLE_FAULT: u8 = 8;
/// Machine check.
pub const VECTOR_MACHINE_CHECK: u8 = 18;
/// First vector that is not an exception.
pub const FIRST_IRQ_VECTOR: u8 = 32;

/// The IST every vector uses: no gate runs on the interrupted stack, because
/// the precompiled `core` uses the red zone below it.
pub const fn ist_for_vector(vector: u8) -> u8 {
    match vector {
        VECTOR_NMI => IST_NMI,
        VECTOR_DOUBLE_FAULT => IST_DOUBLE_FAULT,
        VECTOR_MACHINE_CHECK => IST_MACHINE_CHECK,
        v if v < FIRST_IRQ_VECTOR => IST_EXCEPTION,
        _ => IST_IRQ,
    }
}

/// Whether the CPU pushes an error code for this exception vector.
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// The short name of an exception vector (Linux's names).
pub const fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "int3",
        4 => "overflow",
        5 => "bounds",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        9 => "coprocessor segment overrun",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack segment",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating point",
        20 => "virtualization",
        21 => "control protection",
        28 => "hypervisor injection",
        29 => "VMM communication",
        30 => "security",
        _ => "reserved",
    }
}

/// A 64-bit interrupt gate (IF cleared on entry) to `handler` in `selector`,
/// on stack `ist` (1..=7; 0 means the current stack).
pub const fn interrupt_gate(handler: u64, selector: u16, ist: u8) -> [u64; 2] {
    let low = (handler & 0xffff)
        | ((selector as u64) << 16)
        | (((ist & 7) as u64) << 32)
        | (0x8e << 40) // present, DPL 0, type 0xE (interrupt gate)
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

/// Number of IDT vectors.
pub const IDT_ENTRIES: usize = 256;

/// The IDT: vector `v` enters the stub at `stubs + v * stride`, on the IST
/// [`ist_for_vector`] gives.
pub const fn build_idt(stubs: u64, stride: u64) -> [[u64; 2]; IDT_ENTRIES] {
    let mut idt = [[0u64; 2]; IDT_ENTRIES];
    let mut v = 0;
    while v < IDT_ENTRIES {
        idt[v] = interrupt_gate(
            stubs + v as u64 * stride,
            KERNEL_CS,
            ist_for_vector(v as u8),
        );
        v += 1;
    }
    idt
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn flat_segments_decode() {
        // Base 0, limit 0xfffff pages, present, DPL 0.
        for d in [CODE64, CODE32, DATA] {
            assert_eq!(d & 0xffff, 0xffff);
            assert_eq!((d >> 16) & 0xff_ffff, 0);
            assert_eq!(d >> 56, 0);
            assert_eq!((d >> 47) & 1, 1, "present");
            assert_eq!((d >> 45) & 3, 0, "DPL");
            assert_eq!((d >> 55) & 1, 1, "granularity");
        }
        assert_eq!((CODE64 >> 53) & 1, 1, "L");
        assert_eq!((CODE64 >> 54) & 1, 0, "D must be 0 with L");
        assert_eq!((CODE32 >> 53) & 1, 0);
        assert_eq!((CODE32 >> 54) & 1, 1);
        assert_eq!((CODE64 >> 43) & 1, 1, "executable");
        assert_eq!((DATA >> 43) & 1, 0);
        assert_eq!(BOOT_GDT[(KERNEL_CS >> 3) as usize], CODE64);
        assert_eq!(BOOT_GDT[(KERNEL_DS >> 3) as usize], DATA);
        assert_eq!(BOOT_GDT[(BOOT_CS32 >> 3) as usize], CODE32);
    }

    #[test]
    fn tss_descriptor_round_trips() {
        let base = 0xffff_8123_4567_89ab_u64;
        let [low, high] = tss_descriptor(base, 103);
        let got_base = ((low >> 16) & 0xff_ffff) | (((low >> 56) & 0xff) << 24) | (high << 32);
        assert_eq!(got_base, base);
        assert_eq!(low & 0xffff, 103);
        assert_eq!((low >> 48) & 0xf, 0);
        assert_eq!((low >> 40) & 0xf, 0x9);
        assert_eq!((low >> 47) & 1, 1);
        assert_eq!((low >> 44) & 1, 0, "system descriptor");
        let gdt = percpu_gdt(0x20_0000);
        assert_eq!(
            gdt[(TSS_SEL >> 3) as usize],
            tss_descriptor(0x20_0000, 103)[0]
        );
        assert_eq!(gdt[(KERNEL_CS >> 3) as usize], CODE64);
    }

    #[test]
    fn tss_layout() {
        assert_eq!(size_of::<Tss>(), TSS_SIZE);
        assert_eq!(offset_of!(Tss, rsp), 4);
        assert_eq!(offset_of!(Tss, ist), 0x24);
        assert_eq!(offset_of!(Tss, iomap_base), 0x66);
        let iomap = Tss::new().iomap_base;
        assert_eq!(iomap, 104);
    }

    #[test]
    fn interrupt_gate_round_trips() {
        let handler = 0x1234_5678_9abc_def0_u64;
        let [low, high] = interrupt_gate(handler, KERNEL_CS, 5);
        let got = (low & 0xffff) | (((low >> 48) & 0xffff) << 16) | (high << 32);
        assert_eq!(got, handler);
        assert_eq!((low >> 16) & 0xffff, KERNEL_CS as u64);
        assert_eq!((low >> 32) & 7, 5);
        assert_eq!((low >> 40) & 0xff, 0x8e);
    }

    #[test]
    fn every_vector_has_an_ist() {
        let idt = build_idt(0x10_6000, 16);
        for (v, gate) in idt.iter().enumerate() {
            let ist = (gate[0] >> 32) & 7;
            assert_ne!(ist, 0, "vector {v} on the interrupted stack");
            let handler = (gate[0] & 0xffff) | (((gate[0] >> 48) & 0xffff) << 16) | (gate[1] << 32);
            assert_eq!(handler, 0x10_6000 + 16 * v as u64);
        }
        assert_eq!((idt[2][0] >> 32) & 7, IST_NMI as u64);
        assert_eq!((idt[8][0] >> 32) & 7, IST_DOUBLE_FAULT as u64);
        assert_eq!((idt[18][0] >> 32) & 7, IST_MACHINE_CHECK as u64);
        assert_eq!((idt[14][0] >> 32) & 7, IST_EXCEPTION as u64);
        assert_eq!((idt[255][0] >> 32) & 7, IST_IRQ as u64);
    }

    #[test]
    fn error_code_vectors() {
        let with: Vec<u8> = (0..32).filter(|v| has_error_code(*v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
        assert_eq!(exception_name(14), "page fault");
    }
}
