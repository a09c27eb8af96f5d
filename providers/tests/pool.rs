//! The plain-HTTP connection pool, seen from the upstream: which requests reuse a connection, which open one, and which connections close.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use common::*;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::json;
use switchyard_core::{ChatMessage, ChatRequest, Provider, ProviderConfig, ProviderFactory};
use switchyard_providers::{DefaultProviderFactory, HttpOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn chat_request(stream: bool) -> ChatRequest {
    ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![ChatMessage::text("user", "hi")],
        stream,
        ..Default::default()
    }
}

fn completion() -> serde_json::Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    })
}

fn chunk(content: &str) -> Part {
    data(json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    }))
}

/// `/fast` answers at once, `/slow` after 100 ms, `/hang` sends one chunk
/// of a stream and then nothing.
async fn upstream() -> TestServer {
    let router = Router::new()
        .route(
            "/fast/v1/chat/completions",
            post(|| async { json_response(200, &completion(), &[]) }),
        )
        .route(
            "/slow/v1/chat/completions",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                json_response(200, &completion(), &[])
            }),
        )
        .route(
            "/hang/v1/chat/completions",
            post(|| async { sse(vec![chunk("one"), Part::Hang]) }),
        );
    serve(router).await
}

fn provider_on(
    factory: &DefaultProviderFactory,
    id: &str,
    server: &TestServer,
    case: &str,
) -> Arc<dyn Provider> {
    let mut config = ProviderConfig::new(id, "openai_compatible", ["*"]);
    config.base_url = Some(server.url(&format!("/{case}/v1")));
    factory.create(&config).unwrap()
}

fn factory_with(options: HttpOptions) -> DefaultProviderFactory {
    DefaultProviderFactory::new().with_http_options(options)
}

#[tokio::test]
async fn providers_on_one_host_share_its_connections() {
    let server = upstream().await;
    let factory = DefaultProviderFactory::new();
    let first = provider_on(&factory, "first", &server, "fast");
    let second = provider_on(&factory, "second", &server, "fast");
    for _ in 0..5 {
        first.chat(chat_request(false), &ctx()).await.unwrap();
        second.chat(chat_request(false), &ctx()).await.unwrap();
    }
    assert_eq!(server.connections(), 1, "ten requests, two providers");
}

#[tokio::test]
async fn concurrent_requests_get_a_connection_each_and_at_most_the_cap_stays_idle() {
    let server = upstream().await;
    let factory = factory_with(HttpOptions {
        pool_max_idle_per_host: 2,
        ..HttpOptions::default()
    });
    let provider = provider_on(&factory, "p", &server, "slow");
    let wave = || {
        join_all((0..4).map(|_| {
            let provider = provider.clone();
            async move { provider.chat(chat_request(false), &ctx()).await }
        }))
    };
    assert!(wave().await.iter().all(Result::is_ok));
    assert_eq!(server.connections(), 4, "four at once, four connections");
    // Two of the four were kept: the next wave opens two more.
    assert!(wave().await.iter().all(Result::is_ok));
    assert_eq!(server.connections(), 6);
}

#[tokio::test]
async fn a_stream_left_half_read_closes_its_connection_instead_of_lending_it() {
    let server = upstream().await;
    let factory = DefaultProviderFactory::new();
    let hanging = provider_on(&factory, "hang", &server, "hang");
    let fast = provider_on(&factory, "fast", &server, "fast");
    let mut stream = hanging
        .chat_stream(chat_request(true), &ctx())
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.text(), "one");
    drop(stream);
    fast.chat(chat_request(false), &ctx()).await.unwrap();
    assert_eq!(server.connections(), 2, "the half-read one was not reused");
    fast.chat(chat_request(false), &ctx()).await.unwrap();
    assert_eq!(server.connections(), 2, "the whole-read one was");
}

/// Answers each request on a connection with a keep-alive response, then
/// closes the connection once it has been idle for 20 ms; counts accepts.
async fn closing_when_idle() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let body = completion().to_string();
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    let read =
                        tokio::time::timeout(Duration::from_millis(20), socket.read(&mut buffer))
                            .await;
                    let Ok(Ok(n)) = read else { return };
                    if n == 0 {
                        return;
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced_not_failed_on() {
    let (addr, accepted) = closing_when_idle().await;
    let mut config = ProviderConfig::new("p", "openai_compatible", ["*"]);
    config.base_url = Some(format!("http://{addr}/v1"));
    let provider = DefaultProviderFactory::new().create(&config).unwrap();
    provider.chat(chat_request(false), &ctx()).await.unwrap();
    provider.chat(chat_request(false), &ctx()).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    provider.chat(chat_request(false), &ctx()).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let server = upstream().await;
    let factory = factory_with(HttpOptions {
        pool_idle_timeout: Duration::from_millis(100),
        ..HttpOptions::default()
    });
    let provider = provider_on(&factory, "p", &server, "fast");
    provider.chat(chat_request(false), &ctx()).await.unwrap();
    assert_eq!(server.connections(), 1);
    // Past the timeout and the reaper's next look (a quarter of it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    provider.chat(chat_request(false), &ctx()).await.unwrap();
    assert_eq!(server.connections(), 2, "the idle one was closed");
}
