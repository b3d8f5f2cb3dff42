//! The kdump device: the first kernel announces its jump to the capture
//! kernel, and the capture kernel reports "vmcore ready at elfcorehdr ADDR"
//! (or that it failed). Contract: `guest_abi::pv::kdump`.
//!
//! Register block at [`guest_abi::ports::KDUMP`], 32-bit registers, global:
//!
//! | offset | register | access |
//! |--------|----------|--------|
//! | 0x00 | ID (`"KDMP"`) | R |
//! | 0x04 | ARG0_LO | RW |
//! | 0x08 | ARG0_HI | RW |
//! | 0x0C | ARG1_LO | RW |
//! | 0x10 | ARG1_HI | RW |
//! | 0x14 | CMD: write executes; read = last command | RW |
//! | 0x18 | STATUS: outcome of the last command | R |
//!
//! | CMD | ARG0 | ARG1 | event |
//! |-----|------|------|-------|
//! | KEXEC_HANDOVER (1) | capture kernel entry | elfcorehdr GPA | [`VmEvent::KexecHandover`] |
//! | VMCORE_READY (2) | elfcorehdr GPA | its size | [`VmEvent::VmcoreReady`] |
//! | CAPTURE_FAILED (3) | reason code | detail | [`VmEvent::CaptureFailed`] |
//!
//! The device checks only what it can without guest memory (zero
//! addresses, sizes, wrap-around); the VMM parses the elfcorehdr itself, as
//! hostile input. Refused commands report nothing and are counted.

use std::sync::Arc;

use guest_abi::pv::kdump::{
    cmd, reason, status, ARG0_HI, ARG0_LO, ARG1_HI, ARG1_LO, CMD, ID, ID_MAGIC,
    MAX_ELFCOREHDR_SIZE, STATUS,
};
use guest_abi::pv::{INVALID_READ, REGISTER_WIDTH};

use crate::bus::{Access, BusDevice, VcpuId};
use crate::pv_regs;
use crate::{EventSink, VmEvent};

/// Length of the register block in port space.
pub const KDUMP_LEN: u64 = guest_abi::ports::KDUMP_LEN as u64;

/// Why kdump gave up (the CAPTURE_FAILED reason codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CaptureFailure {
    /// No `elfcorehdr=` on the capture kernel's command line.
    NoElfcorehdr,
    /// The elfcorehdr failed the capture kernel's validation.
    BadElfcorehdr,
    /// The capture image's checksum did not match before the jump.
    ImageCorrupt,
    /// No CPU had a valid crash note.
    NoCrashNotes,
    /// Another reason the guest knows.
    Other,
    /// A code this VMM doesn't know.
    Unknown(u32),
}

impl CaptureFailure {
    /// The reason for code `code` (ARG0 of CAPTURE_FAILED).
    pub fn from_code(code: u32) -> Self {
        match code {
            reason::NO_ELFCOREHDR => Self::NoElfcorehdr,
            reason::BAD_ELFCOREHDR => Self::BadElfcorehdr,
            reason::IMAGE_CORRUPT => Self::ImageCorrupt,
            reason::NO_CRASH_NOTES => Self::NoCrashNotes,
            reason::OTHER => Self::Other,
            other => Self::Unknown(other),
        }
    }

    /// The reason code.
    pub fn code(self) -> u32 {
        match self {
            Self::NoElfcorehdr => reason::NO_ELFCOREHDR,
            Self::BadElfcorehdr => reason::BAD_ELFCOREHDR,
            Self::ImageCorrupt => reason::IMAGE_CORRUPT,
            Self::NoCrashNotes => reason::NO_CRASH_NOTES,
            Self::Other => reason::OTHER,
            Self::Unknown(code) => code,
        }
    }
}

impl std::fmt::Display for CaptureFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoElfcorehdr => f.write_str("no elfcorehdr= on the capture kernel command line"),
            Self::BadElfcorehdr => f.write_str("the elfcorehdr failed validation"),
            Self::ImageCorrupt => f.write_str("the capture image checksum did not match"),
            Self::NoCrashNotes => f.write_str("no CPU had a valid crash note"),
            Self::Other => f.write_str("other"),
            Self::Unknown(code) => write!(f, "unknown reason {code}"),
        }
    }
}

