//! `cargo xtask demo`: the gateway on its embedded default, a scripted failure and recovery, narrated.
//!
//! Starts `switchyard` with no config (two mock providers), follows
//! `/admin/events`, and sends three phases of traffic: normal round-robin;
//! `mock-a` made to fail every request (through the admin API) so the
//! manager fails over to `mock-b` and opens `mock-a`'s circuit; `mock-a`
//! healed, so its half-open probe succeeds and traffic returns. It prints
//! which provider served each request, the events, and the load-stats
//! table, and exits non-zero when the failover or the recovery did not show.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::gateway::free_port;

const MODEL: &str = "gpt-4o-mini";
const TOTAL_STEPS: usize = 70;

fn mock_a(fail: bool) -> Value {
    json!({
        "id": "mock-a",
        "type": "mock",
        "health_check": "models",
        "models": {
            "gpt-4o-mini": {"request_types": ["chat", "completions"], "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.60},
            "mock-chat": {"request_types": ["chat", "completions"]},
            "text-embedding-3-small": {"request_types": ["embeddings"]}
        },
        "mock": {
            "latency": "20ms",
            "chunk_delay": "5ms",
            "reply": "Hello from {provider} ({model}).",
            "fail_every": if fail { 1 } else { 0 },
            "fail_status": 503
        }
    })
}

struct Progress {
    step: usize,
}

impl Progress {
    fn line(&mut self, text: &str) {
        self.step = (self.step + 1).min(TOTAL_STEPS);
        let done = self.step * 20 / TOTAL_STEPS;
        println!("[{}{}] {text}", "#".repeat(done), ".".repeat(20 - done));
    }
}

struct Served {
    provider: String,
    attempts: u32,
}

async fn chat(client: &reqwest::Client, base: &str, i: usize) -> Result<Served, String> {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": format!("demo request {i}")}]}))
        .send()
        .await
        .map_err(|e| format!("request {i} failed: {e}"))?;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let provider = header("x-switchyard-provider");
    let attempts = header("x-switchyard-attempts").parse().unwrap_or(0);
    if !status.is_success() {
        return Err(format!("request {i}: status {status}"));
    }
    let _ = started;
    Ok(Served { provider, attempts })
}

async fn put_provider(client: &reqwest::Client, base: &str, body: &Value) -> Result<(), String> {
    let response = client
        .put(format!("{base}/admin/providers/mock-a"))
        .json(body)
        .send()
        .await
        .map_err(|e| format!("admin PUT failed: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Err(format!("admin PUT answered {status}: {text}"))
    }
}

/// Follows `/admin/events`, keeping `type provider model` lines.
fn follow_events(client: reqwest::Client, base: String, seen: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        let Ok(response) = client.get(format!("{base}/admin/events")).send().await else {
            return;
        };
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(piece)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&piece));
            while let Some(end) = buffer.find("\n\n") {
                let message: String = buffer.drain(..end + 2).collect();
                let Some(data) = message.lines().find_map(|l| l.strip_prefix("data:")) else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                let kind = event["type"].as_str().unwrap_or("?");
                let provider = event["provider_id"]
                    .as_str()
                    .or_else(|| event["to_provider"].as_str())
                    .unwrap_or("");
                let model = event["model"]
                    .as_str()
                    .or_else(|| event["to_model"].as_str())
                    .unwrap_or("");
                if let Ok(mut seen) = seen.lock() {
                    seen.push(format!("{kind} {provider} {model}").trim().to_owned());
                }
            }
        }
    });
}

fn drain_events(seen: &Arc<Mutex<Vec<String>>>, shown: &mut usize, progress: &mut Progress) {
    let Ok(events) = seen.lock() else {
        return;
    };
    for event in events.iter().skip(*shown) {
        if event.starts_with("provider_state_changed") {
            continue;
        }
        progress.line(&format!("    event: {event}"));
    }
    *shown = events.len();
}

