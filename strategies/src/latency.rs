//! `latency`: power of two choices over peak-EWMA latency, with an error penalty and slow start.
//!
//! The idea is tower's `p2c` balancer over its `PeakEwma` load: pick two
//! distinct candidates at random and send the request to the cheaper one.
//! Comparing two random candidates instead of scanning for the global best
//! keeps concurrent pickers from herding onto one deployment between two
//! updates of its statistics, while still steering most traffic away from
//! slow or busy deployments: the most expensive candidate is never chosen,
//! and with `n` candidates the cheapest one wins every pair it is part of
//! (a share of `2 / n`, against `1 / n` for round-robin).
//!
//! The cost of a candidate is
//!
//! ```text
//! latency_us × (in_flight + 1) × (1 + ERROR_PENALTY × error_rate) / slow_start
//! ```
//!
//! - `latency_us`: the peak EWMA of observed latencies (it jumps up at once
//!   on a slow response and decays over `LATENCY_DECAY_MS`); a deployment with
//!   no history starts at `DEFAULT_LATENCY_US`.
//! - `in_flight + 1`: outstanding requests queue behind each other, so the
//!   expected wait grows with them (tower's `PeakEwma` uses the same factor).
//! - `1 + ERROR_PENALTY × error_rate`: a deployment that answers a fast 5xx
//!   must not look fast. See [`ERROR_PENALTY`].
//! - `slow_start`: 0.1 right after a deployment is admitted or recovers,
//!   rising linearly to 1 over `SLOW_START_MS`; dividing by it makes fresh
//!   deployments look up to ten times more expensive, so they ramp up
//!   instead of taking a flood of traffic with cold caches and connections.
//!
//! (`DEFAULT_LATENCY_US`, `LATENCY_DECAY_MS` and `SLOW_START_MS` are constants
//! of `switchyard_core::state`.)
//!
//! The strategy only ever picks among the candidates it is given, which the
//! manager has already restricted to one tier: an open circuit or a
//! deployment in cooldown is never chosen while closed ones exist.

use rand::Rng;
use switchyard_core::{Candidate, CandidateSet, RequestContext, SelectionStrategy};

/// How much a recent error rate inflates a candidate's cost: the cost is
/// multiplied by `1 + ERROR_PENALTY × error_rate`.
///
/// `error_rate` is an EWMA over outcomes (each outcome weighs 0.1), so one
/// recent failure makes a deployment look about 3× slower, a deployment that
/// fails half its calls about 11× slower, and one that fails every call 21×
/// slower. That is enough for a fast-failing deployment (5xx in a few
/// milliseconds) to lose against healthy ones an order of magnitude slower,
/// and it decays as soon as calls succeed again.
pub const ERROR_PENALTY: f64 = 20.0;

/// Power of two choices over peak-EWMA latency.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency;

impl Latency {
    /// The cost the strategy compares (lower is better). See the module docs.
    pub fn cost(candidate: &Candidate<'_>) -> f64 {
        let queue = f64::from(candidate.in_flight()) + 1.0;
        let penalty = 1.0 + ERROR_PENALTY * candidate.error_rate().clamp(0.0, 1.0);
        // `slow_start` is 0.1..=1; the floor guards a division by zero.
        let warm = candidate.slow_start().max(0.01);
        candidate.latency_us().max(0.0) * queue * penalty / warm
    }
}

impl SelectionStrategy for Latency {
    fn name(&self) -> &str {
        "latency"
    }

    fn select(&self, candidates: &CandidateSet<'_>, _ctx: &RequestContext<'_>) -> Option<usize> {
        let n = candidates.len();
        match n {
            0 => None,
            1 => Some(0),
            _ => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                // A second index distinct from the first, uniformly.
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let cost_a = candidates.get(a).map_or(f64::INFINITY, |c| Self::cost(&c));
                let cost_b = candidates.get(b).map_or(f64::INFINITY, |c| Self::cost(&c));
                // `<=` keeps `a` on ties; both were drawn at random anyway.
                Some(if cost_a <= cost_b { a } else { b })
            }
        }
    }
}
