//! Hostile input: every bad message is answered and the connection stays
//! usable; only an oversize message closes it.

mod common;

use std::io::Write;

use common::{RawClient, StubServer};
use qmp::{COMMANDS, MAX_MESSAGE_BYTES};
use serde_json::{json, Value};

/// A bad message and the id its error reply must carry.
struct Bad {
    bytes: Vec<u8>,
    id: Option<Value>,
}

fn bad(text: &str) -> Bad {
    Bad {
        bytes: text.as_bytes().to_vec(),
        id: None,
    }
}

fn bad_with_id(message: Value) -> Bad {
    Bad {
        bytes: message.to_string().into_bytes(),
        id: message.get("id").cloned(),
    }
}

fn bad_messages() -> Vec<Bad> {
    let mut out = Vec::new();
    // Broken JSON whose brackets still balance (so it ends where it should).
    for text in [
        r#"{"execute": }"#,
        r#"{"execute" "stop"}"#,
        "{,}",
        r#"{"a":1,}"#,
        "[1,]",
        "{'execute': 'stop'}",
        r#"{"execute": "stop"]"#,
        r#"{"execute": tru}"#,
        r#"{"execute": nul}"#,
        r#"{"execute": 01}"#,
        r#"{"execute": "\x"}"#,
        r#"{"execute": "\u12"}"#,
        "{\"execute\": \"a\tb\"}",
        r#"{"execute": "stop" "id": 1}"#,
        r#"{"execute": [}"#,
        r#"{{"execute": "stop"}}"#,
        r#"{"execute": -}"#,
        r#"{"execute": 1e}"#,
        r#"{"execute": .5}"#,
        r#"{"execute": +1}"#,
        r#"{"execute": NaN}"#,
        r#"{"execute": "stop",, "id": 1}"#,
        r#"{:}"#,
        r#"{"id"}"#,
    ] {
        out.push(bad(text));
    }
    // Nested deeper than the parser's recursion limit.
    out.push(bad(&format!("{}{}", "[".repeat(300), "]".repeat(300))));
    out.push(bad(&format!(
        "{}{}",
        "{\"a\":".repeat(200),
        "}".repeat(200)
    )));
    out.push(Bad {
        bytes: b"{\"execute\": \"\xff\xfe\"}".to_vec(),
        id: None,
    });
    out.push(Bad {
        bytes: b"{\"execute\": \"stop\", \"id\": \"\xc3\"}".to_vec(),
        id: None,
    });
    // Valid JSON that is not an object, and top-level garbage.
    for text in [
        "1",
        "-5",
        "1e400",
        "true",
        "false",
        "null",
        "\"stop\"",
        "[]",
        "[{\"execute\":\"stop\"}]",
        "}",
        "]",
        "abc",
        ",",
        ":",
        "execute",
        "0x10",
        "'stop'",
    ] {
        out.push(bad(text));
    }
    // Objects with a wrong structure; ids of every JSON type are echoed.
    let ids = [
        json!(1),
        json!("s"),
        json!(null),
        json!([1, {"a": 2}]),
        json!({"x": false}),
    ];
    for id in &ids {
        for message in [
            json!({"id": id}),
            json!({"execute": 1, "id": id}),
            json!({"execute": null, "id": id}),
            json!({"execute": ["stop"], "id": id}),
            json!({"execute": {"a": 1}, "id": id}),
            json!({"execute": true, "id": id}),
            json!({"execute": "stop", "arguments": [], "id": id}),
            json!({"execute": "stop", "arguments": "x", "id": id}),
            json!({"execute": "stop", "arguments": 1, "id": id}),
            json!({"execute": "stop", "arguments": null, "id": id}),
            json!({"execute": "stop", "foo": 1, "id": id}),
            json!({"execute": "stop", "exec-oob": "stop", "id": id}),
            json!({"exec-oob": "stop", "id": id}),
        ] {
            out.push(bad_with_id(message));
        }
    }
    out.push(bad("{}"));
    // Unknown commands.
    for name in [
        "stopp",
        "STOP",
        "query-kvm",
        "human-monitor-command",
        "device_add",
        "",
        " stop",
        "stop ",
        "query_status",
        "qmp-capabilities",
        "x-inject-crash\u{0}",
        "quit\n",
        "🦀",
    ] {
        out.push(bad_with_id(
            json!({"execute": name, "id": format!("unknown-{name}")}),
        ));
    }
    // Real QEMU commands this VMM doesn't implement.
    for (i, name) in [
        "query-cpus",
        "query-block",
        "query-kvm",
        "system_wakeup",
        "migrate",
        "query-migrate",
        "balloon",
        "screendump",
        "getfd",
        "closefd",
        "query-name",
        "query-uuid",
        "query-chardev",
        "device_del",
        "object-add",
        "qom-list",
        "qom-get",
        "query-hotpluggable-cpus",
        "query-machines",
        "query-target",
    ]
    .into_iter()
    .enumerate()
    {
        out.push(bad_with_id(json!({"execute": name, "id": i})));
    }
    // Every command with an argument it doesn't have.
    for (i, name) in COMMANDS.iter().enumerate() {
        out.push(bad_with_id(
            json!({"execute": name, "arguments": {"bogus": 1}, "id": i}),
        ));
        out.push(bad_with_id(
            json!({"execute": name, "arguments": {"": null}, "id": i}),
        ));
    }
    // Wrong types and values for the arguments that exist.
    for args in [
        json!({"panic": 1}),
        json!({"panic": "explode"}),
        json!({"panic": []}),
        json!({"panic": {}}),
        json!({"panic": "PAUSE"}),
        json!({"reboot": "x"}),
        json!({"reboot": "pause"}),
        json!({"shutdown": 3}),
        json!({"shutdown": "reset"}),
        json!({"watchdog": "x"}),
        json!({"watchdog": "pause"}),
    ] {
        out.push(bad_with_id(
            json!({"execute": "set-action", "arguments": args, "id": "sa"}),
        ));
    }
    for args in [
        json!({}),
        json!({"paging": false}),
        json!({"protocol": "file:/tmp/x"}),
        json!({"paging": "no", "protocol": "file:/tmp/x"}),
        json!({"paging": false, "protocol": 7}),
        json!({"paging": false, "protocol": "tcp:host"}),
        json!({"paging": false, "protocol": "file:"}),
        json!({"paging": false, "protocol": "file:/x", "begin": 0}),
        json!({"paging": false, "protocol": "file:/x", "length": 0}),
        json!({"paging": false, "protocol": "file:/x", "begin": -1, "length": 1}),
        json!({"paging": false, "protocol": "file:/x", "format": "zip"}),
        json!({"paging": false, "protocol": "file:/x", "detach": "yes"}),
        // Well-formed, but the stub backend has no vmcore support.
        json!({"paging": false, "protocol": "file:/x"}),
        json!({"paging": true, "protocol": "fd:dumpfd", "format": "kdump-zlib"}),
    ] {
        out.push(bad_with_id(
            json!({"execute": "dump-guest-memory", "arguments": args, "id": "dgm"}),
        ));
    }
    for args in [
        json!({}),
        json!({"type": 1}),
        json!({"type": null}),
        json!({"type": "panic", "cpu": -1}),
        json!({"type": "panic", "cpu": "0"}),
        json!({"type": "panic", "cpu": 1.5}),
        json!({"type": "panic", "cpu": 99}),
        json!({"type": "nope"}),
        json!({"cpu": 0}),
    ] {
        out.push(bad_with_id(
            json!({"execute": "x-inject-crash", "arguments": args, "id": "xic"}),
        ));
    }
    for args in [
        json!({"enable": "oob"}),
        json!({"enable": [1]}),
        json!({"enable": ["oob"]}),
        json!({"enable": ["x"]}),
        json!({}),
    ] {
        // After negotiation every qmp_capabilities is an error.
        out.push(bad_with_id(
            json!({"execute": "qmp_capabilities", "arguments": args, "id": "cap"}),
        ));
    }
    out.push(bad_with_id(json!({"execute": "query-dump", "id": "qd"})));
    out
}

