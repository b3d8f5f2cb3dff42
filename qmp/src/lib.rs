//! A QMP (QEMU Machine Protocol) subset for the VMM's control socket.
//!
//! Unmodified QMP clients (the PyPI `qemu.qmp` package, `qmp-shell`) can
//! drive the VMM through it. The crate knows nothing about KVM:
//!
//! - [`QmpServer::start`] creates the socket (mode 0600) and serves it on
//!   its own threads. It hands back a [`QmpRequestReceiver`]: the VMM
//!   registers its EventFd with its event loop and, when it fires, calls
//!   [`QmpRequestReceiver::process`] with its [`QmpBackend`] (or takes the
//!   typed [`QmpRequest`]s one by one and answers each [`Responder`]).
//! - [`QmpServer::broadcaster`] gives an [`EventBroadcaster`] the VMM uses
//!   to send [`QmpEvent`]s to every negotiated client.
//! - [`QmpClient`] is a blocking client for `vmm ctl` and tests.
//! - [`stub`] is a simulated VMM for tests.
//!
//! # Wiring it into a VMM
//!
//! ```no_run
//! # use qmp::*;
//! # fn demo(vmm: &mut dyn QmpBackend) -> Result<(), Box<dyn std::error::Error>> {
//! let (server, requests) = QmpServer::start(ServerConfig::new("/run/vm.sock"))?;
//! let events = server.broadcaster(); // clone it into whoever emits events
//! // Event loop: watch requests.as_raw_fd() (EPOLLIN); when it fires:
//! requests.process(vmm)?; // Err(BackendError::Closed) once the server is gone
//! events.emit(&QmpEvent::Stop);
//! drop(server); // after `quit`: flushes the reply, closes clients, removes the socket
//! # Ok(())
//! # }
//! ```
//!
//! # Wire reference
//!
//! - Greeting: `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2,
//!   "major": 7}, "package": "vmm 0.1.0"}, "capabilities": []}}`.
//! - Command: `{"execute": NAME, "arguments": {...}?, "id": ANY?}`.
//! - Success: `{"return": VALUE, "id": ID?}`; failure: `{"error": {"class":
//!   CLASS, "desc": TEXT}, "id": ID?}`. The `id` is echoed whenever the
//!   message was a JSON object.
//! - Event: `{"event": NAME, "data": {...}?, "timestamp": {"seconds": S,
//!   "microseconds": US}}`, only to clients that have negotiated.
//! - Error classes are QEMU's: GenericError, CommandNotFound,
//!   DeviceNotActive, DeviceNotFound, KVMMissingCap. Commands before
//!   `qmp_capabilities` get CommandNotFound "Expecting capabilities
//!   negotiation with 'qmp_capabilities'", as QEMU sends (there is no
//!   CommandNotNegotiated class in QEMU).
//! - Output is one message per line, ending in `\r\n`. Input is a JSON
//!   stream: messages may be split or packed arbitrarily (see [`Framer`]).
//!
//! Limits: [`MAX_MESSAGE_BYTES`] (1 MiB) per input message (then an error
//! and the connection is closed), [`CLIENT_QUEUE_LEN`] queued output
//! messages per client (then it is disconnected), [`MAX_CLIENTS`] clients.

mod backend;
mod client;
mod connection;
mod events;
mod framing;
mod schema;
mod server;
mod session;
pub mod stub;
mod sys;

pub use backend::{
    BackendError, PendingRequest, QmpBackend, QmpRequestReceiver, QmpResult, Responder,
};
pub use client::{ClientError, Events, QmpClient};
pub use connection::{ClientConnection, ConnectionStep};
pub use events::{
    EventBroadcaster, EventMessage, GuestPanicAction, QmpEvent, ShutdownCause, Timestamp,
};
pub use framing::{Framer, FramingError, MAX_MESSAGE_BYTES};
pub use schema::{
    CommandError, CommandResult, CpuInfoFast, CpuInstanceProperties, CrashTypeInfo, DumpFormat,
    DumpGuestMemory, DumpProtocol, DumpQueryResult, DumpStatus, ErrorClass, PanicAction,
    QmpRequest, RebootAction, RunState, SetAction, ShutdownAction, StatusInfo, SysEmuTarget,
    UnknownPanicAction, VersionInfo, VersionTriple, WatchdogAction, XInjectCrash, COMMANDS,
};
pub use server::{QmpServer, ServerConfig, ServerError, ThreadHook, CLIENT_QUEUE_LEN, MAX_CLIENTS};
