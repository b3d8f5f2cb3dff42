//! Shared helpers for the protocol tests: temp dirs, a stub-backed server,
//! and a raw line-oriented client that sees exactly what the server sends.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use qmp::stub::{StubBackend, StubVmm};
use qmp::{EventBroadcaster, QmpServer, ServerConfig};
use serde_json::{json, Value};

/// How long any single read may take before a test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A private temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "qmp-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn socket(&self) -> PathBuf {
        self.0.join("qmp.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server with a stub VMM behind it.
pub struct StubServer {
    pub server: QmpServer,
    pub vmm: StubVmm,
    pub events: EventBroadcaster,
    pub dir: TempDir,
}

impl StubServer {
    pub fn start() -> Self {
        Self::start_with_vcpus(2)
    }

    pub fn start_with_vcpus(vcpus: u32) -> Self {
        let dir = TempDir::new();
        let (server, receiver) = QmpServer::start(ServerConfig::new(dir.socket())).unwrap();
        let events = server.broadcaster();
        let vmm = StubVmm::spawn(receiver, StubBackend::new(vcpus, events.clone())).unwrap();
        Self {
            server,
            vmm,
            events,
            dir,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.server.socket_path().to_owned()
    }

    /// A raw client that has read the greeting and negotiated.
    pub fn client(&self) -> RawClient {
        let mut c = RawClient::connect(&self.path());
        c.greeting();
        c.negotiate();
        c
    }
}

/// A client that speaks bytes and reads the server's lines.
pub struct RawClient {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
    /// Events read while waiting for a reply.
    events: VecDeque<Value>,
}

impl RawClient {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Self {
            stream,
            reader,
            events: VecDeque::new(),
        }
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).unwrap();
    }

    /// The next line, or None at end of stream. Panics on timeout.
    pub fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                assert!(line.ends_with("\r\n"), "line not CRLF-terminated: {line:?}");
                Some(line)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading from the server: {e}"),
        }
    }

    /// The next message. Panics at end of stream.
    pub fn read(&mut self) -> Value {
        let line = self.line().expect("server closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }

    /// The next message that is not an event; events are kept for [`RawClient::event`].
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.read();
            if v.get("event").is_none() {
                return v;
            }
            self.events.push_back(v);
        }
    }

    /// The next event (a kept one first). Panics on a non-event.
    pub fn event(&mut self) -> Value {
        let v = match self.events.pop_front() {
            Some(v) => v,
            None => self.read(),
        };
        assert!(v.get("event").is_some(), "expected an event, got {v}");
        v
    }

    /// Sends one message and returns the reply (skipping events).
    pub fn call(&mut self, message: &Value) -> Value {
        self.send(format!("{message}\n"));
        self.reply()
    }

    /// Runs `command` and returns its `return` value, failing on error.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Value {
        let mut message = json!({ "execute": command });
        if let Some(args) = arguments {
            message["arguments"] = args;
        }
        let reply = self.call(&message);
        reply
            .get("return")
            .cloned()
            .unwrap_or_else(|| panic!("{command} failed: {reply}"))
    }

    /// Runs `command` and returns its error object, failing on success.
    pub fn error(&mut self, command: &str, arguments: Option<Value>) -> Value {
        let mut message = json!({ "execute": command });
        if let Some(args) = arguments {
            message["arguments"] = args;
        }
        let reply = self.call(&message);
        reply
            .get("error")
            .cloned()
            .unwrap_or_else(|| panic!("{command} succeeded: {reply}"))
    }

    pub fn greeting(&mut self) -> Value {
        let g = self.read();
        assert!(g["QMP"].is_object(), "not a greeting: {g}");
        g
    }

    pub fn negotiate(&mut self) {
        assert_eq!(
            self.call(&json!({"execute": "qmp_capabilities"})),
            json!({"return": {}})
        );
    }

    /// Reads until end of stream; returns the messages seen.
    pub fn drain_to_eof(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.line() {
            lines.push(line);
        }
        lines
    }
}
