//! The right to be forgotten: forgetting a data subject (its keys are
//! destroyed, so every personal value of it reads as null everywhere),
//! re-admitting one, and the ledger of forgotten subjects. The rules (who
//! may, what is destroyed) live in `tessera_store::keys`.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_contract::Role;

use crate::error::ApiError;
use crate::extract::Caller;
use crate::state::AppState;

/// `/subjects/forget`, `/subjects/readmit`, `/subjects/forgotten` and `/notices`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/subjects/forget", post(forget))
        .route("/subjects/readmit", post(readmit))
        .route("/subjects/forgotten", get(forgotten))
        .route("/notices", get(notices))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgetRequest {
    subject: String,
    reason: String,
    /// One domain; by default every domain the caller may forget in.
    domain: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], usage: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("{e}; {usage}")))
}

/// Forgets a subject in one domain, or in every domain the caller may (a
/// steward: every domain with products; a member: its own domains).
/// Idempotent: forgetting again destroys nothing more and says so.
async fn forget(State(state): State<AppState>, Caller(caller): Caller, body: Bytes) -> Result<Json<Value>, ApiError> {
    let usage = r#"send {"subject": "CUS-000123", "reason": "erasure request 2026-117", "domain": "customers"} (domain optional)"#;
    let request: ForgetRequest = parse(&body, usage)?;
    let domains: BTreeSet<String> = match request.domain {
        Some(d) => [d].into(),
        None if caller.roles.contains(&Role::Steward) => state.store.products().await?.into_iter().map(|p| p.domain).collect(),
        None => caller.domains.iter().cloned().collect(),
    };
    if domains.is_empty() && !caller.is_public() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} is a member of no domain: name the domain, or ask a steward", caller.name),
        ));
    }
    let mut out = Vec::new();
    for domain in domains.iter().map(String::as_str).chain(domains.is_empty().then_some("")) {
        out.push(state.store.forget(&caller, domain, &request.subject, &request.reason).await?);
    }
    Ok(Json(json!({ "subject": request.subject, "forgotten": out })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadmitRequest {
    subject: String,
    domain: String,
}

/// Lets a forgotten subject of a domain back in (a steward only): its next
/// event gets a new key; what was sealed before stays unreadable.
async fn readmit(State(state): State<AppState>, Caller(caller): Caller, body: Bytes) -> Result<Json<Value>, ApiError> {
    let request: ReadmitRequest = parse(&body, r#"send {"subject": "CUS-000123", "domain": "customers"}"#)?;
    let entry = state.store.readmit(&caller, &request.domain, &request.subject).await?;
    Ok(Json(json!({ "readmitted": entry })))
}

#[derive(Debug, Deserialize)]
struct LedgerQuery {
    domain: String,
    subject: Option<String>,
}

/// The ledger of a domain's forgotten subjects: stewards and the domain's members.
async fn forgotten(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e}; use ?domain=<domain>[&subject=<id>]")))?;
    if caller.is_public() {
        return Err(tessera_store::Error::Unauthenticated("the ledger needs a token: send `Authorization: Bearer <token>`".into()).into());
    }
    if !caller.roles.contains(&Role::Steward) && !caller.is_member_of(&q.domain) {
        return Err(tessera_store::Error::Forbidden(format!(
            "the ledger of domain `{}` is for stewards and the domain's members",
            q.domain
        ))
        .into());
    }
    Ok(Json(json!({ "forgotten": state.store.ledger(&q.domain, q.subject.as_deref()).await? })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticesQuery {
    domain: String,
    after: Option<i64>,
    limit: Option<i64>,
}

/// A domain's notices (`SubjectForgotten`, `SubjectReadmitted`) after a
/// given id, oldest first: stewards and the domain's members. A reader
/// keeps the last id it saw and asks again with `after`.
async fn notices(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: Result<Query<NoticesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let usage = "use ?domain=<domain>[&after=<id>][&limit=<1..1000>]";
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e}; {usage}")))?;
    let notices = state.store.notices(&caller, &q.domain, q.after.unwrap_or(0), q.limit.unwrap_or(100)).await?;
    let next = notices.last().map_or(q.after.unwrap_or(0), |n| n.id);
    Ok(Json(json!({ "notices": notices, "next_after": next })))
}
