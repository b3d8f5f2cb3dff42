//! ELF core notes shared by the guest (crash notes, VMCOREINFO) and the VMM
//! (vmcore writer, reader and checker).
//!
//! # Notes in a vmcore
//!
//! | name           | type           | descriptor                  | written by |
//! |----------------|----------------|-----------------------------|------------|
//! | `"CORE"`       | [`NT_PRSTATUS`] (1) | [`ElfPrstatus`], 336 bytes | VMM per vCPU (host registers); guest per CPU (crash notes in RAM) |
//! | `"QEMU"`       | [`NT_QEMU_CPUSTATE`] (0) | [`QemuCpuState`], 440 bytes | VMM per vCPU (so `crash` finds CR3) |
//! | `"VMMVMX"`     | [`NT_VMM_VMX`] (0x564d_5801) | [`VmxStateNote`], 40 bytes | VMM per vCPU (the pv-VMX model's state) |
//! | `"VMCOREINFO"` | [`NT_VMCOREINFO`] (0) | `KEY=value\n` text | guest (copied by the VMM) |
//! | `"VMMPVPANIC"` | [`NT_VMM_PVPANIC`] (0x564d_5802) | [`PvpanicLogHeader`] + entries | VMM, once |
//!
//! Every note is an [`Elf64Nhdr`], the name (with its NUL, padded to 4 bytes),
//! then the descriptor (padded to 4 bytes): see [`note_size`].
//!
//! # The guest's crash-note and VMCOREINFO contract
//!
//! The guest registers a VMCOREINFO text (Linux format: one `KEY=value` per
//! line). The checker reads guest memory through these keys:
//!
//! | key | value | meaning |
//! |-----|-------|---------|
//! | [`VMCOREINFO_CRASH_NOTES`] `SYMBOL(crash_notes)` | hex, no `0x` | **physical** address of CPU 0's crash-note buffer |
//! | [`VMCOREINFO_CRASH_NOTES_STRIDE`] `NUMBER(crash_notes_stride)` | decimal | bytes between CPU n's and CPU n+1's buffer, at least [`CRASH_NOTE_BYTES`] |
//! | [`VMCOREINFO_NR_CPUS`] `NUMBER(nr_cpus)` | decimal | number of buffers (CPUs the guest knows) |
//! | [`VMCOREINFO_STEXT`] `SYMBOL(_stext)` | hex | **virtual** start of kernel text |
//! | [`VMCOREINFO_ETEXT`] `SYMBOL(_etext)` | hex | **virtual** end of kernel text (exclusive) |
//! | [`VMCOREINFO_KERNEL_CS`] `NUMBER(kernel_cs)` | decimal | optional: the kernel code selector; without it the checker only requires CPL 0 |
//! | [`VMCOREINFO_LOG_BUF`] `SYMBOL(log_buf)` | hex | optional: **physical** address of the kmsg text ring |
//! | [`VMCOREINFO_LOG_BUF_LEN`] `NUMBER(log_buf_len)` | decimal | size of that ring in bytes |
//! | [`VMCOREINFO_LOG_BUF_HEAD`] `SYMBOL(log_buf_head)` | hex | optional: **physical** address of a little-endian u64 counting every byte ever written to the ring; without it the ring is read up to its first NUL |
//! | [`VMCOREINFO_PANIC_MSG`] `SYMBOL(panic_msg)` | hex | optional: **physical** address of the NUL-terminated panic message |
//! | [`VMCOREINFO_PANIC_MSG_LEN`] `NUMBER(panic_msg_len)` | decimal | capacity of that buffer |
//! | [`VMCOREINFO_PANIC_CPU`] `SYMBOL(panic_cpu)` | hex | optional: **physical** address of a u32 holding the panicking CPU, `u32::MAX` if none |
//! | [`VMCOREINFO_PSTORE`] `SYMBOL(pstore)` | hex | optional: **physical** address of the kmsg_dump region: `"PSTORE01"`, u32 text length, u32 0, u64 first and u64 one-past-last line sequence number, then the text (oldest first) at offset 32; all zero until a kmsg_dump ran |
//! | [`VMCOREINFO_PSTORE_LEN`] `NUMBER(pstore_len)` | decimal | size of that region in bytes, header included |
//! | [`VMCOREINFO_STOP_LOOP_START`] `SYMBOL(stop_loop_start)` | hex | optional: **virtual** start of the code where stopped CPUs halt for good |
//! | [`VMCOREINFO_STOP_LOOP_END`] `SYMBOL(stop_loop_end)` | hex | its end, **inclusive** (RIP after a final `hlt` may equal it) |
//!
//! Physical addresses are given because the guest identity-maps low memory
//! and the VMM reads guest RAM by GPA; `SYMBOL(...)` values are hex as in
//! Linux (`%lx`), `NUMBER(...)` values decimal (`%ld`).
//!
//! CPU `n`'s crash-note buffer (n = the guest's CPU number, which is the vCPU
//! index: MADT order) lies at `crash_notes + n * stride`. It is all zero until
//! that CPU saves its registers; then it holds a [`CrashNote`]: one
//! `CORE`/[`NT_PRSTATUS`] note whose `pr_reg` is the interrupted context and
//! whose `pr_pid` is `n + 1`, followed by an empty terminating note header, as
//! Linux's `crash_save_cpu` + `final_note` leave it. An all-zero buffer means
//! "never saved" (missing), anything else that is not a valid note is corrupt.

