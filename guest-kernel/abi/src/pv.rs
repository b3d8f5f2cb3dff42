//! The paravirtual devices of this VMM: register maps, command and status
//! codes, and the memory formats they read or write.
//!
//! # Conventions shared by every device here
//!
//! - Each device is a block of **32-bit registers** in port space, at the
//!   base given in [`crate::ports`]. Access them with `in eax, dx` /
//!   `out dx, eax` at 4-byte-aligned offsets. Any other width or offset is
//!   ignored and counted by the device; such reads return all ones.
//! - **Offset 0 is a read-only ID register** holding a four-character magic.
//!   A guest probes for the device by reading it: an absent device (under
//!   QEMU, say) reads `0xffff_ffff`.
//! - **64-bit values travel as two registers, `*_LO` then `*_HI`**, each one
//!   `out dx, eax`. Nothing is committed by writing them: a separate COMMAND
//!   (or commit) register acts on whatever the argument registers hold, so
//!   the order of the LO/HI writes does not matter.
//! - Registers marked *per vCPU* are banked: each vCPU sees its own copy (the
//!   device keys them by the vCPU that made the access), so CPUs never race
//!   on them. The others are global; the guest serialises their users.
//! - **Extensibility**: new registers are only ever appended at new offsets
//!   (inside the block length, which leaves room), and new command codes are
//!   only ever added. An unknown command code leaves every state untouched
//!   and reports a "bad command" status, so a guest can tell a newer feature
//!   is missing.
//!
//! # The devices
//!
//! | module | port | what it does |
//! |--------|------|--------------|
//! | [`vmx`] | [`crate::ports::PV_VMX`] | VMXON/VMXOFF/VMPTRLD/VMPTRST/VMCLEAR/VMREAD/VMWRITE for a host without VMX (DESIGN.md section 6) |
//! | [`crash`] | [`crate::ports::CRASH_CONTROL`] | the VMM asks a CPU to crash in a chosen way (LKDTM-like), by interrupt or NMI |
//! | [`vmcoreinfo`] | [`crate::ports::VMCOREINFO`] | the guest registers its VMCOREINFO note (QEMU's `vmcoreinfo` device) |
//! | [`kdump`] | [`crate::ports::KDUMP`] | kexec handover to the capture kernel, and "vmcore ready at elfcorehdr" |

/// Four ASCII characters as the little-endian u32 a 32-bit `in` returns.
const fn magic(tag: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*tag)
}

/// Width in bytes of every register of these devices.
pub const REGISTER_WIDTH: usize = 4;

/// What every register read returns when the access was invalid (wrong
/// width or offset), and what an absent device reads as.
pub const INVALID_READ: u32 = u32::MAX;

