//! OpenTelemetry tracing (`[server.otel]`, cargo feature `otel`): request and attempt spans exported over OTLP/HTTP, W3C `traceparent` in and out.
//!
//! - The server's `tracing` spans are the trace: one `request` span per
//!   data-plane request (fields `request_id`, `endpoint`, `model`,
//!   `provider`, `status`, `prompt_tokens`, `completion_tokens`; kind
//!   server) and one `attempt` span per upstream call, its child (fields
//!   `provider`, `model`, `upstream_model`, `attempt`, `status` — `ok` or
//!   the error kind —, `http.response.status_code`, tokens; kind client).
//!   `tracing-opentelemetry` turns the fields into span attributes.
//! - A client's `traceparent` becomes the parent of the request span
//!   ([`set_parent`]); upstream calls carry the *attempt* span's context as
//!   `traceparent` ([`traceparent`]), so an upstream's spans are children of
//!   the attempt that called it. Without an active exporter the client's
//!   `traceparent` is forwarded unchanged.
//! - Export: OTLP over HTTP (protobuf) with a batch processor, to
//!   `[server.otel] endpoint` (the collector's base URL, e.g.
//!   `http://127.0.0.1:4318`; `/v1/traces` is appended), else to
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   when set; with none of them nothing is exported. The other standard
//!   `OTEL_*` variables (headers, timeout, sampler, resource attributes)
//!   apply as the OpenTelemetry SDK reads them.
//! - Wiring: [`crate::telemetry::init_tracing`] (the binary's subscriber)
//!   includes `layer()`, which sees spans only while an exporter is active;
//!   [`crate::Gateway::serve`] starts the exporter ([`start`]) and flushes it
//!   at shutdown. An embedder with its own subscriber adds `layer()` to it.
//!
//! Without the `otel` feature the config still parses; [`start`] warns that
//! an endpoint is ignored and the span helpers do nothing.

use serde::{Deserialize, Serialize};

/// `[server.otel]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// OTLP/HTTP collector base URL (`http://127.0.0.1:4318`); `/v1/traces`
    /// is appended unless the path already ends with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: "switchyard".to_owned(),
        }
    }
}

impl OtelConfig {
    /// Problems as `(field under server.otel, message)`.
    pub fn issues(&self) -> Vec<(&'static str, String)> {
        let mut issues = Vec::new();
        if let Some(endpoint) = &self.endpoint {
            let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !scheme_ok || endpoint.parse::<axum::http::Uri>().is_err() {
                issues.push(("endpoint", format!("'{endpoint}' is not an http(s) URL")));
            }
        }
        if self.service_name.trim().is_empty() {
            issues.push(("service_name", "must not be empty".to_owned()));
        }
        issues
    }

    /// The traces URL for a configured endpoint.
    pub fn traces_url(&self) -> Option<String> {
        self.endpoint.as_deref().map(|endpoint| {
            let base = endpoint.trim_end_matches('/');
            if base.ends_with("/v1/traces") {
                base.to_owned()
            } else {
                format!("{base}/v1/traces")
            }
        })
    }
}

#[cfg(feature = "otel")]
pub use enabled::{OtelGuard, exporting, layer, set_parent, start, traceparent};

#[cfg(not(feature = "otel"))]
pub use disabled::{OtelGuard, exporting, set_parent, start, traceparent};

#[cfg(feature = "otel")]
mod enabled {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{SpanBuilder, TraceContextExt, TracerProvider as _};
    use opentelemetry::{Context, trace::Tracer};
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
    use parking_lot::RwLock;
    use tracing::{Level, Subscriber};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::registry::LookupSpan;

    use super::OtelConfig;

    /// Whether an exporter is active (the layer sees spans only then).
    static ACTIVE: AtomicBool = AtomicBool::new(false);
    /// The active exporter's tracer.
    static TRACER: RwLock<Option<SdkTracer>> = parking_lot::const_rwlock(None);

    /// Whether spans are being exported now: fields recorded on request
    /// spans only for export are skipped otherwise.
    pub fn exporting() -> bool {
        ACTIVE.load(Ordering::Acquire)
    }

    /// A tracer that forwards to the active exporter's tracer, so the
    /// subscriber can be built before the config names an endpoint.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct SwitchTracer;

    fn idle_tracer() -> SdkTracer {
        static IDLE: OnceLock<SdkTracer> = OnceLock::new();
        IDLE.get_or_init(|| {
            SdkTracerProvider::builder()
                .with_sampler(Sampler::AlwaysOff)
                .build()
                .tracer("switchyard")
        })
        .clone()
    }

    impl Tracer for SwitchTracer {
        type Span = opentelemetry_sdk::trace::Span;

        fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> Self::Span {
            let tracer = TRACER.read().clone().unwrap_or_else(idle_tracer);
            tracer.build_with_context(builder, parent_cx)
        }
    }

