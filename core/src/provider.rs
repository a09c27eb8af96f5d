//! The `Provider` trait every adapter implements, and what the manager passes to it.
//!
//! A provider is one upstream (OpenAI, Anthropic, a vLLM box, a mock). It
//! speaks the vendor-neutral types of [`crate::types`]; the adapter owns its
//! wire format, connection pool and error mapping. The trait is object safe
//! (checked below) because providers are chosen at run time from config.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytestring::ByteString;
use tokio::time::Instant;

use crate::config::ProviderConfig;
use crate::error::{ConfigError, ProviderError, TimeoutPhase};
use crate::json::RawChatResponse;
use crate::types::{
    ChatRequest, ChatResponse, ChatStream, CompletionRequest, CompletionResponse,
    EmbeddingsRequest, EmbeddingsResponse, ModelInfo, RawEventStream, RequestType,
};

/// What a provider's adapter can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Non-streaming chat.
    pub chat: bool,
    /// Streaming chat.
    pub chat_stream: bool,
    /// Embeddings.
    pub embeddings: bool,
    /// Legacy completions.
    pub completions: bool,
    /// Listing models.
    pub models: bool,
    /// Native Anthropic Messages pass-through.
    pub anthropic_native: bool,
}

impl Capabilities {
    /// Everything an OpenAI-style upstream offers.
    pub const ALL_OPENAI: Self = Self {
        chat: true,
        chat_stream: true,
        embeddings: true,
        completions: true,
        models: true,
        anthropic_native: false,
    };

    /// Whether requests of this type can be served.
    pub fn supports(&self, request_type: RequestType) -> bool {
        match request_type {
            RequestType::Chat => self.chat,
            RequestType::Embeddings => self.embeddings,
            RequestType::Completions => self.completions,
        }
    }
}

/// Price of one model, in USD per token.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pricing {
    /// USD per input token.
    pub input_per_token: f64,
    /// USD per output token.
    pub output_per_token: f64,
}

impl Pricing {
    /// From the config's per-million-token prices.
    pub fn per_mtok(input: f64, output: f64) -> Self {
        Self {
            input_per_token: input / 1e6,
            output_per_token: output / 1e6,
        }
    }

    /// Expected cost of a call with these token counts.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        self.input_per_token * input_tokens as f64 + self.output_per_token * output_tokens as f64
    }
}

/// Per-call limits and identifiers the manager hands to the adapter.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The overall request deadline: the adapter must not outlive it.
    pub deadline: Option<Instant>,
    /// A whole non-stream response.
    pub response_timeout: Duration,
    /// Streams: headers and first token.
    pub first_token_timeout: Duration,
    /// Streams: longest silence between events.
    pub stream_idle_timeout: Duration,
    /// Forwarded as `x-request-id`. Shared bytes: each attempt's context
    /// is a clone, and the header is made from them without a copy.
    pub request_id: Option<ByteString>,
    /// Forwarded as `traceparent`.
    pub traceparent: Option<String>,
    /// Set by the manager, whose own timer already holds the call to
    /// `response_timeout` (or, opening a stream, `first_token_timeout`)
    /// and the deadline: an adapter need not start a second timer for
    /// those limits. Stream idle timing is the adapter's either way.
    pub bounded_by_caller: bool,
}

impl Default for CallContext {
    fn default() -> Self {
        Self {
            deadline: None,
            response_timeout: Duration::from_secs(30),
            first_token_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(10),
            request_id: None,
            traceparent: None,
            bounded_by_caller: false,
        }
    }
}

impl CallContext {
    /// `limit`, shortened so as not to pass the deadline.
    pub fn bounded(&self, limit: Duration) -> Duration {
        match self.deadline {
            Some(deadline) => limit.min(deadline.saturating_duration_since(Instant::now())),
            None => limit,
        }
    }

