//! The opt-in exact-match response cache (SPEC §7) through the real HTTP server: hits only for identical requests of the same client key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const KEYS: &str = "key-aaaaaa,key-bbbbbb";

fn config(base_url: &str, cache: &str) -> String {
    format!(
        "{FAST_MANAGER}\n[server.cache]\n{cache}\n\n[[providers]]\nid = \"alpha\"\ntype = \"openai_compatible\"\nbase_url = \"{base_url}\"\nhealth_check = \"none\"\n[providers.models.\"m\"]\nupstream_name = \"m-up\"\n[providers.models.\"bad\"]\nupstream_name = \"bad-request\"\n"
    )
}

/// Posts raw `body` to `path` with `key`: (status, x-switchyard-cache, x-request-id, JSON).
async fn post(
    gw: &TestGateway,
    path: &str,
    key: &str,
    body: &str,
) -> (u16, Option<String>, String, Value) {
    let response = client()
        .post(gw.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let cache = header("x-switchyard-cache");
    let request_id = header("x-request-id").unwrap();
    let text = response.text().await.unwrap();
    (
        status,
        cache,
        request_id,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn hits_only_identical_requests_of_the_same_key() {
    let up = openai_upstream("alpha").await;
    let gw = gateway_with_env(
        &config(&up.base_url(), "enabled = true"),
        &[("SWITCHYARD_API_KEYS", KEYS)],
    )
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();

    let (status, cache, first_id, first) =
        post(&gw, "/v1/chat/completions", "key-aaaaaa", &body).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")));
    assert_eq!(up.generations(), 1);

    // The same bytes from the same key: answered from the cache.
    let (status, cache, second_id, second) =
        post(&gw, "/v1/chat/completions", "key-aaaaaa", &body).await;
    assert_eq!((status, cache.as_deref()), (200, Some("hit")));
    assert_eq!(second, first);
    assert_ne!(second_id, first_id, "a hit gets its own request id");
    assert_eq!(up.generations(), 1);

    // Another key never sees the first key's entry.
    let (_, cache, _, _) = post(&gw, "/v1/chat/completions", "key-bbbbbb", &body).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(up.generations(), 2);
    let (_, cache, _, _) = post(&gw, "/v1/chat/completions", "key-bbbbbb", &body).await;
    assert_eq!(cache.as_deref(), Some("hit"));

    // A different request misses: other content, other fields, even other
    // whitespace (the key is the raw body).
    let other =
        json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).to_string();
    let spaced = body.replace(':', ": ");
    let with_field =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5})
            .to_string();
    for variant in [&other, &spaced, &with_field] {
        let (status, cache, _, _) = post(&gw, "/v1/chat/completions", "key-aaaaaa", variant).await;
        assert_eq!((status, cache.as_deref()), (200, Some("miss")), "{variant}");
    }
    assert_eq!(up.generations(), 5);

    // Same body, another endpoint: its own entry.
    let embed = json!({"model": "m", "input": "hi"}).to_string();
    let (_, cache, _, _) = post(&gw, "/v1/embeddings", "key-aaaaaa", &embed).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    let (status, cache, _, answer) = post(&gw, "/v1/embeddings", "key-aaaaaa", &embed).await;
    assert_eq!((status, cache.as_deref()), (200, Some("hit")));
    assert_eq!(answer["data"][0]["embedding"][0], 0.25);
    let completion = json!({"model": "m", "prompt": "hi"}).to_string();
    let (_, cache, _, _) = post(&gw, "/v1/completions", "key-aaaaaa", &completion).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    let (_, cache, _, _) = post(&gw, "/v1/completions", "key-aaaaaa", &completion).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    assert_eq!(up.generations(), 7);

    let metrics = scrape(&gw).await;
    for name in [
        "switchyard_cache_hits_total",
        "switchyard_cache_misses_total",
    ] {
        assert!(
            metrics
                .iter()
                .any(|l| l.starts_with(name) && !l.ends_with(" 0")),
            "{name}: {metrics:?}"
        );
    }
}

#[tokio::test]
async fn streams_errors_and_the_default_config_are_never_cached() {
    let up = openai_upstream("alpha").await;
    let gw = gateway_with_env(
        &config(&up.base_url(), "enabled = true"),
        &[("SWITCHYARD_API_KEYS", KEYS)],
    )
    .await;
    // Streams pass by untouched.
    let stream =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    for _ in 0..2 {
        let (status, cache, _, text) =
            post(&gw, "/v1/chat/completions", "key-aaaaaa", &stream).await;
        assert_eq!(status, 200);
        assert_eq!(cache, None);
        assert!(text.as_str().unwrap().contains("[DONE]"));
    }
    assert_eq!(up.generations(), 2);
    // Errors are not stored.
    let bad = json!({"model": "bad", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    for _ in 0..2 {
        let (status, cache, _, _) = post(&gw, "/v1/chat/completions", "key-aaaaaa", &bad).await;
        assert_eq!((status, cache.as_deref()), (400, Some("miss")));
    }
    assert_eq!(up.generations(), 4);
    // Malformed JSON goes to the handler (and its 400), uncached.
    let (status, cache, _, _) = post(&gw, "/v1/chat/completions", "key-aaaaaa", "{oops").await;
    assert_eq!((status, cache), (400, None));

    // Off by default.
    let off = gateway(&config(&up.base_url(), "")).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    for _ in 0..2 {
        let (status, cache, _, _) = post(&off, "/v1/chat/completions", "ignored", &body).await;
        assert_eq!((status, cache), (200, None));
    }
    assert_eq!(up.generations(), 6);
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let up = openai_upstream("alpha").await;
    let gw = gateway(&config(&up.base_url(), "enabled = true\nttl = \"300ms\"")).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let (_, cache, _, _) = post(&gw, "/v1/chat/completions", "anyone", &body).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    let (_, cache, _, _) = post(&gw, "/v1/chat/completions", "anyone", &body).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, cache, _, _) = post(&gw, "/v1/chat/completions", "anyone", &body).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(up.generations(), 2);
}

#[tokio::test]
async fn oversized_bodies_are_still_a_413_with_the_cache_on() {
    let up = openai_upstream("alpha").await;
    let toml = config(&up.base_url(), "enabled = true").replace(
        "[server.cache]",
        "[server]\nmax_body_bytes = 64\n\n[server.cache]",
    );
    let gw = gateway(&toml).await;
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(200)}]})
        .to_string();
    let (status, _, _, body) = post(&gw, "/v1/chat/completions", "anyone", &big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large");
    assert_eq!(up.generations(), 0);
}
