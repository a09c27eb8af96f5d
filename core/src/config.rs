//! Configuration types (SPEC §10) with `validate()` naming the offending path.
//!
//! These are the `[manager]`, `[[providers]]` and `[routes]` sections of the
//! server's TOML file, usable on their own by library users. Unknown keys
//! are rejected (`deny_unknown_fields`) so a typo never silently means a
//! default. Secrets never appear in `Debug` or serialized output.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ConfigError, ConfigIssue};
use crate::types::RequestType;

/// The built-in provider types.
pub const PROVIDER_TYPES: [&str; 4] = ["openai", "openai_compatible", "anthropic", "mock"];

/// The text shown wherever a secret would be.
pub const REDACTED: &str = "[redacted]";

/// A secret value (an inline API key): never printed, never serialized.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The secret itself, for building the upstream request only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// How a provider is actively health-checked (SPEC §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HealthCheckMode {
    /// `"models"` (list models: free) or `"none"` (passive only).
    Named(NamedHealthCheck),
    /// `GET path`, expecting `expect_status`.
    Http {
        /// Path relative to the base URL.
        path: String,
        /// Expected status (default 200).
        #[serde(default = "default_expect_status")]
        expect_status: u16,
    },
}

/// The named health-check modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedHealthCheck {
    /// List the provider's models.
    Models,
    /// No active check: passive (circuit breaker) only.
    None,
}

fn default_expect_status() -> u16 {
    200
}

impl Default for HealthCheckMode {
    fn default() -> Self {
        Self::Named(NamedHealthCheck::Models)
    }
}

impl HealthCheckMode {
    /// Whether active checks are off.
    pub fn is_none(&self) -> bool {
        *self == Self::Named(NamedHealthCheck::None)
    }
}

/// Behaviour of a `mock` provider (SPEC §13): for the embedded default
/// config, demos and benches. Tests script richer behaviour in code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Delay before the response (or the first chunk).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Delay between stream chunks.
    #[serde(with = "humantime_serde")]
    pub chunk_delay: Duration,
    /// Reply text; `{provider}` and `{model}` are substituted.
    pub reply: String,
    /// Fail every n-th request (1 = every request, 0 = never).
    pub fail_every: u32,
    /// Status of the scripted failures.
    pub fail_status: u16,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            reply: "Hello from {provider} ({model}).".to_owned(),
            fail_every: 0,
            fail_status: 503,
        }
    }
}

/// One model entry of a provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name sent upstream (default: the configured name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_name: Option<String>,
    /// Context window in tokens, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u32>,
    /// Largest `max_tokens` the model accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Whether the model continues a trailing assistant message (stream resume).
    #[serde(default)]
    pub supports_prefill: bool,
    /// USD per million input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_cost_per_mtok: Option<f64>,
    /// USD per million output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cost_per_mtok: Option<f64>,
    /// Request types served (default: all the adapter supports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_types: Option<Vec<RequestType>>,
    /// A cap below the provider's `max_concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// One upstream provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique id (`[A-Za-z0-9._-]`, at most 64 characters).
    pub id: String,
    /// `openai | openai_compatible | anthropic | mock` (or a custom type).
    #[serde(rename = "type")]
    pub kind: String,
    /// Disabled providers are never selected, not even in panic mode.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// API base URL (default per type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Environment variable holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Inline API key (prefer `api_key_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// Active health check mode.
    #[serde(default)]
    pub health_check: HealthCheckMode,
    /// Weight for the `weighted` strategy and blue-green splits.
    #[serde(default = "one")]
    pub weight: u32,
    /// Tier for the `priority` strategy (lower is preferred).
    #[serde(default)]
    pub priority: i32,
    /// Region, for region preference and cross-region failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Concurrent requests across all of this provider's models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u32>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u64>,
    /// Extra headers sent upstream (e.g. `OpenAI-Organization`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Models served, by client-facing name; `"*"` serves any name.
    pub models: BTreeMap<String, ModelConfig>,
    /// Scripted behaviour of a `mock` provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockConfig>,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

