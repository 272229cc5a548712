//! A product's event log: appending, reading the log and one stream, and
//! one entity's state (its rows in each table) at a position or a time.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_store::BodyFormat;

use crate::error::ApiError;
use crate::extract::{ApiPath, Caller, content_type, read_body, unsupported};
use crate::state::AppState;

/// `/products/{domain}/{name}/events` and `/streams/{stream}[/state]`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/products/{domain}/{name}/events", get(read_log).post(append))
        .route("/products/{domain}/{name}/streams/{stream}", get(read_stream))
        .route("/products/{domain}/{name}/streams/{stream}/state", get(stream_state))
}

async fn append(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if caller.is_public() {
        return Err(tessera_store::Error::Unauthenticated("appending needs a token: send `Authorization: Bearer <token>`".into()).into());
    }
    let ct = content_type(&headers);
    let format = match ct.as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => BodyFormat::Ndjson,
        "application/json" => BodyFormat::Json,
        _ => return Err(unsupported(&ct, "events as `application/x-ndjson` (one per line) or `application/json` (an array)")),
    };
    let bytes = read_body(&state, body).await?;
    let outcome = state.store.append_body(&caller, &domain, &name, format, bytes).await?;
    let status = if outcome.appended == 0 { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(outcome)).into_response())
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn read_log(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name)): ApiPath<(String, String)>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<tessera_store::LogPage>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e}; use ?after=<position>&limit=<1..10000>")))?;
    let page = state.store.read_log(&caller, &domain, &name, q.after.unwrap_or(0), q.limit.unwrap_or(1000)).await?;
    Ok(Json(page))
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    from: Option<i64>,
    limit: Option<i64>,
}

async fn read_stream(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name, stream)): ApiPath<(String, String, String)>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e}; use ?from=<version>&limit=<1..10000>")))?;
    let events = state.store.read_stream(&caller, &domain, &name, &stream, q.from.unwrap_or(1), q.limit.unwrap_or(1000)).await?;
    Ok(Json(json!({ "stream": stream, "events": events })))
}

#[derive(Debug, Deserialize)]
struct StateQuery {
    as_of: Option<String>,
}

/// One entity (stream) as it was: its rows in each table at a log position
/// or a time (`?as_of=`), the newest by default. Rows are unmasked, so only
/// the product's domain reads them here.
async fn stream_state(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name, stream)): ApiPath<(String, String, String)>,
    query: Result<Query<StateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let usage = "use ?as_of=<log position> or ?as_of=<RFC 3339 time>, e.g. 2026-01-31T23:59:59Z";
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e}; {usage}")))?;
    state.store.product(&domain, &name).await?;
    let Some(projections) = &state.projections else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "projection_off", "this server does not run projections"));
    };
    let head = state.store.head(&domain, &name).await?;
    let position = match q.as_of.as_deref().map(str::trim) {
        None | Some("") => head,
        Some(text) => match text.parse::<i64>() {
            Ok(p) if p >= 0 => p.min(head),
            Ok(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_as_of", format!("a position is 0 or more; {usage}"))),
            Err(_) => match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(t) => state.store.position_at(&domain, &name, t.timestamp_micros()).await?,
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_as_of",
                        format!("`{text}` is neither a log position nor an RFC 3339 time ({e}); {usage}"),
                    ));
                }
            },
        },
    };
    let contract = state.store.current_contract(&domain, &name).await?;
    let Some(engine) = &state.engine else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sql_unavailable", "this server does not serve masked reads"));
    };
    let tables = tessera_projection::history::stream_state(&state.store, projections.warehouse(), &contract, &stream, position)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "projection_error", e.to_string()))?;
    // Masked for the caller, by the same masks as SQL.
    let roles = tessera_query::catalog::roles_for(&caller, &domain);
    let catalog = engine.catalog();
    let mut masked = serde_json::Map::new();
    let mut opener = state.store.opener(&domain);
    for (table, rows) in tables {
        let Some(spec) = contract.tables.iter().find(|(n, _)| n.as_str() == table).map(|(_, t)| t) else { continue };
        let rows = tessera_query::catalog::mask_rows(catalog.policy(), &catalog.key(&domain), spec, &roles, rows, &mut opener)
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "masking_error", e.to_string()))?;
        masked.insert(table, Value::Array(rows.into_iter().map(Value::Object).collect()));
    }
    let tables = Value::Object(masked);
    Ok(Json(json!({ "stream": stream, "as_of_position": position, "contract_version": contract.version.to_string(), "tables": tables })))
}
