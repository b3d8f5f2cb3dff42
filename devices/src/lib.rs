//! Emulated devices, one per file, behind the small [`bus::BusDevice`] trait.
//!
//! Devices hold no file descriptors. What they need from the outside world
//! is injected: an interrupt line as a `vm_superio::Trigger`, and VM-level
//! events (poweroff, reset, pvpanic...) through an [`EventSink`]. That keeps
//! every device unit-testable with fakes, and keeps this crate independent
//! of the `vmm` crate.

pub mod bus;
pub mod guest_ram;
pub mod pvpanic;

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
}

/// Where devices send [`VmEvent`]s. The VMM's implementation queues the event
/// and wakes its main loop; unit tests collect events in a vector.
pub trait EventSink: Send + Sync {
    /// Reports `event`. Must not block on the guest or on other devices.
    fn emit(&self, event: VmEvent);
}
