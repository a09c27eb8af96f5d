//! Selection: the tiers of SPEC §4 and §4.1 over one model's deployments.
//!
//! Filters (enabled, request type, size, cooldown, limits, region, blue-green
//! set) then tiers: a free half-open probe; closed circuits, healthy before
//! degraded; panic mode last. The strategy picks within a tier. The eligible
//! indices go into a thread-local buffer, so a pick allocates nothing once
//! the buffer has grown to the model's size.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::ManagerError;
use crate::limits::DEFAULT_OUTPUT_ESTIMATE;
use crate::registry::{Deployment, ModelIndex, Registry};
use crate::state::{CircuitState, DeploymentState, Health};
use crate::strategy::{CandidateSet, RequestContext};
use crate::types::RequestType;

use super::ManagerInner;

thread_local! {
    static ELIGIBLE: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// What to select for.
#[derive(Clone, Copy, Debug)]
pub struct SelectRequest<'a> {
    /// Requested model.
    pub model: &'a str,
    /// Request type.
    pub request_type: RequestType,
    /// Region asked for by the client (else the manager's preference).
    pub region: Option<&'a str>,
    /// Estimated prompt tokens.
    pub estimated_input_tokens: u32,
    /// Requested output limit.
    pub max_output_tokens: Option<u32>,
    /// Deployments this request must not use again.
    pub exclude: &'a [Arc<DeploymentState>],
    /// Whether panic mode (tier 4) may be used.
    pub allow_panic: bool,
    /// Only deployments whose adapter speaks Anthropic Messages natively
    /// (requests using Anthropic-only features).
    pub require_anthropic_native: bool,
    /// Only deployments whose model declares `supports_prefill`.
    pub require_prefill: bool,
}

impl SelectRequest<'_> {
    /// Tokens to take from TPM limits: the prompt estimate plus the output limit.
    pub fn token_estimate(&self) -> u64 {
        u64::from(self.estimated_input_tokens)
            + u64::from(self.max_output_tokens.unwrap_or(DEFAULT_OUTPUT_ESTIMATE))
    }
}

impl<'a> SelectRequest<'a> {
    /// A request for `model` of `request_type` with no other constraint.
    pub fn new(model: &'a str, request_type: RequestType) -> Self {
        Self {
            model,
            request_type,
            region: None,
            estimated_input_tokens: 0,
            max_output_tokens: None,
            exclude: &[],
            allow_panic: true,
            require_anthropic_native: false,
            require_prefill: false,
        }
    }
}

