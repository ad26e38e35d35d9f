//! Tenants of `openclaw serve`: validated names, their directories under
//! `<home>/tenants/`, bearer tokens stored as SHA-256, and the store that
//! keeps them: SQLite by default, PostgreSQL with `--database`
//! (`docs/control-plane.md`).

/// The proxy's day quotas (reserve, settle, release) and where they are
/// kept; the `control.db` implementation.
mod day_quota;
/// Tenant names: the one validated type.
mod name;
/// The proxy's day quotas in PostgreSQL, shared by hosts.
mod pg_day_quota;
/// The concurrent-sessions quota across daemons: session leases in
/// PostgreSQL.
mod pg_session_leases;
/// The PostgreSQL store: `--database postgres://…`, shared by hosts.
mod postgres;
/// Per-tenant quotas: the values the admin sets.
mod quota;
/// Which store keeps the day quotas (control.db or PostgreSQL).
mod quota_db;
/// Create, list, rotate, delete, authenticate; each change audited.
mod registry;
/// A tenant's directory and the joins that cannot leave it.
mod root;
/// A tenant's settings: its own defaults and the admin's bounds.
pub mod settings;
/// The SQLite store: `<home>/control.db`.
mod sqlite;
/// The `Store` trait and what any backend must keep.
mod store;
/// Token shapes, hashing and constant-time comparison.
mod token;

pub use day_quota::SessionDayQuota;
pub use name::TenantName;
pub use pg_session_leases::{HeldLease, LeaseClock};
pub use quota_db::{QuotaDb, QUOTA_DB_ENV};
// `self::`: the module shares its name with the `postgres` crate.
pub(crate) use self::postgres::db as postgres_error;
pub use self::postgres::{
    parse_call_timeout, DatabaseUrl, PgAuditTable, PgStore, CALL_TIMEOUT_ENV,
};
pub use quota::{usd_to_micro, Quotas, QuotasJson};
pub use registry::{Caller, Identity, Registry, TenantOpError};
pub use root::{TenantRoot, DELETED_DIR};
pub use sqlite::{SqliteStore, CONTROL_DB};
pub(crate) use store::Store;
pub use store::TenantStoreError;

use std::path::Path;
use std::sync::Arc;

/// The registry of `home` on its SQLite store (`<home>/control.db`), or on
/// the PostgreSQL `database` when one is given (audit lines then also go to
/// its `audit` table).
pub fn open_registry(home: &Path, database: Option<&DatabaseUrl>) -> anyhow::Result<Registry> {
    std::fs::create_dir_all(home)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", home.display()))?;
    Ok(match database {
        None => Registry::new(home, Arc::new(SqliteStore::open(&home.join(CONTROL_DB))?)),
        Some(url) => {
            let store = Arc::new(PgStore::open(url)?);
            Registry::new(home, store.clone()).with_audit_table(store)
        }
    })
}
