//! `ProviderManager`: the seed's API (SPEC §3) over an atomically swapped registry.
//!
//! Reads (selection) load the current registry snapshot without locks.
//! Writes (add, update, remove, routes) are serialised by an async mutex,
//! build a new registry from the old one and swap it in; requests already
//! holding a handle finish on the config they started with.

mod budget;
mod failover;
mod handle;
mod health;
mod queue;
mod resume;
mod select;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use switchyard_events::EventBus;
use tokio::time::Instant;

use crate::config::{GatewayConfig, ManagerOptions, ProviderConfig, RouteConfig, validate_routes};
use crate::error::{ConfigError, ManagerError, ProviderError};
use crate::event::{EventKind, ProviderEvent};
use crate::provider::{CallContext, NoFactory, Provider, ProviderFactory};
use crate::registry::{Deployment, ProviderEntry, Registry};
use crate::state::{
    CircuitState, Clock, DeploymentState, Health, Lifecycle, OpenCircuits, ProviderState,
};
use crate::strategy::StrategyRegistry;
use crate::types::RequestType;

pub use failover::{Attempt, FailoverOptions, FailoverResult, ManagedStream};
pub use handle::{CallGuard, ProviderHandle};
pub use health::HealthChecker;
pub use resume::{Resume, ResumeMode};
pub use select::SelectRequest;

/// How long a breaker failure keeps a deployment degraded (behind healthy
/// peers) before it gets traffic again.
pub const DEGRADED_HOLD: Duration = Duration::from_secs(5);

/// Decides whether a deployment may take one more request beyond the
/// built-in concurrency caps (rate limits plug in here). Default: always.
pub trait AdmissionControl: Send + Sync + 'static {
    /// Whether `deployment` may take a request now.
    fn admits(&self, deployment: &Deployment) -> bool;
}

/// Admits everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlimited;

impl AdmissionControl for Unlimited {
    fn admits(&self, _: &Deployment) -> bool {
        true
    }
}

/// Options of [`ProviderManager::add_dynamic_provider`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddOptions {
    /// Validate and build only; change nothing.
    pub validate_only: bool,
    /// Run an active health check before going live; refuse on failure.
    pub health_check: bool,
}

/// Result of [`ProviderManager::add_dynamic_provider`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddOutcome {
    /// Always true for `Ok` (kept for the seed's shape).
    pub success: bool,
    /// What happened.
    pub message: String,
    /// The provider id.
    pub provider_id: String,
    /// Result of the pre-activation check, if one ran.
    pub health: Option<Health>,
}

/// What [`ProviderManager::apply_config`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    /// Providers added.
    pub added: Vec<String>,
    /// Providers whose config changed.
    pub changed: Vec<String>,
    /// Providers removed.
    pub removed: Vec<String>,
    /// Whether any route changed.
    pub routes_changed: bool,
}

/// One row of [`ProviderManager::get_provider_load_stats`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProviderLoadStats {
    /// Provider id.
    pub provider_id: String,
    /// SPEC §3 load, 0..100 (the provider's busiest deployment).
    pub load: f64,
    /// Provider health (its best deployment's, or provider-wide).
    pub health: Health,
    /// Requests started in the last minute.
    pub requests_per_minute: u64,
    /// Peak-EWMA latency, averaged over deployments with traffic.
    pub average_response_time_ms: f64,
    /// Requests in flight.
    pub in_flight: u32,
    /// Successes / requests over the last minute (1 with no traffic).
    pub success_rate: f64,
}

/// Manager-wide counters behind [`ProviderManager::metrics_snapshot`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    switches: AtomicU64,
    health_checks: AtomicU64,
    health_check_failures: AtomicU64,
    recoveries: AtomicU64,
    recovery_ms: AtomicU64,
    panic_selections: AtomicU64,
}

impl Counters {
    fn bump(cell: &AtomicU64) {
        cell.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request(&self) {
        Self::bump(&self.requests);
    }

    pub fn success(&self) {
        Self::bump(&self.successes);
    }

    pub fn failure(&self) {
        Self::bump(&self.failures);
    }

    pub fn switch(&self) {
        Self::bump(&self.switches);
    }

    fn health_check(&self, passed: bool) {
        Self::bump(&self.health_checks);
        if !passed {
            Self::bump(&self.health_check_failures);
        }
    }

    fn recovery(&self, took: Duration) {
        Self::bump(&self.recoveries);
        self.recovery_ms.fetch_add(millis(took), Ordering::Relaxed);
    }
}

/// Manager-wide figures (the seed's metrics), from [`ProviderManager::metrics_snapshot`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Active health checks run.
    pub health_checks_run: u64,
    /// Active health checks failed.
    pub health_checks_failed: u64,
    /// Switches from one deployment to another during failover.
    pub provider_switches: u64,
    /// Circuits closed or providers recovered.
    pub recoveries: u64,
    /// Mean time from fault to recovery.
    pub average_recovery_time_ms: f64,
    /// Requests run through failover.
    pub requests_total: u64,
    /// Of which succeeded.
    pub requests_succeeded: u64,
    /// Successes / requests (1 with no requests).
    pub request_success_rate: f64,
    /// Picks made in panic mode.
    pub panic_selections: u64,
    /// Per-provider counters.
    pub providers: Vec<ProviderCounters>,
}

/// Per-provider counters of a [`MetricsSnapshot`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProviderCounters {
    /// Provider id.
    pub provider_id: String,
    /// Calls that succeeded (all deployments, lifetime of their state).
    pub successes: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Calls in flight.
    pub in_flight: u32,
    /// Health.
    pub health: Health,
}

