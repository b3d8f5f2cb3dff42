//! Everything the guest finds at its first instruction: the address map,
//! the PVH boot information and the ACPI tables.

pub mod acpi;
pub mod kexec;
pub mod layout;
pub mod pvh;
