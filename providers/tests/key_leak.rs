//! A known API key, echoed back by every kind of upstream error, appears in no log line, error, Debug output or event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use common::*;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::json;
use switchyard_core::config::HealthCheckMode;
use switchyard_core::{
    ChatMessage, ChatRequest, Provider, ProviderConfig, ProviderError, ProviderFactory, Secret,
};
use switchyard_providers::anthropic::AnthropicProvider;
use switchyard_providers::http::{Auth, HttpOptions, Upstream, build_client};
use switchyard_providers::{DefaultProviderFactory, OpenAiProvider};

const KEY: &str = "sk-live-LEAKCHECK-7f3a9c2e1b4d8f6a";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn echo(case: &str, key: &str) -> axum::response::Response {
    let message = format!("Incorrect API key provided: {key}. Check your key.");
    match case {
        "openai-401" => json_response(
            401,
            &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            &[],
        ),
        "openai-400" => json_response(
            400,
            &json!({"error": {"message": message, "type": "invalid_request_error", "param": key, "code": null}}),
            &[],
        ),
        "openai-in-band" => sse(vec![
            data(
                json!({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}),
            ),
            data(json!({"error": {"message": message, "type": "server_error"}})),
        ]),
        "html-500" => axum::response::Response::builder()
            .status(500)
            .body(axum::body::Body::from(format!(
                "<html>bad key {key}</html>"
            )))
            .unwrap(),
        "anthropic-401" => json_response(
            401,
            &json!({"type": "error", "error": {"type": "authentication_error", "message": message}}),
            &[],
        ),
        "anthropic-in-band" => sse(vec![
            Part::Event(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 1, "output_tokens": 0}}}),
            ),
            Part::Event(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": message}}),
            ),
        ]),
        _ => json_response(500, &json!({"error": {"message": message}}), &[]),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_api_key_never_leaks() {
    let logs = Buffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let received_keys = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = received_keys.clone();
    let router = Router::new()
        .route(
            "/{case}/v1/chat/completions",
            post(
                move |Path(case): Path<String>, headers: HeaderMap, _body: Bytes| {
                    let seen = seen.clone();
                    async move {
                        let key = headers["authorization"]
                            .to_str()
                            .unwrap()
                            .trim_start_matches("Bearer ")
                            .to_owned();
                        seen.lock().push(key.clone());
                        echo(&case, &key)
                    }
                },
            ),
        )
        .route(
            "/{case}/v1/messages",
            post(|Path(case): Path<String>, headers: HeaderMap| async move {
                echo(&case, headers["x-api-key"].to_str().unwrap())
            }),
        )
        .route(
            "/{case}/v1/models",
            get(|Path(case): Path<String>, headers: HeaderMap| async move {
                let key = headers
                    .get("authorization")
                    .or_else(|| headers.get("x-api-key"))
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .trim_start_matches("Bearer ")
                    .to_owned();
                echo(&case, &key)
            }),
        );
    let server = serve(router).await;

    let openai = |case: &str| {
        let upstream = Upstream::new(
            "leaky",
            &server.url(&format!("/{case}/v1")),
            build_client(&HttpOptions::default()).unwrap(),
            Auth::Bearer,
            Some(Secret::new(KEY)),
            &BTreeMap::from([("X-Custom".to_owned(), "visible".to_owned())]),
        )
        .unwrap();
        OpenAiProvider::new("openai", upstream, HealthCheckMode::default())
    };
    let anthropic = |case: &str| {
        let upstream = Upstream::new(
            "leaky-claude",
            &server.url(&format!("/{case}/v1")),
            build_client(&HttpOptions::default()).unwrap(),
            Auth::XApiKey,
            Some(Secret::new(KEY)),
            &BTreeMap::new(),
        )
        .unwrap();
        AnthropicProvider::new(upstream, HealthCheckMode::default(), BTreeMap::new())
    };
    let request = ChatRequest {
        model: "m".into(),
        messages: vec![ChatMessage::text("user", "hi")],
        ..ChatRequest::default()
    };

    let mut errors: Vec<ProviderError> = Vec::new();
    let mut debug_outputs: Vec<String> = Vec::new();
    for case in ["openai-401", "openai-400", "html-500"] {
        let provider = openai(case);
        debug_outputs.push(format!("{provider:?}"));
        errors.push(provider.chat(request.clone(), &ctx()).await.unwrap_err());
        errors.push(
            provider
                .chat_stream(request.clone(), &ctx())
                .await
                .err()
                .unwrap(),
        );
        errors.push(provider.list_models(&ctx()).await.unwrap_err());
        errors.push(provider.health_check(&ctx()).await.unwrap_err());
    }
    let mut stream = openai("openai-in-band")
        .chat_stream(request.clone(), &ctx())
        .await
        .unwrap();
    while let Some(item) = stream.next().await {
        if let Err(error) = item {
            errors.push(error);
        }
    }
    for case in ["anthropic-401"] {
        let provider = anthropic(case);
        debug_outputs.push(format!("{provider:?}"));
        errors.push(provider.chat(request.clone(), &ctx()).await.unwrap_err());
        errors.push(
            provider
                .messages(
                    json!({"model": "m", "max_tokens": 5, "messages": []}),
                    &ctx(),
                )
                .await
                .unwrap_err(),
        );
        errors.push(provider.list_models(&ctx()).await.unwrap_err());
    }
    let provider = anthropic("anthropic-in-band");
    let mut events = provider
        .messages_stream(
            json!({"model": "m", "max_tokens": 5, "messages": []}),
            &ctx(),
        )
        .await
        .unwrap();
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => debug_outputs.push(format!("{event:?}")),
            Err(error) => errors.push(error),
        }
    }
    let mut chunks = provider.chat_stream(request.clone(), &ctx()).await.unwrap();
    while let Some(item) = chunks.next().await {
        match item {
            Ok(chunk) => debug_outputs.push(serde_json::to_string(&chunk).unwrap()),
            Err(error) => errors.push(error),
        }
    }

    // Config, factory and built providers.
    let mut config = ProviderConfig::new("cfg", "openai", ["*"]);
    config.api_key = Some(Secret::new(KEY));
    debug_outputs.push(format!("{config:?}"));
    debug_outputs.push(serde_json::to_string(&config).unwrap());
    let factory = DefaultProviderFactory::new().with_env_lookup(|_| Some(KEY.to_owned()));
    debug_outputs.push(format!("{factory:?}"));
    config.api_key = None;
    config.api_key_env = Some("SOME_KEY_ENV".into());
    let built = factory.create(&config).unwrap();
    assert_eq!(built.kind(), "openai");
    let missing = DefaultProviderFactory::new()
        .with_env_lookup(|_| None)
        .create(&config)
        .err()
        .unwrap();
    debug_outputs.push(format!("{missing:?} {missing}"));

    // The key really was in play: the upstream received it, and echoed it.
    assert!(received_keys.lock().iter().all(|k| k == KEY));
    assert!(!received_keys.lock().is_empty());
    assert!(errors.len() >= 17, "{}", errors.len());

    for error in &errors {
        let display = error.to_string();
        let debug = format!("{error:?}");
        assert!(!display.contains(KEY), "Display leaks: {display}");
        assert!(!debug.contains(KEY), "Debug leaks: {debug}");
        if let Some(upstream) = error.upstream_error() {
            let json = serde_json::to_string(upstream).unwrap();
            assert!(!json.contains(KEY), "serialized error leaks: {json}");
        }
    }
    assert!(
        errors.iter().any(|e| e.to_string().contains("[redacted]")),
        "echoed keys are redacted, not dropped"
    );
    for output in &debug_outputs {
        assert!(!output.contains(KEY), "output leaks: {output}");
    }
    let logs = String::from_utf8(logs.0.lock().clone()).unwrap();
    assert!(!logs.is_empty(), "the adapters log at debug/trace");
    assert!(!logs.contains(KEY), "a log line leaks the key");
    // Not even the key without its prefix.
    assert!(!logs.contains(&KEY[8..]));
}
