//! Queries on the PVH memory map (`hvm_memmap_table_entry` array); shared
//! with the VMM through `guest_abi::crashkernel`.

pub use guest_abi::crashkernel::{range_is_ram, LOW_RAM_END};
