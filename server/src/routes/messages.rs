//! `POST /v1/messages`: Anthropic Messages in; native to Anthropic deployments, translated to and from the OpenAI shape otherwise.
//!
//! Per attempt, the deployment decides the path: an adapter that speaks
//! Messages natively (`capabilities().anthropic_native`) gets the client's
//! body with only `model` rewritten, so `cache_control`, thinking and
//! citations survive, and its JSON or events come back untouched except
//! `model`; any other adapter gets the request translated to a chat request
//! (`switchyard_providers::anthropic_request_to_chat`) and its answer
//! translated back. A request using Anthropic-only features (or one that
//! does not translate) routes only to native deployments.
//!
//! Streams run through `execute_raw_stream_with_failover`: native attempts
//! return the upstream's events, translated ones their chunks through
//! `ChunksToAnthropic`, so one failover run mixes both. It returns at the
//! first content event, so failures before content fail over invisibly and
//! headers are committed only then; the attempt's outcome is recorded when
//! the stream ends, so a cut after content counts against the deployment. Errors use the Anthropic shape, also in-band (`event: error`,
//! and never a `message_stop` after it).

use std::future::{Future, ready};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::StreamExt;
use futures_util::future::Either;
use serde_json::Value;
use switchyard_core::stream::TimedStream;
use switchyard_core::{
    ChatRequest, ChatResponse, ChatStream, ManagerError, ProviderError, RawEvent, RawEventStream,
    RequestType, Usage,
};
use switchyard_providers::{
    TranslationError, anthropic_request_to_chat, chat_response_to_anthropic,
    uses_anthropic_only_features,
};
use tracing::Instrument;

use super::{
    Answered, Answering, InAttempt, Recorder, RequestMeta, attempt_span, fail, options, parse_json,
    read_body, report_usage, request_span, stream_error, success_headers, with_request_id,
};
use crate::app::AppState;
use crate::error::{ApiError, Shape};
use crate::sse;

/// The handler.
pub async fn handle(
    State(state): State<AppState>,
    meta: RequestMeta,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = request_span("messages", &meta);
    // Started at once in the span, the rest boxed: see `chat::answer`.
    let answering = span.in_scope(|| start(state, &meta, body));
    let response = answering.instrument(span).await;
    with_request_id(response, &meta)
}

/// A validated request, in both shapes.
struct Prepared {
    body: Value,
    stream: bool,
    /// The translation for non-native deployments (`Err` when it does not translate).
    chat: Result<ChatRequest, TranslationError>,
    native_only: bool,
}

fn validate(body: &Value) -> Result<(String, bool), ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::invalid_request("The request body must be a JSON object."))?;
    let model = match object.get("model") {
        Some(Value::String(model)) if !model.trim().is_empty() => model.clone(),
        Some(Value::String(_)) | None => {
            return Err(ApiError::invalid_request("model: field required").with_param("model"));
        }
        Some(_) => {
            return Err(ApiError::invalid_request("model: must be a string").with_param("model"));
        }
    };
    match object.get("messages") {
        Some(Value::Array(_)) => {}
        None => {
            return Err(
                ApiError::invalid_request("messages: field required").with_param("messages")
            );
        }
        Some(_) => {
            return Err(
                ApiError::invalid_request("messages: must be an array").with_param("messages")
            );
        }
    }
    match object.get("max_tokens") {
        Some(value) if value.as_u64().is_some_and(|n| n >= 1) => {}
        None => {
            return Err(
                ApiError::invalid_request("max_tokens: field required").with_param("max_tokens")
            );
        }
        Some(_) => {
            return Err(
                ApiError::invalid_request("max_tokens: must be a positive integer")
                    .with_param("max_tokens"),
            );
        }
    }
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => {
            return Err(ApiError::invalid_request("stream: must be a boolean").with_param("stream"));
        }
    };
    Ok((model, stream))
}

