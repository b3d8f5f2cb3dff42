//! The VM control surface: [`VmmHandle`], which any thread may hold, and
//! the mailbox it shares with the VMM's main loop.
//!
//! Every request is a typed message posted to the mailbox, which wakes the
//! main loop through an EventFd. Requests that have an answer carry their
//! own reply channel, so a request type holds only its own data.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::{EventSink, VmEvent};
use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::dump::{DumpError, DumpRequest, DumpStatus, DumpTracker};
use crate::pvpanic_log::PvpanicLog;
use crate::vcpu::VcpuFault;
use guest_abi::elfnote::PvpanicLogEntry;

/// How long a control request waits for the main loop to answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from control requests.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// `Vmm::run` is not (or no longer) running.
    #[error("the VM is not running")]
    NotRunning,
    /// The main loop did not answer in time.
    #[error("the VMM did not answer within {0:?}")]
    Timeout(Duration),
    /// The request failed.
    #[error("{0}")]
    Failed(String),
}

/// The VM's run state, as `query-status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// vCPUs are running guest code.
    Running,
    /// vCPUs are parked (by [`VmmHandle::pause`] or QMP `stop`).
    Paused,
    /// vCPUs are parked by the `pause` panic action; only a reset runs
    /// the guest again.
    GuestPanicked,
}

/// One vCPU, as `query-cpus-fast` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuInfo {
    /// vCPU index (also its APIC ID).
    pub id: u32,
    /// Host thread id of the vCPU thread (0 if not started).
    pub thread_id: u64,
}

/// A snapshot of the VM's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmStatus {
    /// Running or paused.
    pub state: RunState,
    /// The vCPUs, by index.
    pub vcpus: Vec<VcpuInfo>,
    /// How many times the guest has been reset and rebuilt.
    pub resets: u64,
}

/// Something that happened to the VM, for observers (the QMP server turns
/// these into events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// A device reported a guest event (poweroff, reset...).
    Guest(VmEvent),
    /// The vCPUs were paused.
    Paused,
    /// The vCPUs were resumed.
    Resumed,
    /// The VM was reset and rebuilt; `guest` is false when requested by a
    /// [`VmmHandle::reset`] call.
    Reset {
        /// Whether the guest asked for it.
        guest: bool,
    },
    /// The guest reported a panic (pvpanic PANICKED); `action` is being
    /// applied.
    GuestPanicked {
        /// The panic action in force.
        action: qmp::PanicAction,
    },
    /// `Vmm::run` is about to return with this reason.
    Shutdown(crate::ExitReason),
    /// A guest memory dump finished (QMP `DUMP_COMPLETED`): its statistics,
    /// or the error as one line.
    DumpCompleted {
        /// Where the vmcore was written.
        path: std::path::PathBuf,
        /// The outcome.
        result: Result<vmcore::DumpStats, String>,
    },
    /// The VMM wrote a kdump vmcore from the guest's elfcorehdr (QMP
    /// `KDUMP_COMPLETED`; a `DumpCompleted` for the same path came first).
    KdumpCompleted {
        /// The vmcore.
        path: std::path::PathBuf,
        /// Notes the guest's elfcorehdr contributed (crash notes, VMCOREINFO).
        guest_notes: u64,
    },
    /// kdump could not deliver a vmcore, so the VMM wrote a host-side dump
    /// instead (QMP `KDUMP_FALLBACK`; see [`crate::kdump`]).
    KdumpFallback {
        /// Why, as one precise line (the parser's error, the guest's reason
        /// code, or the watchdog's timeout).
        reason: String,
        /// The host-side vmcore.
        path: std::path::PathBuf,
        /// Whether it was written (the error chain if not).
        result: Result<(), String>,
    },
}

