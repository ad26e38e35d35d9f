//! A tenant's day quotas (LLM USD and tokens per UTC day) as the gate sees
//! them: before an LLM call leaves, its worst case is held against the
//! day's quota ([`DayQuota::reserve`]); its response settles the hold to
//! the provider's figures; a call refused later (token, approval) releases
//! it. Who keeps the figures (the daemon's `control.db`) is the binary's
//! business: this file is the hook (the provider-shaped refusal is
//! `Api::quota_refusal`, beside the shapes).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a quota refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaRefusal {
    /// The day's quota would be passed: `quota` is `usd_per_day` or
    /// `llm_tokens_per_day`; `detail` says by how much (no secrets).
    Exceeded {
        quota: &'static str,
        detail: String,
        /// Until the quota resets (the next UTC midnight).
        retry_after: Duration,
    },
    /// The quota could not be read or written: the call is refused (fail closed).
    Unavailable(String),
    /// A call of a model the rate card does not price, under a quota
    /// (`usd_per_day`) that could not count it: refused, never free.
    Unpriced { quota: &'static str },
    /// A call whose billed tokens the proxy cannot bound before it leaves,
    /// under a quota (`llm_tokens_per_day`) that could not hold them.
    Unbounded { quota: &'static str },
}

/// A tenant's day quotas, shared by all its sessions. Implementations must
/// make `reserve` atomic against every other session's `reserve` and
/// `settle` (one transaction), so concurrent calls cannot pass the quota.
pub trait DayQuota: Send + Sync {
    /// Holds `micro_usd` and `tokens` (the call's worst cases) if the
    /// day's settled spend, the open holds and it fit the USD/day quota,
    /// and the day's settled tokens, the held tokens and `tokens` fit the
    /// tokens/day quota. `tokens` is `None` when the proxy cannot bound
    /// them: refused where a tokens/day quota applies (it could not hold
    /// them), else held at 0. Returns the hold's id.
    fn reserve(&self, micro_usd: u64, tokens: Option<u64>) -> Result<u64, QuotaRefusal>;
    /// Holds a call whose model the rate card does not price: it costs
    /// nothing the proxy can count, so it is refused where a USD/day quota
    /// applies and otherwise held at 0 micro-USD (its `tokens` are held as
    /// [`DayQuota::reserve`] holds them). By default refused: a store that
    /// cannot tell fails closed.
    fn reserve_unpriced(&self, tokens: Option<u64>) -> Result<u64, QuotaRefusal> {
        let _ = tokens;
        Err(QuotaRefusal::Unpriced {
            quota: "usd_per_day",
        })
    }
    /// Replaces hold `hold` (its micro-USD and tokens) by what the call
    /// cost (`micro_usd`, `tokens`: every billed token,
    /// `UsageTokens::total`). A cost above the hold is charged in full.
    fn settle(&self, hold: u64, micro_usd: u64, tokens: u64);
    /// Drops hold `hold`: the call never went upstream.
    fn release(&self, hold: u64);
}

/// One open hold. Dropped unsettled, it is released if its call never
/// left, and settled at what it held once the call was forwarded (the
/// provider bills a call whose response never came back to the proxy).
pub(crate) struct QuotaHold {
    quota: Arc<dyn DayQuota>,
    id: Option<u64>,
    micro_usd: u64,
    tokens: u64,
    forwarded: bool,
}

impl std::fmt::Debug for QuotaHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaHold").field("id", &self.id).finish()
    }
}

impl QuotaHold {
    /// Reserves `micro_usd` and `tokens` on `quota` (blocking: the quota's
    /// transaction is short, but may wait for another session's).
    /// `micro_usd` `None`: a model without a price
    /// ([`DayQuota::reserve_unpriced`]); `tokens` `None`: tokens the proxy
    /// cannot bound.
    pub(crate) fn reserve(
        quota: &Arc<dyn DayQuota>,
        micro_usd: Option<u64>,
        tokens: Option<u64>,
    ) -> Result<Self, QuotaRefusal> {
        let run = || match micro_usd {
            Some(m) => quota.reserve(m, tokens),
            None => quota.reserve_unpriced(tokens),
        };
        let id = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => run(),
        }?;
        Ok(QuotaHold {
            quota: quota.clone(),
            id: Some(id),
            micro_usd: micro_usd.unwrap_or(0),
            tokens: tokens.unwrap_or(0),
            forwarded: false,
        })
    }

    /// Its call went upstream: from now on it is settled, never released.
    pub(crate) fn forwarded(&mut self) {
        self.forwarded = true;
    }

    /// The call cost `micro_usd` and `tokens` (`None`: the provider
    /// reported none, so the tokens held are charged).
    pub(crate) fn settle_tokens(mut self, micro_usd: u64, tokens: Option<u64>) {
        if let Some(id) = self.id.take() {
            self.quota
                .settle(id, micro_usd, tokens.unwrap_or(self.tokens));
        }
    }
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            if self.forwarded {
                // Billed, figures unknown: charged its worst cases in full.
                self.quota.settle(id, self.micro_usd, self.tokens);
            } else {
                self.quota.release(id);
            }
        }
    }
}

/// Seconds from `now` to the next UTC midnight (at least 1).
pub fn until_utc_midnight(now: SystemTime) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Duration::from_secs((86_400 - secs % 86_400).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what a hold did to the quota.
    #[derive(Default)]
    struct Log(std::sync::Mutex<Vec<String>>);

    impl DayQuota for Log {
        fn reserve(&self, _: u64, _: Option<u64>) -> Result<u64, QuotaRefusal> {
            Ok(7)
        }
        fn settle(&self, hold: u64, micro_usd: u64, tokens: u64) {
            let mut l = self.0.lock().expect("log");
            l.push(format!("settle {hold} {micro_usd} {tokens}"));
        }
        fn release(&self, hold: u64) {
            self.0.lock().expect("log").push(format!("release {hold}"));
        }
    }

    #[test]
    fn a_dropped_hold_is_released_before_its_call_left_and_settled_after() {
        let log = Arc::new(Log::default());
        let quota: Arc<dyn DayQuota> = log.clone();
        drop(QuotaHold::reserve(&quota, Some(500), Some(40)).expect("hold"));
        let mut hold = QuotaHold::reserve(&quota, Some(500), Some(40)).expect("hold");
        hold.forwarded();
        drop(hold);
        assert_eq!(
            *log.0.lock().expect("log"),
            ["release 7", "settle 7 500 40"]
        );
        // A store that does not say otherwise refuses an unpriced call.
        assert!(matches!(
            QuotaHold::reserve(&quota, None, Some(40)),
            Err(QuotaRefusal::Unpriced { .. })
        ));
    }

    #[test]
    fn the_reset_is_the_next_utc_midnight() {
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(
            until_utc_midnight(t(86_400 * 3)),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            until_utc_midnight(t(86_400 * 3 + 86_399)),
            Duration::from_secs(1)
        );
        assert_eq!(
            until_utc_midnight(t(86_400 * 3 + 3600)),
            Duration::from_secs(82_800)
        );
    }
}