pub mod vmx {
    //! The paravirtual VMX model (this host has no VMX; DESIGN.md section 6).
    //!
    //! The device behaves like the VMX instructions of one logical processor per
    //! vCPU, with the SDM's success/failure conventions. The guest puts the
    //! operand in the argument registers, writes the instruction's command code
    //! to [`COMMAND`], and reads [`STATUS`]:
    //!
    //! | offset | name | access | per vCPU | meaning |
    //! |--------|------|--------|----------|---------|
    //! | 0x00 | [`ID`] | R | | [`ID_MAGIC`] (`"PVMX"`) |
    //! | 0x04 | [`REVISION`] | R | | the VMCS revision identifier, [`VMCS_REVISION`] (IA32_VMX_BASIC bits 30:0) |
    //! | 0x08 | [`ARG_LO`] | RW | yes | operand bits 31:0: a GPA (VMXON, VMPTRLD, VMCLEAR), the value (VMWRITE); result of VMREAD and VMPTRST |
    //! | 0x0C | [`ARG_HI`] | RW | yes | operand bits 63:32 |
    //! | 0x10 | [`FIELD`] | RW | yes | VMCS field encoding for VMREAD / VMWRITE (SDM appendix B; see [`field`]) |
    //! | 0x14 | [`COMMAND`] | W (R: last command) | yes | writing a [`cmd`] code executes it, synchronously |
    //! | 0x18 | [`STATUS`] | R | yes | outcome of the last command, a [`status`] code |
    //! | 0x1C | [`ERROR`] | R | yes | VM-instruction error number (see [`error`]) of the last command if it ended in VMfailValid, else 0 |
    //!
    //! # Semantics (as the real instructions)
    //!
    //! - **Outside VMX operation** every command but VMXON ends in
    //!   [`status::UD`] (the instruction would raise #UD).
    //! - **VMfail(n)** means [`status::FAIL_VALID`] with `n` in [`ERROR`] and in
    //!   the current VMCS's VM-instruction error field
    //!   ([`field::VM_INSTRUCTION_ERROR`], readable with VMREAD) when a VMCS is
    //!   current; [`status::FAIL_INVALID`] otherwise.
    //! - **Addresses** must be 4 KiB aligned and the whole 4 KiB page must be
    //!   guest RAM; otherwise the "invalid physical address" failure applies.
    //! - **VMXON** (ARG = region GPA): the region's first 4 bytes must hold
    //!   [`VMCS_REVISION`] (the guest writes it first, as on hardware). Bad
    //!   address or revision: VMfailInvalid. Already in VMX operation:
    //!   VMfail([`error::VMXON_IN_VMX_ROOT`]). Success leaves no VMCS current.
    //! - **VMPTRLD** (ARG = VMCS GPA): bad address: VMfail([`error::VMPTRLD_INVALID_ADDRESS`]);
    //!   the VMXON region: VMfail([`error::VMPTRLD_VMXON_POINTER`]); revision in
    //!   memory not [`VMCS_REVISION`]: VMfail([`error::VMPTRLD_BAD_REVISION`]).
    //!   A VMCS not yet active on this vCPU is loaded from its region (the
    //!   [`VmcsHeader`] format; a count above [`VMCS_MAX_RECORDS`] loads as an
    //!   empty VMCS, and records with an invalid or repeated encoding are
    //!   skipped), then cached "in the CPU".
    //! - **VMPTRST**: ARG = the current-VMCS pointer, all ones if none.
    //! - **VMCLEAR** (ARG = VMCS GPA): bad address: VMfail([`error::VMCLEAR_INVALID_ADDRESS`]);
    //!   the VMXON region: VMfail([`error::VMCLEAR_VMXON_POINTER`]). If the VMCS
    //!   is active on this vCPU, its cached contents are written to its region
    //!   in the [`VmcsHeader`] format and it stops being active; if it was
    //!   current, the current-VMCS pointer becomes invalid (all ones). Clearing
    //!   a VMCS that is not active writes nothing and succeeds.
    //! - **VMREAD** (FIELD) / **VMWRITE** (FIELD, ARG): no current VMCS:
    //!   VMfailInvalid. An encoding with reserved bits set, or a high access to
    //!   a field that is not 64-bit: VMfail([`error::UNSUPPORTED_COMPONENT`]);
    //!   VMWRITE to a read-only-data field: VMfail([`error::VMWRITE_READ_ONLY`]);
    //!   a new field in a VMCS already holding [`VMCS_MAX_FIELDS`] fields
    //!   (not counting the VM-instruction error field, which always has room):
    //!   VMfail([`error::UNSUPPORTED_COMPONENT`]). Values are truncated to the
    //!   field's width; a field never written reads as 0. VMREAD puts the value
    //!   in ARG.
    //! - **VMXOFF**: leaves VMX operation. Like hardware, it does not write back
    //!   active VMCSs: their cached contents are lost, and the VMM records that
    //!   (this is the state the 2016 kdump bug leaves behind).
    //!
    //! A vCPU caches at most [`MAX_ACTIVE_VMCS`] VMCSs; loading one more writes
    //! the least recently loaded non-current one back to memory first (hardware
    //! may write back at any time, too).

    /// Read-only magic at offset 0.
    pub const ID: u64 = 0x00;
    /// Read-only VMCS revision identifier.
    pub const REVISION: u64 = 0x04;
    /// Operand bits 31:0 (per vCPU).
    pub const ARG_LO: u64 = 0x08;
    /// Operand bits 63:32 (per vCPU).
    pub const ARG_HI: u64 = 0x0C;
    /// VMCS field encoding (per vCPU).
    pub const FIELD: u64 = 0x10;
    /// Command register (per vCPU).
    pub const COMMAND: u64 = 0x14;
    /// Outcome of the last command (per vCPU).
    pub const STATUS: u64 = 0x18;
    /// VM-instruction error number of the last VMfailValid (per vCPU).
    pub const ERROR: u64 = 0x1C;

    /// Value of [`ID`]: `"PVMX"`.
    pub const ID_MAGIC: u32 = super::magic(b"PVMX");

    /// The VMCS revision identifier of this model (bit 31, the shadow-VMCS
    /// indicator, is clear). VMXON regions and VMCS regions start with it.
    pub const VMCS_REVISION: u32 = 0x0056_4d58;

    /// Most VMCSs a vCPU keeps active (cached) at once.
    pub const MAX_ACTIVE_VMCS: usize = 8;

