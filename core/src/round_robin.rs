//! `round_robin`: the default strategy, kept in core so the manager works alone.
//!
//! One cursor per model (not per tier, and not the seed's
//! `providerSwitches % n`, which can index past a shrunken list): each pick
//! takes `cursor % len` of the current tier. The manager runs it as a
//! rotation ([`SelectionStrategy::rotates`]): from the cursor to the next
//! usable deployment, without listing the tier first.

use std::sync::atomic::Ordering;

use crate::strategy::{CandidateSet, RequestContext, SelectionStrategy};

/// Round-robin within the tier, cursor per model.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundRobin;

impl SelectionStrategy for RoundRobin {
    fn name(&self) -> &str {
        "round_robin"
    }

    fn select(&self, candidates: &CandidateSet<'_>, ctx: &RequestContext<'_>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        Some(ctx.cursor.fetch_add(1, Ordering::Relaxed) % candidates.len())
    }

    fn rotates(&self) -> bool {
        true
    }
}