    /// The `tracing` layer that turns spans (info level and above) into
    /// OpenTelemetry spans while an exporter is active; events are not
    /// exported. Costs one atomic load per span otherwise.
    pub fn layer<S>() -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        fn wanted(meta: &tracing::Metadata<'_>) -> bool {
            meta.is_span() && *meta.level() <= Level::INFO
        }
        let filter =
            tracing_subscriber::filter::dynamic_filter_fn(|meta, _| wanted(meta) && exporting())
                .with_callsite_filter(|meta| {
                    if wanted(meta) {
                        tracing::subscriber::Interest::sometimes()
                    } else {
                        tracing::subscriber::Interest::never()
                    }
                })
                .with_max_level_hint(tracing::level_filters::LevelFilter::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(SwitchTracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter)
    }

    /// The running exporter; [`OtelGuard::shutdown`] flushes it.
    #[derive(Debug)]
    pub struct OtelGuard {
        provider: SdkTracerProvider,
    }

    impl OtelGuard {
        /// Stops exporting and flushes the spans still buffered (blocks
        /// up to the exporter's timeout: call it off the async threads).
        pub fn shutdown(self) {
            ACTIVE.store(false, Ordering::Release);
            TRACER.write().take();
            if let Err(error) = self.provider.shutdown() {
                tracing::warn!(%error, "flushing OpenTelemetry spans failed");
            }
        }
    }

    /// Starts exporting to the configured endpoint, else to the
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` of the environment; `Ok(None)` when
    /// neither is set. Blocks briefly (it builds a blocking HTTP client):
    /// call it off the async threads.
    pub fn start(config: &OtelConfig) -> Result<Option<OtelGuard>, String> {
        let from_env = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
        let url = config.traces_url();
        if url.is_none() && !from_env {
            return Ok(None);
        }
        let mut builder = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        if let Some(url) = &url {
            builder = builder.with_endpoint(url.clone());
        }
        let exporter = builder
            .build()
            .map_err(|error| format!("cannot build the OTLP exporter: {error}"))?;
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        *TRACER.write() = Some(provider.tracer("switchyard"));
        ACTIVE.store(true, Ordering::Release);
        tracing::info!(
            endpoint = url.as_deref().unwrap_or("from OTEL_EXPORTER_OTLP_*"),
            "exporting traces over OTLP/HTTP"
        );
        Ok(Some(OtelGuard { provider }))
    }

    /// Makes the client's `traceparent` the parent of `span` (a new span,
    /// not yet entered). Ignores a malformed header.
    pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
        let Some(traceparent) = traceparent.filter(|_| exporting()) else {
            return;
        };
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }

    /// `span`'s context as a W3C `traceparent`, while an exporter is active.
    pub fn traceparent(span: &tracing::Span) -> Option<String> {
        if !exporting() {
            return None;
        }
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove("traceparent")
    }
}

#[cfg(not(feature = "otel"))]
mod disabled {
    use super::OtelConfig;

    /// Stands in for the exporter of the `otel` feature.
    #[derive(Debug)]
    pub struct OtelGuard;

    impl OtelGuard {
        /// Nothing to flush.
        pub fn shutdown(self) {}
    }

    /// Without the `otel` feature: warns when an endpoint is configured.
    pub fn start(config: &OtelConfig) -> Result<Option<OtelGuard>, String> {
        if config.endpoint.is_some() {
            tracing::warn!(
                "[server.otel] endpoint is set, but this build has no `otel` feature: no traces are exported"
            );
        }
        Ok(None)
    }

    /// Never without the `otel` feature.
    pub fn exporting() -> bool {
        false
    }

    /// Does nothing without the `otel` feature.
    pub fn set_parent(_span: &tracing::Span, _traceparent: Option<&str>) {}

    /// Always `None` without the `otel` feature.
    pub fn traceparent(_span: &tracing::Span) -> Option<String> {
        None
    }
}

/// Starts the exporter for `config` off the async threads; logs and
/// returns `None` on failure (tracing is never a reason not to serve).
pub async fn start_async(config: &OtelConfig) -> Option<OtelGuard> {
    let config = config.clone();
    match tokio::task::spawn_blocking(move || start(&config)).await {
        Ok(Ok(guard)) => guard,
        Ok(Err(error)) => {
            tracing::warn!(%error, "OpenTelemetry export is off");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "OpenTelemetry export is off");
            None
        }
    }
}

/// Flushes and stops the exporter off the async threads.
pub async fn stop_async(guard: Option<OtelGuard>) {
    if let Some(guard) = guard {
        let _ = tokio::task::spawn_blocking(move || guard.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        let config = |e: &str| OtelConfig {
            endpoint: Some(e.to_owned()),
            ..OtelConfig::default()
        };
        assert_eq!(
            config("http://127.0.0.1:4318").traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            config("http://c:4318/").traces_url().as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            config("https://c/v1/traces").traces_url().as_deref(),
            Some("https://c/v1/traces")
        );
        assert_eq!(OtelConfig::default().traces_url(), None);
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        let bad = OtelConfig {
            endpoint: Some("127.0.0.1:4318".to_owned()),
            service_name: " ".to_owned(),
        };
        let issues = bad.issues();
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert!(OtelConfig::default().issues().is_empty());
    }

    #[test]
    fn without_an_exporter_nothing_is_forwarded_or_parented() {
        let span = tracing::info_span!("request");
        set_parent(
            &span,
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        assert_eq!(traceparent(&span), None);
    }
}
