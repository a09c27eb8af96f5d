//! A fault-injecting OpenAI-compatible upstream over raw TCP, for `cargo xtask chaos` (and PGO training).
//!
//! The model name picks the fault (`fault-1` … `fault-16`; `backup`,
//! `backup-prefill` and `healthy` are well behaved). It speaks HTTP/1.1 by
//! hand because the faults live below what an HTTP framework lets a handler
//! do: resets before any byte, accepted-but-silent sockets, streams cut
//! without their terminating chunk. Every answer's text is a function of the
//! prompt alone (the *canonical* text), so a replay on a fallback model can
//! be checked byte for byte, and a trailing assistant message (a prefill) is
//! continued from where it left off. Every request is logged for the
//! scorecard's conduct checks. `POST …/messages` gets a well-behaved
//! Anthropic Messages answer instead, for the PGO training's Anthropic provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Words in every canonical answer.
pub const TOKENS: usize = 60;

/// Waits of the slow faults (shortened in quick mode).
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// Fault 7: delay before the first token.
    pub slow_first_token: Duration,
    /// Fault 9: how long the stream stalls.
    pub stall: Duration,
    /// Fault 15: how long the primary answers 503.
    pub outage: Duration,
    /// The pause between streamed words, so a stream spans real time.
    pub word_gap: Duration,
}

/// One request the upstream saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The model asked for.
    pub model: String,
    /// When, since the upstream started.
    pub at: Duration,
    /// The prompt (the run id is in it).
    pub prompt: String,
}

/// Shared state: the request log and per-fault counters.
pub struct Upstream {
    started: Instant,
    timings: Timings,
    log: Mutex<Vec<Seen>>,
    counts: Mutex<HashMap<(String, String), u32>>,
    outage_started: Mutex<Option<Instant>>,
}

