//! Health, circuits, cooldowns and the failover loop on paused time (SPEC §5, §6).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{chat, config, drain};
use futures_util::StreamExt;
use switchyard_core::testing::{ScriptedProvider, Step, StreamShape};
use switchyard_core::{
    CircuitState, EventKind, FailoverOptions, Health, ManagerError, ManagerOptions, ProviderError,
    ProviderManager, RequestType, RouteConfig, SelectRequest, UpstreamError,
};
use tokio::time::Instant;

fn options() -> ManagerOptions {
    ManagerOptions::default()
}

fn manager_with(
    opts: ManagerOptions,
    providers: &[(&str, &[&str], Arc<ScriptedProvider>)],
) -> ProviderManager {
    let mut builder = ProviderManager::builder().options(opts);
    for (id, models, script) in providers {
        builder = builder.provider_instance(config(id, models), script.clone());
    }
    builder.build().unwrap()
}

fn err503() -> ProviderError {
    ProviderError::upstream(503, "unavailable", None, None)
}

fn err429(after: Option<u64>) -> ProviderError {
    ProviderError::Upstream(Box::new(
        UpstreamError::from_status(429, "slow down", Some("rate_limit_error".into()), None)
            .with_retry_after(after.map(Duration::from_secs)),
    ))
}

/// Runs one chat request through failover.
async fn run(
    manager: &ProviderManager,
    model: &str,
) -> Result<switchyard_core::FailoverResult<String>, ManagerError> {
    manager
        .execute_with_failover(FailoverOptions::new(model, RequestType::Chat), |attempt| {
            let mut request = chat(&attempt.upstream_model);
            request.model = attempt.upstream_model.to_string();
            async move {
                let response = attempt.provider.chat(request, &attempt.ctx).await?;
                Ok(response.choices[0]
                    .message
                    .text_content()
                    .unwrap_or_default())
            }
        })
        .await
}

fn strict_select(manager: &ProviderManager, model: &str) -> Option<String> {
    let mut request = SelectRequest::new(model, RequestType::Chat);
    request.allow_panic = false;
    manager
        .select(&request)
        .ok()
        .map(|h| h.provider_id().to_owned())
}