#[test]
fn hundreds_of_bad_messages_are_all_answered() {
    let s = StubServer::start();
    let mut c = s.client();
    let messages = bad_messages();
    assert!(
        messages.len() >= 200,
        "only {} bad messages",
        messages.len()
    );

    // Pre-negotiation garbage on a second client is answered too.
    let mut fresh = RawClient::connect(&s.path());
    fresh.greeting();

    for (n, message) in messages.iter().enumerate() {
        // Alternate packing: some messages share a write, separated by
        // newlines; others are sent alone.
        let mut bytes = message.bytes.clone();
        bytes.push(b'\n');
        c.send(&bytes);
        if n % 3 == 0 {
            fresh.send(&bytes);
            let r = fresh.read();
            assert!(
                r.get("error").is_some(),
                "pre-negotiation #{n} {:?}: {r}",
                message.bytes
            );
        }
    }
    for (n, message) in messages.iter().enumerate() {
        let reply = c.read();
        let shown = String::from_utf8_lossy(&message.bytes);
        assert!(reply.get("event").is_none(), "#{n} {shown}: event {reply}");
        let error = reply
            .get("error")
            .unwrap_or_else(|| panic!("#{n} {shown}: no error in {reply}"));
        let class = error["class"].as_str().unwrap();
        assert!(
            ["GenericError", "CommandNotFound", "DeviceNotFound"].contains(&class),
            "#{n} {shown}: class {class}"
        );
        assert!(!error["desc"].as_str().unwrap().is_empty());
        assert_eq!(
            reply.get("id"),
            message.id.as_ref(),
            "#{n} {shown}: {reply}"
        );
    }
    assert_eq!(
        c.execute("query-status", None),
        json!({"running": true, "singlestep": false, "status": "running"})
    );
    fresh.negotiate();
    assert_eq!(fresh.execute("query-status", None)["status"], "running");
    // Nothing above changed the VM: the panic action is still the default.
    let StubServer { server, vmm, .. } = s;
    drop(server);
    assert_eq!(vmm.stop().unwrap().panic_action, qmp::PanicAction::Pause);
}