impl Upstream {
    /// Starts listening on 127.0.0.1; returns the state and the port.
    pub async fn start(timings: Timings) -> std::io::Result<(Arc<Self>, u16)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let upstream = Arc::new(Self {
            started: Instant::now(),
            timings,
            log: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
            outage_started: Mutex::new(None),
        });
        let serving = Arc::clone(&upstream);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                // Each SSE event is its own small write: without this,
                // Nagle holds every one behind the last one's ACK.
                let _ = socket.set_nodelay(true);
                let upstream = Arc::clone(&serving);
                tokio::spawn(async move { upstream.connection(socket).await });
            }
        });
        Ok((upstream, port))
    }

    /// Every request seen for `model` whose prompt contains `run`.
    pub fn seen(&self, model: &str, run: &str) -> Vec<Seen> {
        self.log
            .lock()
            .map(|log| {
                log.iter()
                    .filter(|s| s.model == model && s.prompt.contains(run))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Time since the upstream started.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn connection(self: Arc<Self>, mut socket: TcpStream) {
        let mut buffer = Vec::new();
        loop {
            let Some((head, body)) = read_request(&mut socket, &mut buffer).await else {
                return;
            };
            let keep_open = match self.answer(&mut socket, &head, &body).await {
                Ok(keep_open) => keep_open,
                Err(_) => return,
            };
            if !keep_open {
                return;
            }
        }
    }

    fn count(&self, model: &str, prompt: &str) -> u32 {
        let Ok(mut counts) = self.counts.lock() else {
            return 0;
        };
        let n = counts
            .entry((model.to_owned(), prompt.to_owned()))
            .or_insert(0);
        *n += 1;
        *n
    }

    /// Answers one request; `Ok(false)` when the connection must close.
    async fn answer(
        &self,
        socket: &mut TcpStream,
        head: &str,
        body: &[u8],
    ) -> std::io::Result<bool> {
        let request_line = head.lines().next().unwrap_or_default();
        if request_line.starts_with("GET ") && request_line.contains("/models") {
            write_json(socket, 200, &[], &json!({"object": "list", "data": []})).await?;
            return Ok(true);
        }
        if request_line.starts_with("POST ") && request_line.contains("/messages ") {
            anthropic_answer(socket, body).await?;
            return Ok(true);
        }
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            write_json(
                socket,
                400,
                &[],
                &error_body("invalid JSON", "invalid_request_error", None),
            )
            .await?;
            return Ok(true);
        };
        let model = request["model"].as_str().unwrap_or_default().to_owned();
        let messages = request["messages"].as_array().cloned().unwrap_or_default();
        let prompt = messages
            .iter()
            .filter(|m| m["role"] == "user")
            .filter_map(|m| m["content"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let prefill = messages
            .last()
            .filter(|m| m["role"] == "assistant")
            .and_then(|m| m["content"].as_str())
            .map(str::to_owned);
        if let Ok(mut log) = self.log.lock() {
            log.push(Seen {
                model: model.clone(),
                at: self.started.elapsed(),
                prompt: prompt.clone(),
            });
        }
        let stream = request["stream"].as_bool().unwrap_or(false);
        let include_usage = request["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        let nth = self.count(&model, &prompt);
        let canonical = canonical_text(&prompt);
        let text = match &prefill {
            Some(prefix) if model == "backup-prefill" => {
                let _ = prefix;
                write_json(
                    socket,
                    400,
                    &[],
                    &error_body(
                        "This model does not support assistant message prefill.",
                        "invalid_request_error",
                        Some("prefill_unsupported"),
                    ),
                )
                .await?;
                return Ok(true);
            }
            Some(prefix) => canonical
                .strip_prefix(prefix.as_str())
                .unwrap_or(&canonical)
                .to_owned(),
            None => canonical.clone(),
        };
        let reply = Reply {
            model: model.clone(),
            words: split_words(&text),
            prompt_tokens: u64::try_from(prompt.split_whitespace().count()).unwrap_or(0) + 8,
            include_usage,
        };
        let t = self.timings;
        match model.as_str() {
            "fault-1" if nth == 1 => {
                let limited = error_body(
                    "Rate limit reached",
                    "rate_limit_error",
                    Some("rate_limit_exceeded"),
                );
                write_json(socket, 429, &[("retry-after", "2")], &limited).await?;
            }
            "fault-2" => {
                let limited = error_body(
                    "Rate limit reached",
                    "rate_limit_error",
                    Some("rate_limit_exceeded"),
                );
                write_json(socket, 429, &[], &limited).await?;
            }
            "fault-3" if nth == 1 => {
                write_json(
                    socket,
                    500,
                    &[],
                    &error_body("internal error", "server_error", None),
                )
                .await?;
            }
            "fault-4" | "fault-16" => {
                write_json(
                    socket,
                    503,
                    &[],
                    &error_body("service unavailable", "server_error", None),
                )
                .await?;
            }
            "fault-5" if nth == 1 => {
                // Linger 0 makes the close a reset (RST) at once; it never blocks.
                #[allow(deprecated)]
                socket.set_linger(Some(Duration::ZERO))?;
                return Ok(false);
            }
            "fault-6" => {
                std::future::pending::<()>().await;
            }
            "fault-12" => {
                let too_long = error_body(
                    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                    "invalid_request_error",
                    Some("context_length_exceeded"),
                );
                write_json(socket, 400, &[], &too_long).await?;
            }
            "fault-13" => {
                let policy = error_body(
                    "Your request was rejected as a result of our safety system.",
                    "invalid_request_error",
                    Some("content_policy_violation"),
                );
                write_json(socket, 400, &[], &policy).await?;
            }
            "fault-15" => {
                let started = {
                    let Ok(mut outage) = self.outage_started.lock() else {
                        return Ok(false);
                    };
                    *outage.get_or_insert_with(Instant::now)
                };
                if started.elapsed() < t.outage {
                    write_json(
                        socket,
                        503,
                        &[],
                        &error_body("service unavailable", "server_error", None),
                    )
                    .await?;
                } else if stream {
                    reply.stream(socket, Shape::Complete, t.word_gap).await?;
                } else {
                    reply.whole(socket).await?;
                }
            }
            _ if !stream => reply.whole(socket).await?,
            "fault-7" => {
                reply
                    .stream(socket, Shape::SlowFirst(t.slow_first_token), t.word_gap)
                    .await?
            }
            "fault-8" | "fault-8-off" => {
                return reply
                    .stream(socket, Shape::CutAfter(40), t.word_gap)
                    .await
                    .map(|()| false);
            }
            "fault-9" | "fault-9-off" => {
                reply
                    .stream(socket, Shape::StallAfter(20, t.stall), t.word_gap)
                    .await?
            }
            "fault-10" => {
                reply
                    .stream(socket, Shape::MalformedAt(30), t.word_gap)
                    .await?
            }
            "fault-11" => reply.stream(socket, Shape::NoDone, t.word_gap).await?,
            "fault-14" | "fault-14-off" => {
                return reply
                    .stream(socket, Shape::CutAfter(30), t.word_gap)
                    .await
                    .map(|()| false);
            }
            _ => reply.stream(socket, Shape::Complete, t.word_gap).await?,
        }
        Ok(true)
    }
}

/// The canonical answer to `prompt`: 60 words, a function of the prompt alone.
pub fn canonical_text(prompt: &str) -> String {
    const WORDS: [&str; 12] = [
        "amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper",
        "kestrel", "lumen",
    ];
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in prompt.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..TOKENS)
        .map(|i| {
            hash = hash
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let word = WORDS[usize::try_from(hash >> 60).unwrap_or(0) % WORDS.len()];
            format!("{word}{i} ")
        })
        .collect()
}

fn split_words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

enum Shape {
    Complete,
    SlowFirst(Duration),
    CutAfter(usize),
    StallAfter(usize, Duration),
    MalformedAt(usize),
    NoDone,
}

struct Reply {
    model: String,
    words: Vec<String>,
    prompt_tokens: u64,
    include_usage: bool,
}

impl Reply {
    fn usage(&self) -> Value {
        let completion = u64::try_from(self.words.len()).unwrap_or(0);
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
               "total_tokens": self.prompt_tokens + completion})
    }

    async fn whole(&self, socket: &mut TcpStream) -> std::io::Result<()> {
        let body = json!({
            "id": "chatcmpl-chaos", "object": "chat.completion", "created": 0, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.words.concat()},
                         "finish_reason": "stop"}],
            "usage": self.usage(),
        });
        write_json(socket, 200, &[], &body).await
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let chunk = json!({
            "id": "chatcmpl-chaos", "object": "chat.completion.chunk", "created": 0, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {chunk}\n\n")
    }

    async fn stream(
        &self,
        socket: &mut TcpStream,
        shape: Shape,
        word_gap: Duration,
    ) -> std::io::Result<()> {
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await?;
        if let Shape::SlowFirst(delay) = shape {
            send(socket, ": waiting\n\n").await?;
            tokio::time::sleep(delay).await;
        }
        send(
            socket,
            &self.chunk(json!({"role": "assistant", "content": ""}), None),
        )
        .await?;
        for (i, word) in self.words.iter().enumerate() {
            match shape {
                Shape::CutAfter(n) if i == n => return Ok(()),
                Shape::StallAfter(n, stall) if i == n => tokio::time::sleep(stall).await,
                Shape::MalformedAt(n) if i == n => {
                    send(socket, "data: {\"choices\": [{\"delta\": {\"content\n\n").await?
                }
                _ => {}
            }
            send(socket, &self.chunk(json!({"content": word}), None)).await?;
            if !word_gap.is_zero() {
                tokio::time::sleep(word_gap).await;
            }
        }
        send(socket, &self.chunk(json!({}), Some("stop"))).await?;
        if self.include_usage {
            let usage = json!({"id": "chatcmpl-chaos", "object": "chat.completion.chunk", "created": 0,
                               "model": self.model, "choices": [], "usage": self.usage()});
            send(socket, &format!("data: {usage}\n\n")).await?;
        }
        if let Shape::NoDone = shape {
            // Complete, but never terminated: hold the connection open.
            tokio::time::sleep(Duration::from_secs(120)).await;
            return Ok(());
        }
        send(socket, "data: [DONE]\n\n").await?;
        socket.write_all(b"0\r\n\r\n").await
    }
}

