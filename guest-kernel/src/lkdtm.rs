//! Crash injection (LKDTM-like). Two triggers, one dispatch ([`crash`]):
//! - the crash_control device: its interrupt ([`CRASH_VECTOR`]) or an NMI
//!   makes the CPU read its COMMAND register;
//! - `crash_after_boot=TYPE[@CPU]`: the boot CPU, right after `CPUs
//!   online`, hands the command to that CPU through [`LOCAL_CRASH_VECTOR`]
//!   (or an NMI for NMI_PANIC), with no device needed (QEMU, scenarios).
//!
//! Helper requests (HARDLOCKUP, CONSOLE_LOCKED ask another CPU to panic;
//! PANIC_ALL relays to everyone) use the same per-CPU mailbox.

use core::sync::atomic::{AtomicU32, Ordering};

use guest_abi::pv::crash::{ack, CrashType, CRASH_VECTOR};
use guest_kernel::cmdline::{CrashAfterBoot, ALL_CPUS};
use guest_kernel::notifier::NotifierList;
use guest_kernel::x86::trapframe::TrapFrame;
use guest_kernel::MAX_CPUS;

use crate::arch::cpu::{cli, sti};
use crate::arch::traps::{register_irq_handler, register_nmi_handler, NmiAction};
use crate::arch::{apic, percpu::current_cpu};
use crate::pv::crash_control;
use crate::{console, panic, smp};

/// Vector of the in-guest crash mailbox IPI.
pub const LOCAL_CRASH_VECTOR: u8 = 0xf1;

/// Set on a mailbox command relayed by another CPU (not re-relayed).
const RELAYED: u32 = 1 << 16;

/// Per-CPU mailbox: a crash code (| RELAYED), 0 if none.
static MAILBOX: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// An address above the 4 GiB identity map: reading it page-faults.
const UNMAPPED_ADDR: u64 = 0x20_0000_0000;

fn post(cpu: usize, code: u32, nmi: bool) -> bool {
    let (Some(slot), Some(apic_id)) = (MAILBOX.get(cpu), smp::apic_id_of(cpu)) else {
        return false;
    };
    slot.store(code, Ordering::Release);
    let sent = if nmi {
        apic::send_nmi(apic_id)
    } else {
        apic::send_vector(apic_id, LOCAL_CRASH_VECTOR)
    };
    sent.is_ok()
}

fn take_mailbox(cpu: usize) -> u32 {
    MAILBOX.get(cpu).map_or(0, |s| s.swap(0, Ordering::AcqRel))
}

/// Asks the lowest other online CPU to panic; false if there is none.
fn ask_other_cpu_to_panic(me: usize) -> bool {
    let others = smp::online_mask() & !(1u64 << (me % 64));
    if others == 0 {
        return false;
    }
    post(
        others.trailing_zeros() as usize,
        CrashType::Panic.code() | RELAYED,
        false,
    )
}

fn hang_notifier(_msg: &[u8]) {
    console::line().str("lkdtm: notifier hangs\n");
    loop {
        core::hint::spin_loop();
    }
}

fn fault_notifier(_msg: &[u8]) {
    console::line().str("lkdtm: notifier faults\n");
    // SAFETY: deliberately not safe: the read page-faults (the address is
    // above the identity map), which is the point of NOTIFIER_FAULT.
    let v = unsafe { (UNMAPPED_ADDR as *const u64).read_volatile() };
    core::hint::black_box(v);
}

