//! A scriptable provider for tests, demos and the `mock` adapter (feature `test-util`).
//!
//! Behaviour is a queue of [`Step`]s consumed one per call, then a default
//! step; a step can answer, fail with any classified error, hang, or stream
//! in a chosen shape (complete, cut after N chunks, stall, malformed chunk,
//! missing terminator, in-band error). Every call is logged with its
//! upstream model and the manager clock, so tests assert attempt counts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::ProviderError;
use crate::provider::{CallContext, Capabilities, Provider};
use crate::types::{
    ChatChoice, ChatChunk, ChatMessage, ChatRequest, ChatResponse, ChatStream, ChunkChoice,
    ChunkDelta, ChunkItem, CompletionRequest, CompletionResponse, EmbeddingsRequest,
    EmbeddingsResponse, ModelInfo, StreamChunk, Usage,
};

/// How a scripted stream behaves.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamShape {
    /// Every chunk, a `finish_reason`, usage when asked, then the end.
    Complete,
    /// `n` content chunks, then the connection closes (no finish_reason).
    CutAfter(usize),
    /// `n` content chunks, then silence forever.
    StallAfter(usize),
    /// A malformed event before chunk `n` (skipped and counted like an adapter does).
    MalformedAt(usize),
    /// Complete, but the stream never closes (no `[DONE]`).
    MissingTerminator,
    /// `n` content chunks, then an in-band error event.
    ErrorAfter(usize, ProviderError),
}

/// One scripted behaviour.
#[derive(Clone, Debug)]
pub enum Step {
    /// Answer with the provider's reply text after `delay`.
    Reply {
        /// Delay before answering (before the first chunk for streams).
        delay: Duration,
    },
    /// Fail with `error` after `delay`.
    Fail {
        /// The error.
        error: ProviderError,
        /// Delay before failing.
        delay: Duration,
    },
    /// Never answer.
    Hang,
    /// For streams: this shape (non-stream calls answer normally).
    Stream {
        /// Shape.
        shape: StreamShape,
        /// Delay before the first chunk.
        first_chunk_delay: Duration,
    },
}

impl Step {
    /// Reply at once.
    pub fn ok() -> Self {
        Self::Reply {
            delay: Duration::ZERO,
        }
    }

    /// Reply after `delay`.
    pub fn slow(delay: Duration) -> Self {
        Self::Reply { delay }
    }

    /// Fail at once.
    pub fn fail(error: ProviderError) -> Self {
        Self::Fail {
            error,
            delay: Duration::ZERO,
        }
    }

    /// Fail with an upstream HTTP status at once.
    pub fn status(status: u16) -> Self {
        Self::fail(ProviderError::upstream(
            status,
            format!("scripted {status}"),
            None,
            None,
        ))
    }

    /// Stream in `shape` at once.
    pub fn stream(shape: StreamShape) -> Self {
        Self::Stream {
            shape,
            first_chunk_delay: Duration::ZERO,
        }
    }
}

/// One logged call.
#[derive(Clone, Debug, PartialEq)]
pub struct CallRecord {
    /// `chat`, `chat_stream`, `embeddings`, `completions`, `models`, `health`.
    pub operation: &'static str,
    /// The upstream model requested.
    pub model: String,
    /// When the call began.
    pub at: Instant,
}

struct Script {
    queue: VecDeque<Step>,
    default: Step,
    per_model: Vec<(String, VecDeque<Step>, Option<Step>)>,
    health: VecDeque<Result<(), ProviderError>>,
    health_default: Result<(), ProviderError>,
}

/// A provider whose every answer is scripted.
pub struct ScriptedProvider {
    kind: String,
    reply: String,
    models: Vec<String>,
    chunk_delay: Mutex<Duration>,
    fail_every: Option<(u64, ProviderError)>,
    script: Mutex<Script>,
    calls: Mutex<Vec<CallRecord>>,
    counter: AtomicU64,
    reject_prefill: std::sync::atomic::AtomicBool,
    concurrent: AtomicU64,
    peak_concurrent: AtomicU64,
}

/// Counts a non-stream call as concurrent while it runs.
struct Concurrent<'a>(&'a ScriptedProvider);

impl<'a> Concurrent<'a> {
    fn enter(provider: &'a ScriptedProvider) -> Self {
        let now = provider.concurrent.fetch_add(1, Ordering::AcqRel) + 1;
        provider.peak_concurrent.fetch_max(now, Ordering::AcqRel);
        Self(provider)
    }
}

