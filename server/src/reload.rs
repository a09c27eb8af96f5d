//! Config reload (SPEC §10): on a change of the config file, on SIGHUP and on `POST /admin/reload` — validate, diff, apply only the diff.
//!
//! A reload, one at a time (it holds the config lock of
//! [`ConfigControl`](crate::admin::ConfigControl) throughout, as admin
//! writes do):
//! 1. reads the file through the same loader as start-up (figment: the
//!    file, then `SWITCHYARD_<SECTION>__<KEY>` overrides; `--listen` keeps
//!    winning) and validates it; an invalid file is refused with every
//!    problem and its path, `config_reload_failed` is emitted, and the old
//!    config keeps serving;
//! 2. carries the admin overlay onto it ([`Overlay::rebase`](crate::admin::Overlay::rebase)):
//!    a file that newly defines an id an admin `POST` created is refused
//!    (409 on `POST /admin/reload`) unless `?override=true`;
//! 3. hands the effective providers and routes to the manager's
//!    `apply_config`, which diffs them by id and swaps in only what changed
//!    (in-flight requests finish on the config they started with) and
//!    emits `config_reloaded` or `config_reload_failed`.
//!
//! What cannot change live is reported as a warning (logged, and in the
//! `warnings` of the reload response) at every reload while the file
//! differs from what the server runs, and otherwise ignored until a
//! restart: every `[server]` key except `dynamic_key_envs` and
//! `upstream_allowlist` (notably `listen` and `admin_token_env`), and every
//! `[manager]` option. The outcome of the last reload, whatever triggered
//! it, is kept for `GET /admin/reload`.
//!
//! The file watch ([`start`]) watches the file's *directory*, so editors'
//! rename-saves and symlink swaps (Kubernetes ConfigMaps) count, while
//! writes to other regular files there (a log beside the config) do not;
//! events are debounced for [`DEBOUNCE`], and a reload whose file bytes
//! did not change since the last one is skipped. SIGHUP and `POST /admin/reload` always
//! reload. With the embedded default config (no file) there is nothing to
//! reload: `POST /admin/reload` answers 400 and SIGHUP is logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::config::{self, Config, ConfigSource};
use crate::telemetry;

/// Quiet time after the last file event before a reload starts.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// `[server]` keys that apply live on reload.
pub const LIVE_SERVER_KEYS: [&str; 2] = ["dynamic_key_envs", "upstream_allowlist"];

/// What started a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The config file (or its directory) changed.
    File,
    /// SIGHUP.
    Signal,
    /// `POST /admin/reload`.
    Admin,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Self::File => "file change",
            Self::Signal => "SIGHUP",
            Self::Admin => "admin API",
        }
    }

    /// `file`, `signal` or `admin`.
    pub fn label(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Signal => "signal",
            Self::Admin => "admin",
        }
    }
}

/// What a reload changed: the body of `POST /admin/reload`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Providers added.
    pub added: Vec<String>,
    /// Providers whose config changed.
    pub changed: Vec<String>,
    /// Providers removed.
    pub removed: Vec<String>,
    /// Whether any route changed.
    pub routes_changed: bool,
    /// What was not applied (needs a restart) or is worth knowing.
    pub warnings: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The server runs on the embedded default config.
    #[error(
        "the server runs on the embedded default config, so there is no file to reload: start it with --config PATH (or SWITCHYARD_CONFIG)"
    )]
    NoFile,
    /// The file cannot be read, parsed or validated.
    #[error("{0}")]
    Invalid(String),
    /// The file defines an id an admin `POST` created.
    #[error("{0}")]
    Conflict(String),
    /// The manager refused the effective config.
    #[error("{0}")]
    Rejected(String),
}

/// Reloads the config file now. `Ok(None)`: a file-watch trigger found the
/// file unchanged. Errors have been reported (`config_reload_failed`).
pub async fn reload(
    state: &AppState,
    trigger: Trigger,
    force: bool,
) -> Result<Option<ReloadReport>, ReloadError> {
    let _write = state.control.lock().await;
    let result = reload_locked(state, trigger, force).await;
    let outcome = match &result {
        Ok(None) | Err(ReloadError::NoFile) => None,
        Ok(Some(report)) => serde_json::to_value(report).ok(),
        Err(error) => Some(serde_json::json!({ "error": error.to_string() })),
    };
    if let Some(Value::Object(mut outcome)) = outcome {
        outcome.insert("ok".to_owned(), Value::Bool(result.is_ok()));
        outcome.insert("trigger".to_owned(), Value::from(trigger.label()));
        state.control.record_reload(outcome);
    }
    result
}

