//! Per-client-key request rate limits (`[server] client_rpm_limit`, SPEC §7): governor's GCRA, one state per client key.
//!
//! The semantics are those of a provider's `rpm_limit` in
//! `switchyard_core::limits`: `n` requests per minute are an even spacing
//! of 60 s / n with a burst of one, so any window of 60 s holds at most
//! n (+1 at a window edge) requests of one key. A client key at 600 RPM
//! may send a request every 100 ms; one sent sooner is refused with 429
//! `rate_limit_error` (code `rate_limit_exceeded`) and a `Retry-After` of
//! the wait, rounded up to whole seconds. A GCRA with a burst of `n` would
//! let 2n through in the minute after an idle spell, which is why the
//! burst is one.
//!
//! Every request under `/v1` counts, whatever its outcome (a cache hit
//! too). The limit applies per configured client key (`api_keys_env`);
//! without client keys there is nothing to tell callers apart, so the limit
//! does not apply (the gateway warns at start). State is kept only for
//! keys that passed authentication, so its size is bounded by the number of
//! configured keys.
//!
//! [`admit`] runs in the `/v1` client-key middleware: it identifies the
//! caller ([`ClientId`], also what the response cache keys on), checks the
//! limit, and stores the id in the request's extensions.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock as _;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use switchyard_core::limits::{TokioClock, TokioNanos};

use crate::app::AppState;
use crate::error::{ApiError, retry_seconds};
use crate::routes;

/// Requests refused by `client_rpm_limit`.
pub const CLIENT_RATE_LIMITED_TOTAL: &str = "switchyard_client_rate_limited_total";

/// Who sent a request: the configured client key it carried, or
/// `anonymous` when no client keys are configured. Its `Debug` never shows
/// the key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientId(Option<Arc<str>>);

impl ClientId {
    /// The caller when no client keys are configured.
    pub fn anonymous() -> Self {
        Self(None)
    }

    /// A configured client key.
    pub fn key(key: &str) -> Self {
        Self(Some(Arc::from(key)))
    }

    /// Whether this is a client key (not anonymous).
    pub fn is_key(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(_) => f.write_str("ClientId(key)"),
            None => f.write_str("ClientId(anonymous)"),
        }
    }
}

type KeyedLimiter =
    RateLimiter<ClientId, HashMapStateStore<ClientId>, TokioClock, NoOpMiddleware<TokioNanos>>;

/// The per-key limiter (a no-op without `client_rpm_limit`).
pub struct ClientLimiter {
    limit: Option<(u32, KeyedLimiter, TokioClock)>,
}

impl std::fmt::Debug for ClientLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("rpm", &self.rpm())
            .finish()
    }
}

impl ClientLimiter {
    /// A limiter of `rpm` requests per minute per key (`None` or 0: unlimited).
    pub fn new(rpm: Option<u32>) -> Self {
        let limit = rpm.and_then(NonZeroU32::new).map(|n| {
            let clock = TokioClock::default();
            let period = Duration::from_secs(60) / n.get();
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_minute(n))
                .allow_burst(NonZeroU32::MIN);
            let limiter = RateLimiter::hashmap_with_clock(quota, clock.clone());
            (n.get(), limiter, clock)
        });
        Self { limit }
    }

    /// The configured requests per minute.
    pub fn rpm(&self) -> Option<u32> {
        self.limit.as_ref().map(|(n, _, _)| *n)
    }

    /// Counts one request of `client`, or says how long until it may send one.
    /// Anonymous callers are never limited.
    pub fn check(&self, client: &ClientId) -> Result<(), Duration> {
        let Some((_, limiter, clock)) = &self.limit else {
            return Ok(());
        };
        if !client.is_key() {
            return Ok(());
        }
        limiter
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(clock.now()))
    }
}

/// Identifies the caller of an authenticated `/v1` request, applies
/// `client_rpm_limit`, and stores the [`ClientId`] in the request's
/// extensions; the error is the 429 to send.
#[allow(clippy::result_large_err)]
pub fn admit<B>(state: &AppState, request: &mut Request<B>) -> Result<(), Response> {
    let client = state
        .credentials
        .client_key(request.headers())
        .map_or_else(ClientId::anonymous, ClientId::key);
    if let Err(wait) = state.client_limits.check(&client) {
        if state.manager.options().enable_metrics {
            metrics::counter!(CLIENT_RATE_LIMITED_TOTAL).increment(1);
        }
        let rpm = state.client_limits.rpm().unwrap_or_default();
        let error = ApiError {
            retry_after: Some(retry_seconds(Some(wait))),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "Rate limit reached for this API key: {rpm} requests per minute (one every {} ms). Retry after the time in the Retry-After header.",
                    60_000 / u64::from(rpm.max(1))
                ),
            )
            .with_code("rate_limit_exceeded")
        };
        let error = if request.uri().path().starts_with("/v1/messages") {
            error.anthropic()
        } else {
            error
        };
        let meta = routes::RequestMeta::from_headers(request.headers());
        return Err(routes::with_request_id(error.into_response(), &meta));
    }
    request.extensions_mut().insert(client);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_key_gets_at_most_n_plus_one_in_any_minute() {
        let limiter = ClientLimiter::new(Some(10));
        let key = ClientId::key("k1");
        let start = Instant::now();
        let mut admitted = Vec::new();
        while start.elapsed() < Duration::from_secs(180) {
            if limiter.check(&key).is_ok() {
                admitted.push(start.elapsed());
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        for (i, at) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|t| **t < *at + Duration::from_secs(60))
                .count();
            assert!(in_window <= 11, "{in_window} in the minute from {at:?}");
        }
        // Not over-throttled either: 10 per minute over three minutes.
        assert!((29..=31).contains(&admitted.len()), "{}", admitted.len());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_limited_separately_and_told_how_long_to_wait() {
        let limiter = ClientLimiter::new(Some(60));
        let (a, b) = (ClientId::key("a"), ClientId::key("b"));
        assert!(limiter.check(&a).is_ok());
        assert_eq!(limiter.check(&a), Err(Duration::from_secs(1)));
        assert!(limiter.check(&b).is_ok());
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(limiter.check(&a), Err(Duration::from_millis(600)));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(limiter.check(&a).is_ok());
    }

    #[test]
    fn anonymous_callers_and_unset_limits_are_never_limited() {
        let limiter = ClientLimiter::new(Some(1));
        for _ in 0..5 {
            assert!(limiter.check(&ClientId::anonymous()).is_ok());
        }
        let none = ClientLimiter::new(None);
        let key = ClientId::key("k");
        for _ in 0..5 {
            assert!(none.check(&key).is_ok());
        }
        assert_eq!(ClientLimiter::new(Some(0)).rpm(), None);
        assert_eq!(
            format!("{:?}", ClientId::key("secret-key")),
            "ClientId(key)"
        );
    }
}
