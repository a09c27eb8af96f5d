//! The server's configuration file: `[server]` plus core's `[manager]`, `[[providers]]` and `[routes]` (SPEC §10).
//!
//! Loading goes through figment: the embedded default (no file given) or
//! the TOML file (`--config PATH` or `SWITCHYARD_CONFIG`), then environment
//! overrides of the form `SWITCHYARD_<SECTION>__<KEY>` (only variables
//! containing `__`: `SWITCHYARD_CONFIG`, `SWITCHYARD_ADMIN_TOKEN` and
//! `SWITCHYARD_API_KEYS` are never config keys). Unknown keys are errors
//! naming their path (`server.lisen`, `providers[0].wieght`); then core's
//! `GatewayConfig::validate()` and the server's own checks run.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};
use switchyard_core::{ConfigIssue, GatewayConfig, ManagerOptions, ProviderConfig, RouteConfig};

/// The embedded default config: two mock providers, so `switchyard` answers offline at once.
pub const DEFAULT_CONFIG: &str = include_str!("default_config.toml");

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "SWITCHYARD_CONFIG";

/// Default environment variable holding the admin token.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

/// Default environment variable holding the client API keys (comma-separated).
pub const DEFAULT_API_KEYS_ENV: &str = "SWITCHYARD_API_KEYS";

/// Default request body limit: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The `[server]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (`IP:port`).
    pub listen: SocketAddr,
    /// Threads serving requests (default: one per available core). With
    /// one, the server runs tokio's single-thread scheduler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Preferred provider region (SPEC §4.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Environment variable holding the admin token (default `SWITCHYARD_ADMIN_TOKEN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_env: Option<String>,
    /// Environment variable holding client API keys, comma-separated (default `SWITCHYARD_API_KEYS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_env: Option<String>,
    /// Requests per minute per client key, evenly spaced (see [`crate::limits`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_rpm_limit: Option<u32>,
    /// Environment variables admin-added providers may name as `api_key_env`.
    pub dynamic_key_envs: Vec<String>,
    /// Hosts admin-added providers may use as `base_url` (`api.example.com`,
    /// `*.example.com`); any host the other rules allow when empty (SPEC §16).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstream_allowlist: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Allow a non-loopback listen address without client keys.
    pub allow_open_proxy: bool,
    /// Log request bodies (prompts) at debug level.
    pub log_bodies: bool,
    /// How long in-flight requests (streams included) may take to finish at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request's head, counted from
    /// when the server starts waiting for it: a new connection, or an idle
    /// keep-alive one between requests. The connection is closed when it
    /// passes (slowloris protection).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a request body may pause between two of its parts before
    /// the request is answered 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// `[server.cache]`: the opt-in exact-match response cache.
    pub cache: crate::cache::CacheConfig,
    /// `[server.otel]`: OpenTelemetry export.
    pub otel: crate::otel::OtelConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: None,
            region: None,
            admin_token_env: None,
            api_keys_env: None,
            client_rpm_limit: None,
            dynamic_key_envs: Vec::new(),
            upstream_allowlist: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            allow_open_proxy: false,
            log_bodies: false,
            shutdown_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            cache: crate::cache::CacheConfig::default(),
            otel: crate::otel::OtelConfig::default(),
        }
    }
}

/// The most worker threads `server.workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

impl ServerConfig {
    /// How many threads serve requests: `workers`, else one per
    /// available core (1 when that cannot be told).
    pub fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// The admin token variable, and whether the file named it explicitly.
    pub fn admin_token_var(&self) -> (&str, bool) {
        match &self.admin_token_env {
            Some(name) => (name, true),
            None => (DEFAULT_ADMIN_TOKEN_ENV, false),
        }
    }

    /// The client keys variable, and whether the file named it explicitly.
    pub fn api_keys_var(&self) -> (&str, bool) {
        match &self.api_keys_env {
            Some(name) => (name, true),
            None => (DEFAULT_API_KEYS_ENV, false),
        }
    }

