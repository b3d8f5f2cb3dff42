//! The pv_vmx command sequences (`guest_abi::pv::vmx`), over any register
//! accessor, so they are host-tested against the VMM's device model.
//!
//! Boot: VMXON on the CPU's region, VMPTRLD its VMCS, a few VMWRITEs (so a
//! VMCLEAR has something to flush). Crash path: VMCLEAR then VMXOFF, as
//! Linux's `cpu_emergency_disable_virtualization` does.

use guest_abi::pv::vmx::{cmd, status, ARG_HI, ARG_LO, COMMAND, FIELD, STATUS};

pub use crate::pvdev::PvRegs as PvVmxRegs;

/// Which step of enabling VMX failed, with the device status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxEnableError {
    /// VMXON.
    Vmxon(u32),
    /// VMPTRLD.
    Vmptrld(u32),
    /// VMWRITE of the field.
    Vmwrite(u32, u32),
}

/// Executes `command` with operand `arg`; returns the status.
pub fn command(r: &mut impl PvVmxRegs, command: u32, arg: u64) -> u32 {
    r.write(ARG_LO, arg as u32);
    r.write(ARG_HI, (arg >> 32) as u32);
    r.write(COMMAND, command);
    r.read(STATUS)
}

/// VMWRITE `value` to `field`; returns the status.
pub fn vmwrite(r: &mut impl PvVmxRegs, field: u32, value: u64) -> u32 {
    r.write(FIELD, field);
    command(r, cmd::VMWRITE, value)
}

/// VMXON at `vmxon`, VMPTRLD `vmcs`, then the VMWRITEs. Both regions must
/// already start with the revision identifier.
pub fn enable(
    r: &mut impl PvVmxRegs,
    vmxon: u64,
    vmcs: u64,
    fields: &[(u32, u64)],
) -> Result<(), VmxEnableError> {
    match command(r, cmd::VMXON, vmxon) {
        status::SUCCEED => {}
        s => return Err(VmxEnableError::Vmxon(s)),
    }
    match command(r, cmd::VMPTRLD, vmcs) {
        status::SUCCEED => {}
        s => return Err(VmxEnableError::Vmptrld(s)),
    }
    for &(f, v) in fields {
        match vmwrite(r, f, v) {
            status::SUCCEED => {}
            s => return Err(VmxEnableError::Vmwrite(f, s)),
        }
    }
    Ok(())
}

