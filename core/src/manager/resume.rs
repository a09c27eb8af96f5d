//! Stream resumption after content was sent (SPEC §5, `stream_resume`).
//!
//! Once a client has text, a cut or stalled stream cannot fail over
//! invisibly; it can only be *continued*. [`ResumingStream`] watches what
//! was sent and, on a cut, runs the failover loop again with a [`Resume`]:
//! - `prefill`: on a deployment whose model declares `supports_prefill`,
//!   the text so far goes up as a trailing assistant message and every new
//!   token is forwarded;
//! - `replay`: the request is regenerated and only what follows the exact
//!   prefix already sent is forwarded; a divergence ends the stream with an
//!   explicit error rather than text twice or a seam;
//! - `auto`: prefill where some deployment declares it, else replay; a
//!   prefill rejection falls back to replay and is never the final error.
//!
//! Tool-call deltas and multi-choice streams are never resumed. A resumed
//! stream's usage is the sum of its attempts (a cut attempt's output is
//! counted by its content chunks, as it never reported usage).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use parking_lot::Mutex;

use crate::config::StreamResume;
use crate::error::{ManagerError, ProviderError, TimeoutPhase};
use crate::event::EventKind;
use crate::registry::Deployment;
use crate::state::DeploymentState;
use crate::types::{
    ChatMessage, ChatRequest, ChatStream, ChunkItem, MessageContent, StreamChunk, Usage,
};

use super::ProviderManager;
use super::failover::{Attempt, FailoverOptions};

/// How a resumed attempt continues a cut stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeMode {
    /// Send the text so far as a trailing assistant message; forward all new text.
    Prefill,
    /// Regenerate; forward only what follows the text already sent.
    Replay,
}

impl ResumeMode {
    /// `prefill` or `replay`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefill => "prefill",
            Self::Replay => "replay",
        }
    }
}

/// What an attempt resuming a cut stream must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// Prefill or replay.
    pub mode: ResumeMode,
    /// The text the client already has.
    pub text: String,
}

impl Attempt {
    /// Prepares `request` for this attempt: for a prefill resumption, appends
    /// the text already sent as a trailing assistant message. Stream `op`s
    /// must call this.
    pub fn apply_resume(&self, request: &mut ChatRequest) {
        if let Some(Resume {
            mode: ResumeMode::Prefill,
            text,
        }) = &self.resume
        {
            request.messages.push(ChatMessage {
                role: "assistant".to_owned(),
                content: Some(MessageContent::Text(text.clone())),
                ..ChatMessage::default()
            });
        }
    }
}

type BoxedStreamFuture = Pin<Box<dyn Future<Output = Result<ChatStream, ProviderError>> + Send>>;

/// The caller's stream `op`, shared between the first attempt and resumptions.
pub(crate) type SharedOp = Arc<Mutex<dyn FnMut(Attempt) -> BoxedStreamFuture + Send>>;

pub(crate) fn share<F, Fut>(mut op: F) -> SharedOp
where
    F: FnMut(Attempt) -> Fut + Send + 'static,
    Fut: Future<Output = Result<ChatStream, ProviderError>> + Send + 'static,
{
    Arc::new(Mutex::new(move |attempt: Attempt| -> BoxedStreamFuture {
        Box::pin(op(attempt))
    }))
}

/// A stream that produced its first content (or completed) on one deployment.
pub(crate) struct Opened {
    pub prefix: Vec<StreamChunk>,
    pub rest: Option<ChatStream>,
    pub deployment: Arc<Deployment>,
}

/// Extra constraints of one run of the failover loop.
#[derive(Clone, Default)]
pub(crate) struct DriveExtras {
    pub exclude: Vec<Arc<DeploymentState>>,
    pub resume: Option<Resume>,
}

const MAX_RESUMES: u32 = 2;

fn resumable(error: &ProviderError) -> bool {
    match error {
        ProviderError::StreamCut { .. }
        | ProviderError::Reset { .. }
        | ProviderError::Protocol { .. } => true,
        ProviderError::Timeout { phase } => *phase != TimeoutPhase::Deadline,
        ProviderError::InBand(_) => error.should_switch(),
        _ => false,
    }
}

