//! Test support: fake upstreams that speak the OpenAI and Anthropic wire formats, and the real gateway started in-process on 127.0.0.1:0.
//!
//! The fake upstreams pick their behaviour from the model name they
//! receive (the deployment's `upstream_name`), so a test config decides
//! which deployment fails and how:
//! - `status-<code>`: that HTTP error status with a provider-shaped body
//!   (`status-429` adds `retry-after: 2`);
//! - `bad-request`: 400 with message, type, param and code;
//! - `leaky-request`: 400 whose message echoes the upstream API key;
//! - `tools...`: a tool call instead of text;
//! - `slow`: answers after 5 s;
//! - `slow-stream`: 100 chunks, 100 ms apart; a dropped connection is counted;
//! - `paced-stream`: the same with 15 chunks (1.5 s);
//! - `cut-before-content` / `cut-after-content`: streams that close without
//!   `finish_reason` before / after text;
//! - `nested-usage`: stream chunks with a nested `usage` key and, even
//!   when usage is asked for, no top-level `usage` but on the last;
//! - anything else: `Hello from <name>` (streamed word by word).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde_json::{Value, json};
use switchyard_core::ProviderManager;
use switchyard_server::config::Config;
use switchyard_server::{Gateway, StartError};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// One request a fake upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The body as sent, for tests about its exact bytes.
    pub raw: String,
}

#[derive(Clone)]
struct Fake {
    name: String,
    key: Option<String>,
    seen: Arc<Mutex<Vec<Seen>>>,
    dropped: Arc<AtomicUsize>,
    dropped_notify: Arc<Notify>,
}

impl Fake {
    fn record(&self, path: &str, headers: &HeaderMap, body: &Value, raw: &[u8]) {
        self.seen.lock().push(Seen {
            path: path.to_owned(),
            headers: headers.clone(),
            body: body.clone(),
            raw: String::from_utf8_lossy(raw).into_owned(),
        });
    }

    fn text(&self) -> String {
        format!("Hello from {}", self.name)
    }
}

/// A running fake upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    fake: Fake,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// `http://addr/v1`: the provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.fake.seen.lock().clone()
    }

    /// Generation requests received (not model lists).
    pub fn generations(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| !s.path.ends_with("/models"))
            .count()
    }

    /// Slow streams whose connection was dropped before they finished.
    pub fn dropped_streams(&self) -> usize {
        self.fake.dropped.load(Ordering::SeqCst)
    }

    /// Resolves when a slow stream is dropped.
    pub async fn stream_dropped(&self) {
        loop {
            let notified = self.fake.dropped_notify.notified();
            if self.dropped_streams() > 0 {
                return;
            }
            notified.await;
        }
    }
}

async fn spawn(router: Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (addr, task)
}

fn fake(name: &str, key: Option<&str>) -> Fake {
    Fake {
        name: name.to_owned(),
        key: key.map(str::to_owned),
        seen: Arc::default(),
        dropped: Arc::default(),
        dropped_notify: Arc::default(),
    }
}

fn body_json(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------
// OpenAI format
// ---------------------------------------------------------------------------

/// An upstream speaking the OpenAI API, answering as `name`.
pub async fn openai_upstream(name: &str) -> Upstream {
    openai_upstream_with_key(name, None).await
}

/// An OpenAI upstream that requires `Authorization: Bearer <key>`.
pub async fn openai_upstream_with_key(name: &str, key: Option<&str>) -> Upstream {
    let fake = fake(name, key);
    let router = Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1/completions", post(openai_completions))
        .route("/v1/models", get(openai_models))
        .with_state(fake.clone());
    let (addr, task) = spawn(router).await;
    Upstream { addr, fake, task }
}

fn openai_error(
    status: u16,
    message: &str,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(
            json!({"error": {"message": message, "type": kind, "code": code, "param": param}}),
        ),
    )
        .into_response();
    if status == 429 {
        response
            .headers_mut()
            .insert("retry-after", "2".parse().unwrap());
    }
    response
}

