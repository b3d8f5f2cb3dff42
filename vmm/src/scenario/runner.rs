//! Runs one scenario in a fresh VM, in this process, and reads the row
//! back from what the VMM reported and from the vmcore.
//!
//! The run, step by step:
//!
//! 1. Boot the embedded guest with the scenario's CPUs, memory, command
//!    line, pvpanic mask and panic action, a reset ending the run
//!    ([`OnReboot::Exit`]), and a fresh temporary `--dump-dir`.
//! 2. Unless the crash is `at_boot`, wait for the guest's last boot line
//!    (VMCOREINFO registered, and the elfcorehdr prepared when
//!    `crashkernel=` is set), then inject the crash through the
//!    crash-control device.
//! 3. Watch the serial lines and the VMM's notifications until one of:
//!    the VM exits; the VMM wrote a vmcore and the guest then went quiet
//!    for the settle time; the guest went quiet with no kdump pending; the
//!    timeout. kdump counts as pending from pvpanic CRASH_LOADED or
//!    KEXEC_HANDOVER (the VMM's kdump watchdog is armed then) until a
//!    vmcore is written, so a slow capture or watchdog is waited for.
//! 4. **The runner-dump rule.** If the VMM wrote no vmcore (source
//!    `none`) and the VM still exists, the runner takes a host-side dump
//!    itself, so that the CPU columns still say what a dump taken now
//!    would hold. Such rows are marked `runner_dump` (a `*` in the table)
//!    and their source stays `none`: no vmcore would exist in production.
//!
//! The vmcore source is read from the file, never assumed: a `VMMKDUMP`
//! note makes it `kdump`, any other VMM-written vmcore is `host` (a
//! coredump panic action, or the VMM's kdump fallback, whose reason the
//! row keeps).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use devices::pvpanic::PvpanicEvent;
use devices::VmEvent;
use guest_abi::elfnote;
use vmcore::{check, CheckOptions, Verdict, Vmcore};

use super::report::Row;
use super::spec::{Count, ScenarioFile, Source};
use crate::{DumpRequest, Notification, OnReboot, SerialOutput, VmConfig, Vmm, VmmHandle};

/// How the runner waits.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Longest a scenario may take, boot included.
    pub timeout: Duration,
    /// How long without a serial line or a notification counts as quiet.
    pub settle: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(30),
            settle: Duration::from_secs(3),
        }
    }
}

/// The guest line that marks the panic (Linux's wording).
const PANIC_LINE: &str = "Kernel panic - not syncing";

/// Something the runner observed, stamped when it arrived.
enum Event {
    Line(Instant, String),
    Note(Instant, Notification),
    /// `Vmm::run` returned an error (a clean return is `Shutdown`).
    Failed(String),
}

/// A point on the panic timeline that the pvpanic column is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A pvpanic event (PANICKED or CRASH_LOADED).
    Pvpanic(&'static str),
    /// kdump started: KEXEC_HANDOVER, or VMCORE_READY if no handover was seen.
    Kdump,
}

/// The pvpanic column: each event with its place relative to kdump
/// (`CRASH_LOADED<kdump`, `kdump<PANICKED`), `E (no kdump)` when kdump never
/// started, `-` when pvpanic was silent.
pub fn pvpanic_column(marks: &[Mark]) -> String {
    let kdump = marks.iter().position(|m| *m == Mark::Kdump);
    let cells: Vec<String> = marks
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match (m, kdump) {
            (Mark::Kdump, _) => None,
            (Mark::Pvpanic(e), None) => Some(format!("{e} (no kdump)")),
            (Mark::Pvpanic(e), Some(k)) if i < k => Some(format!("{e}<kdump")),
            (Mark::Pvpanic(e), Some(_)) => Some(format!("kdump<{e}")),
        })
        .collect();
    if cells.is_empty() {
        "-".into()
    } else {
        cells.join(", ")
    }
}

/// What phase 3 saw.
#[derive(Default)]
struct Watch {
    marks: Vec<Mark>,
    panic_at: Option<Instant>,
    vmcore: Option<(PathBuf, Instant)>,
    dump_errors: Vec<String>,
    kdump_pending: bool,
    exited: Option<String>,
    fallback: Option<String>,
    transcript: Vec<String>,
    last_activity: Option<Instant>,
    /// The run is over: later dumps are the runner's.
    closed: bool,
}