/// `n_type` of the `CORE` note holding an [`ElfPrstatus`].
pub const NT_PRSTATUS: u32 = 1;
/// `n_type` of the `QEMU` note holding a [`QemuCpuState`].
pub const NT_QEMU_CPUSTATE: u32 = 0;
/// `n_type` of the `VMCOREINFO` note.
pub const NT_VMCOREINFO: u32 = 0;
/// `n_type` of the `VMMVMX` note: ASCII "VM" then 0x58 ('X'), version 1.
pub const NT_VMM_VMX: u32 = 0x564d_5801;
/// `n_type` of the `VMMPVPANIC` note: ASCII "VM" then 0x58, number 2.
pub const NT_VMM_PVPANIC: u32 = 0x564d_5802;

/// Note name of process-status notes (without the NUL).
pub const NOTE_NAME_CORE: &[u8] = b"CORE";
/// Note name of QEMU's CPU-state notes.
pub const NOTE_NAME_QEMU: &[u8] = b"QEMU";
/// Note name of the guest's VMCOREINFO text.
pub const NOTE_NAME_VMCOREINFO: &[u8] = b"VMCOREINFO";
/// Note name of this VMM's per-vCPU VMX-state note ("VMM", "VMX").
pub const NOTE_NAME_VMX: &[u8] = b"VMMVMX";
/// Note name of this VMM's pvpanic event log note.
pub const NOTE_NAME_PVPANIC: &[u8] = b"VMMPVPANIC";

/// `Elf64_Nhdr`: the fixed head of every ELF note.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Elf64Nhdr {
    /// Length of the name including its NUL.
    pub n_namesz: u32,
    /// Length of the descriptor.
    pub n_descsz: u32,
    /// Note type, interpreted per name.
    pub n_type: u32,
}

/// Size of [`Elf64Nhdr`].
pub const NHDR_SIZE: usize = 12;

/// Round `n` up to a multiple of 4 (note fields are 4-byte aligned).
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Bytes a note occupies: header, name of `name_len` bytes *without* its NUL
/// (one is added), descriptor of `desc_len` bytes, each padded to 4.
pub const fn note_size(name_len: usize, desc_len: usize) -> usize {
    NHDR_SIZE + align4(name_len + 1) + align4(desc_len)
}

/// `struct elf_siginfo` (Linux `include/uapi/linux/elfcore.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElfSiginfo {
    /// Signal number.
    pub si_signo: i32,
    /// Extra code.
    pub si_code: i32,
    /// errno.
    pub si_errno: i32,
}

/// `struct __kernel_old_timeval` on x86_64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElfTimeval {
    /// Seconds.
    pub tv_sec: i64,
    /// Microseconds.
    pub tv_usec: i64,
}

/// Number of registers in `pr_reg` (`ELF_NGREG` on x86_64).
pub const ELF_NGREG: usize = 27;