fn scripted_openai_error(fake: &Fake, model: &str, headers: &HeaderMap) -> Option<Response> {
    if let Some(key) = &fake.key {
        let expected = format!("Bearer {key}");
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return Some(openai_error(
                401,
                "Incorrect API key provided",
                "invalid_request_error",
                Some("invalid_api_key"),
                None,
            ));
        }
    }
    if let Some(status) = model.strip_prefix("status-") {
        let status: u16 = status.parse().unwrap_or(500);
        let code = match status {
            404 => Some("model_not_found"),
            429 => Some("rate_limit_exceeded"),
            _ => None,
        };
        let kind = match status {
            401 | 403 | 404 => "invalid_request_error",
            429 => "rate_limit_error",
            _ => "server_error",
        };
        return Some(openai_error(
            status,
            &format!("scripted {status} from the upstream"),
            kind,
            code,
            None,
        ));
    }
    match model {
        "bad-request" => Some(openai_error(
            400,
            "Invalid value for 'temperature': upstream says 7 is too hot.",
            "invalid_request_error",
            Some("invalid_value"),
            Some("temperature"),
        )),
        "leaky-request" => Some(openai_error(
            400,
            &format!(
                "Rejected request made with key {}",
                fake.key.clone().unwrap_or_default()
            ),
            "invalid_request_error",
            None,
            None,
        )),
        _ => None,
    }
}

fn usage() -> Value {
    json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12})
}

fn tool_call() -> Value {
    json!({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}})
}

async fn openai_chat(State(fake): State<Fake>, headers: HeaderMap, bytes: Bytes) -> Response {
    let body = body_json(&bytes);
    fake.record("/v1/chat/completions", &headers, &body, &bytes);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if let Some(error) = scripted_openai_error(&fake, &model, &headers) {
        return error;
    }
    if model == "slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let tools = model.starts_with("tools");
    if !body["stream"].as_bool().unwrap_or(false) {
        let message = if tools {
            json!({"role": "assistant", "content": null, "tool_calls": [tool_call()]})
        } else {
            json!({"role": "assistant", "content": fake.text()})
        };
        return axum::Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "finish_reason": if tools { "tool_calls" } else { "stop" }, "logprobs": null}],
            "usage": usage(),
        }))
        .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    // As OpenAI does, every chunk carries `"usage": null` when usage was
    // asked for (serialised last: `json!` objects keep keys sorted).
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut chunk = json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if include_usage && !model.contains("nested-usage") {
            chunk["usage"] = Value::Null;
        }
        if model.contains("nested-usage") {
            chunk["x_meta"] = json!({"usage": 1});
        }
        // A member after `usage`, as OpenAI's `obfuscation` comes after it.
        if model.contains("padded") {
            chunk["x_padding"] = json!("pad");
        }
        chunk
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    match model.as_str() {
        "slow-stream" => return slow_stream(fake, chunks, 100),
        "paced-stream" => return slow_stream(fake, chunks, 15),
        "cut-before-content" => return sse_body(chunks, false),
        _ => {}
    }
    if tools {
        chunks.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            None,
        ));
        for part in ["{\"city\":", "\"Paris\"}"] {
            chunks.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                None,
            ));
        }
        chunks.push(chunk(json!({}), Some("tool_calls")));
    } else {
        for word in fake.text().split_inclusive(' ') {
            chunks.push(chunk(json!({"content": word}), None));
        }
        if model == "cut-after-content" {
            return sse_body(chunks, false);
        }
        chunks.push(chunk(json!({}), Some("stop")));
    }
    if include_usage {
        chunks.push(json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [], "usage": usage(),
        }));
    }
    sse_body(chunks, true)
}

fn sse_body(chunks: Vec<Value>, done: bool) -> Response {
    let mut text: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    if done {
        text.push_str("data: [DONE]\n\n");
    }
    ([("content-type", "text/event-stream")], text).into_response()
}

/// Counts the stream as dropped unless it finished.
struct DropGuard {
    fake: Fake,
    finished: std::cell::Cell<bool>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished.get() {
            self.fake.dropped.fetch_add(1, Ordering::SeqCst);
            self.fake.dropped_notify.notify_waiters();
        }
    }
}

