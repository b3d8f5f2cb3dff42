//! The paravirtual VMX model: VMX instructions for a host without VMX
//! (DESIGN.md section 6; the guest-visible contract is `guest_abi::pv::vmx`).
//!
//! Register block at [`guest_abi::ports::PV_VMX`], 32-bit registers:
//!
//! | offset | register | access | per vCPU |
//! |--------|----------|--------|----------|
//! | 0x00 | ID (`"PVMX"`) | R | |
//! | 0x04 | REVISION (VMCS revision identifier) | R | |
//! | 0x08 | ARG_LO | RW | yes |
//! | 0x0C | ARG_HI | RW | yes |
//! | 0x10 | FIELD (VMCS field encoding) | RW | yes |
//! | 0x14 | COMMAND (write executes; read = last command) | RW | yes |
//! | 0x18 | STATUS | R | yes |
//! | 0x1C | ERROR (VM-instruction error number) | R | yes |
//!
//! Each vCPU is one logical processor: VMX on or off, its VMXON region, its
//! current-VMCS pointer, and the VMCSs active on it with their contents
//! cached "in the CPU". Contents reach guest memory only when VMCLEAR (or an
//! eviction, which hardware may also do) writes them back, in the
//! `guest_abi::pv::vmx::VmcsHeader` format. VMXOFF drops whatever is still
//! cached and the device remembers that the contents were lost; that is what
//! [`PvVmx::snapshot`] reports to the vmcore.
//!
//! Guest input never panics the device: bad widths, offsets and vCPU ids are
//! counted in [`PvVmxCounters`] and ignored (reads return all ones); bad
//! operands end in the VMfail the real instruction would give.

use std::collections::BTreeMap;
use std::sync::Arc;

use guest_abi::pv::vmx::{
    cmd, error, field, status, VmcsHeader, VmcsRecord, ARG_HI, ARG_LO, COMMAND, ERROR, FIELD, ID,
    ID_MAGIC, MAX_ACTIVE_VMCS, REVISION, STATUS, VMCS_HEADER_SIZE, VMCS_MAX_FIELDS,
    VMCS_MAX_RECORDS, VMCS_RECORD_SIZE, VMCS_REGION_SIZE, VMCS_REVISION,
};
use guest_abi::pv::{INVALID_READ, REGISTER_WIDTH};

use crate::bus::{Access, BusDevice, VcpuId};
use crate::guest_ram::GuestRam;
use crate::pv_regs;

/// Length of the register block in port space.
pub const PV_VMX_LEN: u64 = guest_abi::ports::PV_VMX_LEN as u64;

/// The current-VMCS pointer when no VMCS is current (SDM: all ones).
pub const NO_VMCS: u64 = u64::MAX;

/// Flag bits of the vmcore's `VMMVMX` note, as [`VmxVcpuState::note_flags`]
/// computes them.
pub use guest_abi::elfnote::vmx_flags as note_flags;
pub use guest_abi::elfnote::{VmxStateNote, VMX_NOTE_SIZE, VMX_NOTE_VERSION, VMX_NO_ADDR};

/// Errors from creating a pv-VMX device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PvVmxError {
    /// A device needs at least one vCPU.
    #[error("pv-vmx needs at least one vCPU")]
    NoVcpus,
}

/// What the device ignored or refused, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvVmxCounters {
    /// Commands executed (whatever their outcome).
    pub commands: u64,
    /// Accesses with a bad width or offset, or writes to read-only registers.
    pub bad_accesses: u64,
    /// Accesses from a vCPU id the device was not created for.
    pub bad_vcpu_accesses: u64,
    /// Unknown command codes.
    pub bad_commands: u64,
    /// Commands that ended in VMfailInvalid or VMfailValid.
    pub vmfails: u64,
    /// Commands that would have raised #UD.
    pub undefined_opcodes: u64,
    /// VMCSs whose cached contents VMXOFF discarded.
    pub vmcs_lost: u64,
    /// VMCSs written back to make room for another (not by VMCLEAR).
    pub evictions: u64,
    /// VMCS regions or records that VMPTRLD found malformed and skipped.
    pub malformed_vmcs_records: u64,
    /// Write-backs that failed (guest RAM vanished under a validated GPA).
    pub writeback_errors: u64,
}

/// One vCPU's VMX state as the VMM sees it, for the vmcore `VMMVMX` note.
///
/// [`Self::note`] gives the vmcore's [`VmxStateNote`]: `vcpu` → `vcpu`;
/// [`Self::note_flags`] → `flags`; `vmxon_region`, `current_vmcs`,
/// `last_cleared_vmcs` → the fields of the same names, with `None` as
/// [`VMX_NO_ADDR`] ([`Self::note_addr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxVcpuState {
    /// vCPU index.
    pub vcpu: VcpuId,
    /// In VMX operation (VMXON done, no VMXOFF since).
    pub vmx_on: bool,
    /// A VMCS is current (VMPTRLD without a later VMCLEAR of it or VMXOFF).
    pub vmcs_loaded: bool,
    /// Nothing is cached only "in the CPU" and nothing was lost: every VMCS
    /// used since reset reached memory (true if none was ever loaded).
    pub vmcs_flushed: bool,
    /// GPA given to the last successful VMXON.
    pub vmxon_region: Option<u64>,
    /// The current VMCS.
    pub current_vmcs: Option<u64>,
    /// The VMCS most recently written back by VMCLEAR.
    pub last_cleared_vmcs: Option<u64>,
    /// VMCSs active (cached) now.
    pub active_vmcs: u32,
    /// VMCSs whose contents VMXOFF discarded since reset.
    pub lost_vmcs: u32,
}

impl VmxVcpuState {
    /// The note's `flags` word (always with `MODEL_NOT_HARDWARE`).
    pub fn note_flags(&self) -> u32 {
        let mut flags = note_flags::MODEL_NOT_HARDWARE;
        if self.vmx_on {
            flags |= note_flags::VMX_ON;
        }
        if self.vmcs_loaded {
            flags |= note_flags::VMCS_LOADED;
        }
        if self.vmcs_flushed {
            flags |= note_flags::VMCS_FLUSHED;
        }
        flags
    }

    /// An address field as the note encodes it (`None` = [`VMX_NO_ADDR`]).
    pub fn note_addr(addr: Option<u64>) -> u64 {
        addr.unwrap_or(VMX_NO_ADDR)
    }

    /// The `VMMVMX` note descriptor for this vCPU.
    pub fn note(&self) -> VmxStateNote {
        VmxStateNote {
            version: VMX_NOTE_VERSION,
            vcpu: self.vcpu,
            flags: self.note_flags(),
            reserved: 0,
            vmxon_region: Self::note_addr(self.vmxon_region),
            current_vmcs: Self::note_addr(self.current_vmcs),
            last_cleared_vmcs: Self::note_addr(self.last_cleared_vmcs),
        }
    }
}

/// How a command ended: the instruction's architectural outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Succeed,
    FailInvalid,
    FailValid(u32),
    Undefined,
    BadCommand,
}

/// A VMCS active on a vCPU, with its contents cached "in the CPU".
#[derive(Clone, Debug, Default)]
struct ActiveVmcs {
    gpa: u64,
    /// Full field encodings (access-type bit clear) to values.
    fields: BTreeMap<u32, u64>,
}

