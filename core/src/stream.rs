//! Stream timing and completeness: the rules every chat stream obeys (SPEC §5).
//!
//! [`TimedStream`] wraps any provider stream and turns silence and early
//! ends into distinct errors the manager acts on:
//! - no content within `first_token_timeout` → `Timeout(FirstToken)`;
//! - silence for `stream_idle_timeout` after content → `Timeout(StreamIdle)`;
//! - the overall deadline → `Timeout(Deadline)`;
//! - an end without `finish_reason` → `StreamCut`;
//! - after a chunk with `finish_reason`, an end *or* 2 s of silence (a
//!   missing `[DONE]`) finalises the stream cleanly.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use crate::error::{ProviderError, TimeoutPhase};
use crate::provider::CallContext;
use crate::types::{ChatStream, ChunkItem, StreamChunk};

/// How long a complete stream may stay open waiting for its terminator.
pub const FINALIZE_AFTER: Duration = Duration::from_secs(2);

/// A limit on silence that moves later with every sign of life, without
/// touching the timer wheel each time: the sleep may be set earlier than
/// the limit (it then re-arms when it fires) but never later. Moving a
/// timer on every chunk costs a timer-wheel update; a limit that only
/// grows is applied lazily. [`TimedStream`] and the providers' timers for
/// native event streams share it.
///
/// A restart takes effect when the waiting starts (the next
/// [`poll_expired`](Self::poll_expired)), not when it is asked for: the
/// chunks of one upstream read arrive together, and reading the clock for
/// each cost a stream of eight chunks six clock reads (about 20 ns each
/// here) where one does. Silence is then counted from the moment the
/// stream waits for its upstream, which is what it measures.
#[derive(Debug)]
pub struct SilenceTimer {
    sleep: Pin<Box<Sleep>>,
    due: Instant,
    /// A restart not yet applied: the overall deadline and the limit.
    restart: Option<(Option<Instant>, Duration)>,
}

impl SilenceTimer {
    /// A limit running out `limit` from now, or at `deadline` if sooner.
    pub fn new(deadline: Option<Instant>, limit: Duration) -> Self {
        let due = limit_at(deadline, limit);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(due)),
            due,
            restart: None,
        }
    }

    /// Sets the limit to `limit` from the start of the next wait (or
    /// `deadline`, if sooner); the last restart before a wait counts.
    pub fn restart(&mut self, deadline: Option<Instant>, limit: Duration) {
        self.restart = Some((deadline, limit));
    }

    /// Ready once the limit has really run out; if it only moved later,
    /// the sleep is set to the new time and the wake-up registered.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some((deadline, limit)) = self.restart.take() {
            self.due = limit_at(deadline, limit);
            if self.due < self.sleep.deadline() {
                let due = self.due;
                self.sleep.as_mut().reset(due);
            }
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.sleep.deadline() >= self.due {
                return Poll::Ready(());
            }
            let due = self.due;
            self.sleep.as_mut().reset(due);
        }
    }
}

fn limit_at(deadline: Option<Instant>, limit: Duration) -> Instant {
    let at = Instant::now() + limit;
    deadline.map_or(at, |deadline| at.min(deadline))
}

/// A chat stream with first-token, idle and deadline timeouts and the
/// completeness rule applied. Generic over the inner stream so that an
/// adapter can wrap its own reader without boxing it first (one box and
/// one dynamic call per chunk fewer); the manager wraps [`ChatStream`]s.
pub struct TimedStream<S = ChatStream> {
    inner: S,
    silence: SilenceTimer,
    idle_timeout: Duration,
    deadline: Option<Instant>,
    seen_content: bool,
    finished: bool,
    done: bool,
    chunks: u64,
}

impl<S> TimedStream<S>
where
    S: Stream<Item = ChunkItem> + Send + Unpin + 'static,
{
    /// Wraps `inner`; the first-token clock starts now.
    pub fn new(inner: S, ctx: &CallContext) -> Self {
        Self {
            inner,
            silence: SilenceTimer::new(ctx.deadline, ctx.first_token_timeout),
            idle_timeout: ctx.stream_idle_timeout,
            deadline: ctx.deadline,
            seen_content: false,
            finished: false,
            done: false,
            chunks: 0,
        }
    }

    /// Wraps `inner` with the first-token clock already partly used.
    pub fn boxed(inner: S, ctx: &CallContext) -> ChatStream {
        Box::pin(Self::new(inner, ctx))
    }
}

