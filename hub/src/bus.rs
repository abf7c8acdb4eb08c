//! The one in-process event bus. Publishers never wait: a subscriber that falls behind loses the
//! oldest events, and each loss is counted (`hub_bus_lagged_total{subscriber}`) and logged. Whatever
//! must not be lost is persisted by the publisher before `publish`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use rules::{Event, EventKind};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Events a subscriber may fall behind by before it loses the oldest.
pub const BUS_CAPACITY: usize = 65_536;

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Event>>,
    next_id: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// Cancelled at shutdown: ends every subscription, so that endless readers (the SSE stream)
    /// let the HTTP server finish.
    closed: CancellationToken,
}

impl Bus {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let (tx, _) = broadcast::channel(BUS_CAPACITY);
        // Ids start at the current time in microseconds so they keep increasing across restarts.
        let start = u64::try_from(Utc::now().timestamp_micros()).unwrap_or(1);
        Self {
            tx,
            next_id: Arc::new(AtomicU64::new(start)),
            metrics,
            closed: CancellationToken::new(),
        }
    }

    /// Ends every subscription: `recv` answers `None` from now on.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Stamps the event with an id and the current time.
    pub fn event(&self, source: &str, kind: EventKind) -> Event {
        Event {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            at: Utc::now(),
            source: source.to_owned(),
            kind,
        }
    }

    /// Hands the event to every subscriber; never blocks.
    pub fn publish(&self, event: Event) -> Arc<Event> {
        let event = Arc::new(event);
        self.metrics
            .inc("hub_bus_published_total", &[("kind", event.kind.name())]);
        // No subscriber is not an error: the event was persisted by the caller if it had to be.
        if self.tx.send(event.clone()).is_err() {
            self.metrics.inc("hub_bus_unheard_total", &[]);
        }
        event
    }

    /// `publish` for a batch (a round of readings): the same events in order, with the counters
    /// updated once per kind instead of once per event, which cost more than the send at 100,000
    /// readings per second.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Event>) {
        let mut counts: Vec<(&'static str, u64)> = Vec::new();
        let mut unheard = 0;
        for event in events {
            let kind = event.kind.name();
            match counts.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => counts.push((kind, 1)),
            }
            if self.tx.send(Arc::new(event)).is_err() {
                unheard += 1;
            }
        }
        for (kind, n) in counts {
            self.metrics
                .add("hub_bus_published_total", &[("kind", kind)], n);
        }
        if unheard > 0 {
            self.metrics.add("hub_bus_unheard_total", &[], unheard);
        }
    }

    pub fn subscribe(&self, name: &'static str) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
            name,
            metrics: self.metrics.clone(),
            closed: self.closed.clone(),
        }
    }
}

pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
    name: &'static str,
    metrics: Arc<Metrics>,
    closed: CancellationToken,
}

impl Subscription {
    /// The next event if one is waiting, without waiting: lets a busy subscriber take a run of
    /// events per wake-up. Lost events are counted as in `recv`.
    pub fn try_recv(&mut self) -> Option<Arc<Event>> {
        loop {
            match self.rx.try_recv() {
                Ok(e) => return Some(e),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lagged(n),
                Err(
                    broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed,
                ) => return None,
            }
        }
    }

    fn lagged(&self, n: u64) {
        self.metrics
            .add("hub_bus_lagged_total", &[("subscriber", self.name)], n);
        tracing::warn!(
            subscriber = self.name,
            lost = n,
            "bus subscriber fell behind"
        );
    }

    /// The next event; `None` once the bus is gone or closed. Lost events are counted, not fatal.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        loop {
            let received = tokio::select! {
                _ = self.closed.cancelled() => return None,
                r = self.rx.recv() => r,
            };
            match received {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lagged(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_subscriber_never_blocks_and_losses_are_counted() {
        let metrics = Arc::new(Metrics::default());
        let bus = Bus::new(metrics.clone());
        let mut slow = bus.subscribe("slow");
        for i in 0..BUS_CAPACITY + 10 {
            bus.publish(bus.event(
                "test",
                EventKind::Tick {
                    schedule: i.to_string(),
                },
            ));
        }
        let first = slow.recv().await.unwrap();
        assert_eq!(
            first.kind,
            EventKind::Tick {
                schedule: "10".into()
            }
        );
        assert_eq!(
            metrics.get("hub_bus_lagged_total", &[("subscriber", "slow")]),
            10
        );
    }

    #[tokio::test]
    async fn publish_all_delivers_in_order_and_counts_per_kind() {
        let metrics = Arc::new(Metrics::default());
        let bus = Bus::new(metrics.clone());
        let mut sub = bus.subscribe("test");
        let tick = |s: &str| EventKind::Tick {
            schedule: s.to_string(),
        };
        bus.publish_all(["a", "b"].map(|s| bus.event("test", tick(s))));
        bus.publish(bus.event("test", tick("c")));
        for s in ["a", "b", "c"] {
            assert_eq!(sub.recv().await.unwrap().kind, tick(s));
        }
        assert_eq!(
            metrics.get("hub_bus_published_total", &[("kind", "tick")]),
            3
        );
        drop(sub);
        bus.publish_all([bus.event("test", tick("d"))]);
        assert_eq!(metrics.get("hub_bus_unheard_total", &[]), 1);
    }

    #[tokio::test]
    async fn close_ends_subscriptions() {
        let bus = Bus::new(Arc::new(Metrics::default()));
        let mut sub = bus.subscribe("sse");
        bus.close();
        assert!(sub.recv().await.is_none());
    }

    #[test]
    fn ids_increase() {
        let bus = Bus::new(Arc::new(Metrics::default()));
        let a = bus.event(
            "t",
            EventKind::Tick {
                schedule: "x".into(),
            },
        );
        let b = bus.event(
            "t",
            EventKind::Tick {
                schedule: "x".into(),
            },
        );
        assert!(b.id > a.id);
    }
}
