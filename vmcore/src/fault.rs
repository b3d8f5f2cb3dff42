//! The `VMMFAULT` note: a vCPU stopped on a guest fault (triple fault, KVM
//! internal error, failed entry) before the dump was taken.
//!
//! | name         | type                      | descriptor |
//! |--------------|---------------------------|------------|
//! | `"VMMFAULT"` | [`NT_VMM_FAULT`] (0x564d_5810) | u32 version (1), u32 vcpu, u64 rip, u64 rsp, u64 cr3, u32 reason length, u32 0, reason (UTF-8, no NUL) |
//!
//! Written by the VMM, at most once, in host-side dumps of a VM one of
//! whose vCPUs faulted; `vmm vmcore check` turns it into a failing
//! `guest_fault` check and `vmm vmcore info` prints it.

use serde::Serialize;

use crate::reader::Vmcore;

/// Note name of [`GuestFault`].
pub const NOTE_NAME_FAULT: &[u8] = b"VMMFAULT";
/// Note type of [`GuestFault`] (away from the other `VMM` types, 0x564d_58xx).
pub const NT_VMM_FAULT: u32 = 0x564d_5810;
const VERSION: u32 = 1;
const HEADER: usize = 40;
/// Longest reason kept (a hostile note cannot make the reader allocate more).
const MAX_REASON: usize = 1024;

/// A guest fault that stopped one vCPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestFault {
    /// The vCPU that faulted.
    pub vcpu: u32,
    /// What KVM reported (e.g. `triple fault (KVM_EXIT_SHUTDOWN)`).
    pub reason: String,
    /// Guest RIP at the fault.
    pub rip: u64,
    /// Guest RSP at the fault.
    pub rsp: u64,
    /// Guest CR3 at the fault.
    pub cr3: u64,
}

impl GuestFault {
    /// Appends the `VMMFAULT` note.
    pub(crate) fn encode_note(&self, notes: &mut Vec<u8>) {
        let reason = &self.reason.as_bytes()[..self.reason.len().min(MAX_REASON)];
        let mut desc = Vec::with_capacity(HEADER + reason.len());
        desc.extend_from_slice(&VERSION.to_le_bytes());
        desc.extend_from_slice(&self.vcpu.to_le_bytes());
        desc.extend_from_slice(&self.rip.to_le_bytes());
        desc.extend_from_slice(&self.rsp.to_le_bytes());
        desc.extend_from_slice(&self.cr3.to_le_bytes());
        desc.extend_from_slice(&(reason.len() as u32).to_le_bytes());
        desc.extend_from_slice(&0u32.to_le_bytes());
        desc.extend_from_slice(reason);
        crate::elf::encode_note(notes, NOTE_NAME_FAULT, NT_VMM_FAULT, &desc);
    }

    /// Decodes a `VMMFAULT` descriptor; `Err` says what is wrong with it.
    pub fn decode(desc: &[u8]) -> Result<Self, String> {
        let u32_at = |o: usize| {
            desc.get(o..o + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        };
        let u64_at = |o: usize| {
            desc.get(o..o + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let short = || format!("VMMFAULT descriptor of {} bytes is too short", desc.len());
        let version = u32_at(0).ok_or_else(short)?;
        if version != VERSION {
            return Err(format!("VMMFAULT version {version} (expected {VERSION})"));
        }
        let len = u32_at(32).ok_or_else(short)? as usize;
        let reason = desc
            .get(HEADER..HEADER.saturating_add(len.min(MAX_REASON)))
            .ok_or_else(|| format!("VMMFAULT reason of {len} bytes runs past the note"))?;
        Ok(GuestFault {
            vcpu: u32_at(4).ok_or_else(short)?,
            rip: u64_at(8).ok_or_else(short)?,
            rsp: u64_at(16).ok_or_else(short)?,
            cr3: u64_at(24).ok_or_else(short)?,
            reason: String::from_utf8_lossy(reason).into_owned(),
        })
    }
}

impl std::fmt::Display for GuestFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vCPU {}: {} at RIP {:#x} (RSP {:#x}, CR3 {:#x})",
            self.vcpu, self.reason, self.rip, self.rsp, self.cr3
        )
    }
}

impl Vmcore {
    /// The `VMMFAULT` note: `None` without one, `Some(Err)` if malformed.
    pub fn guest_fault(&self) -> Option<Result<GuestFault, String>> {
        self.find_notes(NOTE_NAME_FAULT, NT_VMM_FAULT)
            .next()
            .map(|n| GuestFault::decode(&n.desc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_short_or_lying_notes() {
        let f = GuestFault {
            vcpu: 3,
            reason: "triple fault (KVM_EXIT_SHUTDOWN)".into(),
            rip: 0x10_2345,
            rsp: 0x20_0000,
            cr3: 0x1000,
        };
        let mut notes = Vec::new();
        f.encode_note(&mut notes);
        // 12-byte header, "VMMFAULT\0" padded to 12.
        let desc = &notes[24..];
        assert_eq!(GuestFault::decode(desc).unwrap(), f);
        assert!(f.to_string().contains("vCPU 3: triple fault"));
        assert!(GuestFault::decode(&desc[..20])
            .unwrap_err()
            .contains("short"));
        let mut lying = desc.to_vec();
        lying[32] = 0xff;
        assert!(GuestFault::decode(&lying)
            .unwrap_err()
            .contains("runs past"));
        lying[0] = 7;
        assert!(GuestFault::decode(&lying)
            .unwrap_err()
            .contains("version 7"));
    }
}
