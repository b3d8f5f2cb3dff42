//! The VMM's side of kdump at crash time: write the vmcore the capture
//! kernel reports, fall back to a host-side dump when kdump fails, and a
//! watchdog for a kdump that never reports.
//!
//! The guest talks through the kdump device (`devices::kdump`, contract in
//! `guest_abi::pv::kdump`); its events reach the main loop through the
//! mailbox in order, and [`on_guest_event`] acts on them there:
//!
//! - `VMCORE_READY {elfcorehdr, size}`: pause every vCPU and capture it
//!   ([`crate::dump::capture`]), read the header from guest memory (checked
//!   reads, at most `MAX_ELFCOREHDR_SIZE` bytes), parse it against the RAM
//!   layout as hostile input ([`vmcore::parse_elfcorehdr`]), read the guest's
//!   notes through it, and write `vmcore-TIME-PID-N-kdump.elf` into the dump
//!   directory with [`vmcore::write_kdump_vmcore`] (temporary file, fsync,
//!   rename). Then the guest runs again (if it was running) and the capture
//!   kernel does its final action. The file is complete before the main loop
//!   looks at the next event, so a following poweroff or reset (which
//!   rebuilds memory) cannot cut it short. Reported as `DUMP_COMPLETED`,
//!   `KDUMP_COMPLETED {path, source: "kdump", guest_notes}`,
//!   [`Notification::DumpCompleted`] then [`Notification::KdumpCompleted`],
//!   `query-dump`, and `vmm: kdump: vmcore written to PATH (N bytes, K guest
//!   notes)` on stderr (N: bytes of guest memory dumped).
//! - Fallback: a header or note the parser refuses, or `CAPTURE_FAILED`
//!   (any reason, from the first kernel before the jump or from the capture
//!   kernel), or the watchdog: a host-side dump as [`crate::Vmm::dump_to_dir`]
//!   writes it, `vmm: kdump: falling back to a host-side dump: REASON` on
//!   stderr, QMP `KDUMP_FALLBACK {reason, cause, detail, path}` and
//!   [`Notification::KdumpFallback`]. A running guest runs on afterwards.
//! - The watchdog (`vmm run --kdump-timeout`, default
//!   [`DEFAULT_KDUMP_TIMEOUT`], 0 disables) arms on `KEXEC_HANDOVER` and on
//!   pvpanic `CRASH_LOADED`, is disarmed by `VMCORE_READY`,
//!   `CAPTURE_FAILED`, pvpanic `PANICKED` (no kdump is coming) and a VM
//!   rebuild, and on expiry falls back with the reason "kdump did not report
//!   a vmcore within N s". Its timerfd belongs to an event-manager
//!   subscriber ([`WatchdogSubscriber`]).
//!
//! One crash, one vmcore: the first vmcore written for a crash (kdump or
//! fallback) is remembered for the VM incarnation. A later fallback in the
//! same incarnation is skipped, and so is the `coredump-destroy` /
//! `coredump-restart` panic action's dump: after `CAPTURE_FAILED
//! IMAGE_CORRUPT` the first kernel goes on down its no-kdump panic path and
//! may send pvpanic `PANICKED`, whose action then still applies (pause,
//! poweroff, restart...) but without a second file. Dumps asked for
//! explicitly (QMP `dump-guest-memory`) are always written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use devices::kdump::CaptureFailure;
use devices::pvpanic::PvpanicEvent;
use devices::VmEvent;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use guest_abi::pv::kdump::MAX_ELFCOREHDR_SIZE;
use log::{error, info, warn};
use serde_json::json;
use vm_memory::{Bytes, GuestAddress};
use vmcore::{ElfCoreHdr, ElfCoreHdrError, WriteError, WriteOptions};
use vmm_sys_util::timerfd::TimerFd;

use crate::control::{Mailbox, Message, Notification, RunState};
use crate::dump::{self, error_chain, DumpError, DumpRequest};
use crate::runtime::Vmm;

/// How long kdump may take from `KEXEC_HANDOVER` (or `CRASH_LOADED`) to
/// `VMCORE_READY` before the VMM writes a host-side dump instead.
pub const DEFAULT_KDUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// The watchdog timerfd's event-manager token.
const WATCHDOG_TOKEN: u32 = 0x6b64;

