//! Arbitrary guest port/MMIO accesses to every guest-facing device, on the
//! real bus as the VMM wires it (`devices::platform::wire_platform`), with
//! host-side calls (crash injection, VMCOREINFO reads, resets, serial input)
//! mixed in.
//!
//! Guest RAM is a small `GuestMemoryMmap` with a hole (16 KiB at 0, 16 KiB
//! at 32 KiB), so guest-chosen GPAs land past the end, in the hole and
//! across it. Every page starts with the VMCS revision word, so VMXON and
//! VMPTRLD succeed on aligned in-RAM pages and the write-back path runs.
//!
//! Invariants checked after every step, beyond "no panic":
//! - devices emit events only on writes, tagged with the writing vCPU, and
//!   each event is well-formed (a supported pvpanic bit, a VMCOREINFO range
//!   that is in bounds and doesn't wrap, kdump arguments the device vetted);
//! - crash-control interrupts only vCPUs that exist;
//! - pv_vmx: exactly one command is counted per 4-byte COMMAND write from a
//!   known vCPU and none otherwise; counters never go down; a current VMCS
//!   implies VMX on and is among the active ones; at most MAX_ACTIVE_VMCS
//!   are active; VMXON regions and VMCS pointers are aligned pages in RAM;
//! - a bus access is dispatched exactly when one device covers it whole,
//!   and an undispatched read leaves the buffer untouched;
//! - guest RAM is unchanged after an input without pv_vmx commands (only
//!   VMCS write-backs may write it).
#![no_main]

use std::sync::{Arc, Mutex};

use devices::crash_control::{CpuInterrupt, CrashType};
use devices::guest_ram::GuestRam;
use devices::platform::{wire_platform, Platform, PlatformSpec};
use devices::pv_vmx::{PvVmxCounters, VmxVcpuState};
use devices::pvpanic::PvpanicEvent;
use devices::{EventSink, VcpuId, VmEvent};
use guest_abi::ports;
use guest_abi::pv::kdump::MAX_ELFCOREHDR_SIZE;
use guest_abi::pv::vmx::{COMMAND, MAX_ACTIVE_VMCS, VMCS_REGION_SIZE, VMCS_REVISION};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const CPUS: u32 = 2;
const RAM: [(u64, usize); 2] = [(0, 0x4000), (0x8000, 0x4000)];
const PVPANIC_EVENTS: u8 = 0x3;
/// Access sizes: the architectural ones, then odd ones a buggy VMM might pass.
const SIZES: [usize; 8] = [1, 2, 4, 8, 3, 5, 6, 7];

/// Base ports of the devices, so that most accesses hit one.
const PORTS: [(u16, u16); 11] = ports::EMULATED_PORTS;

#[derive(Default)]
struct Recorder(Mutex<Vec<VmEvent>>);

impl EventSink for Recorder {
    fn emit(&self, event: VmEvent) {
        self.0.lock().unwrap().push(event);
    }
}

#[derive(Default)]
struct Interrupts(Mutex<Vec<VcpuId>>);

impl CpuInterrupt for Interrupts {
    fn raise(&self, vcpu: VcpuId, _vector: u8) {
        self.0.lock().unwrap().push(vcpu);
    }
    fn nmi(&self, vcpu: VcpuId) {
        self.0.lock().unwrap().push(vcpu);
    }
}

struct Rig {
    platform: Platform,
    ram: Arc<GuestMemoryMmap>,
    events: Arc<Recorder>,
    interrupts: Arc<Interrupts>,
}

fn rig() -> Rig {
    let ranges: Vec<_> = RAM.iter().map(|&(a, n)| (GuestAddress(a), n)).collect();
    let ram = Arc::new(GuestMemoryMmap::<()>::from_ranges(&ranges).expect("small mmap"));
    for &(base, len) in &RAM {
        for page in (base..base + len as u64).step_by(VMCS_REGION_SIZE) {
            GuestRam::write(&*ram, page, &VMCS_REVISION.to_le_bytes()).expect("in RAM");
        }
    }
    let events = Arc::new(Recorder::default());
    let interrupts = Arc::new(Interrupts::default());
    let platform = wire_platform(PlatformSpec {
        cpus: CPUS,
        ram: ram.clone(),
        pvpanic_events: PVPANIC_EVENTS,
        com1_irq: EventFd::new(libc_nonblock()).expect("eventfd"),
        sci: EventFd::new(libc_nonblock()).expect("eventfd"),
        interrupt: interrupts.clone(),
        events: events.clone(),
        serial_out: Box::new(std::io::sink()),
    })
    .expect("the platform wires");
    Rig {
        platform,
        ram,
        events,
        interrupts,
    }
}

/// EFD_NONBLOCK, so a full eventfd counter never blocks the fuzzer.
fn libc_nonblock() -> i32 {
    0o4000
}

