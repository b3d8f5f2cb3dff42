//! Asynchronous events, and the registry of connected clients they go to.
//!
//! The VMM holds an [`EventBroadcaster`] (cheap to clone, `Send`) and calls
//! [`EventBroadcaster::emit`]. Each negotiated client gets
//! `{"event": NAME, "data": {...}, "timestamp": {"seconds": S, "microseconds": US}}`
//! through its bounded output queue. Emitting never blocks: a client whose
//! queue is full is disconnected instead.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::schema::{DumpQueryResult, PanicAction};

/// `GUEST_PANICKED`/`GUEST_CRASHLOADED`'s `action` (QAPI `GuestPanicAction`:
/// what happens to the VM next), plus `reset` as an extension for the
/// restart actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestPanicAction {
    /// The VM is paused.
    Pause,
    /// The VM is powered off.
    Poweroff,
    /// The VM keeps running.
    Run,
    /// The VM is reset (extension).
    Reset,
}

impl From<PanicAction> for GuestPanicAction {
    fn from(action: PanicAction) -> Self {
        match action {
            PanicAction::None => GuestPanicAction::Run,
            PanicAction::Pause => GuestPanicAction::Pause,
            PanicAction::Poweroff | PanicAction::ExitFailure | PanicAction::CoredumpDestroy => {
                GuestPanicAction::Poweroff
            }
            PanicAction::Restart | PanicAction::CoredumpRestart => GuestPanicAction::Reset,
        }
    }
}

/// Why the VM shut down or reset (QAPI `ShutdownCause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownCause {
    /// No particular reason.
    None,
    /// An error in the host.
    HostError,
    /// The `quit` command.
    HostQmpQuit,
    /// The `system_reset` command.
    HostQmpSystemReset,
    /// A signal to the VMM (SIGINT, SIGTERM...).
    HostSignal,
    /// The guest asked to power off.
    GuestShutdown,
    /// The guest asked to reset.
    GuestReset,
    /// The guest panicked and the panic action ended or reset the VM.
    GuestPanic,
}

/// The events this VMM emits, with QEMU's names and data.
#[derive(Clone, Debug, PartialEq)]
pub enum QmpEvent {
    /// `GUEST_PANICKED` {action, info?}: pvpanic PANICKED.
    GuestPanicked {
        /// What happens next.
        action: GuestPanicAction,
        /// Optional details (QAPI `GuestPanicInformation`).
        info: Option<Value>,
    },
    /// `GUEST_CRASHLOADED` {action}: pvpanic CRASH_LOADED; the guest keeps running.
    GuestCrashloaded {
        /// Always `run` here: kdump is about to start.
        action: GuestPanicAction,
    },
    /// `GUEST_PVSHUTDOWN`: pvpanic SHUTDOWN.
    GuestPvshutdown,
    /// `STOP`: the vCPUs stopped.
    Stop,
    /// `RESUME`: the vCPUs resumed.
    Resume,
    /// `RESET` {guest, reason}.
    Reset {
        /// Whether the guest asked for it.
        guest: bool,
        /// Why.
        reason: ShutdownCause,
    },
    /// `SHUTDOWN` {guest, reason}.
    Shutdown {
        /// Whether the guest asked for it.
        guest: bool,
        /// Why.
        reason: ShutdownCause,
    },
    /// `POWERDOWN`: `system_powerdown` signalled the guest.
    Powerdown,
    /// `NMI` {cpus} (extension; QEMU emits nothing for `inject-nmi`): NMIs
    /// were injected into these vCPUs.
    Nmi {
        /// The vCPUs that got an NMI.
        cpus: Vec<u32>,
    },
    /// `DUMP_COMPLETED` {result, error?}.
    DumpCompleted {
        /// Final state of the dump.
        result: DumpQueryResult,
        /// Why it failed.
        error: Option<String>,
    },
}

impl QmpEvent {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            QmpEvent::GuestPanicked { .. } => "GUEST_PANICKED",
            QmpEvent::GuestCrashloaded { .. } => "GUEST_CRASHLOADED",
            QmpEvent::GuestPvshutdown => "GUEST_PVSHUTDOWN",
            QmpEvent::Stop => "STOP",
            QmpEvent::Resume => "RESUME",
            QmpEvent::Reset { .. } => "RESET",
            QmpEvent::Shutdown { .. } => "SHUTDOWN",
            QmpEvent::Powerdown => "POWERDOWN",
            QmpEvent::Nmi { .. } => "NMI",
            QmpEvent::DumpCompleted { .. } => "DUMP_COMPLETED",
        }
    }

    /// The event's `data` member, if it has one.
    pub fn data(&self) -> Option<Value> {
        let mut data = serde_json::Map::new();
        let mut put = |key: &str, value: Value| {
            data.insert(key.to_owned(), value);
        };
        match self {
            QmpEvent::GuestPanicked { action, info } => {
                put("action", serde_json::json!(action));
                if let Some(info) = info {
                    put("info", info.clone());
                }
            }
            QmpEvent::GuestCrashloaded { action } => put("action", serde_json::json!(action)),
            QmpEvent::Reset { guest, reason } | QmpEvent::Shutdown { guest, reason } => {
                put("guest", Value::Bool(*guest));
                put("reason", serde_json::json!(reason));
            }
            QmpEvent::Nmi { cpus } => put("cpus", serde_json::json!(cpus)),
            QmpEvent::DumpCompleted { result, error } => {
                put("result", serde_json::json!(result));
                if let Some(error) = error {
                    put("error", Value::String(error.clone()));
                }
            }
            QmpEvent::GuestPvshutdown | QmpEvent::Stop | QmpEvent::Resume | QmpEvent::Powerdown => {
                return None
            }
        }
        Some(Value::Object(data))
    }
}