impl Drop for Concurrent<'_> {
    fn drop(&mut self) {
        self.0.concurrent.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for ScriptedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedProvider")
            .field("kind", &self.kind)
            .field("calls", &self.calls.lock().len())
            .finish()
    }
}

impl ScriptedProvider {
    /// A provider that answers `reply` to everything, at once.
    pub fn new(reply: impl Into<String>) -> Self {
        Self {
            kind: "mock".to_owned(),
            reply: reply.into(),
            models: Vec::new(),
            chunk_delay: Mutex::new(Duration::ZERO),
            fail_every: None,
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                default: Step::ok(),
                per_model: Vec::new(),
                health: VecDeque::new(),
                health_default: Ok(()),
            }),
            calls: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            reject_prefill: std::sync::atomic::AtomicBool::new(false),
            concurrent: AtomicU64::new(0),
            peak_concurrent: AtomicU64::new(0),
        }
    }

    /// Shared, ready for the manager.
    pub fn shared(reply: impl Into<String>) -> Arc<Self> {
        Arc::new(Self::new(reply))
    }

    /// Models reported by `list_models`.
    pub fn with_models<I: IntoIterator<Item = S>, S: Into<String>>(mut self, models: I) -> Self {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// Fails every `n`-th call with `error` (config-driven mocks).
    pub fn with_fail_every(mut self, n: u64, error: ProviderError) -> Self {
        if n > 0 {
            self.fail_every = Some((n, error));
        }
        self
    }

    /// Delay between stream chunks.
    pub fn with_chunk_delay(self, delay: Duration) -> Self {
        *self.chunk_delay.lock() = delay;
        self
    }

    /// Sets the step used when the queue is empty.
    pub fn always(&self, step: Step) -> &Self {
        self.script.lock().default = step;
        self
    }

    /// Queues steps for the next calls.
    pub fn then(&self, step: Step) -> &Self {
        self.script.lock().queue.push_back(step);
        self
    }

    /// Sets the default step for calls naming upstream model `model`.
    pub fn always_for(&self, model: &str, step: Step) -> &Self {
        let mut script = self.script.lock();
        match script.per_model.iter_mut().find(|(m, _, _)| m == model) {
            Some(entry) => entry.2 = Some(step),
            None => script
                .per_model
                .push((model.to_owned(), VecDeque::new(), Some(step))),
        }
        self
    }

    /// Queues a step for the next call naming upstream model `model`.
    pub fn then_for(&self, model: &str, step: Step) -> &Self {
        let mut script = self.script.lock();
        match script.per_model.iter_mut().find(|(m, _, _)| m == model) {
            Some(entry) => entry.1.push_back(step),
            None => script
                .per_model
                .push((model.to_owned(), VecDeque::from([step]), None)),
        }
        self
    }

    /// Queues `count` copies of `step`.
    pub fn times(&self, count: usize, step: Step) -> &Self {
        let mut script = self.script.lock();
        for _ in 0..count {
            script.queue.push_back(step.clone());
        }
        self
    }

    /// Sets the result of health checks from now on.
    pub fn health_always(&self, result: Result<(), ProviderError>) -> &Self {
        self.script.lock().health_default = result;
        self
    }

    /// Queues health-check results.
    pub fn health_then(&self, result: Result<(), ProviderError>) -> &Self {
        self.script.lock().health.push_back(result);
        self
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.lock().clone()
    }

    /// Number of generation calls (chat, stream, embeddings, completions).
    pub fn generation_calls(&self) -> usize {
        self.calls
            .lock()
            .iter()
            .filter(|c| !matches!(c.operation, "models" | "health"))
            .count()
    }

    /// The most non-stream calls that ever ran at once.
    pub fn peak_concurrency(&self) -> u64 {
        self.peak_concurrent.load(Ordering::Acquire)
    }

    /// Number of health checks.
    pub fn health_checks(&self) -> usize {
        self.calls
            .lock()
            .iter()
            .filter(|c| c.operation == "health")
            .count()
    }

    fn log(&self, operation: &'static str, model: &str) {
        self.calls.lock().push(CallRecord {
            operation,
            model: model.to_owned(),
            at: Instant::now(),
        });
    }

    fn next_step(&self, model: &str) -> Step {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some((every, error)) = &self.fail_every {
            if n % every == 0 {
                return Step::fail(error.clone());
            }
        }
        let mut script = self.script.lock();
        if let Some((_, queue, default)) = script.per_model.iter_mut().find(|(m, _, _)| m == model)
        {
            if let Some(step) = queue.pop_front().or_else(|| default.clone()) {
                return step;
            }
        }
        script
            .queue
            .pop_front()
            .unwrap_or_else(|| script.default.clone())
    }

    /// Rejects requests ending in an assistant message (a prefill) with a 400,
    /// like models that do not support continuation.
    pub fn rejecting_prefill(self) -> Self {
        self.reject_prefill.store(true, Ordering::Relaxed);
        self
    }

    /// The reply for `request`: a trailing assistant message (a prefill) is
    /// continued, so only the rest of the reply comes back.
    fn reply_to(&self, request: &ChatRequest) -> Result<String, ProviderError> {
        let full = self.reply_for(&request.model);
        let prefill = request
            .messages
            .last()
            .filter(|m| m.role == "assistant")
            .and_then(ChatMessage::text_content);
        match prefill {
            Some(_) if self.reject_prefill.load(Ordering::Relaxed) => Err(ProviderError::upstream(
                400,
                "assistant message prefill is not supported",
                Some("invalid_request_error".to_owned()),
                None,
            )),
            Some(prefix) => Ok(full
                .strip_prefix(prefix.as_str())
                .unwrap_or(&full)
                .to_owned()),
            None => Ok(full),
        }
    }

    fn reply_for(&self, model: &str) -> String {
        self.reply.replace("{model}", model)
    }

    async fn settle(step: &Step) -> Result<(), ProviderError> {
        match step {
            Step::Reply { delay } => {
                tokio::time::sleep(*delay).await;
                Ok(())
            }
            Step::Fail { error, delay } => {
                tokio::time::sleep(*delay).await;
                Err(error.clone())
            }
            Step::Hang => std::future::pending().await,
            Step::Stream {
                first_chunk_delay, ..
            } => {
                tokio::time::sleep(*first_chunk_delay).await;
                Ok(())
            }
        }
    }

    fn words(text: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut current = String::new();
        for c in text.chars() {
            current.push(c);
            if c == ' ' {
                words.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            words.push(current);
        }
        words
    }
}

fn chunk(model: &str, delta: ChunkDelta, finish: Option<&str>) -> ChatChunk {
    ChatChunk {
        id: "chatcmpl-scripted".to_owned(),
        object: "chat.completion.chunk".to_owned(),
        created: 0,
        model: model.to_owned(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish.map(str::to_owned),
            logprobs: None,
            extra: Default::default(),
        }],
        usage: None,
        extra: Default::default(),
        source: Default::default(),
    }
}

