//! The control socket: accept thread, and two threads per client.
//!
//! - The accept thread polls the listening socket and a stop EventFd.
//! - A client's reader thread frames its input, runs each message through
//!   its [`Session`], waits for the VMM when a command needs it, and queues
//!   the reply. Commands from one client run in order; clients never wait
//!   for each other.
//! - A client's writer thread drains a bounded queue
//!   ([`CLIENT_QUEUE_LEN`] messages) to the socket. Nothing else ever
//!   writes to a client socket, so a client that doesn't read only fills its
//!   own queue; when that is full the client is disconnected.
//!
//! Limits: [`crate::MAX_MESSAGE_BYTES`] per JSON value (then an error and the
//! connection is closed), [`MAX_CLIENTS`] connections.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::backend::{request_channel, BackendError, QmpRequestReceiver, RequestSender};
use crate::connection::{ClientConnection, ConnectionStep};
use crate::events::{ClientHandle, ClientRegistry, EventBroadcaster, Outgoing};
use crate::schema::{CommandError, VersionInfo};
use crate::session::{encode_response, greeting};

/// Messages (replies and events) queued per client before it counts as
/// not reading and is disconnected.
pub const CLIENT_QUEUE_LEN: usize = 256;
/// Connections served at once; more are answered with an error and closed.
pub const MAX_CLIENTS: usize = 32;
/// How long dropping the server waits for queued replies to be written.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Read size for client input.
const READ_CHUNK: usize = 64 * 1024;

/// Errors from starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process serves this socket.
    #[error("{0}: a server is already listening on this socket")]
    InUse(PathBuf),
    /// The path exists and is not a socket: not ours to remove.
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    /// Checking or removing a stale socket failed.
    #[error("{0}: cannot replace stale socket")]
    Stale(PathBuf, #[source] io::Error),
    /// Creating the socket failed.
    #[error("{0}: cannot create socket")]
    Bind(PathBuf, #[source] io::Error),
    /// Creating the request channel or stop EventFd failed.
    #[error("QMP server setup")]
    Setup(#[source] io::Error),
    /// Creating the request channel failed.
    #[error("QMP request channel")]
    Channel(#[source] BackendError),
    /// Spawning the accept thread failed.
    #[error("cannot spawn the QMP accept thread")]
    Thread(#[source] io::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, ServerError>;

/// How to start the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to create the socket.
    pub socket_path: PathBuf,
    /// What the greeting and `query-version` report.
    pub version: VersionInfo,
    /// Run first on the accept thread (e.g. to install a seccomp filter);
    /// the client threads it spawns inherit what it sets up.
    pub on_thread_start: Option<ThreadHook>,
}

/// A function a server thread runs when it starts.
#[derive(Clone)]
pub struct ThreadHook(Arc<dyn Fn() + Send + Sync>);

impl ThreadHook {
    /// Wraps `hook`.
    pub fn new(hook: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Arc::new(hook))
    }
}

impl std::fmt::Debug for ThreadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadHook")
    }
}

impl ServerConfig {
    /// A config with the default version information.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            version: VersionInfo::default(),
            on_thread_start: None,
        }
    }
}

/// Counts live writer threads, so that shutdown can wait for the flush.
#[derive(Debug, Default)]
struct LiveWriters {
    count: Mutex<usize>,
    changed: Condvar,
}

