//! [`Vmm`]: builds a VM from a [`VmConfig`] and runs it to its end.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use log::{info, warn};

use crate::boot::layout;
use crate::config::{Kernel, OnReboot, SerialOutput, VmConfig};
use crate::control::{
    ControlError, Mailbox, MailboxSink, Message, Notification, RunState, VcpuInfo, VmStatus,
    VmmHandle,
};
use crate::device_manager::SharedWriter;
use crate::dump::{self, DumpError, DumpRequest, DumpSources};
use crate::event_loop::{
    EventLoopError, MailboxSubscriber, QmpSubscriber, SerialSlot, SignalSubscriber, StdinSubscriber,
};
use crate::vcpu::FaultReporter;
use crate::vm::{Vm, VmError, VmSpec};

/// The KVM device, overridable for tests of the "no KVM" path.
pub const KVM_DEVICE_ENV: &str = "VMM_KVM_DEVICE";
const KVM_DEVICE: &str = "/dev/kvm";
/// The most vCPUs xAPIC IDs can number (0..=254).
pub const MAX_XAPIC_CPUS: usize = 255;
/// The only KVM API version there has ever been.
const KVM_API_VERSION: i32 = 12;
/// Guest memory must be a whole number of pages.
const PAGE_SIZE: u64 = 4096;

/// Whether `action` stops the guest on pvpanic PANICKED (and so the vCPU
/// that wrote it parks before running on).
fn panic_action_stops(action: qmp::PanicAction) -> bool {
    use qmp::PanicAction;
    matches!(
        action,
        PanicAction::Pause | PanicAction::CoredumpDestroy | PanicAction::CoredumpRestart
    )
}

/// Exit codes of the `vmm` binary.
pub mod exit_code {
    /// Poweroff, reboot with `--on-reboot exit`, stop request or signal.
    pub const SUCCESS: i32 = 0;
    /// The VMM itself failed while running.
    pub const VMM_ERROR: i32 = 1;
    /// Bad input: flags, kernel file, sizes, /dev/kvm.
    pub const BAD_INPUT: i32 = 2;
    /// The guest faulted (triple fault, KVM internal error, failed entry).
    pub const GUEST_FAULT: i32 = 3;
    /// The guest panicked under `--on-panic exit-failure`.
    pub const GUEST_PANIC: i32 = 4;
}

/// Errors creating or running a [`Vmm`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `cpus` is 0.
    #[error("the VM needs at least 1 vCPU")]
    NoCpus,
    /// More vCPUs than KVM supports.
    #[error("{requested} vCPUs requested, but at most {max} are supported here")]
    TooManyCpus {
        /// Requested count.
        requested: u32,
        /// The lower of KVM_CAP_MAX_VCPUS and [`MAX_XAPIC_CPUS`].
        max: usize,
    },
    /// Less RAM than the boot layout needs.
    #[error("memory too small: {memory} bytes (at least {min} needed)")]
    MemoryTooSmall {
        /// Requested bytes.
        memory: u64,
        /// Minimum.
        min: u64,
    },
    /// RAM size not a multiple of the page size.
    #[error("memory size {0} is not a multiple of 4 KiB")]
    MemoryUnaligned(u64),
    /// /dev/kvm missing or not accessible.
    #[error("cannot open {path}")]
    KvmOpen {
        /// The device path.
        path: String,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The KVM device path is not a KVM device.
    #[error("{0} is not a KVM device")]
    NotKvm(String),
    /// The kernel file could not be read.
    #[error("cannot read kernel {path}")]
    KernelRead {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The serial output file could not be created.
    #[error("cannot create serial output file {path}")]
    SerialOpen {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Building or driving the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The event loop failed.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// The mailbox EventFd could not be created.
    #[error("creating the control eventfd failed")]
    Mailbox(#[source] std::io::Error),
    /// The QMP socket could not be served.
    #[error("cannot serve QMP")]
    Qmp(#[source] qmp::ServerError),
    /// The kdump watchdog could not be set up.
    #[error(transparent)]
    Kdump(#[from] crate::kdump::KdumpError),
}

impl Error {
    /// The `vmm` binary's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NoCpus
            | Error::TooManyCpus { .. }
            | Error::MemoryTooSmall { .. }
            | Error::MemoryUnaligned(_)
            | Error::KvmOpen { .. }
            | Error::NotKvm(_)
            | Error::KernelRead { .. }
            | Error::SerialOpen { .. }
            | Error::Qmp(_)
            | Error::Vm(VmError::Boot(_)) => exit_code::BAD_INPUT,
            _ => exit_code::VMM_ERROR,
        }
    }
}

/// Why [`Vmm::run`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest reset, under `OnReboot::Exit`.
    Reboot,
    /// [`VmmHandle::stop`], SIGINT or SIGTERM.
    Stopped,
    /// QMP `quit`.
    Quit,
    /// The guest panicked and the panic action (`poweroff` or
    /// `exit-failure`) ended the VM.
    GuestPanic {
        /// The action applied.
        action: qmp::PanicAction,
    },
    /// A vCPU stopped on a guest fault.
    GuestFault {
        /// The vCPU.
        vcpu: u32,
        /// What happened.
        reason: String,
        /// Guest RIP.
        rip: u64,
        /// Guest RSP.
        rsp: u64,
        /// Guest CR3.
        cr3: u64,
    },
}

impl ExitReason {
    /// The `vmm` binary's exit code for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Poweroff | ExitReason::Reboot | ExitReason::Stopped | ExitReason::Quit => {
                exit_code::SUCCESS
            }
            ExitReason::GuestPanic { action } => match action {
                qmp::PanicAction::ExitFailure => exit_code::GUEST_PANIC,
                _ => exit_code::SUCCESS,
            },
            ExitReason::GuestFault { .. } => exit_code::GUEST_FAULT,
        }
    }

    /// The QMP `SHUTDOWN` event's {guest, reason} for this outcome.
    pub fn shutdown_cause(&self) -> (bool, qmp::ShutdownCause) {
        use qmp::ShutdownCause as C;
        match self {
            ExitReason::Poweroff => (true, C::GuestShutdown),
            ExitReason::Reboot => (true, C::GuestReset),
            ExitReason::Stopped => (false, C::HostSignal),
            ExitReason::Quit => (false, C::HostQmpQuit),
            ExitReason::GuestPanic { .. } => (true, C::GuestPanic),
            ExitReason::GuestFault { .. } => (false, C::HostError),
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Poweroff => write!(f, "guest powered off"),
            ExitReason::Reboot => write!(f, "guest rebooted"),
            ExitReason::Stopped => write!(f, "stopped"),
            ExitReason::Quit => write!(f, "quit (QMP)"),
            ExitReason::GuestPanic { action } => {
                write!(f, "guest panicked (panic action {action})")
            }
            ExitReason::GuestFault {
                vcpu,
                reason,
                rip,
                rsp,
                cr3,
            } => write!(
                f,
                "vcpu {vcpu}: {reason} at RIP={rip:#x} RSP={rsp:#x} CR3={cr3:#x}"
            ),
        }
    }
}

/// A VMM: one VM, rebuilt on guest reset, driven by an event loop.
pub struct Vmm {
    kvm: Kvm,
    kernel: Cow<'static, [u8]>,
    cpus: u32,
    memory: u64,
    cmdline: String,
    on_reboot: OnReboot,
    serial: SharedWriter,
    pub(crate) mailbox: Arc<Mailbox>,
    signals: Option<SignalSubscriber>,
    stdin: Option<StdinSubscriber>,
    serial_slot: SerialSlot,
    vm: Vm,
    pub(crate) generation: u64,
    state: RunState,
    pvpanic_events: u8,
    pub(crate) on_panic: qmp::PanicAction,
    qmp: Option<qmp::QmpServer>,
    qmp_requests: Option<qmp::QmpRequestReceiver>,
    qmp_events: Option<qmp::EventBroadcaster>,
    dump_dir: PathBuf,
    pub(crate) dump_progress_bar: bool,
    active_dump: Option<ActiveDump>,
    pub(crate) kdump: crate::kdump::KdumpState,
}

