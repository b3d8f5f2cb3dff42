//! The VMM's side: typed requests over a channel, with an EventFd wake-up.
//!
//! Client threads turn each command into a [`QmpRequest`], send it with a
//! one-shot reply channel, and write 1 to an EventFd. The VMM's event loop
//! watches that EventFd ([`QmpRequestReceiver::as_raw_fd`]); when it fires,
//! the VMM calls [`QmpRequestReceiver::process`] with its [`QmpBackend`], or
//! takes requests one by one with [`QmpRequestReceiver::try_recv`] and
//! answers each through its [`Responder`]. Replying never blocks the VMM,
//! even when the client has gone.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use vmm_sys_util::eventfd::EventFd;

use crate::schema::{
    CommandError, CommandResult, CpuInfoFast, CrashTypeInfo, DumpGuestMemory, DumpQueryResult,
    QmpRequest, SetAction, StatusInfo, XInjectCrash,
};

/// Errors on the request channel.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Creating or using the wake-up EventFd failed.
    #[error("request eventfd")]
    EventFd(#[source] io::Error),
    /// The server is gone and every queued request was handled.
    #[error("QMP server stopped")]
    Closed,
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, BackendError>;

/// A command's result, typed.
pub type QmpResult<T> = std::result::Result<T, CommandError>;

/// What the VMM implements. One method per command; the return values are
/// the commands' QAPI return types. The dump and crash-injection methods
/// have defaults that refuse clearly, for VMMs without those features.
pub trait QmpBackend {
    /// `query-status`.
    fn query_status(&mut self) -> QmpResult<StatusInfo>;
    /// `query-cpus-fast`.
    fn query_cpus_fast(&mut self) -> QmpResult<Vec<CpuInfoFast>>;
    /// `stop`. Emit `STOP` when the vCPUs have stopped.
    fn stop(&mut self) -> QmpResult<()>;
    /// `cont`. Emit `RESUME`.
    fn cont(&mut self) -> QmpResult<()>;
    /// `system_reset`. Emit `RESET` {guest: false, reason: host-qmp-system-reset}.
    fn system_reset(&mut self) -> QmpResult<()>;
    /// `system_powerdown`. Emit `POWERDOWN`.
    fn system_powerdown(&mut self) -> QmpResult<()>;
    /// `quit`. Reply first; the reply is flushed when the server is dropped.
    fn quit(&mut self) -> QmpResult<()>;
    /// `inject-nmi`.
    fn inject_nmi(&mut self) -> QmpResult<()>;
    /// `set-action`.
    fn set_action(&mut self, args: SetAction) -> QmpResult<()>;
    /// `dump-guest-memory`.
    fn dump_guest_memory(&mut self, _args: DumpGuestMemory) -> QmpResult<()> {
        Err(CommandError::generic(
            "dump-guest-memory is not available: this VMM cannot write vmcores yet",
        ))
    }
    /// `query-dump`.
    fn query_dump(&mut self) -> QmpResult<DumpQueryResult> {
        Err(CommandError::generic(
            "query-dump is not available: this VMM cannot write vmcores yet",
        ))
    }
    /// `x-inject-crash`.
    fn x_inject_crash(&mut self, _args: XInjectCrash) -> QmpResult<()> {
        Err(CommandError::generic(
            "x-inject-crash is not available in this VMM",
        ))
    }
    /// `query-crash-types`.
    fn query_crash_types(&mut self) -> QmpResult<Vec<CrashTypeInfo>> {
        Err(CommandError::generic(
            "query-crash-types is not available in this VMM",
        ))
    }
}

fn to_value<T: Serialize>(result: QmpResult<T>) -> CommandResult {
    let value = result?;
    serde_json::to_value(value)
        .map_err(|e| CommandError::generic(format!("cannot encode the reply: {e}")))
}

/// `{}`, the return value of commands that return nothing.
fn empty(result: QmpResult<()>) -> CommandResult {
    result.map(|()| Value::Object(Default::default()))
}

impl QmpRequest {
    /// Runs this request on `backend` and encodes the reply.
    pub fn dispatch(self, backend: &mut dyn QmpBackend) -> CommandResult {
        match self {
            QmpRequest::QueryStatus => to_value(backend.query_status()),
            QmpRequest::QueryCpusFast => to_value(backend.query_cpus_fast()),
            QmpRequest::Stop => empty(backend.stop()),
            QmpRequest::Cont => empty(backend.cont()),
            QmpRequest::SystemReset => empty(backend.system_reset()),
            QmpRequest::SystemPowerdown => empty(backend.system_powerdown()),
            QmpRequest::Quit => empty(backend.quit()),
            QmpRequest::InjectNmi => empty(backend.inject_nmi()),
            QmpRequest::SetAction(args) => empty(backend.set_action(args)),
            QmpRequest::DumpGuestMemory(args) => empty(backend.dump_guest_memory(args)),
            QmpRequest::QueryDump => to_value(backend.query_dump()),
            QmpRequest::XInjectCrash(args) => empty(backend.x_inject_crash(args)),
            QmpRequest::QueryCrashTypes => to_value(backend.query_crash_types()),
        }
    }
}

/// Where the reply to one request goes. Dropping it unanswered makes the
/// client see a GenericError.
#[derive(Debug)]
pub struct Responder(Sender<CommandResult>);

impl Responder {
    /// Sends the reply. Never blocks; a client that left is ignored.
    pub fn respond(self, result: CommandResult) {
        // The client thread may have gone (client disconnected, server
        // stopping): the reply is then simply dropped.
        let _ = self.0.send(result);
    }
}

/// A request waiting for the VMM, with where to send its reply.
#[derive(Debug)]
pub struct PendingRequest {
    /// The command.
    pub request: QmpRequest,
    /// Its reply channel.
    pub responder: Responder,
}

/// The VMM's end of the request channel.
#[derive(Debug)]
pub struct QmpRequestReceiver {
    requests: Receiver<PendingRequest>,
    wakeup: EventFd,
}

/// The server's end of the request channel.
#[derive(Debug)]
pub(crate) struct RequestSender {
    requests: Sender<PendingRequest>,
    wakeup: EventFd,
}

/// Creates a connected sender/receiver pair.
pub(crate) fn request_channel() -> Result<(RequestSender, QmpRequestReceiver)> {
    let wakeup =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(BackendError::EventFd)?;
    let (tx, rx) = mpsc::channel();
    let sender = RequestSender {
        requests: tx,
        wakeup: wakeup.try_clone().map_err(BackendError::EventFd)?,
    };
    Ok((
        sender,
        QmpRequestReceiver {
            requests: rx,
            wakeup,
        },
    ))
}

impl RequestSender {
    /// Sends `request` to the VMM and waits for its reply.
    pub(crate) fn call(&self, request: QmpRequest) -> CommandResult {
        let name = request.name();
        let (tx, rx) = mpsc::channel();
        let pending = PendingRequest {
            request,
            responder: Responder(tx),
        };
        if self.requests.send(pending).is_err() {
            return Err(CommandError::generic("the VMM is not accepting commands"));
        }
        if let Err(e) = self.wakeup.write(1) {
            log::error!("qmp: cannot wake the VMM: {e}");
        }
        rx.recv().unwrap_or_else(|_| {
            Err(CommandError::generic(format!(
                "the VMM dropped the command {name}"
            )))
        })
    }

    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            requests: self.requests.clone(),
            wakeup: self.wakeup.try_clone()?,
        })
    }
}

