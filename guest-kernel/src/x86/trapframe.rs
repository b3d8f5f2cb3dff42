//! The register frame every trap entry stub builds.

/// The interrupted context, as laid out on the IST stack by the CPU and the
/// entry stub. The fields match Linux's `struct pt_regs` (and so the first
/// 21 registers of `elf_prstatus.pr_reg`), except that Linux's `orig_rax` is
/// split into the `vector` the stub pushed and the `error_code` (pushed by
/// the CPU, or 0), which sits where `orig_rax` does relative to `rip`.
///
/// To fill `pr_reg`: r15..rdi as is, `orig_rax` = `error_code` (what Linux
/// stores for an exception), then rip, cs, rflags, rsp, ss.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    /// The IDT vector (pushed by the stub).
    pub vector: u64,
    /// The exception error code, 0 for vectors without one.
    pub error_code: u64,
    /// Pushed by the CPU: the interrupted instruction pointer.
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Bytes of a [`TrapFrame`] (22 quadwords).
pub const TRAP_FRAME_SIZE: usize = 22 * 8;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_matches_the_entry_stub() {
        assert_eq!(size_of::<TrapFrame>(), TRAP_FRAME_SIZE);
        // The stub pushes rdi first and r15 last.
        assert_eq!(offset_of!(TrapFrame, r15), 0);
        assert_eq!(offset_of!(TrapFrame, rdi), 14 * 8);
        assert_eq!(offset_of!(TrapFrame, vector), 15 * 8);
        // pt_regs: orig_rax at 15*8 is our error code's place relative to rip.
        assert_eq!(offset_of!(TrapFrame, error_code), 16 * 8);
        assert_eq!(offset_of!(TrapFrame, rip), 17 * 8);
        assert_eq!(offset_of!(TrapFrame, ss), 21 * 8);
        // A 16-byte aligned IST top minus the frame stays 16-byte aligned.
        assert_eq!(TRAP_FRAME_SIZE % 16, 0);
    }
}
