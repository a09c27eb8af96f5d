//! Errors, classified where they are created (SPEC §5, §9).
//!
//! Every provider error answers the questions the failover loop asks:
//! retry the same deployment ([`ProviderError::is_retryable`])? try another
//! ([`ProviderError::should_switch`])? count it against the deployment's
//! circuit ([`ProviderError::counts_for_breaker`])? It also carries a
//! low-cardinality [`ProviderError::kind`] for metric labels and a
//! [`Severity`]. Raw upstream messages never become labels.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// How bad an error is (SPEC §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// One retryable upstream error.
    Low,
    /// A deployment ejected, or a request refused.
    Medium,
    /// Every deployment of a model failed.
    High,
    /// Invalid config at start, or no provider at all.
    Critical,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// Which deadline a timeout hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutPhase {
    /// No response headers within the first-byte / first-token limit.
    FirstByte,
    /// Headers came, but no content within `first_token_timeout`.
    FirstToken,
    /// A stream went silent for `stream_idle_timeout`.
    StreamIdle,
    /// A whole non-stream response took longer than `provider_timeout`.
    Response,
    /// The request's overall deadline expired (not the deployment's fault).
    Deadline,
}

/// What an upstream HTTP error (or in-band stream error) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamCategory {
    /// 400 `context_length_exceeded` and equivalents.
    ContextLength,
    /// 400 content filter / policy rejection.
    ContentFilter,
    /// Any other 400 / 422 (or other 4xx not listed).
    BadRequest,
    /// 401 / 403.
    Auth,
    /// 404, model not found.
    NotFound,
    /// 429.
    RateLimited,
    /// 500 / 502: possibly transient.
    ServerError,
    /// 503 / 504 / other persistent 5xx.
    Unavailable,
    /// 529 / Anthropic `overloaded_error`.
    Overloaded,
}

/// An error returned by an upstream provider over HTTP, or in-band in a stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpstreamError {
    /// HTTP status (for in-band stream errors: the status the error implies).
    pub status: u16,
    /// What it means.
    pub category: UpstreamCategory,
    /// The upstream's `error.message`, secrets redacted by the adapter.
    pub message: String,
    /// The upstream's `error.type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// The upstream's `error.code`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The upstream's `error.param`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// `Retry-After` (or an equivalent rate-limit reset header).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration_ms")]
    pub retry_after: Option<Duration>,
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&d.as_millis()),
            None => s.serialize_none(),
        }
    }
}

impl UpstreamError {
    /// Classifies an HTTP status plus the upstream's error type and code.
    pub fn from_status(
        status: u16,
        message: impl Into<String>,
        error_type: Option<String>,
        code: Option<String>,
    ) -> Self {
        let category = categorize(status, error_type.as_deref(), code.as_deref());
        Self {
            status,
            category,
            message: message.into(),
            error_type,
            code,
            param: None,
            retry_after: None,
        }
    }

    /// Sets `Retry-After`.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Sets `param`.
    pub fn with_param(mut self, param: Option<String>) -> Self {
        self.param = param;
        self
    }
}

/// Maps status, type and code to a category. Provider-specific codes are
/// recognised here so that every adapter classifies the same way.
pub fn categorize(status: u16, error_type: Option<&str>, code: Option<&str>) -> UpstreamCategory {
    let mentions = |needles: &[&str]| {
        needles.iter().any(|needle| {
            error_type.is_some_and(|t| t.contains(needle))
                || code.is_some_and(|c| c.contains(needle))
        })
    };
    match status {
        429 => UpstreamCategory::RateLimited,
        529 => UpstreamCategory::Overloaded,
        401 | 403 => UpstreamCategory::Auth,
        404 => UpstreamCategory::NotFound,
        500 | 502 => {
            if mentions(&["overloaded"]) {
                UpstreamCategory::Overloaded
            } else {
                UpstreamCategory::ServerError
            }
        }
        400..=499 => {
            if mentions(&["context_length", "context_window", "too_many_tokens"]) {
                UpstreamCategory::ContextLength
            } else if mentions(&[
                "content_filter",
                "content_policy",
                "policy_violation",
                "safety",
            ]) {
                UpstreamCategory::ContentFilter
            } else if mentions(&["rate_limit"]) {
                UpstreamCategory::RateLimited
            } else if mentions(&["overloaded"]) {
                UpstreamCategory::Overloaded
            } else {
                UpstreamCategory::BadRequest
            }
        }
        _ => {
            if mentions(&["overloaded"]) {
                UpstreamCategory::Overloaded
            } else {
                UpstreamCategory::Unavailable
            }
        }
    }
}

