//! The `openai` and `openai_compatible` adapters: OpenAI's HTTP API, spoken by OpenAI, vLLM, Ollama, LM Studio, Groq, DeepSeek, Together and the like.
//!
//! Requests are core's OpenAI-shaped types, serialised with every unknown
//! field kept (tools, `response_format`, `logprobs`, `n`, `seed`, vendor
//! extensions ...); the manager has already rewritten `model`. Streams
//! always ask for `stream_options.include_usage` so token metrics see
//! every stream; the usage chunk stays in the stream (the server strips
//! it when the client did not ask).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use futures_core::Stream;
use serde_json::Value;
use switchyard_core::config::{HealthCheckMode, NamedHealthCheck};
use switchyard_core::stream::TimedStream;
use switchyard_core::{
    BoxedChatChunk, CallContext, Capabilities, ChatChunk, ChatRequest, ChatResponse, ChatStream,
    ChunkItem, CompletionRequest, CompletionResponse, EmbeddingsRequest, EmbeddingsResponse,
    ModelInfo, Provider, ProviderError, RawChatResponse, Secret, StreamChunk, StreamOptions,
    TimeoutPhase, UsualChunks,
};

use crate::http::{Upstream, error_from_response, parse_json, transport_error, within};
use crate::sse::SseEvent;
use crate::stream::{
    DRAIN_LIMIT, ResponseEvents, count_malformed, in_band_error, is_done, response_events,
    source_failure,
};
use crate::wire::openai::ModelList;

/// An OpenAI-format upstream.
pub struct OpenAiProvider {
    kind: &'static str,
    http: Upstream,
    health: HealthCheckMode,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("kind", &self.kind)
            .field("http", &self.http)
            .field("health", &self.health)
            .finish()
    }
}

impl OpenAiProvider {
    /// An adapter of type `kind` (`openai` or `openai_compatible`).
    pub fn new(kind: &'static str, http: Upstream, health: HealthCheckMode) -> Self {
        Self { kind, http, health }
    }

    fn body<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ProviderError> {
        serde_json::to_vec(value).map_err(|e| ProviderError::Protocol {
            message: format!("cannot serialise the request: {e}"),
        })
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        ctx: &CallContext,
        what: &str,
    ) -> Result<T, ProviderError> {
        let request = self.http.post_json(path, body, ctx);
        let bytes = self
            .http
            .send_and_read(request, ctx, ctx.response_timeout, TimeoutPhase::Response)
            .await?;
        check_error_in_body(&bytes, self.http.secret())?;
        parse_json(&bytes, what)
    }
}

