//! Per-deployment and per-provider state: atomics that selection reads without locks.
//!
//! Health, circuits, cooldowns, in-flight counts and latency live here, one
//! record per deployment (model × provider) and one per provider. Time is
//! kept as milliseconds since the manager's [`Clock`] epoch (tokio's clock,
//! so paused-time tests drive it). Writers are the RAII call guard, the
//! failover loop and the health checker; readers are the strategies.

use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

const RELAXED: Ordering = Ordering::Relaxed;

/// The manager's monotonic clock: milliseconds since its creation.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since the epoch, plus one so that 0 can mean "never".
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// The stamp of `at`, an instant already read: a clock read costs
    /// about 20 ns here (a serialised `rdtsc` in the vDSO), and a plain
    /// request read it 24.6 times before the hot path shared its reads
    /// (14.5 after).
    pub fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// The instant of a millisecond stamp.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms.saturating_sub(1))
    }
}

/// Health of a deployment or provider (SPEC §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Serving well.
    Healthy,
    /// Serving, with recent errors or slowness.
    Degraded,
    /// Ejected or failing checks.
    Unhealthy,
    /// Turned off by config or an operator.
    Disabled,
}

impl Health {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Healthy,
            1 => Self::Degraded,
            2 => Self::Unhealthy,
            _ => Self::Disabled,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::Degraded => 1,
            Self::Unhealthy => 2,
            Self::Disabled => 3,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
            Self::Disabled => "disabled",
        }
    }

    /// The `switchyard_provider_health` gauge value (1 healthy … 0 unhealthy).
    pub fn gauge(self) -> f64 {
        match self {
            Self::Healthy => 1.0,
            Self::Degraded => 0.5,
            Self::Unhealthy | Self::Disabled => 0.0,
        }
    }
}

/// A provider's lifecycle (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Config accepted for processing.
    Created,
    /// Config validated.
    Validated,
    /// Adapter built.
    Initialized,
    /// Pre-activation check passed.
    HealthChecked,
    /// Serving traffic.
    Active,
    /// Failing: ejected or failing active checks.
    FaultDetected,
    /// Back after a fault.
    Recovered,
    /// Turned off.
    Disabled,
    /// Gone from the registry.
    Removed,
}

impl Lifecycle {
    fn from_u8(v: u8) -> Self {
        use Lifecycle::*;
        [
            Created,
            Validated,
            Initialized,
            HealthChecked,
            Active,
            FaultDetected,
            Recovered,
            Disabled,
            Removed,
        ]
        .get(usize::from(v))
        .copied()
        .unwrap_or(Removed)
    }

    fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A deployment's circuit (SPEC §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Serving.
    Closed,
    /// Ejected until its ejection ends.
    Open,
    /// Ejection over: one probe request decides.
    HalfOpen,
}

impl CircuitState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Closed,
            1 => Self::Open,
            _ => Self::HalfOpen,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// Increments `counter` unless it already reached `cap`: the check and the
/// increment are one atomic step, so a cap can never be overrun.
fn try_enter(counter: &AtomicU32, cap: Option<u32>) -> bool {
    match cap {
        None => {
            counter.fetch_add(1, RELAXED);
            true
        }
        Some(cap) => counter
            .fetch_update(Ordering::AcqRel, RELAXED, |n| (n < cap).then_some(n + 1))
            .is_ok(),
    }
}

fn load_f64(cell: &AtomicU64) -> f64 {
    f64::from_bits(cell.load(RELAXED))
}

fn store_f64(cell: &AtomicU64, value: f64) {
    cell.store(value.to_bits(), RELAXED);
}

const BUCKETS: usize = 12;
const BUCKET_MS: u64 = 5_000;
const WINDOW_MS: u64 = BUCKETS as u64 * BUCKET_MS;

/// A one-minute sliding window of requests and failures in 5 s buckets.
#[derive(Debug, Default)]
pub struct RequestWindow {
    stamp: [AtomicU64; BUCKETS],
    requests: [AtomicU64; BUCKETS],
    failures: [AtomicU64; BUCKETS],
}

