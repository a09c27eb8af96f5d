//! `POST /v1/chat/completions`: non-streaming through `execute_with_failover`, streaming through `execute_stream_with_failover`.
//!
//! The body is parsed into core's `ChatRequest` (validation, options). A
//! non-stream attempt on an adapter that speaks OpenAI's format sends the
//! client's bytes with only `model` swapped and answers with the upstream's
//! bytes, `model` relabelled (`switchyard_core::json`): no re-serialising.
//! Other attempts send a typed copy whose flattened `extra` maps pass
//! every unknown field through untouched. Streams always ask
//! the upstream for usage (`stream_options.include_usage`) and drop the
//! usage-only chunk when the client did not ask for it; headers are sent
//! only once the manager returned the first content, so failures before it
//! fail over invisibly. A stream that fails after content ends with one
//! `data: {"error": {...}}` event and no `[DONE]`.

use std::future::{Future, ready};
use std::sync::LazyLock;
use std::task::{Context, Poll, ready};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use bytes::BytesMut;
use futures_util::future::Either;
use futures_util::{FutureExt, StreamExt};
use memchr::memmem::Finder;
use switchyard_core::{
    ChatRequest, FailoverOptions, ManagedStream, RawChatResponse, RequestType, json,
};
use tracing::Instrument;

use super::{
    Answered, Answering, InAttempt, Recorder, RequestMeta, attempt_span, fail, options,
    parse_read_body, priced, read_body, request_span, respond, stream_error, success_headers,
    with_request_id,
};
use crate::app::AppState;
use crate::error::{ApiError, Shape};
use crate::sse::{self, UntilFirstItem};

/// The handler.
pub async fn handle(
    State(state): State<AppState>,
    meta: RequestMeta,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = read_body(body, state.server.max_body_bytes, Shape::OpenAi);
    answer(state, meta, body).await
}

/// The handler's work once the body is read: what the router's handler
/// and the direct dispatch (`dispatch.rs`) both run.
///
/// Written with combinators, and the work before the upstream calls done
/// at once, in the request's span: an async fn holds each argument twice
/// (captured, then moved in), and a local still borrowed at an await stays
/// in the future; each such byte is copied as the futures are built and
/// moved into place. With this and the same care down the send path, a
/// plain request copied 20 kB instead of 36 kB (a perf probe on `memcpy`).
pub fn answer(
    state: AppState,
    meta: RequestMeta,
    body: Result<Bytes, ApiError>,
) -> impl Future<Output = Response> + Send + 'static {
    let span = request_span("chat.completions", &meta);
    let answering = span.in_scope(|| start(state, &meta, body));
    answering
        .instrument(span)
        .map(move |response| with_request_id(response, &meta))
}

fn start(state: AppState, meta: &RequestMeta, body: Result<Bytes, ApiError>) -> Answering {
    let mut recorder = Recorder::start(&state);
    let (request, body) = match parse_read_body(&state, body, |r: &ChatRequest| &r.model) {
        Ok(parsed) => parsed,
        Err(error) => return Either::Left(ready(fail(recorder, error))),
    };
    recorder.set_request(&request.model, request.stream);
    let options = options(
        &request.model,
        RequestType::Chat,
        meta,
        request.metadata_region(),
        request.estimated_prompt_tokens(),
        request.output_limit(),
    );
    // Boxed: inline, the larger of the two (kilobytes of state) would
    // sit in the handler's future, copied as it is built and moved.
    Either::Right(if request.stream {
        Box::pin(stream(state, request, body, options, recorder))
    } else {
        Box::pin(unary(state, request, body, options, recorder))
    })
}

/// One attempt's request: the client's bytes with `model` swapped (and,
/// for a stream, usage asked for), for adapters that speak OpenAI's
/// format; else the parsed request.
enum Outgoing {
    Forwarded(Bytes),
    Typed(Box<ChatRequest>),
}

/// An async block rather than an async fn: see [`answer`].
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold `request` and `recorder` twice"
)]
fn unary(
    state: AppState,
    request: ChatRequest,
    body: Bytes,
    options: FailoverOptions,
    recorder: Recorder,
) -> impl Future<Output = Response> + Send + 'static {
    async move {
        let upstream = recorder.upstream();
        // `stream_options` must not reach an upstream without `stream`, so such
        // bodies (rare) go the typed way, which drops it.
        let forwardable = if request.stream_options.is_none() {
            json::parsed_model_span(&body, &request.model).map(|span| (body, span))
        } else {
            None
        };
        let outcome = state
            .manager
            .execute_with_failover(options, |mut attempt| {
                let outgoing = match &forwardable {
                    Some((body, span)) if attempt.provider.forwards_openai_json() => {
                        Outgoing::Forwarded(json::with_model(body, span, &attempt.upstream_model))
                    }
                    _ => {
                        let mut request = request.clone();
                        request.model.clear();
                        request.model.push_str(&attempt.upstream_model);
                        request.stream = false;
                        Outgoing::Typed(Box::new(request))
                    }
                };
                let span = attempt_span(&mut attempt);
                async move {
                    let _timing = upstream.span();
                    let pricing = attempt.deployment.pricing();
                    let response = match outgoing {
                        Outgoing::Forwarded(body) => {
                            attempt.provider.chat_json(body, &attempt.ctx).await?
                        }
                        Outgoing::Typed(request) => {
                            let response = attempt.provider.chat(*request, &attempt.ctx).await?;
                            RawChatResponse::from_response(&response)?
                        }
                    };
                    priced(&attempt, response, pricing)
                }
                .in_attempt(span)
            })
            .await;
        respond(&state, recorder, outcome)
    }
}

