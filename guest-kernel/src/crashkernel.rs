//! `crashkernel=SIZE[@OFFSET]` and the choice of the reserved region: the
//! code lives in `guest_abi::crashkernel`, so that the VMM, which loads the
//! capture kernel into the region before the guest boots, computes the same
//! region with the same code.

pub use guest_abi::crashkernel::{
    memparse, parse, place, reserve, CrashKernelSpec, CRASH_ALIGN, PLACE_LIMIT,
};

// The guest's boot page tables map exactly what the shared placement
// assumes.
const _: () = assert!(PLACE_LIMIT == crate::x86::paging::MAPPED_BYTES);
