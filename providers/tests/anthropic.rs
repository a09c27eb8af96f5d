//! The `anthropic` adapter against a local server speaking the Messages API: translated and native, bodies, events and errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard_core::{
    ChatMessage, ChatRequest, ModelConfig, ProviderConfig, ProviderError, RawEvent, Secret,
    TimeoutPhase, UpstreamCategory,
};

const KEY: &str = "sk-ant-api03-test-key-abcdef";

fn event(name: &'static str, value: Value) -> Part {
    Part::Event(name, value)
}

fn message_start() -> Part {
    event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-20250514",
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 25, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 10, "output_tokens": 1}}}),
    )
}

fn text_block(index: u32, texts: &[&str]) -> Vec<Part> {
    let mut parts = vec![event(
        "content_block_start",
        json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
    )];
    for text in texts {
        parts.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
        ));
    }
    parts.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    ));
    parts
}

fn message_delta(reason: &str) -> Part {
    event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null},
            "usage": {"output_tokens": 15}}),
    )
}

fn message_stop() -> Part {
    event("message_stop", json!({"type": "message_stop"}))
}

fn ping() -> Part {
    event("ping", json!({"type": "ping"}))
}

fn text_events() -> Vec<Part> {
    let mut parts = vec![message_start(), ping()];
    parts.extend(text_block(0, &["Hello", "!"]));
    parts.push(message_delta("end_turn"));
    parts.push(message_stop());
    parts
}

fn tool_events() -> Vec<Part> {
    let mut parts = vec![message_start()];
    parts.extend(text_block(0, &["Let me check."]));
    parts.push(event("content_block_start", json!({"type": "content_block_start", "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}})));
    for piece in ["", "{\"location\": \"San Fra", "ncisco, CA\"}"] {
        parts.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": piece}}),
        ));
    }
    parts.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 1}),
    ));
    parts.push(message_delta("tool_use"));
    parts.push(message_stop());
    parts
}

fn message_body() -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [
            {"type": "text", "text": "I'll check the weather."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
             "input": {"location": "San Francisco, CA"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 12, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 100,
            "output_tokens": 6, "service_tier": "standard"}
    })
}

fn anthropic_error(status: u16, kind: &str, message: &str, headers: &[(&str, &str)]) -> Response {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}),
        headers,
    )
}

fn respond(case: &str, stream: bool) -> Response {
    match (case, stream) {
        ("ok", false) => json_response(200, &message_body(), &[]),
        ("ok", true) => sse(text_events()),
        ("tools", _) => sse(tool_events()),
        ("cut", _) => {
            let mut parts = vec![message_start()];
            parts.extend(text_block(0, &["Hel"]));
            parts
        }
        .pipe(sse),
        ("cut-abort", _) => sse(vec![
            message_start(),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            ),
            Part::Wait(Duration::from_millis(50)),
            Part::Abort,
        ]),
        ("stop-without-delta", _) => sse(vec![message_start(), message_stop()]),
        ("no-stop", _) => {
            let mut parts = vec![message_start()];
            parts.extend(text_block(0, &["Hi"]));
            parts.push(message_delta("end_turn"));
            parts
        }
        .pipe(sse),
        ("overloaded-in-band", _) => sse(vec![
            message_start(),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            ),
            event(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ),
        ]),
        ("malformed", _) => {
            let mut parts = vec![
                message_start(),
                raw("event: content_block_delta\ndata: {\"type\": \"content_bl\n\n"),
            ];
            parts.extend(text_block(0, &["ok"]));
            parts.push(message_delta("end_turn"));
            parts.push(message_stop());
            parts
        }
        .pipe(sse),
        ("stall", _) => sse(vec![
            message_start(),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            ),
            Part::Hang,
        ]),
        ("slow", _) => sse(vec![
            message_start(),
            Part::Wait(Duration::from_millis(1500)),
            message_stop(),
        ]),
        ("context", _) => anthropic_error(
            400,
            "invalid_request_error",
            "prompt is too long: 215344 tokens > 200000 maximum",
            &[],
        ),
        ("bad", _) => anthropic_error(
            400,
            "invalid_request_error",
            "messages: roles must alternate between \"user\" and \"assistant\"",
            &[],
        ),
        ("auth", _) => anthropic_error(401, "authentication_error", "invalid x-api-key", &[]),
        ("permission", _) => anthropic_error(
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
            &[],
        ),
        ("model", _) => anthropic_error(404, "not_found_error", "model: claude-nope", &[]),
        ("rate", _) => anthropic_error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            &[
                ("retry-after", "12"),
                ("anthropic-ratelimit-requests-remaining", "0"),
            ],
        ),
        ("rate-no-header", _) => anthropic_error(
            429,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit",
            &[],
        ),
        ("server", _) => anthropic_error(500, "api_error", "Internal server error", &[]),
        ("unavailable", _) => anthropic_error(503, "api_error", "Service unavailable", &[]),
        ("overloaded", _) => anthropic_error(529, "overloaded_error", "Overloaded", &[]),
        (other, _) => anthropic_error(500, "api_error", &format!("unknown case {other}"), &[]),
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