impl TimedStream {
    /// [`boxed`](Self::boxed), unless the adapter that made `inner` already
    /// applies these rules ([`Provider::times_streams`](crate::provider::Provider::times_streams)):
    /// a second wrapper would re-arm a second timer on every chunk.
    pub fn unless_timed(
        inner: ChatStream,
        timed_by_adapter: bool,
        ctx: &CallContext,
    ) -> ChatStream {
        if timed_by_adapter {
            inner
        } else {
            Self::boxed(inner, ctx)
        }
    }
}

impl<S> TimedStream<S> {
    fn arm(&mut self, limit: Duration) {
        self.silence.restart(self.deadline, limit);
    }

    fn on_chunk(&mut self, chunk: &StreamChunk) {
        self.chunks += 1;
        if chunk.finish_reason().is_some() {
            self.finished = true;
            self.arm(FINALIZE_AFTER);
        } else if chunk.has_content() {
            self.seen_content = true;
            self.arm(self.idle_timeout);
        } else if self.seen_content && !self.finished {
            self.arm(self.idle_timeout);
        }
    }

    fn timeout_error(&self) -> ProviderError {
        let deadline_hit = self.deadline.is_some_and(|d| Instant::now() >= d);
        let phase = if deadline_hit {
            TimeoutPhase::Deadline
        } else if self.seen_content {
            TimeoutPhase::StreamIdle
        } else {
            TimeoutPhase::FirstToken
        };
        ProviderError::Timeout { phase }
    }
}

