//! HTTP errors: the OpenAI shape (Anthropic shape on `/v1/messages`), and the mapping of manager errors to statuses (SPEC §5, §9).
//!
//! Every error the server sends goes through [`ApiError`]:
//! `{"error": {"message", "type", "code", "param"}}`, or on `/v1/messages`
//! `{"type": "error", "error": {"type", "message"}}`. [`ApiError::from_manager`]
//! implements SPEC §5's "final errors": an upstream's final 4xx keeps its
//! status, message, type, code and param; exhausted attempts become 502
//! (`upstream_auth_error` when every attempt was refused with 401/403/404),
//! 429 with `Retry-After` when every attempt was rate limited, 504 when the
//! deadline passed. Messages list the attempt trail as deployment ids and
//! error kinds, never upstream bodies or URLs, and every configured secret
//! is redacted by [`Redactor`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchyard_core::config::REDACTED;
use switchyard_core::error::describe_trail;
use switchyard_core::{AttemptRecord, ManagerError};

/// Which wire shape an error is rendered in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// `{"error": {"message", "type", "code", "param"}}`.
    #[default]
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

/// An error answered to the client.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message (secrets already redacted).
    pub message: String,
    /// OpenAI `error.type`.
    pub error_type: String,
    /// OpenAI `error.code`.
    pub code: Option<String>,
    /// OpenAI `error.param`.
    pub param: Option<String>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// Wire shape.
    pub shape: Shape,
}

impl ApiError {
    /// An error with a status, type and message.
    pub fn new(status: StatusCode, error_type: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            error_type: error_type.to_owned(),
            code: None,
            param: None,
            retry_after: None,
            shape: Shape::OpenAi,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 404 `model_not_found`.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or is not served by this gateway."),
        )
        .with_code("model_not_found")
        .with_param("model")
    }

    /// 401 for a missing or wrong client key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 413 for a body over `max_body_bytes`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    /// 408 for a request body that stopped arriving (`body_read_timeout`).
    pub fn body_stalled(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "The request body stopped arriving: no part of it came for {limit:?} (server.body_read_timeout)."
            ),
        )
        .with_code("request_timeout")
    }

    /// 404 for an unknown path.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown request URL: {method} {path}."),
        )
        .with_code("unknown_url")
    }

    /// 500 for a failure inside the gateway.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// Sets `code`.
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// Sets `param`.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    /// Renders in `shape`.
    pub fn with_shape(mut self, shape: Shape) -> Self {
        self.shape = shape;
        self
    }

    /// Renders in the Anthropic shape.
    pub fn anthropic(self) -> Self {
        self.with_shape(Shape::Anthropic)
    }

    /// Maps a manager error to the status and body of SPEC §5.
    pub fn from_manager(error: &ManagerError, redactor: &Redactor) -> Self {
        match error {
            ManagerError::UnknownModel { model, .. } => Self::model_not_found(model),
            ManagerError::Rejected { error, .. } => {
                let status = StatusCode::from_u16(error.status)
                    .ok()
                    .filter(StatusCode::is_client_error)
                    .unwrap_or(StatusCode::BAD_REQUEST);
                Self {
                    status,
                    message: redactor.redact(&error.message),
                    error_type: error
                        .error_type
                        .clone()
                        .unwrap_or_else(|| "invalid_request_error".to_owned()),
                    code: error.code.as_deref().map(|c| redactor.redact(c)),
                    param: error.param.as_deref().map(|p| redactor.redact(p)),
                    retry_after: None,
                    shape: Shape::OpenAi,
                }
            }
            ManagerError::Exhausted {
                model,
                trail,
                last,
                retry_after,
            } => exhausted(model, trail, retry_after.or(last.retry_after()), redactor),
            ManagerError::DeadlineExceeded { trail } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                redactor.redact(&format!(
                    "The request deadline passed after {} attempt(s): {}",
                    trail.len(),
                    describe_or_none(trail)
                )),
            )
            .with_code("deadline_exceeded"),
            ManagerError::QueueFull { retry_after } => Self {
                retry_after: Some(retry_seconds(Some(*retry_after))),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "The gateway's request queue is full; retry later.",
                )
                .with_code("queue_full")
            },
            ManagerError::QueueTimeout { model, retry_after } => Self {
                retry_after: Some(retry_seconds(Some(*retry_after))),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!("No deployment of model `{model}` had capacity within the queue timeout; retry later."),
                )
                .with_code("queue_timeout")
            },
            ManagerError::NoCapacity {
                model, retry_after, ..
            } => Self {
                retry_after: Some(retry_seconds(*retry_after)),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!("Every deployment of model `{model}` is busy or cooling down; retry later."),
                )
                .with_code("no_capacity")
            },
            ManagerError::NoProviders => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "No provider is configured.",
            )
            .with_code("no_providers"),
            other => Self::internal(redactor.redact(&other.to_string())).with_code(other.kind()),
        }
    }

    /// The JSON body in this error's shape.
    pub fn body(&self) -> Value {
        match self.shape {
            Shape::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.error_type,
                    "code": self.code,
                    "param": self.param,
                }
            }),
            Shape::Anthropic => switchyard_providers::wire::anthropic::error_body(
                self.status.as_u16(),
                &self.message,
            ),
        }
    }

    /// The body of an SSE error event sent after a stream started
    /// (`data: {"error": {...}}`, or Anthropic's `error` event).
    pub fn stream_event(&self) -> String {
        match self.shape {
            Shape::OpenAi => format!("data: {}\n\n", self.body()),
            Shape::Anthropic => format!("event: error\ndata: {}\n\n", self.body()),
        }
    }
}