    /// Command codes written to [`COMMAND`].
    pub mod cmd {
        /// VMXON; ARG = VMXON region GPA.
        pub const VMXON: u32 = 1;
        /// VMXOFF.
        pub const VMXOFF: u32 = 2;
        /// VMPTRLD; ARG = VMCS GPA.
        pub const VMPTRLD: u32 = 3;
        /// VMPTRST; result in ARG.
        pub const VMPTRST: u32 = 4;
        /// VMCLEAR; ARG = VMCS GPA.
        pub const VMCLEAR: u32 = 5;
        /// VMREAD; FIELD = encoding, result in ARG.
        pub const VMREAD: u32 = 6;
        /// VMWRITE; FIELD = encoding, ARG = value.
        pub const VMWRITE: u32 = 7;
    }

    /// Values of [`STATUS`].
    pub mod status {
        /// VMsucceed (CF = ZF = 0).
        pub const SUCCEED: u32 = 0;
        /// VMfailInvalid (CF = 1): no current VMCS to hold an error number.
        pub const FAIL_INVALID: u32 = 1;
        /// VMfailValid (ZF = 1): the error number is in `ERROR` and in the
        /// current VMCS's VM-instruction error field.
        pub const FAIL_VALID: u32 = 2;
        /// The instruction would raise #UD (not in VMX operation).
        pub const UD: u32 = 3;
        /// Unknown command code: nothing was done.
        pub const BAD_COMMAND: u32 = 4;
        /// No command was executed on this vCPU since the device was reset.
        pub const IDLE: u32 = 0xff;
    }

    /// VM-instruction error numbers (Intel SDM vol. 3C, "VM-Instruction
    /// Error Numbers"). Only those the model can produce.
    pub mod error {
        /// VMCLEAR with invalid physical address.
        pub const VMCLEAR_INVALID_ADDRESS: u32 = 2;
        /// VMCLEAR with VMXON pointer.
        pub const VMCLEAR_VMXON_POINTER: u32 = 3;
        /// VMPTRLD with invalid physical address.
        pub const VMPTRLD_INVALID_ADDRESS: u32 = 9;
        /// VMPTRLD with VMXON pointer.
        pub const VMPTRLD_VMXON_POINTER: u32 = 10;
        /// VMPTRLD with incorrect VMCS revision identifier.
        pub const VMPTRLD_BAD_REVISION: u32 = 11;
        /// VMREAD/VMWRITE from/to unsupported VMCS component.
        pub const UNSUPPORTED_COMPONENT: u32 = 12;
        /// VMWRITE to read-only VMCS component.
        pub const VMWRITE_READ_ONLY: u32 = 13;
        /// VMXON executed in VMX root operation.
        pub const VMXON_IN_VMX_ROOT: u32 = 15;
    }

    /// VMCS field encodings (Intel SDM vol. 3D appendix B) and a few fields.
    ///
    /// Bit 0: access type (1 = high 32 bits of a 64-bit field); bits 9:1
    /// index; bits 11:10 type; bit 12 reserved; bits 14:13 width; bits 31:15
    /// reserved.
    pub mod field {
        /// Bit 0: the access reads or writes bits 63:32 of a 64-bit field.
        pub const ACCESS_HIGH: u32 = 1;
        /// Bits that must be zero in a valid encoding (31:15 and 12).
        pub const RESERVED_MASK: u32 = 0xffff_9000;
        /// Shift of the type field (bits 11:10).
        pub const TYPE_SHIFT: u32 = 10;
        /// Type: control field.
        pub const TYPE_CONTROL: u32 = 0;
        /// Type: VM-exit information (read-only data) field.
        pub const TYPE_READ_ONLY: u32 = 1;
        /// Type: guest-state field.
        pub const TYPE_GUEST: u32 = 2;
        /// Type: host-state field.
        pub const TYPE_HOST: u32 = 3;
        /// Shift of the width field (bits 14:13).
        pub const WIDTH_SHIFT: u32 = 13;
        /// Width: 16 bits.
        pub const WIDTH_16: u32 = 0;
        /// Width: 64 bits.
        pub const WIDTH_64: u32 = 1;
        /// Width: 32 bits.
        pub const WIDTH_32: u32 = 2;
        /// Width: natural (64 bits here).
        pub const WIDTH_NATURAL: u32 = 3;

        /// The type bits of `encoding`.
        pub const fn kind(encoding: u32) -> u32 {
            (encoding >> TYPE_SHIFT) & 3
        }
        /// The width bits of `encoding`.
        pub const fn width(encoding: u32) -> u32 {
            (encoding >> WIDTH_SHIFT) & 3
        }