async fn reload_locked(
    state: &AppState,
    trigger: Trigger,
    force: bool,
) -> Result<Option<ReloadReport>, ReloadError> {
    let ConfigSource::File(path) = state.control.source() else {
        return Err(ReloadError::NoFile);
    };
    let (bytes, loaded) = read(path.clone()).await;
    if !state.control.saw(bytes) && trigger == Trigger::File {
        return Ok(None);
    }
    let fail = |error: ReloadError| {
        tracing::warn!(trigger = trigger.name(), %error, "config reload refused; the previous config keeps serving");
        error
    };
    let mut next = match loaded {
        Ok(config) => config,
        Err(error) => {
            let message = state
                .redactor
                .redact(&format!("{}: {error}", path.display()));
            state.manager.report_reload_failure(&message);
            return Err(fail(ReloadError::Invalid(message)));
        }
    };
    if let Some(listen) = state.control.listen_override() {
        next.server.listen = listen;
    }
    let running = Config {
        server: state.server.clone(),
        manager: state.manager.options().clone(),
        ..Config::default()
    };
    let mut warnings = restart_warnings(&running, &next);
    let (overlay, rebased) = match state.control.overlay().rebase(&next, force) {
        Ok(result) => result,
        Err(conflict) => {
            let message = state.redactor.redact(&conflict.to_string());
            state.manager.report_reload_failure(&message);
            return Err(fail(ReloadError::Conflict(message)));
        }
    };
    warnings.extend(rebased);
    let (providers, routes) = overlay.apply(&next);
    state.redactor.add(state.control.secrets_of(&providers));
    let diff = match state.manager.apply_config(providers.clone(), routes).await {
        Ok(diff) => diff,
        Err(error) => {
            // The manager emitted config_reload_failed.
            let message = state.redactor.redact(&format!(
                "{}: invalid configuration: {error}",
                path.display()
            ));
            return Err(fail(ReloadError::Rejected(message)));
        }
    };
    if state.manager.options().enable_metrics {
        let fresh: Vec<_> = providers
            .into_iter()
            .filter(|p| diff.added.contains(&p.id) || diff.changed.contains(&p.id))
            .collect();
        telemetry::register(&fresh);
    }
    state.control.commit(next, overlay);
    for warning in &warnings {
        tracing::warn!(trigger = trigger.name(), %warning, "config reload");
    }
    tracing::info!(
        trigger = trigger.name(),
        added = ?diff.added,
        changed = ?diff.changed,
        removed = ?diff.removed,
        routes_changed = diff.routes_changed,
        "config reloaded"
    );
    Ok(Some(ReloadReport {
        added: diff.added,
        changed: diff.changed,
        removed: diff.removed,
        routes_changed: diff.routes_changed,
        warnings,
    }))
}

/// Reads the file's bytes and loads it, off the async threads.
async fn read(path: PathBuf) -> (Option<Vec<u8>>, Result<Config, String>) {
    let source = ConfigSource::File(path.clone());
    let work = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).ok();
        (bytes, config::load(&source).map_err(|e| e.to_string()))
    });
    match work.await {
        Ok(result) => result,
        Err(error) => (None, Err(format!("the reload task failed: {error}"))),
    }
}

/// Warnings for what a reload cannot apply: `[server]` keys other than
/// [`LIVE_SERVER_KEYS`], and `[manager]` options, that differ from what
/// the server runs with (so they repeat at every reload until a restart).
pub fn restart_warnings(previous: &Config, next: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let server = changed_keys(&previous.server, &next.server);
    for key in server
        .iter()
        .filter(|key| !LIVE_SERVER_KEYS.contains(&key.as_str()))
    {
        warnings.push(format!(
            "server.{key} differs from the running config: not applied; it takes effect at the next restart"
        ));
    }
    for key in changed_keys(&previous.manager, &next.manager) {
        warnings.push(format!(
            "manager.{key} differs from the running config: not applied; [manager] options take effect at the next restart"
        ));
    }
    warnings
}