impl QmpRequestReceiver {
    /// The wake-up EventFd: readable when requests may be queued. Register
    /// it with the event loop; it is non-blocking.
    pub fn eventfd(&self) -> &EventFd {
        &self.wakeup
    }

    /// Clears the wake-up EventFd. [`QmpRequestReceiver::process`] does this
    /// itself; call it before a `try_recv` loop otherwise.
    pub fn clear_wakeup(&self) {
        match self.wakeup.read() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => log::error!("qmp: reading the request eventfd: {e}"),
        }
    }

    /// The next queued request, if any. [`BackendError::Closed`] once the
    /// server has stopped and the queue is empty.
    pub fn try_recv(&self) -> Result<Option<PendingRequest>> {
        match self.requests.try_recv() {
            Ok(pending) => Ok(Some(pending)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(BackendError::Closed),
        }
    }

    /// Clears the EventFd, then answers every queued request with `backend`.
    /// Returns how many were handled; [`BackendError::Closed`] only when the
    /// server is gone and there was nothing left to handle.
    pub fn process(&self, backend: &mut dyn QmpBackend) -> Result<usize> {
        self.clear_wakeup();
        let mut handled = 0;
        loop {
            match self.try_recv() {
                Ok(Some(PendingRequest { request, responder })) => {
                    log::debug!("qmp: handling {}", request.name());
                    responder.respond(request.dispatch(backend));
                    handled += 1;
                }
                Ok(None) => return Ok(handled),
                Err(e) if handled == 0 => return Err(e),
                Err(_) => return Ok(handled),
            }
        }
    }

    /// Blocks until the EventFd is readable or `timeout` passes; true when
    /// readable. For VMMs (and tests) without an event loop.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let ready = crate::sys::poll_readable(&[self.wakeup.as_raw_fd()], Some(timeout))
            .map_err(BackendError::EventFd)?;
        Ok(ready.first().copied().unwrap_or(false))
    }
}