        /// VM-instruction error (32-bit, read-only data).
        pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
        /// VMCS link pointer (64-bit guest state).
        pub const VMCS_LINK_POINTER: u32 = 0x2800;
        /// Guest CR3 (natural-width guest state).
        pub const GUEST_CR3: u32 = 0x6802;
        /// Guest RSP (natural-width guest state).
        pub const GUEST_RSP: u32 = 0x681c;
        /// Guest RIP (natural-width guest state).
        pub const GUEST_RIP: u32 = 0x681e;
        /// Host RSP (natural-width host state).
        pub const HOST_RSP: u32 = 0x6c14;
        /// Host RIP (natural-width host state).
        pub const HOST_RIP: u32 = 0x6c16;
    }

    /// Size of a VMXON region and of a VMCS region.
    pub const VMCS_REGION_SIZE: usize = 4096;
    /// Size of [`VmcsHeader`].
    pub const VMCS_HEADER_SIZE: usize = 16;
    /// Size of [`VmcsRecord`].
    pub const VMCS_RECORD_SIZE: usize = 16;
    /// Most records a VMCS region holds: as many as fit in 4 KiB.
    pub const VMCS_MAX_RECORDS: usize = (VMCS_REGION_SIZE - VMCS_HEADER_SIZE) / VMCS_RECORD_SIZE;
    /// Most fields VMWRITE can fill in one VMCS, besides the VM-instruction
    /// error field (one record is kept for it).
    pub const VMCS_MAX_FIELDS: usize = VMCS_MAX_RECORDS - 1;

    /// The head of a VMCS region as VMCLEAR writes it (all little-endian).
    ///
    /// `count` [`VmcsRecord`]s follow at offset [`VMCS_HEADER_SIZE`], sorted by
    /// encoding, one per field ever written (each holding the field's full
    /// value: `encoding` never has [`field::ACCESS_HIGH`] set). Bytes after the
    /// last record are not written. The whole format fits in 4 KiB.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct VmcsHeader {
        /// [`VMCS_REVISION`], as on hardware the first 4 bytes.
        pub revision: u32,
        /// VMX-abort indicator: always 0 (the model never aborts).
        pub abort: u32,
        /// Number of records that follow, at most [`VMCS_MAX_RECORDS`].
        pub count: u32,
        /// Written as 0.
        pub reserved: u32,
    }

    /// One cached field, as VMCLEAR writes it.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct VmcsRecord {
        /// The field encoding (bit 0 clear).
        pub encoding: u32,
        /// Written as 0.
        pub reserved: u32,
        /// The field's value, truncated to its width.
        pub value: u64,
    }

    /// Byte offset of record `i` in a VMCS region.
    pub const fn record_offset(i: usize) -> usize {
        VMCS_HEADER_SIZE + i * VMCS_RECORD_SIZE
    }
}

pub mod crash {
    //! LKDTM-style crash injection.
    //!
    //! The VMM stores a pending [`CrashType`] for a target vCPU and then
    //! interrupts it: a fixed interrupt with vector [`CRASH_VECTOR`], or an NMI
    //! for [`CrashType::NmiPanic`]. The guest's handler (its NMI handler, for
    //! NMIs) reads [`COMMAND`], which returns the reading vCPU's pending code
    //! and clears it (0 = nothing pending), and then crashes as told. It may
    //! write the step it reached to [`ACK`] (for tests; see [`ack`]).
    //!
    //! | offset | name | access | per vCPU | meaning |
    //! |--------|------|--------|----------|---------|
    //! | 0x00 | [`ID`] | R | | [`ID_MAGIC`] (`"LKDT"`) |
    //! | 0x04 | [`COMMAND`] | R | yes | pending [`CrashType`] code, then 0 (read clears) |
    //! | 0x08 | [`ACK`] | W | yes | the step the guest reached, an [`ack`] code |
    //! | 0x0C | [`VECTOR`] | R | | [`CRASH_VECTOR`] |

    /// Read-only magic at offset 0.
    pub const ID: u64 = 0x00;
    /// Pending crash command, read-and-clear (per vCPU).
    pub const COMMAND: u64 = 0x04;
    /// Progress acknowledgement (per vCPU).
    pub const ACK: u64 = 0x08;
    /// The interrupt vector the device uses.
    pub const VECTOR: u64 = 0x0C;

    /// Value of [`ID`]: `"LKDT"`.
    pub const ID_MAGIC: u32 = super::magic(b"LKDT");

    /// The fixed interrupt vector that announces a pending crash command.
    pub const CRASH_VECTOR: u8 = 0xf0;

