//! The read-only admin route `GET /admin/stats` (SPEC §3 load stats as `{"data": [...]}`); the rest of the admin API comes later.
//!
//! Access (SPEC §16): `Authorization: Bearer <admin token>` when a token is
//! configured (401 otherwise); with no token, only requests whose `Host`
//! is loopback (403 otherwise).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::auth::AdminAccess;
use crate::error::ApiError;

/// Checks admin access: `None` when granted, else the response to send.
pub fn refusal(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    match state.credentials.admin_access(headers) {
        AdminAccess::Granted => None,
        AdminAccess::Unauthorized => Some(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "The admin API needs `Authorization: Bearer <admin token>`.",
            )
            .with_code("invalid_admin_token")
            .into_response(),
        ),
        AdminAccess::NotLoopback => Some(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "No admin token is configured, so the admin API answers only loopback hosts.",
            )
            .with_code("admin_loopback_only")
            .into_response(),
        ),
    }
}

/// `GET /admin/stats`: one row per provider, least loaded first.
pub async fn stats(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(response) = refusal(&state, &headers) {
        return response;
    }
    Json(json!({ "data": state.manager.get_provider_load_stats() })).into_response()
}