/// A copy of guest RAM: only pv_vmx commands (VMCS write-backs) may change it.
fn ram_snapshot(ram: &GuestMemoryMmap) -> Vec<Vec<u8>> {
    RAM.iter()
        .map(|&(base, len)| {
            let mut buf = vec![0u8; len];
            GuestRam::read(ram, base, &mut buf).expect("in RAM");
            buf
        })
        .collect()
}

fn check_event(event: &VmEvent, writer: VcpuId) {
    let vcpu = match *event {
        VmEvent::Poweroff { vcpu } | VmEvent::Reset { vcpu } | VmEvent::CrashAck { vcpu, .. } => {
            vcpu
        }
        VmEvent::Pvpanic { event, vcpu } => {
            assert!(matches!(
                event,
                PvpanicEvent::Panicked | PvpanicEvent::CrashLoaded
            ));
            assert_ne!(event.bit() & PVPANIC_EVENTS, 0, "unsupported pvpanic event");
            vcpu
        }
        VmEvent::Vmcoreinfo { vcpu, note } => {
            if let Some((paddr, size)) = note {
                assert!(size >= 1 && size <= guest_abi::pv::vmcoreinfo::MAX_SIZE);
                assert!(paddr.checked_add(u64::from(size)).is_some());
            }
            vcpu
        }
        VmEvent::KexecHandover {
            vcpu,
            entry,
            elfcorehdr,
        } => {
            assert!(entry != 0 && elfcorehdr != 0);
            vcpu
        }
        VmEvent::VmcoreReady {
            vcpu,
            elfcorehdr,
            size,
        } => {
            assert!(elfcorehdr != 0 && size != 0 && size <= MAX_ELFCOREHDR_SIZE);
            assert!(elfcorehdr.checked_add(size).is_some());
            vcpu
        }
        VmEvent::CaptureFailed { vcpu, .. } => vcpu,
    };
    assert_eq!(vcpu, writer, "event tagged with the wrong vCPU");
}

fn check_vmx(rig: &Rig, before: PvVmxCounters, expect_command: bool) -> Vec<VmxVcpuState> {
    let vmx = rig.platform.pv_vmx.lock().unwrap();
    let after = vmx.counters();
    assert_eq!(
        after.commands - before.commands,
        u64::from(expect_command),
        "commands counted"
    );
    for (a, b) in [
        (after.bad_accesses, before.bad_accesses),
        (after.bad_vcpu_accesses, before.bad_vcpu_accesses),
        (after.vmfails, before.vmfails),
        (after.vmcs_lost, before.vmcs_lost),
        (after.evictions, before.evictions),
        (after.writeback_errors, before.writeback_errors),
    ] {
        assert!(a >= b, "a counter went down");
    }
    let states = vmx.snapshot();
    assert_eq!(states.len(), CPUS as usize);
    for s in &states {
        assert!(s.active_vmcs as usize <= MAX_ACTIVE_VMCS);
        if s.vmcs_loaded {
            assert!(s.vmx_on && s.current_vmcs.is_some() && s.active_vmcs >= 1);
        }
        if !s.vmx_on {
            assert_eq!(s.active_vmcs, 0);
            assert!(s.current_vmcs.is_none());
        }
        if s.vmx_on {
            let region = s.vmxon_region.expect("VMX on has a VMXON region");
            assert!(region % VMCS_REGION_SIZE as u64 == 0);
            assert!(GuestRam::contains(&*rig.ram, region, VMCS_REGION_SIZE));
        }
        for gpa in [s.current_vmcs, s.last_cleared_vmcs].into_iter().flatten() {
            assert!(gpa % VMCS_REGION_SIZE as u64 == 0);
            assert!(GuestRam::contains(&*rig.ram, gpa, VMCS_REGION_SIZE));
        }
    }
    states
}

