//! `ProviderHandle`: a selected deployment, and the RAII guard that records each call.
//!
//! Selection reserves the deployment's in-flight slot (within its provider's
//! and model's concurrency caps, atomically) and its rate-limit share; the
//! handle owns that reservation until its first call begins, or gives it
//! back when dropped unused. Every call made through a handle records
//! latency and outcome on finish, so direct use (the seed's basic example)
//! feeds health, load and the circuit breaker exactly like failover does.
//! A guard dropped without an outcome is a cancellation: it never counts
//! against the deployment, and a probe permit it held is given back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::time::Instant;

use crate::config::ProviderConfig;
use crate::error::{ProviderError, TimeoutPhase};
use crate::provider::{CallContext, Provider};
use crate::registry::Deployment;
use crate::stream::TimedStream;
use crate::types::{
    ChatRequest, ChatResponse, ChatStream, ChunkItem, CompletionRequest, CompletionResponse,
    EmbeddingsRequest, EmbeddingsResponse, RawEvent, RawEventStream, Usage,
};

use super::ManagerInner;

/// A deployment chosen for a request.
///
/// The probe permit and the in-flight reservation belong to the handle
/// that selection returned; a clone carries neither (its calls count
/// in-flight on their own).
pub struct ProviderHandle {
    inner: Arc<ManagerInner>,
    deployment: Arc<Deployment>,
    // Only wildcard deployments need the requested name.
    requested_model: Option<Arc<str>>,
    probe: AtomicBool,
    reserved: AtomicBool,
    reserved_tokens: u64,
    panic: bool,
}

impl std::fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderHandle")
            .field("provider_id", &self.provider_id())
            .field("model", &self.model())
            .field("upstream_model", &self.upstream_model())
            .field("probe", &self.is_probe())
            .finish()
    }
}

impl Clone for ProviderHandle {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            deployment: Arc::clone(&self.deployment),
            requested_model: self.requested_model.clone(),
            probe: AtomicBool::new(false),
            reserved: AtomicBool::new(false),
            reserved_tokens: 0,
            panic: self.panic,
        }
    }
}

impl Drop for ProviderHandle {
    fn drop(&mut self) {
        // Owned here: plain reads, not locked swaps.
        if std::mem::take(self.probe.get_mut()) {
            self.deployment.state().release_probe();
        }
        if std::mem::take(self.reserved.get_mut()) {
            self.deployment.release_reservation();
            self.deployment.limits().refund(self.reserved_tokens);
            self.inner.queue.notify();
        }
    }
}

impl ProviderHandle {
    pub(crate) fn new(
        inner: Arc<ManagerInner>,
        deployment: Arc<Deployment>,
        requested_model: &str,
        probe: bool,
        panic: bool,
        reserved_tokens: u64,
    ) -> Self {
        Self {
            inner,
            requested_model: deployment.is_wildcard().then(|| Arc::from(requested_model)),
            deployment,
            probe: AtomicBool::new(probe),
            reserved: AtomicBool::new(true),
            reserved_tokens,
            panic,
        }
    }

    /// Provider id.
    pub fn provider_id(&self) -> &str {
        self.deployment.provider_id()
    }

    /// The requested name, for a wildcard deployment.
    pub(crate) fn requested_model(&self) -> Option<&Arc<str>> {
        self.requested_model.as_ref()
    }

    /// The client-facing model this handle serves (the requested name for
    /// a wildcard deployment).
    pub fn model(&self) -> &str {
        self.requested_model
            .as_deref()
            .unwrap_or(self.deployment.model())
    }

    /// The name sent upstream.
    pub fn upstream_model(&self) -> &str {
        self.deployment.upstream_for(self.model())
    }

    /// [`Self::provider_id`], shared rather than copied.
    pub fn provider_id_shared(&self) -> Arc<str> {
        Arc::clone(self.deployment.provider_id_shared())
    }

    /// [`Self::model`], shared rather than copied.
    pub fn model_shared(&self) -> Arc<str> {
        Arc::clone(
            self.requested_model
                .as_ref()
                .unwrap_or(self.deployment.model_shared()),
        )
    }

    /// [`Self::upstream_model`], shared rather than copied.
    pub fn upstream_model_shared(&self) -> Arc<str> {
        match self.deployment.upstream_name_shared() {
            Some(name) => Arc::clone(name),
            None => self.model_shared(),
        }
    }

    /// The adapter, for calls the handle does not wrap (use [`Self::begin`]).
    pub fn provider(&self) -> &Arc<dyn Provider> {
        self.deployment.provider()
    }

    /// The provider config this deployment was selected under.
    pub fn config(&self) -> &ProviderConfig {
        self.deployment.config()
    }

