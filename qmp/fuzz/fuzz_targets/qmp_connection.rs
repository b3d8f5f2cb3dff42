//! Arbitrary byte streams, split arbitrarily, into one QMP connection: the
//! server's per-client path (`qmp::ClientConnection`: framing, session,
//! dispatch) against the stub VMM (`qmp::stub::StubBackend`).
//!
//! Input: the first byte seeds how the rest is cut into reads (0 = one
//! read; otherwise pseudo-random reads of 1..=64 bytes). The size limit is
//! 512 bytes, so the oversize path is reachable with small inputs.
//!
//! Invariants, beyond "no panic":
//! - every reply is exactly one JSON object on one `\r\n`-terminated line,
//!   with `return` or `error` (never both), an optional `id`, and nothing
//!   else; errors carry a QEMU error class and a description;
//! - negotiation completes at most once, and nothing reaches the VMM
//!   before it;
//! - an oversize value closes the connection with an error, and the
//!   buffered input never exceeds the limit plus one read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmp::stub::StubBackend;
use qmp::{ClientConnection, ConnectionStep, EventBroadcaster, VersionInfo};
use serde_json::Value;

const LIMIT: usize = 512;
const CLASSES: [&str; 5] = [
    "GenericError",
    "CommandNotFound",
    "DeviceNotActive",
    "DeviceNotFound",
    "KVMMissingCap",
];

fn check_reply(bytes: &[u8]) -> Value {
    assert!(bytes.ends_with(b"\r\n"), "unterminated reply");
    let line = &bytes[..bytes.len() - 2];
    assert!(
        !line.contains(&b'\n') && !line.contains(&b'\r'),
        "multi-line reply"
    );
    let value: Value = serde_json::from_slice(line).expect("reply is JSON");
    let object = value.as_object().expect("reply is an object");
    assert!(object
        .keys()
        .all(|k| matches!(k.as_str(), "return" | "error" | "id")));
    match (object.get("return"), object.get("error")) {
        (Some(_), None) => {}
        (None, Some(error)) => {
            let class = error["class"].as_str().expect("error class");
            assert!(CLASSES.contains(&class), "unknown class {class}");
            assert!(error["desc"].is_string());
        }
        _ => panic!("reply has neither or both of return and error: {value}"),
    }
    value
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let mut connection = ClientConnection::new(VersionInfo::default(), LIMIT);
    let greeting: Value = serde_json::from_slice(&connection.greeting()).expect("greeting");
    assert!(greeting["QMP"]["version"].is_object());
    let mut backend = StubBackend::new(2, EventBroadcaster::default());
    let mut negotiated = false;
    let mut rng = u32::from(split) | 0x100;
    let mut rest = stream;
    'reads: while !rest.is_empty() {
        let n = if split == 0 {
            rest.len()
        } else {
            // xorshift32: cheap, deterministic read sizes.
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            1 + (rng as usize % 64).min(rest.len() - 1)
        };
        let (read, tail) = rest.split_at(n);
        rest = tail;
        connection.push_input(read);
        loop {
            let mut called = false;
            let step = connection.next_step(|request| {
                called = true;
                request.dispatch(&mut backend)
            });
            match step {
                None => break,
                Some(ConnectionStep::Reply {
                    bytes,
                    negotiated: now,
                }) => {
                    assert!(
                        !called || negotiated,
                        "the VMM ran a command before negotiation"
                    );
                    let reply = check_reply(&bytes);
                    if now {
                        assert!(!negotiated, "negotiated twice");
                        assert_eq!(reply["return"], serde_json::json!({}));
                        negotiated = true;
                    }
                }
                Some(ConnectionStep::Close { bytes, limit }) => {
                    assert_eq!(limit, LIMIT);
                    assert!(check_reply(&bytes).get("error").is_some());
                    break 'reads;
                }
            }
        }
        assert!(
            connection.buffered() <= LIMIT + 64 + 1,
            "unbounded buffering"
        );
    }
});
