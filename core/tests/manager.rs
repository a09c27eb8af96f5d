//! The manager's selection tiers, regions and dynamic provider API (SPEC §3, §4).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{builder_with, chat, config, drain, names};
use switchyard_core::testing::{ScriptedProvider, Step};
use switchyard_core::{
    AddOptions, EventKind, Health, Lifecycle, ManagerError, ProviderError, ProviderManager,
    RequestType, RouteConfig, SelectRequest,
};

fn pick(manager: &ProviderManager, model: &str) -> String {
    manager
        .get_best_provider_for_request(model, RequestType::Chat)
        .unwrap()
        .provider_id()
        .to_owned()
}

fn counts(manager: &ProviderManager, model: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(pick(manager, model)).or_default() += 1;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn unknown_models_and_request_types_are_errors() {
    let (builder, _) = builder_with(&[("a", &["m"])]);
    let manager = builder.build().unwrap();
    let err = manager
        .get_best_provider_for_request("nope", RequestType::Chat)
        .unwrap_err();
    assert!(matches!(err, ManagerError::UnknownModel { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "no provider serves model 'nope' for chat requests"
    );
    let empty = ProviderManager::builder().build().unwrap();
    assert!(matches!(
        empty.get_best_provider_for_request("m", RequestType::Chat),
        Err(ManagerError::NoProviders)
    ));
}

#[tokio::test(start_paused = true)]
async fn round_robin_is_fair_per_model() {
    let (builder, _) = builder_with(&[("a", &["x", "y"]), ("b", &["x"]), ("c", &["x", "y"])]);
    let manager = builder.build().unwrap();
    let mut x = BTreeMap::new();
    let mut y = BTreeMap::new();
    for _ in 0..300 {
        *x.entry(pick(&manager, "x")).or_insert(0) += 1;
        *y.entry(pick(&manager, "y")).or_insert(0) += 1;
    }
    assert_eq!(
        x,
        BTreeMap::from([("a".into(), 100), ("b".into(), 100), ("c".into(), 100)])
    );
    assert_eq!(y, BTreeMap::from([("a".into(), 150), ("c".into(), 150)]));
}

#[tokio::test(start_paused = true)]
async fn a_free_probe_permit_takes_the_next_request() {
    let (builder, _) = builder_with(&[("a", &["m"]), ("b", &["m"])]);
    let manager = builder.build().unwrap();
    let mut events = manager.events().subscribe();
    let now = manager.clock().now_ms();
    manager
        .deployment_state("b", "m")
        .unwrap()
        .open_circuit(now, Duration::from_secs(5));
    assert_eq!(
        counts(&manager, "m", 10),
        BTreeMap::from([("a".into(), 10)])
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    let probe = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    assert_eq!(probe.provider_id(), "b");
    assert!(probe.is_probe());
    // While the probe is out, nobody else gets b.
    assert_eq!(counts(&manager, "m", 5), BTreeMap::from([("a".into(), 5)]));
    assert!(names(&mut events).contains(&"circuit_half_open"));
    // An unused probe handle gives its permit back when dropped.
    drop(probe);
    let again = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    assert_eq!((again.provider_id(), again.is_probe()), ("b", true));
    // A successful probe closes the circuit.
    again
        .chat(chat("m"), &manager.call_context("m"))
        .await
        .unwrap();
    let events = drain(&mut events);
    assert!(common::has(
        &events,
        |k| matches!(k, EventKind::CircuitClosed { provider_id, .. } if provider_id == "b")
    ));
    assert_eq!(
        counts(&manager, "m", 4),
        BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
    );
}

#[tokio::test(start_paused = true)]
async fn healthy_deployments_come_before_degraded_ones() {
    let (builder, _) = builder_with(&[("a", &["m"]), ("b", &["m"]), ("c", &["m"])]);
    let manager = builder.build().unwrap();
    manager
        .deployment_state("a", "m")
        .unwrap()
        .set_health(Health::Degraded);
    manager
        .deployment_state("b", "m")
        .unwrap()
        .set_health(Health::Degraded);
    assert_eq!(counts(&manager, "m", 6), BTreeMap::from([("c".into(), 6)]));
    let now = manager.clock().now_ms();
    manager
        .deployment_state("c", "m")
        .unwrap()
        .start_cooldown(now, Duration::from_secs(60));
    assert_eq!(
        counts(&manager, "m", 6),
        BTreeMap::from([("a".into(), 3), ("b".into(), 3)])
    );
}

#[tokio::test(start_paused = true)]
async fn panic_mode_only_when_nothing_else_never_disabled_and_counted() {
    let (builder, scripts) = builder_with(&[("a", &["m"]), ("b", &["m"]), ("off", &["m"])]);
    let manager = builder.build().unwrap();
    let mut off = config("off", &["m"]);
    off.enabled = false;
    manager
        .update_provider_instance(off, scripts[2].clone())
        .await
        .unwrap();
    let now = manager.clock().now_ms();
    let a = manager.deployment_state("a", "m").unwrap();
    let b = manager.deployment_state("b", "m").unwrap();
    a.open_circuit(now, Duration::from_secs(60));
    b.start_cooldown(now, Duration::from_secs(60));
    assert_eq!(manager.metrics_snapshot().panic_selections, 0);
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let handle = manager
            .get_best_provider_for_request("m", RequestType::Chat)
            .unwrap();
        assert!(handle.is_panic());
        *seen.entry(handle.provider_id().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        BTreeMap::from([("a".into(), 10), ("b".into(), 10)]),
        "never the disabled one"
    );
    assert_eq!(manager.metrics_snapshot().panic_selections, 20);
    // Without panic mode (the failover loop's view) nothing is available.
    let mut request = SelectRequest::new("m", RequestType::Chat);
    request.allow_panic = false;
    match manager.select(&request) {
        Err(ManagerError::NoCapacity { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(60)));
        }
        other => panic!("{other:?}"),
    }
    // Once one recovers, panic mode stops.
    b.start_cooldown(now, Duration::ZERO);
    tokio::time::advance(Duration::from_secs(61)).await;
    let handle = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    assert!(!handle.is_panic() || handle.is_probe());
}

#[tokio::test(start_paused = true)]
async fn panic_mode_never_picks_a_disabled_deployment_even_alone() {
    let (builder, scripts) = builder_with(&[("only", &["m"])]);
    let manager = builder.build().unwrap();
    let mut off = config("only", &["m"]);
    off.enabled = false;
    manager
        .update_provider_instance(off, scripts[0].clone())
        .await
        .unwrap();
    assert!(matches!(
        manager.get_best_provider_for_request("m", RequestType::Chat),
        Err(ManagerError::NoCapacity { .. })
    ));
}

fn regional(id: &str, region: &str) -> switchyard_core::ProviderConfig {
    let mut c = config(id, &["m"]);
    c.region = Some(region.to_owned());
    c
}

#[tokio::test(start_paused = true)]
async fn region_preference_cross_region_failover_and_strict_routes() {
    let build = |strict: bool| {
        let mut options = switchyard_core::ManagerOptions::default();
        options.preferred_region = Some("us".into());
        let mut builder = ProviderManager::builder().options(options);
        for (id, region) in [("us1", "us"), ("us2", "us"), ("eu1", "eu")] {
            builder = builder.provider_instance(regional(id, region), ScriptedProvider::shared(id));
        }
        builder
            .route(
                "m",
                RouteConfig {
                    region_strict: strict,
                    ..RouteConfig::default()
                },
            )
            .build()
            .unwrap()
    };
    let manager = build(false);
    assert_eq!(
        counts(&manager, "m", 4),
        BTreeMap::from([("us1".into(), 2), ("us2".into(), 2)])
    );
    // A request may ask for its own region.
    let mut eu = SelectRequest::new("m", RequestType::Chat);
    eu.region = Some("eu");
    assert_eq!(manager.select(&eu).unwrap().provider_id(), "eu1");
    // When the preferred region cannot serve, cross-region failover.
    let now = manager.clock().now_ms();
    for id in ["us1", "us2"] {
        manager
            .deployment_state(id, "m")
            .unwrap()
            .open_circuit(now, Duration::from_secs(60));
    }
    let handle = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    assert_eq!((handle.provider_id(), handle.is_panic()), ("eu1", false));

    // region_strict never leaves the region, not even in panic mode.
    let strict = build(true);
    let now = strict.clock().now_ms();
    for id in ["us1", "us2"] {
        strict
            .deployment_state(id, "m")
            .unwrap()
            .open_circuit(now, Duration::from_secs(60));
    }
    for _ in 0..6 {
        let handle = strict
            .get_best_provider_for_request("m", RequestType::Chat)
            .unwrap();
        assert!(
            handle.provider_id().starts_with("us"),
            "{}",
            handle.provider_id()
        );
        assert!(handle.is_panic());
    }
}

#[tokio::test(start_paused = true)]
async fn output_limits_and_context_windows_filter_candidates() {
    let mut small = config("small", &["m"]);
    small.models.get_mut("m").unwrap().max_output_tokens = Some(100);
    small.models.get_mut("m").unwrap().context_window = Some(1_000);
    let manager = ProviderManager::builder()
        .provider_instance(small, ScriptedProvider::shared("s"))
        .provider_instance(config("big", &["m"]), ScriptedProvider::shared("b"))
        .build()
        .unwrap();
    let mut request = SelectRequest::new("m", RequestType::Chat);
    request.max_output_tokens = Some(500);
    for _ in 0..4 {
        assert_eq!(manager.select(&request).unwrap().provider_id(), "big");
    }
    request.max_output_tokens = Some(50);
    request.estimated_input_tokens = 2_000;
    for _ in 0..4 {
        assert_eq!(manager.select(&request).unwrap().provider_id(), "big");
    }
}

#[tokio::test(start_paused = true)]
async fn blue_green_split_follows_the_weights_exactly() {
    let (builder, _) = builder_with(&[("blue1", &["m"]), ("blue2", &["m"]), ("green", &["m"])]);
    let manager = builder
        .route(
            "m",
            RouteConfig {
                sets: BTreeMap::from([
                    ("blue".into(), vec!["blue1".into(), "blue2".into()]),
                    ("green".into(), vec!["green".into()]),
                ]),
                split: BTreeMap::from([("blue".into(), 90), ("green".into(), 10)]),
                ..RouteConfig::default()
            },
        )
        .build()
        .unwrap();
    let split = counts(&manager, "m", 1_000);
    assert_eq!(split["green"], 100);
    assert_eq!(split["blue1"] + split["blue2"], 900);
    let mut route = manager.route("m").unwrap();
    route.split = BTreeMap::from([("blue".into(), 0), ("green".into(), 100)]);
    manager.set_route("m", Some(route)).await.unwrap();
    assert_eq!(
        counts(&manager, "m", 100),
        BTreeMap::from([("green".into(), 100)])
    );
}

#[tokio::test(start_paused = true)]
async fn add_dynamic_provider_validate_only_changes_nothing() {
    let (builder, _) = builder_with(&[("a", &["m"])]);
    let manager = builder.build().unwrap();
    let mut events = manager.events().subscribe();
    let outcome = manager
        .add_provider_instance(
            config("b", &["m"]),
            ScriptedProvider::shared("b"),
            AddOptions {
                validate_only: true,
                health_check: false,
            },
        )
        .await
        .unwrap();
    assert!(outcome.success);
    assert_eq!(
        outcome.message,
        "provider 'b' is valid; nothing was changed"
    );
    assert_eq!(manager.provider_ids(), ["a"]);
    assert!(drain(&mut events).is_empty());
    assert_eq!(counts(&manager, "m", 3), BTreeMap::from([("a".into(), 3)]));
}

#[tokio::test(start_paused = true)]
async fn add_dynamic_provider_goes_live_with_events_in_order() {
    let (builder, _) = builder_with(&[("a", &["m"])]);
    let manager = builder.build().unwrap();
    let mut events = manager.events().subscribe();
    let script = ScriptedProvider::shared("b");
    let outcome = manager
        .add_provider_instance(
            config("b", &["m", "n"]),
            script.clone(),
            AddOptions {
                validate_only: false,
                health_check: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome.health, Some(Health::Healthy));
    assert_eq!(script.health_checks(), 1);
    assert_eq!(
        names(&mut events),
        [
            "provider_health_check",
            "provider_state_changed",
            "provider_state_changed",
            "provider_state_changed",
            "provider_state_changed",
            "provider_added",
            "dynamic_provider_added"
        ]
    );
    assert_eq!(
        counts(&manager, "m", 4),
        BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
    );
    assert_eq!(pick(&manager, "n"), "b");
    assert_eq!(
        manager.provider_state("b").unwrap().lifecycle(),
        Lifecycle::Active
    );
}

#[tokio::test(start_paused = true)]
async fn add_dynamic_provider_refuses_bad_input_and_changes_nothing() {
    let (builder, _) = builder_with(&[("a", &["m"])]);
    let manager = builder.build().unwrap();
    let mut events = manager.events().subscribe();
    let live = AddOptions::default();

    let duplicate = manager
        .add_provider_instance(config("a", &["m"]), ScriptedProvider::shared("x"), live)
        .await
        .unwrap_err();
    assert_eq!(
        duplicate,
        ManagerError::DuplicateProvider { id: "a".into() }
    );

    let mismatch = manager
        .add_dynamic_provider("x", config("y", &["m"]), live)
        .await
        .unwrap_err();
    assert_eq!(
        mismatch.to_string(),
        "provider id 'x' does not match config.id 'y'"
    );

    let mut invalid = config("c", &["m"]);
    invalid.base_url = Some("not-a-url".into());
    let err = manager
        .add_provider_instance(invalid, ScriptedProvider::shared("c"), live)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("provider.base_url: 'not-a-url' must start with http:// or https://"),
        "{err}"
    );

    // No factory: a config-only add names the type field.
    let err = manager
        .add_dynamic_provider("d", config("d", &["m"]), live)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("provider.type"), "{err}");

    let failing = ScriptedProvider::shared("e");
    failing.health_always(Err(ProviderError::Connect {
        message: "refused".into(),
    }));
    let err = manager
        .add_provider_instance(
            config("e", &["m"]),
            failing,
            AddOptions {
                validate_only: false,
                health_check: true,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "health check of provider 'e' failed: connect"
    );

    assert_eq!(manager.provider_ids(), ["a"]);
    assert_eq!(
        names(&mut events),
        ["provider_health_check"],
        "only the failed check was reported"
    );
}

#[tokio::test(start_paused = true)]
async fn update_while_a_call_is_in_flight_finishes_on_the_old_config() {
    let old = ScriptedProvider::shared("old reply");
    old.always(Step::slow(Duration::from_secs(2)));
    let manager = ProviderManager::builder()
        .provider_instance(config("p", &["m"]), old.clone())
        .build()
        .unwrap();
    let mut events = manager.events().subscribe();
    let handle = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    let ctx = manager.call_context("m");
    let in_flight = tokio::spawn(async move { handle.chat(chat("m"), &ctx).await });
    tokio::time::advance(Duration::from_millis(10)).await;
    tokio::task::yield_now().await;
    assert_eq!(manager.deployment_state("p", "m").unwrap().in_flight(), 1);

    let new = ScriptedProvider::shared("new reply");
    let mut updated = config("p", &["m"]);
    updated.weight = 7;
    let kept = manager
        .update_provider_instance(updated, new.clone())
        .await
        .unwrap();
    assert!(kept, "type, URL and key unchanged: state kept");
    // The in-flight call is still counted on the kept state.
    assert_eq!(manager.deployment_state("p", "m").unwrap().in_flight(), 1);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(
        response.choices[0].message.text_content().unwrap(),
        "old reply"
    );
    assert_eq!(manager.deployment_state("p", "m").unwrap().in_flight(), 0);

    let fresh = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    assert_eq!(fresh.config().weight, 7);
    let response = fresh
        .chat(chat("m"), &manager.call_context("m"))
        .await
        .unwrap();
    assert_eq!(
        response.choices[0].message.text_content().unwrap(),
        "new reply"
    );
    let events = drain(&mut events);
    assert!(
        matches!(&events[0].kind, EventKind::ProviderUpdated { provider_id, state_kept: true } if provider_id == "p")
    );

    // Changing the base URL resets state.
    let mut moved = config("p", &["m"]);
    moved.base_url = Some("http://127.0.0.1:9".into());
    manager
        .deployment_state("p", "m")
        .unwrap()
        .set_health(Health::Degraded);
    assert!(!manager.update_provider_instance(moved, new).await.unwrap());
    assert_eq!(
        manager.deployment_state("p", "m").unwrap().health(),
        Health::Healthy
    );
}

#[tokio::test(start_paused = true)]
async fn disabling_a_provider_stops_new_traffic_and_emits_its_lifecycle() {
    let (builder, scripts) = builder_with(&[("a", &["m"]), ("b", &["m"])]);
    let manager = builder.build().unwrap();
    let mut events = manager.events().subscribe();
    let mut off = config("b", &["m"]);
    off.enabled = false;
    manager
        .update_provider_instance(off, scripts[1].clone())
        .await
        .unwrap();
    assert_eq!(counts(&manager, "m", 6), BTreeMap::from([("a".into(), 6)]));
    let events = drain(&mut events);
    assert!(matches!(
        &events[1].kind,
        EventKind::ProviderStateChanged {
            from: Lifecycle::Active,
            to: Lifecycle::Disabled,
            ..
        }
    ));
    let stats = manager.get_provider_load_stats();
    assert_eq!(
        stats.iter().find(|r| r.provider_id == "b").unwrap().health,
        Health::Disabled
    );
}

#[tokio::test(start_paused = true)]
async fn remove_while_handles_are_held() {
    let (builder, _) = builder_with(&[("a", &["m"]), ("b", &["m"])]);
    let manager = builder.build().unwrap();
    let mut events = manager.events().subscribe();
    let held = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    assert_eq!(held.provider_id(), "a");
    manager.remove_provider("a").await.unwrap();
    assert_eq!(manager.provider_ids(), ["b"]);
    assert_eq!(counts(&manager, "m", 5), BTreeMap::from([("b".into(), 5)]));
    // The held handle still works on the removed provider.
    let response = held
        .chat(chat("m"), &manager.call_context("m"))
        .await
        .unwrap();
    assert_eq!(
        response.choices[0].message.text_content().unwrap(),
        "from a"
    );
    assert_eq!(
        names(&mut events),
        ["provider_state_changed", "provider_removed"]
    );
    assert_eq!(
        manager.remove_provider("a").await.unwrap_err(),
        ManagerError::UnknownProvider { id: "a".into() }
    );
}

#[tokio::test(start_paused = true)]
async fn reset_clears_state_runs_one_check_and_reports_it() {
    let (builder, scripts) = builder_with(&[("a", &["m", "n"])]);
    let manager = builder.build().unwrap();
    let now = manager.clock().now_ms();
    let m = manager.deployment_state("a", "m").unwrap();
    let n = manager.deployment_state("a", "n").unwrap();
    m.open_circuit(now, Duration::from_secs(60));
    n.start_cooldown(now, Duration::from_secs(60));
    n.record_breaker_failure();
    let mut events = manager.events().subscribe();
    assert_eq!(manager.reset_provider("a").await.unwrap(), Health::Healthy);
    assert_eq!(scripts[0].health_checks(), 1);
    assert!(!n.in_cooldown(now + 1) && n.consecutive_failures() == 0);
    assert_eq!(m.circuit(), switchyard_core::CircuitState::Closed);
    assert_eq!(m.ejections(), 0);
    let events = drain(&mut events);
    assert!(matches!(
        events.last().unwrap().kind,
        EventKind::ProviderReset {
            health: Health::Healthy,
            ..
        }
    ));

    // A failing check leaves the provider unhealthy provider-wide.
    scripts[0].health_always(Err(ProviderError::Connect {
        message: "down".into(),
    }));
    assert_eq!(
        manager.reset_provider("a").await.unwrap(),
        Health::Unhealthy
    );
    let mut request = SelectRequest::new("m", RequestType::Chat);
    request.allow_panic = false;
    assert!(manager.select(&request).is_err());
    // health_check = "none": no check, healthy.
    let mut passive = config("a", &["m", "n"]);
    passive.health_check =
        switchyard_core::HealthCheckMode::Named(switchyard_core::config::NamedHealthCheck::None);
    manager
        .update_provider_instance(passive, scripts[0].clone())
        .await
        .unwrap();
    assert_eq!(manager.reset_provider("a").await.unwrap(), Health::Healthy);
    assert_eq!(scripts[0].health_checks(), 2);
}

#[tokio::test(start_paused = true)]
async fn wildcard_providers_serve_any_name_with_it_upstream() {
    let (builder, scripts) = builder_with(&[("star", &["*"]), ("named", &["gpt-x"])]);
    let manager = builder.build().unwrap();
    let handle = manager
        .get_best_provider_for_request("whatever-7b", RequestType::Chat)
        .unwrap();
    assert_eq!(
        (
            handle.provider_id(),
            handle.model(),
            handle.upstream_model()
        ),
        ("star", "whatever-7b", "whatever-7b")
    );
    handle
        .chat(chat("whatever-7b"), &manager.call_context("whatever-7b"))
        .await
        .unwrap();
    assert_eq!(scripts[0].calls()[0].model, "whatever-7b");
    assert_eq!(
        counts(&manager, "gpt-x", 4),
        BTreeMap::from([("named".into(), 2), ("star".into(), 2)])
    );
}

#[tokio::test(start_paused = true)]
async fn upstream_names_are_sent_upstream() {
    let mut mapped = config("p", &["friendly"]);
    mapped.models.get_mut("friendly").unwrap().upstream_name = Some("vendor/model-v2".into());
    let script = ScriptedProvider::shared("x");
    let manager = ProviderManager::builder()
        .provider_instance(mapped, script.clone())
        .build()
        .unwrap();
    let handle = manager
        .get_best_provider_for_request("friendly", RequestType::Chat)
        .unwrap();
    handle
        .chat(chat("friendly"), &manager.call_context("friendly"))
        .await
        .unwrap();
    assert_eq!(script.calls()[0].model, "vendor/model-v2");
}

#[tokio::test(start_paused = true)]
async fn build_reports_every_config_issue_with_its_path() {
    let mut bad = config("b", &["m"]);
    bad.rpm_limit = Some(0);
    let err = ProviderManager::builder()
        .provider_instance(config("a", &["m"]), ScriptedProvider::shared("a"))
        .provider_instance(bad, ScriptedProvider::shared("b"))
        .route(
            "m",
            RouteConfig {
                strategy: Some("nope".into()),
                ..RouteConfig::default()
            },
        )
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("providers[1].rpm_limit: must be at least 1 when set"),
        "{err}"
    );
    let err = ProviderManager::builder()
        .provider_instance(config("a", &["m"]), ScriptedProvider::shared("a"))
        .route(
            "m",
            RouteConfig {
                strategy: Some("nope".into()),
                ..RouteConfig::default()
            },
        )
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: routes.\"m\".strategy: unknown strategy 'nope' (known: round_robin)"
    );
    assert_eq!(err.severity(), switchyard_core::Severity::Critical);
}

mod consistency {
    //! Random sequences of registry changes keep the index consistent.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Add(u8, Vec<u8>, bool),
        Update(u8, Vec<u8>, bool),
        Remove(u8),
        Select(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let models = proptest::collection::vec(0u8..4, 1..3);
        prop_oneof![
            (0u8..5, models.clone(), any::<bool>()).prop_map(|(p, m, e)| Op::Add(p, m, e)),
            (0u8..5, models, any::<bool>()).prop_map(|(p, m, e)| Op::Update(p, m, e)),
            (0u8..5).prop_map(Op::Remove),
            (0u8..4).prop_map(Op::Select),
        ]
    }

    fn provider_config(p: u8, models: &[u8], enabled: bool) -> switchyard_core::ProviderConfig {
        let names: Vec<String> = models.iter().map(|m| format!("m{m}")).collect();
        let mut c = switchyard_core::ProviderConfig::new(format!("p{p}"), "mock", names);
        c.enabled = enabled;
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn index_matches_registry_and_never_selects_disabled_or_removed(ops in proptest::collection::vec(op(), 1..40)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            runtime.block_on(async move {
                let manager = ProviderManager::builder().build().unwrap();
                // The model: provider id -> (models, enabled).
                let mut model: HashMap<String, (Vec<String>, bool)> = HashMap::new();
                for op in ops {
                    match op {
                        Op::Add(p, models, enabled) => {
                            let c = provider_config(p, &models, enabled);
                            let result = manager
                                .add_provider_instance(c.clone(), ScriptedProvider::shared("x"), AddOptions::default())
                                .await;
                            let exists = model.contains_key(&c.id);
                            prop_assert_eq!(result.is_ok(), !exists);
                            if !exists {
                                model.insert(c.id.clone(), (c.models.keys().cloned().collect(), enabled));
                            }
                        }
                        Op::Update(p, models, enabled) => {
                            let c = provider_config(p, &models, enabled);
                            let result = manager.update_provider_instance(c.clone(), ScriptedProvider::shared("x")).await;
                            prop_assert_eq!(result.is_ok(), model.contains_key(&c.id));
                            if let Some(entry) = model.get_mut(&c.id) {
                                *entry = (c.models.keys().cloned().collect(), enabled);
                            }
                        }
                        Op::Remove(p) => {
                            let id = format!("p{p}");
                            prop_assert_eq!(manager.remove_provider(&id).await.is_ok(), model.remove(&id).is_some());
                        }
                        Op::Select(m) => {
                            let name = format!("m{m}");
                            let serving: Vec<&String> = model
                                .iter()
                                .filter(|(_, (models, enabled))| *enabled && models.contains(&name))
                                .map(|(id, _)| id)
                                .collect();
                            match manager.get_best_provider_for_request(&name, RequestType::Chat) {
                                Ok(handle) => prop_assert!(serving.iter().any(|id| *id == handle.provider_id())),
                                Err(_) => prop_assert!(serving.is_empty()),
                            }
                        }
                    }
                    let mut ids = manager.provider_ids();
                    ids.sort();
                    let mut expected: Vec<String> = model.keys().cloned().collect();
                    expected.sort();
                    prop_assert_eq!(ids, expected);
                    let mut served: Vec<String> = model.values().flat_map(|(m, _)| m.clone()).collect();
                    served.sort();
                    served.dedup();
                    prop_assert_eq!(manager.models(), served);
                }
                Ok(())
            })?;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn load_stats_match_hand_computed_numbers() {
    let mut capped = config("capped", &["m"]);
    capped.max_concurrency = Some(4);
    capped.rpm_limit = Some(10);
    let mut options = switchyard_core::ManagerOptions::default();
    options.provider_timeout = Duration::from_secs(10);
    let manager = ProviderManager::builder()
        .options(options)
        .provider_instance(capped, ScriptedProvider::shared("c"))
        .provider_instance(config("free", &["m"]), ScriptedProvider::shared("f"))
        .build()
        .unwrap();
    let c = manager.deployment_state("capped", "m").unwrap();
    c.set_latency(Duration::from_secs(2));
    manager
        .deployment_state("free", "m")
        .unwrap()
        .set_latency(Duration::from_secs(5));
    // Three calls in flight on "capped": utilization max(3/4, 3/10) = 0.75.
    let handle = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    assert_eq!(handle.provider_id(), "capped");
    let guards: Vec<_> = (0..3).map(|_| handle.begin()).collect();
    let stats = manager.get_provider_load_stats();
    // free: 100 * (0.7*0 + 0.3*min(1, 5/10)) = 15; capped: 100 * (0.7*0.75 + 0.3*0.2) = 58.5
    assert_eq!(stats[0].provider_id, "free");
    assert!((stats[0].load - 15.0).abs() < 1e-6, "{}", stats[0].load);
    assert_eq!(stats[1].provider_id, "capped");
    assert!((stats[1].load - 58.5).abs() < 1e-6, "{}", stats[1].load);
    assert_eq!((stats[1].in_flight, stats[1].requests_per_minute), (3, 3));
    assert!(
        (stats[1].average_response_time_ms - 0.0).abs() < 1e-9,
        "no completed call yet"
    );
    for guard in guards {
        guard.succeed();
    }
    let stats = manager.get_provider_load_stats();
    let capped = stats.iter().find(|r| r.provider_id == "capped").unwrap();
    assert_eq!((capped.in_flight, capped.success_rate), (0, 1.0));
    // At full concurrency the provider is filtered out, so "free" takes traffic.
    let held: Vec<_> = (0..4).map(|_| handle.begin()).collect();
    assert_eq!(
        counts(&manager, "m", 3),
        BTreeMap::from([("free".into(), 3)])
    );
    drop(held);
    let _ = Arc::new(());
}

#[tokio::test(start_paused = true)]
async fn changes_that_would_leave_a_route_dangling_are_refused_and_route_changes_are_events() {
    let (builder, scripts) = builder_with(&[("a", &["m"]), ("b", &["fb"])]);
    let manager = builder
        .route(
            "m",
            RouteConfig {
                fallbacks: vec!["fb".into()],
                ..RouteConfig::default()
            },
        )
        .build()
        .unwrap();
    let err = manager.remove_provider("b").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("routes.\"m\".fallbacks: no provider serves fallback model 'fb'"),
        "{err}"
    );
    let err = manager
        .update_provider_instance(config("b", &["other"]), scripts[1].clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::Config(_)), "{err}");
    assert_eq!(manager.provider_ids(), ["a", "b"], "nothing changed");
    let mut events = manager.events().subscribe();
    manager.set_route("m", None).await.unwrap();
    manager.remove_provider("b").await.unwrap();
    let events = drain(&mut events);
    assert!(
        matches!(&events[0].kind, EventKind::RouteUpdated { model, removed: true } if model == "m")
    );
}