impl RequestWindow {
    fn slot(&self, now_ms: u64) -> usize {
        let bucket = now_ms / BUCKET_MS;
        let index = usize::try_from(bucket % BUCKETS as u64).unwrap_or(0);
        // Loaded first: the bucket is almost always current, and a swap is
        // a locked read-modify-write even when it changes nothing.
        let stamp = &self.stamp[index];
        if stamp.load(RELAXED) != bucket && stamp.swap(bucket, RELAXED) != bucket {
            self.requests[index].store(0, RELAXED);
            self.failures[index].store(0, RELAXED);
        }
        index
    }

    /// Counts a started request.
    pub fn record_request(&self, now_ms: u64) {
        let i = self.slot(now_ms);
        self.requests[i].fetch_add(1, RELAXED);
    }

    /// Counts a failed request.
    pub fn record_failure(&self, now_ms: u64) {
        let i = self.slot(now_ms);
        self.failures[i].fetch_add(1, RELAXED);
    }

    /// Requests and failures over the last minute.
    pub fn totals(&self, now_ms: u64) -> (u64, u64) {
        let current = now_ms / BUCKET_MS;
        let mut requests = 0;
        let mut failures = 0;
        for i in 0..BUCKETS {
            let stamp = self.stamp[i].load(RELAXED);
            if current.saturating_sub(stamp) < BUCKETS as u64 && stamp <= current {
                requests += self.requests[i].load(RELAXED);
                failures += self.failures[i].load(RELAXED);
            }
        }
        (requests, failures)
    }

    /// Requests over the last minute.
    pub fn per_minute(&self, now_ms: u64) -> u64 {
        self.totals(now_ms).0
    }

    /// Clears the window.
    pub fn reset(&self) {
        for i in 0..BUCKETS {
            self.requests[i].store(0, RELAXED);
            self.failures[i].store(0, RELAXED);
        }
    }
}

/// Default latency estimate of a deployment with no history (µs).
pub const DEFAULT_LATENCY_US: f64 = 50_000.0;
/// Decay period of the peak-EWMA latency estimate (ms).
pub const LATENCY_DECAY_MS: f64 = 10_000.0;
/// Length of slow start after admission or recovery (ms).
pub const SLOW_START_MS: u64 = 30_000;

/// How many deployments sharing this count have a circuit that is not
/// closed (open or half-open). A manager gives one to all its deployments,
/// so selection looks for a half-open probe only while some circuit is
/// not closed instead of visiting every deployment of the model per
/// request. Every change of a circuit to or from closed goes through one
/// atomic swap, so the count is exact, not an estimate.
#[derive(Clone, Debug, Default)]
pub struct OpenCircuits(Arc<AtomicUsize>);

impl OpenCircuits {
    /// Whether some circuit counted here is open or half-open.
    pub fn any(&self) -> bool {
        self.0.load(RELAXED) > 0
    }

    /// How many are.
    pub fn count(&self) -> usize {
        self.0.load(RELAXED)
    }

    fn opened(&self) {
        self.0.fetch_add(1, RELAXED);
    }

    fn closed(&self) {
        self.0.fetch_sub(1, RELAXED);
    }
}

/// The record selection reads for one deployment. Shared across registry
/// rebuilds for as long as the deployment's provider keeps its identity.
#[derive(Debug)]
pub struct DeploymentState {
    health: AtomicU8,
    degraded_until_ms: AtomicU64,
    circuit: AtomicU8,
    /// Counts this circuit while it is not closed.
    open_circuits: OpenCircuits,
    probe_taken: AtomicBool,
    ejected_until_ms: AtomicU64,
    opened_at_ms: AtomicU64,
    ejections: AtomicU32,
    consecutive_failures: AtomicU32,
    cooldown_until_ms: AtomicU64,
    last_cooldown_ms: AtomicU64,
    in_flight: AtomicU32,
    latency_us: AtomicU64,
    latency_stamp_ms: AtomicU64,
    error_rate: AtomicU64,
    admitted_at_ms: AtomicU64,
    wrr_current: AtomicI64,
    window: RequestWindow,
    successes: AtomicU64,
    failures: AtomicU64,
}