/// A dump whose file a worker thread is writing; the vCPUs stay paused.
struct ActiveDump {
    path: PathBuf,
    /// Resume the vCPUs when it ends (they ran before and nobody paused
    /// them since).
    resume_after: bool,
    /// The VM incarnation dumped (a reset meanwhile makes resuming moot).
    generation: u64,
    /// The blocking caller's reply channel (None when detached).
    reply: Option<Sender<Result<Option<vmcore::DumpStats>, DumpError>>>,
    /// The writer thread (None once joined).
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("cpus", &self.cpus)
            .field("memory", &self.memory)
            .field("vm", &self.vm)
            .finish()
    }
}

fn serial_writer(out: SerialOutput) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match out {
        SerialOutput::Stdio => Box::new(std::io::stdout()),
        SerialOutput::File(path) => match std::fs::File::create(&path) {
            Ok(f) => Box::new(f),
            Err(source) => return Err(Error::SerialOpen { path, source }),
        },
        SerialOutput::Null => Box::new(std::io::sink()),
        SerialOutput::Writer(w) => w,
    })
}

fn open_kvm() -> Result<Kvm, Error> {
    let path = std::env::var(KVM_DEVICE_ENV).unwrap_or_else(|_| KVM_DEVICE.to_string());
    open_kvm_at(&path)
}

