//! Provider rate limits: requests per minute (governor's GCRA) and tokens per minute.
//!
//! - `rpm_limit` is enforced with `governor` as an even spacing of 60 s / n
//!   with no burst: at most n (+1 at a window edge) requests in any minute,
//!   which is what "500 RPM" means to an upstream. Requests beyond it wait
//!   in the gateway queue (SPEC §7) or go to another candidate.
//! - `tpm_limit` is a token bucket (capacity = limit, refilled continuously
//!   over a minute) from which each request takes its estimate (prompt +
//!   `max_tokens`) and which is *settled* with the real usage afterwards:
//!   governor cannot give tokens back, and an estimate is only an estimate.
//!
//! Both run on tokio's clock, so paused-time tests drive them.

use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock as GovernorClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::time::Instant;

/// Output tokens assumed for a request that sets no `max_tokens`.
pub const DEFAULT_OUTPUT_ESTIMATE: u32 = 256;

/// A point on tokio's clock, for governor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioNanos(u64);

impl Add<Nanos> for TokioNanos {
    type Output = Self;

    fn add(self, other: Nanos) -> Self {
        Self(self.0.saturating_add(other.as_u64()))
    }
}

impl Reference for TokioNanos {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_sub(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        Self(self.0.saturating_sub(duration.as_u64()))
    }
}

/// tokio's clock as a governor clock.
#[derive(Clone, Debug)]
pub struct TokioClock {
    epoch: Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl GovernorClock for TokioClock {
    type Instant = TokioNanos;

    fn now(&self) -> TokioNanos {
        TokioNanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioNanos>>;

/// A governor rate limiter of `n` requests per minute, evenly spaced, on tokio's clock.
pub fn per_minute_limiter(n: NonZeroU32) -> (Limiter, TokioClock) {
    let clock = TokioClock::default();
    let period = Duration::from_secs(60) / n.get();
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_minute(n))
        .allow_burst(NonZeroU32::MIN);
    (RateLimiter::direct_with_clock(quota, clock.clone()), clock)
}

struct Bucket {
    available: f64,
    stamp: Instant,
}

/// A tokens-per-minute bucket that can be settled with real usage.
struct TokenBucket {
    capacity: f64,
    bucket: Mutex<Bucket>,
}

impl TokenBucket {
    fn new(capacity: u64) -> Self {
        Self {
            capacity: capacity as f64,
            bucket: Mutex::new(Bucket {
                available: capacity as f64,
                stamp: Instant::now(),
            }),
        }
    }

    fn refill(&self, bucket: &mut Bucket) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.stamp).as_secs_f64();
        bucket.available = (bucket.available + elapsed * self.capacity / 60.0).min(self.capacity);
        bucket.stamp = now;
    }

    /// An estimate larger than the whole bucket is admitted on a full bucket.
    fn need(&self, tokens: u64) -> f64 {
        (tokens as f64).min(self.capacity)
    }

    fn has(&self, tokens: u64) -> bool {
        let mut bucket = self.bucket.lock();
        self.refill(&mut bucket);
        bucket.available >= self.need(tokens)
    }

    fn take(&self, tokens: u64) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock();
        self.refill(&mut bucket);
        let need = self.need(tokens);
        if bucket.available >= need {
            bucket.available -= need;
            Ok(())
        } else {
            let missing = need - bucket.available;
            Err(Duration::from_secs_f64(missing * 60.0 / self.capacity))
        }
    }

    fn give(&self, tokens: f64) {
        let mut bucket = self.bucket.lock();
        self.refill(&mut bucket);
        bucket.available = (bucket.available + tokens).min(self.capacity);
    }

    fn available(&self) -> f64 {
        let mut bucket = self.bucket.lock();
        self.refill(&mut bucket);
        bucket.available
    }
}

/// A provider's rate limits, shared by all of its deployments.
#[derive(Default)]
pub struct ProviderLimits {
    rpm: Option<(u32, Limiter, TokioClock)>,
    rpm_blocked_until: AtomicU64,
    tpm: Option<(u64, TokenBucket)>,
}

impl std::fmt::Debug for ProviderLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderLimits")
            .field("rpm", &self.rpm.as_ref().map(|r| r.0))
            .field("tpm", &self.tpm.as_ref().map(|t| t.0))
            .finish()
    }
}

