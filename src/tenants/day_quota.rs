//! The proxy's day quotas over `control.db` (`openclaw run --quota-db`): a
//! tenant's LLM spend per UTC day settled in `day_spend`, the worst cases
//! of its calls in flight held in `quota_holds`, both shared by every
//! session of the tenant (and every process on the file). A reservation
//! is one `BEGIN IMMEDIATE` transaction: SQLite's write lock makes the
//! check and the hold one step, so concurrent calls cannot pass the
//! USD/day quota together (`docs/control-plane.md`, "Quotas").

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use enforce::{DayQuota, QuotaRefusal};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::sqlite::SqliteStore;

/// One session's handle on its tenant's day quotas.
pub struct SqliteDayQuota {
    conn: Mutex<Connection>,
    tenant: String,
    /// Whose holds these are (removed at the session's end).
    session: String,
}

/// `YYYY-MM-DD` of `t`, UTC.
fn day_of(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Micro-USD as dollars for messages.
fn usd(micro: u64) -> String {
    format!("${:.6}", micro as f64 / 1e6)
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

    fn try_reserve(&self, micro_usd: u64, now: SystemTime) -> Result<u64, QuotaRefusal> {
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
                 FROM tenants t LEFT JOIN quotas q ON q.tenant = t.name WHERE t.name = ?1",
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
        let held: i64 = tx
            .query_row(
                "SELECT COALESCE(SUM(micro_usd), 0) FROM quota_holds
                 WHERE tenant = ?1 AND day = ?2",
                params![self.tenant, day],
                |r| r.get(0),
            )
            .map_err(fail)?;
        let (spent, tokens, held) = (unsigned(spent), unsigned(tokens), unsigned(held));
        let retry_after = enforce::quota::until_utc_midnight(now);
        if let Some(quota) = tokens_quota.map(unsigned) {
            if tokens >= quota {
                return Err(QuotaRefusal::Exceeded {
                    quota: "llm_tokens_per_day",
                    detail: format!("{tokens} of {quota} tokens used today (UTC)"),
                    retry_after,
                });
            }
        }
        if let Some(quota) = usd_quota.map(unsigned) {
            let total = spent.saturating_add(held).saturating_add(micro_usd);
            if spent >= quota || total > quota {
                return Err(QuotaRefusal::Exceeded {
                    quota: "usd_per_day",
                    detail: format!(
                        "{} spent and {} in flight today (UTC); this call may cost {}, \
                         the quota is {}",
                        usd(spent),
                        usd(held),
                        usd(micro_usd),
                        usd(quota)
                    ),
                    retry_after,
                });
            }
        }
        tx.execute(
            "INSERT INTO quota_holds (tenant, day, micro_usd, session, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                self.tenant,
                day,
                signed(micro_usd),
                self.session,
                humantime::format_rfc3339_seconds(now).to_string()
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

    /// Removes this session's open holds (its end: nothing of it is in
    /// flight any more).
    pub fn end_session(&self) {
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

    /// The tenant's settled spend today: (micro-USD, tokens).
    #[cfg(test)]
    pub fn spent_today(&self) -> rusqlite::Result<(u64, u64)> {
        let (usd, tokens): (i64, i64) = self.conn().query_row(
            "SELECT COALESCE(SUM(micro_usd), 0), COALESCE(SUM(tokens), 0)
             FROM day_spend WHERE tenant = ?1 AND day = ?2",
            params![self.tenant, day_of(SystemTime::now())],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((unsigned(usd), unsigned(tokens)))
    }
}

impl DayQuota for SqliteDayQuota {
    fn reserve(&self, micro_usd: u64) -> Result<u64, QuotaRefusal> {
        self.try_reserve(micro_usd, SystemTime::now())
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

#[cfg(test)]
mod tests {
    use super::super::store::Store;
    use super::super::token::TokenHash;
    use super::*;
    use crate::tenants::{Quotas, TenantName};
    use std::sync::Arc;

    fn store_with(dir: &Path, quotas: Quotas) -> std::path::PathBuf {
        let path = dir.join("control.db");
        let store = SqliteStore::open(&path).expect("store");
        let acme = TenantName::parse("acme").expect("name");
        store
            .insert_tenant(&acme, &TokenHash::of("x"), "t")
            .expect("insert");
        store.set_quotas(&acme, &quotas, "t").expect("quotas");
        path
    }

    #[test]
    fn holds_and_settled_spend_count_against_the_usd_quota() {
        let dir = tempfile::tempdir().expect("dir");
        let path = store_with(
            dir.path(),
            Quotas {
                micro_usd_per_day: Some(1000),
                ..Quotas::default()
            },
        );
        let q = SqliteDayQuota::open(&path, "acme", "s1").expect("open");
        let a = q.reserve(600).expect("first fits");
        match q.reserve(600) {
            Err(QuotaRefusal::Exceeded { quota, .. }) => assert_eq!(quota, "usd_per_day"),
            other => panic!("expected the quota, got {other:?}"),
        }
        q.settle(a, 100, 50);
        assert_eq!(q.spent_today().expect("spent"), (100, 50));
        let b = q
            .reserve(900)
            .expect("the settled figure replaced the hold");
        q.release(b);
        // An actual above its hold is charged in full.
        let c = q.reserve(10).expect("fits");
        q.settle(c, 950, 1);
        assert!(matches!(q.reserve(0), Err(QuotaRefusal::Exceeded { .. })));
        // Another tenant's session is refused fail-closed, not unlimited.
        let ghost = SqliteDayQuota::open(&path, "ghost", "s2").expect("open");
        assert!(matches!(
            ghost.reserve(1),
            Err(QuotaRefusal::Unavailable(_))
        ));
    }

    #[test]
    fn the_tokens_quota_refuses_once_reached_and_a_dead_sessions_holds_go() {
        let dir = tempfile::tempdir().expect("dir");
        let path = store_with(
            dir.path(),
            Quotas {
                llm_tokens_per_day: Some(100),
                micro_usd_per_day: Some(1000),
                ..Quotas::default()
            },
        );
        let q = SqliteDayQuota::open(&path, "acme", "s1").expect("open");
        let a = q.reserve(1).expect("fits");
        q.settle(a, 1, 100);
        match q.reserve(1) {
            Err(QuotaRefusal::Exceeded { quota, .. }) => assert_eq!(quota, "llm_tokens_per_day"),
            other => panic!("expected the tokens quota, got {other:?}"),
        }
        let dead = SqliteDayQuota::open(&path, "acme", "s-dead").expect("open");
        let _kept = dead.reserve(0);
        let held = |p: &Path| -> i64 {
            Connection::open(p)
                .expect("open")
                .query_row("SELECT COUNT(*) FROM quota_holds", [], |r| r.get(0))
                .expect("count")
        };
        assert_eq!(held(&path), 0, "the tokens quota refused before holding");
        let store = SqliteStore::open(&path).expect("store");
        let acme = TenantName::parse("acme").expect("name");
        store
            .set_quotas(
                &acme,
                &Quotas {
                    micro_usd_per_day: Some(1000),
                    ..Quotas::default()
                },
                "t",
            )
            .expect("raise");
        dead.reserve(5).expect("the admin's change applies at once");
        assert_eq!(held(&path), 1);
        SqliteDayQuota::open(&path, "acme", "s1")
            .expect("open")
            .end_session();
        assert_eq!(held(&path), 1, "another session's end leaves them");
        // Its recovery removes them.
        SqliteDayQuota::release_session(&path, "s-dead");
        assert_eq!(held(&path), 0, "its recovery removes its holds");
        dead.reserve(5).expect("fits");
        dead.end_session();
        assert_eq!(held(&path), 0, "the session's end removes its holds");
    }

    #[test]
    fn concurrent_reservations_on_two_connections_never_pass_the_quota() {
        let dir = tempfile::tempdir().expect("dir");
        let path = store_with(
            dir.path(),
            Quotas {
                micro_usd_per_day: Some(10_000),
                ..Quotas::default()
            },
        );
        let sessions: Vec<Arc<SqliteDayQuota>> = (0..2)
            .map(|i| Arc::new(SqliteDayQuota::open(&path, "acme", &format!("s{i}")).expect("open")))
            .collect();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let q = sessions[i % 2].clone();
                std::thread::spawn(move || {
                    let mut granted = 0u64;
                    for _ in 0..20 {
                        if let Ok(hold) = q.reserve(300) {
                            granted += 300;
                            // Settled at its reservation, as a call without usage.
                            q.settle(hold, 300, 1);
                        }
                    }
                    granted
                })
            })
            .collect();
        let granted: u64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        let (spent, _) = sessions[0].spent_today().expect("spent");
        assert_eq!(spent, granted, "every grant was settled");
        assert!(spent <= 10_000, "settled {spent} past the quota");
        assert!(spent > 10_000 - 300, "the quota was used up: {spent}");
    }
}
