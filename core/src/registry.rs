//! The registry: providers, their deployments and the model → deployments index.
//!
//! A registry is immutable once built. Every change (add, update, remove,
//! route change) builds a new one from the old and swaps it in atomically;
//! readers keep whichever snapshot they loaded. Deployment state records
//! ([`DeploymentState`]) survive rebuilds, so health and statistics carry
//! over unless a provider's identity (type, URL, key) changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize};

use crate::config::{ModelConfig, ProviderConfig, RouteConfig};
use crate::error::{ConfigError, ConfigIssue};
use crate::limits::ProviderLimits;
use crate::provider::{Pricing, Provider};
use crate::state::{DeploymentState, Health, OpenCircuits, ProviderState};
use crate::strategy::{SelectionStrategy, StrategyRegistry};
use crate::types::RequestType;

/// The name of a provider's wildcard model entry.
pub const WILDCARD: &str = "*";

/// One model served by one provider: the unit of health and selection.
pub struct Deployment {
    provider_id: Arc<str>,
    model: Arc<str>,
    upstream_name: Option<Arc<str>>,
    provider: Arc<dyn Provider>,
    config: Arc<ProviderConfig>,
    model_config: ModelConfig,
    pricing: Pricing,
    request_types: u8,
    state: Arc<DeploymentState>,
    provider_state: Arc<ProviderState>,
    limits: Arc<ProviderLimits>,
    latency_scale_us: f64,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("provider_id", &self.provider_id)
            .field("model", &self.model)
            .field("upstream_name", &self.upstream_name)
            .finish_non_exhaustive()
    }
}

impl Deployment {
    /// Builds a deployment of `model` (a key of `config.models`).
    /// `provider_timeout_ms` scales the latency part of the load formula.
    pub fn new(
        config: Arc<ProviderConfig>,
        model: &str,
        provider: Arc<dyn Provider>,
        state: Arc<DeploymentState>,
        provider_state: Arc<ProviderState>,
        provider_timeout_ms: u64,
    ) -> Self {
        let model_config = config.models.get(model).cloned().unwrap_or_default();
        let capabilities = provider.capabilities();
        let mut request_types = 0u8;
        for request_type in RequestType::ALL {
            let listed = model_config
                .request_types
                .as_ref()
                .is_none_or(|types| types.contains(&request_type));
            if listed && capabilities.supports(request_type) {
                request_types |= request_type.bit();
            }
        }
        let upstream_name = model_config.upstream_name.as_deref().map(Arc::from);
        let pricing = match (
            model_config.input_cost_per_mtok,
            model_config.output_cost_per_mtok,
        ) {
            (None, None) => provider
                .pricing(upstream_name.as_deref().unwrap_or(model))
                .unwrap_or_default(),
            (input, output) => Pricing::per_mtok(input.unwrap_or(0.0), output.unwrap_or(0.0)),
        };
        Self {
            provider_id: Arc::from(config.id.as_str()),
            model: Arc::from(model),
            upstream_name,
            provider,
            model_config,
            pricing,
            request_types,
            state,
            provider_state,
            limits: Arc::new(ProviderLimits::default()),
            latency_scale_us: (provider_timeout_ms.max(1) as f64) * 1_000.0,
            config,
        }
    }

    /// The same deployment under the provider's rate limits.
    pub fn with_limits(mut self, limits: Arc<ProviderLimits>) -> Self {
        self.limits = limits;
        self
    }

    /// The provider's rate limits.
    pub fn limits(&self) -> &Arc<ProviderLimits> {
        &self.limits
    }

    /// Takes one in-flight slot on the provider and the deployment, within
    /// their caps; `false` (nothing taken) when either is full.
    pub fn try_reserve(&self) -> bool {
        if !self.provider_state.try_enter(self.config.max_concurrency) {
            return false;
        }
        if !self.state.try_enter(self.model_config.max_concurrency) {
            self.provider_state.end_call(false, 0);
            return false;
        }
        true
    }

    /// Gives back a slot taken by [`Self::try_reserve`] that was never used.
    pub fn release_reservation(&self) {
        self.state.end_call();
        self.provider_state.end_call(false, 0);
    }