/// Indices into [`ElfPrstatus::pr_reg`] (`struct user_regs_struct` order).
pub mod reg {
    #![allow(missing_docs)]
    pub const R15: usize = 0;
    pub const R14: usize = 1;
    pub const R13: usize = 2;
    pub const R12: usize = 3;
    pub const RBP: usize = 4;
    pub const RBX: usize = 5;
    pub const R11: usize = 6;
    pub const R10: usize = 7;
    pub const R9: usize = 8;
    pub const R8: usize = 9;
    pub const RAX: usize = 10;
    pub const RCX: usize = 11;
    pub const RDX: usize = 12;
    pub const RSI: usize = 13;
    pub const RDI: usize = 14;
    pub const ORIG_RAX: usize = 15;
    pub const RIP: usize = 16;
    pub const CS: usize = 17;
    pub const EFLAGS: usize = 18;
    pub const RSP: usize = 19;
    pub const SS: usize = 20;
    pub const FS_BASE: usize = 21;
    pub const GS_BASE: usize = 22;
    pub const DS: usize = 23;
    pub const ES: usize = 24;
    pub const FS: usize = 25;
    pub const GS: usize = 26;
}

/// `struct elf_prstatus` on x86_64: 336 bytes, the descriptor of a
/// `CORE`/[`NT_PRSTATUS`] note. Padding is explicit so the struct has no
/// uninitialised bytes and [`ElfPrstatus::as_bytes`] is sound.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfPrstatus {
    /// Signal information (zero for a vmcore).
    pub pr_info: ElfSiginfo,
    /// Current signal.
    pub pr_cursig: i16,
    /// Padding (C alignment of `pr_sigpend`).
    pub _pad0: u16,
    /// Pending signals.
    pub pr_sigpend: u64,
    /// Held signals.
    pub pr_sighold: u64,
    /// Thread id; vmcores use CPU number + 1 so gdb shows distinct threads.
    pub pr_pid: i32,
    /// Parent pid.
    pub pr_ppid: i32,
    /// Process group.
    pub pr_pgrp: i32,
    /// Session id.
    pub pr_sid: i32,
    /// User time.
    pub pr_utime: ElfTimeval,
    /// System time.
    pub pr_stime: ElfTimeval,
    /// Cumulative user time.
    pub pr_cutime: ElfTimeval,
    /// Cumulative system time.
    pub pr_cstime: ElfTimeval,
    /// General registers, indexed by the constants in [`reg`].
    pub pr_reg: [u64; ELF_NGREG],
    /// Non-zero if an FPU note follows.
    pub pr_fpvalid: i32,
    /// Padding to the struct's 8-byte alignment.
    pub _pad1: u32,
}

/// Size of [`ElfPrstatus`].
pub const ELF_PRSTATUS_SIZE: usize = 336;

impl ElfPrstatus {
    /// An all-zero status (usable in `const` and at CPL0: no SSE needed).
    pub const fn zeroed() -> Self {
        const TV: ElfTimeval = ElfTimeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        ElfPrstatus {
            pr_info: ElfSiginfo {
                si_signo: 0,
                si_code: 0,
                si_errno: 0,
            },
            pr_cursig: 0,
            _pad0: 0,
            pr_sigpend: 0,
            pr_sighold: 0,
            pr_pid: 0,
            pr_ppid: 0,
            pr_pgrp: 0,
            pr_sid: 0,
            pr_utime: TV,
            pr_stime: TV,
            pr_cutime: TV,
            pr_cstime: TV,
            pr_reg: [0; ELF_NGREG],
            pr_fpvalid: 0,
            _pad1: 0,
        }
    }

    /// The raw bytes, as they go into a note.
    pub fn as_bytes(&self) -> &[u8; ELF_PRSTATUS_SIZE] {
        // SAFETY: ElfPrstatus is repr(C), exactly ELF_PRSTATUS_SIZE bytes (a
        // const assertion below) and has no implicit padding (all padding is
        // named fields), so every byte is initialised; u8 has alignment 1.
        unsafe { &*(self as *const Self as *const [u8; ELF_PRSTATUS_SIZE]) }
    }

    /// Decode from the first [`ELF_PRSTATUS_SIZE`] bytes of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < ELF_PRSTATUS_SIZE {
            return None;
        }
        // SAFETY: bounds checked above; every bit pattern is a valid
        // ElfPrstatus (integers only); read_unaligned has no alignment need.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const Self) })
    }

    /// RIP.
    pub const fn rip(&self) -> u64 {
        self.pr_reg[reg::RIP]
    }

    /// CS selector.
    pub const fn cs(&self) -> u64 {
        self.pr_reg[reg::CS]
    }
}