/// Runs the demo; `Ok(true)` when the failover and the recovery both showed.
pub async fn run(server: &std::path::Path) -> Result<bool, String> {
    let started = Instant::now();
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(server)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server.display()))?;
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        return Err("the gateway did not become ready".to_owned());
    }
    println!(
        "Switchyard is running on {base} with its embedded default: providers mock-a and mock-b serve {MODEL}.\n"
    );
    let events = Arc::new(Mutex::new(Vec::new()));
    follow_events(client.clone(), base.clone(), Arc::clone(&events));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut progress = Progress { step: 0 };
    let mut shown = 0;
    let mut i = 0;

    println!("Phase 1: normal traffic (round-robin)");
    for _ in 0..6 {
        i += 1;
        let served = chat(&client, &base, i).await?;
        progress.line(&format!(
            "#{i:<2} {MODEL} -> {} ({} attempt)",
            served.provider, served.attempts
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drain_events(&events, &mut shown, &mut progress);

    println!("\nPhase 2: mock-a starts failing every request (admin PUT /admin/providers/mock-a)");
    put_provider(&client, &base, &mock_a(true)).await?;
    let mut failed_over = false;
    // Each failure keeps mock-a degraded (behind mock-b) for 5 s; the third
    // in a row, about 10 s in, opens its circuit.
    let outage_ends = Instant::now() + Duration::from_secs(12);
    while Instant::now() < outage_ends {
        i += 1;
        let served = chat(&client, &base, i).await?;
        failed_over |= served.attempts > 1;
        progress.line(&format!(
            "#{i:<2} {MODEL} -> {} ({} attempt{})",
            served.provider,
            served.attempts,
            if served.attempts > 1 {
                "s: failed over"
            } else {
                ""
            }
        ));
        drain_events(&events, &mut shown, &mut progress);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    println!("\nPhase 3: mock-a is healed; its circuit's half-open probe brings it back");
    put_provider(&client, &base, &mock_a(false)).await?;
    let mut recovered = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        i += 1;
        let served = chat(&client, &base, i).await?;
        progress.line(&format!(
            "#{i:<2} {MODEL} -> {} ({} attempt)",
            served.provider, served.attempts
        ));
        drain_events(&events, &mut shown, &mut progress);
        if served.provider == "mock-a" {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drain_events(&events, &mut shown, &mut progress);

    let stats: Value = client
        .get(format!("{base}/admin/stats"))
        .send()
        .await
        .map_err(|e| format!("stats: {e}"))?
        .json()
        .await
        .map_err(|e| format!("stats: {e}"))?;
    println!("\nLoad stats (GET /admin/stats, least loaded first):\n");
    println!("| provider | load | health | req/min | avg ms | in flight | success |");
    println!("|---|---|---|---|---|---|---|");
    for row in stats["data"].as_array().cloned().unwrap_or_default() {
        println!(
            "| {} | {:.1} | {} | {} | {:.1} | {} | {:.0} % |",
            row["provider_id"].as_str().unwrap_or("?"),
            row["load"].as_f64().unwrap_or(0.0),
            row["health"].as_str().unwrap_or("?"),
            row["requests_per_minute"],
            row["average_response_time_ms"].as_f64().unwrap_or(0.0),
            row["in_flight"],
            row["success_rate"].as_f64().unwrap_or(0.0) * 100.0,
        );
    }
    let opened = events
        .lock()
        .map(|e| e.iter().any(|l| l.starts_with("circuit_opened mock-a")))
        .unwrap_or(false);
    let closed = events
        .lock()
        .map(|e| e.iter().any(|l| l.starts_with("circuit_closed mock-a")))
        .unwrap_or(false);
    let _ = child.start_kill();
    println!(
        "\nfailover seen: {failed_over}; mock-a ejected: {opened}; mock-a recovered: {} (in {:.1} s)",
        recovered && closed,
        started.elapsed().as_secs_f64()
    );
    Ok(failed_over && opened && recovered && closed)
}
