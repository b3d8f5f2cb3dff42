//! LKDTM-style crash injection: the VMM tells a chosen vCPU to crash in a
//! chosen way (the guest-visible contract is `guest_abi::pv::crash`).
//!
//! Register block at [`guest_abi::ports::CRASH_CONTROL`], 32-bit registers:
//!
//! | offset | register | access | per vCPU |
//! |--------|----------|--------|----------|
//! | 0x00 | ID (`"LKDT"`) | R | |
//! | 0x04 | COMMAND: pending crash type code, cleared by the read (0 = none) | R | yes |
//! | 0x08 | ACK: the step the guest reached | W | yes |
//! | 0x0C | VECTOR: the interrupt vector used | R | |
//!
//! [`CrashControl::inject`] stores the command for the target vCPU and then
//! interrupts it through the injected [`CpuInterrupt`]: a fixed interrupt
//! with vector `CRASH_VECTOR`, or an NMI for `NMI_PANIC`. The command is
//! stored first, so the guest's handler always finds it. A newer command
//! for the same vCPU replaces an unread one (counted).
//!
//! ACK writes are counted per vCPU and reported as [`VmEvent::CrashAck`], so
//! a test can wait for "CPU 2 is spinning with interrupts off" instead of
//! sleeping.

use std::sync::Arc;

use guest_abi::pv::crash::{ACK, COMMAND, CRASH_TYPES, CRASH_VECTOR, ID, ID_MAGIC, NONE, VECTOR};
use guest_abi::pv::{INVALID_READ, REGISTER_WIDTH};

pub use guest_abi::pv::crash::{CrashType, CrashTypeInfo};

use crate::bus::{Access, BusDevice, VcpuId};
use crate::pv_regs;
use crate::{EventSink, VmEvent};

/// Length of the register block in port space.
pub const CRASH_CONTROL_LEN: u64 = guest_abi::ports::CRASH_CONTROL_LEN as u64;

/// Every crash type with its QMP name and description, for `query-crash-types`.
pub fn crash_types() -> &'static [CrashTypeInfo] {
    &CRASH_TYPES
}

/// How the VMM interrupts a vCPU. The VMM implements it with `KVM_SIGNAL_MSI`
/// to the vCPU's APIC ID (fixed delivery) and, for NMIs, by kicking the vCPU
/// and injecting from its own thread.
///
/// Called with the device locked: implementations must not block on the
/// target vCPU (queue the request and kick it).
pub trait CpuInterrupt: Send + Sync {
    /// Raises a fixed interrupt with `vector` on `vcpu`.
    fn raise(&self, vcpu: VcpuId, vector: u8);
    /// Delivers an NMI to `vcpu`.
    fn nmi(&self, vcpu: VcpuId);
}

/// Errors from creating the device or injecting a crash.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CrashControlError {
    /// The device needs at least one vCPU.
    #[error("crash control needs at least one vCPU")]
    NoVcpus,
    /// The target vCPU does not exist.
    #[error("no CPU {cpu} (the VM has {vcpus})")]
    InvalidCpu {
        /// The requested CPU.
        cpu: u32,
        /// How many vCPUs the VM has.
        vcpus: u32,
    },
    /// PANIC_ALL targets every CPU; a CPU must not be given.
    #[error("PANIC_ALL targets every CPU; no cpu may be given")]
    CpuWithPanicAll,
    /// No crash type has this name.
    #[error("unknown crash type {0:?}")]
    UnknownType(String),
}

/// What the device did and ignored, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashControlCounters {
    /// Commands stored by `inject` (one per target vCPU).
    pub injected: u64,
    /// Commands that replaced one the guest had not read yet.
    pub replaced: u64,
    /// COMMAND reads that returned a pending command.
    pub delivered: u64,
    /// ACK writes.
    pub acks: u64,
    /// Accesses with a bad width or offset, or to a read-only register.
    pub bad_accesses: u64,
    /// Accesses from a vCPU id the device was not created for.
    pub bad_vcpu_accesses: u64,
}

/// Per-vCPU state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VcpuCrash {
    /// Pending command code, [`NONE`] if none.
    pending: u32,
    /// Last ACK value written.
    last_ack: Option<u32>,
    /// ACK writes.
    acks: u64,
}

/// The crash-control device.
pub struct CrashControl {
    vcpus: Vec<VcpuCrash>,
    interrupt: Arc<dyn CpuInterrupt>,
    sink: Arc<dyn EventSink>,
    counters: CrashControlCounters,
}

impl std::fmt::Debug for CrashControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashControl")
            .field("vcpus", &self.vcpus)
            .field("counters", &self.counters)
            .finish()
    }
}

