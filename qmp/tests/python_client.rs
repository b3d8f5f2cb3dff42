//! The unmodified PyPI `qemu.qmp` client against the server (stub VMM).

mod common;

use std::process::{Command, Stdio};

use common::StubServer;

#[test]
fn qemu_qmp_python_client_works() {
    let probe = Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .output()
        .expect("python3 is needed to run this test");
    assert!(
        probe.status.success(),
        "the PyPI package qemu.qmp is missing (pip install qemu.qmp): {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let s = StubServer::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/test_qmp_client.py");
    let out = Command::new("python3")
        .arg(script)
        .env("QMP_SOCKET", s.path())
        .stdin(Stdio::null())
        .output()
        .expect("running the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "python client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    let StubServer { server, vmm, .. } = s;
    drop(server);
    let backend = vmm.stop().expect("stub vmm");
    assert!(backend.quit_requested, "quit never reached the VMM");
}
