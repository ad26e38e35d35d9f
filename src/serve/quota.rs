//! Quotas at the API (`docs/control-plane.md`, "Quotas"): the requests-per-
//! minute sliding window of each tenant (in this daemon's memory on one
//! host; in the `--database` PostgreSQL database, shared by every daemon on
//! it),
//! the per-tenant lock that makes "count running sessions, then start one"
//! one step, and the day's LLM usage of a tenant read from the ledger(s).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::tenants::{PgStore, TenantName};
use crate::usage::report::{self as usage_report, GroupKey};
use crate::usage::LedgerReader;

/// The requests-per-minute window.
const WINDOW: Duration = Duration::from_secs(60);

/// `Retry-After` for a create refused at the concurrent-sessions quota: a
/// session ends when it ends, so there is no reset to name; clients poll.
pub const SESSIONS_RETRY_AFTER: u64 = 5;

/// The daemon's quota state (per tenant, in memory).
#[derive(Default)]
pub struct Limits {
    /// When each tenant's admitted `/v1` requests of the last minute came.
    windows: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// With `--database`: the window kept there instead, for every daemon.
    shared: Option<PgStore>,
    /// Held across "count running, then start": two creates of one tenant
    /// never both see room for one more session.
    create_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// 429s answered since the daemon started, by tenant and quota.
    refused: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Limits {
    /// Limits whose requests-per-minute windows are kept in `store`'s
    /// database, so every daemon on it counts a tenant's requests together.
    pub fn shared(store: PgStore) -> Limits {
        Limits {
            shared: Some(store),
            ..Limits::default()
        }
    }

    /// Admits one request of `tenant` under `limit` requests per 60 s
    /// (sliding window over admitted requests); `Err(seconds)` until the
    /// oldest in the window leaves it.
    pub fn admit(&self, tenant: &TenantName, limit: Option<u64>) -> Result<(), u64> {
        match (&self.shared, limit) {
            (Some(store), Some(limit)) => {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                let window_ms = i64::try_from(WINDOW.as_millis()).unwrap_or(60_000);
                match store.admit_request(tenant, limit, window_ms, now_ms) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(ms)) => Err(u64::try_from(ms).unwrap_or(1).div_ceil(1000).max(1)),
                    Err(e) => {
                        // Fail closed: a window that cannot be read admits nothing.
                        tracing::error!(tenant = tenant.as_str(), "the request window: {e}");
                        Err(1)
                    }
                }
            }
            _ => self.admit_at(tenant, limit, Instant::now()),
        }
    }

    fn admit_at(&self, tenant: &TenantName, limit: Option<u64>, now: Instant) -> Result<(), u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let Some(limit) = limit else {
            // No quota (any more): nothing to remember.
            windows.remove(tenant.as_str());
            return Ok(());
        };
        let window = windows.entry(tenant.to_string()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            window.pop_front();
        }
        if (window.len() as u64) < limit {
            window.push_back(now);
            return Ok(());
        }
        // Full: the next slot frees when the oldest (or, when the limit
        // was lowered, the one at the limit's place) leaves the window.
        let excess = window.len() - usize::try_from(limit).unwrap_or(usize::MAX);
        let frees_at = window.get(excess).copied().unwrap_or(now) + WINDOW;
        Err(ceil_secs(frees_at.saturating_duration_since(now)))
    }

    /// Counts one 429 of `tenant` at `quota` (for `/metrics`).
    pub fn refused(&self, tenant: &TenantName, quota: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((tenant.to_string(), quota))
            .or_default() += 1;
    }

    /// The 429s so far, by (tenant, quota).
    pub fn refusals(&self) -> Vec<((String, &'static str), u64)> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The lock a create of `tenant` holds while it counts and starts.
    pub fn create_lock(&self, tenant: &TenantName) -> Arc<Mutex<()>> {
        self.create_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.to_string())
            .or_default()
            .clone()
    }
}

fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Seconds until the next UTC midnight (when the day's quotas reset).
pub fn seconds_to_utc_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // Rounded up to whole seconds: 1 ..= 86 400.
    86_400 - now.as_secs() % 86_400
}

/// A tenant's LLM usage today (UTC): tokens (input + output) and micro-USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayUsage {
    pub tokens: u64,
    pub micro_usd: u64,
}

/// The tenant's usage today, from the daemon's ledger: the home's (its
/// sessions run with its home, `openclaw run --home`, as do `openclaw run
/// --tenant` sessions on the host), or the `--database` one every daemon
/// on it writes.
pub fn usage_today(ledger: &LedgerReader, tenant: &TenantName) -> Result<DayUsage> {
    let period = usage_report::parse_period("today", &usage_report::today())?;
    let Some(ledger) = ledger.open_for_reading()? else {
        return Ok(DayUsage::default());
    };
    let report = usage_report::query(
        ledger.as_ref(),
        &period,
        Some(tenant.as_str()),
        &[GroupKey::Tenant],
    )?;
    Ok(DayUsage {
        tokens: report.total.tokens_in + report.total.tokens_out,
        micro_usd: report.total.cost_micro_usd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_admits_the_limit_per_minute_and_names_when_the_next_slot_frees() {
        let limits = Limits::default();
        let t = TenantName::parse("acme").expect("name");
        let other = TenantName::parse("other").expect("name");
        let start = Instant::now();
        for i in 0..3 {
            let at = start + Duration::from_secs(i * 10);
            assert_eq!(limits.admit_at(&t, Some(3), at), Ok(()), "request {i}");
        }
        // The fourth at +25 s waits for the first to leave at +60 s.
        let at = start + Duration::from_secs(25);
        assert_eq!(limits.admit_at(&t, Some(3), at), Err(35));
        // Another tenant has its own window.
        assert_eq!(limits.admit_at(&other, Some(1), at), Ok(()));
        // Refused requests do not count: at +60 s the first has left.
        let at = start + Duration::from_secs(60);
        assert_eq!(limits.admit_at(&t, Some(3), at), Ok(()));
        assert_eq!(limits.admit_at(&t, Some(3), at), Err(10));
        // A lowered limit waits for enough of the window to leave.
        assert_eq!(limits.admit_at(&t, Some(1), at), Err(60));
        assert_eq!(limits.admit_at(&t, None, at), Ok(()), "no quota");
    }

    #[test]
    fn the_day_resets_within_a_day() {
        let s = seconds_to_utc_midnight();
        assert!((1..=86_400).contains(&s), "{s}");
    }
}