async fn setup() -> (TestServer, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let record = seen.clone();
    let router = Router::new()
        .route(
            "/{case}/v1/messages",
            post(
                move |Path(case): Path<String>, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let seen = record.clone();
                    async move {
                        seen.record(uri.path(), &headers, &body);
                        let stream = serde_json::from_slice::<Value>(&body).unwrap()["stream"]
                            == json!(true);
                        respond(&case, stream)
                    }
                },
            ),
        )
        .route(
            "/{case}/v1/models",
            get(|| async {
                json_response(200, &json!({"data": [
                    {"type": "model", "id": "claude-sonnet-4-20250514", "display_name": "Claude Sonnet 4", "created_at": "2025-05-22T00:00:00Z"},
                    {"type": "model", "id": "claude-3-5-haiku-20241022", "display_name": "Claude Haiku 3.5", "created_at": "2024-10-22T00:00:00Z"}
                ], "has_more": false, "first_id": "claude-sonnet-4-20250514", "last_id": "claude-3-5-haiku-20241022"}), &[])
            }),
        );
    (serve(router).await, seen)
}

fn config(server: &TestServer, case: &str) -> ProviderConfig {
    let mut config = ProviderConfig::new("claude", "anthropic", ["claude-sonnet-4"]);
    config.base_url = Some(server.url(&format!("/{case}/v1")));
    config.api_key = Some(Secret::new(KEY));
    config.models.insert(
        "claude-sonnet-4".into(),
        ModelConfig {
            upstream_name: Some("claude-sonnet-4-20250514".into()),
            max_output_tokens: Some(64000),
            ..ModelConfig::default()
        },
    );
    config
}

fn at(server: &TestServer, case: &str) -> Arc<dyn switchyard_core::Provider> {
    provider_from(&config(server, case))
}

fn request() -> ChatRequest {
    serde_json::from_value(json!({
        "model": "claude-sonnet-4-20250514",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_1", "type": "function",
                "function": {"name": "get_location", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "Paris"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}],
        "tool_choice": "required",
        "stop": "END",
        "temperature": 0.5
    }))
    .unwrap()
}

async fn collect<T>(
    mut stream: std::pin::Pin<
        Box<dyn futures_core::Stream<Item = Result<T, ProviderError>> + Send>,
    >,
) -> (Vec<T>, Option<ProviderError>) {
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(item) => items.push(item),
            Err(error) => {
                assert!(stream.next().await.is_none(), "nothing after an error");
                return (items, Some(error));
            }
        }
    }
    (items, None)
}

#[tokio::test]
async fn translated_chat_sends_a_messages_request_and_maps_the_answer() {
    let (server, seen) = setup().await;
    let response = at(&server, "ok").chat(request(), &ctx()).await.unwrap();

    let sent = seen.last_body();
    assert_eq!(
        sent,
        json!({
            "model": "claude-sonnet-4-20250514",
            "system": "You are terse.",
            "max_tokens": 64000,
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_location", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Paris"}]}
            ],
            "tools": [{"name": "get_weather", "description": "Get the weather",
                "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}],
            "tool_choice": {"type": "any"},
            "stop_sequences": ["END"],
            "temperature": 0.5
        })
    );
    let headers = seen.last_headers();
    assert_eq!(headers["x-api-key"], KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert!(headers.get("authorization").is_none());

    assert_eq!(response.id, "msg_01XFDUDYJgAACzvnptvVoYEL");
    let choice = &response.choices[0];
    assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        choice.message.text_content().as_deref(),
        Some("I'll check the weather.")
    );
    let call = &choice.message.tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.id, "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(
        serde_json::from_str::<Value>(&call.function.arguments).unwrap(),
        json!({"location": "San Francisco, CA"})
    );
    let usage = response.usage.unwrap();
    assert_eq!(usage.prompt_tokens, 115);
    assert_eq!(usage.completion_tokens, 6);
    assert_eq!(usage.cached_prompt_tokens(), 100);
}

#[tokio::test]
async fn max_tokens_comes_from_the_request_then_the_model_then_4096() {
    let (server, seen) = setup().await;
    let provider = at(&server, "ok");
    let mut req = request();
    req.max_tokens = Some(77);
    provider.chat(req, &ctx()).await.unwrap();
    assert_eq!(seen.last_body()["max_tokens"], 77);
    let mut req = request();
    req.model = "claude-unknown".into();
    provider.chat(req, &ctx()).await.unwrap();
    assert_eq!(seen.last_body()["max_tokens"], 4096);
}