pub(crate) struct ManagerInner {
    pub queue: queue::RequestQueue,
    pub counters: Counters,
    budget: budget::RetryBudget,
    pub options: ManagerOptions,
    pub clock: Clock,
    registry: ArcSwap<Registry>,
    write: tokio::sync::Mutex<()>,
    factory: Arc<dyn ProviderFactory>,
    strategies: StrategyRegistry,
    events: EventBus<ProviderEvent>,
    pub admission: Arc<dyn AdmissionControl>,
    /// Circuits of this manager's deployments that are not closed.
    pub open_circuits: OpenCircuits,
}

impl ManagerInner {
    fn emit(&self, kind: EventKind) {
        self.events.publish(ProviderEvent::now(kind));
    }

    fn metrics_on(&self) -> bool {
        self.options.enable_metrics
    }

    pub fn call_context(&self, route: Option<&RouteConfig>) -> CallContext {
        let o = &self.options;
        CallContext {
            deadline: None,
            response_timeout: route
                .and_then(|r| r.provider_timeout)
                .unwrap_or(o.provider_timeout),
            first_token_timeout: route
                .and_then(|r| r.first_token_timeout)
                .unwrap_or(o.first_token_timeout),
            stream_idle_timeout: route
                .and_then(|r| r.stream_idle_timeout)
                .unwrap_or(o.stream_idle_timeout),
            request_id: None,
            traceparent: None,
            bounded_by_caller: false,
        }
    }

    /// Ejection length after `previous` ejections: base, doubling, capped.
    fn ejection(&self, previous: u32) -> Duration {
        let factor = 1u32.checked_shl(previous.min(16)).unwrap_or(u32::MAX);
        self.options
            .base_ejection
            .saturating_mul(factor)
            .min(self.options.max_ejection)
    }

    fn set_deployment_health(&self, d: &Deployment, to: Health) {
        let from = d.state().set_health(to);
        if from != to {
            if self.metrics_on() {
                metrics::gauge!("switchyard_provider_health", "provider" => d.provider_id().to_owned())
                    .set(to.gauge());
            }
            self.emit(EventKind::ProviderHealthChanged {
                provider_id: d.provider_id().to_owned(),
                model: Some(d.model().to_owned()),
                from,
                to,
            });
        }
    }

    fn set_lifecycle(&self, state: &ProviderState, provider_id: &str, to: Lifecycle) {
        let from = state.set_lifecycle(to);
        if from != to {
            self.emit(EventKind::ProviderStateChanged {
                provider_id: provider_id.to_owned(),
                from,
                to,
            });
        }
    }

    /// Records a call's success, `now_ms` being when it ended.
    pub fn record_success(&self, d: &Deployment, latency: Duration, probe: bool, now_ms: u64) {
        let state = d.state();
        state.observe(now_ms, latency, true);
        if self.metrics_on() {
            d.provider_state()
                .ok_attempts_counter(d.provider_id())
                .increment(1);
        }
        if probe || state.circuit() != CircuitState::Closed {
            if let Some(recovery) = state.close_circuit(now_ms) {
                self.emit(EventKind::CircuitClosed {
                    provider_id: d.provider_id().to_owned(),
                    model: d.model().to_owned(),
                    recovery,
                });
                self.counters.recovery(recovery);
                if self.metrics_on() {
                    metrics::histogram!("switchyard_recovery_seconds")
                        .record(recovery.as_secs_f64());
                }
                if d.provider_state().lifecycle() == Lifecycle::FaultDetected {
                    self.set_lifecycle(d.provider_state(), d.provider_id(), Lifecycle::Recovered);
                }
            }
        } else if state.consecutive_failures() > 0 {
            state.close_circuit(now_ms);
        }
        if state.health() != Health::Healthy {
            self.set_deployment_health(d, Health::Healthy);
        }
    }

    pub fn record_cancelled(&self, d: &Deployment, probe: bool) {
        if probe {
            d.state().release_probe();
        }
        if self.metrics_on() {
            metrics::counter!("switchyard_attempts_total", "provider" => d.provider_id().to_owned(), "outcome" => "cancelled")
                .increment(1);
        }
    }