    /// The deployment.
    pub fn deployment(&self) -> &Arc<Deployment> {
        &self.deployment
    }

    /// Whether the next call is the half-open probe of this deployment.
    pub fn is_probe(&self) -> bool {
        self.probe.load(Ordering::Acquire)
    }

    /// Whether this handle was chosen in panic mode.
    pub fn is_panic(&self) -> bool {
        self.panic
    }

    /// Tokens taken from the provider's TPM limit for this request.
    pub fn reserved_tokens(&self) -> u64 {
        self.reserved_tokens
    }

    /// The manager's call context defaults (timeouts) for a call.
    pub fn call_context(&self) -> CallContext {
        self.inner.call_context(None)
    }

    /// Starts recording one call: in-flight now, outcome when finished.
    pub fn begin(&self) -> CallGuard {
        // Loaded first: a handle is rarely the probe, and a swap is a
        // locked read-modify-write even when it changes nothing.
        let probe = self.probe.load(Ordering::Acquire) && self.probe.swap(false, Ordering::AcqRel);
        let started = Instant::now();
        let now_ms = self.inner.clock.ms_at(started);
        let reserved = self.reserved.swap(false, Ordering::AcqRel);
        if !reserved {
            // A second call through the same handle: count it, uncapped.
            self.deployment.state().try_enter(None);
            self.deployment.provider_state().try_enter(None);
        }
        self.deployment.state().record_request(now_ms);
        self.deployment.provider_state().record_request(now_ms);
        CallGuard {
            inner: Arc::clone(&self.inner),
            deployment: Arc::clone(&self.deployment),
            probe,
            panic: self.panic,
            reserved_tokens: if reserved { self.reserved_tokens } else { 0 },
            started,
            ended_ms: 0,
            finished: false,
            failed: false,
        }
    }

    /// A chat completion through this deployment, bounded by
    /// `ctx.response_timeout` and the deadline.
    pub async fn chat(
        &self,
        mut request: ChatRequest,
        ctx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        request.model = self.upstream_model().to_owned();
        request.stream = false;
        let guard = self.begin();
        let result = bounded(
            ctx,
            ctx.response_timeout,
            self.provider().chat(request, ctx),
        )
        .await;
        if let Ok(response) = &result {
            guard.settle(response.usage.as_ref());
        }
        guard.finish(&result);
        result
    }

    /// Embeddings through this deployment.
    pub async fn embeddings(
        &self,
        mut request: EmbeddingsRequest,
        ctx: &CallContext,
    ) -> Result<EmbeddingsResponse, ProviderError> {
        request.model = self.upstream_model().to_owned();
        let guard = self.begin();
        let result = bounded(
            ctx,
            ctx.response_timeout,
            self.provider().embeddings(request, ctx),
        )
        .await;
        if let Ok(response) = &result {
            guard.settle(response.usage.as_ref());
        }
        guard.finish(&result);
        result
    }

    /// Legacy completions through this deployment.
    pub async fn completions(
        &self,
        mut request: CompletionRequest,
        ctx: &CallContext,
    ) -> Result<CompletionResponse, ProviderError> {
        request.model = self.upstream_model().to_owned();
        let guard = self.begin();
        let result = bounded(
            ctx,
            ctx.response_timeout,
            self.provider().completions(request, ctx),
        )
        .await;
        if let Ok(response) = &result {
            guard.settle(response.usage.as_ref());
        }
        guard.finish(&result);
        result
    }

    /// A chat stream through this deployment, with first-token, idle and
    /// completeness rules applied. The call is recorded when the stream
    /// ends; dropping it early records a cancellation.
    pub async fn chat_stream(
        &self,
        mut request: ChatRequest,
        ctx: &CallContext,
    ) -> Result<ChatStream, ProviderError> {
        request.model = self.upstream_model().to_owned();
        request.stream = true;
        let guard = self.begin();
        let opened = bounded(
            ctx,
            ctx.first_token_timeout,
            self.provider().chat_stream(request, ctx),
        )
        .await
        .map_err(first_byte);
        match opened {
            Ok(stream) => {
                let stream =
                    TimedStream::unless_timed(stream, self.provider().times_streams(), ctx);
                Ok(Box::pin(GuardedStream::new(stream, guard)))
            }
            Err(error) => {
                guard.fail(&error);
                Err(error)
            }
        }
    }
}

/// A timeout while waiting for a stream to open is a first-byte timeout.
pub(crate) fn first_byte(error: ProviderError) -> ProviderError {
    match error {
        ProviderError::Timeout {
            phase: TimeoutPhase::Response,
        } => ProviderError::Timeout {
            phase: TimeoutPhase::FirstByte,
        },
        other => other,
    }
}

