//! Helpers shared by the integration tests: managers over scripted providers, direct candidate sets.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard_core::testing::ScriptedProvider;
use switchyard_core::{
    Deployment, DeploymentState, ManagerOptions, ProviderConfig, ProviderManager, ProviderState,
    RequestType,
};

/// A provider config serving `models`, with everything else at its default.
pub fn config(id: &str, models: &[&str]) -> ProviderConfig {
    ProviderConfig::new(id, "mock", models.iter().copied())
}

/// A manager with every built-in strategy, `strategy` as the default, and
/// one scripted provider per config.
pub fn manager(strategy: &str, configs: Vec<ProviderConfig>) -> ProviderManager {
    let mut builder = ProviderManager::builder()
        .strategies(switchyard_strategies::registry())
        .options(ManagerOptions {
            strategy: strategy.into(),
            ..Default::default()
        });
    for config in configs {
        let reply = config.id.clone();
        builder = builder.provider_instance(config, ScriptedProvider::shared(reply));
    }
    builder.build().expect("valid test config")
}

/// The provider chosen for one chat request for `model`.
pub fn pick(manager: &ProviderManager, model: &str) -> String {
    manager
        .get_best_provider_for_request(model, RequestType::Chat)
        .expect("a provider")
        .provider_id()
        .to_owned()
}

/// How often each provider is chosen over `n` picks.
pub fn counts(manager: &ProviderManager, model: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(pick(manager, model)).or_insert(0) += 1;
    }
    counts
}

/// `counts[id]`, 0 when absent.
pub fn count(counts: &BTreeMap<String, usize>, id: &str) -> usize {
    counts.get(id).copied().unwrap_or(0)
}

/// A deployment of `model` on a fresh provider `config`, admitted at `admitted_ms`.
pub fn deployment(config: ProviderConfig, model: &str, admitted_ms: u64) -> Arc<Deployment> {
    let reply = config.id.clone();
    Arc::new(Deployment::new(
        Arc::new(config),
        model,
        ScriptedProvider::shared(reply),
        Arc::new(DeploymentState::new(admitted_ms)),
        Arc::new(ProviderState::new()),
        30_000,
    ))
}
