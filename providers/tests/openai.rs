//! The `openai` / `openai_compatible` adapters against local servers speaking OpenAI's wire format.
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
use switchyard_core::config::{HealthCheckMode, NamedHealthCheck};
use switchyard_core::{
    CallContext, ChatChunk, ChatMessage, ChatRequest, CompletionRequest, EmbeddingsRequest,
    ProviderConfig, ProviderError, Secret, TimeoutPhase, UpstreamCategory,
};

const KEY: &str = "sk-test-openai-0123456789";

fn chat_request(stream: bool) -> ChatRequest {
    ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![ChatMessage::text("user", "Say hello")],
        stream,
        ..ChatRequest::default()
    }
}

fn completion_body() -> Value {
    json!({
        "id": "chatcmpl-abc123", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!",
            "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
            "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}},
        "service_tier": "default", "system_fingerprint": "fp_44709d6fcb"
    })
}

fn chunk(delta: Value, finish: Option<&str>) -> Part {
    data(json!({
        "id": "chatcmpl-abc123", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        "usage": null
    }))
}

fn usage_chunk() -> Part {
    data(json!({
        "id": "chatcmpl-abc123", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18", "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    }))
}

fn text_stream() -> Vec<Part> {
    vec![
        chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ),
        chunk(json!({"content": "Hel"}), None),
        chunk(json!({"content": "lo!"}), None),
        chunk(json!({}), Some("stop")),
        usage_chunk(),
        done(),
    ]
}

async fn collect(stream: switchyard_core::ChatStream) -> (Vec<ChatChunk>, Option<ProviderError>) {
    let mut chunks = Vec::new();
    let mut stream = stream;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => chunks.push(*chunk.into_chat_chunk()),
            Err(error) => {
                assert!(stream.next().await.is_none(), "nothing after an error");
                return (chunks, Some(error));
            }
        }
    }
    (chunks, None)
}

fn text_of(chunks: &[ChatChunk]) -> String {
    chunks.iter().map(|chunk| chunk.text()).collect()
}

