//! VMCOREINFO registration: the guest tells the VMM where its VMCOREINFO ELF
//! note is, as with QEMU's `vmcoreinfo` device (docs/specs/vmcoreinfo.rst),
//! through registers instead of fw_cfg. Contract: `guest_abi::pv::vmcoreinfo`.
//!
//! Register block at [`guest_abi::ports::VMCOREINFO`], 32-bit registers,
//! global (not per vCPU):
//!
//! | offset | register | access |
//! |--------|----------|--------|
//! | 0x00 | ID (`"VMCI"`) | R |
//! | 0x04 | PADDR_LO | RW |
//! | 0x08 | PADDR_HI | RW |
//! | 0x0C | SIZE | RW |
//! | 0x10 | FORMAT: write commits with this guest format; read = host formats (bit n = format n) | RW |
//! | 0x14 | STATUS: outcome of the last commit | R |
//!
//! A commit with FORMAT_ELF registers `(PADDR, SIZE)` if SIZE is
//! `1..=MAX_SIZE` and the range doesn't wrap; FORMAT_NONE unregisters (as
//! QEMU's guest_format 0); any other format is refused and counted. A
//! refused commit keeps the previous registration. The device never reads
//! guest memory itself: [`Vmcoreinfo::read_note`] does, bounds-checked, when
//! the VMM writes a dump.

use std::sync::Arc;

use guest_abi::pv::vmcoreinfo::{
    status, FORMAT, FORMAT_ELF, FORMAT_NONE, HOST_FORMATS, ID, ID_MAGIC, MAX_SIZE, PADDR_HI,
    PADDR_LO, SIZE, STATUS,
};
use guest_abi::pv::{INVALID_READ, REGISTER_WIDTH};

use crate::bus::{Access, BusDevice};
use crate::guest_ram::{GuestRam, GuestRamError};
use crate::pv_regs;
use crate::{EventSink, VmEvent};

/// Length of the register block in port space.
pub const VMCOREINFO_LEN: u64 = guest_abi::ports::VMCOREINFO_LEN as u64;

/// The note name Linux gives its VMCOREINFO note (without the NUL).
pub const VMCOREINFO_NOTE_NAME: &[u8] = b"VMCOREINFO";

/// Size of an `Elf64_Nhdr`.
const NHDR_SIZE: usize = 12;

/// Errors from reading the registered note.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmcoreinfoError {
    /// The guest has not registered a note.
    #[error("no VMCOREINFO registered")]
    NotRegistered,
    /// The registered range is not all guest RAM.
    #[error("VMCOREINFO at {paddr:#x}+{size:#x} is not in guest RAM")]
    OutOfRam {
        /// Registered GPA.
        paddr: u64,
        /// Registered size.
        size: u32,
        /// The failed access.
        #[source]
        source: GuestRamError,
    },
    /// The bytes are not one `VMCOREINFO` ELF note that fits the registered size.
    #[error("malformed VMCOREINFO note: {0}")]
    Malformed(&'static str),
}

/// What the device did and ignored, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmcoreinfoCounters {
    /// Commits that registered a note.
    pub registrations: u64,
    /// Commits with FORMAT_NONE.
    pub unregistrations: u64,
    /// Commits refused for their size or address.
    pub bad_ranges: u64,
    /// Commits with a format the host doesn't support.
    pub bad_formats: u64,
    /// Accesses with a bad width or offset, or writes to read-only registers.
    pub bad_accesses: u64,
}

/// The vmcoreinfo device.
pub struct Vmcoreinfo {
    paddr: u64,
    size: u32,
    status: u32,
    registered: Option<(u64, u32)>,
    sink: Arc<dyn EventSink>,
    counters: VmcoreinfoCounters,
}

impl std::fmt::Debug for Vmcoreinfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmcoreinfo")
            .field("registered", &self.registered)
            .field("counters", &self.counters)
            .finish()
    }
}

