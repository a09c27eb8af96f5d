//! The gateway-wide request queue (SPEC §7).
//!
//! When every candidate of a model is at its concurrency or rate limit, a
//! request waits here, in arrival order, up to `queue_timeout`; a full
//! queue refuses at once. Arrival order comes from a fair (FIFO) async
//! mutex: only the request at the head waits for capacity, the others wait
//! for their turn. Capacity is signalled whenever a call ends or an unused
//! reservation is returned; a short poll covers rate limits that free up
//! by time alone.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, MutexGuard, Notify};
use tokio::time::Instant;

/// The waiting room.
pub(crate) struct RequestQueue {
    capacity: usize,
    waiting: AtomicUsize,
    turn: Mutex<()>,
    freed: Notify,
    metrics: bool,
}

impl RequestQueue {
    pub fn new(capacity: usize, metrics: bool) -> Self {
        if metrics {
            metrics::gauge!("switchyard_queue_depth").set(0.0);
        }
        Self {
            capacity,
            waiting: AtomicUsize::new(0),
            turn: Mutex::new(()),
            freed: Notify::new(),
            metrics,
        }
    }

    /// Wakes the head of the queue, if anyone waits (one atomic load otherwise).
    pub fn notify(&self) {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Joins the queue, or `None` when it is full.
    pub fn try_enter(&self) -> Option<QueueSlot<'_>> {
        let joined = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if !joined {
            return None;
        }
        if self.metrics {
            metrics::gauge!("switchyard_queue_depth").set(self.depth() as f64);
        }
        Some(QueueSlot {
            queue: self,
            entered: Instant::now(),
        })
    }

    /// Waits for this request's turn (arrival order).
    pub async fn turn(&self) -> MutexGuard<'_, ()> {
        self.turn.lock().await
    }

    /// Resolves when capacity may have been freed.
    pub async fn freed(&self) {
        self.freed.notified().await;
    }
}

/// A place in the queue; leaving records the wait.
pub(crate) struct QueueSlot<'a> {
    queue: &'a RequestQueue,
    entered: Instant,
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
        if self.queue.metrics {
            metrics::gauge!("switchyard_queue_depth").set(self.queue.depth() as f64);
            metrics::histogram!("switchyard_queue_wait_seconds")
                .record(self.entered.elapsed().as_secs_f64());
        }
    }
}