impl ProviderConfig {
    /// A minimal config: `id`, `type` and the models served (all defaults).
    pub fn new<I, S>(id: impl Into<String>, kind: impl Into<String>, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            id: id.into(),
            kind: kind.into(),
            enabled: true,
            base_url: None,
            api_key_env: None,
            api_key: None,
            health_check: HealthCheckMode::default(),
            weight: 1,
            priority: 0,
            region: None,
            max_concurrency: None,
            rpm_limit: None,
            tpm_limit: None,
            headers: BTreeMap::new(),
            models: models
                .into_iter()
                .map(|m| (m.into(), ModelConfig::default()))
                .collect(),
            mock: None,
        }
    }

    /// Whether a change from `self` to `other` replaces the upstream itself
    /// (type, base URL or key), so health and stats must start afresh.
    pub fn changes_identity(&self, other: &ProviderConfig) -> bool {
        self.kind != other.kind
            || self.base_url != other.base_url
            || self.api_key_env != other.api_key_env
            || self.api_key != other.api_key
    }

    /// Checks this provider on its own; issues are prefixed with `prefix`.
    pub fn validate_into(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        let mut push = |field: &str, message: String| {
            issues.push(ConfigIssue {
                path: format!("{prefix}.{field}"),
                message,
            });
        };
        if self.id.is_empty() || self.id.len() > 64 {
            push("id", "must be 1 to 64 characters".into());
        } else if !self
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            push(
                "id",
                format!(
                    "'{}' may only contain letters, digits, '-', '_' and '.'",
                    self.id
                ),
            );
        }
        if self.kind.trim().is_empty() {
            push("type", "must not be empty".into());
        }
        if let Some(url) = &self.base_url {
            if let Err(message) = check_base_url(url) {
                push("base_url", message);
            }
        } else if self.kind == "openai_compatible" {
            push(
                "base_url",
                "is required for type 'openai_compatible'".into(),
            );
        }
        if self.api_key.is_some() && self.api_key_env.is_some() {
            push(
                "api_key",
                "set either api_key or api_key_env, not both".into(),
            );
        }
        if let Some(env) = &self.api_key_env {
            if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                push(
                    "api_key_env",
                    format!("'{env}' is not a valid environment variable name"),
                );
            }
        }
        if let HealthCheckMode::Http {
            path,
            expect_status,
        } = &self.health_check
        {
            if !path.starts_with('/') {
                push("health_check.path", "must start with '/'".into());
            }
            if !(100..=599).contains(expect_status) {
                push(
                    "health_check.expect_status",
                    "must be an HTTP status".into(),
                );
            }
        }
        for (field, value) in [
            ("max_concurrency", self.max_concurrency.map(u64::from)),
            ("rpm_limit", self.rpm_limit.map(u64::from)),
            ("tpm_limit", self.tpm_limit),
        ] {
            if value == Some(0) {
                push(field, "must be at least 1 when set".into());
            }
        }
        if self.models.is_empty() {
            push("models", "must list at least one model (or \"*\")".into());
        }
        for (name, model) in &self.models {
            let at = format!("models.\"{name}\"");
            if name.trim().is_empty() {
                push("models", "model names must not be empty".into());
            }
            for (field, cost) in [
                ("input_cost_per_mtok", model.input_cost_per_mtok),
                ("output_cost_per_mtok", model.output_cost_per_mtok),
            ] {
                if cost.is_some_and(|c| !c.is_finite() || c < 0.0) {
                    push(
                        &format!("{at}.{field}"),
                        "must be a non-negative number".into(),
                    );
                }
            }
            if model.max_concurrency == Some(0) {
                push(
                    &format!("{at}.max_concurrency"),
                    "must be at least 1 when set".into(),
                );
            }
            if model.request_types.as_ref().is_some_and(Vec::is_empty) {
                push(
                    &format!("{at}.request_types"),
                    "must not be empty when set".into(),
                );
            }
            if model.upstream_name.as_deref().is_some_and(str::is_empty) {
                push(
                    &format!("{at}.upstream_name"),
                    "must not be empty when set".into(),
                );
            }
            if model.max_output_tokens == Some(0) || model.context_window == Some(0) {
                push(&at, "token limits must be at least 1 when set".into());
            }
        }
        if let Some(mock) = &self.mock {
            if self.kind != "mock" {
                push(
                    "mock",
                    "only providers of type 'mock' take mock settings".into(),
                );
            }
            if !(400..=599).contains(&mock.fail_status) {
                push(
                    "mock.fail_status",
                    "must be an HTTP error status (400-599)".into(),
                );
            }
        }
    }

    /// Checks this provider on its own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut issues = Vec::new();
        self.validate_into("provider", &mut issues);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { issues })
        }
    }
}

/// Checks a base URL: `http(s)://host[:port][/path]`, no credentials, no query.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("'{url}' must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("'{url}' has no host"));
    }
    if authority.contains('@') {
        return Err("must not carry credentials; use api_key_env".into());
    }
    if url.contains('?') || url.contains('#') {
        return Err(format!("'{url}' must not have a query or fragment"));
    }
    Ok(())
}

