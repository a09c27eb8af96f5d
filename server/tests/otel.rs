//! OpenTelemetry export (feature `otel`) through the real HTTP server: spans reach a local OTLP/HTTP receiver with the expected attributes and parents.
//!
//! The receiver is an axum server accepting `POST /v1/traces` (protobuf),
//! decoded with `opentelemetry-proto`. The test installs the binary's
//! subscriber (`telemetry::init_tracing`, which carries the OpenTelemetry
//! layer), starts the gateway with `[server.otel] endpoint` pointing at the
//! receiver, and stops it, which flushes the exporter.
#![cfg(feature = "otel")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode as SpanStatus};
use parking_lot::Mutex;
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
}

async fn traces(State(received): State<Received>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    for resource_spans in request.resource_spans {
        if let Some(resource) = &resource_spans.resource {
            for kv in &resource.attributes {
                if kv.key == "service.name" {
                    if let Some(Any::StringValue(name)) =
                        kv.value.as_ref().and_then(|v| v.value.clone())
                    {
                        received.services.lock().push(name);
                    }
                }
            }
        }
        for scope in resource_spans.scope_spans {
            received.spans.lock().extend(scope.spans);
        }
    }
    StatusCode::OK
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(i) => i.to_string(),
        Any::BoolValue(b) => b.to_string(),
        Any::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

fn provider(id: &str, base_url: &str, priority: u32, upstream: &str) -> String {
    format!(
        "[[providers]]\nid = \"{id}\"\ntype = \"openai_compatible\"\nbase_url = \"{base_url}\"\nhealth_check = \"none\"\npriority = {priority}\n[providers.models.\"gpt-x\"]\nupstream_name = \"{upstream}\"\n"
    )
}

#[tokio::test]
async fn spans_reach_an_otlp_receiver_with_attributes_and_parents() {
    let received = Received::default();
    let router = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(received.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let receiver = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let _logs = switchyard_server::telemetry::init_tracing();
    // The first provider (priority 0) fails with 503, so the request has
    // two attempts: a failed one and the one that answered.
    let bad = openai_upstream("bad").await;
    let good = openai_upstream("good").await;
    let toml = format!(
        "{FAST_MANAGER}\nstrategy = \"priority\"\n\n[server.otel]\nendpoint = \"http://{collector}\"\nservice_name = \"switchyard-test\"\n\n{}\n{}",
        provider("bad", &bad.base_url(), 0, "status-503"),
        provider("good", &good.base_url(), 1, "gpt-x-up"),
    );
    let gw = gateway(&toml).await;
    let response = client()
        .post(gw.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-attempts"], "2");
    // A request without a traceparent starts its own trace.
    let response = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "again"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Stopping the gateway flushes the exporter.
    gw.stop().await;
    let started = Instant::now();
    let requests = |spans: &[Span]| spans.iter().filter(|s| s.name == "request").count();
    while requests(&received.spans.lock()) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "spans received: {:?}",
            received.spans.lock()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spans = received.spans.lock().clone();
    assert!(
        received
            .services
            .lock()
            .iter()
            .all(|s| s == "switchyard-test")
    );

    // The request span continues the client's trace, as a child of its span.
    let request = spans
        .iter()
        .find(|s| s.name == "request" && hex(&s.trace_id) == TRACE_ID)
        .unwrap_or_else(|| panic!("no request span in the client's trace: {spans:#?}"));
    assert_eq!(hex(&request.parent_span_id), PARENT_ID);
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(
        attr(request, "endpoint").as_deref(),
        Some("chat.completions")
    );
    assert_eq!(attr(request, "model").as_deref(), Some("gpt-x"));
    assert_eq!(attr(request, "provider").as_deref(), Some("good"));
    assert_eq!(attr(request, "status").as_deref(), Some("200"));
    assert_eq!(attr(request, "prompt_tokens").as_deref(), Some("5"));
    assert_eq!(attr(request, "completion_tokens").as_deref(), Some("7"));
    assert!(attr(request, "request_id").is_some());

    // One attempt span per upstream call, children of the request span.
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "attempt" && s.parent_span_id == request.span_id)
        .collect();
    attempts.sort_by_key(|s| attr(s, "attempt"));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    let (failed, answered) = (attempts[0], attempts[1]);
    for attempt in [failed, answered] {
        assert_eq!(attempt.trace_id, request.trace_id);
        assert_eq!(attempt.kind, SpanKind::Client as i32);
        assert_eq!(attr(attempt, "model").as_deref(), Some("gpt-x"));
    }
    assert_eq!(attr(failed, "provider").as_deref(), Some("bad"));
    assert_ne!(attr(failed, "status").as_deref(), Some("ok"));
    assert_eq!(
        attr(failed, "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );
    assert_eq!(attr(answered, "provider").as_deref(), Some("good"));
    assert_eq!(
        attr(answered, "upstream_model").as_deref(),
        Some("gpt-x-up")
    );
    assert_eq!(attr(answered, "status").as_deref(), Some("ok"));
    assert_eq!(attr(answered, "prompt_tokens").as_deref(), Some("5"));
    assert_eq!(attr(answered, "completion_tokens").as_deref(), Some("7"));

    // Each upstream got the traceparent of the attempt that called it.
    let sent = |upstream: &Upstream| {
        upstream
            .seen()
            .iter()
            .find(|s| s.body["messages"][0]["content"] == "hi")
            .and_then(|s| s.headers.get("traceparent"))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(
        sent(&good),
        format!("00-{TRACE_ID}-{}-01", hex(&answered.span_id))
    );
    assert_eq!(
        sent(&bad),
        format!("00-{TRACE_ID}-{}-01", hex(&failed.span_id))
    );

    // The second request: a new trace rooted at its request span.
    let root = spans
        .iter()
        .find(|s| s.name == "request" && hex(&s.trace_id) != TRACE_ID)
        .unwrap_or_else(|| panic!("no second request span: {spans:#?}"));
    assert!(root.parent_span_id.is_empty());
    let again = good
        .seen()
        .iter()
        .find(|s| s.body["messages"][0]["content"] == "again")
        .and_then(|s| s.headers.get("traceparent"))
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap();
    assert!(
        again.starts_with(&format!("00-{}-", hex(&root.trace_id))),
        "{again}"
    );
    receiver.abort();
}