/// An upstream whose `/{case}/v1/chat/completions` answers per case.
async fn scripted_upstream(seen: Arc<Seen>) -> TestServer {
    let record = seen.clone();
    let router = Router::new()
        .route(
            "/{case}/v1/chat/completions",
            post(move |Path(case): Path<String>, uri: Uri, headers: HeaderMap, body: Bytes| {
                let seen = record.clone();
                async move {
                    seen.record(uri.path(), &headers, &body);
                    respond(&case)
                }
            }),
        )
        .route(
            "/{case}/v1/models",
            get(|Path(case): Path<String>| async move {
                match case.as_str() {
                    "down" => json_response(503, &json!({"error": {"message": "down", "type": "server_error"}}), &[]),
                    _ => json_response(200, &json!({"object": "list", "data": [
                        {"id": "gpt-4o-mini", "object": "model", "created": 1_721_172_741, "owned_by": "system"},
                        {"id": "text-embedding-3-small", "object": "model", "created": 1_705_948_997, "owned_by": "system"}
                    ]}), &[]),
                }
            }),
        )
        .route(
            "/{case}/v1/embeddings",
            post(move |body: Bytes| async move {
                let request: Value = serde_json::from_slice(&body).unwrap();
                json_response(200, &json!({
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0093]}],
                    "model": request["model"], "usage": {"prompt_tokens": 8, "total_tokens": 8}
                }), &[])
            }),
        )
        .route(
            "/{case}/v1/completions",
            post(move |body: Bytes| async move {
                let request: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(request.get("stream"), None);
                json_response(200, &json!({
                    "id": "cmpl-1", "object": "text_completion", "created": 1, "model": request["model"],
                    "choices": [{"text": " there", "index": 0, "logprobs": null, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                }), &[])
            }),
        )
        .route("/{case}/v1/health", get(|| async { "ok" }))
        .route("/target/v1/chat/completions", post(move || {
            let seen = seen.clone();
            async move {
                seen.paths.lock().push("redirect target".into());
                json_response(200, &completion_body(), &[])
            }
        }));
    serve(router).await
}

fn error_body(message: &str, kind: Value, code: Value, param: Value) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

fn respond(case: &str) -> Response {
    match case {
        "ok" => json_response(200, &completion_body(), &[("x-request-id", "req_1")]),
        "ok-in-parts" => {
            // The same answer, its body written in three separate frames.
            let body = completion_body().to_string();
            let (head, tail) = body.split_at(body.len() / 2);
            let (middle, tail) = tail.split_at(tail.len() / 2);
            sse(vec![
                raw(head),
                Part::Wait(Duration::from_millis(10)),
                raw(middle),
                Part::Wait(Duration::from_millis(10)),
                raw(tail),
            ])
        }
        "stream" => sse(text_stream()),
        "tools" => sse(vec![
            chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_abc",
                "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"loc"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "ation\":\"Paris\"}"}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
            usage_chunk(),
            done(),
        ]),
        "framing" => sse(vec![
            raw(": keep-alive comment\r\n\r\n"),
            raw(
                "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\r\n",
            ),
            raw("data: \"finish_reason\":null}]}\r\n\r\n"),
            raw(
                "event: message\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"spl",
            ),
            Part::Wait(Duration::from_millis(20)),
            raw("it\"},\"finish_reason\":null}]}\n\n"),
            raw(
                "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\r\rdata: [DONE]\r\r",
            ),
        ]),
        "malformed" => sse(vec![
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"content": "a"}), None),
            raw("data: {not json at all\n\n"),
            chunk(json!({"content": "b"}), None),
            chunk(json!({}), Some("stop")),
            done(),
        ]),
        "missing-done" => sse(vec![
            chunk(json!({"content": "a"}), None),
            chunk(json!({}), Some("stop")),
            usage_chunk(),
        ]),
        "cut-clean" => sse(vec![
            chunk(json!({"content": "a"}), None),
            chunk(json!({"content": "b"}), None),
        ]),
        "cut-abort" => sse(vec![
            chunk(json!({"content": "a"}), None),
            Part::Wait(Duration::from_millis(50)),
            Part::Abort,
        ]),
        "cut-after-finish" => sse(vec![
            chunk(json!({"content": "a"}), None),
            chunk(json!({}), Some("stop")),
            Part::Wait(Duration::from_millis(50)),
            Part::Abort,
        ]),
        "done-without-finish" => sse(vec![chunk(json!({"content": "a"}), None), done()]),
        "done-then-silence" => sse(vec![
            chunk(json!({"content": "a"}), None),
            chunk(json!({}), Some("stop")),
            done(),
            Part::Wait(Duration::from_secs(600)),
        ]),
        "done-without-finish-then-silence" => sse(vec![
            chunk(json!({"content": "a"}), None),
            done(),
            Part::Wait(Duration::from_secs(600)),
        ]),
        "in-band" => sse(vec![
            chunk(json!({"content": "a"}), None),
            data(
                json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}),
            ),
        ]),
        "slow-first-token" => sse(vec![
            chunk(json!({"role": "assistant", "content": ""}), None),
            Part::Wait(Duration::from_millis(1500)),
            chunk(json!({"content": "late"}), None),
            chunk(json!({}), Some("stop")),
            done(),
        ]),
        "stall" => sse(vec![chunk(json!({"content": "a"}), None), Part::Hang]),
        "redirect" => Response::builder()
            .status(302)
            .header("location", "/target/v1/chat/completions")
            .body(axum::body::Body::empty())
            .unwrap(),
        "context" => json_response(
            400,
            &error_body(
                "This model's maximum context length is 128000 tokens. However, your messages resulted in 130021 tokens. Please reduce the length of the messages.",
                json!("invalid_request_error"),
                json!("context_length_exceeded"),
                json!("messages"),
            ),
            &[],
        ),
        "policy" => json_response(
            400,
            &error_body(
                "Your request was rejected as a result of our safety system. Your prompt may contain text that is not allowed by our safety system.",
                json!("invalid_request_error"),
                json!("content_policy_violation"),
                Value::Null,
            ),
            &[],
        ),
        "azure-filter" => json_response(
            400,
            &json!({"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "type": null, "param": "prompt", "code": "content_filter", "status": 400}}),
            &[],
        ),
        "bad-request" => json_response(
            400,
            &error_body(
                "Invalid value for 'temperature': expected a number.",
                json!("invalid_request_error"),
                json!("invalid_value"),
                json!("temperature"),
            ),
            &[],
        ),
        "auth" => json_response(
            401,
            &error_body(
                "Incorrect API key provided: sk-test-***********6789. You can find your API key at https://platform.openai.com/account/api-keys.",
                json!("invalid_request_error"),
                json!("invalid_api_key"),
                Value::Null,
            ),
            &[],
        ),
        "model" => json_response(
            404,
            &error_body(
                "The model `gpt-9` does not exist or you do not have access to it.",
                json!("invalid_request_error"),
                json!("model_not_found"),
                Value::Null,
            ),
            &[],
        ),
        "rate" => json_response(
            429,
            &error_body(
                "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
                json!("requests"),
                json!("rate_limit_exceeded"),
                Value::Null,
            ),
            &[
                ("retry-after", "20"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "20s"),
            ],
        ),
        "rate-no-header" => json_response(
            429,
            &error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                json!("insufficient_quota"),
                json!("insufficient_quota"),
                Value::Null,
            ),
            &[],
        ),
        "rate-reset-only" => json_response(
            429,
            &error_body(
                "Rate limit reached",
                json!("tokens"),
                json!("rate_limit_exceeded"),
                Value::Null,
            ),
            &[
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "1m30s"),
                ("x-ratelimit-remaining-requests", "10"),
                ("x-ratelimit-reset-requests", "2s"),
            ],
        ),
        "server" => json_response(
            500,
            &error_body(
                "The server had an error while processing your request. Sorry about that!",
                json!("server_error"),
                Value::Null,
                Value::Null,
            ),
            &[],
        ),
        "unavailable" => json_response(
            503,
            &error_body(
                "The engine is currently overloaded, please try again later",
                json!("server_error"),
                Value::Null,
                Value::Null,
            ),
            &[("retry-after", "Wed, 21 Oct 2099 07:28:00 GMT")],
        ),
        "html-502" => Response::builder()
            .status(502)
            .header("content-type", "text/html")
            .body(axum::body::Body::from(
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
            ))
            .unwrap(),
        "ollama-404" => json_response(
            404,
            &json!({"error": "model \"llama9\" not found, try pulling it first"}),
            &[],
        ),
        "error-with-200" => json_response(
            200,
            &json!({"error": {"message": "upstream busy", "type": "server_error"}}),
            &[],
        ),
        "json-to-stream" => json_response(
            200,
            &json!({"error": {"message": "Rate limited", "type": "rate_limit_error"}}),
            &[],
        ),
        other => json_response(
            500,
            &json!({"error": {"message": format!("unknown case {other}")}}),
            &[],
        ),
    }
}

