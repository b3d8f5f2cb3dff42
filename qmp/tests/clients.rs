//! Several clients: events fan-out, independence, and clients that
//! misbehave (never read, leave mid-command).

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{RawClient, StubServer, TempDir};
use qmp::{QmpEvent, QmpRequest, QmpServer, ServerConfig, CLIENT_QUEUE_LEN};
use serde_json::json;

#[test]
fn events_reach_every_negotiated_client_only() {
    let s = StubServer::start();
    let mut a = s.client();
    let mut b = s.client();
    let mut late = RawClient::connect(&s.path());
    late.greeting();

    s.events.emit(&QmpEvent::GuestCrashloaded {
        action: qmp::GuestPanicAction::Run,
    });
    for c in [&mut a, &mut b] {
        let e = c.event();
        assert_eq!(e["event"], "GUEST_CRASHLOADED");
        assert_eq!(e["data"], json!({"action": "run"}));
    }
    // Had the event been sent to `late`, it would come before this reply.
    assert_eq!(
        late.call(&json!({"execute": "qmp_capabilities"})),
        json!({"return": {}})
    );
    s.events.emit(&QmpEvent::GuestPvshutdown);
    for c in [&mut a, &mut b, &mut late] {
        let e = c.event();
        assert_eq!(e["event"], "GUEST_PVSHUTDOWN");
        assert!(e.get("data").is_none());
    }
}

#[test]
fn two_clients_interleave_independently() {
    let s = StubServer::start();
    let mut a = s.client();
    let mut b = s.client();
    // A stops the VM; both see STOP; B resumes it; both see RESUME.
    assert_eq!(a.call(&json!({"execute": "stop", "id": "a1"}))["id"], "a1");
    assert_eq!(b.event()["event"], "STOP");
    assert_eq!(a.event()["event"], "STOP");
    assert_eq!(b.execute("query-status", None)["status"], "paused");
    assert_eq!(b.call(&json!({"execute": "cont", "id": "b1"}))["id"], "b1");
    assert_eq!(a.event()["event"], "RESUME");
    assert_eq!(b.event()["event"], "RESUME");
    // Packed commands from one client don't disturb the other's replies.
    a.send("{\"execute\":\"query-status\",\"id\":1}{\"execute\":\"query-status\",\"id\":2}");
    assert_eq!(
        b.call(&json!({"execute": "query-version", "id": 3}))["id"],
        3
    );
    assert_eq!(a.reply()["id"], 1);
    assert_eq!(a.reply()["id"], 2);
}

#[test]
fn a_client_that_never_reads_is_dropped_not_waited_for() {
    let s = StubServer::start();
    let mut silent = s.client();
    let mut other = RawClient::connect(&s.path());
    other.greeting();

    // Flood from another thread, so a blocking emit would fail the test
    // through the timeout below instead of hanging it.
    let events = s.events.clone();
    let (done_tx, done_rx) = mpsc::channel();
    let total = CLIENT_QUEUE_LEN * 8;
    std::thread::spawn(move || {
        let big = "x".repeat(16 * 1024);
        for n in 0..total {
            events.emit_raw("FLOOD", Some(json!({"n": n, "pad": big})));
        }
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("emitting to a client that doesn't read must never block");

    // The other client was served meanwhile and still is.
    other.negotiate();
    assert_eq!(other.execute("query-status", None)["status"], "running");

    // The silent client was cut off: it finds what the kernel had buffered
    // (its queued messages are discarded with it), then EOF.
    let seen = silent.drain_to_eof();
    assert!(
        !seen.is_empty() && seen.len() < total,
        "got {} events",
        seen.len()
    );
    assert_eq!(s.events.client_count(), 1);
}

#[test]
fn a_client_sending_without_reading_is_dropped() {
    let s = StubServer::start();
    let mut greedy = s.client();
    let writer = {
        let mut stream = greedy.stream.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let msg = format!(
                "{{\"execute\":\"query-cpus-fast\",\"id\":\"{}\"}}",
                "p".repeat(4000)
            );
            // Stops with EPIPE/ECONNRESET once the server cuts the client off.
            for _ in 0..100_000 {
                if stream.write_all(msg.as_bytes()).is_err() {
                    return true;
                }
            }
            false
        })
    };
    assert!(
        writer.join().unwrap(),
        "the server never disconnected the client"
    );
    let seen = greedy.drain_to_eof();
    assert!(!seen.is_empty());
    let mut c = s.client();
    assert_eq!(c.execute("query-status", None)["running"], true);
}