impl DeploymentState {
    /// A fresh record, admitted at `now_ms` (slow start begins), counted
    /// on its own.
    pub fn new(now_ms: u64) -> Self {
        Self::counted(now_ms, OpenCircuits::default())
    }

    /// A fresh record whose circuit, while not closed, counts in `open_circuits`.
    pub fn counted(now_ms: u64, open_circuits: OpenCircuits) -> Self {
        Self {
            health: AtomicU8::new(Health::Healthy.as_u8()),
            degraded_until_ms: AtomicU64::new(0),
            circuit: AtomicU8::new(CircuitState::Closed.as_u8()),
            open_circuits,
            probe_taken: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            opened_at_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            cooldown_until_ms: AtomicU64::new(0),
            last_cooldown_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            latency_us: AtomicU64::new(DEFAULT_LATENCY_US.to_bits()),
            latency_stamp_ms: AtomicU64::new(now_ms),
            error_rate: AtomicU64::new(0.0f64.to_bits()),
            admitted_at_ms: AtomicU64::new(now_ms),
            wrr_current: AtomicI64::new(0),
            window: RequestWindow::default(),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Health as last recorded.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(RELAXED))
    }

    /// Sets health; returns the previous value. A health set this way does
    /// not expire (operators and tests); see [`Self::degrade`].
    pub fn set_health(&self, health: Health) -> Health {
        self.degraded_until_ms.store(0, RELAXED);
        Health::from_u8(self.health.swap(health.as_u8(), RELAXED))
    }

    /// Marks the deployment degraded by recent errors until `until_ms`
    /// (extending, never shortening); returns the previous stored health.
    pub fn degrade(&self, until_ms: u64) -> Health {
        self.degraded_until_ms.fetch_max(until_ms, RELAXED);
        Health::from_u8(self.health.swap(Health::Degraded.as_u8(), RELAXED))
    }

    /// Health as selection sees it at `now_ms`: "degraded" means *recent*
    /// errors, so a degradation from errors ends when its hold does, and
    /// the deployment gets traffic again (else one error would starve it
    /// for good while a healthy peer exists).
    pub fn effective_health(&self, now_ms: u64) -> Health {
        let health = self.health();
        let until = self.degraded_until_ms.load(RELAXED);
        if health == Health::Degraded && until != 0 && now_ms >= until {
            Health::Healthy
        } else {
            health
        }
    }

    /// The stored circuit state (an `Open` circuit whose ejection ended is
    /// still `Open` here until a request takes its probe).
    pub fn circuit(&self) -> CircuitState {
        CircuitState::from_u8(self.circuit.load(RELAXED))
    }

    /// The circuit as selection sees it at `now_ms`.
    pub fn effective_circuit(&self, now_ms: u64) -> CircuitState {
        match self.circuit() {
            CircuitState::Open if now_ms >= self.ejected_until_ms.load(RELAXED) => {
                CircuitState::HalfOpen
            }
            other => other,
        }
    }

    /// Whether a request may take the probe permit now.
    pub fn probe_available(&self, now_ms: u64) -> bool {
        self.effective_circuit(now_ms) == CircuitState::HalfOpen && !self.probe_taken.load(RELAXED)
    }

    /// Takes the single probe permit. Returns `Some(true)` when this call
    /// also moved the circuit from open to half-open (emit the event),
    /// `Some(false)` when it was already half-open, `None` when no permit.
    pub fn try_take_probe(&self, now_ms: u64) -> Option<bool> {
        if self.effective_circuit(now_ms) != CircuitState::HalfOpen {
            return None;
        }
        if self
            .probe_taken
            .compare_exchange(false, true, Ordering::AcqRel, RELAXED)
            .is_err()
        {
            return None;
        }
        let was_open = self
            .circuit
            .compare_exchange(
                CircuitState::Open.as_u8(),
                CircuitState::HalfOpen.as_u8(),
                Ordering::AcqRel,
                RELAXED,
            )
            .is_ok();
        Some(was_open)
    }