/// Opens `path` and checks that it speaks the KVM API.
fn open_kvm_at(path: &str) -> Result<Kvm, Error> {
    let c_path = std::ffi::CString::new(path).map_err(|_| Error::KvmOpen {
        path: path.to_string(),
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let kvm = Kvm::new_with_path(&c_path).map_err(|source| Error::KvmOpen {
        path: path.to_string(),
        source,
    })?;
    if kvm.get_api_version() != KVM_API_VERSION {
        return Err(Error::NotKvm(path.to_string()));
    }
    Ok(kvm)
}

/// Gives a freshly built VM's dumps their device state: the pv_vmx
/// model's per-vCPU VMX state, the guest's registered VMCOREINFO, and the
/// VMM's pvpanic log (which outlives resets).
fn connect_dump_sources(vm: &mut Vm, mailbox: &Arc<Mailbox>) {
    let devices = vm.devices();
    let sources = DumpSources {
        pv_vmx: Some(devices.pv_vmx.clone()),
        vmcoreinfo: Some(devices.vmcoreinfo.clone()),
        pvpanic: Some(mailbox.clone()),
        fault: None,
    };
    vm.set_dump_sources(sources);
}

impl Vmm {
    /// Validates `cfg`, opens KVM and builds the VM (loads the kernel, ACPI
    /// tables, devices, vCPUs). Nothing runs until [`Vmm::run`].
    pub fn new(cfg: VmConfig) -> Result<Self, Error> {
        if cfg.cpus == 0 {
            return Err(Error::NoCpus);
        }
        if cfg.memory < layout::MIN_MEMORY {
            return Err(Error::MemoryTooSmall {
                memory: cfg.memory,
                min: layout::MIN_MEMORY,
            });
        }
        if !cfg.memory.is_multiple_of(PAGE_SIZE) {
            return Err(Error::MemoryUnaligned(cfg.memory));
        }
        let kernel: Cow<'static, [u8]> = match cfg.kernel {
            Kernel::Embedded => Cow::Borrowed(crate::GUEST_KERNEL),
            Kernel::Path(path) => match std::fs::read(&path) {
                Ok(bytes) => Cow::Owned(bytes),
                Err(source) => return Err(Error::KernelRead { path, source }),
            },
        };
        let kvm = open_kvm()?;
        // The MADT's xAPIC entries have 8-bit APIC IDs, and 0xff is broadcast.
        let max = kvm.get_max_vcpus().min(MAX_XAPIC_CPUS);
        if cfg.cpus as usize > max {
            return Err(Error::TooManyCpus {
                requested: cfg.cpus,
                max,
            });
        }
        let serial = SharedWriter(Arc::new(Mutex::new(serial_writer(cfg.serial)?)));
        let mailbox = Arc::new(Mailbox::new().map_err(Error::Mailbox)?);
        let spec = VmSpec {
            cpus: cfg.cpus,
            memory: cfg.memory,
            kernel: &kernel,
            cmdline: &cfg.cmdline,
            pvpanic_events: cfg.pvpanic_events,
        };
        let sink = Arc::new(MailboxSink {
            mailbox: mailbox.clone(),
            generation: 0,
        });
        let mut vm = Vm::build(&kvm, spec, sink, serial.clone())?;
        connect_dump_sources(&mut vm, &mailbox);
        let kdump = crate::kdump::KdumpState::new()?;
        // Last, so that a failure above leaves no socket behind.
        let (qmp, qmp_requests, qmp_events) = match &cfg.api_socket {
            Some(path) => {
                let mut config = qmp::ServerConfig::new(path);
                config.on_thread_start = Some(qmp::ThreadHook::new(|| {
                    crate::seccomp::apply_or_log(crate::seccomp::ThreadKind::Api)
                }));
                let (server, requests) = qmp::QmpServer::start(config).map_err(Error::Qmp)?;
                let events = server.broadcaster();
                (Some(server), Some(requests), Some(events))
            }
            None => (None, None, None),
        };
        mailbox.stop_on_panicked.store(
            panic_action_stops(cfg.on_panic),
            std::sync::atomic::Ordering::Release,
        );
        Ok(Self {
            pvpanic_events: cfg.pvpanic_events,
            on_panic: cfg.on_panic,
            qmp,
            qmp_requests,
            qmp_events,
            kvm,
            cpus: cfg.cpus,
            memory: cfg.memory,
            cmdline: cfg.cmdline,
            on_reboot: cfg.on_reboot,
            serial,
            mailbox,
            signals: None,
            stdin: None,
            serial_slot: Arc::new(Mutex::new(Some(vm.serial()))),
            vm,
            generation: 0,
            state: RunState::Running,
            dump_dir: PathBuf::from("."),
            dump_progress_bar: false,
            active_dump: None,
            kdump,
            kernel,
        })
    }

    /// A handle for controlling this VMM from other threads.
    pub fn handle(&self) -> VmmHandle {
        VmmHandle {
            mailbox: self.mailbox.clone(),
        }
    }

    /// Makes SIGINT/SIGTERM stop the VM cleanly (`ExitReason::Stopped`).
    /// The signals must already be blocked in every thread
    /// ([`crate::block_exit_signals`]); the binary does this, library users
    /// normally do not.
    pub fn handle_signals(&mut self) -> Result<(), Error> {
        self.signals = Some(SignalSubscriber::new(self.mailbox.clone())?);
        Ok(())
    }

    /// Feeds the process's standard input to the guest's COM1 (the binary
    /// does this with `--serial stdio`).
    pub fn forward_stdin(&mut self) {
        self.stdin = Some(StdinSubscriber::new(self.serial_slot.clone()));
    }

    /// Where [`Vmm::dump_to_dir`] writes (`vmm run --dump-dir`); the
    /// current directory by default.
    pub fn set_dump_dir(&mut self, dir: PathBuf) {
        self.dump_dir = dir;
    }

    /// The directory of [`Vmm::dump_to_dir`].
    pub fn dump_dir(&self) -> &Path {
        &self.dump_dir
    }

    /// Draw a progress bar on stderr during dumps, when it is a terminal
    /// (the binary turns this on).
    pub fn show_dump_progress(&mut self, show: bool) {
        self.dump_progress_bar = show;
    }

    /// Dumps the VM into a new file in the dump directory, blocking, and
    /// returns its path: for the `--on-panic coredump-*` actions, called on
    /// the main loop's thread. The vCPUs are left paused (the action then
    /// destroys or restarts the VM). Emits `DumpCompleted` and updates
    /// `query_dump` like any other dump.
    pub fn dump_to_dir(&mut self) -> Result<(PathBuf, vmcore::DumpStats), DumpError> {
        let path = self.dump_dir.join(dump::unique_dump_name());
        let request = DumpRequest {
            path: path.clone(),
            paging: true,
            detach: false,
        };
        self.dump_blocking(request, false)
            .map(|stats| (path, stats))
    }

    /// Dumps the VM on the main loop's thread, as QEMU's blocking
    /// `dump-guest-memory` holds its monitor. With `resume`, a guest that
    /// was running runs again afterwards; otherwise it is left paused.
    pub(crate) fn dump_blocking(
        &mut self,
        request: DumpRequest,
        resume: bool,
    ) -> Result<vmcore::DumpStats, DumpError> {
        if self.active_dump.is_some() {
            return Err(DumpError::Busy);
        }
        let tracker = self.mailbox.dump.clone();
        let was_running = self.state == RunState::Running;
        let result = dump::capture(&self.vm).and_then(|capture| {
            tracker.start(capture.ram_bytes());
            let (mut progress, bar) =
                dump::progress_reporter(self.dump_progress_bar, Some(tracker.clone()));
            let written = capture.write(&request.path, request.paging, &mut progress);
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            written
        });
        tracker.finish(result.is_ok());
        if was_running {
            if resume {
                self.vm.resume();
            } else {
                self.state = RunState::Paused;
                self.mailbox.notify(&Notification::Paused);
            }
        }
        self.report_dump(request.path, &result);
        result
    }

    /// Whether a `dump-guest-memory` worker is still writing.
    pub(crate) fn dump_in_progress(&self) -> bool {
        self.active_dump.is_some()
    }

    /// Tells observers and QMP clients (`DUMP_COMPLETED`) how a dump ended.
    pub(crate) fn report_dump(&self, path: PathBuf, result: &Result<vmcore::DumpStats, DumpError>) {
        let status = self.mailbox.dump.status();
        self.emit(qmp::QmpEvent::DumpCompleted {
            result: crate::vmcore_hooks::dump_query_result(&status),
            error: result.as_ref().err().map(|e| dump::error_chain(e)),
        });
        self.mailbox.notify(&Notification::DumpCompleted {
            path,
            result: match result {
                Ok(stats) => Ok(stats.clone()),
                Err(e) => Err(dump::error_chain(e)),
            },
        });
    }

    /// Handles `dump-guest-memory`: capture now, write on a worker thread.
    pub(crate) fn start_dump(
        &mut self,
        request: DumpRequest,
        reply: Sender<Result<Option<vmcore::DumpStats>, DumpError>>,
    ) {
        if self.active_dump.is_some() {
            let _ = reply.send(Err(DumpError::Busy));
            return;
        }
        let was_running = self.state == RunState::Running;
        let capture = match dump::capture(&self.vm) {
            Ok(c) => c,
            Err(e) => {
                warn!("dump: {}", dump::error_chain(&e));
                if was_running {
                    self.vm.resume();
                }
                let _ = reply.send(Err(e));
                return;
            }
        };
        if was_running {
            self.state = RunState::Paused;
            self.mailbox.notify(&Notification::Paused);
        }
        let tracker = self.mailbox.dump.clone();
        tracker.start(capture.ram_bytes());
        let (mut progress, bar) =
            dump::progress_reporter(self.dump_progress_bar, Some(tracker.clone()));
        let mailbox = self.mailbox.clone();
        let (path, paging) = (request.path.clone(), request.paging);
        let worker = std::thread::Builder::new()
            .name("vmcore-dump".into())
            .spawn(move || {
                crate::seccomp::apply_or_log(crate::seccomp::ThreadKind::DumpWriter);
                let result = capture.write(&path, paging, &mut progress);
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                // The guest may run again only after this point.
                drop(capture);
                mailbox.post(Message::DumpFinished { result });
            });
        match worker {
            Ok(worker) => {
                let reply = if request.detach {
                    let _ = reply.send(Ok(None));
                    None
                } else {
                    Some(reply)
                };
                self.active_dump = Some(ActiveDump {
                    path: request.path,
                    resume_after: was_running,
                    generation: self.generation,
                    reply,
                    worker: Some(worker),
                });
            }
            Err(e) => {
                tracker.finish(false);
                if was_running {
                    self.vm.resume();
                    self.state = RunState::Running;
                    self.mailbox.notify(&Notification::Resumed);
                }
                let _ = reply.send(Err(DumpError::Worker(e.to_string())));
            }
        }
    }

    /// The worker is done: report, and resume the guest if it was running
    /// and the VM still exists (`vm_alive`).
    fn finish_dump(&mut self, result: Result<vmcore::DumpStats, DumpError>, vm_alive: bool) {
        let Some(active) = self.active_dump.take() else {
            return;
        };
        // It posted its result, so it is about to end.
        if active.worker.is_some_and(|w| w.join().is_err()) {
            warn!("dump: the worker thread panicked");
        }
        self.mailbox.dump.finish(result.is_ok());
        if vm_alive && active.resume_after && active.generation == self.generation {
            self.vm.resume();
            self.state = RunState::Running;
            self.mailbox.notify(&Notification::Resumed);
        }
        self.report_dump(active.path, &result);
        if let Some(reply) = active.reply {
            let _ = reply.send(result.map(Some));
        }
    }

    /// Waits for a detached dump's worker to finish its file and reports
    /// it now, so that another dump can start (kdump's vmcore must not be
    /// refused as busy). Other queued messages keep their order.
    pub(crate) fn settle_active_dump(&mut self) {
        self.join_active_dump(true);
    }

    /// At the end of `run`: let a dump in progress finish its file.
    fn wait_for_dump(&mut self) {
        self.join_active_dump(false);
    }

    /// Joins the active dump's worker and reports its result (resuming the
    /// guest only if `vm_alive`).
    fn join_active_dump(&mut self, vm_alive: bool) {
        let Some(active) = self.active_dump.as_mut() else {
            return;
        };
        if active.worker.take().is_some_and(|w| w.join().is_err()) {
            warn!("dump: the worker thread panicked");
        }
        let result = self
            .mailbox
            .take_dump_finished()
            .unwrap_or_else(|| Err(DumpError::Worker("ended without a result".into())));
        self.finish_dump(result, vm_alive);
    }

    fn fault_reporter(&self) -> FaultReporter {
        let mailbox = self.mailbox.clone();
        let generation = self.generation;
        Arc::new(move |fault| mailbox.post(Message::Fault { generation, fault }))
    }

    /// Runs the VM until it powers off, faults, is stopped, or (with
    /// `OnReboot::Exit`) resets. Callable from any thread.
    pub fn run(mut self) -> Result<ExitReason, Error> {
        let result = self.run_loop();
        self.vm.shutdown();
        self.wait_for_dump();
        self.mailbox.close();
        let (guest, reason) = match &result {
            Ok(reason) => {
                self.mailbox.notify(&Notification::Shutdown(reason.clone()));
                reason.shutdown_cause()
            }
            Err(_) => (false, qmp::ShutdownCause::HostError),
        };
        self.emit(qmp::QmpEvent::Shutdown { guest, reason });
        // Dropping the server flushes queued replies (`quit`'s) and events,
        // then closes the clients and removes the socket.
        self.qmp_events = None;
        self.qmp = None;
        result
    }

    /// Sends `event` to every negotiated QMP client (if QMP is served).
    pub(crate) fn emit(&self, event: qmp::QmpEvent) {
        if let Some(events) = &self.qmp_events {
            events.emit(&event);
        }
    }

    /// Sends an extension event by name (see `qmp_backend` for the list).
    pub(crate) fn emit_raw(&self, name: &str, data: serde_json::Value) {
        if let Some(events) = &self.qmp_events {
            events.emit_raw(name, Some(data));
        }
    }

    /// The run state, as QMP `query-status` and [`VmmHandle::status`] see it.
    pub(crate) fn state(&self) -> RunState {
        self.state
    }

    /// The current VM incarnation.
    pub(crate) fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The current VM incarnation, mutably.
    pub(crate) fn vm_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// What a guest reset does now.
    pub(crate) fn set_on_reboot(&mut self, on_reboot: OnReboot) {
        self.on_reboot = on_reboot;
    }

    /// Parks the vCPUs and enters `state` (Paused or GuestPanicked);
    /// notifies observers and emits `STOP` when they were running.
    pub(crate) fn pause_vm(&mut self, state: RunState) -> Result<(), ControlError> {
        if self.state != RunState::Running {
            if state == RunState::GuestPanicked {
                self.state = state;
            }
            return Ok(());
        }
        self.vm
            .pause()
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        self.state = state;
        self.mailbox.notify(&Notification::Paused);
        self.emit(qmp::QmpEvent::Stop);
        Ok(())
    }

    /// Lets parked vCPUs run again (`RESUME`). A panicked guest needs a
    /// reset first, as in QEMU.
    pub(crate) fn resume_vm(&mut self) -> Result<(), ControlError> {
        match self.state {
            RunState::Running => Ok(()),
            RunState::GuestPanicked => Err(ControlError::Failed(
                "the guest panicked: resetting the virtual machine is required".into(),
            )),
            RunState::Paused => {
                self.vm.resume();
                self.state = RunState::Running;
                self.mailbox.notify(&Notification::Resumed);
                self.emit(qmp::QmpEvent::Resume);
                Ok(())
            }
        }
    }

    /// Sets what a guest panic does from now on.
    pub(crate) fn set_panic_action(&mut self, action: qmp::PanicAction) {
        self.on_panic = action;
        self.mailbox.stop_on_panicked.store(
            panic_action_stops(action),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// A pvpanic event: log it, report it, apply the panic action.
    fn on_pvpanic(
        &mut self,
        event: devices::pvpanic::PvpanicEvent,
        vcpu: u32,
    ) -> Result<Option<ExitReason>, Error> {
        use devices::pvpanic::PvpanicEvent;
        use qmp::{GuestPanicAction, PanicAction, QmpEvent};
        self.mailbox.pvpanic_log.record(event, vcpu);
        match event {
            PvpanicEvent::CrashLoaded => {
                // kdump is about to run: never stop the guest.
                self.emit(QmpEvent::GuestCrashloaded {
                    action: GuestPanicAction::Run,
                });
                Ok(None)
            }
            PvpanicEvent::Shutdown => {
                self.emit(QmpEvent::GuestPvshutdown);
                Ok(Some(ExitReason::Poweroff))
            }
            PvpanicEvent::Panicked => {
                let action = self.on_panic;
                eprintln!("vmm: guest panicked on vcpu {vcpu}; panic action {action}");
                self.mailbox.notify(&Notification::GuestPanicked { action });
                self.emit(QmpEvent::GuestPanicked {
                    action: action.into(),
                    info: None,
                });
                match action {
                    PanicAction::None => Ok(None),
                    PanicAction::Pause => {
                        if let Err(e) = self.pause_vm(RunState::GuestPanicked) {
                            warn!("panic action pause failed: {e}");
                        }
                        Ok(None)
                    }
                    PanicAction::Poweroff | PanicAction::ExitFailure => {
                        Ok(Some(ExitReason::GuestPanic { action }))
                    }
                    PanicAction::Restart => self.rebuild(true, qmp::ShutdownCause::GuestPanic),
                    PanicAction::CoredumpDestroy | PanicAction::CoredumpRestart => {
                        if let Err(e) = self.pause_vm(RunState::GuestPanicked) {
                            warn!("pausing for the vmcore failed: {e}");
                        }
                        if let Err(e) = crate::vmcore_hooks::write_panic_vmcore(self, action) {
                            eprintln!("vmm: error: no vmcore written: {e}");
                        }
                        if action == PanicAction::CoredumpRestart {
                            self.rebuild(true, qmp::ShutdownCause::GuestPanic)
                        } else {
                            Ok(Some(ExitReason::GuestPanic { action }))
                        }
                    }
                }
            }
        }
    }

    fn run_loop(&mut self) -> Result<ExitReason, Error> {
        let mut manager = EventManager::<Box<dyn MutEventSubscriber + Send>>::new()
            .map_err(|e| Error::EventLoop(EventLoopError::Manager(e)))?;
        manager.add_subscriber(Box::new(MailboxSubscriber(self.mailbox.clone())));
        if let Some(requests) = self.qmp_requests.take() {
            manager.add_subscriber(Box::new(QmpSubscriber::new(requests, self.mailbox.clone())));
        }
        if let Some(signals) = self.signals.take() {
            manager.add_subscriber(Box::new(signals));
        }
        if let Some(stdin) = self.stdin.take() {
            manager.add_subscriber(Box::new(stdin));
        }
        manager.add_subscriber(Box::new(self.kdump.subscriber(self.mailbox.clone())));
        self.vm.start(self.fault_reporter())?;
        // Steady state: every fd the loop needs exists.
        crate::seccomp::apply_or_log(crate::seccomp::ThreadKind::Main);
        loop {
            manager
                .run()
                .map_err(|e| Error::EventLoop(EventLoopError::Manager(e)))?;
            for msg in self.mailbox.take_all() {
                if let Some(reason) = self.handle_message(msg)? {
                    return Ok(reason);
                }
            }
        }
    }

    fn handle_message(&mut self, msg: Message) -> Result<Option<ExitReason>, Error> {
        match msg {
            Message::Device { generation, .. } | Message::Fault { generation, .. }
                if generation != self.generation =>
            {
                // From a VM incarnation already torn down.
                Ok(None)
            }
            Message::Device { event, .. } => {
                self.mailbox.notify(&Notification::Guest(event));
                match event {
                    devices::VmEvent::Poweroff { .. } => Ok(Some(ExitReason::Poweroff)),
                    devices::VmEvent::Reset { .. } => {
                        self.reset(true, qmp::ShutdownCause::GuestReset)
                    }
                    devices::VmEvent::Pvpanic { event, vcpu } => {
                        crate::kdump::on_pvpanic(self, event);
                        self.on_pvpanic(event, vcpu)
                    }
                    // kdump (see crate::kdump), crash-control and vmcoreinfo.
                    other => {
                        self.on_pv_event(other);
                        crate::kdump::on_guest_event(self, other);
                        Ok(None)
                    }
                }
            }
            Message::Fault { fault, .. } => crate::guest_fault::on_guest_fault(self, fault),
            Message::Signal(signo) => {
                info!("terminating on signal {signo}");
                Ok(Some(ExitReason::Stopped))
            }
            Message::Stop => Ok(Some(ExitReason::Stopped)),
            Message::Reset => self.reset(false, qmp::ShutdownCause::HostQmpSystemReset),
            Message::Pause(reply) => {
                if let Some(dump) = &mut self.active_dump {
                    // Paused by the user during the dump: stay paused after.
                    dump.resume_after = false;
                }
                let _ = reply.send(self.pause_vm(RunState::Paused));
                Ok(None)
            }
            Message::Resume(reply) if self.active_dump.is_some() => {
                let _ = reply.send(Err(ControlError::Failed(
                    "a guest memory dump is in progress".into(),
                )));
                Ok(None)
            }
            Message::Resume(reply) => {
                let _ = reply.send(self.resume_vm());
                Ok(None)
            }
            Message::InjectNmi(reply) => {
                self.inject_nmi();
                let _ = reply.send(Ok(()));
                Ok(None)
            }
            Message::SetPanicAction(action, reply) => {
                self.set_panic_action(action);
                let _ = reply.send(Ok(()));
                Ok(None)
            }
            Message::InjectCrash(name, cpu, reply) => {
                let _ = reply.send(self.inject_crash(&name, cpu).map_err(ControlError::Failed));
                Ok(None)
            }
            Message::VmxStates(reply) => {
                let states = self
                    .vm
                    .devices()
                    .pv_vmx
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .snapshot();
                let _ = reply.send(Ok(states));
                Ok(None)
            }
            Message::Vmcoreinfo(reply) => {
                let note = self
                    .vm
                    .devices()
                    .vmcoreinfo
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .registered();
                let _ = reply.send(Ok(note));
                Ok(None)
            }
            Message::Qmp(pending) => Ok(crate::qmp_backend::handle(self, pending)?),
            Message::PowerButton(reply) => {
                let _ = reply.send(Ok(self.vm.press_power_button()));
                Ok(None)
            }
            Message::Dump { request, reply } => {
                self.start_dump(request, reply);
                Ok(None)
            }
            Message::DumpFinished { result } => {
                self.finish_dump(result, true);
                Ok(None)
            }
            Message::KdumpWatchdog { seq } => {
                crate::kdump::on_watchdog(self, seq);
                Ok(None)
            }
            Message::Status(reply) => {
                let vcpus = self
                    .vm
                    .vcpus()
                    .iter()
                    .map(|c| VcpuInfo {
                        id: c.id(),
                        thread_id: c.thread_id(),
                    })
                    .collect();
                let _ = reply.send(Ok(VmStatus {
                    state: self.state,
                    vcpus,
                    resets: self.generation,
                }));
                Ok(None)
            }
        }
    }

    /// kdump, crash-control and vmcoreinfo events: logged, and sent to QMP
    /// clients as our events `KEXEC_HANDOVER` {cpu, entry, elfcorehdr},
    /// `VMCORE_READY` {cpu, elfcorehdr, size}, `KDUMP_CAPTURE_FAILED` {cpu,
    /// reason, detail}, `CRASH_ACK` {cpu, step} and `VMCOREINFO` {cpu,
    /// paddr, size} (paddr/size null when unregistered). None stops the guest.
    fn on_pv_event(&mut self, event: devices::VmEvent) {
        use devices::VmEvent;
        use serde_json::json;
        let now = crate::pvpanic_log::rfc3339_utc(std::time::SystemTime::now());
        match event {
            VmEvent::KexecHandover {
                vcpu,
                entry,
                elfcorehdr,
            } => {
                eprintln!(
                    "vmm: kdump: KEXEC_HANDOVER from vcpu {vcpu} at {now}: entry {entry:#x}, elfcorehdr {elfcorehdr:#x}"
                );
                self.emit_raw(
                    "KEXEC_HANDOVER",
                    json!({"cpu": vcpu, "entry": entry, "elfcorehdr": elfcorehdr}),
                );
            }
            VmEvent::VmcoreReady {
                vcpu,
                elfcorehdr,
                size,
            } => {
                eprintln!(
                    "vmm: kdump: VMCORE_READY from vcpu {vcpu} at {now}: elfcorehdr {elfcorehdr:#x}, {size} bytes"
                );
                self.emit_raw(
                    "VMCORE_READY",
                    json!({"cpu": vcpu, "elfcorehdr": elfcorehdr, "size": size}),
                );
            }
            VmEvent::CaptureFailed {
                vcpu,
                reason,
                detail,
            } => {
                eprintln!(
                    "vmm: kdump: CAPTURE_FAILED from vcpu {vcpu} at {now}: {reason:?} (detail {detail:#x})"
                );
                self.emit_raw(
                    "KDUMP_CAPTURE_FAILED",
                    json!({"cpu": vcpu, "reason": format!("{reason:?}"), "detail": detail}),
                );
            }
            VmEvent::CrashAck { vcpu, step } => {
                log::info!("crash-control: vcpu {vcpu} acknowledged step {step}");
                self.emit_raw("CRASH_ACK", json!({"cpu": vcpu, "step": step}));
            }
            VmEvent::Vmcoreinfo { vcpu, note } => {
                match note {
                    Some((paddr, size)) => {
                        log::info!("vmcoreinfo: vcpu {vcpu} registered {size} bytes at {paddr:#x}")
                    }
                    None => log::info!("vmcoreinfo: vcpu {vcpu} unregistered the note"),
                }
                self.emit_raw(
                    "VMCOREINFO",
                    json!({"cpu": vcpu, "paddr": note.map(|n| n.0), "size": note.map(|n| n.1)}),
                );
            }
            other
            @ (VmEvent::Poweroff { .. } | VmEvent::Reset { .. } | VmEvent::Pvpanic { .. }) => {
                log::debug!("device event {other:?}")
            }
        }
    }

    /// Every crash type `x-inject-crash` takes.
    pub(crate) fn crash_types(&self) -> Vec<qmp::CrashTypeInfo> {
        devices::crash_control::crash_types()
            .iter()
            .map(|t| qmp::CrashTypeInfo {
                name: t.name.to_string(),
                description: t.description.to_string(),
            })
            .collect()
    }

    /// Asks `cpu` (default 0; every CPU for PANIC_ALL) to crash as `name` says.
    /// Errors name the valid values.
    pub(crate) fn inject_crash(&mut self, name: &str, cpu: Option<u32>) -> Result<(), String> {
        use devices::crash_control::{CrashControl, CrashControlError};
        let names = || {
            devices::crash_control::crash_types()
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let crash = CrashControl::parse_type(name)
            .map_err(|_| format!("unknown crash type '{name}'; valid types: {}", names()))?;
        let result = self
            .vm
            .devices()
            .crash_control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .inject(crash, cpu);
        result.map_err(|e| match e {
            CrashControlError::InvalidCpu { cpu, vcpus } => {
                format!("no CPU {cpu}; valid CPUs: 0-{}", vcpus.saturating_sub(1))
            }
            CrashControlError::UnknownType(_) => {
                format!("unknown crash type '{name}'; valid types: {}", names())
            }
            other => other.to_string(),
        })
    }

    /// KVM_NMI on every vCPU (from its own thread); emits `NMI`.
    pub(crate) fn inject_nmi(&mut self) {
        self.vm.inject_nmi();
        let cpus = self.vm.vcpus().iter().map(|c| c.id()).collect();
        self.emit(qmp::QmpEvent::Nmi { cpus });
    }

    /// A reset: rebuild the VM from the configuration, or end the run
    /// under `OnReboot::Exit`.
    pub(crate) fn reset(
        &mut self,
        guest: bool,
        cause: qmp::ShutdownCause,
    ) -> Result<Option<ExitReason>, Error> {
        if self.on_reboot == OnReboot::Exit {
            return Ok(Some(ExitReason::Reboot));
        }
        self.rebuild(guest, cause)
    }

    /// Tears the VM down and boots a new one from the configuration;
    /// emits `RESET` (and `RESUME` if it was paused).
    fn rebuild(
        &mut self,
        guest: bool,
        cause: qmp::ShutdownCause,
    ) -> Result<Option<ExitReason>, Error> {
        info!("reset: rebuilding the VM");
        self.vm.shutdown();
        self.generation += 1;
        self.kdump.on_rebuild();
        let spec = VmSpec {
            cpus: self.cpus,
            memory: self.memory,
            kernel: &self.kernel,
            cmdline: &self.cmdline,
            pvpanic_events: self.pvpanic_events,
        };
        let sink = Arc::new(MailboxSink {
            mailbox: self.mailbox.clone(),
            generation: self.generation,
        });
        // The old VM (its threads joined) is dropped when replaced below.
        let new_vm = Vm::build(&self.kvm, spec, sink, self.serial.clone());
        let new_vm = match new_vm {
            Ok(mut vm) => {
                connect_dump_sources(&mut vm, &self.mailbox);
                vm
            }
            Err(e) => {
                warn!("rebuilding the VM failed: {e}");
                return Err(e.into());
            }
        };
        self.vm = new_vm;
        *self.serial_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.vm.serial());
        self.vm.start(self.fault_reporter())?;
        let was = std::mem::replace(&mut self.state, RunState::Running);
        self.mailbox.notify(&Notification::Reset { guest });
        self.emit(qmp::QmpEvent::Reset {
            guest,
            reason: cause,
        });
        if was != RunState::Running {
            self.mailbox.notify(&Notification::Resumed);
            self.emit(qmp::QmpEvent::Resume);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::pvh::tests::tiny_elf_with_code;
    use crate::control::Notification;
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::time::Duration;

    const ENTRY: u64 = 0x10_0000;
    const WAIT: Duration = Duration::from_secs(20);

    /// 32-bit code: `out 0x604, ax` with SLP_EN | SLP_TYP_S5, then hlt.
    fn poweroff_code() -> Vec<u8> {
        let pm1 = guest_abi::ports::PM1A_CNT_BLK.to_le_bytes();
        let cnt = (guest_abi::ports::PM1_CNT_SLP_EN
            | (guest_abi::ports::SLP_TYP_S5 << guest_abi::ports::PM1_CNT_SLP_TYP_SHIFT))
            .to_le_bytes();
        vec![
            0x66, 0xba, pm1[0], pm1[1], // mov dx, PM1A_CNT_BLK
            0x66, 0xb8, cnt[0], cnt[1], // mov ax, SLP_EN | S5
            0x66, 0xef, // out dx, ax
            0xf4, 0xeb, 0xfd, // 1: hlt; jmp 1b
        ]
    }

    /// 32-bit code: `out 0xcf9, 0x06`, then hlt.
    fn reset_code() -> Vec<u8> {
        let port = guest_abi::ports::RESET_CONTROL.to_le_bytes();
        vec![
            0x66,
            0xba,
            port[0],
            port[1], // mov dx, 0xcf9
            0xb0,
            guest_abi::ports::RESET_VALUE, // mov al, 6
            0xee,                          // out dx, al
            0xf4,
            0xeb,
            0xfd,
        ]
    }

    /// 32-bit code: write "H\n" to COM1, then halt forever.
    fn hello_code() -> Vec<u8> {
        let com1 = guest_abi::ports::COM1.to_le_bytes();
        vec![
            0x66, 0xba, com1[0], com1[1], // mov dx, COM1
            0xb0, b'H', 0xee, // mov al, 'H'; out dx, al
            0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
            0xf4, 0xeb, 0xfd,
        ]
    }

    /// 32-bit code: enable the PM1 power-button event, then say hello.
    fn power_button_code() -> Vec<u8> {
        let pm1_en = (guest_abi::ports::PM1A_EVT_BLK + 2).to_le_bytes();
        let en = devices::acpi_pm::PWRBTN.to_le_bytes();
        let mut code = vec![
            0x66, 0xba, pm1_en[0], pm1_en[1], // mov dx, PM1_EN
            0x66, 0xb8, en[0], en[1], // mov ax, PWRBTN_EN
            0x66, 0xef, // out dx, ax
        ];
        code.extend(hello_code());
        code
    }

    /// 32-bit code: `rep outsb` of "S!" and a newline to COM1, then halt.
    fn rep_outsb_code() -> Vec<u8> {
        const TEXT_OFFSET: usize = 32;
        let text = (ENTRY as u32 + TEXT_OFFSET as u32).to_le_bytes();
        let com1 = guest_abi::ports::COM1.to_le_bytes();
        let mut code = vec![
            0xbe, text[0], text[1], text[2], text[3], // mov esi, text
            0xb9, 3, 0, 0, 0, // mov ecx, 3
            0x66, 0xba, com1[0], com1[1], // mov dx, COM1
            0xf3, 0x6e, // rep outsb
            0xf4, 0xeb, 0xfd,
        ];
        code.resize(TEXT_OFFSET, 0x90);
        code.extend_from_slice(b"S!\n");
        code
    }

    fn kernel_file(name: &str, code: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("vmm-test-{}-{name}.elf", std::process::id()));
        std::fs::write(
            &path,
            tiny_elf_with_code(ENTRY, 0x1000, Some(ENTRY as u32), code),
        )
        .unwrap();
        path
    }

    /// Serial output as a channel of bytes.
    struct ChannelWriter(Sender<u8>);
    impl Write for ChannelWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            for b in buf {
                let _ = self.0.send(*b);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_for_line(rx: &Receiver<u8>, line: &str) {
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains(line) {
            seen.push(rx.recv_timeout(WAIT).expect("serial output in time"));
        }
    }

    fn config(name: &str, code: &[u8]) -> VmConfig {
        VmConfig {
            kernel: Kernel::Path(kernel_file(name, code)),
            memory: 16 << 20,
            ..VmConfig::default()
        }
    }

    /// `Vmm::new`, then removes the test kernel file it read.
    fn new_vmm(cfg: VmConfig) -> Result<Vmm, Error> {
        let path = match &cfg.kernel {
            Kernel::Path(p) => Some(p.clone()),
            Kernel::Embedded => None,
        };
        let vmm = Vmm::new(cfg);
        if let Some(p) = path {
            let _ = std::fs::remove_file(p);
        }
        vmm
    }

    /// A test guest running on its own thread.
    struct Running {
        handle: VmmHandle,
        /// Subscribed before the guest started.
        events: Receiver<Notification>,
        result: Receiver<Result<ExitReason, Error>>,
    }

    /// Boots `cfg` with its serial output captured, on its own thread, and
    /// returns once the guest printed `first_line`.
    fn run_until(cfg: VmConfig, first_line: &str) -> Running {
        let (tx, rx) = channel();
        let vmm = new_vmm(VmConfig {
            serial: SerialOutput::Writer(Box::new(ChannelWriter(tx))),
            ..cfg
        })
        .unwrap();
        let handle = vmm.handle();
        let events = handle.subscribe();
        let result = spawn(vmm);
        wait_for_line(&rx, first_line);
        Running {
            handle,
            events,
            result,
        }
    }

    /// Runs `vmm` on its own thread; returns its result channel.
    fn spawn(vmm: Vmm) -> Receiver<Result<ExitReason, Error>> {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(vmm.run());
        });
        rx
    }

    #[test]
    fn guest_poweroff_ends_the_run() {
        let vmm = new_vmm(VmConfig {
            cpus: 2,
            ..config("poweroff", &poweroff_code())
        })
        .unwrap();
        let reason = spawn(vmm).recv_timeout(WAIT).unwrap().unwrap();
        assert_eq!(reason, ExitReason::Poweroff);
        assert_eq!(reason.exit_code(), 0);
    }

    #[test]
    fn guest_reset_exits_under_on_reboot_exit() {
        let vmm = new_vmm(VmConfig {
            on_reboot: OnReboot::Exit,
            ..config("reset-exit", &reset_code())
        })
        .unwrap();
        assert_eq!(
            spawn(vmm).recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Reboot
        );
    }

    #[test]
    fn guest_reset_rebuilds_the_vm_under_restart() {
        let vmm = new_vmm(config("reset-restart", &reset_code())).unwrap();
        let handle = vmm.handle();
        let events = handle.subscribe();
        let result = spawn(vmm);
        let mut resets = 0;
        while resets < 3 {
            if let Notification::Reset { guest: true } = events.recv_timeout(WAIT).unwrap() {
                resets += 1;
            }
        }
        handle.stop();
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Stopped
        );
    }

    #[test]
    fn serial_output_and_stop_from_another_thread() {
        let Running { handle, result, .. } = run_until(
            VmConfig {
                cpus: 4,
                ..config("hello", &hello_code())
            },
            "H\n",
        );
        handle.stop();
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Stopped
        );
        assert_eq!(handle.pause(), Err(ControlError::NotRunning));
    }

    #[test]
    fn string_port_output_reaches_the_serial() {
        let Running { handle, result, .. } =
            run_until(config("rep-outsb", &rep_outsb_code()), "S!\n");
        handle.stop();
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Stopped
        );
    }

    #[test]
    fn pause_resume_and_status() {
        let Running {
            handle,
            events,
            result,
        } = run_until(
            VmConfig {
                cpus: 2,
                ..config("pause", &hello_code())
            },
            "H\n",
        );
        handle.pause().unwrap();
        let status = handle.status().unwrap();
        assert_eq!(status.state, RunState::Paused);
        assert_eq!(status.vcpus.len(), 2);
        assert!(status.vcpus.iter().all(|v| v.thread_id != 0));
        handle.resume().unwrap();
        assert_eq!(handle.status().unwrap().state, RunState::Running);
        // This guest never enables the power-button event.
        assert_eq!(handle.power_button(), Ok(false));
        assert_eq!(events.recv_timeout(WAIT).unwrap(), Notification::Paused);
        assert_eq!(events.recv_timeout(WAIT).unwrap(), Notification::Resumed);
        handle.stop();
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Stopped
        );
    }

    #[test]
    fn power_button_is_seen_when_the_guest_enabled_it() {
        let Running { handle, result, .. } =
            run_until(config("pwrbtn", &power_button_code()), "H\n");
        assert_eq!(handle.power_button(), Ok(true));
        handle.stop();
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Stopped
        );
    }

    #[test]
    fn nmi_reaches_the_guest() {
        // The guest has no IDT, so an NMI escalates to a triple fault: proof
        // that KVM_NMI was delivered (from the vCPU's own thread).
        let Running { handle, result, .. } = run_until(config("nmi", &hello_code()), "H\n");
        handle.inject_nmi().unwrap();
        match result.recv_timeout(WAIT).unwrap().unwrap() {
            ExitReason::GuestFault { vcpu, reason, .. } => {
                assert_eq!(vcpu, 0);
                assert!(
                    reason.contains("triple fault") || reason.contains("internal error"),
                    "{reason}"
                );
            }
            other => panic!("expected a guest fault, got {other:?}"),
        }
    }

    #[test]
    fn triple_fault_is_reported_with_registers() {
        // int3 with no IDT: #GP, #DF, then shutdown.
        let vmm = new_vmm(config("int3", &[0xcc])).unwrap();
        let reason = spawn(vmm).recv_timeout(WAIT).unwrap().unwrap();
        assert_eq!(reason.exit_code(), exit_code::GUEST_FAULT);
        let text = reason.to_string();
        let ExitReason::GuestFault { rip, cr3, .. } = reason else {
            panic!("expected a guest fault, got {reason:?}");
        };
        assert!((ENTRY..ENTRY + 2).contains(&rip), "rip {rip:#x}");
        assert_eq!(cr3, 0);
        // A hardware-virtualised host triple-faults; this host's emulating
        // KVM sometimes gives up earlier with an emulation failure.
        assert!(
            text.starts_with("vcpu 0: triple fault")
                || text.starts_with("vcpu 0: KVM internal error"),
            "{text}"
        );
        assert!(text.contains(&format!("RIP={rip:#x}")), "{text}");
    }

    struct FixedPvpanicLog(vmcore::PvpanicLog);
    impl crate::dump::PvpanicLogSource for FixedPvpanicLog {
        fn pvpanic_log(&self) -> vmcore::PvpanicLog {
            self.0.clone()
        }
    }

    /// Registers the ELF note `text` at `gpa` with the vmcoreinfo device, as
    /// the guest would through its ports.
    fn register_vmcoreinfo(
        dev: &mut devices::vmcoreinfo::Vmcoreinfo,
        mem: &vm_memory::GuestMemoryMmap,
        gpa: u64,
        text: &[u8],
    ) {
        use devices::{Access, BusDevice};
        use guest_abi::pv::vmcoreinfo::{FORMAT, FORMAT_ELF, PADDR_HI, PADDR_LO, SIZE};
        use vm_memory::{Bytes, GuestAddress};
        let mut note = Vec::new();
        note.extend_from_slice(&11u32.to_le_bytes());
        note.extend_from_slice(&(text.len() as u32).to_le_bytes());
        note.extend_from_slice(&0u32.to_le_bytes());
        note.extend_from_slice(b"VMCOREINFO\0\0");
        note.extend_from_slice(text);
        mem.write_slice(&note, GuestAddress(gpa)).unwrap();
        let mut reg = |offset, value: u32| {
            let access = Access {
                base: 0,
                offset,
                vcpu: 0,
            };
            dev.write(access, &value.to_le_bytes());
        };
        reg(PADDR_LO, gpa as u32);
        reg(PADDR_HI, (gpa >> 32) as u32);
        reg(SIZE, note.len() as u32);
        reg(FORMAT, FORMAT_ELF);
    }

    #[test]
    fn dumps_carry_vmx_vmcoreinfo_and_pvpanic_from_the_dump_sources() {
        use crate::dump::{DumpRequest, DumpSources};
        let (tx, rx) = channel();
        let mut vmm = new_vmm(VmConfig {
            serial: SerialOutput::Writer(Box::new(ChannelWriter(tx))),
            cpus: 2,
            ..config("dump-sources", &hello_code())
        })
        .unwrap();
        let mem = vmm.vm.memory().clone();
        let pv_vmx = devices::pv_vmx::PvVmx::new(2, Arc::new(mem.clone())).unwrap();
        let mut vmcoreinfo = devices::vmcoreinfo::Vmcoreinfo::new(Arc::new(MailboxSink {
            mailbox: vmm.mailbox.clone(),
            generation: 0,
        }));
        register_vmcoreinfo(
            &mut vmcoreinfo,
            &mem,
            0x20_0000,
            b"OSRELEASE=test\nTEST=yes\n",
        );
        let entry = guest_abi::elfnote::PvpanicLogEntry {
            seq: 0,
            events: 1,
            vcpu: 1,
            pad: 0,
            timestamp_ns: 1234,
        };
        let log = vmcore::PvpanicLog {
            entries: vec![entry],
            dropped: 0,
        };
        vmm.vm.set_dump_sources(DumpSources {
            pv_vmx: Some(Arc::new(Mutex::new(pv_vmx))),
            vmcoreinfo: Some(Arc::new(Mutex::new(vmcoreinfo))),
            pvpanic: Some(Arc::new(FixedPvpanicLog(log.clone()))),
            fault: None,
        });
        let handle = vmm.handle();
        let result = spawn(vmm);
        wait_for_line(&rx, "H\n");
        let path =
            std::env::temp_dir().join(format!("vmm-test-{}-dump-sources.elf", std::process::id()));
        let stats = handle
            .dump_guest_memory(DumpRequest::new(&path))
            .unwrap()
            .unwrap();
        assert_eq!(stats.ram_bytes, 16 << 20);
        let core = vmcore::Vmcore::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let hosts = core.host_cpus();
        assert_eq!(hosts.len(), 2);
        for h in &hosts {
            let vmx = h.vmx.expect("a VMX note per vCPU");
            assert_eq!(vmx.vcpu, h.vcpu);
            assert!(!vmx.vmx_on && vmx.vmcs_flushed && vmx.model_not_hardware);
        }
        let info = core.vmcoreinfo().expect("the guest's VMCOREINFO");
        assert_eq!(info.get("TEST"), Some("yes"));
        assert_eq!(core.pvpanic_log().unwrap(), Some(log));
        // The AP never got a SIPI: its capture must not have blocked.
        assert_eq!(handle.status().unwrap().state, RunState::Running);
        handle.stop();
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Stopped
        );
    }

    #[test]
    fn dump_to_dir_writes_a_fresh_file_and_leaves_the_vcpus_paused() {
        // Drives the VM without the main loop, as a panic action would run
        // on the main loop's own thread.
        let (tx, rx) = channel();
        let mut vmm = new_vmm(VmConfig {
            serial: SerialOutput::Writer(Box::new(ChannelWriter(tx))),
            ..config("dump-to-dir", &hello_code())
        })
        .unwrap();
        let dir = std::env::temp_dir().join(format!("vmm-test-{}-dump-dir", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        vmm.set_dump_dir(dir.clone());
        let events = vmm.handle().subscribe();
        vmm.vm.start(vmm.fault_reporter()).unwrap();
        wait_for_line(&rx, "H\n");
        let (first, stats) = vmm.dump_to_dir().unwrap();
        let (second, _) = vmm.dump_to_dir().unwrap();
        assert_ne!(first, second);
        assert_eq!(first.parent(), Some(dir.as_path()));
        assert_eq!(stats.ram_bytes, 16 << 20);
        assert_eq!(vmm.state, RunState::Paused);
        assert!(vmm
            .vm
            .vcpus()
            .iter()
            .all(|c| c.run_state() == crate::vcpu::VcpuRunState::Paused));
        let core = vmcore::Vmcore::open(&first).unwrap();
        assert_eq!(core.host_cpus().len(), 1);
        let q = vmm.handle().query_dump();
        assert_eq!(q.status, crate::dump::DumpState::Completed);
        assert_eq!((q.completed, q.total), (16 << 20, 16 << 20));
        let seen: Vec<_> = events.try_iter().collect();
        assert!(
            seen.iter().any(|n| matches!(
                n,
                Notification::DumpCompleted { path, result: Ok(_) } if *path == first
            )),
            "{seen:?}"
        );
        // A missing directory: an error, and still no file anywhere.
        vmm.set_dump_dir(dir.join("missing"));
        assert!(matches!(vmm.dump_to_dir(), Err(DumpError::Write(_))));
        assert_eq!(
            vmm.handle().query_dump().status,
            crate::dump::DumpState::Failed
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        vmm.vm.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Waits for the dump worker's DumpFinished message and hands it to
    /// `vmm`, as the main loop would.
    fn deliver_dump_finished(vmm: &mut Vmm) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            for msg in vmm.mailbox.take_all() {
                if let Message::DumpFinished { result } = msg {
                    vmm.finish_dump(result, true);
                    return;
                }
            }
            assert!(std::time::Instant::now() < deadline, "no DumpFinished");
            // Blocks until the worker posts (the mailbox's eventfd).
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&vmm.mailbox.wake),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            let _ = vmm.mailbox.wake.read();
        }
    }

    #[test]
    fn during_a_dump_resume_is_refused_a_second_dump_is_busy_and_pause_sticks() {
        use crate::dump::DumpRequest;
        let (tx, rx) = channel();
        let mut vmm = new_vmm(VmConfig {
            serial: SerialOutput::Writer(Box::new(ChannelWriter(tx))),
            cpus: 2,
            ..config("dump-rules", &hello_code())
        })
        .unwrap();
        vmm.vm.start(vmm.fault_reporter()).unwrap();
        wait_for_line(&rx, "H\n");
        let dir = std::env::temp_dir().join(format!("vmm-test-{}-dump-rules", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let (first_tx, first) = channel();
        vmm.start_dump(DumpRequest::new(dir.join("a.elf")), first_tx);
        assert_eq!(vmm.state, RunState::Paused);
        let (busy_tx, busy) = channel();
        vmm.start_dump(DumpRequest::new(dir.join("b.elf")), busy_tx);
        assert!(matches!(busy.recv().unwrap(), Err(DumpError::Busy)));
        let (resume_tx, resume) = channel();
        vmm.handle_message(Message::Resume(resume_tx)).unwrap();
        assert!(matches!(
            resume.recv().unwrap(),
            Err(ControlError::Failed(_))
        ));
        deliver_dump_finished(&mut vmm);
        assert!(first.recv().unwrap().unwrap().is_some());
        // It ran before: it runs again.
        assert_eq!(vmm.state, RunState::Running);
        assert!(!dir.join("b.elf").exists());

        // Paused by the user during the dump: still paused after it.
        let (second_tx, second) = channel();
        vmm.start_dump(DumpRequest::new(dir.join("c.elf")), second_tx);
        let (pause_tx, pause) = channel();
        vmm.handle_message(Message::Pause(pause_tx)).unwrap();
        assert_eq!(pause.recv().unwrap(), Ok(()));
        deliver_dump_finished(&mut vmm);
        assert!(second.recv().unwrap().unwrap().is_some());
        assert_eq!(vmm.state, RunState::Paused);
        assert!(vmm
            .vm
            .vcpus()
            .iter()
            .all(|c| c.run_state() == crate::vcpu::VcpuRunState::Paused));
        vmm.vm.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stop_during_a_detached_dump_waits_for_the_file() {
        let Running {
            handle,
            events,
            result,
        } = run_until(config("dump-stop", &hello_code()), "H\n");
        let path =
            std::env::temp_dir().join(format!("vmm-test-{}-dump-stop.elf", std::process::id()));
        let request = crate::dump::DumpRequest {
            path: path.clone(),
            paging: true,
            detach: true,
        };
        assert_eq!(handle.dump_guest_memory(request).unwrap(), None);
        handle.stop();
        assert_eq!(
            result.recv_timeout(WAIT).unwrap().unwrap(),
            ExitReason::Stopped
        );
        // The completion is reported before the shutdown, and the file is whole.
        let seen: Vec<_> = events.try_iter().collect();
        let completed = seen
            .iter()
            .position(|n| matches!(n, Notification::DumpCompleted { result: Ok(_), .. }))
            .unwrap_or_else(|| panic!("no DumpCompleted in {seen:?}"));
        let shutdown = seen
            .iter()
            .position(|n| matches!(n, Notification::Shutdown(_)))
            .expect("Shutdown");
        assert!(completed < shutdown, "{seen:?}");
        assert_eq!(vmcore::Vmcore::open(&path).unwrap().host_cpus().len(), 1);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            handle.dump_guest_memory(crate::dump::DumpRequest::new(&path)),
            Err(DumpError::NotRunning)
        ));
    }

    #[test]
    fn missing_or_wrong_kvm_device_is_bad_input() {
        let e = open_kvm_at("/nonexistent/kvm").unwrap_err();
        assert_eq!(e.exit_code(), exit_code::BAD_INPUT);
        assert_eq!(e.to_string(), "cannot open /nonexistent/kvm");
        let e = open_kvm_at("/dev/null").unwrap_err();
        assert!(matches!(e, Error::NotKvm(_)), "{e}");
        assert_eq!(e.exit_code(), exit_code::BAD_INPUT);
        assert!(open_kvm_at(KVM_DEVICE).is_ok());
    }

    #[test]
    fn bad_configs_are_refused_before_running() {
        let e = new_vmm(VmConfig {
            cpus: 0,
            ..VmConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, Error::NoCpus));
        assert_eq!(e.exit_code(), exit_code::BAD_INPUT);
        let e = new_vmm(VmConfig {
            cpus: 100_000,
            ..VmConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, Error::TooManyCpus { .. }), "{e}");
        let e = new_vmm(VmConfig {
            memory: 1 << 20,
            ..VmConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, Error::MemoryTooSmall { .. }), "{e}");
        let e = new_vmm(VmConfig {
            kernel: Kernel::Path("/nonexistent/kernel".into()),
            ..VmConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, Error::KernelRead { .. }), "{e}");
        let e = new_vmm(VmConfig {
            memory: 2 << 20,
            ..config("big", &[0xf4])
        });
        assert!(e.is_ok(), "a 4 KiB kernel fits in 2 MiB");
    }
}
