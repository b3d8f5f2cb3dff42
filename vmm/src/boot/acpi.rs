//! ACPI tables: RSDP, XSDT, FADT (+FACS), MADT and DSDT, built with the
//! `acpi_tables` crate and placed at [`ACPI_TABLES_START`].
//!
//! The guest finds CPUs through the MADT (one Local APIC per vCPU, APIC ID =
//! vCPU index), the PM1a blocks, PM timer and reset register through the
//! FADT, and the `\_S5` sleep type and the legacy devices through the DSDT.

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml, AmlSink};
use guest_abi::ports;
use zerocopy::{Immutable, IntoBytes};

use super::layout::{ACPI_TABLES_START, HIGH_MEMORY_START, IOAPIC_ADDR, LAPIC_ADDR};

const OEM_ID: [u8; 6] = *b"RVMMLB";
const OEM_TABLE_ID: [u8; 8] = *b"VMMLAB  ";
const OEM_REVISION: u32 = 1;

/// The SCI's ISA IRQ (level-triggered, active high, as on PIIX4).
const SCI_IRQ: u8 = crate::device_manager::SCI_GSI as u8;
/// The PIT's ISA IRQ, wired to IOAPIC pin 2.
const PIT_IRQ: u8 = 0;
const PIT_GSI: u32 = 2;
/// MPS INTI flags: active high, level triggered.
const MPS_INTI_ACTIVE_HIGH_LEVEL: u16 = 0x000d;
/// MADT flags: PCAT_COMPAT (dual 8259s are present).
const MADT_PCAT_COMPAT: u32 = 1;
/// FADT IA-PC boot flags: no VGA, no CMOS RTC.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);

/// Errors building the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit below high memory.
    #[error("ACPI tables too large ({0} bytes)")]
    TooLarge(usize),
    /// More CPUs than a MADT's 8-bit APIC IDs can name.
    #[error("too many CPUs for xAPIC MADT entries ({0})")]
    TooManyCpus(u32),
}

/// The tables as one blob to copy to [`ACPI_TABLES_START`].
#[derive(Debug)]
pub struct AcpiTables {
    /// Bytes to place at `ACPI_TABLES_START`.
    pub bytes: Vec<u8>,
    /// Guest address of the RSDP (for `hvm_start_info.rsdp_paddr`).
    pub rsdp_addr: u64,
}

/// MADT type 2: an ISA IRQ routed to another GSI or with other polarity.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    r#type: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl InterruptSourceOverride {
    fn new(source: u8, gsi: u32, flags: u16) -> Self {
        Self {
            r#type: 2,
            length: 10,
            bus: 0,
            source,
            gsi,
            flags,
        }
    }
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// MADT type 4: which LINT pin of which processors is wired to NMI.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    r#type: u8,
    length: u8,
    processor_uid: u8,
    flags: u16,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

fn to_vec(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_gas(port: u16, bits: u8, size: AccessSize) -> GAS {
    GAS::new(AddressSpace::SystemIo, bits, 0, size, u64::from(port))
}

/// The MADT: one enabled Local APIC per vCPU, the IOAPIC, and the ISA
/// overrides a PC has (IRQ0 -> GSI2, SCI level-triggered).
fn madt(cpus: u32) -> Result<Vec<u8>, AcpiError> {
    let count = u8::try_from(cpus).map_err(|_| AcpiError::TooManyCpus(cpus))?;
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..count {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(count, IOAPIC_ADDR, 0));
    madt.add_structure(InterruptSourceOverride::new(PIT_IRQ, PIT_GSI, 0));
    madt.add_structure(InterruptSourceOverride::new(
        SCI_IRQ,
        u32::from(SCI_IRQ),
        MPS_INTI_ACTIVE_HIGH_LEVEL,
    ));
    madt.add_structure(LocalApicNmi {
        r#type: 4,
        length: 6,
        processor_uid: 0xff, // all processors
        flags: 0,
        lint: 1,
    });
    let mut bytes = to_vec(&madt);
    // acpi_tables 0.2 has no setter for the MADT flags (offset 40).
    bytes[40..44].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    fix_checksum(&mut bytes);
    Ok(bytes)
}

fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

/// The DSDT: the S5 sleep package and the platform's legacy devices; the
/// pvpanic device (`QEMU0001`, as QEMU lists it) only when `pvpanic` is set.
fn dsdt(pvpanic: bool) -> Vec<u8> {
    let s5_typ = u8::try_from(ports::SLP_TYP_S5).expect("SLP_TYP is 3 bits");
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5_typ, &s5_typ, &aml::ZERO, &aml::ZERO]),
    );

    let com1_len = u8::try_from(ports::COM1_LEN).expect("8 registers");
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com1_io = aml::IO::new(ports::COM1, ports::COM1, 1, com1_len);
    let com1_irq = aml::Interrupt::new(true, true, false, false, ports::COM1_IRQ);
    let com1_crs = aml::Name::new(
        "_CRS".into(),
        &aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]),
    );
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs]);
    let pevt_hid = aml::Name::new("_HID".into(), &PVPANIC_HID);
    let pevt_io = aml::IO::new(ports::PVPANIC, ports::PVPANIC, 1, 1);
    let pevt_crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&pevt_io]));
    let pevt = aml::Device::new("PEVT".into(), vec![&pevt_hid, &pevt_crs]);
    let mut devices: Vec<&dyn Aml> = vec![&com1];
    if pvpanic {
        devices.push(&pevt);
    }
    let sb = aml::Scope::new("\\_SB_".into(), devices);

    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&to_vec(&s5));
    table.append_slice(&to_vec(&sb));
    table.as_slice().to_vec()
}