impl AsRawFd for QmpRequestReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.wakeup.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ErrorClass, RunState};
    use serde_json::json;

    struct Fixed;

    impl QmpBackend for Fixed {
        fn query_status(&mut self) -> QmpResult<StatusInfo> {
            Ok(StatusInfo::new(RunState::Paused))
        }
        fn query_cpus_fast(&mut self) -> QmpResult<Vec<CpuInfoFast>> {
            Ok(vec![])
        }
        fn stop(&mut self) -> QmpResult<()> {
            Ok(())
        }
        fn cont(&mut self) -> QmpResult<()> {
            Err(CommandError::generic("no"))
        }
        fn system_reset(&mut self) -> QmpResult<()> {
            Ok(())
        }
        fn system_powerdown(&mut self) -> QmpResult<()> {
            Ok(())
        }
        fn quit(&mut self) -> QmpResult<()> {
            Ok(())
        }
        fn inject_nmi(&mut self) -> QmpResult<()> {
            Ok(())
        }
        fn set_action(&mut self, _: SetAction) -> QmpResult<()> {
            Ok(())
        }
    }

    #[test]
    fn requests_cross_the_channel_and_wake_the_eventfd() {
        let (tx, rx) = request_channel().unwrap();
        assert!(!rx.wait(Duration::ZERO).unwrap());
        let client = std::thread::spawn(move || {
            (
                tx.call(QmpRequest::QueryStatus),
                tx.call(QmpRequest::Cont),
                tx.call(QmpRequest::QueryDump),
            )
        });
        let mut handled = 0;
        while handled < 3 {
            assert!(rx.wait(Duration::from_secs(10)).unwrap(), "no wake-up");
            handled += rx.process(&mut Fixed).unwrap();
        }
        let (status, cont, dump) = client.join().unwrap();
        assert_eq!(
            status.unwrap(),
            json!({"running": false, "singlestep": false, "status": "paused"})
        );
        assert_eq!(cont.unwrap_err(), CommandError::generic("no"));
        assert_eq!(dump.unwrap_err().class, ErrorClass::GenericError);
        assert!(matches!(rx.try_recv(), Err(BackendError::Closed)));
    }

    #[test]
    fn dropped_responder_or_receiver_is_an_error_not_a_hang() {
        let (tx, rx) = request_channel().unwrap();
        let client = std::thread::spawn(move || tx.call(QmpRequest::Stop));
        assert!(rx.wait(Duration::from_secs(10)).unwrap());
        let pending = rx.try_recv().unwrap().expect("a request");
        assert_eq!(pending.request, QmpRequest::Stop);
        drop(pending);
        assert_eq!(
            client.join().unwrap().unwrap_err().class,
            ErrorClass::GenericError
        );

        let (tx, rx) = request_channel().unwrap();
        drop(rx);
        assert!(tx.call(QmpRequest::Stop).is_err());
    }
}
