//! The event envelope of an append request, parsed with located errors.
//!
//! ```json
//! {"stream": "ORD-1", "type": "OrderPlaced", "id": "<uuid, optional>",
//!  "schema_version": 2, "payload": {...}, "metadata": {...},
//!  "expected_version": "any" | "no_stream" | 3}
//! ```

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::EventProblem;

/// The longest stream id accepted.
pub const MAX_STREAM_LEN: usize = 256;

const FIELDS: [&str; 7] = ["stream", "type", "id", "schema_version", "payload", "metadata", "expected_version"];

/// What the writer expects the stream's version to be before its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expected {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version (the first event is 1).
    Exactly(u64),
}

impl Expected {
    pub fn allows(self, current: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current == 0,
            Self::Exactly(v) => current == v,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Self::Any => "any version".into(),
            Self::NoStream => "no stream (a new stream)".into(),
            Self::Exactly(v) => format!("version {v}"),
        }
    }
}

/// One event as a producer sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventInput {
    pub id: Option<Uuid>,
    pub stream: String,
    pub event_type: String,
    /// `None`: the event type's current version.
    pub schema_version: Option<u32>,
    pub payload: Value,
    pub metadata: Map<String, Value>,
    pub expected: Expected,
    /// Line of the request body the event came from, for NDJSON bodies.
    pub line: Option<usize>,
}

fn problem(index: usize, line: Option<usize>, pointer: &str, code: &'static str, message: String) -> EventProblem {
    EventProblem { index, line, pointer: pointer.to_owned(), code, message }
}

/// Parses one envelope (the `index`-th event of its request).
pub fn parse_event(index: usize, line: Option<usize>, value: Value) -> Result<EventInput, EventProblem> {
    let Value::Object(mut object) = value else {
        return Err(problem(index, line, "", "not_an_object", format!("an event must be a JSON object, found {}", kind(&value))));
    };
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let hint = FIELDS
            .iter()
            .min_by_key(|f| strsim_distance(f, unknown))
            .filter(|f| strsim_distance(f, unknown) <= 3)
            .map(|f| format!(" (did you mean `{f}`?)"))
            .unwrap_or_default();
        return Err(problem(
            index,
            line,
            &format!("/{}", escape(unknown)),
            "unknown_field",
            format!("unknown envelope field `{unknown}`{hint}; the fields are {}", FIELDS.join(", ")),
        ));
    }
    let stream = match object.remove("stream") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_STREAM_LEN && !s.chars().any(char::is_control) => s,
        Some(Value::String(_)) => {
            return Err(problem(
                index,
                line,
                "/stream",
                "invalid_stream",
                format!("`stream` must be 1 to {MAX_STREAM_LEN} bytes without control characters"),
            ));
        }
        Some(other) => {
            return Err(problem(index, line, "/stream", "invalid_stream", format!("`stream` must be a string, found {}", kind(&other))));
        }
        None => return Err(problem(index, line, "", "missing_field", "the event has no `stream`: name the entity it is about".into())),
    };
    let event_type = match object.remove("type") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(other) => {
            return Err(problem(
                index,
                line,
                "/type",
                "invalid_type",
                format!("`type` must be an event type name, found {}", kind(&other)),
            ));
        }
        None => {
            return Err(problem(
                index,
                line,
                "",
                "missing_field",
                "the event has no `type`: name one of the contract's event types".into(),
            ));
        }
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match Uuid::parse_str(&s) {
            Ok(u) if !u.is_nil() => Some(u),
            _ => {
                return Err(problem(
                    index,
                    line,
                    "/id",
                    "invalid_id",
                    format!("`id` must be a UUID such as 019b780f-5e7c-790d-bbdf-87aa38624ca3, found `{s}`"),
                ));
            }
        },
        Some(other) => {
            return Err(problem(index, line, "/id", "invalid_id", format!("`id` must be a UUID string, found {}", kind(&other))));
        }
    };
    let schema_version = match object.remove("schema_version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()).filter(|v| *v >= 1) {
            Some(v) => Some(v),
            None => {
                return Err(problem(
                    index,
                    line,
                    "/schema_version",
                    "invalid_schema_version",
                    format!("`schema_version` must be a whole number from 1, found {n}"),
                ));
            }
        },
        Some(other) => {
            return Err(problem(
                index,
                line,
                "/schema_version",
                "invalid_schema_version",
                format!("`schema_version` must be a number, found {}", kind(&other)),
            ));
        }
    };
    let payload = match object.remove("payload") {
        Some(v) => v,
        None => return Err(problem(index, line, "", "missing_field", "the event has no `payload`".into())),
    };
    let metadata = match object.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(problem(
                index,
                line,
                "/metadata",
                "invalid_metadata",
                format!("`metadata` must be an object, found {}", kind(&other)),
            ));
        }
    };
    let expected = match object.remove("expected_version") {
        None | Some(Value::Null) => Expected::Any,
        Some(Value::String(s)) if s == "any" => Expected::Any,
        Some(Value::String(s)) if s == "no_stream" => Expected::NoStream,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v >= 1 && i64::try_from(v).is_ok()) => {
            Expected::Exactly(n.as_u64().unwrap_or_default())
        }
        Some(other) => {
            return Err(problem(
                index,
                line,
                "/expected_version",
                "invalid_expected_version",
                format!("`expected_version` must be \"any\", \"no_stream\" or a stream version from 1, found {other}"),
            ));
        }
    };
    Ok(EventInput { id, stream, event_type, schema_version, payload, metadata, expected, line })
}

