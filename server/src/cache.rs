//! The opt-in exact-match response cache of SPEC §7 (`[server.cache]`): identical non-stream requests of one client key get the stored answer.
//!
//! - Off by default. `[server.cache] enabled = true` turns it on for
//!   `POST /v1/chat/completions`, `/v1/embeddings` and `/v1/completions`
//!   (not `/v1/messages`, not streams: a body with `"stream": true` passes
//!   by untouched).
//! - The key is exact: the caller ([`ClientId`]: the client key, or
//!   `anonymous` when none are configured), the endpoint, the
//!   `x-switchyard-region` header and the **raw request body bytes**. Two
//!   bodies that differ only in whitespace or key order are different
//!   requests; nothing is canonicalised, so nothing can be wrongly merged.
//!   Entries are never shared across client keys.
//! - Only 200 answers are stored (status, headers and body), for `ttl`
//!   (default 5 min), at most `max_entries` (default 10 000, least recently
//!   used evicted first; memory is about entries × (request + response)
//!   size), in a `moka` future cache.
//! - Answers carry `x-switchyard-cache: hit` or `miss`; a hit keeps the
//!   `x-switchyard-*` headers of the answer it stores and gets this
//!   request's `x-request-id`. Hits never reach an upstream or the request
//!   metrics; they count in `switchyard_cache_hits_total` (lookups that
//!   found nothing: `switchyard_cache_misses_total`).
//! - Concurrent identical misses each go upstream (no request coalescing).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::Shape;
use crate::limits::ClientId;
use crate::routes::{self, REGION_HEADER, RequestMeta};

/// Lookups answered from the cache.
pub const CACHE_HITS_TOTAL: &str = "switchyard_cache_hits_total";
/// Lookups that found nothing (the request went upstream).
pub const CACHE_MISSES_TOTAL: &str = "switchyard_cache_misses_total";
/// Response header telling whether the answer came from the cache.
pub const CACHE_HEADER: &str = "x-switchyard-cache";

/// `[server.cache]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Turn the cache on.
    pub enabled: bool,
    /// How long an answer is kept.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most answers kept.
    pub max_entries: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl: Duration::from_secs(300),
            max_entries: 10_000,
        }
    }
}

impl CacheConfig {
    /// Problems as `(field under server.cache, message)`.
    pub fn issues(&self) -> Vec<(&'static str, &'static str)> {
        let mut issues = Vec::new();
        if self.ttl.is_zero() {
            issues.push(("ttl", "must be greater than zero"));
        }
        if self.max_entries == 0 {
            issues.push(("max_entries", "must be at least 1"));
        }
        issues
    }
}

/// What a lookup is keyed on.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    client: ClientId,
    endpoint: &'static str,
    region: Option<HeaderValue>,
    body: Bytes,
}

/// A stored 200 answer.
struct Entry {
    headers: HeaderMap,
    body: Bytes,
}

/// The cache (empty and inert when disabled).
pub struct ResponseCache {
    entries: Option<moka::future::Cache<Key, Arc<Entry>>>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("enabled", &self.entries.is_some())
            .field(
                "entries",
                &self.entries.as_ref().map(moka::future::Cache::entry_count),
            )
            .finish()
    }
}

impl ResponseCache {
    /// A cache per `config` (inert unless `enabled`).
    pub fn new(config: &CacheConfig) -> Self {
        let entries = config.enabled.then(|| {
            moka::future::Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(config.ttl)
                .build()
        });
        Self { entries }
    }

    /// Whether the cache is on.
    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }
}

/// The cacheable endpoints, by path.
fn endpoint(path: &str) -> Option<&'static str> {
    match path {
        "/v1/chat/completions" => Some("chat.completions"),
        "/v1/embeddings" => Some("embeddings"),
        "/v1/completions" => Some("completions"),
        _ => None,
    }
}

/// Whether a body asks for a stream (a body that is not JSON is not
/// cacheable either: the handler answers it with a 400).
fn cacheable_body(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        stream: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Probe>(body)
        .is_ok_and(|probe| !matches!(probe.stream, Some(serde_json::Value::Bool(true))))
}