#[tokio::test(start_paused = true)]
async fn model_a_failing_leaves_model_b_serving_but_connect_errors_eject_both() {
    let p = ScriptedProvider::shared("from p");
    p.always_for("a", Step::fail(err503()));
    let manager = manager_with(options(), &[("p", &["a", "b"], p.clone())]);
    for _ in 0..3 {
        assert!(run(&manager, "a").await.is_err());
    }
    let a = manager.deployment_state("p", "a").unwrap();
    let b = manager.deployment_state("p", "b").unwrap();
    assert_eq!(a.circuit(), CircuitState::Open);
    assert_eq!(b.circuit(), CircuitState::Closed);
    assert_eq!(run(&manager, "b").await.unwrap().result, "from p");

    // Connection refused is provider-wide: it counts against every model.
    let q = ScriptedProvider::shared("from q");
    q.always(Step::fail(ProviderError::Connect {
        message: "refused".into(),
    }));
    let manager = manager_with(options(), &[("q", &["a", "b"], q.clone())]);
    for _ in 0..3 {
        assert!(run(&manager, "a").await.is_err());
    }
    assert_eq!(
        manager.deployment_state("q", "a").unwrap().circuit(),
        CircuitState::Open
    );
    assert_eq!(
        manager.deployment_state("q", "b").unwrap().circuit(),
        CircuitState::Open
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_provider_is_ejected_after_max_consecutive_timeouts_and_never_retried() {
    let silent = ScriptedProvider::shared("never");
    silent.always(Step::Hang);
    let mut opts = options();
    opts.provider_timeout = Duration::from_secs(2);
    let manager = manager_with(opts, &[("silent", &["m"], silent.clone())]);
    let mut events = manager.events().subscribe();
    for i in 1..=3 {
        let started = Instant::now();
        let err = run(&manager, "m").await.unwrap_err();
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "one attempt per request"
        );
        match err {
            ManagerError::Exhausted { trail, .. } => {
                assert_eq!(trail.len(), 1);
                assert_eq!(trail[0].outcome, "timeout_response");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(silent.generation_calls(), i);
    }
    let events = drain(&mut events);
    let opened: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::CircuitOpened { .. }))
        .collect();
    assert_eq!(opened.len(), 1);
    assert_eq!(
        manager.deployment_state("silent", "m").unwrap().circuit(),
        CircuitState::Open
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limits_cool_down_exactly_and_never_open_a_circuit() {
    let limited = ScriptedProvider::shared("x");
    let manager = manager_with(
        options(),
        &[
            ("p", &["m"], limited.clone()),
            ("q", &["m"], ScriptedProvider::shared("q")),
        ],
    );
    let handle = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    assert_eq!(handle.provider_id(), "p");
    let state = manager.deployment_state("p", "m").unwrap();
    let t0 = manager.clock().now_ms();
    handle.begin().fail(&err429(Some(7)));
    assert_eq!(state.cooldown_until_ms(), t0 + 7_000);
    // More 429s never open the circuit; a shorter Retry-After never shortens.
    for _ in 0..10 {
        handle.begin().fail(&err429(Some(1)));
    }
    assert_eq!(state.circuit(), CircuitState::Closed);
    assert_eq!(state.cooldown_until_ms(), t0 + 7_000);
    handle.begin().fail(&err429(Some(9)));
    assert_eq!(
        state.cooldown_until_ms(),
        t0 + 9_000,
        "a longer one extends"
    );
    assert_eq!(strict_select(&manager, "m").as_deref(), Some("q"));
    tokio::time::advance(Duration::from_millis(8_999)).await;
    assert_eq!(strict_select(&manager, "m").as_deref(), Some("q"));
    tokio::time::advance(Duration::from_millis(1)).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2 {
        seen.insert(strict_select(&manager, "m").unwrap());
    }
    assert!(seen.contains("p"), "back after exactly 9 s");
    // Without Retry-After: 1 s, then doubling while it keeps happening.
    let fresh = manager.deployment_state("q", "m").unwrap();
    let q = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    let q = if q.provider_id() == "q" {
        q
    } else {
        manager
            .get_best_provider_for_request("m", RequestType::Chat)
            .unwrap()
    };
    assert_eq!(q.provider_id(), "q");
    let t1 = manager.clock().now_ms();
    q.begin().fail(&err429(None));
    assert_eq!(fresh.cooldown_until_ms(), t1 + 1_000);
    q.begin().fail(&err429(None));
    assert_eq!(fresh.cooldown_until_ms(), t1 + 2_000);
}

#[tokio::test(start_paused = true)]
async fn the_circuit_cycle_with_exact_timings_and_events() {
    let p = ScriptedProvider::shared("from p");
    p.always(Step::fail(err503()));
    let manager = manager_with(options(), &[("p", &["m"], p.clone())]);
    let state = manager.deployment_state("p", "m").unwrap();
    let mut events = manager.events().subscribe();
    let opened_at = Instant::now();
    for _ in 0..3 {
        run(&manager, "m").await.unwrap_err();
    }
    assert_eq!(state.circuit(), CircuitState::Open);
    let ejections = |events: &[switchyard_core::ProviderEvent]| -> Vec<u128> {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::CircuitOpened { ejection, .. } => Some(ejection.as_millis()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(ejections(&drain(&mut events)), [5_000]);
    // Closed to new traffic for exactly 5 s.
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(strict_select(&manager, "m"), None);
    tokio::time::advance(Duration::from_millis(1)).await;
    // The probe fails: open again for 10 s (doubled), then 10 s (the cap).
    run(&manager, "m").await.unwrap_err();
    let after_first_probe = drain(&mut events);
    let names: Vec<_> = after_first_probe.iter().map(|e| e.kind.name()).collect();
    assert!(
        names.starts_with(&["circuit_half_open", "provider_request_failed"])
            || names.contains(&"circuit_half_open"),
        "{names:?}"
    );
    assert_eq!(ejections(&after_first_probe), [10_000]);
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(strict_select(&manager, "m"), None);
    tokio::time::advance(Duration::from_millis(1)).await;
    run(&manager, "m").await.unwrap_err();
    assert_eq!(ejections(&drain(&mut events)), [10_000]);
    // Recovery: the next probe succeeds and closes the circuit.
    p.always(Step::ok());
    tokio::time::advance(Duration::from_secs(10)).await;
    let served = run(&manager, "m").await.unwrap();
    assert_eq!(served.result, "from p");
    assert_eq!(state.circuit(), CircuitState::Closed);
    let closed: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::CircuitClosed { recovery, .. } => Some(recovery),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [opened_at.elapsed()]);
    assert_eq!(closed[0], Duration::from_secs(25));
    let snapshot = manager.metrics_snapshot();
    assert_eq!(snapshot.recoveries, 1);
    assert!((snapshot.average_recovery_time_ms - 25_000.0).abs() < 1e-6);
}

#[tokio::test(start_paused = true)]
async fn ejection_lengths_are_configurable() {
    let p = ScriptedProvider::shared("p");
    p.always(Step::fail(err503()));
    let mut opts = options();
    opts.base_ejection = Duration::from_secs(2);
    opts.max_ejection = Duration::from_secs(3);
    opts.max_consecutive_failures = 1;
    let manager = manager_with(opts, &[("p", &["m"], p)]);
    let mut events = manager.events().subscribe();
    run(&manager, "m").await.unwrap_err();
    for wait in [2, 3, 3] {
        tokio::time::advance(Duration::from_secs(wait)).await;
        run(&manager, "m").await.unwrap_err();
    }
    let lengths: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::CircuitOpened { ejection, .. } => Some(ejection.as_secs()),
            _ => None,
        })
        .collect();
    assert_eq!(lengths, [2, 3, 3, 3]);
}

#[tokio::test(start_paused = true)]
async fn one_probe_under_concurrent_requests() {
    let p = ScriptedProvider::shared("from p");
    let fallback = ScriptedProvider::shared("from f");
    let manager = manager_with(
        options(),
        &[("p", &["m"], p.clone()), ("f", &["m"], fallback.clone())],
    );
    let now = manager.clock().now_ms();
    manager
        .deployment_state("p", "m")
        .unwrap()
        .open_circuit(now, Duration::from_secs(5));
    tokio::time::advance(Duration::from_secs(5)).await;
    p.always(Step::slow(Duration::from_secs(1)));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { run(&manager, "m").await.unwrap().provider_id })
        })
        .collect();
    let mut served = Vec::new();
    for task in tasks {
        served.push(task.await.unwrap());
    }
    assert_eq!(
        served.iter().filter(|p| &***p == "p").count(),
        1,
        "{served:?}"
    );
    assert_eq!(p.generation_calls(), 1);
    assert_eq!(fallback.generation_calls(), 9);
    assert_eq!(
        manager.deployment_state("p", "m").unwrap().circuit(),
        CircuitState::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn passing_active_checks_never_close_a_deployment_circuit() {
    let p = ScriptedProvider::shared("p");
    let manager = manager_with(options(), &[("p", &["m"], p.clone())]);
    let state = manager.deployment_state("p", "m").unwrap();
    let now = manager.clock().now_ms();
    state.open_circuit(now, Duration::from_secs(60));
    manager.run_health_checks_once().await;
    assert_eq!(p.health_checks(), 1);
    assert_eq!(state.circuit(), CircuitState::Open);
    assert!(!state.probe_available(manager.clock().now_ms()));

    // A provider-wide fault (failed checks) then a passing check: recovery
    // time measured, and with auto-recovery the ejected deployment is
    // re-admitted to half-open (a probe), still not closed.
    p.health_always(Err(ProviderError::Connect {
        message: "down".into(),
    }));
    manager.run_health_checks_once().await;
    assert_eq!(
        manager.provider_state("p").unwrap().health(),
        Health::Unhealthy
    );
    tokio::time::advance(Duration::from_secs(7)).await;
    p.health_always(Ok(()));
    let mut events = manager.events().subscribe();
    manager.run_health_checks_once().await;
    assert_eq!(
        manager.provider_state("p").unwrap().health(),
        Health::Healthy
    );
    assert_eq!(state.circuit(), CircuitState::Open);
    assert!(state.probe_available(manager.clock().now_ms()));
    let events = drain(&mut events);
    assert!(common::has(&events, |k| matches!(
        k,
        EventKind::ProviderHealthChanged {
            model: None,
            to: Health::Healthy,
            ..
        }
    )));
    let snapshot = manager.metrics_snapshot();
    assert_eq!(
        (snapshot.health_checks_run, snapshot.health_checks_failed),
        (3, 1)
    );
    assert_eq!(snapshot.recoveries, 1);
    assert!((snapshot.average_recovery_time_ms - 7_000.0).abs() < 1e-6);
}

#[tokio::test(start_paused = true)]
async fn the_health_checker_runs_on_its_interval() {
    let p = ScriptedProvider::shared("p");
    let mut opts = options();
    opts.health_check_interval = Duration::from_secs(10);
    let manager = manager_with(opts, &[("p", &["m"], p.clone())]);
    let checker = manager.start_health_checker();
    tokio::time::sleep(Duration::from_secs(35)).await;
    let checks = p.health_checks();
    assert!(
        (3..=4).contains(&checks),
        "{checks} checks in 35 s at 10 s ± 10 %"
    );
    drop(checker);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(p.health_checks(), checks, "stopped when dropped");
}

#[tokio::test(start_paused = true)]
async fn a_transient_error_is_retried_once_on_the_same_deployment() {
    let p = ScriptedProvider::shared("from p");
    p.then(Step::fail(ProviderError::upstream(500, "oops", None, None)));
    let q = ScriptedProvider::shared("from q");
    let manager = manager_with(
        options(),
        &[("p", &["m"], p.clone()), ("q", &["m"], q.clone())],
    );
    let result = run(&manager, "m").await.unwrap();
    assert_eq!((&*result.provider_id, result.attempts), ("p", 2));
    assert_eq!((p.generation_calls(), q.generation_calls()), (2, 0));
    assert_eq!(
        result.trail.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        ["server_error", "ok"]
    );
    // Twice in a row: retried once, then switched.
    let p = ScriptedProvider::shared("from p");
    p.always(Step::fail(ProviderError::upstream(502, "oops", None, None)));
    let q = ScriptedProvider::shared("from q");
    let manager = manager_with(
        options(),
        &[("p", &["m"], p.clone()), ("q", &["m"], q.clone())],
    );
    let result = run(&manager, "m").await.unwrap();
    assert_eq!((&*result.provider_id, result.attempts), ("q", 3));
    assert_eq!((p.generation_calls(), q.generation_calls()), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn bad_requests_are_never_retried_and_content_filters_never_fall_back() {
    let p = ScriptedProvider::shared("p");
    let f = ScriptedProvider::shared("f");
    let manager = ProviderManager::builder()
        .provider_instance(config("p", &["m"]), p.clone())
        .provider_instance(config("f", &["fb"]), f.clone())
        .route(
            "m",
            RouteConfig {
                fallbacks: vec!["fb".into()],
                ..RouteConfig::default()
            },
        )
        .build()
        .unwrap();
    p.then(Step::fail(ProviderError::upstream(
        400,
        "bad field",
        Some("invalid_request_error".into()),
        None,
    )));
    match run(&manager, "m").await.unwrap_err() {
        ManagerError::Rejected {
            error,
            provider_id,
            trail,
        } => {
            assert_eq!(
                (error.status, error.message.as_str(), provider_id.as_str()),
                (400, "bad field", "p")
            );
            assert_eq!(trail.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    p.then(Step::fail(ProviderError::upstream(
        400,
        "flagged by policy",
        None,
        Some("content_filter".into()),
    )));
    match run(&manager, "m").await.unwrap_err() {
        ManagerError::Rejected { error, trail, .. } => {
            assert_eq!(error.message, "flagged by policy");
            assert_eq!(trail.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((p.generation_calls(), f.generation_calls()), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn context_length_takes_one_attempt_then_the_context_window_fallback() {
    let p = ScriptedProvider::shared("p");
    let p2 = ScriptedProvider::shared("p2");
    let big = ScriptedProvider::shared("from big");
    let general = ScriptedProvider::shared("from general");
    let too_long = ProviderError::upstream(
        400,
        "too long",
        None,
        Some("context_length_exceeded".into()),
    );
    p.always(Step::fail(too_long.clone()));
    p2.always(Step::fail(too_long));
    let manager = ProviderManager::builder()
        .provider_instance(config("p", &["m"]), p.clone())
        .provider_instance(config("p2", &["m"]), p2.clone())
        .provider_instance(config("big", &["m-long"]), big.clone())
        .provider_instance(config("general", &["m-mini"]), general.clone())
        .route(
            "m",
            RouteConfig {
                fallbacks: vec!["m-mini".into()],
                context_window_fallbacks: vec!["m-long".into()],
                ..RouteConfig::default()
            },
        )
        .build()
        .unwrap();
    let result = run(&manager, "m").await.unwrap();
    assert_eq!(
        (&*result.model, result.result.as_str(), result.attempts),
        ("m-long", "from big", 2)
    );
    assert_eq!(
        p.generation_calls() + p2.generation_calls(),
        1,
        "exactly one attempt on the model"
    );
    assert_eq!(general.generation_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn fallbacks_answer_when_the_model_is_exhausted_and_the_trail_is_kept() {
    let p = ScriptedProvider::shared("p");
    p.always(Step::fail(err503()));
    let f = ScriptedProvider::shared("from fallback");
    let manager = ProviderManager::builder()
        .provider_instance(config("p", &["m"]), p.clone())
        .provider_instance(config("f", &["fb"]), f.clone())
        .route(
            "m",
            RouteConfig {
                fallbacks: vec!["fb".into()],
                ..RouteConfig::default()
            },
        )
        .build()
        .unwrap();
    let mut events = manager.events().subscribe();
    let result = run(&manager, "m").await.unwrap();
    assert_eq!(
        (&*result.provider_id, &*result.model, result.attempts),
        ("f", "fb", 2)
    );
    assert_eq!(result.result, "from fallback");
    assert_eq!(
        f.calls()[0].model,
        "fb",
        "the op used the fallback's upstream name"
    );
    let names: Vec<_> = drain(&mut events).iter().map(|e| e.kind.name()).collect();
    assert!(
        names.contains(&"provider_request_failed") && names.contains(&"provider_switch"),
        "{names:?}"
    );
    assert_eq!(manager.metrics_snapshot().provider_switches, 1);

    f.always(Step::fail(err503()));
    match run(&manager, "m").await.unwrap_err() {
        ManagerError::Exhausted { trail, .. } => {
            let seen: Vec<_> = trail.iter().map(|a| (a.deployment(), a.outcome)).collect();
            assert_eq!(
                seen,
                [
                    ("p/m".to_owned(), "unavailable"),
                    ("f/fb".to_owned(), "unavailable")
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_only_deployment_is_waited_for_within_the_cap() {
    let p = ScriptedProvider::shared("from p");
    p.then(Step::fail(err429(Some(2))));
    let manager = manager_with(options(), &[("p", &["m"], p.clone())]);
    let started = Instant::now();
    let result = run(&manager, "m").await.unwrap();
    assert_eq!((&*result.provider_id, result.attempts), ("p", 2));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let calls = p.calls();
    assert_eq!(calls[1].at - calls[0].at, Duration::from_secs(2));

    // Beyond the cap: no wait, straight to the error.
    p.then(Step::fail(err429(Some(60))));
    let started = Instant::now();
    match run(&manager, "m").await.unwrap_err() {
        ManagerError::Exhausted { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(60)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn rate_limits_without_retry_after_back_off_then_fall_back() {
    let p = ScriptedProvider::shared("p");
    p.always(Step::fail(err429(None)));
    let f = ScriptedProvider::shared("from fallback");
    let manager = ProviderManager::builder()
        .provider_instance(config("p", &["m"]), p.clone())
        .provider_instance(config("f", &["fb"]), f.clone())
        .route(
            "m",
            RouteConfig {
                fallbacks: vec!["fb".into()],
                ..RouteConfig::default()
            },
        )
        .build()
        .unwrap();
    let started = Instant::now();
    let result = run(&manager, "m").await.unwrap();
    assert_eq!(&*result.provider_id, "f");
    let calls = p.calls();
    assert_eq!(calls.len(), 4, "1 + max_retries attempts on the primary");
    let within_3s = calls
        .iter()
        .filter(|c| c.at - started <= Duration::from_secs(3))
        .count();
    assert!(within_3s <= 4);
    let gaps: Vec<_> = calls
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs())
        .collect();
    assert_eq!(gaps, [1, 2, 4], "cooldowns double without Retry-After");
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_retries_but_the_budget_stops_a_storm() {
    let mut opts = options();
    opts.max_consecutive_failures = 1_000;
    opts.max_retries = 9;
    opts.retry_budget.min_per_sec = 1;
    opts.retry_budget.ratio = 0.2;
    let scripts: Vec<_> = (0..10)
        .map(|_| {
            let s = ScriptedProvider::shared("x");
            s.always(Step::fail(err503()));
            s
        })
        .collect();
    let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let mut builder = ProviderManager::builder().options(opts);
    for (id, script) in ids.iter().zip(&scripts) {
        builder = builder.provider_instance(config(id, &["m"]), script.clone());
    }
    let manager = builder.build().unwrap();
    let attempts = |manager: &ProviderManager| {
        let m = manager.clone();
        async move {
            match run(&m, "m").await.unwrap_err() {
                ManagerError::Exhausted { trail, .. } => trail.len(),
                other => panic!("{other:?}"),
            }
        }
    };
    // A cold start retries: the floor (1/s over 10 s) allows 10 retries.
    assert_eq!(attempts(&manager).await, 10);
    let mut per_request = Vec::new();
    for _ in 0..19 {
        per_request.push(attempts(&manager).await);
    }
    let total: usize = 10 + per_request.iter().sum::<usize>();
    let calls: usize = scripts.iter().map(|s| s.generation_calls()).sum();
    assert_eq!(total, calls);
    // Request k may retry while withdrawals < 10 (floor) + 0.2 k: after the
    // cold start spent 9, retries come only as the 20 % ratio allows.
    assert_eq!(
        per_request,
        [3, 1, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    );
    assert_eq!(total, 20 + 14, "20 requests, 14 retries: not 200 attempts");
}

#[tokio::test(start_paused = true)]
async fn the_overall_deadline_is_honoured() {
    let p = ScriptedProvider::shared("p");
    p.always(Step::Hang);
    let manager = manager_with(options(), &[("p", &["m"], p)]);
    let started = Instant::now();
    let mut opts = FailoverOptions::new("m", RequestType::Chat);
    opts.timeout = Some(Duration::from_secs(3));
    let err = manager
        .execute_with_failover(opts, |attempt| async move {
            attempt
                .provider
                .chat(chat(&attempt.upstream_model), &attempt.ctx)
                .await
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::DeadlineExceeded { ref trail } if trail.len() == 1),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    // The deadline is the request's fault, not the deployment's.
    assert_eq!(
        manager
            .deployment_state("p", "m")
            .unwrap()
            .consecutive_failures(),
        0
    );
}

async fn stream_text(manager: &ProviderManager, model: &str) -> (String, String, u32) {
    let mut result = manager
        .execute_stream_with_failover(FailoverOptions::new(model, RequestType::Chat), |attempt| {
            let mut request = chat(&attempt.upstream_model);
            request.stream = true;
            async move { attempt.provider.chat_stream(request, &attempt.ctx).await }
        })
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(item) = result.result.next().await {
        text.push_str(&item.unwrap().text());
    }
    (result.provider_id.to_string(), text, result.attempts)
}

#[tokio::test(start_paused = true)]
async fn stream_failures_before_first_content_fail_over_without_a_trace() {
    for shape in [
        StreamShape::CutAfter(0),
        StreamShape::ErrorAfter(0, err503()),
        StreamShape::StallAfter(0),
    ] {
        let p = ScriptedProvider::shared("broken words here");
        p.always(Step::stream(shape.clone()));
        let q = ScriptedProvider::shared("the whole answer");
        let manager = manager_with(options(), &[("p", &["m"], p), ("q", &["m"], q)]);
        let (provider, text, attempts) = stream_text(&manager, "m").await;
        assert_eq!(
            (provider.as_str(), text.as_str(), attempts),
            ("q", "the whole answer", 2),
            "{shape:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_token_fails_over_at_the_ttft_limit() {
    let slow = ScriptedProvider::shared("late");
    slow.always(Step::Stream {
        shape: StreamShape::Complete,
        first_chunk_delay: Duration::from_secs(20),
    });
    let fast = ScriptedProvider::shared("on time");
    let manager = manager_with(
        options(),
        &[("slow", &["m"], slow.clone()), ("fast", &["m"], fast)],
    );
    let started = Instant::now();
    let (provider, text, _) = stream_text(&manager, "m").await;
    assert_eq!((provider.as_str(), text.as_str()), ("fast", "on time"));
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(slow.generation_calls(), 1, "never retried");
}

#[tokio::test(start_paused = true)]
async fn a_client_going_away_is_not_the_deployments_fault() {
    let p = ScriptedProvider::shared("p");
    p.always(Step::slow(Duration::from_secs(5)));
    let manager = manager_with(options(), &[("p", &["m"], p)]);
    let task = tokio::spawn({
        let manager = manager.clone();
        async move { run(&manager, "m").await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(manager.deployment_state("p", "m").unwrap().in_flight(), 1);
    task.abort();
    let _ = task.await;
    let state = manager.deployment_state("p", "m").unwrap();
    assert_eq!((state.in_flight(), state.consecutive_failures()), (0, 0));
    assert_eq!(state.outcomes(), (0, 0));
}

#[test]
fn attempts_and_switches_are_metrics() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let p = ScriptedProvider::shared("p");
            p.always(Step::fail(err503()));
            let manager = manager_with(
                options(),
                &[
                    ("p", &["m"], p),
                    ("q", &["m"], ScriptedProvider::shared("q")),
                ],
            );
            for _ in 0..2 {
                let result = run(&manager, "m").await.unwrap();
                assert_eq!(&*result.provider_id, "q");
            }
        });
    });
    let snapshot = snapshotter.snapshot().into_hashmap();
    let counter = |name: &str, labels: &[(&str, &str)]| -> u64 {
        snapshot
            .iter()
            .find(|(key, _)| {
                key.key().name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, (_, _, value))| match value {
                metrics_util::debugging::DebugValue::Counter(c) => *c,
                other => panic!("{other:?}"),
            })
            .unwrap_or(0)
    };
    assert_eq!(
        counter(
            "switchyard_attempts_total",
            &[("provider", "p"), ("outcome", "unavailable")]
        ),
        1
    );
    assert_eq!(
        counter(
            "switchyard_attempts_total",
            &[("provider", "q"), ("outcome", "ok")]
        ),
        2
    );
    assert_eq!(counter("switchyard_provider_switches_total", &[]), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_deployment_beside_a_healthy_peer_is_degraded_retried_and_finally_ejected() {
    let bad = ScriptedProvider::shared("from bad");
    bad.always(Step::fail(err503()));
    let good = ScriptedProvider::shared("from good");
    let manager = manager_with(
        options(),
        &[("bad", &["m"], bad.clone()), ("good", &["m"], good)],
    );
    let state = manager.deployment_state("bad", "m").unwrap();
    let mut served_by_bad_attempts = Vec::new();
    // A request every second for 20 s: all answered by `good`.
    for second in 0..20 {
        let before = bad.generation_calls();
        let result = run(&manager, "m").await.unwrap();
        assert_eq!(&*result.provider_id, "good");
        if bad.generation_calls() > before {
            served_by_bad_attempts.push(second);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // Degraded for 5 s after each failure, so `bad` is tried at 0 s, 5 s
    // and 10 s; the third failure opens its circuit (ejected 5 s, then a
    // probe at 15 s fails and re-ejects it for 10 s).
    assert_eq!(served_by_bad_attempts, [0, 5, 10, 15]);
    assert_eq!(state.circuit(), CircuitState::Open);
    // Healed: its probe succeeds and it takes traffic again.
    bad.always(Step::ok());
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut providers = std::collections::BTreeSet::new();
    for _ in 0..4 {
        providers.insert(run(&manager, "m").await.unwrap().provider_id);
    }
    assert!(providers.contains("bad"), "{providers:?}");
    assert_eq!(state.circuit(), CircuitState::Closed);
}
