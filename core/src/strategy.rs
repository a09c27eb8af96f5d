//! The `SelectionStrategy` trait: pick one candidate from a tier, purely and synchronously.
//!
//! The manager filters a model's deployments into tiers (SPEC §4) and asks
//! the strategy to pick within one tier. Strategies read a [`CandidateSet`]
//! (views over the deployments' atomics) and return an index: no I/O, no
//! locks, no awaits, no allocation. Per-model cursors and per-deployment
//! scratch cells are handed in, so strategies themselves stay stateless.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize};

use crate::registry::Deployment;
use crate::state::Health;
use crate::types::RequestType;

/// What the strategy knows about the request.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// Requested model.
    pub model: &'a str,
    /// Request type.
    pub request_type: RequestType,
    /// Estimated prompt tokens.
    pub estimated_input_tokens: u32,
    /// Requested output limit, if any.
    pub max_output_tokens: Option<u32>,
    /// The model's round-robin cursor (shared by every request for it).
    pub cursor: &'a AtomicUsize,
    /// Manager clock, milliseconds.
    pub now_ms: u64,
}

impl RequestContext<'_> {
    /// Output tokens to assume for cost estimates.
    pub fn expected_output_tokens(&self) -> u32 {
        self.max_output_tokens.unwrap_or(256)
    }
}

/// The candidates of one tier, in a stable order.
#[derive(Clone, Copy)]
pub struct CandidateSet<'a> {
    deployments: &'a [Arc<Deployment>],
    eligible: &'a [u32],
    now_ms: u64,
}

impl std::fmt::Debug for CandidateSet<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|c| (c.provider_id(), c.model())))
            .finish()
    }
}

impl<'a> CandidateSet<'a> {
    /// A set of `deployments[i]` for each `i` in `eligible`.
    pub fn new(deployments: &'a [Arc<Deployment>], eligible: &'a [u32], now_ms: u64) -> Self {
        Self {
            deployments,
            eligible,
            now_ms,
        }
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.eligible.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.eligible.is_empty()
    }

    /// The `i`-th candidate.
    ///
    /// Returns `None` past the end.
    pub fn get(&self, i: usize) -> Option<Candidate<'a>> {
        let index = usize::try_from(*self.eligible.get(i)?).ok()?;
        Some(Candidate {
            deployment: self.deployments.get(index)?,
            now_ms: self.now_ms,
        })
    }

    /// Every candidate with its index.
    pub fn iter(&self) -> impl Iterator<Item = Candidate<'a>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The index of the candidate with the smallest key (first on ties).
    pub fn min_by_key<K: PartialOrd>(
        &self,
        mut key: impl FnMut(&Candidate<'a>) -> K,
    ) -> Option<usize> {
        let mut best: Option<(usize, K)> = None;
        for (i, candidate) in self.iter().enumerate() {
            let k = key(&candidate);
            if best.as_ref().is_none_or(|(_, b)| k < *b) {
                best = Some((i, k));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// A read-only view of one deployment for strategies.
#[derive(Clone, Copy)]
pub struct Candidate<'a> {
    deployment: &'a Deployment,
    now_ms: u64,
}

impl<'a> Candidate<'a> {
    /// The deployment itself.
    pub fn deployment(&self) -> &'a Deployment {
        self.deployment
    }

    /// Provider id.
    pub fn provider_id(&self) -> &'a str {
        self.deployment.provider_id()
    }

    /// Deployment model (`*` for a wildcard deployment).
    pub fn model(&self) -> &'a str {
        self.deployment.model()
    }

    /// Configured weight.
    pub fn weight(&self) -> u32 {
        self.deployment.config().weight
    }

    /// Configured priority (lower is preferred).
    pub fn priority(&self) -> i32 {
        self.deployment.config().priority
    }

    /// Region, if configured.
    pub fn region(&self) -> Option<&'a str> {
        self.deployment.config().region.as_deref()
    }

    /// Requests in flight on this deployment.
    pub fn in_flight(&self) -> u32 {
        self.deployment.state().in_flight()
    }

    /// Peak-EWMA latency in microseconds.
    pub fn latency_us(&self) -> f64 {
        self.deployment.state().latency_us()
    }

    /// Recent error rate (0..1).
    pub fn error_rate(&self) -> f64 {
        self.deployment.state().error_rate()
    }

    /// Slow-start factor (0.1 just admitted … 1 warmed up).
    pub fn slow_start(&self) -> f64 {
        self.deployment.state().slow_start(self.now_ms)
    }

    /// Health.
    pub fn health(&self) -> Health {
        self.deployment.health(self.now_ms)
    }

    /// The SPEC §3 load, 0..100.
    pub fn load(&self) -> f64 {
        self.deployment.load(self.now_ms)
    }

    /// Expected cost in USD of the request on this deployment.
    pub fn expected_cost(&self, ctx: &RequestContext<'_>) -> f64 {
        self.deployment.pricing().cost(
            u64::from(ctx.estimated_input_tokens),
            u64::from(ctx.expected_output_tokens()),
        )
    }

    /// A per-deployment scratch cell for stateful strategies.
    pub fn scratch(&self) -> &'a AtomicI64 {
        self.deployment.state().strategy_scratch()
    }
}

/// Picks one candidate within a tier.
pub trait SelectionStrategy: Send + Sync + 'static {
    /// Name used in config.
    fn name(&self) -> &str;

    /// The index (into `candidates`) of the chosen candidate; `None` only
    /// when `candidates` is empty.
    fn select(&self, candidates: &CandidateSet<'_>, ctx: &RequestContext<'_>) -> Option<usize>;

    /// Whether every pick is "the next usable deployment after the model's
    /// shared cursor". The manager then walks the deployments from the
    /// cursor and stops at the first usable one, instead of listing every
    /// eligible deployment for [`select`](Self::select): one check per pick
    /// rather than one per deployment when most are healthy (about 5 µs a
    /// request at 100 deployments). With every deployment usable the
    /// sequence is the same as `select` over the full list.
    fn rotates(&self) -> bool {
        false
    }
}

#[allow(dead_code)]
fn assert_object_safe(_: &dyn SelectionStrategy) {}

/// Strategies by name: how config names become strategies.
#[derive(Clone, Default)]
pub struct StrategyRegistry {
    by_name: BTreeMap<String, Arc<dyn SelectionStrategy>>,
}

impl std::fmt::Debug for StrategyRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl StrategyRegistry {
    /// A registry holding only `round_robin`.
    pub fn with_round_robin() -> Self {
        let mut registry = Self::default();
        registry.register(crate::round_robin::RoundRobin);
        registry
    }

    /// Adds (or replaces) a strategy under its name.
    pub fn register(&mut self, strategy: impl SelectionStrategy) -> &mut Self {
        self.by_name
            .insert(strategy.name().to_owned(), Arc::new(strategy));
        self
    }

    /// Adds (or replaces) a shared strategy under `name`.
    pub fn register_arc(
        &mut self,
        name: impl Into<String>,
        strategy: Arc<dyn SelectionStrategy>,
    ) -> &mut Self {
        self.by_name.insert(name.into(), strategy);
        self
    }

    /// The strategy named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn SelectionStrategy>> {
        self.by_name.get(name).cloned()
    }

    /// Every registered name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}
