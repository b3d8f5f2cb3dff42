//! The crash-note contents of one CPU: `elf_prstatus` from a trap frame.

use guest_abi::elfnote::{reg, ElfPrstatus};

use crate::x86::trapframe::TrapFrame;

/// Segment state that is not in a [`TrapFrame`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentState {
    /// IA32_FS_BASE.
    pub fs_base: u64,
    /// IA32_GS_BASE (the per-CPU pointer in this kernel).
    pub gs_base: u64,
    /// DS selector.
    pub ds: u64,
    /// ES selector.
    pub es: u64,
    /// FS selector.
    pub fs: u64,
    /// GS selector.
    pub gs: u64,
}

/// `elf_prstatus` for CPU `cpu` interrupted at `frame`, as Linux's
/// `crash_save_cpu` + `elf_core_copy_regs` build it: `pr_pid` = cpu + 1 (so
/// gdb shows one thread per CPU), `pr_reg` in `user_regs_struct` order with
/// `orig_rax` = the error code slot.
pub fn prstatus_from_frame(frame: &TrapFrame, seg: &SegmentState, cpu: usize) -> ElfPrstatus {
    let mut st = ElfPrstatus::zeroed();
    st.pr_pid = cpu as i32 + 1;
    let r = &mut st.pr_reg;
    r[reg::R15] = frame.r15;
    r[reg::R14] = frame.r14;
    r[reg::R13] = frame.r13;
    r[reg::R12] = frame.r12;
    r[reg::RBP] = frame.rbp;
    r[reg::RBX] = frame.rbx;
    r[reg::R11] = frame.r11;
    r[reg::R10] = frame.r10;
    r[reg::R9] = frame.r9;
    r[reg::R8] = frame.r8;
    r[reg::RAX] = frame.rax;
    r[reg::RCX] = frame.rcx;
    r[reg::RDX] = frame.rdx;
    r[reg::RSI] = frame.rsi;
    r[reg::RDI] = frame.rdi;
    r[reg::ORIG_RAX] = frame.error_code;
    r[reg::RIP] = frame.rip;
    r[reg::CS] = frame.cs;
    r[reg::EFLAGS] = frame.rflags;
    r[reg::RSP] = frame.rsp;
    r[reg::SS] = frame.ss;
    r[reg::FS_BASE] = seg.fs_base;
    r[reg::GS_BASE] = seg.gs_base;
    r[reg::DS] = seg.ds;
    r[reg::ES] = seg.es;
    r[reg::FS] = seg.fs;
    r[reg::GS] = seg.gs;
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::elfnote::{CrashNote, CRASH_NOTE_PRSTATUS_OFFSET};

    #[test]
    fn frame_fields_land_in_pr_reg() {
        let f = TrapFrame {
            r15: 15,
            rax: 0xa,
            rdi: 0xd1,
            error_code: 0xe,
            rip: 0x10_2345,
            cs: 8,
            rflags: 0x46,
            rsp: 0x20_0000,
            ss: 0x10,
            ..Default::default()
        };
        let seg = SegmentState {
            gs_base: 0x30_0000,
            ds: 0x10,
            ..Default::default()
        };
        let st = prstatus_from_frame(&f, &seg, 2);
        assert_eq!(st.pr_pid, 3);
        assert_eq!(st.pr_reg[reg::R15], 15);
        assert_eq!(st.pr_reg[reg::RAX], 0xa);
        assert_eq!(st.pr_reg[reg::RDI], 0xd1);
        assert_eq!(st.pr_reg[reg::ORIG_RAX], 0xe);
        assert_eq!(st.rip(), 0x10_2345);
        assert_eq!(st.cs(), 8);
        assert_eq!(st.pr_reg[reg::EFLAGS], 0x46);
        assert_eq!(st.pr_reg[reg::RSP], 0x20_0000);
        assert_eq!(st.pr_reg[reg::SS], 0x10);
        assert_eq!(st.pr_reg[reg::GS_BASE], 0x30_0000);
        assert_eq!(st.pr_reg[reg::DS], 0x10);
        let mut note = CrashNote::empty();
        note.write(&st);
        let back = ElfPrstatus::from_bytes(&note.bytes[CRASH_NOTE_PRSTATUS_OFFSET..]).unwrap();
        assert_eq!(back, st);
    }
}