/// The state of a stream being forwarded, resumed when cut.
pub(crate) struct ResumingStream {
    manager: ProviderManager,
    options: FailoverOptions,
    op: SharedOp,
    mode: StreamResume,
    pending: VecDeque<StreamChunk>,
    current: Option<ChatStream>,
    deployment: Arc<Deployment>,
    sent_text: String,
    tool_calls_sent: bool,
    multi_choice: bool,
    carried_usage: Option<Usage>,
    chunks_this_attempt: u64,
    suppress: Option<String>,
    resumed: bool,
    resumes: u32,
    excluded: Vec<Arc<DeploymentState>>,
    done: bool,
}

impl ResumingStream {
    pub fn new(
        manager: ProviderManager,
        options: FailoverOptions,
        op: SharedOp,
        mode: StreamResume,
        opened: Opened,
    ) -> Self {
        Self {
            manager,
            options,
            op,
            mode,
            pending: opened.prefix.into(),
            current: opened.rest,
            deployment: opened.deployment,
            // Sized for a short answer: growing from empty reallocated
            // several times per stream.
            sent_text: String::with_capacity(1024),
            tool_calls_sent: false,
            multi_choice: false,
            carried_usage: None,
            chunks_this_attempt: 0,
            suppress: None,
            resumed: false,
            resumes: 0,
            excluded: Vec::new(),
            done: false,
        }
    }

    /// Turns the state into a stream (no task spawned: dropping it drops
    /// the upstream call at once).
    pub fn into_stream(self) -> ChatStream {
        Box::pin(Forwarding {
            state: Some(Box::new(self)),
            resuming: None,
        })
    }