#[tokio::test]
async fn translated_streams_become_openai_chunks() {
    let (server, seen) = setup().await;
    let (chunks, error) = collect(
        at(&server, "ok")
            .chat_stream(request(), &ctx())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error, None);
    assert_eq!(seen.last_body()["stream"], true);
    assert_eq!(
        chunks[0].choices[0].delta.role.as_deref(),
        Some("assistant")
    );
    assert_eq!(
        chunks.iter().map(|chunk| chunk.text()).collect::<String>(),
        "Hello!"
    );
    let finish = chunks.iter().find_map(|c| c.finish_reason()).unwrap();
    assert_eq!(finish, "stop");
    let usage = chunks.last().unwrap().usage.clone().unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (40, 15));
    assert_eq!(usage.cached_prompt_tokens(), 10);
    assert!(
        chunks
            .iter()
            .all(|c| c.id == "msg_01XFDUDYJgAACzvnptvVoYEL")
    );

    let (chunks, error) = collect(
        at(&server, "tools")
            .chat_stream(request(), &ctx())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error, None);
    let calls: Vec<_> = chunks
        .iter()
        .flat_map(|c| c.choices.iter())
        .flat_map(|c| c.delta.tool_calls.iter().flatten())
        .collect();
    assert_eq!(
        calls[0].id.as_deref(),
        Some("toolu_01T1x1fJ34qAmk2tNTrN7Up6")
    );
    assert_eq!(
        calls[0].function.as_ref().unwrap().name.as_deref(),
        Some("get_weather")
    );
    assert!(calls.iter().all(|c| c.index == 0));
    let arguments: String = calls
        .iter()
        .filter_map(|c| c.function.as_ref()?.arguments.clone())
        .collect();
    assert_eq!(arguments, r#"{"location": "San Francisco, CA"}"#);
    assert_eq!(
        chunks.iter().find_map(|c| c.finish_reason()),
        Some("tool_calls")
    );
}

#[tokio::test]
async fn translated_stream_outcomes() {
    let (server, _) = setup().await;
    let run = |case: &'static str| {
        let provider = at(&server, case);
        async move {
            collect(
                provider
                    .chat_stream(request(), &ctx())
                    .await
                    .unwrap_or_else(|e| panic!("{case}: {e:?}")),
            )
            .await
        }
    };
    let (chunks, error) = run("cut").await;
    assert_eq!(
        chunks.iter().map(|chunk| chunk.text()).collect::<String>(),
        "Hel"
    );
    assert!(matches!(error, Some(ProviderError::StreamCut { .. })));
    let (_, error) = run("cut-abort").await;
    assert!(matches!(error, Some(ProviderError::StreamCut { .. })));
    let (_, error) = run("stop-without-delta").await;
    assert!(matches!(error, Some(ProviderError::StreamCut { .. })));
    // The manager does not time these streams again (`times_streams`):
    // the adapter's own limits must hold.
    assert!(at(&server, "stall").times_streams());
    let stalled = collect(
        at(&server, "stall")
            .chat_stream(request(), &short_ctx())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        stalled.1,
        Some(ProviderError::Timeout {
            phase: TimeoutPhase::StreamIdle
        })
    );
    let (chunks, error) = run("no-stop").await;
    assert_eq!(error, None, "complete once stop_reason came");
    assert!(chunks.last().unwrap().usage.is_some());
    let (_, error) = run("overloaded-in-band").await;
    let error = error.unwrap();
    assert!(matches!(error, ProviderError::InBand(_)));
    assert_eq!(error.status(), Some(529));
    assert_eq!(error.category(), Some(UpstreamCategory::Overloaded));
    let (chunks, error) = run("malformed").await;
    assert_eq!(error, None);
    assert_eq!(
        chunks.iter().map(|chunk| chunk.text()).collect::<String>(),
        "ok"
    );
}

#[tokio::test]
async fn native_messages_pass_through_untouched() {
    let (server, seen) = setup().await;
    let provider = at(&server, "ok");
    assert!(provider.capabilities().anthropic_native);
    let body = json!({
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Big cached prompt", "cache_control": {"type": "ephemeral"}}],
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text",
            "media_type": "text/plain", "data": "x"}, "citations": {"enabled": true}}]}],
        "future_field": [1, 2, 3]
    });
    let answer = provider.messages(body.clone(), &ctx()).await.unwrap();
    assert_eq!(seen.last_body(), body);
    assert_eq!(answer, message_body());

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let (events, error) = collect(
        provider
            .messages_stream(stream_body.clone(), &ctx())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error, None);
    assert_eq!(seen.last_body(), stream_body);
    let names: Vec<_> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        events[1],
        RawEvent {
            event: Some("ping".into()),
            data: r#"{"type":"ping"}"#.into()
        }
    );
}

