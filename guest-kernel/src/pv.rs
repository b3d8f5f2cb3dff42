//! Drivers for this VMM's paravirtual devices (`guest_abi::pv`): pv_vmx,
//! crash_control, vmcoreinfo and kdump.
//!
//! Each is probed once at boot by reading its ID register; an absent device
//! (QEMU, or a VMM without it) reads all ones and the driver degrades: the
//! boot log says so in one line (`pv: ...`) and its calls do nothing.

use core::sync::atomic::{AtomicBool, Ordering};

use guest_abi::ports;
use guest_abi::pv::{crash as crashdev, kdump as kdumpdev, vmcoreinfo as vmcidev};
use guest_kernel::pvdev::{self, PvRegs};

use crate::arch::cpu::Port;
use crate::console;

fn inl(port: u16, offset: u64) -> u32 {
    // SAFETY: reads of this VMM's pv registers have no side effects beyond
    // those the device documents (crash COMMAND is read-and-clear, which
    // the callers want); an absent port reads all ones.
    unsafe { Port::<u32>::new(port + offset as u16).read() }
}

fn outl(port: u16, offset: u64, value: u32) {
    // SAFETY: writes go to the documented registers of a device the probe
    // found (callers check presence first).
    unsafe { Port::<u32>::new(port + offset as u16).write(value) }
}

/// A pv device's register block at an I/O port base.
pub struct Ports(pub u16);

impl PvRegs for Ports {
    fn read(&mut self, offset: u64) -> u32 {
        inl(self.0, offset)
    }
    fn write(&mut self, offset: u64, value: u32) {
        outl(self.0, offset, value)
    }
}

fn probe(port: u16, magic: u32) -> bool {
    pvdev::probe(&mut Ports(port), magic)
}

/// Probes every device and prints one line with what was found.
pub fn init() {
    vmx::probe();
    crash_control::probe();
    vmcoreinfo::probe();
    kdump::probe();
    let yn = |b: bool| if b { "present" } else { "absent" };
    console::line()
        .str("pv: pv_vmx ")
        .str(if vmx::real() {
            "unused (real VMX)"
        } else {
            yn(vmx::present())
        })
        .str(", crash_control ")
        .str(yn(crash_control::present()))
        .str(", vmcoreinfo ")
        .str(yn(vmcoreinfo::present()))
        .str(", kdump ")
        .str(yn(kdump::present()))
        .str("\n");
}

/// The VMX model (or real VMX where the CPU has it).
pub mod vmx {
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

    use guest_abi::ports::PV_VMX;
    use guest_abi::pv::vmx::{field, ID_MAGIC, REVISION};
    use guest_kernel::pvvmx;
    use guest_kernel::MAX_CPUS;

    use super::{inl, Ports};
    use crate::arch::cpu::{cpuid, read_cr4, write_cr4, IA32_FEATURE_CONTROL, IA32_VMX_BASIC};

    static PRESENT: AtomicBool = AtomicBool::new(false);
    static REAL: AtomicBool = AtomicBool::new(false);
    static REVISION_ID: AtomicU32 = AtomicU32::new(0);