    /// Provider id.
    pub fn provider_id(&self) -> &str {
        &self.provider_id
    }

    /// [`Self::provider_id`], to share without copying.
    pub fn provider_id_shared(&self) -> &Arc<str> {
        &self.provider_id
    }

    /// [`Self::model`], to share without copying.
    pub fn model_shared(&self) -> &Arc<str> {
        &self.model
    }

    /// The configured upstream name, if one is set (else the upstream name
    /// is the model, or the requested name for a wildcard deployment).
    pub fn upstream_name_shared(&self) -> Option<&Arc<str>> {
        self.upstream_name.as_ref()
    }

    /// The configured model name (`*` for a wildcard deployment).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Whether this deployment serves any model name.
    pub fn is_wildcard(&self) -> bool {
        &*self.model == WILDCARD
    }

    /// The upstream name for a request of `requested` model.
    pub fn upstream_for<'a>(&'a self, requested: &'a str) -> &'a str {
        match &self.upstream_name {
            Some(name) => name,
            None if self.is_wildcard() => requested,
            None => &self.model,
        }
    }

    /// The adapter.
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// The provider's config (the one this deployment was built from).
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The model entry's config.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model_config
    }

    /// Price per token.
    pub fn pricing(&self) -> Pricing {
        self.pricing
    }

    /// Whether this deployment serves `request_type`.
    pub fn serves(&self, request_type: RequestType) -> bool {
        self.request_types & request_type.bit() != 0
    }

    /// The deployment's own state.
    pub fn state(&self) -> &Arc<DeploymentState> {
        &self.state
    }

    /// The provider-wide state.
    pub fn provider_state(&self) -> &Arc<ProviderState> {
        &self.provider_state
    }

    /// Whether both the provider and the model have room for one more call.
    pub fn has_capacity(&self) -> bool {
        let provider_room = self
            .config
            .max_concurrency
            .is_none_or(|cap| self.provider_state.in_flight() < cap);
        let model_room = self
            .model_config
            .max_concurrency
            .is_none_or(|cap| self.state.in_flight() < cap);
        provider_room && model_room
    }

    /// Whether the request's output limit and estimated size fit the model.
    pub fn fits(&self, estimated_input_tokens: u32, max_output_tokens: Option<u32>) -> bool {
        let output_ok = match (max_output_tokens, self.model_config.max_output_tokens) {
            (Some(asked), Some(limit)) => asked <= limit,
            _ => true,
        };
        let context_ok = match self.model_config.context_window {
            Some(window) => {
                u64::from(estimated_input_tokens) + u64::from(max_output_tokens.unwrap_or(0))
                    <= u64::from(window)
            }
            None => true,
        };
        output_ok && context_ok
    }

    /// Effective health: disabled, provider-wide unhealthy, or the deployment's own.
    pub fn health(&self, now_ms: u64) -> Health {
        if !self.config.enabled {
            return Health::Disabled;
        }
        if self.provider_state.health() == Health::Unhealthy
            || self.provider_state.is_ejected(now_ms)
        {
            return Health::Unhealthy;
        }
        self.state.effective_health(now_ms)
    }

    /// SPEC §3 load: `100 × clamp(0.7 × utilization + 0.3 × latency_factor)`,
    /// utilization = max(in_flight / max_concurrency, rpm / rpm_limit) over
    /// the limits set, latency_factor = min(1, ewma / provider_timeout).
    pub fn load(&self, now_ms: u64) -> f64 {
        let mut utilization: f64 = 0.0;
        if let Some(cap) = self.config.max_concurrency {
            utilization =
                utilization.max(f64::from(self.provider_state.in_flight()) / f64::from(cap));
        }
        if let Some(cap) = self.model_config.max_concurrency {
            utilization = utilization.max(f64::from(self.state.in_flight()) / f64::from(cap));
        }
        if let Some(limit) = self.config.rpm_limit {
            let rpm = self.provider_state.window_totals(now_ms).0 as f64;
            utilization = utilization.max(rpm / f64::from(limit));
        }
        let latency_factor = (self.state.latency_us() / self.latency_scale_us).min(1.0);
        100.0 * (0.7 * utilization + 0.3 * latency_factor).clamp(0.0, 1.0)
    }
}

