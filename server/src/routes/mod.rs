//! The HTTP handlers (SPEC §11) and what they share: request ids, body parsing, failover options, response headers and per-request metrics.
//!
//! Handlers only translate between HTTP and the manager: routing,
//! failover and health live in `switchyard-core`. Each data-plane request:
//! 1. reads its body (413 over `max_body_bytes`) and parses it into core's
//!    types (400 naming the field on a wrong or missing one);
//! 2. builds [`FailoverOptions`] from the request ([`options`]);
//! 3. runs the manager's failover with an `op` that sends the attempt's
//!    `upstream_model` to the attempt's provider;
//! 4. answers with the client-facing model that answered and the
//!    `x-switchyard-*` headers ([`success_headers`]), recording metrics
//!    through a [`Recorder`] that counts a dropped request as `cancelled`.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod health;
pub mod messages;
pub mod metrics;
pub mod models;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use switchyard_core::{
    Attempt, ByteString, FailoverOptions, FailoverResult, Pricing, ProviderError, RequestType,
    Usage,
};

use crate::app::AppState;
use crate::error::{ApiError, Shape};
use crate::telemetry::{self, Labels};

/// Header carrying the client's region preference (SPEC §4.1).
pub const REGION_HEADER: &str = "x-switchyard-region";

/// Identifiers of one request, from its headers.
#[derive(Clone, Debug)]
pub struct RequestMeta {
    /// The client's `x-request-id` (if sane), else a generated one;
    /// shared with the failover options and every attempt's context, and
    /// the `x-request-id` headers (answer and upstream) share its bytes.
    pub request_id: ByteString,
    /// The client's `traceparent`, forwarded upstream.
    pub traceparent: Option<String>,
    /// `x-switchyard-region`.
    pub region: Option<String>,
}

/// Extracted from the request's headers in place: taking a `HeaderMap`
/// instead would copy every header of every request.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::from_headers(&parts.headers))
    }
}

/// `x-request-id`, read from requests and set on every answer.
static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

impl RequestMeta {
    /// Reads the ids from `headers`, generating a request id when absent.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        // Static names: a `&str` name is parsed and validated on every lookup.
        static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
        static REGION: HeaderName = HeaderName::from_static(REGION_HEADER);
        // One pass over the few headers a request has: a lookup by a
        // custom name hashes its every byte (three lookups cost more than
        // the pass). The first value of a name counts, as with `get`.
        let [mut request_id, mut traceparent, mut region] = [None::<&HeaderValue>; 3];
        for (name, value) in headers {
            let slot = if name == REQUEST_ID_HEADER {
                &mut request_id
            } else if name == TRACEPARENT {
                &mut traceparent
            } else if name == REGION {
                &mut region
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        let text = |value: Option<&HeaderValue>| {
            value
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| {
                    !v.is_empty() && v.len() <= 256 && v.bytes().all(|b| b.is_ascii_graphic())
                })
                .map(str::to_owned)
        };
        Self {
            request_id: text(request_id).map_or_else(new_request_id, ByteString::from),
            traceparent: text(traceparent),
            region: text(region),
        }
    }
}

/// A fresh request id: `req_` and 32 hex digits.
pub fn new_request_id() -> ByteString {
    // Written digit by digit: `format!` of a u128 cost ~1,000 instructions.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = rand::random::<u128>();
    let mut id = [0u8; 36];
    id[..4].copy_from_slice(b"req_");
    for (at, shift) in (4..).zip((0..32u32).rev()) {
        let digit = (random >> (shift * 4)) & 0xf;
        id[at] = HEX[digit as usize];
    }
    // One allocation, its clones counted references: a `Bytes` made from
    // a `Vec` would allocate again at its first clone.
    ByteString::try_from(Bytes::from_owner(id)).unwrap_or_else(|_| ByteString::from_static("req_"))
}

/// The body bytes, or 413 / 400 in `shape`.
pub fn read_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
    shape: Shape,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit).with_shape(shape)
        } else {
            unread_body(&rejection, &rejection.body_text(), shape)
        }
    })
}