#[tokio::test]
async fn native_stream_outcomes() {
    let (server, _) = setup().await;
    let body = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 10, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let run = |case: &'static str, short: bool| {
        let provider = at(&server, case);
        let body = body.clone();
        async move {
            let ctx = if short { short_ctx() } else { ctx() };
            collect(provider.messages_stream(body, &ctx).await.unwrap()).await
        }
    };
    let (events, error) = run("cut", false).await;
    assert_eq!(events.len(), 4);
    assert!(matches!(
        error,
        Some(ProviderError::StreamCut { chunks: 4 })
    ));
    let (_, error) = run("stop-without-delta", false).await;
    assert!(matches!(error, Some(ProviderError::StreamCut { .. })));
    let (events, error) = run("no-stop", false).await;
    assert_eq!((events.len(), error), (5, None));
    let (_, error) = run("overloaded-in-band", false).await;
    assert_eq!(
        error.unwrap().category(),
        Some(UpstreamCategory::Overloaded)
    );
    let (events, error) = run("malformed", false).await;
    assert_eq!((events.len(), error), (6, None));
    let (_, error) = run("stall", true).await;
    assert_eq!(
        error,
        Some(ProviderError::Timeout {
            phase: TimeoutPhase::StreamIdle
        })
    );
    let (_, error) = run("slow", true).await;
    assert_eq!(
        error,
        Some(ProviderError::Timeout {
            phase: TimeoutPhase::FirstToken
        })
    );
}

#[tokio::test]
async fn anthropic_error_bodies_are_classified() {
    let (server, _) = setup().await;
    let cases: &[(&str, u16, UpstreamCategory, Option<Duration>)] = &[
        ("context", 400, UpstreamCategory::ContextLength, None),
        ("bad", 400, UpstreamCategory::BadRequest, None),
        ("auth", 401, UpstreamCategory::Auth, None),
        ("permission", 403, UpstreamCategory::Auth, None),
        ("model", 404, UpstreamCategory::NotFound, None),
        (
            "rate",
            429,
            UpstreamCategory::RateLimited,
            Some(Duration::from_secs(12)),
        ),
        ("rate-no-header", 429, UpstreamCategory::RateLimited, None),
        ("server", 500, UpstreamCategory::ServerError, None),
        ("unavailable", 503, UpstreamCategory::Unavailable, None),
        ("overloaded", 529, UpstreamCategory::Overloaded, None),
    ];
    let body = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]});
    for (case, status, category, retry_after) in cases {
        let provider = at(&server, case);
        let errors = [
            provider.chat(request(), &ctx()).await.unwrap_err(),
            provider.chat_stream(request(), &ctx()).await.err().unwrap(),
            provider.messages(body.clone(), &ctx()).await.unwrap_err(),
            provider
                .messages_stream(body.clone(), &ctx())
                .await
                .err()
                .unwrap(),
        ];
        for error in errors {
            assert_eq!(error.status(), Some(*status), "{case}: {error:?}");
            assert_eq!(error.category(), Some(*category), "{case}: {error:?}");
            assert_eq!(error.retry_after(), *retry_after, "{case}");
        }
    }
    let overloaded = at(&server, "overloaded")
        .chat(request(), &ctx())
        .await
        .unwrap_err();
    assert!(overloaded.should_switch() && overloaded.counts_for_breaker());
    assert!(!overloaded.is_retryable());
}

#[tokio::test]
async fn models_and_health_use_the_models_endpoint() {
    let (server, seen) = setup().await;
    let provider = at(&server, "ok");
    let models = provider.list_models(&ctx()).await.unwrap();
    assert_eq!(models[0].id, "claude-sonnet-4-20250514");
    assert_eq!(models[0].owned_by, "anthropic");
    assert!(models[0].created > 1_700_000_000);
    provider.health_check(&ctx()).await.unwrap();
    assert!(seen.paths.lock().is_empty(), "never a Messages call");
}

#[tokio::test]
async fn translation_rejects_what_anthropic_cannot_take() {
    let (server, seen) = setup().await;
    let request = ChatRequest {
        model: "claude-sonnet-4-20250514".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: Some(
                serde_json::from_value(
                    json!([{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]),
                )
                .unwrap(),
            ),
            ..ChatMessage::default()
        }],
        ..ChatRequest::default()
    };
    let error = at(&server, "ok").chat(request, &ctx()).await.unwrap_err();
    assert_eq!(error.status(), Some(400));
    assert!(error.to_string().contains("input_audio"));
    assert!(seen.paths.lock().is_empty());
}