/// Parses an NDJSON body: one envelope per non-blank line.
pub fn parse_ndjson(body: &[u8]) -> Result<Vec<EventInput>, Vec<EventProblem>> {
    let mut events = Vec::new();
    let mut problems = Vec::new();
    for (n, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line = n + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let index = events.len() + problems.len();
        match serde_json::from_slice::<Value>(raw) {
            Ok(v) => match parse_event(index, Some(line), v) {
                Ok(e) => events.push(e),
                Err(p) => problems.push(p),
            },
            Err(e) => problems.push(EventProblem {
                index,
                line: Some(line),
                pointer: String::new(),
                code: "invalid_json",
                message: format!("line {line}, column {}: invalid JSON: {}", e.column(), strip_position(&e.to_string())),
            }),
        }
        if problems.len() >= MAX_PROBLEMS {
            break;
        }
    }
    if problems.is_empty() { Ok(events) } else { Err(problems) }
}

/// Parses a JSON body: an array of envelopes (or a single envelope).
pub fn parse_json(body: &[u8]) -> Result<Vec<EventInput>, Vec<EventProblem>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        vec![EventProblem {
            index: 0,
            line: Some(e.line()),
            pointer: String::new(),
            code: "invalid_json",
            message: format!("line {}, column {}: invalid JSON: {}", e.line(), e.column(), strip_position(&e.to_string())),
        }]
    })?;
    let items = match value {
        Value::Array(items) => items,
        single @ Value::Object(_) => vec![single],
        other => {
            return Err(vec![problem(
                0,
                None,
                "",
                "not_an_array",
                format!("the body must be a JSON array of events, found {}", kind(&other)),
            )]);
        }
    };
    let mut events = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match parse_event(index, None, item) {
            Ok(e) => events.push(e),
            Err(mut p) => {
                p.pointer = format!("/{index}{}", p.pointer);
                problems.push(p);
                if problems.len() >= MAX_PROBLEMS {
                    break;
                }
            }
        }
    }
    if problems.is_empty() { Ok(events) } else { Err(problems) }
}

/// At most this many problems are reported per request.
pub const MAX_PROBLEMS: usize = 100;

fn strip_position(message: &str) -> &str {
    message.rsplit_once(" at line ").map_or(message, |(m, _)| m)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Escapes a key for use in a JSON pointer (RFC 6901).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn strsim_distance(a: &str, b: &str) -> usize {
    strsim::levenshtein(a, b)
}