/// What the device did and ignored, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KdumpCounters {
    /// Commands reported to the sink.
    pub reported: u64,
    /// Commands refused for their arguments.
    pub bad_arguments: u64,
    /// Unknown command codes.
    pub bad_commands: u64,
    /// Accesses with a bad width or offset, or writes to read-only registers.
    pub bad_accesses: u64,
}

/// The kdump device.
pub struct Kdump {
    arg0: u64,
    arg1: u64,
    last_command: u32,
    status: u32,
    handover: Option<(u64, u64)>,
    vmcore_ready: Option<(u64, u64)>,
    failure: Option<CaptureFailure>,
    sink: Arc<dyn EventSink>,
    counters: KdumpCounters,
}

impl std::fmt::Debug for Kdump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kdump")
            .field("handover", &self.handover)
            .field("vmcore_ready", &self.vmcore_ready)
            .field("failure", &self.failure)
            .field("counters", &self.counters)
            .finish()
    }
}

impl Kdump {
    /// A device reporting to `sink`.
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Self {
            arg0: 0,
            arg1: 0,
            last_command: 0,
            status: status::IDLE,
            handover: None,
            vmcore_ready: None,
            failure: None,
            sink,
            counters: KdumpCounters::default(),
        }
    }

    /// The last accepted KEXEC_HANDOVER: `(entry, elfcorehdr)`.
    pub fn handover(&self) -> Option<(u64, u64)> {
        self.handover
    }

    /// The last accepted VMCORE_READY: `(elfcorehdr, size)`.
    pub fn vmcore_ready(&self) -> Option<(u64, u64)> {
        self.vmcore_ready
    }

    /// The last CAPTURE_FAILED reason.
    pub fn failure(&self) -> Option<CaptureFailure> {
        self.failure
    }

    /// What the device did and ignored so far.
    pub fn counters(&self) -> KdumpCounters {
        self.counters
    }

    /// A VM reset: registers and recorded reports are cleared; counters kept.
    pub fn reset(&mut self) {
        self.arg0 = 0;
        self.arg1 = 0;
        self.last_command = 0;
        self.status = status::IDLE;
        self.handover = None;
        self.vmcore_ready = None;
        self.failure = None;
    }

    fn execute(&mut self, command: u32, vcpu: VcpuId) {
        let (arg0, arg1) = (self.arg0, self.arg1);
        let event = match command {
            cmd::KEXEC_HANDOVER if arg0 == 0 || arg1 == 0 => None,
            cmd::KEXEC_HANDOVER => {
                self.handover = Some((arg0, arg1));
                log::info!(
                    "kdump: vCPU {vcpu} hands over to the capture kernel at {arg0:#x}, elfcorehdr {arg1:#x}"
                );
                Some(VmEvent::KexecHandover {
                    vcpu,
                    entry: arg0,
                    elfcorehdr: arg1,
                })
            }
            cmd::VMCORE_READY
                if arg0 == 0
                    || arg1 == 0
                    || arg1 > MAX_ELFCOREHDR_SIZE
                    || arg0.checked_add(arg1).is_none() =>
            {
                None
            }
            cmd::VMCORE_READY => {
                self.vmcore_ready = Some((arg0, arg1));
                log::info!(
                    "kdump: vCPU {vcpu} reports vmcore ready at elfcorehdr {arg0:#x}+{arg1:#x}"
                );
                Some(VmEvent::VmcoreReady {
                    vcpu,
                    elfcorehdr: arg0,
                    size: arg1,
                })
            }
            cmd::CAPTURE_FAILED => {
                // Reason codes are 32-bit; a larger ARG0 is an unknown reason.
                let code = u32::try_from(arg0).unwrap_or(u32::MAX);
                let reason = CaptureFailure::from_code(code);
                self.failure = Some(reason);
                log::warn!(
                    "kdump: vCPU {vcpu} reports capture failed: {reason} (detail {arg1:#x})"
                );
                Some(VmEvent::CaptureFailed {
                    vcpu,
                    reason,
                    detail: arg1,
                })
            }
            other => {
                self.counters.bad_commands += 1;
                self.status = status::BAD_COMMAND;
                self.last_command = other;
                log::warn!("kdump: vCPU {vcpu} wrote unknown command {other:#x}, ignored");
                return;
            }
        };
        self.last_command = command;
        match event {
            Some(event) => {
                self.counters.reported += 1;
                self.status = status::OK;
                self.sink.emit(event);
            }
            None => {
                self.counters.bad_arguments += 1;
                self.status = status::BAD_ARGUMENT;
                log::warn!(
                    "kdump: vCPU {vcpu} command {command} with bad arguments {arg0:#x}, {arg1:#x}, refused"
                );
            }
        }
    }

    fn bad_access(&mut self, access: Access, len: usize, what: &str) {
        pv_regs::ignored(&mut self.counters.bad_accesses, "kdump", access, len, what);
    }
}