    const OFF: u8 = 0;
    const ON: u8 = 1;
    const TORN_DOWN: u8 = 2;
    const FAILED: u8 = 3;
    static STATE: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(OFF) }; MAX_CPUS];

    /// Per CPU: a VMXON region and a VMCS region (4 KiB each), in .bss.
    #[repr(C, align(4096))]
    struct Regions(UnsafeCell<[[u8; 4096]; 2 * MAX_CPUS]>);
    // SAFETY: CPU n only touches regions 2n and 2n+1; the VMM reads them.
    unsafe impl Sync for Regions {}
    static REGIONS: Regions = Regions(UnsafeCell::new([[0; 4096]; 2 * MAX_CPUS]));

    fn region(i: usize) -> u64 {
        REGIONS.0.get() as u64 + (i as u64) * 4096
    }

    const CR4_VMXE: u64 = 1 << 13;
    const CPUID1_ECX_VMX: u32 = 1 << 5;

    pub(super) fn probe() {
        if cpuid(1, 0).ecx & CPUID1_ECX_VMX != 0 {
            REAL.store(true, Ordering::Relaxed);
            // SAFETY: IA32_VMX_BASIC exists when CPUID advertises VMX.
            let basic = unsafe { IA32_VMX_BASIC.read() };
            REVISION_ID.store(basic as u32 & 0x7fff_ffff, Ordering::Relaxed);
        } else if super::probe(PV_VMX, ID_MAGIC) {
            PRESENT.store(true, Ordering::Relaxed);
            REVISION_ID.store(inl(PV_VMX, REVISION), Ordering::Relaxed);
        }
    }

    /// Whether the pv_vmx device is there (and used).
    pub fn present() -> bool {
        PRESENT.load(Ordering::Relaxed)
    }

    /// Whether the CPU has real VMX (then the device is not used).
    pub fn real() -> bool {
        REAL.load(Ordering::Relaxed)
    }

    fn write_revision(pa: u64) {
        let rev = REVISION_ID.load(Ordering::Relaxed);
        // SAFETY: `pa` is one of this CPU's own 4 KiB regions (identity
        // mapped, in .bss); the first 4 bytes hold the revision identifier.
        unsafe { (pa as *mut u32).write_volatile(rev) };
    }

    /// VMXON and a loaded VMCS with a few fields on `cpu` (the running
    /// CPU). Returns whether VMX is now on.
    pub fn init_cpu(cpu: usize, stack_top: u64) -> bool {
        if cpu >= MAX_CPUS || !(present() || real()) {
            return false;
        }
        let (vmxon, vmcs) = (region(2 * cpu), region(2 * cpu + 1));
        write_revision(vmxon);
        write_revision(vmcs);
        let ok = if real() {
            // SAFETY: CPUID says VMX exists; see `real_enable`.
            unsafe { real_enable(vmxon, vmcs, stack_top) }
        } else {
            let fields = [
                (field::VMCS_LINK_POINTER, u64::MAX),
                (field::GUEST_RIP, init_cpu as *const () as u64),
                (field::GUEST_RSP, stack_top),
                (field::HOST_RSP, stack_top),
                (field::HOST_RIP, emergency_disable as *const () as u64),
            ];
            pvvmx::enable(&mut Ports(PV_VMX), vmxon, vmcs, &fields).is_ok()
        };
        if let Some(s) = STATE.get(cpu) {
            s.store(if ok { ON } else { FAILED }, Ordering::Release);
        }
        ok
    }

    /// Real VMX: IA32_FEATURE_CONTROL, CR4.VMXE, VMXON, VMPTRLD, VMWRITEs.
    /// UNTESTED: this host has no VMX (DESIGN.md section 2); it follows the
    /// SDM (vol. 3C 24.7 / 31.5) and Linux's `kvm_cpu_vmxon`.
    ///
    /// # Safety
    /// CPUID.1:ECX.VMX must be set; the regions must be this CPU's.
    unsafe fn real_enable(vmxon: u64, vmcs: u64, stack_top: u64) -> bool {
        const LOCKED: u64 = 1;
        const VMXON_OUTSIDE_SMX: u64 = 1 << 2;
        // SAFETY: the MSR exists when VMX does; we only set it if unlocked.
        unsafe {
            let fc = IA32_FEATURE_CONTROL.read();
            if fc & LOCKED == 0 {
                IA32_FEATURE_CONTROL.write(fc | LOCKED | VMXON_OUTSIDE_SMX);
            } else if fc & VMXON_OUTSIDE_SMX == 0 {
                return false;
            }
            write_cr4(read_cr4() | CR4_VMXE);
        }
        let mut fail: u8;
        // SAFETY: VMXON/VMPTRLD take a memory operand holding the region's
        // physical address; CF or ZF set means failure.
        unsafe {
            core::arch::asm!("vmxon [{0}]", "setbe {1}", in(reg) &vmxon, out(reg_byte) fail);
            if fail != 0 {
                return false;
            }
            core::arch::asm!("vmptrld [{0}]", "setbe {1}", in(reg) &vmcs, out(reg_byte) fail);
            if fail != 0 {
                return false;
            }
            for (f, v) in [
                (field::GUEST_RSP as u64, stack_top),
                (field::VMCS_LINK_POINTER as u64, u64::MAX),
            ] {
                core::arch::asm!("vmwrite {0}, {1}", in(reg) f, in(reg) v);
            }
        }
        true
    }

    /// `cpu_emergency_disable_virtualization`: VMCLEAR the loaded VMCS
    /// (its contents reach memory), then VMXOFF. Safe from NMI context;
    /// prints nothing.
    pub fn emergency_disable(cpu: usize) {
        let Some(s) = STATE.get(cpu) else { return };
        if s.load(Ordering::Acquire) != ON {
            return;
        }
        let vmcs = region(2 * cpu + 1);
        if real() {
            // SAFETY: this CPU is in VMX operation with `vmcs` loaded.
            unsafe {
                core::arch::asm!("vmclear [{0}]", "vmxoff", in(reg) &vmcs);
                write_cr4(read_cr4() & !CR4_VMXE);
            }
        } else {
            pvvmx::teardown(&mut Ports(PV_VMX), vmcs);
        }
        s.store(TORN_DOWN, Ordering::Release);
    }

    /// `cpu`'s VMX state for log lines.
    pub fn state_name(cpu: usize) -> &'static str {
        match STATE.get(cpu).map(|s| s.load(Ordering::Acquire)) {
            Some(ON) => "on (VMCS loaded)",
            Some(TORN_DOWN) => "cleared and off",
            Some(FAILED) => "failed",
            _ => "off",
        }
    }

    /// CPUs with VMX on or torn down (for the boot summary).
    pub fn count_on() -> usize {
        STATE
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) == ON)
            .count()
    }
}