/// One logical processor: its registers and its VMX state.
#[derive(Clone, Debug)]
struct VcpuVmx {
    arg: u64,
    field: u32,
    last_command: u32,
    status: u32,
    error: u32,
    vmx_on: bool,
    vmxon_region: Option<u64>,
    current: Option<u64>,
    /// Oldest load first; the current VMCS is among them.
    active: Vec<ActiveVmcs>,
    last_cleared: Option<u64>,
    lost: u32,
}

impl Default for VcpuVmx {
    fn default() -> Self {
        Self {
            arg: 0,
            field: 0,
            last_command: 0,
            status: status::IDLE,
            error: 0,
            vmx_on: false,
            vmxon_region: None,
            current: None,
            active: Vec::new(),
            last_cleared: None,
            lost: 0,
        }
    }
}

impl VcpuVmx {
    fn current_mut(&mut self) -> Option<&mut ActiveVmcs> {
        let gpa = self.current?;
        self.active.iter_mut().find(|v| v.gpa == gpa)
    }

    /// VMfail(n): VMfailValid when a VMCS is current (the number also goes
    /// to its VM-instruction error field), VMfailInvalid otherwise.
    fn vmfail(&mut self, number: u32) -> Outcome {
        match self.current_mut() {
            Some(vmcs) => {
                vmcs.fields
                    .insert(field::VM_INSTRUCTION_ERROR, u64::from(number));
                Outcome::FailValid(number)
            }
            None => Outcome::FailInvalid,
        }
    }
}

/// The pv-VMX device: one logical processor's VMX state per vCPU.
pub struct PvVmx {
    vcpus: Vec<VcpuVmx>,
    ram: Arc<dyn GuestRam>,
    counters: PvVmxCounters,
}

impl std::fmt::Debug for PvVmx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvVmx")
            .field("vcpus", &self.vcpus.len())
            .field("counters", &self.counters)
            .finish()
    }
}

/// Whether `encoding` names a field VMREAD/VMWRITE can access.
fn supported_encoding(encoding: u32) -> bool {
    encoding & field::RESERVED_MASK == 0
        && (encoding & field::ACCESS_HIGH == 0 || field::width(encoding) == field::WIDTH_64)
}

/// `value` truncated to the width of the (full) field `encoding`.
fn truncate(encoding: u32, value: u64) -> u64 {
    match field::width(encoding) {
        field::WIDTH_16 => value & 0xffff,
        field::WIDTH_32 => value & 0xffff_ffff,
        _ => value,
    }
}

impl PvVmx {
    /// A device for `vcpus` vCPUs (ids `0..vcpus`) over guest RAM `ram`.
    pub fn new(vcpus: u32, ram: Arc<dyn GuestRam>) -> Result<Self, PvVmxError> {
        if vcpus == 0 {
            return Err(PvVmxError::NoVcpus);
        }
        Ok(Self {
            vcpus: vec![VcpuVmx::default(); vcpus as usize],
            ram,
            counters: PvVmxCounters::default(),
        })
    }

    /// What the device has done and ignored so far.
    pub fn counters(&self) -> PvVmxCounters {
        self.counters
    }

    /// Every vCPU's VMX state, in vCPU order.
    pub fn snapshot(&self) -> Vec<VmxVcpuState> {
        self.vcpus
            .iter()
            .enumerate()
            .map(|(i, v)| VmxVcpuState {
                vcpu: i as VcpuId,
                vmx_on: v.vmx_on,
                vmcs_loaded: v.current.is_some(),
                vmcs_flushed: v.active.is_empty() && v.lost == 0,
                vmxon_region: v.vmxon_region,
                current_vmcs: v.current,
                last_cleared_vmcs: v.last_cleared,
                active_vmcs: v.active.len() as u32,
                lost_vmcs: v.lost,
            })
            .collect()
    }

    /// A VM reset: every vCPU leaves VMX operation and forgets its cached
    /// VMCSs without writing them (as a processor INIT/reset does), and its
    /// registers return to their initial values. Counters are kept.
    pub fn reset(&mut self) {
        self.vcpus.fill(VcpuVmx::default());
    }

    /// Whether `gpa` is a 4 KiB-aligned page entirely in guest RAM.
    fn valid_page(&self, gpa: u64) -> bool {
        gpa.is_multiple_of(VMCS_REGION_SIZE as u64) && self.ram.contains(gpa, VMCS_REGION_SIZE)
    }

    /// Reads the 32-bit revision word at `gpa` and checks it (bit 31, the
    /// shadow-VMCS indicator, is unsupported).
    fn revision_ok(&self, gpa: u64) -> bool {
        let mut word = [0u8; 4];
        self.ram.read(gpa, &mut word).is_ok() && u32::from_le_bytes(word) == VMCS_REVISION
    }

    /// Writes `vmcs`'s cached contents to its region.
    fn write_back(&mut self, vmcs: &ActiveVmcs) -> bool {
        // `vmfail` may add the error field to a full VMCS, hence the cap.
        let records = vmcs.fields.iter().take(VMCS_MAX_RECORDS);
        let count = records.len();
        let header = VmcsHeader {
            revision: VMCS_REVISION,
            abort: 0,
            count: count as u32,
            reserved: 0,
        };
        let mut bytes = Vec::with_capacity(VMCS_HEADER_SIZE + count * VMCS_RECORD_SIZE);
        for word in [header.revision, header.abort, header.count, header.reserved] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        for (&encoding, &value) in records {
            let record = VmcsRecord {
                encoding,
                reserved: 0,
                value,
            };
            bytes.extend_from_slice(&record.encoding.to_le_bytes());
            bytes.extend_from_slice(&record.reserved.to_le_bytes());
            bytes.extend_from_slice(&record.value.to_le_bytes());
        }
        match self.ram.write(vmcs.gpa, &bytes) {
            Ok(()) => true,
            Err(e) => {
                self.counters.writeback_errors += 1;
                log::error!("pv-vmx: VMCS write-back to {:#x} failed: {e}", vmcs.gpa);
                false
            }
        }
    }

    /// Loads a VMCS that is not active from its region. Malformed contents
    /// load as far as they are valid (hardware's behaviour with a corrupted
    /// VMCS is undefined; the model's is to keep what makes sense).
    fn load(&mut self, gpa: u64) -> ActiveVmcs {
        let mut vmcs = ActiveVmcs {
            gpa,
            fields: BTreeMap::new(),
        };
        let mut header = [0u8; VMCS_HEADER_SIZE];
        if self.ram.read(gpa, &mut header).is_err() {
            self.counters.malformed_vmcs_records += 1;
            return vmcs;
        }
        let count = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        if count > VMCS_MAX_RECORDS {
            self.counters.malformed_vmcs_records += 1;
            log::warn!("pv-vmx: VMCS at {gpa:#x} claims {count} records, loaded empty");
            return vmcs;
        }
        let mut records = vec![0u8; count * VMCS_RECORD_SIZE];
        if self
            .ram
            .read(gpa + VMCS_HEADER_SIZE as u64, &mut records)
            .is_err()
        {
            self.counters.malformed_vmcs_records += 1;
            return vmcs;
        }
        for record in records.chunks_exact(VMCS_RECORD_SIZE) {
            let encoding = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
            let mut value = [0u8; 8];
            value.copy_from_slice(&record[8..16]);
            let value = u64::from_le_bytes(value);
            let room =
                encoding == field::VM_INSTRUCTION_ERROR || vmcs.user_fields() < VMCS_MAX_FIELDS;
            if !supported_encoding(encoding)
                || encoding & field::ACCESS_HIGH != 0
                || vmcs.fields.contains_key(&encoding)
                || !room
            {
                self.counters.malformed_vmcs_records += 1;
                continue;
            }
            vmcs.fields.insert(encoding, truncate(encoding, value));
        }
        vmcs
    }