    /// When a call given `limit` from now must end, and the phase to blame
    /// if it does: `phase`, or `Deadline` when the request deadline comes
    /// first. One clock read, for `tokio::time::timeout_at`.
    pub fn expiry(&self, limit: Duration, phase: TimeoutPhase) -> (Instant, TimeoutPhase) {
        let now = Instant::now();
        match (self.deadline, now.checked_add(limit)) {
            (Some(deadline), Some(by_limit)) if deadline <= by_limit => {
                (deadline, TimeoutPhase::Deadline)
            }
            (Some(deadline), None) => (deadline, TimeoutPhase::Deadline),
            (_, Some(by_limit)) => (by_limit, phase),
            // A limit too long for the clock: never, in practice.
            (None, None) => (now.checked_add(FAR_FUTURE).unwrap_or(now), phase),
        }
    }
}

/// What "no limit" means to [`CallContext::expiry`]: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// One upstream LLM provider.
///
/// Streams returned by [`Provider::chat_stream`] must follow the
/// completeness rule: end (`None`) only after a chunk with `finish_reason`;
/// a close without one is an `Err(ProviderError::StreamCut)` item.
/// Callers pass requests whose `model` is already the upstream name.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider type, e.g. `openai`.
    fn kind(&self) -> &str;

    /// What this adapter supports.
    fn capabilities(&self) -> Capabilities;

    /// Pricing the adapter knows for a model, when the config gives none.
    fn pricing(&self, _upstream_model: &str) -> Option<Pricing> {
        None
    }

    /// A non-streaming chat completion.
    async fn chat(
        &self,
        request: ChatRequest,
        ctx: &CallContext,
    ) -> Result<ChatResponse, ProviderError>;

    /// Whether [`Provider::chat_json`] and [`Provider::chat_stream_json`]
    /// send the body as it is (the
    /// adapter speaks OpenAI's wire format); callers then skip building a
    /// [`ChatRequest`] per attempt and splice only `model`.
    fn forwards_openai_json(&self) -> bool {
        false
    }

    /// Whether every [`ChatStream`] this adapter returns already applies
    /// [`TimedStream`](crate::stream::TimedStream)'s rules (first-token,
    /// idle and deadline limits from the call's context, and the
    /// completeness rule). The manager then does not wrap it a second
    /// time, which would re-arm a second timer on every chunk.
    fn times_streams(&self) -> bool {
        false
    }

    /// A non-streaming chat completion whose request and answer are
    /// OpenAI-format JSON bytes: `body` is a valid chat request (no
    /// `stream`, no `stream_options`) whose `model` is already the
    /// upstream name. The default parses it, calls [`Provider::chat`] and
    /// serialises the answer; adapters that speak the format forward bytes.
    async fn chat_json(
        &self,
        body: bytes::Bytes,
        ctx: &CallContext,
    ) -> Result<RawChatResponse, ProviderError> {
        let invalid = |e: serde_json::Error| ProviderError::Protocol {
            message: format!("cannot re-read the chat request: {e}"),
        };
        let request: ChatRequest = crate::json::from_bytes(&body).map_err(invalid)?;
        let response = self.chat(request, ctx).await?;
        RawChatResponse::from_response(&response)
    }

    /// A streaming chat completion from OpenAI-format JSON bytes: `body`
    /// is a valid chat request with `"stream": true` and
    /// `stream_options.include_usage` set, whose `model` is already the
    /// upstream name. The default parses it and calls
    /// [`Provider::chat_stream`]; adapters that speak the format (see
    /// [`Provider::forwards_openai_json`]) send the bytes as they are.
    async fn chat_stream_json(
        &self,
        body: bytes::Bytes,
        ctx: &CallContext,
    ) -> Result<ChatStream, ProviderError> {
        let request: ChatRequest =
            crate::json::from_bytes(&body).map_err(|e| ProviderError::Protocol {
                message: format!("cannot re-read the chat request: {e}"),
            })?;
        self.chat_stream(request, ctx).await
    }

    /// A streaming chat completion: returns once response headers arrived.
    async fn chat_stream(
        &self,
        request: ChatRequest,
        ctx: &CallContext,
    ) -> Result<ChatStream, ProviderError>;

    /// Embeddings.
    async fn embeddings(
        &self,
        _request: EmbeddingsRequest,
        _ctx: &CallContext,
    ) -> Result<EmbeddingsResponse, ProviderError> {
        Err(ProviderError::Unsupported {
            operation: "embeddings",
        })
    }

    /// Legacy completions.
    async fn completions(
        &self,
        _request: CompletionRequest,
        _ctx: &CallContext,
    ) -> Result<CompletionResponse, ProviderError> {
        Err(ProviderError::Unsupported {
            operation: "completions",
        })
    }

    /// Anthropic Messages, native: `body` is the client's JSON with only
    /// `model` rewritten; the upstream's JSON comes back untouched.
    async fn messages(
        &self,
        _body: serde_json::Value,
        _ctx: &CallContext,
    ) -> Result<serde_json::Value, ProviderError> {
        Err(ProviderError::Unsupported {
            operation: "anthropic messages",
        })
    }

    /// Anthropic Messages, native and streaming: the upstream's events untouched.
    async fn messages_stream(
        &self,
        _body: serde_json::Value,
        _ctx: &CallContext,
    ) -> Result<RawEventStream, ProviderError> {
        Err(ProviderError::Unsupported {
            operation: "anthropic messages",
        })
    }

    /// The upstream's model list.
    async fn list_models(&self, ctx: &CallContext) -> Result<Vec<ModelInfo>, ProviderError>;

    /// One active health check in the configured mode; never a billed call.
    async fn health_check(&self, ctx: &CallContext) -> Result<(), ProviderError>;
}

