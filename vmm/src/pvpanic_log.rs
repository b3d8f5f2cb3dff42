//! The VMM's record of pvpanic events: every event the guest reports is
//! logged on stderr with a wall-clock timestamp and the vCPU, and kept in a
//! bounded log (the `VMMPVPANIC` vmcore note's contents).

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use devices::pvpanic::PvpanicEvent;
use guest_abi::elfnote::PvpanicLogEntry;

/// Entries kept; later events are counted as dropped.
pub const PVPANIC_LOG_CAPACITY: usize = 1024;

/// The pvpanic event log of one VMM (it survives guest resets).
#[derive(Debug)]
pub struct PvpanicLog {
    created: Instant,
    inner: Mutex<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    entries: Vec<PvpanicLogEntry>,
    next_seq: u32,
    dropped: u32,
}

/// The event's name as QEMU's pvpanic spec spells the bit.
pub fn event_name(event: PvpanicEvent) -> &'static str {
    match event {
        PvpanicEvent::Panicked => "PANICKED",
        PvpanicEvent::CrashLoaded => "CRASH_LOADED",
        PvpanicEvent::Shutdown => "SHUTDOWN",
    }
}

impl PvpanicLog {
    /// An empty log; timestamps count from now (VM creation).
    pub fn new() -> Self {
        Self {
            created: Instant::now(),
            inner: Mutex::default(),
        }
    }

    /// Records `event` from `vcpu` and prints the stderr line
    /// `vmm: pvpanic: PANICKED from vcpu 2 at 2026-11-23T11:42:01.123Z`.
    pub fn record(&self, event: PvpanicEvent, vcpu: u32) -> PvpanicLogEntry {
        let timestamp_ns = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = PvpanicLogEntry {
            seq: inner.next_seq,
            events: u32::from(event.bit()),
            vcpu,
            pad: 0,
            timestamp_ns,
        };
        inner.next_seq = inner.next_seq.wrapping_add(1);
        if inner.entries.len() < PVPANIC_LOG_CAPACITY {
            inner.entries.push(entry);
        } else {
            inner.dropped = inner.dropped.saturating_add(1);
        }
        drop(inner);
        eprintln!(
            "vmm: pvpanic: {} from vcpu {vcpu} at {}",
            event_name(event),
            rfc3339_utc(SystemTime::now())
        );
        entry
    }

    /// Every kept entry, oldest first.
    pub fn entries(&self) -> Vec<PvpanicLogEntry> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .clone()
    }

    /// Events not kept because the log was full.
    pub fn dropped(&self) -> u32 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }
}

impl Default for PvpanicLog {
    fn default() -> Self {
        Self::new()
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, millisecond precision).
pub fn rfc3339_utc(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (H. Hinnant's
/// days-to-civil algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_format_as_rfc3339() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(rfc3339_utc(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(
            rfc3339_utc(at(1_795_434_121, 123)),
            "2026-11-23T11:42:01.123Z"
        );
        assert_eq!(
            rfc3339_utc(at(4_102_444_799, 999)),
            "2099-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn the_log_numbers_events_and_drops_beyond_capacity() {
        let log = PvpanicLog::new();
        let a = log.record(PvpanicEvent::Panicked, 2);
        let b = log.record(PvpanicEvent::CrashLoaded, 0);
        assert_eq!((a.seq, a.events, a.vcpu), (0, 1, 2));
        assert_eq!((b.seq, b.events, b.vcpu), (1, 2, 0));
        assert!(b.timestamp_ns >= a.timestamp_ns);
        for _ in 2..PVPANIC_LOG_CAPACITY + 3 {
            log.record(PvpanicEvent::Shutdown, 1);
        }
        assert_eq!(log.entries().len(), PVPANIC_LOG_CAPACITY);
        assert_eq!(log.dropped(), 3);
        assert_eq!(log.entries()[2].events, 4);
    }
}
