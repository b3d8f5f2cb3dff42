//! The interface between the guest kernel and the VMM.
//!
//! Everything both sides must agree on lives here, so neither hard-codes the
//! other's numbers: I/O ports, the PVH boot-info layout, and CPUID leaves the
//! VMM fills for the guest. The crate is `no_std` and has no dependencies, so
//! the guest (built without SSE, at CPL0) and the VMM (a normal host program)
//! compile the same definitions.
//!
//! Layouts are `#[repr(C)]` and their sizes and offsets are unit-tested
//! against the published specifications.

#![no_std]

pub mod cmdline;
pub mod crashkernel;
pub mod elfnote;
pub mod kexec;
pub mod ports;
pub mod pv;
pub mod pvh;

/// The most CPUs the guest kernel brings up. The VMM may create more vCPUs
/// (up to what KVM allows); the guest then reports and ignores the extra ones.
pub const MAX_CPUS: usize = 64;

/// The guest kernel's physical load address (its text starts here).
pub const KERNEL_LOAD_ADDR: u64 = 0x10_0000;

/// CPUID leaves the VMM provides to the guest.
pub mod cpuid {
    /// Hypervisor timing leaf (the VMware convention, also used by Cloud
    /// Hypervisor): EAX = TSC frequency in kHz, EBX = LAPIC bus frequency in
    /// kHz. Present when CPUID 0x4000_0000 EAX is at least this leaf.
    pub const TSC_KHZ_LEAF: u32 = 0x4000_0010;
    /// The base of the hypervisor CPUID range; EAX holds the highest leaf.
    pub const HYPERVISOR_BASE_LEAF: u32 = 0x4000_0000;
}

/// The guest kernel's boot contract that the VMM and tests rely on.
pub mod boot {
    /// The page the guest copies its AP real-mode trampoline to (SIPI vector
    /// 0x08). The VMM must list it as RAM in the PVH memmap and put nothing
    /// there.
    pub const AP_TRAMPOLINE_ADDR: u64 = 0x8000;
    /// Length of the trampoline page.
    pub const AP_TRAMPOLINE_LEN: u64 = 0x1000;
    /// Serial line each CPU prints: `CPU <n> online (apic <id>)`.
    pub const CPU_ONLINE_PREFIX: &str = "CPU ";
    /// Serial line the boot CPU prints once all CPUs are up (or the wait
    /// timed out): `CPUs online: <online>/<expected>`.
    pub const SUMMARY_PREFIX: &str = "CPUs online: ";
    /// Command-line parameter choosing what the boot CPU does after the
    /// summary line: `post_boot=idle` (default), `poweroff` or `reboot`.
    pub const POST_BOOT_PARAM: &str = "post_boot";
}
