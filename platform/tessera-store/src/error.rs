//! Everything that can go wrong in the store, each with a stable code.
//!
//! The server turns these into HTTP responses; the codes are part of the API.

use serde::Serialize;
use tessera_contract::Diagnostic;

/// One problem with one event of an append request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventProblem {
    /// Position of the event in the request, from 0.
    pub index: usize,
    /// Line of the request body, from 1, for NDJSON bodies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// JSON pointer into the event envelope (`/payload/total`, `/stream`, ...).
    pub pointer: String,
    /// Stable code of the rule that failed.
    pub code: &'static str,
    pub message: String,
}

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Config(String),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the contract has {} error(s); the first: {}", errors(.diagnostics), first_error(.diagnostics))]
    ContractInvalid { diagnostics: Vec<Diagnostic> },
    #[error(
        "version {version} of {product} is already published with other content; \
         publish your change under a new version number"
    )]
    VersionTaken { product: String, version: String },
    #[error("version {version} of {product} is older than the current version {current}; publish a version above {current}")]
    StaleVersion { product: String, version: String, current: String },
    #[error("{product} {new} cannot follow {old}: {}", .errors.join("; "))]
    NotASuccessor { product: String, old: String, new: String, errors: Vec<String>, changes: Vec<tessera_contract::Change> },
    #[error("{} event(s) are invalid; the first, event {} at {}: {}", .problems.len(), .problems[0].index, pointer_or_root(&.problems[0].pointer), .problems[0].message)]
    InvalidEvents { problems: Vec<EventProblem> },
    #[error(
        "event {index}: stream `{stream}` is at version {actual}, but the event expects {expected}; \
         read the stream, decide again, and resend with the current version"
    )]
    WrongExpectedVersion { index: usize, stream: String, expected: String, actual: u64 },
    #[error(
        "event {index}: id {id} is already stored (position {position}) with a different stream, type or payload; \
         a retry must resend the event unchanged, and a new event needs a new id"
    )]
    EventIdConflict { index: usize, id: uuid::Uuid, position: i64 },
    #[error("the request holds {count} events; at most {max} are accepted per request, split it into batches")]
    TooManyEvents { count: usize, max: usize },
    #[error("the request holds no events")]
    NoEvents,
    #[error(
        "event {index}: subject `{subject}` of domain `{domain}` was forgotten; new events about it are refused until a steward re-admits it \
         (POST /api/v1/subjects/readmit)"
    )]
    SubjectForgotten { index: usize, domain: String, subject: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
}

fn errors(d: &[Diagnostic]) -> usize {
    d.iter().filter(|d| d.severity == tessera_contract::Severity::Error).count()
}

fn first_error(d: &[Diagnostic]) -> String {
    d.iter()
        .find(|d| d.severity == tessera_contract::Severity::Error)
        .map(|d| {
            let at = d.position.map(|p| format!("{}:{}: ", p.line, p.column)).unwrap_or_default();
            format!("{at}{}", d.message)
        })
        .unwrap_or_default()
}

fn pointer_or_root(p: &str) -> &str {
    if p.is_empty() { "the event" } else { p }
}

impl Error {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Database(_) => "database_error",
            Self::Migrate(_) => "migration_failed",
            Self::Config(_) => "configuration_error",
            Self::NotFound { .. } => "not_found",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::ContractInvalid { .. } => "contract_invalid",
            Self::VersionTaken { .. } => "version_taken",
            Self::StaleVersion { .. } => "stale_version",
            Self::NotASuccessor { .. } => "incompatible_version",
            Self::InvalidEvents { .. } => "invalid_events",
            Self::WrongExpectedVersion { .. } => "wrong_expected_version",
            Self::EventIdConflict { .. } => "event_id_conflict",
            Self::TooManyEvents { .. } => "too_many_events",
            Self::NoEvents => "no_events",
            Self::Conflict(_) => "conflict",
            Self::SubjectForgotten { .. } => "subject_forgotten",
            Self::BadRequest(_) => "bad_request",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
