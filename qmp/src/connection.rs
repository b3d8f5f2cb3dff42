//! One client connection's input path, without the socket: framing, the
//! [`Session`] (negotiation and message checks) and dispatch to the VMM.
//!
//! The server's reader thread feeds it what it reads and queues each
//! [`ConnectionStep`]; the `qmp_connection` fuzz target drives the same
//! type with arbitrary byte streams against the stub VMM.

use crate::framing::{Framer, FramingError};
use crate::schema::{CommandError, CommandResult, QmpRequest, VersionInfo};
use crate::session::{encode_response, greeting, Session};

/// What one complete input message produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStep {
    /// A reply line to queue.
    Reply {
        /// The encoded reply (one JSON object, `\r\n`-terminated).
        bytes: Vec<u8>,
        /// True when this message completed capabilities negotiation: the
        /// client receives events from now on.
        negotiated: bool,
    },
    /// The client sent a value over the size limit: queue this error line,
    /// then close the connection.
    Close {
        /// The encoded error reply.
        bytes: Vec<u8>,
        /// The limit that was exceeded.
        limit: usize,
    },
}

/// One client's framer and session.
#[derive(Debug)]
pub struct ClientConnection {
    framer: Framer,
    session: Session,
    version: VersionInfo,
}

impl ClientConnection {
    /// A new connection that accepts values up to `limit` bytes
    /// ([`crate::MAX_MESSAGE_BYTES`] in the server).
    pub fn new(version: VersionInfo, limit: usize) -> Self {
        Self {
            framer: Framer::new(limit),
            session: Session::new(version.clone()),
            version,
        }
    }

    /// The greeting line the server sends first.
    pub fn greeting(&self) -> Vec<u8> {
        greeting(&self.version)
    }

    /// Appends bytes read from the client.
    pub fn push_input(&mut self, data: &[u8]) {
        self.framer.push(data);
    }

    /// Input bytes buffered but not yet part of a complete message.
    pub fn buffered(&self) -> usize {
        self.framer.buffered()
    }

    /// Handles the next complete message, if one is buffered; `vmm` runs
    /// the requests that need the VMM (only after negotiation).
    pub fn next_step(
        &mut self,
        vmm: impl FnOnce(QmpRequest) -> CommandResult,
    ) -> Option<ConnectionStep> {
        match self.framer.next_frame()? {
            Ok(frame) => {
                let reply = self.session.handle(&frame, vmm);
                Some(ConnectionStep::Reply {
                    bytes: reply.bytes,
                    negotiated: reply.negotiated,
                })
            }
            Err(FramingError::TooLarge { limit }) => {
                let error = CommandError::generic(format!(
                    "message exceeds the {limit}-byte limit; closing the connection"
                ));
                Some(ConnectionStep::Close {
                    bytes: encode_response(&Err(error), None),
                    limit,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(bytes: &[u8]) -> Value {
        assert!(bytes.ends_with(b"\r\n"));
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn split_input_gives_one_reply_per_message() {
        let mut c = ClientConnection::new(VersionInfo::default(), 1024);
        let input = br#"{"execute": "qmp_capabilities"}{"execute": "query-status", "id": 7}"#;
        let mut steps = Vec::new();
        for byte in input.chunks(3) {
            c.push_input(byte);
            while let Some(step) = c.next_step(|_| Ok(Value::String("vmm".into()))) {
                steps.push(step);
            }
        }
        let [ConnectionStep::Reply {
            bytes: a,
            negotiated: true,
        }, ConnectionStep::Reply {
            bytes: b,
            negotiated: false,
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(json(a), serde_json::json!({"return": {}}));
        assert_eq!(json(b), serde_json::json!({"return": "vmm", "id": 7}));
        assert_eq!(c.buffered(), 0);
    }

    #[test]
    fn an_oversize_value_closes_the_connection() {
        let mut c = ClientConnection::new(VersionInfo::default(), 16);
        c.push_input(br#"{"execute": "qmp_capabilities"}"#);
        let Some(ConnectionStep::Close { bytes, limit: 16 }) = c.next_step(|_| unreachable!())
        else {
            panic!("not closed")
        };
        assert_eq!(json(&bytes)["error"]["class"], "GenericError");
    }
}