/// How a cut stream is resumed (SPEC §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamResume {
    /// Prefill where declared, else replay; a prefill rejection falls back to replay.
    #[default]
    Auto,
    /// Continue on a deployment that supports an assistant prefill.
    Prefill,
    /// Regenerate and forward only what follows the exact prefix sent.
    Replay,
    /// End a cut stream with an explicit error event.
    Off,
}

/// Per-model routing (SPEC §4, §5, §10).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Strategy name for this model (default: `[manager] strategy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Models tried in order when this one is exhausted (one level deep).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Models tried first on `context_length_exceeded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_window_fallbacks: Vec<String>,
    /// Stream resumption mode.
    #[serde(default)]
    pub stream_resume: StreamResume,
    /// Never leave the preferred region.
    #[serde(default)]
    pub region_strict: bool,
    /// Blue-green provider sets: set name → provider ids.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sets: BTreeMap<String, Vec<String>>,
    /// Traffic split between `sets` by weight.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub split: BTreeMap<String, u32>,
    /// Overrides of `[manager]` limits for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Overall deadline override.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub request_timeout: Option<Duration>,
    /// Whole-response timeout override.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub provider_timeout: Option<Duration>,
    /// First-token timeout override.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub first_token_timeout: Option<Duration>,
    /// Stream idle timeout override.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub stream_idle_timeout: Option<Duration>,
    /// Longest cooldown worth waiting for override.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub retry_after_cap: Option<Duration>,
}

/// Retry budget (SPEC §5): retries may add at most `ratio` of recent
/// requests, plus `min_per_sec` so a cold start still retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Retries allowed per original request.
    pub ratio: f64,
    /// Retries always allowed per second.
    pub min_per_sec: u32,
    /// Window over which requests are remembered.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// The `[manager]` section: `ProviderManagerOptions` of the seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerOptions {
    /// Default selection strategy.
    pub strategy: String,
    /// Interval between active health checks (jittered).
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Timeout of one active health check.
    #[serde(with = "humantime_serde")]
    pub health_check_timeout: Duration,
    /// Re-admit ejected providers whose active checks pass.
    pub auto_recovery_enabled: bool,
    /// Failures in a row that open a deployment's circuit.
    pub max_consecutive_failures: u32,
    /// First ejection.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Longest ejection (doubling stops here).
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Overall request deadline.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A whole non-stream response.
    #[serde(with = "humantime_serde")]
    pub provider_timeout: Duration,
    /// Streams: headers and first token.
    #[serde(with = "humantime_serde")]
    pub first_token_timeout: Duration,
    /// Streams: longest silence between chunks.
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// Longest cooldown worth waiting for before a fallback model.
    #[serde(with = "humantime_serde")]
    pub retry_after_cap: Duration,
    /// Retries on the requested model (attempts = 1 + max_retries).
    pub max_retries: u32,
    /// Retry budget.
    pub retry_budget: RetryBudgetConfig,
    /// Gateway-wide queue length.
    pub queue_size: usize,
    /// Longest wait in the queue.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Record metrics.
    pub enable_metrics: bool,
    /// Events kept for `?recent=N`.
    pub recent_events: usize,
    /// Preferred region (set from `[server] region`).
    #[serde(skip)]
    pub preferred_region: Option<String>,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            strategy: "round_robin".to_owned(),
            health_check_interval: Duration::from_secs(30),
            health_check_timeout: Duration::from_secs(5),
            auto_recovery_enabled: true,
            max_consecutive_failures: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(10),
            request_timeout: Duration::from_secs(600),
            provider_timeout: Duration::from_secs(30),
            first_token_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(10),
            retry_after_cap: Duration::from_secs(10),
            max_retries: 3,
            retry_budget: RetryBudgetConfig::default(),
            queue_size: 1024,
            queue_timeout: Duration::from_secs(5),
            enable_metrics: true,
            recent_events: 1024,
            preferred_region: None,
        }
    }
}

impl ManagerOptions {
    /// Checks the options; issues are prefixed with `prefix`.
    pub fn validate_into(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        let mut push = |field: &str, message: &str| {
            issues.push(ConfigIssue {
                path: format!("{prefix}.{field}"),
                message: message.to_owned(),
            });
        };
        if self.strategy.trim().is_empty() {
            push("strategy", "must not be empty");
        }
        if self.max_consecutive_failures == 0 {
            push("max_consecutive_failures", "must be at least 1");
        }
        if self.base_ejection > self.max_ejection {
            push("base_ejection", "must not exceed max_ejection");
        }
        for (field, value) in [
            ("health_check_interval", self.health_check_interval),
            ("health_check_timeout", self.health_check_timeout),
            ("base_ejection", self.base_ejection),
            ("request_timeout", self.request_timeout),
            ("provider_timeout", self.provider_timeout),
            ("first_token_timeout", self.first_token_timeout),
            ("stream_idle_timeout", self.stream_idle_timeout),
        ] {
            if value.is_zero() {
                push(field, "must be greater than zero");
            }
        }
        if !self.retry_budget.ratio.is_finite() || self.retry_budget.ratio < 0.0 {
            push("retry_budget.ratio", "must be a non-negative number");
        }
        if self.retry_budget.ttl.is_zero() {
            push("retry_budget.ttl", "must be greater than zero");
        }
    }
}

