//! Host-side guest memory dumps (QEMU's `dump-guest-memory`, ELF format).
//!
//! A dump pauses every vCPU, reads each one's registers on its own thread
//! ([`crate::vm::Vm::capture_cpus`]), takes the device state a vmcore
//! carries ([`DumpSources`]), then writes guest RAM with
//! [`vmcore::write_vmcore`] (temporary name, fsync, rename: never a partial
//! file under the final name). The vCPUs stay paused until the file is
//! complete; the caller decides whether they run again.
//!
//! Entry points:
//! - [`crate::VmmHandle::dump_guest_memory`] and
//!   [`crate::VmmHandle::query_dump`], for QMP and library users: the
//!   writing happens on a worker thread while the main loop keeps serving
//!   requests, and completion is a [`crate::Notification::DumpCompleted`];
//! - [`crate::Vmm::dump_to_dir`], blocking, for the panic actions
//!   (`coredump-destroy`/`coredump-restart`) on the main loop's thread.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use devices::pv_vmx::PvVmx;
use devices::vmcoreinfo::{Vmcoreinfo, VmcoreinfoError};
use log::{info, warn};
use vm_memory::GuestMemoryMmap;
use vmcore::{CpuState, DumpInput, DumpStats, Progress, PvpanicLog, VmxState, WriteOptions};

use crate::vm::{Vm, VmError};

/// pvpanic's PANICKED event bit (the byte the guest writes).
const PVPANIC_PANICKED: u32 = 1;

/// Errors of a dump.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Another dump is still being written.
    #[error("a guest memory dump is already in progress")]
    Busy,
    /// The VM is not running (or stopped before the dump finished).
    #[error("the VM is not running")]
    NotRunning,
    /// The vCPUs could not be paused or their registers read.
    #[error("cannot stop the vcpus for a dump")]
    Capture(#[source] VmError),
    /// Writing the vmcore failed (ENOSPC, EACCES, a missing directory...);
    /// no file was left under the final name.
    #[error("writing the vmcore failed")]
    Write(#[source] vmcore::WriteError),
    /// The dump worker thread could not be started or died.
    #[error("the dump worker failed: {0}")]
    Worker(String),
}

/// A dump request (QMP `dump-guest-memory` with `protocol: "file:PATH"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpRequest {
    /// The vmcore to write.
    pub path: PathBuf,
    /// Give PT_LOADs virtual addresses from a walk of the guest page tables
    /// (CR3 of the panicking vCPU, else vCPU 0), so gdb can read memory by
    /// symbol. Without it every `p_vaddr` is 0.
    pub paging: bool,
    /// Return once the vCPUs are captured and the writing has started;
    /// completion is reported by [`crate::Notification::DumpCompleted`] and
    /// [`crate::VmmHandle::query_dump`].
    pub detach: bool,
}

impl DumpRequest {
    /// A blocking dump to `path` with paging on.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DumpRequest {
            path: path.into(),
            paging: true,
            detach: false,
        }
    }
}

/// The dump state QMP's `query-dump` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpState {
    /// No dump was ever started.
    None,
    /// A dump is being written.
    Active,
    /// The last dump finished.
    Completed,
    /// The last dump failed.
    Failed,
}

impl DumpState {
    /// The QMP `DumpStatus` string.
    pub fn as_str(self) -> &'static str {
        match self {
            DumpState::None => "none",
            DumpState::Active => "active",
            DumpState::Completed => "completed",
            DumpState::Failed => "failed",
        }
    }
}

/// Progress of the current or last dump (QMP `query-dump`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpStatus {
    /// State.
    pub status: DumpState,
    /// Guest RAM bytes processed.
    pub completed: u64,
    /// Guest RAM bytes in the dump.
    pub total: u64,
}

/// Lock-free dump progress, shared by the worker and every handle.
#[derive(Debug, Default)]
pub(crate) struct DumpTracker {
    state: AtomicU8,
    completed: AtomicU64,
    total: AtomicU64,
}