impl<S: Stream<Item = ChunkItem> + Unpin> Stream for TimedStream<S> {
    type Item = ChunkItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.on_chunk(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.done = true;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.done = true;
                if this.finished {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(ProviderError::StreamCut {
                        chunks: this.chunks,
                    })))
                }
            }
            Poll::Pending => {
                if this.silence.poll_expired(cx).is_pending() {
                    return Poll::Pending;
                }
                this.done = true;
                if this.finished {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(this.timeout_error())))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ChatChunk;
    use futures_util::StreamExt;

    /// A chunk as an OpenAI adapter makes it: its data, unparsed.
    fn chunk(text: &str, finish: Option<&str>) -> StreamChunk {
        let data = serde_json::json!({
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]
        });
        StreamChunk::pass_through(data.to_string().into()).unwrap()
    }

    fn ctx() -> CallContext {
        CallContext {
            first_token_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(5),
            ..CallContext::default()
        }
    }

    async fn collect(stream: ChatStream) -> Vec<Result<String, ProviderError>> {
        TimedStream::boxed(stream, &ctx())
            .map(|r| r.map(|c| c.text()))
            .collect()
            .await
    }

    fn timer_expired(timer: &mut SilenceTimer) -> bool {
        let waker = futures_util::task::noop_waker();
        timer
            .poll_expired(&mut Context::from_waker(&waker))
            .is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_counts_from_the_next_wait_and_the_last_one_wins() {
        let second = Duration::from_secs(1);
        let mut timer = SilenceTimer::new(None, 3 * second);
        // Restarts between waits: only the last (2 s) applies, from the
        // wait that follows them, not from when they were asked for.
        timer.restart(None, 10 * second);
        tokio::time::advance(second).await;
        timer.restart(None, 2 * second);
        tokio::time::advance(second).await;
        assert!(!timer_expired(&mut timer));
        tokio::time::advance(1_900 * Duration::from_millis(1)).await;
        assert!(!timer_expired(&mut timer));
        tokio::time::advance(200 * Duration::from_millis(1)).await;
        assert!(timer_expired(&mut timer));

        // A restart sooner than the running limit brings it forward, and
        // the overall deadline caps any limit.
        let deadline = Instant::now() + 4 * second;
        let mut timer = SilenceTimer::new(Some(deadline), 30 * second);
        assert!(!timer_expired(&mut timer));
        timer.restart(Some(deadline), second);
        assert!(!timer_expired(&mut timer));
        tokio::time::advance(1_100 * Duration::from_millis(1)).await;
        assert!(timer_expired(&mut timer));
        timer.restart(Some(deadline), 30 * second);
        assert!(!timer_expired(&mut timer));
        tokio::time::advance(3 * second).await;
        assert!(timer_expired(&mut timer));
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_stream_ends_cleanly() {
        let items = vec![Ok(chunk("a", None)), Ok(chunk("b", Some("stop")))];
        let out = collect(Box::pin(futures_util::stream::iter(items))).await;
        assert_eq!(out, vec![Ok("a".to_owned()), Ok("b".to_owned())]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_end_without_finish_reason_is_a_cut() {
        let items = vec![Ok(chunk("a", None))];
        let out = collect(Box::pin(futures_util::stream::iter(items))).await;
        assert_eq!(
            out,
            vec![
                Ok("a".to_owned()),
                Err(ProviderError::StreamCut { chunks: 1 })
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_before_content_is_a_first_token_timeout() {
        let start = Instant::now();
        let out = collect(Box::pin(futures_util::stream::pending())).await;
        assert_eq!(
            out,
            vec![Err(ProviderError::Timeout {
                phase: TimeoutPhase::FirstToken
            })]
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_content_is_a_stall() {
        let start = Instant::now();
        let items = futures_util::stream::iter(vec![Ok(chunk("a", None))])
            .chain(futures_util::stream::pending());
        let out = collect(Box::pin(items)).await;
        assert_eq!(
            out,
            vec![
                Ok("a".to_owned()),
                Err(ProviderError::Timeout {
                    phase: TimeoutPhase::StreamIdle
                })
            ]
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    /// First-token limit 2 s, idle limit 5 s.
    fn short_limits() -> CallContext {
        CallContext {
            first_token_timeout: Duration::from_secs(2),
            stream_idle_timeout: Duration::from_secs(5),
            ..CallContext::default()
        }
    }

    /// `chunks`, one a second, then silence.
    fn paced(chunks: Vec<StreamChunk>) -> ChatStream {
        let paced = futures_util::stream::unfold(chunks.into_iter(), |mut rest| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok(rest.next()?), rest))
        })
        .chain(futures_util::stream::pending());
        Box::pin(paced)
    }

    #[tokio::test(start_paused = true)]
    async fn each_chunk_pushes_the_stall_limit_back_to_its_full_length() {
        // Chunks at 1..=4 s keep the stream alive past both the first-token
        // limit and 5 s, and the stall is reported exactly 5 s after the
        // last chunk.
        let chunks = (1..=4).map(|n| chunk(&n.to_string(), None)).collect();
        let start = Instant::now();
        let out: Vec<_> = TimedStream::boxed(paced(chunks), &short_limits())
            .map(|r| r.map(|c| c.text()))
            .collect()
            .await;
        assert_eq!(
            out,
            vec![
                Ok("1".to_owned()),
                Ok("2".to_owned()),
                Ok("3".to_owned()),
                Ok("4".to_owned()),
                Err(ProviderError::Timeout {
                    phase: TimeoutPhase::StreamIdle
                })
            ]
        );
        assert_eq!(start.elapsed(), Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn reasoning_under_either_name_is_the_first_token() {
        // A reasoning delta every second for 4 s, then silence, is a stall
        // 5 s after the last one, not a first-token timeout at 2 s.
        for key in ["reasoning_content", "reasoning"] {
            let reasoning = || {
                let chunk: ChatChunk = serde_json::from_value(serde_json::json!({
                    "choices": [{"index": 0, "delta": {key: "hmm"}, "finish_reason": null}]
                }))
                .unwrap();
                StreamChunk::from(chunk)
            };
            let start = Instant::now();
            let out: Vec<_> = TimedStream::boxed(
                paced((0..4).map(|_| reasoning()).collect()),
                &short_limits(),
            )
            .map(|r| r.map(|c| c.has_content()))
            .collect()
            .await;
            assert_eq!(
                out,
                vec![
                    Ok(true),
                    Ok(true),
                    Ok(true),
                    Ok(true),
                    Err(ProviderError::Timeout {
                        phase: TimeoutPhase::StreamIdle
                    })
                ],
                "{key}"
            );
            assert_eq!(start.elapsed(), Duration::from_secs(9), "{key}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_stream_missing_its_terminator_is_finalised_after_two_seconds() {
        let start = Instant::now();
        let items = futures_util::stream::iter(vec![Ok(chunk("a", Some("stop")))])
            .chain(futures_util::stream::pending());
        let out = collect(Box::pin(items)).await;
        assert_eq!(out, vec![Ok("a".to_owned())]);
        assert_eq!(start.elapsed(), FINALIZE_AFTER);
    }
}
