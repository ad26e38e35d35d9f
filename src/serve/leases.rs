//! The daemon's share of the concurrent-sessions quota across daemons
//! (`--database`; `docs/control-plane.md`, "Quotas"): every session it
//! starts holds a lease in the database (`tenants::pg_session_leases`) from
//! before its start until its process is reaped, whatever ended it. A
//! [`Lease`] is that holding: made by [`SessionLeases::acquire`], kept in
//! the start request and then with the running child (`launch`), and
//! deleted from the database when dropped. [`SessionLeases::renew`] (the
//! periodic task, `upkeep`) extends every lease this daemon holds.
//!
//! A daemon cut off from the database cannot renew: its leases expire
//! there and another daemon may start sessions in their place. So each
//! lease's standing is kept here too, on this host's monotonic clock, from
//! before the last call that took or renewed it; [`SessionLeases::lapsing`]
//! names the leases the next renewal would come too late for, and their
//! sessions are stopped (`upkeep`).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::tenants::{
    DatabaseUrl, HeldLease, LeaseClock, PgStore, QuotaDb, TenantName, TenantStoreError,
};

/// The audit detail of a session stopped because its lease lapsed.
pub const LEASE_LAPSED: &str = "its session lease could not be renewed (the database was out of \
                                reach): it no longer counted in the tenant's sessions quota";

/// How often the daemon renews its leases (and checks its sessions'
/// tenants still exist).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// How long a lease lasts unless renewed: six renewals. A daemon that died
/// (or lost the database) stops counting against its tenants this long
/// after its last renewal. `openclaw serve --lease-ttl` sets another.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// The shortest `--lease-ttl`: renewals every half second.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(3);

/// How long leases last and how often they are renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub ttl: Duration,
    /// A sixth of `ttl` ([`RENEW_EVERY`] for [`LEASE_TTL`]): the renewal
    /// and lapse-check period, and how long before its expiry a lease that
    /// could not be renewed is given up.
    pub renew_every: Duration,
}

impl LeaseTiming {
    pub fn new(ttl: Duration) -> LeaseTiming {
        LeaseTiming {
            ttl,
            renew_every: ttl / 6,
        }
    }
}

/// Reads a `--lease-ttl` (`openclaw serve`, `openclaw run`).
pub fn parse_lease_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 60s, 2m)"))?;
    if ttl < MIN_LEASE_TTL {
        return Err(format!(
            "at least {} (it is renewed every sixth of it)",
            humantime::format_duration(MIN_LEASE_TTL)
        ));
    }
    Ok(ttl)
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming::new(LEASE_TTL)
    }
}

/// A held lease as this host counts it.
#[derive(Debug, Clone, Copy)]
struct Standing {
    /// Its expiry at the latest, on this host's monotonic clock: the
    /// database set it to its own now plus the TTL, and its now came after
    /// the call that took or renewed it began.
    expires_by: Instant,
    /// Given up ([`SessionLeases::lapsing`]): never renewed again, its
    /// session stopped.
    lapsed: bool,
}

/// This daemon's leases: its connection to the database, its name in the
/// `daemon` column, and the leases it holds.
pub struct SessionLeases {
    store: PgStore,
    daemon: String,
    timing: LeaseTiming,
    /// By lease id. Held across each database call (they are serialized on
    /// the one connection anyway), so a renewal never writes back a lease
    /// that a release is deleting. Never for long: every call on `store` is
    /// bounded (`OPENCLAW_DATABASE_TIMEOUT`), so a database that never
    /// answers holds up a release (the reaping, the SIGTERM drain) by at
    /// most that, never for good.
    held: Mutex<HashMap<String, HeldLease>>,
    /// By lease id, each lease's standing. A lock of its own, never held
    /// across a database call: the lapse check must answer while a call
    /// to an unreachable database hangs.
    standing: Mutex<HashMap<String, Standing>>,
}