    fn vmxon(&mut self, cpu: usize, gpa: u64) -> Outcome {
        if self.vcpus[cpu].vmx_on {
            return self.vcpus[cpu].vmfail(error::VMXON_IN_VMX_ROOT);
        }
        if !self.valid_page(gpa) || !self.revision_ok(gpa) {
            return Outcome::FailInvalid;
        }
        let v = &mut self.vcpus[cpu];
        v.vmx_on = true;
        v.vmxon_region = Some(gpa);
        v.current = None;
        Outcome::Succeed
    }

    fn vmxoff(&mut self, cpu: usize) -> Outcome {
        let v = &mut self.vcpus[cpu];
        let dropped = v.active.len();
        if dropped != 0 {
            // Like hardware, VMXOFF does not write active VMCSs back.
            v.lost += dropped as u32;
            self.counters.vmcs_lost += dropped as u64;
            log::warn!(
                "pv-vmx: vCPU {cpu} VMXOFF with {dropped} VMCS(s) not cleared: contents lost"
            );
        }
        v.active.clear();
        v.current = None;
        v.vmx_on = false;
        Outcome::Succeed
    }

    fn vmptrld(&mut self, cpu: usize, gpa: u64) -> Outcome {
        if !self.valid_page(gpa) {
            return self.vcpus[cpu].vmfail(error::VMPTRLD_INVALID_ADDRESS);
        }
        if self.vcpus[cpu].vmxon_region == Some(gpa) {
            return self.vcpus[cpu].vmfail(error::VMPTRLD_VMXON_POINTER);
        }
        if !self.revision_ok(gpa) {
            return self.vcpus[cpu].vmfail(error::VMPTRLD_BAD_REVISION);
        }
        let v = &mut self.vcpus[cpu];
        if let Some(i) = v.active.iter().position(|a| a.gpa == gpa) {
            // Already cached: most recently loaded now.
            let vmcs = v.active.remove(i);
            v.active.push(vmcs);
        } else {
            if v.active.len() >= MAX_ACTIVE_VMCS {
                let current = v.current;
                if let Some(i) = v.active.iter().position(|a| Some(a.gpa) != current) {
                    let victim = v.active.remove(i);
                    self.counters.evictions += 1;
                    self.write_back(&victim);
                }
            }
            let vmcs = self.load(gpa);
            self.vcpus[cpu].active.push(vmcs);
        }
        self.vcpus[cpu].current = Some(gpa);
        Outcome::Succeed
    }

    fn vmclear(&mut self, cpu: usize, gpa: u64) -> Outcome {
        if !self.valid_page(gpa) {
            return self.vcpus[cpu].vmfail(error::VMCLEAR_INVALID_ADDRESS);
        }
        if self.vcpus[cpu].vmxon_region == Some(gpa) {
            return self.vcpus[cpu].vmfail(error::VMCLEAR_VMXON_POINTER);
        }
        let v = &mut self.vcpus[cpu];
        let Some(i) = v.active.iter().position(|a| a.gpa == gpa) else {
            // Not active here: nothing cached to write back.
            return Outcome::Succeed;
        };
        let vmcs = v.active.remove(i);
        if v.current == Some(gpa) {
            v.current = None;
        }
        if !self.write_back(&vmcs) {
            // The page was checked above; report it as hardware would a bad address.
            return self.vcpus[cpu].vmfail(error::VMCLEAR_INVALID_ADDRESS);
        }
        self.vcpus[cpu].last_cleared = Some(gpa);
        Outcome::Succeed
    }

    fn vmread(&mut self, cpu: usize) -> Outcome {
        let v = &mut self.vcpus[cpu];
        let encoding = v.field;
        let Some(vmcs) = v.current_mut() else {
            return Outcome::FailInvalid;
        };
        if !supported_encoding(encoding) {
            return v.vmfail(error::UNSUPPORTED_COMPONENT);
        }
        let full = vmcs
            .fields
            .get(&(encoding & !field::ACCESS_HIGH))
            .copied()
            .unwrap_or(0);
        v.arg = if encoding & field::ACCESS_HIGH != 0 {
            full >> 32
        } else {
            full
        };
        Outcome::Succeed
    }

    fn vmwrite(&mut self, cpu: usize) -> Outcome {
        let v = &mut self.vcpus[cpu];
        let (encoding, arg) = (v.field, v.arg);
        let Some(vmcs) = v.current_mut() else {
            return Outcome::FailInvalid;
        };
        if !supported_encoding(encoding) {
            return v.vmfail(error::UNSUPPORTED_COMPONENT);
        }
        if field::kind(encoding) == field::TYPE_READ_ONLY {
            return v.vmfail(error::VMWRITE_READ_ONLY);
        }
        let full = encoding & !field::ACCESS_HIGH;
        if !vmcs.fields.contains_key(&full) && vmcs.user_fields() >= VMCS_MAX_FIELDS {
            return v.vmfail(error::UNSUPPORTED_COMPONENT);
        }
        let old = vmcs.fields.get(&full).copied().unwrap_or(0);
        let value = if encoding & field::ACCESS_HIGH != 0 {
            pv_regs::with_high(old, arg as u32)
        } else {
            truncate(full, arg)
        };
        vmcs.fields.insert(full, value);
        Outcome::Succeed
    }

    /// Executes `command` on `cpu` and latches STATUS and ERROR.
    fn execute(&mut self, cpu: usize, command: u32) {
        self.counters.commands += 1;
        let known = matches!(
            command,
            cmd::VMXON
                | cmd::VMXOFF
                | cmd::VMPTRLD
                | cmd::VMPTRST
                | cmd::VMCLEAR
                | cmd::VMREAD
                | cmd::VMWRITE
        );
        let arg = self.vcpus[cpu].arg;
        let outcome = if !known {
            Outcome::BadCommand
        } else if command != cmd::VMXON && !self.vcpus[cpu].vmx_on {
            Outcome::Undefined
        } else {
            match command {
                cmd::VMXON => self.vmxon(cpu, arg),
                cmd::VMXOFF => self.vmxoff(cpu),
                cmd::VMPTRLD => self.vmptrld(cpu, arg),
                cmd::VMPTRST => {
                    let v = &mut self.vcpus[cpu];
                    v.arg = v.current.unwrap_or(NO_VMCS);
                    Outcome::Succeed
                }
                cmd::VMCLEAR => self.vmclear(cpu, arg),
                cmd::VMREAD => self.vmread(cpu),
                _ => self.vmwrite(cpu),
            }
        };
        let (status, error) = match outcome {
            Outcome::Succeed => (status::SUCCEED, 0),
            Outcome::FailInvalid => (status::FAIL_INVALID, 0),
            Outcome::FailValid(n) => (status::FAIL_VALID, n),
            Outcome::Undefined => (status::UD, 0),
            Outcome::BadCommand => (status::BAD_COMMAND, 0),
        };
        match outcome {
            Outcome::FailInvalid | Outcome::FailValid(_) => {
                self.counters.vmfails += 1;
                log::debug!("pv-vmx: vCPU {cpu} command {command} arg {arg:#x}: {outcome:?}");
            }
            Outcome::Undefined => {
                self.counters.undefined_opcodes += 1;
                log::debug!("pv-vmx: vCPU {cpu} command {command} outside VMX operation: #UD");
            }
            Outcome::BadCommand => {
                self.counters.bad_commands += 1;
                log::warn!("pv-vmx: vCPU {cpu} wrote unknown command {command:#x}, ignored");
            }
            Outcome::Succeed => {}
        }
        let v = &mut self.vcpus[cpu];
        v.last_command = command;
        v.status = status;
        v.error = error;
    }

