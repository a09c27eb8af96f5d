//! Behaviour of every built-in strategy through a real `ProviderManager` (SPEC §4).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use common::{config, count, counts, deployment, manager, pick};
use switchyard_core::testing::ScriptedProvider;
use switchyard_core::{
    CandidateSet, ModelConfig, ProviderConfig, ProviderManager, RequestContext, RequestType,
    RouteConfig, SelectRequest, SelectionStrategy,
};
use switchyard_strategies::latency::ERROR_PENALTY;
use switchyard_strategies::{BUILT_IN, Latency};

fn with_weight(id: &str, weight: u32) -> ProviderConfig {
    let mut c = config(id, &["m"]);
    c.weight = weight;
    c
}

fn with_priority(id: &str, priority: i32) -> ProviderConfig {
    let mut c = config(id, &["m"]);
    c.priority = priority;
    c
}

fn priced(id: &str, input: f64, output: f64) -> ProviderConfig {
    let mut c = config(id, &[]);
    c.models.insert(
        "m".into(),
        ModelConfig {
            input_cost_per_mtok: Some(input),
            output_cost_per_mtok: Some(output),
            ..Default::default()
        },
    );
    c
}

fn assert_share(counts: &BTreeMap<String, usize>, id: &str, expected: f64, n: usize) {
    let share = count(counts, id) as f64 / n as f64;
    assert!(
        (share - expected).abs() <= 0.02,
        "{id}: share {share:.4}, expected {expected:.4} ± 0.02 ({counts:?})"
    );
}

fn now(manager: &ProviderManager) -> u64 {
    manager.clock().now_ms()
}

// ---------------------------------------------------------------- weighted

#[test]
fn weighted_three_to_one_over_ten_thousand_picks() {
    let m = manager("weighted", vec![with_weight("a", 3), with_weight("b", 1)]);
    let n = 10_000;
    let counts = counts(&m, "m", n);
    assert_share(&counts, "a", 0.75, n);
    assert_share(&counts, "b", 0.25, n);
    // Sequential smooth WRR is exact, not just close.
    assert_eq!((count(&counts, "a"), count(&counts, "b")), (7_500, 2_500));
}

#[test]
fn weighted_five_three_two() {
    let m = manager(
        "weighted",
        vec![
            with_weight("a", 5),
            with_weight("b", 3),
            with_weight("c", 2),
        ],
    );
    let n = 10_000;
    let counts = counts(&m, "m", n);
    assert_share(&counts, "a", 0.5, n);
    assert_share(&counts, "b", 0.3, n);
    assert_share(&counts, "c", 0.2, n);
    assert_eq!(
        (
            count(&counts, "a"),
            count(&counts, "b"),
            count(&counts, "c")
        ),
        (5_000, 3_000, 2_000)
    );
}

#[test]
fn weighted_is_smooth_like_nginx() {
    let m = manager(
        "weighted",
        vec![
            with_weight("a", 5),
            with_weight("b", 1),
            with_weight("c", 1),
        ],
    );
    let sequence: Vec<String> = (0..14).map(|_| pick(&m, "m")).collect();
    assert_eq!(
        sequence.join(""),
        "aabacaa".repeat(2),
        "nginx's example sequence for 5:1:1"
    );
}

#[test]
fn weighted_never_picks_weight_zero_unless_all_are_zero() {
    let m = manager("weighted", vec![with_weight("a", 0), with_weight("b", 2)]);
    assert_eq!(count(&counts(&m, "m", 100), "a"), 0);

    let m = manager("weighted", vec![with_weight("a", 0), with_weight("b", 0)]);
    let counts = counts(&m, "m", 100);
    assert_eq!((count(&counts, "a"), count(&counts, "b")), (50, 50));
}

// ------------------------------------------------------------- round robin

#[test]
fn round_robin_is_fair_per_model() {
    let m = manager(
        "round_robin",
        vec![
            config("a", &["m1"]),
            config("b", &["m1"]),
            config("c", &["m1", "m2"]),
            config("d", &["m2"]),
        ],
    );
    let mut m1 = BTreeMap::new();
    let mut m2 = BTreeMap::new();
    for _ in 0..600 {
        *m1.entry(pick(&m, "m1")).or_insert(0usize) += 1;
        *m2.entry(pick(&m, "m2")).or_insert(0usize) += 1;
    }
    let expected_m1: BTreeMap<String, usize> =
        [("a".into(), 200), ("b".into(), 200), ("c".into(), 200)].into();
    let expected_m2: BTreeMap<String, usize> = [("c".into(), 300), ("d".into(), 300)].into();
    assert_eq!(m1, expected_m1);
    assert_eq!(m2, expected_m2);
}