fn changed_keys<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Vec::new();
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|key| a.get(*key) != b.get(*key))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The reload triggers of a serving gateway; dropping it stops them.
#[derive(Debug, Default)]
pub struct Watch {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the file watch (when the config is a file) and the SIGHUP
/// listener. The watch is in place when this returns.
pub fn start(state: &AppState) -> Watch {
    let mut watch = Watch::default();
    if let ConfigSource::File(path) = state.control.source() {
        match watch_file(state.clone(), &path) {
            Ok(task) => watch.tasks.push(task),
            Err(error) => tracing::warn!(
                path = %path.display(),
                %error,
                "cannot watch the config file; reload with SIGHUP or POST /admin/reload"
            ),
        }
    }
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            let state = state.clone();
            watch.tasks.push(tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reloading the config");
                    if let Err(ReloadError::NoFile) = reload(&state, Trigger::Signal, false).await {
                        tracing::warn!("SIGHUP: {}", ReloadError::NoFile);
                    }
                }
            }));
        }
        Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP"),
    }
    watch
}

fn watch_file(state: AppState, path: &Path) -> Result<JoinHandle<()>, notify::Error> {
    use notify::event::{AccessKind, AccessMode};
    use notify::{EventKind, RecursiveMode, Watcher};

    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let config_name = path.file_name().map(ToOwned::to_owned);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Reads (ours included) are not changes.
            Ok(event) => {
                let read = matches!(
                    event.kind,
                    EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)
                );
                if !read && may_concern_config(&event.paths, config_name.as_deref()) {
                    let _ = tx.send(());
                }
            }
            Err(error) => tracing::warn!(%error, "config file watch error"),
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching the config file's directory for changes");
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            // Debounce: wait until the directory has been quiet for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            // Errors were logged and reported by `reload`.
            let _ = reload(&state, Trigger::File, false).await;
        }
    }))
}

/// Whether a change to `paths` (in the config file's directory) may have
/// changed the config: not when every one is an existing regular file of
/// another name. A log file written next to the config would otherwise
/// keep the directory from ever being quiet for [`DEBOUNCE`], holding back
/// reloads for as long as the gateway logs. Symlinks and directories still
/// count (a Kubernetes ConfigMap update swaps the `..data` symlink and
/// never touches the config's own name), and so do paths gone by now.
fn may_concern_config(paths: &[PathBuf], config_name: Option<&std::ffi::OsStr>) -> bool {
    paths.is_empty()
        || paths.iter().any(|changed| {
            changed.file_name() == config_name
                || std::fs::symlink_metadata(changed).map_or(true, |meta| !meta.is_file())
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[cfg(unix)]
    #[test]
    fn only_changes_that_may_touch_the_config_count() {
        let dir = tempfile::TempDir::new().unwrap();
        let config = dir.path().join("switchyard.toml");
        let log = dir.path().join("switchyard.log");
        std::fs::write(&config, "").unwrap();
        std::fs::write(&log, "a line\n").unwrap();
        let name = config.file_name();
        assert!(may_concern_config(std::slice::from_ref(&config), name));
        assert!(
            !may_concern_config(std::slice::from_ref(&log), name),
            "a log file next to the config"
        );
        assert!(
            may_concern_config(&[log.clone(), config.clone()], name),
            "a rename onto the config"
        );
        assert!(may_concern_config(&[dir.path().join("gone.tmp")], name));
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink(dir.path(), &data).unwrap();
        assert!(
            may_concern_config(&[data], name),
            "a ConfigMap's symlink swap"
        );
        let nested = dir.path().join("..2026_11_26");
        std::fs::create_dir(&nested).unwrap();
        assert!(may_concern_config(&[nested], name));
        assert!(may_concern_config(&[], name));
    }

    const BASE: &str = r#"
        [[providers]]
        id = "p"
        type = "mock"
        models = { "m" = {} }
    "#;

    #[test]
    fn what_needs_a_restart_is_named() {
        let a = Config::from_toml_str(BASE).unwrap();
        let b = Config::from_toml_str(&format!(
            "{BASE}\n[server]\nlisten = \"127.0.0.1:9\"\nadmin_token_env = \"OTHER_TOKEN\"\ndynamic_key_envs = [\"K\"]\n[manager]\nmax_retries = 1\n"
        ))
        .unwrap();
        let warnings = restart_warnings(&a, &b);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with("server.admin_token_env differs"));
        assert!(warnings[1].starts_with("server.listen differs"));
        assert!(warnings[2].starts_with("manager.max_retries differs"));
        assert!(restart_warnings(&a, &a).is_empty());
    }
}
