//! The per-vCPU state the VMM hands to the writer, and its note encodings.

use guest_abi::elfnote::{
    reg, vmx_flags, ElfPrstatus, PvpanicLogEntry, QemuCpuSegment, QemuCpuState, VmxStateNote,
    QEMU_CPUSTATE_SIZE, QEMU_CPUSTATE_VERSION, VMX_NOTE_VERSION, VMX_NO_ADDR,
};
use serde::Serialize;

/// A segment register as KVM reports it (`kvm_segment`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit (byte granular, as KVM gives it).
    pub limit: u32,
    /// Access rights in descriptor layout, see [`Segment::flags_from_parts`].
    pub flags: u32,
}

impl Segment {
    /// Pack `kvm_segment`'s fields into QEMU's descriptor-layout `flags`:
    /// type at bit 8, S 12, DPL 13, P 15, AVL 20, L 21, D/B 22, G 23.
    #[allow(clippy::too_many_arguments)]
    pub const fn flags_from_parts(
        type_: u8,
        s: bool,
        dpl: u8,
        present: bool,
        avl: bool,
        l: bool,
        db: bool,
        g: bool,
    ) -> u32 {
        ((type_ as u32 & 0xf) << 8)
            | ((s as u32) << 12)
            | ((dpl as u32 & 3) << 13)
            | ((present as u32) << 15)
            | ((avl as u32) << 20)
            | ((l as u32) << 21)
            | ((db as u32) << 22)
            | ((g as u32) << 23)
    }

    /// From KVM's `kvm_segment` (an unusable segment reads as not present,
    /// as in QEMU).
    pub fn from_kvm(k: &kvm_bindings::kvm_segment) -> Self {
        Segment {
            selector: k.selector,
            base: k.base,
            limit: k.limit,
            flags: Self::flags_from_parts(
                k.type_,
                k.s != 0,
                k.dpl,
                k.present != 0 && k.unusable == 0,
                k.avl != 0,
                k.l != 0,
                k.db != 0,
                k.g != 0,
            ),
        }
    }

    fn to_qemu(self) -> QemuCpuSegment {
        QemuCpuSegment {
            selector: self.selector as u32,
            limit: self.limit,
            flags: self.flags,
            pad: 0,
            base: self.base,
        }
    }
}

/// GDTR or IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DescriptorTable {
    /// Linear base.
    pub base: u64,
    /// Limit.
    pub limit: u16,
}

/// One vCPU's registers at dump time (from KVM REGS, SREGS and MSRs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct CpuState {
    /// vCPU index; written as `pr_pid = vcpu + 1`.
    pub vcpu: u32,
    /// Local APIC ID.
    pub apic_id: u32,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub ldt: Segment,
    pub tr: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    /// IA32_FS_BASE.
    pub fs_base: u64,
    /// IA32_GS_BASE.
    pub gs_base: u64,
    /// IA32_KERNEL_GS_BASE.
    pub kernel_gs_base: u64,
}

impl CpuState {
    /// Fill from KVM_GET_REGS and KVM_GET_SREGS plus the
    /// IA32_KERNEL_GS_BASE MSR. FS/GS base come from the segment caches
    /// (equal to the MSRs in 64-bit mode).
    pub fn from_kvm(
        vcpu: u32,
        apic_id: u32,
        regs: &kvm_bindings::kvm_regs,
        sregs: &kvm_bindings::kvm_sregs,
        kernel_gs_base: u64,
    ) -> Self {
        CpuState {
            vcpu,
            apic_id,
            rax: regs.rax,
            rbx: regs.rbx,
            rcx: regs.rcx,
            rdx: regs.rdx,
            rsi: regs.rsi,
            rdi: regs.rdi,
            rsp: regs.rsp,
            rbp: regs.rbp,
            r8: regs.r8,
            r9: regs.r9,
            r10: regs.r10,
            r11: regs.r11,
            r12: regs.r12,
            r13: regs.r13,
            r14: regs.r14,
            r15: regs.r15,
            rip: regs.rip,
            rflags: regs.rflags,
            cs: Segment::from_kvm(&sregs.cs),
            ds: Segment::from_kvm(&sregs.ds),
            es: Segment::from_kvm(&sregs.es),
            fs: Segment::from_kvm(&sregs.fs),
            gs: Segment::from_kvm(&sregs.gs),
            ss: Segment::from_kvm(&sregs.ss),
            ldt: Segment::from_kvm(&sregs.ldt),
            tr: Segment::from_kvm(&sregs.tr),
            gdt: DescriptorTable {
                base: sregs.gdt.base,
                limit: sregs.gdt.limit,
            },
            idt: DescriptorTable {
                base: sregs.idt.base,
                limit: sregs.idt.limit,
            },
            cr0: sregs.cr0,
            cr2: sregs.cr2,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            cr8: sregs.cr8,
            efer: sregs.efer,
            fs_base: sregs.fs.base,
            gs_base: sregs.gs.base,
            kernel_gs_base,
        }
    }

