//! Host-testable parts of the guest kernel.
#![cfg_attr(not(test), no_std)]
