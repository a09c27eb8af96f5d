//! End-to-end tests: the real server on 127.0.0.1:0 in front of local fake upstreams, spoken to over HTTP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

const UPSTREAM_KEY: &str = "sk-upstream-secret-123456";
const ANTHROPIC_KEY: &str = "sk-ant-upstream-secret-123456";

/// A provider entry for an OpenAI-compatible upstream serving `models`
/// (`client name => upstream name`).
fn openai_provider(id: &str, base_url: &str, models: &[(&str, &str)], extra: &str) -> String {
    let mut out = format!(
        "[[providers]]\nid = \"{id}\"\ntype = \"openai_compatible\"\nbase_url = \"{base_url}\"\nhealth_check = \"none\"\n{extra}\n"
    );
    for (name, upstream) in models {
        out.push_str(&format!(
            "[providers.models.\"{name}\"]\nupstream_name = \"{upstream}\"\n"
        ));
    }
    out
}

/// A provider entry serving any model name (`"*"`).
fn wildcard_provider(id: &str, base_url: &str) -> String {
    format!(
        "[[providers]]\nid = \"{id}\"\ntype = \"openai_compatible\"\nbase_url = \"{base_url}\"\nhealth_check = \"none\"\n[providers.models.\"*\"]\n"
    )
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

#[tokio::test]
async fn every_endpoint_answers() {
    let up = openai_upstream("alpha").await;
    let anth = anthropic_upstream("claude", ANTHROPIC_KEY).await;
    let toml = format!(
        "{FAST_MANAGER}\n{}\n[[providers]]\nid = \"anth\"\ntype = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"TEST_ANTHROPIC_KEY\"\nhealth_check = \"none\"\n[providers.models.\"claude-x\"]\nupstream_name = \"claude-upstream\"\n",
        openai_provider(
            "alpha",
            &up.base_url(),
            &[
                ("gpt-x", "gpt-x-up"),
                ("tool-model", "tools-up"),
                ("emb", "emb-up")
            ],
            "api_key_env = \"TEST_OPENAI_KEY\"",
        ),
        anth.base_url(),
    );
    let gw = gateway_with_env(
        &toml,
        &[
            ("TEST_OPENAI_KEY", UPSTREAM_KEY),
            ("TEST_ANTHROPIC_KEY", ANTHROPIC_KEY),
        ],
    )
    .await;
    let http = client();

    // Chat, non-stream: headers, model rewritten to the client-facing name, request id echoed.
    let response = http
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "client-req-1")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .header("authorization", "Bearer client-key-must-not-travel")
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "seed": 7, "x_custom": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-switchyard-provider"], "alpha");
    assert_eq!(headers["x-switchyard-model"], "gpt-x");
    assert_eq!(headers["x-switchyard-attempts"], "1");
    assert_eq!(headers["x-request-id"], "client-req-1");
    let body = json_of(response).await;
    assert_eq!(body["model"], "gpt-x");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from alpha");
    assert_eq!(
        body["system_fingerprint"], "fp_fake",
        "unknown response fields pass through"
    );
    // What the upstream saw: its own key, the upstream model name, unknown fields, ids.
    let seen = up.seen().into_iter().last().unwrap();
    assert_eq!(seen.body["model"], "gpt-x-up");
    assert_eq!(seen.body["seed"], 7);
    assert_eq!(seen.body["x_custom"], json!({"a": 1}));
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(seen.headers["x-request-id"], "client-req-1");
    assert_eq!(
        seen.headers["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );

    // Chat, stream, with and without usage asked for; `null` options are
    // as good as none.
    for (client_usage, options) in [
        (false, None),
        (true, Some(json!({"include_usage": true}))),
        (false, Some(Value::Null)),
    ] {
        let mut request = chat("gpt-x");
        request["stream"] = json!(true);
        if let Some(options) = options.clone() {
            request["stream_options"] = options;
        }
        let response = http
            .post(gw.url("/v1/chat/completions"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
        assert_eq!(headers["x-switchyard-provider"], "alpha");
        assert_eq!(headers["x-switchyard-model"], "gpt-x");
        assert_eq!(headers["x-switchyard-attempts"], "1");
        assert!(headers.contains_key("x-request-id"));
        let text = response.text().await.unwrap();
        let data = sse_data(&text);
        assert_eq!(data.last().unwrap(), "[DONE]", "{text}");
        assert_eq!(stream_text(&text), "Hello from alpha");
        let usage_chunks = data
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["usage"].is_object())
            .count();
        assert_eq!(usage_chunks, usize::from(client_usage), "{text}");
        for chunk in data.iter().filter(|d| d.as_str() != "[DONE]") {
            let chunk: Value = serde_json::from_str(chunk).unwrap();
            assert_eq!(chunk["model"], "gpt-x");
        }
        // The upstream was always asked for usage, by its model name.
        let seen = up.seen().into_iter().last().unwrap();
        assert_eq!(seen.body["stream_options"]["include_usage"], true);
        assert_eq!(seen.body["model"], "gpt-x-up");
        assert_eq!(seen.body["stream"], true);
        // Without options, the client's own bytes went up (its keys in its
        // order, `messages` first) with the option spliced in front; a
        // re-serialised request would start with `model`.
        if options.is_none() {
            assert_eq!(
                seen.raw,
                r#"{"stream_options":{"include_usage":true},"messages":[{"content":"hi","role":"user"}],"model":"gpt-x-up","stream":true}"#
            );
        }
    }

    // Tools.
    let mut request = chat("tool-model");
    request["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let body = json_of(
        http.post(gw.url("/v1/chat/completions"))
            .json(&request)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    // Embeddings and legacy completions.
    let body = json_of(
        http.post(gw.url("/v1/embeddings"))
            .json(&json!({"model": "emb", "input": "hello"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["model"], "emb");
    assert_eq!(body["data"][0]["embedding"], json!([0.25, -0.5, 0.75]));
    let body = json_of(
        http.post(gw.url("/v1/completions"))
            .json(&json!({"model": "gpt-x", "prompt": "Say hi"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["choices"][0]["text"], "Hello from alpha");
    assert_eq!(body["model"], "gpt-x");

    let models = json_of(http.get(gw.url("/v1/models")).send().await.unwrap()).await;
    assert_eq!(models["object"], "list");
    let ids: BTreeSet<String> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["claude-x", "emb", "gpt-x", "tool-model"]
            .map(str::to_owned)
            .into()
    );
    let one = json_of(http.get(gw.url("/v1/models/gpt-x")).send().await.unwrap()).await;
    assert_eq!(one["id"], "gpt-x");
    let missing = http
        .get(gw.url("/v1/models/nope-model"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // /v1/messages, native to the Anthropic deployment: cache_control survives.
    let request = json!({
        "model": "claude-x", "max_tokens": 64,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}],
    });
    let response = http
        .post(gw.url("/v1/messages"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-provider"], "anth");
    let body = json_of(response).await;
    assert_eq!(body["type"], "message");
    assert_eq!(body["model"], "claude-x");
    assert_eq!(body["content"][0]["text"], "Hello from claude");
    let seen = anth.seen().into_iter().last().unwrap();
    assert_eq!(seen.body["model"], "claude-upstream");
    assert_eq!(seen.body["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(seen.headers["x-api-key"], ANTHROPIC_KEY);
    // ... streamed natively.
    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let text = http
        .post(gw.url("/v1/messages"))
        .json(&streaming)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    assert_eq!(events.first().map(String::as_str), Some("message_start"));
    assert_eq!(events.last().map(String::as_str), Some("message_stop"));
    assert!(
        events.contains(&"ping".to_owned()),
        "native events pass through: {events:?}"
    );
    assert!(text.contains("\"model\":\"claude-x\""), "{text}");

    // /v1/messages translated to an OpenAI-format deployment.
    let request = json!({"model": "gpt-x", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]});
    let response = http
        .post(gw.url("/v1/messages"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-switchyard-provider"], "alpha");
    let body = json_of(response).await;
    assert_eq!(body["type"], "message");
    assert_eq!(body["model"], "gpt-x");
    assert_eq!(body["content"][0]["text"], "Hello from alpha");
    assert_eq!(body["stop_reason"], "end_turn");
    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let text = http
        .post(gw.url("/v1/messages"))
        .json(&streaming)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    assert_eq!(
        events.first().map(String::as_str),
        Some("message_start"),
        "{text}"
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("message_stop"),
        "{text}"
    );
    assert!(text.contains("Hello "), "{text}");
    // Anthropic-only features never go to an OpenAI deployment.
    let thinking = json!({"model": "gpt-x", "max_tokens": 64, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "hi"}]});
    let response = http
        .post(gw.url("/v1/messages"))
        .json(&thinking)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    // Probes, metrics and admin stats.
    assert_eq!(
        http.get(gw.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let ready = http.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = scrape(&gw).await;
    assert!(
        metrics
            .iter()
            .any(|l| l.starts_with("switchyard_requests_total{")
                && l.contains("model=\"gpt-x\"")
                && l.contains("provider=\"alpha\"")
                && l.contains("status=\"200\"")
                && !l.ends_with(" 0")),
        "{metrics:?}"
    );
    assert!(
        metrics
            .iter()
            .any(|l| l.starts_with("switchyard_tokens_total{")
                && l.contains("provider=\"alpha\"")
                && l.contains("kind=\"completion\"")
                && !l.ends_with(" 0")),
        "{metrics:?}"
    );
    let stats = json_of(http.get(gw.url("/admin/stats")).send().await.unwrap()).await;
    let rows = stats["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r["provider_id"].is_string() && r["load"].is_number())
    );
    gw.stop().await;
}

#[tokio::test]
async fn every_name_of_spec_12_is_exposed_before_traffic() {
    let up = openai_upstream("a").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}",
        openai_provider("a", &up.base_url(), &[("m", "m")], "")
    );
    let gw = gateway(&toml).await;
    let text = client()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "switchyard_requests_total",
        "switchyard_request_duration_seconds",
        "switchyard_time_to_first_token_seconds",
        "switchyard_overhead_seconds",
        "switchyard_attempts_total",
        "switchyard_provider_switches_total",
        "switchyard_panic_selections_total",
        "switchyard_health_checks_total",
        "switchyard_provider_health",
        "switchyard_provider_inflight",
        "switchyard_provider_load",
        "switchyard_recovery_seconds",
        "switchyard_tokens_total",
        "switchyard_cost_usd_total",
        "switchyard_queue_depth",
        "switchyard_queue_wait_seconds",
        "switchyard_stream_malformed_events_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics:\n{text}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn error_statuses_and_shapes() {
    let up = openai_upstream_with_key("alpha", Some(UPSTREAM_KEY)).await;
    let toml = format!(
        "{FAST_MANAGER}\n[server]\nmax_body_bytes = 2048\n\n{}\n[routes.\"slow-model\"]\nrequest_timeout = \"1s\"\n",
        openai_provider(
            "alpha",
            &up.base_url(),
            &[
                ("gpt-x", "gpt-x"),
                ("bad", "bad-request"),
                ("leaky", "leaky-request"),
                ("auth", "status-401"),
                ("gone", "status-404"),
                ("limited", "status-429"),
                ("down", "status-503"),
                ("slow-model", "slow"),
            ],
            "api_key_env = \"TEST_OPENAI_KEY\""
        ),
    );
    let gw = gateway_with_env(&toml, &[("TEST_OPENAI_KEY", UPSTREAM_KEY)]).await;
    let http = client();
    let post = |path: &str, body: String| {
        http.post(gw.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Malformed JSON.
    let response = post("/v1/chat/completions", "{\"model\": ".to_owned())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.headers().contains_key("x-request-id"));
    let body = json_of(response).await;
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "invalid_json");
    // Missing and wrong-typed fields, named.
    let body = json_of(
        post("/v1/chat/completions", r#"{"model": "gpt-x"}"#.to_owned())
            .await
            .unwrap(),
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing field `messages`"),
        "{body}"
    );
    assert_eq!(body["error"]["param"], "messages");
    let response = post(
        "/v1/chat/completions",
        r#"{"model": "gpt-x", "messages": [], "max_tokens": "many"}"#.to_owned(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(json_of(response).await["error"]["param"], "max_tokens");
    let response = post("/v1/embeddings", r#"{"model": "gpt-x"}"#.to_owned())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Unknown model.
    let response = post("/v1/chat/completions", chat("no-such-model").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body = json_of(response).await;
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");
    let response = post(
        "/v1/embeddings",
        json!({"model": "nope", "input": "x"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 404);
    // Body too large, in both shapes.
    let big =
        json!({"model": "gpt-x", "messages": [{"role": "user", "content": "x".repeat(4096)}]})
            .to_string();
    let response = post("/v1/chat/completions", big.clone()).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        json_of(response).await["error"]["code"],
        "request_too_large"
    );
    let response = post("/v1/messages", big).await.unwrap();
    assert_eq!(response.status(), 413);
    let body = json_of(response).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "request_too_large");
    // Anthropic shape for a bad /v1/messages body.
    let response = post(
        "/v1/messages",
        json!({"model": "gpt-x", "messages": []}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    // Legacy completions do not stream.
    let response = post(
        "/v1/completions",
        json!({"model": "gpt-x", "prompt": "x", "stream": true}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);

    // An upstream's final 400 comes back with its status, message, type, param and code.
    let response = post("/v1/chat/completions", chat("bad").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    assert_eq!(
        body["error"]["message"],
        "Invalid value for 'temperature': upstream says 7 is too hot."
    );
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "temperature");
    assert_eq!(body["error"]["code"], "invalid_value");
    // ... with configured secrets redacted.
    let body = json_of(
        post("/v1/chat/completions", chat("leaky").to_string())
            .await
            .unwrap(),
    )
    .await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains(UPSTREAM_KEY) && message.contains("[redacted]"),
        "{message}"
    );
    // Every attempt refused with 401/404: 502 upstream_auth_error, never the upstream's 401.
    for model in ["auth", "gone"] {
        let response = post("/v1/chat/completions", chat(model).to_string())
            .await
            .unwrap();
        assert_eq!(response.status(), 502, "{model}");
        let body = json_of(response).await;
        assert_eq!(body["error"]["type"], "upstream_auth_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("alpha/{model}")), "{message}");
        assert!(
            !message.contains("127.0.0.1"),
            "no upstream URLs: {message}"
        );
    }
    // Every attempt rate limited: 429 with Retry-After.
    let response = post("/v1/chat/completions", chat("limited").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    // Every attempt failed otherwise: 502 listing the trail, no upstream body.
    let response = post("/v1/chat/completions", chat("down").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = json_of(response).await;
    assert_eq!(body["error"]["type"], "upstream_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("alpha/down: unavailable"), "{message}");
    assert!(
        !message.contains("scripted"),
        "no upstream bodies: {message}"
    );
    // The deadline passed: 504.
    let started = Instant::now();
    let response = post("/v1/chat/completions", chat("slow-model").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(4));
    // Unknown route, wrong method.
    assert_eq!(
        http.get(gw.url("/v2/nothing"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let response = http
        .get(gw.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert!(json_of(response).await["error"]["message"].is_string());
    gw.stop().await;
}

#[tokio::test]
async fn client_keys_are_required_and_never_forwarded() {
    let up = openai_upstream("alpha").await;
    let toml = format!(
        "{FAST_MANAGER}\n[server]\napi_keys_env = \"MY_CLIENT_KEYS\"\nadmin_token_env = \"MY_ADMIN_TOKEN\"\n\n{}",
        openai_provider("alpha", &up.base_url(), &[("gpt-x", "gpt-x")], "")
    );
    let gw = gateway_with_env(
        &toml,
        &[
            ("MY_CLIENT_KEYS", "client-key-one,client-key-two"),
            ("MY_ADMIN_TOKEN", "admin-token-xyz"),
        ],
    )
    .await;
    let http = client();
    let response = http
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("gpt-x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body = json_of(response).await;
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let response = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("wrong-key")
        .json(&chat("gpt-x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = http
        .post(gw.url("/v1/messages"))
        .json(&json!({"model": "gpt-x", "max_tokens": 5, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        json_of(response).await["error"]["type"],
        "authentication_error"
    );
    assert_eq!(
        http.get(gw.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let response = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("client-key-two")
        .json(&chat("gpt-x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = http
        .post(gw.url("/v1/chat/completions"))
        .header("x-api-key", "client-key-one")
        .json(&chat("gpt-x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for seen in up.seen() {
        assert!(
            seen.headers.get("authorization").is_none(),
            "client key forwarded: {:?}",
            seen.headers
        );
        assert!(
            seen.headers.get("x-api-key").is_none(),
            "client key forwarded: {:?}",
            seen.headers
        );
    }
    // Probes and metrics stay open; the admin API wants its token.
    assert_eq!(
        http.get(gw.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        http.get(gw.url("/metrics")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        http.get(gw.url("/admin/stats"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let response = http
        .get(gw.url("/admin/stats"))
        .bearer_auth("admin-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn admin_without_a_token_answers_only_loopback_hosts() {
    let (_up, gw) = alpha_gateway(&[("m", "m")]).await;
    let http = client();
    assert_eq!(
        http.get(gw.url("/admin/stats"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let response = http
        .get(gw.url("/admin/stats"))
        .header("host", "gateway.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    gw.stop().await;
}

#[tokio::test]
async fn a_non_loopback_listen_is_refused_without_keys() {
    let up = openai_upstream("alpha").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}",
        openai_provider("alpha", &up.base_url(), &[("m", "m")], "")
    );
    let config = switchyard_server::config::Config::from_toml_str(&toml).unwrap();
    let gateway =
        switchyard_server::Gateway::with_env(config.clone(), std::sync::Arc::new(|_: &str| None))
            .unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let error = gateway
        .serve(listener, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("admin token"), "{error}");

    let env = |name: &str| (name == "SWITCHYARD_ADMIN_TOKEN").then(|| "tok-123456".to_owned());
    let gateway =
        switchyard_server::Gateway::with_env(config.clone(), std::sync::Arc::new(env)).unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let error = gateway
        .serve(listener, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("allow_open_proxy"), "{error}");

    let mut open = config;
    open.server.allow_open_proxy = true;
    let gateway = switchyard_server::Gateway::with_env(open, std::sync::Arc::new(env)).unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    gateway
        .serve(listener, std::future::ready(()))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_mid_list_provider_failing_before_first_content_is_invisible() {
    let first = openai_upstream("first").await;
    let second = openai_upstream("second").await;
    let third = openai_upstream("third").await;
    // Each deployment priced differently: the stream is metered at the
    // price of the one that answered.
    let priced = |provider: String, per_mtok: u32| {
        format!(
            "{provider}input_cost_per_mtok = {per_mtok}\noutput_cost_per_mtok = {}\n",
            2 * per_mtok
        )
    };
    let toml = format!(
        "{FAST_MANAGER}\n{}\n{}\n{}\n[routes.\"gpt-x\"]\nstrategy = \"priority\"\n",
        priced(
            openai_provider(
                "p0",
                &first.base_url(),
                &[("gpt-x", "status-503")],
                "priority = 0"
            ),
            300_000_000
        ),
        priced(
            openai_provider(
                "p1",
                &second.base_url(),
                &[("gpt-x", "cut-before-content")],
                "priority = 1"
            ),
            200_000_000
        ),
        priced(
            openai_provider("p2", &third.base_url(), &[("gpt-x", "ok")], "priority = 2"),
            1_000_000
        ),
    );
    let gw = gateway(&toml).await;
    let http = client();
    let mut request = chat("gpt-x");
    request["stream"] = json!(true);
    let response = http
        .post(gw.url("/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-provider"], "p2");
    assert_eq!(response.headers()["x-switchyard-attempts"], "3");
    let text = response.text().await.unwrap();
    assert_eq!(stream_text(&text), "Hello from third");
    assert!(!text.contains("error"), "{text}");
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
    // The client saw exactly one role chunk: nothing of the failed attempts.
    let roles = sse_data(&text)
        .iter()
        .filter(|d| d.contains("\"role\":\"assistant\""))
        .count();
    assert_eq!(roles, 1, "{text}");
    assert_eq!(first.generations(), 1);
    assert_eq!(second.generations(), 1);
    // 5 prompt tokens at $1 and 7 completion tokens at $2, p2's prices.
    let lines = scrape(&gw).await;
    let cost = |provider: &str| -> f64 {
        let prefix =
            format!("switchyard_cost_usd_total{{provider=\"{provider}\",model=\"gpt-x\"}} ");
        let line = lines.iter().find(|l| l.starts_with(&prefix));
        line.map_or(0.0, |l| l[prefix.len()..].parse().unwrap())
    };
    assert_eq!(
        (cost("p0"), cost("p1"), cost("p2")),
        (0.0, 0.0, 19.0),
        "{lines:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_cut_after_content_ends_with_an_error_event_and_no_done() {
    let up = openai_upstream("alpha").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}\n[routes.\"gpt-x\"]\nstream_resume = \"off\"\n",
        openai_provider(
            "alpha",
            &up.base_url(),
            &[("gpt-x", "cut-after-content")],
            ""
        )
    );
    let gw = gateway(&toml).await;
    let response = stream_chat(&gw, "gpt-x").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let data = sse_data(&text);
    assert!(!data.contains(&"[DONE]".to_owned()), "{text}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error", "{text}");
    assert!(stream_text(&text).starts_with("Hello"));
    gw.stop().await;
}

/// A gateway over one `alpha` upstream serving `models` (name, upstream name).
async fn alpha_gateway(models: &[(&str, &str)]) -> (Upstream, TestGateway) {
    let up = openai_upstream("alpha").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}",
        openai_provider("alpha", &up.base_url(), models, "")
    );
    let gw = gateway(&toml).await;
    (up, gw)
}

/// A streamed chat request for `model`, as the response arrives.
async fn stream_chat(gw: &TestGateway, model: &str) -> reqwest::Response {
    let mut request = chat(model);
    request["stream"] = json!(true);
    client()
        .post(gw.url("/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .unwrap()
}

/// The chunked-encoding frames of a raw HTTP/1.1 response: their payloads.
fn chunked_frames(response: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(response);
    let (head, mut body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut frames = Vec::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return frames;
        }
        frames.push(rest[..size].to_owned());
        body = &rest[size + 2..];
    }
}

/// POSTs `body` over a fresh connection and reads the raw response.
async fn raw_post(addr: std::net::SocketAddr, path: &str, body: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn events_ready_together_leave_in_one_frame_and_paced_ones_at_once() {
    let (_up, gw) = alpha_gateway(&[("gpt-x", "gpt-x-up"), ("paced", "paced-stream")]).await;
    // The fake answers a whole stream in one write: its events reach the
    // gateway together and go out as one frame (plus, at most, the one
    // holding the first content, sent before the rest arrived).
    let response = raw_post(
        gw.addr,
        "/v1/chat/completions",
        r#"{"model":"gpt-x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let frames = chunked_frames(&response);
    let events: usize = frames.iter().map(|f| f.matches("data: ").count()).sum();
    assert!(events >= 5, "{frames:?}");
    assert!(frames.len() <= 2, "{} frames: {frames:?}", frames.len());
    assert!(frames.last().unwrap().ends_with("data: [DONE]\n\n"));
    // The same for Anthropic events (translated from this deployment).
    let response = raw_post(
        gw.addr,
        "/v1/messages",
        r#"{"model":"gpt-x","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let frames = chunked_frames(&response);
    let events: usize = frames.iter().map(|f| f.matches("event: ").count()).sum();
    assert!(events >= 6, "{frames:?}");
    assert!(frames.len() <= 2, "{} frames: {frames:?}", frames.len());
    assert!(
        frames.last().unwrap().contains("event: message_stop"),
        "{frames:?}"
    );

    // Events 100 ms apart are each sent when they come, never held back.
    let response = stream_chat(&gw, "paced").await;
    let mut body = response.bytes_stream();
    let mut reads = 0;
    let mut text = String::new();
    while let Some(bytes) = body.next().await {
        reads += 1;
        text.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // 15 events over 1.5 s; a slow test machine may join some reads, but
    // a stream held back would arrive in one or two.
    assert!(reads >= 5, "{reads} reads: {text}");
    gw.stop().await;
}

#[tokio::test]
async fn a_client_disconnect_mid_stream_aborts_the_upstream_call_within_a_second() {
    let (up, gw) = alpha_gateway(&[("gpt-x", "slow-stream")]).await;
    let response = stream_chat(&gw, "gpt-x").await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("t1 ") {
        let bytes = body.next().await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert_eq!(up.dropped_streams(), 0);
    let dropped_at = Instant::now();
    drop(body);
    tokio::time::timeout(Duration::from_secs(1), up.stream_dropped())
        .await
        .expect("the upstream call was not dropped within 1 s");
    assert!(dropped_at.elapsed() < Duration::from_secs(1));
    // Recorded as cancelled, never against the deployment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let state = gw.manager.deployment_state("alpha", "gpt-x").unwrap();
    assert_eq!(state.consecutive_failures(), 0);
    let metrics = scrape(&gw).await;
    assert!(
        metrics
            .iter()
            .any(|l| l.starts_with("switchyard_attempts_total{")
                && l.contains("provider=\"alpha\"")
                && l.contains("outcome=\"cancelled\"")),
        "{metrics:?}"
    );
    assert!(
        metrics
            .iter()
            .any(|l| l.starts_with("switchyard_requests_total{")
                && l.contains("model=\"gpt-x\"")
                && l.contains("status=\"cancelled\"")),
        "{metrics:?}"
    );
    let stats: Value = client()
        .get(gw.url("/admin/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["data"][0]["health"], "healthy");
    gw.stop().await;
}

#[tokio::test]
async fn a_graceful_stop_lets_an_in_flight_stream_finish() {
    let (_up, gw) = alpha_gateway(&[("gpt-x", "paced-stream")]).await;
    let response = stream_chat(&gw, "gpt-x").await;
    let url = gw.url("/healthz");
    let stopping = tokio::spawn(gw.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once stopping.
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
    let text = response.text().await.unwrap();
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
    assert!(text.contains("t14 "));
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_thousand_random_model_names_add_at_most_one_model_series() {
    let star = openai_upstream("star").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}",
        wildcard_provider("wild", &star.base_url())
    );
    let gw = gateway(&toml).await;
    // The metrics recorder is process-wide: other tests' gateways add their
    // own series concurrently, so count only this provider's.
    let models_in = |lines: &[String]| -> BTreeSet<String> {
        lines
            .iter()
            .filter(|l| l.starts_with("switchyard_") && l.contains("provider=\"wild\""))
            .filter_map(|l| {
                let start = l.find("model=\"")? + 7;
                let end = l[start..].find('"')? + start;
                Some(l[start..end].to_owned())
            })
            .collect()
    };
    let before = models_in(&scrape(&gw).await);
    let http = client();
    let names: Vec<String> = (0..1000)
        .map(|i| format!("random-{i}-{:x}", rand::random::<u64>()))
        .collect();
    let results = futures_util::stream::iter(names.iter().map(|name| {
        let http = http.clone();
        let url = gw.url("/v1/chat/completions");
        async move {
            http.post(url)
                .json(&chat(name))
                .send()
                .await
                .unwrap()
                .status()
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    assert!(results.iter().all(|s| *s == 200), "{results:?}");
    let scraped = scrape(&gw).await;
    assert!(
        !scraped.iter().any(|l| l.contains("model=\"random-")),
        "a client-chosen name became a label"
    );
    let after = models_in(&scraped);
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(added.len() <= 1, "new model series: {added:?}");
    assert!(added.iter().all(|m| m.as_str() == "other"), "{added:?}");
    assert!(after.contains("other"));
    assert!(!after.iter().any(|m| m.starts_with("random-")));
    // The "*" provider's upstream list is what /v1/models shows for it.
    let models: Value = http
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["star-model-1", "star-model-2"]);
    let response = http
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("any-name"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-switchyard-model"], "any-name");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "any-name");
    assert_eq!(star.seen().last().unwrap().body["model"], "any-name");
    gw.stop().await;
}

#[tokio::test]
async fn the_region_comes_from_the_header_then_metadata_then_the_server() {
    let eu = openai_upstream("eu").await;
    let us = openai_upstream("us").await;
    let toml = format!(
        "{FAST_MANAGER}\n[server]\nregion = \"eu\"\n\n{}\n{}",
        openai_provider("eu-p", &eu.base_url(), &[("m", "m")], "region = \"eu\""),
        openai_provider("us-p", &us.base_url(), &[("m", "m")], "region = \"us\""),
    );
    let gw = gateway(&toml).await;
    let http = client();
    for _ in 0..3 {
        let response = http
            .post(gw.url("/v1/chat/completions"))
            .json(&chat("m"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-switchyard-provider"], "eu-p");
    }
    let response = http
        .post(gw.url("/v1/chat/completions"))
        .header("x-switchyard-region", "us")
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-switchyard-provider"], "us-p");
    let mut request = chat("m");
    request["metadata"] = json!({"region": "us"});
    let response = http
        .post(gw.url("/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-switchyard-provider"], "us-p");
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_cut_after_content_is_resumed_on_another_deployment() {
    let up = openai_upstream("alpha").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}\n{}\n[routes.\"gpt-x\"]\nstrategy = \"priority\"\nstream_resume = \"replay\"\n",
        openai_provider(
            "p0",
            &up.base_url(),
            &[("gpt-x", "cut-after-content")],
            "priority = 0"
        ),
        openai_provider("p1", &up.base_url(), &[("gpt-x", "ok")], "priority = 1"),
    );
    let gw = gateway(&toml).await;
    let response = stream_chat(&gw, "gpt-x").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-provider"], "p0");
    let text = response.text().await.unwrap();
    assert_eq!(
        stream_text(&text),
        "Hello from alpha",
        "never text twice: {text}"
    );
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]", "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn stream_chunks_go_out_as_the_upstreams_bytes_relabelled_and_without_unasked_usage() {
    let (_up, gw) = alpha_gateway(&[
        ("same-name", "same-name"),
        ("alias", "upstream-name"),
        ("padded", "padded-upstream"),
    ])
    .await;
    let http = reqwest::Client::new();
    let stream = |model: &str, usage: bool| {
        let mut request = chat(model);
        request["stream"] = json!(true);
        if usage {
            request["stream_options"] = json!({"include_usage": true});
        }
        let (http, url) = (http.clone(), gw.url("/v1/chat/completions"));
        async move {
            let text = http
                .post(url)
                .json(&request)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            sse_data(&text)
        }
    };
    // The fake upstream writes its JSON with sorted keys (`choices`
    // first) and, asked for usage as OpenAI is, ends every chunk but the
    // usage one with `,"usage":null}`; the gateway's own serialisation
    // starts with `id`. Relabelled or not, with or without usage, with
    // `usage` last or followed by another member, chunks go out as the
    // upstream's bytes, edited.
    for (model, upstream_model) in [
        ("same-name", "same-name"),
        ("alias", "upstream-name"),
        ("padded", "padded-upstream"),
    ] {
        for usage in [false, true] {
            let data = stream(model, usage).await;
            assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
            let chunks = &data[..data.len() - 1];
            assert!(chunks.len() >= 3, "{data:?}");
            for chunk in chunks {
                assert!(
                    chunk.starts_with("{\"choices\":"),
                    "forwarded as sent: {data:?}"
                );
                let value: Value = serde_json::from_str(chunk).unwrap();
                assert_eq!(value["model"], model, "{chunk}");
                if model == "padded" && !value["usage"].is_object() {
                    assert_eq!(value["x_padding"], "pad", "{chunk}");
                }
                assert!(!chunk.contains(upstream_model) || model == upstream_model);
                // `usage` only when asked for: null on content chunks (as
                // OpenAI sends it) and counts on the last.
                let usage_member = value.as_object().unwrap().get("usage");
                if usage {
                    assert!(usage_member.is_some(), "{chunk}");
                } else {
                    assert!(usage_member.is_none(), "{chunk}");
                }
            }
            let usage_chunks = chunks
                .iter()
                .filter(|d| serde_json::from_str::<Value>(d).unwrap()["usage"].is_object())
                .count();
            assert_eq!(usage_chunks, usize::from(usage), "{data:?}");
        }
    }
}

#[tokio::test]
async fn stream_chunks_with_a_nested_usage_key_go_out_as_sent() {
    // This upstream sends no top-level `usage` on its content chunks
    // (though the gateway asks for usage), and a `usage` key inside
    // another member. Such chunks need no edit: they go out as the
    // upstream's bytes (sorted keys, `choices` first; the gateway's own
    // serialisation starts with `id`), the nested key kept, and the usage
    // chunk the client did not ask for is dropped.
    let (_up, gw) = alpha_gateway(&[("nested-usage", "nested-usage")]).await;
    let response = stream_chat(&gw, "nested-usage").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks = &data[..data.len() - 1];
    assert!(chunks.len() >= 3, "{data:?}");
    for chunk in chunks {
        assert!(
            chunk.starts_with("{\"choices\":"),
            "forwarded as sent: {chunk}"
        );
        assert!(chunk.contains("\"x_meta\":{\"usage\":1}"), "{chunk}");
        let value: Value = serde_json::from_str(chunk).unwrap();
        assert!(value.get("usage").is_none(), "{chunk}");
    }
    assert_eq!(stream_text(&text), "Hello from alpha");
    gw.stop().await;
}

#[tokio::test]
async fn a_request_answered_by_a_fallback_model_is_counted_under_that_model() {
    let up = openai_upstream("alpha").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}\n{}\n[routes.\"primary\"]\nfallbacks = [\"backup\"]\n",
        openai_provider("p0", &up.base_url(), &[("primary", "status-500")], ""),
        openai_provider("p1", &up.base_url(), &[("backup", "ok")], ""),
    );
    let gw = gateway(&toml).await;
    let response = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("primary"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-model"], "backup");
    let metrics = scrape(&gw).await;
    let answered = |model: &str| {
        metrics.iter().any(|l| {
            l.starts_with("switchyard_requests_total{")
                && l.contains(&format!("model=\"{model}\""))
                && l.contains("status=\"200\"")
                && l.ends_with(" 1")
        })
    };
    assert!(answered("backup"), "{metrics:?}");
    assert!(!answered("primary"), "{metrics:?}");
    gw.stop().await;
}

/// `POST /v1/chat/completions` skips the router (`dispatch.rs`); served by
/// the router instead (axum's own server on the same config), every answer
/// must be the same: status, body and the headers a client reads.
#[tokio::test]
async fn the_directly_dispatched_chat_route_answers_as_the_router_does() {
    let up = openai_upstream("alpha").await;
    let toml = format!(
        "{FAST_MANAGER}\n[server]\nmax_body_bytes = 2048\n\n{}",
        openai_provider("alpha", &up.base_url(), &[("gpt-x", "gpt-x-up")], "")
    );
    let direct = gateway(&toml).await;
    let config = switchyard_server::config::Config::from_toml_str(&toml).unwrap();
    let routed =
        switchyard_server::Gateway::with_env(config, std::sync::Arc::new(|_: &str| None)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let routed_base = format!("http://{}", listener.local_addr().unwrap());
    let router = routed.router();
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let cases = [
        ("answered", chat("gpt-x").to_string()),
        (
            "streamed",
            json!({"model": "gpt-x", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        ),
        ("malformed JSON", "{\"model\":".to_owned()),
        ("no model", json!({"messages": []}).to_string()),
        (
            "messages of the wrong type",
            json!({"model": "gpt-x", "messages": "hi"}).to_string(),
        ),
        ("an unknown model", chat("nope").to_string()),
        (
            "a body over max_body_bytes",
            json!({"model": "gpt-x", "messages": [{"role": "user", "content": "x".repeat(4096)}]})
                .to_string(),
        ),
    ];
    let http = client();
    let mut statuses = BTreeSet::new();
    for path in ["/v1/chat/completions", "/v1/chat/completions?api-version=1"] {
        for (case, body) in &cases {
            let mut answers = Vec::new();
            for base in [direct.url(""), routed_base.clone()] {
                let response = http
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .header("x-request-id", "req-same-id")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let headers: Vec<Option<String>> = [
                    "content-type",
                    "x-request-id",
                    "x-switchyard-provider",
                    "x-switchyard-model",
                    "x-switchyard-attempts",
                ]
                .iter()
                .map(|name| {
                    response
                        .headers()
                        .get(*name)
                        .map(|v| v.to_str().unwrap().to_owned())
                })
                .collect();
                answers.push((status, headers, response.text().await.unwrap()));
            }
            assert_eq!(
                answers[0], answers[1],
                "{case} on {path}: direct, then routed"
            );
            statuses.insert(answers[0].0);
        }
    }
    // The cases reach every outcome they are meant to.
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        vec![200, 400, 404, 413]
    );
    server.abort();
    direct.stop().await;
}
