//! ACPI table discovery and parsing: RSDP, RSDT/XSDT, MADT, FADT, `\_S5`.
//!
//! Tables are read through [`PhysMem`], so the kernel passes its identity
//! mapping and the host tests pass synthetic memory. Every table's checksum
//! is validated; lengths and offsets come from the guest's firmware, so each
//! read is bounds-checked and a bad table is an error, never a panic.

use crate::MAX_CPUS;

/// Read access to physical memory.
pub trait PhysMem {
    /// `len` bytes at physical `addr`, or `None` if that range is not memory.
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]>;
}

/// What went wrong while reading the ACPI tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No valid RSDP at the given address or in the BIOS areas.
    NoRsdp,
    /// A table's address is outside readable memory.
    Unreadable {
        /// The table's physical address.
        addr: u64,
    },
    /// A table is shorter than its header or its fixed fields.
    Truncated {
        /// The table's signature.
        signature: [u8; 4],
    },
    /// A table's bytes do not sum to zero.
    BadChecksum {
        /// The table's signature.
        signature: [u8; 4],
    },
    /// The RSDT/XSDT has no MADT.
    NoMadt,
}

impl AcpiError {
    /// A short description for the console.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoRsdp => "no valid RSDP",
            Self::Unreadable { .. } => "table outside memory",
            Self::Truncated { .. } => "table truncated",
            Self::BadChecksum { .. } => "bad table checksum",
            Self::NoMadt => "no MADT",
        }
    }
}

/// Result alias for this module.
pub type Result<T> = core::result::Result<T, AcpiError>;

/// Size of the common table header.
pub const SDT_HEADER_LEN: usize = 36;
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;

/// The byte sum of `bytes`, mod 256. Adds eight bytes per step (each CPL0
/// instruction costs about 1 us under this host's emulator): the even and
/// odd bytes of each word go to 16-bit lanes, which are folded before they
/// can overflow.
fn sum(bytes: &[u8]) -> u8 {
    const LANES: u64 = 0x00ff_00ff_00ff_00ff;
    // Each step adds at most 2 * 255 to a lane; 128 steps stay below 65536.
    const STEPS_PER_FOLD: u32 = 128;
    let fold = |acc: u64| {
        ((acc & 0xffff) + ((acc >> 16) & 0xffff) + ((acc >> 32) & 0xffff) + (acc >> 48)) as u8
    };
    let mut total = 0u8;
    let mut acc = 0u64;
    let mut steps = 0;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(<[u8; 8]>::try_from(w).unwrap_or([0; 8]));
        acc += (x & LANES) + ((x >> 8) & LANES);
        steps += 1;
        if steps == STEPS_PER_FOLD {
            total = total.wrapping_add(fold(acc));
            acc = 0;
            steps = 0;
        }
    }
    total = total.wrapping_add(fold(acc));
    words
        .remainder()
        .iter()
        .fold(total, |t, b| t.wrapping_add(*b))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let lo = u32_at(b, off)? as u64;
    let hi = u32_at(b, off + 4)? as u64;
    Some(lo | (hi << 32))
}

fn signature(b: &[u8]) -> [u8; 4] {
    match b.get(..4) {
        Some(s) => [s[0], s[1], s[2], s[3]],
        None => *b"????",
    }
}

/// The Root System Description Pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    /// Where it was found.
    pub addr: u64,
    /// 0 for ACPI 1.0 (RSDT only), 2 or more for ACPI 2.0+ (XSDT).
    pub revision: u8,
    /// RSDT address.
    pub rsdt: u32,
    /// XSDT address (0 if revision < 2).
    pub xsdt: u64,
}