/// Some compatible servers answer 200 with an error body.
fn check_error_in_body(bytes: &[u8], secret: Option<&Secret>) -> Result<(), ProviderError> {
    // Error bodies are small; a large body is an answer.
    let trimmed = bytes.trim_ascii_start();
    if trimmed.len() > 64 * 1024 || !trimmed.starts_with(b"{") || !contains(trimmed, b"\"error\"") {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(());
    };
    let is_error = value.get("error").is_some_and(|e| !e.is_null())
        && value.get("choices").is_none()
        && value.get("data").is_none();
    if !is_error {
        return Ok(());
    }
    match in_band_error(&value, secret) {
        ProviderError::InBand(e) => Err(ProviderError::Upstream(e)),
        other => Err(other),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Opens an SSE response: waits for headers within the first-token limit,
/// then wraps the body in the chunk parser and core's timing rules, with
/// the first-token clock counting the time already spent.
pub(crate) async fn open_stream(
    http: &Upstream,
    request: crate::client::UpstreamRequest,
    ctx: &CallContext,
) -> Result<(crate::client::UpstreamResponse, CallContext), ProviderError> {
    let started = tokio::time::Instant::now();
    let response = http
        .open(
            request,
            ctx,
            ctx.first_token_timeout,
            TimeoutPhase::FirstByte,
        )
        .await?;
    let is_json = response
        .headers()
        .get(::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        // Not a stream: an error body with a success status, or a server
        // that ignored `stream`. Either way it is not the protocol. Boxed:
        // inline, reading this rare body would sit in every stream's future.
        let body = Box::pin(within(
            ctx,
            ctx.first_token_timeout.saturating_sub(started.elapsed()),
            TimeoutPhase::FirstByte,
            async {
                response
                    .bytes()
                    .await
                    .map_err(|e| transport_error(e, http.secret()))
            },
        ))
        .await?;
        check_error_in_body(&body, http.secret())?;
        return Err(ProviderError::Protocol {
            message: "expected an event stream, got a JSON body".to_owned(),
        });
    }
    let mut timed = ctx.clone();
    timed.first_token_timeout = ctx.first_token_timeout.saturating_sub(started.elapsed());
    Ok((response, timed))
}

/// An OpenAI chunk stream: SSE events in, chunks out, polled directly so
/// a chunk moves no future on its way.
struct ChunkReader {
    events: ResponseEvents,
    usual: UsualChunks,
    provider: String,
    secret: Option<Secret>,
    chunks: u64,
    finished: bool,
    done: bool,
}

impl ChunkReader {
    /// What a stream ends with once its input has (after `[DONE]` or not).
    fn after_done(&self) -> Option<ChunkItem> {
        (!self.finished).then_some(Err(ProviderError::StreamCut {
            chunks: self.chunks,
        }))
    }

    /// A chunk or in-band error from one event; `None` for a malformed one.
    fn read(&mut self, event: SseEvent) -> Option<ChunkItem> {
        let SseEvent { event, data } = event;
        let named_error = event.as_deref() == Some("error");
        let data = if named_error {
            data
        } else {
            // Almost every event is a chunk of the usual shape: it goes on
            // as its bytes, read only for what the stream needs.
            let data = match self.usual.read(data) {
                Ok(chunk) => {
                    self.count(&chunk);
                    return Some(Ok(chunk));
                }
                Err(data) => data,
            };
            // Otherwise parse it straight into a chunk (parsing a `Value`
            // first doubled the cost of a chunk).
            if let Ok(BoxedChatChunk(mut chunk)) = serde_json::from_str(&data) {
                if chunk.extra.get("error").is_none_or(Value::is_null) {
                    // The data itself goes along: unchanged chunks are
                    // written out as these bytes, not serialised again.
                    chunk.source.attach(data.into_bytes());
                    let chunk = StreamChunk::from(chunk);
                    self.count(&chunk);
                    return Some(Ok(chunk));
                }
            }
            data
        };
        let Ok(value) = serde_json::from_str::<Value>(&data) else {
            count_malformed(&self.provider);
            return None;
        };
        let error_event = named_error || value.get("error").is_some_and(|e| !e.is_null());
        if error_event {
            self.done = true;
            return Some(Err(in_band_error(&value, self.secret.as_ref())));
        }
        let Ok(chunk) = serde_json::from_value::<ChatChunk>(value) else {
            count_malformed(&self.provider);
            return None;
        };
        let chunk = StreamChunk::from(chunk);
        self.count(&chunk);
        Some(Ok(chunk))
    }

    fn count(&mut self, chunk: &StreamChunk) {
        self.chunks += 1;
        if chunk.finish_reason().is_some() {
            self.finished = true;
        }
    }
}

impl Stream for ChunkReader {
    type Item = ChunkItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let event = match ready!(this.events.poll_next_event(cx)) {
                Some(Ok(event)) => event,
                Some(Err(error)) => {
                    this.done = true;
                    if this.finished {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(source_failure(error, this.chunks))));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(this.after_done());
                }
            };
            if is_done(&event) {
                // The end of input that follows is the end of the stream.
                this.events.end_after_drain(DRAIN_LIMIT);
                continue;
            }
            if let Some(item) = this.read(event) {
                return Poll::Ready(Some(item));
            }
        }
    }
}

/// Parses an OpenAI SSE body into chunks with the completeness rule.
fn chunk_reader(response: crate::client::UpstreamResponse, http: &Upstream) -> ChunkReader {
    ChunkReader {
        events: response_events(response),
        usual: UsualChunks::default(),
        provider: http.provider_id().to_owned(),
        secret: http.secret().cloned(),
        chunks: 0,
        finished: false,
        done: false,
    }
}

/// Lists models (`GET {base}/models`), OpenAI shape.
pub(crate) async fn list_models(
    http: &Upstream,
    ctx: &CallContext,
    owned_by: &str,
) -> Result<Vec<ModelInfo>, ProviderError> {
    let request = http.request(::http::Method::GET, "/models", ctx);
    let bytes = http
        .send_and_read(request, ctx, ctx.response_timeout, TimeoutPhase::Response)
        .await?;
    Ok(parse_json::<ModelList>(&bytes, "model list")?.into_models(owned_by))
}

