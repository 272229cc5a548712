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
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt as _;
use axum::{Json, Router};
use serde_json::{Value, json};
use tessera_store::Store;
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

async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    sqlx_ping(&state.store).await?;
    Ok(Json(json!({ "status": "ok", "database": format!("{:?}", state.store.backend()).to_lowercase() })))
}

async fn sqlx_ping(store: &Store) -> Result<(), ApiError> {
    store.products().await.map(|_| ()).map_err(ApiError::from)
}
