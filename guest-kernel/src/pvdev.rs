//! Register sequences of the VMM's pv devices (`guest_abi::pv`) other than
//! pv_vmx, over any register accessor, so they are host-tested against the
//! VMM's device models. The kernel's drivers (`pv.rs`) run them on ports.

use guest_abi::pv::{crash, kdump, vmcoreinfo, INVALID_READ};

/// 32-bit access to one pv device's registers (of the running CPU, for the
/// per-vCPU ones).
pub trait PvRegs {
    /// Reads the register at `offset`.
    fn read(&mut self, offset: u64) -> u32;
    /// Writes the register at `offset`.
    fn write(&mut self, offset: u64, value: u32);
}

/// Whether the device answering at offset 0 has ID `magic` (an absent
/// device reads all ones).
pub fn probe(r: &mut impl PvRegs, magic: u32) -> bool {
    let id = r.read(0);
    id == magic && id != INVALID_READ
}

fn write64(r: &mut impl PvRegs, lo: u64, hi: u64, v: u64) {
    r.write(lo, v as u32);
    r.write(hi, (v >> 32) as u32);
}

/// Registers the VMCOREINFO note at `paddr` (`size` bytes); returns the
/// device status (`vmcoreinfo::status`).
pub fn vmcoreinfo_register(r: &mut impl PvRegs, paddr: u64, size: u32) -> u32 {
    write64(r, vmcoreinfo::PADDR_LO, vmcoreinfo::PADDR_HI, paddr);
    r.write(vmcoreinfo::SIZE, size);
    r.write(vmcoreinfo::FORMAT, vmcoreinfo::FORMAT_ELF);
    r.read(vmcoreinfo::STATUS)
}

/// Sends KEXEC_HANDOVER (capture kernel entry, elfcorehdr); returns the
/// device status (`kdump::status`).
pub fn kdump_handover(r: &mut impl PvRegs, entry: u64, elfcorehdr: u64) -> u32 {
    write64(r, kdump::ARG0_LO, kdump::ARG0_HI, entry);
    write64(r, kdump::ARG1_LO, kdump::ARG1_HI, elfcorehdr);
    r.write(kdump::CMD, kdump::cmd::KEXEC_HANDOVER);
    r.read(kdump::STATUS)
}

/// Sends VMCORE_READY (elfcorehdr GPA, its size); returns the device
/// status (`kdump::status`).
pub fn kdump_vmcore_ready(r: &mut impl PvRegs, elfcorehdr: u64, size: u64) -> u32 {
    write64(r, kdump::ARG0_LO, kdump::ARG0_HI, elfcorehdr);
    write64(r, kdump::ARG1_LO, kdump::ARG1_HI, size);
    r.write(kdump::CMD, kdump::cmd::VMCORE_READY);
    r.read(kdump::STATUS)
}

/// Sends CAPTURE_FAILED (`kdump::reason` code, detail); returns the device
/// status.
pub fn kdump_capture_failed(r: &mut impl PvRegs, reason: u32, detail: u64) -> u32 {
    write64(r, kdump::ARG0_LO, kdump::ARG0_HI, reason as u64);
    write64(r, kdump::ARG1_LO, kdump::ARG1_HI, detail);
    r.write(kdump::CMD, kdump::cmd::CAPTURE_FAILED);
    r.read(kdump::STATUS)
}

/// This CPU's pending crash command (read clears; 0 if none).
pub fn crash_take_command(r: &mut impl PvRegs) -> u32 {
    r.read(crash::COMMAND)
}

