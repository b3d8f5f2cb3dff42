//! Test-only fault injection: the guest misbehaving on purpose so the VMM's
//! tests (`tests/tests/faults.rs`) can check that the VMM survives it and
//! that the vmcore and its checker say what happened. The knobs and their
//! host-tested parts are in [`guest_kernel::fault_knobs`]; nothing here
//! runs unless a `fault_*=` or `serial_flood=` knob is on the command line.
//!
//! Hooks (each one line in the code it hooks):
//! - [`init`], on the boot CPU before `crash::init`, so its NMI handler
//!   runs before the crash shootdown's; device garbage happens here;
//! - [`after_boot`], after VMCOREINFO is registered: VMCOREINFO
//!   corruption, the NMI-deaf CPU, the serial flood;
//! - [`in_crash_nmi_callback`], from the crash NMI callback after the
//!   CPU saved its note.

use core::sync::atomic::{AtomicBool, Ordering};

use guest_abi::ports::COM1;
use guest_kernel::fault_knobs::{defang, FaultKnobs, XorShift, DEVICE_PORTS};
use guest_kernel::notifier::{NotifierList, PRIORITY_MAX};
use guest_kernel::sync::SetOnce;
use guest_kernel::x86::trapframe::TrapFrame;

use crate::arch::cpu::{cli, hlt, lidt, DescriptorPointer, Port};
use crate::arch::traps::{register_nmi_handler, NmiAction};
use crate::arch::{apic, percpu::current_cpu};
use crate::time::Deadline;
use crate::{console, crash, dump, panic, smp};

static KNOBS: SetOnce<FaultKnobs> = SetOnce::new();

fn knobs() -> FaultKnobs {
    KNOBS.get().unwrap_or_default()
}

/// Parses the knobs and arms what must be in place before the panic
/// machinery: the NMI handler, the notifiers, and the device garbage.
pub fn init(cmdline: &[u8]) {
    let k = FaultKnobs::parse(cmdline);
    if k.invalid != 0 {
        console::line()
            .str("faults: ignored ")
            .dec(k.invalid as u64)
            .str(" invalid fault knob(s)\n");
    }
    if !k.any() {
        return;
    }
    KNOBS.set(k);
    console::line().str("faults: test-only fault injection armed\n");
    if k.nmi_deaf.is_some() && register_nmi_handler(deaf_nmi_handler).is_err() {
        console::line().str("faults: no NMI handler slot\n");
    }
    // Before pvpanic (registered later at the same priority), so a
    // coredump panic action sees what these did.
    if k.note.is_some() {
        panic::register_notifier(
            NotifierList::Hypervisor,
            PRIORITY_MAX,
            "fault_note",
            corrupt_note_notifier,
        );
    }
    if k.triple_fault {
        panic::register_notifier(
            NotifierList::Hypervisor,
            PRIORITY_MAX,
            "fault_triple_fault",
            triple_fault_notifier,
        );
    }
    if let Some(seed) = k.device_garbage {
        device_garbage(seed);
    }
}

/// Runs after boot (VMCOREINFO registered, every CPU online).
pub fn after_boot() {
    let Some(k) = KNOBS.get() else {
        return;
    };
    if let Some(f) = k.vmcoreinfo {
        let (addr, size) = dump::vmcoreinfo_note();
        // SAFETY: the note buffer is the boot CPU's (this CPU's), built and
        // registered already; the VMM reads it only when it dumps.
        let text = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, size as usize) };
        let done = f.apply(text);
        console::line()
            .str("faults: VMCOREINFO ")
            .str(if done { "corrupted" } else { "key not found" })
            .str("\n");
    }
    if let Some(cpu) = k.nmi_deaf {
        make_deaf(cpu as usize);
    }
    if k.serial_flood != 0 {
        serial_flood(k.serial_flood);
        console::line()
            .str("faults: serial flood of ")
            .dec(k.serial_flood)
            .str(" bytes done\n");
    }
}

// --- a nested panic in the crash NMI callback --------------------------

static CALLBACK_PANICKED: AtomicBool = AtomicBool::new(false);

/// Called by the crash NMI callback on `cpu` after it saved its note:
/// with `fault_nmi_callback_panic=<cpu>`, panics there, once. The panic
/// path sends the CPU to `panic_smp_self_stop`, which in NMI context runs
/// the callback again on its own registers.
pub fn in_crash_nmi_callback(cpu: usize) {
    if knobs().nmi_callback_panic != Some(cpu as u32)
        || CALLBACK_PANICKED.swap(true, Ordering::AcqRel)
    {
        return;
    }
    if let Some(mut line) = console::line_in_trap(false) {
        line.str("faults: CPU ")
            .dec(cpu as u64)
            .str(" panics in the crash NMI callback\n");
    }
    panic::panic("faults: panic in the crash NMI callback")
}

// --- corrupted crash notes ------------------------------------------------

fn corrupt_note_notifier(_msg: &[u8]) {
    let Some((cpu, field)) = knobs().note else {
        return;
    };
    if cpu as usize >= guest_kernel::MAX_CPUS {
        return;
    }
    let (base, stride) = crash::crash_notes();
    let addr = base + u64::from(cpu) * stride as u64;
    // SAFETY: inside the CRASH_NOTES static (cpu < MAX_CPUS). Its owner
    // was stopped by the shootdown, which ran before the notifiers, so
    // nobody writes it any more; scribbling on it is the point.
    let note = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, stride) };
    field.corrupt(note);
    console::line()
        .str("faults: corrupted the crash note of CPU ")
        .dec(cpu as u64)
        .str("\n");
}

// --- a triple fault in the middle of a panic ------------------------------