/// An error from one call to one deployment.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// Connection refused, DNS or TLS failure: the whole provider is unreachable.
    #[error("cannot connect to the provider: {message}")]
    Connect {
        /// What failed (no URL, no key).
        message: String,
    },
    /// The connection was reset or closed before any response byte.
    #[error("connection reset before the response: {message}")]
    Reset {
        /// What happened.
        message: String,
    },
    /// A deadline passed.
    #[error("timed out waiting for {phase:?}")]
    Timeout {
        /// Which deadline.
        phase: TimeoutPhase,
    },
    /// The upstream answered with an error status.
    #[error("upstream error {}: {}", .0.status, .0.message)]
    Upstream(Box<UpstreamError>),
    /// A stream sent an error event after it had started.
    #[error("in-band stream error: {}", .0.message)]
    InBand(Box<UpstreamError>),
    /// A stream closed without `finish_reason` (a cut).
    #[error("stream cut after {chunks} chunks without a finish_reason")]
    StreamCut {
        /// Chunks received before the cut.
        chunks: u64,
    },
    /// The upstream answered something that is not its protocol (bad JSON,
    /// a redirect, a wrong content type ...).
    #[error("protocol error: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// The provider does not offer this operation.
    #[error("the provider does not support {operation}")]
    Unsupported {
        /// The operation.
        operation: &'static str,
    },
    /// The caller went away; never the deployment's fault.
    #[error("cancelled by the client")]
    Cancelled,
}

impl ProviderError {
    /// An upstream HTTP error classified from its status, type and code.
    pub fn upstream(
        status: u16,
        message: impl Into<String>,
        error_type: Option<String>,
        code: Option<String>,
    ) -> Self {
        Self::Upstream(Box::new(UpstreamError::from_status(
            status, message, error_type, code,
        )))
    }

    /// The upstream error, for `Upstream` and `InBand`.
    pub fn upstream_error(&self) -> Option<&UpstreamError> {
        match self {
            Self::Upstream(e) | Self::InBand(e) => Some(e),
            _ => None,
        }
    }

    /// The upstream category, for `Upstream` and `InBand`.
    pub fn category(&self) -> Option<UpstreamCategory> {
        self.upstream_error().map(|e| e.category)
    }

    /// HTTP status, when the upstream sent one.
    pub fn status(&self) -> Option<u16> {
        self.upstream_error().map(|e| e.status)
    }

