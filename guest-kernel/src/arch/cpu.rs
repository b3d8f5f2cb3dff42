//! Small typed wrappers over x86 instructions (x86_64-crate style).

use core::arch::asm;
use core::marker::PhantomData;

/// A value that can be moved through an I/O port.
pub trait PortValue: Copy {
    /// # Safety
    /// Port I/O can have any side effect on the platform.
    unsafe fn read_from(port: u16) -> Self;
    /// # Safety
    /// Port I/O can have any side effect on the platform.
    unsafe fn write_to(port: u16, value: Self);
}

impl PortValue for u8 {
    #[inline(always)]
    unsafe fn read_from(port: u16) -> u8 {
        let v: u8;
        // SAFETY: the caller accepts the port's side effects.
        unsafe {
            asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
        };
        v
    }
    #[inline(always)]
    unsafe fn write_to(port: u16, value: u8) {
        // SAFETY: the caller accepts the port's side effects.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
        };
    }
}

impl PortValue for u16 {
    #[inline(always)]
    unsafe fn read_from(port: u16) -> u16 {
        let v: u16;
        // SAFETY: the caller accepts the port's side effects.
        unsafe {
            asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags))
        };
        v
    }
    #[inline(always)]
    unsafe fn write_to(port: u16, value: u16) {
        // SAFETY: the caller accepts the port's side effects.
        unsafe {
            asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
        };
    }
}

impl PortValue for u32 {
    #[inline(always)]
    unsafe fn read_from(port: u16) -> u32 {
        let v: u32;
        // SAFETY: the caller accepts the port's side effects.
        unsafe {
            asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
        };
        v
    }
    #[inline(always)]
    unsafe fn write_to(port: u16, value: u32) {
        // SAFETY: the caller accepts the port's side effects.
        unsafe {
            asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
        };
    }
}

/// An I/O port carrying values of type `T`.
#[derive(Clone, Copy, Debug)]
pub struct Port<T> {
    port: u16,
    _value: PhantomData<T>,
}

impl<T: PortValue> Port<T> {
    /// The port at `port`.
    pub const fn new(port: u16) -> Self {
        Self {
            port,
            _value: PhantomData,
        }
    }

    /// Reads the port.
    ///
    /// # Safety
    /// Reading a device register can change device state.
    #[inline(always)]
    pub unsafe fn read(&self) -> T {
        // SAFETY: forwarded to the caller.
        unsafe { T::read_from(self.port) }
    }

    /// Writes the port.
    ///
    /// # Safety
    /// Writing a device register can do anything the device does.
    #[inline(always)]
    pub unsafe fn write(&self, value: T) {
        // SAFETY: forwarded to the caller.
        unsafe { T::write_to(self.port, value) }
    }
}

/// A model-specific register.
#[derive(Clone, Copy, Debug)]
pub struct Msr(u32);

/// IA32_APIC_BASE.
pub const IA32_APIC_BASE: Msr = Msr(0x1b);
/// IA32_FS_BASE.
pub const IA32_FS_BASE: Msr = Msr(0xc000_0100);
/// IA32_FEATURE_CONTROL (lock bit 0, VMXON outside SMX bit 2).
pub const IA32_FEATURE_CONTROL: Msr = Msr(0x3a);
/// IA32_VMX_BASIC (bits 30:0: the VMCS revision identifier).
pub const IA32_VMX_BASIC: Msr = Msr(0x480);
/// IA32_GS_BASE: the per-CPU data pointer.
pub const IA32_GS_BASE: Msr = Msr(0xc000_0101);

impl Msr {
    /// Reads the MSR.
    ///
    /// # Safety
    /// The MSR must exist (else #GP).
    #[inline]
    pub unsafe fn read(self) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: the caller guarantees the MSR exists.
        unsafe {
            asm!("rdmsr", in("ecx") self.0, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
        };
        lo as u64 | ((hi as u64) << 32)
    }

    /// Writes the MSR.
    ///
    /// # Safety
    /// The MSR must exist and the value must keep the CPU in a sane state.
    #[inline]
    pub unsafe fn write(self, value: u64) {
        // SAFETY: the caller vouches for the MSR and value.
        unsafe {
            asm!("wrmsr", in("ecx") self.0, in("eax") value as u32, in("edx") (value >> 32) as u32,
                 options(nostack, preserves_flags))
        };
    }
}

/// CPUID registers.
#[allow(dead_code)] // every register is part of the result
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes CPUID for `leaf`/`subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: CPUID has no side effects; rbx is reserved by LLVM, so it is
    // saved and restored around the instruction.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        )
    };
    CpuidResult { eax, ebx, ecx, edx }
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    lo as u64 | ((hi as u64) << 32)
}

/// Disables maskable interrupts.
pub fn cli() {
    // SAFETY: only changes IF.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Halts until an interrupt (or NMI) arrives, with interrupts as they are.
pub fn hlt() {
    // SAFETY: HLT just waits.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// Enables interrupts and halts atomically (`sti; hlt`), so a wake-up
/// interrupt cannot slip in between.
pub fn sti_hlt() {
    // SAFETY: every vector has a gate, so enabling interrupts is safe.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
}

/// Idles forever, servicing interrupts. Never inlined, so a dump or gdb
/// shows an idle CPU in `idle`, whatever its caller's code size.
#[inline(never)]
pub fn idle() -> ! {
    loop {
        sti_hlt();
    }
}

/// Halts forever with interrupts off (NMIs still arrive and return here).
pub fn halt_forever() -> ! {
    cli();
    loop {
        hlt();
    }
}

/// The GDT/IDT pseudo-descriptor for LGDT/LIDT.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug)]
pub struct DescriptorPointer {
    pub limit: u16,
    pub base: u64,
}

/// Loads the IDT.
///
/// # Safety
/// `ptr` must describe a valid IDT that lives forever.
pub unsafe fn lidt(ptr: &DescriptorPointer) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("lidt [{}]", in(reg) ptr, options(readonly, nostack, preserves_flags)) };
}

/// CR2: the faulting address of the last page fault.
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Reads CR4.
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes CR4.
///
/// # Safety
/// The value must keep paging and the kernel's mode intact.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Enables maskable interrupts.
pub fn sti() {
    // SAFETY: every vector has a gate, so enabling interrupts is safe.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// The data segment selectors: (ds, es, fs, gs).
pub fn data_selectors() -> (u16, u16, u16, u16) {
    let (ds, es, fs, gs): (u16, u16, u16, u16);
    // SAFETY: reading segment selectors has no side effects.
    unsafe {
        asm!("mov {0:x}, ds", "mov {1:x}, es", "mov {2:x}, fs", "mov {3:x}, gs",
             out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs,
             options(nomem, nostack, preserves_flags))
    };
    (ds, es, fs, gs)
}
