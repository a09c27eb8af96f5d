//! Who may call `/admin/*` (SPEC §16): the admin token when one is configured, else loopback `Host`s only.
//!
//! - With a token (the variable named by `server.admin_token_env`, default
//!   `SWITCHYARD_ADMIN_TOKEN`): `Authorization: Bearer <token>`, compared in
//!   constant time; without it or with a wrong one, 401
//!   (`code: invalid_admin_token`).
//! - Without a token: only requests whose `Host` is loopback (`localhost`,
//!   `127.0.0.1`, `[::1]`, any port) are answered; others get 403
//!   (`code: admin_loopback_only`). The server also refuses to listen on a
//!   non-loopback address without a token.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

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

/// Middleware: runs the admin route only for an allowed caller.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match refusal(&state, request.headers()) {
        None => next.run(request).await,
        Some(response) => response,
    }
}