#[test]
fn a_big_but_legal_message_is_fine() {
    let s = StubServer::start();
    let mut c = s.client();
    let pad = "p".repeat(MAX_MESSAGE_BYTES - 100);
    let r = c.call(&json!({"execute": "query-status", "id": pad}));
    assert_eq!(r["return"]["status"], "running");
    assert_eq!(r["id"].as_str().map(str::len), Some(pad.len()));
}

#[test]
fn an_oversize_message_gets_an_error_then_the_connection_closes() {
    let s = StubServer::start();
    for opening in [
        &b"{\"execute\": \"stop\", \"id\": \""[..],
        b"[[[[",
        b"\"",
        b"1234",
    ] {
        let mut c = s.client();
        let mut stream = c.stream.try_clone().unwrap();
        let opening = opening.to_vec();
        let writer = std::thread::spawn(move || {
            // The server may close before everything is written: EPIPE is fine.
            let _ = stream.write_all(&opening);
            let chunk = vec![b'7'; 64 * 1024];
            for _ in 0..(2 * MAX_MESSAGE_BYTES / chunk.len()) {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let r = c.read();
        assert_eq!(r["error"]["class"], "GenericError", "{r}");
        assert!(
            r["error"]["desc"].as_str().unwrap().contains("1048576"),
            "{r}"
        );
        assert_eq!(c.line(), None, "connection still open after the error");
        writer.join().unwrap();
    }
    // The server is fine.
    assert_eq!(s.client().execute("query-status", None)["running"], true);
}