    /// Gives the probe permit back (the probe was cancelled, not judged).
    pub fn release_probe(&self) {
        self.probe_taken.store(false, RELAXED);
    }

    /// Opens the circuit for `ejection` from `now_ms`; returns the ejection count.
    pub fn open_circuit(&self, now_ms: u64, ejection: Duration) -> u32 {
        let until = now_ms + u64::try_from(ejection.as_millis()).unwrap_or(u64::MAX / 2);
        self.ejected_until_ms.store(until, RELAXED);
        let was = self.circuit.swap(CircuitState::Open.as_u8(), RELAXED);
        if was == CircuitState::Closed.as_u8() {
            self.open_circuits.opened();
            self.opened_at_ms.store(now_ms, RELAXED);
        }
        self.probe_taken.store(false, RELAXED);
        self.consecutive_failures.store(0, RELAXED);
        self.set_health(Health::Unhealthy);
        self.ejections.fetch_add(1, RELAXED) + 1
    }

    /// Closes the circuit (a probe succeeded, or a reset); returns how long
    /// it had been open, if it was.
    pub fn close_circuit(&self, now_ms: u64) -> Option<Duration> {
        let was = self.circuit.swap(CircuitState::Closed.as_u8(), RELAXED);
        self.probe_taken.store(false, RELAXED);
        self.ejected_until_ms.store(0, RELAXED);
        self.consecutive_failures.store(0, RELAXED);
        if was == CircuitState::Closed.as_u8() {
            return None;
        }
        self.open_circuits.closed();
        self.admitted_at_ms.store(now_ms, RELAXED);
        let opened = self.opened_at_ms.swap(0, RELAXED);
        Some(Duration::from_millis(now_ms.saturating_sub(opened)))
    }

    /// Ends an ongoing ejection now, so the next request may probe
    /// (auto-recovery after a passing active check).
    pub fn end_ejection(&self, now_ms: u64) {
        if self.circuit() == CircuitState::Open {
            self.ejected_until_ms.fetch_min(now_ms, RELAXED);
        }
    }