/// Errors of the kdump path.
#[derive(Debug, thiserror::Error)]
pub enum KdumpError {
    /// The watchdog's timerfd could not be created or set.
    #[error("kdump watchdog timer")]
    Timer(#[source] std::io::Error),
    /// The guest reported a header larger than the device contract allows.
    #[error("elfcorehdr of {size:#x} bytes exceeds the {max:#x}-byte limit")]
    HeaderTooLarge {
        /// The size reported.
        size: u64,
        /// `MAX_ELFCOREHDR_SIZE`.
        max: u64,
    },
    /// The header's bytes are not all in guest RAM.
    #[error("elfcorehdr [{start:#x}-{end:#x}] is not in guest RAM")]
    HeaderUnreadable {
        /// GPA reported.
        start: u64,
        /// End (exclusive, saturated).
        end: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The parser refused the header.
    #[error("elfcorehdr refused")]
    Refused(#[source] ElfCoreHdrError),
    /// A note the header points at was refused.
    #[error("guest notes refused")]
    Notes(#[source] ElfCoreHdrError),
    /// The vCPUs could not be captured, or another dump is running.
    #[error("cannot capture the VM")]
    Capture(#[source] DumpError),
    /// Writing the vmcore failed (no file under the final name).
    #[error("writing the kdump vmcore failed")]
    Write(#[source] WriteError),
}

impl KdumpError {
    /// Whether the guest's data is at fault (so a host-side dump is due).
    fn is_guest_fault(&self) -> bool {
        matches!(
            self,
            Self::HeaderTooLarge { .. }
                | Self::HeaderUnreadable { .. }
                | Self::Refused(_)
                | Self::Notes(_)
        )
    }
}

/// Why the VMM wrote a host-side dump instead of a kdump vmcore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FallbackReason {
    /// The elfcorehdr, or a note it points at, was refused: the error chain.
    Refused(String),
    /// The guest reported `CAPTURE_FAILED`.
    CaptureFailed {
        /// The reporting vCPU.
        vcpu: u32,
        /// The reason code.
        reason: CaptureFailure,
        /// The guest's detail value.
        detail: u64,
    },
    /// The watchdog expired.
    Timeout(Duration),
}

impl FallbackReason {
    /// The `cause` field of `KDUMP_FALLBACK`.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Refused(_) => "elfcorehdr",
            Self::CaptureFailed { .. } => "capture-failed",
            Self::Timeout(_) => "timeout",
        }
    }

    /// The guest's detail value, for `CAPTURE_FAILED`.
    pub fn detail(&self) -> Option<u64> {
        match self {
            Self::CaptureFailed { detail, .. } => Some(*detail),
            _ => None,
        }
    }
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(why) => f.write_str(why),
            Self::CaptureFailed {
                vcpu,
                reason,
                detail,
            } => write!(
                f,
                "the guest reported CAPTURE_FAILED {} from vcpu {vcpu}: {reason} (detail {detail:#x})",
                reason_name(*reason)
            ),
            Self::Timeout(t) => write!(
                f,
                "kdump did not report a vmcore within {}",
                format_duration(*t)
            ),
        }
    }
}

/// The ABI name of a `CAPTURE_FAILED` reason code.
pub fn reason_name(reason: CaptureFailure) -> String {
    match reason {
        CaptureFailure::NoElfcorehdr => "NO_ELFCOREHDR".into(),
        CaptureFailure::BadElfcorehdr => "BAD_ELFCOREHDR".into(),
        CaptureFailure::ImageCorrupt => "IMAGE_CORRUPT".into(),
        CaptureFailure::NoCrashNotes => "NO_CRASH_NOTES".into(),
        CaptureFailure::Other => "OTHER".into(),
        CaptureFailure::Unknown(code) => format!("UNKNOWN({code})"),
    }
}

/// "10s", or "250ms" for a timeout that is not whole seconds.
fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The watchdog as the VMM and its subscriber share it (both on the main
/// loop's thread).
#[derive(Debug)]
struct Watchdog {
    timer: TimerFd,
    armed: Option<Armed>,
    next_seq: u64,
}

/// One arming of the watchdog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Armed {
    /// Tells a stale expiry from the current one.
    seq: u64,
    timeout: Duration,
}

/// The kdump state of a [`Vmm`]: the watchdog and the vmcore of the
/// current crash.
#[derive(Debug)]
pub struct KdumpState {
    timeout: Duration,
    watchdog: Arc<Mutex<Watchdog>>,
    /// `(VM incarnation, path)` of the vmcore written for its crash.
    crash_vmcore: Option<(u64, PathBuf)>,
}

impl KdumpState {
    /// A disarmed watchdog with [`DEFAULT_KDUMP_TIMEOUT`].
    pub fn new() -> Result<Self, KdumpError> {
        let timer = TimerFd::new().map_err(|e| KdumpError::Timer(e.into()))?;
        // The subscriber reads the timer only when epoll says it expired,
        // but a read must never block the main loop.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&timer);
        // SAFETY: F_GETFL/F_SETFL on a valid fd this struct owns.
        let rc = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
            }
        };
        if rc < 0 {
            return Err(KdumpError::Timer(std::io::Error::last_os_error()));
        }
        Ok(Self {
            timeout: DEFAULT_KDUMP_TIMEOUT,
            watchdog: Arc::new(Mutex::new(Watchdog {
                timer,
                armed: None,
                next_seq: 0,
            })),
            crash_vmcore: None,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Watchdog> {
        self.watchdog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The watchdog's timeout; zero when it is off.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the watchdog is counting down.
    pub fn is_armed(&self) -> bool {
        self.lock().armed.is_some()
    }

    /// (Re)starts the countdown, unless the watchdog is off.
    fn arm(&mut self, why: &str) {
        if self.timeout.is_zero() {
            return;
        }
        let timeout = self.timeout;
        let mut w = self.lock();
        let seq = w.next_seq;
        w.next_seq += 1;
        match w.timer.reset(timeout, None) {
            Ok(()) => {
                w.armed = Some(Armed { seq, timeout });
                info!(
                    "kdump: watchdog armed by {why} ({})",
                    format_duration(timeout)
                );
            }
            Err(e) => {
                w.armed = None;
                warn!("kdump: cannot arm the watchdog: {e}");
            }
        }
    }

    /// Stops the countdown.
    fn disarm(&mut self) {
        let mut w = self.lock();
        if w.armed.take().is_some() {
            if let Err(e) = w.timer.clear() {
                warn!("kdump: cannot disarm the watchdog timer: {e}");
            }
        }
    }

    /// What a kdump device event does to the watchdog.
    fn observe(&mut self, event: &VmEvent) {
        match event {
            VmEvent::KexecHandover { .. } => self.arm("KEXEC_HANDOVER"),
            VmEvent::VmcoreReady { .. } | VmEvent::CaptureFailed { .. } => self.disarm(),
            _ => {}
        }
    }

    /// What a pvpanic event does to the watchdog: CRASH_LOADED means kdump
    /// is under way, PANICKED that none is coming.
    fn observe_pvpanic(&mut self, event: PvpanicEvent) {
        match event {
            PvpanicEvent::CrashLoaded => self.arm("pvpanic CRASH_LOADED"),
            PvpanicEvent::Panicked => self.disarm(),
            PvpanicEvent::Shutdown => {}
        }
    }

    /// The arming `seq` expired: disarm and return it, unless it is stale.
    fn take_expired(&mut self, seq: u64) -> Option<Armed> {
        let mut w = self.lock();
        match w.armed {
            Some(a) if a.seq == seq => w.armed.take(),
            _ => None,
        }
    }

    /// A new VM incarnation: no kdump is in flight any more.
    pub(crate) fn on_rebuild(&mut self) {
        self.disarm();
        self.crash_vmcore = None;
    }

    /// The subscriber that watches the timer and posts its expiries.
    pub(crate) fn subscriber(&self, mailbox: Arc<Mailbox>) -> WatchdogSubscriber {
        WatchdogSubscriber {
            watchdog: self.watchdog.clone(),
            mailbox,
        }
    }

    /// The vmcore written for the current incarnation's crash, if any.
    fn crash_vmcore(&self, generation: u64) -> Option<&Path> {
        match &self.crash_vmcore {
            Some((g, path)) if *g == generation => Some(path),
            _ => None,
        }
    }
}

/// Owns the watchdog's timerfd in the event loop; turns an expiry into
/// [`Message::KdumpWatchdog`].
pub(crate) struct WatchdogSubscriber {
    watchdog: Arc<Mutex<Watchdog>>,
    mailbox: Arc<Mailbox>,
}

impl MutEventSubscriber for WatchdogSubscriber {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() != WATCHDOG_TOKEN {
            return;
        }
        let mut w = self.watchdog.lock().unwrap_or_else(|p| p.into_inner());
        // Clears readiness. EAGAIN: re-armed or disarmed meanwhile.
        if let Err(e) = w.timer.wait() {
            if e.errno() != libc::EAGAIN {
                warn!("kdump: reading the watchdog timer failed: {e}");
            }
            return;
        }
        if let Some(armed) = w.armed {
            self.mailbox.post(Message::KdumpWatchdog { seq: armed.seq });
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let w = self.watchdog.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = ops.add(Events::with_data(&w.timer, WATCHDOG_TOKEN, EventSet::IN)) {
            error!("cannot watch the kdump watchdog timer: {e:?}");
        }
    }
}

impl Vmm {
    /// How long kdump may take to report a vmcore once it is under way
    /// (`vmm run --kdump-timeout`); zero turns the watchdog off.
    pub fn set_kdump_timeout(&mut self, timeout: Duration) {
        self.kdump.timeout = timeout;
        if timeout.is_zero() {
            self.kdump.disarm();
        }
    }

    /// The kdump watchdog's timeout (zero: off).
    pub fn kdump_timeout(&self) -> Duration {
        self.kdump.timeout()
    }
}

/// The kdump device's events, after `on_pv_event` has logged and
/// announced them: arm the watchdog, write the vmcore, or fall back.
pub(crate) fn on_guest_event(vmm: &mut Vmm, event: VmEvent) {
    vmm.kdump.observe(&event);
    match event {
        VmEvent::VmcoreReady {
            vcpu,
            elfcorehdr,
            size,
        } => write_kdump_vmcore(vmm, vcpu, elfcorehdr, size),
        VmEvent::CaptureFailed {
            vcpu,
            reason,
            detail,
        } => fall_back(
            vmm,
            FallbackReason::CaptureFailed {
                vcpu,
                reason,
                detail,
            },
        ),
        _ => {}
    }
}

/// pvpanic events, before the panic action applies: they only move the
/// watchdog.
pub(crate) fn on_pvpanic(vmm: &mut Vmm, event: PvpanicEvent) {
    vmm.kdump.observe_pvpanic(event);
}

/// The watchdog armed as `seq` expired (stale expiries are ignored).
pub(crate) fn on_watchdog(vmm: &mut Vmm, seq: u64) {
    if let Some(armed) = vmm.kdump.take_expired(seq) {
        fall_back(vmm, FallbackReason::Timeout(armed.timeout));
    }
}

/// The vmcore already written for the current crash (kdump's or the
/// fallback's), which the coredump panic actions do not repeat.
pub(crate) fn crash_vmcore(vmm: &Vmm) -> Option<PathBuf> {
    vmm.kdump
        .crash_vmcore(vmm.generation)
        .map(Path::to_path_buf)
}

/// `vmcore-TIME-PID-N-kdump.elf`.
fn kdump_dump_name() -> String {
    let name = dump::unique_dump_name();
    match name.strip_suffix(".elf") {
        Some(stem) => format!("{stem}-kdump.elf"),
        None => format!("{name}-kdump"),
    }
}

/// What the kdump writer produced.
struct Written {
    stats: vmcore::DumpStats,
    guest_notes: u64,
}

/// VMCORE_READY: write the vmcore from the guest's header, or fall back.
fn write_kdump_vmcore(vmm: &mut Vmm, vcpu: u32, elfcorehdr: u64, size: u64) {
    vmm.settle_active_dump();
    let was_running = vmm.state() == RunState::Running;
    let path = vmm.dump_dir().join(kdump_dump_name());
    let result = capture_and_write(vmm, &path, elfcorehdr, size);
    match result {
        Ok(w) => {
            vmm.report_dump(path.clone(), &Ok(w.stats.clone()));
            eprintln!(
                "vmm: kdump: vmcore written to {} ({} bytes, {} guest notes)",
                path.display(),
                w.stats.ram_bytes,
                w.guest_notes
            );
            vmm.emit_raw(
                "KDUMP_COMPLETED",
                json!({"path": path, "source": "kdump", "cpu": vcpu, "guest_notes": w.guest_notes}),
            );
            vmm.mailbox.notify(&Notification::KdumpCompleted {
                path: path.clone(),
                guest_notes: w.guest_notes,
            });
            vmm.kdump.crash_vmcore = Some((vmm.generation, path));
        }
        Err(e) if e.is_guest_fault() => {
            fall_back(vmm, FallbackReason::Refused(error_chain(&e)));
        }
        Err(e) => {
            let e = match e {
                KdumpError::Capture(d) => d,
                KdumpError::Write(w) => DumpError::Write(w),
                other => DumpError::Worker(error_chain(&other)),
            };
            eprintln!("vmm: kdump: no vmcore written: {}", error_chain(&e));
            vmm.report_dump(path, &Err(e));
        }
    }
    // Also after a fallback, which resumes by itself unless it was skipped.
    if was_running {
        vmm.vm().resume();
    }
}

/// Pauses and captures the VM, validates the guest's header and notes,
/// and writes the kdump vmcore to `path`. The vCPUs are left paused.
fn capture_and_write(
    vmm: &Vmm,
    path: &Path,
    elfcorehdr: u64,
    size: u64,
) -> Result<Written, KdumpError> {
    if vmm.dump_in_progress() {
        // settle_active_dump ran first: only a bug gets here.
        return Err(KdumpError::Capture(DumpError::Busy));
    }
    if size > MAX_ELFCOREHDR_SIZE {
        return Err(KdumpError::HeaderTooLarge {
            size,
            max: MAX_ELFCOREHDR_SIZE,
        });
    }
    let capture = dump::capture(vmm.vm()).map_err(KdumpError::Capture)?;
    // At most 1 MiB (checked above).
    let mut bytes = vec![0u8; size as usize];
    vmm.vm()
        .memory()
        .read_slice(&mut bytes, GuestAddress(elfcorehdr))
        .map_err(|source| KdumpError::HeaderUnreadable {
            start: elfcorehdr,
            end: elfcorehdr.saturating_add(size),
            source,
        })?;
    let opts = WriteOptions::default();
    let tracker = vmm.mailbox.dump.clone();
    capture.with_kdump_input((elfcorehdr, size), |input| {
        let hdr = vmcore::parse_elfcorehdr(&bytes, &ElfCoreHdr::ram_layout(input.ram))
            .map_err(KdumpError::Refused)?;
        // Reads and checks the notes before any file exists.
        let plan = vmcore::plan_kdump_vmcore(&hdr, input, &opts).map_err(|e| match e {
            WriteError::ElfCoreHdr(h) => KdumpError::Notes(h),
            other => KdumpError::Write(other),
        })?;
        tracker.start(hdr.loads.iter().map(|l| l.len).sum());
        let (mut progress, bar) =
            dump::progress_reporter(vmm.dump_progress_bar, Some(tracker.clone()));
        let result = vmcore::write_kdump_vmcore(path, &hdr, input, &opts, &mut progress);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        tracker.finish(result.is_ok());
        let stats = result.map_err(KdumpError::Write)?;
        info!(
            "kdump: wrote {} ({} PT_LOADs, {} notes)",
            path.display(),
            plan.loads(),
            plan.notes()
        );
        Ok(Written {
            stats,
            guest_notes: plan.guest_notes(),
        })
    })
}

/// Writes a host-side dump instead of kdump's, and says why.
fn fall_back(vmm: &mut Vmm, reason: FallbackReason) {
    vmm.kdump.disarm();
    if let Some(path) = crash_vmcore(vmm) {
        eprintln!(
            "vmm: kdump: {reason}; this crash's vmcore is already {}",
            path.display()
        );
        return;
    }
    let text = reason.to_string();
    eprintln!("vmm: kdump: falling back to a host-side dump: {text}");
    vmm.settle_active_dump();
    let path = vmm.dump_dir().join(dump::unique_dump_name());
    let result = vmm
        .dump_blocking(DumpRequest::new(&path), true)
        .map(|_| ())
        .map_err(|e| error_chain(&e));
    let mut data = json!({
        "reason": text,
        "cause": reason.cause(),
        "detail": reason.detail(),
        "path": path,
    });
    match &result {
        Ok(()) => {
            eprintln!("vmm: kdump: host-side vmcore written to {}", path.display());
            vmm.kdump.crash_vmcore = Some((vmm.generation, path.clone()));
        }
        Err(e) => {
            eprintln!("vmm: kdump: no host-side vmcore written: {e}");
            data["error"] = json!(e);
        }
    }
    vmm.emit_raw("KDUMP_FALLBACK", data);
    vmm.mailbox.notify(&Notification::KdumpFallback {
        reason: text,
        path,
        result,
    });
}

#[cfg(test)]
mod tests {
    //! Tiny 32-bit guests drive the real kdump device with port writes,
    //! after the test left in their RAM what a crashed first kernel would:
    //! crash notes, a VMCOREINFO note and the elfcorehdr (built by the
    //! guest kernel's own builder).

    use std::sync::mpsc::{Receiver, RecvTimeoutError};
    use std::time::Instant;

    use guest_abi::elfnote::{
        reg, CrashNote, ElfPrstatus, NOTE_NAME_CORE, NT_PRSTATUS, VMCOREINFO_ETEXT,
        VMCOREINFO_KERNEL_CS, VMCOREINFO_NR_CPUS, VMCOREINFO_STEXT,
    };
    use guest_abi::pv::kdump::{cmd, reason, ARG0_HI, ARG0_LO, ARG1_HI, ARG1_LO, CMD};
    use guest_kernel::elfcorehdr::{
        build_elfcorehdr, write_vmcoreinfo_note, CoreHdrLayout, PhysRange,
    };
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    use super::*;
    use crate::boot::pvh::tests::tiny_elf_with_code;
    use crate::config::{Kernel, VmConfig};
    use crate::runtime::ExitReason;

    const ENTRY: u64 = 0x10_0000;
    const WAIT: Duration = Duration::from_secs(20);
    const MEMORY: u64 = 16 << 20;
    /// Where the "first kernel" left its elfcorehdr, crash notes and
    /// VMCOREINFO note, and its crash-kernel reservation.
    const ELFCOREHDR: u64 = 0x40_0000;
    const CRASH_NOTES: u64 = 0x40_1000;
    const STRIDE: u64 = 0x180;
    const VMCOREINFO_NOTE: u64 = 0x40_2000;
    const CRASH_KERNEL: PhysRange = PhysRange::new(0x80_0000, 0x40_0000);
    const TEXT: (u64, u64) = (ENTRY, ENTRY + 0x1000);
    const KERNEL_CS: u64 = 0x08;

    /// 32-bit code: `out dx, eax` of `value` to `port`.
    fn out32(port: u16, value: u32) -> Vec<u8> {
        let p = port.to_le_bytes();
        let v = value.to_le_bytes();
        vec![0x66, 0xba, p[0], p[1], 0xb8, v[0], v[1], v[2], v[3], 0xef]
    }

    /// 32-bit code: `out dx, al` of `value` to `port`.
    fn out8(port: u16, value: u8) -> Vec<u8> {
        let p = port.to_le_bytes();
        vec![0x66, 0xba, p[0], p[1], 0xb0, value, 0xee]
    }

    /// 32-bit code: one kdump device command, as the guest issues it.
    fn kdump_command(command: u32, arg0: u64, arg1: u64) -> Vec<u8> {
        let base = guest_abi::ports::KDUMP;
        let at = |offset: u64| base + offset as u16;
        let mut code = Vec::new();
        code.extend(out32(at(ARG0_LO), arg0 as u32));
        code.extend(out32(at(ARG0_HI), (arg0 >> 32) as u32));
        code.extend(out32(at(ARG1_LO), arg1 as u32));
        code.extend(out32(at(ARG1_HI), (arg1 >> 32) as u32));
        code.extend(out32(at(CMD), command));
        code
    }

    fn pvpanic(bits: u8) -> Vec<u8> {
        out8(guest_abi::ports::PVPANIC, bits)
    }

    /// `hlt; jmp .-1`: idle forever.
    fn halt() -> Vec<u8> {
        vec![0xf4, 0xeb, 0xfd]
    }

    /// ACPI S5, as the capture kernel's final action would.
    fn poweroff() -> Vec<u8> {
        use guest_abi::ports::{PM1A_CNT_BLK, PM1_CNT_SLP_EN, PM1_CNT_SLP_TYP_SHIFT, SLP_TYP_S5};
        let p = PM1A_CNT_BLK.to_le_bytes();
        let v = (PM1_CNT_SLP_EN | (SLP_TYP_S5 << PM1_CNT_SLP_TYP_SHIFT)).to_le_bytes();
        let mut code = vec![0x66, 0xba, p[0], p[1], 0x66, 0xb8, v[0], v[1], 0x66, 0xef];
        code.extend(halt());
        code
    }

    /// A VMM built (not running) around `code`, dumping into a fresh
    /// directory.
    struct Setup {
        vmm: Vmm,
        dir: PathBuf,
        events: Receiver<Notification>,
    }

    fn setup(name: &str, cpus: u32, code: &[u8], on_panic: qmp::PanicAction) -> Setup {
        let tag = format!("vmm-test-{}-kdump-{name}", std::process::id());
        let kernel = std::env::temp_dir().join(format!("{tag}.elf"));
        let elf = tiny_elf_with_code(ENTRY, 0x1000, Some(ENTRY as u32), code);
        std::fs::write(&kernel, elf).unwrap();
        let vmm = Vmm::new(VmConfig {
            kernel: Kernel::Path(kernel.clone()),
            memory: MEMORY,
            cpus,
            on_panic,
            ..VmConfig::default()
        });
        std::fs::remove_file(&kernel).unwrap();
        let mut vmm = vmm.unwrap();
        let dir = std::env::temp_dir().join(tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        vmm.set_dump_dir(dir.clone());
        let events = vmm.handle().subscribe();
        Setup { vmm, dir, events }
    }

    /// Leaves a crashed first kernel's data in guest RAM: crash notes of
    /// the CPUs in `saved`, VMCOREINFO, and the elfcorehdr over all of it.
    /// Returns the header's length.
    fn leave_crash_data(vmm: &Vmm, cpus: u32, saved: &[u32]) -> u64 {
        let mem = vmm.vm().memory();
        for &cpu in saved {
            let mut st = ElfPrstatus::zeroed();
            st.pr_pid = cpu as i32 + 1;
            st.pr_reg[reg::RIP] = TEXT.0 + 0x10 * u64::from(cpu);
            st.pr_reg[reg::CS] = KERNEL_CS;
            let mut note = CrashNote::empty();
            note.write(&st);
            let at = CRASH_NOTES + STRIDE * u64::from(cpu);
            mem.write_slice(&note.bytes, GuestAddress(at)).unwrap();
        }
        let text = format!(
            "OSRELEASE=kdump-test\n{VMCOREINFO_STEXT}={:x}\n{VMCOREINFO_ETEXT}={:x}\n\
             {VMCOREINFO_KERNEL_CS}={KERNEL_CS}\n{VMCOREINFO_NR_CPUS}={cpus}\n",
            TEXT.0, TEXT.1
        );
        let mut note = vec![0u8; 0x400];
        let note_len = write_vmcoreinfo_note(&mut note, text.as_bytes()).unwrap();
        mem.write_slice(&note[..note_len], GuestAddress(VMCOREINFO_NOTE))
            .unwrap();
        let ram: Vec<PhysRange> = mem
            .iter()
            .map(|r| PhysRange::new(r.start_addr().0, r.len()))
            .collect();
        let notes: Vec<u64> = (0..u64::from(cpus))
            .map(|c| CRASH_NOTES + c * STRIDE)
            .collect();
        let layout = CoreHdrLayout {
            ram: &ram,
            crash_kernel: CRASH_KERNEL,
            crash_notes: &notes,
            crash_note_size: STRIDE,
            vmcoreinfo: PhysRange::new(VMCOREINFO_NOTE, note_len as u64),
        };
        let mut hdr = vec![0u8; 0x1000];
        let len = build_elfcorehdr(&layout, &mut hdr).unwrap();
        mem.write_slice(&hdr[..len], GuestAddress(ELFCOREHDR))
            .unwrap();
        len as u64
    }

    /// Overwrites 8 bytes of program header `index` (field at `offset`).
    fn patch_phdr(vmm: &Vmm, index: u64, offset: u64, value: u64) {
        let at = ELFCOREHDR + 64 + index * 56 + offset;
        vmm.vm()
            .memory()
            .write_slice(&value.to_le_bytes(), GuestAddress(at))
            .unwrap();
    }

    /// Runs `vmm` on its own thread; returns its handle and result channel.
    fn spawn(vmm: Vmm) -> (crate::VmmHandle, Receiver<Result<ExitReason, crate::Error>>) {
        let handle = vmm.handle();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(vmm.run());
        });
        (handle, rx)
    }

    /// Waits until `pick` accepts a notification; returns it and every
    /// notification seen before it.
    fn wait_for<T>(
        events: &Receiver<Notification>,
        mut pick: impl FnMut(&Notification) -> Option<T>,
    ) -> (T, Vec<Notification>) {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(n) => match pick(&n) {
                    Some(t) => return (t, seen),
                    None => seen.push(n),
                },
                Err(e) => panic!("waiting for a notification: {e:?}; saw {seen:?}"),
            }
        }
    }

