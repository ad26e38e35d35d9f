//! The concurrent-sessions quota across daemons on one PostgreSQL database
//! (`openclaw serve --database`): the `session_leases` table, one row per
//! session starting or running on any daemon, each renewed by its daemon
//! until the session ends and deleted then. A daemon that dies stops
//! renewing, so its rows expire and stop counting.
//!
//! Why the count cannot race: an acquisition is one transaction under the
//! tenant's advisory lock (`pg_advisory_xact_lock`) that drops the tenant's
//! expired rows, counts the rest and inserts one only when there is room;
//! every acquisition (and renewal) of that tenant takes the same lock first,
//! so two daemons never both see the last free place.
//!
//! Times are the database's clock (`clock_timestamp()`, Unix ms), so hosts
//! whose clocks disagree still agree on which leases expired; tests give
//! their own ([`LeaseClock::At`]).

use std::time::Duration;

use postgres::Transaction;

use super::name::TenantName;
use super::postgres::{db, lock_tenant, PgStore, LEASE_LOCK};
use super::store::TenantStoreError;

/// Whose clock a lease's times are read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseClock {
    /// The database server's: one clock for every host.
    Database,
    /// This Unix time in ms (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    At(i64),
}

impl LeaseClock {
    fn given(self) -> Option<i64> {
        match self {
            LeaseClock::Database => None,
            LeaseClock::At(ms) => Some(ms),
        }
    }
}

/// One lease as the daemon holding it knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub id: String,
    pub tenant: String,
    /// The session's id once it started (None while it starts).
    pub session: Option<String>,
}

