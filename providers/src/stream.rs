//! Stream plumbing shared by the adapters: SSE over a response body, with the completeness rule of SPEC §5.
//!
//! An upstream stream has exactly one of these outcomes, each a distinct
//! item the manager acts on:
//! - **complete**: a chunk with `finish_reason` (Anthropic: `message_delta`
//!   with `stop_reason`) was seen, then `[DONE]`, `message_stop` or the end
//!   of the body → the stream ends (`None`);
//! - **cut**: the body ended, was reset, or said `[DONE]` without that →
//!   `Err(StreamCut { chunks })`;
//! - **in-band error**: an error event → `Err(InBand(classified))`;
//! - **malformed event**: skipped and counted in
//!   `switchyard_stream_malformed_events_total`, never fatal;
//! - **silence**: first-token, idle and deadline timeouts, applied by
//!   core's `TimedStream` (chat) or [`RawTimer`] (native events).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use serde_json::Value;
use switchyard_core::stream::{FINALIZE_AFTER, SilenceTimer};
use switchyard_core::{CallContext, ProviderError, Secret, TimeoutPhase, UpstreamError};
use tokio::time::Instant;

use crate::http::{redact, refine_category};
use crate::sse::{EventSource, SourceError, SseEvent};
use crate::wire::{ErrorFields, status_for_error_type};

/// How long a stream's end is read after its terminator, so the
/// connection can be reused.
pub const DRAIN_LIMIT: Duration = Duration::from_millis(200);

/// A response body as a byte stream.
pub type ByteStream =
    Pin<Box<dyn Stream<Item = Result<Bytes, crate::client::TransportError>> + Send>>;

/// SSE events of a response body.
pub type ResponseEvents = EventSource<ByteStream>;

/// Reads SSE events from a response.
pub fn response_events(response: crate::client::UpstreamResponse) -> ResponseEvents {
    EventSource::new(Box::pin(response.bytes_stream()))
}

/// Counts one skipped malformed event.
pub fn count_malformed(provider: &str) {
    metrics::counter!("switchyard_stream_malformed_events_total").increment(1);
    tracing::debug!(provider = %provider, "skipped a malformed stream event");
}

/// An in-band error event (`{"error": {...}}` or Anthropic's
/// `{"type": "error", "error": {...}}`) as a classified error. The status
/// comes from the event when it has one, else from the error type.
pub fn in_band_error(value: &Value, secret: Option<&Secret>) -> ProviderError {
    let fields = ErrorFields::from_value(value).unwrap_or_default();
    let status = value
        .get("error")
        .and_then(|e| e.get("status"))
        .or_else(|| value.get("status"))
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (400..=599).contains(s))
        .unwrap_or_else(|| {
            status_for_error_type(fields.error_type.as_deref(), fields.code.as_deref())
        });
    let message = if fields.message.is_empty() {
        "error event in the stream".to_owned()
    } else {
        redact(&fields.message, secret)
    };
    let fields = fields.redacted(secret);
    let mut error = UpstreamError::from_status(status, message, fields.error_type, fields.code)
        .with_param(fields.param);
    refine_category(&mut error);
    ProviderError::InBand(Box::new(error))
}

/// A transport failure or oversized event in the middle of a stream.
pub fn source_failure<E>(error: SourceError<E>, chunks: u64) -> ProviderError {
    match error {
        SourceError::Transport(_) => ProviderError::StreamCut { chunks },
        SourceError::TooLarge => ProviderError::Protocol {
            message: "a stream event exceeded the size limit".to_owned(),
        },
    }
}

/// Timeouts for streams that are not chat chunks (native Anthropic
/// events): the same rules as core's `TimedStream`. Content arrives with
/// `content_block_delta`; after completion, [`FINALIZE_AFTER`] of silence
/// ends the stream cleanly.
#[derive(Debug)]
pub struct RawTimer {
    silence: SilenceTimer,
    idle: Duration,
    deadline: Option<Instant>,
    seen_content: bool,
    finished: bool,
}

/// What the timer says about a wait that expired.
#[derive(Debug, PartialEq)]
pub enum Expired {
    /// A timeout error.
    Error(ProviderError),
    /// The stream was complete: end it cleanly.
    Finalise,
}

impl RawTimer {
    /// Starts the first-token clock.
    pub fn new(ctx: &CallContext) -> Self {
        Self {
            silence: SilenceTimer::new(ctx.deadline, ctx.first_token_timeout),
            idle: ctx.stream_idle_timeout,
            deadline: ctx.deadline,
            seen_content: false,
            finished: false,
        }
    }