async fn setup() -> (TestServer, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    (scripted_upstream(seen.clone()).await, seen)
}

fn at(server: &TestServer, case: &str) -> Arc<dyn switchyard_core::Provider> {
    provider("openai", &server.url(&format!("/{case}/v1")), KEY)
}

#[tokio::test]
async fn an_answer_whose_body_arrives_in_several_frames_is_read_whole() {
    let (server, _seen) = setup().await;
    let request: ChatRequest = serde_json::from_value(
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    let whole = at(&server, "ok")
        .chat(request.clone(), &ctx())
        .await
        .unwrap();
    let in_parts = at(&server, "ok-in-parts")
        .chat(request, &ctx())
        .await
        .unwrap();
    assert_eq!(in_parts, whole);
    assert_eq!(in_parts.id, "chatcmpl-abc123");
}

#[tokio::test]
async fn non_stream_chat_forwards_every_field_and_the_right_headers() {
    let (server, seen) = setup().await;
    let mut config = ProviderConfig::new("oa", "openai", ["gpt-4o-mini"]);
    config.base_url = Some(server.url("/ok/v1"));
    config.api_key = Some(Secret::new(KEY));
    config
        .headers
        .insert("OpenAI-Organization".into(), "org-test".into());
    let provider = provider_from(&config);

    let request: ChatRequest = serde_json::from_value(json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png", "detail": "low"}}]}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}, "strict": true}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "logprobs": true, "top_logprobs": 2, "n": 2, "seed": 42, "stop": ["\n\n"],
        "temperature": 0.2, "max_completion_tokens": 100, "vendor_extension": {"keep": [1, 2]},
        "stream": true, "stream_options": {"include_usage": true}
    }))
    .unwrap();
    let ctx = CallContext {
        request_id: Some("req-123".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..ctx()
    };
    let response = provider.chat(request.clone(), &ctx).await.unwrap();
    assert_eq!(response.id, "chatcmpl-abc123");
    assert_eq!(
        response.choices[0].message.text_content().as_deref(),
        Some("Hello!")
    );
    let usage = response.usage.clone().unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 2));
    assert_eq!(usage.cached_prompt_tokens(), 4);
    assert_eq!(response.extra["system_fingerprint"], "fp_44709d6fcb");

    let sent = seen.last_body();
    let mut expected = serde_json::to_value(&request).unwrap();
    let object = expected.as_object_mut().unwrap();
    object.remove("stream");
    object.remove("stream_options");
    assert_eq!(sent, expected, "every field forwarded untouched");
    assert_eq!(sent["vendor_extension"], json!({"keep": [1, 2]}));

    let headers = seen.last_headers();
    assert_eq!(headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(headers["openai-organization"], "org-test");
    // One Host, naming the upstream's own authority.
    let authority = server.url("").trim_start_matches("http://").to_owned();
    let hosts: Vec<_> = headers.get_all("host").iter().collect();
    assert_eq!(hosts, [authority.as_str()]);
    assert_eq!(headers["x-request-id"], "req-123");
    assert!(
        headers["traceparent"]
            .to_str()
            .unwrap()
            .starts_with("00-0af7")
    );
    assert!(headers.get("x-api-key").is_none());
}