#[test]
fn round_robin_is_re_exported() {
    let registry = switchyard_strategies::registry();
    assert_eq!(
        registry.get("round_robin").map(|s| s.name().to_owned()),
        Some(switchyard_strategies::RoundRobin.name().to_owned())
    );
}

// --------------------------------------------------------------- least load

#[test]
fn least_load_picks_the_least_loaded() {
    let m = manager(
        "least_load",
        vec![
            config("a", &["m"]),
            config("b", &["m"]),
            config("c", &["m"]),
        ],
    );
    // Latency is 30% of the load, relative to the 30 s provider timeout.
    let state = |id: &str| m.deployment_state(id, "m").unwrap();
    state("a").set_latency(Duration::from_secs(3));
    state("b").set_latency(Duration::from_secs(1));
    state("c").set_latency(Duration::from_secs(2));
    assert_eq!(count(&counts(&m, "m", 20), "b"), 20);

    state("b").set_latency(Duration::from_secs(9));
    assert_eq!(count(&counts(&m, "m", 20), "c"), 20);
}

#[test]
fn least_load_counts_utilization() {
    let mut a = config("a", &["m"]);
    a.max_concurrency = Some(4);
    let m = manager("least_load", vec![a, config("b", &["m"])]);
    m.deployment_state("b", "m")
        .unwrap()
        .set_latency(Duration::from_secs(10)); // load 10
    assert_eq!(pick(&m, "m"), "a", "a idle: load ≈ 0");
    let handle = m
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    let _g1 = handle.begin();
    let _g2 = handle.begin(); // a: utilization 0.5 → load ≈ 35
    assert_eq!(pick(&m, "m"), "b");
}

#[test]
fn least_load_ties_go_to_fewer_in_flight_then_position() {
    let m = manager(
        "least_load",
        vec![
            config("a", &["m"]),
            config("b", &["m"]),
            config("c", &["m"]),
        ],
    );
    // No limits configured: in-flight does not change the load, only the tie-break.
    assert_eq!(
        pick(&m, "m"),
        "a",
        "equal load and in-flight: first in order"
    );
    let on = |id: &str| {
        let h = m
            .get_best_provider_for_request("m", RequestType::Chat)
            .unwrap();
        assert_eq!(h.provider_id(), id);
        h.begin()
    };
    let _a = on("a");
    let _b = on("b");
    let _c = on("c");
    let _a2 = on("a");
    assert_eq!(pick(&m, "m"), "b");
}

// --------------------------------------------------------------------- cost

#[test]
fn cost_picks_the_cheapest() {
    let m = manager(
        "cost",
        vec![
            priced("a", 10.0, 30.0),
            priced("b", 1.0, 2.0),
            priced("c", 3.0, 4.0),
        ],
    );
    assert_eq!(count(&counts(&m, "m", 20), "b"), 20);
}

#[test]
fn cost_ties_are_broken_by_load() {
    let m = manager(
        "cost",
        vec![
            priced("a", 10.0, 30.0),
            priced("b", 1.0, 2.0),
            priced("c", 1.0, 2.0),
        ],
    );
    assert_eq!(pick(&m, "m"), "b", "equal price and load: first in order");
    m.deployment_state("b", "m")
        .unwrap()
        .set_latency(Duration::from_secs(10));
    assert_eq!(count(&counts(&m, "m", 20), "c"), 20);
}

#[test]
fn cost_uses_the_request_size() {
    // `cheap_in` is cheap for long prompts, `cheap_out` for long answers.
    let m = manager(
        "cost",
        vec![priced("cheap_out", 5.0, 1.0), priced("cheap_in", 0.5, 20.0)],
    );
    let long_prompt = SelectRequest {
        estimated_input_tokens: 100_000,
        max_output_tokens: Some(16),
        ..SelectRequest::new("m", RequestType::Chat)
    };
    assert_eq!(m.select(&long_prompt).unwrap().provider_id(), "cheap_in");
    let long_answer = SelectRequest {
        estimated_input_tokens: 10,
        max_output_tokens: Some(4_000),
        ..SelectRequest::new("m", RequestType::Chat)
    };
    assert_eq!(m.select(&long_answer).unwrap().provider_id(), "cheap_out");
}

// ------------------------------------------------------------------ latency

fn latency_manager(fast_ms: u64, slow_ms: u64) -> ProviderManager {
    let m = manager(
        "latency",
        vec![
            config("fast", &["m"]),
            config("slow1", &["m"]),
            config("slow2", &["m"]),
        ],
    );
    for (id, ms) in [("fast", fast_ms), ("slow1", slow_ms), ("slow2", slow_ms)] {
        m.deployment_state(id, "m")
            .unwrap()
            .set_latency(Duration::from_millis(ms));
    }
    m
}

