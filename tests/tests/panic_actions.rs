//! pvpanic and the panic actions, against the real `vmm` binary and the real
//! guest. The guest is made to panic by `inject-nmi` over QMP with
//! `unknown_nmi_panic` on its command line (after the QMP client is
//! connected, so no event can be missed), or by `crash_after_boot=PANIC@1`
//! where only the VMM's own output is checked.

use std::path::PathBuf;

use qmp::{ErrorClass, EventMessage, QmpClient};
use serde_json::{json, Value};
use tests::{socket_path, summary, GuestRun, VmmProcess, DEFAULT_TIMEOUT};
use vmm::{Notification, VmConfig};

/// A VMM booted with `unknown_nmi_panic`, up to its summary line, with a
/// negotiated QMP client.
struct Vm {
    process: VmmProcess,
    client: QmpClient,
    _socket: PathBuf,
}

fn boot(name: &str, on_panic: &str, cmdline: &str) -> Vm {
    boot_cpus(name, 2, on_panic, cmdline)
}

fn boot_cpus(name: &str, cpus: u32, on_panic: &str, cmdline: &str) -> Vm {
    boot_with(name, cpus, on_panic, cmdline, &[])
}

fn boot_with(name: &str, cpus: u32, on_panic: &str, cmdline: &str, extra: &[&str]) -> Vm {
    let cpu_arg = cpus.to_string();
    let socket = socket_path(name);
    let sock = socket.to_str().expect("utf-8 path");
    // Every vmcore (kdump's too) goes to a scratch directory unless the
    // test names one.
    let scratch = tests::scratch_dir(name);
    let dump_dir: &[&str] = if extra.contains(&"--dump-dir") {
        &[]
    } else {
        &["--dump-dir", scratch.to_str().expect("utf-8 path")]
    };
    let mut process = VmmProcess::spawn(
        &[
            "run",
            "--cpus",
            &cpu_arg,
            "--serial",
            "stdio",
            "--on-panic",
            on_panic,
            "--api-socket",
            sock,
            "--cmdline",
            cmdline,
        ]
        .iter()
        .chain(extra)
        .chain(dump_dir)
        .copied()
        .collect::<Vec<_>>(),
    );
    process.wait_for_guest(&summary(cpus));
    let client =
        QmpClient::connect_with_timeout(&socket, Some(DEFAULT_TIMEOUT)).expect("QMP connect");
    Vm {
        process,
        client,
        _socket: socket,
    }
}

impl Vm {
    fn execute(&mut self, command: &str, args: Option<Value>) -> Value {
        self.client
            .execute(command, args)
            .unwrap_or_else(|e| panic!("{command}: {e:?}\n{}", self.process.transcript()))
    }

    fn status(&mut self) -> Value {
        self.execute("query-status", None)
    }

    /// The next event named `name` (others are skipped).
    fn event(&mut self, name: &str) -> EventMessage {
        loop {
            match self.client.next_event() {
                Ok(e) if e.event == name => return e,
                Ok(_) => {}
                Err(e) => panic!(
                    "no {name} event: {e:?}; output:\n{}",
                    self.process.transcript()
                ),
            }
        }
    }

    /// inject-nmi: the guest panics; returns GUEST_PANICKED's data.
    fn panic_guest(&mut self) -> Value {
        self.execute("inject-nmi", None);
        let data = self
            .event("GUEST_PANICKED")
            .data
            .expect("GUEST_PANICKED data");
        let line = self
            .process
            .wait_for_vmm("vmm: pvpanic: PANICKED from vcpu ");
        // "... at 2026-11-23T11:42:01.123Z"
        let at = line.rsplit(" at ").next().expect("timestamp");
        assert!(
            at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
            "{line}"
        );
        data
    }

    fn quit(mut self) -> i32 {
        assert_eq!(self.execute("quit", None), json!({}));
        let code = self.process.wait_exit(DEFAULT_TIMEOUT);
        assert!(
            !self._socket.exists(),
            "the socket outlived the VMM: {}",
            self._socket.display()
        );
        code
    }
}

