//! [`ConfigControl`]: the last good file config, the admin overlay, and the lock that serialises every config change (admin writes and reloads).
//!
//! Admin writes and reloads both take [`ConfigControl::lock`] for their
//! whole run, so they apply one at a time and the overlay always matches
//! what the manager serves. The data itself sits behind a short,
//! synchronous lock that is never held across an `.await`.
//!
//! Changes made directly through the manager (a library embedder calling
//! `ProviderManager::add_dynamic_provider`, say) are not in the overlay: a
//! reload replaces them with the file plus the overlay.

use std::net::SocketAddr;

use parking_lot::Mutex;
use switchyard_core::ProviderConfig;
use switchyard_providers::DefaultProviderFactory;
use tokio::sync::MutexGuard;

use crate::admin::overlay::{Origin, Overlay};
use crate::admin::policy::Policy;
use crate::app::AppState;
use crate::config::{Config, ConfigSource};

/// The file config, the overlay, and the lock serialising config changes.
pub struct ConfigControl {
    ops: tokio::sync::Mutex<()>,
    data: Mutex<Data>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for ConfigControl {
    fn default() -> Self {
        Self {
            ops: tokio::sync::Mutex::default(),
            data: Mutex::default(),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }
}

#[derive(Default)]
struct Data {
    source: ConfigSource,
    listen_override: Option<SocketAddr>,
    file: Option<Config>,
    overlay: Overlay,
    factory: Option<DefaultProviderFactory>,
    last_seen: Option<Vec<u8>>,
    reloads: u64,
    last_reload: Option<serde_json::Value>,
}

impl std::fmt::Debug for ConfigControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let data = self.data.lock();
        f.debug_struct("ConfigControl")
            .field("source", &data.source)
            .field("overlay", &data.overlay.summary())
            .finish_non_exhaustive()
    }
}

impl ConfigControl {
    /// Records the config the gateway started from and the factory that
    /// built its providers (used to find the keys of new providers, for
    /// redaction).
    pub fn init(&self, file: Config, factory: DefaultProviderFactory) {
        let mut data = self.data.lock();
        data.file = Some(file);
        data.factory = Some(factory);
    }

    /// Reload from `source` (the embedded default cannot be reloaded).
    pub fn set_source(&self, source: ConfigSource) {
        let seen = match &source {
            ConfigSource::File(path) => std::fs::read(path).ok(),
            ConfigSource::Embedded => None,
        };
        let mut data = self.data.lock();
        data.source = source;
        data.last_seen = seen;
    }

    /// `--listen` given on the command line: it keeps winning over the file's.
    pub fn set_listen_override(&self, listen: SocketAddr) {
        self.data.lock().listen_override = Some(listen);
    }

    /// Where the config comes from.
    pub fn source(&self) -> ConfigSource {
        self.data.lock().source.clone()
    }

    /// The command line's `--listen`, if given.
    pub fn listen_override(&self) -> Option<SocketAddr> {
        self.data.lock().listen_override
    }

    /// Serialises config changes: hold the guard for the whole change.
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.ops.lock().await
    }

    /// The last good file config; for a state built without one, what the
    /// manager serves now (taken once).
    pub fn file(&self, state: &AppState) -> Config {
        let mut data = self.data.lock();
        if let Some(file) = &data.file {
            return file.clone();
        }
        let file = Config {
            server: state.server.clone(),
            manager: state.manager.options().clone(),
            providers: state.manager.provider_configs(),
            routes: state.manager.routes(),
        };
        data.file = Some(file.clone());
        file
    }

    /// The overlay now.
    pub fn overlay(&self) -> Overlay {
        self.data.lock().overlay.clone()
    }

    /// Where provider `id` comes from.
    pub fn origin(&self, id: &str) -> Origin {
        self.data.lock().overlay.origin(id)
    }

    /// Stores a new overlay (with the [`lock`](Self::lock) held).
    pub fn set_overlay(&self, overlay: Overlay) {
        self.data.lock().overlay = overlay;
    }

    /// Stores a reloaded file and its rebased overlay (with the lock held).
    pub fn commit(&self, file: Config, overlay: Overlay) {
        let mut data = self.data.lock();
        data.file = Some(file);
        data.overlay = overlay;
    }

    /// Records the bytes of the file a reload read; `true` if they differ
    /// from the last ones seen (a file-watch reload is skipped otherwise).
    pub fn saw(&self, bytes: Option<Vec<u8>>) -> bool {
        let mut data = self.data.lock();
        let changed = data.last_seen != bytes;
        data.last_seen = bytes;
        changed
    }

    /// Ends the endless admin streams (`/admin/events`): the server is draining.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`close_streams`](Self::close_streams) was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    /// Records the outcome of a reload (a JSON object), numbering it.
    pub fn record_reload(&self, mut outcome: serde_json::Map<String, serde_json::Value>) {
        let mut data = self.data.lock();
        data.reloads += 1;
        outcome.insert("seq".to_owned(), data.reloads.into());
        data.last_reload = Some(serde_json::Value::Object(outcome));
    }

    /// The outcome of the last reload, if any: `seq` (1, 2, ...),
    /// `trigger`, `ok`, then the report or `error`.
    pub fn last_reload(&self) -> Option<serde_json::Value> {
        self.data.lock().last_reload.clone()
    }

    /// The rules for admin-written providers, from the last good file's `[server]`.
    pub fn policy(&self, state: &AppState) -> Policy {
        Policy::from_server(&self.file(state).server)
    }

    /// The upstream keys of `providers` that can be found (inline, or in
    /// the environment through the gateway's factory), for redaction.
    pub fn secrets_of(&self, providers: &[ProviderConfig]) -> Vec<String> {
        let factory = self.data.lock().factory.clone();
        providers
            .iter()
            .filter_map(|p| match &factory {
                Some(factory) => factory.api_key(p).ok().flatten(),
                None => p.api_key.clone(),
            })
            .map(|key| key.expose().to_owned())
            .collect()
    }
}