    /// The `elf_prstatus` gdb reads: `pr_pid = vcpu + 1`, `orig_rax = -1`
    /// (not in a syscall).
    pub fn to_prstatus(&self) -> ElfPrstatus {
        let mut st = ElfPrstatus::zeroed();
        st.pr_pid = self.vcpu.wrapping_add(1) as i32;
        let r = &mut st.pr_reg;
        r[reg::R15] = self.r15;
        r[reg::R14] = self.r14;
        r[reg::R13] = self.r13;
        r[reg::R12] = self.r12;
        r[reg::RBP] = self.rbp;
        r[reg::RBX] = self.rbx;
        r[reg::R11] = self.r11;
        r[reg::R10] = self.r10;
        r[reg::R9] = self.r9;
        r[reg::R8] = self.r8;
        r[reg::RAX] = self.rax;
        r[reg::RCX] = self.rcx;
        r[reg::RDX] = self.rdx;
        r[reg::RSI] = self.rsi;
        r[reg::RDI] = self.rdi;
        r[reg::ORIG_RAX] = u64::MAX;
        r[reg::RIP] = self.rip;
        r[reg::CS] = self.cs.selector as u64;
        r[reg::EFLAGS] = self.rflags;
        r[reg::RSP] = self.rsp;
        r[reg::SS] = self.ss.selector as u64;
        r[reg::FS_BASE] = self.fs_base;
        r[reg::GS_BASE] = self.gs_base;
        r[reg::DS] = self.ds.selector as u64;
        r[reg::ES] = self.es.selector as u64;
        r[reg::FS] = self.fs.selector as u64;
        r[reg::GS] = self.gs.selector as u64;
        st
    }

    /// QEMU's `QEMUCPUState` (version 1, with `kernel_gs_base`).
    pub fn to_qemu(&self) -> QemuCpuState {
        QemuCpuState {
            version: QEMU_CPUSTATE_VERSION,
            size: QEMU_CPUSTATE_SIZE as u32,
            rax: self.rax,
            rbx: self.rbx,
            rcx: self.rcx,
            rdx: self.rdx,
            rsi: self.rsi,
            rdi: self.rdi,
            rsp: self.rsp,
            rbp: self.rbp,
            r8: self.r8,
            r9: self.r9,
            r10: self.r10,
            r11: self.r11,
            r12: self.r12,
            r13: self.r13,
            r14: self.r14,
            r15: self.r15,
            rip: self.rip,
            rflags: self.rflags,
            cs: self.cs.to_qemu(),
            ds: self.ds.to_qemu(),
            es: self.es.to_qemu(),
            fs: self.fs.to_qemu(),
            gs: self.gs.to_qemu(),
            ss: self.ss.to_qemu(),
            ldt: self.ldt.to_qemu(),
            tr: self.tr.to_qemu(),
            gdt: QemuCpuSegment {
                limit: self.gdt.limit as u32,
                base: self.gdt.base,
                ..Default::default()
            },
            idt: QemuCpuSegment {
                limit: self.idt.limit as u32,
                base: self.idt.base,
                ..Default::default()
            },
            cr: [self.cr0, 0, self.cr2, self.cr3, self.cr4],
            kernel_gs_base: self.kernel_gs_base,
        }
    }
}

/// One vCPU's VMX state as the VMM saw it (encoded as a `VMMVMX` note).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VmxState {
    /// vCPU index.
    pub vcpu: u32,
    /// In VMX operation.
    pub vmx_on: bool,
    /// A VMCS is current (loaded, not cleared).
    pub vmcs_loaded: bool,
    /// No VMCS contents are held only in the (modelled) CPU.
    pub vmcs_flushed: bool,
    /// The state comes from the paravirtual model, not hardware.
    pub model_not_hardware: bool,
    /// GPA of the VMXON region.
    pub vmxon_region: Option<u64>,
    /// GPA of the current VMCS.
    pub current_vmcs: Option<u64>,
    /// GPA of the VMCS last written back by VMCLEAR.
    pub last_cleared_vmcs: Option<u64>,
}

fn addr(a: Option<u64>) -> u64 {
    a.unwrap_or(VMX_NO_ADDR)
}

fn opt(a: u64) -> Option<u64> {
    (a != VMX_NO_ADDR).then_some(a)
}

