//! Emulated devices, one per file, behind the small [`bus::BusDevice`] trait.
//!
//! Devices hold no file descriptors. What they need from the outside world
//! is injected: an interrupt line as a `vm_superio::Trigger`, and VM-level
//! events (poweroff, reset, pvpanic...) through an [`EventSink`]. That keeps
//! every device unit-testable with fakes, and keeps this crate independent
//! of the `vmm` crate.

pub mod acpi_pm;
pub mod bus;
pub mod crash_control;
pub mod guest_ram;
pub mod kdump;
pub mod platform;
pub mod pm_timer;
mod pv_regs;
pub mod pv_vmx;
pub mod pvpanic;
pub mod reset;
pub mod serial;
pub mod vmcoreinfo;

#[cfg(test)]
pub(crate) mod test_utils {
    //! Fakes shared by the devices' unit tests.
    use super::{EventSink, VmEvent};
    use std::sync::Mutex;

    /// Collects the events a device emits, as the VMM's queue would.
    #[derive(Debug, Default)]
    pub(crate) struct Recorder(pub Mutex<Vec<VmEvent>>);

    impl EventSink for Recorder {
        fn emit(&self, event: VmEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Recorder {
        /// Takes every event seen so far.
        pub(crate) fn take(&self) -> Vec<VmEvent> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    /// Where the VMM's MMIO hole starts and ends (`vmm::boot::layout`).
    pub(crate) const MMIO_HOLE: (u64, u64) = (0xc000_0000, 0x1_0000_0000);
    /// Size of each RAM region of [`ram_around_mmio_hole`].
    pub(crate) const EDGE_RAM: usize = 0x1_0000;

    /// Guest RAM shaped like a big VM's, without its size: 64 KiB at 0,
    /// 64 KiB ending at the MMIO hole, and 64 KiB right after it (the end
    /// of RAM).
    pub(crate) fn ram_around_mmio_hole() -> vm_memory::GuestMemoryMmap {
        use vm_memory::GuestAddress;
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), EDGE_RAM),
            (GuestAddress(MMIO_HOLE.0 - EDGE_RAM as u64), EDGE_RAM),
            (GuestAddress(MMIO_HOLE.1), EDGE_RAM),
        ])
        .expect("small anonymous mappings")
    }
}

pub use bus::{Access, Bus, BusDevice, BusError, SharedDevice, VcpuId};

/// Something a device reports to the VMM, tagged with the vCPU that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest asked to power off (ACPI S5).
    Poweroff {
        /// The vCPU that wrote the request.
        vcpu: VcpuId,
    },
    /// The guest asked for a reset (0xCF9, i8042 or ACPI RESET_REG).
    Reset {
        /// The vCPU that wrote the request.
        vcpu: VcpuId,
    },
    /// The guest reported a pvpanic event (one per set and supported bit).
    Pvpanic {
        /// What the guest reported.
        event: pvpanic::PvpanicEvent,
        /// The vCPU that wrote the register.
        vcpu: VcpuId,
    },
    /// The guest acknowledged a step of an injected crash (crash-control ACK).
    CrashAck {
        /// The vCPU that wrote the ACK.
        vcpu: VcpuId,
        /// The step (`guest_abi::pv::crash::ack`, or guest-defined).
        step: u32,
    },
    /// The guest registered (or, with `None`, unregistered) its VMCOREINFO note.
    Vmcoreinfo {
        /// The vCPU that committed the registration.
        vcpu: VcpuId,
        /// GPA and size of the note, `None` when unregistered.
        note: Option<(u64, u32)>,
    },
    /// The first kernel is about to jump to the capture kernel (kdump
    /// KEXEC_HANDOVER). The guest keeps running.
    KexecHandover {
        /// The panicking vCPU, which makes the jump.
        vcpu: VcpuId,
        /// Capture kernel entry GPA.
        entry: u64,
        /// GPA of the ELF core header the first kernel built.
        elfcorehdr: u64,
    },
    /// The capture kernel validated the ELF core header: the VMM may write
    /// the vmcore from it (kdump VMCORE_READY). The header is guest data:
    /// parse it as hostile input.
    VmcoreReady {
        /// The vCPU that reported it.
        vcpu: VcpuId,
        /// GPA of the ELF core header.
        elfcorehdr: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// kdump gave up (kdump CAPTURE_FAILED).
    CaptureFailed {
        /// The vCPU that reported it.
        vcpu: VcpuId,
        /// Why.
        reason: kdump::CaptureFailure,
        /// The guest's reason-specific detail (0 if none).
        detail: u64,
    },
}

/// Where devices send [`VmEvent`]s. The VMM's implementation queues the event
/// and wakes its main loop; unit tests collect events in a vector.
pub trait EventSink: Send + Sync {
    /// Reports `event`. Must not block on the guest or on other devices.
    fn emit(&self, event: VmEvent);
}