fn start(state: AppState, meta: &RequestMeta, body: Result<Bytes, BytesRejection>) -> Answering {
    let mut recorder = Recorder::start(&state);
    let bytes = match read_body(body, state.server.max_body_bytes, Shape::Anthropic) {
        Ok(bytes) => bytes,
        Err(error) => return Either::Left(ready(fail(recorder, error))),
    };
    if state.server.log_bodies {
        tracing::debug!(body = %String::from_utf8_lossy(&bytes), "request body");
    }
    let body: Value = match parse_json(&bytes) {
        Ok(body) => body,
        Err(error) => return Either::Left(ready(fail(recorder, error.anthropic()))),
    };
    let (model, stream) = match validate(&body) {
        Ok(valid) => valid,
        Err(error) => return Either::Left(ready(fail(recorder, error.anthropic()))),
    };
    let chat = anthropic_request_to_chat(&body);
    let native_only = uses_anthropic_only_features(&body) || chat.is_err();
    recorder.set_request(&model, stream);
    if crate::otel::exporting() {
        tracing::Span::current().record("native_only", native_only);
    }
    let estimated = chat.as_ref().map_or_else(
        |_| u32::try_from(bytes.len() / 4 + 1).unwrap_or(u32::MAX),
        ChatRequest::estimated_prompt_tokens,
    );
    let max_tokens = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    let mut options = options(&model, RequestType::Chat, meta, None, estimated, max_tokens);
    options.require_anthropic_native = native_only;
    let prepared = Prepared {
        body,
        stream,
        chat,
        native_only,
    };
    // Boxed for the reason given in `chat::start`.
    Either::Right(if prepared.stream {
        Box::pin(stream_messages(state, prepared, options, recorder))
    } else {
        Box::pin(unary(state, prepared, options, recorder))
    })
}

/// The error for a failed run, in the Anthropic shape. A native-only
/// request whose model is served, but by no native deployment, is a 400.
fn error_for(state: &AppState, prepared: &Prepared, error: &ManagerError) -> ApiError {
    if let ManagerError::UnknownModel { model, .. } = error {
        let served = state.manager.has_wildcard() || state.manager.models().contains(model);
        if prepared.native_only && served {
            let why = match &prepared.chat {
                Err(translation) => {
                    format!("it cannot be translated for other providers ({translation})")
                }
                Ok(_) => {
                    "it uses Anthropic-only features (such as cache_control, thinking or citations)"
                        .to_owned()
                }
            };
            return ApiError::invalid_request(format!(
                "No Anthropic deployment serves model `{model}`, and this request can only go to one: {why}."
            ))
            .anthropic();
        }
    }
    ApiError::from_manager(error, &state.redactor).anthropic()
}

/// What one attempt sends.
enum Outgoing {
    Native(Value),
    Chat(Box<ChatRequest>),
    Untranslatable(TranslationError),
}

fn outgoing(prepared: &Prepared, native: bool, upstream_model: &str, stream: bool) -> Outgoing {
    if native {
        let mut body = prepared.body.clone();
        if let Some(object) = body.as_object_mut() {
            object.insert("model".into(), Value::String(upstream_model.to_owned()));
        }
        return Outgoing::Native(body);
    }
    match &prepared.chat {
        Ok(request) => {
            let mut request = request.clone();
            upstream_model.clone_into(&mut request.model);
            request.stream = stream;
            if stream {
                request
                    .stream_options
                    .get_or_insert_with(Default::default)
                    .include_usage = true;
            }
            Outgoing::Chat(Box::new(request))
        }
        Err(error) => Outgoing::Untranslatable(error.clone()),
    }
}

enum Reply {
    Native(Value),
    Chat(ChatResponse),
}

/// An async block rather than an async fn: see `chat::answer`.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold `prepared` and `recorder` twice"
)]
fn unary(
    state: AppState,
    prepared: Prepared,
    options: switchyard_core::FailoverOptions,
    mut recorder: Recorder,
) -> impl Future<Output = Response> + Send + 'static {
    async move {
        let upstream = recorder.upstream();
        let outcome = state
            .manager
            .execute_with_failover(options, |mut attempt| {
                let native = attempt.provider.capabilities().anthropic_native;
                let outgoing = outgoing(&prepared, native, &attempt.upstream_model, false);
                let span = attempt_span(&mut attempt);
                async move {
                    let _timing = upstream.span();
                    let pricing = attempt.deployment.pricing();
                    let reply = match outgoing {
                        Outgoing::Native(body) => {
                            let reply = attempt.provider.messages(body, &attempt.ctx).await?;
                            if let Some(usage) = anthropic_usage(reply.get("usage")) {
                                report_usage(&attempt, &usage);
                            }
                            Reply::Native(reply)
                        }
                        Outgoing::Chat(request) => {
                            let reply = attempt.provider.chat(*request, &attempt.ctx).await?;
                            if let Some(usage) = &reply.usage {
                                report_usage(&attempt, usage);
                            }
                            Reply::Chat(reply)
                        }
                        Outgoing::Untranslatable(error) => return Err(error.into_provider_error()),
                    };
                    Ok((reply, pricing))
                }
                .in_attempt(span)
            })
            .await;
        let ((reply, pricing), answered) = match outcome {
            Ok(result) => Answered::split(result),
            Err(error) => {
                let api = error_for(&state, &prepared, &error);
                return fail(recorder, api);
            }
        };
        recorder.answered_by(&answered.provider_id, &answered.model, pricing);
        let mut body = match reply {
            Reply::Native(body) => body,
            Reply::Chat(response) => chat_response_to_anthropic(&response),
        };
        if let Some(usage) = anthropic_usage(body.get("usage")) {
            recorder.usage(&usage);
        }
        if let Some(object) = body.as_object_mut() {
            object.insert("model".into(), Value::String(answered.model.to_string()));
        }
        let mut response = Json(body).into_response();
        success_headers(&mut response, &answered);
        recorder.finish("200");
        response
    }
}

