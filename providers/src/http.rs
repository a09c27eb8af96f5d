//! The HTTP layer every adapter shares: one pooled client per provider, and status → classified error.
//!
//! - [`HttpOptions`] / [`build_client`]: keep-alive pool with idle cleanup,
//!   a per-host idle cap, connect timeout, TCP keep-alive, HTTP/1.1 and
//!   HTTP/2 (ALPN over TLS), and **no redirects followed** (SPEC §7): a 3xx
//!   is a protocol error, never a silent hop to another host. The client
//!   itself is in [`crate::client`].
//! - [`Upstream`]: one provider's client, base URL, credentials (sent as
//!   sensitive header values, never logged) and extra headers, plus the
//!   calls adapters make. Per-request timeouts come from the manager's
//!   [`CallContext`].
//! - [`error_from_response`]: status, the provider's error body (type,
//!   code, param), `Retry-After` (seconds or an HTTP date) and the
//!   `x-ratelimit-*` / `anthropic-ratelimit-*` reset headers become a
//!   classified [`ProviderError`]; the configured key is redacted from
//!   every message.
//! - [`transport_error`]: transport failures become `Connect` (refused, DNS,
//!   TLS), `Reset` (closed or reset before a response) or a timeout.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use futures_util::future::Either;
use http::header::{
    AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT,
};
use http::{Method, Uri};
use switchyard_core::config::REDACTED;
use switchyard_core::{
    CallContext, ConfigError, ProviderError, Secret, TimeoutPhase, UpstreamCategory, UpstreamError,
};

use crate::client::{HttpClient, Transport, TransportError, UpstreamRequest, UpstreamResponse};
use crate::wire::ErrorFields;

/// Connection-pool settings shared by every provider a factory builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// TCP keep-alive probes on open connections.
    pub tcp_keepalive: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            tcp_keepalive: Duration::from_secs(30),
        }
    }
}

/// Builds one provider's pooled client. Redirects are never followed.
pub fn build_client(options: &HttpOptions) -> Result<HttpClient, ConfigError> {
    crate::client::build(options)
}

/// Sent as `User-Agent` on every upstream request.
const SWITCHYARD_USER_AGENT: &str = concat!("switchyard/", env!("CARGO_PKG_VERSION"));

/// Replaces every occurrence of the secret in `text` with `[redacted]`.
pub fn redact(text: &str, secret: Option<&Secret>) -> String {
    match secret.map(Secret::expose) {
        Some(key) if !key.is_empty() && text.contains(key) => text.replace(key, REDACTED),
        _ => text.to_owned(),
    }
}

/// One provider's HTTP side: client, base URL, credentials and headers.
#[derive(Clone)]
pub struct Upstream {
    provider_id: String,
    base_url: String,
    // Parsed once: parsing a URL string per request cost ~20k instructions.
    endpoints: Vec<(&'static str, Uri)>,
    transport: Transport,
    headers: HeaderMap,
    secret: Option<Secret>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("provider_id", &self.provider_id)
            .field("base_url", &self.base_url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("api_key", &self.secret.as_ref().map(|_| REDACTED))
            .finish()
    }
}

/// The `Host` header of a plain-HTTP base URL, made once per provider:
/// hyper's client would otherwise format `host:port` into a new string on
/// every HTTP/1 request. Only for `http://`: over TLS the connection may
/// negotiate HTTP/2, which carries the authority as `:authority`, and
/// there hyper sends no `Host` at all.
fn plain_http_host(url: &url::Url) -> Option<HeaderValue> {
    if url.scheme() != "http" {
        return None;
    }
    let host = url.host_str()?;
    let value = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    HeaderValue::from_str(&value).ok()
}

/// The request target for `url`: origin-form (`/v1/chat/completions`) on
/// a plain-HTTP connection of the host's pool, which sends it as it is,
/// and absolute for hyper-util's client, which picks the connection by it.
fn target_uri(transport: &Transport, url: &str) -> Result<Uri, http::uri::InvalidUri> {
    let uri = url.parse::<Uri>()?;
    Ok(match (transport, uri.path_and_query()) {
        (Transport::Plain(_), Some(origin)) => Uri::from(origin.clone()),
        (Transport::Plain(_), None) => Uri::from_static("/"),
        (Transport::Tls(_), _) => uri,
    })
}

/// Endpoints whose URLs are parsed once per provider.
const KNOWN_PATHS: [&str; 5] = [
    "/chat/completions",
    "/embeddings",
    "/completions",
    "/models",
    "/messages",
];

/// The placeholder an extra header value may use to carry the API key, for
/// upstreams with their own auth header (e.g. `api-key = "{api_key}"`).
pub const API_KEY_PLACEHOLDER: &str = "{api_key}";

/// Whether a header name looks like it carries a credential (its value is
/// then marked sensitive and never shown by `Debug`).
fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["authorization", "key", "token", "secret", "cookie"]
        .iter()
        .any(|n| name.contains(n))
}