    fn fallback(n: &Notification) -> Option<(String, PathBuf, Result<(), String>)> {
        match n {
            Notification::KdumpFallback {
                reason,
                path,
                result,
            } => Some((reason.clone(), path.clone(), result.clone())),
            _ => None,
        }
    }

    /// Asserts that no fallback is reported within `window`.
    fn assert_no_fallback(events: &Receiver<Notification>, window: Duration) {
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(n) => assert!(fallback(&n).is_none(), "unexpected {n:?}"),
                Err(RecvTimeoutError::Timeout) => return,
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// `vmm vmcore check|info FILE`, in process: exit code and stdout.
    fn vmcore_cli(check: bool, file: &Path) -> (i32, String) {
        use crate::vmcore_cmd::{run, VmcoreCommand};
        let file = file.to_path_buf();
        let cmd = if check {
            VmcoreCommand::Check { file, json: false }
        } else {
            VmcoreCommand::Info {
                file,
                kernel: None,
                json: false,
            }
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(&cmd, &mut out, &mut err);
        assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
        (code, String::from_utf8(out).unwrap())
    }

    fn stop(handle: &crate::VmmHandle, result: &Receiver<Result<ExitReason, crate::Error>>) {
        handle.stop();
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Stopped
        );
    }

    /// The capture kernel's report, then its poweroff: the vmcore is whole
    /// before the poweroff is acted on.
    #[test]
    fn vmcore_ready_writes_a_checkable_kdump_vmcore_before_the_poweroff() {
        let mut code = kdump_command(cmd::KEXEC_HANDOVER, 0x80_1000, ELFCOREHDR);
        let size_at = code.len();
        code.extend(kdump_command(cmd::VMCORE_READY, ELFCOREHDR, 0));
        code.extend(poweroff());
        // The size goes in once the header is built: ARG1_LO's immediate.
        let Setup {
            mut vmm,
            dir,
            events,
        } = setup("ready", 2, &code, qmp::PanicAction::Poweroff);
        let len = leave_crash_data(&vmm, 2, &[0, 1]);
        let imm = ENTRY + size_at as u64 + 2 * 10 + 5;
        vmm.vm()
            .memory()
            .write_slice(&(len as u32).to_le_bytes(), GuestAddress(imm))
            .unwrap();
        vmm.set_kdump_timeout(Duration::from_secs(30));
        let (_handle, result) = spawn(vmm);
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Poweroff
        );
        let seen: Vec<Notification> = events.try_iter().collect();
        let pos = |f: &dyn Fn(&Notification) -> bool| seen.iter().position(f);
        let dumped = pos(&|n| {
            matches!(n, Notification::DumpCompleted { path, result: Ok(_) }
                if path.to_string_lossy().ends_with("-kdump.elf"))
        })
        .unwrap_or_else(|| panic!("no DumpCompleted in {seen:?}"));
        let Notification::KdumpCompleted { path, guest_notes } = &seen[dumped + 1] else {
            panic!("no KdumpCompleted after the dump: {seen:?}");
        };
        assert_eq!(*guest_notes, 3, "2 crash notes + VMCOREINFO");
        let poweroff =
            pos(&|n| matches!(n, Notification::Guest(devices::VmEvent::Poweroff { .. })))
                .expect("poweroff");
        assert!(dumped < poweroff, "{seen:?}");
        assert!(!seen.iter().any(|n| fallback(n).is_some()), "{seen:?}");

        // Only the final name: no temporary file left beside it.
        assert_eq!(files_in(&dir), vec![path.clone()]);
        let core = vmcore::Vmcore::open(path).unwrap();
        assert!(core.is_kdump());
        let marker = core.kdump_note().expect("VMMKDUMP note");
        assert_eq!(
            (marker.elfcorehdr, marker.elfcorehdr_len, marker.guest_notes),
            (ELFCOREHDR, len, 3)
        );
        assert_eq!(core.find_notes(NOTE_NAME_CORE, NT_PRSTATUS).count(), 2);
        assert_eq!(core.host_cpus().len(), 2);
        assert_eq!(
            core.vmcoreinfo().unwrap().get("OSRELEASE"),
            Some("kdump-test")
        );
        // The crash-kernel region is not in the dump; the kernel is.
        let mut b = [0u8; 4];
        assert!(core.read_phys(CRASH_KERNEL.start, &mut b).is_err());
        core.read_phys(ENTRY, &mut b).unwrap();
        assert_eq!(&b, &code[..4]);
        let report = vmcore::check(&core, &vmcore::CheckOptions::default());
        assert!(report.ok, "{}", report.render());
        let (code, out) = vmcore_cli(true, path);
        assert_eq!(code, crate::vmcore_cmd::EXIT_OK, "{out}");
        assert!(out.contains("OK: every check passed"), "{out}");
        let (code, out) = vmcore_cli(false, path);
        assert_eq!(code, crate::vmcore_cmd::EXIT_OK, "{out}");
        assert!(
            out.contains(&format!("dump: kdump (elfcorehdr at {ELFCOREHDR:#x})")),
            "{out}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A CPU without a guest note: the vmcore is written, and the checker
    /// names that CPU.
    #[test]
    fn a_cpu_without_a_crash_note_is_named_by_the_checker() {
        let mut code = kdump_command(cmd::VMCORE_READY, ELFCOREHDR, 0x1000);
        code.extend(halt());
        let Setup { vmm, dir, events } = setup("missing", 2, &code, qmp::PanicAction::Poweroff);
        leave_crash_data(&vmm, 2, &[0]);
        let (handle, result) = spawn(vmm);
        let ((path, notes), _) = wait_for(&events, |n| match n {
            Notification::KdumpCompleted { path, guest_notes } => {
                Some((path.clone(), *guest_notes))
            }
            _ => None,
        });
        assert_eq!(notes, 2);
        stop(&handle, &result);
        let core = vmcore::Vmcore::open(&path).unwrap();
        let report = vmcore::check(&core, &vmcore::CheckOptions::default());
        assert!(!report.ok);
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert!(
            report.failures[0].starts_with("vcpu 1: guest_note"),
            "{:?}",
            report.failures
        );
        let (code, out) = vmcore_cli(true, &path);
        assert_eq!(code, crate::vmcore_cmd::EXIT_CHECK_FAILED, "{out}");
        assert!(out.contains("1 failure(s):\n  vcpu 1: guest_note"), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Runs a guest that reports VMCORE_READY for a header `spoil` broke,
    /// then powers off; returns the fallback's reason after checking its
    /// dump.
    fn hostile(name: &str, header_gpa: u64, spoil: &dyn Fn(&Vmm)) -> String {
        let mut code = kdump_command(cmd::VMCORE_READY, header_gpa, 0x1000);
        code.extend(poweroff());
        let Setup { vmm, dir, events } = setup(name, 2, &code, qmp::PanicAction::Poweroff);
        leave_crash_data(&vmm, 2, &[0, 1]);
        spoil(&vmm);
        let (_handle, result) = spawn(vmm);
        // The guest ran on after the dump: it powered off.
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Poweroff
        );
        let seen: Vec<Notification> = events.try_iter().collect();
        let falls: Vec<_> = seen.iter().filter_map(fallback).collect();
        let [(reason, path, written)] = &falls[..] else {
            panic!("one fallback expected: {seen:?}");
        };
        assert_eq!(written, &Ok(()));
        assert!(
            seen.iter().any(|n| matches!(n,
                Notification::DumpCompleted { path: p, result: Ok(_) } if p == path)),
            "{seen:?}"
        );
        assert!(
            !seen
                .iter()
                .any(|n| matches!(n, Notification::KdumpCompleted { .. })),
            "{seen:?}"
        );
        // One host-side vmcore, and nothing else.
        assert_eq!(files_in(&dir), vec![path.clone()]);
        let core = vmcore::Vmcore::open(path).unwrap();
        assert!(!core.is_kdump());
        assert_eq!(core.host_cpus().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
        reason.clone()
    }

    #[test]
    fn a_pt_load_beyond_ram_falls_back_with_the_parsers_reason() {
        // Program headers: 2 crash notes, VMCOREINFO, then the PT_LOADs.
        let reason = hostile("beyond-ram", ELFCOREHDR, &|vmm| {
            for field in [8, 24] {
                patch_phdr(vmm, 3, field, 1 << 32);
            }
        });
        assert!(
            reason.starts_with("elfcorehdr refused: PT_LOAD 3 [0x100000000-0x1"),
            "{reason}"
        );
        assert!(reason.ends_with("lies outside guest RAM"), "{reason}");
    }

    #[test]
    fn too_many_program_headers_fall_back() {
        let reason = hostile("phnum", ELFCOREHDR, &|vmm| {
            vmm.vm()
                .memory()
                .write_slice(&5000u16.to_le_bytes(), GuestAddress(ELFCOREHDR + 56))
                .unwrap();
        });
        assert_eq!(
            reason,
            "elfcorehdr refused: e_phnum 5000 exceeds the limit of 4096"
        );
    }

    #[test]
    fn a_note_past_its_segment_falls_back() {
        let reason = hostile("note-overrun", ELFCOREHDR, &|vmm| {
            // CPU 1's descsz: 400 bytes no longer fit its 0x180-byte buffer.
            vmm.vm()
                .memory()
                .write_slice(
                    &400u32.to_le_bytes(),
                    GuestAddress(CRASH_NOTES + STRIDE + 4),
                )
                .unwrap();
        });
        assert_eq!(
            reason,
            "guest notes refused: PT_NOTE 1: note at +0x0 (0x1a4 bytes) runs past p_filesz 0x180"
        );
    }

    #[test]
    fn a_header_outside_ram_falls_back() {
        let reason = hostile("header-outside", MEMORY - 0x800, &|_| {});
        assert!(
            reason.starts_with(&format!(
                "elfcorehdr [{:#x}-{:#x}] is not in guest RAM",
                MEMORY - 0x800,
                MEMORY + 0x800
            )),
            "{reason}"
        );
    }

    /// IMAGE_CORRUPT from the first kernel, which then panics the no-kdump
    /// way: one host-side dump, and the coredump action adds no second one.
    #[test]
    fn capture_failed_falls_back_once_per_crash() {
        let mut code = kdump_command(cmd::CAPTURE_FAILED, u64::from(reason::IMAGE_CORRUPT), 0xbad);
        code.extend(pvpanic(guest_abi::ports::PVPANIC_PANICKED));
        code.extend(halt());
        let Setup { vmm, dir, events } = setup(
            "capture-failed",
            1,
            &code,
            qmp::PanicAction::CoredumpDestroy,
        );
        let (_handle, result) = spawn(vmm);
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::GuestPanic {
                action: qmp::PanicAction::CoredumpDestroy
            }
        );
        let seen: Vec<Notification> = events.try_iter().collect();
        let falls: Vec<_> = seen.iter().filter_map(fallback).collect();
        assert_eq!(falls.len(), 1, "{seen:?}");
        let (reason, path, written) = &falls[0];
        assert_eq!(
            reason,
            "the guest reported CAPTURE_FAILED IMAGE_CORRUPT from vcpu 0: \
             the capture image checksum did not match (detail 0xbad)"
        );
        assert_eq!(written, &Ok(()));
        let dumps = seen
            .iter()
            .filter(|n| matches!(n, Notification::DumpCompleted { .. }))
            .count();
        assert_eq!(dumps, 1, "{seen:?}");
        assert!(seen
            .iter()
            .any(|n| matches!(n, Notification::GuestPanicked { .. })));
        assert_eq!(files_in(&dir), vec![path.clone()]);
        assert!(!vmcore::Vmcore::open(path).unwrap().is_kdump());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `arming` starts kdump and nothing follows: the watchdog writes a
    /// host-side dump after its timeout.
    fn watchdog_fires(name: &str, arming: Vec<u8>) {
        let mut code = arming;
        code.extend(halt());
        let Setup {
            mut vmm,
            dir,
            events,
        } = setup(name, 1, &code, qmp::PanicAction::Poweroff);
        vmm.set_kdump_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let (handle, result) = spawn(vmm);
        let ((reason, path, written), _) = wait_for(&events, fallback);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(reason, "kdump did not report a vmcore within 200ms");
        assert_eq!(written, Ok(()));
        assert_eq!(handle.status().unwrap().state, RunState::Running);
        // It fired once: disarmed by its own expiry.
        assert_no_fallback(&events, Duration::from_millis(600));
        stop(&handle, &result);
        assert_eq!(files_in(&dir), vec![path]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_watchdog_fires_after_kexec_handover() {
        watchdog_fires(
            "watchdog-handover",
            kdump_command(cmd::KEXEC_HANDOVER, 0x80_1000, ELFCOREHDR),
        );
    }

    #[test]
    fn the_watchdog_fires_after_crash_loaded() {
        watchdog_fires(
            "watchdog-crash-loaded",
            pvpanic(guest_abi::ports::PVPANIC_CRASH_LOADED),
        );
    }

    /// Disarmed by VMCORE_READY, or never armed with a timeout of 0: no
    /// fallback, however long the guest then idles.
    #[test]
    fn the_watchdog_stays_quiet_when_disarmed_or_off() {
        let mut code = kdump_command(cmd::KEXEC_HANDOVER, 0x80_1000, ELFCOREHDR);
        code.extend(kdump_command(cmd::VMCORE_READY, ELFCOREHDR, 0x1000));
        code.extend(halt());
        let Setup {
            mut vmm,
            dir,
            events,
        } = setup("watchdog-disarmed", 1, &code, qmp::PanicAction::Poweroff);
        leave_crash_data(&vmm, 1, &[0]);
        vmm.set_kdump_timeout(Duration::from_millis(200));
        let (handle, result) = spawn(vmm);
        wait_for(&events, |n| {
            matches!(n, Notification::KdumpCompleted { .. }).then_some(())
        });
        assert_no_fallback(&events, Duration::from_millis(800));
        stop(&handle, &result);
        std::fs::remove_dir_all(&dir).unwrap();

        let mut code = kdump_command(cmd::KEXEC_HANDOVER, 0x80_1000, ELFCOREHDR);
        code.extend(halt());
        let Setup {
            mut vmm,
            dir,
            events,
        } = setup("watchdog-off", 1, &code, qmp::PanicAction::Poweroff);
        vmm.set_kdump_timeout(Duration::ZERO);
        assert_eq!(vmm.kdump_timeout(), Duration::ZERO);
        let (handle, result) = spawn(vmm);
        wait_for(&events, |n| {
            matches!(
                n,
                Notification::Guest(devices::VmEvent::KexecHandover { .. })
            )
            .then_some(())
        });
        assert_no_fallback(&events, Duration::from_millis(800));
        stop(&handle, &result);
        assert!(files_in(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The real first kernel crashes and hands over. A capture kernel (once
    /// one is loaded) reports VMCORE_READY itself; without one the test
    /// plays it, through the kdump device's registers, for the first
    /// kernel's own elfcorehdr. Either way the vmcore must come from that
    /// header and pass the checker.
    #[test]
    fn the_embedded_guests_elfcorehdr_makes_a_checkable_kdump_vmcore() {
        use devices::BusDevice;
        let mut vmm = Vmm::new(VmConfig {
            cpus: 2,
            cmdline: "crashkernel=64M crash_after_boot=PANIC@1".into(),
            // A capture kernel's final reboot must not crash the guest again.
            on_reboot: crate::config::OnReboot::Exit,
            ..VmConfig::default()
        })
        .unwrap();
        let dir =
            std::env::temp_dir().join(format!("vmm-test-{}-kdump-embedded", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        vmm.set_dump_dir(dir.clone());
        let events = vmm.handle().subscribe();
        let device = vmm.vm().devices().kdump.clone();
        let memory = vmm.vm().memory().clone();
        let (handle, result) = spawn(vmm);
        let (elfcorehdr, _) = wait_for(&events, |n| match n {
            Notification::Guest(VmEvent::KexecHandover { elfcorehdr, .. }) => Some(*elfcorehdr),
            _ => None,
        });
        let completed = |n: &Notification| match n {
            Notification::KdumpCompleted { path, guest_notes } => {
                Some((path.clone(), *guest_notes))
            }
            _ => None,
        };
        let mut phnum = [0u8; 2];
        memory
            .read_slice(&mut phnum, GuestAddress(elfcorehdr + 56))
            .unwrap();
        let size = 64 + 56 * u64::from(u16::from_le_bytes(phnum));
        let mut seen = Vec::new();
        let by_guest = loop {
            match events.recv_timeout(Duration::from_secs(3)) {
                Ok(n) => match completed(&n) {
                    Some(done) => break Some(done),
                    None => seen.push(n),
                },
                Err(_) => break None,
            }
        };
        let (path, guest_notes) = match by_guest {
            Some(done) => done,
            None => {
                let reg = |offset: u64, value: u64| {
                    let access = devices::Access {
                        base: u64::from(guest_abi::ports::KDUMP),
                        offset,
                        vcpu: 1,
                    };
                    device
                        .lock()
                        .unwrap()
                        .write(access, &(value as u32).to_le_bytes());
                };
                reg(ARG0_LO, elfcorehdr);
                reg(ARG0_HI, elfcorehdr >> 32);
                reg(ARG1_LO, size);
                reg(ARG1_HI, 0);
                reg(CMD, u64::from(cmd::VMCORE_READY));
                let (done, more) = wait_for(&events, completed);
                seen.extend(more);
                done
            }
        };
        assert!(!seen.iter().any(|n| fallback(n).is_some()), "{seen:?}");
        handle.stop();
        let end = result.recv_timeout(WAIT).unwrap().unwrap();
        assert!(
            matches!(
                end,
                ExitReason::Stopped | ExitReason::Poweroff | ExitReason::Reboot
            ),
            "{end:?}"
        );
        assert_eq!(guest_notes, 3, "2 crash notes + VMCOREINFO");
        let core = vmcore::Vmcore::open(&path).unwrap();
        let marker = core.kdump_note().unwrap();
        assert_eq!(marker.elfcorehdr, elfcorehdr);
        assert!(marker.elfcorehdr_len >= size, "{marker:?}");
        let report = vmcore::check(&core, &vmcore::CheckOptions::default());
        assert!(report.ok, "{}", report.render());
        assert_eq!(files_in(&dir), vec![path]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A detached `dump-guest-memory` still running when VMCORE_READY is
    /// handled (both are in the main loop's first batch, so its
    /// DumpFinished cannot have been handled): it is finished first, and
    /// the kdump vmcore is not refused as busy.
    #[test]
    fn a_detached_dump_in_progress_is_finished_before_the_kdump_vmcore() {
        let Setup { vmm, dir, events } = setup("settle", 1, &halt(), qmp::PanicAction::Poweroff);
        let len = leave_crash_data(&vmm, 1, &[0]);
        let host = dir.join("host.elf");
        let (reply, replies) = std::sync::mpsc::channel();
        vmm.mailbox.post(Message::Dump {
            request: DumpRequest {
                path: host.clone(),
                paging: true,
                detach: true,
            },
            reply,
        });
        let sink = crate::control::MailboxSink {
            mailbox: vmm.mailbox.clone(),
            generation: 0,
        };
        devices::EventSink::emit(
            &sink,
            VmEvent::VmcoreReady {
                vcpu: 0,
                elfcorehdr: ELFCOREHDR,
                size: len,
            },
        );
        let (handle, result) = spawn(vmm);
        let (path, seen) = wait_for(&events, |n| match n {
            Notification::KdumpCompleted { path, .. } => Some(path.clone()),
            _ => None,
        });
        assert!(matches!(replies.recv_timeout(WAIT), Ok(Ok(None))));
        let done: Vec<(&PathBuf, bool)> = seen
            .iter()
            .filter_map(|n| match n {
                Notification::DumpCompleted { path, result } => Some((path, result.is_ok())),
                _ => None,
            })
            .collect();
        assert_eq!(done, vec![(&host, true), (&path, true)], "{seen:?}");
        stop(&handle, &result);
        assert_eq!(files_in(&dir), {
            let mut v = vec![host, path];
            v.sort();
            v
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_events_arm_and_disarm_the_watchdog() {
        let mut k = KdumpState::new().unwrap();
        let handover = VmEvent::KexecHandover {
            vcpu: 0,
            entry: 1,
            elfcorehdr: 2,
        };
        let disarming = [
            VmEvent::VmcoreReady {
                vcpu: 0,
                elfcorehdr: 2,
                size: 3,
            },
            VmEvent::CaptureFailed {
                vcpu: 0,
                reason: CaptureFailure::NoCrashNotes,
                detail: 0,
            },
        ];
        for event in disarming {
            k.observe(&handover);
            assert!(k.is_armed());
            k.observe(&VmEvent::Poweroff { vcpu: 0 });
            assert!(k.is_armed(), "only kdump events move it");
            k.observe(&event);
            assert!(!k.is_armed(), "{event:?}");
        }
        k.observe_pvpanic(PvpanicEvent::CrashLoaded);
        assert!(k.is_armed());
        k.observe_pvpanic(PvpanicEvent::Shutdown);
        assert!(k.is_armed());
        k.observe_pvpanic(PvpanicEvent::Panicked);
        assert!(!k.is_armed());
    }

    #[test]
    fn stale_expiries_and_rebuilds_disarm() {
        let mut k = KdumpState::new().unwrap();
        k.timeout = Duration::from_secs(60);
        k.arm("test");
        assert!(k.is_armed());
        let seq = k.lock().armed.unwrap().seq;
        k.arm("again");
        // The first arming's expiry is stale now.
        assert_eq!(k.take_expired(seq), None);
        assert!(k.is_armed());
        k.crash_vmcore = Some((0, PathBuf::from("/x")));
        k.on_rebuild();
        assert!(!k.is_armed());
        assert_eq!(k.crash_vmcore(0), None);
        k.timeout = Duration::ZERO;
        k.arm("off");
        assert!(!k.is_armed());
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            FallbackReason::Timeout(Duration::from_secs(10)).to_string(),
            "kdump did not report a vmcore within 10s"
        );
        let r = FallbackReason::CaptureFailed {
            vcpu: 2,
            reason: CaptureFailure::BadElfcorehdr,
            detail: 7,
        };
        assert_eq!(
            r.to_string(),
            "the guest reported CAPTURE_FAILED BAD_ELFCOREHDR from vcpu 2: \
             the elfcorehdr failed validation (detail 0x7)"
        );
        assert_eq!((r.cause(), r.detail()), ("capture-failed", Some(7)));
        assert_eq!(reason_name(CaptureFailure::Unknown(99)), "UNKNOWN(99)");
        let name = kdump_dump_name();
        assert!(
            name.starts_with("vmcore-") && name.ends_with("-kdump.elf"),
            "{name}"
        );
    }
}
