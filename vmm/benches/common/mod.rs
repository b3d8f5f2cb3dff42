//! What the benches share.

/// A process's RSS, and the part of it in guest RAM, in KiB, from
/// `/proc/PID/smaps`. Guest RAM is every mapping whose size is between
/// `guest_bytes` and `guest_bytes` + 8 MiB (QEMU rounds its RAM block up
/// a little; our VMM maps exactly `guest_bytes`).
pub fn rss_kib(pid: u32, guest_bytes: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut guest, mut size) = (0, 0, 0u64);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) {
                size = hi - lo;
                continue;
            }
        }
        if first == "Rss:" {
            let kib: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            total += kib;
            if (guest_bytes..=guest_bytes + (8 << 20)).contains(&size) {
                guest += kib;
            }
        }
    }
    (total, guest)
}
