//! I/O ports and their register values.
//!
//! The platform is PC-compatible where a standard exists (COM1, the ACPI
//! PM1 block at QEMU's PIIX4 address, the 0xCF9 reset control register,
//! pvpanic at 0x505), so the same guest runs under QEMU's `pc` machine.

/// The 16550 UART at COM1.
pub const COM1: u16 = 0x3f8;
/// Number of registers of a 16550 UART.
pub const COM1_LEN: u16 = 8;
/// ISA IRQ (and GSI) of COM1.
pub const COM1_IRQ: u32 = 4;

/// ACPI PM1a event block: PM1_STS (2 bytes) then PM1_EN (2 bytes).
pub const PM1A_EVT_BLK: u16 = 0x600;
/// Length of the PM1a event block.
pub const PM1A_EVT_LEN: u16 = 4;
/// ACPI PM1a control block (PM1_CNT, 2 bytes).
pub const PM1A_CNT_BLK: u16 = 0x604;
/// Length of the PM1a control block.
pub const PM1A_CNT_LEN: u16 = 2;
/// PM1_CNT: SLP_EN, bit 13. Writing it with SLP_TYP enters that sleep state.
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// PM1_CNT: the SLP_TYP field occupies bits 10..=12.
pub const PM1_CNT_SLP_TYP_SHIFT: u16 = 10;
/// PM1_CNT: mask of the SLP_TYP field (before shifting).
pub const PM1_CNT_SLP_TYP_MASK: u16 = 0x7;
/// The SLP_TYP value our DSDT's `\_S5` package gives for soft-off.
/// (A guest should read `\_S5` from the DSDT rather than rely on this.)
pub const SLP_TYP_S5: u16 = 5;

/// ACPI PM timer (PM_TMR_BLK, 4 bytes, 24-bit counter at 3.579545 MHz).
pub const PM_TMR_BLK: u16 = 0x608;
/// Length of the PM timer block.
pub const PM_TMR_LEN: u16 = 4;
/// PM timer frequency in Hz.
pub const PM_TMR_HZ: u64 = 3_579_545;

/// The PC reset control register. The FADT's RESET_REG points here.
pub const RESET_CONTROL: u16 = 0xcf9;
/// Value written to [`RESET_CONTROL`] for a hard reset (FADT RESET_VALUE).
pub const RESET_VALUE: u8 = 0x06;

/// pvpanic (QEMU docs/specs/pvpanic.rst): one byte-wide register.
pub const PVPANIC: u16 = 0x505;
/// pvpanic event bit: the guest panicked (QEMU emits GUEST_PANICKED).
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// pvpanic event bit: a crash kernel is loaded and about to run
/// (QEMU emits GUEST_CRASHLOADED and keeps the guest running).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// pvpanic event bit: the guest is shutting down (QEMU emits GUEST_PVSHUTDOWN).
pub const PVPANIC_SHUTDOWN: u8 = 1 << 2;

// Paravirtual devices of this VMM (register maps in `crate::pv`). They sit at
// 0x700..0x75f, clear of QEMU's `pc` machine (fw_cfg owns 0x510..0x51b), so a
// guest probing them under QEMU reads all-ones from an empty port instead of
// talking to another device. Every register is 32 bits wide.

/// The paravirtual VMX model (`crate::pv::vmx`).
pub const PV_VMX: u16 = 0x700;
/// Length of the pv-VMX register block.
pub const PV_VMX_LEN: u16 = 0x20;
/// LKDTM-style crash injection (`crate::pv::crash`).
pub const CRASH_CONTROL: u16 = 0x720;
/// Length of the crash-control register block.
pub const CRASH_CONTROL_LEN: u16 = 0x10;
/// VMCOREINFO registration (`crate::pv::vmcoreinfo`).
pub const VMCOREINFO: u16 = 0x730;
/// Length of the vmcoreinfo register block.
pub const VMCOREINFO_LEN: u16 = 0x20;
/// kexec handover and vmcore-ready reports (`crate::pv::kdump`).
pub const KDUMP: u16 = 0x750;
/// Length of the kdump register block.
pub const KDUMP_LEN: u16 = 0x20;

/// The i8042 controller's command port. The VMM emulates only its reset
/// pulse (command 0xFE), the guest's last-resort reset path.
pub const I8042_COMMAND: u16 = 0x64;

/// Every port range the VMM emulates, `(first port, length)`: what a guest
/// (or a fuzzer) must be able to hit with garbage without harm.
pub const EMULATED_PORTS: [(u16, u16); 11] = [
    (COM1, COM1_LEN),
    (PM1A_EVT_BLK, PM1A_EVT_LEN),
    (PM1A_CNT_BLK, PM1A_CNT_LEN),
    (PM_TMR_BLK, PM_TMR_LEN),
    (RESET_CONTROL, 1),
    (I8042_COMMAND, 1),
    (PVPANIC, 1),
    (PV_VMX, PV_VMX_LEN),
    (CRASH_CONTROL, CRASH_CONTROL_LEN),
    (VMCOREINFO, VMCOREINFO_LEN),
    (KDUMP, KDUMP_LEN),
];
