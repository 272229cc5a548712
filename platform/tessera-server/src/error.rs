//! JSON errors: every failure a client sees has a stable `code`, a
//! `message` a person can act on and, where it applies, where the problem is.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tessera_store::Error;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the body: `index`, `pointer`, `line`, `errors`, ...
    /// (`retry_after_seconds` is sent as the `Retry-After` header too).
    pub details: serde_json::Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: serde_json::Map::new() }
    }

    /// Says when to retry: the `Retry-After` header, and `retry_after_seconds` in the body.
    pub fn retry_after(self, seconds: u32) -> Self {
        self.with("retry_after_seconds", seconds)
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.details.get("retry_after_seconds").and_then(Value::as_u64);
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Value::Object(map) = &mut body {
            map.extend(self.details);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = e.code();
        let message = e.to_string();
        match e {
            Error::Database(ref inner) => {
                tracing::error!(error = %inner, "database error");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "the database failed to answer; nothing of this request was stored, retry it",
                )
            }
            Error::Migrate(_) | Error::Config(_) => {
                tracing::error!(error = %message, "server error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, message)
            }
            Error::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, code, message),
            Error::Unauthenticated(_) => Self::new(StatusCode::UNAUTHORIZED, code, message),
            Error::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, code, message),
            Error::ContractInvalid { diagnostics } => {
                let errors: Vec<Value> = diagnostics
                    .iter()
                    .map(|d| {
                        let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
                        if let (Value::Object(m), Some(p)) = (&mut v, d.position) {
                            m.insert("line".into(), p.line.into());
                            m.insert("column".into(), p.column.into());
                        }
                        v
                    })
                    .collect();
                let mut err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
                if let Some(first) = diagnostics.iter().find(|d| d.severity == tessera_contract::Severity::Error) {
                    err = err.with("pointer", first.pointer.clone());
                    if let Some(p) = first.position {
                        err = err.with("line", p.line).with("column", p.column);
                    }
                }
                err.with("errors", errors)
            }
            Error::VersionTaken { .. } | Error::StaleVersion { .. } => Self::new(StatusCode::CONFLICT, code, message),
            Error::NotASuccessor { errors, changes, .. } => Self::new(StatusCode::CONFLICT, code, message)
                .with("errors", errors)
                .with("changes", serde_json::to_value(changes).unwrap_or(Value::Null)),
            Error::InvalidEvents { problems } => {
                let first = &problems[0];
                // A body that is not JSON is a bad request; JSON that breaks a rule is unprocessable.
                let (status, code) = if problems.iter().all(|p| p.code == "invalid_json") {
                    (StatusCode::BAD_REQUEST, "invalid_json")
                } else {
                    (StatusCode::UNPROCESSABLE_ENTITY, code)
                };
                let mut err = Self::new(status, code, message).with("index", first.index).with("pointer", first.pointer.clone());
                if let Some(line) = first.line {
                    err = err.with("line", line);
                }
                err.with("errors", serde_json::to_value(&problems).unwrap_or(Value::Null))
            }
            Error::WrongExpectedVersion { index, ref stream, ref expected, actual } => {
                Self::new(StatusCode::CONFLICT, code, message.clone())
                    .with("index", index)
                    .with("stream", stream.clone())
                    .with("expected", expected.clone())
                    .with("actual", actual)
            }
            Error::EventIdConflict { index, id, position } => Self::new(StatusCode::CONFLICT, code, message.clone())
                .with("index", index)
                .with("id", id.to_string())
                .with("position", position),
            Error::TooManyEvents { .. } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message),
            Error::NoEvents => Self::new(StatusCode::BAD_REQUEST, code, message),
            Error::Conflict(_) => Self::new(StatusCode::CONFLICT, code, message),
            Error::SubjectForgotten { index, ref domain, ref subject } => Self::new(StatusCode::CONFLICT, code, message.clone())
                .with("index", index)
                .with("domain", domain.clone())
                .with("subject", subject.clone()),
            Error::BadRequest(_) => Self::new(StatusCode::BAD_REQUEST, code, message),
        }
    }
}