/// Now on `clock`, in Unix ms.
fn now_ms(tx: &mut Transaction<'_>, clock: LeaseClock) -> Result<i64, TenantStoreError> {
    Ok(tx
        .query_one(
            "SELECT COALESCE($1::BIGINT, (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT)",
            &[&clock.given()],
        )
        .map_err(db)?
        .get(0))
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Takes lease `id` for a new session of `tenant` on `daemon`, valid for
    /// `ttl`, when fewer than `limit` of the tenant's leases are live
    /// (`None`: no limit, the lease is taken so that it counts should one be
    /// set later). `Ok(Err(live))`: no room, `live` leases hold it.
    pub fn acquire_session_lease(
        &self,
        tenant: &TenantName,
        id: &str,
        daemon: &str,
        limit: Option<u64>,
        ttl: Duration,
        clock: LeaseClock,
    ) -> Result<Result<(), u64>, TenantStoreError> {
        let (tenant, id, daemon) = (tenant.to_string(), id.to_owned(), daemon.to_owned());
        self.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            lock_tenant(&mut tx, LEASE_LOCK, &tenant)?;
            let now = now_ms(&mut tx, clock)?;
            tx.execute(
                "DELETE FROM session_leases WHERE tenant = $1 AND expires_at_ms <= $2",
                &[&tenant, &now],
            )
            .map_err(db)?;
            let live: i64 = tx
                .query_one(
                    "SELECT count(*) FROM session_leases WHERE tenant = $1",
                    &[&tenant],
                )
                .map_err(db)?
                .get(0);
            let live = u64::try_from(live).unwrap_or(0);
            if limit.is_some_and(|limit| live >= limit) {
                tx.commit().map_err(db)?;
                return Ok(Err(live));
            }
            tx.execute(
                "INSERT INTO session_leases (id, tenant, session, daemon, expires_at_ms)
                 VALUES ($1, $2, NULL, $3, $4)",
                &[&id, &tenant, &daemon, &now.saturating_add(ttl_ms(ttl))],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(Ok(()))
        })
    }

    /// Writes the session id into lease `id` once its session started.
    pub fn name_lease_session(&self, id: &str, session: &str) -> Result<(), TenantStoreError> {
        let (id, session) = (id.to_owned(), session.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE session_leases SET session = $2 WHERE id = $1",
                &[&id, &session],
            )
            .map(drop)
            .map_err(db)
        })
    }

    /// Extends every lease `daemon` holds to `ttl` from now, in one
    /// transaction. A lease that expired meanwhile (the database was out of
    /// reach longer than its expiry) is taken again, over the limit if need
    /// be: its session runs, so it counts. How many were taken again.
    pub fn renew_session_leases(
        &self,
        leases: Vec<HeldLease>,
        daemon: &str,
        ttl: Duration,
        clock: LeaseClock,
    ) -> Result<usize, TenantStoreError> {
        if leases.is_empty() {
            return Ok(0);
        }
        let daemon = daemon.to_owned();
        self.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            // Locks in name order, the same order on every daemon, so two
            // renewals never wait on each other in a cycle.
            let mut tenants: Vec<&str> = leases.iter().map(|l| l.tenant.as_str()).collect();
            tenants.sort_unstable();
            tenants.dedup();
            for tenant in tenants {
                lock_tenant(&mut tx, LEASE_LOCK, tenant)?;
            }
            let until = now_ms(&mut tx, clock)?.saturating_add(ttl_ms(ttl));
            let mut retaken = 0;
            for lease in &leases {
                // `xmax = 0`: the row was inserted, not updated.
                let inserted: bool = tx
                    .query_one(
                        "INSERT INTO session_leases (id, tenant, session, daemon, expires_at_ms)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (id) DO UPDATE SET expires_at_ms = excluded.expires_at_ms,
                             session = excluded.session
                         RETURNING (xmax = 0)",
                        &[&lease.id, &lease.tenant, &lease.session, &daemon, &until],
                    )
                    .map_err(db)?
                    .get(0);
                retaken += usize::from(inserted);
            }
            tx.commit().map_err(db)?;
            Ok(retaken)
        })
    }

    /// Deletes lease `id` (its session ended, or never started).
    pub fn release_session_lease(&self, id: &str) -> Result<(), TenantStoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute("DELETE FROM session_leases WHERE id = $1", &[&id])
                .map(drop)
                .map_err(db)
        })
    }

    /// How many of `tenant`'s leases are live at `clock`'s now.
    #[cfg(test)]
    pub fn live_session_leases(
        &self,
        tenant: &TenantName,
        clock: LeaseClock,
    ) -> Result<u64, TenantStoreError> {
        let tenant = tenant.to_string();
        self.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            let now = now_ms(&mut tx, clock)?;
            let live: i64 = tx
                .query_one(
                    "SELECT count(*) FROM session_leases WHERE tenant = $1 AND expires_at_ms > $2",
                    &[&tenant, &now],
                )
                .map_err(db)?
                .get(0);
            tx.commit().map_err(db)?;
            Ok(u64::try_from(live).unwrap_or(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::DatabaseUrl;
    use std::sync::{Arc, Barrier};
    use test_requirements::{require, Requirement};
    use test_support::PostgresServer;

    const TTL: Duration = Duration::from_secs(60);

    fn open(server: &PostgresServer, name: &str) -> (DatabaseUrl, PgStore) {
        let url = DatabaseUrl::from_arg(&server.create_database(name)).expect("infallible");
        let store = PgStore::open(&url).expect("open");
        (url, store)
    }

    fn name(n: &str) -> TenantName {
        TenantName::parse(n).expect("name")
    }

    /// Eight daemons' connections, each trying five acquisitions of one
    /// tenant at once against a quota of ten: exactly ten are granted, the
    /// rest refused seeing the quota full; another tenant is not held by it.
    #[test]
    #[cfg_attr(
        not(openclaw_has_postgres),
        ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
    )]
    fn concurrent_acquisitions_on_several_connections_grant_exactly_the_quota() {
        require(
            &[Requirement::Postgres],
            "tenants::pg_session_leases::concurrent_acquisitions_on_several_connections_grant_exactly_the_quota",
        );
        let server = PostgresServer::start();
        let (url, first) = open(&server, "leaserace");
        const CONNECTIONS: usize = 8;
        let barrier = Arc::new(Barrier::new(CONNECTIONS));
        let threads: Vec<_> = (0..CONNECTIONS)
            .map(|i| {
                let (url, barrier) = (url.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let store = PgStore::open(&url).expect("open");
                    barrier.wait();
                    (0..5)
                        .map(|j| {
                            store
                                .acquire_session_lease(
                                    &name("acme"),
                                    &format!("lease-{i}-{j}"),
                                    &format!("daemon-{i}"),
                                    Some(10),
                                    TTL,
                                    LeaseClock::Database,
                                )
                                .expect("acquire")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let answers: Vec<Result<(), u64>> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        let granted = answers.iter().filter(|a| a.is_ok()).count();
        assert_eq!(granted, 10, "{answers:?}");
        assert!(
            answers.iter().all(|a| matches!(a, Ok(()) | Err(10))),
            "a refusal saw the quota full: {answers:?}"
        );
        assert_eq!(
            first
                .live_session_leases(&name("acme"), LeaseClock::Database)
                .expect("live"),
            10
        );
        let other = first
            .acquire_session_lease(
                &name("other"),
                "other-1",
                "daemon-0",
                Some(1),
                TTL,
                LeaseClock::Database,
            )
            .expect("acquire");
        assert_eq!(other, Ok(()), "another tenant has its own count");
    }

    /// A lease not renewed by its expiry does not count (and is dropped by
    /// the next acquisition); a renewed one does; a released one frees its
    /// place at once; a renewal after expiry takes the lease again; a lease
    /// taken without a limit counts against a limit set later.
    #[test]
    #[cfg_attr(
        not(openclaw_has_postgres),
        ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
    )]
    fn expired_leases_do_not_count_and_renewed_ones_do() {
        require(
            &[Requirement::Postgres],
            "tenants::pg_session_leases::expired_leases_do_not_count_and_renewed_ones_do",
        );
        let server = PostgresServer::start();
        let (_, store) = open(&server, "leaseexpiry");
        let acme = name("acme");
        let ttl = Duration::from_millis(1000);
        let acquire = |id: &str, daemon: &str, limit: Option<u64>, at: i64| {
            store
                .acquire_session_lease(&acme, id, daemon, limit, ttl, LeaseClock::At(at))
                .expect("acquire")
        };
        let held = |id: &str, session: Option<&str>| HeldLease {
            id: id.into(),
            tenant: "acme".into(),
            session: session.map(str::to_owned),
        };
        assert_eq!(acquire("a", "one", Some(2), 0), Ok(()));
        assert_eq!(acquire("b", "two", Some(2), 10), Ok(()));
        assert_eq!(acquire("c", "one", Some(2), 500), Err(2));
        // "one" renews a at 900 (until 1900); "two" died and b expires at 1010.
        store.name_lease_session("a", "s-a").expect("name");
        assert_eq!(
            store
                .renew_session_leases(
                    vec![held("a", Some("s-a"))],
                    "one",
                    ttl,
                    LeaseClock::At(900)
                )
                .expect("renew"),
            0
        );
        assert_eq!(
            store
                .live_session_leases(&acme, LeaseClock::At(1010))
                .expect("live"),
            1
        );
        assert_eq!(acquire("c", "one", Some(2), 1010), Ok(()), "b expired");
        assert_eq!(acquire("d", "one", Some(2), 1020), Err(2), "a was renewed");
        store.release_session_lease("a").expect("release");
        assert_eq!(acquire("d", "one", Some(2), 1030), Ok(()), "a released");
        // b's row is gone (dropped by the acquisition at 1010).
        let ids: Vec<(String, Option<String>)> = store
            .call(|c| {
                c.query("SELECT id, session FROM session_leases ORDER BY id", &[])
                    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
                    .map_err(db)
            })
            .expect("rows");
        assert_eq!(ids, [("c".into(), None), ("d".into(), None)]);
        // Out of reach past the expiry, then renewed: c is taken again and
        // counts (its session runs), d still holds its own place.
        assert_eq!(acquire("e", "two", None, 5000), Ok(()), "no limit");
        assert_eq!(
            store
                .renew_session_leases(
                    vec![held("c", Some("s-c")), held("d", None)],
                    "one",
                    ttl,
                    LeaseClock::At(5100)
                )
                .expect("renew"),
            2,
            "both had expired and were dropped by e's acquisition"
        );
        assert_eq!(
            acquire("f", "two", Some(3), 5200),
            Err(3),
            "c, d and e (taken without a limit) count"
        );
    }
}