fn text_delta(text: &str) -> ChunkDelta {
    ChunkDelta {
        content: Some(text.to_owned()),
        ..ChunkDelta::default()
    }
}

#[async_trait]
impl Provider for ScriptedProvider {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL_OPENAI
    }

    async fn chat(
        &self,
        request: ChatRequest,
        _ctx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        self.log("chat", &request.model);
        let _running = Concurrent::enter(self);
        let step = self.next_step(&request.model);
        Self::settle(&step).await?;
        let text = self.reply_to(&request)?;
        let completion = Self::words(&text).len() as u64;
        Ok(ChatResponse {
            id: "chatcmpl-scripted".to_owned(),
            object: "chat.completion".to_owned(),
            created: 0,
            model: request.model.clone(),
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessage::text("assistant", text),
                finish_reason: Some("stop".to_owned()),
                logprobs: None,
                extra: Default::default(),
            }],
            usage: Some(Usage::new(
                u64::from(request.estimated_prompt_tokens()),
                completion,
            )),
            extra: Default::default(),
        })
    }

    async fn chat_stream(
        &self,
        request: ChatRequest,
        _ctx: &CallContext,
    ) -> Result<ChatStream, ProviderError> {
        self.log("chat_stream", &request.model);
        let step = self.next_step(&request.model);
        Self::settle(&step).await?;
        let shape = match step {
            Step::Stream { shape, .. } => shape,
            _ => StreamShape::Complete,
        };
        let model = request.model.clone();
        let words = Self::words(&self.reply_to(&request)?);
        let include_usage = request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let prompt_tokens = u64::from(request.estimated_prompt_tokens());
        let delay = *self.chunk_delay.lock();
        let stream = async_stream(move |tx| async move {
            let send = |item| tx.send(item).is_ok();
            let mut role = ChunkDelta {
                role: Some("assistant".to_owned()),
                ..ChunkDelta::default()
            };
            role.content = Some(String::new());
            if !send(Ok(chunk(&model, role, None))) {
                return;
            }
            let limit = match &shape {
                StreamShape::CutAfter(n)
                | StreamShape::StallAfter(n)
                | StreamShape::ErrorAfter(n, _) => *n,
                _ => words.len(),
            };
            for (i, word) in words.iter().enumerate().take(limit) {
                if let StreamShape::MalformedAt(at) = &shape {
                    if *at == i {
                        metrics::counter!("switchyard_stream_malformed_events_total").increment(1);
                    }
                }
                tokio::time::sleep(delay).await;
                if !send(Ok(chunk(&model, text_delta(word), None))) {
                    return;
                }
            }
            match shape {
                StreamShape::CutAfter(_) => return,
                StreamShape::StallAfter(_) => std::future::pending::<()>().await,
                StreamShape::ErrorAfter(_, error) => {
                    send(Err(error));
                    return;
                }
                _ => {}
            }
            if !send(Ok(chunk(&model, ChunkDelta::default(), Some("stop")))) {
                return;
            }
            if include_usage {
                let mut last = chunk(&model, ChunkDelta::default(), None);
                last.choices.clear();
                last.usage = Some(Usage::new(prompt_tokens, words.len() as u64));
                send(Ok(last));
            }
            if shape == StreamShape::MissingTerminator {
                std::future::pending::<()>().await;
            }
        });
        Ok(stream)
    }

    async fn embeddings(
        &self,
        request: EmbeddingsRequest,
        _ctx: &CallContext,
    ) -> Result<EmbeddingsResponse, ProviderError> {
        self.log("embeddings", &request.model);
        Self::settle(&self.next_step(&request.model)).await?;
        let inputs = match &request.input {
            serde_json::Value::Array(items) => items.len(),
            _ => 1,
        };
        Ok(EmbeddingsResponse {
            object: "list".to_owned(),
            data: (0..inputs)
                .map(|i| serde_json::json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}))
                .collect(),
            model: request.model,
            usage: Some(Usage::new(inputs as u64, 0)),
            extra: Default::default(),
        })
    }

    async fn completions(
        &self,
        request: CompletionRequest,
        _ctx: &CallContext,
    ) -> Result<CompletionResponse, ProviderError> {
        self.log("completions", &request.model);
        Self::settle(&self.next_step(&request.model)).await?;
        let text = self.reply_for(&request.model);
        Ok(CompletionResponse {
            id: "cmpl-scripted".to_owned(),
            object: "text_completion".to_owned(),
            created: 0,
            model: request.model,
            choices: vec![serde_json::json!({"index": 0, "text": text, "finish_reason": "stop"})],
            usage: Some(Usage::new(1, Self::words(&text).len() as u64)),
            extra: Default::default(),
        })
    }

    async fn list_models(&self, _ctx: &CallContext) -> Result<Vec<ModelInfo>, ProviderError> {
        self.log("models", "");
        Ok(self
            .models
            .iter()
            .map(|m| ModelInfo::new(m, "mock"))
            .collect())
    }

    async fn health_check(&self, _ctx: &CallContext) -> Result<(), ProviderError> {
        self.log("health", "");
        let mut script = self.script.lock();
        let result = script
            .health
            .pop_front()
            .unwrap_or_else(|| script.health_default.clone());
        drop(script);
        result
    }
}

/// A stream fed by an async producer through an unbounded channel: the
/// producer stops as soon as the consumer drops the stream.
fn async_stream<F, Fut>(producer: F) -> ChatStream
where
    F: FnOnce(tokio::sync::mpsc::UnboundedSender<Result<ChatChunk, ProviderError>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(producer(tx));
    Box::pin(ChannelStream { rx, task })
}

struct ChannelStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<ChatChunk, ProviderError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ChannelStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl futures_core::Stream for ChannelStream {
    type Item = ChunkItem;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|chunk| chunk.map(as_adapter_makes_it)))
    }
}

/// `chunk` as an OpenAI adapter hands it on: its event data, unparsed,
/// when it has the usual shape ([`StreamChunk::pass_through`]), else
/// parsed.
pub fn as_adapter_makes_it(chunk: ChatChunk) -> StreamChunk {
    match serde_json::to_string(&chunk) {
        Ok(data) => StreamChunk::pass_through(data.into()).unwrap_or_else(|_| chunk.into()),
        Err(_) => chunk.into(),
    }
}
