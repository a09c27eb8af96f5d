//! Logs and metrics: the tracing subscriber, the Prometheus recorder behind `/metrics`, and the metric names of SPEC §12.
//!
//! - [`init_tracing`]: `RUST_LOG` (default `info`) to stderr, written by a
//!   writer thread; called by the binary, not by the library (embedders and
//!   tests bring their own).
//! - [`prometheus`]: installs the Prometheus recorder once per process and
//!   returns its handle; `/metrics` serves [`PrometheusHandle::render`].
//! - [`register`]: describes every metric and registers the label-less ones
//!   (counters at 0), plus one zero series per configured deployment for the
//!   labelled ones, so every name appears before any traffic.
//! - [`update_process_metrics`]: process CPU seconds and resident memory,
//!   read from `/proc/self` at every scrape (Linux; elsewhere nothing).
//!
//! Labels stay bounded: `model` is a configured model name or `other`
//! ([`Labels::model`]), so a `"*"` provider never creates a series per
//! client-chosen name.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::sync::OnceLock;

use metrics::{
    Counter, Gauge, Histogram, Unit, describe_counter, describe_gauge, describe_histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchyard_core::ProviderConfig;

/// Requests answered: `{model, provider, status}`.
pub const REQUESTS_TOTAL: &str = "switchyard_requests_total";
/// Whole request duration (to the last byte of a stream).
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
/// Time to the first content of a stream.
pub const TIME_TO_FIRST_TOKEN: &str = "switchyard_time_to_first_token_seconds";
/// Gateway time excluding upstream calls.
pub const OVERHEAD: &str = "switchyard_overhead_seconds";
/// Tokens: `{provider, model, kind}` with kind `prompt` or `completion`.
pub const TOKENS_TOTAL: &str = "switchyard_tokens_total";
/// Cost in USD from configured prices: `{provider, model}`.
pub const COST_TOTAL: &str = "switchyard_cost_usd_total";
/// Requests waiting in the gateway queue.
pub const QUEUE_DEPTH: &str = "switchyard_queue_depth";
/// Time spent queued.
pub const QUEUE_WAIT: &str = "switchyard_queue_wait_seconds";
/// Process CPU time.
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
/// Process resident memory.
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";

/// Histogram buckets for every `*_seconds` metric.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

/// Room in the log writer's buffer: lines queued meanwhile leave in one
/// `write` once the writer thread has drained its queue.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// Lines the log queue holds, about a second of access lines at full load.
/// The queue's slots are allocated and touched up front (32 bytes each):
/// `tracing-appender`'s default of 128k lines added 4 MiB of resident
/// memory to an idle gateway.
const LOG_QUEUE_LINES: usize = 32 * 1024;

/// Initialises logging to stderr: `RUST_LOG`, default `info`. Does nothing
/// (and returns `None`) when a subscriber is already installed.
///
/// Lines are written by `tracing-appender`'s writer thread, not by the
/// request that logs them: at the default level every request logs a line,
/// and a `write` to a log file per line cost about 12 µs of the serving
/// thread's time per request (bench machine, plain requests). The thread
/// writes whatever has queued in one buffered `write`. If the queue
/// (32k lines) is ever full, lines are dropped rather than stalling
/// requests; [`LogGuard`] reports how many when the process ends. Keep the
/// guard alive until the end of `main`: dropping it flushes what is queued.
///
/// With the `otel` feature the subscriber also carries
/// `crate::otel::layer()`, which exports spans (whatever `RUST_LOG` says)
/// once [`crate::Gateway::serve`] has started an exporter.
#[must_use = "dropping the guard stops the log writer"]
pub fn init_tracing() -> Option<LogGuard> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .and(tracing_subscriber::filter::filter_fn(|meta| {
            !is_attempt_span(meta)
        }));
    let stderr = std::io::BufWriter::with_capacity(LOG_BUFFER_BYTES, std::io::stderr());
    let (writer, flush_on_drop) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .thread_name("switchyard-log")
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(stderr);
    let dropped = writer.error_counter();
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        // Plain text, terminal or not (the `ansi` feature is off); control
        // characters in messages are still escaped.
        .with_ansi(false)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(logs);
    #[cfg(feature = "otel")]
    let registry = registry.with(crate::otel::layer());
    registry.try_init().ok()?;
    Some(LogGuard {
        flush_on_drop: Some(flush_on_drop),
        dropped,
    })
}