    /// Records a call's failure, `now_ms` being when it ended.
    pub fn record_failure(
        &self,
        d: &Deployment,
        error: &ProviderError,
        latency: Duration,
        probe: bool,
        panic: bool,
        now_ms: u64,
    ) {
        if matches!(error, ProviderError::Cancelled) {
            self.record_cancelled(d, probe);
            return;
        }
        let state = d.state();
        if self.metrics_on() {
            metrics::counter!("switchyard_attempts_total", "provider" => d.provider_id().to_owned(), "outcome" => error.kind())
                .increment(1);
        }
        let deployment_fault =
            error.counts_for_breaker() || error.starts_cooldown() || error.excludes_deployment();
        if deployment_fault {
            state.observe(now_ms, latency, false);
        }
        if error.starts_cooldown() {
            let length = error.retry_after().unwrap_or_else(|| {
                // 1 s, doubling to 30 s while 429s keep coming (within 30 s
                // of the previous cooldown's end), back to 1 s after a lull.
                let last = state.last_cooldown();
                let recent = now_ms < state.cooldown_until_ms().saturating_add(30_000);
                if recent {
                    (last * 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
                } else {
                    Duration::from_secs(1)
                }
            });
            let until = state.start_cooldown(now_ms, length);
            self.emit(EventKind::CooldownStarted {
                provider_id: d.provider_id().to_owned(),
                model: d.model().to_owned(),
                duration: Duration::from_millis(until.saturating_sub(now_ms)),
            });
            if probe {
                state.release_probe();
            }
            return;
        }
        if !error.counts_for_breaker() {
            // The deployment answered (a 4xx): a probe that got an answer proves it is alive.
            if probe {
                self.record_success(d, latency, true, now_ms);
            }
            return;
        }
        if panic {
            // Panic-mode failures never lengthen an ejection.
            return;
        }
        if error.is_provider_wide() {
            self.provider_wide_failure(d.provider_id(), now_ms);
            return;
        }
        self.breaker_failure(d, probe, now_ms);
    }

    fn breaker_failure(&self, d: &Deployment, probe: bool, now_ms: u64) {
        let state = d.state();
        let reopen = probe || state.effective_circuit(now_ms) == CircuitState::HalfOpen;
        let failures = state.record_breaker_failure();
        if reopen || failures >= self.options.max_consecutive_failures {
            let ejection = self.ejection(state.ejections());
            state.open_circuit(now_ms, ejection);
            self.emit(EventKind::CircuitOpened {
                provider_id: d.provider_id().to_owned(),
                model: d.model().to_owned(),
                ejection,
            });
            self.set_deployment_health_event(d, Health::Unhealthy);
            self.set_lifecycle(
                d.provider_state(),
                d.provider_id(),
                Lifecycle::FaultDetected,
            );
        } else {
            let from = state.degrade(now_ms + millis(DEGRADED_HOLD));
            if from != Health::Degraded {
                self.emit(EventKind::ProviderHealthChanged {
                    provider_id: d.provider_id().to_owned(),
                    model: Some(d.model().to_owned()),
                    from,
                    to: Health::Degraded,
                });
                if self.metrics_on() {
                    metrics::gauge!("switchyard_provider_health", "provider" => d.provider_id().to_owned())
                        .set(Health::Degraded.gauge());
                }
            }
        }
    }

    /// `open_circuit` already stored Unhealthy; emit the change it made.
    fn set_deployment_health_event(&self, d: &Deployment, to: Health) {
        if self.metrics_on() {
            metrics::gauge!("switchyard_provider_health", "provider" => d.provider_id().to_owned())
                .set(to.gauge());
        }
        self.emit(EventKind::ProviderHealthChanged {
            provider_id: d.provider_id().to_owned(),
            model: Some(d.model().to_owned()),
            from: Health::Healthy,
            to,
        });
    }

    /// A provider-wide failure (connection refused, TLS, auth) counts
    /// against every deployment of the provider.
    fn provider_wide_failure(&self, provider_id: &str, now_ms: u64) {
        let registry = self.registry.load();
        if let Some(entry) = registry.provider(provider_id) {
            for d in &entry.deployments {
                self.breaker_failure(d, false, now_ms);
            }
        }
    }

    async fn run_health_check(
        &self,
        provider_id: &str,
        provider: &Arc<dyn Provider>,
    ) -> Result<(), ProviderError> {
        let ctx = CallContext {
            deadline: Some(Instant::now() + self.options.health_check_timeout),
            response_timeout: self.options.health_check_timeout,
            ..self.call_context(None)
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(
            self.options.health_check_timeout,
            provider.health_check(&ctx),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(ProviderError::Timeout {
                phase: crate::error::TimeoutPhase::Response,
            }),
        };
        self.counters.health_check(result.is_ok());
        if self.metrics_on() {
            let outcome = if result.is_ok() { "success" } else { "failure" };
            metrics::counter!("switchyard_health_checks_total", "provider" => provider_id.to_owned(), "result" => outcome)
                .increment(1);
        }
        self.emit(EventKind::ProviderHealthCheck {
            provider_id: provider_id.to_owned(),
            success: result.is_ok(),
            duration: started.elapsed(),
            error: result.as_ref().err().map(|e| e.kind().to_owned()),
        });
        result
    }
}

/// Builds a [`ProviderManager`].
pub struct ManagerBuilder {
    options: ManagerOptions,
    factory: Arc<dyn ProviderFactory>,
    strategies: StrategyRegistry,
    events: Option<EventBus<ProviderEvent>>,
    providers: Vec<(ProviderConfig, Option<Arc<dyn Provider>>)>,
    routes: BTreeMap<String, RouteConfig>,
    admission: Arc<dyn AdmissionControl>,
}

impl std::fmt::Debug for ManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("options", &self.options)
            .field("providers", &self.providers.len())
            .finish_non_exhaustive()
    }
}

impl ManagerBuilder {
    /// Options (the `[manager]` section).
    pub fn options(mut self, options: ManagerOptions) -> Self {
        self.options = options;
        self
    }

    /// How provider configs become adapters (for config-defined and dynamic providers).
    pub fn factory(mut self, factory: impl ProviderFactory) -> Self {
        self.factory = Arc::new(factory);
        self
    }

    /// A shared factory.
    pub fn factory_arc(mut self, factory: Arc<dyn ProviderFactory>) -> Self {
        self.factory = factory;
        self
    }

    /// Strategies available by name (default: `round_robin` only).
    pub fn strategies(mut self, strategies: StrategyRegistry) -> Self {
        self.strategies = strategies;
        self
    }

    /// The event bus to publish on (default: a new one).
    pub fn event_bus(mut self, bus: EventBus<ProviderEvent>) -> Self {
        self.events = Some(bus);
        self
    }

    /// A provider built by the factory.
    pub fn provider(mut self, config: ProviderConfig) -> Self {
        self.providers.push((config, None));
        self
    }