impl CrashControl {
    /// A device for `vcpus` vCPUs (ids `0..vcpus`) that interrupts them
    /// through `interrupt` and reports ACKs to `sink`.
    pub fn new(
        vcpus: u32,
        interrupt: Arc<dyn CpuInterrupt>,
        sink: Arc<dyn EventSink>,
    ) -> Result<Self, CrashControlError> {
        if vcpus == 0 {
            return Err(CrashControlError::NoVcpus);
        }
        Ok(Self {
            vcpus: vec![VcpuCrash::default(); vcpus as usize],
            interrupt,
            sink,
            counters: CrashControlCounters::default(),
        })
    }

    /// Looks a crash type up by its QMP name (ASCII case ignored).
    pub fn parse_type(name: &str) -> Result<CrashType, CrashControlError> {
        CrashType::from_name(name).ok_or_else(|| CrashControlError::UnknownType(name.to_owned()))
    }

    /// Tells `cpu` to crash as `crash` says. `None` picks CPU 0, or every CPU
    /// for PANIC_ALL (which refuses an explicit CPU). Stores the command,
    /// then interrupts each target.
    pub fn inject(&mut self, crash: CrashType, cpu: Option<u32>) -> Result<(), CrashControlError> {
        let count = self.vcpus.len() as u32;
        let targets = match (crash, cpu) {
            (CrashType::PanicAll, Some(_)) => return Err(CrashControlError::CpuWithPanicAll),
            (CrashType::PanicAll, None) => 0..count,
            (_, cpu) => {
                let cpu = cpu.unwrap_or(0);
                if cpu >= count {
                    return Err(CrashControlError::InvalidCpu { cpu, vcpus: count });
                }
                cpu..cpu + 1
            }
        };
        // Store every command before the first interrupt: PANIC_ALL's CPUs
        // must all find theirs, whichever is interrupted first.
        for cpu in targets.clone() {
            let slot = &mut self.vcpus[cpu as usize];
            if slot.pending != NONE {
                self.counters.replaced += 1;
                log::warn!(
                    "crash-control: CPU {cpu} had not read command {}, replaced by {}",
                    slot.pending,
                    crash.name()
                );
            }
            slot.pending = crash.code();
            self.counters.injected += 1;
        }
        for cpu in targets {
            log::info!("crash-control: injecting {} on CPU {cpu}", crash.name());
            if crash.delivered_by_nmi() {
                self.interrupt.nmi(cpu);
            } else {
                self.interrupt.raise(cpu, CRASH_VECTOR);
            }
        }
        Ok(())
    }

    /// The command pending (not yet read) on `vcpu`.
    pub fn pending(&self, vcpu: VcpuId) -> Option<CrashType> {
        self.vcpus
            .get(vcpu as usize)
            .and_then(|v| CrashType::from_code(v.pending))
    }

    /// The last step `vcpu` acknowledged, and how many ACKs it wrote.
    pub fn last_ack(&self, vcpu: VcpuId) -> Option<(u32, u64)> {
        let v = self.vcpus.get(vcpu as usize)?;
        v.last_ack.map(|step| (step, v.acks))
    }

    /// What the device has done and ignored so far.
    pub fn counters(&self) -> CrashControlCounters {
        self.counters
    }

    /// A VM reset: pending commands and ACKs are forgotten. Counters are kept.
    pub fn reset(&mut self) {
        self.vcpus.fill(VcpuCrash::default());
    }

    fn bad_access(&mut self, access: Access, len: usize, what: &str) {
        pv_regs::ignored(
            &mut self.counters.bad_accesses,
            "crash-control",
            access,
            len,
            what,
        );
    }

    fn vcpu_index(&mut self, access: Access) -> Option<usize> {
        let index = access.vcpu as usize;
        if index < self.vcpus.len() {
            Some(index)
        } else {
            self.counters.bad_vcpu_accesses += 1;
            log::warn!(
                "crash-control: access from unknown vCPU {}, ignored",
                access.vcpu
            );
            None
        }
    }
}

