//! Switchyard's HTTP server: one OpenAI-compatible endpoint (plus Anthropic's `/v1/messages`) in front of many LLM providers.
//!
//! The `switchyard` binary is a thin wrapper over this library, which
//! wires the other crates together: config loading ([`config`]), the
//! provider manager of `switchyard-core` built with the adapters of
//! `switchyard-providers` and the strategies of `switchyard-strategies`,
//! and the axum routes of SPEC §11 ([`app`], [`routes`]). Routing,
//! failover and health live in core; this crate only translates HTTP.
//!
//! Modules:
//! - [`config`]: the TOML file (`[server]` + core's sections), figment
//!   loading with `SWITCHYARD_<SECTION>__<KEY>` overrides, the embedded default.
//! - [`app`]: shared state and the router; [`connections`] serves it on
//!   accepted connections (header-read timeout, graceful shutdown).
//! - [`routes`]: the handlers.
//! - [`error`]: OpenAI / Anthropic error bodies and SPEC §5's status mapping.
//! - [`auth`]: client keys, admin token, listen-address rules (SPEC §16).
//! - [`sse`]: server-sent events out.
//! - [`telemetry`]: tracing and the Prometheus metrics of SPEC §12.
//! - [`limits`]: `client_rpm_limit`, per client key (SPEC §7).
//! - [`cache`]: the opt-in exact-match response cache (SPEC §7).
//! - [`otel`]: OpenTelemetry export of request and attempt spans (feature `otel`).
//! - [`admin`]: the admin API of SPEC §11, its auth and the overlay of SPEC §10.
//! - [`reload`]: config reload on file change, SIGHUP and `POST /admin/reload`.
//! - [`cli`]: the command line of the binary.
//!
//! Run a gateway in-process (tests do this on `127.0.0.1:0`):
//!
//! ```no_run
//! use switchyard_server::{Gateway, config::Config};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::embedded_default()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let gateway = Gateway::new(config)?;
//! println!("serving on http://{}", listener.local_addr()?);
//! gateway.serve(listener, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod connections;
mod dispatch;
pub mod error;
pub mod limits;
pub mod otel;
pub mod reload;
pub mod routes;
pub mod sse;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use switchyard_core::{ConfigError, ProviderManager};
use switchyard_providers::DefaultProviderFactory;
use tokio::net::TcpListener;

use crate::app::AppState;
use crate::auth::Credentials;
use crate::config::{Config, ConfigSource};
use crate::error::Redactor;

/// Reads an environment variable by name (the process environment, or a map in tests).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigLoadError),
    /// The manager refused the config (a provider could not be built).
    #[error(transparent)]
    Manager(#[from] ConfigError),
    /// Credentials or the listen address break SPEC §16.
    #[error("{0}")]
    Security(String),
    /// Binding or serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// A configured gateway, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    state: AppState,
}

impl Gateway {
    /// Builds the gateway from `config`, reading secrets from the process environment.
    pub fn new(config: Config) -> Result<Self, StartError> {
        Self::with_env(config, Arc::new(|name: &str| std::env::var(name).ok()))
    }

    /// Builds the gateway, reading every secret (upstream keys, client keys,
    /// admin token) through `env`.
    pub fn with_env(config: Config, env: EnvLookup) -> Result<Self, StartError> {
        config.validate()?;
        let lookup = Arc::clone(&env);
        let factory = DefaultProviderFactory::new().with_env_lookup(move |name| lookup(name));
        let credentials = Credentials::resolve(&config.server, &|name| env(name))
            .map_err(StartError::Security)?;
        if config.server.client_rpm_limit.is_some() && !credentials.client_keys_required() {
            tracing::warn!(
                "server.client_rpm_limit is set but no client keys are configured (api_keys_env): it limits nobody"
            );
        }
        let mut secrets: Vec<String> = credentials.secrets().collect();
        for provider in &config.providers {
            if let Ok(Some(key)) = factory.api_key(provider) {
                secrets.push(key.expose().to_owned());
            }
        }
        let metrics = telemetry::prometheus();
        if config.manager.enable_metrics {
            telemetry::register(&config.providers);
        }
        let (file, kept_factory) = (config.clone(), factory.clone());
        let manager = ProviderManager::builder()
            .config(config.gateway())
            .factory(factory)
            .strategies(switchyard_strategies::registry())
            .build()?;
        let state = AppState::new(
            manager,
            config.server,
            credentials,
            Redactor::new(secrets),
            metrics,
        );
        state.control.init(file, kept_factory);
        Ok(Self { state })
    }

    /// Reloads from `source` on file change, SIGHUP and `POST /admin/reload`
    /// (`config` passed to [`Gateway::new`] should be what it held). The
    /// embedded default cannot be reloaded.
    pub fn with_config_source(self, source: ConfigSource) -> Self {
        self.state.control.set_source(source);
        self
    }

    /// `--listen` given on the command line: reloads keep it over the file's `server.listen`.
    pub fn with_listen_override(self, listen: std::net::SocketAddr) -> Self {
        self.state.control.set_listen_override(listen);
        self
    }

    /// The provider manager.
    pub fn manager(&self) -> &ProviderManager {
        &self.state.manager
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The axum router over this gateway's state.
    pub fn router(&self) -> axum::Router {
        app::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then stops
    /// accepting and lets in-flight requests (streams included) finish
    /// within `server.shutdown_timeout`. Refuses a non-loopback listener
    /// without an admin token, or without client keys unless
    /// `allow_open_proxy` (SPEC §16). Runs active health checks meanwhile,
    /// and the reload triggers: SIGHUP, and the file watch when a config
    /// file was given ([`Gateway::with_config_source`]).
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<(), StartError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        auth::check_listen(addr, &self.state.server, &self.state.credentials)
            .map_err(StartError::Security)?;
        let _health = self.state.manager.start_health_checker();
        let _upkeep = telemetry::start_upkeep();
        let _reload = reload::start(&self.state);
        let otel = otel::start_async(&self.state.server.otel).await;
        let state = self.state.clone();
        let drain = Arc::new(tokio::sync::Notify::new());
        let signal = {
            let drain = Arc::clone(&drain);
            let state = state.clone();
            async move {
                shutdown.await;
                state.set_ready(false);
                // Endless admin streams (/admin/events) end, so they do not hold the drain.
                state.control.close_streams();
                tracing::info!("shutting down: no new connections; draining in-flight requests");
                drain.notify_one();
            }
        };
        let server = connections::serve(
            listener,
            dispatch::Dispatch::new(&self.state, self.router()),
            connections::ClientLimits {
                header_read: state.server.header_read_timeout,
                body_read: state.server.body_read_timeout,
            },
            signal,
        );
        tracing::info!(
            %addr,
            providers = self.state.manager.provider_ids().len(),
            models = ?self.state.manager.models(),
            "switchyard listening on http://{addr}"
        );
        state.set_ready(true);
        let limit = state.server.shutdown_timeout;
        tokio::pin!(server);
        tokio::select! {
            () = &mut server => {}
            () = async {
                drain.notified().await;
                tokio::time::sleep(limit).await;
            } => {
                tracing::warn!(timeout = ?limit, "shutdown timeout passed; dropping the requests still in flight");
            }
        }
        otel::stop_async(otel).await;
        tracing::info!("switchyard stopped");
        Ok(())
    }
}

/// Builds a gateway from `config` (secrets from the process environment)
/// and serves it on `listener` until `shutdown` completes.
pub async fn serve<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), StartError>
where
    F: Future<Output = ()> + Send + 'static,
{
    Gateway::new(config)?.serve(listener, shutdown).await
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
