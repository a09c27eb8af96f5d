//! The retry budget (SPEC §5): retries may add at most `ratio` of recent
//! requests plus a floor of `min_per_sec`, so an outage never becomes a
//! retry storm while a cold start still retries.
//!
//! Like tower's `TpsBudget`: every request deposits, every retry or switch
//! withdraws; both are counted in one-second slots over `ttl`. Lock-free.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::RetryBudgetConfig;

const RELAXED: Ordering = Ordering::Relaxed;
const MAX_SLOTS: usize = 60;

struct Slot {
    second: AtomicU64,
    deposits: AtomicU64,
    withdrawals: AtomicU64,
}

/// A sliding-window retry budget.
pub(crate) struct RetryBudget {
    ratio: f64,
    floor: f64,
    slots: Vec<Slot>,
}

impl RetryBudget {
    pub fn new(config: &RetryBudgetConfig) -> Self {
        let seconds = config.ttl.as_secs().clamp(1, MAX_SLOTS as u64);
        let slots = (0..seconds)
            .map(|_| Slot {
                second: AtomicU64::new(u64::MAX),
                deposits: AtomicU64::new(0),
                withdrawals: AtomicU64::new(0),
            })
            .collect();
        Self {
            ratio: config.ratio,
            floor: f64::from(config.min_per_sec) * seconds as f64,
            slots,
        }
    }

    fn slot(&self, now_ms: u64) -> Option<&Slot> {
        let second = now_ms / 1_000;
        let index = usize::try_from(second % self.slots.len() as u64).ok()?;
        let slot = self.slots.get(index)?;
        // Loaded first, as `RequestWindow` does: a swap is a locked
        // read-modify-write even when it changes nothing.
        if slot.second.load(RELAXED) != second && slot.second.swap(second, RELAXED) != second {
            slot.deposits.store(0, RELAXED);
            slot.withdrawals.store(0, RELAXED);
        }
        Some(slot)
    }

    fn totals(&self, now_ms: u64) -> (u64, u64) {
        let second = now_ms / 1_000;
        let window = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(|s| {
                let at = s.second.load(RELAXED);
                at <= second && second - at < window
            })
            .fold((0, 0), |(d, w), s| {
                (
                    d + s.deposits.load(RELAXED),
                    w + s.withdrawals.load(RELAXED),
                )
            })
    }

    /// Counts an original request.
    pub fn deposit(&self, now_ms: u64) {
        if let Some(slot) = self.slot(now_ms) {
            slot.deposits.fetch_add(1, RELAXED);
        }
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self, now_ms: u64) -> bool {
        let (deposits, withdrawals) = self.totals(now_ms);
        let allowed = self.floor + self.ratio * deposits as f64;
        if (withdrawals as f64) < allowed {
            if let Some(slot) = self.slot(now_ms) {
                slot.withdrawals.fetch_add(1, RELAXED);
            }
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(ratio: f64, min_per_sec: u32, ttl_secs: u64) -> RetryBudget {
        RetryBudget::new(&RetryBudgetConfig {
            ratio,
            min_per_sec,
            ttl: Duration::from_secs(ttl_secs),
        })
    }

    #[test]
    fn a_cold_start_still_retries_up_to_the_floor() {
        let b = budget(0.2, 10, 10);
        let granted = (0..1_000).filter(|_| b.try_withdraw(5_000)).count();
        assert_eq!(granted, 100, "10 per second over a 10 s window");
    }

    #[test]
    fn the_ratio_adds_to_the_floor_and_ages_out() {
        let b = budget(0.5, 0, 2);
        for _ in 0..100 {
            b.deposit(1_000);
        }
        assert_eq!((0..1_000).filter(|_| b.try_withdraw(1_500)).count(), 50);
        // Two seconds later the deposits and withdrawals have left the window.
        assert!(!b.try_withdraw(3_000));
        b.deposit(3_000);
        b.deposit(3_000);
        assert!(b.try_withdraw(3_000));
        assert!(!b.try_withdraw(3_000));
    }
}
