//! The socket file: its mode, stale files, and cleanup.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

use common::{RawClient, StubServer, TempDir};
use qmp::{QmpServer, ServerConfig, ServerError};

#[test]
fn socket_is_private() {
    let s = StubServer::start();
    let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

#[test]
fn dead_stale_socket_is_replaced() {
    let dir = TempDir::new();
    let path = dir.socket();
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "the dead socket file stays behind");
    let (server, _receiver) = QmpServer::start(ServerConfig::new(&path)).unwrap();
    let mut c = RawClient::connect(&path);
    c.greeting();
    drop(server);
    assert!(!path.exists(), "the server removes its socket when dropped");
}

#[test]
fn live_socket_is_refused() {
    let s = StubServer::start();
    let err = QmpServer::start(ServerConfig::new(s.path())).unwrap_err();
    assert!(matches!(err, ServerError::InUse(_)), "{err:?}");
    assert!(err.to_string().contains("already listening"), "{err}");
    // The first server is untouched.
    let mut c = s.client();
    assert_eq!(c.execute("query-status", None)["status"], "running");

    // Another program's live socket is refused too.
    let dir = TempDir::new();
    let _other = UnixListener::bind(dir.socket()).unwrap();
    let err = QmpServer::start(ServerConfig::new(dir.socket())).unwrap_err();
    assert!(matches!(err, ServerError::InUse(_)), "{err:?}");
}

#[test]
fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = TempDir::new();
    std::fs::write(dir.socket(), b"precious").unwrap();
    let err = QmpServer::start(ServerConfig::new(dir.socket())).unwrap_err();
    assert!(matches!(err, ServerError::NotASocket(_)), "{err:?}");
    assert_eq!(std::fs::read(dir.socket()).unwrap(), b"precious");
}

#[test]
fn unusable_paths_are_errors() {
    let dir = TempDir::new();
    let long = dir.path().join("x".repeat(120));
    assert!(matches!(
        QmpServer::start(ServerConfig::new(long)).unwrap_err(),
        ServerError::Bind(..)
    ));
    let missing = dir.path().join("no/such/dir/qmp.sock");
    assert!(QmpServer::start(ServerConfig::new(missing)).is_err());
}
