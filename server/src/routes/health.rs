//! `GET /healthz` (the process is alive) and `GET /readyz` (config loaded and listener serving; upstream health is not readiness).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;

/// Alive: always 200.
pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready: 200 while serving, 503 before the listener serves and once shutdown began.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready" })),
        )
            .into_response()
    }
}