    /// [`COMMAND`] value when nothing is pending.
    pub const NONE: u32 = 0;

    /// Steps the guest reports through [`ACK`]. Any other value is recorded
    /// as is (guest-defined steps start at [`ack::GUEST_DEFINED`]).
    pub mod ack {
        /// The command was read and is being acted on.
        pub const RECEIVED: u32 = 1;
        /// The crash is about to be triggered (the last instruction before it).
        pub const TRIGGERING: u32 = 2;
        /// A helper CPU's part is in place (the lock is held, the CPU spins
        /// with interrupts off, ...): the one that panics may go ahead.
        pub const HELPER_READY: u32 = 3;
        /// The command code was unknown to the guest and was ignored.
        pub const UNKNOWN_COMMAND: u32 = 4;
        /// First value free for guest-specific steps.
        pub const GUEST_DEFINED: u32 = 0x100;
    }

    // HARDLOCKUP and CONSOLE_LOCKED need a second CPU to panic: the device
    // interrupts only the target, and the guest picks the CPU that panics
    // (the target may ACK HELPER_READY once its part is in place).

    /// A way to crash, with its code (the [`COMMAND`] value).
    #[repr(u32)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum CrashType {
        /// `panic()` directly.
        Panic = 1,
        /// `ud2`: invalid-opcode handler, oops, panic.
        Bug = 2,
        /// A bad memory access: page fault, oops, panic.
        Exception = 3,
        /// The target spins with interrupts off; another CPU then panics.
        HardLockup = 4,
        /// Every CPU panics at once.
        PanicAll = 5,
        /// Panic from NMI context (delivered as an NMI).
        NmiPanic = 6,
        /// Panic with a notifier registered that never returns.
        NotifierHang = 7,
        /// Panic with a notifier registered that faults.
        NotifierFault = 8,
        /// The target takes the console lock and spins; another CPU panics.
        ConsoleLocked = 9,
    }

    /// A crash type with its QMP name and a one-line description.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct CrashTypeInfo {
        /// The type.
        pub crash: CrashType,
        /// Its name in QMP `x-inject-crash` / `query-crash-types` (LKDTM style).
        pub name: &'static str,
        /// What the guest does.
        pub description: &'static str,
    }

    /// Every crash type, in code order.
    pub const CRASH_TYPES: [CrashTypeInfo; 9] = [
        CrashTypeInfo {
            crash: CrashType::Panic,
            name: "PANIC",
            description: "the target CPU calls panic() directly",
        },
        CrashTypeInfo {
            crash: CrashType::Bug,
            name: "BUG",
            description: "the target CPU executes ud2: invalid opcode, oops, panic",
        },
        CrashTypeInfo {
            crash: CrashType::Exception,
            name: "EXCEPTION",
            description: "the target CPU reads an unmapped address: page fault, oops, panic",
        },
        CrashTypeInfo {
            crash: CrashType::HardLockup,
            name: "HARDLOCKUP",
            description: "the target CPU spins with interrupts off while another CPU panics",
        },
        CrashTypeInfo {
            crash: CrashType::PanicAll,
            name: "PANIC_ALL",
            description: "every CPU calls panic() at once",
        },
        CrashTypeInfo {
            crash: CrashType::NmiPanic,
            name: "NMI_PANIC",
            description: "the target CPU panics from its NMI handler",
        },
        CrashTypeInfo {
            crash: CrashType::NotifierHang,
            name: "NOTIFIER_HANG",
            description: "the target CPU panics with a panic notifier that never returns",
        },
        CrashTypeInfo {
            crash: CrashType::NotifierFault,
            name: "NOTIFIER_FAULT",
            description: "the target CPU panics with a panic notifier that faults",
        },
        CrashTypeInfo {
            crash: CrashType::ConsoleLocked,
            name: "CONSOLE_LOCKED",
            description: "the target CPU holds the console lock and spins while another CPU panics",
        },
    ];

    impl CrashType {
        /// The [`COMMAND`] value.
        pub const fn code(self) -> u32 {
            self as u32
        }

        /// The type with [`COMMAND`] value `code`.
        pub const fn from_code(code: u32) -> Option<Self> {
            let index = code.wrapping_sub(1) as usize;
            if index < CRASH_TYPES.len() {
                Some(CRASH_TYPES[index].crash)
            } else {
                None
            }
        }

        /// The name, description and code of this type.
        pub const fn info(self) -> &'static CrashTypeInfo {
            &CRASH_TYPES[self as usize - 1]
        }

        /// The QMP name (`"PANIC"`, `"NMI_PANIC"`...).
        pub const fn name(self) -> &'static str {
            self.info().name
        }

        /// The type named `name`, ignoring ASCII case. A host-side helper:
        /// the guest works with codes ([`CrashType::from_code`]).
        pub fn from_name(name: &str) -> Option<Self> {
            CRASH_TYPES
                .iter()
                .find(|info| info.name.eq_ignore_ascii_case(name))
                .map(|info| info.crash)
        }

        /// Whether the device delivers this type by NMI instead of
        /// [`CRASH_VECTOR`].
        pub const fn delivered_by_nmi(self) -> bool {
            matches!(self, CrashType::NmiPanic)
        }
    }
}