/// The manager's whole configuration: options, providers and routes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `[manager]`.
    #[serde(default)]
    pub manager: ManagerOptions,
    /// `[[providers]]`.
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// `[routes."model"]`.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
}

impl GatewayConfig {
    /// Checks everything, including references between sections, and
    /// returns every issue found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut issues = Vec::new();
        self.manager.validate_into("manager", &mut issues);
        let mut ids = BTreeSet::new();
        for (i, provider) in self.providers.iter().enumerate() {
            let prefix = format!("providers[{i}]");
            provider.validate_into(&prefix, &mut issues);
            if !ids.insert(provider.id.as_str()) {
                issues.push(ConfigIssue {
                    path: format!("{prefix}.id"),
                    message: format!("duplicate provider id '{}'", provider.id),
                });
            }
        }
        validate_routes(&self.routes, &self.providers, &mut issues);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { issues })
        }
    }
}

/// Whether some provider in `providers` serves `model`.
pub fn is_served(model: &str, providers: &[ProviderConfig]) -> bool {
    providers
        .iter()
        .any(|p| p.models.contains_key(model) || p.models.contains_key("*"))
}

/// Checks routes against the providers: fallbacks name served models, no
/// cycles, sets name known providers, splits name known sets.
pub fn validate_routes(
    routes: &BTreeMap<String, RouteConfig>,
    providers: &[ProviderConfig],
    issues: &mut Vec<ConfigIssue>,
) {
    for (model, route) in routes {
        let at = format!("routes.\"{model}\"");
        if route
            .strategy
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            issues.push(issue(&at, "strategy", "must not be empty when set"));
        }
        for (field, list) in [
            ("fallbacks", &route.fallbacks),
            ("context_window_fallbacks", &route.context_window_fallbacks),
        ] {
            let mut seen = BTreeSet::new();
            for fallback in list {
                if fallback == model {
                    issues.push(issue(
                        &at,
                        field,
                        &format!("'{model}' cannot fall back to itself"),
                    ));
                } else if !is_served(fallback, providers) {
                    issues.push(issue(
                        &at,
                        field,
                        &format!("no provider serves fallback model '{fallback}'"),
                    ));
                }
                if !seen.insert(fallback) {
                    issues.push(issue(&at, field, &format!("'{fallback}' is listed twice")));
                }
                let loops_back = routes.get(fallback).is_some_and(|r| {
                    r.fallbacks.contains(model) || r.context_window_fallbacks.contains(model)
                });
                if loops_back {
                    issues.push(issue(
                        &at,
                        field,
                        &format!("cycle: '{model}' and '{fallback}' fall back to each other"),
                    ));
                }
            }
        }
        for (set, members) in &route.sets {
            if members.is_empty() {
                issues.push(issue(
                    &at,
                    &format!("sets.{set}"),
                    "must list at least one provider",
                ));
            }
            for id in members {
                if !providers.iter().any(|p| &p.id == id) {
                    issues.push(issue(
                        &at,
                        &format!("sets.{set}"),
                        &format!("unknown provider '{id}'"),
                    ));
                }
            }
        }
        for name in route.split.keys() {
            if !route.sets.contains_key(name) {
                issues.push(issue(
                    &at,
                    &format!("split.{name}"),
                    "names no set in 'sets'",
                ));
            }
        }
        if !route.split.is_empty() && route.split.values().all(|w| *w == 0) {
            issues.push(issue(&at, "split", "at least one weight must be positive"));
        }
        if !route.sets.is_empty() && route.split.is_empty() {
            issues.push(issue(&at, "split", "is required when sets are given"));
        }
    }
}

