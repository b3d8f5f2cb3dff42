//! The `vmm` binary as a user meets it: bad input gives one line on stderr
//! and exit code 2, a signal stops a running guest cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

fn run(args: &[&str]) -> Output {
    Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vmm")
}

/// Asserts the VMM refused with exit code 2 and a single `vmm: error:` line
/// mentioning `needle`.
fn assert_refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("vmm: error:"), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("vmm-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

#[test]
fn missing_kernel_is_refused() {
    assert_refused(
        &run(&["run", "--kernel", "/nonexistent/kernel"]),
        "/nonexistent/kernel",
    );
}

#[test]
fn non_elf_kernel_is_refused() {
    let path = temp_file("not-elf", b"this is not an ELF file at all");
    let out = run(&["run", "--kernel", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);
    assert_refused(&out, "ELF");
}

#[test]
fn elf_without_pvh_note_is_refused() {
    // Any host executable is an ELF without a Xen PVH entry note.
    assert_refused(&run(&["run", "--kernel", VMM]), "PVH");
}

#[test]
fn zero_cpus_is_refused() {
    assert_refused(&run(&["run", "--cpus", "0"]), "cpus");
}

#[test]
fn more_cpus_than_kvm_allows_is_refused() {
    assert_refused(&run(&["run", "--cpus", "100000"]), "vCPUs");
}

#[test]
fn unparsable_memory_size_is_refused() {
    assert_refused(&run(&["run", "--memory", "12XB"]), "12XB");
}

#[test]
fn memory_too_small_for_the_kernel_is_refused() {
    assert_refused(&run(&["run", "--memory", "1M"]), "memory");
}

#[test]
fn missing_kvm_device_is_refused() {
    let out = Command::new(VMM)
        .args(["run"])
        .env("VMM_KVM_DEVICE", "/nonexistent/kvm")
        .stdin(Stdio::null())
        .output()
        .expect("run vmm");
    assert_refused(&out, "/nonexistent/kvm");
}

#[test]
fn sigterm_stops_a_running_guest_cleanly() {
    let mut child = Command::new(VMM)
        .args(["run", "--cpus", "2", "--serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("guest never came up");
        if line.contains("CPUs online: 2/2") {
            break;
        }
    }
    // SAFETY: kill(2) on our own child's pid, which has not been reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let out = child.wait_with_output().expect("wait vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