/// An event's `timestamp`: wall-clock time since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds.
    pub seconds: u64,
    /// Microseconds within the second.
    pub microseconds: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            seconds: since_epoch.as_secs(),
            microseconds: since_epoch.subsec_micros(),
        }
    }
}

/// An event as sent on the wire (and as the client receives it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    /// The event name.
    pub event: String,
    /// The event data, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// When it happened.
    pub timestamp: Timestamp,
}

/// One message for a client's writer thread.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Bytes to write (one JSON text and its line end).
    Message(Arc<[u8]>),
    /// Flush what came before, then close the connection.
    Close,
}

/// One connected client, as the registry sees it.
#[derive(Debug)]
pub(crate) struct ClientHandle {
    pub id: u64,
    pub out: SyncSender<Outgoing>,
    pub negotiated: Arc<AtomicBool>,
    /// A clone of the connection, to cut it off when the client is too slow.
    pub stream: UnixStream,
}

impl ClientHandle {
    /// Queues `message` without blocking. A full queue means the client
    /// doesn't read: it is disconnected, and false returned.
    pub fn push(&self, message: Outgoing) -> bool {
        match self.out.try_send(message) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                log::warn!("qmp: client {} is not reading; disconnecting it", self.id);
                self.disconnect();
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Cuts the connection off; both of its threads then finish.
    pub fn disconnect(&self) {
        // Fails only if the socket is already shut down or gone.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The connected clients.
#[derive(Debug, Default)]
pub(crate) struct ClientRegistry {
    clients: Mutex<Vec<ClientHandle>>,
    next_id: AtomicU64,
}

impl ClientRegistry {
    pub fn lock(&self) -> MutexGuard<'_, Vec<ClientHandle>> {
        // A panic while holding this lock leaves a plain Vec behind: still usable.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn remove(&self, id: u64) {
        self.lock().retain(|c| c.id != id);
    }
}

/// Sends events to every negotiated client. Cheap to clone; `Send + Sync`.
/// A default broadcaster has no clients (for a VMM without a socket).
#[derive(Clone, Debug, Default)]
pub struct EventBroadcaster {
    pub(crate) clients: Arc<ClientRegistry>,
}

impl EventBroadcaster {
    /// Sends `event` to every negotiated client, stamped with the current time.
    pub fn emit(&self, event: &QmpEvent) {
        self.emit_raw(event.name(), event.data());
    }

    /// Sends an event by name with arbitrary `data`, for events [`QmpEvent`]
    /// doesn't know.
    pub fn emit_raw(&self, name: &str, data: Option<Value>) {
        let message = EventMessage {
            event: name.to_owned(),
            data,
            timestamp: Timestamp::now(),
        };
        let Some(bytes) = crate::session::encode_line(&message) else {
            log::error!("qmp: cannot encode event {name}");
            return;
        };
        let bytes: Arc<[u8]> = bytes.into();
        let clients = self.clients.lock();
        for client in clients.iter() {
            if client.negotiated.load(Ordering::Acquire) {
                client.push(Outgoing::Message(bytes.clone()));
            }
        }
    }

    /// How many clients are connected (negotiated or not).
    pub fn client_count(&self) -> usize {
        self.clients.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_shapes() {
        let e = QmpEvent::GuestPanicked {
            action: PanicAction::Pause.into(),
            info: None,
        };
        assert_eq!(
            (e.name(), e.data()),
            ("GUEST_PANICKED", Some(json!({"action": "pause"})))
        );
        let e = QmpEvent::Shutdown {
            guest: false,
            reason: ShutdownCause::HostQmpQuit,
        };
        assert_eq!(
            e.data(),
            Some(json!({"guest": false, "reason": "host-qmp-quit"}))
        );
        assert_eq!(QmpEvent::Stop.data(), None);
        assert_eq!(
            GuestPanicAction::from(PanicAction::CoredumpRestart),
            GuestPanicAction::Reset
        );
        let m = EventMessage {
            event: "STOP".into(),
            data: None,
            timestamp: Timestamp {
                seconds: 5,
                microseconds: 7,
            },
        };
        assert_eq!(
            json!(m),
            json!({"event": "STOP", "timestamp": {"seconds": 5, "microseconds": 7}})
        );
    }

    #[test]
    fn default_broadcaster_has_nowhere_to_send() {
        let b = EventBroadcaster::default();
        b.emit(&QmpEvent::Resume);
        assert_eq!(b.client_count(), 0);
    }
}
