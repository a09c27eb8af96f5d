//! `weighted`: smooth weighted round-robin by each provider's `weight` (nginx's algorithm).
//!
//! Each pick adds every candidate's weight to its "current weight", chooses
//! the candidate with the largest current weight (the first on ties) and
//! subtracts the total weight from the chosen one. Over any window of
//! `total` picks each candidate is chosen exactly `weight` times, and the
//! picks are interleaved (5:1:1 gives `a a b a c a a`, not `a a a a a b c`).
//!
//! The current weights live in each deployment's scratch cell
//! ([`Candidate::scratch`]), so the strategy itself holds no state and no
//! lock. Concurrent picks may interleave their updates; the sum of current
//! weights is still conserved, so the split stays right on average and is
//! exact when picks are sequential. A candidate of weight 0 is never chosen
//! while any candidate has a positive weight; when all weights are 0 the
//! pick is plain round-robin on the model's cursor.
//!
//! [`Candidate::scratch`]: switchyard_core::Candidate::scratch

use std::sync::atomic::Ordering;

use switchyard_core::{CandidateSet, RequestContext, SelectionStrategy};

/// Smooth weighted round-robin.
#[derive(Clone, Copy, Debug, Default)]
pub struct Weighted;

impl SelectionStrategy for Weighted {
    fn name(&self) -> &str {
        "weighted"
    }

    fn select(&self, candidates: &CandidateSet<'_>, ctx: &RequestContext<'_>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (i, candidate) in candidates.iter().enumerate() {
            let weight = i64::from(candidate.weight());
            if weight == 0 {
                continue;
            }
            total += weight;
            let current = candidate
                .scratch()
                .fetch_add(weight, Ordering::Relaxed)
                .wrapping_add(weight);
            if best.is_none_or(|(_, b)| current > b) {
                best = Some((i, current));
            }
        }
        let Some((chosen, _)) = best else {
            // Every weight is 0: fall back to round-robin.
            return Some(ctx.cursor.fetch_add(1, Ordering::Relaxed) % candidates.len());
        };
        candidates
            .get(chosen)?
            .scratch()
            .fetch_sub(total, Ordering::Relaxed);
        Some(chosen)
    }
}