impl SessionLeases {
    /// A connection of its own (the request-window's and the registry's
    /// are busy with requests), and a name for this daemon: host, pid and
    /// a random part, so that a restarted daemon is another one.
    pub fn open(url: &DatabaseUrl, timing: LeaseTiming) -> anyhow::Result<Arc<SessionLeases>> {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown-host".to_owned());
        Ok(Arc::new(SessionLeases {
            store: PgStore::open(url)?,
            daemon: format!(
                "{host}/{}/{}",
                std::process::id(),
                crate::audit::new_request_id()
            ),
            timing,
            held: Mutex::new(HashMap::new()),
            standing: Mutex::new(HashMap::new()),
        }))
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, HeldLease>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn standing(&self) -> MutexGuard<'_, HashMap<String, Standing>> {
        self.standing.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// A lease for a new session of `tenant` when fewer than `limit` of its
    /// sessions hold one on any daemon (`None`: taken anyway, so it counts
    /// against a limit set later). `Ok(Err(live))`: no room.
    pub fn acquire(
        self: &Arc<Self>,
        tenant: &TenantName,
        limit: Option<u64>,
    ) -> Result<Result<Lease, u64>, TenantStoreError> {
        let id = crate::audit::new_request_id();
        let mut held = self.held();
        let asked = Instant::now();
        let granted = self.store.acquire_session_lease(
            tenant,
            &id,
            &self.daemon,
            limit,
            self.timing.ttl,
            LeaseClock::Database,
        )?;
        if let Err(live) = granted {
            return Ok(Err(live));
        }
        self.standing().insert(
            id.clone(),
            Standing {
                expires_by: asked + self.timing.ttl,
                lapsed: false,
            },
        );
        held.insert(
            id.clone(),
            HeldLease {
                id: id.clone(),
                tenant: tenant.to_string(),
                session: None,
            },
        );
        Ok(Ok(Lease {
            leases: self.clone(),
            id,
        }))
    }

    /// Extends every lease this daemon holds by its TTL, but those given
    /// up ([`SessionLeases::lapsing`]: their sessions are being stopped);
    /// one that expired meanwhile is taken again (its session runs, so it
    /// counts).
    pub fn renew(&self) -> Result<(), TenantStoreError> {
        let held = self.held();
        let leases: Vec<HeldLease> = {
            let standing = self.standing();
            held.values()
                .filter(|l| standing.get(&l.id).is_some_and(|s| !s.lapsed))
                .cloned()
                .collect()
        };
        let ids: Vec<String> = leases.iter().map(|l| l.id.clone()).collect();
        let asked = Instant::now();
        let retaken = self.store.renew_session_leases(
            leases,
            &self.daemon,
            self.timing.ttl,
            LeaseClock::Database,
        )?;
        {
            let mut standing = self.standing();
            for id in ids {
                if let Some(s) = standing.get_mut(&id).filter(|s| !s.lapsed) {
                    s.expires_by = asked + self.timing.ttl;
                }
            }
        }
        if retaken > 0 {
            tracing::warn!(
                retaken,
                "session leases had expired before this daemon renewed them (the database was \
                 out of reach?); taken again, so the tenants' sessions may run past their quota \
                 until some end"
            );
        }
        Ok(())
    }

    /// The leases (by id) that have expired, or will before the next
    /// renewal could extend them (the last successful one is more than the
    /// TTL less one renewal period ago): given up from now on, never
    /// renewed again, so their sessions must stop. Each time, every lease
    /// given up whose session still holds it (a session still starting is
    /// stopped once it runs). Takes no database call.
    pub fn lapsing(&self) -> Vec<String> {
        let soon = Instant::now() + self.timing.renew_every;
        let mut standing = self.standing();
        let mut lapsed = Vec::new();
        for (id, s) in standing.iter_mut() {
            if !s.lapsed && s.expires_by <= soon {
                s.lapsed = true;
                tracing::error!(
                    lease = id,
                    "a session lease could not be renewed in time (the database is out of \
                     reach?): given up, its session is stopped"
                );
            }
            if s.lapsed {
                lapsed.push(id.clone());
            }
        }
        lapsed
    }

    fn release(&self, id: &str) {
        let mut held = self.held();
        held.remove(id);
        self.standing().remove(id);
        // Not renewed any more: a lease this cannot delete expires.
        if let Err(e) = self.store.release_session_lease(id) {
            tracing::warn!(
                lease = id,
                "deleting a session lease: {e}; it expires in {:?}",
                self.timing.ttl
            );
        }
    }
}

/// One session's place in its tenant's `sessions` quota across daemons,
/// deleted from the database when dropped (the start failed, or the
/// session's process was reaped).
pub struct Lease {
    leases: Arc<SessionLeases>,
    id: String,
}

impl Lease {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Names the session holding it (for the operator reading the table).
    pub fn started(&self, session: &str) {
        let mut held = self.leases.held();
        if let Some(lease) = held.get_mut(&self.id) {
            lease.session = Some(session.to_owned());
        }
        // The next renewal writes it if this fails; the lease holds either way.
        if let Err(e) = self.leases.store.name_lease_session(&self.id, session) {
            tracing::warn!(session, "naming the session's lease: {e}");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.release(&self.id);
    }
}

/// The lease of a session run from the command line (`openclaw run
/// --tenant T` with a PostgreSQL `--quota-db`), taken as a daemon takes one
/// for its sessions (against the tenant's `sessions` quota, on every host
/// of the database), renewed every sixth of its TTL by a thread of its own
/// while the session runs, and deleted when dropped. Another thread
/// watches it as a daemon watches its leases: given up (it could not be
/// renewed in time), the run is sent SIGTERM, so the session stops as
/// Ctrl-C stops it (its chain closed as interrupted).
pub struct CliLease {
    /// Set (and notified) when the lease is dropped: the threads end.
    done: Arc<(Mutex<bool>, Condvar)>,
    threads: Vec<std::thread::JoinHandle<()>>,
    _lease: Lease,
}

/// Runs `each` every `period` until `done` is set.
fn every(done: &(Mutex<bool>, Condvar), period: Duration, mut each: impl FnMut() -> bool) {
    let (lock, wake) = done;
    let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !*stopped {
        stopped = wake
            .wait_timeout(stopped, period)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if !*stopped {
            // Not under the lock: a renewal may hang on the database.
            drop(stopped);
            if !each() {
                return;
            }
            stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The lease `openclaw run` holds for its session: `None` when it needs
/// none — its day quotas are not kept in a PostgreSQL database (one host:
/// no daemon on another counts its sessions). Not asked for a session a
/// daemon started: the daemon holds its lease. A tenant the database does not have,
/// or one at its `sessions` quota, is an error: nothing is started.
pub fn cli_session_lease(
    quota_db: Option<&QuotaDb>,
    tenant: &str,
    timing: LeaseTiming,
) -> anyhow::Result<Option<CliLease>> {
    let Some(QuotaDb::Postgres(url)) = quota_db else {
        return Ok(None);
    };
    let name = TenantName::parse(tenant).with_context(|| format!("tenant name {tenant:?}"))?;
    let quotas = crate::tenants::Store::quotas(&PgStore::open(url)?, &name)
        .context("reading the tenant's sessions quota")?;
    let Some(quotas) = quotas else {
        bail!("no tenant {name} in the database: nothing was started");
    };
    let leases = SessionLeases::open(url, timing)?;
    let lease = match leases
        .acquire(&name, quotas.sessions)
        .context("counting the tenant's sessions")?
    {
        Ok(lease) => lease,
        Err(live) => bail!(
            "tenant {name} is at its sessions quota ({live} running of {} on the hosts of the database): nothing was started",
            quotas.sessions.unwrap_or(0)
        ),
    };
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let (stop, renewing) = (done.clone(), leases.clone());
    let renewer = std::thread::Builder::new()
        .name("lease-renewer".into())
        .spawn(move || {
            every(&stop, timing.renew_every, || {
                if let Err(e) = renewing.renew() {
                    tracing::error!("renewing the session's lease: {e}");
                }
                true
            })
        })
        .context("starting the lease renewer")?;
    let stop = done.clone();
    let watcher = std::thread::Builder::new()
        .name("lease-watcher".into())
        .spawn(move || {
            every(&stop, timing.renew_every, || {
                if leases.lapsing().is_empty() {
                    return true;
                }
                tracing::error!("stopping the session: {LEASE_LAPSED}");
                // The run stops as on Ctrl-C: sandbox stopped, chain closed.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::this(),
                    nix::sys::signal::Signal::SIGTERM,
                );
                false
            })
        })
        .context("starting the lease watcher")?;
    Ok(Some(CliLease {
        done,
        threads: vec![renewer, watcher],
        _lease: lease,
    }))
}

impl Drop for CliLease {
    fn drop(&mut self) {
        let (lock, wake) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_requirements::{require, Requirement};
    use test_support::PostgresServer;

    /// Leases renewed in time are never given up, however long they are
    /// held; with the database out of reach, a lease is given up once the
    /// next renewal would come after its expiry, stays given up when the
    /// database is back, and is not renewed again (its row expires).
    #[test]
    #[cfg_attr(
        not(openclaw_has_postgres),
        ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
    )]
    fn a_lease_that_cannot_be_renewed_in_time_is_given_up_for_good() {
        require(
            &[Requirement::Postgres],
            "serve::leases::a_lease_that_cannot_be_renewed_in_time_is_given_up_for_good",
        );
        let server = PostgresServer::start();
        let url = DatabaseUrl::from_arg(&server.create_database("lapse")).expect("url");
        let timing = LeaseTiming::new(MIN_LEASE_TTL);
        let leases = SessionLeases::open(&url, timing).expect("open");
        let acme = TenantName::parse("acme").expect("name");
        let lease = leases.acquire(&acme, Some(1)).expect("db").expect("room");
        let held_since = Instant::now();
        while held_since.elapsed() < 2 * timing.ttl {
            leases.renew().expect("renew");
            assert_eq!(leases.lapsing(), Vec::<String>::new());
            std::thread::sleep(timing.renew_every);
        }

        server.stop();
        let cut_at = Instant::now();
        assert!(leases.renew().is_err(), "the database is down");
        let lapsed = loop {
            let lapsed = leases.lapsing();
            if !lapsed.is_empty() {
                break lapsed;
            }
            assert!(cut_at.elapsed() < 10 * timing.ttl, "never given up");
            let _ = leases.renew();
            std::thread::sleep(timing.renew_every / 5);
        };
        assert_eq!(lapsed, [lease.id().to_owned()]);
        // Given up before the next renewal would have been too late.
        assert!(
            cut_at.elapsed() >= timing.ttl - 3 * timing.renew_every,
            "given up {:?} after the cut",
            cut_at.elapsed()
        );

        server.restart();
        leases.renew().expect("renew");
        assert_eq!(leases.lapsing(), [lease.id().to_owned()]);
        std::thread::sleep(timing.ttl);
        leases.renew().expect("renew");
        let store = PgStore::open(&url).expect("open");
        assert_eq!(
            store
                .live_session_leases(&acme, LeaseClock::Database)
                .expect("count"),
            0,
            "a lease given up is not renewed"
        );
        drop(lease);
        assert_eq!(leases.lapsing(), Vec::<String>::new());
    }
}