    /// Ejections so far (drives the doubling; cleared by a reset).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(RELAXED)
    }

    /// When the current ejection ends (0 when none).
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(RELAXED)
    }

    /// Counts a breaker failure; returns the new run length.
    pub fn record_breaker_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, RELAXED) + 1
    }

    /// Failures in a row that count for the breaker.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(RELAXED)
    }

    /// Puts the deployment in cooldown until at least `now + duration`.
    /// Extends, never shortens. Returns the effective end.
    pub fn start_cooldown(&self, now_ms: u64, duration: Duration) -> u64 {
        let until = now_ms + u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 2);
        self.last_cooldown_ms.store(
            u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            RELAXED,
        );
        self.cooldown_until_ms.fetch_max(until, RELAXED).max(until)
    }

    /// The last cooldown's length (for 1 s → 30 s doubling without Retry-After).
    pub fn last_cooldown(&self) -> Duration {
        Duration::from_millis(self.last_cooldown_ms.load(RELAXED))
    }

    /// When the cooldown ends (0 when none).
    pub fn cooldown_until_ms(&self) -> u64 {
        self.cooldown_until_ms.load(RELAXED)
    }

    /// Whether the deployment is cooling down at `now_ms`.
    pub fn in_cooldown(&self, now_ms: u64) -> bool {
        now_ms < self.cooldown_until_ms.load(RELAXED)
    }

    /// Requests in flight on this deployment.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(RELAXED)
    }

    /// Takes one in-flight slot if fewer than `cap` are taken (no cap: always).
    pub(crate) fn try_enter(&self, cap: Option<u32>) -> bool {
        try_enter(&self.in_flight, cap)
    }

    pub(crate) fn record_request(&self, now_ms: u64) {
        self.window.record_request(now_ms);
    }

    pub(crate) fn end_call(&self) {
        self.in_flight.fetch_sub(1, RELAXED);
    }

    /// Records a finished call: latency into the peak EWMA, the outcome into
    /// the error-rate EWMA and the window.
    pub fn observe(&self, now_ms: u64, latency: Duration, success: bool) {
        let rtt = latency.as_secs_f64() * 1e6;
        let previous = load_f64(&self.latency_us);
        let elapsed = now_ms.saturating_sub(self.latency_stamp_ms.swap(now_ms, RELAXED)) as f64;
        let estimate = if rtt > previous {
            rtt
        } else {
            let decay = (-elapsed / LATENCY_DECAY_MS).exp();
            previous * decay + rtt * (1.0 - decay)
        };
        store_f64(&self.latency_us, estimate);
        let errors = load_f64(&self.error_rate);
        store_f64(
            &self.error_rate,
            errors * 0.9 + if success { 0.0 } else { 0.1 },
        );
        if success {
            self.successes.fetch_add(1, RELAXED);
        } else {
            self.failures.fetch_add(1, RELAXED);
            self.window.record_failure(now_ms);
        }
    }

    /// Peak-EWMA latency estimate in microseconds.
    pub fn latency_us(&self) -> f64 {
        load_f64(&self.latency_us)
    }

    /// Sets the latency estimate (tests, warm starts).
    pub fn set_latency(&self, latency: Duration) {
        store_f64(&self.latency_us, latency.as_secs_f64() * 1e6);
    }

    /// Recent error rate, 0..1 (an EWMA over outcomes).
    pub fn error_rate(&self) -> f64 {
        load_f64(&self.error_rate)
    }

    /// Slow-start factor at `now_ms`: 0.1 right after admission, 1 after 30 s.
    pub fn slow_start(&self, now_ms: u64) -> f64 {
        let age = now_ms.saturating_sub(self.admitted_at_ms.load(RELAXED));
        (age as f64 / SLOW_START_MS as f64).clamp(0.1, 1.0)
    }

    /// Marks the deployment as newly admitted (slow start again).
    pub fn readmit(&self, now_ms: u64) {
        self.admitted_at_ms.store(now_ms, RELAXED);
    }

    /// Scratch cell for stateful strategies (smooth weighted round-robin).
    pub fn strategy_scratch(&self) -> &AtomicI64 {
        &self.wrr_current
    }

    /// Requests started in the last minute.
    pub fn requests_per_minute(&self, now_ms: u64) -> u64 {
        self.window.per_minute(now_ms)
    }

    /// Requests and failures in the last minute.
    pub fn window_totals(&self, now_ms: u64) -> (u64, u64) {
        self.window.totals(now_ms)
    }

    /// Lifetime successes and failures.
    pub fn outcomes(&self) -> (u64, u64) {
        (self.successes.load(RELAXED), self.failures.load(RELAXED))
    }

    /// Clears failure counters, cooldowns and the circuit (`reset_provider`).
    pub fn reset(&self, now_ms: u64) {
        self.close_circuit(now_ms);
        self.ejections.store(0, RELAXED);
        self.cooldown_until_ms.store(0, RELAXED);
        self.last_cooldown_ms.store(0, RELAXED);
        store_f64(&self.error_rate, 0.0);
        self.set_health(Health::Healthy);
    }
}

impl Drop for DeploymentState {
    /// A deployment removed while its circuit is not closed stops counting.
    fn drop(&mut self) {
        if self.circuit() != CircuitState::Closed {
            self.open_circuits.closed();
        }
    }
}