/// Parses and validates the RSDP at `addr`.
pub fn parse_rsdp(mem: &dyn PhysMem, addr: u64) -> Result<Rsdp> {
    let b = mem.read(addr, RSDP_V1_LEN).ok_or(AcpiError::NoRsdp)?;
    if b.get(..8) != Some(RSDP_SIGNATURE.as_slice()) || sum(b) != 0 {
        return Err(AcpiError::NoRsdp);
    }
    let revision = b.get(15).copied().ok_or(AcpiError::NoRsdp)?;
    let rsdt = u32_at(b, 16).ok_or(AcpiError::NoRsdp)?;
    let mut xsdt = 0;
    if revision >= 2 {
        let b = mem.read(addr, RSDP_V2_LEN).ok_or(AcpiError::NoRsdp)?;
        let len = u32_at(b, 20).ok_or(AcpiError::NoRsdp)? as usize;
        let full = mem
            .read(addr, len.max(RSDP_V2_LEN))
            .ok_or(AcpiError::NoRsdp)?;
        if sum(full) != 0 {
            return Err(AcpiError::NoRsdp);
        }
        xsdt = u64_at(b, 24).ok_or(AcpiError::NoRsdp)?;
    }
    Ok(Rsdp {
        addr,
        revision,
        rsdt,
        xsdt,
    })
}

/// Finds the RSDP: at `hint` if non-zero (PVH's `rsdp_paddr`), else in the
/// first KiB of the EBDA (segment `ebda_segment`) and then 0xE0000-0xFFFFF,
/// on 16-byte boundaries, as ACPI 5.2.5.1 says.
pub fn find_rsdp(mem: &dyn PhysMem, hint: u64, ebda_segment: u16) -> Result<Rsdp> {
    if hint != 0 {
        return parse_rsdp(mem, hint);
    }
    let ebda = (ebda_segment as u64) << 4;
    let areas = [(ebda, 1024usize), (0xe0000, 0x20000)];
    for (base, len) in areas {
        if base == 0 {
            continue;
        }
        let Some(area) = mem.read(base, len) else {
            continue;
        };
        for (i, chunk) in area.chunks_exact(16).enumerate() {
            if chunk.get(..8) == Some(RSDP_SIGNATURE.as_slice()) {
                if let Ok(rsdp) = parse_rsdp(mem, base + 16 * i as u64) {
                    return Ok(rsdp);
                }
            }
        }
    }
    Err(AcpiError::NoRsdp)
}

/// Reads the whole table at `addr` and validates its length and checksum.
pub fn read_table(mem: &dyn PhysMem, addr: u64) -> Result<&[u8]> {
    let header = mem
        .read(addr, SDT_HEADER_LEN)
        .ok_or(AcpiError::Unreadable { addr })?;
    let signature = signature(header);
    let len = u32_at(header, 4).ok_or(AcpiError::Truncated { signature })? as usize;
    if len < SDT_HEADER_LEN {
        return Err(AcpiError::Truncated { signature });
    }
    let table = mem.read(addr, len).ok_or(AcpiError::Unreadable { addr })?;
    if sum(table) != 0 {
        return Err(AcpiError::BadChecksum { signature });
    }
    Ok(table)
}

/// Finds the table with `sig` through the XSDT (revision >= 2 with a
/// non-zero address) or the RSDT. `Ok(None)` if it is not listed.
pub fn find_table<'m>(
    mem: &'m dyn PhysMem,
    rsdp: &Rsdp,
    sig: &[u8; 4],
) -> Result<Option<&'m [u8]>> {
    let (root, entry_len) = if rsdp.revision >= 2 && rsdp.xsdt != 0 {
        (rsdp.xsdt, 8)
    } else {
        (rsdp.rsdt as u64, 4)
    };
    let root = read_table(mem, root)?;
    let entries = root.get(SDT_HEADER_LEN..).unwrap_or(&[]);
    for entry in entries.chunks_exact(entry_len) {
        let addr = if entry_len == 8 {
            u64_at(entry, 0)
        } else {
            u32_at(entry, 0).map(u64::from)
        };
        let Some(addr) = addr else { continue };
        // Compare the signature before summing the whole table.
        if mem.read(addr, 4) == Some(sig.as_slice()) {
            return read_table(mem, addr).map(Some);
        }
    }
    Ok(None)
}

/// APIC IDs of CPUs, in a fixed-capacity list (no allocator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuList {
    ids: [u32; MAX_CPUS],
    len: usize,
    /// Entries that did not fit (more than [`MAX_CPUS`] or over a limit).
    pub dropped: u32,
}

