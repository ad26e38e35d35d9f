//! The proxy's day quotas in the daemon's PostgreSQL database (`openclaw
//! serve --database`; `openclaw run --quota-db postgres://…`): the same
//! tables, figures and refusals as control.db's (day_quota.rs), shared by
//! every host on the database.
//!
//! Why the check cannot race: a reservation's transaction first makes sure
//! the tenant's `day_spend` row for the day exists, then locks it (`SELECT
//! … FOR UPDATE`); every reservation and settlement of that tenant and day
//! takes the same row lock first, so they run one after the other. Under
//! READ COMMITTED each later statement sees everything committed before the
//! lock was granted: the settled spend and the open holds it sums are
//! exactly those of the reservations and settlements before it.

use std::time::SystemTime;

use enforce::{DayQuota, QuotaRefusal};
use postgres::Transaction;

#[cfg(test)]
use super::day_quota::DayFigures;
use super::day_quota::{
    check_room, day_of, signed, unsigned, Limits, SessionDayQuota, Spent, Worst,
};
use super::postgres::{db, DatabaseUrl, PgStore};
use super::store::TenantStoreError;

/// One session's handle on its tenant's day quotas: a connection (its own
/// thread, as [`PgStore`]'s) and whose holds these are.
pub struct PgDayQuota {
    store: PgStore,
    tenant: String,
    session: String,
}

/// Makes `tenant`'s row for `day` exist and locks it until the transaction
/// ends: the one lock every reservation and settlement of that day takes.
/// Returns the day's settled (micro-USD, tokens).
fn lock_day(
    tx: &mut Transaction<'_>,
    tenant: &str,
    day: &str,
) -> Result<(i64, i64), TenantStoreError> {
    tx.execute(
        "INSERT INTO day_spend (tenant, day, micro_usd, tokens) VALUES ($1, $2, 0, 0)
         ON CONFLICT (tenant, day) DO NOTHING",
        &[&tenant, &day],
    )
    .map_err(db)?;
    let row = tx
        .query_one(
            "SELECT micro_usd, tokens FROM day_spend WHERE tenant = $1 AND day = $2 FOR UPDATE",
            &[&tenant, &day],
        )
        .map_err(db)?;
    Ok((row.get(0), row.get(1)))
}

/// What a reservation's transaction found.
enum Reserved {
    Hold(i64),
    NoTenant,
    Refused(QuotaRefusal),
}

impl PgDayQuota {
    /// Connects (creating or migrating the schema) for `tenant`'s session
    /// `session`. The URL's password is in no error.
    pub fn open(url: &DatabaseUrl, tenant: &str, session: &str) -> anyhow::Result<PgDayQuota> {
        Ok(PgDayQuota {
            store: PgStore::open(url)?,
            tenant: tenant.to_owned(),
            session: session.to_owned(),
        })
    }

    /// Removes session `session`'s holds (of any tenant): recovery of a
    /// session whose process died mid-call.
    pub fn release_session(url: &DatabaseUrl, session: &str) {
        let owned = session.to_owned();
        let removed = PgStore::open(url).and_then(|store| {
            store.call(move |c| {
                c.execute("DELETE FROM quota_holds WHERE session = $1", &[&owned])
                    .map_err(db)
            })
        });
        if let Err(e) = removed {
            tracing::error!(session, "removing a dead session's quota holds: {e}");
        }
    }

