//! The real `vmm` binary's seccomp filters: every thread runs filtered by
//! default, a forbidden system call on each kind of thread ends the VMM
//! with status 159 and names the call, and `--seccomp false|log` work.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tests::{socket_path, summary, vmm_binary, Stream, VmmProcess, DEFAULT_TIMEOUT};
use vmm::seccomp::{EXIT_BAD_SYSCALL, FORBIDDEN_TEST_ENV};

/// `Seccomp:` (0 none, 2 filter) of every thread of `pid`, with its name.
fn thread_seccomp_modes(pid: u32) -> Vec<(String, u32)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let status = std::fs::read_to_string(task.expect("task").path().join("status"));
        let Ok(status) = status else { continue };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let name = field("Name:").unwrap_or_default();
        let mode = field("Seccomp:")
            .and_then(|v| v.parse().ok())
            .expect("Seccomp field");
        modes.push((name, mode));
    }
    modes.sort();
    modes
}

fn run_args<'a>(socket: &'a Path, seccomp: &'a str, cmdline: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--cpus",
        "2",
        "--serial",
        "stdio",
        "--seccomp",
        seccomp,
        "--api-socket",
        socket.to_str().expect("utf-8 path"),
        "--cmdline",
        cmdline,
    ]
}

/// Starts the VMM with the forbidden-call hook on `kind` threads.
fn start_forbidden(name: &str, kind: &str, seccomp: &str, cmdline: &str) -> VmmProcess {
    let socket = socket_path(name);
    VmmProcess::spawn_with_env(
        &run_args(&socket, seccomp, cmdline),
        &[(FORBIDDEN_TEST_ENV, kind)],
    )
}

fn expect_killed(vm: &mut VmmProcess, kind: &str) {
    let line = vm.wait_for(Stream::Stderr, "vmm: seccomp:", DEFAULT_TIMEOUT);
    assert_eq!(
        line,
        format!(
            "vmm: seccomp: {kind} thread made forbidden syscall {}; exiting",
            libc::SYS_getppid
        )
    );
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT), EXIT_BAD_SYSCALL);
}

#[test]
fn every_thread_is_filtered_by_default() {
    let socket = socket_path("seccomp-default");
    let mut args = run_args(&socket, "true", "");
    args.drain(5..7); // the default, without --seccomp
    let mut vm = VmmProcess::spawn(&args);
    vm.wait_for_guest(&summary(2));
    // A QMP client has its own reader and writer threads.
    let mut client =
        qmp::QmpClient::connect_with_timeout(&socket, Some(DEFAULT_TIMEOUT)).expect("QMP connect");
    client.execute("query-status", None).expect("query-status");
    let modes = thread_seccomp_modes(vm.pid());
    for name in [
        "vmm",
        "vcpu0",
        "vcpu1",
        "qmp-accept",
        "qmp-read-0",
        "qmp-write-0",
    ] {
        assert!(
            modes.iter().any(|(n, m)| n == name && *m == 2),
            "{name} not filtered: {modes:?}"
        );
    }
    assert!(modes.iter().all(|(_, m)| *m == 2), "{modes:?}");
    client.execute("quit", None).expect("quit");
    let code = vm.wait_exit(DEFAULT_TIMEOUT);
    assert_eq!(code, 0, "{}", vm.transcript());
}

#[test]
fn a_forbidden_call_on_the_main_thread_ends_the_vmm() {
    let mut vm = start_forbidden("seccomp-main", "main", "true", "");
    expect_killed(&mut vm, "main");
}

#[test]
fn a_forbidden_call_on_a_vcpu_thread_ends_the_vmm() {
    let mut vm = start_forbidden("seccomp-vcpu", "vcpu", "true", "");
    expect_killed(&mut vm, "vcpu");
}

#[test]
fn a_forbidden_call_on_the_api_thread_ends_the_vmm() {
    let mut vm = start_forbidden("seccomp-api", "api", "true", "");
    expect_killed(&mut vm, "api");
}

#[test]
fn a_forbidden_call_on_the_dump_writer_ends_the_vmm() {
    let socket = socket_path("seccomp-dump");
    let mut vm = VmmProcess::spawn_with_env(
        &run_args(&socket, "true", ""),
        &[(FORBIDDEN_TEST_ENV, "dump")],
    );
    vm.wait_for_guest(&summary(2));
    let dir = std::env::temp_dir().join(format!("vmm-seccomp-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dump dir");
    let core = dir.join("vmcore");
    // The VMM dies under the command: ctl then reports a lost connection.
    let _ = Command::new(vmm_binary())
        .args(["ctl", "--api-socket", socket.to_str().expect("utf-8")])
        .arg("dump-guest-memory")
        .arg(format!(
            r#"{{"paging": false, "detach": true, "protocol": "file:{}"}}"#,
            core.display()
        ))
        .output()
        .expect("vmm ctl");
    expect_killed(&mut vm, "dump");
    assert!(!core.exists(), "a vmcore under the final name");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn seccomp_false_installs_no_filter() {
    let mut vm = start_forbidden("seccomp-off", "vcpu", "false", "");
    vm.wait_for_guest(&summary(2));
    let modes = thread_seccomp_modes(vm.pid());
    assert!(modes.iter().all(|(_, m)| *m == 0), "{modes:?}");
    nix_kill(vm.pid(), libc::SIGTERM);
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT), 0);
}

#[test]
fn seccomp_log_lets_a_forbidden_call_through() {
    let mut vm = start_forbidden("seccomp-log", "vcpu", "log", "post_boot=poweroff");
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT + Duration::from_secs(30)), 0);
    assert!(
        !vm.transcript().contains("vmm: seccomp:"),
        "{}",
        vm.transcript()
    );
}

fn nix_kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child process.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill failed");
}
