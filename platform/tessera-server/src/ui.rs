//! The catalog's web UI: the files of `catalog-ui/`, embedded at build time
//! and served from `/` and `/ui/…`. Nothing is fetched from elsewhere; the
//! Content-Security-Policy says so to the browser too.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::state::AppState;

/// Every asset: its name under `/ui/`, media type and bytes.
const ASSETS: [(&str, &str, &str); 3] = [
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../../catalog-ui/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("../../../catalog-ui/app.css")),
    ("favicon.svg", "image/svg+xml", include_str!("../../../catalog-ui/favicon.svg")),
];

const INDEX: &str = include_str!("../../../catalog-ui/index.html");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

fn page(media: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`: the single page; it routes by the URL's fragment.
/// The page at `/` and its files under `/ui/`.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/", axum::routing::get(index)).route("/ui/{file}", axum::routing::get(asset))
}

pub(crate) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{file}`.
pub(crate) async fn asset(ApiPath(file): ApiPath<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, media, body)| page(media, body))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("the UI has no file `{file}`")))
}
