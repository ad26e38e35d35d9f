//! The proxy's day quotas (`openclaw run --quota-db`): a tenant's LLM
//! spend per UTC day settled in `day_spend`, the worst cases of its calls
//! in flight held in `quota_holds`, both shared by every session of the
//! tenant (and every process, on every host, on the store). Two stores
//! keep them with one meaning ([`QuotaDb`]): `<home>/control.db`
//! ([`SqliteDayQuota`], here) and the daemon's PostgreSQL database
//! (`PgDayQuota`, pg_day_quota.rs). A reservation is one transaction that
//! makes the check and the hold one step (SQLite's write lock; a row lock
//! in PostgreSQL), so concurrent calls cannot pass the USD/day quota
//! together (`docs/control-plane.md`, "Quotas").

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use enforce::{DayQuota, QuotaRefusal};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::pg_day_quota::PgDayQuota;
use super::postgres::DatabaseUrl;
use super::sqlite::SqliteStore;

/// The environment variable through which `openclaw run` may be given its
/// `--quota-db`: the daemon puts a PostgreSQL URL (and its password) there
/// rather than in argv, which every user of the host can read. The sandbox
/// never sees it (its environment is built from nothing).
pub const QUOTA_DB_ENV: &str = "OPENCLAW_QUOTA_DB";

/// Where a session's day quotas are kept.
#[derive(Clone)]
pub enum QuotaDb {
    /// A control store file (`<home>/control.db`).
    Sqlite(PathBuf),
    /// The PostgreSQL database of `openclaw serve --database`.
    Postgres(DatabaseUrl),
}

impl QuotaDb {
    /// For clap: a `postgres://` or `postgresql://` URL, else a path.
    pub fn from_arg(text: &str) -> Result<QuotaDb, std::convert::Infallible> {
        Ok(
            if text.starts_with("postgres://") || text.starts_with("postgresql://") {
                QuotaDb::Postgres(DatabaseUrl::from_arg(text)?)
            } else {
                QuotaDb::Sqlite(PathBuf::from(text))
            },
        )
    }

    /// `tenant`'s day quotas for its session `session`.
    pub fn open(&self, tenant: &str, session: &str) -> anyhow::Result<Arc<dyn SessionDayQuota>> {
        Ok(match self {
            QuotaDb::Sqlite(path) => Arc::new(SqliteDayQuota::open(path, tenant, session)?),
            QuotaDb::Postgres(url) => Arc::new(PgDayQuota::open(url, tenant, session)?),
        })
    }

    /// Removes the holds of session `session` (of any tenant): recovery of
    /// a session whose process died mid-call. Errors are logged: the holds
    /// then stay, counting their worst case until the day ends (closed).
    pub fn release_session(&self, session: &str) {
        match self {
            QuotaDb::Sqlite(path) => SqliteDayQuota::release_session(path, session),
            QuotaDb::Postgres(url) => PgDayQuota::release_session(url, session),
        }
    }
}

/// Never the URL's password: the path, or what a message may say of a URL.
impl std::fmt::Display for QuotaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaDb::Sqlite(path) => write!(f, "{}", path.display()),
            QuotaDb::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl std::fmt::Debug for QuotaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuotaDb({self})")
    }
}

/// A tenant's figures today (UTC), as a store holds them (the tests'
/// window on either store).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayFigures {
    /// Settled micro-USD.
    pub micro_usd: u64,
    /// Settled tokens (input + output).
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
/// of the calls in flight.
pub(super) struct Spent {
    pub micro_usd: u64,
    pub tokens: u64,
    pub held: u64,
}

