//! The QMP conversation over a real socket: greeting, negotiation, ids,
//! every command, and JSON-stream framing.

mod common;

use common::{RawClient, StubServer};
use qmp::{ClientError, ErrorClass, QmpClient, COMMANDS};
use serde_json::{json, Value};

#[test]
fn greeting_has_qemu_shape() {
    let s = StubServer::start();
    let mut c = RawClient::connect(&s.path());
    let g = c.greeting();
    assert_eq!(g["QMP"]["capabilities"], json!([]));
    assert_eq!(
        g["QMP"]["version"]["qemu"],
        json!({"micro": 0, "minor": 2, "major": 7})
    );
    assert_eq!(
        g["QMP"]["version"]["package"],
        json!(format!("vmm {}", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(g.as_object().unwrap().len(), 1);
}

#[test]
fn negotiation_must_come_first() {
    let s = StubServer::start();
    let mut c = RawClient::connect(&s.path());
    c.greeting();
    for msg in [
        json!({"execute": "query-status", "id": 1}),
        json!({"execute": "quit", "id": "x"}),
        json!({"execute": "no-such-command", "id": [2]}),
    ] {
        let r = c.call(&msg);
        assert_eq!(
            r,
            json!({"error": {"class": "CommandNotFound",
                   "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"},
                   "id": msg["id"]})
        );
    }
    // Nothing ran: the VM is still running after the refused quit.
    let r = c.call(&json!({"execute": "qmp_capabilities", "id": 7}));
    assert_eq!(r, json!({"return": {}, "id": 7}));
    let r = c.call(&json!({"execute": "qmp_capabilities", "id": 8}));
    assert_eq!(r["error"]["class"], "CommandNotFound");
    assert_eq!(r["id"], 8);
    assert_eq!(c.execute("query-status", None)["status"], "running");
    let backend = {
        let StubServer { vmm, server, .. } = s;
        drop(server);
        vmm.stop().unwrap()
    };
    assert!(!backend.quit_requested);
}

#[test]
fn ids_are_echoed_on_success_and_error() {
    let s = StubServer::start();
    let mut c = s.client();
    for id in [
        json!(1),
        json!("abc"),
        json!({"k": [1, 2]}),
        json!(null),
        json!(-1.5),
    ] {
        let ok = c.call(&json!({"execute": "query-status", "id": id}));
        assert_eq!(ok["id"], id, "{ok}");
        assert!(ok["return"].is_object());
        let err = c.call(&json!({"execute": "nope", "id": id}));
        assert_eq!(err["id"], id, "{err}");
        assert_eq!(err["error"]["class"], "CommandNotFound");
    }
    let no_id = c.call(&json!({"execute": "query-status"}));
    assert!(no_id.get("id").is_none());
}

#[test]
fn every_command_round_trips() {
    let s = StubServer::start_with_vcpus(3);
    let mut c = s.client();

    let names: Vec<Value> = c
        .execute("query-commands", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, COMMANDS.iter().map(|n| json!(n)).collect::<Vec<_>>());

    let v = c.execute("query-version", None);
    assert_eq!(v["qemu"]["major"], 7);

    assert_eq!(
        c.execute("query-status", None),
        json!({"running": true, "singlestep": false, "status": "running"})
    );
    let cpus = c.execute("query-cpus-fast", None);
    assert_eq!(cpus.as_array().unwrap().len(), 3);
    assert_eq!(
        cpus[2],
        json!({"cpu-index": 2, "qom-path": "/machine/cpu[2]", "thread-id": 1002,
               "target": "x86_64", "props": {"socket-id": 0, "core-id": 2, "thread-id": 0}})
    );

    assert_eq!(c.execute("stop", None), json!({}));
    assert_eq!(c.event()["event"], "STOP");
    assert_eq!(c.execute("query-status", None)["status"], "paused");
    assert_eq!(c.execute("cont", None), json!({}));
    assert_eq!(c.event()["event"], "RESUME");
    assert_eq!(c.execute("query-status", None)["running"], true);

    assert_eq!(c.execute("system_reset", None), json!({}));
    let e = c.event();
    assert_eq!(e["event"], "RESET");
    assert_eq!(
        e["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    assert_eq!(c.execute("system_powerdown", None), json!({}));
    assert_eq!(c.event()["event"], "POWERDOWN");
    assert_eq!(c.execute("inject-nmi", None), json!({}));
    assert_eq!(c.event()["data"], json!({"cpus": [0, 1, 2]}));

    assert_eq!(
        c.execute(
            "set-action",
            Some(json!({"panic": "pause", "reboot": "reset"}))
        ),
        json!({})
    );
    let err = c.error("set-action", Some(json!({"watchdog": "pause"})));
    assert_eq!(err["class"], "GenericError");
    let err = c.error("set-action", Some(json!({"panic": "explode"})));
    assert_eq!(err["class"], "GenericError");

    let err = c.error(
        "dump-guest-memory",
        Some(json!({"paging": false, "protocol": "file:/tmp/vmcore"})),
    );
    assert_eq!(err["class"], "GenericError");
    assert!(
        err["desc"].as_str().unwrap().contains("not available"),
        "{err}"
    );
    assert_eq!(c.error("query-dump", None)["class"], "GenericError");

    assert_eq!(
        c.execute("query-crash-types", None),
        json!([{"name": "panic", "description": "the guest calls panic()"}])
    );
    assert_eq!(
        c.error("x-inject-crash", Some(json!({"type": "panic", "cpu": 9})))["class"],
        "DeviceNotFound"
    );
    assert_eq!(
        c.execute("x-inject-crash", Some(json!({"type": "panic", "cpu": 1}))),
        json!({})
    );
    let e = c.event();
    assert_eq!(
        (e["event"].as_str(), &e["data"]),
        (Some("GUEST_PANICKED"), &json!({"action": "pause"}))
    );
    assert_eq!(c.event()["event"], "STOP");
    assert_eq!(c.execute("query-status", None)["status"], "guest-panicked");
    assert_eq!(c.error("cont", None)["class"], "GenericError");

    assert_eq!(c.execute("quit", None), json!({}));
    let e = c.event();
    assert_eq!(e["event"], "SHUTDOWN");
    assert_eq!(
        e["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    let ts = &e["timestamp"];
    assert!(ts["seconds"].as_u64().unwrap() > 1_600_000_000);
    assert!(ts["microseconds"].as_u64().unwrap() < 1_000_000);

    let StubServer { vmm, server, .. } = s;
    drop(server);
    assert!(vmm.stop().unwrap().quit_requested);
}

#[test]
fn messages_may_be_split_or_packed() {
    let s = StubServer::start();
    let mut c = RawClient::connect(&s.path());
    c.greeting();
    // Two commands on one line, no separator, the second split mid-token.
    c.send(r#"{"execute":"qmp_capabilities","id":1}{"execute":"query-st"#);
    assert_eq!(c.read(), json!({"return": {}, "id": 1}));
    c.send("atus\",\n\"id\":\n2}   {\"execute\": \"query-version\", \"id\": 3}\n");
    assert_eq!(c.read()["id"], 2);
    assert_eq!(c.read()["id"], 3);
    // Byte by byte.
    for b in br#"{"execute": "query-status", "id": "bytes"}"# {
        c.send([*b]);
    }
    let r = c.read();
    assert_eq!(r["id"], "bytes");
    assert_eq!(r["return"]["status"], "running");
}

#[test]
fn library_client_executes_and_gets_events() {
    let s = StubServer::start();
    let mut client = QmpClient::connect_with_timeout(s.path(), Some(common::READ_TIMEOUT)).unwrap();
    assert!(client.greeting()["QMP"].is_object());
    assert_eq!(
        client.execute("query-status", None).unwrap()["status"],
        "running"
    );
    match client.execute("frobnicate", None) {
        Err(ClientError::Command(e)) => assert_eq!(e.class, ErrorClass::CommandNotFound),
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    // STOP arrives before stop's reply and is kept for next_event.
    client.execute("stop", None).unwrap();
    s.events.emit_raw("CUSTOM", Some(json!({"n": 1})));
    let mut events = client.events();
    assert_eq!(events.next().unwrap().unwrap().event, "STOP");
    let custom = events.next().unwrap().unwrap();
    assert_eq!(
        (custom.event.as_str(), custom.data),
        ("CUSTOM", Some(json!({"n": 1})))
    );
    drop(s);
    assert!(
        client.events().next().is_none(),
        "events end when the server goes"
    );
}