    fn validate_into(&self, issues: &mut Vec<ConfigIssue>) {
        let mut push = |field: &str, message: &str| {
            issues.push(ConfigIssue {
                path: format!("server.{field}"),
                message: message.to_owned(),
            });
        };
        if self.max_body_bytes == 0 {
            push("max_body_bytes", "must be at least 1");
        }
        if self.shutdown_timeout.is_zero() {
            push("shutdown_timeout", "must be greater than zero");
        }
        if self.header_read_timeout.is_zero() {
            push("header_read_timeout", "must be greater than zero");
        }
        if self.body_read_timeout.is_zero() {
            push("body_read_timeout", "must be greater than zero");
        }
        if self.client_rpm_limit == Some(0) {
            push("client_rpm_limit", "must be at least 1 when set");
        }
        if self
            .workers
            .is_some_and(|n| !(1..=MAX_WORKERS).contains(&n))
        {
            push(
                "workers",
                &format!("must be between 1 and {MAX_WORKERS} when set"),
            );
        }
        for (field, message) in self.cache.issues() {
            push(&format!("cache.{field}"), message);
        }
        for (field, message) in self.otel.issues() {
            push(&format!("otel.{field}"), &message);
        }
        if self.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            push("region", "must not be empty when set");
        }
        for (field, value) in [
            ("admin_token_env", &self.admin_token_env),
            ("api_keys_env", &self.api_keys_env),
        ] {
            if let Some(name) = value {
                if !is_env_name(name) {
                    push(
                        field,
                        &format!("'{name}' is not a valid environment variable name"),
                    );
                }
            }
        }
        for name in &self.dynamic_key_envs {
            if !is_env_name(name) {
                push(
                    "dynamic_key_envs",
                    &format!("'{name}' is not a valid environment variable name"),
                );
            }
        }
        for (i, host) in self.upstream_allowlist.iter().enumerate() {
            if let Err(message) = crate::admin::policy::check_allowlist_entry(host) {
                push(&format!("upstream_allowlist[{i}]"), &message);
            }
        }
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The whole file: `[server]` and core's sections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    #[serde(default)]
    pub server: ServerConfig,
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

impl Config {
    /// The embedded default config (two mock providers).
    pub fn embedded_default() -> Result<Self, ConfigLoadError> {
        Self::from_toml_str(DEFAULT_CONFIG)
    }

    /// Parses and validates TOML text, without environment overrides.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigLoadError> {
        extract(Figment::from(Toml::string(text)))
    }

    /// The manager's part, with `preferred_region` taken from `[server] region`.
    pub fn gateway(&self) -> GatewayConfig {
        let mut manager = self.manager.clone();
        manager.preferred_region = self.server.region.clone();
        GatewayConfig {
            manager,
            providers: self.providers.clone(),
            routes: self.routes.clone(),
        }
    }

    /// Every check: core's `validate()` and the `[server]` section's.
    pub fn validate(&self) -> Result<(), ConfigLoadError> {
        let mut issues = match self.gateway().validate() {
            Ok(()) => Vec::new(),
            Err(error) => error.issues,
        };
        self.server.validate_into(&mut issues);
        if self.providers.is_empty() {
            issues.push(ConfigIssue {
                path: "providers".to_owned(),
                message: "at least one provider is required".to_owned(),
            });
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigLoadError::Invalid(issues))
        }
    }
}

/// Where the config comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConfigSource {
    /// The embedded default.
    #[default]
    Embedded,
    /// A TOML file.
    File(PathBuf),
}

