//! The HTTP API (axum): publishing contracts, appending and reading events,
//! SQL, the discovery catalog (its API and its web UI), health. Handlers translate HTTP to
//! [`tessera_store::Store`] calls and back; the rules live in the store.
//!
//! Every error is JSON (see [`error::ApiError`]); bodies are read with a size
//! limit; a panic in a handler becomes a 500, never a dropped connection.

pub mod config;
pub mod demo;
pub mod discovery;
pub mod error;
pub mod pgwire;
pub mod projection;
pub mod sql;
mod ui;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_store::principals::hash_token;
use tessera_store::{BodyFormat, Principal, Store};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    /// Principals by token hash.
    principals: Arc<RwLock<HashMap<String, Principal>>>,
    pub max_body_bytes: usize,
    /// The projectors of this process, when it runs them.
    pub projections: Option<tessera_projection::Projections>,
    /// The SQL engine, when a warehouse is configured.
    pub engine: Option<tessera_query::Engine>,
    /// The catalog's search index.
    pub discovery: discovery::Discovery,
}

impl AppState {
    pub async fn new(store: Store, max_body_bytes: usize) -> Result<Self, tessera_store::Error> {
        let state = Self {
            store,
            principals: Arc::default(),
            max_body_bytes,
            projections: None,
            engine: None,
            discovery: discovery::Discovery::default(),
        };
        state.reload_principals().await?;
        Ok(state)
    }

    /// Serves the state of these projectors too.
    pub fn with_projections(mut self, projections: tessera_projection::Projections) -> Self {
        self.projections = Some(projections);
        self
    }

    /// Serves SQL through this engine.
    pub fn with_engine(mut self, engine: tessera_query::Engine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// The principal of a token, if any has it.
    pub fn principal_of_token(&self, token: &str) -> Option<Principal> {
        self.principal_for(token)
    }

    /// Re-reads the principals from the catalog.
    pub async fn reload_principals(&self) -> Result<(), tessera_store::Error> {
        let records = self.store.principals().await?;
        let map = records.into_iter().map(|r| (r.token_sha256, r.principal)).collect();
        if let Ok(mut principals) = self.principals.write() {
            *principals = map;
        }
        Ok(())
    }

    fn principal_for(&self, token: &str) -> Option<Principal> {
        self.principals.read().ok()?.get(&hash_token(token)).cloned()
    }
}

/// The caller: the principal of the bearer token, or `public` without one.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok(Caller(Principal::public()));
        };
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m);
        let value = value.to_str().map_err(|_| unauthorized("the Authorization header is not valid text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        state.principal_for(token).map(Caller).ok_or_else(|| {
            unauthorized("unknown token: check it, or ask an administrator for one (demo tokens are in <data-dir>/demo-principals.json)")
        })
    }
}

/// `Path`, with a JSON error when a segment does not fit (say, percent-encoded
/// bytes that are not UTF-8).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(e) => Err(ApiError::new(e.status(), "invalid_path", format!("{}; check the URL", e.body_text()))),
        }
    }
}

/// The routes.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/products", get(list_products).post(publish))
        .route("/products/{domain}/{name}", get(product))
        .route("/products/{domain}/{name}/versions", get(discovery::versions))
        .route("/products/{domain}/{name}/versions/{version}", get(contract_version))
        .route("/products/{domain}/{name}/changelog", get(discovery::changelog))
        .route("/products/{domain}/{name}/lineage", get(discovery::lineage))
        .route("/products/{domain}/{name}/freshness", get(discovery::freshness))
        .route("/products/{domain}/{name}/quality", get(discovery::quality))
        .route("/products/{domain}/{name}/sample", get(discovery::sample))
        .route("/products/{domain}/{name}/volume", get(discovery::volume))
        .route("/products/{domain}/{name}/events", get(read_log).post(append))
        .route("/products/{domain}/{name}/streams/{stream}", get(read_stream))
        .route("/products/{domain}/{name}/streams/{stream}/state", get(stream_state))
        .route("/products/{domain}/{name}/dead-letters", get(dead_letters))
        .route("/products/{domain}/{name}/commands", axum::routing::post(request_command))
        .route("/products/{domain}/{name}/commands/{id}", get(command_status))
        .route("/products/{domain}/{name}/generations/{major}/retire", axum::routing::post(retire_generation))
        .route("/sql", axum::routing::post(sql::post_sql))
        .route("/audit", get(sql::audit_log))
        .route("/search", get(discovery::search))
        .route("/me", get(discovery::me))
        .route("/openapi.json", get(discovery::openapi));
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the server failed on this request; it has been logged")
                .into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; the API lives under /api/v1")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not support that method")
}