/// Reports crash-injection progress (`crash::ack`).
pub fn crash_ack(r: &mut impl PvRegs, step: u32) {
    r.write(crash::ACK, step);
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::{Access, BusDevice};
    use devices::crash_control::{CpuInterrupt, CrashControl};
    use devices::{EventSink, VmEvent};
    use guest_abi::pv::crash::{CrashType, CRASH_VECTOR};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Sink(Mutex<Vec<VmEvent>>);
    impl EventSink for Sink {
        fn emit(&self, event: VmEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[derive(Default)]
    struct Irq(Mutex<Vec<(u32, Option<u8>)>>);
    impl CpuInterrupt for Irq {
        fn raise(&self, vcpu: u32, vector: u8) {
            self.0.lock().unwrap().push((vcpu, Some(vector)));
        }
        fn nmi(&self, vcpu: u32) {
            self.0.lock().unwrap().push((vcpu, None));
        }
    }

    struct Regs<'a, D: BusDevice>(&'a mut D, u32);
    impl<D: BusDevice> PvRegs for Regs<'_, D> {
        fn read(&mut self, offset: u64) -> u32 {
            let mut d = [0u8; 4];
            let a = Access {
                base: 0,
                offset,
                vcpu: self.1,
            };
            self.0.read(a, &mut d);
            u32::from_le_bytes(d)
        }
        fn write(&mut self, offset: u64, value: u32) {
            let a = Access {
                base: 0,
                offset,
                vcpu: self.1,
            };
            self.0.write(a, &value.to_le_bytes());
        }
    }

    struct Absent;
    impl PvRegs for Absent {
        fn read(&mut self, _: u64) -> u32 {
            INVALID_READ
        }
        fn write(&mut self, _: u64, _: u32) {}
    }

    #[test]
    fn absent_devices_probe_false() {
        assert!(!probe(&mut Absent, vmcoreinfo::ID_MAGIC));
        assert!(!probe(&mut Absent, INVALID_READ));
    }

    #[test]
    fn vmcoreinfo_registration_reaches_the_vmm() {
        let sink = Arc::new(Sink::default());
        let mut dev = devices::vmcoreinfo::Vmcoreinfo::new(sink.clone());
        assert!(probe(&mut Regs(&mut dev, 0), vmcoreinfo::ID_MAGIC));
        let st = vmcoreinfo_register(&mut Regs(&mut dev, 0), 0x1_2345_6000, 456);
        assert_eq!(st, vmcoreinfo::status::REGISTERED);
        assert_eq!(dev.registered(), Some((0x1_2345_6000, 456)));
        assert!(sink.0.lock().unwrap().iter().any(|e| matches!(
            e,
            VmEvent::Vmcoreinfo {
                note: Some((0x1_2345_6000, 456)),
                ..
            }
        )));
        assert_eq!(
            vmcoreinfo_register(&mut Regs(&mut dev, 0), 0x1000, 0),
            vmcoreinfo::status::BAD_SIZE
        );
    }

    #[test]
    fn kexec_handover_reaches_the_vmm() {
        let sink = Arc::new(Sink::default());
        let mut dev = devices::kdump::Kdump::new(sink.clone());
        assert!(probe(&mut Regs(&mut dev, 2), kdump::ID_MAGIC));
        assert_eq!(
            kdump_handover(&mut Regs(&mut dev, 2), 0xb00_0000, 0xeff_c000),
            kdump::status::OK
        );
        assert_eq!(dev.handover(), Some((0xb00_0000, 0xeff_c000)));
        assert!(sink.0.lock().unwrap().iter().any(|e| matches!(
            e,
            VmEvent::KexecHandover {
                vcpu: 2,
                entry: 0xb00_0000,
                elfcorehdr: 0xeff_c000
            }
        )));
        // No elfcorehdr: the device refuses, so the kernel always sends one.
        assert_eq!(
            kdump_handover(&mut Regs(&mut dev, 2), 0xb00_0000, 0),
            kdump::status::BAD_ARGUMENT
        );
    }

    #[test]
    fn vmcore_ready_and_capture_failed_reach_the_vmm() {
        use devices::kdump::CaptureFailure;
        let sink = Arc::new(Sink::default());
        let mut dev = devices::kdump::Kdump::new(sink.clone());
        assert_eq!(
            kdump_vmcore_ready(&mut Regs(&mut dev, 0), 0xfff_c000, 0x2d8),
            kdump::status::OK
        );
        assert_eq!(
            kdump_capture_failed(
                &mut Regs(&mut dev, 0),
                kdump::reason::IMAGE_CORRUPT,
                0xdead_beef_0000_0001
            ),
            kdump::status::OK
        );
        let events = sink.0.lock().unwrap();
        assert!(events.iter().any(|e| matches!(
            e,
            VmEvent::VmcoreReady {
                vcpu: 0,
                elfcorehdr: 0xfff_c000,
                size: 0x2d8
            }
        )));
        assert!(events.iter().any(|e| matches!(
            e,
            VmEvent::CaptureFailed {
                vcpu: 0,
                reason: CaptureFailure::ImageCorrupt,
                detail: 0xdead_beef_0000_0001
            }
        )));
        drop(events);
        // A header larger than the device accepts is refused.
        assert_eq!(
            kdump_vmcore_ready(&mut Regs(&mut dev, 0), 0xfff_c000, 2 << 20),
            kdump::status::BAD_ARGUMENT
        );
    }

    #[test]
    fn crash_commands_are_per_cpu_and_read_once() {
        let irq = Arc::new(Irq::default());
        let sink = Arc::new(Sink::default());
        let mut dev = CrashControl::new(4, irq.clone(), sink.clone()).unwrap();
        assert!(probe(&mut Regs(&mut dev, 0), crash::ID_MAGIC));
        dev.inject(CrashType::HardLockup, Some(1)).unwrap();
        assert_eq!(irq.0.lock().unwrap().as_slice(), &[(1, Some(CRASH_VECTOR))]);
        assert_eq!(crash_take_command(&mut Regs(&mut dev, 0)), crash::NONE);
        assert_eq!(
            crash_take_command(&mut Regs(&mut dev, 1)),
            CrashType::HardLockup.code()
        );
        assert_eq!(crash_take_command(&mut Regs(&mut dev, 1)), crash::NONE);
        crash_ack(&mut Regs(&mut dev, 1), crash::ack::HELPER_READY);
        assert!(sink.0.lock().unwrap().iter().any(|e| matches!(
            e,
            VmEvent::CrashAck {
                vcpu: 1,
                step: crash::ack::HELPER_READY
            }
        )));
        dev.inject(CrashType::NmiPanic, Some(3)).unwrap();
        assert_eq!(irq.0.lock().unwrap().last(), Some(&(3, None)));
    }
}