/// `call`, bounded by `limit` from now and by `ctx`'s deadline.
pub(crate) fn bounded<T>(
    ctx: &CallContext,
    limit: Duration,
    call: impl Future<Output = Result<T, ProviderError>>,
) -> impl Future<Output = Result<T, ProviderError>> {
    let (expiry, phase) = ctx.expiry(limit, TimeoutPhase::Response);
    until(expiry, phase, call)
}

/// `call`, cut at `expiry` as a timeout of `phase`.
pub(crate) async fn until<T>(
    expiry: Instant,
    phase: TimeoutPhase,
    call: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    match tokio::time::timeout_at(expiry, call).await {
        Ok(result) => result,
        Err(_) => Err(ProviderError::Timeout { phase }),
    }
}

/// Records one call on drop: a cancellation unless told otherwise.
pub struct CallGuard {
    inner: Arc<ManagerInner>,
    deployment: Arc<Deployment>,
    probe: bool,
    panic: bool,
    reserved_tokens: u64,
    started: Instant,
    /// The clock stamp of the outcome once recorded (0: not yet), for
    /// `drop` to use rather than read the clock again.
    ended_ms: u64,
    finished: bool,
    failed: bool,
}

impl std::fmt::Debug for CallGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallGuard")
            .field("deployment", &self.deployment)
            .field("probe", &self.probe)
            .finish()
    }
}

impl CallGuard {
    /// Whether this call is the deployment's half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// How long the call has been running.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Settles the TPM estimate taken at selection with the real usage.
    pub fn settle(&self, usage: Option<&Usage>) {
        if let Some(usage) = usage {
            let actual = usage
                .total_tokens
                .max(usage.prompt_tokens + usage.completion_tokens);
            self.deployment
                .limits()
                .settle(self.reserved_tokens, actual);
        }
    }

    /// Ends the call now: its latency, and the stamp of now.
    fn end(&mut self) -> (Duration, u64) {
        let ended = Instant::now();
        self.finished = true;
        self.ended_ms = self.inner.clock.ms_at(ended);
        (ended.saturating_duration_since(self.started), self.ended_ms)
    }

    /// Records success; the call's latency.
    pub fn succeed(mut self) -> Duration {
        let (latency, now_ms) = self.end();
        self.inner
            .record_success(&self.deployment, latency, self.probe, now_ms);
        latency
    }

    /// Records a failure (a `Cancelled` error records a cancellation); the
    /// call's latency.
    pub fn fail(mut self, error: &ProviderError) -> Duration {
        let (latency, now_ms) = self.end();
        self.failed = !matches!(error, ProviderError::Cancelled);
        self.inner.record_failure(
            &self.deployment,
            error,
            latency,
            self.probe,
            self.panic,
            now_ms,
        );
        latency
    }

    /// Records the outcome of `result`; the call's latency.
    pub fn finish<T>(self, result: &Result<T, ProviderError>) -> Duration {
        match result {
            Ok(_) => self.succeed(),
            Err(error) => self.fail(error),
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let now_ms = if self.ended_ms == 0 {
            self.inner.clock.now_ms()
        } else {
            self.ended_ms
        };
        self.deployment.state().end_call();
        self.deployment
            .provider_state()
            .end_call(self.failed, now_ms);
        if !self.finished {
            self.inner.record_cancelled(&self.deployment, self.probe);
        }
        self.inner.queue.notify();
    }
}

/// A native event stream that records its call's outcome when it ends.
pub(crate) struct GuardedRawStream {
    inner: RawEventStream,
    guard: Option<CallGuard>,
}

impl GuardedRawStream {
    pub(crate) fn new(inner: RawEventStream, guard: CallGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl Stream for GuardedRawStream {
    type Item = Result<RawEvent, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(guard) = self.guard.take() {
                    guard.succeed();
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(guard) = self.guard.take() {
                    guard.fail(error);
                }
            }
            _ => {}
        }
        polled
    }
}

/// A stream that records its call's outcome when it ends, and settles the
/// TPM estimate when the usage chunk passes.
pub(crate) struct GuardedStream {
    inner: ChatStream,
    guard: Option<CallGuard>,
}

impl GuardedStream {
    pub(crate) fn new(inner: ChatStream, guard: CallGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl Stream for GuardedStream {
    type Item = ChunkItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                if let (Some(usage), Some(guard)) = (chunk.usage(), self.guard.as_ref()) {
                    guard.settle(Some(usage));
                }
            }
            Poll::Ready(None) => {
                if let Some(guard) = self.guard.take() {
                    guard.succeed();
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(guard) = self.guard.take() {
                    guard.fail(error);
                }
            }
            Poll::Pending => {}
        }
        polled
    }
}