/// Why a body could not be read, other than its size: 408 when it stopped
/// arriving ([`BodyStalled`](crate::connections::BodyStalled) in `error`'s
/// chain), else 400 saying `what`.
pub fn unread_body(
    error: &(dyn std::error::Error + 'static),
    what: &str,
    shape: Shape,
) -> ApiError {
    match crate::connections::BodyStalled::find(error) {
        Some(stall) => ApiError::body_stalled(stall.0).with_shape(shape),
        None => ApiError::invalid_request(format!("Could not read the request body: {what}"))
            .with_shape(shape),
    }
}

/// Parses a JSON body into `T`: malformed JSON and wrong or missing fields
/// are 400s whose message (and `param`) name the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Tracking the path costs on every field of every request; only a
    // failed parse needs it, so that one is parsed again to name the field.
    match switchyard_core::json::from_bytes(bytes) {
        Ok(value) => Ok(value),
        Err(_) => Err(parse_json_error::<T>(bytes)),
    }
}

#[cold]
fn parse_json_error<T: DeserializeOwned>(bytes: &[u8]) -> ApiError {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Err(error) => {
            let path = error.path().to_string();
            json_error(&error.into_inner(), &path)
        }
        Ok(_) => match deserializer.end() {
            Err(error) => json_error(&error, "."),
            Ok(()) => {
                ApiError::invalid_request("We could not parse the JSON body of your request.")
                    .with_code("invalid_json")
            }
        },
    }
}

fn json_error(error: &serde_json::Error, path: &str) -> ApiError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::invalid_request(format!(
            "We could not parse the JSON body of your request: {error}"
        ))
        .with_code("invalid_json"),
        Category::Data => {
            let message = strip_position(&error.to_string());
            let mut api = if path == "." || path.is_empty() {
                ApiError::invalid_request(format!("Invalid request: {message}"))
            } else {
                ApiError::invalid_request(format!("Invalid request at `{path}`: {message}"))
                    .with_param(path)
            };
            if let Some(field) = missing_field(&message) {
                let param = if path == "." || path.is_empty() {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
                api.param = Some(param);
            }
            api
        }
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Failover options for a request.
pub fn options(
    model: &str,
    request_type: RequestType,
    meta: &RequestMeta,
    body_region: Option<&str>,
    estimated_input_tokens: u32,
    max_output_tokens: Option<u32>,
) -> FailoverOptions {
    let mut options = FailoverOptions::new(model, request_type);
    options.region = meta
        .region
        .clone()
        .or_else(|| body_region.map(str::to_owned));
    options.estimated_input_tokens = estimated_input_tokens;
    options.max_output_tokens = max_output_tokens;
    options.request_id = Some(meta.request_id.clone());
    options.traceparent = meta.traceparent.clone();
    options
}

/// The tracing span of one data-plane request (the parent of its attempt
/// spans), child of the client's `traceparent` when OpenTelemetry export
/// is on. While spans are exported, [`Recorder`] fills `model`, `stream`,
/// `provider`, `status` and the token counts (log lines then show them in
/// the span context too); otherwise log lines get only the id and endpoint
/// from it, and the access line carries the rest.
pub fn request_span(endpoint: &'static str, meta: &RequestMeta) -> tracing::Span {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        "request",
        request_id = %meta.request_id,
        endpoint,
        model = Empty,
        stream = Empty,
        native_only = Empty,
        provider = Empty,
        status = Empty,
        prompt_tokens = Empty,
        completion_tokens = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
    );
    crate::otel::set_parent(&span, meta.traceparent.as_deref());
    span
}

/// The tracing span of one attempt, with structured fields. With
/// OpenTelemetry export on, the attempt's upstream call carries this span's
/// context as `traceparent` (else the client's, unchanged). Run the call
/// with [`InAttempt::in_attempt`] so the outcome is recorded on the span.
pub fn attempt_span(attempt: &mut Attempt) -> tracing::Span {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        "attempt",
        provider = %attempt.provider_id,
        model = %attempt.model,
        upstream_model = %attempt.upstream_model,
        attempt = attempt.attempt_no,
        fallback = attempt.is_fallback,
        status = Empty,
        http.response.status_code = Empty,
        prompt_tokens = Empty,
        completion_tokens = Empty,
        otel.kind = "client",
        otel.status_code = Empty,
    );
    if let Some(traceparent) = crate::otel::traceparent(&span) {
        attempt.ctx.traceparent = Some(traceparent);
    }
    span
}