#[test]
fn latency_prefers_the_fast_deployment() {
    let m = latency_manager(10, 100);
    let n = 2_000;
    let counts = counts(&m, "m", n);
    let fast = count(&counts, "fast") as f64 / n as f64;
    // The fast deployment wins every pair it is drawn into: 2 of 3 pairs,
    // against 1/3 under round-robin. (Pure p2c cannot exceed 2/3 here.)
    assert!(fast > 0.6, "fast share {fast:.3} ({counts:?})");
    for slow in ["slow1", "slow2"] {
        let share = count(&counts, slow) as f64 / n as f64;
        assert!(share < 0.22, "{slow} share {share:.3} ({counts:?})");
    }
}

#[test]
fn latency_with_two_candidates_always_takes_the_cheaper() {
    let m = manager(
        "latency",
        vec![config("fast", &["m"]), config("slow", &["m"])],
    );
    m.deployment_state("fast", "m")
        .unwrap()
        .set_latency(Duration::from_millis(10));
    m.deployment_state("slow", "m")
        .unwrap()
        .set_latency(Duration::from_millis(100));
    assert_eq!(count(&counts(&m, "m", 500), "fast"), 500);
}

#[test]
fn latency_counts_in_flight() {
    let m = manager("latency", vec![config("a", &["m"]), config("b", &["m"])]);
    m.deployment_state("a", "m")
        .unwrap()
        .set_latency(Duration::from_millis(10));
    m.deployment_state("b", "m")
        .unwrap()
        .set_latency(Duration::from_millis(25));
    let a = m
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    assert_eq!(a.provider_id(), "a");
    // 10 ms × 3 queued > 25 ms × 1.
    let _g1 = a.begin();
    let _g2 = a.begin();
    assert_eq!(count(&counts(&m, "m", 200), "b"), 200);
}

#[test]
fn latency_penalises_a_fast_erroring_deployment() {
    let m = latency_manager(10, 100);
    let fast = m.deployment_state("fast", "m").unwrap();
    for _ in 0..50 {
        fast.observe(now(&m), Duration::from_millis(10), false);
    }
    assert!(fast.error_rate() > 0.99, "{}", fast.error_rate());
    assert!(
        fast.latency_us() < 11_000.0,
        "still fast: {}",
        fast.latency_us()
    );
    // 10 ms × (1 + ERROR_PENALTY × ~1) > 100 ms: it loses every pair.
    const { assert!(10.0 * (1.0 + ERROR_PENALTY * 0.99) > 100.0) };
    let n = 2_000;
    let counts = counts(&m, "m", n);
    assert_eq!(count(&counts, "fast"), 0, "{counts:?}");
    // The two healthy ones split the rest at random (σ ≈ 1.1%).
    for slow in ["slow1", "slow2"] {
        let share = count(&counts, slow) as f64 / n as f64;
        assert!((0.42..0.58).contains(&share), "{slow} {share:.3}");
    }
}

#[test]
fn latency_never_leaves_the_tier() {
    let m = latency_manager(1, 100);
    let fast = m.deployment_state("fast", "m").unwrap();
    fast.open_circuit(now(&m), Duration::from_secs(60));
    let picked = counts(&m, "m", 1_000);
    assert_eq!(count(&picked, "fast"), 0, "open circuit picked: {picked:?}");
    assert_eq!(count(&picked, "slow1") + count(&picked, "slow2"), 1_000);

    let m = latency_manager(1, 100);
    m.deployment_state("fast", "m")
        .unwrap()
        .start_cooldown(now(&m), Duration::from_secs(60));
    assert_eq!(count(&counts(&m, "m", 1_000), "fast"), 0, "cooling down");
}

#[test]
fn every_strategy_stays_within_the_tier() {
    for name in BUILT_IN {
        let mut configs = vec![
            config("open", &["m"]),
            config("x", &["m"]),
            config("y", &["m"]),
        ];
        // Make "open" the most attractive candidate for every strategy.
        configs[0].weight = 100;
        configs[0].priority = -1;
        let m = manager(name, configs);
        let open = m.deployment_state("open", "m").unwrap();
        open.set_latency(Duration::from_micros(1));
        open.open_circuit(now(&m), Duration::from_secs(60));
        let counts = counts(&m, "m", 300);
        assert_eq!(count(&counts, "open"), 0, "{name}: {counts:?}");
    }
}

