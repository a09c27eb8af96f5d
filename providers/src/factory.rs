//! [`DefaultProviderFactory`]: turns a `[[providers]]` entry into a live adapter (how the server and `add_dynamic_provider` build providers).
//!
//! Types: `openai`, `openai_compatible`, `anthropic`, `mock`. The API key
//! comes from `api_key` (inline) or the environment variable named by
//! `api_key_env`; errors name the variable, never a value. Every provider a
//! factory builds shares one pooled HTTP client ([`HttpOptions`]): pools
//! are keyed by host, so providers on the same upstream reuse each other's
//! connections (as an nginx `upstream` block does), and TLS roots are
//! loaded once instead of once per provider.

use std::fmt;
use std::sync::{Arc, OnceLock};

use ::http::header::{HeaderName, HeaderValue};
use switchyard_core::{ConfigError, Provider, ProviderConfig, ProviderFactory, Secret};

use crate::anthropic::AnthropicProvider;
use crate::http::{Auth, HttpOptions, Upstream, build_client};
use crate::mock::MockProvider;
use crate::openai::OpenAiProvider;
use crate::wire::anthropic::API_VERSION;

/// OpenAI's API.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Anthropic's API.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";

type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Builds the built-in provider types.
#[derive(Clone)]
pub struct DefaultProviderFactory {
    http: HttpOptions,
    client: Arc<OnceLock<crate::client::HttpClient>>,
    env: Arc<EnvLookup>,
}

impl fmt::Debug for DefaultProviderFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultProviderFactory")
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl Default for DefaultProviderFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl DefaultProviderFactory {
    /// Reads keys from the process environment; default pool settings.
    pub fn new() -> Self {
        Self {
            http: HttpOptions::default(),
            client: Arc::new(OnceLock::new()),
            env: Arc::new(|name| std::env::var(name).ok()),
        }
    }

    /// Uses these connection-pool settings.
    pub fn with_http_options(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self.client = Arc::new(OnceLock::new());
        self
    }

    /// Reads `api_key_env` variables through `lookup` (tests, or a server
    /// that restricts which variables admin-added providers may name).
    pub fn with_env_lookup(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.env = Arc::new(lookup);
        self
    }

    /// The API key of `config`, if it has one.
    pub fn api_key(&self, config: &ProviderConfig) -> Result<Option<Secret>, ConfigError> {
        if let Some(key) = &config.api_key {
            return Ok(Some(key.clone()));
        }
        let Some(name) = &config.api_key_env else {
            return Ok(None);
        };
        match (self.env)(name) {
            Some(value) if !value.trim().is_empty() => Ok(Some(Secret::new(value.trim()))),
            _ => Err(ConfigError::single(
                "api_key_env",
                format!("environment variable '{name}' is not set or empty"),
            )),
        }
    }

    /// The shared client, built on first use.
    fn client(&self) -> Result<crate::client::HttpClient, ConfigError> {
        if let Some(client) = self.client.get() {
            return Ok(client.clone());
        }
        let client = build_client(&self.http)?;
        Ok(self.client.get_or_init(|| client).clone())
    }

    fn upstream(
        &self,
        config: &ProviderConfig,
        default_base: Option<&str>,
        auth: Auth,
        key_required: bool,
    ) -> Result<Upstream, ConfigError> {
        let base = config.base_url.as_deref().or(default_base).ok_or_else(|| {
            ConfigError::single(
                "base_url",
                format!("is required for type '{}'", config.kind),
            )
        })?;
        let key = self.api_key(config)?;
        if key.is_none() && key_required {
            return Err(ConfigError::single(
                "api_key_env",
                format!(
                    "type '{}' needs an API key: set api_key_env (or api_key)",
                    config.kind
                ),
            ));
        }
        let client = self.client()?;
        Upstream::new(&config.id, base, client, auth, key, &config.headers)
    }
}

impl ProviderFactory for DefaultProviderFactory {
    fn create(&self, config: &ProviderConfig) -> Result<Arc<dyn Provider>, ConfigError> {
        match config.kind.as_str() {
            "openai" => {
                let http = self.upstream(config, Some(OPENAI_BASE_URL), Auth::Bearer, true)?;
                Ok(Arc::new(OpenAiProvider::new(
                    "openai",
                    http,
                    config.health_check.clone(),
                )))
            }
            "openai_compatible" => {
                let http = self.upstream(config, None, Auth::Bearer, false)?;
                Ok(Arc::new(OpenAiProvider::new(
                    "openai_compatible",
                    http,
                    config.health_check.clone(),
                )))
            }
            "anthropic" => {
                let http = self
                    .upstream(config, Some(ANTHROPIC_BASE_URL), Auth::XApiKey, true)?
                    .with_header(
                        HeaderName::from_static("anthropic-version"),
                        HeaderValue::from_static(API_VERSION),
                    );
                Ok(Arc::new(AnthropicProvider::new(
                    http,
                    config.health_check.clone(),
                    config.models.clone(),
                )))
            }
            "mock" => Ok(Arc::new(MockProvider::from_config(config))),
            other => Err(ConfigError::single(
                "type",
                format!(
                    "unknown provider type '{other}' (expected openai | openai_compatible | anthropic | mock)"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factory() -> DefaultProviderFactory {
        DefaultProviderFactory::new()
            .with_env_lookup(|name| (name == "TEST_KEY").then(|| "sk-from-env-0000".to_owned()))
    }

    #[test]
    fn builds_every_type_and_explains_mistakes() {
        let mut openai = ProviderConfig::new("o", "openai", ["gpt-4o"]);
        openai.api_key_env = Some("TEST_KEY".into());
        assert_eq!(factory().create(&openai).unwrap().kind(), "openai");

        let mut compatible = ProviderConfig::new("v", "openai_compatible", ["llama"]);
        compatible.base_url = Some("http://127.0.0.1:8000/v1".into());
        assert_eq!(
            factory().create(&compatible).unwrap().kind(),
            "openai_compatible"
        );

        let mut anthropic = ProviderConfig::new("a", "anthropic", ["claude"]);
        anthropic.api_key = Some(Secret::new("sk-ant-inline"));
        let built = factory().create(&anthropic).unwrap();
        assert!(built.capabilities().anthropic_native);

        let mock = ProviderConfig::new("m", "mock", ["x"]);
        assert_eq!(factory().create(&mock).unwrap().kind(), "mock");

        let unknown = ProviderConfig::new("u", "cohere", ["x"]);
        let error = factory().create(&unknown).err().unwrap();
        assert_eq!(error.issues[0].path, "type");
        assert!(
            error.issues[0]
                .message
                .contains("unknown provider type 'cohere'")
        );

        let mut missing = ProviderConfig::new("o", "openai", ["gpt-4o"]);
        missing.api_key_env = Some("NOT_SET_ANYWHERE".into());
        let error = factory().create(&missing).err().unwrap();
        assert_eq!(error.issues[0].path, "api_key_env");
        assert!(error.issues[0].message.contains("NOT_SET_ANYWHERE"));

        let no_base = ProviderConfig::new("v", "openai_compatible", ["x"]);
        assert_eq!(
            factory().create(&no_base).err().unwrap().issues[0].path,
            "base_url"
        );

        let mut bad_header = compatible.clone();
        bad_header.headers.insert("bad header".into(), "x".into());
        assert_eq!(
            factory().create(&bad_header).err().unwrap().issues[0].path,
            "headers.\"bad header\""
        );
    }
}