async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    sqlx_ping(&state.store).await?;
    Ok(Json(json!({ "status": "ok", "database": format!("{:?}", state.store.backend()).to_lowercase() })))
}

async fn sqlx_ping(store: &Store) -> Result<(), ApiError> {
    store.products().await.map(|_| ()).map_err(ApiError::from)
}

/// Reads the whole body, refusing more than the configured limit.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, state.max_body_bytes).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {} bytes; send it in smaller batches", state.max_body_bytes),
        )
        .with("limit", state.max_body_bytes)
    })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn unsupported(found: &str, expected: &str) -> ApiError {
    let found = if found.is_empty() { "none".to_owned() } else { format!("`{found}`") };
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("Content-Type {found} is not accepted here; send {expected}"),
    )
}

async fn list_products(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let products = state.store.products().await?;
    Ok(Json(json!({ "products": products })))
}

async fn publish(State(state): State<AppState>, Caller(caller): Caller, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    if caller.is_public() {
        return Err(tessera_store::Error::Unauthenticated("publishing needs a token: send `Authorization: Bearer <token>`".into()).into());
    }
    let ct = content_type(&headers);
    if !matches!(ct.as_str(), "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" | "text/plain") {
        return Err(unsupported(&ct, "the contract as `application/yaml`"));
    }
    let bytes = read_body(&state, body).await?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
            format!("the contract is not UTF-8 (byte {}); save it as UTF-8", e.valid_up_to()),
        )
    })?;
    let published = state.store.publish(&caller, text).await?;
    if let Some(engine) = &state.engine {
        engine.catalog().invalidate();
    }
    state.discovery.invalidate();
    let status = match published.outcome {
        "unchanged" => StatusCode::OK,
        _ => StatusCode::CREATED,
    };
    Ok((status, Json(published)).into_response())
}

async fn product(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((domain, name)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let summary = state.store.product(&domain, &name).await?;
    let versions = state.store.versions(&domain, &name).await?;
    let head = state.store.head(&domain, &name).await?;
    let contract = state.store.current_contract(&domain, &name).await?;
    let lineage = discovery::lineage_for(&state, &contract).await;
    let contract = discovery::contract_view(&contract, &lineage, state.store.policy(), &caller);
    let projection = match &state.projections {
        Some(p) => projection::view(&state.store, p, &domain, &name, caller.is_member_of(&domain)).await?,
        None => None,
    };
    Ok(Json(json!({ "product": summary, "contract": contract, "versions": versions, "head_position": head, "projection": projection })))
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
    for (table, rows) in tables {
        let Some(spec) = contract.tables.iter().find(|(n, _)| n.as_str() == table).map(|(_, t)| t) else { continue };
        let rows = tessera_query::catalog::mask_rows(catalog.policy(), &catalog.key(&domain), spec, &roles, rows)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "masking_error", e.to_string()))?;
        masked.insert(table, Value::Array(rows.into_iter().map(Value::Object).collect()));
    }
    let tables = Value::Object(masked);
    Ok(Json(json!({ "stream": stream, "as_of_position": position, "contract_version": contract.version.to_string(), "tables": tables })))
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
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = match &state.projections {
        Some(p) => projection::metrics(&state.store, p).await?,
        None => String::new(),
    };
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response())
}

async fn contract_version(
    State(state): State<AppState>,
    ApiPath((domain, name, version)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    let source = state.store.contract_source(&domain, &name, &version).await?;
    Ok(([(header::CONTENT_TYPE, "application/yaml; charset=utf-8")], source).into_response())
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