/// Bytes of a guest crash-note buffer: the `CORE` note (12 + 8 + 336) plus an
/// empty terminating note header (12). The layout, at 4-byte alignment:
/// `0: Elf64Nhdr{5, 336, 1}`, `12: "CORE\0\0\0\0"`, `20: ElfPrstatus`,
/// `356: Elf64Nhdr{0, 0, 0}`.
pub const CRASH_NOTE_BYTES: usize = note_size(NOTE_NAME_CORE.len(), ELF_PRSTATUS_SIZE) + NHDR_SIZE;

/// Offset of the [`ElfPrstatus`] inside a crash-note buffer.
pub const CRASH_NOTE_PRSTATUS_OFFSET: usize = NHDR_SIZE + align4(NOTE_NAME_CORE.len() + 1);

/// A guest crash-note buffer, byte-addressed so it needs only 4-byte alignment
/// (as in Linux the descriptor sits at offset 20, not 8-aligned).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashNote {
    /// The encoded note bytes.
    pub bytes: [u8; CRASH_NOTE_BYTES],
}

impl CrashNote {
    /// An empty ("never saved") buffer.
    pub const fn empty() -> Self {
        CrashNote {
            bytes: [0; CRASH_NOTE_BYTES],
        }
    }

    /// Encode `status` as a `CORE`/`NT_PRSTATUS` note followed by the final
    /// empty note, the way Linux's `crash_save_cpu` does. A plain byte loop:
    /// no SSE, no `core::fmt`, safe for the guest at CPL0.
    pub fn write(&mut self, status: &ElfPrstatus) {
        let b = &mut self.bytes;
        put_u32(b, 0, NOTE_NAME_CORE.len() as u32 + 1);
        put_u32(b, 4, ELF_PRSTATUS_SIZE as u32);
        put_u32(b, 8, NT_PRSTATUS);
        let mut i = 0;
        while i < 8 {
            b[NHDR_SIZE + i] = if i < NOTE_NAME_CORE.len() {
                NOTE_NAME_CORE[i]
            } else {
                0
            };
            i += 1;
        }
        let src = status.as_bytes();
        let mut i = 0;
        while i < ELF_PRSTATUS_SIZE {
            b[CRASH_NOTE_PRSTATUS_OFFSET + i] = src[i];
            i += 1;
        }
        let mut i = CRASH_NOTE_PRSTATUS_OFFSET + ELF_PRSTATUS_SIZE;
        while i < CRASH_NOTE_BYTES {
            b[i] = 0;
            i += 1;
        }
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    let le = v.to_le_bytes();
    b[at] = le[0];
    b[at + 1] = le[1];
    b[at + 2] = le[2];
    b[at + 3] = le[3];
}

/// QEMU's `QEMUCPUSegment` (`target/i386/arch_dump.c`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QemuCpuSegment {
    /// Selector.
    pub selector: u32,
    /// Limit.
    pub limit: u32,
    /// Access rights in descriptor layout (QEMU's `flags`: type at bit 8, S
    /// 12, DPL 13, P 15, AVL 20, L 21, D/B 22, G 23).
    pub flags: u32,
    /// Zero.
    pub pad: u32,
    /// Base address.
    pub base: u64,
}

/// Version written in [`QemuCpuState::version`].
pub const QEMU_CPUSTATE_VERSION: u32 = 1;
/// Size of [`QemuCpuState`] (written in its `size` field).
pub const QEMU_CPUSTATE_SIZE: usize = 440;