#[tokio::test]
async fn streams_parse_ask_for_usage_and_keep_the_usage_chunk() {
    let (server, seen) = setup().await;
    let (chunks, error) = collect(
        at(&server, "stream")
            .chat_stream(chat_request(true), &ctx())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "Hello!");
    assert_eq!(chunks[3].finish_reason(), Some("stop"));
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    assert_eq!(last.usage.as_ref().unwrap().total_tokens, 11);
    let sent = seen.last_body();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(seen.last_headers()["accept"], "text/event-stream");
}

/// Whether each item of `stream` came out unparsed, and the text it reads.
async fn unparsed_flags(mut stream: switchyard_core::ChatStream) -> (Vec<bool>, String) {
    let mut flags = Vec::new();
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        let chunk = item.unwrap();
        flags.push(chunk.is_unparsed());
        text.push_str(&chunk.text_ref());
        assert!(chunk.source().is_some(), "the upstream's data goes along");
    }
    (flags, text)
}

#[tokio::test]
async fn usual_chunks_and_tool_call_fragments_leave_the_adapter_as_their_data() {
    let (server, _) = setup().await;
    let stream = at(&server, "stream")
        .chat_stream(chat_request(true), &ctx())
        .await
        .unwrap();
    assert_eq!(
        unparsed_flags(stream).await,
        (vec![true; 5], "Hello!".to_owned())
    );
    let stream = at(&server, "tools")
        .chat_stream(chat_request(true), &ctx())
        .await
        .unwrap();
    let mut flags = Vec::new();
    let mut stream = stream;
    while let Some(item) = stream.next().await {
        let chunk = item.unwrap();
        // Asked first: the answers come from the data, unparsed.
        flags.push((chunk.has_tool_calls(), chunk.is_unparsed()));
    }
    assert_eq!(
        flags,
        [
            (true, true),
            (true, true),
            (true, true),
            (false, true),
            (false, true)
        ],
        "(tool call, unparsed) of each chunk"
    );
}

#[tokio::test]
async fn tool_call_streams_and_sse_framing_survive() {
    let (server, _) = setup().await;
    let (chunks, error) = collect(
        at(&server, "tools")
            .chat_stream(chat_request(true), &ctx())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error, None);
    assert!(chunks[0].has_tool_calls());
    let call = &chunks[0].choices[0].delta.tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.id.as_deref(), Some("call_abc"));
    let arguments: String = chunks
        .iter()
        .flat_map(|c| c.choices.iter())
        .flat_map(|c| c.delta.tool_calls.iter().flatten())
        .filter_map(|t| t.function.as_ref()?.arguments.clone())
        .collect();
    assert_eq!(arguments, r#"{"location":"Paris"}"#);
    assert!(
        chunks
            .iter()
            .any(|c| c.finish_reason() == Some("tool_calls"))
    );

    // Comments, multi-line data, event: lines, CRLF and CR endings, a JSON
    // object split across reads.
    let (chunks, error) = collect(
        at(&server, "framing")
            .chat_stream(chat_request(true), &ctx())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "split");
    assert_eq!(chunks.len(), 3);
}

