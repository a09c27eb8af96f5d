//! `priority`: prefer the lowest `priority` value; fall to the next only when it is out.
//!
//! The manager has already removed candidates that are in cooldown, ejected,
//! open-circuited or at their limits, so "the highest tier still present in
//! the candidate set" is exactly "lower tiers only when higher ones are out"
//! (SPEC §4). Within the chosen priority the pick is round-robin on the
//! model's cursor. Two passes over the set, no allocation.

use std::sync::atomic::Ordering;

use switchyard_core::{CandidateSet, RequestContext, SelectionStrategy};

/// Only candidates with the lowest `priority` value; round-robin among them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Priority;

impl SelectionStrategy for Priority {
    fn name(&self) -> &str {
        "priority"
    }

    fn select(&self, candidates: &CandidateSet<'_>, ctx: &RequestContext<'_>) -> Option<usize> {
        let mut best = i32::MAX;
        let mut count = 0usize;
        for candidate in candidates.iter() {
            let priority = candidate.priority();
            if priority < best {
                best = priority;
                count = 1;
            } else if priority == best {
                count += 1;
            }
        }
        if count == 0 {
            return None;
        }
        let turn = ctx.cursor.fetch_add(1, Ordering::Relaxed) % count;
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.priority() == best)
            .nth(turn)
            .map(|(i, _)| i)
    }
}