/// Anthropic usage (`input_tokens`, `output_tokens`, cache tokens counted as input).
fn anthropic_usage(usage: Option<&Value>) -> Option<Usage> {
    let usage = usage?;
    let get = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    let input =
        get("input_tokens") + get("cache_creation_input_tokens") + get("cache_read_input_tokens");
    Some(Usage::new(input, get("output_tokens")))
}

fn event_name(event: &RawEvent) -> String {
    event.event.clone().unwrap_or_else(|| {
        serde_json::from_str::<Value>(&event.data)
            .ok()
            .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default()
    })
}

/// Whether a native event is content (or completion): past it, a failure
/// can no longer fail over invisibly.
fn is_content_event(event: &RawEvent) -> bool {
    matches!(
        event_name(event).as_str(),
        "content_block_delta" | "message_delta" | "message_stop"
    )
}

/// An OpenAI-format stream as Anthropic events: the chunks (with core's
/// first-token, idle and completeness rules applied) through the translator,
/// whose closing events follow a clean end; an error item passes through.
fn translated_events(
    stream: ChatStream,
    ctx: &switchyard_core::CallContext,
    model: String,
) -> RawEventStream {
    switchyard_providers::chat_stream_to_anthropic(TimedStream::boxed(stream, ctx), model)
}

/// An async block rather than an async fn: see `chat::answer`.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold `prepared` and `recorder` twice"
)]
fn stream_messages(
    state: AppState,
    prepared: Prepared,
    options: switchyard_core::FailoverOptions,
    mut recorder: Recorder,
) -> impl Future<Output = Response> + Send + 'static {
    async move {
        let upstream = recorder.upstream();
        // The attempt that answered, to settle its TPM reservation at the end.
        let answering = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&answering);
        let outcome = state
            .manager
            .execute_raw_stream_with_failover(
                options,
                |mut attempt| {
                    let native = attempt.provider.capabilities().anthropic_native;
                    let outgoing = outgoing(&prepared, native, &attempt.upstream_model, true);
                    let span = attempt_span(&mut attempt);
                    *slot.lock() = Some(attempt.clone());
                    async move {
                        let _timing = upstream.span();
                        match outgoing {
                            Outgoing::Native(body) => {
                                attempt.provider.messages_stream(body, &attempt.ctx).await
                            }
                            Outgoing::Chat(request) => {
                                let stream =
                                    attempt.provider.chat_stream(*request, &attempt.ctx).await?;
                                Ok(translated_events(
                                    stream,
                                    &attempt.ctx,
                                    attempt.model.to_string(),
                                ))
                            }
                            Outgoing::Untranslatable(error) => Err(error.into_provider_error()),
                        }
                    }
                    .in_attempt(span)
                },
                is_content_event,
            )
            .await;
        let (events, answered, pricing) = match outcome {
            Ok(result) => {
                let pricing = result.deployment.pricing();
                let (events, answered) = Answered::split(result);
                (events, answered, pricing)
            }
            Err(error) => {
                let api = error_for(&state, &prepared, &error);
                return fail(recorder, api);
            }
        };
        recorder.answered_by(&answered.provider_id, &answered.model, pricing);
        recorder.first_token();
        let settle = answering.lock().take();
        let events = MessageEvents {
            events,
            answered: answered.clone(),
            recorder: Some(recorder),
            usage: Usage::default(),
            settle,
            finished: false,
        };
        let mut response = sse::response(sse::Frames::new(events));
        success_headers(&mut response, &answered);
        response
    }
}

