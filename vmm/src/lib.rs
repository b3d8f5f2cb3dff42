//! A small KVM VMM on rust-vmm crates.
//!
//! [`Vmm::new`] builds a VM from a [`VmConfig`]: guest memory, the kernel
//! (PVH boot), ACPI tables, legacy devices and one thread per vCPU.
//! [`Vmm::run`] drives it until the guest powers off, faults, resets (with
//! [`OnReboot::Exit`]) or a [`VmmHandle`] stops it.
//!
//! ```no_run
//! use vmm::{Vmm, VmConfig, ExitReason};
//! let vmm = Vmm::new(VmConfig { cpus: 2, ..VmConfig::default() })?;
//! let handle = vmm.handle(); // Send + Sync: stop/pause/resume from anywhere
//! let reason = std::thread::spawn(move || vmm.run()).join().unwrap()?;
//! assert_eq!(reason, ExitReason::Poweroff);
//! # Ok::<(), vmm::Error>(())
//! ```

pub mod boot;
pub mod cli;
pub mod coalesced_pio;
pub mod config;
pub mod control;
pub mod cpuid;
pub mod ctl;
pub mod device_manager;
pub mod dump;
pub mod event_loop;
pub mod guest_fault;
pub mod kdump;
pub mod pvpanic_log;
pub mod qmp_backend;
pub mod runtime;
pub mod scenario;
pub mod seccomp;
pub mod vcpu;
pub mod vm;
pub mod vmcore_cmd;
pub mod vmcore_hooks;

pub use config::{parse_size, Kernel, OnReboot, SerialOutput, VmConfig, DEFAULT_PANIC_ACTION};
pub use control::{ControlError, Notification, RunState, VcpuInfo, VmStatus, VmmHandle};
pub use dump::{DumpError, DumpRequest, DumpSources, DumpState, DumpStatus};
pub use event_loop::block_exit_signals;
pub use runtime::{exit_code, Error, ExitReason, Vmm};

/// The guest kernel built with this crate (a PVH ELF).
pub const GUEST_KERNEL: &[u8] = include_bytes!(env!("GUEST_KERNEL_PATH"));

/// Where the embedded guest kernel was built (for gdb and tests).
pub const GUEST_KERNEL_PATH: &str = env!("GUEST_KERNEL_PATH");

// The library contract: a Vmm can be moved to the thread that runs it, and
// its handle used from any thread.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<Vmm>();
    send_sync::<VmmHandle>();
    send::<ExitReason>();
    send_sync::<Error>();
};