/// Runs one health check in `mode`; never a billed call.
pub(crate) async fn health_check(
    http: &Upstream,
    mode: &HealthCheckMode,
    ctx: &CallContext,
    owned_by: &str,
) -> Result<(), ProviderError> {
    match mode {
        HealthCheckMode::Named(NamedHealthCheck::None) => Ok(()),
        HealthCheckMode::Named(NamedHealthCheck::Models) => {
            list_models(http, ctx, owned_by).await.map(|_| ())
        }
        HealthCheckMode::Http {
            path,
            expect_status,
        } => {
            let request = http.request(::http::Method::GET, path, ctx);
            within(ctx, ctx.response_timeout, TimeoutPhase::Response, async {
                let response = http.send_raw(request).await?;
                let status = response.status().as_u16();
                if status == *expect_status {
                    return Ok(());
                }
                let headers = response.headers().clone();
                let body = response.bytes().await.unwrap_or_default();
                if status >= 300 {
                    Err(error_from_response(status, &headers, &body, http.secret()))
                } else {
                    Err(ProviderError::Protocol {
                        message: format!(
                            "health check expected status {expect_status}, got {status}"
                        ),
                    })
                }
            })
            .await
        }
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn kind(&self) -> &str {
        self.kind
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL_OPENAI
    }

    async fn chat(
        &self,
        mut request: ChatRequest,
        ctx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        request.stream = false;
        request.stream_options = None;
        let body = Self::body(&request)?;
        self.post("/chat/completions", body, ctx, "chat completion")
            .await
    }

    fn times_streams(&self) -> bool {
        // `chat_stream_json` (which `chat_stream` goes through) wraps the
        // chunks in `TimedStream` with the first-token clock already running.
        true
    }

    fn forwards_openai_json(&self) -> bool {
        true
    }

    async fn chat_json(
        &self,
        body: bytes::Bytes,
        ctx: &CallContext,
    ) -> Result<RawChatResponse, ProviderError> {
        let request = self.http.post_json("/chat/completions", body, ctx);
        let bytes = self
            .http
            .send_and_read(request, ctx, ctx.response_timeout, TimeoutPhase::Response)
            .await?;
        // A completion parses; only a body that does not is searched for
        // the error some compatible servers send with a 200.
        RawChatResponse::parse(bytes.clone()).or_else(|e| {
            check_error_in_body(&bytes, self.http.secret())?;
            Err(ProviderError::Protocol {
                message: format!("invalid chat completion from upstream: {e}"),
            })
        })
    }

    async fn chat_stream(
        &self,
        mut request: ChatRequest,
        ctx: &CallContext,
    ) -> Result<ChatStream, ProviderError> {
        request.stream = true;
        let mut options = request.stream_options.take().unwrap_or(StreamOptions {
            include_usage: true,
            extra: Default::default(),
        });
        options.include_usage = true;
        request.stream_options = Some(options);
        let body = Self::body(&request)?;
        self.chat_stream_json(body.into(), ctx).await
    }

    async fn chat_stream_json(
        &self,
        body: bytes::Bytes,
        ctx: &CallContext,
    ) -> Result<ChatStream, ProviderError> {
        let builder = self.http.post_json("/chat/completions", body, ctx).header(
            ::http::header::ACCEPT,
            ::http::HeaderValue::from_static("text/event-stream"),
        );
        let (response, timed) = open_stream(&self.http, builder, ctx).await?;
        // The reader goes into the timer unboxed: one box and one dynamic
        // call per chunk fewer.
        Ok(TimedStream::boxed(
            chunk_reader(response, &self.http),
            &timed,
        ))
    }

    async fn embeddings(
        &self,
        request: EmbeddingsRequest,
        ctx: &CallContext,
    ) -> Result<EmbeddingsResponse, ProviderError> {
        let body = Self::body(&request)?;
        self.post("/embeddings", body, ctx, "embeddings response")
            .await
    }

    async fn completions(
        &self,
        mut request: CompletionRequest,
        ctx: &CallContext,
    ) -> Result<CompletionResponse, ProviderError> {
        request.stream = false;
        request.extra.remove("stream_options");
        let body = Self::body(&request)?;
        self.post("/completions", body, ctx, "completion").await
    }

    async fn list_models(&self, ctx: &CallContext) -> Result<Vec<ModelInfo>, ProviderError> {
        list_models(&self.http, ctx, self.kind).await
    }

    async fn health_check(&self, ctx: &CallContext) -> Result<(), ProviderError> {
        health_check(&self.http, &self.health, ctx, self.kind).await
    }
}