#[test]
fn none_records_the_panic_and_keeps_running() {
    let mut vm = boot("panic-none", "none", "unknown_nmi_panic");
    assert_eq!(vm.panic_guest(), json!({"action": "run"}));
    // The guest goes on through its panic path after the notifier.
    vm.process.wait_for_guest("Kernel panic - not syncing: NMI");
    vm.process.wait_for_guest("panic: step flush_and_reboot");
    assert_eq!(vm.status()["status"], "running");
    assert_eq!(vm.status()["running"], true);
    assert_eq!(vm.quit(), 0);
}

#[test]
fn pause_stops_the_vcpus_until_a_reset() {
    let mut vm = boot("panic-pause", "pause", "unknown_nmi_panic");
    assert_eq!(vm.panic_guest(), json!({"action": "pause"}));
    vm.event("STOP");
    assert_eq!(
        vm.status(),
        json!({"running": false, "singlestep": false, "status": "guest-panicked"})
    );
    let e = vm.client.execute("cont", None).unwrap_err();
    assert!(format!("{e:?}").contains("reset"), "{e:?}");
    // A reset boots the guest again and runs it.
    vm.execute("system_reset", None);
    let reset = vm.event("RESET").data.expect("RESET data");
    assert_eq!(
        reset,
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    vm.event("RESUME");
    vm.process.wait_for_guest(&summary(2));
    assert_eq!(vm.status()["status"], "running");
    assert_eq!(vm.quit(), 0);
}

#[test]
fn poweroff_exits_zero_after_the_event() {
    let mut vm = boot("panic-poweroff", "poweroff", "unknown_nmi_panic");
    assert_eq!(vm.panic_guest(), json!({"action": "poweroff"}));
    let shutdown = vm.event("SHUTDOWN").data.expect("SHUTDOWN data");
    assert_eq!(shutdown, json!({"guest": true, "reason": "guest-panic"}));
    assert_eq!(vm.process.wait_exit(DEFAULT_TIMEOUT), 0);
}

#[test]
fn exit_failure_exits_four() {
    let mut vm = boot("panic-exit-failure", "exit-failure", "unknown_nmi_panic");
    assert_eq!(vm.panic_guest(), json!({"action": "poweroff"}));
    assert_eq!(vm.process.wait_exit(DEFAULT_TIMEOUT), 4);
    assert!(
        vm.process
            .transcript()
            .contains("guest panicked (panic action exit-failure)"),
        "{}",
        vm.process.transcript()
    );
}

#[test]
fn restart_resets_the_guest() {
    let mut vm = boot("panic-restart", "restart", "unknown_nmi_panic");
    assert_eq!(vm.panic_guest(), json!({"action": "reset"}));
    let reset = vm.event("RESET").data.expect("RESET data");
    assert_eq!(reset, json!({"guest": true, "reason": "guest-panic"}));
    vm.process.wait_for_guest("guest-kernel: PVH boot");
    vm.process.wait_for_guest(&summary(2));
    assert_eq!(vm.status()["status"], "running");
    assert_eq!(vm.quit(), 0);
}

#[test]
fn set_action_changes_the_panic_action_at_runtime() {
    let mut vm = boot("panic-set-action", "poweroff", "unknown_nmi_panic");
    let e = vm
        .client
        .execute("set-action", Some(json!({"panic": "explode"})))
        .unwrap_err();
    match e {
        qmp::ClientError::Command(e) => assert_eq!(e.class, ErrorClass::GenericError),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        vm.execute("set-action", Some(json!({"panic": "coredump-restart"}))),
        json!({})
    );
    assert_eq!(
        vm.execute("set-action", Some(json!({"panic": "pause"}))),
        json!({})
    );
    assert_eq!(vm.panic_guest(), json!({"action": "pause"}));
    assert_eq!(vm.status()["status"], "guest-panicked");
    assert_eq!(vm.quit(), 0);
}

/// A fresh, empty dump directory for one test.
fn dump_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-coredump-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create dump dir");
    dir
}