impl Watch {
    fn see(&mut self, event: Event) {
        match event {
            Event::Line(t, line) => {
                self.last_activity = Some(t);
                if self.panic_at.is_none() && line.contains(PANIC_LINE) {
                    self.panic_at = Some(t);
                }
                self.transcript.push(line);
            }
            Event::Note(t, n) => {
                self.last_activity = Some(t);
                self.note(t, n);
            }
            Event::Failed(e) => self.exited = Some(format!("vmm failed: {e}")),
        }
    }

    fn note(&mut self, t: Instant, n: Notification) {
        match n {
            Notification::Guest(VmEvent::Pvpanic { event, .. }) => match event {
                PvpanicEvent::Panicked => self.marks.push(Mark::Pvpanic("PANICKED")),
                PvpanicEvent::CrashLoaded => {
                    self.marks.push(Mark::Pvpanic("CRASH_LOADED"));
                    // The VMM's kdump watchdog starts here.
                    self.kdump_pending |= self.vmcore.is_none();
                }
                PvpanicEvent::Shutdown => {}
            },
            Notification::Guest(VmEvent::KexecHandover { .. })
            | Notification::Guest(VmEvent::VmcoreReady { .. }) => {
                if !self.marks.contains(&Mark::Kdump) {
                    self.marks.push(Mark::Kdump);
                }
                self.kdump_pending |= self.vmcore.is_none();
            }
            Notification::Guest(VmEvent::CaptureFailed { reason, .. }) => {
                // The VMM falls back to a host-side dump.
                self.fallback = Some(format!("capture failed: {reason:?}"));
                self.kdump_pending |= self.vmcore.is_none();
            }
            Notification::DumpCompleted { .. } if self.closed => {}
            Notification::DumpCompleted { path, result } => match result {
                Ok(_) => {
                    if self.vmcore.is_none() {
                        self.vmcore = Some((path, t));
                    }
                    self.kdump_pending = false;
                }
                Err(e) => self.dump_errors.push(e),
            },
            Notification::KdumpFallback { reason, .. } => {
                // Its host-side vmcore came as a DumpCompleted just before.
                self.fallback = Some(reason);
                self.kdump_pending = false;
            }
            Notification::Shutdown(reason) => self.exited = Some(format!("vm exited: {reason}")),
            _ => {}
        }
    }
}

/// Counts read from a vmcore.
struct DumpFacts {
    kdump: bool,
    saved: Count,
    vmx_off: Count,
    kmsg: bool,
}

/// Whether the kmsg dumper's pstore region (found through VMCOREINFO)
/// holds a `PSTORE01` header with text after it.
fn pstore_has_text(core: &Vmcore) -> bool {
    let Some(info) = core.vmcoreinfo() else {
        return false;
    };
    let Some(base) = info.hex(elfnote::VMCOREINFO_PSTORE) else {
        return false;
    };
    let mut header = [0u8; 12];
    if core.read_phys(base, &mut header).is_err() || &header[..8] != b"PSTORE01" {
        return false;
    }
    u32::from_le_bytes([header[8], header[9], header[10], header[11]]) > 0
}

fn read_dump(path: &Path) -> Result<DumpFacts, String> {
    let core = Vmcore::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let report = check(&core, &CheckOptions::default());
    let of = report.vcpus.len() as u32;
    let count = |pass: &dyn Fn(&vmcore::VcpuCheck) -> bool| Count {
        n: report.vcpus.iter().filter(|v| pass(v)).count() as u32,
        of,
    };
    Ok(DumpFacts {
        kdump: core.is_kdump(),
        saved: count(&|v| v.guest_note.verdict == Verdict::Pass),
        vmx_off: count(&|v| v.vmx.verdict == Verdict::Pass),
        kmsg: pstore_has_text(&core),
    })
}

fn wait_ready(
    rx: &Receiver<Event>,
    watch: &mut Watch,
    needles: &[&str],
    deadline: Instant,
) -> Result<(), String> {
    let mut missing: Vec<&str> = needles.to_vec();
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Line(t, line)) => {
                missing.retain(|n| !line.contains(n));
                watch.see(Event::Line(t, line));
            }
            Ok(other) => {
                watch.see(other);
                if let Some(e) = &watch.exited {
                    return Err(format!("{e} before boot finished"));
                }
            }
            Err(_) => return Err(format!("guest did not print {missing:?} in time")),
        }
    }
    Ok(())
}