/// Reads input bytes one at a time, 0 once exhausted.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    let mut input = Input(data);
    let ram_before = ram_snapshot(&rig.ram);
    let mut any_vmx_command = false;
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 1024 {
            break;
        }
        let vcpu = u32::from(input.byte().unwrap_or(0) % 4); // 2 and 3 do not exist
        let vmx_before = rig.platform.pv_vmx.lock().unwrap().counters();
        let mut expect_command = false;
        let mut may_write_ram = false;
        let mut host_action = false;
        match op >> 5 {
            // Port I/O at a device's registers (most of the input).
            0..=4 => {
                let (base, len) = PORTS[usize::from(input.byte().unwrap_or(0)) % PORTS.len()];
                let offset = u16::from(input.byte().unwrap_or(0)) % (len + 2);
                let port = u64::from(base.wrapping_add(offset));
                let size = SIZES[usize::from(op & 7)];
                let write = op & 0x8 != 0;
                let claimed = PORTS.iter().any(|&(b, l)| {
                    let (b, l) = (u64::from(b), u64::from(l));
                    port >= b && port + size as u64 <= b + l
                });
                if write {
                    let mut bytes = input.take(size);
                    bytes.resize(size, 0);
                    let dispatched = rig.platform.pio.write(vcpu, port, &bytes);
                    assert_eq!(dispatched, claimed, "write {port:#x}/{size}");
                    expect_command = dispatched
                        && port == u64::from(ports::PV_VMX) + COMMAND
                        && size == 4
                        && vcpu < CPUS;
                    may_write_ram = expect_command;
                } else {
                    let mut buf = vec![0x5a; size];
                    let dispatched = rig.platform.pio.read(vcpu, port, &mut buf);
                    assert_eq!(dispatched, claimed, "read {port:#x}/{size}");
                    if !dispatched {
                        assert!(buf.iter().all(|&b| b == 0x5a));
                    }
                }
            }
            // Any port, any width, and the (empty) MMIO bus.
            5 => {
                let addr = input.take(8);
                let mut raw = [0u8; 8];
                raw[..addr.len()].copy_from_slice(&addr);
                let addr = u64::from_le_bytes(raw);
                let size = SIZES[usize::from(op & 7)];
                let mut buf = vec![0u8; size];
                let bus = if op & 0x8 != 0 {
                    &rig.platform.mmio
                } else {
                    &rig.platform.pio
                };
                if op & 0x10 != 0 {
                    let hit = bus.write(vcpu, addr & 0xffff, &buf);
                    expect_command = hit
                        && addr & 0xffff == u64::from(ports::PV_VMX) + COMMAND
                        && size == 4
                        && vcpu < CPUS;
                    may_write_ram = expect_command;
                } else {
                    let _ = bus.read(vcpu, addr, &mut buf);
                }
                assert!(!rig.platform.mmio.read(vcpu, addr, &mut buf));
            }
            // Host-side calls the VMM makes between guest accesses.
            _ => {
                host_action = true;
                match op & 7 {
                    0 => {
                        let vmci = rig.platform.vmcoreinfo.lock().unwrap();
                        let registered = vmci.registered();
                        match vmci.read_note(&*rig.ram) {
                            Ok(note) => {
                                let (paddr, size) = registered.expect("read without registration");
                                assert_eq!(note.len(), size as usize);
                                assert!(GuestRam::contains(&*rig.ram, paddr, note.len()));
                            }
                            Err(_) => {}
                        }
                        let _ = vmci.read_text(&*rig.ram);
                    }
                    1 => {
                        let code = u32::from(input.byte().unwrap_or(0) % 12);
                        let cpu = input.byte().unwrap_or(0);
                        let cpu = (cpu & 0x80 == 0).then_some(u32::from(cpu % 4));
                        if let Some(crash) = CrashType::from_code(code) {
                            let _ = rig
                                .platform
                                .crash_control
                                .lock()
                                .unwrap()
                                .inject(crash, cpu);
                        }
                    }
                    2 => {
                        let n = usize::from(input.byte().unwrap_or(0) % 32);
                        let bytes = input.take(n);
                        let _ = rig.platform.serial.lock().unwrap().enqueue_input(&bytes);
                    }
                    3 => {
                        let _ = rig.platform.pm1_events.lock().unwrap().press_power_button();
                    }
                    4 => {
                        // A VM reset, as the VMM does it.
                        rig.platform.pv_vmx.lock().unwrap().reset();
                        rig.platform.crash_control.lock().unwrap().reset();
                        rig.platform.vmcoreinfo.lock().unwrap().reset();
                        rig.platform.kdump.lock().unwrap().reset();
                    }
                    _ => {
                        let _ = rig.platform.kdump.lock().unwrap().handover();
                        let _ = rig.platform.kdump.lock().unwrap().vmcore_ready();
                    }
                }
            }
        }
        let events = std::mem::take(&mut *rig.events.0.lock().unwrap());
        let is_write =
            !host_action && ((op >> 5) <= 4 && op & 0x8 != 0 || (op >> 5) == 5 && op & 0x10 != 0);
        if !is_write {
            assert!(events.is_empty(), "a read or host call emitted {events:?}");
        }
        for e in &events {
            check_event(e, vcpu);
        }
        for cpu in std::mem::take(&mut *rig.interrupts.0.lock().unwrap()) {
            assert!(cpu < CPUS, "interrupt to a vCPU that does not exist");
        }
        let states = check_vmx(&rig, vmx_before, expect_command);
        any_vmx_command |= may_write_ram;
        let _ = states;
    }
    if !any_vmx_command {
        assert!(
            ram_before == ram_snapshot(&rig.ram),
            "RAM changed without a VMX command"
        );
    }
});