/// Attempt spans are for OpenTelemetry export, not for log lines: the log
/// formatter rendering their fields cost 13k of a plain request's 118k
/// instructions at the default level (callgrind), and the attempt's own
/// log lines ("attempt failed") carry the provider, model and attempt.
fn is_attempt_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.name() == "attempt" && meta.target() == "switchyard_server::routes"
}

/// Keeps the log writer thread running; on drop, writes out what is
/// queued and says how many lines a full queue dropped, if any.
pub struct LogGuard {
    flush_on_drop: Option<tracing_appender::non_blocking::WorkerGuard>,
    dropped: tracing_appender::non_blocking::ErrorCounter,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        drop(self.flush_on_drop.take());
        let dropped = self.dropped.dropped_lines();
        if dropped > 0 {
            eprintln!("warning: {dropped} log lines were dropped: the log queue was full");
        }
    }
}

/// The process-wide Prometheus handle, installing the recorder on first
/// use. `None` when another metrics recorder was installed first.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot install the Prometheus recorder; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by model, provider and status."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Whole request duration, to the last byte."
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Time from request to the first streamed content."
    );
    describe_histogram!(
        OVERHEAD,
        Unit::Seconds,
        "Time spent in the gateway, excluding upstream calls."
    );
    describe_counter!(
        "switchyard_attempts_total",
        "Attempts on deployments, by provider and outcome."
    );
    describe_counter!(
        "switchyard_provider_switches_total",
        "Switches from one deployment to another during failover."
    );
    describe_counter!(
        "switchyard_panic_selections_total",
        "Deployments picked in panic mode."
    );
    describe_counter!(
        "switchyard_health_checks_total",
        "Active health checks, by provider and result."
    );
    describe_gauge!(
        "switchyard_provider_health",
        "Provider health: 1 healthy, 0.5 degraded, 0 unhealthy."
    );
    describe_gauge!(
        "switchyard_provider_inflight",
        "Requests in flight per provider."
    );
    describe_gauge!("switchyard_provider_load", "Load per provider, 0 to 100.");
    describe_histogram!(
        "switchyard_recovery_seconds",
        Unit::Seconds,
        "Time from fault to recovery."
    );
    describe_counter!(
        TOKENS_TOTAL,
        "Tokens, by provider, model and kind (prompt, completion)."
    );
    describe_gauge!(
        COST_TOTAL,
        "Cost in USD from configured prices, by provider and model (only grows)."
    );
    describe_gauge!(QUEUE_DEPTH, "Requests waiting for a free deployment.");
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time requests waited in the queue."
    );
    describe_counter!(
        "switchyard_stream_malformed_events_total",
        "Malformed stream events skipped."
    );
    describe_gauge!(
        PROCESS_CPU,
        Unit::Seconds,
        "User and system CPU time of the process."
    );
    describe_gauge!(PROCESS_RSS, Unit::Bytes, "Resident memory of the process.");
    describe_counter!(
        crate::cache::CACHE_HITS_TOTAL,
        "Requests answered from the response cache."
    );
    describe_counter!(
        crate::cache::CACHE_MISSES_TOTAL,
        "Cacheable requests the response cache could not answer."
    );
    describe_counter!(
        crate::limits::CLIENT_RATE_LIMITED_TOTAL,
        "Requests refused by client_rpm_limit."
    );
}

