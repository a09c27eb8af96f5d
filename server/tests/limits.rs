//! Concurrency caps, the request queue, provider RPM/TPM limits and client-key RPM (SPEC §7), through the real HTTP server.
//!
//! The upstreams here count what reaches them: requests in flight (and the
//! most ever seen at once, per upstream model), arrival times and order. A
//! gate (a semaphore with no permits) holds requests at the upstream until
//! the test releases them, so "at its cap" is a state the test controls
//! rather than a race against a sleep.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use common::*;
use parking_lot::Mutex;
use serde_json::{Value, json};
use switchyard_core::RequestType;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// What one counting upstream saw.
#[derive(Default)]
struct Counts {
    /// Upstream model => (in flight now, most at once).
    in_flight: HashMap<String, (usize, usize)>,
    /// Every request's arrival: when, upstream model, the last message's text.
    arrivals: Vec<(Instant, String, String)>,
}

#[derive(Clone)]
struct Counting {
    counts: Arc<Mutex<Counts>>,
    gate: Option<Arc<Semaphore>>,
    usage: (u64, u64),
}

/// Decrements the in-flight count even when the gateway drops the call.
struct InFlight {
    counts: Arc<Mutex<Counts>>,
    model: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(entry) = self.counts.lock().in_flight.get_mut(&self.model) {
            entry.0 -= 1;
        }
    }
}

async fn counting_chat(
    State(up): State<Counting>,
    axum::Json(body): axum::Json<Value>,
) -> axum::Json<Value> {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let tag = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let _in_flight = {
        let mut counts = up.counts.lock();
        let entry = counts.in_flight.entry(model.clone()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(entry.0);
        counts.arrivals.push((Instant::now(), model.clone(), tag));
        InFlight {
            counts: Arc::clone(&up.counts),
            model: model.clone(),
        }
    };
    if let Some(gate) = &up.gate {
        gate.acquire().await.unwrap().forget();
    }
    let (prompt, completion) = up.usage;
    axum::Json(json!({
        "id": "chatcmpl-count", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }))
}

/// An OpenAI-compatible upstream that counts; gated ones hold every request until released.
struct CountingUpstream {
    addr: SocketAddr,
    up: Counting,
    task: JoinHandle<()>,
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        // Let held requests finish so the gateway is not left waiting on them.
        if let Some(gate) = &self.up.gate {
            gate.add_permits(1_000);
        }
        self.task.abort();
    }
}

