//! The QMP control socket of the real `vmm` binary, driving the real guest:
//! commands, events, `vmm ctl`, and hostile input.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use qmp::{ClientError, ErrorClass};
use serde_json::{json, Value};
use tests::{
    next_event, qmp_connect, socket_path, summary, vmm_binary, VmmProcess, DEFAULT_TIMEOUT,
};

fn start(name: &str, cpus: &str, cmdline: &str) -> (VmmProcess, PathBuf) {
    let socket = socket_path(name);
    let mut process = VmmProcess::spawn(&[
        "run",
        "--cpus",
        cpus,
        "--serial",
        "stdio",
        "--api-socket",
        socket.to_str().expect("utf-8 path"),
        "--cmdline",
        cmdline,
    ]);
    process.wait_for_guest(&summary(cpus.parse().expect("cpu count")));
    (process, socket)
}

fn command_error(result: Result<Value, ClientError>) -> qmp::CommandError {
    match result {
        Err(ClientError::Command(e)) => e,
        other => panic!("expected a QMP error, got {other:?}"),
    }
}

#[test]
fn commands_and_events_against_the_real_guest() {
    let (mut vm, socket) = start("commands", "2", "");
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let mut c = qmp_connect(&socket);
    assert_eq!(c.greeting()["QMP"]["capabilities"], json!([]));

    let version = c.execute("query-version", None).unwrap();
    assert!(version["qemu"]["major"].is_u64(), "{version}");
    let commands = c.execute("query-commands", None).unwrap();
    for name in [
        "query-status",
        "query-cpus-fast",
        "stop",
        "cont",
        "system_reset",
        "system_powerdown",
        "quit",
        "inject-nmi",
        "set-action",
        "x-inject-crash",
        "query-crash-types",
    ] {
        assert!(
            commands
                .as_array()
                .expect("array")
                .iter()
                .any(|c| c["name"] == name),
            "{name} missing from {commands}"
        );
    }

    // Real vCPU thread ids: tasks of the vmm process.
    let cpus = c.execute("query-cpus-fast", None).unwrap();
    let cpus = cpus.as_array().expect("array");
    assert_eq!(cpus.len(), 2);
    for (i, cpu) in cpus.iter().enumerate() {
        assert_eq!(cpu["cpu-index"], i);
        let tid = cpu["thread-id"].as_u64().expect("thread-id");
        let task = format!("/proc/{}/task/{tid}", vm.pid());
        assert!(Path::new(&task).exists(), "{task} missing");
    }

    assert_eq!(c.execute("stop", None).unwrap(), json!({}));
    next_event(&mut c, "STOP");
    assert_eq!(
        c.execute("query-status", None).unwrap(),
        json!({"running": false, "singlestep": false, "status": "paused"})
    );
    c.execute("cont", None).unwrap();
    next_event(&mut c, "RESUME");
    assert_eq!(
        c.execute("query-status", None).unwrap()["status"],
        "running"
    );

    // Without unknown_nmi_panic the guest logs the NMI and carries on.
    c.execute("inject-nmi", None).unwrap();
    let nmi = next_event(&mut c, "NMI");
    assert_eq!(nmi.data, Some(json!({"cpus": [0, 1]})));
    vm.wait_for_guest("Uhhuh. NMI received for unknown reason");
    assert_eq!(
        c.execute("query-status", None).unwrap()["status"],
        "running"
    );

    // The guest has no SCI handler: POWERDOWN, and it keeps running.
    c.execute("system_powerdown", None).unwrap();
    next_event(&mut c, "POWERDOWN");
    assert_eq!(
        c.execute("query-status", None).unwrap()["status"],
        "running"
    );

    let types = c.execute("query-crash-types", None).unwrap();
    assert!(
        types
            .as_array()
            .expect("array")
            .iter()
            .any(|t| t["name"] == "PANIC"),
        "{types}"
    );
    let e = command_error(c.execute("x-inject-crash", Some(json!({"type": "nope"}))));
    assert_eq!(e.class, ErrorClass::GenericError);
    assert!(
        e.desc.contains("PANIC") && e.desc.contains("BUG"),
        "{}",
        e.desc
    );
    let e = command_error(c.execute("x-inject-crash", Some(json!({"type": "PANIC", "cpu": 9}))));
    assert!(e.desc.contains("0-1"), "{}", e.desc);

    // dump-guest-memory writes a vmcore (blocking, as in QEMU), query-dump
    // reports it, and what this VMM cannot do is refused clearly.
    let path = std::env::temp_dir().join(format!("vmm-qmp-dump-{}.elf", std::process::id()));
    let protocol = format!("file:{}", path.display());
    c.execute(
        "dump-guest-memory",
        Some(json!({"paging": true, "protocol": protocol})),
    )
    .expect("dump-guest-memory");
    let done = next_event(&mut c, "DUMP_COMPLETED");
    assert_eq!(
        done.data.as_ref().map(|d| &d["result"]["status"]),
        Some(&json!("completed"))
    );
    let q = c.execute("query-dump", None).expect("query-dump");
    assert_eq!(q["status"], "completed");
    assert!(
        q["total"].as_u64().unwrap_or(0) > 0 && q["completed"] == q["total"],
        "{q}"
    );
    let core = vmcore::Vmcore::open(&path).expect("the dump is a vmcore");
    assert_eq!(core.host_cpus().len(), 2);
    let _ = std::fs::remove_file(&path);
    let e = command_error(c.execute(
        "dump-guest-memory",
        Some(json!({"paging": false, "protocol": "fd:nope"})),
    ));
    assert!(e.desc.contains("getfd"), "{}", e.desc);
    let e = command_error(c.execute(
        "dump-guest-memory",
        Some(json!({"paging": false, "protocol": "file:/tmp/x", "format": "kdump-zlib"})),
    ));
    assert!(e.desc.contains("elf"), "{}", e.desc);
    // The guest runs again after a blocking dump.
    assert_eq!(
        c.execute("query-status", None).expect("status")["status"],
        "running"
    );

    c.execute("system_reset", None).unwrap();
    let reset = next_event(&mut c, "RESET");
    assert_eq!(
        reset.data,
        Some(json!({"guest": false, "reason": "host-qmp-system-reset"}))
    );
    vm.wait_for_guest("guest-kernel: PVH boot");
    vm.wait_for_guest(&summary(2));

    assert_eq!(c.execute("quit", None).unwrap(), json!({}));
    let shutdown = next_event(&mut c, "SHUTDOWN");
    assert_eq!(
        shutdown.data,
        Some(json!({"guest": false, "reason": "host-qmp-quit"}))
    );
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT), 0);
    assert!(!socket.exists());
}