#[test]
fn a_client_leaving_mid_command_stalls_nothing() {
    let dir = TempDir::new();
    let (server, receiver) = QmpServer::start(ServerConfig::new(dir.socket())).unwrap();
    let mut leaver = RawClient::connect(server.socket_path());
    leaver.greeting();
    leaver.negotiate();
    leaver.send("{\"execute\": \"stop\"}\n");
    // The test is the VMM here: wait for the request, then let the client go.
    assert!(receiver.wait(common::READ_TIMEOUT).unwrap());
    receiver.clear_wakeup();
    let pending = receiver.try_recv().unwrap().expect("stop is queued");
    assert_eq!(pending.request, QmpRequest::Stop);
    drop(leaver);
    // Replying to a departed client neither blocks nor fails the VMM.
    pending.responder.respond(Ok(json!({})));

    let mut other = RawClient::connect(server.socket_path());
    other.greeting();
    other.negotiate();
    other.send("{\"execute\": \"query-dump\", \"id\": 5}\n");
    assert!(receiver.wait(common::READ_TIMEOUT).unwrap());
    receiver.clear_wakeup();
    let pending = receiver.try_recv().unwrap().expect("query-dump is queued");
    assert_eq!(pending.request, QmpRequest::QueryDump);
    pending
        .responder
        .respond(Err(qmp::CommandError::generic("later")));
    assert_eq!(
        other.reply(),
        json!({"error": {"class": "GenericError", "desc": "later"}, "id": 5})
    );
}

#[test]
fn dropping_the_server_flushes_replies_then_closes() {
    let s = StubServer::start();
    let mut c = s.client();
    assert_eq!(c.execute("quit", None), json!({}));
    assert_eq!(c.event()["event"], "SHUTDOWN");
    for n in 0..50 {
        s.events.emit_raw("LAST_WORDS", Some(json!({ "n": n })));
    }
    let StubServer { server, vmm, .. } = s;
    drop(server);
    let rest = c.drain_to_eof();
    assert_eq!(rest.len(), 50, "{rest:?}");
    assert!(rest[49].contains("\"n\":49"), "{}", rest[49]);
    assert!(vmm.stop().unwrap().quit_requested);
}

#[test]
fn clients_beyond_the_limit_are_refused_with_an_error() {
    let s = StubServer::start();
    let mut clients: Vec<RawClient> = (0..qmp::MAX_CLIENTS).map(|_| s.client()).collect();
    let mut extra = RawClient::connect(&s.path());
    let refusal = extra.read();
    assert_eq!(refusal["error"]["class"], "GenericError", "{refusal}");
    assert!(refusal["error"]["desc"]
        .as_str()
        .unwrap()
        .contains("too many"));
    assert_eq!(extra.line(), None);
    // The admitted ones all work; when one leaves, a new client gets in.
    for c in &mut clients {
        assert_eq!(c.execute("query-status", None)["running"], true);
    }
    let mut leaving = clients.pop().unwrap();
    leaving.stream.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(leaving.line(), None);
    // The server notices the departure asynchronously: retry until admitted.
    let deadline = std::time::Instant::now() + common::READ_TIMEOUT;
    loop {
        let mut c = RawClient::connect(&s.path());
        if c.read().get("QMP").is_some() {
            c.negotiate();
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never admitted again");
    }
}