fn issue(at: &str, field: &str, message: &str) -> ConfigIssue {
    ConfigIssue {
        path: format!("{at}.{field}"),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(id: &str, models: &[&str]) -> ProviderConfig {
        ProviderConfig::new(id, "mock", models.iter().copied())
    }

    #[test]
    fn defaults_match_the_spec() {
        let o = ManagerOptions::default();
        assert_eq!(o.health_check_interval, Duration::from_secs(30));
        assert!(o.auto_recovery_enabled);
        assert_eq!(o.max_consecutive_failures, 3);
        assert_eq!(o.provider_timeout, Duration::from_secs(30));
        assert!(o.enable_metrics);
        assert_eq!(o.request_timeout, Duration::from_secs(600));
        assert_eq!(o.first_token_timeout, Duration::from_secs(10));
        assert_eq!(o.stream_idle_timeout, Duration::from_secs(10));
        assert_eq!(o.retry_after_cap, Duration::from_secs(10));
        assert_eq!(o.queue_timeout, Duration::from_secs(5));
        assert_eq!(o.max_retries, 3);
        assert_eq!(
            (o.base_ejection, o.max_ejection),
            (Duration::from_secs(5), Duration::from_secs(10))
        );
    }

    #[test]
    fn issues_name_their_path() {
        let mut bad = provider("bad id!", &[]);
        bad.base_url = Some("ftp://x".into());
        bad.max_concurrency = Some(0);
        let config = GatewayConfig {
            providers: vec![provider("ok", &["m"]), bad],
            ..GatewayConfig::default()
        };
        let err = config.validate().unwrap_err();
        let paths: Vec<_> = err.issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "providers[1].id",
                "providers[1].base_url",
                "providers[1].max_concurrency",
                "providers[1].models"
            ]
        );
        assert!(
            err.to_string()
                .contains("providers[1].base_url: 'ftp://x' must start with")
        );
    }

    #[test]
    fn duplicate_ids_unknown_fallbacks_and_cycles_are_rejected() {
        let mut routes = BTreeMap::new();
        routes.insert(
            "a".to_owned(),
            RouteConfig {
                fallbacks: vec!["b".into(), "nope".into()],
                ..RouteConfig::default()
            },
        );
        routes.insert(
            "b".to_owned(),
            RouteConfig {
                context_window_fallbacks: vec!["a".into()],
                ..RouteConfig::default()
            },
        );
        let config = GatewayConfig {
            providers: vec![provider("p", &["a", "b"]), provider("p", &["a"])],
            routes,
            ..GatewayConfig::default()
        };
        let text = config.validate().unwrap_err().to_string();
        assert!(
            text.contains("providers[1].id: duplicate provider id 'p'"),
            "{text}"
        );
        assert!(
            text.contains("routes.\"a\".fallbacks: no provider serves fallback model 'nope'"),
            "{text}"
        );
        assert!(text.contains("routes.\"a\".fallbacks: cycle"), "{text}");
        assert!(
            text.contains("routes.\"b\".context_window_fallbacks: cycle"),
            "{text}"
        );
    }

    #[test]
    fn blue_green_sets_are_checked() {
        let mut routes = BTreeMap::new();
        routes.insert(
            "m".to_owned(),
            RouteConfig {
                sets: BTreeMap::from([
                    ("blue".into(), vec!["p".into()]),
                    ("green".into(), vec!["q".into()]),
                ]),
                split: BTreeMap::from([("blue".into(), 90), ("teal".into(), 10)]),
                ..RouteConfig::default()
            },
        );
        let config = GatewayConfig {
            providers: vec![provider("p", &["m"])],
            routes,
            ..GatewayConfig::default()
        };
        let text = config.validate().unwrap_err().to_string();
        assert!(text.contains("sets.green: unknown provider 'q'"), "{text}");
        assert!(text.contains("split.teal: names no set"), "{text}");
    }

    #[test]
    fn secrets_never_print_or_serialize() {
        let mut p = provider("p", &["m"]);
        p.api_key = Some(Secret::new("sk-very-secret"));
        let debug = format!("{p:?}");
        let json = serde_json::to_string(&p).unwrap();
        assert!(!debug.contains("sk-very-secret") && debug.contains(REDACTED));
        assert!(!json.contains("sk-very-secret") && json.contains(REDACTED));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = serde_json::from_value::<ProviderConfig>(serde_json::json!({
            "id": "p", "type": "mock", "models": {"m": {}}, "wieght": 3
        }))
        .unwrap_err();
        assert!(err.to_string().contains("wieght"), "{err}");
    }

    #[test]
    fn health_check_modes_parse() {
        let named: HealthCheckMode = serde_json::from_value(serde_json::json!("none")).unwrap();
        assert!(named.is_none());
        let http: HealthCheckMode =
            serde_json::from_value(serde_json::json!({"path": "/health"})).unwrap();
        assert_eq!(
            http,
            HealthCheckMode::Http {
                path: "/health".into(),
                expect_status: 200
            }
        );
    }
}
