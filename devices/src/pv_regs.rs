//! The register convention shared by the paravirtual devices (see
//! `guest_abi::pv`): every register is 32 bits wide, little-endian, and a
//! 64-bit value is written as a `_LO` and a `_HI` half.

use guest_abi::pv::REGISTER_WIDTH;

use crate::Access;

/// The value of a register write, or None when the access is not exactly
/// one register wide.
pub(crate) fn write_value(data: &[u8]) -> Option<u32> {
    <[u8; REGISTER_WIDTH]>::try_from(data)
        .ok()
        .map(u32::from_le_bytes)
}

/// `x` with its low 32 bits replaced by `lo` (a `_LO` register write).
pub(crate) fn with_low(x: u64, lo: u32) -> u64 {
    (x & !0xffff_ffff) | u64::from(lo)
}

/// `x` with its high 32 bits replaced by `hi` (a `_HI` register write).
pub(crate) fn with_high(x: u64, hi: u32) -> u64 {
    (x & 0xffff_ffff) | (u64::from(hi) << 32)
}

/// Counts and logs an access `device` ignores (wrong width, unknown
/// offset): never fatal, whatever the guest does.
pub(crate) fn ignored(counter: &mut u64, device: &str, access: Access, len: usize, what: &str) {
    *counter += 1;
    // A guest can do this in a loop: log the first few, then only at
    // powers of two, so it cannot flood the VMM's log.
    if *counter <= LOGGED_IN_FULL || counter.is_power_of_two() {
        log::warn!(
            "{device}: vCPU {} {what} {len} bytes at offset {:#x}, ignored ({} so far)",
            access.vcpu,
            access.offset,
            *counter
        );
    }
}

/// Bad accesses per device logged one by one before [`ignored`] thins out.
const LOGGED_IN_FULL: u64 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_replace_only_their_half() {
        let x = 0x1111_2222_3333_4444;
        assert_eq!(with_low(x, 0xaaaa_bbbb), 0x1111_2222_aaaa_bbbb);
        assert_eq!(with_high(x, 0xaaaa_bbbb), 0xaaaa_bbbb_3333_4444);
    }

    #[test]
    fn only_whole_registers_have_a_value() {
        assert_eq!(write_value(&[0x78, 0x56, 0x34, 0x12]), Some(0x1234_5678));
        for len in [0, 1, 2, 3, 5, 8] {
            assert_eq!(write_value(&vec![0; len]), None, "{len} bytes");
        }
    }
}