/// The one vmcore in `dir`, checked: host registers for every vCPU, the
/// guest's VMCOREINFO, and the PANICKED event in the pvpanic note.
fn check_panic_vmcore(dir: &std::path::Path, cpus: usize) {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dump dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    assert_eq!(files.len(), 1, "expected exactly one vmcore: {files:?}");
    let name = files[0].file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(
        name.starts_with("vmcore-") && name.ends_with(".elf"),
        "{name}"
    );
    let core = vmcore::Vmcore::open(&files[0]).expect("open vmcore");
    let report = vmcore::check(&core, &vmcore::CheckOptions::default());
    assert_eq!(report.vcpus.len(), cpus);
    for v in &report.vcpus {
        assert_eq!(
            v.host_note.verdict,
            vmcore::Verdict::Pass,
            "vcpu {}: {:?}",
            v.vcpu,
            v.host_note
        );
    }
    assert!(
        core.vmcoreinfo().is_some(),
        "the guest's registered VMCOREINFO is missing"
    );
    let log = core
        .pvpanic_log()
        .expect("pvpanic note parses")
        .expect("pvpanic note");
    let panicked = u32::from(guest_abi::ports::PVPANIC_PANICKED);
    assert!(
        log.entries.iter().any(|e| e.events == panicked),
        "{:?}",
        log.entries
    );
}

/// Boots 2 vCPUs under a coredump `action` with a fresh dump directory,
/// panics the guest and waits for the VMM to say where the vmcore went.
fn panic_under_coredump(action: &str) -> (Vm, PathBuf) {
    let dir = dump_dir(action);
    let dir_arg = dir.to_str().expect("utf-8 path").to_owned();
    let mut vm = boot_with(
        action,
        2,
        action,
        "unknown_nmi_panic",
        &["--dump-dir", &dir_arg],
    );
    // The guest registers VMCOREINFO after its summary line.
    vm.process.wait_for_guest("vmcoreinfo: note at");
    vm.panic_guest();
    let line = vm.process.wait_for_vmm("vmcore written to");
    assert!(line.contains(&dir_arg), "{line}");
    (vm, dir)
}