async fn send(socket: &mut TcpStream, data: &str) -> std::io::Result<()> {
    socket
        .write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await?;
    socket.flush().await
}

async fn write_json(
    socket: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &Value,
) -> std::io::Result<()> {
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.flush().await
}

/// A `[[providers]]` config entry for an OpenAI-compatible provider served
/// by this upstream on `port`, serving `models`.
pub fn openai_provider<M: AsRef<str>>(id: &str, port: u16, models: &[M]) -> String {
    let mut toml = format!(
        "\n[[providers]]\nid = \"{id}\"\ntype = \"openai_compatible\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nhealth_check = \"none\"\n"
    );
    for model in models {
        toml.push_str(&format!("[providers.models.\"{}\"]\n", model.as_ref()));
    }
    toml
}

/// Answers an Anthropic Messages request (no faults: the PGO training's
/// Anthropic provider): the canonical text of the user turns, whole or as
/// Anthropic's SSE events.
async fn anthropic_answer(socket: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        let invalid = json!({"type": "error",
            "error": {"type": "invalid_request_error", "message": "invalid JSON"}});
        return write_json(socket, 400, &[], &invalid).await;
    };
    let model = request["model"].as_str().unwrap_or_default();
    let prompt = request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user")
        .flat_map(|m| match &m["content"] {
            Value::String(text) => vec![text.clone()],
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b["text"].as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let words = split_words(&canonical_text(&prompt));
    let input_tokens = prompt.split_whitespace().count() + 8;
    if !request["stream"].as_bool().unwrap_or(false) {
        let message = json!({"id": "msg_harness", "type": "message", "role": "assistant",
            "model": model, "content": [{"type": "text", "text": words.concat()}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": words.len()}});
        return write_json(socket, 200, &[], &message).await;
    }
    socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        .await?;
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    send(
        socket,
        &event(
            "message_start",
            json!({"type": "message_start", "message": {
        "id": "msg_harness", "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
        ),
    )
    .await?;
    send(
        socket,
        &event(
            "content_block_start",
            json!({"type": "content_block_start",
        "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    )
    .await?;
    for word in &words {
        send(
            socket,
            &event(
                "content_block_delta",
                json!({"type": "content_block_delta",
            "index": 0, "delta": {"type": "text_delta", "text": word}}),
            ),
        )
        .await?;
    }
    send(
        socket,
        &event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
    )
    .await?;
    send(
        socket,
        &event(
            "message_delta",
            json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": words.len()}}),
        ),
    )
    .await?;
    send(
        socket,
        &event("message_stop", json!({"type": "message_stop"})),
    )
    .await?;
    socket.write_all(b"0\r\n\r\n").await
}

/// Reads one request (head and `content-length` body); `None` at EOF.
async fn read_request(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            let total = end + 4 + length;
            while buffer.len() < total {
                let n = socket.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = buffer[end + 4..total].to_vec();
            buffer.drain(..total);
            return Some((head, body));
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}