#[tokio::test]
async fn stream_outcomes_are_distinct() {
    let (server, _) = setup().await;
    let run = |case: &'static str| {
        let provider = at(&server, case);
        async move {
            collect(
                provider
                    .chat_stream(chat_request(true), &ctx())
                    .await
                    .unwrap_or_else(|e| panic!("{case}: {e:?}")),
            )
            .await
        }
    };
    // Complete without [DONE]: the end of the body finalises it.
    let (chunks, error) = run("missing-done").await;
    assert_eq!(error, None);
    assert_eq!(chunks.len(), 3);
    // A clean close without finish_reason is a cut.
    let (chunks, error) = run("cut-clean").await;
    assert_eq!(text_of(&chunks), "ab");
    assert_eq!(error, Some(ProviderError::StreamCut { chunks: 2 }));
    // An aborted connection without finish_reason is a cut.
    let (chunks, error) = run("cut-abort").await;
    assert_eq!(text_of(&chunks), "a");
    assert_eq!(error, Some(ProviderError::StreamCut { chunks: 1 }));
    // An abort after finish_reason: the stream was complete.
    let (chunks, error) = run("cut-after-finish").await;
    assert_eq!((chunks.len(), error), (2, None));
    // [DONE] without finish_reason is a cut, never a complete stream.
    let (_, error) = run("done-without-finish").await;
    assert_eq!(error, Some(ProviderError::StreamCut { chunks: 1 }));
    // A body still open after [DONE] is read only briefly: the stream
    // ends (complete, or cut without finish_reason) instead of waiting.
    let bounded = |case| async move {
        tokio::time::timeout(Duration::from_secs(60), run(case))
            .await
            .expect("the stream ends after [DONE] though the body stays open")
    };
    let (chunks, error) = bounded("done-then-silence").await;
    assert_eq!((text_of(&chunks).as_str(), error), ("a", None));
    let (_, error) = bounded("done-without-finish-then-silence").await;
    assert_eq!(error, Some(ProviderError::StreamCut { chunks: 1 }));
    // An in-band error is classified.
    let (chunks, error) = run("in-band").await;
    assert_eq!(text_of(&chunks), "a");
    let error = error.unwrap();
    assert!(matches!(error, ProviderError::InBand(_)), "{error:?}");
    assert_eq!(error.status(), Some(500));
    assert!(error.counts_for_breaker());
}

