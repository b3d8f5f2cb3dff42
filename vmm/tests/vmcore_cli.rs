//! `vmm vmcore info|check` as a user runs them: on a real dump of the
//! embedded guest (made through the library), on garbage, and `vmm run
//! --dump-dir` with a bad directory.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use vmm::{DumpRequest, ExitReason, SerialOutput, VmConfig, Vmm};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
const WAIT: Duration = Duration::from_secs(60);

fn run(args: &[&str]) -> Output {
    Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vmm")
}

/// Serial output as a channel of bytes.
struct ChannelWriter(Sender<u8>);
impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in buf {
            let _ = self.0.send(*b);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Boots the embedded guest on 2 vCPUs, dumps it once its boot is over (the
/// VMCOREINFO registration is its last boot step) and both idle.
fn dump_of_the_guest(path: &std::path::Path) {
    let (tx, rx) = channel();
    let vmm = Vmm::new(VmConfig {
        cpus: 2,
        serial: SerialOutput::Writer(Box::new(ChannelWriter(tx))),
        ..VmConfig::default()
    })
    .expect("VM");
    let handle = vmm.handle();
    let (done_tx, done) = channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(vmm.run().map_err(|e| e.to_string()));
    });
    let mut seen = Vec::new();
    let booted = |s: &str| s.contains("CPUs online: 2/2") && s.contains("registered\n");
    while !booted(&String::from_utf8_lossy(&seen)) {
        seen.push(rx.recv_timeout(WAIT).expect("guest boots in time"));
    }
    handle
        .dump_guest_memory(DumpRequest::new(path))
        .expect("dump");
    handle.stop();
    assert_eq!(done.recv_timeout(WAIT).unwrap(), Ok(ExitReason::Stopped));
}

#[test]
fn check_and_info_on_a_real_dump() {
    let path = std::env::temp_dir().join(format!("vmm-vmcore-cli-{}.elf", std::process::id()));
    dump_of_the_guest(&path);
    let p = path.to_str().unwrap();

    // A guest that never panicked: host notes pass, guest notes missing.
    let out = run(&["vmcore", "check", p]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("MISSING"), "{stdout}");
    assert!(!stdout.contains("CORRUPT"), "{stdout}");
    assert!(out.stderr.is_empty());

    let out = run(&["vmcore", "check", "--json", p]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["ok"], false);
    let vcpus = report["vcpus"].as_array().expect("vcpus");
    assert_eq!(vcpus.len(), 2);
    for v in vcpus {
        assert_eq!(v["host_note"]["verdict"], "pass", "{v}");
        assert_eq!(v["guest_note"]["verdict"], "missing", "{v}");
    }

    // info symbolises RIP with the embedded guest by default.
    let out = run(&["vmcore", "info", p]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    // Symbols come from the guest ELF (as linked, so possibly mangled).
    assert!(stdout.contains("guest_kernel"), "{stdout}");
    let out = run(&[
        "vmcore",
        "info",
        "--json",
        "--kernel",
        vmm::GUEST_KERNEL_PATH,
        p,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(info["cpus"].as_array().map(Vec::len), Some(2), "{info}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn garbage_and_bad_dump_dirs_are_refused_in_one_line() {
    let path = std::env::temp_dir().join(format!("vmm-vmcore-cli-{}.bad", std::process::id()));
    std::fs::write(&path, b"\x7fELF but not really").unwrap();
    let p = path.to_str().unwrap();
    for args in [
        &["vmcore", "check", p][..],
        &["vmcore", "info", p],
        &["vmcore", "check", "/nonexistent/vmcore"],
        &["run", "--dump-dir", "/nonexistent/dir"],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("vmm: error: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_file(&path);
}