impl ProviderLimits {
    /// Limits for `rpm` requests and `tpm` tokens per minute (`None`: unlimited).
    pub fn new(rpm: Option<u32>, tpm: Option<u64>) -> Self {
        Self {
            rpm: rpm.and_then(NonZeroU32::new).map(|n| {
                let (limiter, clock) = per_minute_limiter(n);
                (n.get(), limiter, clock)
            }),
            rpm_blocked_until: AtomicU64::new(0),
            tpm: tpm.filter(|t| *t > 0).map(|t| (t, TokenBucket::new(t))),
        }
    }

    /// Whether these limits are the ones configured (so a reload keeps counts).
    pub fn matches(&self, rpm: Option<u32>, tpm: Option<u64>) -> bool {
        self.rpm.as_ref().map(|r| r.0) == rpm.filter(|r| *r > 0)
            && self.tpm.as_ref().map(|t| t.0) == tpm.filter(|t| *t > 0)
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some()
    }

    fn nanos_now(&self) -> u64 {
        self.rpm.as_ref().map_or(0, |(_, _, clock)| clock.now().0)
    }

    /// Whether a request of `tokens` could be admitted now (no side effect).
    pub fn may_admit(&self, tokens: u64) -> bool {
        if self.rpm.is_some() && self.nanos_now() < self.rpm_blocked_until.load(Ordering::Relaxed) {
            return false;
        }
        self.tpm
            .as_ref()
            .is_none_or(|(_, bucket)| bucket.has(tokens))
    }

    /// Takes one request and `tokens` from the limits, or says how long
    /// until that is possible.
    pub fn try_acquire(&self, tokens: u64) -> Result<(), Duration> {
        if let Some((_, bucket)) = &self.tpm {
            bucket.take(tokens)?;
        }
        if let Some((_, limiter, clock)) = &self.rpm {
            if let Err(not_until) = limiter.check() {
                let now = clock.now();
                let wait = not_until.wait_time_from(now);
                self.rpm_blocked_until.store(
                    now.0
                        .saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX)),
                    Ordering::Relaxed,
                );
                if let Some((_, bucket)) = &self.tpm {
                    bucket.give(tokens as f64);
                }
                return Err(wait);
            }
        }
        Ok(())
    }

    /// Settles a request's token estimate with what it really used.
    pub fn settle(&self, estimated: u64, actual: u64) {
        if let Some((_, bucket)) = &self.tpm {
            bucket.give(bucket.need(estimated) - actual as f64);
        }
    }

    /// Returns `tokens` taken by a request that never ran.
    pub fn refund(&self, tokens: u64) {
        if let Some((_, bucket)) = &self.tpm {
            bucket.give(bucket.need(tokens));
        }
    }

    /// Tokens available now (for tests and stats).
    pub fn tokens_available(&self) -> Option<f64> {
        self.tpm.as_ref().map(|(_, bucket)| bucket.available())
    }

    /// How long until a request may be admitted again, if it is blocked.
    pub fn blocked_for(&self) -> Option<Duration> {
        let until = self.rpm_blocked_until.load(Ordering::Relaxed);
        let now = self.nanos_now();
        (self.rpm.is_some() && until > now).then(|| Duration::from_nanos(until - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rpm_holds_within_one_over_any_minute() {
        let limits = ProviderLimits::new(Some(10), None);
        let start = Instant::now();
        let mut admitted = Vec::new();
        while start.elapsed() < Duration::from_secs(180) {
            if limits.try_acquire(0).is_ok() {
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
        assert!((29..=31).contains(&admitted.len()), "{}", admitted.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_limit_says_how_long_and_filters_until_then() {
        let limits = ProviderLimits::new(Some(60), None);
        assert!(limits.try_acquire(0).is_ok());
        let wait = limits.try_acquire(0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(!limits.may_admit(0));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limits.may_admit(0));
        assert!(limits.try_acquire(0).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn tpm_takes_estimates_and_settles_to_real_usage() {
        let limits = ProviderLimits::new(None, Some(1_000));
        assert!(limits.try_acquire(600).is_ok());
        assert!(!limits.may_admit(600));
        assert_eq!(limits.try_acquire(600), Err(Duration::from_secs(12)));
        // The call used 100 tokens, not 600: 500 come back.
        limits.settle(600, 100);
        assert!((limits.tokens_available().unwrap() - 900.0).abs() < 1e-6);
        // A call that used more than estimated leaves a debt.
        assert!(limits.try_acquire(800).is_ok());
        limits.settle(800, 1_000);
        assert!((limits.tokens_available().unwrap() - -100.0).abs() < 1e-6);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!((limits.tokens_available().unwrap() - 0.0).abs() < 1e-6);
    }
}