fn slow_stream(fake: Fake, first: Vec<Value>, count: u32) -> Response {
    let guard = DropGuard {
        fake,
        finished: std::cell::Cell::new(false),
    };
    let stream = futures_util::stream::unfold(
        (guard, first, 0u32),
        move |(guard, mut first, n)| async move {
            if let Some(chunk) = first.pop() {
                return Some((
                    Ok::<_, Infallible>(format!("data: {chunk}\n\n")),
                    (guard, first, n),
                ));
            }
            if n > count {
                guard.finished.set(true);
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let text = if n == count {
                let done = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "slow-stream",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
                format!("data: {done}\n\ndata: [DONE]\n\n")
            } else {
                let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "slow-stream",
                "choices": [{"index": 0, "delta": {"content": format!("t{n} ")}, "finish_reason": null}]});
                format!("data: {chunk}\n\n")
            };
            Some((Ok(text), (guard, first, n + 1)))
        },
    );
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn openai_embeddings(State(fake): State<Fake>, headers: HeaderMap, bytes: Bytes) -> Response {
    let body = body_json(&bytes);
    fake.record("/v1/embeddings", &headers, &body, &bytes);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if let Some(error) = scripted_openai_error(&fake, &model, &headers) {
        return error;
    }
    axum::Json(json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.75]}],
        "model": model,
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }))
    .into_response()
}

async fn openai_completions(
    State(fake): State<Fake>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let body = body_json(&bytes);
    fake.record("/v1/completions", &headers, &body, &bytes);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if let Some(error) = scripted_openai_error(&fake, &model, &headers) {
        return error;
    }
    axum::Json(json!({
        "id": "cmpl-fake", "object": "text_completion", "created": 1, "model": model,
        "choices": [{"text": fake.text(), "index": 0, "finish_reason": "stop", "logprobs": null}],
        "usage": usage(),
    }))
    .into_response()
}

async fn openai_models(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    fake.record("/v1/models", &headers, &Value::Null, b"");
    axum::Json(json!({
        "object": "list",
        "data": [
            {"id": format!("{}-model-1", fake.name), "object": "model", "created": 1, "owned_by": fake.name},
            {"id": format!("{}-model-2", fake.name), "object": "model", "created": 1, "owned_by": fake.name},
        ],
    }))
    .into_response()
}

// ---------------------------------------------------------------------------
// Anthropic format
// ---------------------------------------------------------------------------

/// An upstream speaking Anthropic's Messages API; requires `x-api-key: <key>`.
pub async fn anthropic_upstream(name: &str, key: &str) -> Upstream {
    let fake = fake(name, Some(key));
    let router = Router::new()
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1/models", get(anthropic_models))
        .with_state(fake.clone());
    let (addr, task) = spawn(router).await;
    Upstream { addr, fake, task }
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}

async fn anthropic_messages(
    State(fake): State<Fake>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let body = body_json(&bytes);
    fake.record("/v1/messages", &headers, &body, &bytes);
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if key != fake.key.as_deref() || headers.get("anthropic-version").is_none() {
        return anthropic_error(401, "authentication_error", "invalid x-api-key");
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if model == "bad-request" {
        return anthropic_error(
            400,
            "invalid_request_error",
            "messages: upstream says the prompt is invalid",
        );
    }
    if let Some(status) = model.strip_prefix("status-") {
        let status: u16 = status.parse().unwrap_or(500);
        return anthropic_error(status, "api_error", "scripted failure");
    }
    let text = fake.text();
    if !body["stream"].as_bool().unwrap_or(false) {
        return axum::Json(json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 2},
        }))
        .into_response();
    }
    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    for word in text.split_inclusive(' ') {
        events.push(("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}})));
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}})));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let text: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    ([("content-type", "text/event-stream")], text).into_response()
}

async fn anthropic_models(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    fake.record("/v1/models", &headers, &Value::Null, b"");
    axum::Json(json!({
        "data": [{"type": "model", "id": "claude-fake", "display_name": "Claude Fake", "created_at": "2025-01-01T00:00:00Z"}],
        "has_more": false, "first_id": "claude-fake", "last_id": "claude-fake",
    }))
    .into_response()
}

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

/// `[manager]` settings that keep tests fast: short timeouts, no background checks.
pub const FAST_MANAGER: &str = r#"
[manager]
health_check_interval = "1h"
provider_timeout = "3s"
first_token_timeout = "2s"
stream_idle_timeout = "2s"
request_timeout = "10s"
base_ejection = "1s"
max_ejection = "2s"
retry_after_cap = "1s"
"#;

