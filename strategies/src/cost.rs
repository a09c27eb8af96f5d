//! `cost`: send the request where it is expected to cost least.
//!
//! Expected cost is `input price × estimated prompt tokens + output price ×
//! expected output tokens` ([`Candidate::expected_cost`]; the output side
//! assumes `max_tokens`, or 256 when the request sets none). Prices come from
//! the model entry (`input_cost_per_mtok`, `output_cost_per_mtok`) or the
//! adapter's pricing table. Equal prices are broken by load, then by
//! in-flight, then by position, so equally cheap deployments share the work.
//!
//! [`Candidate::expected_cost`]: switchyard_core::Candidate::expected_cost

use switchyard_core::{CandidateSet, RequestContext, SelectionStrategy};

/// Cheapest expected cost, ties by load, then in-flight, then position.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost;

impl SelectionStrategy for Cost {
    fn name(&self) -> &str {
        "cost"
    }

    fn select(&self, candidates: &CandidateSet<'_>, ctx: &RequestContext<'_>) -> Option<usize> {
        candidates.min_by_key(|c| (c.expected_cost(ctx), c.load(), c.in_flight()))
    }
}