    /// Records content.
    pub fn content(&mut self) {
        self.seen_content = true;
    }

    /// Records completion.
    pub fn finished(&mut self) {
        self.finished = true;
    }

    /// Restarts the wait after an event (after [`content`](Self::content)
    /// or [`finished`](Self::finished) for that event): silence is counted
    /// from the next wait for input, except before content, when the
    /// first-token clock runs on.
    pub fn event(&mut self) {
        let limit = if self.finished {
            FINALIZE_AFTER
        } else if self.seen_content {
            self.idle
        } else {
            return;
        };
        self.silence.restart(self.deadline, limit);
    }

    /// Ready with what the silence means once the current limit has run
    /// out; registers the wake-up otherwise.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        ready!(self.silence.poll_expired(cx));
        Poll::Ready(self.expired())
    }

    fn expired(&self) -> Expired {
        if self.finished {
            return Expired::Finalise;
        }
        let phase = if self.deadline.is_some_and(|d| Instant::now() >= d) {
            TimeoutPhase::Deadline
        } else if self.seen_content {
            TimeoutPhase::StreamIdle
        } else {
            TimeoutPhase::FirstToken
        };
        Expired::Error(ProviderError::Timeout { phase })
    }
}

/// Whether an event's data is the OpenAI terminator.
pub fn is_done(event: &SseEvent) -> bool {
    event.data.trim() == "[DONE]"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchyard_core::UpstreamCategory;

    /// What polling `timer` once says: `None` while it is still waiting.
    fn poll_once(timer: &mut RawTimer) -> Option<Expired> {
        let waker = futures_util::task::noop_waker();
        match timer.poll_expired(&mut Context::from_waker(&waker)) {
            Poll::Ready(expired) => Some(expired),
            Poll::Pending => None,
        }
    }

    fn timer(first_token: u64, idle: u64) -> RawTimer {
        RawTimer::new(&CallContext {
            first_token_timeout: Duration::from_secs(first_token),
            stream_idle_timeout: Duration::from_secs(idle),
            ..CallContext::default()
        })
    }

    async fn advance_ms(ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn raw_timer_limits_silence_not_the_whole_stream() {
        // Events without content do not hold off the first-token limit.
        let mut t = timer(3, 1);
        for _ in 0..2 {
            advance_ms(1_400).await;
            t.event();
            assert_eq!(poll_once(&mut t), None);
        }
        advance_ms(300).await;
        assert_eq!(
            poll_once(&mut t),
            Some(Expired::Error(ProviderError::Timeout {
                phase: TimeoutPhase::FirstToken
            }))
        );

        // After content, each event gives the stream its full idle limit
        // again, counted from the wait that follows it (the poll right
        // after the event, as a stream polls when its input is not
        // ready): five events 900 ms apart outlast a 1 s limit.
        let mut t = timer(3, 1);
        t.content();
        t.event();
        assert_eq!(poll_once(&mut t), None);
        for _ in 0..5 {
            advance_ms(900).await;
            assert_eq!(poll_once(&mut t), None);
            t.event();
            assert_eq!(poll_once(&mut t), None);
        }
        advance_ms(900).await;
        assert_eq!(poll_once(&mut t), None);
        advance_ms(200).await;
        assert_eq!(
            poll_once(&mut t),
            Some(Expired::Error(ProviderError::Timeout {
                phase: TimeoutPhase::StreamIdle
            }))
        );

        // Once complete, a short silence ends the stream cleanly, even
        // when the idle limit is longer.
        let mut t = timer(30, 30);
        t.content();
        t.event();
        assert_eq!(poll_once(&mut t), None);
        t.finished();
        t.event();
        assert_eq!(poll_once(&mut t), None);
        advance_ms(FINALIZE_AFTER.as_millis() as u64 - 100).await;
        assert_eq!(poll_once(&mut t), None);
        advance_ms(200).await;
        assert_eq!(poll_once(&mut t), Some(Expired::Finalise));
    }

    #[test]
    fn in_band_errors_are_classified() {
        let anthropic = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let error = in_band_error(&anthropic, None);
        assert_eq!(error.status(), Some(529));
        assert_eq!(error.category(), Some(UpstreamCategory::Overloaded));
        let openai =
            json!({"error": {"message": "The server had an error", "type": "server_error"}});
        assert_eq!(in_band_error(&openai, None).status(), Some(500));
        let limited = json!({"error": {"message": "slow down", "type": "rate_limit_error"}});
        assert_eq!(
            in_band_error(&limited, None).category(),
            Some(UpstreamCategory::RateLimited)
        );
    }
}