/// Provider-wide state: shared by all of a provider's deployments.
#[derive(Debug)]
pub struct ProviderState {
    lifecycle: AtomicU8,
    health: AtomicU8,
    ejected_until_ms: AtomicU64,
    unhealthy_since_ms: AtomicU64,
    in_flight: AtomicU32,
    window: RequestWindow,
    checks_failed_in_row: AtomicU32,
    // `switchyard_attempts_total{provider, outcome="ok"}`, registered on
    // the first success: the hot path then skips hashing labels and
    // searching the recorder's registry. Install the recorder before
    // traffic; a handle keeps the recorder it was registered with.
    ok_attempts: std::sync::OnceLock<metrics::Counter>,
}

impl ProviderState {
    /// A fresh record in the `created` state.
    pub fn new() -> Self {
        Self {
            lifecycle: AtomicU8::new(Lifecycle::Created.as_u8()),
            health: AtomicU8::new(Health::Healthy.as_u8()),
            ejected_until_ms: AtomicU64::new(0),
            unhealthy_since_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            window: RequestWindow::default(),
            checks_failed_in_row: AtomicU32::new(0),
            ok_attempts: std::sync::OnceLock::new(),
        }
    }

    /// The `ok` series of `switchyard_attempts_total` for `provider_id`.
    pub fn ok_attempts_counter(&self, provider_id: &str) -> &metrics::Counter {
        self.ok_attempts.get_or_init(|| {
            metrics::counter!("switchyard_attempts_total", "provider" => provider_id.to_owned(), "outcome" => "ok")
        })
    }

    /// Lifecycle state.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_u8(self.lifecycle.load(RELAXED))
    }

    /// Sets the lifecycle; returns the previous one.
    pub fn set_lifecycle(&self, to: Lifecycle) -> Lifecycle {
        Lifecycle::from_u8(self.lifecycle.swap(to.as_u8(), RELAXED))
    }

    /// Provider-wide health (active checks, provider-wide errors).
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(RELAXED))
    }

    /// Sets provider-wide health; returns the previous value. Records when
    /// it became unhealthy so recovery time can be measured.
    pub fn set_health(&self, health: Health, now_ms: u64) -> Health {
        let previous = Health::from_u8(self.health.swap(health.as_u8(), RELAXED));
        if health == Health::Unhealthy && previous != Health::Unhealthy {
            self.unhealthy_since_ms.store(now_ms, RELAXED);
        }
        previous
    }

    /// When it last became unhealthy (0 when it is not).
    pub fn unhealthy_since_ms(&self) -> u64 {
        self.unhealthy_since_ms.load(RELAXED)
    }

    /// Ejects every deployment of the provider until `now + ejection`.
    pub fn eject(&self, now_ms: u64, ejection: Duration) {
        let until = now_ms + u64::try_from(ejection.as_millis()).unwrap_or(u64::MAX / 2);
        self.ejected_until_ms.fetch_max(until, RELAXED);
    }

    /// Ends a provider-wide ejection.
    pub fn clear_ejection(&self) {
        self.ejected_until_ms.store(0, RELAXED);
    }

    /// Whether a provider-wide ejection holds at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(RELAXED)
    }

    /// Requests in flight across the provider.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(RELAXED)
    }

    /// Takes one in-flight slot if fewer than `cap` are taken (no cap: always).
    pub(crate) fn try_enter(&self, cap: Option<u32>) -> bool {
        try_enter(&self.in_flight, cap)
    }

    pub(crate) fn record_request(&self, now_ms: u64) {
        self.window.record_request(now_ms);
    }

    pub(crate) fn end_call(&self, failed: bool, now_ms: u64) {
        self.in_flight.fetch_sub(1, RELAXED);
        if failed {
            self.window.record_failure(now_ms);
        }
    }

    /// Requests and failures in the last minute, across the provider.
    pub fn window_totals(&self, now_ms: u64) -> (u64, u64) {
        self.window.totals(now_ms)
    }

    /// Counts a failed active check; returns the run length.
    pub fn record_check(&self, passed: bool) -> u32 {
        if passed {
            self.checks_failed_in_row.store(0, RELAXED);
            0
        } else {
            self.checks_failed_in_row.fetch_add(1, RELAXED) + 1
        }
    }
}

impl Default for ProviderState {
    fn default() -> Self {
        Self::new()
    }
}