impl Default for CpuList {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuList {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            ids: [0; MAX_CPUS],
            len: 0,
            dropped: 0,
        }
    }

    /// Appends `apic_id`, or counts it as dropped when full.
    pub fn push(&mut self, apic_id: u32) {
        match self.ids.get_mut(self.len) {
            Some(slot) => {
                *slot = apic_id;
                self.len += 1;
            }
            None => self.dropped += 1,
        }
    }

    /// The APIC IDs in order.
    pub fn as_slice(&self) -> &[u32] {
        self.ids.get(..self.len).unwrap_or(&[])
    }

    /// Number of CPUs listed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The boot order Linux uses: the boot CPU (`bsp`) first as CPU 0, then
    /// the others in MADT order, at most `limit` CPUs in all. CPUs beyond
    /// the limit are counted in `dropped`.
    pub fn boot_order(&self, bsp: u32, limit: usize) -> CpuList {
        let mut out = CpuList::new();
        out.push(bsp);
        for &id in self.as_slice() {
            if id == bsp {
                continue;
            }
            if out.len < limit {
                out.push(id);
            } else {
                out.dropped += 1;
            }
        }
        out.dropped += self.dropped;
        out
    }
}

/// The parts of the MADT the kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Madt {
    /// Physical address of the local APIC registers.
    pub lapic_addr: u32,
    /// Enabled CPUs (Local APIC and x2APIC entries), in table order.
    pub cpus: CpuList,
    /// Entries neither enabled nor online-capable, or online-capable ones
    /// (hot-pluggable, not running at boot, so not started; as Linux).
    pub not_enabled: u32,
}

const MADT_LOCAL_APIC: u8 = 0;
const MADT_LOCAL_X2APIC: u8 = 9;
const MADT_ENABLED: u32 = 1 << 0;

/// Parses a validated MADT (`APIC`).
pub fn parse_madt(table: &[u8]) -> Result<Madt> {
    let signature = signature(table);
    let lapic_addr = u32_at(table, SDT_HEADER_LEN).ok_or(AcpiError::Truncated { signature })?;
    let mut madt = Madt {
        lapic_addr,
        cpus: CpuList::new(),
        not_enabled: 0,
    };
    let mut off = SDT_HEADER_LEN + 8;
    while let Some(&[kind, len]) = table.get(off..off + 2) {
        let len = len as usize;
        let Some(entry) = table.get(off..off + len) else {
            return Err(AcpiError::Truncated { signature });
        };
        if len < 2 {
            return Err(AcpiError::Truncated { signature });
        }
        let cpu = match kind {
            MADT_LOCAL_APIC if len >= 8 => entry
                .get(3)
                .zip(u32_at(entry, 4))
                .map(|(&id, flags)| (id as u32, flags)),
            MADT_LOCAL_X2APIC if len >= 16 => u32_at(entry, 4).zip(u32_at(entry, 8)),
            _ => None,
        };
        if let Some((apic_id, flags)) = cpu {
            if flags & MADT_ENABLED != 0 {
                madt.cpus.push(apic_id);
            } else {
                madt.not_enabled += 1;
            }
        }
        off += len;
    }
    Ok(madt)
}

/// Address spaces of a Generic Address Structure.
pub const GAS_SYSTEM_MEMORY: u8 = 0;
/// I/O port space.
pub const GAS_SYSTEM_IO: u8 = 1;

/// The FADT's reset register (a Generic Address Structure) and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetReg {
    /// [`GAS_SYSTEM_IO`] or [`GAS_SYSTEM_MEMORY`] (others are unsupported).
    pub space: u8,
    /// Port or physical address.
    pub addr: u64,
    /// The byte to write.
    pub value: u8,
}

/// The parts of the FADT the kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fadt {
    /// PM1a control block port (0 if none).
    pub pm1a_cnt: u32,
    /// The reset register, when the FADT flags say it is supported.
    pub reset: Option<ResetReg>,
    /// DSDT address (X_DSDT when present and non-zero).
    pub dsdt: u64,
}

