//! Concurrency caps, the request queue and provider rate limits (SPEC §7).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{chat, config};
use switchyard_core::testing::{ScriptedProvider, Step};
use switchyard_core::{
    FailoverOptions, FailoverResult, ManagerError, ManagerOptions, ProviderConfig, ProviderManager,
    RequestType,
};
use tokio::time::Instant;

async fn run(manager: &ProviderManager) -> Result<FailoverResult<String>, ManagerError> {
    let mut options = FailoverOptions::new("m", RequestType::Chat);
    options.max_output_tokens = Some(100);
    options.estimated_input_tokens = 20;
    manager
        .execute_with_failover(options, |attempt| async move {
            let response = attempt
                .provider
                .chat(chat(&attempt.upstream_model), &attempt.ctx)
                .await?;
            if let Some(usage) = &response.usage {
                attempt.report_usage(usage);
            }
            Ok(attempt.provider_id.to_string())
        })
        .await
}

fn slow(secs: u64) -> Arc<ScriptedProvider> {
    let p = ScriptedProvider::shared("x");
    p.always(Step::slow(Duration::from_secs(secs)));
    p
}

async fn concurrently(manager: &ProviderManager, n: usize) -> Vec<Result<String, ManagerError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { run(&manager).await.map(|r| r.result) })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