/// A provider in the registry.
pub(crate) struct ProviderEntry {
    pub config: Arc<ProviderConfig>,
    pub provider: Arc<dyn Provider>,
    pub state: Arc<ProviderState>,
    pub limits: Arc<ProviderLimits>,
    /// One deployment per model key, in key order.
    pub deployments: Vec<Arc<Deployment>>,
}

impl ProviderEntry {
    /// Builds an entry; deployment states are taken from `previous` where a
    /// model survives and the provider's identity did not change. New
    /// states count their circuits in `open_circuits`.
    pub fn build(
        config: ProviderConfig,
        provider: Arc<dyn Provider>,
        previous: Option<&ProviderEntry>,
        now_ms: u64,
        provider_timeout_ms: u64,
        open_circuits: &OpenCircuits,
    ) -> (Self, bool) {
        let config = Arc::new(config);
        let keep = previous.is_some_and(|p| !p.config.changes_identity(&config));
        let state = match previous {
            Some(p) if keep => Arc::clone(&p.state),
            _ => Arc::new(ProviderState::new()),
        };
        let limits = match previous {
            Some(p) if keep && p.limits.matches(config.rpm_limit, config.tpm_limit) => {
                Arc::clone(&p.limits)
            }
            _ => Arc::new(ProviderLimits::new(config.rpm_limit, config.tpm_limit)),
        };
        let deployments = config
            .models
            .keys()
            .map(|model| {
                let deployment_state = previous
                    .filter(|_| keep)
                    .and_then(|p| p.deployments.iter().find(|d| d.model() == model))
                    .map_or_else(
                        || Arc::new(DeploymentState::counted(now_ms, open_circuits.clone())),
                        |d| Arc::clone(d.state()),
                    );
                Arc::new(
                    Deployment::new(
                        Arc::clone(&config),
                        model,
                        Arc::clone(&provider),
                        deployment_state,
                        Arc::clone(&state),
                        provider_timeout_ms,
                    )
                    .with_limits(Arc::clone(&limits)),
                )
            })
            .collect();
        (
            Self {
                config,
                provider,
                state,
                limits,
                deployments,
            },
            keep,
        )
    }
}

/// Per-model selection state that outlives registry rebuilds.
#[derive(Debug, Default)]
pub(crate) struct ModelRuntime {
    pub cursor: AtomicUsize,
}

/// A blue-green set of a route, resolved to deployment indices.
pub(crate) struct RouteSet {
    pub weight: i64,
    pub members: Vec<u32>,
    pub current: AtomicI64,
}

/// Everything selection needs for one model name.
pub(crate) struct ModelIndex {
    pub deployments: Vec<Arc<Deployment>>,
    pub runtime: Arc<ModelRuntime>,
    pub strategy: Arc<dyn SelectionStrategy>,
    pub route: Option<Arc<RouteConfig>>,
    pub sets: Vec<RouteSet>,
}

/// A map keyed by provider or model name, looked up on every request:
/// foldhash rather than SipHash for such short keys. Its keys come from
/// the config; a client's model name is only ever looked up.
pub(crate) type NameMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// An immutable snapshot of every provider, deployment and route.
pub(crate) struct Registry {
    pub providers: Vec<Arc<ProviderEntry>>,
    pub by_id: NameMap<usize>,
    pub models: NameMap<ModelIndex>,
    /// For model names no provider lists: the wildcard deployments.
    pub wildcard: Option<ModelIndex>,
    pub routes: Arc<BTreeMap<String, RouteConfig>>,
}

impl Registry {
    pub fn empty() -> Self {
        Self {
            providers: Vec::new(),
            by_id: NameMap::default(),
            models: NameMap::default(),
            wildcard: None,
            routes: Arc::new(BTreeMap::new()),
        }
    }