    /// Retry the *same* deployment (once): one transient error.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Reset { .. } | Self::Connect { .. } => true,
            Self::Upstream(e) => e.category == UpstreamCategory::ServerError,
            _ => false,
        }
    }

    /// Move on to another deployment (or fallback model).
    pub fn should_switch(&self) -> bool {
        match self {
            Self::Cancelled | Self::Unsupported { .. } => false,
            Self::Timeout { phase } => *phase != TimeoutPhase::Deadline,
            Self::Upstream(e) | Self::InBand(e) => !matches!(
                e.category,
                UpstreamCategory::ContentFilter
                    | UpstreamCategory::BadRequest
                    | UpstreamCategory::ContextLength
            ),
            _ => true,
        }
    }

    /// Whether this failure counts toward opening the deployment's circuit:
    /// 5xx, 529, connect/reset, first-byte/first-token/stall/response
    /// timeouts, cuts and protocol errors. Never 4xx, 429 or cancellation.
    pub fn counts_for_breaker(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Reset { .. } | Self::StreamCut { .. } => true,
            Self::Protocol { .. } => true,
            Self::Timeout { phase } => *phase != TimeoutPhase::Deadline,
            Self::Upstream(e) | Self::InBand(e) => matches!(
                e.category,
                UpstreamCategory::ServerError
                    | UpstreamCategory::Unavailable
                    | UpstreamCategory::Overloaded
            ),
            Self::Unsupported { .. } | Self::Cancelled => false,
        }
    }

    /// Whether this failure says something about every model of the
    /// provider (unreachable, or its credentials rejected).
    pub fn is_provider_wide(&self) -> bool {
        matches!(self, Self::Connect { .. }) || self.category() == Some(UpstreamCategory::Auth)
    }

    /// Whether retrying this deployment within the same request is pointless
    /// (a silent provider stays silent; a bad key stays bad).
    pub fn excludes_deployment(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::StreamCut { .. } => true,
            Self::Upstream(e) | Self::InBand(e) => matches!(
                e.category,
                UpstreamCategory::Auth
                    | UpstreamCategory::NotFound
                    | UpstreamCategory::ContextLength
            ),
            _ => false,
        }
    }

    /// Whether the deployment should cool down (429, 529, or 503 with Retry-After).
    pub fn starts_cooldown(&self) -> bool {
        match self.upstream_error() {
            Some(e) => {
                e.category == UpstreamCategory::RateLimited
                    || (e.status == 503 && e.retry_after.is_some())
            }
            None => false,
        }
    }

    /// The upstream's `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.upstream_error().and_then(|e| e.retry_after)
    }

    /// A 4xx that ends the request with the upstream's own status and message.
    pub fn is_final_client_error(&self) -> bool {
        matches!(
            self.category(),
            Some(UpstreamCategory::ContentFilter | UpstreamCategory::BadRequest)
        )
    }

    /// Severity of one such error on its own.
    pub fn severity(&self) -> Severity {
        if self.is_retryable() || self.starts_cooldown() || matches!(self, Self::Cancelled) {
            Severity::Low
        } else {
            Severity::Medium
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Reset { .. } => "reset",
            Self::Timeout { phase } => match phase {
                TimeoutPhase::FirstByte => "timeout_first_byte",
                TimeoutPhase::FirstToken => "timeout_first_token",
                TimeoutPhase::StreamIdle => "timeout_stream_idle",
                TimeoutPhase::Response => "timeout_response",
                TimeoutPhase::Deadline => "deadline",
            },
            Self::Upstream(e) => category_kind(e.category),
            Self::InBand(_) => "in_band_error",
            Self::StreamCut { .. } => "stream_cut",
            Self::Protocol { .. } => "protocol",
            Self::Unsupported { .. } => "unsupported",
            Self::Cancelled => "cancelled",
        }
    }
}

fn category_kind(category: UpstreamCategory) -> &'static str {
    match category {
        UpstreamCategory::ContextLength => "context_length",
        UpstreamCategory::ContentFilter => "content_filter",
        UpstreamCategory::BadRequest => "bad_request",
        UpstreamCategory::Auth => "auth",
        UpstreamCategory::NotFound => "not_found",
        UpstreamCategory::RateLimited => "rate_limited",
        UpstreamCategory::ServerError => "server_error",
        UpstreamCategory::Unavailable => "unavailable",
        UpstreamCategory::Overloaded => "overloaded",
    }
}

/// One problem in a configuration, located by its path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigIssue {
    /// Dotted path, e.g. `providers[2].base_url` or `routes."gpt-4o".fallbacks`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// An invalid configuration: every problem found, each naming its path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", list(.issues))]
pub struct ConfigError {
    /// The problems, in the order found.
    pub issues: Vec<ConfigIssue>,
}

fn list(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConfigError {
    /// A single-issue error.
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            issues: vec![ConfigIssue {
                path: path.into(),
                message: message.into(),
            }],
        }
    }

    /// Severity: an invalid config is critical at start-up.
    pub fn severity(&self) -> Severity {
        Severity::Critical
    }
}

/// One failed (or cancelled) attempt in a request's trail.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttemptRecord {
    /// 1-based attempt number within the request.
    pub attempt: u32,
    /// Provider id.
    pub provider_id: Arc<str>,
    /// Client-facing model name of the deployment (may be a fallback).
    pub model: Arc<str>,
    /// Low-cardinality error kind, or `ok`.
    pub outcome: &'static str,
    /// HTTP status, when the upstream sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How long the attempt took.
    pub duration_ms: u64,
}

impl AttemptRecord {
    /// `provider/model`, the deployment id used in messages.
    pub fn deployment(&self) -> String {
        format!("{}/{}", self.provider_id, self.model)
    }
}

