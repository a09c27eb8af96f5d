//! A typed event bus: publishers never block, many subscribers, lag reported.
//!
//! Switchyard's manager reports everything that happens to providers
//! (added, ejected, recovered, switched ...) as events. Operators watch them
//! live (`GET /admin/events`), tests assert on them, and the last few are kept
//! for late joiners. The bus is generic over the event type so that this crate
//! depends on no other workspace crate.
//!
//! Design:
//! - [`EventBus::publish`] never blocks and never fails: it pushes into a
//!   bounded ring (a short, uncontended lock around a `VecDeque`) and into a
//!   `tokio::sync::broadcast` channel, which overwrites the oldest entry when
//!   a subscriber falls behind.
//! - A subscriber that fell behind receives [`Received::Lagged`] with the
//!   number of events it lost, then continues with the oldest event still
//!   kept. It is never silently skipped ahead.
//! - Every published event is also written to `tracing` through
//!   [`BusEvent::trace`], so logs and the bus never disagree.
//!
//! ```
//! use switchyard_events::{BusEvent, EventBus, Received};
//!
//! #[derive(Clone, Debug, PartialEq)]
//! struct Ping(u32);
//! impl BusEvent for Ping {
//!     fn name(&self) -> &'static str { "ping" }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let bus = EventBus::new(16, 4);
//! let mut sub = bus.subscribe();
//! bus.publish(Ping(1));
//! assert_eq!(sub.recv().await, Some(Received::Event(Ping(1))));
//! assert_eq!(bus.recent(10), vec![Ping(1)]);
//! # });
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

/// What an event type must offer to travel on the bus.
pub trait BusEvent: Clone + Send + Sync + 'static {
    /// Stable snake_case name, e.g. `provider_added`.
    fn name(&self) -> &'static str;

    /// Writes the event to `tracing`. The default logs the name at INFO;
    /// event types override it to add structured fields.
    fn trace(&self) {
        tracing::info!(event = self.name(), "event");
    }
}

/// What a subscriber gets from [`Subscription::recv`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received<E> {
    /// The next event, in publication order.
    Event(E),
    /// The subscriber was too slow: this many events were dropped for it.
    Lagged(u64),
}

struct Inner<E> {
    sender: broadcast::Sender<E>,
    recent: Mutex<VecDeque<E>>,
    recent_capacity: usize,
}

/// A cheaply cloneable handle to one bus.
pub struct EventBus<E: BusEvent> {
    inner: Arc<Inner<E>>,
}

impl<E: BusEvent> Clone for EventBus<E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<E: BusEvent> std::fmt::Debug for EventBus<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.subscriber_count())
            .field("recent_capacity", &self.inner.recent_capacity)
            .finish()
    }
}

impl<E: BusEvent> Default for EventBus<E> {
    fn default() -> Self {
        Self::new(1024, 1024)
    }
}

impl<E: BusEvent> EventBus<E> {
    /// A bus whose subscribers may fall `channel_capacity` events behind
    /// before they lose events, keeping the last `recent_capacity` events.
    pub fn new(channel_capacity: usize, recent_capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(channel_capacity.max(1));
        Self {
            inner: Arc::new(Inner {
                sender,
                recent: Mutex::new(VecDeque::with_capacity(recent_capacity)),
                recent_capacity,
            }),
        }
    }