/// Settles the provider's TPM limit with a non-stream answer's real usage
/// and records the tokens on the current (attempt) span.
pub fn report_usage(attempt: &Attempt, usage: &Usage) {
    attempt.report_usage(usage);
    // The attempt span exists only while spans are exported; otherwise the
    // current span is the request's, whose access line has the tokens.
    if crate::otel::exporting() {
        let span = tracing::Span::current();
        span.record("prompt_tokens", usage.prompt_tokens);
        span.record("completion_tokens", usage.completion_tokens);
    }
}

/// A non-stream attempt's answer with its deployment's `pricing`, its usage
/// reported first (see [`report_usage`]).
pub fn priced<T: Answer>(
    attempt: &Attempt,
    answer: T,
    pricing: Pricing,
) -> Result<(T, Pricing), ProviderError> {
    if let Some(usage) = answer.usage() {
        report_usage(attempt, usage);
    }
    Ok((answer, pricing))
}

/// Runs an attempt's upstream call inside its span and records the outcome
/// there: `status` is `ok` or the error kind (`abandoned` when the manager
/// dropped the call: a timeout, or the client went away).
pub trait InAttempt<T>: Future<Output = Result<T, ProviderError>> + Sized {
    /// The call, instrumented with `span`.
    fn in_attempt(self, span: tracing::Span) -> impl Future<Output = Result<T, ProviderError>> {
        let mut outcome = AttemptOutcome {
            span: span.clone(),
            done: false,
        };
        // A combinator: an async block awaiting `self` would hold it twice.
        // Dropped unfinished, the closure drops `outcome`: `abandoned`.
        futures_util::FutureExt::map(tracing::Instrument::instrument(self, span), move |result| {
            outcome.record(&result);
            result
        })
    }
}

impl<T, F: Future<Output = Result<T, ProviderError>>> InAttempt<T> for F {}

/// Records an attempt's outcome on its span, `abandoned` if dropped first.
struct AttemptOutcome {
    span: tracing::Span,
    done: bool,
}

impl AttemptOutcome {
    fn record<T>(&mut self, result: &Result<T, ProviderError>) {
        self.done = true;
        match result {
            Ok(_) => {
                self.span.record("status", "ok");
                self.span.record("http.response.status_code", 200);
            }
            Err(error) => {
                self.span.record("status", error.kind());
                if let Some(status) = error.status() {
                    self.span.record("http.response.status_code", status);
                }
                self.span.record("otel.status_code", "ERROR");
            }
        }
    }
}

impl Drop for AttemptOutcome {
    fn drop(&mut self) {
        if !self.done {
            self.span.record("status", "abandoned");
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

/// The error sent in-band when a stream fails after content was sent: it
/// names the deployment and the error kind, never the upstream's body.
pub fn stream_error(error: &ProviderError, provider: &str, model: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!(
            "The stream from {provider}/{model} failed after it had started ({}); the response is incomplete.",
            error.kind()
        ),
    )
    .with_code(error.kind())
}

/// Adds `x-request-id` to any response.
pub fn with_request_id(mut response: Response, meta: &RequestMeta) -> Response {
    if let Ok(value) = HeaderValue::from_maybe_shared(meta.request_id.as_bytes().clone()) {
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER.clone(), value);
    }
    response
}

/// Who answered a request: for the `x-switchyard-*` headers and metrics.
#[derive(Clone, Debug)]
pub struct Answered {
    /// Provider id.
    pub provider_id: Arc<str>,
    /// Client-facing model that answered (may be a fallback).
    pub model: Arc<str>,
    /// Attempts made.
    pub attempts: u32,
}

impl Answered {
    /// Splits a failover result into its value and who answered.
    pub fn split<T>(result: FailoverResult<T>) -> (T, Self) {
        let FailoverResult {
            result,
            provider_id,
            model,
            attempts,
            ..
        } = result;
        (
            result,
            Self {
                provider_id,
                model,
                attempts,
            },
        )
    }
}

/// Reads an OpenAI-shaped body (within `max_body_bytes`), logs it only
/// when `log_bodies` is on, parses it, and checks that it names a model.
pub fn parse_request<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    model_of: impl Fn(&T) -> &str,
) -> Result<T, ApiError> {
    parse_request_keeping_body(state, body, model_of).map(|(request, _)| request)
}