/// An async block rather than an async fn: see [`answer`].
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold `request` and `recorder` twice"
)]
fn stream(
    state: AppState,
    request: ChatRequest,
    body: Bytes,
    options: FailoverOptions,
    mut recorder: Recorder,
) -> impl Future<Output = Response> + Send + 'static {
    async move {
        let client_wants_usage = request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        // The client's bytes go up with `model` swapped, and with usage asked
        // for when the body has no `stream_options` key at all (`null` parses
        // as none, and splicing would add a second key). Other options are
        // rare and take the typed way, which sets `include_usage`.
        let asks_usage = request.stream_options.is_none();
        // Built once: building a searcher cost more than the search (679 of a
        // stream's instructions, callgrind).
        static STREAM_OPTIONS: LazyLock<Finder<'static>> =
            LazyLock::new(|| Finder::new(b"\"stream_options\""));
        let forwardable =
            if (asks_usage && STREAM_OPTIONS.find(&body).is_none()) || client_wants_usage {
                json::parsed_model_span(&body, &request.model).map(|span| (body, span))
            } else {
                None
            };
        let upstream = recorder.upstream().share();
        let outcome = state
            .manager
            .execute_stream_with_failover(options, move |mut attempt| {
                let forwarded = match &forwardable {
                    // A resumption changes the messages: typed.
                    Some((body, span))
                        if attempt.resume.is_none() && attempt.provider.forwards_openai_json() =>
                    {
                        if asks_usage {
                            json::stream_with_model(body, span, &attempt.upstream_model)
                        } else {
                            Some(json::with_model(body, span, &attempt.upstream_model))
                        }
                    }
                    _ => None,
                };
                let outgoing = match forwarded {
                    Some(bytes) => Outgoing::Forwarded(bytes),
                    None => {
                        let mut request = request.clone();
                        attempt.apply_resume(&mut request);
                        request.model.clear();
                        request.model.push_str(&attempt.upstream_model);
                        request.stream = true;
                        request
                            .stream_options
                            .get_or_insert_with(Default::default)
                            .include_usage = true;
                        Outgoing::Typed(Box::new(request))
                    }
                };
                let timer = upstream.clone();
                let span = attempt_span(&mut attempt);
                async move {
                    let timing = timer.into_span();
                    let stream = match outgoing {
                        Outgoing::Forwarded(body) => {
                            attempt
                                .provider
                                .chat_stream_json(body, &attempt.ctx)
                                .await?
                        }
                        Outgoing::Typed(request) => {
                            attempt.provider.chat_stream(*request, &attempt.ctx).await?
                        }
                    };
                    let timed: switchyard_core::ChatStream =
                        Box::pin(UntilFirstItem::new(stream, timing));
                    Ok(timed)
                }
                .in_attempt(span)
            })
            .await;
        match outcome {
            Ok(result) => {
                let pricing = result.deployment.pricing();
                let (stream, answered) = Answered::split(result);
                recorder.answered_by(&answered.provider_id, &answered.model, pricing);
                recorder.first_token();
                let events =
                    ChatEvents::new(stream, answered.clone(), client_wants_usage, recorder);
                let mut response = sse::response(sse::Frames::new(events));
                success_headers(&mut response, &answered);
                response
            }
            Err(error) => fail(recorder, ApiError::from_manager(&error, &state.redactor)),
        }
    }
}

/// The SSE events of one chat stream, polled directly: a chunk on its way
/// out moves no future.
struct ChatEvents {
    stream: ManagedStream,
    answered: Answered,
    client_wants_usage: bool,
    /// Dropped with the stream when the client goes away: recorded `cancelled`.
    recorder: Option<Recorder>,
    finished: bool,
    /// `answered.model` as a JSON string, to splice into chunks; built at
    /// the first chunk that names another model (most streams never do).
    quoted_model: std::cell::OnceCell<Vec<u8>>,
}

impl ChatEvents {
    fn new(
        stream: ManagedStream,
        answered: Answered,
        client_wants_usage: bool,
        recorder: Recorder,
    ) -> Self {
        Self {
            stream,
            answered,
            client_wants_usage,
            recorder: Some(recorder),
            finished: false,
            quoted_model: std::cell::OnceCell::new(),
        }
    }