/// A message to the main loop.
#[derive(Debug)]
pub(crate) enum Message {
    /// A device event from VM incarnation `generation`.
    Device {
        generation: u64,
        event: VmEvent,
    },
    /// A vCPU of incarnation `generation` stopped on a guest fault.
    Fault {
        generation: u64,
        fault: VcpuFault,
    },
    /// SIGINT or SIGTERM arrived.
    Signal(i32),
    Stop,
    Reset,
    Pause(Sender<Result<(), ControlError>>),
    Resume(Sender<Result<(), ControlError>>),
    InjectNmi(Sender<Result<(), ControlError>>),
    PowerButton(Sender<Result<bool, ControlError>>),
    Status(Sender<Result<VmStatus, ControlError>>),
    /// Start a dump; the reply comes when it is written, or (detached) once
    /// it has started.
    Dump {
        request: DumpRequest,
        reply: Sender<Result<Option<vmcore::DumpStats>, DumpError>>,
    },
    /// The dump worker finished.
    DumpFinished {
        result: Result<vmcore::DumpStats, DumpError>,
    },
    SetPanicAction(qmp::PanicAction, Sender<Result<(), ControlError>>),
    InjectCrash(String, Option<u32>, Sender<Result<(), ControlError>>),
    VmxStates(Sender<Result<Vec<devices::pv_vmx::VmxVcpuState>, ControlError>>),
    Vmcoreinfo(Sender<Result<Option<(u64, u32)>, ControlError>>),
    /// A QMP command, to run on the main loop.
    Qmp(qmp::PendingRequest),
    /// The kdump watchdog armed as `seq` expired.
    KdumpWatchdog {
        seq: u64,
    },
}

/// The queue between every other thread and the main loop.
#[derive(Debug)]
pub(crate) struct Mailbox {
    queue: Mutex<VecDeque<Message>>,
    pub(crate) wake: EventFd,
    closed: AtomicBool,
    observers: Mutex<Vec<Sender<Notification>>>,
    /// Progress of the current or last dump, readable without the main loop.
    pub(crate) dump: Arc<DumpTracker>,
    pub(crate) pvpanic_log: PvpanicLog,
    /// The panic action stops the guest (pause, the coredump actions): the
    /// vCPU that writes pvpanic PANICKED parks at once, on its own thread.
    pub(crate) stop_on_panicked: AtomicBool,
}

impl Mailbox {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue: Mutex::new(VecDeque::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            closed: AtomicBool::new(false),
            observers: Mutex::new(Vec::new()),
            dump: Arc::default(),
            pvpanic_log: PvpanicLog::new(),
            stop_on_panicked: AtomicBool::new(false),
        })
    }

    pub(crate) fn post(&self, msg: Message) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(msg);
        if let Err(e) = self.wake.write(1) {
            warn!("cannot wake the main loop: {e}");
        }
    }

    pub(crate) fn take_all(&self) -> Vec<Message> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }

    /// Removes the dump worker's result from the queue, leaving every other
    /// message in its order.
    pub(crate) fn take_dump_finished(&self) -> Option<Result<vmcore::DumpStats, DumpError>> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let at = queue
            .iter()
            .position(|m| matches!(m, Message::DumpFinished { .. }))?;
        match queue.remove(at) {
            Some(Message::DumpFinished { result }) => Some(result),
            _ => None,
        }
    }

    /// Refuses further requests and drops queued ones (their reply
    /// channels close, so waiting callers get `NotRunning`).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        drop(self.take_all());
    }

    pub(crate) fn notify(&self, n: &Notification) {
        self.observers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tx| tx.send(n.clone()).is_ok());
    }
}

/// The devices' [`EventSink`] for one VM incarnation.
pub(crate) struct MailboxSink {
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) generation: u64,
}

impl crate::dump::PvpanicLogSource for Mailbox {
    fn pvpanic_log(&self) -> vmcore::PvpanicLog {
        vmcore::PvpanicLog {
            entries: self.pvpanic_log.entries(),
            dropped: self.pvpanic_log.dropped(),
        }
    }
}

impl EventSink for MailboxSink {
    fn emit(&self, event: VmEvent) {
        if matches!(
            event,
            VmEvent::Pvpanic {
                event: devices::pvpanic::PvpanicEvent::Panicked,
                ..
            }
        ) && self.mailbox.stop_on_panicked.load(Ordering::Acquire)
        {
            crate::vcpu::pause_current_vcpu();
        }
        self.mailbox.post(Message::Device {
            generation: self.generation,
            event,
        });
    }
}