impl Vmcoreinfo {
    /// A device with nothing registered, reporting registrations to `sink`.
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Self {
            paddr: 0,
            size: 0,
            status: status::NONE,
            registered: None,
            sink,
            counters: VmcoreinfoCounters::default(),
        }
    }

    /// The registered note: `(GPA, size)`.
    pub fn registered(&self) -> Option<(u64, u32)> {
        self.registered
    }

    /// What the device did and ignored so far.
    pub fn counters(&self) -> VmcoreinfoCounters {
        self.counters
    }

    /// A VM reset forgets the registration (as QEMU's `vmcoreinfo_reset`).
    /// Counters are kept.
    pub fn reset(&mut self) {
        self.paddr = 0;
        self.size = 0;
        self.status = status::NONE;
        self.registered = None;
    }

    /// The registered note's bytes, read from guest RAM with bounds checks.
    pub fn read_note(&self, ram: &dyn GuestRam) -> Result<Vec<u8>, VmcoreinfoError> {
        let (paddr, size) = self.registered.ok_or(VmcoreinfoError::NotRegistered)?;
        let mut note = vec![0u8; size as usize];
        ram.read(paddr, &mut note)
            .map_err(|source| VmcoreinfoError::OutOfRam {
                paddr,
                size,
                source,
            })?;
        Ok(note)
    }

    /// The `KEY=value\n` text of the registered note, after checking that it
    /// is one `VMCOREINFO` ELF note that fits the registered size.
    pub fn read_text(&self, ram: &dyn GuestRam) -> Result<Vec<u8>, VmcoreinfoError> {
        let note = self.read_note(ram)?;
        note_descriptor(&note).map(<[u8]>::to_vec)
    }

    fn commit(&mut self, format: u32, vcpu: crate::VcpuId) {
        let (status, event) = match format {
            FORMAT_NONE => {
                self.counters.unregistrations += 1;
                self.registered = None;
                (status::NONE, true)
            }
            FORMAT_ELF if self.size == 0 || self.size > MAX_SIZE => {
                self.counters.bad_ranges += 1;
                log::warn!(
                    "vmcoreinfo: vCPU {vcpu} registered size {:#x} (allowed 1..={MAX_SIZE:#x}), refused",
                    self.size
                );
                (status::BAD_SIZE, false)
            }
            FORMAT_ELF if self.paddr.checked_add(u64::from(self.size)).is_none() => {
                self.counters.bad_ranges += 1;
                log::warn!("vmcoreinfo: vCPU {vcpu} registered a range that wraps, refused");
                (status::BAD_ADDRESS, false)
            }
            FORMAT_ELF => {
                self.counters.registrations += 1;
                self.registered = Some((self.paddr, self.size));
                log::info!("vmcoreinfo: note at {:#x}, {} bytes", self.paddr, self.size);
                (status::REGISTERED, true)
            }
            other => {
                self.counters.bad_formats += 1;
                log::warn!("vmcoreinfo: vCPU {vcpu} used unsupported format {other}, ignored");
                (status::BAD_FORMAT, false)
            }
        };
        self.status = status;
        if event {
            self.sink.emit(VmEvent::Vmcoreinfo {
                vcpu,
                note: self.registered,
            });
        }
    }

    fn bad_access(&mut self, access: Access, len: usize, what: &str) {
        pv_regs::ignored(
            &mut self.counters.bad_accesses,
            "vmcoreinfo",
            access,
            len,
            what,
        );
    }
}

