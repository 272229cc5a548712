//! What handlers take from a request: the caller, path segments, and the
//! body (size-limited, by content type), each failing with our JSON errors.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use tessera_store::Principal;

use crate::error::ApiError;
use crate::state::AppState;

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

/// Reads the whole body, refusing more than the configured limit.
pub(crate) async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, state.max_body_bytes).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {} bytes; send it in smaller batches", state.max_body_bytes),
        )
        .with("limit", state.max_body_bytes)
    })
}

pub(crate) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default()
}

pub(crate) fn unsupported(found: &str, expected: &str) -> ApiError {
    let found = if found.is_empty() { "none".to_owned() } else { format!("`{found}`") };
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("Content-Type {found} is not accepted here; send {expected}"),
    )
}