impl VmxState {
    /// Encode as the note descriptor.
    pub fn to_note(&self) -> VmxStateNote {
        let mut flags = 0;
        if self.vmx_on {
            flags |= vmx_flags::VMX_ON;
        }
        if self.vmcs_loaded {
            flags |= vmx_flags::VMCS_LOADED;
        }
        if self.vmcs_flushed {
            flags |= vmx_flags::VMCS_FLUSHED;
        }
        if self.model_not_hardware {
            flags |= vmx_flags::MODEL_NOT_HARDWARE;
        }
        VmxStateNote {
            version: VMX_NOTE_VERSION,
            vcpu: self.vcpu,
            flags,
            reserved: 0,
            vmxon_region: addr(self.vmxon_region),
            current_vmcs: addr(self.current_vmcs),
            last_cleared_vmcs: addr(self.last_cleared_vmcs),
        }
    }

    /// Decode a note descriptor.
    pub fn from_note(n: &VmxStateNote) -> Self {
        VmxState {
            vcpu: n.vcpu,
            vmx_on: n.flags & vmx_flags::VMX_ON != 0,
            vmcs_loaded: n.flags & vmx_flags::VMCS_LOADED != 0,
            vmcs_flushed: n.flags & vmx_flags::VMCS_FLUSHED != 0,
            model_not_hardware: n.flags & vmx_flags::MODEL_NOT_HARDWARE != 0,
            vmxon_region: opt(n.vmxon_region),
            current_vmcs: opt(n.current_vmcs),
            last_cleared_vmcs: opt(n.last_cleared_vmcs),
        }
    }
}

/// The pvpanic event log (a `VMMPVPANIC` note).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PvpanicLog {
    /// Events, oldest first.
    pub entries: Vec<PvpanicLogEntry>,
    /// Events dropped because the VMM's log was full.
    pub dropped: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_state_round_trips_through_note() {
        let s = VmxState {
            vcpu: 3,
            vmx_on: true,
            vmcs_loaded: true,
            vmcs_flushed: false,
            model_not_hardware: true,
            vmxon_region: Some(0x1000),
            current_vmcs: Some(0x2000),
            last_cleared_vmcs: None,
        };
        let n = s.to_note();
        assert_eq!(n.flags, 0b1011);
        assert_eq!(n.last_cleared_vmcs, u64::MAX);
        assert_eq!(VmxState::from_note(&n), s);
    }

    #[test]
    fn prstatus_places_registers_in_user_regs_order() {
        let c = CpuState {
            vcpu: 2,
            rip: 0x1234,
            rsp: 0x5678,
            r15: 15,
            cs: Segment {
                selector: 0x08,
                ..Default::default()
            },
            ..Default::default()
        };
        let p = c.to_prstatus();
        assert_eq!(p.pr_pid, 3);
        assert_eq!(p.pr_reg[16], 0x1234);
        assert_eq!(p.pr_reg[19], 0x5678);
        assert_eq!(p.pr_reg[0], 15);
        assert_eq!(p.pr_reg[17], 8);
        let q = c.to_qemu();
        assert_eq!(q.rip, 0x1234);
        assert_eq!(q.size, 440);
    }

    #[test]
    fn from_kvm_copies_registers_and_packs_segments() {
        let regs = kvm_bindings::kvm_regs {
            rip: 0x10_0040,
            rsp: 0x7000,
            r15: 15,
            ..Default::default()
        };
        let sregs = kvm_bindings::kvm_sregs {
            cs: kvm_bindings::kvm_segment {
                selector: 8,
                type_: 0xb,
                s: 1,
                present: 1,
                l: 1,
                g: 1,
                limit: 0xffff_ffff,
                ..Default::default()
            },
            gs: kvm_bindings::kvm_segment {
                base: 0xffff_8000_0000_1000,
                ..Default::default()
            },
            cr3: 0x1000,
            ..Default::default()
        };
        let c = CpuState::from_kvm(1, 1, &regs, &sregs, 0x42);
        assert_eq!(c.rip, 0x10_0040);
        assert_eq!(c.cs.flags, 0x00a0_9b00);
        assert_eq!(c.gs_base, 0xffff_8000_0000_1000);
        assert_eq!(c.to_qemu().kernel_gs_base, 0x42);
        assert_eq!(c.to_prstatus().pr_reg[reg::GS_BASE], 0xffff_8000_0000_1000);
    }

    #[test]
    fn segment_flags_match_descriptor_bits() {
        // 64-bit kernel code: type 0xb, S, DPL 0, P, L, G.
        let f = Segment::flags_from_parts(0xb, true, 0, true, false, true, false, true);
        assert_eq!(f, 0x00a0_9b00);
    }
}