/// The SSE events of one `/v1/messages` stream, polled directly and sent
/// as few frames as arrive ([`sse::Frames`]).
struct MessageEvents {
    events: RawEventStream,
    answered: Answered,
    /// Dropped with the stream when the client goes away: recorded `cancelled`.
    recorder: Option<Recorder>,
    usage: Usage,
    /// The answering attempt, to settle its TPM reservation with real usage.
    settle: Option<switchyard_core::Attempt>,
    finished: bool,
}

impl MessageEvents {
    fn finish(&mut self, status: &str) {
        self.finished = true;
        if let Some(attempt) = self.settle.take() {
            self.usage.total_tokens = self.usage.prompt_tokens + self.usage.completion_tokens;
            attempt.report_usage(&self.usage);
        }
        if let Some(mut recorder) = self.recorder.take() {
            recorder.usage(&self.usage);
            recorder.finish(status);
        }
    }

    fn failed(&mut self, error: &ProviderError) -> String {
        // Native streams are not resumed: an explicit error event ends the
        // stream, with no message_stop after it (never a truncated stream
        // that looks complete).
        tracing::warn!(
            provider = %self.answered.provider_id,
            model = %self.answered.model,
            error_kind = error.kind(),
            "stream failed after content was sent"
        );
        let text = stream_error(error, &self.answered.provider_id, &self.answered.model)
            .anthropic()
            .stream_event();
        self.finish("stream_error");
        text
    }

    /// Appends a native event to `out`, untouched except `message_start`'s model.
    fn native_event(&mut self, event: RawEvent, out: &mut BytesMut) {
        let name = event_name(&event);
        if name == "message_start" || name == "message_delta" {
            if let Ok(mut data) = serde_json::from_str::<Value>(&event.data) {
                if name == "message_start" {
                    if let Some(usage) = anthropic_usage(data.pointer("/message/usage")) {
                        self.usage.prompt_tokens = usage.prompt_tokens;
                    }
                    if let Some(message) = data.get_mut("message").and_then(Value::as_object_mut) {
                        message.insert(
                            "model".into(),
                            Value::String(self.answered.model.to_string()),
                        );
                    }
                    sse::put_event(out, event.event.as_deref(), &data.to_string());
                    return;
                }
                if let Some(output) = data.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.completion_tokens = output;
                }
                if let Some(input) = anthropic_usage(data.get("usage")).map(|u| u.prompt_tokens) {
                    if input > 0 {
                        self.usage.prompt_tokens = input;
                    }
                }
            }
        }
        sse::put_event(out, event.event.as_deref(), &event.data);
    }
}

impl sse::EventWriter for MessageEvents {
    /// Appends the next event to `out`; `false` once the stream has ended.
    fn poll_event(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<bool> {
        if self.finished {
            return Poll::Ready(false);
        }
        match ready!(self.events.poll_next_unpin(cx)) {
            Some(Ok(event)) => self.native_event(event, out),
            Some(Err(error)) => out.extend_from_slice(self.failed(&error).as_bytes()),
            None => {
                self.finish("200");
                return Poll::Ready(false);
            }
        }
        Poll::Ready(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use serde_json::json;

    use super::*;

    #[test]
    fn validation_names_the_field() {
        let ok = json!({"model": "m", "max_tokens": 5, "messages": [], "stream": true});
        assert_eq!(validate(&ok).unwrap(), ("m".to_owned(), true));
        for (body, param) in [
            (json!({"max_tokens": 5, "messages": []}), "model"),
            (json!({"model": "m", "max_tokens": 5}), "messages"),
            (json!({"model": "m", "messages": []}), "max_tokens"),
            (
                json!({"model": "m", "max_tokens": "x", "messages": []}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [], "stream": "yes"}),
                "stream",
            ),
        ] {
            assert_eq!(
                validate(&body).unwrap_err().param.as_deref(),
                Some(param),
                "{body}"
            );
        }
    }

    #[test]
    fn usage_counts_cache_tokens_as_input() {
        let usage = anthropic_usage(Some(&json!({
            "input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 10
        })))
        .unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (13, 4));
    }

    #[test]
    fn content_events() {
        let event = |name: &str| RawEvent {
            event: Some(name.to_owned()),
            data: "{}".into(),
        };
        assert!(!is_content_event(&event("message_start")));
        assert!(!is_content_event(&event("ping")));
        assert!(is_content_event(&event("content_block_delta")));
        let unnamed = RawEvent {
            event: None,
            data: r#"{"type":"content_block_delta"}"#.into(),
        };
        assert!(is_content_event(&unnamed));
    }
}