/// An IDT with no entries: any exception escalates to a triple fault.
static EMPTY_IDT: DescriptorPointer = DescriptorPointer { limit: 0, base: 0 };

fn triple_fault_notifier(_msg: &[u8]) {
    console::line()
        .str("faults: empty IDT and ud2 on CPU ")
        .dec(current_cpu() as u64)
        .str("\n");
    console::panic_flush();
    cli();
    // SAFETY: deliberately breaks this CPU: with a zero-limit IDT the #UD
    // cannot be delivered (#GP, then #DF, then shutdown). Nothing runs on
    // this CPU afterwards.
    unsafe {
        lidt(&EMPTY_IDT);
        core::arch::asm!("ud2", options(nomem, nostack));
    }
}

// --- a CPU that never answers the crash NMI ----------------------------

/// Set by the boot CPU before it NMIs the deaf CPU.
static DEAF_REQUESTED: AtomicBool = AtomicBool::new(false);
/// Set by the deaf CPU once it sits in its NMI handler.
static DEAF: AtomicBool = AtomicBool::new(false);

/// First NMI handler: the deaf CPU never leaves it. NMIs stay blocked
/// (no IRET) and interrupts are off, so `hlt` waits forever.
fn deaf_nmi_handler(_frame: &mut TrapFrame, cpu: usize) -> NmiAction {
    if knobs().nmi_deaf != Some(cpu as u32) || !DEAF_REQUESTED.load(Ordering::Acquire) {
        return NmiAction::NotMine;
    }
    DEAF.store(true, Ordering::Release);
    cli();
    loop {
        hlt();
    }
}

fn make_deaf(cpu: usize) {
    let id = (cpu != current_cpu() && smp::online_mask() & (1 << (cpu % 64)) != 0)
        .then(|| smp::apic_id_of(cpu))
        .flatten();
    let Some(id) = id else {
        console::line()
            .str("faults: fault_nmi_deaf: CPU ")
            .dec(cpu as u64)
            .str(" is not another online CPU\n");
        return;
    };
    DEAF_REQUESTED.store(true, Ordering::Release);
    let _ = apic::send_nmi(id);
    let deadline = Deadline::after_us(1_000_000);
    while !DEAF.load(Ordering::Acquire) && !deadline.expired() {
        core::hint::spin_loop();
    }
    console::line()
        .str("faults: CPU ")
        .dec(cpu as u64)
        .str(if DEAF.load(Ordering::Acquire) {
            " is halted in its NMI handler (NMIs blocked)\n"
        } else {
            " did not enter its NMI handler\n"
        });
}

// --- garbage to every device ------------------------------------------

/// Rounds over every port, width and offset.
const GARBAGE_ROUNDS: u32 = 4;

/// Pseudo-random values of every width to (and reads from) every port of
/// every device the VMM emulates, with the values that would power off,
/// reset or report a panic defanged. The UART is programmed again
/// afterwards (the garbage changed its line settings).
fn device_garbage(seed: u64) {
    let mut rng = XorShift::new(seed);
    let mut writes = 0u64;
    for _ in 0..GARBAGE_ROUNDS {
        for &(base, len) in DEVICE_PORTS.iter() {
            for port in base..base + len {
                for width in [1u8, 2, 4] {
                    let v = defang(port, width, rng.next_u64() as u32);
                    // SAFETY: the ports belong to emulated devices; the
                    // values that would end or reset the VM are masked, any
                    // other effect is what this test wants to see survived.
                    unsafe {
                        match width {
                            1 => {
                                Port::<u8>::new(port).write(v as u8);
                                let _ = Port::<u8>::new(port).read();
                            }
                            2 => {
                                Port::<u16>::new(port).write(v as u16);
                                let _ = Port::<u16>::new(port).read();
                            }
                            _ => {
                                Port::<u32>::new(port).write(v);
                                let _ = Port::<u32>::new(port).read();
                            }
                        }
                    }
                    writes += 1;
                }
            }
        }
    }
    vmx_reset();
    console::init();
    console::line()
        .str("\nfaults: wrote ")
        .dec(writes)
        .str(" garbage values to every device port\n");
}

/// VMXOFF through pv_vmx, so the garbage leaves the model outside VMX
/// operation before this CPU's own VMXON.
fn vmx_reset() {
    use guest_abi::pv::vmx::{cmd, COMMAND};
    let port = guest_abi::ports::PV_VMX + COMMAND as u16;
    // SAFETY: a VMXOFF command to the pv_vmx model: at worst VMfail.
    unsafe { Port::<u32>::new(port).write(cmd::VMXOFF) };
}

// --- serial flood -------------------------------------------------------

const FLOOD_LINE: &[u8; 64] = b"faults: serial flood 0123456789abcdefghijklmnopqrstuvwxyz......\n";

/// 4 KiB of flood lines.
static FLOOD: [u8; 4096] = {
    let mut b = [0u8; 4096];
    let mut i = 0;
    while i < 4096 {
        b[i] = FLOOD_LINE[i % 64];
        i += 1;
    }
    b
};

/// Writes `bytes` bytes to COM1's THR with `rep outsb`, ignoring LSR.
fn serial_flood(bytes: u64) {
    let mut left = bytes;
    while left != 0 {
        let n = left.min(FLOOD.len() as u64);
        // SAFETY: reads `n` <= 4096 bytes of FLOOD and writes them to the
        // UART's THR; DF is clear (Rust ABI). No memory is written.
        unsafe {
            core::arch::asm!(
                "rep outsb",
                in("dx") COM1,
                inout("rsi") FLOOD.as_ptr() => _,
                inout("rcx") n => _,
                options(nostack, readonly, preserves_flags)
            )
        };
        left -= n;
    }
}