    /// The vCPU index of `access`, or `None` (counted) if out of range.
    fn vcpu_index(&mut self, access: Access) -> Option<usize> {
        let index = access.vcpu as usize;
        if index < self.vcpus.len() {
            Some(index)
        } else {
            self.counters.bad_vcpu_accesses += 1;
            log::warn!("pv-vmx: access from unknown vCPU {}, ignored", access.vcpu);
            None
        }
    }

    fn bad_access(&mut self, access: Access, len: usize, what: &str) {
        pv_regs::ignored(&mut self.counters.bad_accesses, "pv-vmx", access, len, what);
    }
}

impl ActiveVmcs {
    /// Fields counted against [`VMCS_MAX_FIELDS`].
    fn user_fields(&self) -> usize {
        self.fields.len() - usize::from(self.fields.contains_key(&field::VM_INSTRUCTION_ERROR))
    }
}

impl BusDevice for PvVmx {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if data.len() != REGISTER_WIDTH {
            self.bad_access(access, data.len(), "read");
            data.fill(0xff);
            return;
        }
        let value = match access.offset {
            ID => Some(ID_MAGIC),
            REVISION => Some(VMCS_REVISION),
            offset => match self.vcpu_index(access) {
                None => Some(INVALID_READ),
                Some(cpu) => {
                    let v = &self.vcpus[cpu];
                    match offset {
                        ARG_LO => Some(v.arg as u32),
                        ARG_HI => Some((v.arg >> 32) as u32),
                        FIELD => Some(v.field),
                        COMMAND => Some(v.last_command),
                        STATUS => Some(v.status),
                        ERROR => Some(v.error),
                        _ => None,
                    }
                }
            },
        };
        let value = value.unwrap_or_else(|| {
            self.bad_access(access, data.len(), "read");
            INVALID_READ
        });
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        let Some(value) = pv_regs::write_value(data) else {
            self.bad_access(access, data.len(), "wrote");
            return;
        };
        if !matches!(access.offset, ARG_LO | ARG_HI | FIELD | COMMAND) {
            self.bad_access(access, data.len(), "wrote");
            return;
        }
        let Some(cpu) = self.vcpu_index(access) else {
            return;
        };
        let v = &mut self.vcpus[cpu];
        match access.offset {
            ARG_LO => v.arg = pv_regs::with_low(v.arg, value),
            ARG_HI => v.arg = pv_regs::with_high(v.arg, value),
            FIELD => v.field = value,
            _ => self.execute(cpu, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_ram::VecRam;
    use guest_abi::pv::vmx::record_offset;

    const RAM_SIZE: usize = 0x10_0000;
    const VMXON0: u64 = 0x1000;
    const VMCS_A: u64 = 0x2000;
    const VMCS_B: u64 = 0x3000;
    const VMXON1: u64 = 0x8000;

    struct Rig {
        dev: PvVmx,
        ram: Arc<VecRam>,
    }

    fn rig(vcpus: u32) -> Rig {
        let ram = Arc::new(VecRam::new(0, RAM_SIZE));
        let dev = PvVmx::new(vcpus, ram.clone()).unwrap();
        for region in [VMXON0, VMCS_A, VMCS_B, VMXON1] {
            ram.write(region, &VMCS_REVISION.to_le_bytes()).unwrap();
        }
        Rig { dev, ram }
    }

    fn at(offset: u64, vcpu: u32) -> Access {
        Access {
            base: u64::from(guest_abi::ports::PV_VMX),
            offset,
            vcpu,
        }
    }

    impl Rig {
        fn out(&mut self, vcpu: u32, offset: u64, value: u32) {
            self.dev.write(at(offset, vcpu), &value.to_le_bytes());
        }

        fn inl(&mut self, vcpu: u32, offset: u64) -> u32 {
            let mut data = [0u8; 4];
            self.dev.read(at(offset, vcpu), &mut data);
            u32::from_le_bytes(data)
        }

        fn set_arg(&mut self, vcpu: u32, arg: u64) {
            self.out(vcpu, ARG_LO, arg as u32);
            self.out(vcpu, ARG_HI, (arg >> 32) as u32);
        }

        fn arg(&mut self, vcpu: u32) -> u64 {
            u64::from(self.inl(vcpu, ARG_LO)) | (u64::from(self.inl(vcpu, ARG_HI)) << 32)
        }

        /// Runs a command; returns (STATUS, ERROR).
        fn run(&mut self, vcpu: u32, command: u32, arg: u64) -> (u32, u32) {
            self.set_arg(vcpu, arg);
            self.out(vcpu, COMMAND, command);
            (self.inl(vcpu, STATUS), self.inl(vcpu, ERROR))
        }

        fn vmwrite(&mut self, vcpu: u32, encoding: u32, value: u64) -> (u32, u32) {
            self.out(vcpu, FIELD, encoding);
            self.run(vcpu, cmd::VMWRITE, value)
        }

        fn vmread(&mut self, vcpu: u32, encoding: u32) -> (u32, u32, u64) {
            self.out(vcpu, FIELD, encoding);
            self.out(vcpu, COMMAND, cmd::VMREAD);
            (
                self.inl(vcpu, STATUS),
                self.inl(vcpu, ERROR),
                self.arg(vcpu),
            )
        }

        fn mem32(&self, gpa: u64) -> u32 {
            let mut b = [0; 4];
            self.ram.read(gpa, &mut b).unwrap();
            u32::from_le_bytes(b)
        }

        fn mem64(&self, gpa: u64) -> u64 {
            let mut b = [0; 8];
            self.ram.read(gpa, &mut b).unwrap();
            u64::from_le_bytes(b)
        }

        fn state(&self, vcpu: usize) -> VmxVcpuState {
            self.dev.snapshot()[vcpu]
        }
    }

    const OK: (u32, u32) = (status::SUCCEED, 0);
    const INVALID: (u32, u32) = (status::FAIL_INVALID, 0);
    const UD: (u32, u32) = (status::UD, 0);
    fn valid(n: u32) -> (u32, u32) {
        (status::FAIL_VALID, n)
    }

    #[test]
    fn id_revision_and_idle_status() {
        let mut r = rig(2);
        assert_eq!(r.inl(0, ID), ID_MAGIC);
        assert_eq!(r.inl(1, REVISION), VMCS_REVISION);
        assert_eq!(r.inl(1, STATUS), status::IDLE);
        let s = r.state(1);
        assert!(!s.vmx_on && !s.vmcs_loaded && s.vmcs_flushed);
        assert_eq!(
            s.note_flags(),
            note_flags::VMCS_FLUSHED | note_flags::MODEL_NOT_HARDWARE
        );
        assert_eq!(VmxVcpuState::note_addr(s.vmxon_region), u64::MAX);
    }

    #[test]
    fn full_lifecycle_writes_exact_vmcs_contents_on_vmclear() {
        let mut r = rig(1);
        assert_eq!(r.run(0, cmd::VMXON, VMXON0), OK);
        assert_eq!(r.run(0, cmd::VMPTRLD, VMCS_A), OK);
        let loaded = r.state(0);
        assert!(loaded.vmx_on && loaded.vmcs_loaded && !loaded.vmcs_flushed);
        assert_eq!(loaded.current_vmcs, Some(VMCS_A));

        assert_eq!(r.vmwrite(0, field::GUEST_RIP, 0xffff_ffff_8100_0000), OK);
        assert_eq!(r.vmwrite(0, field::HOST_RSP, 0x1234_5678_9abc), OK);
        // 16-bit control field 0 (VPID): truncated to its width.
        assert_eq!(r.vmwrite(0, 0x0000, 0xdead_beef), OK);
        // Low then high half of the 64-bit VMCS link pointer.
        assert_eq!(
            r.vmwrite(0, field::VMCS_LINK_POINTER, 0xffff_ffff_aaaa_bbbb),
            OK
        );
        assert_eq!(r.vmwrite(0, field::VMCS_LINK_POINTER | 1, 0x1122_3344), OK);

        assert_eq!(
            r.vmread(0, field::GUEST_RIP),
            (status::SUCCEED, 0, 0xffff_ffff_8100_0000)
        );
        assert_eq!(r.vmread(0, 0x0000), (status::SUCCEED, 0, 0xbeef));
        assert_eq!(
            r.vmread(0, field::VMCS_LINK_POINTER),
            (status::SUCCEED, 0, 0x1122_3344_aaaa_bbbb)
        );
        assert_eq!(
            r.vmread(0, field::VMCS_LINK_POINTER | 1),
            (status::SUCCEED, 0, 0x1122_3344)
        );
        assert_eq!(r.vmread(0, field::GUEST_CR3), (status::SUCCEED, 0, 0));
        r.out(0, COMMAND, cmd::VMPTRST);
        assert_eq!(r.arg(0), VMCS_A);

        // Nothing reached memory yet: the contents are "in the CPU".
        assert_eq!(r.mem32(VMCS_A + 8), 0);

        assert_eq!(r.run(0, cmd::VMCLEAR, VMCS_A), OK);
        assert_eq!(r.mem32(VMCS_A), VMCS_REVISION);
        assert_eq!(r.mem32(VMCS_A + 4), 0, "abort indicator");
        assert_eq!(r.mem32(VMCS_A + 8), 4, "record count");
        assert_eq!(r.mem32(VMCS_A + 12), 0);
        let expected = [
            (0x0000, 0xbeef),
            (field::VMCS_LINK_POINTER, 0x1122_3344_aaaa_bbbb),
            (field::GUEST_RIP, 0xffff_ffff_8100_0000),
            (field::HOST_RSP, 0x1234_5678_9abc),
        ];
        for (i, (encoding, value)) in expected.into_iter().enumerate() {
            let at = VMCS_A + record_offset(i) as u64;
            assert_eq!(r.mem32(at), encoding, "record {i}");
            assert_eq!(r.mem32(at + 4), 0);
            assert_eq!(r.mem64(at + 8), value, "record {i}");
        }
        assert_eq!(
            r.mem32(VMCS_A + record_offset(4) as u64),
            0,
            "nothing past the records"
        );

        let cleared = r.state(0);
        assert!(cleared.vmx_on && !cleared.vmcs_loaded && cleared.vmcs_flushed);
        assert_eq!(cleared.current_vmcs, None);
        assert_eq!(cleared.last_cleared_vmcs, Some(VMCS_A));
        r.out(0, COMMAND, cmd::VMPTRST);
        assert_eq!(r.arg(0), NO_VMCS);
        // No current VMCS any more.
        assert_eq!(r.vmread(0, field::GUEST_RIP).0, status::FAIL_INVALID);

        assert_eq!(r.run(0, cmd::VMXOFF, 0), OK);
        let off = r.state(0);
        assert!(!off.vmx_on && !off.vmcs_loaded && off.vmcs_flushed);
        assert_eq!(off.vmxon_region, Some(VMXON0));
        assert_eq!(off.lost_vmcs, 0);
        assert_eq!(
            off.note_flags(),
            note_flags::VMCS_FLUSHED | note_flags::MODEL_NOT_HARDWARE
        );
        assert_eq!(r.dev.counters().vmfails, 1);
    }

    #[test]
    fn note_descriptor_layout() {
        let mut r = rig(2);
        r.run(1, cmd::VMXON, VMXON1);
        r.run(1, cmd::VMPTRLD, VMCS_B);
        let note = r.state(1).note();
        let desc = *note.as_bytes();
        assert_eq!(VmxStateNote::from_bytes(&desc), Some(note));
        let u32_at = |at: usize| u32::from_le_bytes(desc[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(desc[at..at + 8].try_into().unwrap());
        assert_eq!(u32_at(0), VMX_NOTE_VERSION);
        assert_eq!(u32_at(4), 1);
        assert_eq!(
            u32_at(8),
            0b1011,
            "VMX_ON | VMCS_LOADED | MODEL_NOT_HARDWARE"
        );
        assert_eq!(u32_at(12), 0);
        assert_eq!(u64_at(16), VMXON1);
        assert_eq!(u64_at(24), VMCS_B);
        assert_eq!(u64_at(32), u64::MAX, "never cleared");
    }

    #[test]
    fn vmptrld_reloads_what_vmclear_wrote() {
        let mut r = rig(1);
        r.run(0, cmd::VMXON, VMXON0);
        r.run(0, cmd::VMPTRLD, VMCS_A);
        r.vmwrite(0, field::GUEST_RSP, 0x7000);
        assert_eq!(r.run(0, cmd::VMCLEAR, VMCS_A), OK);
        assert_eq!(r.run(0, cmd::VMPTRLD, VMCS_A), OK);
        assert_eq!(r.vmread(0, field::GUEST_RSP), (status::SUCCEED, 0, 0x7000));
    }

    #[test]
    fn vmxoff_without_vmclear_loses_the_cache() {
        let mut r = rig(1);
        r.run(0, cmd::VMXON, VMXON0);
        r.run(0, cmd::VMPTRLD, VMCS_A);
        r.vmwrite(0, field::GUEST_RIP, 0x1234);
        let before = r.state(0);
        assert_eq!(
            before.note_flags(),
            note_flags::VMX_ON | note_flags::VMCS_LOADED | note_flags::MODEL_NOT_HARDWARE
        );
        assert_eq!(r.run(0, cmd::VMXOFF, 0), OK);
        let s = r.state(0);
        assert!(!s.vmx_on && !s.vmcs_loaded && !s.vmcs_flushed);
        assert_eq!(s.lost_vmcs, 1);
        assert_eq!(s.last_cleared_vmcs, None);
        assert_eq!(r.mem32(VMCS_A + 8), 0, "nothing was written back");
        assert_eq!(r.dev.counters().vmcs_lost, 1);
        // The loss is remembered across a later VMXON, until reset.
        r.run(0, cmd::VMXON, VMXON0);
        assert!(!r.state(0).vmcs_flushed);
        r.dev.reset();
        let s = r.state(0);
        assert!(!s.vmx_on && s.vmcs_flushed && s.vmxon_region.is_none());
        assert_eq!(r.inl(0, STATUS), status::IDLE);
    }

    #[test]
    fn instructions_outside_vmx_operation_are_undefined() {
        let mut r = rig(1);
        for command in [
            cmd::VMXOFF,
            cmd::VMPTRLD,
            cmd::VMPTRST,
            cmd::VMCLEAR,
            cmd::VMREAD,
            cmd::VMWRITE,
        ] {
            assert_eq!(r.run(0, command, VMCS_A), UD, "command {command}");
            assert_eq!(r.inl(0, COMMAND), command);
        }
        assert_eq!(r.dev.counters().undefined_opcodes, 6);
        assert!(!r.state(0).vmx_on);
    }

    #[test]
    fn vmxon_failures() {
        let mut r = rig(1);
        // Unaligned, outside RAM, straddling the end of RAM, wrong revision.
        for gpa in [VMXON0 + 8, RAM_SIZE as u64, !0xfff, 0x5000] {
            assert_eq!(r.run(0, cmd::VMXON, gpa), INVALID, "{gpa:#x}");
        }
        r.ram
            .write(0x6000, &(VMCS_REVISION | 1 << 31).to_le_bytes())
            .unwrap();
        assert_eq!(r.run(0, cmd::VMXON, 0x6000), INVALID, "shadow bit");
        assert!(!r.state(0).vmx_on);

        assert_eq!(r.run(0, cmd::VMXON, VMXON0), OK);
        // VMXON in VMX root operation: VMfailInvalid with no current VMCS...
        assert_eq!(r.run(0, cmd::VMXON, VMXON0), INVALID);
        // ...VMfailValid(15) with one, also stored in the VMCS.
        r.run(0, cmd::VMPTRLD, VMCS_A);
        assert_eq!(
            r.run(0, cmd::VMXON, VMXON0),
            valid(error::VMXON_IN_VMX_ROOT)
        );
        assert_eq!(
            r.vmread(0, field::VM_INSTRUCTION_ERROR),
            (status::SUCCEED, 0, u64::from(error::VMXON_IN_VMX_ROOT))
        );
        assert_eq!(r.dev.counters().vmfails, 7);
    }

    #[test]
    fn vmptrld_and_vmclear_failures_carry_sdm_numbers() {
        let mut r = rig(1);
        r.run(0, cmd::VMXON, VMXON0);
        // Without a current VMCS, every VMfail is VMfailInvalid.
        assert_eq!(r.run(0, cmd::VMPTRLD, VMXON0), INVALID);
        assert_eq!(r.run(0, cmd::VMCLEAR, 0x123), INVALID);
        assert_eq!(r.run(0, cmd::VMPTRLD, VMCS_A), OK);
        let bad_revision = 0x5000;
        for (command, gpa, number) in [
            (cmd::VMCLEAR, VMCS_B + 1, error::VMCLEAR_INVALID_ADDRESS),
            (
                cmd::VMCLEAR,
                RAM_SIZE as u64,
                error::VMCLEAR_INVALID_ADDRESS,
            ),
            (cmd::VMCLEAR, VMXON0, error::VMCLEAR_VMXON_POINTER),
            (cmd::VMPTRLD, 0x10, error::VMPTRLD_INVALID_ADDRESS),
            (cmd::VMPTRLD, u64::MAX, error::VMPTRLD_INVALID_ADDRESS),
            (cmd::VMPTRLD, VMXON0, error::VMPTRLD_VMXON_POINTER),
            (cmd::VMPTRLD, bad_revision, error::VMPTRLD_BAD_REVISION),
        ] {
            assert_eq!(r.run(0, command, gpa), valid(number), "{command} {gpa:#x}");
            assert_eq!(
                r.vmread(0, field::VM_INSTRUCTION_ERROR).2,
                u64::from(number)
            );
        }
        // None of that changed the current VMCS.
        assert_eq!(r.state(0).current_vmcs, Some(VMCS_A));
        // Clearing a VMCS that is not active succeeds and writes nothing.
        assert_eq!(r.run(0, cmd::VMCLEAR, VMCS_B), OK);
        assert_eq!(r.mem32(VMCS_B + 8), 0);
        assert_eq!(r.state(0).last_cleared_vmcs, None);
    }

    #[test]
    fn vmread_vmwrite_failures() {
        let mut r = rig(1);
        r.run(0, cmd::VMXON, VMXON0);
        assert_eq!(
            r.vmwrite(0, field::GUEST_RIP, 1),
            INVALID,
            "no current VMCS"
        );
        assert_eq!(r.vmread(0, field::GUEST_RIP).0, status::FAIL_INVALID);
        r.run(0, cmd::VMPTRLD, VMCS_A);
        let unsupported = valid(error::UNSUPPORTED_COMPONENT);
        for encoding in [
            0x8000,
            0x1000,
            0xffff_ffff,
            field::GUEST_RIP | 1,
            0x4000 | 1,
        ] {
            assert_eq!(r.vmwrite(0, encoding, 1), unsupported, "{encoding:#x}");
            let (s, e, _) = r.vmread(0, encoding);
            assert_eq!((s, e), unsupported, "{encoding:#x}");
        }
        assert_eq!(
            r.vmwrite(0, field::VM_INSTRUCTION_ERROR, 0),
            valid(error::VMWRITE_READ_ONLY)
        );
        // 0x4402 (exit reason) is read-only data too.
        assert_eq!(r.vmwrite(0, 0x4402, 0), valid(error::VMWRITE_READ_ONLY));
    }

    #[test]
    fn a_full_vmcs_refuses_new_fields_but_keeps_error_room() {
        let mut r = rig(1);
        r.run(0, cmd::VMXON, VMXON0);
        r.run(0, cmd::VMPTRLD, VMCS_A);
        // Guest-state natural-width fields, index 0..VMCS_MAX_FIELDS.
        for i in 0..VMCS_MAX_FIELDS as u32 {
            assert_eq!(r.vmwrite(0, 0x6800 | (i << 1), u64::from(i)), OK, "{i}");
        }
        let extra = 0x6800 | ((VMCS_MAX_FIELDS as u32) << 1);
        assert_eq!(r.vmwrite(0, extra, 1), valid(error::UNSUPPORTED_COMPONENT));
        // Rewriting an existing field still works.
        assert_eq!(r.vmwrite(0, 0x6800, 99), OK);
        assert_eq!(r.run(0, cmd::VMCLEAR, VMCS_A), OK);
        assert_eq!(r.mem32(VMCS_A + 8), VMCS_MAX_RECORDS as u32);
        let last = VMCS_A + record_offset(VMCS_MAX_RECORDS - 1) as u64;
        assert!(last + 16 <= VMCS_A + VMCS_REGION_SIZE as u64);
        assert_eq!(r.mem32(VMCS_A + 16), 0x4400, "error field, sorted first");
        assert_eq!(
            r.mem64(VMCS_A + 24),
            u64::from(error::UNSUPPORTED_COMPONENT)
        );
        assert_eq!(r.mem32(VMCS_A + 32), 0x6800);
        assert_eq!(r.mem64(VMCS_A + 40), 99);
    }

    #[test]
    fn malformed_vmcs_regions_load_what_is_valid() {
        let mut r = rig(1);
        r.run(0, cmd::VMXON, VMXON0);
        // A count past the maximum: loads empty.
        r.ram.write(VMCS_A + 8, &1000u32.to_le_bytes()).unwrap();
        assert_eq!(r.run(0, cmd::VMPTRLD, VMCS_A), OK);
        assert_eq!(r.vmread(0, field::GUEST_RIP).2, 0);
        // Two records: one with reserved bits (skipped), one good.
        let mut region = Vec::new();
        for w in [VMCS_REVISION, 0, 2, 0, 0x8000, 0] {
            region.extend_from_slice(&w.to_le_bytes());
        }
        region.extend_from_slice(&5u64.to_le_bytes());
        for w in [field::GUEST_RIP, 0] {
            region.extend_from_slice(&w.to_le_bytes());
        }
        region.extend_from_slice(&7u64.to_le_bytes());
        r.ram.write(VMCS_B, &region).unwrap();
        assert_eq!(r.run(0, cmd::VMPTRLD, VMCS_B), OK);
        assert_eq!(r.vmread(0, field::GUEST_RIP).2, 7);
        assert_eq!(r.dev.counters().malformed_vmcs_records, 2);
    }

    #[test]
    fn switching_vmcs_keeps_both_cached_and_evicts_beyond_the_limit() {
        let mut r = rig(1);
        r.run(0, cmd::VMXON, VMXON0);
        let region = |i: u64| 0x10_000 + i * 0x1000;
        for i in 0..=MAX_ACTIVE_VMCS as u64 {
            r.ram
                .write(region(i), &VMCS_REVISION.to_le_bytes())
                .unwrap();
            assert_eq!(r.run(0, cmd::VMPTRLD, region(i)), OK);
            r.vmwrite(0, field::GUEST_RIP, 0x100 + i);
        }
        // The first one was written back to make room; the rest are cached.
        assert_eq!(r.dev.counters().evictions, 1);
        assert_eq!(r.mem32(region(0) + 8), 1);
        assert_eq!(r.mem64(region(0) + 24), 0x100);
        assert_eq!(r.mem32(region(1) + 8), 0);
        assert_eq!(r.state(0).active_vmcs, MAX_ACTIVE_VMCS as u32);
        // Back to an earlier one: its cached value is still there.
        assert_eq!(r.run(0, cmd::VMPTRLD, region(3)), OK);
        assert_eq!(r.vmread(0, field::GUEST_RIP).2, 0x103);
        // VMXOFF now loses all of them.
        r.run(0, cmd::VMXOFF, 0);
        assert_eq!(r.state(0).lost_vmcs, MAX_ACTIVE_VMCS as u32);
    }

    #[test]
    fn vcpus_are_isolated() {
        let mut r = rig(2);
        assert_eq!(r.run(0, cmd::VMXON, VMXON0), OK);
        // vCPU 1 is not in VMX operation and has its own registers.
        assert_eq!(r.arg(1), 0);
        assert_eq!(r.run(1, cmd::VMPTRLD, VMCS_A), UD);
        assert_eq!(r.inl(0, STATUS), status::SUCCEED);
        assert_eq!(r.run(1, cmd::VMXON, VMXON1), OK);
        assert_eq!(r.run(0, cmd::VMPTRLD, VMCS_A), OK);
        assert_eq!(r.run(1, cmd::VMPTRLD, VMCS_B), OK);
        r.vmwrite(0, field::GUEST_RIP, 0xa);
        r.vmwrite(1, field::GUEST_RIP, 0xb);
        assert_eq!(r.vmread(0, field::GUEST_RIP).2, 0xa);
        assert_eq!(r.vmread(1, field::GUEST_RIP).2, 0xb);
        // vCPU 0 clears and leaves; vCPU 1 stays in, as a stopped CPU would.
        r.run(0, cmd::VMCLEAR, VMCS_A);
        r.run(0, cmd::VMXOFF, 0);
        let s = r.dev.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].vcpu, s[1].vcpu), (0, 1));
        assert!(!s[0].vmx_on && s[0].vmcs_flushed);
        assert!(s[1].vmx_on && s[1].vmcs_loaded && !s[1].vmcs_flushed);
        assert_eq!(s[1].vmxon_region, Some(VMXON1));
        assert_eq!(s[1].current_vmcs, Some(VMCS_B));
        assert_eq!(r.mem32(VMCS_B + 8), 0);
    }

    #[test]
    fn garbage_accesses_are_ignored_and_counted() {
        let mut r = rig(2);
        // Out-of-range vCPU: writes ignored, reads all ones.
        r.out(2, ARG_LO, VMXON0 as u32);
        r.out(7, COMMAND, cmd::VMXON);
        assert_eq!(r.inl(2, STATUS), INVALID_READ);
        assert_eq!(r.inl(u32::MAX, ARG_LO), INVALID_READ);
        assert_eq!(r.dev.counters().bad_vcpu_accesses, 4);
        // ID is readable from any vCPU id.
        assert_eq!(r.inl(9, ID), ID_MAGIC);
        // Wrong widths.
        r.dev.write(at(COMMAND, 0), &[cmd::VMXON as u8]);
        r.dev.write(at(COMMAND, 0), &[1, 0]);
        r.dev.write(at(COMMAND, 0), &[1, 0, 0, 0, 0, 0, 0, 0]);
        r.dev.write(at(COMMAND, 0), &[]);
        let mut byte = [0u8];
        r.dev.read(at(STATUS, 0), &mut byte);
        assert_eq!(byte, [0xff]);
        // Unaligned or unknown offsets, read-only registers.
        r.out(0, COMMAND + 1, cmd::VMXON);
        r.out(0, 0x20, cmd::VMXON);
        r.out(0, STATUS, 0);
        r.out(0, ID, 0);
        assert_eq!(r.inl(0, 0x1e), INVALID_READ);
        assert_eq!(r.dev.counters().bad_accesses, 10);
        // Unknown commands change nothing.
        assert_eq!(r.run(0, 0, VMXON0), (status::BAD_COMMAND, 0));
        assert_eq!(r.run(0, 99, VMXON0), (status::BAD_COMMAND, 0));
        assert_eq!(r.dev.counters().bad_commands, 2);
        let s = r.state(0);
        assert!(!s.vmx_on && s.vmcs_flushed);
        assert_eq!(r.dev.counters().commands, 2);
    }

    /// xorshift64: deterministic noise for the storm tests.
    fn noise(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_register_storms_never_panic_or_escape_ram() {
        let mut r = rig(3);
        // Scribble on the VMCS regions too, so VMPTRLD parses garbage.
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for gpa in (VMCS_A..VMCS_A + 0x2000).step_by(8) {
            let word = noise(&mut seed);
            r.ram.write(gpa, &word.to_le_bytes()).unwrap();
        }
        r.ram.write(VMCS_A, &VMCS_REVISION.to_le_bytes()).unwrap();
        r.ram.write(VMCS_B, &VMCS_REVISION.to_le_bytes()).unwrap();
        let gpas = [
            VMXON0,
            VMCS_A,
            VMCS_B,
            0,
            RAM_SIZE as u64 - 0x1000,
            u64::MAX,
        ];
        for _ in 0..20_000 {
            let n = noise(&mut seed);
            let vcpu = (n % 4) as u32;
            let offset = (n >> 8) % 0x24;
            match (n >> 16) % 8 {
                0 => r.set_arg(vcpu, gpas[(n >> 24) as usize % gpas.len()]),
                1 => r.out(vcpu, FIELD, (n >> 24) as u32 & 0x7fff),
                2 => r.out(vcpu, COMMAND, (n >> 24) as u32 % 9),
                3 => {
                    let len = (n >> 24) as usize % 9;
                    r.dev.write(at(offset, vcpu), &vec![0xa5; len]);
                }
                4 => {
                    let mut buf = vec![0; (n >> 24) as usize % 9];
                    r.dev.read(at(offset, vcpu), &mut buf);
                }
                5 => r.set_arg(vcpu, noise(&mut seed)),
                _ => {
                    let _ = r.inl(vcpu, offset);
                }
            }
        }
        for state in r.dev.snapshot() {
            assert!(state.active_vmcs as usize <= MAX_ACTIVE_VMCS);
            assert_eq!(state.vmcs_loaded, state.current_vmcs.is_some());
            assert!(!state.vmcs_loaded || state.vmx_on);
        }
        let c = r.dev.counters();
        assert!(c.commands > 1000 && c.bad_accesses > 1000 && c.bad_vcpu_accesses > 0);
        assert!(c.vmfails > 0 && c.undefined_opcodes > 0 && c.vmcs_lost > 0);
        assert_eq!(c.writeback_errors, 0);
    }

    #[test]
    fn zero_vcpus_is_an_error() {
        let ram = Arc::new(VecRam::new(0, 0x1000));
        assert_eq!(PvVmx::new(0, ram).unwrap_err(), PvVmxError::NoVcpus);
    }

    #[test]
    fn works_through_the_bus_with_guest_memory_mmap() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)])
                .expect("small anonymous mapping");
        let mem = Arc::new(mem);
        GuestRam::write(&*mem, VMXON0, &VMCS_REVISION.to_le_bytes()).unwrap();
        GuestRam::write(&*mem, VMCS_A, &VMCS_REVISION.to_le_bytes()).unwrap();
        let dev = Arc::new(std::sync::Mutex::new(PvVmx::new(1, mem.clone()).unwrap()));
        let mut bus = crate::Bus::new();
        let port = u64::from(guest_abi::ports::PV_VMX);
        bus.insert(dev.clone(), port, PV_VMX_LEN).unwrap();
        let out = |off: u64, v: u32| assert!(bus.write(0, port + off, &v.to_le_bytes()));
        out(ARG_LO, VMXON0 as u32);
        out(ARG_HI, 0);
        out(COMMAND, cmd::VMXON);
        out(ARG_LO, VMCS_A as u32);
        out(COMMAND, cmd::VMPTRLD);
        out(FIELD, field::HOST_RIP);
        out(ARG_LO, 0x4242);
        out(COMMAND, cmd::VMWRITE);
        out(ARG_LO, VMCS_A as u32);
        out(COMMAND, cmd::VMCLEAR);
        let mut status = [0u8; 4];
        assert!(bus.read(0, port + STATUS, &mut status));
        assert_eq!(u32::from_le_bytes(status), status::SUCCEED);
        let mut record = [0u8; 16];
        GuestRam::read(&*mem, VMCS_A + 16, &mut record).unwrap();
        assert_eq!(&record[..4], &field::HOST_RIP.to_le_bytes());
        assert_eq!(&record[8..], &0x4242u64.to_le_bytes());
        assert!(dev.lock().unwrap().snapshot()[0].vmcs_flushed);
    }

    #[test]
    fn vmx_regions_at_the_edges_of_guest_memory_fail_cleanly() {
        use crate::test_utils::{ram_around_mmio_hole, EDGE_RAM, MMIO_HOLE};
        let ram = Arc::new(ram_around_mmio_hole());
        let last_below_hole = MMIO_HOLE.0 - 0x1000;
        let first_above_hole = MMIO_HOLE.1;
        let end_of_ram = MMIO_HOLE.1 + EDGE_RAM as u64;
        for page in [last_below_hole, first_above_hole, end_of_ram - 0x1000] {
            GuestRam::write(&*ram, page, &VMCS_REVISION.to_le_bytes()).unwrap();
        }
        let mut dev = PvVmx::new(1, ram.clone()).unwrap();
        let exec = |dev: &mut PvVmx, command: u32, arg: u64| {
            dev.write(at(ARG_LO, 0), &(arg as u32).to_le_bytes());
            dev.write(at(ARG_HI, 0), &((arg >> 32) as u32).to_le_bytes());
            dev.write(at(COMMAND, 0), &command.to_le_bytes());
            let mut v = [0u8; 4];
            dev.read(at(STATUS, 0), &mut v);
            let st = u32::from_le_bytes(v);
            dev.read(at(ERROR, 0), &mut v);
            (st, u32::from_le_bytes(v))
        };
        let bad = [
            MMIO_HOLE.0,          // the first page of the hole
            MMIO_HOLE.1 - 0x1000, // the last page of the hole
            end_of_ram,           // just past the end of RAM
            MMIO_HOLE.0 - 0x800,  // unaligned, straddling the hole
            !0xfff,               // the top of the address space
            EDGE_RAM as u64,      // just past low RAM
        ];
        // VMXON: only a page entirely in RAM.
        for gpa in bad {
            assert_eq!(
                exec(&mut dev, cmd::VMXON, gpa),
                (status::FAIL_INVALID, 0),
                "{gpa:#x}"
            );
        }
        assert_eq!(
            exec(&mut dev, cmd::VMXON, end_of_ram - 0x1000).0,
            status::SUCCEED
        );
        // VMPTRLD and VMCLEAR refuse every bad page with their error numbers
        // (VMfailInvalid: no current VMCS yet) and never touch RAM.
        for gpa in bad {
            assert_eq!(
                exec(&mut dev, cmd::VMPTRLD, gpa).0,
                status::FAIL_INVALID,
                "{gpa:#x}"
            );
            assert_eq!(
                exec(&mut dev, cmd::VMCLEAR, gpa).0,
                status::FAIL_INVALID,
                "{gpa:#x}"
            );
        }
        // The last pages before and after the hole work, and VMCLEAR writes
        // the cached contents back inside them.
        for gpa in [last_below_hole, first_above_hole] {
            assert_eq!(exec(&mut dev, cmd::VMPTRLD, gpa).0, status::SUCCEED);
            dev.write(at(FIELD, 0), &field::GUEST_RIP.to_le_bytes());
            assert_eq!(exec(&mut dev, cmd::VMWRITE, 0x1234).0, status::SUCCEED);
            // With a current VMCS, a bad address is VMfailValid(9).
            assert_eq!(
                exec(&mut dev, cmd::VMPTRLD, MMIO_HOLE.0),
                (status::FAIL_VALID, error::VMPTRLD_INVALID_ADDRESS)
            );
            assert_eq!(exec(&mut dev, cmd::VMCLEAR, gpa).0, status::SUCCEED);
            let mut count = [0u8; 4];
            GuestRam::read(&*ram, gpa + 8, &mut count).unwrap();
            assert!(u32::from_le_bytes(count) >= 1, "{gpa:#x} written back");
        }
        assert_eq!(dev.counters().writeback_errors, 0);
    }
}