pub mod vmcoreinfo {
    //! VMCOREINFO registration (the register version of QEMU's `vmcoreinfo`
    //! fw_cfg device, docs/specs/vmcoreinfo.rst).
    //!
    //! The guest writes the physical address and size of its VMCOREINFO ELF
    //! note (a whole note: `Elf64_Nhdr`, name `"VMCOREINFO"`, `KEY=value\n`
    //! text), then commits by writing the format to [`FORMAT`]. [`STATUS`] then
    //! tells whether the VMM accepted it. Writing [`FORMAT_NONE`] unregisters.
    //!
    //! | offset | name | access | meaning |
    //! |--------|------|--------|---------|
    //! | 0x00 | [`ID`] | R | [`ID_MAGIC`] (`"VMCI"`) |
    //! | 0x04 | [`PADDR_LO`] | RW | note GPA bits 31:0 |
    //! | 0x08 | [`PADDR_HI`] | RW | note GPA bits 63:32 |
    //! | 0x0C | [`SIZE`] | RW | note size in bytes, 1..=[`MAX_SIZE`] |
    //! | 0x10 | [`FORMAT`] | RW | write: commit with this guest format; read: formats the host supports ([`HOST_FORMATS`]) |
    //! | 0x14 | [`STATUS`] | R | outcome of the last commit, a [`status`] code |
    //!
    //! The registers are global (not per vCPU).

    /// Read-only magic at offset 0.
    pub const ID: u64 = 0x00;
    /// Note GPA bits 31:0.
    pub const PADDR_LO: u64 = 0x04;
    /// Note GPA bits 63:32.
    pub const PADDR_HI: u64 = 0x08;
    /// Note size in bytes.
    pub const SIZE: u64 = 0x0C;
    /// Commit (write) / host formats (read).
    pub const FORMAT: u64 = 0x10;
    /// Outcome of the last commit.
    pub const STATUS: u64 = 0x14;

    /// Value of [`ID`]: `"VMCI"`.
    pub const ID_MAGIC: u32 = super::magic(b"VMCI");

    /// Guest format "none": unregisters (QEMU `VMCOREINFO_FORMAT_NONE`).
    pub const FORMAT_NONE: u32 = 0;
    /// Guest format: an ELF note (QEMU `VMCOREINFO_FORMAT_ELF`).
    pub const FORMAT_ELF: u32 = 1;
    /// What [`FORMAT`] reads: a bit per supported format (bit `n` = format `n`).
    pub const HOST_FORMATS: u32 = 1 << FORMAT_ELF;
    /// Largest note accepted (QEMU allows up to 1 MiB; Linux's is one page).
    pub const MAX_SIZE: u32 = 64 * 1024;

    /// Values of [`STATUS`].
    pub mod status {
        /// A note is registered.
        pub const REGISTERED: u32 = 0;
        /// No note is registered (after reset or [`super::FORMAT_NONE`]).
        pub const NONE: u32 = 1;
        /// Rejected: size 0 or above [`super::MAX_SIZE`]; the previous
        /// registration, if any, stays.
        pub const BAD_SIZE: u32 = 2;
        /// Rejected: a format the host doesn't support; the previous
        /// registration, if any, stays.
        pub const BAD_FORMAT: u32 = 3;
        /// Rejected: PADDR + SIZE wraps around; the previous registration,
        /// if any, stays.
        pub const BAD_ADDRESS: u32 = 4;
    }
}