fn describe_or_none(trail: &[AttemptRecord]) -> String {
    if trail.is_empty() {
        "no attempt could be made".to_owned()
    } else {
        describe_trail(trail)
    }
}

/// `Retry-After` seconds: rounded up, at least 1.
pub fn retry_seconds(after: Option<std::time::Duration>) -> u64 {
    after
        .map(|d| d.as_millis().div_ceil(1000))
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(1)
        .max(1)
}

fn exhausted(
    model: &str,
    trail: &[AttemptRecord],
    retry_after: Option<std::time::Duration>,
    redactor: &Redactor,
) -> ApiError {
    let described = redactor.redact(&describe_or_none(trail));
    let all =
        |kinds: &[&str]| !trail.is_empty() && trail.iter().all(|a| kinds.contains(&a.outcome));
    if all(&["auth", "not_found"]) {
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_auth_error",
            format!(
                "Every upstream refused the gateway's credentials or does not know model `{model}` (a gateway configuration problem, not your API key): {described}"
            ),
        )
        .with_code("upstream_auth_error");
    }
    if all(&["rate_limited"]) {
        return ApiError {
            retry_after: Some(retry_seconds(retry_after)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("Every upstream of model `{model}` is rate limited: {described}"),
            )
            .with_code("rate_limited")
        };
    }
    if trail.is_empty() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("No deployment of model `{model}` could take the request."),
        )
        .with_code("no_deployment");
    }
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!("All attempts for model `{model}` failed: {described}"),
    )
    .with_code("upstream_error")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Replaces every configured secret (upstream keys, admin token, client
/// keys) with `[redacted]` in text bound for a client or a log.
///
/// Clones share one list, so secrets learnt at run time (admin-added
/// providers, reloads: [`Redactor::add`]) reach every holder.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: std::sync::Arc<parking_lot::RwLock<Vec<String>>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.read().len())
            .finish()
    }
}

impl Redactor {
    /// Secrets shorter than this are not redacted: they would mangle ordinary text.
    pub const MIN_LEN: usize = 6;