/// The descriptor (`KEY=value\n` text) of a `VMCOREINFO` ELF note held in
/// `note`, which may be longer than the note.
pub fn note_descriptor(note: &[u8]) -> Result<&[u8], VmcoreinfoError> {
    let word = |at: usize| {
        note.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (Some(namesz), Some(descsz)) = (word(0), word(4)) else {
        return Err(VmcoreinfoError::Malformed("shorter than a note header"));
    };
    if namesz != VMCOREINFO_NOTE_NAME.len() + 1 {
        return Err(VmcoreinfoError::Malformed("name is not VMCOREINFO"));
    }
    let name = &note[NHDR_SIZE.min(note.len())..];
    if name.len() < namesz || &name[..namesz - 1] != VMCOREINFO_NOTE_NAME || name[namesz - 1] != 0 {
        return Err(VmcoreinfoError::Malformed("name is not VMCOREINFO"));
    }
    let desc_start = NHDR_SIZE + namesz.next_multiple_of(4);
    note.get(desc_start..)
        .and_then(|rest| rest.get(..descsz))
        .ok_or(VmcoreinfoError::Malformed(
            "descriptor runs past the registered size",
        ))
}

impl BusDevice for Vmcoreinfo {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if data.len() != REGISTER_WIDTH {
            self.bad_access(access, data.len(), "read");
            data.fill(0xff);
            return;
        }
        let value = match access.offset {
            ID => ID_MAGIC,
            PADDR_LO => self.paddr as u32,
            PADDR_HI => (self.paddr >> 32) as u32,
            SIZE => self.size,
            FORMAT => HOST_FORMATS,
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
            PADDR_LO => self.paddr = pv_regs::with_low(self.paddr, value),
            PADDR_HI => self.paddr = pv_regs::with_high(self.paddr, value),
            SIZE => self.size = value,
            FORMAT => self.commit(value, access.vcpu),
            _ => self.bad_access(access, data.len(), "wrote"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_ram::VecRam;

    use crate::test_utils::Recorder;

    fn at(offset: u64) -> Access {
        Access {
            base: u64::from(guest_abi::ports::VMCOREINFO),
            offset,
            vcpu: 1,
        }
    }

    fn device() -> (Vmcoreinfo, Arc<Recorder>) {
        let sink = Arc::new(Recorder::default());
        (Vmcoreinfo::new(sink.clone()), sink)
    }

    fn out(dev: &mut Vmcoreinfo, offset: u64, value: u32) {
        dev.write(at(offset), &value.to_le_bytes());
    }

    fn inl(dev: &mut Vmcoreinfo, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        dev.read(at(offset), &mut data);
        u32::from_le_bytes(data)
    }

    fn register(dev: &mut Vmcoreinfo, paddr: u64, size: u32, format: u32) -> u32 {
        out(dev, PADDR_LO, paddr as u32);
        out(dev, PADDR_HI, (paddr >> 32) as u32);
        out(dev, SIZE, size);
        out(dev, FORMAT, format);
        inl(dev, STATUS)
    }

    /// A VMCOREINFO note with `text` as its descriptor.
    fn note(text: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&11u32.to_le_bytes());
        n.extend_from_slice(&(text.len() as u32).to_le_bytes());
        n.extend_from_slice(&0u32.to_le_bytes());
        n.extend_from_slice(b"VMCOREINFO\0\0");
        n.extend_from_slice(text);
        n
    }

    #[test]
    fn registration_round_trip() {
        let (mut dev, sink) = device();
        assert_eq!(inl(&mut dev, ID), ID_MAGIC);
        assert_eq!(inl(&mut dev, FORMAT), 1 << FORMAT_ELF);
        assert_eq!(inl(&mut dev, STATUS), status::NONE);
        assert_eq!(dev.registered(), None);

        let paddr = 0x1_2345_6000;
        assert_eq!(
            register(&mut dev, paddr, 0x80, FORMAT_ELF),
            status::REGISTERED
        );
        assert_eq!(dev.registered(), Some((paddr, 0x80)));
        assert_eq!(inl(&mut dev, PADDR_HI), 1);
        assert_eq!(
            sink.take(),
            vec![VmEvent::Vmcoreinfo {
                vcpu: 1,
                note: Some((paddr, 0x80))
            }]
        );

        assert_eq!(register(&mut dev, 0, 0, FORMAT_NONE), status::NONE);
        assert_eq!(dev.registered(), None);
        assert_eq!(
            sink.take(),
            vec![VmEvent::Vmcoreinfo {
                vcpu: 1,
                note: None
            }]
        );
    }

    #[test]
    fn refused_commits_keep_the_previous_registration() {
        let (mut dev, sink) = device();
        register(&mut dev, 0x5000, 0x100, FORMAT_ELF);
        sink.take();
        assert_eq!(register(&mut dev, 0x6000, 0, FORMAT_ELF), status::BAD_SIZE);
        assert_eq!(
            register(&mut dev, 0x6000, MAX_SIZE + 1, FORMAT_ELF),
            status::BAD_SIZE
        );
        assert_eq!(
            register(&mut dev, u64::MAX - 0x10, 0x100, FORMAT_ELF),
            status::BAD_ADDRESS
        );
        assert_eq!(register(&mut dev, 0x6000, 0x10, 2), status::BAD_FORMAT);
        assert_eq!(
            register(&mut dev, 0x6000, 0x10, u32::MAX),
            status::BAD_FORMAT
        );
        assert_eq!(dev.registered(), Some((0x5000, 0x100)));
        assert!(sink.take().is_empty());
        let c = dev.counters();
        assert_eq!((c.bad_ranges, c.bad_formats, c.registrations), (3, 2, 1));
        // The largest allowed size is accepted.
        assert_eq!(
            register(&mut dev, 0x6000, MAX_SIZE, FORMAT_ELF),
            status::REGISTERED
        );
    }

    #[test]
    fn read_note_is_bounds_checked() {
        let ram = VecRam::new(0, 0x4000);
        let text = b"OSRELEASE=0.1\nPAGESIZE=4096\n";
        let bytes = note(text);
        ram.write(0x1000, &bytes).unwrap();
        let (mut dev, _) = device();
        assert_eq!(dev.read_note(&ram), Err(VmcoreinfoError::NotRegistered));
        register(&mut dev, 0x1000, bytes.len() as u32, FORMAT_ELF);
        assert_eq!(dev.read_note(&ram).unwrap(), bytes);
        assert_eq!(dev.read_text(&ram).unwrap(), text);

        // Past the end of RAM.
        register(&mut dev, 0x3ff0, 0x20, FORMAT_ELF);
        assert!(matches!(
            dev.read_note(&ram),
            Err(VmcoreinfoError::OutOfRam { paddr: 0x3ff0, .. })
        ));
        // Registered size shorter than the note's descriptor.
        register(&mut dev, 0x1000, bytes.len() as u32 - 1, FORMAT_ELF);
        assert!(matches!(
            dev.read_text(&ram),
            Err(VmcoreinfoError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_notes_are_rejected() {
        assert!(note_descriptor(&[]).is_err());
        assert!(note_descriptor(&[11, 0, 0, 0, 4, 0]).is_err());
        let mut wrong_name = note(b"A=1\n");
        wrong_name[12] = b'X';
        assert!(note_descriptor(&wrong_name).is_err());
        let mut short_name = note(b"A=1\n");
        short_name[0] = 4;
        assert!(note_descriptor(&short_name).is_err());
        let mut huge = note(b"A=1\n");
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(note_descriptor(&huge).is_err());
        let mut no_nul = note(b"A=1\n");
        no_nul[22] = b'!';
        assert!(note_descriptor(&no_nul).is_err());
        // A header that claims a name longer than the buffer.
        assert!(note_descriptor(&[11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'V']).is_err());
        assert_eq!(note_descriptor(&note(b"A=1\n")).unwrap(), b"A=1\n");
    }

    #[test]
    fn garbage_accesses_are_ignored_and_counted() {
        let (mut dev, sink) = device();
        dev.write(at(FORMAT), &[1]);
        dev.write(at(FORMAT), &[1, 0, 0, 0, 0, 0, 0, 0]);
        out(&mut dev, ID, 0);
        out(&mut dev, STATUS, 0);
        out(&mut dev, 0x11, 1);
        let mut two = [0u8; 2];
        dev.read(at(STATUS), &mut two);
        assert_eq!(two, [0xff, 0xff]);
        assert_eq!(inl(&mut dev, 0x18), INVALID_READ);
        assert_eq!(dev.counters().bad_accesses, 7);
        assert!(sink.take().is_empty());
        assert_eq!(dev.registered(), None);
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
                dev.write(Access { vcpu, ..at(offset) }, &value[..len]);
            } else {
                let mut buf = vec![0u8; len];
                dev.read(Access { vcpu, ..at(offset) }, &mut buf);
            }
        }
        assert!(dev.counters().bad_accesses > 1000);
    }

    #[test]
    fn reset_unregisters() {
        let (mut dev, _) = device();
        register(&mut dev, 0x1000, 0x10, FORMAT_ELF);
        dev.reset();
        assert_eq!(dev.registered(), None);
        assert_eq!(inl(&mut dev, STATUS), status::NONE);
        assert_eq!(inl(&mut dev, SIZE), 0);
    }

    #[test]
    fn notes_at_the_edges_of_guest_memory_are_clean_errors() {
        use crate::test_utils::{ram_around_mmio_hole, EDGE_RAM, MMIO_HOLE};
        let ram = ram_around_mmio_hole();
        let end_of_ram = MMIO_HOLE.1 + EDGE_RAM as u64;
        // Fully inside, just below the hole: readable (all zero: malformed).
        let (mut dev, _) = device();
        register(&mut dev, MMIO_HOLE.0 - 0x100, 0x100, FORMAT_ELF);
        assert_eq!(dev.read_note(&ram).unwrap().len(), 0x100);
        assert!(matches!(
            dev.read_text(&ram),
            Err(VmcoreinfoError::Malformed(_))
        ));
        for (paddr, size) in [
            (MMIO_HOLE.0 - 0x10, 0x20), // straddles the start of the hole
            (MMIO_HOLE.0, 0x10),        // inside the hole
            (MMIO_HOLE.1 - 0x10, 0x20), // straddles the end of the hole
            (end_of_ram - 0x10, 0x20),  // runs past the end of RAM
            (end_of_ram, 1),            // beyond RAM
            (u64::MAX - 0x100, 0x80),   // near the top of the address space
            (EDGE_RAM as u64 - 1, 2),   // straddles the end of low RAM
        ] {
            let (mut dev, _) = device();
            assert_eq!(
                register(&mut dev, paddr, size, FORMAT_ELF),
                status::REGISTERED
            );
            assert!(
                matches!(
                    dev.read_note(&ram),
                    Err(VmcoreinfoError::OutOfRam { paddr: p, size: s, .. }) if p == paddr && s == size
                ),
                "{paddr:#x}+{size:#x}"
            );
        }
    }
}