/// [`parse_request`], also returning the body's bytes (to forward as they are).
pub fn parse_request_keeping_body<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    model_of: impl Fn(&T) -> &str,
) -> Result<(T, Bytes), ApiError> {
    let body = read_body(body, state.server.max_body_bytes, Shape::OpenAi);
    parse_read_body(state, body, model_of)
}

/// [`parse_request_keeping_body`] of a body already read (or not: its
/// read error passes through).
pub fn parse_read_body<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, ApiError>,
    model_of: impl Fn(&T) -> &str,
) -> Result<(T, Bytes), ApiError> {
    let bytes = body?;
    if state.server.log_bodies {
        tracing::debug!(body = %String::from_utf8_lossy(&bytes), "request body");
    }
    let request: T = parse_json(&bytes)?;
    if model_of(&request).trim().is_empty() {
        return Err(
            ApiError::invalid_request("You must provide a model parameter.").with_param("model"),
        );
    }
    Ok((request, bytes))
}

/// A non-stream answer the gateway relabels and meters.
pub trait Answer {
    /// The upstream's usage, if reported.
    fn usage(&self) -> Option<&Usage>;
    /// The JSON response, its `model` set to the client-facing `model`.
    fn into_response_as(self, model: &str) -> Response;
}

macro_rules! answer {
    ($($ty:ty),*) => {$(
        impl Answer for $ty {
            fn usage(&self) -> Option<&Usage> {
                self.usage.as_ref()
            }
            fn into_response_as(mut self, model: &str) -> Response {
                model.clone_into(&mut self.model);
                axum::Json(self).into_response()
            }
        }
    )*};
}

impl Answer for switchyard_core::RawChatResponse {
    fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }
    fn into_response_as(self, model: &str) -> Response {
        // Built directly: `(headers, Bytes).into_response()` sets
        // `content-type` twice, octet-stream first.
        let mut response = Response::new(axum::body::Body::from(self.body_with_model(model)));
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

answer!(
    switchyard_core::ChatResponse,
    switchyard_core::CompletionResponse,
    switchyard_core::EmbeddingsResponse
);

/// The response to a non-stream failover run: the body relabelled with the
/// model that answered, the §5 headers, the request metered; or the error.
pub fn respond<T: Answer>(
    state: &AppState,
    mut recorder: Recorder,
    outcome: Result<FailoverResult<(T, Pricing)>, switchyard_core::ManagerError>,
) -> Response {
    match outcome {
        Ok(result) => {
            let ((body, pricing), answered) = Answered::split(result);
            recorder.answered_by(&answered.provider_id, &answered.model, pricing);
            if let Some(usage) = body.usage() {
                recorder.usage(usage);
            }
            let mut response = body.into_response_as(&answered.model);
            success_headers(&mut response, &answered);
            recorder.finish("200");
            response
        }
        Err(error) => fail(recorder, ApiError::from_manager(&error, &state.redactor)),
    }
}

/// `x-switchyard-provider`, `-model` and `-attempts` of a success.
pub fn success_headers(response: &mut Response, answered: &Answered) {
    // Built once: `from_static` outside a const context validates the
    // name on every call.
    static PROVIDER: HeaderName = HeaderName::from_static("x-switchyard-provider");
    static MODEL: HeaderName = HeaderName::from_static("x-switchyard-model");
    static ATTEMPTS: HeaderName = HeaderName::from_static("x-switchyard-attempts");
    let headers = response.headers_mut();
    let pairs = [
        (&PROVIDER, &*answered.provider_id),
        (&MODEL, &*answered.model),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), value);
        }
    }
    // The usual counts are static values: `From<u32>` formats into a
    // fresh allocation. A `static`, not a `const`: a `const` array is
    // built on the stack at each use (a 400-byte copy per answer).
    static COUNTS: [HeaderValue; 10] = [
        HeaderValue::from_static("0"),
        HeaderValue::from_static("1"),
        HeaderValue::from_static("2"),
        HeaderValue::from_static("3"),
        HeaderValue::from_static("4"),
        HeaderValue::from_static("5"),
        HeaderValue::from_static("6"),
        HeaderValue::from_static("7"),
        HeaderValue::from_static("8"),
        HeaderValue::from_static("9"),
    ];
    let attempts = usize::try_from(answered.attempts)
        .ok()
        .and_then(|n| COUNTS.get(n).cloned())
        .unwrap_or_else(|| HeaderValue::from(answered.attempts));
    headers.insert(ATTEMPTS.clone(), attempts);
}