impl BusDevice for Kdump {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if data.len() != REGISTER_WIDTH {
            self.bad_access(access, data.len(), "read");
            data.fill(0xff);
            return;
        }
        let value = match access.offset {
            ID => ID_MAGIC,
            ARG0_LO => self.arg0 as u32,
            ARG0_HI => (self.arg0 >> 32) as u32,
            ARG1_LO => self.arg1 as u32,
            ARG1_HI => (self.arg1 >> 32) as u32,
            CMD => self.last_command,
            STATUS => self.status,
            _ => {
                self.bad_access(access, data.len(), "read");
                INVALID_READ
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        let Some(value) = pv_regs::write_value(data) else {
            self.bad_access(access, data.len(), "wrote");
            return;
        };
        match access.offset {
            ARG0_LO => self.arg0 = pv_regs::with_low(self.arg0, value),
            ARG0_HI => self.arg0 = pv_regs::with_high(self.arg0, value),
            ARG1_LO => self.arg1 = pv_regs::with_low(self.arg1, value),
            ARG1_HI => self.arg1 = pv_regs::with_high(self.arg1, value),
            CMD => self.execute(value, access.vcpu),
            _ => self.bad_access(access, data.len(), "wrote"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_utils::Recorder;

    fn at(offset: u64, vcpu: u32) -> Access {
        Access {
            base: u64::from(guest_abi::ports::KDUMP),
            offset,
            vcpu,
        }
    }

    fn device() -> (Kdump, Arc<Recorder>) {
        let sink = Arc::new(Recorder::default());
        (Kdump::new(sink.clone()), sink)
    }

    fn out(dev: &mut Kdump, vcpu: u32, offset: u64, value: u32) {
        dev.write(at(offset, vcpu), &value.to_le_bytes());
    }

    fn inl(dev: &mut Kdump, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        dev.read(at(offset, 0), &mut data);
        u32::from_le_bytes(data)
    }

    /// Writes both arguments (HI before LO, to show the order is free) and
    /// the command; returns STATUS.
    fn command(dev: &mut Kdump, vcpu: u32, command: u32, arg0: u64, arg1: u64) -> u32 {
        out(dev, vcpu, ARG0_HI, (arg0 >> 32) as u32);
        out(dev, vcpu, ARG0_LO, arg0 as u32);
        out(dev, vcpu, ARG1_HI, (arg1 >> 32) as u32);
        out(dev, vcpu, ARG1_LO, arg1 as u32);
        out(dev, vcpu, CMD, command);
        inl(dev, STATUS)
    }

    #[test]
    fn kexec_handover_reports_entry_and_elfcorehdr() {
        let (mut dev, sink) = device();
        assert_eq!(inl(&mut dev, ID), ID_MAGIC);
        assert_eq!(inl(&mut dev, STATUS), status::IDLE);
        let entry = 0x1_0000_1000;
        let hdr = 0x7f0_0000;
        assert_eq!(
            command(&mut dev, 2, cmd::KEXEC_HANDOVER, entry, hdr),
            status::OK
        );
        assert_eq!(
            sink.take(),
            vec![VmEvent::KexecHandover {
                vcpu: 2,
                entry,
                elfcorehdr: hdr
            }]
        );
        assert_eq!(dev.handover(), Some((entry, hdr)));
        assert_eq!(inl(&mut dev, CMD), cmd::KEXEC_HANDOVER);
        assert_eq!(inl(&mut dev, ARG0_HI), 1);
    }

    #[test]
    fn vmcore_ready_reports_the_header() {
        let (mut dev, sink) = device();
        assert_eq!(
            command(&mut dev, 0, cmd::VMCORE_READY, 0x7f0_0000, 0x1000),
            status::OK
        );
        assert_eq!(
            sink.take(),
            vec![VmEvent::VmcoreReady {
                vcpu: 0,
                elfcorehdr: 0x7f0_0000,
                size: 0x1000
            }]
        );
        assert_eq!(dev.vmcore_ready(), Some((0x7f0_0000, 0x1000)));
        assert_eq!(
            command(&mut dev, 0, cmd::VMCORE_READY, 0x1000, MAX_ELFCOREHDR_SIZE),
            status::OK
        );
        assert_eq!(sink.take().len(), 1);
    }

    #[test]
    fn capture_failed_reports_known_and_unknown_reasons() {
        let (mut dev, sink) = device();
        for code in 1..=5 {
            assert_eq!(
                command(&mut dev, 0, cmd::CAPTURE_FAILED, u64::from(code), 7),
                status::OK
            );
            let reason = CaptureFailure::from_code(code);
            assert!(!matches!(reason, CaptureFailure::Unknown(_)));
            assert_eq!(reason.code(), code);
            assert_eq!(
                sink.take(),
                vec![VmEvent::CaptureFailed {
                    vcpu: 0,
                    reason,
                    detail: 7
                }]
            );
        }
        command(&mut dev, 0, cmd::CAPTURE_FAILED, 99, 0);
        assert_eq!(dev.failure(), Some(CaptureFailure::Unknown(99)));
        command(&mut dev, 0, cmd::CAPTURE_FAILED, 1 << 40, 0);
        assert_eq!(dev.failure(), Some(CaptureFailure::Unknown(u32::MAX)));
        assert_eq!(sink.take().len(), 2);
        assert_eq!(
            CaptureFailure::ImageCorrupt.to_string(),
            "the capture image checksum did not match"
        );
    }

    #[test]
    fn bad_arguments_and_commands_report_nothing() {
        let (mut dev, sink) = device();
        let bad = [
            (cmd::KEXEC_HANDOVER, 0, 0x1000),
            (cmd::KEXEC_HANDOVER, 0x1000, 0),
            (cmd::VMCORE_READY, 0, 0x100),
            (cmd::VMCORE_READY, 0x1000, 0),
            (cmd::VMCORE_READY, 0x1000, MAX_ELFCOREHDR_SIZE + 1),
            (cmd::VMCORE_READY, u64::MAX - 0x10, 0x100),
        ];
        for (c, a0, a1) in bad {
            assert_eq!(
                command(&mut dev, 0, c, a0, a1),
                status::BAD_ARGUMENT,
                "{c} {a0:#x} {a1:#x}"
            );
        }
        assert_eq!(command(&mut dev, 0, 0, 1, 1), status::BAD_COMMAND);
        assert_eq!(command(&mut dev, 0, 42, 1, 1), status::BAD_COMMAND);
        assert_eq!(inl(&mut dev, CMD), 42);
        assert!(sink.take().is_empty());
        assert_eq!(dev.handover(), None);
        assert_eq!(dev.vmcore_ready(), None);
        let c = dev.counters();
        assert_eq!((c.bad_arguments, c.bad_commands, c.reported), (6, 2, 0));
    }

    #[test]
    fn garbage_accesses_are_ignored_and_counted() {
        let (mut dev, sink) = device();
        dev.write(at(CMD, 0), &[cmd::KEXEC_HANDOVER as u8]);
        dev.write(at(CMD, 0), &[1, 0]);
        out(&mut dev, 0, ID, 1);
        out(&mut dev, 0, STATUS, 1);
        out(&mut dev, 0, CMD + 2, 1);
        out(&mut dev, 0, 0x1c, 1);
        let mut eight = [0u8; 8];
        dev.read(at(ARG0_LO, 0), &mut eight);
        assert_eq!(eight, [0xff; 8]);
        assert_eq!(inl(&mut dev, 0x1c), INVALID_READ);
        assert_eq!(dev.counters().bad_accesses, 8);
        assert!(sink.take().is_empty());
        assert_eq!(inl(&mut dev, STATUS), status::IDLE);
    }

    #[test]
    fn random_accesses_never_panic() {
        let (mut dev, _sink) = device();
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
                dev.write(at(offset, vcpu), &value[..len]);
            } else {
                let mut buf = vec![0u8; len];
                dev.read(at(offset, vcpu), &mut buf);
            }
        }
        assert!(dev.counters().bad_accesses > 1000 && dev.counters().bad_commands > 0);
    }

    #[test]
    fn reset_clears_reports() {
        let (mut dev, _) = device();
        command(&mut dev, 0, cmd::KEXEC_HANDOVER, 0x1000, 0x2000);
        dev.reset();
        assert_eq!(dev.handover(), None);
        assert_eq!(inl(&mut dev, ARG0_LO), 0);
        assert_eq!(inl(&mut dev, STATUS), status::IDLE);
    }
}