impl CountingUpstream {
    async fn start(gated: bool, usage: (u64, u64)) -> Self {
        let up = Counting {
            counts: Arc::default(),
            gate: gated.then(|| Arc::new(Semaphore::new(0))),
            usage,
        };
        let router = Router::new()
            .route("/v1/chat/completions", post(counting_chat))
            .with_state(up.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { addr, up, task }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Lets `n` held requests answer.
    fn release(&self, n: usize) {
        self.up.gate.as_ref().unwrap().add_permits(n);
    }

    fn received(&self) -> usize {
        self.up.counts.lock().arrivals.len()
    }

    fn received_for(&self, model: &str) -> usize {
        self.up
            .counts
            .lock()
            .arrivals
            .iter()
            .filter(|(_, m, _)| m == model)
            .count()
    }

    fn in_flight(&self, model: &str) -> usize {
        self.up
            .counts
            .lock()
            .in_flight
            .get(model)
            .map_or(0, |e| e.0)
    }

    fn max_in_flight(&self, model: &str) -> usize {
        self.up
            .counts
            .lock()
            .in_flight
            .get(model)
            .map_or(0, |e| e.1)
    }

    fn tags(&self) -> Vec<String> {
        self.up
            .counts
            .lock()
            .arrivals
            .iter()
            .map(|(_, _, tag)| tag.clone())
            .collect()
    }

    fn arrival_times(&self) -> Vec<Instant> {
        self.up
            .counts
            .lock()
            .arrivals
            .iter()
            .map(|(at, _, _)| *at)
            .collect()
    }
}

/// A provider entry; `models` are (client name, upstream name, extra model lines).
fn provider(id: &str, base_url: &str, extra: &str, models: &[(&str, &str, &str)]) -> String {
    let mut out = format!(
        "[[providers]]\nid = \"{id}\"\ntype = \"openai_compatible\"\nbase_url = \"{base_url}\"\nhealth_check = \"none\"\n{extra}\n"
    );
    for (name, upstream, lines) in models {
        out.push_str(&format!(
            "[providers.models.\"{name}\"]\nupstream_name = \"{upstream}\"\n{lines}\n"
        ));
    }
    out
}

/// `[manager]` for these tests: no background checks, short timeouts, a given queue.
fn manager(queue_size: usize, queue_timeout: &str) -> String {
    format!(
        "[manager]\nhealth_check_interval = \"1h\"\nprovider_timeout = \"10s\"\nrequest_timeout = \"20s\"\nqueue_size = {queue_size}\nqueue_timeout = \"{queue_timeout}\"\n"
    )
}

fn chat_body(model: &str, tag: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": tag}]})
}

async fn send(gw: &TestGateway, body: Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn spawn_send(gw: &TestGateway, body: Value) -> JoinHandle<reqwest::Response> {
    let url = gw.url("/v1/chat/completions");
    tokio::spawn(async move { client().post(url).json(&body).send().await.unwrap() })
}

/// Waits (bounded) until `check` holds.
async fn until(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn error_of(response: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap())
}

#[tokio::test]
async fn a_provider_cap_sends_the_overflow_to_another_candidate_and_is_never_exceeded() {
    let capped = CountingUpstream::start(true, (3, 2)).await;
    let other = CountingUpstream::start(false, (3, 2)).await;
    let toml = format!(
        "{}\n{}\n{}",
        manager(16, "5s"),
        provider(
            "capped",
            &capped.base_url(),
            "max_concurrency = 2",
            &[("m", "m-capped", "")]
        ),
        provider("other", &other.base_url(), "", &[("m", "m-other", "")]),
    );
    let gw = gateway(&toml).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| spawn_send(&gw, chat_body("m", &format!("r{i}"))))
        .collect();
    // The capped provider holds two; everything else is answered by the other.
    until("6 answered elsewhere", || other.received() == 6).await;
    until("2 held at the capped provider", || {
        capped.in_flight("m-capped") == 2
    })
    .await;
    assert_eq!(capped.received(), 2);
    capped.release(2);
    for task in tasks {
        assert_eq!(task.await.unwrap().status(), 200);
    }
    assert_eq!(capped.max_in_flight("m-capped"), 2, "the cap was exceeded");
    assert_eq!(capped.received() + other.received(), 8);
}

#[tokio::test]
async fn a_model_cap_sends_the_overflow_elsewhere_while_its_provider_has_room() {
    let shared = CountingUpstream::start(true, (3, 2)).await;
    let other = CountingUpstream::start(false, (3, 2)).await;
    let toml = format!(
        "{}\n{}\n{}",
        manager(16, "5s"),
        provider(
            "shared",
            &shared.base_url(),
            "max_concurrency = 10",
            &[
                ("m", "m-shared", "max_concurrency = 1"),
                ("n", "n-shared", ""),
            ],
        ),
        provider("other", &other.base_url(), "", &[("m", "m-other", "")]),
    );
    let gw = gateway(&toml).await;
    let tasks: Vec<_> = (0..5)
        .map(|i| spawn_send(&gw, chat_body("m", &format!("m{i}"))))
        .collect();
    until("4 of m answered elsewhere", || other.received() == 4).await;
    until("1 of m held", || shared.in_flight("m-shared") == 1).await;
    // The provider itself still has room: another model goes to it.
    let n = spawn_send(&gw, chat_body("n", "n0"));
    until("n reached the shared provider", || {
        shared.in_flight("n-shared") == 1
    })
    .await;
    assert_eq!(shared.received_for("m-shared"), 1);
    shared.release(2);
    for task in tasks {
        assert_eq!(task.await.unwrap().status(), 200);
    }
    assert_eq!(n.await.unwrap().status(), 200);
    assert_eq!(
        shared.max_in_flight("m-shared"),
        1,
        "the model cap was exceeded"
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_at_once() {
    let up = CountingUpstream::start(true, (3, 2)).await;
    let toml = format!(
        "{}\n{}",
        manager(1, "10s"),
        provider(
            "p",
            &up.base_url(),
            "max_concurrency = 1",
            &[("m", "m-up", "")]
        ),
    );
    let gw = gateway(&toml).await;
    let first = spawn_send(&gw, chat_body("m", "first"));
    until("first held upstream", || up.in_flight("m-up") == 1).await;
    let queued = spawn_send(&gw, chat_body("m", "queued"));
    until("second queued", || gw.manager.queue_depth() == 1).await;

    let (status, retry_after, body) = error_of(send(&gw, chat_body("m", "refused")).await).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "queue_full");
    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    // Answered while the queue was still full: nothing moved meanwhile.
    assert!(!first.is_finished() && !queued.is_finished());
    assert_eq!(gw.manager.queue_depth(), 1);
    assert_eq!(up.received(), 1);

    up.release(2);
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(queued.await.unwrap().status(), 200);
}

#[tokio::test]
async fn queued_requests_go_upstream_in_arrival_order() {
    let up = CountingUpstream::start(true, (3, 2)).await;
    let toml = format!(
        "{}\n{}",
        manager(16, "10s"),
        provider(
            "p",
            &up.base_url(),
            "max_concurrency = 1",
            &[("m", "m-up", "")]
        ),
    );
    let gw = gateway(&toml).await;
    let mut tasks = vec![spawn_send(&gw, chat_body("m", "a"))];
    until("a held upstream", || up.in_flight("m-up") == 1).await;
    for (i, tag) in ["b", "c", "d", "e"].iter().enumerate() {
        tasks.push(spawn_send(&gw, chat_body("m", tag)));
        until("queued", || gw.manager.queue_depth() == i + 1).await;
    }
    for n in 1..5 {
        up.release(1);
        until("the next one went upstream", || up.received() == n + 1).await;
    }
    up.release(1);
    for task in tasks {
        assert_eq!(task.await.unwrap().status(), 200);
    }
    assert_eq!(up.tags(), ["a", "b", "c", "d", "e"]);
    assert_eq!(up.max_in_flight("m-up"), 1);
}

#[tokio::test]
async fn a_request_queued_past_queue_timeout_gets_429_with_retry_after() {
    let up = CountingUpstream::start(true, (3, 2)).await;
    let toml = format!(
        "{}\n{}",
        manager(16, "400ms"),
        provider(
            "p",
            &up.base_url(),
            "max_concurrency = 1",
            &[("m", "m-up", "")]
        ),
    );
    let gw = gateway(&toml).await;
    let first = spawn_send(&gw, chat_body("m", "first"));
    until("first held upstream", || up.in_flight("m-up") == 1).await;
    let started = Instant::now();
    let (status, retry_after, body) = error_of(send(&gw, chat_body("m", "late")).await).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "queue_timeout");
    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(gw.manager.queue_depth(), 0);
    assert_eq!(
        up.received(),
        1,
        "the timed-out request never went upstream"
    );
    up.release(1);
    assert_eq!(first.await.unwrap().status(), 200);
    // Queue depth and wait time are exported.
    let metrics = scrape(&gw).await;
    assert!(
        metrics
            .iter()
            .any(|l| l.starts_with("switchyard_queue_wait_seconds_count") && !l.ends_with(" 0")),
        "{metrics:?}"
    );
    assert!(
        metrics
            .iter()
            .any(|l| l.starts_with("switchyard_queue_depth"))
    );
}

#[tokio::test]
async fn an_rpm_limit_holds_within_one_request_over_a_window() {
    // 240 RPM: one request every 250 ms. Two clients send back to back
    // for 1.3 s; the queue holds the surplus.
    let up = CountingUpstream::start(false, (3, 2)).await;
    let toml = format!(
        "{}\n{}",
        manager(64, "5s"),
        provider("p", &up.base_url(), "rpm_limit = 240", &[("m", "m-up", "")]),
    );
    let gw = gateway(&toml).await;
    let started = Instant::now();
    let window = Duration::from_millis(1_300);
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let url = gw.url("/v1/chat/completions");
            tokio::spawn(async move {
                let http = client();
                while started.elapsed() < window {
                    let response = http
                        .post(&url)
                        .json(&chat_body("m", "x"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    for task in clients {
        task.await.unwrap();
    }
    let times = up.arrival_times();
    // At most rate × window + 1 in any window, for windows of 0.5 s and 1 s.
    for (span, most) in [(Duration::from_millis(500), 3), (Duration::from_secs(1), 5)] {
        for (i, at) in times.iter().enumerate() {
            let inside = times[i..].iter().take_while(|t| **t < *at + span).count();
            assert!(
                inside <= most,
                "{inside} requests within {span:?} of arrival {i} (limit 240 RPM)"
            );
        }
    }
    // And the limit is used, not starved: within 1.3 s of the first
    // arrival, one at 0, 0.25, ... 1.25 s (requests still queued when the
    // clients stopped arrive later).
    let first = times[0];
    let early = times.iter().filter(|t| **t < first + window).count();
    assert!((5..=7).contains(&early), "{early} requests in {window:?}");
}

#[tokio::test]
async fn tpm_takes_the_estimate_and_settles_to_real_usage() {
    // 3 000 tokens per minute; each request estimates ~1 000 (max_tokens)
    // but really uses 10. Six in a row pass at once only because each one
    // gives back what it did not use.
    let up = CountingUpstream::start(false, (6, 4)).await;
    let toml = format!(
        "{}\n{}",
        manager(16, "300ms"),
        provider(
            "p",
            &up.base_url(),
            "tpm_limit = 3000",
            &[("m", "m-up", "")]
        ),
    );
    let gw = gateway(&toml).await;
    let started = Instant::now();
    for i in 0..6 {
        let mut body = chat_body("m", &format!("t{i}"));
        body["max_tokens"] = json!(1000);
        let response = send(&gw, body).await;
        assert_eq!(response.status(), 200, "request {i}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let handle = gw
        .manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    let limits = Arc::clone(handle.deployment().limits());
    drop(handle);
    let available = limits.tokens_available().unwrap();
    // 3 000 minus the 60 really used (plus a little refill), not minus 6 × 1 000.
    assert!(
        (2_900.0..=3_000.0).contains(&available),
        "{available} tokens left"
    );
}

#[tokio::test]
async fn tpm_settles_a_bigger_real_usage_into_a_debt() {
    // The upstream reports 5 000 tokens for a request estimated at ~1 000:
    // the bucket goes into debt and the next request waits past the queue
    // timeout.
    let up = CountingUpstream::start(false, (4_000, 1_000)).await;
    let toml = format!(
        "{}\n{}",
        manager(16, "300ms"),
        provider(
            "p",
            &up.base_url(),
            "tpm_limit = 3000",
            &[("m", "m-up", "")]
        ),
    );
    let gw = gateway(&toml).await;
    let mut body = chat_body("m", "big");
    body["max_tokens"] = json!(1000);
    assert_eq!(send(&gw, body.clone()).await.status(), 200);
    let (status, retry_after, error) = error_of(send(&gw, body).await).await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(error["error"]["code"], "queue_timeout");
    assert!(retry_after.is_some());
    assert_eq!(up.received(), 1);
}

#[tokio::test]
async fn a_client_key_over_its_rpm_gets_429_and_other_keys_are_not_affected() {
    let up = openai_upstream("alpha").await;
    let toml = format!(
        "{FAST_MANAGER}\n[server]\nclient_rpm_limit = 60\n\n{}",
        provider("alpha", &up.base_url(), "", &[("m", "m-up", "")]),
    );
    let gw = gateway_with_env(&toml, &[("SWITCHYARD_API_KEYS", "key-aaaaaa,key-bbbbbb")]).await;
    let http = client();
    let chat = |key: &str| {
        http.post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body("m", "hi"))
            .send()
    };
    assert_eq!(chat("key-aaaaaa").await.unwrap().status(), 200);
    let (status, retry_after, body) = error_of(chat("key-aaaaaa").await.unwrap()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        !body.to_string().contains("key-aaaaaa"),
        "the key leaked: {body}"
    );
    // Another key has its own allowance; a wrong key is still a 401.
    assert_eq!(chat("key-bbbbbb").await.unwrap().status(), 200);
    assert_eq!(chat("key-wrong").await.unwrap().status(), 401);
    // On /v1/messages the 429 has Anthropic's shape.
    let response = http
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "key-aaaaaa")
        .json(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = error_of(response).await;
    assert_eq!(status, 429);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    // One request a second: after a second the key may send again.
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    assert_eq!(chat("key-aaaaaa").await.unwrap().status(), 200);
    assert_eq!(up.generations(), 3);
    let metrics = scrape(&gw).await;
    assert!(
        metrics
            .iter()
            .any(|l| l.starts_with("switchyard_client_rate_limited_total") && !l.ends_with(" 0")),
        "{metrics:?}"
    );
}

#[tokio::test]
async fn process_cpu_rss_and_queue_metrics_are_exported_before_traffic() {
    let up = openai_upstream("alpha").await;
    let gw = gateway(&format!(
        "{FAST_MANAGER}\n{}",
        provider("alpha", &up.base_url(), "", &[("m", "m-up", "")])
    ))
    .await;
    let metrics = scrape(&gw).await;
    let value = |name: &str| -> f64 {
        metrics
            .iter()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics:?}"))
    };
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_cpu_seconds_total") >= 0.0);
    value("switchyard_queue_depth");
    value("switchyard_cache_hits_total");
    value("switchyard_cache_misses_total");
    value("switchyard_client_rate_limited_total");
    assert!(
        metrics
            .iter()
            .any(|l| l.starts_with("switchyard_queue_wait_seconds")),
        "{metrics:?}"
    );
}

/// Reads until the gateway closes `socket`; panics if it is still open
/// after 30 s (a generous bound that only catches "never closed").
async fn read_until_closed(socket: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut received))
        .await
        .expect("the gateway kept the connection open")
        .unwrap();
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn clients_slow_to_send_a_request_head_are_disconnected_and_prompt_ones_served() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let up = openai_upstream("alpha").await;
    let gw = gateway(&format!(
        "{FAST_MANAGER}\n[server]\nheader_read_timeout = \"500ms\"\n\n{}",
        provider(
            "alpha",
            &up.base_url(),
            "",
            &[("m", "m-up", ""), ("paced", "paced-stream", "")]
        )
    ))
    .await;
    let body = chat_body("m", "hi").to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );

    // Half a head, then nothing (slowloris): closed, never answered.
    let mut half = TcpStream::connect(gw.addr).await.unwrap();
    half.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(read_until_closed(&mut half).await, "");
    // A connection that never sends a byte is closed too.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "");
    assert_eq!(up.generations(), 0);

    // A head sent in two writes well within the limit is served, and the
    // idle keep-alive connection after it is closed once the limit passes.
    let mut prompt = TcpStream::connect(gw.addr).await.unwrap();
    prompt.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    prompt
        .write_all(format!("\r\n{body}").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut prompt).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\"chat.completion\""), "{answer}");
    assert_eq!(up.generations(), 1);

    // Ordinary clients are unaffected, and shutdown still completes.
    let response = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("m", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The limit is on reading heads: a 1.5 s stream, three times the
    // limit, is answered whole.
    let response = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "paced", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("t14 "), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_gets_408_and_a_paced_one_is_served() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let up = openai_upstream("alpha").await;
    let gw = gateway(&format!(
        "{FAST_MANAGER}\n[server]\nbody_read_timeout = \"500ms\"\n\n{}",
        provider("alpha", &up.base_url(), "", &[("m", "m-up", "")])
    ))
    .await;
    let body = chat_body("m", "hi").to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
    };

    // Half a body, then nothing: 408 in the OpenAI error shape, and the
    // connection (its body unread) is closed.
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(format!("{}{first}", head("/v1/chat/completions")).as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let error: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "request_timeout", "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("body_read_timeout"),
        "{error}"
    );
    // The same on /v1/messages, in Anthropic's shape.
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(format!("{}{first}", head("/v1/messages")).as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let error: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(up.generations(), 0);

    // A body whose parts come well within the limit of each other is served.
    let mut paced = TcpStream::connect(gw.addr).await.unwrap();
    paced
        .write_all(format!("{}{first}", head("/v1/chat/completions")).as_bytes())
        .await
        .unwrap();
    for part in [&rest[..rest.len() / 2], &rest[rest.len() / 2..]] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        paced.write_all(part.as_bytes()).await.unwrap();
    }
    let answer = read_until_closed(&mut paced).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(up.generations(), 1);
    gw.stop().await;
}