    fn try_reserve(&self, worst: Worst, now: SystemTime) -> Result<u64, QuotaRefusal> {
        let (tenant, session) = (self.tenant.clone(), self.session.clone());
        let day = day_of(now);
        let created = humantime::format_rfc3339_seconds(now).to_string();
        let found = self
            .store
            .call(move |c| {
                let mut tx = c.transaction().map_err(db)?;
                let (spent, tokens) = lock_day(&mut tx, &tenant, &day)?;
                // Read at every call, under the lock: an admin's change
                // applies to the next call.
                let limits = tx
                    .query_opt(
                        "SELECT q.llm_tokens_per_day, q.micro_usd_per_day
                         FROM tenants t LEFT JOIN quotas q ON q.tenant = t.name
                         WHERE t.name = $1 AND t.deleting IS NULL",
                        &[&tenant],
                    )
                    .map_err(db)?;
                let Some(limits) = limits else {
                    // Rolled back with the transaction: no row for a ghost.
                    return Ok(Reserved::NoTenant);
                };
                let held = tx
                    .query_one(
                        "SELECT COALESCE(SUM(micro_usd), 0)::BIGINT,
                                COALESCE(SUM(tokens), 0)::BIGINT
                         FROM quota_holds WHERE tenant = $1 AND day = $2",
                        &[&tenant, &day],
                    )
                    .map_err(db)?;
                let (held, held_tokens): (i64, i64) = (held.get(0), held.get(1));
                let room = check_room(
                    Limits {
                        tokens_quota: limits.get::<_, Option<i64>>(0).map(unsigned),
                        usd_quota: limits.get::<_, Option<i64>>(1).map(unsigned),
                    },
                    Spent {
                        micro_usd: unsigned(spent),
                        tokens: unsigned(tokens),
                        held: unsigned(held),
                        held_tokens: unsigned(held_tokens),
                    },
                    worst,
                    now,
                );
                if let Err(refusal) = room {
                    return Ok(Reserved::Refused(refusal));
                }
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO quota_holds (tenant, day, micro_usd, tokens, session, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                        &[
                            &tenant,
                            &day,
                            &signed(worst.micro_usd.unwrap_or(0)),
                            &signed(worst.tokens.unwrap_or(0)),
                            &session,
                            &created,
                        ],
                    )
                    .map_err(db)?
                    .get(0);
                tx.commit().map_err(db)?;
                Ok(Reserved::Hold(id))
            })
            .map_err(|e| QuotaRefusal::Unavailable(e.to_string()))?;
        match found {
            Reserved::Hold(id) => Ok(unsigned(id)),
            Reserved::Refused(refusal) => Err(refusal),
            Reserved::NoTenant => Err(QuotaRefusal::Unavailable(format!(
                "tenant {} is not in the control store",
                self.tenant
            ))),
        }
    }

    fn try_settle(&self, hold: u64, micro_usd: u64, tokens: u64) -> Result<(), TenantStoreError> {
        let tenant = self.tenant.clone();
        self.store.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            // Charged to the day it was reserved on (today if the hold is gone).
            let day: String = tx
                .query_opt(
                    "SELECT day FROM quota_holds WHERE id = $1",
                    &[&signed(hold)],
                )
                .map_err(db)?
                .map_or_else(|| day_of(SystemTime::now()), |r| r.get(0));
            // The day's lock before the hold goes: a reservation never sees
            // the hold gone and the spend not yet there.
            lock_day(&mut tx, &tenant, &day)?;
            tx.execute(
                "UPDATE day_spend SET micro_usd = micro_usd + $3, tokens = tokens + $4
                 WHERE tenant = $1 AND day = $2",
                &[&tenant, &day, &signed(micro_usd), &signed(tokens)],
            )
            .map_err(db)?;
            tx.execute("DELETE FROM quota_holds WHERE id = $1", &[&signed(hold)])
                .map_err(db)?;
            tx.commit().map_err(db)
        })
    }
}

impl DayQuota for PgDayQuota {
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
        let removed = self.store.call(move |c| {
            c.execute("DELETE FROM quota_holds WHERE id = $1", &[&signed(hold)])
                .map_err(db)
        });
        if let Err(e) = removed {
            tracing::error!(hold, "releasing a quota hold: {e}");
        }
    }
}

impl SessionDayQuota for PgDayQuota {
    fn end_session(&self) {
        let (tenant, session) = (self.tenant.clone(), self.session.clone());
        let removed = self.store.call(move |c| {
            c.execute(
                "DELETE FROM quota_holds WHERE tenant = $1 AND session = $2",
                &[&tenant, &session],
            )
            .map_err(db)
        });
        if let Err(e) = removed {
            tracing::error!("removing the session's quota holds: {e}");
        }
    }

