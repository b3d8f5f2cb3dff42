//! The unmodified PyPI `qemu.qmp` client against the real `vmm` binary and
//! the real guest (tests/python/vmm_qmp_client.py).
//!
//! Without `qemu.qmp` the test is skipped with a message, except when
//! `CI=true`, where it fails: CI installs it (.ci/install-deps).

use std::process::{Command, Stdio};

use tests::{socket_path, summary, VmmProcess, DEFAULT_TIMEOUT};

#[test]
fn qemu_qmp_drives_the_real_vmm() {
    let probe = Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .output();
    let available = probe.as_ref().is_ok_and(|o| o.status.success());
    if !available {
        let why = match &probe {
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with the PyPI package qemu.qmp is required in CI: {why}"
        );
        eprintln!("SKIPPED: python3 -c 'import qemu.qmp' failed ({why}); pip install qemu.qmp");
        return;
    }

    let socket = socket_path("python");
    let mut vm = VmmProcess::spawn(&[
        "run",
        "--cpus",
        "2",
        "--serial",
        "stdio",
        "--on-panic",
        "pause",
        "--cmdline",
        "unknown_nmi_panic",
        "--api-socket",
        socket.to_str().expect("utf-8 path"),
    ]);
    vm.wait_for_guest(&summary(2));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/vmm_qmp_client.py");
    let out = Command::new("python3")
        .arg(script)
        .env("QMP_SOCKET", &socket)
        .env("PANIC_ACTION", "pause")
        .stdin(Stdio::null())
        .output()
        .expect("running the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "python client failed ({}):\n{stdout}\n{stderr}\nvmm:\n{}",
        out.status,
        vm.transcript()
    );
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT), 0, "{}", vm.transcript());
    vm.wait_for_vmm("vmm: pvpanic: PANICKED from vcpu ");
}
