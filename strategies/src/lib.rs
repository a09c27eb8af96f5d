//! Switchyard's selection strategies: how the manager picks one deployment within a tier.
//!
//! The manager (crate `switchyard-core`) filters a model's deployments into
//! tiers (SPEC §4: a free half-open probe, then closed-circuit healthy, then
//! degraded, then panic mode) and asks a [`SelectionStrategy`] to pick one
//! candidate *within* the tier. Every strategy here is pure and synchronous:
//! it reads the candidates' atomics through a [`CandidateSet`] and returns an
//! index. No locks, no I/O, no allocation per pick.
//!
//! | name | type | picks |
//! |---|---|---|
//! | `round_robin` | [`RoundRobin`] (from core) | next in turn, cursor per model |
//! | `least_load` | [`LeastLoad`] | lowest SPEC §3 load, ties by in-flight, then position |
//! | `cost` | [`Cost`] | cheapest expected cost, ties by load, then in-flight |
//! | `weighted` | [`Weighted`] | smooth weighted round-robin by `weight` (nginx) |
//! | `latency` | [`Latency`] | power of two choices over peak-EWMA latency, error penalty, slow start |
//! | `priority` | [`Priority`] | lowest `priority` value present, round-robin within it |
//!
//! [`registry()`] returns a [`StrategyRegistry`] holding all six by name, for
//! [`ManagerBuilder::strategies`](switchyard_core::ManagerBuilder::strategies).
//! The default strategy is `[manager] strategy` ([`ManagerOptions::strategy`]);
//! a route may name another (`RouteConfig::strategy`).
//!
//! ```
//! use switchyard_core::testing::ScriptedProvider;
//! use switchyard_core::{ManagerOptions, ProviderConfig, ProviderManager, RequestType};
//!
//! let manager = ProviderManager::builder()
//!     .strategies(switchyard_strategies::registry())
//!     .options(ManagerOptions {
//!         strategy: "least_load".into(),
//!         ..Default::default()
//!     })
//!     .provider_instance(ProviderConfig::new("a", "mock", ["gpt-4o"]), ScriptedProvider::shared("from a"))
//!     .provider_instance(ProviderConfig::new("b", "mock", ["gpt-4o"]), ScriptedProvider::shared("from b"))
//!     .build()
//!     .unwrap();
//!
//! // Equal load: the first in order wins the tie.
//! let first = manager.get_best_provider_for_request("gpt-4o", RequestType::Chat).unwrap();
//! assert_eq!(first.provider_id(), "a");
//!
//! // While a call is in flight on `a`, `b` is the least loaded.
//! let call = first.begin();
//! let second = manager.get_best_provider_for_request("gpt-4o", RequestType::Chat).unwrap();
//! assert_eq!(second.provider_id(), "b");
//! drop(call);
//! ```
//!
//! A custom strategy is any [`SelectionStrategy`] registered under its name;
//! config and routes then refer to it like a built-in:
//!
//! ```
//! use switchyard_core::testing::ScriptedProvider;
//! use switchyard_core::{
//!     CandidateSet, ProviderConfig, ProviderManager, RequestContext, RequestType, RouteConfig,
//!     SelectionStrategy,
//! };
//!
//! /// Always the last candidate of the tier.
//! struct Last;
//!
//! impl SelectionStrategy for Last {
//!     fn name(&self) -> &str {
//!         "last"
//!     }
//!
//!     fn select(&self, candidates: &CandidateSet<'_>, _ctx: &RequestContext<'_>) -> Option<usize> {
//!         candidates.len().checked_sub(1)
//!     }
//! }
//!
//! let mut strategies = switchyard_strategies::registry();
//! strategies.register(Last);
//!
//! let manager = ProviderManager::builder()
//!     .strategies(strategies)
//!     .route("gpt-4o", RouteConfig { strategy: Some("last".into()), ..Default::default() })
//!     .provider_instance(ProviderConfig::new("a", "mock", ["gpt-4o"]), ScriptedProvider::shared("a"))
//!     .provider_instance(ProviderConfig::new("b", "mock", ["gpt-4o"]), ScriptedProvider::shared("b"))
//!     .build()
//!     .unwrap();
//!
//! let handle = manager.get_best_provider_for_request("gpt-4o", RequestType::Chat).unwrap();
//! assert_eq!(handle.provider_id(), "b");
//! ```
//!
//! [`ManagerOptions::strategy`]: switchyard_core::ManagerOptions::strategy

pub mod cost;
pub mod latency;
pub mod least_load;
pub mod priority;
pub mod weighted;

pub use cost::Cost;
pub use latency::Latency;
pub use least_load::LeastLoad;
pub use priority::Priority;
pub use switchyard_core::round_robin;
pub use switchyard_core::round_robin::RoundRobin;
pub use switchyard_core::{
    Candidate, CandidateSet, RequestContext, SelectionStrategy, StrategyRegistry,
};
pub use weighted::Weighted;

/// Every built-in strategy by name: `round_robin`, `least_load`, `cost`,
/// `weighted`, `latency` and `priority`.
///
/// Add your own with [`StrategyRegistry::register`]; a strategy registered
/// under a built-in's name replaces it.
pub fn registry() -> StrategyRegistry {
    let mut registry = StrategyRegistry::with_round_robin();
    registry
        .register(LeastLoad)
        .register(Cost)
        .register(Weighted)
        .register(Latency)
        .register(Priority);
    registry
}

/// The names [`registry()`] registers.
pub const BUILT_IN: [&str; 6] = [
    "round_robin",
    "least_load",
    "cost",
    "weighted",
    "latency",
    "priority",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_holds_every_built_in_under_its_name() {
        let registry = registry();
        let mut names: Vec<&str> = registry.names().collect();
        names.sort_unstable();
        let mut expected = BUILT_IN.to_vec();
        expected.sort_unstable();
        assert_eq!(names, expected);
        for name in BUILT_IN {
            let strategy = registry.get(name);
            assert_eq!(strategy.as_ref().map(|s| s.name()), Some(name));
        }
    }
}
