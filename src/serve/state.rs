//! What every request handler shares: the tenant store, the session
//! launcher and the in-memory quota windows. Its own file so the routes and
//! the handlers they call (`metrics`) both depend on it, not on each other.

use std::sync::Arc;

use super::launch::Launcher;
use super::quota::Limits;
use crate::tenants::Registry;
use crate::usage::LedgerReader;

pub struct State {
    pub registry: Registry,
    pub launcher: Arc<Launcher>,
    /// Quota state kept in memory (the requests-per-minute windows).
    pub limits: Limits,
    /// The usage ledger: the home's ledger.db, or the `--database` one.
    pub ledger: LedgerReader,
}