/// The real gateway, in-process on 127.0.0.1:0.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub manager: ProviderManager,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartError>>>,
}

impl TestGateway {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Triggers a graceful shutdown and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts the gateway on `toml` with no environment.
pub async fn gateway(toml: &str) -> TestGateway {
    gateway_with_env(toml, &[]).await
}

/// Starts the gateway on `toml`, with `env` as its whole environment.
pub async fn gateway_with_env(toml: &str, env: &[(&str, &str)]) -> TestGateway {
    let config = Config::from_toml_str(toml).unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let gateway = Gateway::with_env(config, Arc::new(move |name: &str| env.get(name).cloned()))
        .unwrap_or_else(|e| panic!("gateway: {e}"));
    let manager = gateway.manager().clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(listener, async move {
        let _ = rx.await;
    }));
    TestGateway {
        addr,
        manager,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// An HTTP client for tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A chat request body.
pub fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The `event:` names of an SSE body, in order.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .map(str::to_owned)
        })
        .collect()
}

/// The text content of an OpenAI SSE body's chunks.
pub fn stream_text(text: &str) -> String {
    sse_data(text)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// A metrics scrape as a list of sample lines (no comments).
pub async fn scrape(gw: &TestGateway) -> Vec<String> {
    client()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// Admin API and reload helpers
// ---------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("switchyard-admin-test-")
        .tempdir()
        .unwrap()
}

/// Waits until `/readyz` answers 200 (the reload triggers are then in place).
pub async fn wait_until_ready(gw: &TestGateway) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(response) = client().get(gw.url("/readyz")).send().await {
            if response.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the gateway did not become ready");
}

/// Starts the gateway on the config file at `path` (loaded as the binary
/// would), reloading from it; `env` is its whole secret environment.
pub async fn gateway_from_file(path: &std::path::Path, env: &[(&str, &str)]) -> TestGateway {
    use switchyard_server::config::{ConfigSource, load};
    let source = ConfigSource::File(path.to_owned());
    let config = load(&source).unwrap_or_else(|e| panic!("test config: {e}"));
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let gateway = Gateway::with_env(config, Arc::new(move |name: &str| env.get(name).cloned()))
        .unwrap_or_else(|e| panic!("gateway: {e}"))
        .with_config_source(source);
    let manager = gateway.manager().clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(listener, async move {
        let _ = rx.await;
    }));
    let gw = TestGateway {
        addr,
        manager,
        shutdown: Some(tx),
        task: Some(task),
    };
    wait_until_ready(&gw).await;
    gw
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A live `/admin/events` stream, collected in the background.
pub struct EventLog {
    text: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventLog {
    /// Subscribes to `url` (`.../admin/events[?recent=N]`), with `token` if given.
    pub async fn open(url: &str, token: Option<&str>) -> Self {
        use futures_util::StreamExt;
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        let task = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            while let Some(Ok(bytes)) = body.next().await {
                sink.lock().push_str(&String::from_utf8_lossy(&bytes));
            }
        });
        Self { text, task }
    }

    /// Everything received so far.
    pub fn text(&self) -> String {
        self.text.lock().clone()
    }

    /// `(event name, data)` of every complete message so far.
    pub fn events(&self) -> Vec<(String, Value)> {
        let text = self.text();
        let complete = match text.rfind("\n\n") {
            Some(end) => &text[..end + 2],
            None => "",
        };
        complete
            .split("\n\n")
            .filter_map(|message| {
                let name = message.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data: Vec<&str> = message
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                Some((
                    name.to_owned(),
                    serde_json::from_str(&data.join("\n")).unwrap_or(Value::Null),
                ))
            })
            .collect()
    }

    /// The names of the events so far that are in `of`, in order.
    pub fn names_among(&self, of: &[&str]) -> Vec<String> {
        self.events()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| of.contains(&name.as_str()))
            .collect()
    }

    /// Waits until an event named `name` whose data satisfies `pred` arrived.
    pub async fn wait_for(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(10), name, || {
            let found = self
                .events()
                .into_iter()
                .find(|(n, data)| n == name && pred(data))
                .map(|(_, data)| data);
            async move { found }
        })
        .await
    }
}

