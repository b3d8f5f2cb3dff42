pub const GUEST_KERNEL: &[u8] = include_bytes!(env!("GUEST_KERNEL_PATH"));