    /// A redactor for these secrets.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let redactor = Self::default();
        redactor.add(secrets);
        redactor
    }

    /// Adds secrets (shared with every clone).
    pub fn add(&self, secrets: impl IntoIterator<Item = String>) {
        let mut list = self.secrets.write();
        list.extend(
            secrets
                .into_iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| s.len() >= Self::MIN_LEN),
        );
        // Longest first, so a secret containing another is replaced whole.
        list.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        list.dedup();
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in self.secrets.read().iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use switchyard_core::{ProviderError, RequestType, UpstreamError};

    use super::*;

    fn record(provider: &str, outcome: &'static str) -> AttemptRecord {
        AttemptRecord {
            attempt: 1,
            provider_id: provider.into(),
            model: "m".into(),
            outcome,
            status: None,
            duration_ms: 1,
        }
    }

    fn exhausted_with(outcomes: &[&'static str], retry_after: Option<Duration>) -> ManagerError {
        ManagerError::Exhausted {
            model: "m".into(),
            trail: outcomes.iter().map(|o| record("p", o)).collect(),
            last: Box::new(ProviderError::Protocol {
                message: "x".into(),
            }),
            retry_after,
        }
    }

    #[test]
    fn final_upstream_4xx_keeps_status_and_fields_with_secrets_redacted() {
        let upstream = UpstreamError::from_status(
            422,
            "bad key sk-secret-123456 in temperature",
            Some("invalid_request_error".into()),
            Some("invalid_value".into()),
        )
        .with_param(Some("temperature".into()));
        let error = ManagerError::Rejected {
            error: Box::new(upstream),
            provider_id: "p".into(),
            trail: vec![],
        };
        let api = ApiError::from_manager(&error, &Redactor::new(["sk-secret-123456".to_owned()]));
        assert_eq!(api.status, StatusCode::UNPROCESSABLE_ENTITY);
        let body = api.body();
        assert_eq!(
            body["error"]["message"],
            "bad key [redacted] in temperature"
        );
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_value");
        assert_eq!(body["error"]["param"], "temperature");
    }

    #[test]
    fn exhaustion_maps_per_spec() {
        let r = Redactor::default();
        let auth = ApiError::from_manager(&exhausted_with(&["auth", "not_found"], None), &r);
        assert_eq!(auth.status, StatusCode::BAD_GATEWAY);
        assert_eq!(auth.error_type, "upstream_auth_error");
        assert!(
            auth.message.contains("p/m: auth, p/m: not_found"),
            "{}",
            auth.message
        );

        let limited = ApiError::from_manager(
            &exhausted_with(
                &["rate_limited", "rate_limited"],
                Some(Duration::from_millis(1200)),
            ),
            &r,
        );
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.retry_after, Some(2));
        let limited = ApiError::from_manager(&exhausted_with(&["rate_limited"], None), &r);
        assert_eq!(limited.retry_after, Some(1));

        let mixed =
            ApiError::from_manager(&exhausted_with(&["rate_limited", "unavailable"], None), &r);
        assert_eq!(mixed.status, StatusCode::BAD_GATEWAY);
        assert_eq!(mixed.error_type, "upstream_error");

        let deadline = ApiError::from_manager(
            &ManagerError::DeadlineExceeded {
                trail: vec![record("p", "timeout_first_byte")],
            },
            &r,
        );
        assert_eq!(deadline.status, StatusCode::GATEWAY_TIMEOUT);

        let unknown = ApiError::from_manager(
            &ManagerError::UnknownModel {
                model: "x".into(),
                request_type: RequestType::Chat,
            },
            &r,
        );
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(unknown.code.as_deref(), Some("model_not_found"));

        let busy = ApiError::from_manager(
            &ManagerError::NoCapacity {
                model: "m".into(),
                retry_after: Some(Duration::from_millis(10)),
                at_limit: false,
            },
            &r,
        );
        assert_eq!(
            (busy.status, busy.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(1))
        );
        let full = ApiError::from_manager(
            &ManagerError::QueueFull {
                retry_after: Duration::from_millis(2500),
            },
            &r,
        );
        assert_eq!(
            (full.status, full.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(3))
        );
        let waited = ApiError::from_manager(
            &ManagerError::QueueTimeout {
                model: "m".into(),
                retry_after: Duration::from_secs(1),
            },
            &r,
        );
        assert_eq!(waited.code.as_deref(), Some("queue_timeout"));
        assert_eq!(
            ApiError::from_manager(&ManagerError::NoProviders, &r).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn shapes() {
        let openai = ApiError::invalid_request("nope").body();
        assert_eq!(openai["error"]["message"], "nope");
        assert!(openai["error"]["code"].is_null());
        let anthropic = ApiError::too_large(10).anthropic().body();
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "request_too_large");
        assert!(
            ApiError::invalid_request("x")
                .anthropic()
                .stream_event()
                .starts_with("event: error\ndata: {")
        );
    }

    #[test]
    fn redactor_ignores_short_values_and_replaces_long_ones() {
        let r = Redactor::new(["abc".to_owned(), "secret-token-1".to_owned()]);
        assert_eq!(r.redact("abc secret-token-1"), "abc [redacted]");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_seconds(Some(Duration::from_millis(1))), 1);
        assert_eq!(retry_seconds(Some(Duration::from_millis(3001))), 4);
        assert_eq!(retry_seconds(None), 1);
    }
}
