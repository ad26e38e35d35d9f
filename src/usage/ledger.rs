//! The usage ledger as the binary uses it: the `usage-ledger` crate's
//! (`<home>/ledger.db`, one row per usage receipt), its errors as
//! `anyhow` ones like every other command's.

use std::path::Path;

use anyhow::Result;
use rusqlite::Connection;

pub use usage_ledger::{UsageRow, LEDGER_FILE};

/// An open ledger.
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

    /// Writes rows in one transaction; returns how many were new.
    pub fn insert(&mut self, rows: &[UsageRow]) -> Result<usize> {
        Ok(self.0.insert(rows)?)
    }

    /// The connection, for the report's queries.
    pub(super) fn conn(&self) -> &Connection {
        self.0.conn()
    }
}