    /// A provider with a ready adapter (your own `Provider` impl).
    pub fn provider_instance(
        mut self,
        config: ProviderConfig,
        provider: Arc<dyn Provider>,
    ) -> Self {
        self.providers.push((config, Some(provider)));
        self
    }

    /// A route for `model`.
    pub fn route(mut self, model: impl Into<String>, route: RouteConfig) -> Self {
        self.routes.insert(model.into(), route);
        self
    }

    /// Options, providers and routes of a whole config.
    pub fn config(mut self, config: GatewayConfig) -> Self {
        self.options = config.manager;
        self.providers
            .extend(config.providers.into_iter().map(|p| (p, None)));
        self.routes.extend(config.routes);
        self
    }

    /// Admission control (rate limits); default unlimited.
    pub fn admission(mut self, admission: Arc<dyn AdmissionControl>) -> Self {
        self.admission = admission;
        self
    }

    /// Validates everything and builds the manager. Every problem is
    /// reported with its path; nothing is half-built.
    pub fn build(self) -> Result<ProviderManager, ConfigError> {
        let (configs, instances): (Vec<_>, Vec<_>) = self.providers.into_iter().unzip();
        let config = GatewayConfig {
            manager: self.options,
            providers: configs,
            routes: self.routes,
        };
        config.validate()?;
        let clock = Clock::new();
        let now_ms = clock.now_ms();
        let timeout_ms = millis(config.manager.provider_timeout);
        let mut entries = Vec::with_capacity(config.providers.len());
        let mut issues = Vec::new();
        let open_circuits = OpenCircuits::default();
        for (i, (provider_config, instance)) in config.providers.iter().zip(instances).enumerate() {
            let provider = match instance {
                Some(provider) => provider,
                None => match self.factory.create(provider_config) {
                    Ok(provider) => provider,
                    Err(error) => {
                        issues.extend(error.issues.into_iter().map(|mut issue| {
                            issue.path = format!("providers[{i}].{}", issue.path);
                            issue
                        }));
                        continue;
                    }
                },
            };
            let (entry, _) = ProviderEntry::build(
                provider_config.clone(),
                provider,
                None,
                now_ms,
                timeout_ms,
                &open_circuits,
            );
            entries.push(Arc::new(entry));
        }
        if !issues.is_empty() {
            return Err(ConfigError { issues });
        }
        let registry = Registry::build(
            entries,
            Arc::new(config.routes),
            &self.strategies,
            &config.manager.strategy,
            &Registry::empty(),
        )?;
        let events = self
            .events
            .unwrap_or_else(|| EventBus::new(4096, config.manager.recent_events));
        let inner = Arc::new(ManagerInner {
            queue: queue::RequestQueue::new(
                config.manager.queue_size,
                config.manager.enable_metrics,
            ),
            counters: Counters::default(),
            budget: budget::RetryBudget::new(&config.manager.retry_budget),
            options: config.manager,
            clock,
            registry: ArcSwap::from_pointee(registry),
            write: tokio::sync::Mutex::new(()),
            factory: self.factory,
            strategies: self.strategies,
            events,
            admission: self.admission,
            open_circuits,
        });
        let manager = ProviderManager { inner };
        for entry in &manager.inner.registry.load().providers {
            manager.announce(entry, &[Lifecycle::Validated, Lifecycle::Initialized]);
        }
        Ok(manager)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The provider manager (SPEC §3). Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct ProviderManager {
    inner: Arc<ManagerInner>,
}

impl std::fmt::Debug for ProviderManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderManager")
            .field("providers", &self.provider_ids())
            .finish_non_exhaustive()
    }
}

