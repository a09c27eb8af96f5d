//! `pgo-train`: the traffic a profile-guided build of `switchyard` learns from (`cargo xtask pgo`).
//!
//! The instrumented server runs on its own config in front of the
//! fault-injecting upstream of [`crate::upstream`] (not the bench's
//! do-nothing one) and the built-in mock provider. Sixteen clients send a
//! fixed mix for a fixed time: plain and streamed chats, with and without
//! usage, on a model two providers serve and on an Anthropic provider
//! (the same upstream answers `/v1/messages`); failovers after a 500, a stream
//! cut and resumed elsewhere, a malformed stream; the mock provider; and
//! bad requests. Half the time runs at the default log level, half at
//! `warn`. The server is then stopped with SIGTERM, so it writes its
//! profile at exit. The run fails unless nearly every healthy request
//! succeeded: a profile of error paths would mislead the optimiser.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::gateway::{Gateway, free_port};
use crate::upstream::{Timings, Upstream, openai_provider};

/// Concurrent clients.
const CLIENTS: u64 = 16;

/// Every `MIX`-th request starts the mix again; see [`request`].
const MIX: u64 = 20;

/// Models whose every request must succeed.
const HEALTHY: [&str; 2] = ["healthy", "claude-train"];

fn config(gateway_port: u16, upstream_port: u16) -> String {
    let failing = ["fault-3", "fault-8", "fault-10"];
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:{gateway_port}\"\n\n[manager]\nstrategy = \"round_robin\"\nmax_retries = 3\n"
    );
    let primary: Vec<&str> = std::iter::once("healthy").chain(failing).collect();
    toml.push_str(&openai_provider("primary", upstream_port, &primary));
    toml.push_str(&openai_provider(
        "secondary",
        upstream_port,
        &["healthy", "backup"],
    ));
    toml.push_str(&format!(
        r#"
[[providers]]
id = "claude"
type = "anthropic"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "sk-ant-harness-training"
health_check = "none"
[providers.models."claude-train"]

[[providers]]
id = "mock"
type = "mock"
health_check = "none"
[providers.models."mock-chat"]
[providers.mock]
latency = "0ms"
chunk_delay = "0ms"
"#
    ));
    for model in failing {
        toml.push_str(&format!(
            "\n[routes.\"{model}\"]\nfallbacks = [\"backup\"]\n"
        ));
    }
    toml
}

/// The `n`th request of the mix: (model, stream, usage asked, body
/// override for a malformed request).
fn request(n: u64) -> (&'static str, bool, bool, Option<&'static str>) {
    // Alternates from one round of the mix to the next.
    let odd_round = (n / MIX) % 2 == 1;
    match n % MIX {
        0..=4 => ("healthy", false, false, None),
        5 => ("claude-train", false, false, None),
        6 => ("claude-train", true, odd_round, None),
        7..=9 => ("healthy", true, true, None),
        10..=13 => ("healthy", true, false, None),
        14 => ("fault-3", false, false, None),
        15 => ("fault-3", true, true, None),
        16 => ("fault-8", true, false, None),
        17 => ("mock-chat", odd_round, false, None),
        18 => ("fault-10", true, false, None),
        _ if odd_round => ("healthy", false, false, Some("{\"model\": \"healthy\",")),
        _ => ("no-such-model", false, false, None),
    }
}

#[derive(Default)]
struct Tally {
    healthy: AtomicU64,
    healthy_ok: AtomicU64,
    all: AtomicU64,
}

async fn client_loop(
    client: reqwest::Client,
    url: String,
    id: u64,
    until: Instant,
    tally: Arc<Tally>,
) {
    let mut n = id;
    while Instant::now() < until {
        let (model, stream, usage, malformed) = request(n);
        // A fresh prompt each time: the fault upstream fails a prompt's
        // first attempt only, and its answer text follows the prompt.
        let prompt = format!("pgo training {id} {n}");
        let body = match malformed {
            Some(bad) => bad.to_owned(),
            None => {
                let mut body = json!({
                    "model": model,
                    "stream": stream,
                    "messages": [
                        {"role": "system", "content": "You are terse."},
                        {"role": "user", "content": prompt},
                    ],
                });
                if usage {
                    body["stream_options"] = json!({"include_usage": true});
                }
                body.to_string()
            }
        };
        let answer = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let ok = match answer {
            Ok(response) => {
                let status = response.status();
                let read = response.bytes().await.is_ok();
                status.is_success() && read
            }
            Err(_) => false,
        };
        tally.all.fetch_add(1, Ordering::Relaxed);
        if HEALTHY.contains(&model) && malformed.is_none() {
            tally.healthy.fetch_add(1, Ordering::Relaxed);
            if ok {
                tally.healthy_ok.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Every client goes through the whole mix, from its own offset.
        n += 1;
    }
}

/// Runs the training traffic through `server` for `seconds`: half of it
/// at the default log level (`info`, an access line per request), half at
/// `warn` (how the bench and throughput-minded operators run it), each
/// half on its own server process, so two profiles get written.
pub async fn run(root: &Path, server: &Path, seconds: u64) -> Result<(), String> {
    let timings = Timings {
        slow_first_token: Duration::from_millis(50),
        stall: Duration::from_millis(50),
        outage: Duration::from_millis(50),
        word_gap: Duration::ZERO,
    };
    let (_upstream, upstream_port) = Upstream::start(timings)
        .await
        .map_err(|e| format!("fault upstream: {e}"))?;
    let half = (seconds / 2).max(1);
    for log in ["info", "warn"] {
        train(root, server, upstream_port, half, log).await?;
    }
    Ok(())
}

/// One server process at `log`, `seconds` of traffic, then SIGTERM.
async fn train(
    root: &Path,
    server: &Path,
    upstream_port: u16,
    seconds: u64,
    log: &str,
) -> Result<(), String> {
    let port = free_port()?;
    let mut gateway = Gateway::start_logging(
        root,
        server,
        &format!("pgo-train-{log}"),
        port,
        &config(port, upstream_port),
        log,
    )
    .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS as usize)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let url = format!("{}/v1/chat/completions", gateway.base);
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(
                client.clone(),
                url.clone(),
                id,
                until,
                Arc::clone(&tally),
            ))
        })
        .collect();
    for worker in workers {
        worker
            .await
            .map_err(|e| format!("a training client failed: {e}"))?;
    }
    gateway.stop().await?;
    let all = tally.all.load(Ordering::Relaxed);
    let healthy = tally.healthy.load(Ordering::Relaxed);
    let healthy_ok = tally.healthy_ok.load(Ordering::Relaxed);
    println!(
        "pgo-train (RUST_LOG={log}): {all} requests in {seconds} s; {healthy_ok} of {healthy} healthy ones answered"
    );
    // 19 of every 20 healthy answers, at least: anything less means the
    // profile mostly saw failures.
    if healthy == 0 || healthy_ok * 20 < healthy * 19 {
        return Err(format!(
            "only {healthy_ok} of {healthy} healthy requests succeeded; see {}",
            gateway.log.display()
        ));
    }
    Ok(())
}
