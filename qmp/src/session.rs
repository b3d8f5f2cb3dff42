//! One client's protocol state: negotiation, message checks, dispatch.
//!
//! This is the transport-free part of the server, following QEMU's
//! `monitor/qmp.c` and `qapi/qmp-dispatch.c`:
//! - Malformed JSON: GenericError `JSON parse error, ...`, no `id`.
//! - Not an object: GenericError `QMP input must be a JSON object`.
//! - A member other than `execute`, `arguments`, `id`: GenericError
//!   `QMP input member 'X' is unexpected` (so `exec-oob` too: no OOB here).
//! - `execute` missing or not a string, `arguments` not an object:
//!   GenericError, as QEMU words it.
//! - Before negotiation, every command but `qmp_capabilities` gets
//!   CommandNotFound `Expecting capabilities negotiation with
//!   'qmp_capabilities'` (what QEMU really sends; the issue's
//!   "CommandNotNegotiated" class does not exist in QEMU). After it, a
//!   second `qmp_capabilities` gets CommandNotFound `Capabilities
//!   negotiation is already complete, command ignored`.
//! - Unknown command: CommandNotFound `The command X has not been found`.
//! - Bad arguments: GenericError (`Parameter 'x' is unexpected`, ...).
//!
//! Once the message is an object, its `id` (any JSON value) is echoed in
//! the reply, success or error.

use serde::Serialize;
use serde_json::Value;

use crate::schema::{
    parse_command, Command, CommandError, CommandResult, QmpRequest, VersionInfo, COMMANDS,
};

/// Serialises `value` as one line, terminated as QEMU does (`\r\n`).
pub(crate) fn encode_line<T: Serialize>(value: &T) -> Option<Vec<u8>> {
    let mut bytes = serde_json::to_vec(value).ok()?;
    bytes.extend_from_slice(b"\r\n");
    Some(bytes)
}

#[derive(Serialize)]
struct Response<'a> {
    #[serde(rename = "return", skip_serializing_if = "Option::is_none")]
    ret: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a CommandError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

/// Encodes a reply line for `result`, echoing `id`.
pub(crate) fn encode_response(result: &CommandResult, id: Option<&Value>) -> Vec<u8> {
    let response = match result {
        Ok(value) => Response {
            ret: Some(value),
            error: None,
            id,
        },
        Err(error) => Response {
            ret: None,
            error: Some(error),
            id,
        },
    };
    encode_line(&response).unwrap_or_else(|| {
        b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"cannot encode the reply\"}}\r\n"
            .to_vec()
    })
}

/// The greeting line.
pub(crate) fn greeting(version: &VersionInfo) -> Vec<u8> {
    let greeting = serde_json::json!({"QMP": {"version": version, "capabilities": []}});
    encode_line(&greeting).unwrap_or_default()
}

/// A reply to one message.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The encoded reply line.
    pub bytes: Vec<u8>,
    /// True when this message completed capabilities negotiation.
    pub negotiated: bool,
}

/// One client's protocol state.
#[derive(Debug)]
pub(crate) struct Session {
    negotiated: bool,
    version: VersionInfo,
}

impl Session {
    pub fn new(version: VersionInfo) -> Self {
        Self {
            negotiated: false,
            version,
        }
    }

    /// Handles one framed JSON text; `vmm` runs requests on the VMM.
    pub fn handle(&mut self, frame: &[u8], vmm: impl FnOnce(QmpRequest) -> CommandResult) -> Reply {
        let value: Value = match serde_json::from_slice(frame) {
            Ok(value) => value,
            Err(e) => {
                return self.reply(
                    &Err(CommandError::generic(format!("JSON parse error, {e}"))),
                    None,
                )
            }
        };
        let Value::Object(mut message) = value else {
            return self.reply(
                &Err(CommandError::generic("QMP input must be a JSON object")),
                None,
            );
        };
        let id = message.remove("id");
        let result = self.execute(message, vmm);
        let negotiated_now = !self.negotiated && matches!(result, Ok(Outcome::Negotiated));
        if negotiated_now {
            self.negotiated = true;
        }
        let result = result.map(Outcome::into_value);
        Reply {
            bytes: encode_response(&result, id.as_ref()),
            negotiated: negotiated_now,
        }
    }

    fn reply(&self, result: &CommandResult, id: Option<&Value>) -> Reply {
        Reply {
            bytes: encode_response(result, id),
            negotiated: false,
        }
    }