impl DumpTracker {
    pub(crate) fn status(&self) -> DumpStatus {
        let status = match self.state.load(Ordering::SeqCst) {
            1 => DumpState::Active,
            2 => DumpState::Completed,
            3 => DumpState::Failed,
            _ => DumpState::None,
        };
        DumpStatus {
            status,
            completed: self.completed.load(Ordering::SeqCst),
            total: self.total.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn start(&self, total: u64) {
        self.completed.store(0, Ordering::SeqCst);
        self.total.store(total, Ordering::SeqCst);
        self.state.store(1, Ordering::SeqCst);
    }

    pub(crate) fn progress(&self, p: Progress) {
        self.completed.store(p.done, Ordering::SeqCst);
        self.total.store(p.total, Ordering::SeqCst);
    }

    pub(crate) fn finish(&self, ok: bool) {
        if ok {
            self.completed
                .store(self.total.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        self.state.store(if ok { 2 } else { 3 }, Ordering::SeqCst);
    }
}

/// The pvpanic event log, as the VM's pvpanic device keeps it.
pub trait PvpanicLogSource: Send + Sync {
    /// Every event so far, oldest first.
    fn pvpanic_log(&self) -> PvpanicLog;
}

/// Device state a dump carries besides registers and RAM. Every field is
/// optional: an absent device contributes nothing (no VMX notes, no
/// VMCOREINFO note, no pvpanic note; the panicking vCPU is then unknown and
/// paging uses vCPU 0's CR3).
#[derive(Clone, Default)]
pub struct DumpSources {
    /// The pv VMX model: one `VMMVMX` note per vCPU.
    pub pv_vmx: Option<Arc<Mutex<PvVmx>>>,
    /// The VMCOREINFO registration device: the guest's `VMCOREINFO` note.
    pub vmcoreinfo: Option<Arc<Mutex<Vmcoreinfo>>>,
    /// The pvpanic event log: a `VMMPVPANIC` note, and the panicking vCPU
    /// (the last PANICKED event's).
    pub pvpanic: Option<Arc<dyn PvpanicLogSource>>,
}

impl std::fmt::Debug for DumpSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DumpSources")
            .field("pv_vmx", &self.pv_vmx.is_some())
            .field("vmcoreinfo", &self.vmcoreinfo.is_some())
            .field("pvpanic", &self.pvpanic.is_some())
            .finish()
    }
}

/// The vCPU that reported the last PANICKED event, if known.
pub fn panicking_vcpu(log: &PvpanicLog) -> Option<u32> {
    log.entries
        .iter()
        .rev()
        .find(|e| e.events & PVPANIC_PANICKED != 0 && e.vcpu != u32::MAX)
        .map(|e| e.vcpu)
}

/// Everything a vmcore holds, taken from a paused VM.
///
/// Only [`capture`] makes one, after pausing every vCPU; whoever holds it
/// must keep the vCPUs paused (and nothing else writing guest RAM) until
/// [`Capture::write`] has returned. The runtime enforces this by refusing
/// to resume while a dump is active.
pub struct Capture {
    cpus: Vec<CpuState>,
    vmx: Vec<VmxState>,
    vmcoreinfo: Option<Vec<u8>>,
    pvpanic: Option<PvpanicLog>,
    panic_vcpu: Option<u32>,
    /// A clone of the guest memory (same mappings), so the worker can write
    /// it even if the VM is torn down meanwhile.
    memory: GuestMemoryMmap,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("cpus", &self.cpus.len())
            .field("panic_vcpu", &self.panic_vcpu)
            .finish()
    }
}

/// Pauses every vCPU of `vm` and takes what a vmcore needs. The vCPUs are
/// left paused, also on error (the caller resumes them if it should).
pub fn capture(vm: &Vm) -> Result<Capture, DumpError> {
    vm.pause().map_err(DumpError::Capture)?;
    let cpus = vm.capture_cpus().map_err(DumpError::Capture)?;
    let sources = vm.dump_sources();
    let vmx = sources
        .pv_vmx
        .as_ref()
        .map(|dev| {
            let dev = dev.lock().unwrap_or_else(|p| p.into_inner());
            dev.snapshot()
                .iter()
                .map(|s| VmxState::from_note(&s.note()))
                .collect()
        })
        .unwrap_or_default();
    let vmcoreinfo = sources.vmcoreinfo.as_ref().and_then(|dev| {
        let dev = dev.lock().unwrap_or_else(|p| p.into_inner());
        match dev.read_text(vm.memory()) {
            Ok(text) => Some(text),
            Err(VmcoreinfoError::NotRegistered) => None,
            Err(e) => {
                warn!("dump: leaving out the guest's VMCOREINFO: {e}");
                None
            }
        }
    });
    let pvpanic = sources.pvpanic.as_ref().map(|src| src.pvpanic_log());
    let panic_vcpu = pvpanic.as_ref().and_then(panicking_vcpu);
    Ok(Capture {
        cpus,
        vmx,
        vmcoreinfo,
        pvpanic,
        panic_vcpu,
        memory: vm.memory().clone(),
    })
}

impl Capture {
    /// The registers captured, in vCPU order.
    pub fn cpus(&self) -> &[CpuState] {
        &self.cpus
    }

    /// CR3 for the page walk: the panicking vCPU's if known, else vCPU 0's.
    pub fn paging_cr3(&self) -> Option<u64> {
        let cpu = self
            .panic_vcpu
            .and_then(|v| self.cpus.iter().find(|c| c.vcpu == v))
            .or_else(|| self.cpus.first())?;
        Some(cpu.cr3)
    }

    /// Guest RAM bytes the dump covers.
    pub fn ram_bytes(&self) -> u64 {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        self.memory.iter().map(|r| r.len()).sum()
    }

