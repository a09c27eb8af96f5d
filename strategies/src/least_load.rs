//! `least_load`: send the request to the candidate with the lowest SPEC §3 load.
//!
//! Load is `100 × clamp(0.7 × utilization + 0.3 × latency_factor)` (see
//! [`Deployment::load`](switchyard_core::Deployment::load)). Ties, common when
//! no limits are configured and latencies match, go to the candidate with
//! fewer requests in flight, then to the earlier one in the tier's stable
//! order, so the choice is deterministic for a given state.

use switchyard_core::{CandidateSet, RequestContext, SelectionStrategy};

/// Lowest load, ties by in-flight, then by position.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeastLoad;

impl SelectionStrategy for LeastLoad {
    fn name(&self) -> &str {
        "least_load"
    }

    fn select(&self, candidates: &CandidateSet<'_>, _ctx: &RequestContext<'_>) -> Option<usize> {
        // `min_by_key` keeps the first of equal keys: the position tie-break.
        candidates.min_by_key(|c| (c.load(), c.in_flight()))
    }
}