/// Renders a trail as `p1/m: unavailable, p2/m: timeout_first_byte` (no
/// upstream bodies, no URLs: they can echo keys).
pub fn describe_trail(trail: &[AttemptRecord]) -> String {
    trail
        .iter()
        .map(|a| format!("{}: {}", a.deployment(), a.outcome))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Errors of the manager's API.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// No provider serves this model (for this request type).
    #[error("no provider serves model '{model}' for {request_type} requests")]
    UnknownModel {
        /// Requested model.
        model: String,
        /// Requested type.
        request_type: crate::types::RequestType,
    },
    /// Providers serve the model, but none can take the request now.
    #[error("no deployment of model '{model}' can take the request now")]
    NoCapacity {
        /// Requested model.
        model: String,
        /// The earliest moment one may be free again.
        retry_after: Option<Duration>,
        /// Whether some deployment is only held back by its concurrency or
        /// rate limits (the request may queue).
        at_limit: bool,
    },
    /// The request queue is full.
    #[error("the gateway's request queue is full")]
    QueueFull {
        /// A suggested wait.
        retry_after: Duration,
    },
    /// The request waited `queue_timeout` without capacity.
    #[error("no capacity for model '{model}' within the queue timeout")]
    QueueTimeout {
        /// Requested model.
        model: String,
        /// A suggested wait.
        retry_after: Duration,
    },
    /// The registry has no provider at all.
    #[error("no provider is configured")]
    NoProviders,
    /// A provider id is already registered.
    #[error("provider '{id}' already exists")]
    DuplicateProvider {
        /// The id.
        id: String,
    },
    /// No provider has this id.
    #[error("provider '{id}' not found")]
    UnknownProvider {
        /// The id.
        id: String,
    },
    /// The id argument differs from `config.id`.
    #[error("provider id '{id}' does not match config.id '{config_id}'")]
    IdMismatch {
        /// The id argument.
        id: String,
        /// The config's id.
        config_id: String,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The pre-activation health check failed; nothing changed.
    #[error("health check of provider '{id}' failed: {reason}")]
    HealthCheckFailed {
        /// The id.
        id: String,
        /// The error kind.
        reason: String,
    },
    /// A final 4xx from the upstream, returned to the client as is.
    #[error("{}", .error.message)]
    Rejected {
        /// The upstream error.
        error: Box<UpstreamError>,
        /// Which provider said it.
        provider_id: String,
        /// Attempts so far.
        trail: Vec<AttemptRecord>,
    },
    /// Every attempt failed.
    #[error("all attempts for model '{model}' failed: {}", describe_trail(.trail))]
    Exhausted {
        /// Requested model.
        model: String,
        /// Every attempt.
        trail: Vec<AttemptRecord>,
        /// The last error.
        last: Box<ProviderError>,
        /// When the soonest cooldown of the model ends (for `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The overall deadline expired.
    #[error("request deadline exceeded after {} attempts: {}", .trail.len(), describe_trail(.trail))]
    DeadlineExceeded {
        /// Attempts so far.
        trail: Vec<AttemptRecord>,
    },
}

impl ManagerError {
    /// Severity (SPEC §9).
    pub fn severity(&self) -> Severity {
        match self {
            Self::NoProviders | Self::Config(_) => Severity::Critical,
            Self::Exhausted { .. } | Self::DeadlineExceeded { .. } => Severity::High,
            Self::Rejected { .. } => Severity::Low,
            _ => Severity::Medium,
        }
    }

    /// Low-cardinality label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownModel { .. } => "unknown_model",
            Self::NoCapacity { .. } => "no_capacity",
            Self::QueueFull { .. } => "queue_full",
            Self::QueueTimeout { .. } => "queue_timeout",
            Self::NoProviders => "no_providers",
            Self::DuplicateProvider { .. } => "duplicate_provider",
            Self::UnknownProvider { .. } => "unknown_provider",
            Self::IdMismatch { .. } => "id_mismatch",
            Self::Config(_) => "invalid_config",
            Self::HealthCheckFailed { .. } => "health_check_failed",
            Self::Rejected { .. } => "rejected",
            Self::Exhausted { .. } => "exhausted",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
        }
    }

    /// The attempt trail, where there is one.
    pub fn trail(&self) -> &[AttemptRecord] {
        match self {
            Self::Rejected { trail, .. }
            | Self::Exhausted { trail, .. }
            | Self::DeadlineExceeded { trail } => trail,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(status: u16, ty: Option<&str>, code: Option<&str>) -> ProviderError {
        ProviderError::upstream(status, "m", ty.map(Into::into), code.map(Into::into))
    }

    #[test]
    fn the_classification_table_of_spec_5() {
        // (error, retry same, switch, breaker)
        let table = [
            (up(500, None, None), true, true, true),
            (up(502, None, None), true, true, true),
            (up(503, None, None), false, true, true),
            (up(504, None, None), false, true, true),
            (up(529, Some("overloaded_error"), None), false, true, true),
            (up(429, None, None), false, true, false),
            (up(401, None, None), false, true, false),
            (up(403, None, None), false, true, false),
            (up(404, None, Some("model_not_found")), false, true, false),
            (up(400, None, Some("content_filter")), false, false, false),
            (
                up(400, None, Some("context_length_exceeded")),
                false,
                false,
                false,
            ),
            (
                up(400, Some("invalid_request_error"), None),
                false,
                false,
                false,
            ),
            (up(422, None, None), false, false, false),
            (
                ProviderError::Reset {
                    message: "r".into(),
                },
                true,
                true,
                true,
            ),
            (
                ProviderError::Connect {
                    message: "c".into(),
                },
                true,
                true,
                true,
            ),
            (
                ProviderError::Timeout {
                    phase: TimeoutPhase::FirstByte,
                },
                false,
                true,
                true,
            ),
            (
                ProviderError::Timeout {
                    phase: TimeoutPhase::StreamIdle,
                },
                false,
                true,
                true,
            ),
            (
                ProviderError::Timeout {
                    phase: TimeoutPhase::Deadline,
                },
                false,
                false,
                false,
            ),
            (ProviderError::StreamCut { chunks: 3 }, false, true, true),
            (ProviderError::Cancelled, false, false, false),
        ];
        for (err, retry, switch, breaker) in table {
            assert_eq!(err.is_retryable(), retry, "retryable: {err:?}");
            assert_eq!(err.should_switch(), switch, "switch: {err:?}");
            assert_eq!(err.counts_for_breaker(), breaker, "breaker: {err:?}");
        }
    }

    #[test]
    fn provider_codes_are_recognised() {
        assert_eq!(
            categorize(
                400,
                Some("invalid_request_error"),
                Some("context_length_exceeded")
            ),
            UpstreamCategory::ContextLength
        );
        assert_eq!(
            categorize(400, None, Some("content_policy_violation")),
            UpstreamCategory::ContentFilter
        );
        assert_eq!(
            categorize(529, Some("overloaded_error"), None),
            UpstreamCategory::Overloaded
        );
        assert_eq!(
            categorize(500, Some("overloaded_error"), None),
            UpstreamCategory::Overloaded
        );
        assert_eq!(
            categorize(400, Some("rate_limit_error"), None),
            UpstreamCategory::RateLimited
        );
    }

    #[test]
    fn cooldowns_come_from_429_and_503_with_retry_after() {
        let limited = up(429, None, None);
        assert!(limited.starts_cooldown());
        let plain_503 = up(503, None, None);
        assert!(!plain_503.starts_cooldown());
        let ProviderError::Upstream(e) = plain_503 else {
            unreachable!()
        };
        let with_after = ProviderError::Upstream(Box::new(
            (*e).with_retry_after(Some(Duration::from_secs(2))),
        ));
        assert!(with_after.starts_cooldown());
        assert_eq!(with_after.retry_after(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn kinds_are_low_cardinality_and_trails_render_without_bodies() {
        let err = up(503, None, None);
        assert_eq!(err.kind(), "unavailable");
        let trail = vec![AttemptRecord {
            attempt: 1,
            provider_id: "p1".into(),
            model: "m".into(),
            outcome: err.kind(),
            status: Some(503),
            duration_ms: 5,
        }];
        assert_eq!(describe_trail(&trail), "p1/m: unavailable");
        let exhausted = ManagerError::Exhausted {
            model: "m".into(),
            trail,
            last: Box::new(err),
            retry_after: None,
        };
        assert_eq!(exhausted.severity(), Severity::High);
        assert_eq!(
            exhausted.to_string(),
            "all attempts for model 'm' failed: p1/m: unavailable"
        );
    }
}
