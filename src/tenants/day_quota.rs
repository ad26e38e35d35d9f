//! The proxy's day quotas (`openclaw run --quota-db`): a tenant's LLM
//! spend per UTC day settled in `day_spend`, the worst cases of its calls
//! in flight held in `quota_holds`, both shared by every session of the
//! tenant (and every process, on every host, on the store). Two stores
//! keep them with one meaning (`QuotaDb`, quota_db.rs): `<home>/control.db`
//! ([`SqliteDayQuota`], here) and the daemon's PostgreSQL database
//! (`PgDayQuota`, pg_day_quota.rs). A reservation is one transaction that
//! makes the check and the hold one step (SQLite's write lock; a row lock
//! in PostgreSQL), so concurrent calls cannot pass the USD/day quota
//! together (`docs/control-plane.md`, "Quotas").

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use enforce::{DayQuota, QuotaRefusal};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::sqlite::SqliteStore;

/// A tenant's figures today (UTC), as a store holds them (the tests'
/// window on either store).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayFigures {
    /// Settled micro-USD.
    pub micro_usd: u64,
    /// Settled tokens (every billed token, `UsageTokens::total`).
    pub tokens: u64,
    /// Open holds (calls in flight).
    pub holds: u64,
}

/// One session's handle on its tenant's day quotas: the gate's
/// [`DayQuota`], and what the session's end and the tests need.
pub trait SessionDayQuota: DayQuota {
    /// Removes this session's open holds (its end: nothing of it is in
    /// flight any more).
    fn end_session(&self);
    /// The tenant's figures today.
    #[cfg(test)]
    fn today(&self) -> anyhow::Result<DayFigures>;
}

