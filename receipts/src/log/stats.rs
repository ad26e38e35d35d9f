//! Commit statistics: batches, receipts, and log2 histograms of write +
//! fdatasync time and of each receipt's queued → durable time.

use std::time::{Duration, Instant};

/// What the writer has committed so far, for benchmarks and monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Batches written (one write + fdatasync each).
    pub batches: u64,
    /// Receipts in those batches.
    pub receipts: u64,
    /// Of those, the ones that carry their own signature: one per group of
    /// lines chained in one signing turn (`receipts / signed` lines per
    /// signature).
    pub signed: u64,
    /// Write + fdatasync time of each batch: `sync_log2_us[i]` counts
    /// batches that took under 2^i µs (the last bucket: the rest).
    pub sync_log2_us: [u64; 24],
    /// Total write + fdatasync time.
    pub sync_total: Duration,
    /// Total time spent gathering before writes.
    pub gather_total: Duration,
    /// Per receipt, queued (signed) to durable: `queued_log2_us[i]` counts
    /// receipts that took under 2^i µs.
    pub queued_log2_us: [u64; 24],
    /// Receipts already queued when the batch before theirs was taken, so
    /// they waited for more than the batch in progress plus their own. With
    /// every queued receipt taken at once this stays 0 unless `max_batch`
    /// cuts a batch short.
    pub late: u64,
    /// The writer thread's nice value when it asked for one and got it
    /// (`LogOptions::writer_nice`); `None`: the process's priority.
    pub writer_nice: Option<i32>,
}

impl CommitStats {
    /// One batch: its receipts' queue times, its gathering and its write +
    /// fdatasync time, and when the batch before it was taken.
    pub(super) fn record(
        &mut self,
        queued: &[Instant],
        signed: u64,
        durable_at: Instant,
        cycle: Cycle,
        previous_taken: Option<Instant>,
    ) {
        self.batches += 1;
        self.receipts += queued.len() as u64;
        self.signed += signed;
        self.sync_total += cycle.sync;
        self.gather_total += cycle.gather;
        log2_bucket(&mut self.sync_log2_us, cycle.sync);
        for &at in queued {
            log2_bucket(
                &mut self.queued_log2_us,
                durable_at.saturating_duration_since(at),
            );
            if previous_taken.is_some_and(|taken| at < taken) {
                self.late += 1;
            }
        }
    }

    /// Upper bound of the `q` quantile (0..=1) of write + fdatasync time.
    pub fn sync_quantile(&self, q: f64) -> Duration {
        log2_quantile(&self.sync_log2_us, q)
    }

    /// Upper bound of the `q` quantile (0..=1) of queued → durable time.
    pub fn queued_quantile(&self, q: f64) -> Duration {
        log2_quantile(&self.queued_log2_us, q)
    }
}

/// Gathering and write + fdatasync time of one batch.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cycle {
    pub(super) gather: Duration,
    pub(super) sync: Duration,
}

fn log2_bucket(buckets: &mut [u64; 24], d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let bucket = (u64::BITS - us.leading_zeros()) as usize;
    buckets[bucket.min(buckets.len() - 1)] += 1;
}

fn log2_quantile(buckets: &[u64; 24], q: f64) -> Duration {
    let total: u64 = buckets.iter().sum();
    let want = (q.clamp(0.0, 1.0) * total as f64).ceil() as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= want.max(1) {
            return Duration::from_micros(1 << i);
        }
    }
    Duration::MAX
}