    #[cfg(test)]
    fn today(&self) -> anyhow::Result<DayFigures> {
        let tenant = self.tenant.clone();
        let day = day_of(SystemTime::now());
        let (usd, tokens, holds) = self.store.call(move |c| {
            let row = c
                .query_one(
                    "SELECT
                       (SELECT COALESCE(SUM(micro_usd), 0)::BIGINT FROM day_spend
                        WHERE tenant = $1 AND day = $2),
                       (SELECT COALESCE(SUM(tokens), 0)::BIGINT FROM day_spend
                        WHERE tenant = $1 AND day = $2),
                       (SELECT COUNT(*) FROM quota_holds WHERE tenant = $1 AND day = $2)",
                    &[&tenant, &day],
                )
                .map_err(db)?;
            Ok((
                row.get::<_, i64>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2),
            ))
        })?;
        Ok(DayFigures {
            micro_usd: unsigned(usd),
            tokens: unsigned(tokens),
            holds: unsigned(holds),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::quota_db::{conformance, QuotaDb};
    use super::*;
    use test_requirements::{require, Requirement};
    use test_support::PostgresServer;

    /// A fresh database: the quota handle and the tenant store on it.
    fn fresh(server: &PostgresServer, name: &str) -> (QuotaDb, PgStore) {
        let url = DatabaseUrl::from_arg(&server.create_database(name)).expect("infallible");
        let store = PgStore::open(&url).expect("store");
        (QuotaDb::Postgres(url), store)
    }

    /// The day quotas' contract (the tests SQLite's control.db passes) on
    /// PostgreSQL: refusals, settlement, a dead session's holds, and eight
    /// threads on eight connections racing for one tenant's quota.
    #[test]
    #[cfg_attr(
        not(openclaw_has_postgres),
        ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
    )]
    fn the_postgres_day_quotas_keep_the_day_quota_contract() {
        require(
            &[Requirement::Postgres],
            "tenants::pg_day_quota::the_postgres_day_quotas_keep_the_day_quota_contract",
        );
        let server = PostgresServer::start();
        let (db, store) = fresh(&server, "usd");
        conformance::holds_and_settled_spend_count_against_the_usd_quota(&db, &store);
        let (db, store) = fresh(&server, "tokens");
        conformance::the_tokens_quota_refuses_once_reached_and_a_dead_sessions_holds_go(
            &db, &store,
        );
        let (db, store) = fresh(&server, "unpriced");
        conformance::an_unpriced_call_is_refused_only_under_the_usd_quota(&db, &store);
        let (db, store) = fresh(&server, "race");
        conformance::concurrent_reservations_on_eight_connections_never_pass_the_quota(&db, &store);
        // A server that is gone refuses the call (fail closed), without the password.
        let q = db.open("acme", "s-down").expect("open");
        server.stop();
        match q.reserve(1, Some(0)) {
            Err(QuotaRefusal::Unavailable(why)) => {
                assert!(why.contains("postgresql"), "{why}");
                assert!(!why.contains(server.password()), "{why}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        server.restart();
        q.reserve(1, Some(0)).expect("reconnected");
        let (db, store) = fresh(&server, "held_tokens");
        conformance::held_tokens_count_against_the_tokens_quota(&db, &store);
        let (db, store) = fresh(&server, "token_race");
        conformance::concurrent_token_holds_on_eight_connections_never_pass_the_quota(&db, &store);
        a_version_6_database_gains_hold_tokens_and_old_holds_count_none(&server);
    }

    /// A database at schema version 6 (holds without tokens) is migrated
    /// at open; its open holds count 0 tokens.
    fn a_version_6_database_gains_hold_tokens_and_old_holds_count_none(server: &PostgresServer) {
        let (quota_db, store) = fresh(server, "v6");
        conformance::tenant_with(
            &store,
            &crate::tenants::Quotas {
                llm_tokens_per_day: Some(100),
                micro_usd_per_day: Some(1000),
                ..crate::tenants::Quotas::default()
            },
        );
        let today = day_of(SystemTime::now());
        store
            .call(move |c| {
                c.batch_execute(&format!(
                    "ALTER TABLE quota_holds DROP COLUMN tokens; DROP TABLE session_leases;
                     ALTER TABLE tenants DROP COLUMN deleting;
                     UPDATE openclaw_schema SET version = 6;
                     INSERT INTO quota_holds (tenant, day, micro_usd, session, created_at)
                         VALUES ('acme', '{today}', 400, 'old', 't')"
                ))
                .map_err(db)
            })
            .expect("back to version 6");
        let q = quota_db.open("acme", "s1").expect("migrated");
        assert!(matches!(
            q.reserve(601, Some(1)),
            Err(QuotaRefusal::Exceeded { .. })
        ));
        let all = q
            .reserve(600, Some(100))
            .expect("the old hold holds no tokens");
        q.release(all);
    }
}