const FADT_DSDT: usize = 40;
const FADT_PM1A_CNT_BLK: usize = 64;
const FADT_FLAGS: usize = 112;
const FADT_RESET_REG: usize = 116;
const FADT_RESET_VALUE: usize = 128;
const FADT_X_DSDT: usize = 140;
const FADT_RESET_REG_SUP: u32 = 1 << 10;

/// Parses a validated FADT (`FACP`).
pub fn parse_fadt(table: &[u8]) -> Result<Fadt> {
    let signature = signature(table);
    let truncated = AcpiError::Truncated { signature };
    let pm1a_cnt = u32_at(table, FADT_PM1A_CNT_BLK).ok_or(truncated)?;
    let mut dsdt = u32_at(table, FADT_DSDT).ok_or(truncated)? as u64;
    if let Some(x) = u64_at(table, FADT_X_DSDT).filter(|x| *x != 0) {
        dsdt = x;
    }
    let flags = u32_at(table, FADT_FLAGS).unwrap_or(0);
    let reset = match (
        table.get(FADT_RESET_REG),
        u64_at(table, FADT_RESET_REG + 4),
        table.get(FADT_RESET_VALUE),
    ) {
        (Some(&space), Some(addr), Some(&value))
            if flags & FADT_RESET_REG_SUP != 0
                && addr != 0
                && (space == GAS_SYSTEM_IO || space == GAS_SYSTEM_MEMORY) =>
        {
            Some(ResetReg { space, addr, value })
        }
        _ => None,
    };
    Ok(Fadt {
        pm1a_cnt,
        reset,
        dsdt,
    })
}

const AML_NAME_OP: u8 = 0x08;
const AML_ROOT_CHAR: u8 = b'\\';
const AML_PACKAGE_OP: u8 = 0x12;
const AML_BYTE_PREFIX: u8 = 0x0a;
const AML_ZERO_OP: u8 = 0x00;
const AML_ONE_OP: u8 = 0x01;

/// SLP_TYPa for S5 from the DSDT's `Name(\_S5_, Package(){a, ...})`, found
/// by the classic minimal scan (no AML interpreter).
pub fn find_s5_slp_typ(dsdt: &[u8]) -> Option<u8> {
    let body = dsdt.get(SDT_HEADER_LEN..)?;
    let mut from = 0;
    while let Some(pos) = body.get(from..)?.windows(4).position(|w| w == b"_S5_") {
        let i = from + pos;
        from = i + 1;
        let before = (
            i.checked_sub(2).and_then(|j| body.get(j)),
            i.checked_sub(1).and_then(|j| body.get(j)),
        );
        let named = matches!(
            before,
            (_, Some(&AML_NAME_OP)) | (Some(&AML_NAME_OP), Some(&AML_ROOT_CHAR))
        );
        if !named || body.get(i + 4) != Some(&AML_PACKAGE_OP) {
            continue;
        }
        // PkgLength: bits 7:6 of the lead byte count the bytes that follow.
        let Some(&lead) = body.get(i + 5) else {
            continue;
        };
        let elems = i + 6 + (lead >> 6) as usize; // NumElements byte
        let value = match body.get(elems + 1) {
            Some(&AML_BYTE_PREFIX) => body.get(elems + 2).copied(),
            Some(&AML_ZERO_OP) => Some(0),
            Some(&AML_ONE_OP) => Some(1),
            _ => None,
        };
        if let Some(v) = value.filter(|v| *v <= 7) {
            return Some(v);
        }
    }
    None
}

/// Everything the kernel takes from ACPI at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// The RSDP used.
    pub rsdp: Rsdp,
    /// CPUs and LAPIC address.
    pub madt: Madt,
    /// Power management registers, if a valid FADT exists.
    pub fadt: Option<Fadt>,
}

/// SLP_TYPa for soft-off from the DSDT the FADT names, if that DSDT is
/// valid and has a readable `\_S5`. Not part of [`discover`]: summing and
/// scanning a large DSDT (QEMU's is ~8 KiB) costs tens of thousands of
/// instructions, so the kernel does it only when it powers off.
pub fn s5_slp_typ(mem: &dyn PhysMem, fadt: &Fadt) -> Option<u8> {
    read_table(mem, fadt.dsdt).ok().and_then(find_s5_slp_typ)
}