pub mod kdump {
    //! The kexec handover and vmcore-ready device.
    //!
    //! The guest writes the arguments, then the command code to [`CMD`], and
    //! reads [`STATUS`]. Registers are global (only the panicking CPU, or the
    //! single CPU of the capture kernel, uses the device).
    //!
    //! | offset | name | access | meaning |
    //! |--------|------|--------|---------|
    //! | 0x00 | [`ID`] | R | [`ID_MAGIC`] (`"KDMP"`) |
    //! | 0x04 | [`ARG0_LO`] | RW | argument 0 bits 31:0 |
    //! | 0x08 | [`ARG0_HI`] | RW | argument 0 bits 63:32 |
    //! | 0x0C | [`ARG1_LO`] | RW | argument 1 bits 31:0 |
    //! | 0x10 | [`ARG1_HI`] | RW | argument 1 bits 63:32 |
    //! | 0x14 | [`CMD`] | W (R: last command) | a [`cmd`] code; acts on the arguments |
    //! | 0x18 | [`STATUS`] | R | outcome of the last command, a [`status`] code |
    //!
    //! Commands:
    //! - [`cmd::KEXEC_HANDOVER`]: the first kernel, after `machine_crash_shutdown`,
    //!   is about to jump to the capture kernel. ARG0 = capture kernel entry
    //!   (GPA), ARG1 = elfcorehdr GPA. Sent before the jump; the VMM lets the
    //!   guest run on.
    //! - [`cmd::VMCORE_READY`]: the capture kernel validated the elfcorehdr.
    //!   ARG0 = elfcorehdr GPA, ARG1 = its size in bytes (1..=[`MAX_ELFCOREHDR_SIZE`]).
    //!   The VMM then writes the vmcore from it (treating it as hostile).
    //! - [`cmd::CAPTURE_FAILED`]: kdump cannot go on. ARG0 = a [`reason`] code,
    //!   ARG1 = a detail value (reason-specific, 0 if none). Sent by the capture
    //!   kernel, or by the first kernel when its pre-jump checks fail (it then
    //!   carries on down the no-kdump path).

    /// Read-only magic at offset 0.
    pub const ID: u64 = 0x00;
    /// Argument 0 bits 31:0.
    pub const ARG0_LO: u64 = 0x04;
    /// Argument 0 bits 63:32.
    pub const ARG0_HI: u64 = 0x08;
    /// Argument 1 bits 31:0.
    pub const ARG1_LO: u64 = 0x0C;
    /// Argument 1 bits 63:32.
    pub const ARG1_HI: u64 = 0x10;
    /// Command register.
    pub const CMD: u64 = 0x14;
    /// Outcome of the last command.
    pub const STATUS: u64 = 0x18;

    /// Value of [`ID`]: `"KDMP"`.
    pub const ID_MAGIC: u32 = super::magic(b"KDMP");

    /// Largest elfcorehdr [`cmd::VMCORE_READY`] accepts: 1 MiB (over 18,000
    /// program headers; the VMM's parser bounds it again).
    pub const MAX_ELFCOREHDR_SIZE: u64 = 1 << 20;

    /// Command codes written to [`CMD`].
    pub mod cmd {
        /// ARG0 = capture kernel entry, ARG1 = elfcorehdr GPA.
        pub const KEXEC_HANDOVER: u32 = 1;
        /// ARG0 = elfcorehdr GPA, ARG1 = its size.
        pub const VMCORE_READY: u32 = 2;
        /// ARG0 = reason code, ARG1 = detail.
        pub const CAPTURE_FAILED: u32 = 3;
    }

    /// Values of [`STATUS`].
    pub mod status {
        /// The command was accepted and reported to the VMM.
        pub const OK: u32 = 0;
        /// Unknown command code: nothing was reported.
        pub const BAD_COMMAND: u32 = 1;
        /// Arguments out of range (a zero address, a size of 0 or above the
        /// maximum, an elfcorehdr that wraps): nothing was reported.
        pub const BAD_ARGUMENT: u32 = 2;
        /// No command since reset.
        pub const IDLE: u32 = 0xff;
    }

    /// Reason codes of [`cmd::CAPTURE_FAILED`] (ARG0). Unknown codes are
    /// still reported, as "unknown".
    pub mod reason {
        /// The capture kernel found no `elfcorehdr=` on its command line.
        pub const NO_ELFCOREHDR: u32 = 1;
        /// The elfcorehdr failed validation (ARG1: the guest's own detail).
        pub const BAD_ELFCOREHDR: u32 = 2;
        /// The capture image checksum did not match before the jump
        /// (purgatory's check; sent by the first kernel).
        pub const IMAGE_CORRUPT: u32 = 3;
        /// No CPU had a valid crash note.
        pub const NO_CRASH_NOTES: u32 = 4;
        /// Anything else.
        pub const OTHER: u32 = 5;
    }
}