/// VMCLEAR `vmcs` (its contents reach memory), then VMXOFF. Returns both
/// statuses.
pub fn teardown(r: &mut impl PvVmxRegs, vmcs: u64) -> (u32, u32) {
    let clear = command(r, cmd::VMCLEAR, vmcs);
    let off = command(r, cmd::VMXOFF, 0);
    (clear, off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::{Access, BusDevice};
    use devices::guest_ram::{GuestRam, GuestRamError};
    use devices::pv_vmx::PvVmx;
    use guest_abi::pv::vmx::{field, VmcsHeader, REVISION, VMCS_REVISION};
    use std::sync::{Arc, Mutex};

    const RAM: u64 = 0x10_0000;

    struct Ram(Mutex<Vec<u8>>);

    impl GuestRam for Ram {
        fn contains(&self, gpa: u64, len: usize) -> bool {
            gpa.checked_add(len as u64).is_some_and(|e| e <= RAM)
        }
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestRamError> {
            assert!(self.contains(gpa, buf.len()));
            let m = self.0.lock().unwrap();
            buf.copy_from_slice(&m[gpa as usize..gpa as usize + buf.len()]);
            Ok(())
        }
        fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), GuestRamError> {
            assert!(self.contains(gpa, buf.len()));
            let mut m = self.0.lock().unwrap();
            m[gpa as usize..gpa as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
    }

    struct Regs<'a>(&'a mut PvVmx);

    impl PvVmxRegs for Regs<'_> {
        fn read(&mut self, offset: u64) -> u32 {
            let mut d = [0u8; 4];
            let a = Access {
                base: guest_abi::ports::PV_VMX as u64,
                offset,
                vcpu: 0,
            };
            self.0.read(a, &mut d);
            u32::from_le_bytes(d)
        }
        fn write(&mut self, offset: u64, value: u32) {
            let a = Access {
                base: guest_abi::ports::PV_VMX as u64,
                offset,
                vcpu: 0,
            };
            self.0.write(a, &value.to_le_bytes());
        }
    }

    fn setup() -> (Arc<Ram>, PvVmx) {
        let ram = Arc::new(Ram(Mutex::new(vec![0; RAM as usize])));
        let dev = PvVmx::new(1, ram.clone()).unwrap();
        (ram, dev)
    }

    fn put_revision(ram: &Ram, at: u64, rev: u32) {
        ram.write(at, &rev.to_le_bytes()).unwrap();
    }

    const VMXON: u64 = 0x1000;
    const VMCS: u64 = 0x2000;
    const FIELDS: [(u32, u64); 2] = [(field::GUEST_RIP, 0x10_2345), (field::HOST_RSP, 0x20_0000)];

    #[test]
    fn boot_then_crash_teardown_flushes_the_vmcs() {
        let (ram, mut dev) = setup();
        let rev = Regs(&mut dev).read(REVISION);
        assert_eq!(rev, VMCS_REVISION);
        put_revision(&ram, VMXON, rev);
        put_revision(&ram, VMCS, rev);
        enable(&mut Regs(&mut dev), VMXON, VMCS, &FIELDS).unwrap();
        let s = dev.snapshot()[0];
        assert!(s.vmx_on && s.vmcs_loaded);
        assert_eq!(s.current_vmcs, Some(VMCS));
        assert_eq!(
            teardown(&mut Regs(&mut dev), VMCS),
            (status::SUCCEED, status::SUCCEED)
        );
        let s = dev.snapshot()[0];
        assert!(!s.vmx_on && !s.vmcs_loaded && s.vmcs_flushed);
        assert_eq!(s.last_cleared_vmcs, Some(VMCS));
        // The VMCS region now holds the two fields written at boot.
        let mut h = [0u8; 16];
        ram.read(VMCS, &mut h).unwrap();
        let count = u32::from_le_bytes(h[8..12].try_into().unwrap());
        assert_eq!(
            u32::from_le_bytes(h[0..4].try_into().unwrap()),
            VMCS_REVISION
        );
        assert!(count >= 2, "{count} records");
        let _ = VmcsHeader::default();
    }

    #[test]
    fn vmxoff_without_vmclear_loses_the_vmcs() {
        // What a CPU stopped without the crash callback leaves behind.
        let (ram, mut dev) = setup();
        put_revision(&ram, VMXON, VMCS_REVISION);
        put_revision(&ram, VMCS, VMCS_REVISION);
        enable(&mut Regs(&mut dev), VMXON, VMCS, &FIELDS).unwrap();
        assert_eq!(
            command(&mut Regs(&mut dev), cmd::VMXOFF, 0),
            status::SUCCEED
        );
        let s = dev.snapshot()[0];
        assert!(!s.vmx_on && !s.vmcs_flushed);
    }

    #[test]
    fn enable_reports_the_failing_step() {
        let (ram, mut dev) = setup();
        // No revision in the VMXON region: VMfailInvalid.
        assert_eq!(
            enable(&mut Regs(&mut dev), VMXON, VMCS, &FIELDS),
            Err(VmxEnableError::Vmxon(status::FAIL_INVALID))
        );
        put_revision(&ram, VMXON, VMCS_REVISION);
        // VMCS without its revision: VMPTRLD fails (VMfailValid... or
        // invalid, per the model); either way the step is named.
        assert!(matches!(
            enable(&mut Regs(&mut dev), VMXON, VMCS, &FIELDS),
            Err(VmxEnableError::Vmptrld(_))
        ));
    }
}