    /// Publishes an event to every subscriber and the recent ring.
    /// Never blocks on subscribers and never fails: with no subscriber the
    /// event still reaches the ring and the log.
    pub fn publish(&self, event: E) {
        event.trace();
        if self.inner.recent_capacity > 0 {
            let mut recent = self.inner.recent.lock();
            if recent.len() == self.inner.recent_capacity {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // An error only means "no subscriber right now", which is fine.
        let _ = self.inner.sender.send(event);
    }

    /// A new subscriber that sees every event published from now on.
    pub fn subscribe(&self) -> Subscription<E> {
        Subscription {
            receiver: self.inner.sender.subscribe(),
        }
    }

    /// Atomically the last `n` kept events (oldest first) and a subscription
    /// that continues exactly after them, so a replay-then-follow consumer
    /// neither misses nor repeats an event.
    pub fn recent_and_subscribe(&self, n: usize) -> (Vec<E>, Subscription<E>) {
        let recent = self.inner.recent.lock();
        let sub = self.subscribe();
        let skip = recent.len().saturating_sub(n);
        (recent.iter().skip(skip).cloned().collect(), sub)
    }

    /// The last `n` kept events, oldest first.
    pub fn recent(&self, n: usize) -> Vec<E> {
        let recent = self.inner.recent.lock();
        let skip = recent.len().saturating_sub(n);
        recent.iter().skip(skip).cloned().collect()
    }

    /// Number of live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.inner.sender.receiver_count()
    }
}

/// One subscriber's view of the bus.
pub struct Subscription<E> {
    receiver: broadcast::Receiver<E>,
}

impl<E: Clone> std::fmt::Debug for Subscription<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pending", &self.receiver.len())
            .finish()
    }
}

impl<E: Clone> Subscription<E> {
    /// Waits for the next event. `None` once every bus handle is dropped.
    pub async fn recv(&mut self) -> Option<Received<E>> {
        match self.receiver.recv().await {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::RecvError::Lagged(lost)) => Some(Received::Lagged(lost)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is already waiting.
    pub fn try_recv(&mut self) -> Option<Received<E>> {
        match self.receiver.try_recv() {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::TryRecvError::Lagged(lost)) => Some(Received::Lagged(lost)),
            Err(_) => None,
        }
    }

    /// Every event already waiting, with lag markers where events were lost.
    pub fn drain(&mut self) -> Vec<Received<E>> {
        std::iter::from_fn(|| self.try_recv()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Num(u64);
    impl BusEvent for Num {
        fn name(&self) -> &'static str {
            "num"
        }
    }

    #[tokio::test]
    async fn every_subscriber_sees_every_event_in_order() {
        let bus = EventBus::new(8, 8);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        for i in 0..5 {
            bus.publish(Num(i));
        }
        let expected: Vec<_> = (0..5).map(|i| Received::Event(Num(i))).collect();
        assert_eq!(a.drain(), expected);
        assert_eq!(b.drain(), expected);
        assert_eq!(bus.subscriber_count(), 2);
    }

    #[tokio::test]
    async fn publish_without_subscribers_still_fills_the_ring() {
        let bus = EventBus::new(4, 3);
        for i in 0..10 {
            bus.publish(Num(i));
        }
        assert_eq!(bus.recent(100), vec![Num(7), Num(8), Num(9)]);
        assert_eq!(bus.recent(2), vec![Num(8), Num(9)]);
        assert_eq!(bus.recent(0), vec![]);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_how_many_it_lost() {
        let bus = EventBus::new(4, 0);
        let mut slow = bus.subscribe();
        for i in 0..10 {
            bus.publish(Num(i));
        }
        // Publishing 10 into a channel of 4 never blocked; the reader lost 6.
        assert_eq!(slow.recv().await, Some(Received::Lagged(6)));
        let rest = slow.drain();
        assert_eq!(
            rest,
            (6..10).map(|i| Received::Event(Num(i))).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn replay_then_follow_neither_misses_nor_repeats() {
        let bus = EventBus::new(16, 16);
        bus.publish(Num(1));
        bus.publish(Num(2));
        let (replayed, mut sub) = bus.recent_and_subscribe(5);
        bus.publish(Num(3));
        assert_eq!(replayed, vec![Num(1), Num(2)]);
        assert_eq!(sub.drain(), vec![Received::Event(Num(3))]);
    }

    #[tokio::test]
    async fn recv_ends_when_the_bus_is_gone() {
        let bus: EventBus<Num> = EventBus::new(4, 4);
        let mut sub = bus.subscribe();
        drop(bus);
        assert_eq!(sub.recv().await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishers_never_block() {
        let bus = EventBus::new(2, 2);
        let _never_reads = bus.subscribe();
        let mut tasks = Vec::new();
        for t in 0..4 {
            let bus = bus.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..1000 {
                    bus.publish(Num(t * 1000 + i));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(bus.recent(10).len(), 2);
    }
}
