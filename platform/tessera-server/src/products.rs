//! Products and their contracts: the list, publishing a contract version,
//! one product as its viewer sees it, and a published version's text.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{ApiPath, Caller, content_type, read_body, unsupported};
use crate::state::AppState;
use crate::{discovery, projection};

/// `/products`, `/products/{domain}/{name}` and its published versions' texts.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/products", get(list_products).post(publish))
        .route("/products/{domain}/{name}", get(product))
        .route("/products/{domain}/{name}/versions/{version}", get(contract_version))
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

async fn contract_version(
    State(state): State<AppState>,
    ApiPath((domain, name, version)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    let source = state.store.contract_source(&domain, &name, &version).await?;
    Ok(([(header::CONTENT_TYPE, "application/yaml; charset=utf-8")], source).into_response())
}
