//! A small blocking QMP client, for `vmm ctl` and tests.
//!
//! ```no_run
//! # fn main() -> Result<(), qmp::ClientError> {
//! let mut client = qmp::QmpClient::connect("/run/vm.sock")?;
//! let status = client.execute("query-status", None)?;
//! println!("{status}");
//! for event in client.events() {
//!     println!("{:?}", event?);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::events::EventMessage;
use crate::framing::{Framer, FramingError};
use crate::schema::CommandError;

/// Errors from the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, reading or writing failed (including read timeouts).
    #[error("QMP socket I/O")]
    Io(#[source] io::Error),
    /// The server closed the connection.
    #[error("the QMP server closed the connection")]
    Closed,
    /// The server sent something that is not QMP.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
    /// The server sent an oversize or malformed message.
    #[error("bad message from the QMP server")]
    Framing(#[source] FramingError),
    /// The command failed; the server's error.
    #[error("command failed")]
    Command(#[source] CommandError),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A connected, negotiated QMP client.
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    framer: Framer,
    greeting: Value,
    events: VecDeque<EventMessage>,
    next_id: u64,
}

impl QmpClient {
    /// Connects to `path`, reads the greeting and negotiates capabilities.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with_timeout(path, None)
    }

    /// Like [`QmpClient::connect`], with a read timeout for every later read.
    pub fn connect_with_timeout(path: impl AsRef<Path>, timeout: Option<Duration>) -> Result<Self> {
        let stream = UnixStream::connect(path).map_err(ClientError::Io)?;
        stream.set_read_timeout(timeout).map_err(ClientError::Io)?;
        let mut client = Self {
            stream,
            framer: Framer::default(),
            greeting: Value::Null,
            events: VecDeque::new(),
            next_id: 0,
        };
        let greeting = client.read_value()?;
        if !greeting.get("QMP").is_some_and(Value::is_object) {
            return Err(ClientError::Protocol(format!(
                "not a QMP greeting: {greeting}"
            )));
        }
        client.greeting = greeting;
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Runs `command` with `arguments` (a JSON object, or `None`) and returns
    /// its `return` value. Events that arrive meanwhile are kept for
    /// [`QmpClient::next_event`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let id = format!("vmm-ctl-{}", self.next_id);
        self.next_id += 1;
        let mut message = json!({"execute": command, "id": id});
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut bytes = serde_json::to_vec(&message)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the command: {e}")))?;
        bytes.extend_from_slice(b"\r\n");
        self.stream.write_all(&bytes).map_err(ClientError::Io)?;
        loop {
            let value = self.read_value()?;
            if value.get("event").is_some() {
                self.events.push_back(parse_event(value)?);
                continue;
            }
            if value.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                return Err(ClientError::Protocol(format!(
                    "reply for another command: {value}"
                )));
            }
            if let Some(ret) = value.get("return") {
                return Ok(ret.clone());
            }
            if let Some(error) = value.get("error") {
                let error: CommandError = serde_json::from_value(error.clone())
                    .map_err(|e| ClientError::Protocol(format!("bad error object {error}: {e}")))?;
                return Err(ClientError::Command(error));
            }
            return Err(ClientError::Protocol(format!(
                "neither return nor error: {value}"
            )));
        }
    }

    /// The next event: a kept one, or the next one the server sends.
    pub fn next_event(&mut self) -> Result<EventMessage> {
        if let Some(event) = self.events.pop_front() {
            return Ok(event);
        }
        loop {
            let value = self.read_value()?;
            if value.get("event").is_some() {
                return parse_event(value);
            }
            log::warn!("qmp client: unexpected message while waiting for events: {value}");
        }
    }

    /// Events as they arrive, until the connection closes or fails.
    pub fn events(&mut self) -> Events<'_> {
        Events { client: self }
    }

    fn read_value(&mut self) -> Result<Value> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(frame) = self.framer.next_frame() {
                let frame = frame.map_err(ClientError::Framing)?;
                return serde_json::from_slice(&frame)
                    .map_err(|e| ClientError::Protocol(format!("bad JSON from the server: {e}")));
            }
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::Io(e)),
            };
            self.framer.push(&chunk[..n]);
        }
    }
}

fn parse_event(value: Value) -> Result<EventMessage> {
    serde_json::from_value(value.clone())
        .map_err(|e| ClientError::Protocol(format!("bad event {value}: {e}")))
}

/// Iterator over a client's events; ends when the connection closes.
#[derive(Debug)]
pub struct Events<'a> {
    client: &'a mut QmpClient,
}

impl Iterator for Events<'_> {
    type Item = Result<EventMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.client.next_event() {
            Err(ClientError::Closed) => None,
            other => Some(other),
        }
    }
}