/// Runs crash `code` on the running CPU. `from_nmi`: called in NMI context.
pub fn crash(code: u32, from_nmi: bool) {
    let cpu = current_cpu();
    let relayed = code & RELAYED != 0;
    let Some(kind) = CrashType::from_code(code & !RELAYED) else {
        crash_control::ack(ack::UNKNOWN_COMMAND);
        console::line()
            .str("lkdtm: unknown crash command ")
            .dec(code as u64)
            .str("\n");
        return;
    };
    crash_control::ack(ack::RECEIVED);
    if !relayed {
        console::line()
            .str("lkdtm: ")
            .str(kind.name())
            .str(" on CPU ")
            .dec(cpu as u64)
            .str("\n");
    }
    match kind {
        CrashType::Panic => {
            crash_control::ack(ack::TRIGGERING);
            panic::panic(if relayed {
                "lkdtm: panic requested by another CPU"
            } else {
                "lkdtm: PANIC"
            })
        }
        CrashType::Bug => {
            crash_control::ack(ack::TRIGGERING);
            // SAFETY: ud2 raises #UD, whose handler oopses and panics: BUG().
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
        }
        CrashType::Exception => {
            crash_control::ack(ack::TRIGGERING);
            // SAFETY: deliberately faults (EXCEPTION): #PF, oops, panic.
            let v = unsafe { (UNMAPPED_ADDR as *const u64).read_volatile() };
            core::hint::black_box(v);
        }
        CrashType::HardLockup => {
            cli();
            crash_control::ack(ack::HELPER_READY);
            if !ask_other_cpu_to_panic(cpu) {
                panic::panic("lkdtm: HARDLOCKUP with no other CPU");
            }
            loop {
                core::hint::spin_loop();
            }
        }
        CrashType::PanicAll => {
            if !relayed {
                let others = smp::online_mask() & !(1u64 << (cpu % 64));
                let mut m = others;
                while m != 0 {
                    let c = m.trailing_zeros() as usize;
                    m &= m - 1;
                    post(c, CrashType::PanicAll.code() | RELAYED, false);
                }
            }
            crash_control::ack(ack::TRIGGERING);
            panic::panic("lkdtm: PANIC_ALL")
        }
        CrashType::NmiPanic => {
            if from_nmi {
                crash_control::ack(ack::TRIGGERING);
                panic::panic("lkdtm: NMI_PANIC");
            }
            // Not in NMI context yet: NMI ourselves through the mailbox.
            if !post(cpu, code | RELAYED, true) {
                panic::panic("lkdtm: NMI_PANIC (self-NMI failed)");
            }
        }
        CrashType::NotifierHang | CrashType::NotifierFault => {
            let (name, f): (&'static str, panic::NotifierFn) = if kind == CrashType::NotifierHang {
                ("lkdtm_hang", hang_notifier)
            } else {
                ("lkdtm_fault", fault_notifier)
            };
            panic::register_notifier(NotifierList::Info, 0, name, f);
            crash_control::ack(ack::TRIGGERING);
            panic::panic(if kind == CrashType::NotifierHang {
                "lkdtm: NOTIFIER_HANG"
            } else {
                "lkdtm: NOTIFIER_FAULT"
            })
        }
        CrashType::ConsoleLocked => {
            console::take_console_lock_forever();
            crash_control::ack(ack::HELPER_READY);
            if !ask_other_cpu_to_panic(cpu) {
                panic::panic("lkdtm: CONSOLE_LOCKED with no other CPU");
            }
            // Interrupts on, as a CPU printing with the lock held would be:
            // the stop IPI (which never returns) can reach it. This runs on
            // the IRQ stack when the command came by interrupt; the stop
            // IPI's frame then overwrites it, harmless since nothing
            // returns here.
            sti();
            loop {
                core::hint::spin_loop();
            }
        }
    }
}

fn crash_vector_handler(_frame: &mut TrapFrame, _cpu: usize) {
    let code = crash_control::take_command();
    if code != 0 {
        crash(code, false);
    }
}

fn local_vector_handler(_frame: &mut TrapFrame, cpu: usize) {
    let code = take_mailbox(cpu);
    if code != 0 {
        crash(code, false);
    }
}

fn nmi_handler(_frame: &mut TrapFrame, cpu: usize) -> NmiAction {
    let mut code = take_mailbox(cpu);
    if code == 0 {
        code = crash_control::take_command();
    }
    if code == 0 {
        return NmiAction::NotMine;
    }
    crash(code, true);
    NmiAction::Handled
}

/// Registers the vectors and the NMI handler (boot CPU, after `crash::init`
/// so the crash shootdown's NMI handler runs first).
pub fn init() {
    register_irq_handler(CRASH_VECTOR, crash_vector_handler);
    register_irq_handler(LOCAL_CRASH_VECTOR, local_vector_handler);
    if register_nmi_handler(nmi_handler).is_err() {
        console::line().str("lkdtm: no NMI handler slot\n");
    }
}

/// `crash_after_boot=`: runs on the boot CPU after `CPUs online`.
pub fn crash_after_boot(req: CrashAfterBoot) {
    let code = req.crash.code();
    if req.cpu == ALL_CPUS {
        // Every other online CPU first, then this one.
        let me = current_cpu();
        let mut m = smp::online_mask() & !(1u64 << (me % 64));
        while m != 0 {
            let c = m.trailing_zeros() as usize;
            m &= m - 1;
            post(c, code | RELAYED, req.crash.delivered_by_nmi());
        }
        if req.crash.delivered_by_nmi() {
            post(me, code | RELAYED, true);
        } else {
            crash(code | RELAYED, false);
        }
        return;
    }
    let cpu = req.cpu as usize;
    if cpu == current_cpu() {
        crash(code, false);
        return;
    }
    if cpu >= 64 || smp::online_mask() & (1 << cpu) == 0 {
        console::line()
            .str("crash_after_boot: CPU ")
            .dec(cpu as u64)
            .str(" is not online\n");
        return;
    }
    if !post(cpu, code, req.crash.delivered_by_nmi()) {
        console::line().str("crash_after_boot: IPI not delivered\n");
    }
}