/// Builds providers from config: how `add_dynamic_provider` and reloads
/// turn a [`ProviderConfig`] into a live adapter.
pub trait ProviderFactory: Send + Sync + 'static {
    /// Builds the adapter, or explains which field is wrong.
    fn create(&self, config: &ProviderConfig) -> Result<Arc<dyn Provider>, ConfigError>;
}

/// A factory that knows no type: for library users who register provider
/// instances directly.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFactory;

impl ProviderFactory for NoFactory {
    fn create(&self, config: &ProviderConfig) -> Result<Arc<dyn Provider>, ConfigError> {
        Err(ConfigError::single(
            "type",
            format!(
                "no factory is installed for provider type '{}'; register an instance instead",
                config.kind
            ),
        ))
    }
}

#[allow(dead_code)]
fn assert_object_safe(_: &dyn Provider, _: &dyn ProviderFactory) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pricing_is_per_token() {
        let p = Pricing::per_mtok(0.15, 0.60);
        assert!((p.cost(1_000_000, 1_000_000) - 0.75).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_never_passes_the_deadline() {
        let ctx = CallContext {
            deadline: Some(Instant::now() + Duration::from_secs(3)),
            ..CallContext::default()
        };
        assert_eq!(ctx.bounded(Duration::from_secs(10)), Duration::from_secs(3));
        assert_eq!(ctx.bounded(Duration::from_secs(1)), Duration::from_secs(1));
        let now = Instant::now();
        let response = TimeoutPhase::Response;
        assert_eq!(
            ctx.expiry(Duration::from_secs(10), response),
            (now + Duration::from_secs(3), TimeoutPhase::Deadline)
        );
        assert_eq!(
            ctx.expiry(Duration::from_secs(1), response),
            (now + Duration::from_secs(1), response)
        );
        // No deadline, and a limit past what the clock can add.
        let open = CallContext::default();
        assert_eq!(
            open.expiry(Duration::from_secs(5), response),
            (now + Duration::from_secs(5), response)
        );
        assert_eq!(open.expiry(Duration::MAX, response).1, response);
        assert_eq!(
            ctx.expiry(Duration::MAX, response),
            (now + Duration::from_secs(3), TimeoutPhase::Deadline)
        );
    }
}