/// The FADT: PC fixed hardware at the ports `guest_abi` names.
fn fadt(dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .firmware_ctrl_64(facs_addr)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        // The power button is fixed hardware (PM1 PWRBTN); no sleep button.
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.sci_int = u16::from(SCI_IRQ).into();
    fadt.pm1a_evt_blk = u32::from(ports::PM1A_EVT_BLK).into();
    fadt.pm1a_cnt_blk = u32::from(ports::PM1A_CNT_BLK).into();
    fadt.pm_tmr_blk = u32::from(ports::PM_TMR_BLK).into();
    fadt.pm1_evt_len = ports::PM1A_EVT_LEN as u8;
    fadt.pm1_cnt_len = ports::PM1A_CNT_LEN as u8;
    fadt.pm_tmr_len = ports::PM_TMR_LEN as u8;
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.x_pm1a_evt_blk = io_gas(ports::PM1A_EVT_BLK, 32, AccessSize::WordAccess);
    fadt.x_pm1a_cnt_blk = io_gas(ports::PM1A_CNT_BLK, 16, AccessSize::WordAccess);
    fadt.x_pm_tmr_blk = io_gas(ports::PM_TMR_BLK, 32, AccessSize::DwordAccess);
    fadt.reset_reg = io_gas(ports::RESET_CONTROL, 8, AccessSize::ByteAccess);
    fadt.reset_value = ports::RESET_VALUE;
    to_vec(&fadt.finalize())
}

fn align_up(value: usize, align: usize) -> usize {
    value.div_ceil(align) * align
}

/// The pvpanic device's ACPI hardware ID (QEMU's).
pub const PVPANIC_HID: &str = "QEMU0001";