impl BusDevice for CrashControl {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if data.len() != REGISTER_WIDTH {
            self.bad_access(access, data.len(), "read");
            data.fill(0xff);
            return;
        }
        let value = match access.offset {
            ID => ID_MAGIC,
            VECTOR => u32::from(CRASH_VECTOR),
            COMMAND => match self.vcpu_index(access) {
                Some(cpu) => {
                    let code = std::mem::replace(&mut self.vcpus[cpu].pending, NONE);
                    if code != NONE {
                        self.counters.delivered += 1;
                    }
                    code
                }
                None => INVALID_READ,
            },
            _ => {
                self.bad_access(access, data.len(), "read");
                INVALID_READ
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        let Some(step) = pv_regs::write_value(data) else {
            self.bad_access(access, data.len(), "wrote");
            return;
        };
        if access.offset != ACK {
            self.bad_access(access, data.len(), "wrote");
            return;
        }
        let Some(cpu) = self.vcpu_index(access) else {
            return;
        };
        let v = &mut self.vcpus[cpu];
        v.last_ack = Some(step);
        v.acks += 1;
        self.counters.acks += 1;
        log::debug!("crash-control: CPU {cpu} acknowledged step {step}");
        self.sink.emit(VmEvent::CrashAck {
            vcpu: access.vcpu,
            step,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::pv::crash::ack;
    use std::sync::Mutex;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Irq {
        Fixed(u32, u8),
        Nmi(u32),
    }

    /// Records interrupts; for each, what the target's COMMAND held then.
    #[derive(Default)]
    struct FakeInterrupts(Mutex<Vec<Irq>>);

    impl CpuInterrupt for FakeInterrupts {
        fn raise(&self, vcpu: VcpuId, vector: u8) {
            self.0.lock().unwrap().push(Irq::Fixed(vcpu, vector));
        }
        fn nmi(&self, vcpu: VcpuId) {
            self.0.lock().unwrap().push(Irq::Nmi(vcpu));
        }
    }

    impl FakeInterrupts {
        fn take(&self) -> Vec<Irq> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    use crate::test_utils::Recorder;

    struct Rig {
        dev: CrashControl,
        irqs: Arc<FakeInterrupts>,
        events: Arc<Recorder>,
    }

    fn rig(vcpus: u32) -> Rig {
        let irqs = Arc::new(FakeInterrupts::default());
        let events = Arc::new(Recorder::default());
        let dev = CrashControl::new(vcpus, irqs.clone(), events.clone()).unwrap();
        Rig { dev, irqs, events }
    }

    fn at(offset: u64, vcpu: u32) -> Access {
        Access {
            base: u64::from(guest_abi::ports::CRASH_CONTROL),
            offset,
            vcpu,
        }
    }

    impl Rig {
        fn inl(&mut self, vcpu: u32, offset: u64) -> u32 {
            let mut data = [0u8; 4];
            self.dev.read(at(offset, vcpu), &mut data);
            u32::from_le_bytes(data)
        }
        fn out(&mut self, vcpu: u32, offset: u64, value: u32) {
            self.dev.write(at(offset, vcpu), &value.to_le_bytes());
        }
    }

    const FIXED: u8 = CRASH_VECTOR;

    #[test]
    fn inject_stores_then_interrupts_the_target() {
        let mut r = rig(4);
        r.dev.inject(CrashType::Panic, Some(2)).unwrap();
        assert_eq!(r.irqs.take(), vec![Irq::Fixed(2, FIXED)]);
        assert_eq!(r.dev.pending(2), Some(CrashType::Panic));
        // Other CPUs see nothing.
        assert_eq!(r.inl(1, COMMAND), NONE);
        // The target reads it once; the read clears it.
        assert_eq!(r.inl(2, COMMAND), CrashType::Panic.code());
        assert_eq!(r.inl(2, COMMAND), NONE);
        assert_eq!(r.dev.pending(2), None);
        let c = r.dev.counters();
        assert_eq!((c.injected, c.delivered), (1, 1));
    }

    #[test]
    fn every_type_has_its_code_and_delivery() {
        for info in crash_types() {
            let mut r = rig(2);
            let cpu = (info.crash != CrashType::PanicAll).then_some(1);
            r.dev.inject(info.crash, cpu).unwrap();
            let irqs = r.irqs.take();
            match info.crash {
                CrashType::NmiPanic => assert_eq!(irqs, vec![Irq::Nmi(1)]),
                CrashType::PanicAll => {
                    assert_eq!(irqs, vec![Irq::Fixed(0, FIXED), Irq::Fixed(1, FIXED)])
                }
                _ => assert_eq!(irqs, vec![Irq::Fixed(1, FIXED)], "{}", info.name),
            }
            assert_eq!(r.inl(1, COMMAND), info.crash.code(), "{}", info.name);
        }
        assert_eq!(crash_types().len(), 9);
    }

    #[test]
    fn default_cpu_is_zero_and_panic_all_is_everyone() {
        let mut r = rig(3);
        r.dev.inject(CrashType::Bug, None).unwrap();
        assert_eq!(r.irqs.take(), vec![Irq::Fixed(0, FIXED)]);
        r.dev.inject(CrashType::PanicAll, None).unwrap();
        assert_eq!(
            r.irqs.take(),
            vec![
                Irq::Fixed(0, FIXED),
                Irq::Fixed(1, FIXED),
                Irq::Fixed(2, FIXED)
            ]
        );
        for cpu in 0..3 {
            assert_eq!(r.inl(cpu, COMMAND), CrashType::PanicAll.code());
        }
        // CPU 0's unread BUG was replaced.
        assert_eq!(r.dev.counters().replaced, 1);
    }

    #[test]
    fn bad_targets_are_refused_without_side_effects() {
        let mut r = rig(2);
        assert_eq!(
            r.dev.inject(CrashType::Panic, Some(2)),
            Err(CrashControlError::InvalidCpu { cpu: 2, vcpus: 2 })
        );
        assert_eq!(
            r.dev.inject(CrashType::HardLockup, Some(u32::MAX)),
            Err(CrashControlError::InvalidCpu {
                cpu: u32::MAX,
                vcpus: 2
            })
        );
        assert_eq!(
            r.dev.inject(CrashType::PanicAll, Some(0)),
            Err(CrashControlError::CpuWithPanicAll)
        );
        assert!(r.irqs.take().is_empty());
        assert_eq!(r.dev.pending(0), None);
        assert_eq!(r.dev.counters().injected, 0);
    }

    #[test]
    fn names_parse_and_unknown_ones_are_errors() {
        assert_eq!(
            CrashControl::parse_type("HARDLOCKUP"),
            Ok(CrashType::HardLockup)
        );
        assert_eq!(
            CrashControl::parse_type("panic_all"),
            Ok(CrashType::PanicAll)
        );
        assert_eq!(
            CrashControl::parse_type("OOPS"),
            Err(CrashControlError::UnknownType("OOPS".into()))
        );
    }

    #[test]
    fn acks_are_counted_and_reported() {
        let mut r = rig(2);
        assert_eq!(r.dev.last_ack(1), None);
        r.out(1, ACK, ack::RECEIVED);
        r.out(1, ACK, ack::TRIGGERING);
        assert_eq!(r.dev.last_ack(1), Some((ack::TRIGGERING, 2)));
        assert_eq!(r.dev.last_ack(0), None);
        assert_eq!(
            *r.events.0.lock().unwrap(),
            vec![
                VmEvent::CrashAck {
                    vcpu: 1,
                    step: ack::RECEIVED
                },
                VmEvent::CrashAck {
                    vcpu: 1,
                    step: ack::TRIGGERING
                }
            ]
        );
        assert_eq!(r.dev.counters().acks, 2);
        r.dev.reset();
        assert_eq!(r.dev.last_ack(1), None);
    }

    #[test]
    fn garbage_accesses_are_ignored_and_counted() {
        let mut r = rig(2);
        r.dev.inject(CrashType::Panic, Some(1)).unwrap();
        assert_eq!(r.inl(0, ID), ID_MAGIC);
        assert_eq!(r.inl(0, VECTOR), u32::from(CRASH_VECTOR));
        // Narrow reads of COMMAND must not consume the command.
        let mut byte = [0u8];
        r.dev.read(at(COMMAND, 1), &mut byte);
        assert_eq!(byte, [0xff]);
        let mut wide = [0u8; 8];
        r.dev.read(at(COMMAND, 1), &mut wide);
        assert_eq!(r.dev.pending(1), Some(CrashType::Panic));
        // Writes to read-only registers or odd offsets; narrow ACK writes.
        r.out(1, COMMAND, 0);
        r.out(1, ID, 0);
        r.out(1, 0x0a, 1);
        r.dev.write(at(ACK, 1), &[1]);
        assert_eq!(r.inl(1, 0x10), INVALID_READ);
        assert_eq!(r.dev.counters().bad_accesses, 7);
        assert_eq!(r.dev.pending(1), Some(CrashType::Panic));
        assert_eq!(r.dev.counters().acks, 0);
        // Unknown vCPUs.
        assert_eq!(r.inl(5, COMMAND), INVALID_READ);
        r.out(5, ACK, 1);
        assert_eq!(r.dev.counters().bad_vcpu_accesses, 2);
        assert!(r.events.0.lock().unwrap().is_empty());
    }

    #[test]
    fn random_accesses_never_panic() {
        let mut r = rig(3);
        r.dev.inject(CrashType::PanicAll, None).unwrap();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let offset = seed % 0x24;
            let len = (seed >> 8) as usize % 9;
            let vcpu = (seed >> 16) as u32 % 5;
            let value = (seed >> 32).to_le_bytes();
            if seed & (1 << 20) == 0 {
                r.dev.write(at(offset, vcpu), &value[..len]);
            } else {
                let mut buf = vec![0u8; len];
                r.dev.read(at(offset, vcpu), &mut buf);
            }
        }
        assert!(r.dev.counters().bad_accesses > 1000 && r.dev.counters().delivered <= 3);
    }

    #[test]
    fn zero_vcpus_is_an_error() {
        let irqs = Arc::new(FakeInterrupts::default());
        let events = Arc::new(Recorder::default());
        assert_eq!(
            CrashControl::new(0, irqs, events).unwrap_err(),
            CrashControlError::NoVcpus
        );
    }
}