#[tokio::test(flavor = "current_thread")]
async fn a_malformed_event_is_skipped_and_counted() {
    let recorder = MalformedCounter::default();
    let count = recorder.count.clone();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (server, _) = setup().await;
    let (chunks, error) = collect(
        at(&server, "malformed")
            .chat_stream(chat_request(true), &ctx())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "ab");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn timeouts_have_their_own_phases() {
    let (server, _) = setup().await;
    // The manager does not time these streams again (`times_streams`):
    // the limits below are the adapter's own.
    assert!(at(&server, "stall").times_streams());
    let started = tokio::time::Instant::now();
    let (chunks, error) = collect(
        at(&server, "slow-first-token")
            .chat_stream(chat_request(true), &short_ctx())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(chunks.len(), 1, "only the role chunk");
    assert_eq!(
        error,
        Some(ProviderError::Timeout {
            phase: TimeoutPhase::FirstToken
        })
    );
    assert!(started.elapsed() < Duration::from_millis(1400));

    let (chunks, error) = collect(
        at(&server, "stall")
            .chat_stream(chat_request(true), &short_ctx())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text_of(&chunks), "a");
    assert_eq!(
        error,
        Some(ProviderError::Timeout {
            phase: TimeoutPhase::StreamIdle
        })
    );

    // Accepts and never answers.
    let silent = silent_server().await;
    let provider = provider("openai", &format!("http://{silent}/v1"), KEY);
    let error = provider
        .chat(chat_request(false), &short_ctx())
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ProviderError::Timeout {
            phase: TimeoutPhase::Response
        }
    );
    let error = provider
        .chat_stream(chat_request(true), &short_ctx())
        .await
        .err()
        .unwrap();
    assert_eq!(
        error,
        ProviderError::Timeout {
            phase: TimeoutPhase::FirstByte
        }
    );
    // The request deadline is not the deployment's fault.
    let ctx = CallContext {
        deadline: Some(tokio::time::Instant::now() + Duration::from_millis(100)),
        ..short_ctx()
    };
    let error = provider.chat(chat_request(false), &ctx).await.unwrap_err();
    assert_eq!(
        error,
        ProviderError::Timeout {
            phase: TimeoutPhase::Deadline
        }
    );
}

#[tokio::test]
async fn connection_failures_are_classified() {
    for rst in [false, true] {
        let addr = reset_server(rst).await;
        let error = provider("openai", &format!("http://{addr}/v1"), KEY)
            .chat(chat_request(false), &ctx())
            .await
            .unwrap_err();
        assert!(
            matches!(error, ProviderError::Reset { .. }),
            "rst={rst}: {error:?}"
        );
        assert!(error.is_retryable());
    }
    let addr = closed_port().await;
    let error = provider("openai", &format!("http://{addr}/v1"), KEY)
        .chat(chat_request(false), &ctx())
        .await
        .unwrap_err();
    assert!(matches!(error, ProviderError::Connect { .. }), "{error:?}");
    assert!(!error.to_string().contains("127.0.0.1"), "no URL: {error}");
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let (server, seen) = setup().await;
    let error = at(&server, "redirect")
        .chat(chat_request(false), &ctx())
        .await
        .unwrap_err();
    assert!(matches!(error, ProviderError::Protocol { .. }), "{error:?}");
    assert!(error.should_switch());
    let error = at(&server, "redirect")
        .chat_stream(chat_request(true), &ctx())
        .await
        .err()
        .unwrap();
    assert!(matches!(error, ProviderError::Protocol { .. }), "{error:?}");
    assert!(!seen.paths.lock().iter().any(|p| p == "redirect target"));
}

#[tokio::test]
async fn error_bodies_are_classified() {
    let (server, _) = setup().await;
    let cases: &[(&str, u16, UpstreamCategory, Option<Duration>)] = &[
        ("context", 400, UpstreamCategory::ContextLength, None),
        ("policy", 400, UpstreamCategory::ContentFilter, None),
        ("azure-filter", 400, UpstreamCategory::ContentFilter, None),
        ("bad-request", 400, UpstreamCategory::BadRequest, None),
        ("auth", 401, UpstreamCategory::Auth, None),
        ("model", 404, UpstreamCategory::NotFound, None),
        ("ollama-404", 404, UpstreamCategory::NotFound, None),
        (
            "rate",
            429,
            UpstreamCategory::RateLimited,
            Some(Duration::from_secs(20)),
        ),
        ("rate-no-header", 429, UpstreamCategory::RateLimited, None),
        (
            "rate-reset-only",
            429,
            UpstreamCategory::RateLimited,
            Some(Duration::from_secs(90)),
        ),
        ("server", 500, UpstreamCategory::ServerError, None),
        ("html-502", 502, UpstreamCategory::ServerError, None),
        ("error-with-200", 500, UpstreamCategory::ServerError, None),
    ];
    for (case, status, category, retry_after) in cases {
        for stream in [false, true] {
            let provider = at(&server, case);
            let error = if stream {
                provider
                    .chat_stream(chat_request(true), &ctx())
                    .await
                    .err()
                    .unwrap()
            } else {
                provider
                    .chat(chat_request(false), &ctx())
                    .await
                    .unwrap_err()
            };
            assert_eq!(error.status(), Some(*status), "{case}: {error:?}");
            assert_eq!(error.category(), Some(*category), "{case}: {error:?}");
            assert_eq!(error.retry_after(), *retry_after, "{case}");
            assert!(matches!(error, ProviderError::Upstream(_)), "{case}");
        }
    }
    // The upstream's own fields survive for final 4xx errors.
    let error = at(&server, "context")
        .chat(chat_request(false), &ctx())
        .await
        .unwrap_err();
    let upstream = error.upstream_error().unwrap();
    assert_eq!(upstream.code.as_deref(), Some("context_length_exceeded"));
    assert_eq!(upstream.param.as_deref(), Some("messages"));
    assert_eq!(
        upstream.error_type.as_deref(),
        Some("invalid_request_error")
    );
    // 503 with Retry-After as an HTTP date: a cooldown.
    let error = at(&server, "unavailable")
        .chat(chat_request(false), &ctx())
        .await
        .unwrap_err();
    assert_eq!(error.category(), Some(UpstreamCategory::Unavailable));
    assert!(error.retry_after().unwrap() > Duration::from_secs(3600));
    assert!(error.starts_cooldown());
    let html = at(&server, "html-502")
        .chat(chat_request(false), &ctx())
        .await
        .unwrap_err();
    assert!(html.to_string().contains("502 Bad Gateway"));
    // A JSON error body where a stream was expected.
    let error = at(&server, "json-to-stream")
        .chat_stream(chat_request(true), &ctx())
        .await
        .err()
        .unwrap();
    assert_eq!(error.category(), Some(UpstreamCategory::RateLimited));
}

#[tokio::test]
async fn embeddings_completions_models_and_health() {
    let (server, seen) = setup().await;
    let provider = at(&server, "ok");
    let embeddings = provider
        .embeddings(
            EmbeddingsRequest {
                model: "text-embedding-3-small".into(),
                input: json!(["hello"]),
                extra: serde_json::from_value(json!({"dimensions": 2})).unwrap(),
            },
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(embeddings.data.len(), 1);
    assert_eq!(embeddings.usage.unwrap().prompt_tokens, 8);

    let completion = provider
        .completions(
            CompletionRequest {
                model: "gpt-3.5-turbo-instruct".into(),
                prompt: json!("Say"),
                max_tokens: Some(1),
                stream: true,
                ..CompletionRequest::default()
            },
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(completion.choices[0]["text"], " there");

    let models = provider.list_models(&ctx()).await.unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0].id, "gpt-4o-mini");
    assert_eq!(models[0].owned_by, "system");

    provider.health_check(&ctx()).await.unwrap();
    let down = at(&server, "down");
    assert_eq!(
        down.health_check(&ctx()).await.unwrap_err().status(),
        Some(503)
    );
    let paths_before = seen.paths.lock().len();
    let mut config = ProviderConfig::new("x", "openai_compatible", ["*"]);
    config.base_url = Some(server.url("/down/v1"));
    config.health_check = HealthCheckMode::Named(NamedHealthCheck::None);
    provider_from(&config).health_check(&ctx()).await.unwrap();
    config.health_check = HealthCheckMode::Http {
        path: "/health".into(),
        expect_status: 200,
    };
    provider_from(&config).health_check(&ctx()).await.unwrap();
    config.health_check = HealthCheckMode::Http {
        path: "/health".into(),
        expect_status: 204,
    };
    assert!(provider_from(&config).health_check(&ctx()).await.is_err());
    assert_eq!(seen.paths.lock().len(), paths_before, "never a chat call");
}

#[tokio::test]
async fn compatible_servers_take_custom_auth_headers_or_none() {
    let (server, seen) = setup().await;
    let mut config = ProviderConfig::new("azure-like", "openai_compatible", ["*"]);
    config.base_url = Some(server.url("/ok/v1"));
    config.api_key = Some(Secret::new(KEY));
    config.headers.insert("api-key".into(), "{api_key}".into());
    provider_from(&config)
        .chat(chat_request(false), &ctx())
        .await
        .unwrap();
    let headers = seen.last_headers();
    assert_eq!(headers["api-key"], KEY);
    assert!(headers.get("authorization").is_none());

    let mut config = ProviderConfig::new("ollama", "openai_compatible", ["*"]);
    config.base_url = Some(server.url("/ok/v1"));
    provider_from(&config)
        .chat(chat_request(false), &ctx())
        .await
        .unwrap();
    assert!(seen.last_headers().get("authorization").is_none());
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (server, _) = setup().await;
    let provider = at(&server, "ok");
    for _ in 0..10 {
        provider.chat(chat_request(false), &ctx()).await.unwrap();
        // Let the pool take the connection back, as any caller's next
        // await would.
        tokio::task::yield_now().await;
    }
    assert_eq!(server.connections(), 1, "ten requests, one connection");
    let streaming = at(&server, "stream");
    for _ in 0..5 {
        let (_, error) = collect(
            streaming
                .chat_stream(chat_request(true), &ctx())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(error, None);
        tokio::task::yield_now().await;
    }
    // Five complete streams reuse the second provider's one connection
    // (each provider has its own pool).
    assert_eq!(server.connections(), 2);
}