/// QEMU's `QEMUCPUState`, the descriptor of a `QEMU` note (type 0). `crash`
/// and `elf2dmp` read CR3 and the segment bases from it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QemuCpuState {
    /// [`QEMU_CPUSTATE_VERSION`].
    pub version: u32,
    /// `size_of::<QemuCpuState>()`: later fields are optional by size.
    pub size: u32,
    #[allow(missing_docs)]
    pub rax: u64,
    #[allow(missing_docs)]
    pub rbx: u64,
    #[allow(missing_docs)]
    pub rcx: u64,
    #[allow(missing_docs)]
    pub rdx: u64,
    #[allow(missing_docs)]
    pub rsi: u64,
    #[allow(missing_docs)]
    pub rdi: u64,
    #[allow(missing_docs)]
    pub rsp: u64,
    #[allow(missing_docs)]
    pub rbp: u64,
    #[allow(missing_docs)]
    pub r8: u64,
    #[allow(missing_docs)]
    pub r9: u64,
    #[allow(missing_docs)]
    pub r10: u64,
    #[allow(missing_docs)]
    pub r11: u64,
    #[allow(missing_docs)]
    pub r12: u64,
    #[allow(missing_docs)]
    pub r13: u64,
    #[allow(missing_docs)]
    pub r14: u64,
    #[allow(missing_docs)]
    pub r15: u64,
    #[allow(missing_docs)]
    pub rip: u64,
    #[allow(missing_docs)]
    pub rflags: u64,
    #[allow(missing_docs)]
    pub cs: QemuCpuSegment,
    #[allow(missing_docs)]
    pub ds: QemuCpuSegment,
    #[allow(missing_docs)]
    pub es: QemuCpuSegment,
    #[allow(missing_docs)]
    pub fs: QemuCpuSegment,
    #[allow(missing_docs)]
    pub gs: QemuCpuSegment,
    #[allow(missing_docs)]
    pub ss: QemuCpuSegment,
    #[allow(missing_docs)]
    pub ldt: QemuCpuSegment,
    #[allow(missing_docs)]
    pub tr: QemuCpuSegment,
    /// Base and limit of the GDT (selector and flags zero).
    pub gdt: QemuCpuSegment,
    /// Base and limit of the IDT (selector and flags zero).
    pub idt: QemuCpuSegment,
    /// CR0, CR1 (zero), CR2, CR3, CR4.
    pub cr: [u64; 5],
    /// IA32_KERNEL_GS_BASE (optional field: present when `size` covers it).
    pub kernel_gs_base: u64,
}

impl QemuCpuState {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; QEMU_CPUSTATE_SIZE] {
        // SAFETY: repr(C) of u32/u64 fields laid out without implicit padding
        // (two u32 then u64s; segments are 24 bytes of u32x4+u64), size
        // asserted below, so all bytes are initialised.
        unsafe { &*(self as *const Self as *const [u8; QEMU_CPUSTATE_SIZE]) }
    }

    /// Decode; accepts the shorter version-1 layout without
    /// `kernel_gs_base` (432 bytes), which then reads as zero.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut buf = [0u8; QEMU_CPUSTATE_SIZE];
        if bytes.len() < QEMU_CPUSTATE_SIZE - 8 {
            return None;
        }
        let n = if bytes.len() < QEMU_CPUSTATE_SIZE {
            bytes.len()
        } else {
            QEMU_CPUSTATE_SIZE
        };
        buf[..n].copy_from_slice(&bytes[..n]);
        // SAFETY: buf is exactly the struct's size; integers only, so any bit
        // pattern is valid; read_unaligned has no alignment requirement.
        Some(unsafe { core::ptr::read_unaligned(buf.as_ptr() as *const Self) })
    }
}

/// Version of [`VmxStateNote`].
pub const VMX_NOTE_VERSION: u32 = 1;
/// Size of [`VmxStateNote`].
pub const VMX_NOTE_SIZE: usize = 40;
/// "No address": the value of an address field that does not apply (the
/// SDM's invalid current-VMCS pointer is likewise all ones).
pub const VMX_NO_ADDR: u64 = u64::MAX;

/// [`VmxStateNote::flags`] bits.
pub mod vmx_flags {
    /// The vCPU is in VMX operation (VMXON done, no VMXOFF since).
    pub const VMX_ON: u32 = 1 << 0;
    /// A VMCS is current on the vCPU (VMPTRLD without a later VMCLEAR of it).
    pub const VMCS_LOADED: u32 = 1 << 1;
    /// No VMCS contents are held only "in the CPU": every VMCS used on this
    /// vCPU was written back to guest memory by VMCLEAR (true when no VMCS
    /// was ever loaded).
    pub const VMCS_FLUSHED: u32 = 1 << 2;
    /// The state comes from the VMM's paravirtual VMX model, not hardware
    /// (`KVM_GET_NESTED_STATE`).
    pub const MODEL_NOT_HARDWARE: u32 = 1 << 3;
}