/// Reads the MADT (required) and the FADT (optional: a bad or missing FADT
/// only loses the ACPI poweroff/reset paths).
pub fn discover(mem: &dyn PhysMem, rsdp: Rsdp) -> Result<Platform> {
    let madt = find_table(mem, &rsdp, b"APIC")?.ok_or(AcpiError::NoMadt)?;
    let madt = parse_madt(madt)?;
    let fadt = find_table(mem, &rsdp, b"FACP")
        .ok()
        .flatten()
        .and_then(|t| parse_fadt(t).ok());
    Ok(Platform { rsdp, madt, fadt })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 2 MiB of physical memory.
    struct Mem(Vec<u8>);

    impl PhysMem for Mem {
        fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
            let start = usize::try_from(addr).ok()?;
            self.0.get(start..start.checked_add(len)?)
        }
    }

    impl Mem {
        fn new() -> Self {
            Mem(vec![0; 2 << 20])
        }
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            self.0[addr as usize..addr as usize + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        bytes[at] = 0u8.wrapping_sub(sum(bytes));
    }

    fn sdt(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((SDT_HEADER_LEN + body.len()) as u32).to_le_bytes());
        t.push(revision);
        t.push(0);
        t.extend_from_slice(b"TESTID");
        t.extend_from_slice(b"TESTTABL");
        t.extend_from_slice(&[0; 12]);
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    fn rsdp(revision: u8, rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(RSDP_SIGNATURE);
        r.push(0);
        r.extend_from_slice(b"TESTID");
        r.push(revision);
        r.extend_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8);
        if revision >= 2 {
            r.extend_from_slice(&36u32.to_le_bytes());
            r.extend_from_slice(&xsdt.to_le_bytes());
            r.extend_from_slice(&[0; 4]);
            fix_checksum(&mut r, 32);
        }
        r
    }

    fn madt_body(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        for e in entries {
            b.extend_from_slice(e);
        }
        b
    }

    fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    fn x2apic(id: u32, flags: u32) -> Vec<u8> {
        let mut e = vec![9, 16, 0, 0];
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&id.to_le_bytes());
        e
    }

    fn fadt_body(pm1a: u32, dsdt: u32, x_dsdt: u64, reset: Option<(u8, u64, u8)>) -> Vec<u8> {
        let mut b = vec![0u8; 244 - SDT_HEADER_LEN];
        let at = |off: usize| off - SDT_HEADER_LEN;
        b[at(FADT_DSDT)..at(FADT_DSDT) + 4].copy_from_slice(&dsdt.to_le_bytes());
        b[at(FADT_PM1A_CNT_BLK)..at(FADT_PM1A_CNT_BLK) + 4].copy_from_slice(&pm1a.to_le_bytes());
        if let Some((space, addr, value)) = reset {
            b[at(FADT_FLAGS)..at(FADT_FLAGS) + 4]
                .copy_from_slice(&FADT_RESET_REG_SUP.to_le_bytes());
            b[at(FADT_RESET_REG)] = space;
            b[at(FADT_RESET_REG) + 1] = 8;
            b[at(FADT_RESET_REG) + 4..at(FADT_RESET_REG) + 12].copy_from_slice(&addr.to_le_bytes());
            b[at(FADT_RESET_VALUE)] = value;
        }
        b[at(FADT_X_DSDT)..at(FADT_X_DSDT) + 8].copy_from_slice(&x_dsdt.to_le_bytes());
        b
    }

    /// `DefName(_S5_, Package(4){value...})`, optionally with a root prefix.
    fn s5_aml(root: bool, value: &[u8]) -> Vec<u8> {
        let mut a = vec![0x10, 0x05, b'\\', 0x00]; // unrelated scope bytes first
        a.push(AML_NAME_OP);
        if root {
            a.push(b'\\');
        }
        a.extend_from_slice(b"_S5_");
        a.push(AML_PACKAGE_OP);
        a.push((2 + value.len() + 3) as u8);
        a.push(4);
        a.extend_from_slice(value);
        a.extend_from_slice(&[0, 0, 0]);
        a
    }

    /// QEMU-like layout: RSDP in the BIOS area, RSDT (rev 0) -> FACP, APIC.
    fn qemu_like(madt_entries: &[Vec<u8>]) -> Mem {
        let mut m = Mem::new();
        let dsdt = sdt(b"DSDT", 1, &s5_aml(false, &[0x00]));
        let fadt = sdt(
            b"FACP",
            1,
            &fadt_body(0x604, 0x7000, 0, Some((1, 0xcf9, 6))),
        );
        let madt = sdt(b"APIC", 1, &madt_body(madt_entries));
        let mut rsdt_body = Vec::new();
        rsdt_body.extend_from_slice(&0x8000u32.to_le_bytes());
        rsdt_body.extend_from_slice(&0x9000u32.to_le_bytes());
        m.put(0x7000, &dsdt);
        m.put(0x8000, &fadt);
        m.put(0x9000, &madt);
        m.put(0xa000, &sdt(b"RSDT", 1, &rsdt_body));
        m.put(0xf5a60, &rsdp(0, 0xa000, 0));
        m
    }

    #[test]
    fn wide_checksum_matches_bytewise_sum() {
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        for len in [0, 1, 7, 8, 9, 36, 1023, 1024, 1025, 4999, 5000] {
            let naive = data[..len].iter().fold(0u8, |a, b| a.wrapping_add(*b));
            assert_eq!(sum(&data[..len]), naive, "len {len}");
        }
        assert_eq!(sum(&[0xff; 4096]), 0u8.wrapping_sub(4096u32 as u8));
    }

    #[test]
    fn scans_bios_area_and_reads_rsdt() {
        let m = qemu_like(&[lapic(0, 0, 1), lapic(1, 1, 1), lapic(2, 2, 1)]);
        let r = find_rsdp(&m, 0, 0).expect("rsdp");
        assert_eq!(r.addr, 0xf5a60);
        assert_eq!(r.rsdt, 0xa000);
        let p = discover(&m, r).expect("platform");
        assert_eq!(p.madt.lapic_addr, 0xfee0_0000);
        assert_eq!(p.madt.cpus.as_slice(), &[0, 1, 2]);
        let f = p.fadt.expect("fadt");
        assert_eq!(f.pm1a_cnt, 0x604);
        assert_eq!(f.dsdt, 0x7000);
        assert_eq!(
            f.reset,
            Some(ResetReg {
                space: GAS_SYSTEM_IO,
                addr: 0xcf9,
                value: 6
            })
        );
        assert_eq!(s5_slp_typ(&m, &f), Some(0));
    }

    #[test]
    fn finds_rsdp_in_ebda_and_at_hint() {
        let mut m = qemu_like(&[lapic(0, 0, 1)]);
        let mut bios = m.0[0xf5a60..0xf5a60 + 20].to_vec();
        m.put(0x9fc00 + 0x40, &bios);
        assert_eq!(find_rsdp(&m, 0, 0x9fc0).unwrap().addr, 0x9fc40);
        assert_eq!(find_rsdp(&m, 0xf5a60, 0x9fc0).unwrap().addr, 0xf5a60);
        // A hint to garbage is an error, not a scan.
        assert_eq!(find_rsdp(&m, 0x1000, 0), Err(AcpiError::NoRsdp));
        // A bad RSDP checksum is skipped by the scan.
        bios[8] ^= 1;
        m.put(0x9fc00 + 0x40, &bios);
        m.put(0xf5a60, &bios);
        assert_eq!(find_rsdp(&m, 0, 0x9fc0), Err(AcpiError::NoRsdp));
    }

    #[test]
    fn xsdt_is_preferred_for_revision_2() {
        let mut m = qemu_like(&[lapic(0, 0, 1)]);
        let madt = sdt(
            b"APIC",
            4,
            &madt_body(&[lapic(0, 5, 1), x2apic(300, 1), x2apic(301, 0)]),
        );
        m.put(0x20000, &madt);
        m.put(0x21000, &sdt(b"XSDT", 1, &0x20000u64.to_le_bytes()));
        m.put(0xe0000, &rsdp(2, 0xa000, 0x21000));
        let r = find_rsdp(&m, 0, 0).unwrap();
        assert_eq!((r.revision, r.xsdt), (2, 0x21000));
        let p = discover(&m, r).unwrap();
        assert_eq!(p.madt.cpus.as_slice(), &[5, 300]);
        assert_eq!(p.madt.not_enabled, 1);
        assert_eq!(p.fadt, None, "the XSDT lists no FADT");
    }

    #[test]
    fn bad_table_checksum_is_rejected() {
        let mut m = qemu_like(&[lapic(0, 0, 1)]);
        m.0[0x9000 + 40] ^= 0xff; // corrupt the MADT
        let r = find_rsdp(&m, 0, 0).unwrap();
        assert_eq!(
            discover(&m, r),
            Err(AcpiError::BadChecksum {
                signature: *b"APIC"
            })
        );
        // A corrupt DSDT only loses \_S5.
        let mut m = qemu_like(&[lapic(0, 0, 1)]);
        m.0[0x7000 + 40] ^= 0xff;
        let p = discover(&m, r).unwrap();
        assert_eq!(s5_slp_typ(&m, &p.fadt.expect("fadt")), None);
    }

    #[test]
    fn madt_rejects_bad_entry_lengths() {
        let mut t = sdt(b"APIC", 1, &madt_body(&[vec![0, 0, 0, 0]]));
        assert!(parse_madt(&t).is_err());
        t = sdt(b"APIC", 1, &madt_body(&[vec![0, 40, 0, 0]]));
        assert!(parse_madt(&t).is_err());
        assert!(parse_madt(b"APIC").is_err());
    }

    #[test]
    fn madt_drops_cpus_beyond_capacity() {
        let entries: Vec<_> = (0..(MAX_CPUS as u32 + 3)).map(|i| x2apic(i, 1)).collect();
        let m = parse_madt(&sdt(b"APIC", 1, &madt_body(&entries))).unwrap();
        assert_eq!(m.cpus.len(), MAX_CPUS);
        assert_eq!(m.cpus.dropped, 3);
    }

    #[test]
    fn boot_order_puts_bsp_first_and_applies_limit() {
        let mut l = CpuList::new();
        for id in [4, 2, 7, 9] {
            l.push(id);
        }
        let o = l.boot_order(7, 3);
        assert_eq!(o.as_slice(), &[7, 4, 2]);
        assert_eq!(o.dropped, 1);
        assert_eq!(l.boot_order(2, 64).as_slice(), &[2, 4, 7, 9]);
    }

    #[test]
    fn s5_scan() {
        let d = |aml: Vec<u8>| sdt(b"DSDT", 2, &aml);
        assert_eq!(find_s5_slp_typ(&d(s5_aml(false, &[0x0a, 5]))), Some(5));
        assert_eq!(find_s5_slp_typ(&d(s5_aml(true, &[0x0a, 7]))), Some(7));
        assert_eq!(find_s5_slp_typ(&d(s5_aml(false, &[0x01]))), Some(1));
        assert_eq!(find_s5_slp_typ(&d(s5_aml(false, &[0x00]))), Some(0));
        // A reference to _S5_ that is not a Name definition is skipped.
        let mut aml = vec![0x70, b'_', b'S', b'5', b'_', 0x12];
        aml.extend(s5_aml(false, &[0x0a, 3]));
        assert_eq!(find_s5_slp_typ(&d(aml)), Some(3));
        assert_eq!(find_s5_slp_typ(&d(b"no sleep states here".to_vec())), None);
        let mut cut = s5_aml(false, &[0x0a]);
        cut.truncate(cut.len() - 3); // ends right after the BytePrefix
        assert_eq!(find_s5_slp_typ(&d(cut)), None);
    }

    #[test]
    fn fadt_prefers_x_dsdt_and_needs_reset_flag() {
        let f = parse_fadt(&sdt(b"FACP", 3, &fadt_body(0x604, 0x1000, 0x2000, None))).unwrap();
        assert_eq!(f.dsdt, 0x2000);
        assert_eq!(f.reset, None);
        assert!(parse_fadt(&sdt(b"FACP", 1, &[0; 10])).is_err());
    }
}