/// How the API key is sent when no extra header carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI and most compatibles).
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
}

impl Upstream {
    /// Builds the HTTP side of a provider. `extra` are the config's extra
    /// headers; a value containing `{api_key}` gets the key substituted
    /// and replaces the default auth header.
    pub fn new(
        provider_id: &str,
        base_url: &str,
        client: HttpClient,
        auth: Auth,
        secret: Option<Secret>,
        extra: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut headers = HeaderMap::new();
        let mut key_in_extra = false;
        for (name, value) in extra {
            let at = format!("headers.\"{name}\"");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::single(&at, "is not a valid header name"))?;
            let carries_key = value.contains(API_KEY_PLACEHOLDER);
            let value = if carries_key {
                key_in_extra = true;
                let key = secret.as_ref().map(Secret::expose).ok_or_else(|| {
                    ConfigError::single(&at, "uses {api_key} but the provider has no API key")
                })?;
                value.replace(API_KEY_PLACEHOLDER, key)
            } else {
                value.clone()
            };
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| ConfigError::single(&at, "is not a valid header value"))?;
            if carries_key || is_credential_header(name) {
                value.set_sensitive(true);
            }
            headers.insert(header, value);
        }
        let explicit_auth =
            headers.contains_key(AUTHORIZATION) || headers.contains_key("x-api-key");
        if let (Some(key), false) = (&secret, key_in_extra || explicit_auth) {
            let (name, value) = match auth {
                Auth::Bearer => (AUTHORIZATION, format!("Bearer {}", key.expose())),
                Auth::XApiKey => (
                    HeaderName::from_static("x-api-key"),
                    key.expose().to_owned(),
                ),
            };
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| ConfigError::single("api_key", "is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        headers
            .entry(USER_AGENT)
            .or_insert(HeaderValue::from_static(SWITCHYARD_USER_AGENT));
        let url = url::Url::parse(base_url)
            .map_err(|e| ConfigError::single("base_url", format!("'{base_url}': {e}")))?;
        if let Some(host) = plain_http_host(&url) {
            headers.entry(HOST).or_insert(host);
        }
        let transport = client.transport(&url);
        let trimmed = base_url.trim_end_matches('/');
        let endpoints = KNOWN_PATHS
            .iter()
            .map(|path| {
                target_uri(&transport, &format!("{trimmed}{path}"))
                    .map(|uri| (*path, uri))
                    .map_err(|e| ConfigError::single("base_url", format!("'{base_url}': {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            provider_id: provider_id.to_owned(),
            base_url: trimmed.to_owned(),
            endpoints,
            transport,
            headers,
            secret,
        })
    }

    /// Adds a fixed header (e.g. `anthropic-version`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.entry(name).or_insert(value);
        self
    }

    /// The provider id.
    pub fn provider_id(&self) -> &str {
        &self.provider_id
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The configured key, for redaction.
    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    /// `text` with the key redacted.
    pub fn redact(&self, text: &str) -> String {
        redact(text, self.secret.as_ref())
    }

    /// A request to `base_url + path` with credentials, extra headers and
    /// the context's `x-request-id` / `traceparent`.
    pub fn request(&self, method: Method, path: &str, ctx: &CallContext) -> UpstreamRequest {
        let known = self
            .endpoints
            .iter()
            .find(|(known, _)| *known == path)
            .map(|(_, uri)| uri.clone());
        let uri = match known {
            Some(uri) => Ok(uri),
            None => target_uri(&self.transport, &format!("{}{}", self.base_url, path))
                .map_err(|e| format!("invalid upstream URL for '{path}': {e}")),
        };
        // A clone of the fixed headers would have no spare room (a cloned
        // `Vec` is exactly full), and the id, `content-type` and hyper's
        // `content-length` would grow it twice per request.
        let mut headers = HeaderMap::with_capacity(self.headers.len() + PER_REQUEST_HEADERS);
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        // Request ids and traceparents were checked to be short visible
        // ASCII where they came in; anything else is left out. The id's
        // header shares its bytes rather than copying them.
        let request_id = ctx
            .request_id
            .as_ref()
            .and_then(|id| HeaderValue::from_maybe_shared(id.as_bytes().clone()).ok());
        if let Some(value) = request_id {
            headers.insert(HeaderName::from_static("x-request-id"), value);
        }
        if let Some(value) = ctx
            .traceparent
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(HeaderName::from_static("traceparent"), value);
        }
        UpstreamRequest::new(method, uri, headers)
    }

    /// A JSON POST.
    pub fn post_json(
        &self,
        path: &str,
        body: impl Into<bytes::Bytes>,
        ctx: &CallContext,
    ) -> UpstreamRequest {
        self.request(Method::POST, path, ctx)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
    }

    /// Sends `request` and returns whatever status came back.
    pub async fn send_raw(
        &self,
        request: UpstreamRequest,
    ) -> Result<UpstreamResponse, ProviderError> {
        request
            .send(&self.transport)
            .await
            .map_err(|e| transport_error(e, self.secret.as_ref()))
    }

    /// Sends `request` and waits for a successful status: an error status
    /// (its body read) or a redirect becomes the classified error.
    pub async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ProviderError> {
        // Timed only for the debug line: a clock read costs about 20 ns.
        let started = tracing::enabled!(tracing::Level::DEBUG).then(tokio::time::Instant::now);
        let response = self.send_raw(request).await?;
        let status = response.status().as_u16();
        if let Some(started) = started {
            tracing::debug!(
                provider = %self.provider_id,
                status,
                headers_ms = started.elapsed().as_millis() as u64,
                "upstream responded"
            );
        }
        if response.status().is_success() {
            return Ok(response);
        }
        // Boxed: inline, the error body's read would sit in every send's
        // future, copied with it, though errors are rare.
        Err(Box::pin(self.error_from(response, status)).await)
    }

    /// The classified error of an error (or redirect) `response`.
    async fn error_from(&self, response: UpstreamResponse, status: u16) -> ProviderError {
        let headers = response.headers().clone();
        let body = if response.status().is_redirection() {
            Vec::new()
        } else {
            match read_error_body(response).await {
                Ok(body) => body,
                Err(error) => return transport_error(error, self.secret.as_ref()),
            }
        };
        let error = error_from_response(status, &headers, &body, self.secret.as_ref());
        tracing::debug!(
            provider = %self.provider_id,
            status,
            kind = error.kind(),
            "upstream error"
        );
        error
    }

    /// Sends and reads the whole body, bounded by `limit`; an expired limit
    /// is a timeout of `phase` (or `Deadline` when the request deadline is
    /// what cut it short).
    pub async fn send_and_read(
        &self,
        request: UpstreamRequest,
        ctx: &CallContext,
        limit: Duration,
        phase: TimeoutPhase,
    ) -> Result<bytes::Bytes, ProviderError> {
        within(ctx, limit, phase, async {
            let response = self.send(request).await?;
            response
                .bytes()
                .await
                .map_err(|e| transport_error(e, self.secret.as_ref()))
        })
        .await
    }

    /// Sends and waits for the response headers only, bounded by `limit`.
    pub async fn open(
        &self,
        request: UpstreamRequest,
        ctx: &CallContext,
        limit: Duration,
        phase: TimeoutPhase,
    ) -> Result<UpstreamResponse, ProviderError> {
        within(ctx, limit, phase, self.send(request)).await
    }
}

/// Headers a request may add to the fixed ones: `x-request-id`,
/// `traceparent`, `content-type`, and hyper's `content-length`.
const PER_REQUEST_HEADERS: usize = 4;

/// The most of an error body that is read: enough for any error message,
/// bounded against an upstream that streams garbage.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

async fn read_error_body(mut response: UpstreamResponse) -> Result<Vec<u8>, TransportError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ERROR_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    Ok(body)
}

/// Runs `call` within `limit` (shortened to the deadline): on expiry, a
/// timeout of `phase`, or `Deadline` when the deadline was the bound.
/// Without a timer of its own when the caller already bounds the call
/// ([`CallContext::bounded_by_caller`]): a timer costs a registration in
/// tokio's wheel and a removal, about 1.4k instructions a request.
///
/// A combinator, not an async fn: an async fn would hold `call` twice (as
/// its argument and inside the timeout), and adapters' futures nest it.
pub fn within<T, F>(
    ctx: &CallContext,
    limit: Duration,
    phase: TimeoutPhase,
    call: F,
) -> impl Future<Output = Result<T, ProviderError>> + use<T, F>
where
    F: Future<Output = Result<T, ProviderError>>,
{
    if ctx.bounded_by_caller {
        return Either::Left(call);
    }
    let (expiry, phase) = ctx.expiry(limit, phase);
    Either::Right(
        tokio::time::timeout_at(expiry, call)
            .map(move |result| result.unwrap_or(Err(ProviderError::Timeout { phase }))),
    )
}

/// Parses a JSON body, naming what was expected on failure (never the body:
/// it may be large or echo a key).
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, ProviderError> {
    switchyard_core::json::from_bytes(body).map_err(|e| ProviderError::Protocol {
        message: format!("invalid {what} from upstream: {e}"),
    })
}

/// A transport failure as a classified error: connect (refused, DNS, TLS,
/// connect timeout), or reset / closed before or during the response. The
/// key is redacted from the message (hyper's messages carry no URL).
pub fn transport_error(error: TransportError, secret: Option<&Secret>) -> ProviderError {
    let message = redact(&error.to_string(), secret);
    if error.is_connect() {
        ProviderError::Connect { message }
    } else {
        ProviderError::Reset { message }
    }
}

/// An upstream error response as a classified error. Reads the provider's
/// error body (any known shape), `Retry-After` and the rate-limit reset
/// headers; recognises context-length and content-policy rejections that
/// carry no code (Anthropic, vLLM, Ollama) from their messages; redacts the key.
pub fn error_from_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    secret: Option<&Secret>,
) -> ProviderError {
    if (300..400).contains(&status) {
        return ProviderError::Protocol {
            message: format!(
                "the upstream answered a {status} redirect; redirects are not followed"
            ),
        };
    }
    let fields = ErrorFields::from_body(body);
    let message = if fields.message.is_empty() {
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("upstream error")
            .to_owned()
    } else {
        redact(&fields.message, secret)
    };
    let fields = fields.redacted(secret);
    let mut error = UpstreamError::from_status(status, message, fields.error_type, fields.code)
        .with_param(fields.param)
        .with_retry_after(retry_after(headers, status, SystemTime::now()));
    refine_category(&mut error);
    ProviderError::Upstream(Box::new(error))
}

