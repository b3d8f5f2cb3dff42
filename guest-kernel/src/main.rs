//! The guest kernel: PVH boot, SMP bring-up through ACPI, then idle. The
//! same image is also the kdump capture kernel (`kdump.rs`), entered through
//! `kexec_entry64` (boot.rs).
//!
//! Serial lines, in order (see the crate README for the contract):
//! `guest-kernel: PVH boot`, `Command line: ...`, `tsc: <khz> kHz (<src>)`,
//! `CPU <n> online (apic <id>)` for each CPU, `CPUs online: <n>/<m>`.
#![no_std]
#![no_main]

mod arch;
mod boot;
mod console;
mod crash;
mod dump;
mod kdump;
mod kexec_jump;
mod lkdtm;
mod mem;
mod panic;
mod platform;
mod power;
mod pv;
mod pvpanic;
mod smp;
mod time;

use guest_kernel::acpi::CpuList;
use guest_kernel::cmdline::{BootConfig, PanicKnobs, PostBoot};
use guest_kernel::crashkernel;
use guest_kernel::x86::paging::MAPPED_BYTES;
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

/// `vmx=on`: VMXON and a loaded VMCS on this CPU (through pv_vmx, or real
/// VMX where CPUID has it).
fn vmx_init(cpu_nr: usize) {
    if panic::knobs().vmx {
        let rsp: u64;
        // SAFETY: reads RSP only.
        unsafe {
            core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags))
        };
        pv::vmx::init_cpu(cpu_nr, rsp);
    }
}

fn vmx_summary(knobs: &PanicKnobs, online: u32) {
    let mut line = console::line();
    line.str("vmx: ");
    if !knobs.vmx {
        line.str("off (vmx=off)\n");
    } else if !pv::vmx::present() && !pv::vmx::real() {
        line.str("no VMX and no pv_vmx device; not used\n");
    } else {
        line.str("on ")
            .dec(pv::vmx::count_on() as u64)
            .str("/")
            .dec(online as u64)
            .str(" CPUs (")
            .str(if pv::vmx::real() {
                "real VMX"
            } else {
                "pv_vmx model"
            })
            .str(")\n");
    }
}

extern "C" {
    static __kernel_end: u8;
}

/// `crashkernel=`: reserves the region, then takes the capture kernel the
/// VMM loaded into it (`kexec -p`), if any.
fn reserve_crashkernel(boot: &BootInfo, config: &BootConfig) {
    let Some(spec) = config.panic.crashkernel else {
        return;
    };
    let kernel_end = (&raw const __kernel_end) as u64;
    match crashkernel::place(boot.memmap(), spec, kernel_end, MAPPED_BYTES) {
        Some((start, end)) => {
            crash::set_crashkernel(start, end);
            console::line()
                .str("crashkernel: reserved ")
                .hex(start)
                .str("-")
                .hex(end)
                .str(" (")
                .dec((end - start) >> 20)
                .str(" MiB)\n");
            kexec_jump::load(boot, (start, end), config.kdump.corrupt_image);
        }
        None => console::line()
            .str("crashkernel: cannot reserve ")
            .dec(spec.size >> 20)
            .str(" MiB; kdump disabled\n")
            .done(),
    }
}

/// The boot CPU's Rust entry, from `bsp_start64` (`from_kexec` 0) or, in
/// the capture kernel, from `capture_start64` (`from_kexec` 1) (boot.rs).
#[no_mangle]
extern "C" fn kmain(start_info: u64, from_kexec: u64) -> ! {
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

    // Capture mode (Linux `is_kdump_kernel()`): one CPU, no VMX, no
    // crashkernel of its own, no elfcorehdr or VMCOREINFO of its own (the
    // first kernel's stay the registered ones).
    let capture = from_kexec != 0 || config.kdump.elfcorehdr.is_some();

    panic::configure(config.panic);
    crash::init();
    lkdtm::init();
    if config.panic.unknown_nmi_panic {
        arch::traps::set_unknown_nmi_hook(panic::unknown_nmi_panic);
    }

    let (khz, source) = time::init();
    console::line()
        .str("tsc: ")
        .dec(khz)
        .str(" kHz (")
        .str(source.as_str())
        .str(")\n");

    let limit = if capture {
        1
    } else {
        config
            .nr_cpus
            .map_or(MAX_CPUS, |n| (n as usize).min(MAX_CPUS))
    };
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
    if order.dropped != 0 && !capture {
        console::line()
            .str("smp: not starting ")
            .dec(order.dropped as u64)
            .str(" CPU(s) beyond nr_cpus/MAX_CPUS\n");
    }

    smp::set_expected(order.len() as u32);
    boot.memmap(); // recorded for panic_print=0x02
    pv::init();
    pvpanic::init();
    if capture {
        cpu_online_line(0, bsp_apic);
        smp::mark_online(0);
        kdump::capture_main(&config, from_kexec != 0);
    }
    reserve_crashkernel(&boot, &config);

    vmx_init(0);
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
    vmx_summary(&config.panic, online);
    dump::init_vmcoreinfo();
    crash::prepare_elfcorehdr(
        boot.memmap(),
        dump::vmcoreinfo_note(),
        config.kdump.scribble,
    );
    if let Some(req) = config.panic.crash_after_boot {
        lkdtm::crash_after_boot(req);
    }

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
    vmx_init(cpu_nr);
    cpu_online_line(cpu_nr, apic_id);
    smp::mark_online(cpu_nr);
    cpu::idle()
}

#[panic_handler]
fn rust_panic(info: &core::panic::PanicInfo) -> ! {
    // No core::fmt here: print only the location, then the kernel's panic.
    if let Some(mut line) = console::line_in_trap(true) {
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
    }
    panic::panic("Rust panic")
}

/// Referenced by the precompiled `core`; never called (panic = abort).
#[no_mangle]
extern "C" fn rust_eh_personality() {}
