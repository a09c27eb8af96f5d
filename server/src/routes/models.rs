//! `GET /v1/models` and `GET /v1/models/{model}`: the configured model names plus the upstream lists of `"*"` providers (cached 5 minutes).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_core::{CallContext, ModelInfo};

use super::{RequestMeta, with_request_id};
use crate::app::AppState;
use crate::error::ApiError;

/// How long one upstream model list may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// Owner shown for configured model names.
const OWNER: &str = "switchyard";

/// `GET /v1/models`.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let meta = RequestMeta::from_headers(&headers);
    let models = all_models(&state).await;
    let data: Vec<ModelInfo> = models.into_values().collect();
    with_request_id(
        Json(json!({ "object": "list", "data": data })).into_response(),
        &meta,
    )
}

/// `GET /v1/models/{model}`.
pub async fn retrieve(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Response {
    let meta = RequestMeta::from_headers(&headers);
    let model = model.trim_start_matches('/');
    let response = match all_models(&state).await.remove(model) {
        Some(info) => Json(info).into_response(),
        None => ApiError::model_not_found(model).into_response(),
    };
    with_request_id(response, &meta)
}

/// Configured names first; `"*"` providers' upstream lists add the rest.
async fn all_models(state: &AppState) -> BTreeMap<String, ModelInfo> {
    let mut models: BTreeMap<String, ModelInfo> = state
        .manager
        .models()
        .into_iter()
        .map(|name| (name.clone(), ModelInfo::new(name, OWNER)))
        .collect();
    if !state.manager.has_wildcard() {
        return models;
    }
    let wildcard_ids: Vec<String> = state
        .manager
        .provider_configs()
        .into_iter()
        .filter(|p| p.enabled && p.models.contains_key("*"))
        .map(|p| p.id)
        .collect();
    let lists =
        futures_util::future::join_all(wildcard_ids.iter().map(|id| upstream_models(state, id)))
            .await;
    for info in lists.into_iter().flatten() {
        models.entry(info.id.clone()).or_insert(info);
    }
    models
}

async fn upstream_models(state: &AppState, provider_id: &str) -> Vec<ModelInfo> {
    if let Some(list) = state.model_lists.get(provider_id) {
        return list;
    }
    let Some(provider) = state.manager.provider(provider_id) else {
        return Vec::new();
    };
    if !provider.capabilities().models {
        return Vec::new();
    }
    let ctx = CallContext {
        deadline: Some(tokio::time::Instant::now() + LIST_TIMEOUT),
        response_timeout: LIST_TIMEOUT,
        ..CallContext::default()
    };
    match tokio::time::timeout(LIST_TIMEOUT, provider.list_models(&ctx)).await {
        Ok(Ok(list)) => {
            state.model_lists.put(provider_id, list.clone());
            list
        }
        Ok(Err(error)) => {
            tracing::warn!(provider = %provider_id, error_kind = error.kind(), "cannot list upstream models");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(provider = %provider_id, "listing upstream models timed out");
            Vec::new()
        }
    }
}