#[cfg(test)]
mod tests {
    use super::crash::{CrashType, CRASH_TYPES};
    use super::vmx::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn vmcs_layout() {
        assert_eq!(size_of::<VmcsHeader>(), VMCS_HEADER_SIZE);
        assert_eq!(size_of::<VmcsRecord>(), VMCS_RECORD_SIZE);
        assert_eq!(offset_of!(VmcsHeader, count), 8);
        assert_eq!(offset_of!(VmcsRecord, value), 8);
        assert_eq!(VMCS_MAX_RECORDS, 255);
        assert!(record_offset(VMCS_MAX_RECORDS) <= VMCS_REGION_SIZE);
        assert_eq!(VMCS_REVISION & (1 << 31), 0);
    }

    #[test]
    fn field_encodings_decode() {
        assert_eq!(
            field::kind(field::VM_INSTRUCTION_ERROR),
            field::TYPE_READ_ONLY
        );
        assert_eq!(field::width(field::VM_INSTRUCTION_ERROR), field::WIDTH_32);
        assert_eq!(field::width(field::VMCS_LINK_POINTER), field::WIDTH_64);
        assert_eq!(field::kind(field::GUEST_RIP), field::TYPE_GUEST);
        assert_eq!(field::width(field::GUEST_RIP), field::WIDTH_NATURAL);
        assert_eq!(field::kind(field::HOST_RIP), field::TYPE_HOST);
        for f in [field::GUEST_RIP, field::HOST_RSP, field::GUEST_CR3] {
            assert_eq!(f & field::RESERVED_MASK, 0);
        }
    }

    #[test]
    fn crash_codes_names_round_trip() {
        for (i, info) in CRASH_TYPES.iter().enumerate() {
            assert_eq!(info.crash.code() as usize, i + 1);
            assert_eq!(CrashType::from_code(info.crash.code()), Some(info.crash));
            assert_eq!(CrashType::from_name(info.name), Some(info.crash));
            assert_eq!(info.crash.name(), info.name);
            assert!(!info.description.is_empty());
        }
        assert_eq!(CrashType::from_name("nmi_panic"), Some(CrashType::NmiPanic));
        assert_eq!(CrashType::from_name("PANIC "), None);
        assert_eq!(CrashType::from_code(0), None);
        assert_eq!(CrashType::from_code(10), None);
        assert_eq!(CrashType::from_code(u32::MAX), None);
        assert!(CrashType::NmiPanic.delivered_by_nmi());
        assert!(!CrashType::Panic.delivered_by_nmi());
    }

    #[test]
    fn port_blocks_are_disjoint_and_clear_of_the_pc_platform() {
        use crate::ports::*;
        let blocks = [
            (PV_VMX, PV_VMX_LEN),
            (CRASH_CONTROL, CRASH_CONTROL_LEN),
            (VMCOREINFO, VMCOREINFO_LEN),
            (KDUMP, KDUMP_LEN),
        ];
        // Ports the platform or QEMU's `pc` machine already uses: COM1, ACPI
        // PM, reset control, pvpanic, fw_cfg (0x510..=0x51b), PIC, PIT, RTC,
        // POST, i8042, PCI config.
        let taken = [
            (COM1, COM1_LEN),
            (PM1A_EVT_BLK, PM1A_EVT_LEN),
            (PM1A_CNT_BLK, PM1A_CNT_LEN),
            (PM_TMR_BLK, PM_TMR_LEN),
            (RESET_CONTROL, 1),
            (PVPANIC, 1),
            (0x510, 0xc),
            (0x20, 2),
            (0xa0, 2),
            (0x40, 4),
            (0x60, 5),
            (0x70, 2),
            (0x80, 1),
            (0xcf8, 8),
        ];
        let overlap = |(a, al): (u16, u16), (b, bl): (u16, u16)| a < b + bl && b < a + al;
        for (i, &block) in blocks.iter().enumerate() {
            assert_eq!(block.0 % 4, 0, "32-bit registers need aligned blocks");
            for &other in &blocks[i + 1..] {
                assert!(!overlap(block, other), "{block:x?} overlaps {other:x?}");
            }
            for &used in &taken {
                assert!(!overlap(block, used), "{block:x?} overlaps {used:x?}");
            }
        }
        // The register maps fit their blocks.
        assert!(ERROR < u64::from(PV_VMX_LEN));
        assert!(super::crash::VECTOR < u64::from(CRASH_CONTROL_LEN));
        assert!(super::vmcoreinfo::STATUS < u64::from(VMCOREINFO_LEN));
        assert!(super::kdump::STATUS < u64::from(KDUMP_LEN));
    }

    #[test]
    fn magics_are_ascii() {
        assert_eq!(ID_MAGIC.to_le_bytes(), *b"PVMX");
        assert_eq!(super::kdump::ID_MAGIC.to_le_bytes(), *b"KDMP");
        assert_ne!(ID_MAGIC, super::INVALID_READ);
    }
}