/// Whether one more call that may cost `micro_usd` fits, read inside the
/// reservation's transaction. One function for every store, so SQLite and
/// PostgreSQL refuse the same calls with the same words.
pub(super) fn check_room(
    limits: Limits,
    day: Spent,
    micro_usd: u64,
    now: SystemTime,
) -> Result<(), QuotaRefusal> {
    let retry_after = enforce::quota::until_utc_midnight(now);
    if let Some(quota) = limits.tokens_quota {
        if day.tokens >= quota {
            return Err(QuotaRefusal::Exceeded {
                quota: "llm_tokens_per_day",
                detail: format!("{} of {quota} tokens used today (UTC)", day.tokens),
                retry_after,
            });
        }
    }
    if let Some(quota) = limits.usd_quota {
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
        check_room(
            Limits {
                tokens_quota: tokens_quota.map(unsigned),
                usd_quota: usd_quota.map(unsigned),
            },
            Spent {
                micro_usd: unsigned(spent),
                tokens: unsigned(tokens),
                held: unsigned(held),
            },
            micro_usd,
            now,
        )?;
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

/// The day quotas' contract as tests any store runs (SQLite below,
/// PostgreSQL in pg_day_quota.rs): one store reached through `db`, its
/// tenants and quotas through `store`.
#[cfg(test)]
pub mod conformance {
    use super::super::store::Store;
    use super::super::token::TokenHash;
    use super::*;
    use crate::tenants::{Quotas, TenantName};

    fn acme() -> TenantName {
        TenantName::parse("acme").expect("name")
    }

    /// Tenant `acme` with `quotas`.
    pub fn tenant_with(store: &dyn Store, quotas: &Quotas) {
        store
            .insert_tenant(&acme(), &TokenHash::of("x"), "t")
            .expect("insert");
        store.set_quotas(&acme(), quotas, "t").expect("quotas");
    }

    fn figures(q: &dyn SessionDayQuota) -> DayFigures {
        q.today().expect("today")
    }

    pub fn holds_and_settled_spend_count_against_the_usd_quota(db: &QuotaDb, store: &dyn Store) {
        tenant_with(
            store,
            &Quotas {
                micro_usd_per_day: Some(1000),
                ..Quotas::default()
            },
        );
        let q = db.open("acme", "s1").expect("open");
        let a = q.reserve(600).expect("first fits");
        match q.reserve(600) {
            Err(QuotaRefusal::Exceeded {
                quota, retry_after, ..
            }) => {
                assert_eq!(quota, "usd_per_day");
                assert!(retry_after.as_secs() >= 1 && retry_after.as_secs() <= 86_400);
            }
            other => panic!("expected the quota, got {other:?}"),
        }
        q.settle(a, 100, 50);
        let day = figures(q.as_ref());
        assert_eq!((day.micro_usd, day.tokens, day.holds), (100, 50, 0));
        let b = q
            .reserve(900)
            .expect("the settled figure replaced the hold");
        q.release(b);
        assert_eq!(figures(q.as_ref()).holds, 0, "released");
        // An actual above its hold is charged in full.
        let c = q.reserve(10).expect("fits");
        q.settle(c, 950, 1);
        assert_eq!(figures(q.as_ref()).micro_usd, 1050);
        assert!(matches!(q.reserve(0), Err(QuotaRefusal::Exceeded { .. })));
        // A tenant the store does not have is refused fail-closed, not unlimited.
        let ghost = db.open("ghost", "s2").expect("open");
        assert!(matches!(
            ghost.reserve(1),
            Err(QuotaRefusal::Unavailable(_))
        ));
    }

    pub fn the_tokens_quota_refuses_once_reached_and_a_dead_sessions_holds_go(
        db: &QuotaDb,
        store: &dyn Store,
    ) {
        tenant_with(
            store,
            &Quotas {
                llm_tokens_per_day: Some(100),
                micro_usd_per_day: Some(1000),
                ..Quotas::default()
            },
        );
        let q = db.open("acme", "s1").expect("open");
        let a = q.reserve(1).expect("fits");
        q.settle(a, 1, 100);
        match q.reserve(1) {
            Err(QuotaRefusal::Exceeded { quota, .. }) => assert_eq!(quota, "llm_tokens_per_day"),
            other => panic!("expected the tokens quota, got {other:?}"),
        }
        let dead = db.open("acme", "s-dead").expect("open");
        let _kept = dead.reserve(0);
        assert_eq!(
            figures(q.as_ref()).holds,
            0,
            "the tokens quota refused before holding"
        );
        store
            .set_quotas(
                &acme(),
                &Quotas {
                    micro_usd_per_day: Some(1000),
                    ..Quotas::default()
                },
                "t",
            )
            .expect("raise");
        dead.reserve(5).expect("the admin's change applies at once");
        assert_eq!(figures(q.as_ref()).holds, 1);
        db.open("acme", "s1").expect("open").end_session();
        assert_eq!(
            figures(q.as_ref()).holds,
            1,
            "another session's end leaves them"
        );
        db.release_session("s-dead");
        assert_eq!(
            figures(q.as_ref()).holds,
            0,
            "its recovery removes its holds"
        );
        dead.reserve(5).expect("fits");
        dead.end_session();
        assert_eq!(
            figures(q.as_ref()).holds,
            0,
            "the session's end removes its holds"
        );
    }

    /// Eight threads, each with its own handle (its own connection: eight
    /// processes, or hosts on PostgreSQL), of two sessions, reserve and
    /// settle at once.
    pub fn concurrent_reservations_on_eight_connections_never_pass_the_quota(
        db: &QuotaDb,
        store: &dyn Store,
    ) {
        tenant_with(
            store,
            &Quotas {
                micro_usd_per_day: Some(10_000),
                ..Quotas::default()
            },
        );
        let sessions: Vec<Arc<dyn SessionDayQuota>> = (0..8)
            .map(|i| db.open("acme", &format!("s{}", i % 2)).expect("open"))
            .collect();
        let started = std::time::Instant::now();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let q = sessions[i].clone();
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
        // Reported, not asserted: the figure for docs/control-plane.md.
        eprintln!(
            "{db}: 160 reservations (and {} settlements) on 8 connections in {:?}",
            granted / 300,
            started.elapsed()
        );
        let day = figures(sessions[0].as_ref());
        assert_eq!(day.micro_usd, granted, "every grant was settled");
        assert!(
            day.micro_usd <= 10_000,
            "settled {} past the quota",
            day.micro_usd
        );
        assert!(
            day.micro_usd > 10_000 - 300,
            "the quota was used up: {}",
            day.micro_usd
        );
        assert_eq!(day.holds, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh control.db: the quota handle and the tenant store on it.
    fn fresh() -> (tempfile::TempDir, QuotaDb, SqliteStore) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("control.db");
        let store = SqliteStore::open(&path).expect("store");
        (dir, QuotaDb::Sqlite(path), store)
    }

    #[test]
    fn holds_and_settled_spend_count_against_the_usd_quota() {
        let (_dir, db, store) = fresh();
        conformance::holds_and_settled_spend_count_against_the_usd_quota(&db, &store);
    }

    #[test]
    fn the_tokens_quota_refuses_once_reached_and_a_dead_sessions_holds_go() {
        let (_dir, db, store) = fresh();
        conformance::the_tokens_quota_refuses_once_reached_and_a_dead_sessions_holds_go(
            &db, &store,
        );
    }

    #[test]
    fn concurrent_reservations_on_eight_connections_never_pass_the_quota() {
        let (_dir, db, store) = fresh();
        conformance::concurrent_reservations_on_eight_connections_never_pass_the_quota(&db, &store);
    }

    #[test]
    fn a_quota_db_argument_is_a_url_or_a_path_and_never_shows_a_password() {
        let Ok(QuotaDb::Sqlite(path)) = QuotaDb::from_arg("/h/control.db") else {
            panic!("a path");
        };
        assert_eq!(path, Path::new("/h/control.db"));
        let url = QuotaDb::from_arg("postgres://u:s3cret@db.example:5433/oc").expect("infallible");
        assert!(matches!(url, QuotaDb::Postgres(_)));
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("db.example"), "{shown}");
        }
    }
}