    fn execute(
        &self,
        mut message: serde_json::Map<String, Value>,
        vmm: impl FnOnce(QmpRequest) -> CommandResult,
    ) -> Result<Outcome, CommandError> {
        if let Some(key) = message
            .keys()
            .find(|k| !matches!(k.as_str(), "execute" | "arguments"))
        {
            return Err(CommandError::generic(format!(
                "QMP input member '{key}' is unexpected"
            )));
        }
        let name = match message.remove("execute") {
            Some(Value::String(name)) => name,
            Some(_) => {
                return Err(CommandError::generic(
                    "QMP input member 'execute' must be a string",
                ))
            }
            None => return Err(CommandError::generic("QMP input lacks member 'execute'")),
        };
        let arguments = match message.remove("arguments") {
            None => None,
            Some(args @ Value::Object(_)) => Some(args),
            Some(_) => {
                return Err(CommandError::generic(
                    "QMP input member 'arguments' must be an object",
                ))
            }
        };
        if !self.negotiated && name != "qmp_capabilities" {
            return Err(CommandError::command_not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        let command = parse_command(&name, arguments).map_err(|e| {
            if !self.negotiated && e.class == crate::schema::ErrorClass::CommandNotFound {
                CommandError::command_not_found(
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                )
            } else {
                e
            }
        })?;
        match command {
            Command::Capabilities(caps) => {
                if self.negotiated {
                    return Err(CommandError::command_not_found(
                        "Capabilities negotiation is already complete, command ignored",
                    ));
                }
                if let Some(cap) = caps.enable.unwrap_or_default().first() {
                    return Err(CommandError::generic(if cap == "oob" {
                        "Capability 'oob' not available".to_owned()
                    } else {
                        format!("Parameter 'enable' does not accept value '{cap}'")
                    }));
                }
                Ok(Outcome::Negotiated)
            }
            Command::QueryVersion => Ok(Outcome::Value(serde_json::json!(self.version))),
            Command::QueryCommands => Ok(Outcome::Value(Value::Array(
                COMMANDS
                    .iter()
                    .map(|name| serde_json::json!({ "name": name }))
                    .collect(),
            ))),
            Command::Vmm(request) => vmm(request).map(Outcome::Value),
        }
    }
}

enum Outcome {
    Negotiated,
    Value(Value),
}

impl Outcome {
    fn into_value(self) -> Value {
        match self {
            Outcome::Negotiated => Value::Object(Default::default()),
            Outcome::Value(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(session: &mut Session, msg: &str) -> Value {
        let reply = session.handle(msg.as_bytes(), |req| Ok(json!({ "ran": req.name() })));
        let text = std::str::from_utf8(&reply.bytes).unwrap();
        assert!(text.ends_with("\r\n") && !text.trim_end().contains('\n'));
        serde_json::from_str(text).unwrap()
    }

    fn class(v: &Value) -> &str {
        v["error"]["class"].as_str().unwrap_or("<none>")
    }

    #[test]
    fn negotiation_comes_first_and_only_once() {
        let mut s = Session::new(VersionInfo::default());
        for cmd in ["query-status", "no-such-command"] {
            let r = run(&mut s, &format!(r#"{{"execute": "{cmd}", "id": 9}}"#));
            assert_eq!(
                r,
                json!({"error": {"class": "CommandNotFound",
                       "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 9})
            );
        }
        let r = run(
            &mut s,
            r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#,
        );
        assert_eq!(class(&r), "GenericError");
        let reply = s.handle(
            br#"{"execute": "qmp_capabilities", "id": "a"}"#,
            |_| unreachable!(),
        );
        assert!(reply.negotiated);
        assert_eq!(
            serde_json::from_slice::<Value>(&reply.bytes).unwrap(),
            json!({"return": {}, "id": "a"})
        );
        let r = run(&mut s, r#"{"execute": "qmp_capabilities"}"#);
        assert_eq!(class(&r), "CommandNotFound");
        assert_eq!(
            run(&mut s, r#"{"execute": "stop"}"#),
            json!({"return": {"ran": "stop"}})
        );
    }

    #[test]
    fn malformed_messages_get_errors_and_ids_when_possible() {
        let mut s = Session::new(VersionInfo::default());
        run(&mut s, r#"{"execute": "qmp_capabilities"}"#);
        let cases = [
            (r#"{"execute": }"#, "GenericError", None),
            ("[1]", "GenericError", None),
            (r#"{"id": 3}"#, "GenericError", Some(json!(3))),
            (
                r#"{"execute": 1, "id": [1]}"#,
                "GenericError",
                Some(json!([1])),
            ),
            (
                r#"{"execute": "stop", "arguments": [], "id": null}"#,
                "GenericError",
                Some(json!(null)),
            ),
            (
                r#"{"execute": "stop", "exec-oob": "x"}"#,
                "GenericError",
                None,
            ),
            (
                r#"{"execute": "nope", "id": "q"}"#,
                "CommandNotFound",
                Some(json!("q")),
            ),
            (
                r#"{"execute": "stop", "arguments": {"x": 1}}"#,
                "GenericError",
                None,
            ),
        ];
        for (msg, want_class, want_id) in cases {
            let r = run(&mut s, msg);
            assert_eq!(class(&r), want_class, "{msg}: {r}");
            assert_eq!(r.get("id").cloned(), want_id, "{msg}: {r}");
        }
    }

    #[test]
    fn local_commands() {
        let mut s = Session::new(VersionInfo::default());
        run(&mut s, r#"{"execute": "qmp_capabilities"}"#);
        let v = run(&mut s, r#"{"execute": "query-version"}"#);
        assert_eq!(
            v["return"]["qemu"],
            json!({"major": 7, "minor": 2, "micro": 0})
        );
        assert!(v["return"]["package"].as_str().unwrap().starts_with("vmm "));
        let c = run(&mut s, r#"{"execute": "query-commands"}"#);
        let names: Vec<&str> = c["return"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, COMMANDS);
    }
}