fn tally(results: &[Result<String, ManagerError>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in results {
        *counts
            .entry(
                r.as_ref()
                    .map_or_else(|e| e.kind().to_owned(), Clone::clone),
            )
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn a_provider_cap_sends_the_overflow_elsewhere_and_is_never_exceeded() {
    let capped = slow(1);
    let other = slow(1);
    let mut c = config("capped", &["m"]);
    c.max_concurrency = Some(2);
    let manager = ProviderManager::builder()
        .provider_instance(c, capped.clone())
        .provider_instance(config("other", &["m"]), other.clone())
        .build()
        .unwrap();
    let results = concurrently(&manager, 10).await;
    assert_eq!(
        tally(&results),
        BTreeMap::from([("capped".into(), 2), ("other".into(), 8)])
    );
    assert_eq!(capped.peak_concurrency(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_model_cap_holds_while_its_provider_has_room() {
    let shared = slow(1);
    let other = slow(1);
    let mut c = config("p", &["m", "n"]);
    c.max_concurrency = Some(10);
    c.models.get_mut("m").unwrap().max_concurrency = Some(1);
    let manager = ProviderManager::builder()
        .provider_instance(c, shared.clone())
        .provider_instance(config("other", &["m"]), other)
        .build()
        .unwrap();
    let results = concurrently(&manager, 6).await;
    assert_eq!(
        tally(&results),
        BTreeMap::from([("other".into(), 5), ("p".into(), 1)])
    );
    // The provider still has room for its other model.
    let handles: Vec<_> = (0..5)
        .map(|_| {
            manager
                .get_best_provider_for_request("n", RequestType::Chat)
                .unwrap()
        })
        .collect();
    assert!(handles.iter().all(|h| h.provider_id() == "p"));
    assert_eq!(manager.provider_state("p").unwrap().in_flight(), 5);
}

fn single(
    cap: u32,
    queue_size: usize,
    queue_timeout: Duration,
    provider: Arc<ScriptedProvider>,
) -> ProviderManager {
    let mut c: ProviderConfig = config("only", &["m"]);
    c.max_concurrency = Some(cap);
    let mut options = ManagerOptions::default();
    options.queue_size = queue_size;
    options.queue_timeout = queue_timeout;
    ProviderManager::builder()
        .options(options)
        .provider_instance(c, provider)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let manager = single(1, 2, Duration::from_secs(30), slow(10));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { run(&manager).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(manager.queue_depth(), 2);
    let started = Instant::now();
    match run(&manager).await.unwrap_err() {
        ManagerError::QueueFull { retry_after } => assert!(retry_after >= Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    for task in tasks {
        assert!(task.await.unwrap().is_ok());
    }
    assert_eq!(manager.queue_depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn queued_requests_are_served_in_arrival_order_then_time_out() {
    let provider = slow(1);
    let manager = single(1, 100, Duration::from_millis(2_500), provider.clone());
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let manager = manager.clone();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let result = run(&manager).await;
            if result.is_ok() {
                order.lock().push(i);
            }
            result
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().map(|r| r.result));
    }
    // One runs at a time for 1 s each; the queue holds the rest for 2.5 s:
    // requests 0, 1 and 2 are served in order, 3 and 4 time out.
    assert_eq!(*order.lock(), [0, 1, 2]);
    let kinds: Vec<_> = outcomes
        .iter()
        .map(|o| o.as_ref().map_or_else(|e| e.kind(), |_| "ok"))
        .collect();
    assert_eq!(kinds, ["ok", "ok", "ok", "queue_timeout", "queue_timeout"]);
    assert_eq!(provider.peak_concurrency(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_rpm_limit_holds_within_one_request_per_minute() {
    let p = ScriptedProvider::shared("x");
    let mut c = config("p", &["m"]);
    c.rpm_limit = Some(12);
    let mut options = ManagerOptions::default();
    options.queue_timeout = Duration::from_secs(600);
    options.request_timeout = Duration::from_secs(600);
    let manager = ProviderManager::builder()
        .options(options)
        .provider_instance(c, p.clone())
        .build()
        .unwrap();
    // 40 requests arrive at once; the limit spaces them 5 s apart.
    let results = concurrently(&manager, 40).await;
    assert!(results.iter().all(Result::is_ok));
    let calls: Vec<Instant> = p.calls().iter().map(|c| c.at).collect();
    assert_eq!(calls.len(), 40);
    for (i, at) in calls.iter().enumerate() {
        let in_minute = calls[i..]
            .iter()
            .take_while(|t| **t < *at + Duration::from_secs(60))
            .count();
        assert!(
            in_minute <= 13,
            "{in_minute} calls in the minute from call {i}"
        );
    }
    let span = *calls.last().unwrap() - calls[0];
    assert!(
        span >= Duration::from_secs(39 * 5) - Duration::from_millis(500),
        "{span:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn tpm_takes_the_estimate_and_settles_to_real_usage() {
    let p = ScriptedProvider::shared("two words");
    let mut c = config("p", &["m"]);
    c.tpm_limit = Some(1_000);
    let manager = ProviderManager::builder()
        .provider_instance(c, p)
        .build()
        .unwrap();
    let limits = |m: &ProviderManager| {
        let handle = m
            .get_best_provider_for_request("m", RequestType::Chat)
            .unwrap();
        let limits = Arc::clone(handle.deployment().limits());
        drop(handle);
        limits
    };
    let before = limits(&manager).tokens_available().unwrap();
    assert!((before - 1_000.0).abs() < 1e-6);
    let result = run(&manager).await.unwrap();
    assert_eq!(result.result, "p");
    // Estimated 20 + 100 = 120; the call really used prompt + 2 completion tokens.
    let prompt = u64::from(chat("m").estimated_prompt_tokens());
    let after = limits(&manager).tokens_available().unwrap();
    assert!(
        (after - (1_000.0 - (prompt + 2) as f64)).abs() < 1e-6,
        "{after}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unused_handle_gives_its_slot_and_tokens_back() {
    let mut c = config("p", &["m"]);
    c.max_concurrency = Some(1);
    c.tpm_limit = Some(10_000);
    let manager = ProviderManager::builder()
        .provider_instance(c, ScriptedProvider::shared("x"))
        .build()
        .unwrap();
    let handle = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    assert_eq!(manager.provider_state("p").unwrap().in_flight(), 1);
    let limits = Arc::clone(handle.deployment().limits());
    assert!(limits.tokens_available().unwrap() < 10_000.0);
    // At its cap: the failover path reports no capacity (at the limit).
    let mut request = switchyard_core::SelectRequest::new("m", RequestType::Chat);
    request.allow_panic = false;
    assert!(matches!(
        manager.select(&request),
        Err(ManagerError::NoCapacity { at_limit: true, .. })
    ));
    drop(handle);
    assert_eq!(manager.provider_state("p").unwrap().in_flight(), 0);
    assert!((limits.tokens_available().unwrap() - 10_000.0).abs() < 1e-6);
}
