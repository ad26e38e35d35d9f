//! The usage ledger as the binary uses it: one interface ([`UsageLedger`])
//! over two stores with the same rows and meaning — the `usage-ledger`
//! crate's SQLite file (`<home>/ledger.db`, the default) and the `usage`
//! table of the control plane's PostgreSQL database (`openclaw serve
//! --database`, pg_ledger.rs) — with `anyhow` errors like every other
//! command's.

use std::path::Path;

use anyhow::Result;
use rusqlite::Connection;

pub use usage_ledger::{UsageRow, LEDGER_FILE};

/// One report group as a store answers it: the key columns' text, then the
/// eight sums of [`super::report::Sums`] in its field order.
pub type GroupRow = (Vec<String>, [i64; 8]);

/// What writers and reports need of a ledger, whichever store keeps it.
/// Rows are keyed by (session, seq): writing one twice changes nothing.
pub trait UsageLedger: Send {
    /// Writes rows in one transaction; returns how many were new.
    fn insert(&mut self, rows: &[UsageRow]) -> Result<usize>;
    /// Runs a report's query: `sql` reads `$1` (first day), `$2` (last
    /// day) and `$3` (tenant, or NULL for all) and selects `keys` text
    /// columns, then eight integer sums.
    fn grouped(
        &self,
        sql: &str,
        keys: usize,
        from: &str,
        to: &str,
        tenant: Option<&str>,
    ) -> Result<Vec<GroupRow>>;
}

/// An open SQLite ledger.
pub struct Ledger(usage_ledger::Ledger);

impl Ledger {
    /// Opens (creating if missing) the ledger at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<Ledger> {
        Ok(Ledger(usage_ledger::Ledger::open(path)?))
    }

    /// A ledger being built from nothing (rebuild), without a journal.
    pub(super) fn create_fresh(path: &Path) -> Result<Ledger> {
        Ok(Ledger(usage_ledger::Ledger::create_fresh(path)?))
    }

    /// Opens an existing ledger read-only (reports).
    pub fn open_read_only(path: &Path) -> Result<Ledger> {
        Ok(Ledger(usage_ledger::Ledger::open_read_only(path)?))
    }
}

/// Relabels the rows of tenant `from` as `to` in the SQLite ledger at
/// `path` (a deleted tenant's usage, kept for the operator under an archive
/// label); how many rows moved.
pub fn archive_tenant(path: &Path, from: &str, to: &str) -> Result<usize> {
    let ledger = usage_ledger::Ledger::open(path)?;
    Ok(ledger.conn().execute(
        "UPDATE usage SET tenant = ?2 WHERE tenant = ?1",
        rusqlite::params![from, to],
    )?)
}

impl UsageLedger for Ledger {
    fn insert(&mut self, rows: &[UsageRow]) -> Result<usize> {
        Ok(self.0.insert(rows)?)
    }

    fn grouped(
        &self,
        sql: &str,
        keys: usize,
        from: &str,
        to: &str,
        tenant: Option<&str>,
    ) -> Result<Vec<GroupRow>> {
        grouped_sqlite(self.0.conn(), sql, keys, from, to, tenant)
    }
}

fn grouped_sqlite(
    conn: &Connection,
    sql: &str,
    keys: usize,
    from: &str,
    to: &str,
    tenant: Option<&str>,
) -> Result<Vec<GroupRow>> {
    let mut stmt = conn.prepare(sql)?;
    let mut found = stmt.query(rusqlite::params![from, to, tenant])?;
    let mut rows = Vec::new();
    while let Some(r) = found.next()? {
        let key_values = (0..keys)
            .map(|i| r.get::<_, String>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut sums = [0i64; 8];
        for (i, sum) in sums.iter_mut().enumerate() {
            *sum = r.get::<_, Option<i64>>(keys + i)?.unwrap_or(0);
        }
        rows.push((key_values, sums));
    }
    Ok(rows)
}
