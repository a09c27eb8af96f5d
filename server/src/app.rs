//! The shared state of every handler and the axum [`Router`] of SPEC §11.
//!
//! [`AppState`] is one `Arc`: the [`ProviderManager`] (itself cheap to
//! clone, with atomically swapped internals), the `[server]` config, the
//! resolved credentials, the secret redactor, the Prometheus handle and the
//! `/v1/models` cache. No locks are held across an `.await`.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use switchyard_core::{ModelInfo, ProviderManager};

use crate::auth::Credentials;
use crate::config::ServerConfig;
use crate::error::{ApiError, Redactor};
use crate::routes;

/// How long upstream model lists of `"*"` providers are cached.
pub const MODEL_LIST_TTL: Duration = Duration::from_secs(300);

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("manager", &self.inner.manager)
            .field("credentials", &self.inner.credentials)
            .finish_non_exhaustive()
    }
}

/// The shared part of [`AppState`].
pub struct Shared {
    /// The provider manager.
    pub manager: ProviderManager,
    /// `[server]`.
    pub server: ServerConfig,
    /// Client keys and admin token.
    pub credentials: Credentials,
    /// Removes configured secrets from client-bound text.
    pub redactor: Redactor,
    /// `/metrics` source (`None` if another recorder was installed first).
    pub metrics: Option<PrometheusHandle>,
    /// `/readyz`: config loaded and listener serving, not shutting down.
    pub ready: AtomicBool,
    /// Upstream model lists of `"*"` providers.
    pub model_lists: ModelListCache,
    /// `client_rpm_limit`, per client key.
    pub client_limits: crate::limits::ClientLimiter,
    /// The opt-in response cache (`[server.cache]`).
    pub response_cache: crate::cache::ResponseCache,
    /// The file config, the admin overlay and the config-change lock (admin API, reload).
    pub control: crate::admin::ConfigControl,
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.inner
    }
}

impl AppState {
    /// State over a built manager.
    pub fn new(
        manager: ProviderManager,
        server: ServerConfig,
        credentials: Credentials,
        redactor: Redactor,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let client_limits = crate::limits::ClientLimiter::new(server.client_rpm_limit);
        let response_cache = crate::cache::ResponseCache::new(&server.cache);
        Self {
            inner: Arc::new(Shared {
                manager,
                server,
                credentials,
                redactor,
                metrics,
                ready: AtomicBool::new(false),
                model_lists: ModelListCache::default(),
                client_limits,
                response_cache,
                control: crate::admin::ConfigControl::default(),
            }),
        }
    }

    /// Marks the server ready (listener serving) or not (shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }
}

/// Cached upstream model lists, per provider id.
#[derive(Debug, Default)]
pub struct ModelListCache {
    entries: Mutex<HashMap<String, (Instant, Vec<ModelInfo>)>>,
}

impl ModelListCache {
    /// The cached list of `provider_id`, if fresh.
    pub fn get(&self, provider_id: &str) -> Option<Vec<ModelInfo>> {
        let entries = self.entries.lock();
        let (at, list) = entries.get(provider_id)?;
        (at.elapsed() < MODEL_LIST_TTL).then(|| list.clone())
    }

    /// Stores the list of `provider_id`.
    pub fn put(&self, provider_id: &str, list: Vec<ModelInfo>) {
        self.entries
            .lock()
            .insert(provider_id.to_owned(), (Instant::now(), list));
    }
}

/// The router: data plane under `/v1` (client keys when configured),
/// probes, metrics and the admin API ([`crate::admin`]).
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::chat::handle))
        .route("/v1/completions", post(routes::completions::handle))
        .route("/v1/embeddings", post(routes::embeddings::handle))
        .route("/v1/messages", post(routes::messages::handle))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{*model}", get(routes::models::retrieve));
    // Both are fixed at start-up; a layer that would only pass requests
    // through costs a boxed future and a service clone per request.
    let v1 = if state.response_cache.is_enabled() {
        v1.layer(middleware::from_fn_with_state(
            state.clone(),
            crate::cache::middleware,
        ))
    } else {
        v1
    };
    let v1 = if client_gate_on(&state) {
        v1.layer(middleware::from_fn_with_state(
            state.clone(),
            require_client_key,
        ))
    } else {
        v1
    };
    Router::new()
        .merge(v1)
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::metrics::render))
        .merge(crate::admin::router(state.clone()))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.server.max_body_bytes))
        .with_state(state)
}

async fn require_client_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match gate_client(&state, &mut request) {
        Ok(()) => next.run(request).await,
        Err(response) => response,
    }
}

/// Whether the `/v1` client-key layer is on for `state`.
pub(crate) fn client_gate_on(state: &AppState) -> bool {
    state.credentials.client_keys_required() || state.client_limits.rpm().is_some()
}

/// The `/v1` client check: the caller's key, then `client_rpm_limit`
/// (which also stores the caller's [`ClientId`](crate::limits::ClientId)
/// for the cache); the error is the 401 or 429 to send.
#[allow(clippy::result_large_err)]
pub(crate) fn gate_client<B>(
    state: &AppState,
    request: &mut axum::http::Request<B>,
) -> Result<(), Response> {
    if state.credentials.client_allowed(request.headers()) {
        return crate::limits::admit(state, request);
    }
    let error = ApiError::unauthorized(
        "Invalid or missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`.",
    );
    let error = if request.uri().path().starts_with("/v1/messages") {
        error.anthropic()
    } else {
        error
    };
    let meta = routes::RequestMeta::from_headers(request.headers());
    Err(routes::with_request_id(error.into_response(), &meta))
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::no_route(method.as_str(), uri.path()).into_response()
}

async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
    _: HeaderMap,
) -> Response {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("Method {method} is not allowed on {}.", uri.path()),
    )
    .with_code("method_not_allowed")
    .into_response()
}