impl LiveWriters {
    fn add(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn done(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count = count.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Waits until no writer is left or `deadline` passes; true when none is left.
    fn wait_idle(&self, deadline: Instant) -> bool {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            count = self
                .changed
                .wait_timeout(count, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

#[derive(Debug)]
struct Shared {
    clients: Arc<ClientRegistry>,
    writers: LiveWriters,
    /// Messages being handled (a command waiting for the VMM's reply, or
    /// its reply not queued yet): stopping waits for them, so that the
    /// reply to `quit` is queued before the connection's Close.
    calls: LiveWriters,
    version: VersionInfo,
}

/// A running QMP server. Dropping it stops accepting, flushes queued
/// replies (bounded by a timeout), closes every client and removes the socket.
#[derive(Debug)]
pub struct QmpServer {
    socket_path: PathBuf,
    stop: EventFd,
    accept_thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl QmpServer {
    /// Creates the socket (mode 0600) and starts serving it. Returns the
    /// server and the VMM's end of the request channel.
    ///
    /// A socket file left by a dead server is replaced; one a live server
    /// answers on is refused ([`ServerError::InUse`]).
    pub fn start(config: ServerConfig) -> Result<(QmpServer, QmpRequestReceiver)> {
        let path = config.socket_path;
        let hook = config.on_thread_start;
        let listener = bind_replacing_stale(&path)?;
        listener.set_nonblocking(true).map_err(ServerError::Setup)?;
        let (sender, receiver) = request_channel().map_err(ServerError::Channel)?;
        let stop =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(ServerError::Setup)?;
        let shared = Arc::new(Shared {
            clients: Arc::default(),
            writers: LiveWriters::default(),
            calls: LiveWriters::default(),
            version: config.version,
        });
        let accept_thread = {
            let stop = stop.try_clone().map_err(ServerError::Setup)?;
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("qmp-accept".into())
                .spawn(move || {
                    if let Some(hook) = hook {
                        (hook.0)();
                    }
                    accept_loop(&listener, &stop, &sender, &shared)
                })
                .map_err(ServerError::Thread)?
        };
        log::info!("qmp: serving {}", path.display());
        Ok((
            QmpServer {
                socket_path: path,
                stop,
                accept_thread: Some(accept_thread),
                shared,
            },
            receiver,
        ))
    }

    /// The broadcaster for this server's clients.
    pub fn broadcaster(&self) -> EventBroadcaster {
        EventBroadcaster {
            clients: self.shared.clients.clone(),
        }
    }

    /// Where the socket is.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Stops the server (what dropping it does), for callers that want to
    /// choose the moment, e.g. right after answering `quit`.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(accept) = self.accept_thread.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            log::error!("qmp: cannot signal the accept thread: {e}");
        }
        if accept.join().is_err() {
            log::error!("qmp: the accept thread panicked");
        }
        // Replies the VMM has sent must be queued before each Close. The
        // VMM drops its request receiver (or answers) first, so no call
        // stays in flight for long; the timeout bounds it otherwise.
        if !self.shared.calls.wait_idle(Instant::now() + FLUSH_TIMEOUT) {
            log::warn!("qmp: commands still in flight at shutdown");
        }
        for client in self.shared.clients.lock().iter() {
            client.push(Outgoing::Close);
        }
        if !self
            .shared
            .writers
            .wait_idle(Instant::now() + FLUSH_TIMEOUT)
        {
            log::warn!("qmp: clients did not drain in time; closing them");
            for client in self.shared.clients.lock().iter() {
                client.disconnect();
            }
        }
        if let Err(e) = fs::remove_file(&self.socket_path) {
            log::warn!("qmp: cannot remove {}: {e}", self.socket_path.display());
        }
    }
}

impl Drop for QmpServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn bind_replacing_stale(path: &Path) -> Result<UnixListener> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServerError::Stale(path.into(), e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServerError::NotASocket(path.into()))
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(ServerError::InUse(path.into())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("qmp: replacing stale socket {}", path.display());
                fs::remove_file(path).map_err(|e| ServerError::Stale(path.into(), e))?;
            }
            Err(e) => return Err(ServerError::Stale(path.into(), e)),
        },
    }
    crate::sys::bind_private_socket(path).map_err(|e| ServerError::Bind(path.into(), e))
}

fn accept_loop(
    listener: &UnixListener,
    stop: &EventFd,
    sender: &RequestSender,
    shared: &Arc<Shared>,
) {
    let fds = [listener.as_raw_fd(), stop.as_raw_fd()];
    loop {
        let ready = match crate::sys::poll_readable(&fds, None) {
            Ok(ready) => ready,
            Err(e) => {
                log::error!("qmp: poll failed, no longer accepting clients: {e}");
                return;
            }
        };
        if ready.get(1).copied().unwrap_or(false) {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = start_client(stream, sender, shared) {
                    log::error!("qmp: cannot serve a new client: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => log::warn!("qmp: accept failed: {e}"),
        }
    }
}

fn start_client(
    mut stream: UnixStream,
    sender: &RequestSender,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    // Accepted sockets don't inherit O_NONBLOCK on Linux, but be explicit:
    // the client threads block.
    stream.set_nonblocking(false)?;
    if shared.clients.lock().len() >= MAX_CLIENTS {
        log::warn!("qmp: too many clients, refusing one");
        let error = CommandError::generic(format!("too many QMP clients (limit {MAX_CLIENTS})"));
        // Best effort: the refused client may already be gone.
        let _ = stream.write_all(&encode_response(&Err(error), None));
        return Ok(());
    }
    let id = shared.clients.next_id();
    let (out, queue) = sync_channel(CLIENT_QUEUE_LEN);
    let handle = ClientHandle {
        id,
        out: out.clone(),
        negotiated: Arc::new(AtomicBool::new(false)),
        stream: stream.try_clone()?,
    };
    let reader_handle = ClientHandle {
        id,
        out,
        negotiated: handle.negotiated.clone(),
        stream: stream.try_clone()?,
    };
    handle.push(Outgoing::Message(greeting(&shared.version).into()));
    shared.clients.lock().push(handle);
    shared.writers.add();
    let writer_stream = stream.try_clone()?;
    let writer_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("qmp-write-{id}"))
        .spawn(move || write_loop(writer_stream, &queue, id, &writer_shared));
    if let Err(e) = spawned {
        shared.writers.done();
        shared.clients.remove(id);
        return Err(e);
    }
    let sender = sender.try_clone()?;
    let version = shared.version.clone();
    let reader_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("qmp-read-{id}"))
        .spawn(move || read_loop(stream, &reader_handle, &reader_shared, &sender, version));
    if let Err(e) = spawned {
        // The writer is running: stop it through the registry's handle.
        if let Some(client) = shared.clients.lock().iter().find(|c| c.id == id) {
            client.disconnect();
            client.push(Outgoing::Close);
        }
        return Err(e);
    }
    log::debug!("qmp: client {id} connected");
    Ok(())
}

fn read_loop(
    mut stream: UnixStream,
    handle: &ClientHandle,
    shared: &Shared,
    sender: &RequestSender,
    version: VersionInfo,
) {
    let clients = &shared.clients;
    let mut connection = ClientConnection::new(version, crate::MAX_MESSAGE_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK];
    'connection: loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("qmp: client {} read error: {e}", handle.id);
                break;
            }
        };
        connection.push_input(&chunk[..n]);
        loop {
            // Counted from before the VMM is called until the reply is
            // queued: stopping the server waits for it.
            shared.calls.add();
            let step = connection.next_step(|request| sender.call(request));
            let queued = match step {
                None => {
                    shared.calls.done();
                    break;
                }
                Some(ConnectionStep::Reply { bytes, negotiated }) => {
                    let message = Outgoing::Message(bytes.into());
                    if negotiated {
                        // Under the registry lock, which emitters hold while
                        // queueing: no event can slip in before this reply
                        // (qemu.qmp requires the reply to come first), and
                        // none emitted after it is missed.
                        let _clients = clients.lock();
                        let queued = handle.push(message);
                        handle.negotiated.store(true, Ordering::Release);
                        queued
                    } else {
                        handle.push(message)
                    }
                }
                Some(ConnectionStep::Close { bytes, limit }) => {
                    log::warn!(
                        "qmp: client {} sent a message over {limit} bytes; closing",
                        handle.id
                    );
                    handle.push(Outgoing::Message(bytes.into()));
                    false
                }
            };
            shared.calls.done();
            if !queued {
                break 'connection;
            }
        }
    }
    // Let the writer flush what is queued, then close.
    handle.push(Outgoing::Close);
    log::debug!("qmp: client {} input closed", handle.id);
}

fn write_loop(mut stream: UnixStream, queue: &Receiver<Outgoing>, id: u64, shared: &Shared) {
    while let Ok(Outgoing::Message(bytes)) = queue.recv() {
        if let Err(e) = stream.write_all(&bytes) {
            log::debug!("qmp: client {id} write error: {e}");
            break;
        }
    }
    // Ends the reader too, if it is still reading.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    shared.clients.remove(id);
    shared.writers.done();
    log::debug!("qmp: client {id} disconnected");
}