impl ProviderManager {
    /// A builder with default options, no providers and `round_robin`.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder {
            options: ManagerOptions::default(),
            factory: Arc::new(NoFactory),
            strategies: StrategyRegistry::with_round_robin(),
            events: None,
            providers: Vec::new(),
            routes: BTreeMap::new(),
            admission: Arc::new(Unlimited),
        }
    }

    /// The options in force.
    pub fn options(&self) -> &ManagerOptions {
        &self.inner.options
    }

    /// The event bus.
    pub fn events(&self) -> &EventBus<ProviderEvent> {
        &self.inner.events
    }

    /// The manager's clock (milliseconds since creation).
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// Timeouts for a call to `model` (route overrides applied).
    pub fn call_context(&self, model: &str) -> CallContext {
        let registry = self.inner.registry.load();
        let route = registry.routes.get(model);
        self.inner.call_context(route)
    }

    fn announce(&self, entry: &ProviderEntry, path: &[Lifecycle]) {
        let id = &entry.config.id;
        for &step in path {
            self.inner.set_lifecycle(&entry.state, id, step);
        }
        let active = if entry.config.enabled {
            Lifecycle::Active
        } else {
            Lifecycle::Disabled
        };
        self.inner.set_lifecycle(&entry.state, id, active);
        if self.inner.metrics_on() {
            metrics::gauge!("switchyard_provider_health", "provider" => id.clone())
                .set(if entry.config.enabled { 1.0 } else { 0.0 });
            metrics::gauge!("switchyard_provider_inflight", "provider" => id.clone()).set(0.0);
            metrics::gauge!("switchyard_provider_load", "provider" => id.clone()).set(0.0);
        }
        self.inner.emit(EventKind::ProviderAdded {
            provider_id: id.clone(),
            provider_type: entry.config.kind.clone(),
            models: entry.config.models.keys().cloned().collect(),
        });
    }

    /// The best deployment for `model` and `request_type` now: a free probe,
    /// else healthy, else degraded, else panic mode (SPEC §4; no fallbacks).
    pub fn get_best_provider_for_request(
        &self,
        model: &str,
        request_type: RequestType,
    ) -> Result<ProviderHandle, ManagerError> {
        self.select(&SelectRequest::new(model, request_type))
    }

    /// Selection with every constraint of [`SelectRequest`].
    pub fn select(&self, request: &SelectRequest<'_>) -> Result<ProviderHandle, ManagerError> {
        let registry = self.inner.registry.load();
        let selected = select::select(&self.inner, &registry, request)?;
        if selected.opened_half {
            self.inner.emit(EventKind::CircuitHalfOpen {
                provider_id: selected.deployment.provider_id().to_owned(),
                model: selected.deployment.model().to_owned(),
            });
        }
        if selected.panic {
            Counters::bump(&self.inner.counters.panic_selections);
            if self.inner.metrics_on() {
                metrics::counter!("switchyard_panic_selections_total").increment(1);
            }
        }
        Ok(ProviderHandle::new(
            Arc::clone(&self.inner),
            selected.deployment,
            request.model,
            selected.probe,
            selected.panic,
            selected.reserved_tokens,
        ))
    }

    /// Requests waiting in the gateway queue now.
    pub fn queue_depth(&self) -> usize {
        self.inner.queue.depth()
    }

    /// Adds a provider at run time (SPEC §3).
    pub async fn add_dynamic_provider(
        &self,
        id: &str,
        config: ProviderConfig,
        options: AddOptions,
    ) -> Result<AddOutcome, ManagerError> {
        self.add_provider_inner(id, config, None, options).await
    }

    /// Adds a provider with a ready adapter at run time.
    pub async fn add_provider_instance(
        &self,
        config: ProviderConfig,
        provider: Arc<dyn Provider>,
        options: AddOptions,
    ) -> Result<AddOutcome, ManagerError> {
        let id = config.id.clone();
        self.add_provider_inner(&id, config, Some(provider), options)
            .await
    }

    async fn add_provider_inner(
        &self,
        id: &str,
        config: ProviderConfig,
        instance: Option<Arc<dyn Provider>>,
        options: AddOptions,
    ) -> Result<AddOutcome, ManagerError> {
        if id != config.id {
            return Err(ManagerError::IdMismatch {
                id: id.to_owned(),
                config_id: config.id,
            });
        }
        config.validate()?;
        let _write = self.inner.write.lock().await;
        let current = self.inner.registry.load_full();
        if current.by_id.contains_key(id) {
            return Err(ManagerError::DuplicateProvider { id: id.to_owned() });
        }
        let provider = match instance {
            Some(provider) => provider,
            None => self
                .inner
                .factory
                .create(&config)
                .map_err(|e| prefix(e, "provider"))?,
        };
        if options.validate_only {
            return Ok(AddOutcome {
                success: true,
                message: format!("provider '{id}' is valid; nothing was changed"),
                provider_id: id.to_owned(),
                health: None,
            });
        }
        let mut health = None;
        if options.health_check && !config.health_check.is_none() {
            if let Err(error) = self.inner.run_health_check(id, &provider).await {
                return Err(ManagerError::HealthCheckFailed {
                    id: id.to_owned(),
                    reason: error.kind().to_owned(),
                });
            }
            health = Some(Health::Healthy);
        }
        let now_ms = self.inner.clock.now_ms();
        let (entry, _) = ProviderEntry::build(
            config,
            provider,
            None,
            now_ms,
            millis(self.inner.options.provider_timeout),
            &self.inner.open_circuits,
        );
        let entry = Arc::new(entry);
        let mut providers = current.providers.clone();
        providers.push(Arc::clone(&entry));
        self.swap(providers, Arc::clone(&current.routes), &current)?;
        let mut path = vec![Lifecycle::Validated, Lifecycle::Initialized];
        if health.is_some() {
            path.push(Lifecycle::HealthChecked);
        }
        self.announce(&entry, &path);
        self.inner.emit(EventKind::DynamicProviderAdded {
            provider_id: id.to_owned(),
            health,
        });
        Ok(AddOutcome {
            success: true,
            message: format!("provider '{id}' added"),
            provider_id: id.to_owned(),
            health,
        })
    }

    fn swap(
        &self,
        providers: Vec<Arc<ProviderEntry>>,
        routes: Arc<BTreeMap<String, RouteConfig>>,
        current: &Registry,
    ) -> Result<(), ConfigError> {
        let next = Registry::build(
            providers,
            routes,
            &self.inner.strategies,
            &self.inner.options.strategy,
            current,
        )?;
        self.inner.registry.store(Arc::new(next));
        Ok(())
    }

    /// Removes a provider. Handles already held keep working.
    pub async fn remove_provider(&self, id: &str) -> Result<(), ManagerError> {
        let _write = self.inner.write.lock().await;
        let current = self.inner.registry.load_full();
        let entry = current
            .provider(id)
            .cloned()
            .ok_or_else(|| ManagerError::UnknownProvider { id: id.to_owned() })?;
        let providers: Vec<Arc<ProviderEntry>> = current
            .providers
            .iter()
            .filter(|p| p.config.id != id)
            .cloned()
            .collect();
        check_routes(&current.routes, &providers)?;
        self.swap(providers, Arc::clone(&current.routes), &current)?;
        self.inner
            .set_lifecycle(&entry.state, id, Lifecycle::Removed);
        self.inner.emit(EventKind::ProviderRemoved {
            provider_id: id.to_owned(),
        });
        Ok(())
    }

    /// Replaces a provider's config, hot: calls in flight finish on the old
    /// config; health and stats are kept unless type, URL or key changed.
    /// Returns whether state was kept.
    pub async fn update_provider_config(
        &self,
        id: &str,
        config: ProviderConfig,
    ) -> Result<bool, ManagerError> {
        self.update_inner(id, config, None).await
    }

    /// Replaces a provider's config and adapter.
    pub async fn update_provider_instance(
        &self,
        config: ProviderConfig,
        provider: Arc<dyn Provider>,
    ) -> Result<bool, ManagerError> {
        let id = config.id.clone();
        self.update_inner(&id, config, Some(provider)).await
    }

    async fn update_inner(
        &self,
        id: &str,
        config: ProviderConfig,
        instance: Option<Arc<dyn Provider>>,
    ) -> Result<bool, ManagerError> {
        if id != config.id {
            return Err(ManagerError::IdMismatch {
                id: id.to_owned(),
                config_id: config.id,
            });
        }
        config.validate()?;
        let _write = self.inner.write.lock().await;
        let current = self.inner.registry.load_full();
        let position = *current
            .by_id
            .get(id)
            .ok_or_else(|| ManagerError::UnknownProvider { id: id.to_owned() })?;
        let previous = current
            .providers
            .get(position)
            .cloned()
            .ok_or_else(|| ManagerError::UnknownProvider { id: id.to_owned() })?;
        let provider = match instance {
            Some(provider) => provider,
            None => self
                .inner
                .factory
                .create(&config)
                .map_err(|e| prefix(e, "provider"))?,
        };
        let was_enabled = previous.config.enabled;
        let (entry, kept) = ProviderEntry::build(
            config,
            provider,
            Some(&previous),
            self.inner.clock.now_ms(),
            millis(self.inner.options.provider_timeout),
            &self.inner.open_circuits,
        );
        let entry = Arc::new(entry);
        let mut providers = current.providers.clone();
        if let Some(slot) = providers.get_mut(position) {
            *slot = Arc::clone(&entry);
        }
        check_routes(&current.routes, &providers)?;
        self.swap(providers, Arc::clone(&current.routes), &current)?;
        self.inner.emit(EventKind::ProviderUpdated {
            provider_id: id.to_owned(),
            state_kept: kept,
        });
        match (was_enabled, entry.config.enabled, kept) {
            (true, false, _) => self
                .inner
                .set_lifecycle(&entry.state, id, Lifecycle::Disabled),
            (false, true, _) | (_, true, false) => {
                self.inner
                    .set_lifecycle(&entry.state, id, Lifecycle::Active)
            }
            _ => {}
        }
        Ok(kept)
    }

    /// Clears failure counters, cooldowns and circuits, then (unless the
    /// provider's `health_check` is `none`) runs one active check: pass →
    /// healthy, fail → unhealthy provider-wide. Emits `provider_reset`.
    pub async fn reset_provider(&self, id: &str) -> Result<Health, ManagerError> {
        let entry = self
            .inner
            .registry
            .load()
            .provider(id)
            .cloned()
            .ok_or_else(|| ManagerError::UnknownProvider { id: id.to_owned() })?;
        let now_ms = self.inner.clock.now_ms();
        for d in &entry.deployments {
            d.state().reset(now_ms);
        }
        entry.state.clear_ejection();
        entry.state.record_check(true);
        let health = if entry.config.health_check.is_none() {
            Health::Healthy
        } else {
            match self.inner.run_health_check(id, &entry.provider).await {
                Ok(()) => Health::Healthy,
                Err(_) => Health::Unhealthy,
            }
        };
        entry.state.set_health(health, self.inner.clock.now_ms());
        if self.inner.metrics_on() {
            metrics::gauge!("switchyard_provider_health", "provider" => id.to_owned())
                .set(health.gauge());
        }
        let lifecycle = if health == Health::Healthy {
            if entry.config.enabled {
                Lifecycle::Active
            } else {
                Lifecycle::Disabled
            }
        } else {
            Lifecycle::FaultDetected
        };
        self.inner.set_lifecycle(&entry.state, id, lifecycle);
        self.inner.emit(EventKind::ProviderReset {
            provider_id: id.to_owned(),
            health,
        });
        Ok(health)
    }

    /// Applies a whole new provider and route set (a config reload):
    /// validates it, diffs it against the registry by provider id, and
    /// applies only the diff in one atomic swap. Unchanged providers keep
    /// their adapters and state; changed ones keep health and stats unless
    /// their type, URL or key changed; calls in flight finish on the config
    /// they started with. An invalid set changes nothing, emits
    /// `config_reload_failed`, and returns every issue with its path.
    pub async fn apply_config(
        &self,
        providers: Vec<ProviderConfig>,
        routes: BTreeMap<String, RouteConfig>,
    ) -> Result<ConfigDiff, ManagerError> {
        let result = self.apply_config_inner(providers, routes).await;
        if let Err(error) = &result {
            self.inner.emit(EventKind::ConfigReloadFailed {
                error: error.to_string(),
            });
        }
        result
    }

    async fn apply_config_inner(
        &self,
        providers: Vec<ProviderConfig>,
        routes: BTreeMap<String, RouteConfig>,
    ) -> Result<ConfigDiff, ManagerError> {
        let candidate = GatewayConfig {
            manager: self.inner.options.clone(),
            providers,
            routes,
        };
        candidate.validate()?;
        let _write = self.inner.write.lock().await;
        let current = self.inner.registry.load_full();
        let now_ms = self.inner.clock.now_ms();
        let timeout_ms = millis(self.inner.options.provider_timeout);
        let mut diff = ConfigDiff::default();
        let mut entries = Vec::with_capacity(candidate.providers.len());
        let mut issues = Vec::new();
        for (i, config) in candidate.providers.into_iter().enumerate() {
            let previous = current.provider(&config.id).cloned();
            match previous {
                Some(previous) if *previous.config == config => entries.push(previous),
                previous => {
                    let provider = match self.inner.factory.create(&config) {
                        Ok(provider) => provider,
                        Err(error) => {
                            issues.extend(error.issues.into_iter().map(|mut issue| {
                                issue.path = format!("providers[{i}].{}", issue.path);
                                issue
                            }));
                            continue;
                        }
                    };
                    match &previous {
                        Some(_) => diff.changed.push(config.id.clone()),
                        None => diff.added.push(config.id.clone()),
                    }
                    let (entry, _) = ProviderEntry::build(
                        config,
                        provider,
                        previous.as_deref(),
                        now_ms,
                        timeout_ms,
                        &self.inner.open_circuits,
                    );
                    entries.push(Arc::new(entry));
                }
            }
        }
        if !issues.is_empty() {
            return Err(ConfigError { issues }.into());
        }
        diff.removed = current
            .providers
            .iter()
            .filter(|p| !entries.iter().any(|e| e.config.id == p.config.id))
            .map(|p| p.config.id.clone())
            .collect();
        diff.routes_changed = *current.routes != candidate.routes;
        self.swap(entries, Arc::new(candidate.routes), &current)?;
        let next = self.inner.registry.load_full();
        for id in &diff.removed {
            if let Some(entry) = current.provider(id) {
                self.inner
                    .set_lifecycle(&entry.state, id, Lifecycle::Removed);
            }
            self.inner.emit(EventKind::ProviderRemoved {
                provider_id: id.clone(),
            });
        }
        for id in &diff.changed {
            let (Some(before), Some(after)) = (current.provider(id), next.provider(id)) else {
                continue;
            };
            self.inner.emit(EventKind::ProviderUpdated {
                provider_id: id.clone(),
                state_kept: Arc::ptr_eq(&before.state, &after.state),
            });
            let lifecycle = if after.config.enabled {
                Lifecycle::Active
            } else {
                Lifecycle::Disabled
            };
            if before.config.enabled != after.config.enabled {
                self.inner.set_lifecycle(&after.state, id, lifecycle);
            }
        }
        for id in &diff.added {
            if let Some(entry) = next.provider(id) {
                self.announce(entry, &[Lifecycle::Validated, Lifecycle::Initialized]);
            }
        }
        self.inner.emit(EventKind::ConfigReloaded {
            added: diff.added.clone(),
            changed: diff.changed.clone(),
            removed: diff.removed.clone(),
        });
        Ok(diff)
    }

    /// Reports a reload that failed before reaching the manager (a file that
    /// does not parse, say): emits `config_reload_failed`.
    pub fn report_reload_failure(&self, error: &str) {
        self.inner.emit(EventKind::ConfigReloadFailed {
            error: error.to_owned(),
        });
    }

    /// Replaces (or with `None` removes) the route of `model`, validated
    /// against the current providers.
    pub async fn set_route(
        &self,
        model: &str,
        route: Option<RouteConfig>,
    ) -> Result<(), ManagerError> {
        let _write = self.inner.write.lock().await;
        let current = self.inner.registry.load_full();
        let mut routes = (*current.routes).clone();
        let removed = route.is_none();
        match route {
            Some(route) => routes.insert(model.to_owned(), route),
            None => routes.remove(model),
        };
        let configs: Vec<ProviderConfig> = current
            .providers
            .iter()
            .map(|p| (*p.config).clone())
            .collect();
        let mut issues = Vec::new();
        validate_routes(&routes, &configs, &mut issues);
        if !issues.is_empty() {
            return Err(ConfigError { issues }.into());
        }
        self.swap(current.providers.clone(), Arc::new(routes), &current)?;
        self.inner.emit(EventKind::RouteUpdated {
            model: model.to_owned(),
            removed,
        });
        Ok(())
    }

    /// The route of `model`, if one is configured.
    pub fn route(&self, model: &str) -> Option<RouteConfig> {
        self.inner.registry.load().routes.get(model).cloned()
    }

    /// Every route.
    pub fn routes(&self) -> BTreeMap<String, RouteConfig> {
        (*self.inner.registry.load().routes).clone()
    }

    /// Provider ids in registration order.
    pub fn provider_ids(&self) -> Vec<String> {
        self.inner
            .registry
            .load()
            .providers
            .iter()
            .map(|p| p.config.id.clone())
            .collect()
    }

    /// A provider's current config.
    pub fn provider_config(&self, id: &str) -> Option<ProviderConfig> {
        self.inner
            .registry
            .load()
            .provider(id)
            .map(|p| (*p.config).clone())
    }

    /// Every provider's config, in registration order.
    pub fn provider_configs(&self) -> Vec<ProviderConfig> {
        self.inner
            .registry
            .load()
            .providers
            .iter()
            .map(|p| (*p.config).clone())
            .collect()
    }

    /// Client-facing model names served (explicit entries; not `*`).
    pub fn models(&self) -> Vec<String> {
        let registry = self.inner.registry.load();
        let mut models: Vec<String> = registry.models.keys().cloned().collect();
        models.sort();
        models
    }

    /// Whether `model` is a configured model name (served by name, not
    /// only through a `"*"` provider).
    pub fn serves_model(&self, model: &str) -> bool {
        self.inner.registry.load().models.contains_key(model)
    }

    /// Whether some provider lists `"*"`.
    pub fn has_wildcard(&self) -> bool {
        self.inner.registry.load().wildcard.is_some()
    }

    /// The state record of one deployment (for tests and operators).
    pub fn deployment_state(&self, provider_id: &str, model: &str) -> Option<Arc<DeploymentState>> {
        let registry = self.inner.registry.load();
        let entry = registry.provider(provider_id)?;
        entry
            .deployments
            .iter()
            .find(|d| d.model() == model)
            .map(|d| Arc::clone(d.state()))
    }

    /// A provider's provider-wide state record.
    pub fn provider_state(&self, provider_id: &str) -> Option<Arc<ProviderState>> {
        self.inner
            .registry
            .load()
            .provider(provider_id)
            .map(|p| Arc::clone(&p.state))
    }

    /// The adapter of a provider.
    pub fn provider(&self, provider_id: &str) -> Option<Arc<dyn Provider>> {
        self.inner
            .registry
            .load()
            .provider(provider_id)
            .map(|p| Arc::clone(&p.provider))
    }

    /// Manager-wide figures: health checks, switches, recovery time, success rate.
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        let c = &self.inner.counters;
        let get = |cell: &AtomicU64| cell.load(Ordering::Relaxed);
        let requests = get(&c.requests);
        let successes = get(&c.successes);
        let recoveries = get(&c.recoveries);
        let registry = self.inner.registry.load();
        let now_ms = self.inner.clock.now_ms();
        let providers = registry
            .providers
            .iter()
            .map(|entry| {
                let (successes, failures) = entry
                    .deployments
                    .iter()
                    .map(|d| d.state().outcomes())
                    .fold((0, 0), |(s, f), (ds, df)| (s + ds, f + df));
                ProviderCounters {
                    provider_id: entry.config.id.clone(),
                    successes,
                    failures,
                    in_flight: entry.state.in_flight(),
                    health: if entry.config.enabled {
                        entry
                            .deployments
                            .iter()
                            .map(|d| d.health(now_ms))
                            .min()
                            .unwrap_or(Health::Healthy)
                    } else {
                        Health::Disabled
                    },
                }
            })
            .collect();
        MetricsSnapshot {
            health_checks_run: get(&c.health_checks),
            health_checks_failed: get(&c.health_check_failures),
            provider_switches: get(&c.switches),
            recoveries,
            average_recovery_time_ms: if recoveries == 0 {
                0.0
            } else {
                get(&c.recovery_ms) as f64 / recoveries as f64
            },
            requests_total: requests,
            requests_succeeded: successes,
            request_success_rate: if requests == 0 {
                1.0
            } else {
                successes as f64 / requests as f64
            },
            panic_selections: get(&c.panic_selections),
            providers,
        }
    }

    /// Load per provider, least loaded first (SPEC §3).
    pub fn get_provider_load_stats(&self) -> Vec<ProviderLoadStats> {
        let registry = self.inner.registry.load();
        let now_ms = self.inner.clock.now_ms();
        let mut rows: Vec<ProviderLoadStats> = registry
            .providers
            .iter()
            .map(|entry| {
                let load = entry
                    .deployments
                    .iter()
                    .map(|d| d.load(now_ms))
                    .fold(0.0, f64::max);
                let health = if !entry.config.enabled {
                    Health::Disabled
                } else {
                    entry
                        .deployments
                        .iter()
                        .map(|d| d.health(now_ms))
                        .min()
                        .unwrap_or(Health::Healthy)
                };
                let (requests, failures) = entry.state.window_totals(now_ms);
                let used: Vec<f64> = entry
                    .deployments
                    .iter()
                    .filter(|d| {
                        let (ok, failed) = d.state().outcomes();
                        ok + failed > 0
                    })
                    .map(|d| d.state().latency_us() / 1_000.0)
                    .collect();
                let average_response_time_ms = if used.is_empty() {
                    0.0
                } else {
                    used.iter().sum::<f64>() / used.len() as f64
                };
                ProviderLoadStats {
                    provider_id: entry.config.id.clone(),
                    load,
                    health,
                    requests_per_minute: requests,
                    average_response_time_ms,
                    in_flight: entry.state.in_flight(),
                    success_rate: if requests == 0 {
                        1.0
                    } else {
                        (requests.saturating_sub(failures)) as f64 / requests as f64
                    },
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            a.load
                .total_cmp(&b.load)
                .then(a.in_flight.cmp(&b.in_flight))
                .then_with(|| a.provider_id.cmp(&b.provider_id))
        });
        if self.inner.metrics_on() {
            for row in &rows {
                metrics::gauge!("switchyard_provider_load", "provider" => row.provider_id.clone())
                    .set(row.load);
                metrics::gauge!("switchyard_provider_inflight", "provider" => row.provider_id.clone())
                    .set(f64::from(row.in_flight));
            }
        }
        rows
    }
}

/// Refuses a provider set under which a route would dangle (a fallback no
/// provider serves, a blue-green set naming a missing provider).
fn check_routes(
    routes: &BTreeMap<String, RouteConfig>,
    providers: &[Arc<ProviderEntry>],
) -> Result<(), ConfigError> {
    if routes.is_empty() {
        return Ok(());
    }
    let configs: Vec<ProviderConfig> = providers.iter().map(|p| (*p.config).clone()).collect();
    let mut issues = Vec::new();
    validate_routes(routes, &configs, &mut issues);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { issues })
    }
}

fn prefix(mut error: ConfigError, at: &str) -> ConfigError {
    for issue in &mut error.issues {
        issue.path = format!("{at}.{}", issue.path);
    }
    error
}