    pub fn provider(&self, id: &str) -> Option<&Arc<ProviderEntry>> {
        self.by_id.get(id).and_then(|&i| self.providers.get(i))
    }

    /// The index for a requested model name.
    pub fn index(&self, model: &str) -> Option<&ModelIndex> {
        self.models.get(model).or(self.wildcard.as_ref())
    }

    /// Builds a registry over `providers` and `routes`, reusing per-model
    /// runtimes of `previous`. Fails (changing nothing) on an unknown strategy.
    pub fn build(
        providers: Vec<Arc<ProviderEntry>>,
        routes: Arc<BTreeMap<String, RouteConfig>>,
        strategies: &StrategyRegistry,
        default_strategy: &str,
        previous: &Registry,
    ) -> Result<Self, ConfigError> {
        let by_id = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.config.id.clone(), i))
            .collect();
        let mut named: BTreeMap<&str, Vec<Arc<Deployment>>> = BTreeMap::new();
        let mut wildcards = Vec::new();
        for entry in &providers {
            for deployment in &entry.deployments {
                if deployment.is_wildcard() {
                    wildcards.push(Arc::clone(deployment));
                } else {
                    named
                        .entry(deployment.model())
                        .or_default()
                        .push(Arc::clone(deployment));
                }
            }
        }
        let default = strategies.get(default_strategy).ok_or_else(|| {
            ConfigError::single(
                "manager.strategy",
                format!(
                    "unknown strategy '{default_strategy}' (known: {})",
                    known(strategies)
                ),
            )
        })?;
        let mut issues = Vec::new();
        let mut make_index =
            |model: &str, mut deployments: Vec<Arc<Deployment>>| -> Option<ModelIndex> {
                deployments.extend(wildcards.iter().cloned());
                let route = routes.get(model).cloned().map(Arc::new);
                let strategy = match route.as_ref().and_then(|r| r.strategy.as_deref()) {
                    Some(name) => match strategies.get(name) {
                        Some(s) => s,
                        None => {
                            issues.push(ConfigIssue {
                                path: format!("routes.\"{model}\".strategy"),
                                message: format!(
                                    "unknown strategy '{name}' (known: {})",
                                    known(strategies)
                                ),
                            });
                            return None;
                        }
                    },
                    None => Arc::clone(&default),
                };
                let runtime = previous
                    .models
                    .get(model)
                    .map(|m| Arc::clone(&m.runtime))
                    .or_else(|| {
                        (model == WILDCARD)
                            .then(|| previous.wildcard.as_ref().map(|w| Arc::clone(&w.runtime)))
                            .flatten()
                    })
                    .unwrap_or_default();
                let sets = route
                    .as_ref()
                    .map_or_else(Vec::new, |r| resolve_sets(r, &deployments));
                Some(ModelIndex {
                    deployments,
                    runtime,
                    strategy,
                    route,
                    sets,
                })
            };
        let mut models = NameMap::with_capacity_and_hasher(named.len(), Default::default());
        for (model, deployments) in named {
            if let Some(index) = make_index(model, deployments) {
                models.insert(model.to_owned(), index);
            }
        }
        let wildcard = if wildcards.is_empty() {
            None
        } else {
            make_index(WILDCARD, Vec::new())
        };
        if !issues.is_empty() {
            return Err(ConfigError { issues });
        }
        Ok(Self {
            providers,
            by_id,
            models,
            wildcard,
            routes,
        })
    }
}

fn known(strategies: &StrategyRegistry) -> String {
    strategies.names().collect::<Vec<_>>().join(", ")
}

fn resolve_sets(route: &RouteConfig, deployments: &[Arc<Deployment>]) -> Vec<RouteSet> {
    route
        .sets
        .iter()
        .filter_map(|(name, ids)| {
            let weight = i64::from(*route.split.get(name)?);
            let members = deployments
                .iter()
                .enumerate()
                .filter(|(_, d)| ids.iter().any(|id| id == d.provider_id()))
                .filter_map(|(i, _)| u32::try_from(i).ok())
                .collect();
            Some(RouteSet {
                weight,
                members,
                current: AtomicI64::new(0),
            })
        })
        .collect()
}