    /// Writes a chunk as the upstream's event data when that takes only
    /// byte edits: `model` swapped for the client-facing name (upstreams
    /// answer with their own, often dated, name) and a null `usage` the
    /// client did not ask for cut out (`null_usage`: the parse met one at
    /// the top level). `false`: the chunk must be serialised.
    fn put_upstream_bytes(
        &self,
        out: &mut BytesMut,
        data: &[u8],
        model: &str,
        null_usage: bool,
    ) -> bool {
        if memchr::memchr2(b'\n', b'\r', data).is_some() {
            return false;
        }
        // OpenAI, asked for usage (by the gateway, not the client), sends a
        // null `usage` on every chunk but the last. Where it ends the
        // document, it is the top-level member without a parse. The parse
        // says whether there is one; the bytes are not searched for a
        // `usage` key (a nested one is not the client's to lose, and a
        // usage object is kept as serialising would keep it).
        let cut = if self.client_wants_usage || !null_usage {
            None
        } else if data.ends_with(NULL_USAGE_TAIL) {
            let close = data.len() - 1;
            Some(close + 1 - NULL_USAGE_TAIL.len()..close)
        } else {
            match json::null_usage_member(data) {
                Some(member) => Some(member),
                None => return false,
            }
        };
        let rename = if model == &*self.answered.model {
            None
        } else {
            match json::parsed_model_span(data, model) {
                Some(span) => Some(span),
                None => return false,
            }
        };
        let empty: &[u8] = b"";
        let quoted = || -> &[u8] {
            self.quoted_model
                .get_or_init(|| json::quoted(&self.answered.model))
        };
        // The edits in the order they sit: (range, replacement).
        let (first, second) = match (rename, cut) {
            (None, None) => {
                sse::put_data(out, data);
                return true;
            }
            (Some(span), None) => ((span, quoted()), None),
            (None, Some(member)) => ((member, empty), None),
            (Some(span), Some(member)) if span.end <= member.start => {
                ((span, quoted()), Some((member, empty)))
            }
            (Some(span), Some(member)) if member.end <= span.start => {
                ((member, empty), Some((span, quoted())))
            }
            (Some(_), Some(_)) => return false,
        };
        let (first_range, first_with) = first;
        let Some(head) = data.get(..first_range.start) else {
            return false;
        };
        match second {
            None => {
                let Some(tail) = data.get(first_range.end..) else {
                    return false;
                };
                sse::put_data_parts(out, &[head, first_with, tail]);
            }
            Some((second_range, second_with)) => {
                let (Some(middle), Some(tail)) = (
                    data.get(first_range.end..second_range.start),
                    data.get(second_range.end..),
                ) else {
                    return false;
                };
                sse::put_data_parts(out, &[head, first_with, middle, second_with, tail]);
            }
        }
        true
    }

    fn finish(&mut self, status: &str) {
        self.finished = true;
        if let Some(recorder) = self.recorder.take() {
            recorder.finish(status);
        }
    }
}

impl sse::EventWriter for ChatEvents {
    /// Appends the next event to `out`; `false` once the stream has ended.
    fn poll_event(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<bool> {
        if self.finished {
            return Poll::Ready(false);
        }
        loop {
            match ready!(self.stream.poll_next_unpin(cx)) {
                Some(Ok(mut chunk)) => {
                    if let (Some(usage), Some(recorder)) = (chunk.usage(), self.recorder.as_mut()) {
                        recorder.usage(usage);
                    }
                    if !self.client_wants_usage && chunk.has_no_choices() && chunk.usage().is_some()
                    {
                        continue;
                    }
                    // The upstream's own bytes, edited where needed, rather
                    // than the chunk serialised again.
                    if let Some(data) = chunk.source() {
                        let null_usage = chunk.has_null_usage();
                        if self.put_upstream_bytes(out, data, chunk.model(), null_usage) {
                            return Poll::Ready(true);
                        }
                    }
                    chunk.model.clear();
                    chunk.model.push_str(&self.answered.model);
                    match sse::put_json_data(out, &chunk) {
                        Ok(()) => return Poll::Ready(true),
                        Err(error) => {
                            tracing::warn!(%error, "cannot serialise a chunk; skipped");
                            continue;
                        }
                    }
                }
                Some(Err(error)) => {
                    // Content was already sent and the manager's stream
                    // resumption (SPEC §5) did not continue it, so the
                    // stream ends with an explicit error event and no
                    // [DONE], never as a truncation that looks complete.
                    tracing::warn!(
                        provider = %self.answered.provider_id,
                        model = %self.answered.model,
                        error_kind = error.kind(),
                        "stream failed after content was sent"
                    );
                    let event =
                        stream_error(&error, &self.answered.provider_id, &self.answered.model)
                            .stream_event();
                    self.finish("stream_error");
                    out.extend_from_slice(event.as_bytes());
                    return Poll::Ready(true);
                }
                None => {
                    self.finish("200");
                    out.extend_from_slice(sse::DONE.as_bytes());
                    return Poll::Ready(true);
                }
            }
        }
    }
}

/// How chunk data ends when its last top-level member is a null `usage`.
const NULL_USAGE_TAIL: &[u8] = b",\"usage\":null}";