impl ConfigSource {
    /// `path` if given, else `SWITCHYARD_CONFIG` if set (and not empty), else the embedded default.
    pub fn resolve(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Self {
        match path {
            Some(path) => Self::File(path.to_owned()),
            None => match env(CONFIG_ENV).filter(|v| !v.trim().is_empty()) {
                Some(path) => Self::File(PathBuf::from(path)),
                None => Self::Embedded,
            },
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded => f.write_str("the embedded default config"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigLoadError {
    /// The file does not exist or cannot be read.
    #[error("cannot read config file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Parsing or deserializing failed (syntax, unknown key, wrong type).
    #[error("{}", .0.join("; "))]
    Parse(Vec<String>),
    /// The values are inconsistent.
    #[error("invalid configuration: {}", list(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn list(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads `source`, applies `SWITCHYARD_<SECTION>__<KEY>` overrides from the
/// process environment, and validates the result.
pub fn load(source: &ConfigSource) -> Result<Config, ConfigLoadError> {
    let base = match source {
        ConfigSource::Embedded => Figment::from(Toml::string(DEFAULT_CONFIG)),
        ConfigSource::File(path) => {
            if let Err(error) = std::fs::metadata(path) {
                return Err(ConfigLoadError::Unreadable {
                    path: path.clone(),
                    reason: error.to_string(),
                });
            }
            Figment::from(Toml::file_exact(path))
        }
    };
    extract(base.merge(env_overrides()))
}

/// `SWITCHYARD_<SECTION>__<KEY>` variables: only names containing `__`.
pub fn env_overrides() -> Env {
    Env::prefixed("SWITCHYARD_")
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

fn extract(figment: Figment) -> Result<Config, ConfigLoadError> {
    let config: Config = figment.extract().map_err(|error| {
        ConfigLoadError::Parse(error.into_iter().map(|e| describe(&e)).collect())
    })?;
    config.validate()?;
    Ok(config)
}

/// A figment error as `path: what (in source)`, with the unknown or
/// missing field appended to the path: `providers[0].wieght: unknown field ...`.
fn describe(error: &figment::Error) -> String {
    use figment::error::Kind;
    let mut path = render_path(&error.path);
    let field = match &error.kind {
        Kind::UnknownField(field, _) => Some(field.as_str()),
        Kind::MissingField(field) => Some(field.as_ref()),
        Kind::DuplicateField(field) => Some(*field),
        _ => None,
    };
    if let Some(field) = field {
        if error.path.last().map(String::as_str) != Some(field) {
            path = join_segment(path, field);
        }
    }
    let what = match &error.kind {
        Kind::UnknownField(field, expected) => {
            let expected = if expected.is_empty() {
                "no fields here".to_owned()
            } else {
                format!(
                    "expected one of {}",
                    expected
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            format!("unknown field `{field}`, {expected}")
        }
        Kind::MissingField(field) => format!("missing field `{field}`"),
        other => other.to_string(),
    };
    let source = error
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(source) => format!(" (in {} {source})", m.name),
            None => format!(" (in {})", m.name),
        })
        .unwrap_or_default();
    if path.is_empty() {
        format!("config: {what}{source}")
    } else {
        format!("{path}: {what}{source}")
    }
}

fn render_path(segments: &[String]) -> String {
    segments
        .iter()
        .fold(String::new(), |path, segment| join_segment(path, segment))
}

fn join_segment(mut path: String, segment: &str) -> String {
    if !path.is_empty() && !segment.is_empty() && segment.chars().all(|c| c.is_ascii_digit()) {
        path.push('[');
        path.push_str(segment);
        path.push(']');
        return path;
    }
    let plain = !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !path.is_empty() {
        path.push('.');
    }
    if plain {
        path.push_str(segment);
    } else {
        path.push('"');
        path.push_str(segment);
        path.push('"');
    }
    path
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::result_large_err
    )]

    use super::*;

    fn parse_err(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    const MINIMAL: &str = r#"
        [[providers]]
        id = "p"
        type = "mock"
        models = { "m" = {} }
    "#;

    #[test]
    fn the_embedded_default_is_valid_and_offline() {
        let config = Config::embedded_default().unwrap();
        assert_eq!(
            config.server.listen,
            SocketAddr::from(([127, 0, 0, 1], 8080))
        );
        assert!(config.providers.len() >= 2);
        assert!(config.providers.iter().all(|p| p.kind == "mock"));
        assert!(config.routes.values().any(|r| !r.fallbacks.is_empty()));
    }

    #[test]
    fn server_defaults() {
        let config = Config::from_toml_str(MINIMAL).unwrap();
        let server = &config.server;
        assert_eq!(server.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(server.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(server.header_read_timeout, Duration::from_secs(30));
        assert_eq!(server.body_read_timeout, Duration::from_secs(30));
        assert!(!server.allow_open_proxy && !server.log_bodies);
        assert_eq!(server.api_keys_var(), ("SWITCHYARD_API_KEYS", false));
        assert_eq!(server.admin_token_var(), ("SWITCHYARD_ADMIN_TOKEN", false));
        assert_eq!(server.workers, None);
        assert_eq!(
            server.worker_threads(),
            std::thread::available_parallelism().unwrap().get()
        );
        let config = Config::from_toml_str(&format!("{MINIMAL}\n[server]\nworkers = 3\n")).unwrap();
        assert_eq!(config.server.worker_threads(), 3);
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let err = parse_err("[server]\nlisen = \"127.0.0.1:1\"\n");
        assert!(err.contains("server.lisen: unknown field `lisen`"), "{err}");
        let err = parse_err(
            r#"
            [[providers]]
            id = "p"
            type = "mock"
            wieght = 3
            models = { "m" = {} }
        "#,
        );
        assert!(err.contains("providers[0].wieght: unknown field"), "{err}");
        let err = parse_err(&format!("{MINIMAL}\n[manager]\nmax_retires = 2\n"));
        assert!(err.contains("manager.max_retires"), "{err}");
        let err = parse_err(&format!("{MINIMAL}\n[routes.\"m\"]\nfalbacks = []\n"));
        assert!(err.contains("routes.m.falbacks"), "{err}");
        let err = parse_err(&format!("{MINIMAL}\n[cluster]\nx = 1\n"));
        assert!(err.contains("cluster: unknown field `cluster`"), "{err}");
    }

    #[test]
    fn wrong_types_and_missing_fields_name_their_path() {
        let err = parse_err("[server]\nmax_body_bytes = \"big\"\n");
        assert!(err.contains("server.max_body_bytes"), "{err}");
        let err = parse_err("[[providers]]\nid = \"p\"\nmodels = {}\n");
        assert!(
            err.contains("providers[0].type: missing field `type`"),
            "{err}"
        );
    }

    #[test]
    fn validation_issues_name_their_path() {
        let err = parse_err(&format!(
            "{MINIMAL}\n[server]\nmax_body_bytes = 0\n[routes.\"m\"]\nfallbacks = [\"nope\"]\n"
        ));
        assert!(
            err.contains("server.max_body_bytes: must be at least 1"),
            "{err}"
        );
        assert!(err.contains("routes.\"m\".fallbacks"), "{err}");
        for workers in [0, MAX_WORKERS + 1] {
            let err = parse_err(&format!("{MINIMAL}\n[server]\nworkers = {workers}\n"));
            assert!(
                err.contains("server.workers: must be between 1 and 1024 when set"),
                "{err}"
            );
        }
        let err = parse_err(&format!(
            "{MINIMAL}\n[server]\nheader_read_timeout = \"0s\"\n"
        ));
        assert!(
            err.contains("server.header_read_timeout: must be greater than zero"),
            "{err}"
        );
        let err = parse_err("");
        assert!(err.contains("providers: at least one provider"), "{err}");
    }

    #[test]
    fn env_overrides_need_a_double_underscore() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", MINIMAL)?;
            jail.set_env("SWITCHYARD_SERVER__LISTEN", "127.0.0.1:9999");
            jail.set_env("SWITCHYARD_MANAGER__MAX_RETRIES", "7");
            jail.set_env("SWITCHYARD_CONFIG", "ignored-as-a-key");
            jail.set_env("SWITCHYARD_ADMIN_TOKEN", "not-a-key-either");
            jail.set_env("SWITCHYARD_API_KEYS", "k1,k2");
            let config = load(&ConfigSource::File("c.toml".into())).unwrap();
            assert_eq!(config.server.listen.port(), 9999);
            assert_eq!(config.manager.max_retries, 7);
            jail.set_env("SWITCHYARD_SERVER__LISEN", "x");
            let err = load(&ConfigSource::File("c.toml".into()))
                .unwrap_err()
                .to_string();
            assert!(err.contains("server.lisen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_an_error_not_an_empty_config() {
        let err = load(&ConfigSource::File("/nonexistent/switchyard.toml".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }

    #[test]
    fn source_resolution() {
        let none = |_: &str| None;
        assert_eq!(ConfigSource::resolve(None, none), ConfigSource::Embedded);
        let env = |k: &str| (k == CONFIG_ENV).then(|| "/etc/s.toml".to_owned());
        assert_eq!(
            ConfigSource::resolve(None, env),
            ConfigSource::File("/etc/s.toml".into())
        );
        assert_eq!(
            ConfigSource::resolve(Some(Path::new("a.toml")), env),
            ConfigSource::File("a.toml".into())
        );
    }

    #[test]
    fn region_flows_into_the_manager() {
        let config =
            Config::from_toml_str(&format!("{MINIMAL}\n[server]\nregion = \"eu\"\n")).unwrap();
        assert_eq!(
            config.gateway().manager.preferred_region.as_deref(),
            Some("eu")
        );
    }

    #[test]
    fn cache_and_otel_sections_parse_and_are_checked() {
        let config = Config::from_toml_str(&format!(
            "{MINIMAL}\n[server]\nclient_rpm_limit = 60\n[server.cache]\nenabled = true\nttl = \"30s\"\nmax_entries = 5\n[server.otel]\nendpoint = \"http://127.0.0.1:4318\"\n"
        ))
        .unwrap();
        assert!(config.server.cache.enabled);
        assert_eq!(config.server.cache.ttl, Duration::from_secs(30));
        assert_eq!(config.server.cache.max_entries, 5);
        assert_eq!(
            config.server.otel.endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(config.server.otel.service_name, "switchyard");
        let err = parse_err(&format!(
            "{MINIMAL}\n[server.cache]\nttl = \"0s\"\nmax_entries = 0\n[server.otel]\nendpoint = \"nope\"\n"
        ));
        assert!(err.contains("server.cache.ttl"), "{err}");
        assert!(err.contains("server.cache.max_entries"), "{err}");
        assert!(err.contains("server.otel.endpoint"), "{err}");
        let err = parse_err(&format!("{MINIMAL}\n[server.cache]\nenable = true\n"));
        assert!(err.contains("server.cache.enable"), "{err}");
    }
}