/// Controls a [`crate::Vmm`] from any thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct VmmHandle {
    pub(crate) mailbox: Arc<Mailbox>,
}

impl VmmHandle {
    /// Makes `Vmm::run` stop the vCPUs and return `ExitReason::Stopped`.
    /// Never blocks; harmless after the VM has ended.
    pub fn stop(&self) {
        self.mailbox.post(Message::Stop);
    }

    /// Resets the VM as a guest reset would (restart, or exit with
    /// `ExitReason::Reboot` under `OnReboot::Exit`). Does not wait.
    pub fn reset(&self) -> Result<(), ControlError> {
        if self.mailbox.closed.load(Ordering::SeqCst) {
            return Err(ControlError::NotRunning);
        }
        self.mailbox.post(Message::Reset);
        Ok(())
    }

    /// Parks every vCPU; returns once they all are.
    pub fn pause(&self) -> Result<(), ControlError> {
        self.request(Message::Pause)
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) -> Result<(), ControlError> {
        self.request(Message::Resume)
    }

    /// Injects an NMI into every vCPU, each through `KVM_NMI` on its own
    /// thread. Works on running and paused vCPUs.
    pub fn inject_nmi(&self) -> Result<(), ControlError> {
        self.request(Message::InjectNmi)
    }

    /// Presses the ACPI power button (QMP `system_powerdown`). Returns
    /// whether the guest had enabled the power-button event; a guest that
    /// handles it then powers off through ACPI S5.
    pub fn power_button(&self) -> Result<bool, ControlError> {
        self.request(Message::PowerButton)
    }

    /// The run state and the vCPUs.
    pub fn status(&self) -> Result<VmStatus, ControlError> {
        self.request(Message::Status)
    }

    /// Dumps guest memory to an ELF vmcore (QMP `dump-guest-memory`).
    ///
    /// Pauses a running guest, captures every vCPU on its own thread, writes
    /// the file on a worker thread, and resumes the guest afterwards if it
    /// was running (a guest paused before stays paused). Blocking: returns
    /// `Some(stats)` once the file is in place. With `request.detach`:
    /// returns `None` as soon as the writing has started; the outcome is a
    /// [`Notification::DumpCompleted`] and [`VmmHandle::query_dump`].
    ///
    /// Fails with [`DumpError::Busy`] while another dump is in progress.
    /// On a write error no file is left under `request.path` and the guest
    /// is resumed as on success.
    pub fn dump_guest_memory(
        &self,
        request: DumpRequest,
    ) -> Result<Option<vmcore::DumpStats>, DumpError> {
        if self.mailbox.closed.load(Ordering::SeqCst) {
            return Err(DumpError::NotRunning);
        }
        let (reply, rx) = channel();
        self.mailbox.post(Message::Dump { request, reply });
        // No timeout: a dump takes as long as the disk needs. The main loop
        // answers every request, or drops it (closing the channel) on exit.
        rx.recv().unwrap_or(Err(DumpError::NotRunning))
    }

    /// The current or last dump's state and progress (QMP `query-dump`).
    /// Never blocks and works after the VM has ended.
    pub fn query_dump(&self) -> DumpStatus {
        self.mailbox.dump.status()
    }

    /// Sets what a guest panic (pvpanic PANICKED) does from now on, as QMP
    /// `set-action` does.
    pub fn set_panic_action(&self, action: qmp::PanicAction) -> Result<(), ControlError> {
        self.request(|tx| Message::SetPanicAction(action, tx))
    }

    /// Every pvpanic event the guest reported, oldest first (at most
    /// [`crate::pvpanic_log::PVPANIC_LOG_CAPACITY`]; the rest are counted by
    /// [`VmmHandle::pvpanic_log_dropped`]). Also valid after `run` returned.
    /// `timestamp_ns` counts from `Vmm::new`.
    pub fn pvpanic_log(&self) -> Vec<PvpanicLogEntry> {
        self.mailbox.pvpanic_log.entries()
    }

