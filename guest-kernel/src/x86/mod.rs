//! x86-64 data structures the kernel builds, as plain const-evaluable
//! encodings (the hardware-touching code that loads them lives in `arch/`).

pub mod descriptors;
pub mod paging;
pub mod trapframe;

/// Fixed physical addresses of the kernel image that const code depends on.
///
/// The linker script places these sections; `boot.rs` exports the values as
/// absolute symbols and the linker script `ASSERT`s they match, so Rust and
/// the link can never disagree.
pub mod layout {
    /// The boot page tables: the first pages of the image.
    pub const PAGE_TABLES: u64 = guest_abi::KERNEL_LOAD_ADDR;
    /// The 256 trap entry stubs, [`TRAP_STUB_SIZE`] bytes apart, right after
    /// the page tables. A fixed address lets the IDT be built at compile time.
    pub const TRAP_STUBS: u64 = PAGE_TABLES + super::paging::BOOT_PAGE_TABLE_BYTES as u64;
    /// Bytes per trap stub (each is `.balign`ed to this).
    pub const TRAP_STUB_SIZE: u64 = 16;
}
