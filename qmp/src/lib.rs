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
//! Wire format: one JSON value per message, each reply and event on its own
//! line ending in `\r\n`; input may be split or packed arbitrarily. Limits:
//! [`MAX_MESSAGE_BYTES`] per input message (then an error and the
//! connection is closed), [`CLIENT_QUEUE_LEN`] queued output messages per
//! client (then it is disconnected), [`MAX_CLIENTS`] clients.

mod backend;
mod client;
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
pub use server::{QmpServer, ServerConfig, ServerError, CLIENT_QUEUE_LEN, MAX_CLIENTS};