/// Recognises rejections whose type and code say nothing specific.
pub fn refine_category(error: &mut UpstreamError) {
    if error.category != UpstreamCategory::BadRequest {
        return;
    }
    let message = error.message.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| message.contains(n));
    if any(&[
        "prompt is too long",
        "maximum context length",
        "context length",
        "context window",
        "context_length_exceeded",
        "too many tokens",
        "input is too long",
    ]) {
        error.category = UpstreamCategory::ContextLength;
    } else if any(&[
        "content management policy",
        "content filter",
        "content_filter",
        "content policy",
        "usage policies",
        "safety system",
    ]) {
        error.category = UpstreamCategory::ContentFilter;
    }
}

/// How long to wait before retrying, from `retry-after-ms`, `Retry-After`
/// (delta seconds or an HTTP date) and, on 429, the exhausted limit's reset
/// header (`x-ratelimit-reset-*` as `1m30s`-style durations or seconds,
/// `anthropic-ratelimit-*-reset` as RFC 3339 times).
pub fn retry_after(headers: &HeaderMap, status: u16, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    if let Some(value) = header("retry-after") {
        if let Ok(secs) = value.parse::<f64>() {
            if secs.is_finite() && secs >= 0.0 {
                return Some(Duration::from_secs_f64(secs));
            }
        } else if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    if status != 429 {
        return None;
    }
    let mut longest: Option<Duration> = None;
    let mut consider = |d: Option<Duration>| {
        if let Some(d) = d {
            longest = Some(longest.map_or(d, |l| l.max(d)));
        }
    };
    let exhausted = |remaining: &str| header(remaining).is_none_or(|v| v == "0");
    for kind in ["requests", "tokens"] {
        if exhausted(&format!("x-ratelimit-remaining-{kind}")) {
            consider(header(&format!("x-ratelimit-reset-{kind}")).and_then(parse_reset));
        }
    }
    if let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<f64>().ok()) {
        // Either seconds from now or a Unix time.
        let epoch_now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let secs = if reset > 1e9 {
            reset - epoch_now
        } else {
            reset
        };
        if secs.is_finite() {
            consider(Some(Duration::from_secs_f64(secs.max(0.0))));
        }
    }
    for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
        if exhausted(&format!("anthropic-ratelimit-{kind}-remaining")) {
            consider(
                header(&format!("anthropic-ratelimit-{kind}-reset"))
                    .and_then(|v| humantime::parse_rfc3339_weak(v).ok())
                    .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)),
            );
        }
    }
    longest
}