fn mark(response: &mut Response, value: &'static str) {
    response.headers_mut().insert(
        HeaderName::from_static(CACHE_HEADER),
        HeaderValue::from_static(value),
    );
}

/// The `/v1` middleware: answers identical requests of the same caller
/// from the cache, and stores 200 answers. Runs inside the client-key
/// middleware (which stores the [`ClientId`]).
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(entries) = state.response_cache.entries.clone() else {
        return next.run(request).await;
    };
    let Some(endpoint) =
        endpoint(request.uri().path()).filter(|_| request.method() == Method::POST)
    else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    // Read through axum's extractor so `max_body_bytes` answers as the handlers do.
    let read = Bytes::from_request(Request::from_parts(parts.clone(), body), &()).await;
    let body = match routes::read_body(read, state.server.max_body_bytes, Shape::OpenAi) {
        Ok(body) => body,
        Err(error) => {
            let meta = RequestMeta::from_headers(&parts.headers);
            return routes::with_request_id(error.into_response(), &meta);
        }
    };
    if !cacheable_body(&body) {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    }
    let metrics = state.manager.options().enable_metrics;
    let key = Key {
        client: parts
            .extensions
            .get::<ClientId>()
            .cloned()
            .unwrap_or_else(ClientId::anonymous),
        endpoint,
        region: parts.headers.get(REGION_HEADER).cloned(),
        body: body.clone(),
    };
    if let Some(entry) = entries.get(&key).await {
        if metrics {
            metrics::counter!(CACHE_HITS_TOTAL).increment(1);
        }
        tracing::debug!(endpoint, "answered from the response cache");
        let mut response = (StatusCode::OK, entry.body.clone()).into_response();
        *response.headers_mut() = entry.headers.clone();
        mark(&mut response, "hit");
        let meta = RequestMeta::from_headers(&parts.headers);
        return routes::with_request_id(response, &meta);
    }
    if metrics {
        metrics::counter!(CACHE_MISSES_TOTAL).increment(1);
    }
    let mut response = next.run(Request::from_parts(parts, Body::from(body))).await;
    mark(&mut response, "miss");
    if response.status() != StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => {
            let entry = Entry {
                headers: parts.headers.clone(),
                body: bytes.clone(),
            };
            entries.insert(key, Arc::new(entry)).await;
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read an answer to cache it");
            crate::error::ApiError::internal("The answer could not be read.").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn streams_and_non_json_bodies_are_not_cacheable() {
        assert!(cacheable_body(br#"{"model": "m", "messages": []}"#));
        assert!(cacheable_body(br#"{"model": "m", "stream": false}"#));
        assert!(!cacheable_body(br#"{"model": "m", "stream": true}"#));
        assert!(!cacheable_body(b"{not json"));
    }

    #[test]
    fn only_the_three_openai_endpoints_are_cached() {
        assert_eq!(endpoint("/v1/chat/completions"), Some("chat.completions"));
        assert_eq!(endpoint("/v1/embeddings"), Some("embeddings"));
        assert_eq!(endpoint("/v1/completions"), Some("completions"));
        assert_eq!(endpoint("/v1/messages"), None);
        assert_eq!(endpoint("/v1/models"), None);
    }

    #[test]
    fn config_defaults_and_checks() {
        let config = CacheConfig::default();
        assert!(!config.enabled);
        assert_eq!(config.ttl, Duration::from_secs(300));
        assert_eq!(config.max_entries, 10_000);
        assert!(config.issues().is_empty());
        let bad = CacheConfig {
            enabled: true,
            ttl: Duration::ZERO,
            max_entries: 0,
        };
        assert_eq!(bad.issues().len(), 2);
        assert!(!ResponseCache::new(&config).is_enabled());
        let on = CacheConfig {
            enabled: true,
            ..CacheConfig::default()
        };
        assert!(ResponseCache::new(&on).is_enabled());
    }
}