/// An OpenAI-compatible upstream whose chat requests for the upstream
/// model `held` wait until [`GatedUpstream::open`]; others answer at once
/// with `Hello from <name>`. Counts requests and those in flight.
pub struct GatedUpstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Drop for GatedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Gate {
    name: String,
    hits: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
}

async fn gated_chat(State(gate): State<Gate>, bytes: Bytes) -> Response {
    let body = body_json(&bytes);
    gate.hits.fetch_add(1, Ordering::SeqCst);
    if body["model"] == "held" {
        gate.in_flight.fetch_add(1, Ordering::SeqCst);
        let mut open = gate.gate.subscribe();
        let _ = open.wait_for(|open| *open).await;
        gate.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    axum::Json(json!({
        "id": "chatcmpl-gated", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Hello from {}", gate.name)}, "finish_reason": "stop"}],
        "usage": usage(),
    }))
    .into_response()
}

/// Starts a [`GatedUpstream`] answering as `name`.
pub async fn gated_upstream(name: &str) -> GatedUpstream {
    let (gate, _) = tokio::sync::watch::channel(false);
    let state = Gate {
        name: name.to_owned(),
        hits: Arc::default(),
        in_flight: Arc::default(),
        gate: Arc::new(gate),
    };
    let router = Router::new()
        .route("/v1/chat/completions", post(gated_chat))
        .with_state(state.clone());
    let (addr, task) = spawn(router).await;
    GatedUpstream {
        addr,
        hits: state.hits,
        in_flight: state.in_flight,
        gate: state.gate,
        task,
    }
}

impl GatedUpstream {
    /// `http://addr/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Chat requests received.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Held requests waiting now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Lets every held request (and later ones) answer.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }
}

/// A client of `/admin/*`, with the admin token when given.
#[derive(Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Admin {
    /// For `gw`, without a token.
    pub fn new(gw: &TestGateway) -> Self {
        Self::at(&format!("http://{}", gw.addr), None)
    }

    /// For the gateway at `base` (`http://host:port`).
    pub fn at(base: &str, token: Option<&str>) -> Self {
        Self {
            http: client(),
            base: base.to_owned(),
            token: token.map(str::to_owned),
        }
    }

    /// A request to `path`, with the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Status and body text.
    pub async fn call_text(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, String) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Status and JSON body (`Null` when not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let (status, text) = self.call_text(method, path, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// The ids of `GET /admin/providers`.
    pub async fn provider_ids(&self) -> Vec<String> {
        let (status, body) = self.get("/admin/providers").await;
        assert_eq!(status, 200, "{body}");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A chat request to `model`: status and the provider that answered (`-` if none).
pub async fn ask(http: &reqwest::Client, base: &str, model: &str) -> (u16, String) {
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat(model))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let provider = response
        .headers()
        .get("x-switchyard-provider")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let _ = response.bytes().await;
    (status, provider)
}

/// A `[[providers]]` TOML entry for an OpenAI-compatible upstream serving
/// `models` (`client name => upstream name`), no active health checks.
pub fn toml_provider(id: &str, base_url: &str, models: &[(&str, &str)], extra: &str) -> String {
    let mut out = format!(
        "[[providers]]\nid = \"{id}\"\ntype = \"openai_compatible\"\nbase_url = \"{base_url}\"\nhealth_check = \"none\"\n{extra}\n"
    );
    for (name, upstream) in models {
        out.push_str(&format!(
            "[providers.models.\"{name}\"]\nupstream_name = \"{upstream}\"\n"
        ));
    }
    out
}

/// The same provider as an admin JSON body.
pub fn json_provider(id: &str, base_url: &str, models: &[(&str, &str)]) -> Value {
    let models: serde_json::Map<String, Value> = models
        .iter()
        .map(|(name, upstream)| ((*name).to_owned(), json!({"upstream_name": upstream})))
        .collect();
    json!({
        "id": id,
        "type": "openai_compatible",
        "base_url": base_url,
        "health_check": "none",
        "models": models,
    })
}