/// Parses a reset value: plain seconds (`"12"`, `"0.5"`) or a Go-style
/// duration (`"1m30s"`, `"59.5s"`, `"20ms"`, `"1h2m3s"`).
pub fn parse_reset(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let mut total = 0.0_f64;
    let mut rest = value;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn within_times_out_unless_the_caller_already_bounds_the_call() {
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, ProviderError>("done")
        };
        let ctx = CallContext {
            response_timeout: Duration::from_secs(1),
            ..CallContext::default()
        };
        let limit = ctx.response_timeout;
        let started = tokio::time::Instant::now();
        let error = within(&ctx, limit, TimeoutPhase::Response, slow())
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                ProviderError::Timeout {
                    phase: TimeoutPhase::Response
                }
            ),
            "{error:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let bounded = CallContext {
            bounded_by_caller: true,
            ..ctx
        };
        let started = tokio::time::Instant::now();
        let result = within(&bounded, limit, TimeoutPhase::Response, slow()).await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn plain_http_targets_are_origin_form_and_tls_ones_absolute() {
        let client = build_client(&HttpOptions::default()).unwrap();
        let target = |base: &str, path: &str| {
            let transport = client.transport(&url::Url::parse(base).unwrap());
            target_uri(&transport, &format!("{base}{path}"))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            target("http://127.0.0.1:8000/v1", "/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(
            target("http://[::1]:8000", "/models?limit=5"),
            "/models?limit=5"
        );
        assert_eq!(
            target("https://api.openai.com/v1", "/chat/completions"),
            "https://api.openai.com/v1/chat/completions"
        );
    }

    #[test]
    fn plain_http_base_urls_get_their_host_header_made_once() {
        let host = |url: &str| {
            plain_http_host(&url::Url::parse(url).unwrap()).map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            host("http://127.0.0.1:8080/v1").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(host("http://[::1]:9/v1").as_deref(), Some("[::1]:9"));
        assert_eq!(
            host("http://llm.internal/v1").as_deref(),
            Some("llm.internal")
        );
        assert_eq!(
            host("http://llm.internal:80/v1").as_deref(),
            Some("llm.internal")
        );
        // TLS may negotiate HTTP/2, which carries `:authority` instead.
        assert_eq!(host("https://api.openai.com/v1"), None);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_reset_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")]), 429, now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1500")]), 429, now),
            Some(Duration::from_millis(1500))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &date)]), 503, now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), 503, now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[]), 429, now), None);
        let openai = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1m30s"),
            ("x-ratelimit-remaining-tokens", "100"),
            ("x-ratelimit-reset-tokens", "5m"),
        ]);
        assert_eq!(
            retry_after(&openai, 429, now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(retry_after(&openai, 500, now), None);
        let anthropic = headers(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:40Z"),
        ]);
        assert_eq!(
            retry_after(&anthropic, 429, now),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_reset("59.5s"), Some(Duration::from_millis(59_500)));
        assert_eq!(parse_reset("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_reset("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset(""), None);
    }

    #[test]
    fn error_bodies_are_classified_and_redacted() {
        let secret = Secret::new("sk-test-123456");
        let body = br#"{"error": {"message": "Incorrect API key provided: sk-test-123456.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}"#;
        let error = error_from_response(401, &HeaderMap::new(), body, Some(&secret));
        assert_eq!(error.category(), Some(UpstreamCategory::Auth));
        assert!(!error.to_string().contains("sk-test-123456"));
        assert!(error.to_string().contains(REDACTED));

        let anthropic_context = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        let error = error_from_response(400, &HeaderMap::new(), anthropic_context, None);
        assert_eq!(error.category(), Some(UpstreamCategory::ContextLength));

        let redirect = error_from_response(302, &HeaderMap::new(), b"", None);
        assert!(matches!(redirect, ProviderError::Protocol { .. }));

        let empty = error_from_response(502, &HeaderMap::new(), b"", None);
        assert_eq!(empty.to_string(), "upstream error 502: Bad Gateway");
    }
}