/// Descriptor of a `VMMVMX`/[`NT_VMM_VMX`] note: one per vCPU, the VMX state
/// the VMM saw at dump time. All fields little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxStateNote {
    /// [`VMX_NOTE_VERSION`]. Later versions only append fields.
    pub version: u32,
    /// vCPU index (same numbering as `pr_pid - 1` of the PRSTATUS notes).
    pub vcpu: u32,
    /// [`vmx_flags`] bits.
    pub flags: u32,
    /// Zero.
    pub reserved: u32,
    /// GPA of the VMXON region given to the last VMXON, or [`VMX_NO_ADDR`].
    pub vmxon_region: u64,
    /// GPA of the current VMCS, or [`VMX_NO_ADDR`] if none is loaded.
    pub current_vmcs: u64,
    /// GPA of the VMCS most recently written back by VMCLEAR, or
    /// [`VMX_NO_ADDR`] if there was none.
    pub last_cleared_vmcs: u64,
}

impl VmxStateNote {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; VMX_NOTE_SIZE] {
        // SAFETY: repr(C), four u32 then three u64: no implicit padding; size
        // asserted below.
        unsafe { &*(self as *const Self as *const [u8; VMX_NOTE_SIZE]) }
    }

    /// Decode (a longer, newer descriptor is accepted; its tail is ignored).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < VMX_NOTE_SIZE {
            return None;
        }
        // SAFETY: bounds checked; integers only; unaligned read.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const Self) })
    }
}

/// Version of the pvpanic log note.
pub const PVPANIC_LOG_VERSION: u32 = 1;
/// Size of [`PvpanicLogHeader`].
pub const PVPANIC_LOG_HEADER_SIZE: usize = 16;
/// Size of [`PvpanicLogEntry`].
pub const PVPANIC_LOG_ENTRY_SIZE: usize = 24;

/// Head of the `VMMPVPANIC`/[`NT_VMM_PVPANIC`] descriptor; `count` entries of
/// `entry_size` bytes follow, oldest first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvpanicLogHeader {
    /// [`PVPANIC_LOG_VERSION`].
    pub version: u32,
    /// Bytes per entry ([`PVPANIC_LOG_ENTRY_SIZE`]; larger when extended).
    pub entry_size: u32,
    /// Number of entries that follow.
    pub count: u32,
    /// Events the VMM dropped because its log was full.
    pub dropped: u32,
}

/// One pvpanic write as the VMM saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvpanicLogEntry {
    /// Sequence number, from 0, in the order the VMM received the writes.
    pub seq: u32,
    /// The byte written: bit 0 PANICKED, bit 1 CRASH_LOADED, bit 2 SHUTDOWN.
    pub events: u32,
    /// The vCPU that wrote it (`u32::MAX` if unknown).
    pub vcpu: u32,
    /// Zero.
    pub pad: u32,
    /// Nanoseconds since the VM was created (host monotonic clock).
    pub timestamp_ns: u64,
}

impl PvpanicLogEntry {
    /// Decode from at least [`PVPANIC_LOG_ENTRY_SIZE`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < PVPANIC_LOG_ENTRY_SIZE {
            return None;
        }
        // SAFETY: bounds checked; integers only; unaligned read.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const Self) })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; PVPANIC_LOG_ENTRY_SIZE] {
        // SAFETY: repr(C), four u32 then a u64: no padding; size asserted.
        unsafe { &*(self as *const Self as *const [u8; PVPANIC_LOG_ENTRY_SIZE]) }
    }
}

impl PvpanicLogHeader {
    /// Decode from at least [`PVPANIC_LOG_HEADER_SIZE`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < PVPANIC_LOG_HEADER_SIZE {
            return None;
        }
        // SAFETY: bounds checked; integers only; unaligned read.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const Self) })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; PVPANIC_LOG_HEADER_SIZE] {
        // SAFETY: repr(C), four u32: no padding; size asserted.
        unsafe { &*(self as *const Self as *const [u8; PVPANIC_LOG_HEADER_SIZE]) }
    }
}