/// Builds every table for `cpus` vCPUs; the DSDT lists the pvpanic device
/// when `pvpanic` is set.
pub fn build(cpus: u32, pvpanic: bool) -> Result<AcpiTables, AcpiError> {
    let base = ACPI_TABLES_START;
    let mut blob = vec![0u8; Rsdp::len()];
    let place = |blob: &mut Vec<u8>, table: &[u8], align: usize| -> u64 {
        let offset = align_up(blob.len(), align);
        blob.resize(offset, 0);
        blob.extend_from_slice(table);
        base + offset as u64
    };

    let facs_addr = place(&mut blob, &to_vec(&FACS::new()), 64);
    let dsdt_addr = place(&mut blob, &dsdt(pvpanic), 16);
    let fadt_addr = place(&mut blob, &fadt(dsdt_addr, facs_addr), 16);
    let madt_addr = place(&mut blob, &madt(cpus)?, 16);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(&mut blob, &to_vec(&xsdt), 16);

    let rsdp = to_vec(&Rsdp::new(OEM_ID, xsdt_addr));
    blob[..rsdp.len()].copy_from_slice(&rsdp);
    if base + blob.len() as u64 > HIGH_MEMORY_START {
        return Err(AcpiError::TooLarge(blob.len()));
    }
    Ok(AcpiTables {
        bytes: blob,
        rsdp_addr: base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// The table at guest address `addr`, by its header's length.
    fn table(t: &AcpiTables, addr: u64) -> &[u8] {
        let off = (addr - ACPI_TABLES_START) as usize;
        let len = u32_at(&t.bytes, off + 4) as usize;
        &t.bytes[off..off + len]
    }

    /// Walks RSDP -> XSDT and returns the tables by signature.
    fn tables(t: &AcpiTables) -> Vec<&[u8]> {
        let rsdp = &t.bytes[..36];
        let xsdt = table(t, u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        (36..xsdt.len())
            .step_by(8)
            .map(|off| table(t, u64_at(xsdt, off)))
            .collect()
    }

    fn find<'a>(t: &'a AcpiTables, sig: &[u8; 4]) -> &'a [u8] {
        tables(t)
            .into_iter()
            .find(|x| &x[..4] == sig)
            .expect("table present")
    }

    #[test]
    fn rsdp_is_revision_2_with_both_checksums() {
        let t = build(1, true).unwrap();
        let rsdp = &t.bytes[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2);
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        assert_eq!(t.rsdp_addr % 16, 0);
    }

    #[test]
    fn every_table_checksums_to_zero() {
        let t = build(4, true).unwrap();
        let rsdp = &t.bytes[..36];
        assert_eq!(sum(table(&t, u64_at(rsdp, 24))), 0, "XSDT");
        let all = tables(&t);
        assert_eq!(all.len(), 2);
        for tbl in all {
            assert_eq!(sum(tbl), 0, "{}", String::from_utf8_lossy(&tbl[..4]));
        }
        let fadt = find(&t, b"FACP");
        let dsdt = table(&t, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(dsdt), 0, "DSDT");
    }

    #[test]
    fn madt_lists_one_enabled_lapic_per_cpu() {
        for cpus in [1u32, 2, 8, 64] {
            let t = build(cpus, true).unwrap();
            let madt = find(&t, b"APIC");
            assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
            let mut ids = Vec::new();
            let mut ioapics = 0;
            let mut isos = Vec::new();
            let mut off = 44;
            while off < madt.len() {
                let (ty, len) = (madt[off], madt[off + 1] as usize);
                match ty {
                    0 => {
                        assert_eq!(madt[off + 2], madt[off + 3], "UID = APIC ID");
                        assert_eq!(u32_at(madt, off + 4) & 1, 1, "enabled");
                        ids.push(u32::from(madt[off + 3]));
                    }
                    1 => {
                        assert_eq!(u32_at(madt, off + 4), IOAPIC_ADDR);
                        ioapics += 1;
                    }
                    2 => isos.push((madt[off + 3], u32_at(madt, off + 4))),
                    _ => {}
                }
                off += len;
            }
            assert_eq!(off, madt.len());
            assert_eq!(ids, (0..cpus).collect::<Vec<_>>());
            assert_eq!(ioapics, 1);
            assert_eq!(isos, vec![(0, 2), (9, 9)]);
        }
    }

    #[test]
    fn too_many_cpus_for_xapic_ids_is_an_error() {
        assert!(matches!(build(256, true), Err(AcpiError::TooManyCpus(256))));
    }

    #[test]
    fn fadt_points_at_the_guest_abi_ports() {
        let t = build(1, true).unwrap();
        let fadt = find(&t, b"FACP");
        assert_eq!(u32_at(fadt, 56), u32::from(ports::PM1A_EVT_BLK));
        assert_eq!(u32_at(fadt, 64), u32::from(ports::PM1A_CNT_BLK));
        assert_eq!(u32_at(fadt, 76), u32::from(ports::PM_TMR_BLK));
        assert_eq!(fadt[88], ports::PM1A_EVT_LEN as u8);
        assert_eq!(fadt[89], ports::PM1A_CNT_LEN as u8);
        assert_eq!(fadt[91], ports::PM_TMR_LEN as u8);
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED");
        assert_eq!(flags & (1 << 4), 0, "fixed-hardware power button");
        // RESET_REG: system I/O, byte access, 0xCF9; RESET_VALUE 0x06.
        assert_eq!(fadt[116], 1);
        assert_eq!(u64_at(fadt, 120), u64::from(ports::RESET_CONTROL));
        assert_eq!(fadt[128], ports::RESET_VALUE);
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9, "SCI_INT");
    }

    #[test]
    fn dsdt_has_s5_and_com1() {
        let d = dsdt(false);
        let s5 = d
            .windows(4)
            .position(|w| w == b"_S5_")
            .expect("_S5_ present");
        // NameOp before it, then PackageOp, length, 4 elements, BytePrefix 5.
        assert_eq!(d[s5 - 1], 0x08);
        assert_eq!(d[s5 + 4], 0x12);
        assert_eq!(d[s5 + 6], 4);
        assert_eq!(&d[s5 + 7..s5 + 9], &[0x0a, ports::SLP_TYP_S5 as u8]);
        assert!(d.windows(4).any(|w| w == b"COM1"));
        // PNP0501 as an EISA ID: 0x0105d041.
        assert!(d.windows(4).any(|w| w == 0x0105_d041u32.to_le_bytes()));
        assert_eq!(u32_at(&d, 4) as usize, d.len());
    }

    /// The DSDT's pvpanic device: `_HID` "QEMU0001" as an AML string, and a
    /// `_CRS` with one 16-bit-decode I/O range at 0x505, length 1.
    #[test]
    fn dsdt_lists_pvpanic_only_when_enabled() {
        let d = dsdt(true);
        let mut hid = vec![0x0d]; // StringPrefix
        hid.extend_from_slice(b"QEMU0001\0");
        assert!(d.windows(hid.len()).any(|w| w == hid.as_slice()));
        assert!(d.windows(4).any(|w| w == b"PEVT"));
        let port = ports::PVPANIC.to_le_bytes();
        // IO descriptor: tag 0x47, decode16, min, max, alignment 1, length 1.
        let io = [0x47, 0x01, port[0], port[1], port[0], port[1], 0x01, 0x01];
        assert!(
            d.windows(io.len()).any(|w| w == io),
            "no IO(0x505, 1) in the DSDT"
        );
        assert_eq!(u32_at(&d, 4) as usize, d.len());
        assert_eq!(sum(&d), 0);

        let d = dsdt(false);
        assert!(!d.windows(8).any(|w| w == b"QEMU0001"));
        assert!(!d.windows(4).any(|w| w == b"PEVT"));
        assert!(!d.windows(io.len()).any(|w| w == io));
        assert_eq!(sum(&d), 0);
    }
}
