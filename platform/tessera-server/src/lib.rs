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
mod events;
mod extract;
mod operations;
pub mod pgwire;
mod products;
pub mod projection;
pub mod sql;
pub mod state;
mod subjects;
mod ui;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use axum::{Json, Router};
use serde_json::{Value, json};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
pub use crate::extract::{ApiPath, Caller};
pub use crate::state::AppState;

/// The routes: each resource's `router()` under `/api/v1`, the UI, health
/// and metrics; every error JSON, every panic a 500.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(products::router())
        .merge(discovery::router())
        .merge(events::router())
        .merge(operations::router())
        .merge(subjects::router())
        .merge(sql::router());
    Router::new()
        .merge(ui::router())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(operations::metrics))
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
    // Responses go out as they are written (a streamed result is several
    // writes): without TCP_NODELAY, Nagle's algorithm holds a write until the
    // client acknowledges the previous one, which a client delays by 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; the API lives under /api/v1")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not support that method")
}

/// Liveness: the process answers. It asks nothing of the database (a
/// database outage must not restart every replica: `/readyz` says it).
async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "ok", "database": format!("{:?}", state.store.backend()).to_lowercase() }))
}

/// A check `/readyz` did not run (the server is draining).
const NOT_CHECKED: &str = "not checked";

/// How long `/readyz` waits for each of its checks.
const READINESS_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether this process should be sent work: its database and warehouse
/// answer (the database's migrations are this binary's, or it would not
/// have started), and it is not shutting down. 503 with each check's
/// outcome otherwise.
async fn readyz(State(state): State<AppState>) -> Response {
    let draining = state.is_draining();
    // Draining: not ready whatever the checks would say; they are not run.
    let (database, warehouse) = if draining {
        (Err(NOT_CHECKED.to_owned()), Err(NOT_CHECKED.to_owned()))
    } else {
        state.readiness.checked(|| readiness_checks(state.clone())).await
    };
    // Why is for the log: anyone may ask this endpoint, and errors name hosts and buckets.
    let outcome = |what: &str, r: &Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) if e == NOT_CHECKED => json!("not_checked"),
        Err(e) => {
            tracing::warn!(check = what, error = %e, "not ready");
            json!("unavailable")
        }
    };
    let ready = database.is_ok() && warehouse.is_ok() && !draining;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "database": outcome("database", &database),
            "warehouse": outcome("warehouse", &warehouse),
            "draining": draining,
        },
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// The database's and the warehouse's checks, at once.
async fn readiness_checks(state: AppState) -> (Result<(), String>, Result<(), String>) {
    let database = bounded(async { state.store.ping().await.map_err(|e| e.to_string()) });
    let warehouse = async {
        match &state.engine {
            Some(engine) => bounded(engine.catalog().warehouse().reachable()).await,
            None => Ok(()),
        }
    };
    tokio::join!(database, warehouse)
}

/// A readiness check, bounded: a probe waits seconds, not an object store's retries.
async fn bounded(check: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(READINESS_CHECK, check).await.unwrap_or_else(|_| Err(format!("no answer within {READINESS_CHECK:?}")))
}
