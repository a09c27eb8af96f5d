//! Shared helpers for the adapter tests: local axum upstreams on 127.0.0.1:0, SSE bodies, raw sockets, short timeouts.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;
use parking_lot::Mutex;
use serde_json::Value;
use switchyard_core::{CallContext, Provider, ProviderConfig, ProviderFactory, Secret};
use switchyard_providers::DefaultProviderFactory;

/// A local upstream.
pub struct TestServer {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

impl TestServer {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves `router` on 127.0.0.1:0, counting accepted connections.
pub async fn serve(router: Router) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let listener = listener.tap_io(move |_io| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    TestServer { addr, connections }
}

/// A listener that reads the request and then closes the socket (with a
/// reset when `rst`): the connection dies before any response header.
pub async fn reset_server(rst: bool) -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await;
            if rst {
                let _ = socket.set_zero_linger();
            }
            drop(socket);
        }
    });
    addr
}

/// A listener that accepts and never answers.
pub async fn silent_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// A port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// One piece of a scripted response body.
#[derive(Clone, Debug)]
pub enum Part {
    /// Raw bytes.
    Bytes(String),
    /// `data: {json}\n\n`.
    Data(Value),
    /// `event: name\ndata: {json}\n\n`.
    Event(&'static str, Value),
    /// A pause.
    Wait(Duration),
    /// The connection is aborted (no clean end of the body).
    Abort,
    /// Silence forever.
    Hang,
}

pub fn data(value: Value) -> Part {
    Part::Data(value)
}

pub fn raw(text: &str) -> Part {
    Part::Bytes(text.to_owned())
}

pub fn done() -> Part {
    raw("data: [DONE]\n\n")
}

/// A streamed `text/event-stream` response made of `parts`.
pub fn sse(parts: Vec<Part>) -> Response {
    let stream = futures_util::stream::unfold(parts.into_iter(), |mut parts| async move {
        loop {
            let bytes = match parts.next()? {
                Part::Bytes(text) => text,
                Part::Data(value) => format!("data: {value}\n\n"),
                Part::Event(name, value) => format!("event: {name}\ndata: {value}\n\n"),
                Part::Wait(d) => {
                    tokio::time::sleep(d).await;
                    continue;
                }
                Part::Abort => {
                    return Some((Err(std::io::Error::other("aborted by the test")), parts));
                }
                Part::Hang => std::future::pending().await,
            };
            return Some((Ok(Bytes::from(bytes)), parts));
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// A JSON response.
pub fn json_response(status: u16, body: &Value, headers: &[(&str, &str)]) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

/// What an upstream saw.
#[derive(Default)]
pub struct Seen {
    pub headers: Mutex<Vec<HeaderMap>>,
    pub bodies: Mutex<Vec<Value>>,
    pub paths: Mutex<Vec<String>>,
}

impl Seen {
    pub fn record(&self, path: &str, headers: &HeaderMap, body: &[u8]) {
        self.paths.lock().push(path.to_owned());
        self.headers.lock().push(headers.clone());
        self.bodies
            .lock()
            .push(serde_json::from_slice(body).unwrap_or(Value::Null));
    }

    pub fn last_body(&self) -> Value {
        self.bodies.lock().last().cloned().unwrap()
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.headers.lock().last().cloned().unwrap()
    }
}

/// A provider of `kind` at `base_url` with an inline key.
pub fn provider(kind: &str, base_url: &str, key: &str) -> Arc<dyn Provider> {
    let mut config = ProviderConfig::new("test-provider", kind, ["*"]);
    config.base_url = Some(base_url.to_owned());
    config.api_key = Some(Secret::new(key));
    DefaultProviderFactory::new().create(&config).unwrap()
}

/// A provider built from a full config.
pub fn provider_from(config: &ProviderConfig) -> Arc<dyn Provider> {
    DefaultProviderFactory::new().create(config).unwrap()
}

/// Generous limits for tests that must not time out.
pub fn ctx() -> CallContext {
    CallContext {
        response_timeout: Duration::from_secs(10),
        first_token_timeout: Duration::from_secs(10),
        stream_idle_timeout: Duration::from_secs(10),
        ..CallContext::default()
    }
}

/// Short limits for timeout tests.
pub fn short_ctx() -> CallContext {
    CallContext {
        response_timeout: Duration::from_millis(300),
        first_token_timeout: Duration::from_millis(300),
        stream_idle_timeout: Duration::from_millis(300),
        ..CallContext::default()
    }
}

/// Counts `switchyard_stream_malformed_events_total` on this thread.
#[derive(Default)]
pub struct MalformedCounter {
    pub count: Arc<AtomicU64>,
}

impl metrics::Recorder for MalformedCounter {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == "switchyard_stream_malformed_events_total" {
            metrics::Counter::from_arc(self.count.clone())
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