/// VMCOREINFO key: physical address of CPU 0's crash-note buffer.
pub const VMCOREINFO_CRASH_NOTES: &str = "SYMBOL(crash_notes)";
/// VMCOREINFO key: bytes between consecutive CPUs' crash-note buffers.
pub const VMCOREINFO_CRASH_NOTES_STRIDE: &str = "NUMBER(crash_notes_stride)";
/// VMCOREINFO key: number of CPUs (crash-note buffers).
pub const VMCOREINFO_NR_CPUS: &str = "NUMBER(nr_cpus)";
/// VMCOREINFO key: virtual start of kernel text.
pub const VMCOREINFO_STEXT: &str = "SYMBOL(_stext)";
/// VMCOREINFO key: virtual end of kernel text (exclusive).
pub const VMCOREINFO_ETEXT: &str = "SYMBOL(_etext)";
/// VMCOREINFO key (optional): the kernel code segment selector.
pub const VMCOREINFO_KERNEL_CS: &str = "NUMBER(kernel_cs)";
/// VMCOREINFO key (optional): physical address of the kmsg text ring.
pub const VMCOREINFO_LOG_BUF: &str = "SYMBOL(log_buf)";
/// VMCOREINFO key: size of the kmsg ring.
pub const VMCOREINFO_LOG_BUF_LEN: &str = "NUMBER(log_buf_len)";
/// VMCOREINFO key (optional): physical address of the ring's u64 byte count.
pub const VMCOREINFO_LOG_BUF_HEAD: &str = "SYMBOL(log_buf_head)";
/// VMCOREINFO key (optional): physical address of the panic message.
pub const VMCOREINFO_PANIC_MSG: &str = "SYMBOL(panic_msg)";
/// VMCOREINFO key: capacity of the panic message buffer.
pub const VMCOREINFO_PANIC_MSG_LEN: &str = "NUMBER(panic_msg_len)";
/// VMCOREINFO key (optional): physical address of the u32 panicking CPU.
pub const VMCOREINFO_PANIC_CPU: &str = "SYMBOL(panic_cpu)";
/// VMCOREINFO key (optional): physical address of the kmsg_dump region.
pub const VMCOREINFO_PSTORE: &str = "SYMBOL(pstore)";
/// VMCOREINFO key: size of the kmsg_dump region.
pub const VMCOREINFO_PSTORE_LEN: &str = "NUMBER(pstore_len)";
/// VMCOREINFO key (optional): virtual start of the stopped-CPU halt loop.
pub const VMCOREINFO_STOP_LOOP_START: &str = "SYMBOL(stop_loop_start)";
/// VMCOREINFO key: virtual end of the stopped-CPU halt loop (inclusive).
pub const VMCOREINFO_STOP_LOOP_END: &str = "SYMBOL(stop_loop_end)";
/// VMCOREINFO key: kernel release string.
pub const VMCOREINFO_OSRELEASE: &str = "OSRELEASE";
/// VMCOREINFO key: page size.
pub const VMCOREINFO_PAGESIZE: &str = "PAGESIZE";