/// A fresh, empty dump directory for one run.
fn dump_dir(name: &str) -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vmm-scenario-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `file`'s scenario and returns its row, compared with `[expect]`.
pub fn run_scenario(file: &ScenarioFile, opts: &RunOptions) -> Row {
    let s = &file.scenario;
    let mut row = Row {
        name: s.name.clone(),
        description: s.description.clone(),
        file: file.path.display().to_string(),
        pvpanic: "-".into(),
        vmcore: Source::None,
        saved: None,
        vmx_off: None,
        runner_dump: false,
        kmsg: None,
        panic_to_vmcore_ms: None,
        ended: String::new(),
        fallback: None,
        mismatches: Vec::new(),
        error: None,
    };
    let dir = match dump_dir(&s.name) {
        Ok(d) => d,
        Err(e) => {
            row.error = Some(format!("cannot create a dump directory: {e}"));
            return row;
        }
    };
    if let Err(e) = run_in(file, opts, &dir, &mut row) {
        row.error = Some(e);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(expect) = &s.expect {
        row.compare(expect);
    }
    row
}

fn run_in(file: &ScenarioFile, opts: &RunOptions, dir: &Path, row: &mut Row) -> Result<(), String> {
    let s = &file.scenario;
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let (tx, rx) = mpsc::channel();
    let config = VmConfig {
        cpus: s.cpus,
        memory: s.memory_bytes(),
        cmdline: s.guest_cmdline(),
        serial: SerialOutput::lines({
            let tx = tx.clone();
            // The runner may have finished with this VM already.
            move |line| drop(tx.send(Event::Line(Instant::now(), line)))
        }),
        on_reboot: OnReboot::Exit,
        pvpanic_events: s.pvpanic_events,
        on_panic: s.on_panic,
        ..VmConfig::default()
    };
    let mut vmm = Vmm::new(config).map_err(|e| format!("VM creation failed: {e}"))?;
    vmm.set_dump_dir(dir.to_path_buf());
    if let Some(secs) = s.kdump_timeout {
        vmm.set_kdump_timeout(Duration::from_secs(secs));
    }
    let handle = vmm.handle();
    let notes = handle.subscribe();
    let note_tx = tx.clone();
    // Ends when the VMM's mailbox goes away with the last handle.
    std::thread::spawn(move || {
        for n in notes {
            if note_tx.send(Event::Note(Instant::now(), n)).is_err() {
                break;
            }
        }
    });
    let vm_thread = std::thread::spawn(move || {
        if let Err(e) = vmm.run() {
            let _ = tx.send(Event::Failed(crate::dump::error_chain(&e)));
        }
    });

    let mut watch = Watch::default();
    let outcome = drive(file, &handle, opts, &rx, &mut watch, deadline);

    // The runner-dump rule (module docs). From here on a finished dump is
    // the runner's own, not the VMM's.
    watch.closed = true;
    let mut runner_dump = None;
    if watch.vmcore.is_none() && watch.exited.is_none() {
        let path = dir.join("runner-vmcore.elf");
        match handle.dump_guest_memory(DumpRequest::new(&path)) {
            Ok(_) => runner_dump = Some(path),
            Err(e) => watch.dump_errors.push(format!("runner dump: {e}")),
        }
    }
    handle.stop();
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    while watch.exited.is_none() {
        match rx.recv_timeout(stop_deadline.saturating_duration_since(Instant::now())) {
            Ok(e) => watch.see(e),
            Err(_) => break,
        }
    }
    drop(handle);
    if watch.exited.is_some() {
        let _ = vm_thread.join();
    }

    row.ended = outcome?;
    row.pvpanic = pvpanic_column(&watch.marks);
    row.fallback = watch.fallback.clone();
    let dump = match (&watch.vmcore, &runner_dump) {
        (Some((path, written)), _) => {
            let from = watch.panic_at.unwrap_or(start);
            row.panic_to_vmcore_ms =
                Some(written.saturating_duration_since(from).as_millis() as u64);
            Some(path.clone())
        }
        (None, Some(path)) => {
            row.runner_dump = true;
            Some(path.clone())
        }
        (None, None) => None,
    };
    if let Some(path) = dump {
        let facts = read_dump(&path)?;
        if watch.vmcore.is_some() {
            row.vmcore = if facts.kdump {
                Source::Kdump
            } else {
                Source::Host
            };
        }
        row.saved = Some(facts.saved);
        row.vmx_off = Some(facts.vmx_off);
        row.kmsg = Some(facts.kmsg);
    }
    if !watch.dump_errors.is_empty() && row.saved.is_none() {
        return Err(watch.dump_errors.join("; "));
    }
    Ok(())
}

/// Phases 2 and 3: inject, then watch until the run ends; returns how.
fn drive(
    file: &ScenarioFile,
    handle: &VmmHandle,
    opts: &RunOptions,
    rx: &Receiver<Event>,
    watch: &mut Watch,
    deadline: Instant,
) -> Result<String, String> {
    let s = &file.scenario;
    if !s.crash.at_boot {
        let mut ready = vec!["vmcoreinfo: note at"];
        if s.cmdline.crashkernel.is_some() {
            ready.push("kexec: elfcorehdr at");
        }
        wait_ready(rx, watch, &ready, deadline)?;
        let cpu = if s.crash_name() == "PANIC_ALL" {
            None
        } else {
            Some(s.crash.cpu.unwrap_or(0))
        };
        handle
            .inject_crash(s.crash_name(), cpu)
            .map_err(|e| format!("crash injection failed: {e}"))?;
    }
    let injected = Instant::now();
    watch.last_activity = Some(injected);
    loop {
        if let Some(how) = &watch.exited {
            return Ok(how.clone());
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok("timeout".into());
        }
        let quiet_at = watch.last_activity.unwrap_or(injected) + opts.settle;
        let waiting_for_kdump = watch.kdump_pending && watch.vmcore.is_none();
        if now >= quiet_at && !waiting_for_kdump {
            return Ok(if watch.vmcore.is_some() {
                "quiet after the vmcore".into()
            } else {
                "quiet".into()
            });
        }
        let until = if waiting_for_kdump {
            deadline
        } else {
            quiet_at.min(deadline)
        };
        match rx.recv_timeout(until.saturating_duration_since(now)) {
            Ok(e) => watch.see(e),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok("vm gone".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(w: &mut Watch, n: Notification) {
        w.see(Event::Note(Instant::now(), n));
    }

    fn pvpanic(event: PvpanicEvent) -> Notification {
        Notification::Guest(VmEvent::Pvpanic { event, vcpu: 2 })
    }

    fn dumped(path: &str) -> Notification {
        Notification::DumpCompleted {
            path: path.into(),
            result: Ok(vmcore::DumpStats::default()),
        }
    }

    #[test]
    fn kdump_is_pending_from_crash_loaded_until_a_vmcore() {
        let mut w = Watch::default();
        w.see(Event::Line(
            Instant::now(),
            "Kernel panic - not syncing: x".into(),
        ));
        assert!(w.panic_at.is_some() && !w.kdump_pending);
        note(&mut w, pvpanic(PvpanicEvent::CrashLoaded));
        assert!(w.kdump_pending);
        note(
            &mut w,
            Notification::Guest(VmEvent::KexecHandover {
                vcpu: 2,
                entry: 0,
                elfcorehdr: 0,
            }),
        );
        note(
            &mut w,
            Notification::Guest(VmEvent::VmcoreReady {
                vcpu: 2,
                elfcorehdr: 0,
                size: 0,
            }),
        );
        note(&mut w, dumped("/d/vmcore"));
        assert!(!w.kdump_pending);
        assert_eq!(w.vmcore.as_ref().unwrap().0, PathBuf::from("/d/vmcore"));
        assert_eq!(pvpanic_column(&w.marks), "CRASH_LOADED<kdump");
        // A later dump does not replace the first vmcore.
        note(&mut w, dumped("/d/other"));
        assert_eq!(w.vmcore.as_ref().unwrap().0, PathBuf::from("/d/vmcore"));
    }

    #[test]
    fn the_runners_own_dump_is_not_the_vmms() {
        let mut w = Watch::default();
        note(&mut w, pvpanic(PvpanicEvent::Panicked));
        note(&mut w, pvpanic(PvpanicEvent::Shutdown));
        assert!(!w.kdump_pending);
        w.closed = true;
        note(&mut w, dumped("/d/runner-vmcore.elf"));
        assert!(w.vmcore.is_none());
        assert_eq!(pvpanic_column(&w.marks), "PANICKED (no kdump)");
        note(&mut w, Notification::Shutdown(crate::ExitReason::Stopped));
        assert!(w.exited.as_deref().unwrap().starts_with("vm exited"));
    }

    #[test]
    fn a_failed_dump_is_kept_as_an_error() {
        let mut w = Watch::default();
        note(
            &mut w,
            Notification::DumpCompleted {
                path: "/d/x".into(),
                result: Err("disk full".into()),
            },
        );
        assert!(w.vmcore.is_none());
        assert_eq!(w.dump_errors, ["disk full"]);
        w.see(Event::Failed("boom".into()));
        assert_eq!(w.exited.as_deref(), Some("vmm failed: boom"));
    }
}