    /// The next item of the current attempt; `Err` carries a failure that
    /// may be resumed.
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<ChunkItem>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let item = match self.pending.pop_front() {
                Some(chunk) => Some(Ok(chunk)),
                None => match self.current.as_mut() {
                    Some(stream) => ready!(stream.as_mut().poll_next(cx)),
                    None => None,
                },
            };
            match item {
                None => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Some(Ok(chunk)) => match self.forward(chunk) {
                    Some(Ok(chunk)) => return Poll::Ready(Some(Ok(chunk))),
                    Some(Err(error)) => {
                        self.done = true;
                        return Poll::Ready(Some(Err(error)));
                    }
                    None => continue,
                },
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
            }
        }
    }

    /// Decides what of `chunk` the client gets: `None` to drop it.
    fn forward(&mut self, mut chunk: StreamChunk) -> Option<ChunkItem> {
        if chunk.has_no_choices() {
            if let Some(carried) = self.carried_usage.as_ref() {
                // Asked first: a chunk is parsed only to change its usage.
                if chunk.usage().is_some() {
                    if let Some(usage) = chunk.usage.as_mut() {
                        usage.accumulate(carried);
                    }
                    chunk.source.clear();
                }
            }
            return Some(Ok(chunk));
        }
        if chunk.is_multi_choice() {
            self.multi_choice = true;
        }
        let text = chunk.text_ref();
        if self.resumed
            && text.is_empty()
            && !chunk.has_content()
            && chunk.finish_reason().is_none()
        {
            // The resumed attempt's role chunk: the client already has one.
            return None;
        }
        if let Some(rest) = self.suppress.as_mut() {
            if rest.starts_with(&*text) && !text.is_empty() {
                rest.drain(..text.len());
                if rest.is_empty() {
                    self.suppress = None;
                }
                self.chunks_this_attempt += 1;
                return None;
            }
            if !rest.is_empty() && text.starts_with(rest.as_str()) {
                let new_text = text[rest.len()..].to_owned();
                self.suppress = None;
                if let Some(choice) = chunk.choices.first_mut() {
                    choice.delta.content = Some(new_text.clone());
                }
                chunk.source.clear();
                if new_text.is_empty() && chunk.finish_reason().is_none() {
                    return None;
                }
            } else if !rest.is_empty() {
                return Some(Err(ProviderError::Protocol {
                    message: format!(
                        "the stream was cut and its replay diverged from the {} characters already sent",
                        self.sent_text.chars().count()
                    ),
                }));
            }
        }
        if chunk.has_content() {
            self.chunks_this_attempt += 1;
        }
        self.sent_text.push_str(&chunk.text_ref());
        self.tool_calls_sent |= chunk.has_tool_calls();
        Some(Ok(chunk))
    }

    async fn resume(&mut self, error: ProviderError) -> Result<(), ProviderError> {
        let allowed = self.mode != StreamResume::Off
            && !self.tool_calls_sent
            && !self.multi_choice
            && self.resumes < MAX_RESUMES
            && self.suppress.is_none()
            && resumable(&error);
        if !allowed {
            return Err(error);
        }
        let cut_usage = Usage::new(
            u64::from(self.options.estimated_input_tokens),
            self.chunks_this_attempt,
        );
        self.excluded.push(Arc::clone(self.deployment.state()));
        let modes: &[ResumeMode] = match self.mode {
            StreamResume::Prefill => &[ResumeMode::Prefill],
            StreamResume::Replay => &[ResumeMode::Replay],
            StreamResume::Auto | StreamResume::Off => &[ResumeMode::Prefill, ResumeMode::Replay],
        };
        for &mode in modes {
            if mode == ResumeMode::Prefill
                && !self
                    .manager
                    .any_prefill(&self.options.model, &self.excluded)
            {
                continue;
            }
            let extras = DriveExtras {
                exclude: self.excluded.clone(),
                resume: Some(Resume {
                    mode,
                    text: self.sent_text.clone(),
                }),
            };
            match self
                .manager
                .open_stream(self.options.clone(), extras, Arc::clone(&self.op))
                .await
            {
                Ok(result) => {
                    let opened = result.result;
                    self.manager.inner.emit(EventKind::StreamResumed {
                        provider_id: opened.deployment.provider_id().to_owned(),
                        model: result.model.to_string(),
                        mode: mode.as_str().to_owned(),
                        resumed_after_chars: u64::try_from(self.sent_text.chars().count())
                            .unwrap_or(u64::MAX),
                    });
                    tracing::info!(
                        provider = %opened.deployment.provider_id(),
                        mode = mode.as_str(),
                        chars = self.sent_text.len(),
                        "stream resumed"
                    );
                    self.carried_usage
                        .get_or_insert_with(Usage::default)
                        .accumulate(&cut_usage);
                    self.pending = opened.prefix.into();
                    self.current = opened.rest;
                    self.deployment = opened.deployment;
                    self.resumed = true;
                    self.resumes += 1;
                    self.chunks_this_attempt = 0;
                    self.suppress = (mode == ResumeMode::Replay && !self.sent_text.is_empty())
                        .then(|| self.sent_text.clone());
                    return Ok(());
                }
                Err(failure) => {
                    tracing::warn!(mode = mode.as_str(), error = %describe(&failure), "stream resumption failed");
                }
            }
        }
        // The real cause is the cut, not whatever the resumption attempts said.
        Err(error)
    }
}

type ResumeFuture =
    Pin<Box<dyn Future<Output = (Box<ResumingStream>, Result<(), ProviderError>)> + Send>>;

/// [`ResumingStream`] as a stream. Chunks pass straight through `poll`;
/// only a resumption, which runs the failover loop again, is a future
/// (boxed, and built only then), so forwarding a chunk moves no future.
struct Forwarding {
    state: Option<Box<ResumingStream>>,
    resuming: Option<ResumeFuture>,
}

impl Stream for Forwarding {
    type Item = ChunkItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(resuming) = this.resuming.as_mut() {
                let (mut state, outcome) = ready!(resuming.as_mut().poll(cx));
                this.resuming = None;
                if let Err(error) = outcome {
                    state.done = true;
                    this.state = Some(state);
                    return Poll::Ready(Some(Err(error)));
                }
                this.state = Some(state);
            }
            let Some(state) = this.state.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(state.poll_item(cx)) {
                Some(Err(error)) if !state.done => {
                    let Some(mut state) = this.state.take() else {
                        return Poll::Ready(None);
                    };
                    this.resuming = Some(Box::pin(async move {
                        let outcome = state.resume(error).await;
                        (state, outcome)
                    }));
                }
                item => return Poll::Ready(item),
            }
        }
    }
}

fn describe(error: &ManagerError) -> String {
    error.kind().to_owned()
}
