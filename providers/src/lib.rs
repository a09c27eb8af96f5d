//! Provider adapters for Switchyard: `openai`, `openai_compatible`, `anthropic` and `mock` (SPEC §13).
//!
//! Each adapter implements core's [`Provider`](switchyard_core::Provider)
//! trait over its own pooled HTTP client and maps the upstream's answers —
//! bodies, SSE streams and error bodies — into core's vendor-neutral types
//! and classified errors. [`DefaultProviderFactory`] builds them from a
//! `[[providers]]` config entry.
//!
//! Modules:
//! - [`factory`]: config → adapter, API keys from the environment.
//! - [`openai`]: OpenAI and every OpenAI-compatible server.
//! - [`anthropic`]: the Messages API, native pass-through and the
//!   OpenAI ⇄ Anthropic translation (public, for the server's `/v1/messages`).
//! - [`mock`]: core's scriptable provider driven by `[providers.mock]`.
//! - [`http`]: the pooled client, status + body + headers → classified error.
//! - `pool`: the HTTP/1 connections of plain-HTTP upstreams, per host.
//! - [`sse`]: the server-sent-events parser.
//! - [`stream`]: completeness, in-band errors and malformed events of streams.
//! - [`wire`]: serde wire types of the upstream APIs.
//!
//! Build a provider from config and call it:
//!
//! ```
//! use switchyard_core::{CallContext, ChatMessage, ChatRequest, ProviderConfig, ProviderFactory};
//! use switchyard_providers::DefaultProviderFactory;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let config = ProviderConfig::new("local-mock", "mock", ["gpt-4o-mini"]);
//! let provider = DefaultProviderFactory::new().create(&config).unwrap();
//!
//! let request = ChatRequest {
//!     model: "gpt-4o-mini".into(),
//!     messages: vec![ChatMessage::text("user", "hi")],
//!     ..Default::default()
//! };
//! let response = provider.chat(request, &CallContext::default()).await.unwrap();
//! assert_eq!(
//!     response.choices[0].message.text_content().as_deref(),
//!     Some("Hello from local-mock (gpt-4o-mini).")
//! );
//! # });
//! ```

pub mod anthropic;
pub mod client;
pub mod factory;
pub mod http;
pub mod mock;
pub mod openai;
mod pool;
pub mod sse;
pub mod stream;
pub mod wire;

pub use anthropic::{
    AnthropicProvider, AnthropicToChunks, ChunksToAnthropic, TranslationError,
    anthropic_request_to_chat, anthropic_response_to_chat, chat_request_to_anthropic,
    chat_response_to_anthropic, chat_stream_to_anthropic, uses_anthropic_only_features,
};
pub use factory::DefaultProviderFactory;
pub use http::HttpOptions;
pub use mock::MockProvider;
pub use openai::OpenAiProvider;