/// Crash injection commands (`guest_abi::pv::crash`).
pub mod crash_control {
    use super::*;

    static PRESENT: AtomicBool = AtomicBool::new(false);

    pub(super) fn probe() {
        PRESENT.store(
            super::probe(ports::CRASH_CONTROL, crashdev::ID_MAGIC),
            Ordering::Relaxed,
        );
    }

    /// Whether the device is there.
    pub fn present() -> bool {
        PRESENT.load(Ordering::Relaxed)
    }

    /// This CPU's pending command (read clears), 0 if none or no device.
    pub fn take_command() -> u32 {
        if !present() {
            return crashdev::NONE;
        }
        pvdev::crash_take_command(&mut Ports(ports::CRASH_CONTROL))
    }

    /// Reports progress (`crashdev::ack`).
    pub fn ack(step: u32) {
        if present() {
            pvdev::crash_ack(&mut Ports(ports::CRASH_CONTROL), step);
        }
    }
}

/// VMCOREINFO registration.
pub mod vmcoreinfo {
    use super::*;

    static PRESENT: AtomicBool = AtomicBool::new(false);

    pub(super) fn probe() {
        PRESENT.store(
            super::probe(ports::VMCOREINFO, vmcidev::ID_MAGIC),
            Ordering::Relaxed,
        );
    }

    /// Whether the device is there.
    pub fn present() -> bool {
        PRESENT.load(Ordering::Relaxed)
    }

    /// Registers the note at `paddr` (`size` bytes); returns the device
    /// status, or `None` without a device.
    pub fn register(paddr: u64, size: u32) -> Option<u32> {
        if !present() {
            return None;
        }
        Some(pvdev::vmcoreinfo_register(
            &mut Ports(ports::VMCOREINFO),
            paddr,
            size,
        ))
    }
}

/// The kexec handover, vmcore-ready and capture-failed reports.
pub mod kdump {
    use super::*;

    static PRESENT: AtomicBool = AtomicBool::new(false);

    pub(super) fn probe() {
        PRESENT.store(
            super::probe(ports::KDUMP, kdumpdev::ID_MAGIC),
            Ordering::Relaxed,
        );
    }

    /// Whether the device is there.
    pub fn present() -> bool {
        PRESENT.load(Ordering::Relaxed)
    }

    /// Sends `KEXEC_HANDOVER` (entry, elfcorehdr) and logs the outcome.
    pub fn kexec_handover(entry: u64, elfcorehdr: u64) {
        if !present() {
            console::line().str("kdump: no kdump device; handover not reported\n");
            return;
        }
        let status = pvdev::kdump_handover(&mut Ports(ports::KDUMP), entry, elfcorehdr);
        console::line()
            .str("kdump: KEXEC_HANDOVER entry=")
            .hex(entry)
            .str(" elfcorehdr=")
            .hex(elfcorehdr)
            .str(" status ")
            .dec(status as u64)
            .str("\n");
    }

    /// Sends `VMCORE_READY` (elfcorehdr, size) and logs the outcome.
    pub fn vmcore_ready(elfcorehdr: u64, size: u64) {
        if !present() {
            console::line().str("kdump: no kdump device; vmcore not reported\n");
            return;
        }
        let status = pvdev::kdump_vmcore_ready(&mut Ports(ports::KDUMP), elfcorehdr, size);
        console::line()
            .str("kdump: VMCORE_READY elfcorehdr=")
            .hex(elfcorehdr)
            .str(" size ")
            .dec(size)
            .str(" status ")
            .dec(status as u64)
            .str("\n");
    }

    /// Sends `CAPTURE_FAILED` (`kdumpdev::reason` code, detail) and logs it.
    pub fn capture_failed(reason: u32, detail: u64) {
        if !present() {
            console::line().str("kdump: no kdump device; failure not reported\n");
            return;
        }
        let status = pvdev::kdump_capture_failed(&mut Ports(ports::KDUMP), reason, detail);
        console::line()
            .str("kdump: CAPTURE_FAILED reason ")
            .dec(reason as u64)
            .str(" detail ")
            .hex(detail)
            .str(" status ")
            .dec(status as u64)
            .str("\n");
    }
}