const _: () = assert!(core::mem::size_of::<ElfPrstatus>() == ELF_PRSTATUS_SIZE);
const _: () = assert!(core::mem::size_of::<QemuCpuState>() == QEMU_CPUSTATE_SIZE);
const _: () = assert!(core::mem::size_of::<VmxStateNote>() == VMX_NOTE_SIZE);
const _: () = assert!(core::mem::size_of::<PvpanicLogHeader>() == PVPANIC_LOG_HEADER_SIZE);
const _: () = assert!(core::mem::size_of::<PvpanicLogEntry>() == PVPANIC_LOG_ENTRY_SIZE);
const _: () = assert!(core::mem::size_of::<CrashNote>() == CRASH_NOTE_BYTES);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn prstatus_layout_matches_linux_x86_64() {
        assert_eq!(size_of::<ElfPrstatus>(), 336);
        assert_eq!(size_of::<ElfSiginfo>(), 12);
        assert_eq!(offset_of!(ElfPrstatus, pr_cursig), 12);
        assert_eq!(offset_of!(ElfPrstatus, pr_sigpend), 16);
        assert_eq!(offset_of!(ElfPrstatus, pr_sighold), 24);
        assert_eq!(offset_of!(ElfPrstatus, pr_pid), 32);
        assert_eq!(offset_of!(ElfPrstatus, pr_ppid), 36);
        assert_eq!(offset_of!(ElfPrstatus, pr_utime), 48);
        assert_eq!(offset_of!(ElfPrstatus, pr_cstime), 96);
        assert_eq!(offset_of!(ElfPrstatus, pr_reg), 112);
        assert_eq!(offset_of!(ElfPrstatus, pr_fpvalid), 112 + 27 * 8);
    }

    #[test]
    fn pr_reg_order_is_user_regs_struct() {
        let order = [
            reg::R15,
            reg::R14,
            reg::R13,
            reg::R12,
            reg::RBP,
            reg::RBX,
            reg::R11,
            reg::R10,
            reg::R9,
            reg::R8,
            reg::RAX,
            reg::RCX,
            reg::RDX,
            reg::RSI,
            reg::RDI,
            reg::ORIG_RAX,
            reg::RIP,
            reg::CS,
            reg::EFLAGS,
            reg::RSP,
            reg::SS,
            reg::FS_BASE,
            reg::GS_BASE,
            reg::DS,
            reg::ES,
            reg::FS,
            reg::GS,
        ];
        for (i, r) in order.iter().enumerate() {
            assert_eq!(i, *r);
        }
        assert_eq!(reg::RIP, 16);
        assert_eq!(reg::RSP, 19);
    }

    #[test]
    fn qemu_cpu_state_layout() {
        assert_eq!(size_of::<QemuCpuSegment>(), 24);
        assert_eq!(offset_of!(QemuCpuState, rax), 8);
        assert_eq!(offset_of!(QemuCpuState, r15), 8 + 15 * 8);
        assert_eq!(offset_of!(QemuCpuState, rip), 136);
        assert_eq!(offset_of!(QemuCpuState, rflags), 144);
        assert_eq!(offset_of!(QemuCpuState, cs), 152);
        assert_eq!(offset_of!(QemuCpuState, idt), 152 + 9 * 24);
        assert_eq!(offset_of!(QemuCpuState, cr), 392);
        assert_eq!(offset_of!(QemuCpuState, kernel_gs_base), 432);
        assert_eq!(size_of::<QemuCpuState>(), 440);
    }

    #[test]
    fn note_sizes_pad_to_four() {
        assert_eq!(note_size(4, 336), 12 + 8 + 336);
        assert_eq!(note_size(10, 5), 12 + 12 + 8);
        assert_eq!(note_size(6, 40), 12 + 8 + 40);
        assert_eq!(CRASH_NOTE_BYTES, 368);
        assert_eq!(CRASH_NOTE_PRSTATUS_OFFSET, 20);
    }

    #[test]
    fn crash_note_encodes_a_core_prstatus_note() {
        let mut st = ElfPrstatus::zeroed();
        st.pr_pid = 3;
        st.pr_reg[reg::RIP] = 0xdead_beef;
        let mut note = CrashNote::empty();
        note.write(&st);
        let b = &note.bytes;
        assert_eq!(&b[0..12], &[5, 0, 0, 0, 0x50, 1, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[12..20], b"CORE\0\0\0\0");
        let back = ElfPrstatus::from_bytes(&b[20..]).expect("long enough");
        assert_eq!(back, st);
        assert_eq!(back.rip(), 0xdead_beef);
        assert_eq!(&b[356..368], &[0u8; 12]);
    }

    #[test]
    fn vmx_and_pvpanic_layouts() {
        assert_eq!(offset_of!(VmxStateNote, vcpu), 4);
        assert_eq!(offset_of!(VmxStateNote, flags), 8);
        assert_eq!(offset_of!(VmxStateNote, vmxon_region), 16);
        assert_eq!(offset_of!(VmxStateNote, last_cleared_vmcs), 32);
        assert_eq!(offset_of!(PvpanicLogEntry, timestamp_ns), 16);
        let e = PvpanicLogEntry {
            seq: 1,
            events: 2,
            vcpu: 3,
            pad: 0,
            timestamp_ns: 4,
        };
        assert_eq!(PvpanicLogEntry::from_bytes(e.as_bytes()), Some(e));
        assert!(VmxStateNote::from_bytes(&[0; 39]).is_none());
    }
}
