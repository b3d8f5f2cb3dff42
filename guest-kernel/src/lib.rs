//! Host-testable parts of the guest kernel.
//!
//! Everything here is plain logic with no hardware access, so it is unit-tested
//! on the host (`cargo test -p guest-kernel --lib`) and linked unchanged into
//! the kernel binary: number formatting, the command-line parser, ACPI table
//! parsing, memory-map queries, the console spinlock, and the encodings of page tables, GDT/TSS/IDT
//! descriptors and the trap frame. For the panic path: the step order per
//! policy (`panic_policy`), the kmsg ring (`kmsg`), notifier ordering
//! (`notifier`), crash-note contents (`crashnote`), `crashkernel=`
//! placement (`crashkernel`), the VMCOREINFO note (`vmcoreinfo`), the
//! elfcorehdr (`elfcorehdr`), the kexec descriptor checks (`kexec`), the
//! capture kernel's elfcorehdr and note checks (`capture`) and the pv device register sequences (`pvdev`,
//! `pvvmx`, tested against the VMM's device models).
//!
//! The kernel itself (`main.rs` and the modules it declares: `boot`, `arch/`,
//! `console`, `platform`, `smp`, `time`, `power`, `mem`, `panic`, `crash`,
//! `dump`, `kexec_jump`, `kdump`, `lkdtm`, `pv`, `pvpanic`) runs at CPL0 and
//! may not call `core::fmt` or other precompiled SSE-using code (DESIGN.md
//! section 2). Code in this library follows the same rule: no `core::fmt`,
//! no `str::from_utf8`, and `get()` instead of indexing so that no panic path
//! (which would link core's formatting code) is emitted.
//!
//! Errors are plain enums with a `&'static str` description rather than
//! `thiserror` types: a derived `Display` is `core::fmt`, which must not run
//! here.
#![cfg_attr(not(test), no_std)]

pub mod acpi;
pub mod capture;
pub mod cmdline;
pub mod crashkernel;
pub mod crashnote;
pub mod elfcorehdr;
pub mod fmt;
pub mod kexec;
pub mod kmsg;
pub mod memmap;
pub mod notifier;
pub mod panic_policy;
pub mod pvdev;
pub mod pvvmx;
pub mod sync;
pub mod vmcoreinfo;
pub mod x86;

pub use guest_abi::MAX_CPUS;
