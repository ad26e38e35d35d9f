//! How long requests wait for their decision receipt to become durable:
//! a lock-free histogram the gate fills on every request, so a benchmark (or
//! a session report) can check the wait against one group-commit interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets are powers of two of microseconds: bucket `i` holds waits in
/// `[2^(i-1), 2^i)` µs (bucket 0: under 1 µs); the last one is open-ended
/// (over ~35 minutes, never in practice).
const BUCKETS: usize = 32;

/// Receipt-wait histogram. Recording is two relaxed atomic adds, so it never
/// serializes requests.
#[derive(Debug)]
pub struct WaitHistogram {
    buckets: [AtomicU64; BUCKETS],
    total_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for WaitHistogram {
    fn default() -> Self {
        WaitHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            total_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

/// A summary of the waits so far. Quantiles are bucket upper bounds, so
/// they over-state by at most 2×.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitSummary {
    pub count: u64,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

fn bucket(us: u64) -> usize {
    // 0 → 0, 1 → 1, 2..3 → 2, 4..7 → 3, ...
    ((u64::BITS - us.leading_zeros()) as usize).min(BUCKETS - 1)
}

impl WaitHistogram {
    pub fn record(&self, wait: Duration) {
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn summary(&self) -> WaitSummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return WaitSummary::default();
        }
        let quantile = |q: f64| {
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_micros(if i == 0 { 1 } else { 1 << i });
                }
            }
            Duration::MAX
        };
        WaitSummary {
            count,
            mean: Duration::from_micros(self.total_us.load(Ordering::Relaxed) / count),
            p50: quantile(0.5),
            p99: quantile(0.99),
            max: Duration::from_micros(self.max_us.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let h = WaitHistogram::default();
        assert_eq!(h.summary(), WaitSummary::default());
        for _ in 0..98 {
            h.record(Duration::from_micros(300)); // bucket (256, 512]
        }
        h.record(Duration::from_micros(5_000));
        h.record(Duration::from_micros(9_000));
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Duration::from_micros(512));
        assert_eq!(s.p99, Duration::from_micros(8192));
        assert_eq!(s.max, Duration::from_micros(9_000));
        assert_eq!(s.mean, Duration::from_micros((98 * 300 + 14_000) / 100));
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }
}
