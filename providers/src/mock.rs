//! The `mock` adapter: core's scriptable provider configured from `[providers.mock]`, for the embedded default config, demos and benches.
//!
//! `latency` delays every answer (before the first chunk for streams),
//! `chunk_delay` spaces stream chunks, `reply` is the text (`{provider}`
//! and `{model}` substituted), and `fail_every` / `fail_status` fail every
//! n-th call with that upstream status. Health checks pass; `list_models`
//! returns the configured model names. Tests reach the underlying
//! [`ScriptedProvider`] through [`MockProvider::scripted`] to queue steps.

use std::sync::Arc;

use async_trait::async_trait;
use switchyard_core::testing::{ScriptedProvider, Step};
use switchyard_core::{
    CallContext, Capabilities, ChatRequest, ChatResponse, ChatStream, CompletionRequest,
    CompletionResponse, EmbeddingsRequest, EmbeddingsResponse, MockConfig, ModelInfo, Provider,
    ProviderConfig, ProviderError,
};

/// A mock upstream.
#[derive(Debug)]
pub struct MockProvider {
    id: String,
    inner: Arc<ScriptedProvider>,
}

impl MockProvider {
    /// Builds the mock described by `config.mock` (defaults when absent).
    pub fn from_config(config: &ProviderConfig) -> Self {
        let mock = config.mock.clone().unwrap_or_default();
        Self::new(
            &config.id,
            &mock,
            config.models.keys().filter(|m| *m != "*"),
        )
    }

    /// A mock with id `id`, behaviour `mock` and these model names.
    pub fn new<'a>(
        id: &str,
        mock: &MockConfig,
        models: impl IntoIterator<Item = &'a String>,
    ) -> Self {
        let inner = ScriptedProvider::new(mock.reply.replace("{provider}", id))
            .with_models(models.into_iter().cloned())
            .with_chunk_delay(mock.chunk_delay)
            .with_fail_every(
                u64::from(mock.fail_every),
                ProviderError::upstream(
                    mock.fail_status,
                    format!("mock failure (every {} requests)", mock.fail_every),
                    None,
                    None,
                ),
            );
        inner.always(Step::slow(mock.latency));
        Self {
            id: id.to_owned(),
            inner: Arc::new(inner),
        }
    }

    /// The scriptable provider underneath, to queue steps in tests.
    pub fn scripted(&self) -> &Arc<ScriptedProvider> {
        &self.inner
    }

    /// The provider id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[async_trait]
impl Provider for MockProvider {
    fn kind(&self) -> &str {
        "mock"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn chat(
        &self,
        request: ChatRequest,
        ctx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        self.inner.chat(request, ctx).await
    }

    async fn chat_stream(
        &self,
        request: ChatRequest,
        ctx: &CallContext,
    ) -> Result<ChatStream, ProviderError> {
        self.inner.chat_stream(request, ctx).await
    }

    async fn embeddings(
        &self,
        request: EmbeddingsRequest,
        ctx: &CallContext,
    ) -> Result<EmbeddingsResponse, ProviderError> {
        self.inner.embeddings(request, ctx).await
    }

    async fn completions(
        &self,
        request: CompletionRequest,
        ctx: &CallContext,
    ) -> Result<CompletionResponse, ProviderError> {
        self.inner.completions(request, ctx).await
    }

    async fn list_models(&self, ctx: &CallContext) -> Result<Vec<ModelInfo>, ProviderError> {
        self.inner.list_models(ctx).await
    }

    async fn health_check(&self, ctx: &CallContext) -> Result<(), ProviderError> {
        self.inner.health_check(ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::ChatMessage;

    fn request(model: &str) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            messages: vec![ChatMessage::text("user", "hi")],
            ..ChatRequest::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn config_drives_reply_latency_and_failures() {
        let mut config = ProviderConfig::new("mock-a", "mock", ["m1", "m2"]);
        config.mock = Some(MockConfig {
            latency: std::time::Duration::from_millis(200),
            fail_every: 2,
            fail_status: 503,
            ..MockConfig::default()
        });
        let mock = MockProvider::from_config(&config);
        let ctx = CallContext::default();
        let start = tokio::time::Instant::now();
        let answer = mock.chat(request("m1"), &ctx).await.unwrap();
        assert_eq!(
            answer.choices[0].message.text_content().as_deref(),
            Some("Hello from mock-a (m1).")
        );
        assert!(start.elapsed() >= std::time::Duration::from_millis(200));
        let failed = mock.chat(request("m1"), &ctx).await.unwrap_err();
        assert_eq!(failed.status(), Some(503));
        let models = mock.list_models(&ctx).await.unwrap();
        assert_eq!(
            models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["m1", "m2"]
        );
        mock.health_check(&ctx).await.unwrap();
    }
}