#[test]
fn x_inject_crash_panics_the_chosen_cpu() {
    let socket = socket_path("inject-crash");
    let mut vm = VmmProcess::spawn(&[
        "run",
        "--cpus",
        "2",
        "--serial",
        "stdio",
        "--on-panic",
        "pause",
        "--api-socket",
        socket.to_str().expect("utf-8"),
    ]);
    vm.wait_for_guest(&summary(2));
    let mut c = qmp_connect(&socket);
    c.execute("x-inject-crash", Some(json!({"type": "panic", "cpu": 1})))
        .unwrap();
    let ack = next_event(&mut c, "CRASH_ACK");
    assert_eq!(ack.data.expect("data")["cpu"], 1);
    let panicked = next_event(&mut c, "GUEST_PANICKED");
    assert_eq!(panicked.data, Some(json!({"action": "pause"})));
    vm.wait_for_vmm("vmm: pvpanic: PANICKED from vcpu 1 at ");
    let quit = c.execute("quit", None);
    let code = vm.wait_exit(DEFAULT_TIMEOUT);
    assert!(
        quit.is_ok(),
        "quit: {quit:?}; vmm exit {code}; output:\n{}",
        vm.transcript()
    );
    assert_eq!(code, 0);
}

fn ctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(vmm_binary())
        .arg("ctl")
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running vmm ctl");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn vmm_ctl_runs_commands_and_prints_events() {
    let (mut vm, socket) = start("ctl", "1", "");
    let (code, out, err) = ctl(&socket, &["query-status"]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(out.trim()).expect("JSON reply");
    assert_eq!(status["status"], "running");

    let (code, _, err) = ctl(&socket, &["no-such-command"]);
    assert_eq!(code, 1);
    assert!(err.contains("CommandNotFound"), "{err}");
    let (code, _, err) = ctl(&socket, &["set-action", r#"{"panic": "explode"}"#]);
    assert_eq!(code, 1);
    assert!(err.contains("GenericError"), "{err}");
    let (code, out, err) = ctl(&socket, &["set-action", r#"{"panic": "none"}"#]);
    assert_eq!((code, out.trim()), (0, "{}"), "{err}");

    // `events` prints each event as one JSON line until the VMM goes.
    let mut events = Command::new(vmm_binary())
        .arg("ctl")
        .arg("--api-socket")
        .arg(&socket)
        .arg("events")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("vmm ctl events");
    let stdout = events.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The listener may not have negotiated yet: stop and resume until it
    // prints something (waiting on its output, with a deadline).
    let mut c = qmp_connect(&socket);
    let deadline = std::time::Instant::now() + DEFAULT_TIMEOUT;
    let first = loop {
        c.execute("stop", None).unwrap();
        c.execute("cont", None).unwrap();
        match rx.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(line) => break line,
            Err(_) => assert!(
                std::time::Instant::now() < deadline,
                "vmm ctl events printed nothing"
            ),
        }
    };
    let first: Value = serde_json::from_str(&first).expect("JSON");
    // STOP or RESUME, or VMCOREINFO if the guest registers it just now.
    assert!(
        matches!(
            first["event"].as_str(),
            Some("STOP" | "RESUME" | "VMCOREINFO")
        ),
        "{first}"
    );
    assert!(first["timestamp"]["seconds"].is_u64(), "{first}");
    c.execute("quit", None).unwrap();
    // Then everything until the socket closes, each line one JSON event.
    let rest: Vec<Value> = rx
        .iter()
        .map(|l| serde_json::from_str(&l).expect("JSON"))
        .collect();
    assert_eq!(
        rest.last().map(|e| e["event"].clone()),
        Some(json!("SHUTDOWN")),
        "{rest:?}"
    );
    assert!(events.wait().expect("wait").success());
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT), 0);
}

/// Bad messages, each a complete JSON text (or a frame the server
/// delimits), none of which may close the connection.
fn bad_messages() -> Vec<String> {
    let mut out: Vec<String> = [
        r#"{"execute": }"#,
        r#"{"execute" "stop"}"#,
        "{,}",
        r#"{"a":1,}"#,
        "[1,]",
        "{'execute': 'stop'}",
        r#"{"execute": tru}"#,
        r#"{"execute": 01}"#,
        r#"{"execute": "\q"}"#,
        r#"{"execute": "stop" "id": 1}"#,
        r#"{{"execute": "stop"}}"#,
        r#"{"execute": NaN}"#,
        r#"{:}"#,
        "[]",
        "[1, 2, 3]",
        r#""a string""#,
        "42",
        "-1.5e3",
        "true",
        "null",
        "{}",
        r#"{"id": 5}"#,
        r#"{"arguments": {}}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let kinds = [
        json!(null),
        json!(1),
        json!(-7),
        json!(1.5),
        json!(true),
        json!("x"),
        json!([]),
        json!({}),
        json!(["stop"]),
        json!({"a": 1}),
    ];
    // `execute` of every wrong type.
    for (i, k) in kinds.iter().enumerate() {
        if !k.is_string() {
            out.push(json!({"execute": k, "id": i}).to_string());
        }
    }
    // Unknown commands.
    for i in 0..40 {
        out.push(json!({"execute": format!("no-such-command-{i}"), "id": i}).to_string());
    }
    for name in [
        "",
        " ",
        "STOP",
        "query_status",
        "query-status ",
        "\u{e9}t\u{e9}",
    ] {
        out.push(json!({"execute": name}).to_string());
    }
    // `arguments` of every wrong type, for commands with and without arguments.
    for cmd in [
        "query-status",
        "stop",
        "set-action",
        "x-inject-crash",
        "inject-nmi",
    ] {
        for k in &kinds {
            if !k.is_object() {
                out.push(json!({"execute": cmd, "arguments": k}).to_string());
            }
        }
    }
    // Unknown arguments.
    for (i, cmd) in [
        "query-status",
        "stop",
        "cont",
        "query-cpus-fast",
        "inject-nmi",
    ]
    .iter()
    .enumerate()
    {
        out.push(json!({"execute": cmd, "arguments": {"bogus": i}}).to_string());
    }
    // Bad argument values (null counts as absent for optional members).
    for k in kinds.iter().filter(|k| !k.is_null()) {
        out.push(json!({"execute": "set-action", "arguments": {"panic": k}}).to_string());
        out.push(json!({"execute": "set-action", "arguments": {"reboot": k}}).to_string());
        out.push(json!({"execute": "x-inject-crash", "arguments": {"type": k}}).to_string());
        out.push(
            json!({"execute": "x-inject-crash", "arguments": {"type": "PANIC", "cpu": k}})
                .to_string(),
        );
    }
    for action in ["explode", "coredump", "coredump-now", "PAUSE", ""] {
        out.push(json!({"execute": "set-action", "arguments": {"panic": action}}).to_string());
    }
    out.push(json!({"execute": "set-action", "arguments": {"watchdog": "pause"}}).to_string());
    out.push(json!({"execute": "set-action", "arguments": {"shutdown": "pause"}}).to_string());
    for cpu in [2u64, 255, 4096, u64::from(u32::MAX)] {
        out.push(
            json!({"execute": "x-inject-crash", "arguments": {"type": "BUG", "cpu": cpu}})
                .to_string(),
        );
    }
    out.push(
        json!({"execute": "x-inject-crash", "arguments": {"type": "PANIC_ALL", "cpu": 0}})
            .to_string(),
    );
    // Every kind of id on a command that fails, and bogus argument values.
    for k in &kinds {
        out.push(json!({"execute": "no-such-command", "id": k}).to_string());
        out.push(json!({"execute": "cont", "arguments": {"x": k}}).to_string());
    }
    // Nesting, big numbers, missing required arguments.
    for depth in [1, 10, 100, 300] {
        out.push(format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
        out.push(format!(
            r#"{{"execute": "stop", "arguments": {{"a": {}{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        ));
    }
    out.push(r#"{"execute": 1e999}"#.to_string());
    out.push(
        r#"{"execute": "x-inject-crash", "arguments": {"cpu": 99999999999999999999}}"#.to_string(),
    );
    out.push(json!({"execute": "x-inject-crash", "arguments": {}}).to_string());
    out.push(json!({"execute": "x-inject-crash"}).to_string());
    out.push(json!({"execute": "dump-guest-memory", "arguments": {}}).to_string());
    out.push(
        json!({"execute": "dump-guest-memory", "arguments": {"paging": "no", "protocol": 1}})
            .to_string(),
    );
    // Extra top-level members and a repeated capabilities negotiation.
    out.push(json!({"execute": "query-status", "extra": 1}).to_string());
    out.push(json!({"execute": "qmp_capabilities"}).to_string());
    out.push(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}).to_string());
    out.push(json!({"exec-oob": "query-status"}).to_string());
    out
}

#[test]
fn a_thousand_bad_messages_are_each_answered() {
    let (mut vm, socket) = start("bad-input", "1", "");
    let kinds = bad_messages();
    assert!(kinds.len() >= 200, "only {} bad messages", kinds.len());
    // 1,000 in all: the kinds over and over.
    let messages: Vec<String> = kinds.iter().cycle().take(1000).cloned().collect();

    let stream = UnixStream::connect(&socket).expect("connect");
    stream
        .set_read_timeout(Some(DEFAULT_TIMEOUT))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let read = |reader: &mut BufReader<UnixStream>| -> Value {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("reply in time");
        assert!(n > 0, "the VMM closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
    };
    assert!(read(&mut reader).get("QMP").is_some());
    writer
        .write_all(b"{\"execute\": \"qmp_capabilities\"}\r\n")
        .expect("write");
    assert_eq!(read(&mut reader), json!({"return": {}}));

    for (i, message) in messages.iter().enumerate() {
        writer
            .write_all(format!("{message}\r\n").as_bytes())
            .expect("write");
        let reply = loop {
            let v = read(&mut reader);
            if v.get("event").is_none() {
                break v;
            }
        };
        let is_error = reply.get("error").is_some_and(|e| {
            e["class"].is_string() && e["desc"].as_str().is_some_and(|d| !d.is_empty())
        });
        // A repeated negotiation is an error in QEMU too; only a command
        // that is well-formed after all may succeed.
        assert!(
            is_error || message.contains("\"extra\""),
            "message {i} {message:?} got {reply}"
        );
    }
    writer
        .write_all(b"{\"execute\": \"query-status\", \"id\": \"last\"}\r\n")
        .expect("write");
    let last = read(&mut reader);
    assert_eq!(last["id"], "last", "{last}");
    assert_eq!(last["return"]["status"], "running", "{last}");
    // And the VMM itself is still fine for another client.
    let mut c = qmp_connect(&socket);
    c.execute("quit", None).unwrap();
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT), 0);
}

#[test]
fn a_live_socket_is_refused_and_a_dead_one_replaced() {
    let (mut first, socket) = start("stale", "1", "");
    let sock = socket.to_str().expect("utf-8");
    let mut second = VmmProcess::spawn(&["run", "--serial", "null", "--api-socket", sock]);
    assert_eq!(second.wait_exit(DEFAULT_TIMEOUT), 2);
    assert!(
        second.transcript().contains("cannot serve QMP"),
        "{}",
        second.transcript()
    );
    let mut c = qmp_connect(&socket);
    assert_eq!(
        c.execute("query-status", None).unwrap()["status"],
        "running"
    );
    c.execute("quit", None).unwrap();
    assert_eq!(first.wait_exit(DEFAULT_TIMEOUT), 0);

    // A socket file nobody listens on any more is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let mut third = VmmProcess::spawn(&["run", "--serial", "stdio", "--api-socket", sock]);
    third.wait_for_guest(&summary(1));
    let mut c = qmp_connect(&socket);
    c.execute("quit", None).unwrap();
    assert_eq!(third.wait_exit(DEFAULT_TIMEOUT), 0);
}

#[test]
fn a_client_that_never_reads_does_not_stall_the_others() {
    let (mut vm, socket) = start("never-reads", "1", "");
    // Negotiated, so events are queued for it; it never reads a byte.
    let mut lazy = UnixStream::connect(&socket).expect("connect");
    lazy.write_all(b"{\"execute\": \"qmp_capabilities\"}\r\n")
        .expect("write");
    let mut c = qmp_connect(&socket);
    // Every stop/cont pair is two events for the lazy client: far more
    // than its queue holds.
    let mut worst = std::time::Duration::ZERO;
    for _ in 0..3000 {
        for cmd in ["stop", "cont"] {
            let t = std::time::Instant::now();
            c.execute(cmd, None).expect(cmd);
            worst = worst.max(t.elapsed());
        }
    }
    eprintln!("6000 stop/cont with a client that never reads: worst reply {worst:?}");
    assert!(
        worst < std::time::Duration::from_secs(2),
        "worst reply {worst:?}"
    );
    // Its socket buffer and then its queue (qmp::CLIENT_QUEUE_LEN) filled
    // up, so the VMM disconnected it: reading drains what was sent, then
    // EOF (a read timeout here would mean it was still attached).
    lazy.set_read_timeout(Some(DEFAULT_TIMEOUT))
        .expect("timeout");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut lazy, &mut got).expect("EOF: the lazy client was dropped");
    assert!(!got.is_empty(), "nothing was sent before the disconnect");
    eprintln!("the lazy client got {} bytes, then EOF", got.len());
    // Another client is served, and quit ends the VMM cleanly.
    let mut other = qmp_connect(&socket);
    let st = other.execute("query-status", None).expect("query-status");
    assert_eq!(st["status"], "running", "{st}");
    other.execute("quit", None).expect("quit");
    assert_eq!(vm.wait_exit(DEFAULT_TIMEOUT), 0);
    drop(lazy);
}