/// Time spent inside upstream calls during one request (for the overhead
/// metric). Counted in place: only a stream, whose calls outlive the
/// handler, makes a shared count ([`Self::share`]), so a non-stream
/// request allocates none.
#[derive(Debug, Default)]
pub struct UpstreamTimer {
    own: AtomicU64,
    shared: OnceLock<Arc<AtomicU64>>,
}

impl UpstreamTimer {
    /// Adds `took`.
    pub fn add(&self, took: Duration) {
        add_to(&self.own, took);
    }

    /// Starts timing one call; the time is added when the span drops
    /// (so a call cut short by a timeout still counts). Lent: sharing the
    /// timer would cost two atomic read-modify-writes.
    pub fn span(&self) -> UpstreamSpan<'_> {
        UpstreamSpan {
            total: SpanTotal::Lent(&self.own),
            started: Instant::now(),
        }
    }

    /// A count the calls that outlive the handler (a stream's) add to;
    /// [`Self::total`] includes it.
    pub fn share(&self) -> SharedUpstreamTimer {
        SharedUpstreamTimer(Arc::clone(self.shared.get_or_init(Arc::default)))
    }

    /// Total so far.
    pub fn total(&self) -> Duration {
        let shared = self
            .shared
            .get()
            .map_or(0, |shared| shared.load(Ordering::Relaxed));
        Duration::from_nanos(self.own.load(Ordering::Relaxed).saturating_add(shared))
    }
}

/// An [`UpstreamTimer`]'s count shared with calls that outlive the handler.
#[derive(Clone, Debug)]
pub struct SharedUpstreamTimer(Arc<AtomicU64>);

impl SharedUpstreamTimer {
    /// Adds `took`.
    pub fn add(&self, took: Duration) {
        add_to(&self.0, took);
    }

    /// [`UpstreamTimer::span`] for a call that outlives the handler.
    pub fn into_span(self) -> UpstreamSpan<'static> {
        UpstreamSpan {
            total: SpanTotal::Shared(self.0),
            started: Instant::now(),
        }
    }
}

/// One timed upstream call; adds its duration on drop.
#[derive(Debug)]
pub struct UpstreamSpan<'a> {
    total: SpanTotal<'a>,
    started: Instant,
}

/// The total an [`UpstreamSpan`] adds to.
#[derive(Debug)]
enum SpanTotal<'a> {
    Lent(&'a AtomicU64),
    Shared(Arc<AtomicU64>),
}

impl Drop for UpstreamSpan<'_> {
    fn drop(&mut self) {
        let total = match &self.total {
            SpanTotal::Lent(total) => total,
            SpanTotal::Shared(total) => &**total,
        };
        add_to(total, self.started.elapsed());
    }
}

fn add_to(total: &AtomicU64, took: Duration) {
    let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
    total.fetch_add(nanos, Ordering::Relaxed);
}

/// Records one request's metrics exactly once: when finished, or as
/// `cancelled` when dropped unfinished (the client went away).
#[derive(Debug)]
pub struct Recorder {
    state: AppState,
    model: String,
    provider: String,
    started: Instant,
    upstream: UpstreamTimer,
    first_token: Option<Duration>,
    usage: Option<Usage>,
    pricing: Pricing,
    stream: bool,
    /// The model asked for, when it is no configured one (its label is
    /// `other`): the access line names it, cut to [`LOGGED_MODEL_CHARS`].
    unknown_model: Option<String>,
    /// The request span (current when the recorder starts): gets `provider`,
    /// `status` and tokens while spans are exported.
    span: tracing::Span,
    done: bool,
    enabled: bool,
}

impl Recorder {
    /// Starts recording the request whose span is current.
    pub fn start(state: &AppState) -> Self {
        Self {
            state: state.clone(),
            // Room for the usual names, so setting them reuses these buffers.
            model: label_buffer(Labels::OTHER_MODEL),
            provider: label_buffer("none"),
            started: Instant::now(),
            upstream: UpstreamTimer::default(),
            first_token: None,
            usage: None,
            pricing: Pricing::default(),
            stream: false,
            unknown_model: None,
            span: tracing::Span::current(),
            done: false,
            enabled: state.manager.options().enable_metrics,
        }
    }

