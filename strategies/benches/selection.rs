//! Selection cost per strategy and provider count: the full manager pick and the pure strategy pick.
//!
//! For N ∈ {10, 100, 1000, 10000} providers and each built-in strategy:
//! - `manager/ten_serve/<strategy>/<N>`: N providers, 10 of which serve the
//!   benchmarked model (the others serve other models): what a pick costs
//!   when the model → deployments index does its job;
//! - `manager/all_serve/<strategy>/<N>`: all N serve it (the pick filters and
//!   scores N deployments);
//! - `select/all_serve/<strategy>/<N>`: `SelectionStrategy::select` alone over
//!   N candidates, no filtering.
//!
//! Run: `cargo bench -p switchyard-strategies --bench selection`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard_core::testing::ScriptedProvider;
use switchyard_core::{
    CandidateSet, Deployment, DeploymentState, ManagerOptions, ModelConfig, ProviderConfig,
    ProviderManager, ProviderState, RequestContext, RequestType,
};
use switchyard_strategies::BUILT_IN;

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
const MODEL: &str = "bench-model";

/// Provider `i`: varied weight, priority, price and latency so every
/// strategy has real work to do.
fn provider_config(i: usize, serves_model: bool) -> ProviderConfig {
    let model = if serves_model {
        MODEL.to_owned()
    } else {
        format!("other-{}", i % 16)
    };
    let mut config = ProviderConfig::new(format!("p{i}"), "mock", Vec::<String>::new());
    config.models.insert(
        model,
        ModelConfig {
            input_cost_per_mtok: Some(1.0 + (i % 7) as f64),
            output_cost_per_mtok: Some(2.0 + (i % 5) as f64),
            ..Default::default()
        },
    );
    config.weight = 1 + (i % 4) as u32;
    config.priority = (i % 3) as i32;
    config
}

fn latency_of(i: usize) -> Duration {
    Duration::from_millis(20 + (i % 13) as u64 * 10)
}

fn build_manager(strategy: &str, n: usize, serving: usize) -> ProviderManager {
    let mut builder = ProviderManager::builder()
        .strategies(switchyard_strategies::registry())
        .options(ManagerOptions {
            strategy: strategy.into(),
            enable_metrics: false,
            ..Default::default()
        });
    // Spread the serving providers over the list.
    let stride = n / serving;
    for i in 0..n {
        let serves = i % stride == 0 && i / stride < serving;
        builder =
            builder.provider_instance(provider_config(i, serves), ScriptedProvider::shared("x"));
    }
    let manager = builder.build().expect("valid bench config");
    for i in 0..n {
        let id = format!("p{i}");
        if let Some(state) = manager.deployment_state(&id, MODEL) {
            state.set_latency(latency_of(i));
        }
    }
    manager
}

fn bench_manager(c: &mut Criterion) {
    for (shape, ten) in [("ten_serve", true), ("all_serve", false)] {
        let mut group = c.benchmark_group(format!("manager/{shape}"));
        for strategy in BUILT_IN {
            for n in SIZES {
                let serving = if ten { 10.min(n) } else { n };
                let manager = build_manager(strategy, n, serving);
                group.bench_with_input(BenchmarkId::new(strategy, n), &n, |b, _| {
                    b.iter(|| {
                        let handle = manager
                            .get_best_provider_for_request(black_box(MODEL), RequestType::Chat)
                            .expect("a provider");
                        drop(black_box(handle));
                    });
                });
            }
        }
        group.finish();
    }
}

fn bench_select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select/all_serve");
    let registry = switchyard_strategies::registry();
    for n in SIZES {
        let deployments: Vec<Arc<Deployment>> = (0..n)
            .map(|i| {
                let state = Arc::new(DeploymentState::new(0));
                state.set_latency(latency_of(i));
                Arc::new(Deployment::new(
                    Arc::new(provider_config(i, true)),
                    MODEL,
                    ScriptedProvider::shared("x"),
                    state,
                    Arc::new(ProviderState::new()),
                    30_000,
                ))
            })
            .collect();
        let eligible: Vec<u32> = (0..u32::try_from(n).expect("small")).collect();
        let now_ms = 60_000;
        let set = CandidateSet::new(&deployments, &eligible, now_ms);
        let cursor = AtomicUsize::new(0);
        let ctx = RequestContext {
            model: MODEL,
            request_type: RequestType::Chat,
            estimated_input_tokens: 500,
            max_output_tokens: Some(256),
            cursor: &cursor,
            now_ms,
        };
        for strategy in BUILT_IN {
            let s = registry.get(strategy).expect("built in");
            group.bench_with_input(BenchmarkId::new(strategy, n), &n, |b, _| {
                b.iter(|| black_box(s.select(black_box(&set), &ctx)));
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_manager, bench_select
}
criterion_main!(benches);
