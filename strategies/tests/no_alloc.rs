//! No allocation per pick (SPEC §4): every strategy's `select`, and the manager's whole pick.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use common::{config, deployment, manager};
use switchyard_core::{CandidateSet, Deployment, ModelConfig, RequestContext, RequestType};
use switchyard_strategies::BUILT_IN;

const PICKS: usize = 1_000;

#[test]
fn the_counter_sees_allocations() {
    let info = allocation_counter::measure(|| {
        std::hint::black_box(Vec::<u64>::with_capacity(4));
    });
    assert_eq!((info.count_total, info.bytes_total), (1, 32));
}

fn deployments(n: usize) -> Vec<Arc<Deployment>> {
    (0..n)
        .map(|i| {
            let mut c = config(&format!("p{i}"), &[]);
            c.models.insert(
                "m".into(),
                ModelConfig {
                    input_cost_per_mtok: Some(1.0 + (i % 3) as f64),
                    output_cost_per_mtok: Some(2.0),
                    ..Default::default()
                },
            );
            c.weight = 1 + (i % 4) as u32;
            c.priority = (i % 2) as i32;
            let d = deployment(c, "m", 0);
            d.state()
                .set_latency(Duration::from_millis(10 + i as u64 * 7));
            d
        })
        .collect()
}

#[test]
fn no_strategy_allocates_per_pick() {
    let deployments = deployments(16);
    // Leave a few out, as the tiers do.
    let eligible: Vec<u32> = (0..16).filter(|i| i % 5 != 3).collect();
    let now_ms = 40_000;
    let set = CandidateSet::new(&deployments, &eligible, now_ms);
    let cursor = AtomicUsize::new(0);
    let ctx = RequestContext {
        model: "m",
        request_type: RequestType::Chat,
        estimated_input_tokens: 1_000,
        max_output_tokens: Some(100),
        cursor: &cursor,
        now_ms,
    };
    let registry = switchyard_strategies::registry();
    for name in BUILT_IN {
        let strategy = registry.get(name).unwrap();
        // Warm-up: first use of a thread-local (the RNG) may allocate once.
        assert!(strategy.select(&set, &ctx).is_some());
        let mut picked = 0usize;
        let info = allocation_counter::measure(|| {
            for _ in 0..PICKS {
                picked += usize::from(strategy.select(&set, &ctx).is_some());
            }
        });
        assert_eq!(picked, PICKS, "{name}");
        assert_eq!(
            (info.count_total, info.bytes_total),
            (0, 0),
            "{name} allocated over {PICKS} picks: {info:?}"
        );
    }
}

#[test]
fn the_manager_pick_does_not_allocate() {
    for name in BUILT_IN {
        let configs = (0..8).map(|i| config(&format!("p{i}"), &["m"])).collect();
        let m = manager(name, configs);
        // Warm-up: grows the thread-local eligible buffer, seeds the RNG.
        drop(
            m.get_best_provider_for_request("m", RequestType::Chat)
                .unwrap(),
        );
        let mut picked = 0usize;
        let info = allocation_counter::measure(|| {
            for _ in 0..PICKS {
                let handle = m.get_best_provider_for_request("m", RequestType::Chat);
                picked += usize::from(handle.is_ok());
            }
        });
        assert_eq!(picked, PICKS, "{name}");
        assert_eq!(
            (info.count_total, info.bytes_total),
            (0, 0),
            "{name}: get_best_provider_for_request allocated over {PICKS} picks: {info:?}"
        );
    }
}