    /// The timer upstream calls add to.
    pub fn upstream(&self) -> &UpstreamTimer {
        &self.upstream
    }

    /// The requested model and whether the answer streams: for the access
    /// line, and on the request span when spans are exported.
    pub fn set_request(&mut self, model: &str, stream: bool) {
        self.stream = stream;
        self.set_model(model);
        if self.model == Labels::OTHER_MODEL && model != Labels::OTHER_MODEL {
            self.unknown_model = Some(model.chars().take(LOGGED_MODEL_CHARS).collect());
        }
        if crate::otel::exporting() {
            self.span.record("model", model);
            self.span.record("stream", stream);
        }
    }

    /// The requested (later: answering) model, as a bounded label.
    fn set_model(&mut self, model: &str) {
        // Into the existing buffer: a label per request without a new string.
        Labels::model(model, |m| self.state.manager.serves_model(m)).clone_into(&mut self.model);
    }

    /// The provider and model that answered.
    pub fn answered_by(&mut self, provider: &str, model: &str, pricing: Pricing) {
        provider.clone_into(&mut self.provider);
        // The requested model's label stands when that model answered
        // (nearly always): no second lookup of the configured names.
        if self.model != model {
            self.set_model(model);
        }
        self.pricing = pricing;
    }

    /// The first streamed content was sent now.
    pub fn first_token(&mut self) {
        if self.first_token.is_none() {
            self.first_token = Some(self.started.elapsed());
        }
    }

    /// Token usage of the answer (the last one reported wins).
    pub fn usage(&mut self, usage: &Usage) {
        self.usage = Some(usage.clone());
    }

    /// Records the request with `status` (an HTTP status or `stream_error`).
    pub fn finish(mut self, status: &str) {
        self.record(status);
    }

    fn record(&mut self, status: &str) {
        if self.done {
            return;
        }
        self.done = true;
        let total = self.started.elapsed();
        // Recorded on the span only for export: each field recorded is
        // formatted again into the span's log context, and the access
        // line below carries them all anyway.
        if crate::otel::exporting() {
            self.span.record("provider", self.provider.as_str());
            self.span.record("status", status);
            if status != "200" {
                self.span.record("otel.status_code", "ERROR");
            }
            if let Some(usage) = &self.usage {
                self.span.record("prompt_tokens", usage.prompt_tokens);
                self.span
                    .record("completion_tokens", usage.completion_tokens);
            }
        }
        // The access line, with its request span (request id, endpoint) as
        // the parent, also when a stream ends outside the handler's span.
        tracing::info!(
            parent: &self.span,
            model = %self.model,
            requested_model = self.unknown_model.as_deref(),
            stream = self.stream,
            provider = %self.provider,
            status,
            prompt_tokens = self.usage.as_ref().map(|u| u.prompt_tokens),
            completion_tokens = self.usage.as_ref().map(|u| u.completion_tokens),
            duration_ms = u64::try_from(total.as_millis()).unwrap_or(u64::MAX),
            "request finished"
        );
        if !self.enabled {
            return;
        }
        // Overhead: time to first content for streams (the rest is the
        // upstream generating), else the whole request, minus upstream time.
        let measured = self.first_token.unwrap_or(total);
        let overhead = measured.saturating_sub(self.upstream.total());
        let usage = self.usage.as_ref();
        let cost = usage.map_or(0.0, |usage| {
            self.pricing
                .cost(usage.prompt_tokens, usage.completion_tokens)
        });
        let first_token = self.first_token;
        telemetry::with_request_metrics(
            &self.model,
            &self.provider,
            status,
            |series, histograms| {
                series.requests.increment(1);
                histograms.duration.record(total.as_secs_f64());
                histograms.overhead.record(overhead.as_secs_f64());
                if let Some(first) = first_token {
                    histograms.first_token.record(first.as_secs_f64());
                }
                if let Some(usage) = usage {
                    series.prompt_tokens.increment(usage.prompt_tokens);
                    series.completion_tokens.increment(usage.completion_tokens);
                    if cost > 0.0 {
                        // The exporter's counters are integers: cost is kept in
                        // a float gauge that only ever grows.
                        series.cost.increment(cost);
                    }
                }
            },
        );
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            self.record("cancelled");
        }
    }
}

