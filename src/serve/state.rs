//! What every request handler shares: the tenant store, the session
//! launcher, the in-memory quota windows, the per-tenant session caches and
//! the UI's logins. Its own file so the routes and the handlers they call
//! (`metrics`) both depend on it, not on each other.

use std::sync::Arc;

use super::launch::Launcher;
use super::leases::SessionLeases;
use super::quota::Limits;
use crate::tenants::Registry;
use crate::ui::logins::Logins;
use crate::ui::sessions::TenantSessions;
use crate::usage::LedgerReader;

pub struct State {
    pub registry: Registry,
    pub launcher: Arc<Launcher>,
    /// Quota state kept in memory (the requests-per-minute windows).
    pub limits: Limits,
    /// Each tenant's sessions with their cached reports (lists, the UI).
    pub sessions: TenantSessions,
    /// Who is logged in to the UI (`/ui/`), and with which token.
    pub logins: Logins,
    /// The usage ledger: the home's ledger.db, or the `--database` one.
    pub ledger: LedgerReader,
    /// With `--database`: the session leases that hold each tenant's
    /// `sessions` quota across every daemon on it.
    pub leases: Option<Arc<SessionLeases>>,
}
