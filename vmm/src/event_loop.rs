//! The main loop's event sources, each an event-manager subscriber that
//! owns its file descriptor: the control mailbox's EventFd and, in the
//! binary, a signalfd for SIGINT/SIGTERM.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};

use crate::control::{Mailbox, Message};
use crate::device_manager::Serial;

/// Errors setting up event sources.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// Blocking the exit signals failed.
    #[error("blocking SIGINT/SIGTERM failed")]
    BlockSignals(#[source] std::io::Error),
    /// signalfd(2) failed.
    #[error("creating a signalfd failed")]
    SignalFd(#[source] std::io::Error),
    /// The event manager failed.
    #[error("event loop failed: {0:?}")]
    Manager(event_manager::Error),
}

const MAILBOX_TOKEN: u32 = 1;
const SIGNAL_TOKEN: u32 = 2;
const INPUT_TOKEN: u32 = 3;

/// Wakes the main loop when a message is posted.
pub(crate) struct MailboxSubscriber(pub(crate) Arc<Mailbox>);

impl MutEventSubscriber for MailboxSubscriber {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == MAILBOX_TOKEN {
            // Only clears readiness; the loop drains the queue afterwards.
            if let Err(e) = self.0.wake.read() {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    warn!("mailbox eventfd read failed: {e}");
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.0.wake, MAILBOX_TOKEN, EventSet::IN)) {
            error!("cannot watch the mailbox eventfd: {e:?}");
        }
    }
}

/// The signals that stop the VMM cleanly.
pub const EXIT_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

fn exit_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in EXIT_SIGNALS {
        // SAFETY: `set` is valid and `sig` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// Blocks SIGINT and SIGTERM in the calling thread and so in every thread
/// it spawns afterwards. Call first thing in `main`, before any thread
/// exists, so that the signalfd is the only place they are delivered.
pub fn block_exit_signals() -> Result<(), EventLoopError> {
    let set = exit_sigset();
    // SAFETY: `set` is a valid sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(EventLoopError::BlockSignals(
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    Ok(())
}

/// Turns SIGINT/SIGTERM into [`Message::Signal`].
pub(crate) struct SignalSubscriber {
    fd: OwnedFd,
    mailbox: Arc<Mailbox>,
}

impl SignalSubscriber {
    pub(crate) fn new(mailbox: Arc<Mailbox>) -> Result<Self, EventLoopError> {
        let set = exit_sigset();
        // SAFETY: `set` is valid; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(EventLoopError::SignalFd(std::io::Error::last_os_error()));
        }
        // SAFETY: signalfd returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, mailbox })
    }
}

impl MutEventSubscriber for SignalSubscriber {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() != SIGNAL_TOKEN {
            return;
        }
        loop {
            // SAFETY: signalfd_siginfo is plain data.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads at most `size` bytes into `info`, which is that big.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    std::ptr::from_mut(&mut info).cast(),
                    size,
                )
            };
            if n != size as isize {
                break;
            }
            self.mailbox.post(Message::Signal(info.ssi_signo as i32));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.fd, SIGNAL_TOKEN, EventSet::IN)) {
            error!("cannot watch the signalfd: {e:?}");
        }
    }
}

/// The serial device of the current VM incarnation (replaced on reset).
pub(crate) type SerialSlot = Arc<Mutex<Option<Arc<Mutex<Serial>>>>>;

/// Feeds the VMM's standard input to the guest's COM1.
pub(crate) struct StdinSubscriber {
    serial: SerialSlot,
}

impl StdinSubscriber {
    pub(crate) fn new(serial: SerialSlot) -> Self {
        Self { serial }
    }
}

impl MutEventSubscriber for StdinSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() != INPUT_TOKEN {
            return;
        }
        // The UART's receive FIFO is small; read no more than it holds.
        let mut buf = [0u8; 64];
        match std::io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                // EOF or a broken stdin: stop watching it.
                if let Err(e) = ops.remove(events) {
                    warn!("cannot stop watching stdin: {e:?}");
                }
            }
            Ok(n) => {
                let slot = self.serial.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(serial) = slot.as_ref() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .enqueue_input(&buf[..n]);
                    if taken < n {
                        warn!("serial: guest input FIFO full, {} bytes dropped", n - taken);
                    }
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        if let Err(e) = ops.add(Events::with_data(&stdin, INPUT_TOKEN, EventSet::IN)) {
            // A regular file or /dev/null cannot be polled: no input then.
            log::debug!("not reading stdin: {e:?}");
        }
    }
}

const QMP_TOKEN: u32 = 4;

/// Moves QMP requests from the server's channel to the main loop's
/// mailbox, where they run with the whole VMM at hand. Owns the request
/// EventFd (through the receiver).
pub(crate) struct QmpSubscriber {
    requests: qmp::QmpRequestReceiver,
    mailbox: Arc<Mailbox>,
}

impl QmpSubscriber {
    pub(crate) fn new(requests: qmp::QmpRequestReceiver, mailbox: Arc<Mailbox>) -> Self {
        Self { requests, mailbox }
    }
}

impl MutEventSubscriber for QmpSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() != QMP_TOKEN {
            return;
        }
        self.requests.clear_wakeup();
        loop {
            match self.requests.try_recv() {
                Ok(Some(pending)) => self.mailbox.post(Message::Qmp(pending)),
                Ok(None) => break,
                Err(e) => {
                    warn!("qmp: {e}; no longer watching for commands");
                    if let Err(e) = ops.remove(events) {
                        warn!("cannot stop watching the QMP eventfd: {e:?}");
                    }
                    break;
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let fd = self.requests.eventfd();
        if let Err(e) = ops.add(Events::with_data(fd, QMP_TOKEN, EventSet::IN)) {
            error!("cannot watch the QMP eventfd: {e:?}");
        }
    }
}