/// The default sliding window length.
pub const REQUEST_WINDOW: Duration = Duration::from_millis(WINDOW_MS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_permit_is_single_and_released_on_cancel() {
        let s = DeploymentState::new(1);
        assert_eq!(s.try_take_probe(10), None, "closed circuits have no probe");
        s.open_circuit(10, Duration::from_secs(5));
        assert_eq!(s.effective_circuit(5_009), CircuitState::Open);
        assert_eq!(s.try_take_probe(5_009), None);
        assert!(s.probe_available(5_010));
        assert_eq!(s.try_take_probe(5_010), Some(true));
        assert_eq!(s.try_take_probe(5_010), None, "only one probe at a time");
        s.release_probe();
        assert_eq!(s.try_take_probe(5_011), Some(false));
        assert_eq!(s.close_circuit(6_010), Some(Duration::from_millis(6_000)));
        assert_eq!(s.circuit(), CircuitState::Closed);
    }

    #[test]
    fn open_circuits_count_each_circuit_once_until_closed_or_dropped() {
        let shared = OpenCircuits::default();
        let a = DeploymentState::counted(0, shared.clone());
        let b = DeploymentState::counted(0, shared.clone());
        assert!(!shared.any());
        a.open_circuit(10, Duration::from_secs(5));
        a.open_circuit(20, Duration::from_secs(10));
        assert_eq!(shared.count(), 1, "re-opening an open circuit counts once");
        assert_eq!(a.try_take_probe(10_020), Some(true));
        assert_eq!(shared.count(), 1, "half-open still counts");
        b.open_circuit(30, Duration::from_secs(5));
        assert_eq!(shared.count(), 2);
        assert!(a.close_circuit(10_030).is_some());
        assert_eq!(a.close_circuit(10_031), None);
        a.reset(10_032);
        assert_eq!(
            shared.count(),
            1,
            "closing twice or resetting a closed one uncounts once"
        );
        drop(b);
        assert!(
            !shared.any(),
            "a deployment dropped while open stops counting"
        );
        drop(a);
        assert!(!shared.any());
    }

    #[test]
    fn cooldowns_extend_and_never_shorten() {
        let s = DeploymentState::new(1);
        assert_eq!(s.start_cooldown(1_000, Duration::from_secs(5)), 6_000);
        assert_eq!(s.start_cooldown(2_000, Duration::from_secs(1)), 6_000);
        assert!(s.in_cooldown(5_999) && !s.in_cooldown(6_000));
        assert_eq!(s.start_cooldown(3_000, Duration::from_secs(10)), 13_000);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let s = DeploymentState::new(0);
        s.observe(10, Duration::from_millis(200), true);
        assert!((s.latency_us() - 200_000.0).abs() < 1.0);
        s.observe(10_010, Duration::from_millis(100), true);
        let expected = 200_000.0 * (-1.0f64).exp() + 100_000.0 * (1.0 - (-1.0f64).exp());
        assert!(
            (s.latency_us() - expected).abs() < 1.0,
            "{}",
            s.latency_us()
        );
        s.observe(10_020, Duration::from_millis(10), false);
        assert!(s.error_rate() > 0.09);
    }

    #[test]
    fn window_counts_the_last_minute_only() {
        let w = RequestWindow::default();
        for t in [0, 1_000, 30_000, 59_000] {
            w.record_request(t);
        }
        w.record_failure(59_000);
        assert_eq!(w.totals(59_500), (4, 1));
        assert_eq!(
            w.per_minute(61_000),
            2,
            "the first 5 s bucket (0 ms and 1,000 ms) aged out"
        );
        assert_eq!(w.per_minute(200_000), 0);
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_one() {
        let s = DeploymentState::new(0);
        assert!((s.slow_start(0) - 0.1).abs() < 1e-9);
        assert!((s.slow_start(15_000) - 0.5).abs() < 1e-9);
        assert!((s.slow_start(60_000) - 1.0).abs() < 1e-9);
    }
}
