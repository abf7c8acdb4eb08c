//! Per-connector counters, visible through `GET /api/v1/connectors` and `/metrics`: what arrived, what
//! was accepted, what was rejected and why (per topic or register), and whether the peer is reachable.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Distinct rejection keys kept per connector; beyond that they are summed under `other` so junk with
/// random topics cannot grow memory without bound.
pub const MAX_REJECT_KEYS: usize = 256;

#[derive(Debug)]
pub struct ConnectorStats {
    pub id: String,
    /// `mqtt`, `modbus`.
    pub kind: &'static str,
    received: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    connected: AtomicBool,
    reconnects: AtomicU64,
    queue_depth: AtomicU64,
    /// Subscribed (MQTT): messages published from now on reach the hub.
    ready: AtomicBool,
    inner: Mutex<Inner>,
    log: RateLimitedLog,
}

#[derive(Debug, Default)]
struct Inner {
    /// key (topic, register or sensor) -> reason -> count
    rejects: BTreeMap<String, BTreeMap<String, u64>>,
    last_error: Option<String>,
}

/// A point-in-time copy of a connector's counters.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatsSnapshot {
    pub id: String,
    pub kind: String,
    pub connected: bool,
    pub received: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub reconnects: u64,
    /// Messages waiting inside the connector (MQTT: received, not yet parsed; Modbus: writes).
    pub queue_depth: u64,
    /// Rejections by topic (MQTT), register (Modbus) or sensor (unknown to the hub), then by reason.
    pub rejects: BTreeMap<String, BTreeMap<String, u64>>,
    pub last_error: Option<String>,
}

impl ConnectorStats {
    pub fn new(id: &str, kind: &'static str) -> Self {
        ConnectorStats {
            id: id.to_string(),
            kind,
            received: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            log: RateLimitedLog::new(Duration::from_secs(10), 5),
        }
    }

    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn accepted(&self, n: u64) {
        self.accepted.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one rejected message and logs it, at most a few lines per connector every 10 s.
    pub fn reject(&self, key: &str, reason: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut inner) = self.inner.lock() {
            let key = if inner.rejects.contains_key(key) || inner.rejects.len() < MAX_REJECT_KEYS {
                key
            } else {
                "other"
            };
            *inner
                .rejects
                .entry(key.to_string())
                .or_default()
                .entry(reason.to_string())
                .or_default() += 1;
        }
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(connector = %self.id, key, suppressed, "rejected: {reason}");
        }
    }

    /// Marks the peer reachable or not; a transition to unreachable records `error`.
    pub fn set_connected(&self, connected: bool, error: Option<&str>) {
        let was = self.connected.swap(connected, Ordering::Relaxed);
        if connected && !was {
            tracing::info!(connector = %self.id, "connected");
        }
        if let Some(e) = error {
            if let Ok(mut inner) = self.inner.lock() {
                inner.last_error = Some(e.to_string());
            }
            if was || self.log.allow().is_some() {
                tracing::warn!(connector = %self.id, "connection: {e}");
            }
        }
        if !connected && was {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records how many messages wait in the connector's own bounded queue.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .store(u64::try_from(depth).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The connector's subscriptions are in place (the broker acknowledged them).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let (rejects, last_error) = match self.inner.lock() {
            Ok(inner) => (inner.rejects.clone(), inner.last_error.clone()),
            Err(_) => (BTreeMap::new(), None),
        };
        StatsSnapshot {
            id: self.id.clone(),
            kind: self.kind.to_string(),
            connected: self.is_connected(),
            received: self.received.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            rejects,
            last_error,
        }
    }
}

/// Lets `burst` log lines through per `window`; `allow` returns how many were suppressed since the
/// last line that got through, so the next line can say so.
#[derive(Debug)]
pub struct RateLimitedLog {
    window: Duration,
    burst: u64,
    state: Mutex<(Instant, u64, u64)>,
}

impl RateLimitedLog {
    pub fn new(window: Duration, burst: u64) -> Self {
        RateLimitedLog {
            window,
            burst,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let Ok(mut s) = self.state.lock() else {
            return None;
        };
        let now = Instant::now();
        if now.duration_since(s.0) >= self.window {
            s.0 = now;
            s.1 = 0;
        }
        if s.1 < self.burst {
            s.1 += 1;
            let suppressed = s.2;
            s.2 = 0;
            Some(suppressed)
        } else {
            s.2 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_are_counted_per_key_and_bounded() {
        let s = ConnectorStats::new("m", "mqtt");
        s.reject("a/b", "not a number");
        s.reject("a/b", "not a number");
        for i in 0..MAX_REJECT_KEYS + 10 {
            s.reject(&format!("junk/{i}"), "unknown topic");
        }
        let snap = s.snapshot();
        assert_eq!(snap.rejected, MAX_REJECT_KEYS as u64 + 12);
        assert_eq!(snap.rejects["a/b"]["not a number"], 2);
        assert_eq!(snap.rejects.len(), MAX_REJECT_KEYS + 1);
        assert_eq!(snap.rejects["other"]["unknown topic"], 11);
    }

    #[test]
    fn the_log_is_rate_limited() {
        let l = RateLimitedLog::new(Duration::from_secs(3600), 2);
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
    }
}
