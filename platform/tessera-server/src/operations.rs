//! Work on a product's tables, for its domain: dead letters, projection
//! commands (rebuild, compact, vacuum), retiring a generation; and the
//! metrics of every projection.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_store::Principal;

use crate::error::ApiError;
use crate::extract::{ApiPath, Caller};
use crate::projection;
use crate::state::AppState;

/// Dead letters, commands and generations under `/products/{domain}/{name}`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/products/{domain}/{name}/dead-letters", get(dead_letters))
        .route("/products/{domain}/{name}/commands", post(request_command))
        .route("/products/{domain}/{name}/commands/{id}", get(command_status))
        .route("/products/{domain}/{name}/generations/{major}/retire", post(retire_generation))
}

#[derive(Debug, Deserialize)]
struct DeadLetterQuery {
    limit: Option<i64>,
}

/// The events that could not be projected, and why. Reasons quote event
/// values, so only the product's domain reads them.
async fn dead_letters(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name)): ApiPath<(String, String)>,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e}; use ?limit=<1..10000>")))?;
    state.store.product(&domain, &name).await?;
    if caller.is_public() {
        return Err(tessera_store::Error::Unauthenticated("dead letters need a token: send `Authorization: Bearer <token>`".into()).into());
    }
    if !caller.is_member_of(&domain) {
        return Err(tessera_store::Error::Forbidden(format!(
            "the dead letters of {domain}/{name} quote event values and are readable by members of domain `{domain}` only"
        ))
        .into());
    }
    let letters = state.store.dead_letters(&domain, &name, q.limit.unwrap_or(1000)).await?;
    Ok(Json(json!({ "dead_letters": letters })))
}

/// Only the product's domain runs work on its tables.
fn domain_member(caller: &Principal, domain: &str, what: &str) -> Result<(), ApiError> {
    if caller.is_public() {
        return Err(tessera_store::Error::Unauthenticated(format!("{what} needs a token: send `Authorization: Bearer <token>`")).into());
    }
    if !caller.is_member_of(domain) {
        return Err(tessera_store::Error::Forbidden(format!("{what} is for members of domain `{domain}` only")).into());
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandRequest {
    kind: String,
}

/// Asks the product's projector to rebuild, compact or vacuum its tables;
/// whichever process holds the product's lease does it. 202 with the
/// command, to follow at `/commands/{id}`.
async fn request_command(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name)): ApiPath<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.store.product(&domain, &name).await?;
    domain_member(&caller, &domain, "running a projection command")?;
    let usage = r#"send {"kind": "rebuild"}, {"kind": "compact"} or {"kind": "vacuum"}"#;
    let request: CommandRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_command", format!("{e}; {usage}")))?;
    if !matches!(request.kind.as_str(), "rebuild" | "compact" | "vacuum") {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_command", format!("unknown command `{}`; {usage}", request.kind)));
    }
    let command = state.store.request_command(&domain, &name, &request.kind, &caller.name).await?;
    state.store.nudge(&domain, &name);
    Ok((StatusCode::ACCEPTED, Json(command)).into_response())
}

async fn command_status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name, id)): ApiPath<(String, String, i64)>,
) -> Result<Json<tessera_store::Command>, ApiError> {
    state.store.product(&domain, &name).await?;
    domain_member(&caller, &domain, "a projection command")?;
    Ok(Json(state.store.command(&domain, &name, id).await?))
}

/// Retires a generation that a newer major version has replaced: it is
/// served no more. Its files stay until removed by hand.
async fn retire_generation(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name, major)): ApiPath<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.store.product(&domain, &name).await?;
    domain_member(&caller, &domain, "retiring a generation")?;
    let number = major.strip_prefix('v').unwrap_or(&major);
    let major: i64 = number.parse().map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", format!("`{major}` is not a major version; use e.g. /generations/1/retire"))
    })?;
    state.store.retire_generation(&domain, &name, major).await?;
    if let Some(engine) = &state.engine {
        engine.catalog().invalidate();
    }
    Ok(Json(json!({ "generations": state.store.generations(&domain, &name).await? })))
}

/// Prometheus metrics: every table's projection lag, size and quality.
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = match &state.projections {
        Some(p) => projection::metrics(&state.store, p).await?,
        None => String::new(),
    };
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response())
}