#[test]
fn latency_slow_start_holds_back_a_fresh_deployment() {
    // Direct candidate sets: the clock is ours to set.
    let now_ms = 100_000;
    let deployments = vec![
        deployment(config("warm", &["m"]), "m", 0),
        deployment(config("fresh", &["m"]), "m", now_ms - 1_000),
    ];
    let eligible = [0u32, 1];
    let set = CandidateSet::new(&deployments, &eligible, now_ms);
    let cursor = AtomicUsize::new(0);
    let ctx = RequestContext {
        model: "m",
        request_type: RequestType::Chat,
        estimated_input_tokens: 0,
        max_output_tokens: None,
        cursor: &cursor,
        now_ms,
    };
    assert!((set.get(0).unwrap().slow_start() - 1.0).abs() < 1e-9);
    assert!((set.get(1).unwrap().slow_start() - 0.1).abs() < 1e-9);
    let picks = |latencies: [u64; 2]| {
        for (d, ms) in deployments.iter().zip(latencies) {
            d.state().set_latency(Duration::from_millis(ms));
        }
        (0..100)
            .filter(|_| Latency.select(&set, &ctx) == Some(1))
            .count()
    };
    assert_eq!(picks([100, 100]), 0, "same latency: the warm one wins");
    assert_eq!(picks([100, 20]), 0, "5× faster is not enough while fresh");
    assert_eq!(picks([100, 5]), 100, "20× faster wins even while fresh");
}

#[test]
fn latency_with_one_candidate_returns_it_and_none_when_empty() {
    let deployments = vec![deployment(config("only", &["m"]), "m", 0)];
    let cursor = AtomicUsize::new(0);
    let ctx = RequestContext {
        model: "m",
        request_type: RequestType::Chat,
        estimated_input_tokens: 0,
        max_output_tokens: None,
        cursor: &cursor,
        now_ms: 1,
    };
    let one = [0u32];
    assert_eq!(
        Latency.select(&CandidateSet::new(&deployments, &one, 1), &ctx),
        Some(0)
    );
    for name in BUILT_IN {
        let strategy = switchyard_strategies::registry().get(name).unwrap();
        assert_eq!(
            strategy.select(&CandidateSet::new(&deployments, &[], 1), &ctx),
            None,
            "{name}"
        );
        assert_eq!(
            strategy.select(&CandidateSet::new(&deployments, &one, 1), &ctx),
            Some(0),
            "{name}"
        );
    }
}

// ----------------------------------------------------------------- priority

#[test]
fn priority_uses_lower_tiers_only_when_higher_ones_are_out() {
    let m = manager(
        "priority",
        vec![
            with_priority("p2", 2),
            with_priority("p0a", 0),
            with_priority("p1", 1),
            with_priority("p0b", 0),
        ],
    );
    let first = counts(&m, "m", 100);
    let expected: BTreeMap<String, usize> = [("p0a".into(), 50), ("p0b".into(), 50)].into();
    assert_eq!(first, expected, "round-robin within priority 0");

    let cool = |id: &str| {
        m.deployment_state(id, "m")
            .unwrap()
            .start_cooldown(now(&m), Duration::from_secs(60));
    };
    cool("p0a");
    assert_eq!(count(&counts(&m, "m", 20), "p0b"), 20, "p0b is still up");
    cool("p0b");
    assert_eq!(count(&counts(&m, "m", 20), "p1"), 20, "priority 0 is out");
    cool("p1");
    assert_eq!(
        count(&counts(&m, "m", 20), "p2"),
        20,
        "priorities 0 and 1 are out"
    );
}

// ------------------------------------------------------------------- custom

/// Always the last candidate of the tier.
struct Last;

impl SelectionStrategy for Last {
    fn name(&self) -> &str {
        "mine"
    }

    fn select(&self, candidates: &CandidateSet<'_>, _ctx: &RequestContext<'_>) -> Option<usize> {
        candidates.len().checked_sub(1)
    }
}

#[test]
fn a_custom_strategy_is_used_through_a_route() {
    let mut strategies = switchyard_strategies::registry();
    strategies.register(Last);
    let mut builder = ProviderManager::builder().strategies(strategies).route(
        "m",
        RouteConfig {
            strategy: Some("mine".into()),
            ..Default::default()
        },
    );
    for id in ["a", "b", "c"] {
        builder = builder.provider_instance(config(id, &["m", "n"]), ScriptedProvider::shared(id));
    }
    let m = builder.build().unwrap();
    assert_eq!(count(&counts(&m, "m", 30), "c"), 30, "route strategy");
    let other = counts(&m, "n", 30);
    assert_eq!(
        (count(&other, "a"), count(&other, "b"), count(&other, "c")),
        (10, 10, 10),
        "other models keep the default round-robin"
    );
}

#[test]
fn an_unknown_route_strategy_is_a_config_error() {
    let error = ProviderManager::builder()
        .strategies(switchyard_strategies::registry())
        .route(
            "m",
            RouteConfig {
                strategy: Some("nope".into()),
                ..Default::default()
            },
        )
        .provider_instance(config("a", &["m"]), ScriptedProvider::shared("a"))
        .build()
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("nope") && text.contains("least_load"),
        "{text}"
    );
}
