//! A stand-in VMM: a [`QmpBackend`] that keeps a simulated run state and
//! emits the events a real VMM would, served on its own thread. For the
//! protocol tests here and for trying clients without a VM.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::backend::{BackendError, QmpBackend, QmpRequestReceiver, QmpResult};
use crate::events::{EventBroadcaster, GuestPanicAction, QmpEvent, ShutdownCause};
use crate::schema::{
    CommandError, CpuInfoFast, CpuInstanceProperties, CrashTypeInfo, PanicAction, RunState,
    SetAction, StatusInfo, SysEmuTarget, XInjectCrash,
};

/// The simulated VM.
#[derive(Debug)]
pub struct StubBackend {
    /// Current run state.
    pub state: RunState,
    /// Current panic action.
    pub panic_action: PanicAction,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// NMIs injected so far (per `inject-nmi`, one per vCPU).
    pub nmis_injected: u64,
    /// Set by `quit`.
    pub quit_requested: bool,
    events: EventBroadcaster,
}

impl StubBackend {
    /// A running VM with `vcpus` vCPUs, panic action `pause`, emitting on `events`.
    pub fn new(vcpus: u32, events: EventBroadcaster) -> Self {
        Self {
            state: RunState::Running,
            panic_action: PanicAction::Pause,
            vcpus,
            nmis_injected: 0,
            quit_requested: false,
            events,
        }
    }

    fn set_state(&mut self, state: RunState) {
        let was_running = self.state == RunState::Running;
        self.state = state;
        match (was_running, state == RunState::Running) {
            (true, false) => self.events.emit(&QmpEvent::Stop),
            (false, true) => self.events.emit(&QmpEvent::Resume),
            _ => {}
        }
    }
}

impl QmpBackend for StubBackend {
    fn query_status(&mut self) -> QmpResult<StatusInfo> {
        Ok(StatusInfo::new(self.state))
    }

    fn query_cpus_fast(&mut self) -> QmpResult<Vec<CpuInfoFast>> {
        Ok((0..self.vcpus)
            .map(|i| CpuInfoFast {
                cpu_index: i,
                qom_path: format!("/machine/cpu[{i}]"),
                thread_id: 1000 + i64::from(i),
                target: SysEmuTarget::X86_64,
                props: CpuInstanceProperties {
                    socket_id: Some(0),
                    core_id: Some(i),
                    thread_id: Some(0),
                    ..Default::default()
                },
            })
            .collect())
    }

    fn stop(&mut self) -> QmpResult<()> {
        if self.state == RunState::Running {
            self.set_state(RunState::Paused);
        }
        Ok(())
    }

    fn cont(&mut self) -> QmpResult<()> {
        match self.state {
            RunState::GuestPanicked | RunState::Shutdown => Err(CommandError::generic(
                "Resetting the Virtual Machine is required",
            )),
            _ => {
                self.set_state(RunState::Running);
                Ok(())
            }
        }
    }

    fn system_reset(&mut self) -> QmpResult<()> {
        self.events.emit(&QmpEvent::Reset {
            guest: false,
            reason: ShutdownCause::HostQmpSystemReset,
        });
        self.set_state(RunState::Running);
        Ok(())
    }

    fn system_powerdown(&mut self) -> QmpResult<()> {
        self.events.emit(&QmpEvent::Powerdown);
        Ok(())
    }

    fn quit(&mut self) -> QmpResult<()> {
        self.quit_requested = true;
        self.events.emit(&QmpEvent::Shutdown {
            guest: false,
            reason: ShutdownCause::HostQmpQuit,
        });
        Ok(())
    }

    fn inject_nmi(&mut self) -> QmpResult<()> {
        self.nmis_injected += u64::from(self.vcpus);
        self.events.emit(&QmpEvent::Nmi {
            cpus: (0..self.vcpus).collect(),
        });
        Ok(())
    }

    fn set_action(&mut self, args: SetAction) -> QmpResult<()> {
        if args.watchdog.is_some() {
            return Err(CommandError::generic("there is no watchdog device"));
        }
        if let Some(action) = args.panic {
            self.panic_action = action;
        }
        Ok(())
    }

    fn x_inject_crash(&mut self, args: XInjectCrash) -> QmpResult<()> {
        if args.crash_type != "panic" {
            return Err(CommandError::generic(format!(
                "unknown crash type '{}'",
                args.crash_type
            )));
        }
        if args.cpu.is_some_and(|cpu| cpu >= self.vcpus) {
            return Err(CommandError {
                class: crate::schema::ErrorClass::DeviceNotFound,
                desc: "no such vCPU".into(),
            });
        }
        let action = GuestPanicAction::from(self.panic_action);
        self.events
            .emit(&QmpEvent::GuestPanicked { action, info: None });
        if action == GuestPanicAction::Pause {
            self.set_state(RunState::GuestPanicked);
        }
        Ok(())
    }

    fn query_crash_types(&mut self) -> QmpResult<Vec<CrashTypeInfo>> {
        Ok(vec![CrashTypeInfo {
            name: "panic".into(),
            description: "the guest calls panic()".into(),
        }])
    }
}

/// A [`StubBackend`] answering requests on its own thread.
#[derive(Debug)]
pub struct StubVmm {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<StubBackend>>,
}

impl StubVmm {
    /// Serves `receiver` with `backend` until [`StubVmm::stop`] or until the
    /// server is gone.
    pub fn spawn(receiver: QmpRequestReceiver, mut backend: StubBackend) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = receiver.eventfd().try_clone()?;
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("qmp-stub-vmm".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        // The timeout only bounds how late a closed server is noticed.
                        if let Err(e) = receiver.wait(Duration::from_millis(200)) {
                            log::error!("stub vmm: {e}");
                            break;
                        }
                        match receiver.process(&mut backend) {
                            Ok(_) => {}
                            Err(BackendError::Closed) => break,
                            Err(e) => {
                                log::error!("stub vmm: {e}");
                                break;
                            }
                        }
                    }
                    backend
                })?
        };
        Ok(Self {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the thread and returns the backend, to inspect its state.
    pub fn stop(mut self) -> Option<StubBackend> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Option<StubBackend> {
        let thread = self.thread.take()?;
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.wake.write(1) {
            log::error!("stub vmm: cannot wake: {e}");
        }
        thread.join().ok()
    }
}

impl Drop for StubVmm {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
