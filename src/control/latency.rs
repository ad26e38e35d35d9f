//! How long the session's proxied requests take, as a histogram the control
//! socket hands out (`openclaw serve`'s `GET /metrics` sums them). Timed
//! from the session's own events: from the decision that let a request go
//! upstream (`allowed`, or `approved` after a hold) to the end of its
//! exchange (`completed`: the response streamed back to the sandbox).
//! Refused requests never reach upstream and are not timed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use enforce::{Event, EventKind};
use serde::{Deserialize, Serialize};

/// Upper bounds of the buckets, in seconds (Prometheus `le`); a last,
/// unbounded bucket is implied (`count`).
pub const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Requests in flight remembered at most (a sandbox opening connections it
/// never finishes cannot grow the map without bound).
const MAX_IN_FLIGHT: usize = 4096;

/// The histogram on the wire: cumulative counts per bucket, as Prometheus
/// has them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyWire {
    /// `(le, requests that took at most le seconds)`, in [`BUCKETS`] order.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

#[derive(Default)]
struct Inner {
    /// Requests let through, by (connection, request number): since when.
    in_flight: HashMap<(u64, u64), Instant>,
    /// Non-cumulative: requests whose duration fell in each bucket.
    per_bucket: Vec<u64>,
    count: u64,
    sum_seconds: f64,
}

/// The session's request latency so far.
#[derive(Default)]
pub struct RequestLatency {
    inner: Mutex<Inner>,
}

impl RequestLatency {
    /// Takes one event of the session's stream, at the time it arrives.
    pub fn observe(&self, event: &Event, now: Instant) {
        // Request 0 is DNS and connection-level: no exchange to time.
        if event.request == 0 {
            return;
        }
        let key = (event.conn, event.request);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match event.kind {
            EventKind::Allowed | EventKind::Approved => {
                if inner.in_flight.len() >= MAX_IN_FLIGHT {
                    // The oldest are the likeliest abandoned.
                    if let Some(oldest) = inner
                        .in_flight
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(k, _)| *k)
                    {
                        inner.in_flight.remove(&oldest);
                    }
                }
                inner.in_flight.insert(key, now);
            }
            EventKind::Completed => {
                if let Some(since) = inner.in_flight.remove(&key) {
                    let seconds = now.saturating_duration_since(since).as_secs_f64();
                    inner.record(seconds);
                }
            }
            EventKind::Blocked | EventKind::Denied => {
                inner.in_flight.remove(&key);
            }
            _ => {}
        }
    }

    /// Events were lost (the reader fell behind): starts it can no longer
    /// match with their ends are forgotten rather than timed wrongly.
    pub fn lost_events(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.in_flight.clear();
    }

    pub fn snapshot(&self) -> LatencyWire {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut running = 0;
        let buckets = BUCKETS
            .iter()
            .enumerate()
            .map(|(i, le)| {
                running += inner.per_bucket.get(i).copied().unwrap_or(0);
                (*le, running)
            })
            .collect();
        LatencyWire {
            buckets,
            count: inner.count,
            sum_seconds: inner.sum_seconds,
        }
    }
}

impl Inner {
    fn record(&mut self, seconds: f64) {
        if self.per_bucket.is_empty() {
            self.per_bucket = vec![0; BUCKETS.len()];
        }
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            self.per_bucket[i] += 1;
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(kind: EventKind, conn: u64, request: u64) -> Event {
        let action =
            capabilities::Action::request(capabilities::ActionType::Web, "GET", "example.com", "/");
        Event::about(kind, request, conn, &action)
    }

    #[test]
    fn exchanges_are_timed_from_their_release_to_their_end() {
        let l = RequestLatency::default();
        let t0 = Instant::now();
        l.observe(&event(EventKind::Allowed, 1, 1), t0);
        l.observe(&event(EventKind::Pending, 1, 2), t0);
        l.observe(
            &event(EventKind::Approved, 1, 2),
            t0 + Duration::from_secs(3),
        );
        l.observe(&event(EventKind::Allowed, 2, 1), t0);
        l.observe(&event(EventKind::Blocked, 3, 1), t0);
        l.observe(
            &event(EventKind::Completed, 1, 1),
            t0 + Duration::from_millis(20),
        );
        // Held for 3 s, then 0.2 s upstream: only the 0.2 s is the proxy's.
        l.observe(
            &event(EventKind::Completed, 1, 2),
            t0 + Duration::from_millis(3200),
        );
        // A completion nobody started (lost events) is not timed.
        l.observe(&event(EventKind::Completed, 9, 9), t0);
        let s = l.snapshot();
        assert_eq!(s.count, 2);
        assert!((s.sum_seconds - 0.22).abs() < 1e-9, "{}", s.sum_seconds);
        let at = |le: f64| s.buckets.iter().find(|(b, _)| *b == le).expect("bucket").1;
        assert_eq!(at(0.01), 0);
        assert_eq!(at(0.025), 1);
        assert_eq!(at(0.1), 1);
        assert_eq!(at(0.25), 2);
        assert_eq!(at(60.0), 2);
        // The still-open one is forgotten when events are lost.
        l.lost_events();
        l.observe(
            &event(EventKind::Completed, 2, 1),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(l.snapshot().count, 2);
    }
}