#[test]
fn coredump_destroy_writes_a_vmcore_then_exits() {
    let (mut vm, dir) = panic_under_coredump("coredump-destroy");
    assert_eq!(vm.process.wait_exit(DEFAULT_TIMEOUT), 0);
    check_panic_vmcore(&dir, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn coredump_restart_writes_a_vmcore_then_boots_again() {
    let (mut vm, dir) = panic_under_coredump("coredump-restart");
    vm.event("RESET");
    vm.process.wait_for_guest(&summary(2));
    assert_eq!(vm.status()["status"], "running");
    assert_eq!(vm.quit(), 0);
    check_panic_vmcore(&dir, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn crash_loaded_never_stops_the_guest() {
    // With a crash kernel loaded and the notifiers before kdump, the guest
    // reports CRASH_LOADED, then goes on to crash_kexec and the capture
    // kernel (under a `pause` panic action, which CRASH_LOADED must not
    // trigger). The capture kernel halts when done, so the VM stays up.
    // kdump's vmcore goes to a scratch dump directory, not the cwd.
    let dir = dump_dir("crash-loaded");
    let dir_arg = dir.to_str().expect("utf-8 path").to_owned();
    let mut vm = boot_with(
        "crash-loaded",
        2,
        "pause",
        "unknown_nmi_panic crashkernel=16M crash_kexec_post_notifiers kdump_final_action=halt",
        &["--dump-dir", &dir_arg],
    );
    // The guest prepares its elfcorehdr after the summary line; a panic
    // before that never reaches the handover.
    vm.process.wait_for_guest("kexec: elfcorehdr at");
    vm.execute("inject-nmi", None);
    let loaded = vm.event("GUEST_CRASHLOADED");
    assert_eq!(loaded.data, Some(json!({"action": "run"})));
    vm.process
        .wait_for_vmm("vmm: pvpanic: CRASH_LOADED from vcpu ");
    vm.process.wait_for_guest("panic: notifier pvpanic");
    vm.process.wait_for_guest("panic: step crash_kexec");
    // The kdump device accepted the handover: logged and reported.
    let handover = vm.event("KEXEC_HANDOVER").data.expect("data");
    assert_eq!(
        handover["cpu"],
        loaded_cpu(&vm.process.transcript()),
        "{handover}"
    );
    assert!(
        handover["entry"].as_u64().is_some_and(|e| e != 0)
            && handover["elfcorehdr"].as_u64().is_some_and(|e| e != 0),
        "{handover}"
    );
    vm.process
        .wait_for_vmm("vmm: kdump: KEXEC_HANDOVER from vcpu ");
    // The capture kernel ran on, found both CPUs' notes and reported.
    vm.process.wait_for_guest("kdump: 2/2 CPUs saved registers");
    vm.event("VMCORE_READY");
    let written = vm.event("KDUMP_COMPLETED").data.expect("data");
    let path = PathBuf::from(written["path"].as_str().expect("path"));
    assert!(path.starts_with(&dir) && path.exists(), "{written}");
    vm.process.wait_for_guest("kdump: final action halt");
    assert_eq!(vm.status()["status"], "running");
    assert!(
        !vm.process.transcript().contains("GUEST_PANICKED")
            && !vm.process.transcript().contains("PANICKED from"),
        "{}",
        vm.process.transcript()
    );
    assert_eq!(vm.quit(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The vCPU that reported CRASH_LOADED, from the VMM's stderr line.
fn loaded_cpu(transcript: &str) -> Value {
    let line = transcript
        .lines()
        .find(|l| l.contains("vmm: pvpanic: CRASH_LOADED from vcpu "))
        .expect("CRASH_LOADED line");
    let cpu: u64 = line
        .split("from vcpu ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("vcpu number");
    json!(cpu)
}

#[test]
fn pvpanic_shutdown_is_a_poweroff() {
    let mut p = VmmProcess::spawn(&[
        "run",
        "--serial",
        "stdio",
        "--cmdline",
        "post_boot=poweroff",
        "--on-panic",
        "pause",
    ]);
    p.wait_for_guest("pvpanic: events 0x7");
    p.wait_for_vmm("vmm: pvpanic: SHUTDOWN from vcpu 0 at ");
    assert_eq!(p.wait_exit(DEFAULT_TIMEOUT), 0);
}

#[test]
fn the_event_mask_is_what_the_guest_reads() {
    let mut p = VmmProcess::spawn(&[
        "run",
        "--serial",
        "stdio",
        "--cmdline",
        "post_boot=poweroff",
        "--pvpanic-events",
        "0x3",
    ]);
    p.wait_for_guest("pvpanic: events 0x3");
    assert_eq!(p.wait_exit(DEFAULT_TIMEOUT), 0);
    assert!(
        !p.transcript().contains("vmm: pvpanic:"),
        "{}",
        p.transcript()
    );

    let mut p = VmmProcess::spawn(&[
        "run",
        "--serial",
        "stdio",
        "--cmdline",
        "post_boot=poweroff",
        "--pvpanic-events",
        "0",
    ]);
    p.wait_for_guest("pvpanic: no device");
    assert_eq!(p.wait_exit(DEFAULT_TIMEOUT), 0);
}

#[test]
fn the_pvpanic_log_records_the_panicking_vcpu() {
    let mut run = GuestRun::start(VmConfig {
        cpus: 2,
        cmdline: "crash_after_boot=PANIC@1".into(),
        on_panic: qmp::PanicAction::None,
        ..VmConfig::default()
    });
    run.wait_notification("GuestPanicked", DEFAULT_TIMEOUT, |n| {
        matches!(
            n,
            Notification::GuestPanicked {
                action: qmp::PanicAction::None
            }
        )
    });
    let log = run.handle().pvpanic_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!((log[0].seq, log[0].events, log[0].vcpu), (0, 1, 1));
    assert!(log[0].timestamp_ns > 0);
    assert_eq!(run.handle().pvpanic_log_dropped(), 0);
    // Still running: the handle answers and the state is running.
    let status = run.handle().status().expect("status");
    assert_eq!(status.state, vmm::RunState::Running);
    let (reason, _) = run.stop();
    assert_eq!(reason, vmm::ExitReason::Stopped);
}