    /// Runs `f` over what a kdump vmcore takes from this capture: guest RAM
    /// (as byte slices), registers, VMX state and the pvpanic log, with
    /// the guest's elfcorehdr at `elfcorehdr` (GPA, length) recorded in the
    /// `VMMKDUMP` note ([`crate::kdump`] parses and writes).
    pub fn with_kdump_input<R>(
        &self,
        elfcorehdr: (u64, u64),
        f: impl FnOnce(&vmcore::KdumpInput<'_>) -> R,
    ) -> R {
        // SAFETY: as in `write`: the vCPUs stay paused while the capture is
        // held, and `ram` does not outlive `self.memory`.
        let ram = unsafe { vmcore::ram_regions_from_guest_memory(&self.memory) };
        f(&vmcore::KdumpInput {
            ram: &ram,
            cpus: &self.cpus,
            vmx: &self.vmx,
            pvpanic: self.pvpanic.as_ref(),
            elfcorehdr,
        })
    }

    /// Writes the vmcore to `path` (atomically; see [`vmcore::write_vmcore`]).
    pub fn write(
        &self,
        path: &Path,
        paging: bool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<DumpStats, DumpError> {
        // SAFETY: a Capture exists only after every vCPU was paused, and its
        // holder keeps them paused until this returns (see `Capture`); no
        // device writes guest RAM on its own. `self.memory` outlives `ram`.
        let ram = unsafe { vmcore::ram_regions_from_guest_memory(&self.memory) };
        let input = DumpInput {
            ram: &ram,
            cpus: &self.cpus,
            vmx: &self.vmx,
            vmcoreinfo: self.vmcoreinfo.as_deref(),
            pvpanic: self.pvpanic.as_ref(),
            paging_cr3: if paging { self.paging_cr3() } else { None },
        };
        let result = vmcore::write_vmcore(path, &input, &WriteOptions::default(), progress)
            .map_err(DumpError::Write);
        match &result {
            Ok(stats) => info!(
                "dump: wrote {} ({} MiB of RAM, {} KiB of data, {:?})",
                path.display(),
                stats.ram_bytes >> 20,
                stats.data_bytes >> 10,
                stats.elapsed
            ),
            Err(e) => warn!("dump to {} failed: {}", path.display(), error_chain(e)),
        }
        result
    }
}

/// "outer: inner: innermost", for one-line logs and QMP error strings.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A file name no other dump of this host will use:
/// `vmcore-<unix seconds>-<pid>-<sequence>.elf`.
pub fn unique_dump_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "vmcore-{secs}-{}-{}.elf",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A progress callback that draws an indicatif bar on stderr when `show`
/// is set and stderr is a terminal, and feeds `tracker` if given.
pub(crate) fn progress_reporter(
    show: bool,
    tracker: Option<Arc<DumpTracker>>,
) -> (
    Box<dyn FnMut(Progress) + Send>,
    Option<indicatif::ProgressBar>,
) {
    let bar = (show && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "vmcore {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("the template is valid"),
        );
        bar
    });
    let b = bar.clone();
    let callback = Box::new(move |p: Progress| {
        if let Some(t) = &tracker {
            t.progress(p);
        }
        if let Some(b) = &b {
            b.set_length(p.total);
            b.set_position(p.done);
        }
    });
    (callback, bar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::elfnote::PvpanicLogEntry;

    fn entry(seq: u32, events: u32, vcpu: u32) -> PvpanicLogEntry {
        PvpanicLogEntry {
            seq,
            events,
            vcpu,
            ..Default::default()
        }
    }

    #[test]
    fn the_last_panicked_event_names_the_panicking_vcpu() {
        let mut log = PvpanicLog::default();
        assert_eq!(panicking_vcpu(&log), None);
        log.entries.push(entry(0, PVPANIC_PANICKED, 2));
        log.entries.push(entry(1, 2, 3)); // CRASH_LOADED only
        log.entries.push(entry(2, PVPANIC_PANICKED, u32::MAX)); // unknown
        assert_eq!(panicking_vcpu(&log), Some(2));
        log.entries.push(entry(3, PVPANIC_PANICKED | 2, 1));
        assert_eq!(panicking_vcpu(&log), Some(1));
    }

    #[test]
    fn dump_names_are_unique_and_recognisable() {
        let a = unique_dump_name();
        let b = unique_dump_name();
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.starts_with("vmcore-") && n.ends_with(".elf"), "{n}");
            assert!(n.contains(&format!("-{}-", std::process::id())), "{n}");
        }
    }

    #[test]
    fn tracker_reports_query_dump_states() {
        let t = DumpTracker::default();
        assert_eq!(t.status().status, DumpState::None);
        t.start(100);
        t.progress(Progress {
            done: 40,
            total: 100,
        });
        assert_eq!(
            t.status(),
            DumpStatus {
                status: DumpState::Active,
                completed: 40,
                total: 100
            }
        );
        t.finish(true);
        assert_eq!(t.status().status, DumpState::Completed);
        assert_eq!(t.status().completed, 100);
        t.start(10);
        t.finish(false);
        assert_eq!(t.status().status, DumpState::Failed);
        assert_eq!(DumpState::Failed.as_str(), "failed");
    }
}