/// Registers every metric so that each name appears before any traffic:
/// label-less ones at zero, and one zero series per configured deployment
/// for the labelled ones.
pub fn register(providers: &[ProviderConfig]) {
    for name in [
        "switchyard_provider_switches_total",
        "switchyard_panic_selections_total",
        "switchyard_stream_malformed_events_total",
        crate::cache::CACHE_HITS_TOTAL,
        crate::cache::CACHE_MISSES_TOTAL,
        crate::limits::CLIENT_RATE_LIMITED_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [
        REQUEST_DURATION,
        TIME_TO_FIRST_TOKEN,
        OVERHEAD,
        QUEUE_WAIT,
        "switchyard_recovery_seconds",
    ] {
        // Registering the handle is enough for the series to be rendered.
        let _ = metrics::histogram!(name);
    }
    metrics::gauge!(QUEUE_DEPTH).set(0.0);
    for provider in providers {
        let id = provider.id.clone();
        metrics::counter!("switchyard_attempts_total", "provider" => id.clone(), "outcome" => "ok")
            .increment(0);
        metrics::counter!("switchyard_health_checks_total", "provider" => id.clone(), "result" => "success")
            .increment(0);
        for model in provider.models.keys() {
            let model = if model == "*" {
                "other".to_owned()
            } else {
                model.clone()
            };
            metrics::counter!(REQUESTS_TOTAL, "model" => model.clone(), "provider" => id.clone(), "status" => "200")
                .increment(0);
            for kind in ["prompt", "completion"] {
                metrics::counter!(TOKENS_TOTAL, "provider" => id.clone(), "model" => model.clone(), "kind" => kind)
                    .increment(0);
            }
            metrics::gauge!(COST_TOTAL, "provider" => id.clone(), "model" => model).increment(0.0);
        }
    }
    update_process_metrics();
}

/// Drains the Prometheus recorder's histogram samples every second. The
/// exporter keeps raw samples until upkeep (or a scrape) folds them into
/// buckets, so without this a gateway nobody scrapes grows without bound;
/// and what it holds between two runs grows with the request rate (at
/// 30,000 requests a second, 5 s of samples were megabytes of RSS). The
/// work per sample is the same however often it runs. The task stops
/// when the returned guard is dropped.
pub fn start_upkeep() -> Option<UpkeepGuard> {
    let handle = prometheus()?;
    let task = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
    Some(UpkeepGuard(task))
}

/// Stops the upkeep task when dropped.
#[derive(Debug)]
pub struct UpkeepGuard(tokio::task::JoinHandle<()>);

impl Drop for UpkeepGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Updates process CPU and RSS from `/proc/self` (no-op where absent).
pub fn update_process_metrics() {
    if let Some(cpu) = process_cpu_seconds() {
        // Fractional seconds: the `metrics` counters take integers, so this
        // monotonic value is exported through a gauge.
        metrics::gauge!(PROCESS_CPU).set(cpu);
    }
    if let Some(rss) = process_rss_bytes() {
        metrics::gauge!(PROCESS_RSS).set(rss as f64);
    }
}

/// Clock ticks per second of `/proc/self/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_seconds(&stat)
}

/// utime + stime (fields 14 and 15) in seconds; the command name (field
/// 2) may contain spaces, so fields are counted after its closing `)`.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss_bytes(&status)
}

fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bounded metric labels.
#[derive(Debug)]
pub struct Labels;

impl Labels {
    /// `model` as a label: itself when `configured` says it is a
    /// configured name, else `other`.
    pub fn model(model: &str, configured: impl FnOnce(&str) -> bool) -> &str {
        if configured(model) {
            model
        } else {
            Self::OTHER_MODEL
        }
    }

    /// The model label of requests for models that are not configured.
    pub const OTHER_MODEL: &'static str = "other";
}

/// The labelled series one finished request updates.
#[derive(Clone)]
pub struct RequestSeries {
    /// `switchyard_requests_total{model, provider, status}`.
    pub requests: Counter,
    /// `switchyard_tokens_total{provider, model, kind="prompt"}`.
    pub prompt_tokens: Counter,
    /// `switchyard_tokens_total{provider, model, kind="completion"}`.
    pub completion_tokens: Counter,
    /// `switchyard_cost_usd_total{provider, model}`.
    pub cost: Gauge,
}

