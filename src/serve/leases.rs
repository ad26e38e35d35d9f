//! The daemon's share of the concurrent-sessions quota across daemons
//! (`--database`; `docs/control-plane.md`, "Quotas"): every session it
//! starts holds a lease in the database (`tenants::pg_session_leases`) from
//! before its start until its process is reaped, whatever ended it. A
//! [`Lease`] is that holding: made by [`SessionLeases::acquire`], kept in
//! the start request and then with the running child (`launch`), and
//! deleted from the database when dropped. [`SessionLeases::renew`] (the
//! periodic task, `upkeep`) extends every lease this daemon holds.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::tenants::{
    DatabaseUrl, HeldLease, LeaseClock, PgStore, QuotaDb, TenantName, TenantStoreError,
};

/// How often the daemon renews its leases (and checks its sessions'
/// tenants still exist).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// How long a lease lasts unless renewed: six renewals. A daemon that died
/// (or lost the database) stops counting against its tenants this long
/// after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// This daemon's leases: its connection to the database, its name in the
/// `daemon` column, and the leases it holds.
pub struct SessionLeases {
    store: PgStore,
    daemon: String,
    /// By lease id. Held across each database call (they are serialized on
    /// the one connection anyway), so a renewal never writes back a lease
    /// that a release is deleting.
    held: Mutex<HashMap<String, HeldLease>>,
}

impl SessionLeases {
    /// A connection of its own (the request-window's and the registry's
    /// are busy with requests), and a name for this daemon: host, pid and
    /// a random part, so that a restarted daemon is another one.
    pub fn open(url: &DatabaseUrl) -> anyhow::Result<Arc<SessionLeases>> {
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
            held: Mutex::new(HashMap::new()),
        }))
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, HeldLease>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
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
        let granted = self.store.acquire_session_lease(
            tenant,
            &id,
            &self.daemon,
            limit,
            LEASE_TTL,
            LeaseClock::Database,
        )?;
        if let Err(live) = granted {
            return Ok(Err(live));
        }
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

    /// Extends every lease this daemon holds by [`LEASE_TTL`]; one that
    /// expired meanwhile is taken again (its session runs, so it counts).
    pub fn renew(&self) -> Result<(), TenantStoreError> {
        let held = self.held();
        let leases: Vec<HeldLease> = held.values().cloned().collect();
        let retaken = self.store.renew_session_leases(
            leases,
            &self.daemon,
            LEASE_TTL,
            LeaseClock::Database,
        )?;
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

    fn release(&self, id: &str) {
        let mut held = self.held();
        held.remove(id);
        // Not renewed any more: a lease this cannot delete expires.
        if let Err(e) = self.store.release_session_lease(id) {
            tracing::warn!(
                lease = id,
                "deleting a session lease: {e}; it expires in {LEASE_TTL:?}"
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
/// of the database), renewed every [`RENEW_EVERY`] by a thread of its own
/// while the session runs, and deleted when dropped.
pub struct CliLease {
    /// Set (and notified) when the lease is dropped: the renewer ends.
    done: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<std::thread::JoinHandle<()>>,
    _lease: Lease,
}

/// The lease `openclaw run` holds for its session: `None` when it needs
/// none — its day quotas are not kept in a PostgreSQL database (one host:
/// no daemon on another counts its sessions). Not asked for a session a
/// daemon started: the daemon holds its lease. A tenant the database does not have,
/// or one at its `sessions` quota, is an error: nothing is started.
pub fn cli_session_lease(
    quota_db: Option<&QuotaDb>,
    tenant: &str,
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
    let leases = SessionLeases::open(url)?;
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
    let stop = done.clone();
    let renewer = std::thread::Builder::new()
        .name("lease-renewer".into())
        .spawn(move || {
            let (lock, wake) = &*stop;
            let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !*stopped {
                stopped = wake
                    .wait_timeout(stopped, RENEW_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if !*stopped {
                    if let Err(e) = leases.renew() {
                        tracing::error!("renewing the session's lease: {e}");
                    }
                }
            }
        })
        .context("starting the lease renewer")?;
    Ok(Some(CliLease {
        done,
        renewer: Some(renewer),
        _lease: lease,
    }))
}

impl Drop for CliLease {
    fn drop(&mut self) {
        let (lock, wake) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.id)
    }
}