/// `YYYY-MM-DD` of `t`, UTC.
pub(super) fn day_of(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

pub(super) fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Micro-USD as dollars for messages.
fn usd(micro: u64) -> String {
    format!("${:.6}", micro as f64 / 1e6)
}

/// A tenant's day quotas as the store holds them (`None`: no limit).
pub(super) struct Limits {
    pub tokens_quota: Option<u64>,
    pub usd_quota: Option<u64>,
}

/// The tenant's day so far: settled micro-USD and tokens, and the holds
/// of the calls in flight (micro-USD and tokens).
pub(super) struct Spent {
    pub micro_usd: u64,
    pub tokens: u64,
    pub held: u64,
    pub held_tokens: u64,
}

/// One call's worst cases, as the gate reserves them (`None`: unknown).
#[derive(Clone, Copy)]
pub(super) struct Worst {
    pub micro_usd: Option<u64>,
    pub tokens: Option<u64>,
}

/// Whether one more call that may cost `worst` fits, read inside the
/// reservation's transaction (`micro_usd` `None`: a model without a price,
/// which no USD quota can count; `tokens` `None`: tokens the proxy cannot
/// bound, which no tokens quota can hold). One function for every store,
/// so SQLite and PostgreSQL refuse the same calls with the same words.
pub(super) fn check_room(
    limits: Limits,
    day: Spent,
    worst: Worst,
    now: SystemTime,
) -> Result<(), QuotaRefusal> {
    let retry_after = enforce::quota::until_utc_midnight(now);
    let micro_usd = worst.micro_usd;
    if let Some(quota) = limits.tokens_quota {
        let Some(tokens) = worst.tokens else {
            return Err(QuotaRefusal::Unbounded {
                quota: "llm_tokens_per_day",
            });
        };
        // Calls in flight count at their worst case, so concurrent calls
        // cannot all pass on the same settled figure.
        let total = day
            .tokens
            .saturating_add(day.held_tokens)
            .saturating_add(tokens);
        if day.tokens >= quota || total > quota {
            return Err(QuotaRefusal::Exceeded {
                quota: "llm_tokens_per_day",
                detail: format!(
                    "{} tokens used and {} in flight today (UTC); this call may use {tokens}, \
                     the quota is {quota}",
                    day.tokens, day.held_tokens
                ),
                retry_after,
            });
        }
    }
    if let Some(quota) = limits.usd_quota {
        let Some(micro_usd) = micro_usd else {
            return Err(QuotaRefusal::Unpriced {
                quota: "usd_per_day",
            });
        };
        let total = day
            .micro_usd
            .saturating_add(day.held)
            .saturating_add(micro_usd);
        if day.micro_usd >= quota || total > quota {
            return Err(QuotaRefusal::Exceeded {
                quota: "usd_per_day",
                detail: format!(
                    "{} spent and {} in flight today (UTC); this call may cost {}, \
                     the quota is {}",
                    usd(day.micro_usd),
                    usd(day.held),
                    usd(micro_usd),
                    usd(quota)
                ),
                retry_after,
            });
        }
    }
    Ok(())
}

/// One session's handle on its tenant's day quotas.
pub struct SqliteDayQuota {
    conn: Mutex<Connection>,
    tenant: String,
    /// Whose holds these are (removed at the session's end).
    session: String,
}

impl SqliteDayQuota {
    /// Opens the store at `path` (its schema created or upgraded as the
    /// tenant store does) for `tenant`'s session `session`.
    pub fn open(path: &Path, tenant: &str, session: &str) -> anyhow::Result<SqliteDayQuota> {
        drop(SqliteStore::open(path)?);
        let conn = Connection::open(path)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        // Another session's reservation holds the write lock for a moment.
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(SqliteDayQuota {
            conn: Mutex::new(conn),
            tenant: tenant.to_owned(),
            session: session.to_owned(),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn try_reserve(&self, worst: Worst, now: SystemTime) -> Result<u64, QuotaRefusal> {
        let fail = |e: rusqlite::Error| QuotaRefusal::Unavailable(e.to_string());
        let day = day_of(now);
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        // Read at every call: an admin's change applies to the next one.
        let limits: Option<(Option<i64>, Option<i64>)> = tx
            .query_row(
                "SELECT q.llm_tokens_per_day, q.micro_usd_per_day
                 FROM tenants t LEFT JOIN quotas q ON q.tenant = t.name
                 WHERE t.name = ?1 AND t.deleting IS NULL",
                params![self.tenant],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(fail)?;
        let Some((tokens_quota, usd_quota)) = limits else {
            return Err(QuotaRefusal::Unavailable(format!(
                "tenant {} is not in the control store",
                self.tenant
            )));
        };
        let (spent, tokens): (i64, i64) = tx
            .query_row(
                "SELECT COALESCE(SUM(micro_usd), 0), COALESCE(SUM(tokens), 0)
                 FROM day_spend WHERE tenant = ?1 AND day = ?2",
                params![self.tenant, day],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(fail)?;
        let (held, held_tokens): (i64, i64) = tx
            .query_row(
                "SELECT COALESCE(SUM(micro_usd), 0), COALESCE(SUM(tokens), 0) FROM quota_holds
                 WHERE tenant = ?1 AND day = ?2",
                params![self.tenant, day],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(fail)?;
        check_room(
            Limits {
                tokens_quota: tokens_quota.map(unsigned),
                usd_quota: usd_quota.map(unsigned),
            },
            Spent {
                micro_usd: unsigned(spent),
                tokens: unsigned(tokens),
                held: unsigned(held),
                held_tokens: unsigned(held_tokens),
            },
            worst,
            now,
        )?;
        tx.execute(
            "INSERT INTO quota_holds (tenant, day, micro_usd, tokens, session, created_at)
             VALUES (?1, ?2, ?3, ?6, ?4, ?5)",
            params![
                self.tenant,
                day,
                signed(worst.micro_usd.unwrap_or(0)),
                self.session,
                humantime::format_rfc3339_seconds(now).to_string(),
                signed(worst.tokens.unwrap_or(0))
            ],
        )
        .map_err(fail)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(fail)?;
        Ok(unsigned(id))
    }

    fn try_settle(&self, hold: u64, micro_usd: u64, tokens: u64) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Charged to the day it was reserved on (today if the hold is gone).
        let day: Option<String> = tx
            .query_row(
                "SELECT day FROM quota_holds WHERE id = ?1",
                params![signed(hold)],
                |r| r.get(0),
            )
            .optional()?;
        let day = day.unwrap_or_else(|| day_of(SystemTime::now()));
        tx.execute(
            "DELETE FROM quota_holds WHERE id = ?1",
            params![signed(hold)],
        )?;
        tx.execute(
            "INSERT INTO day_spend (tenant, day, micro_usd, tokens) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant, day) DO UPDATE SET
                 micro_usd = micro_usd + excluded.micro_usd,
                 tokens = tokens + excluded.tokens",
            params![self.tenant, day, signed(micro_usd), signed(tokens)],
        )?;
        tx.commit()
    }

    fn remove_own_holds(&self) {
        let removed = self.conn().execute(
            "DELETE FROM quota_holds WHERE tenant = ?1 AND session = ?2",
            params![self.tenant, self.session],
        );
        if let Err(e) = removed {
            tracing::error!("removing the session's quota holds: {e}");
        }
    }

    /// Removes the holds of session `session` (of any tenant) in the store
    /// at `path`: recovery of a session whose process died mid-call.
    pub fn release_session(path: &Path, session: &str) {
        let removed = Connection::open(path).and_then(|conn| {
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.execute(
                "DELETE FROM quota_holds WHERE session = ?1",
                params![session],
            )
        });
        if let Err(e) = removed {
            tracing::error!(session, "removing a dead session's quota holds: {e}");
        }
    }
}

impl DayQuota for SqliteDayQuota {
    fn reserve(&self, micro_usd: u64, tokens: Option<u64>) -> Result<u64, QuotaRefusal> {
        let worst = Worst {
            micro_usd: Some(micro_usd),
            tokens,
        };
        self.try_reserve(worst, SystemTime::now())
    }

    fn reserve_unpriced(&self, tokens: Option<u64>) -> Result<u64, QuotaRefusal> {
        let worst = Worst {
            micro_usd: None,
            tokens,
        };
        self.try_reserve(worst, SystemTime::now())
    }

    fn settle(&self, hold: u64, micro_usd: u64, tokens: u64) {
        if let Err(e) = self.try_settle(hold, micro_usd, tokens) {
            // The hold stays: it keeps counting its worst case (fail closed).
            tracing::error!(hold, "settling a quota hold: {e}");
        }
    }

    fn release(&self, hold: u64) {
        let removed = self.conn().execute(
            "DELETE FROM quota_holds WHERE id = ?1",
            params![signed(hold)],
        );
        if let Err(e) = removed {
            tracing::error!(hold, "releasing a quota hold: {e}");
        }
    }
}

impl SessionDayQuota for SqliteDayQuota {
    fn end_session(&self) {
        self.remove_own_holds();
    }

    #[cfg(test)]
    fn today(&self) -> anyhow::Result<DayFigures> {
        let conn = self.conn();
        let day = day_of(SystemTime::now());
        let (usd, tokens): (i64, i64) = conn.query_row(
            "SELECT COALESCE(SUM(micro_usd), 0), COALESCE(SUM(tokens), 0)
             FROM day_spend WHERE tenant = ?1 AND day = ?2",
            params![self.tenant, day],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let holds: i64 = conn.query_row(
            "SELECT COUNT(*) FROM quota_holds WHERE tenant = ?1 AND day = ?2",
            params![self.tenant, day],
            |r| r.get(0),
        )?;
        Ok(DayFigures {
            micro_usd: unsigned(usd),
            tokens: unsigned(tokens),
            holds: unsigned(holds),
        })
    }
}