/// The outcome of a pick.
pub(crate) struct Selected {
    pub reserved_tokens: u64,
    pub deployment: Arc<Deployment>,
    pub probe: bool,
    pub opened_half: bool,
    pub panic: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Tier {
    Healthy,
    Degraded,
    Panic,
}

pub(crate) fn select(
    inner: &ManagerInner,
    registry: &Registry,
    req: &SelectRequest<'_>,
) -> Result<Selected, ManagerError> {
    let unknown = || ManagerError::UnknownModel {
        model: req.model.to_owned(),
        request_type: req.request_type,
    };
    if registry.providers.is_empty() {
        return Err(ManagerError::NoProviders);
    }
    let index = registry.index(req.model).ok_or_else(unknown)?;
    if !index.deployments.iter().any(|d| {
        d.serves(req.request_type)
            && (!req.require_anthropic_native || d.provider().capabilities().anthropic_native)
    }) {
        return Err(unknown());
    }
    let now_ms = inner.clock.now_ms();
    let strict = index.route.as_ref().is_some_and(|r| r.region_strict);
    let preferred = req.region.or(inner.options.preferred_region.as_deref());
    let chosen_set = choose_set(index);
    let ctx = RequestContext {
        model: req.model,
        request_type: req.request_type,
        estimated_input_tokens: req.estimated_input_tokens,
        max_output_tokens: req.max_output_tokens,
        cursor: &index.runtime.cursor,
        now_ms,
    };
    let set_phases = [chosen_set, None];
    let set_phases = if chosen_set.is_some() {
        &set_phases[..]
    } else {
        &set_phases[1..]
    };
    let region_phases = [preferred, None];
    let region_phases = match (preferred, strict) {
        (Some(_), true) => &region_phases[..1],
        (Some(_), false) => &region_phases[..],
        (None, _) => &region_phases[1..],
    };
    let filter = Filter {
        inner,
        req,
        now_ms,
        tokens: req.token_estimate(),
    };
    for &set in set_phases {
        for &region in region_phases {
            if inner.open_circuits.any() {
                if let Some(selected) = filter.probe(index, set, region) {
                    return Ok(selected);
                }
            }
            for tier in [Tier::Healthy, Tier::Degraded] {
                if let Some(deployment) = filter.pick(index, set, region, tier, &ctx) {
                    return Ok(Selected {
                        reserved_tokens: filter.tokens,
                        deployment,
                        probe: false,
                        opened_half: false,
                        panic: false,
                    });
                }
            }
        }
    }
    if req.allow_panic {
        let region = if strict { preferred } else { None };
        if let Some(deployment) = filter.pick(index, None, region, Tier::Panic, &ctx) {
            return Ok(Selected {
                reserved_tokens: filter.tokens,
                deployment,
                probe: false,
                opened_half: false,
                panic: true,
            });
        }
    }
    let (at_limit, limit_release) = limits_holding_back(&filter, index);
    let retry_after = match (earliest_release(index, req, now_ms), limit_release) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Err(ManagerError::NoCapacity {
        model: req.model.to_owned(),
        retry_after,
        at_limit,
    })
}

/// Smooth weighted round-robin over blue-green sets (nginx's algorithm).
fn choose_set(index: &ModelIndex) -> Option<usize> {
    if index.sets.is_empty() {
        return None;
    }
    let total: i64 = index.sets.iter().map(|s| s.weight).sum();
    if total <= 0 {
        return None;
    }
    let mut best: Option<(usize, i64)> = None;
    for (i, set) in index.sets.iter().enumerate() {
        let current = set.current.fetch_add(set.weight, Ordering::Relaxed) + set.weight;
        if set.weight > 0 && best.is_none_or(|(_, b)| current > b) {
            best = Some((i, current));
        }
    }
    let (i, _) = best?;
    index
        .sets
        .get(i)?
        .current
        .fetch_sub(total, Ordering::Relaxed);
    Some(i)
}

/// When the soonest cooldown of the model's usable deployments ends (only
/// cooldowns are worth waiting for; an ejected deployment just failed).
fn earliest_release(index: &ModelIndex, req: &SelectRequest<'_>, now_ms: u64) -> Option<Duration> {
    index
        .deployments
        .iter()
        .filter(|d| {
            d.config().enabled
                && d.serves(req.request_type)
                && !req.exclude.iter().any(|s| Arc::ptr_eq(s, d.state()))
                && d.state().effective_circuit(now_ms) == CircuitState::Closed
        })
        .map(|d| d.state().cooldown_until_ms())
        .filter(|&until| until > now_ms)
        .min()
        .map(|until| Duration::from_millis(until - now_ms))
}

/// Whether some otherwise usable deployment is held back only by its
/// concurrency or rate limits, and when a rate limit frees up.
fn limits_holding_back(filter: &Filter<'_>, index: &ModelIndex) -> (bool, Option<Duration>) {
    let mut at_limit = false;
    let mut release: Option<Duration> = None;
    for d in &index.deployments {
        let usable = d.config().enabled
            && d.serves(filter.req.request_type)
            && d.fits(
                filter.req.estimated_input_tokens,
                filter.req.max_output_tokens,
            )
            && !filter.req.exclude.iter().any(|s| Arc::ptr_eq(s, d.state()))
            && filter.available(d)
            && matches!(
                d.state().effective_circuit(filter.now_ms),
                CircuitState::Closed | CircuitState::HalfOpen
            );
        if usable && (!d.has_capacity() || !d.limits().may_admit(filter.tokens)) {
            at_limit = true;
            if let Some(wait) = d.limits().blocked_for() {
                release = Some(release.map_or(wait, |r| r.min(wait)));
            }
        }
    }
    (at_limit, release)
}

struct Filter<'a> {
    inner: &'a ManagerInner,
    req: &'a SelectRequest<'a>,
    now_ms: u64,
    tokens: u64,
}