/// What a handler's synchronous start hands on: the boxed rest of a
/// request that got past its checks, else its (recorded) error response.
pub type Answering = futures_util::future::Either<
    std::future::Ready<Response>,
    std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>,
>;

/// An error response, recorded.
pub fn fail(recorder: Recorder, error: ApiError) -> Response {
    recorder.finish(error.status.as_str());
    error.into_response()
}

/// How much of an unknown model's name the access line keeps: the name is
/// the client's, of any length.
const LOGGED_MODEL_CHARS: usize = 100;

/// A metric label's string, with room to be overwritten by a longer name.
fn label_buffer(initial: &str) -> String {
    let mut label = String::with_capacity(initial.len().max(48));
    label.push_str(initial);
    label
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use switchyard_core::ChatRequest;

    use super::*;

    #[test]
    fn malformed_json_is_a_400_invalid_json() {
        let err = parse_json::<ChatRequest>(b"{\"model\": ").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.code.as_deref(), Some("invalid_json"));
        let err = parse_json::<ChatRequest>(br#"{"model": "m", "messages": []} x"#).unwrap_err();
        assert_eq!(err.code.as_deref(), Some("invalid_json"));
    }

    #[test]
    fn missing_and_wrong_fields_are_named() {
        let err = parse_json::<ChatRequest>(br#"{"model": "m"}"#).unwrap_err();
        assert!(
            err.message.contains("missing field `messages`"),
            "{}",
            err.message
        );
        assert_eq!(err.param.as_deref(), Some("messages"));
        let err =
            parse_json::<ChatRequest>(br#"{"model": "m", "messages": [], "max_tokens": "lots"}"#)
                .unwrap_err();
        assert!(err.message.contains("max_tokens"), "{}", err.message);
        assert_eq!(err.param.as_deref(), Some("max_tokens"));
        let err = parse_json::<ChatRequest>(br#"{"model": 5, "messages": []}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("model"));
    }

    #[test]
    fn request_ids_are_echoed_or_generated() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        headers.insert("traceparent", HeaderValue::from_static("00-aa-bb-01"));
        headers.insert(REGION_HEADER, HeaderValue::from_static("eu"));
        let meta = RequestMeta::from_headers(&headers);
        assert_eq!(&*meta.request_id, "abc-123");
        assert_eq!(meta.traceparent.as_deref(), Some("00-aa-bb-01"));
        assert_eq!(meta.region.as_deref(), Some("eu"));
        let generated = RequestMeta::from_headers(&HeaderMap::new()).request_id;
        assert!(
            generated.starts_with("req_") && generated.len() == 36,
            "{generated}"
        );
        assert!(
            generated[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(generated, new_request_id());

        // Among other headers, the first value of a repeated one counts;
        // an unusable id is replaced and an unusable region ignored.
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-request-id", HeaderValue::from_static("first"));
        headers.append("x-request-id", HeaderValue::from_static("second"));
        headers.insert("x-other", HeaderValue::from_static("x"));
        headers.append(REGION_HEADER, HeaderValue::from_static("bad region"));
        headers.append(REGION_HEADER, HeaderValue::from_static("us"));
        let meta = RequestMeta::from_headers(&headers);
        assert_eq!(&*meta.request_id, "first");
        assert_eq!(meta.traceparent, None);
        assert_eq!(meta.region, None);
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("has space"));
        let meta = RequestMeta::from_headers(&headers);
        assert!(meta.request_id.starts_with("req_"), "{}", meta.request_id);
    }

    #[test]
    fn a_shared_count_is_made_once_and_adds_to_the_total() {
        let timer = UpstreamTimer::default();
        timer.add(Duration::from_millis(3));
        assert_eq!(timer.total(), Duration::from_millis(3));
        timer.share().add(Duration::from_millis(5));
        // A second share is the same count, not a new one.
        let shared = timer.share();
        shared.add(Duration::from_millis(2));
        assert_eq!(timer.total(), Duration::from_millis(10));
        drop(shared.into_span());
        assert!(timer.total() >= Duration::from_millis(10));
    }

    #[test]
    fn upstream_spans_add_on_drop() {
        let timer = UpstreamTimer::default();
        drop(timer.span());
        std::thread::sleep(Duration::from_millis(2));
        {
            let _span = timer.span();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(timer.total() >= Duration::from_millis(5));
    }
}
