//! The guest kernel: PVH boot, SMP bring-up through ACPI, then idle.
//!
//! Serial lines, in order (see the crate README for the contract):
//! `guest-kernel: PVH boot`, `Command line: ...`, `tsc: <khz> kHz (<src>)`,
//! `CPU <n> online (apic <id>)` for each CPU, `CPUs online: <n>/<m>`.
#![no_std]
#![no_main]

mod arch;
mod boot;
mod console;
mod mem;
mod platform;
mod power;
mod smp;
mod time;

use guest_kernel::acpi::CpuList;
use guest_kernel::cmdline::{BootConfig, PostBoot};
use guest_kernel::MAX_CPUS;

use arch::{apic, cpu, gdt, idt, percpu};
use platform::BootInfo;

/// Per-CPU setup every CPU does first: LAPIC, identity (GS), GDT+TSS, IDT.
/// Returns the CPU's APIC ID.
fn cpu_init(cpu_nr: usize) -> u32 {
    apic::enable(cpu_nr == 0);
    let apic_id = apic::id();
    let pc = percpu::init(cpu_nr, apic_id);
    gdt::load(cpu_nr, pc);
    idt::load();
    apic_id
}

fn cpu_online_line(cpu_nr: usize, apic_id: u32) {
    console::line()
        .str("CPU ")
        .dec(cpu_nr as u64)
        .str(" online (apic ")
        .dec(apic_id as u64)
        .str(")\n");
}

/// The boot CPU's Rust entry, from `bsp_start64` (boot.rs).
#[no_mangle]
extern "C" fn kmain(start_info: u64) -> ! {
    let bsp_apic = cpu_init(0);
    apic::mask_legacy_pic();
    console::init();
    console::line().str("guest-kernel: PVH boot\n");

    let Some(boot) = BootInfo::new(start_info) else {
        console::line().str("bad hvm_start_info magic; halting\n");
        cpu::halt_forever();
    };
    let cmdline = boot.cmdline();
    console::line()
        .str("Command line: ")
        .bytes(cmdline)
        .str("\n");
    let config = BootConfig::parse(cmdline);
    if config.invalid != 0 {
        console::line()
            .str("cmdline: ignored ")
            .dec(config.invalid as u64)
            .str(" invalid value(s)\n");
    }

    let (khz, source) = time::init();
    console::line()
        .str("tsc: ")
        .dec(khz)
        .str(" kHz (")
        .str(source.as_str())
        .str(")\n");

    let limit = config
        .nr_cpus
        .map_or(MAX_CPUS, |n| (n as usize).min(MAX_CPUS));
    let order = match platform::discover_acpi(&boot) {
        Ok(p) => {
            power::configure(&p);
            apic::set_base(p.madt.lapic_addr as u64);
            p.madt.cpus.boot_order(bsp_apic, limit)
        }
        Err(e) => {
            console::line()
                .str("ACPI: ")
                .str(e.as_str())
                .str("; booting the boot CPU only\n");
            CpuList::new().boot_order(bsp_apic, 1)
        }
    };
    if order.dropped != 0 {
        console::line()
            .str("smp: not starting ")
            .dec(order.dropped as u64)
            .str(" CPU(s) beyond nr_cpus/MAX_CPUS\n");
    }

    cpu_online_line(0, bsp_apic);
    smp::mark_online(0);
    let trampoline = boot::TRAMPOLINE_ADDR;
    let trampoline_end = trampoline + guest_abi::boot::AP_TRAMPOLINE_LEN;
    let online = match smp::boot_secondaries(&order, boot.is_ram(trampoline, trampoline_end)) {
        Ok(n) => n,
        Err(smp::SmpError::TrampolineNotRam) => {
            console::line().str("smp: trampoline page is not RAM; APs not started\n");
            smp::online_count()
        }
    };
    console::line()
        .str(guest_abi::boot::SUMMARY_PREFIX)
        .dec(online as u64)
        .str("/")
        .dec(order.len() as u64)
        .str("\n");

    match config.post_boot {
        PostBoot::Idle => cpu::idle(),
        PostBoot::Poweroff => power::poweroff(),
        PostBoot::Reboot => power::reboot(),
    }
}

/// An AP's Rust entry, from `ap_start64` (boot.rs), on its own stack.
#[no_mangle]
extern "C" fn ap_main(cpu_nr: usize) -> ! {
    let apic_id = cpu_init(cpu_nr);
    cpu_online_line(cpu_nr, apic_id);
    smp::mark_online(cpu_nr);
    cpu::idle()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // No core::fmt here: print only the location.
    let Some(mut line) = console::line_in_trap(true) else {
        cpu::halt_forever()
    };
    line.str("Rust panic");
    if let Some(loc) = info.location() {
        line.str(" at ")
            .str(loc.file())
            .str(":")
            .dec(loc.line() as u64);
    }
    line.str(" on CPU ")
        .dec(percpu::current_cpu() as u64)
        .str("\n");
    drop(line);
    cpu::halt_forever()
}

/// Referenced by the precompiled `core`; never called (panic = abort).
#[no_mangle]
extern "C" fn rust_eh_personality() {}