impl Filter<'_> {
    /// Filters every tier applies (panic mode included).
    fn base(
        &self,
        d: &Deployment,
        set: Option<&[u32]>,
        position: u32,
        region: Option<&str>,
    ) -> bool {
        d.config().enabled
            && d.serves(self.req.request_type)
            && d.fits(self.req.estimated_input_tokens, self.req.max_output_tokens)
            && set.is_none_or(|members| members.contains(&position))
            && region.is_none_or(|r| d.config().region.as_deref() == Some(r))
            && !self.req.exclude.iter().any(|s| Arc::ptr_eq(s, d.state()))
            && (!self.req.require_anthropic_native || d.provider().capabilities().anthropic_native)
            && (!self.req.require_prefill || d.model_config().supports_prefill)
            && d.has_capacity()
            && d.limits().may_admit(self.tokens)
            && self.inner.admission.admits(d)
    }

    /// Takes the deployment's in-flight slot and rate-limit share; `false`
    /// (nothing taken) when another request got there first.
    fn admit(&self, d: &Deployment) -> bool {
        if !d.try_reserve() {
            return false;
        }
        if d.limits().try_acquire(self.tokens).is_err() {
            d.release_reservation();
            return false;
        }
        true
    }

    /// Filters of the non-panic tiers: no cooldown, no provider-wide ejection.
    fn available(&self, d: &Deployment) -> bool {
        !d.state().in_cooldown(self.now_ms)
            && !d.provider_state().is_ejected(self.now_ms)
            && d.provider_state().health() != Health::Unhealthy
    }

    fn probe(
        &self,
        index: &ModelIndex,
        set: Option<usize>,
        region: Option<&str>,
    ) -> Option<Selected> {
        let members = set
            .and_then(|s| index.sets.get(s))
            .map(|s| s.members.as_slice());
        for (position, d) in (0u32..).zip(&index.deployments) {
            if d.state().probe_available(self.now_ms)
                && self.base(d, members, position, region)
                && self.available(d)
            {
                if let Some(opened_half) = d.state().try_take_probe(self.now_ms) {
                    if !self.admit(d) {
                        d.state().release_probe();
                        continue;
                    }
                    return Some(Selected {
                        reserved_tokens: self.tokens,
                        deployment: Arc::clone(d),
                        probe: true,
                        opened_half,
                        panic: false,
                    });
                }
            }
        }
        None
    }

    fn in_tier(&self, d: &Deployment, tier: Tier) -> bool {
        match tier {
            Tier::Panic => true,
            Tier::Healthy | Tier::Degraded => {
                self.available(d)
                    && d.state().effective_circuit(self.now_ms) == CircuitState::Closed
                    && match d.health(self.now_ms) {
                        Health::Healthy => tier == Tier::Healthy,
                        Health::Degraded => tier == Tier::Degraded,
                        Health::Unhealthy | Health::Disabled => false,
                    }
            }
        }
    }

    /// The first usable deployment of the tier from the model's cursor on.
    fn rotate(
        &self,
        index: &ModelIndex,
        members: Option<&[u32]>,
        region: Option<&str>,
        tier: Tier,
        ctx: &RequestContext<'_>,
    ) -> Option<Arc<Deployment>> {
        let count = index.deployments.len();
        if count == 0 {
            return None;
        }
        // The cursor moves past what this pick skipped, so an unusable
        // deployment's turns are shared out, not all given to its successor.
        let start = ctx.cursor.fetch_add(1, Ordering::Relaxed) % count;
        let (front, back) = (
            index.deployments.get(..start).unwrap_or_default(),
            index.deployments.get(start..).unwrap_or_default(),
        );
        let order = back.iter().zip(start..).chain(front.iter().zip(0..));
        for (skipped, (d, position)) in order.enumerate() {
            let position = u32::try_from(position).ok()?;
            if self.base(d, members, position, region) && self.in_tier(d, tier) && self.admit(d) {
                if skipped > 0 {
                    ctx.cursor.fetch_add(skipped, Ordering::Relaxed);
                }
                return Some(Arc::clone(d));
            }
        }
        // An empty tier leaves the cursor where it was for the next tier.
        ctx.cursor.fetch_sub(1, Ordering::Relaxed);
        None
    }

    fn pick(
        &self,
        index: &ModelIndex,
        set: Option<usize>,
        region: Option<&str>,
        tier: Tier,
        ctx: &RequestContext<'_>,
    ) -> Option<Arc<Deployment>> {
        let members = set
            .and_then(|s| index.sets.get(s))
            .map(|s| s.members.as_slice());
        if index.strategy.rotates() {
            return self.rotate(index, members, region, tier, ctx);
        }
        let fill = |eligible: &mut Vec<u32>| {
            eligible.clear();
            for (position, d) in (0u32..).zip(&index.deployments) {
                if self.base(d, members, position, region) && self.in_tier(d, tier) {
                    eligible.push(position);
                }
            }
            if eligible.is_empty() {
                return None;
            }
            // A pick can lose its slot to a concurrent request: pick again
            // (the loser is filtered out next round), a bounded number of times.
            for _ in 0..=index.deployments.len().min(64) {
                if eligible.is_empty() {
                    return None;
                }
                let candidates = CandidateSet::new(&index.deployments, eligible, self.now_ms);
                let chosen = index.strategy.select(&candidates, ctx)?;
                let position = usize::try_from(*eligible.get(chosen)?).ok()?;
                let deployment = index.deployments.get(position)?;
                if self.admit(deployment) {
                    return Some(Arc::clone(deployment));
                }
                eligible.remove(chosen);
            }
            None
        };
        ELIGIBLE.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut eligible) => fill(&mut eligible),
            // A strategy that re-enters selection gets a fresh buffer.
            Err(_) => fill(&mut Vec::new()),
        })
    }
}