    /// pvpanic events not kept because the log was full.
    pub fn pvpanic_log_dropped(&self) -> u32 {
        self.mailbox.pvpanic_log.dropped()
    }

    /// Every vCPU's VMX state as the pv_vmx model holds it (for the
    /// VMMVMXSTATE vmcore note).
    pub fn vmx_states(&self) -> Result<Vec<devices::pv_vmx::VmxVcpuState>, ControlError> {
        self.request(Message::VmxStates)
    }

    /// The guest's registered VMCOREINFO note: `(GPA, size)`.
    pub fn vmcoreinfo(&self) -> Result<Option<(u64, u32)>, ControlError> {
        self.request(Message::Vmcoreinfo)
    }

    /// Tells `cpu` (default 0; every CPU for PANIC_ALL, which takes no
    /// cpu) to crash as `crash_type` (a [`VmmHandle::crash_types`] name, any
    /// case) says, through the crash-control device. Errors name the valid
    /// types or CPUs.
    pub fn inject_crash(&self, crash_type: &str, cpu: Option<u32>) -> Result<(), ControlError> {
        let name = crash_type.to_owned();
        self.request(|tx| Message::InjectCrash(name, cpu, tx))
    }

    /// The crash types [`VmmHandle::inject_crash`] takes.
    pub fn crash_types(&self) -> &'static [devices::crash_control::CrashTypeInfo] {
        devices::crash_control::crash_types()
    }

    /// Receives every [`Notification`] from now on.
    pub fn subscribe(&self) -> Receiver<Notification> {
        let (tx, rx) = channel();
        self.mailbox
            .observers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    fn request<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, ControlError>>) -> Message,
    ) -> Result<T, ControlError> {
        if self.mailbox.closed.load(Ordering::SeqCst) {
            return Err(ControlError::NotRunning);
        }
        let (tx, rx) = channel();
        self.mailbox.post(make(tx));
        match rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ControlError::Timeout(REQUEST_TIMEOUT)),
            Err(RecvTimeoutError::Disconnected) => Err(ControlError::NotRunning),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_after_close_fail_fast() {
        let h = VmmHandle {
            mailbox: Arc::new(Mailbox::new().unwrap()),
        };
        h.mailbox.close();
        assert_eq!(h.pause(), Err(ControlError::NotRunning));
        assert_eq!(h.reset(), Err(ControlError::NotRunning));
        h.stop();
    }

    #[test]
    fn a_dropped_request_answers_not_running() {
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let h = VmmHandle {
            mailbox: mailbox.clone(),
        };
        let t = std::thread::spawn(move || h.status());
        // Wait for the request to arrive, then close as run() does on exit.
        loop {
            let _ = mailbox.wake.read();
            let msgs = mailbox.take_all();
            if !msgs.is_empty() {
                assert!(matches!(msgs[0], Message::Status(_)));
                break;
            }
        }
        mailbox.close();
        assert_eq!(t.join().unwrap(), Err(ControlError::NotRunning));
    }

    #[test]
    fn the_dump_result_is_taken_out_of_order() {
        let mailbox = Mailbox::new().unwrap();
        assert!(mailbox.take_dump_finished().is_none());
        mailbox.post(Message::Stop);
        mailbox.post(Message::DumpFinished {
            result: Err(DumpError::Busy),
        });
        mailbox.post(Message::Reset);
        assert!(matches!(
            mailbox.take_dump_finished(),
            Some(Err(DumpError::Busy))
        ));
        let rest = mailbox.take_all();
        assert!(
            matches!(rest[..], [Message::Stop, Message::Reset]),
            "{rest:?}"
        );
    }

    #[test]
    fn sink_tags_events_with_the_generation() {
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let sink = MailboxSink {
            mailbox: mailbox.clone(),
            generation: 7,
        };
        sink.emit(VmEvent::Poweroff { vcpu: 1 });
        assert_eq!(mailbox.wake.read().unwrap(), 1);
        let msgs = mailbox.take_all();
        assert!(matches!(
            msgs[..],
            [Message::Device {
                generation: 7,
                event: VmEvent::Poweroff { vcpu: 1 }
            }]
        ));
    }
}