/// The label-less histograms every request records.
#[derive(Clone)]
pub struct RequestHistograms {
    /// `switchyard_request_duration_seconds`.
    pub duration: Histogram,
    /// `switchyard_overhead_seconds`.
    pub overhead: Histogram,
    /// `switchyard_time_to_first_token_seconds`.
    pub first_token: Histogram,
}

thread_local! {
    // Registering a labelled series hashes its labels and searches the
    // registry (about 1.5 µs a request); the handles are kept per thread
    // instead. Labels are bounded (configured models and providers, HTTP
    // statuses), so these maps are too. The recorder is installed before
    // the first request, and a handle stays valid for the process's life.
    // foldhash: SipHash cost more than the rest of the lookup for keys this short.
    static SERIES: RefCell<(String, HashMap<String, RequestSeries, foldhash::fast::RandomState>)> =
        RefCell::new((String::new(), HashMap::default()));
    static HISTOGRAMS: OnceCell<RequestHistograms> = const { OnceCell::new() };
}

/// Runs `record` with the series of `{model, provider, status}` (registered
/// on first use) and the label-less request histograms. Lent, not cloned:
/// a handle is an `Arc`, and cloning and dropping seven of them cost
/// fourteen atomic read-modify-writes a request.
pub fn with_request_metrics<R>(
    model: &str,
    provider: &str,
    status: &str,
    record: impl FnOnce(&RequestSeries, &RequestHistograms) -> R,
) -> R {
    HISTOGRAMS.with(|histograms| {
        let histograms = histograms.get_or_init(|| RequestHistograms {
            duration: metrics::histogram!(REQUEST_DURATION),
            overhead: metrics::histogram!(OVERHEAD),
            first_token: metrics::histogram!(TIME_TO_FIRST_TOKEN),
        });
        SERIES.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (key, map) = &mut *guard;
            key.clear();
            for part in [model, "\u{0}", provider, "\u{0}", status] {
                key.push_str(part);
            }
            if let Some(series) = map.get(key.as_str()) {
                return record(series, histograms);
            }
            let series = map
                .entry(key.clone())
                .or_insert_with(|| register_series(model, provider, status));
            record(series, histograms)
        })
    })
}

/// Registers the series of `{model, provider, status}` with the recorder.
fn register_series(model: &str, provider: &str, status: &str) -> RequestSeries {
    let (model, provider) = (model.to_owned(), provider.to_owned());
    RequestSeries {
        requests: metrics::counter!(REQUESTS_TOTAL,
            "model" => model.clone(), "provider" => provider.clone(), "status" => status.to_owned()),
        prompt_tokens: metrics::counter!(TOKENS_TOTAL,
            "provider" => provider.clone(), "model" => model.clone(), "kind" => "prompt"),
        completion_tokens: metrics::counter!(TOKENS_TOTAL,
            "provider" => provider.clone(), "model" => model.clone(), "kind" => "completion"),
        cost: metrics::gauge!(COST_TOTAL, "provider" => provider, "model" => model),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn cpu_seconds_are_read_after_the_command_name() {
        let stat = "4242 (my (odd) cmd) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0";
        assert_eq!(parse_cpu_seconds(stat), Some(4.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmRSS:\t    2048 kB\nThreads: 3\n";
        assert_eq!(parse_rss_bytes(status), Some(2048 * 1024));
    }

    #[test]
    fn model_labels_are_bounded() {
        let configured = ["a", "gpt-4o"];
        let is_configured = |m: &str| configured.contains(&m);
        assert_eq!(Labels::model("gpt-4o", is_configured), "gpt-4o");
        assert_eq!(Labels::model("random-123", is_configured), "other");
    }

    #[test]
    fn process_metrics_read_on_linux() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(process_cpu_seconds().is_some());
            assert!(process_rss_bytes().unwrap() > 0);
        }
    }
}
