//! Where the usage ledger is kept, chosen once per command or daemon: the
//! home's SQLite file or the control plane's PostgreSQL database. Apart
//! from ledger.rs (the interface and the SQLite store) so that neither
//! store's file imports the other's.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::ledger::{Ledger, UsageLedger};
use super::pg_ledger::PgLedger;
use crate::tenants::DatabaseUrl;

/// Where the ledger is kept.
#[derive(Clone)]
pub enum LedgerDb {
    /// A SQLite file (`<home>/ledger.db`).
    Sqlite(PathBuf),
    /// The control plane's PostgreSQL database.
    Postgres(DatabaseUrl),
}

impl LedgerDb {
    /// A PostgreSQL ledger's calls bounded by `timeout` when given
    /// (`--database-timeout`); a file is left as it is.
    pub fn with_timeout(self, timeout: Option<std::time::Duration>) -> LedgerDb {
        match self {
            LedgerDb::Postgres(url) => LedgerDb::Postgres(url.with_timeout(timeout)),
            file => file,
        }
    }

    /// For clap: a `postgres://` or `postgresql://` URL, else a path.
    pub fn from_arg(text: &str) -> Result<LedgerDb, std::convert::Infallible> {
        Ok(if DatabaseUrl::is_url(text) {
            LedgerDb::Postgres(DatabaseUrl::from_arg(text)?)
        } else {
            LedgerDb::Sqlite(PathBuf::from(text))
        })
    }

    /// The home's ledger, or the database's when there is one.
    pub fn of(home: &Path, database: Option<&DatabaseUrl>) -> LedgerDb {
        match database {
            Some(url) => LedgerDb::Postgres(url.clone()),
            None => LedgerDb::Sqlite(super::ledger_path(home)),
        }
    }

    /// Opens it for writing (created if missing).
    pub fn open(&self) -> Result<Box<dyn UsageLedger>> {
        Ok(match self {
            LedgerDb::Sqlite(path) => Box::new(Ledger::open(path)?),
            LedgerDb::Postgres(url) => Box::new(PgLedger::open(url)?),
        })
    }

    /// Opens it for a report; `None` when a SQLite file was never written
    /// (no metered call yet).
    pub fn open_for_reading(&self) -> Result<Option<Box<dyn UsageLedger>>> {
        Ok(match self {
            LedgerDb::Sqlite(path) if !path.exists() => None,
            LedgerDb::Sqlite(path) => Some(Box::new(Ledger::open_read_only(path)?)),
            LedgerDb::Postgres(url) => Some(Box::new(PgLedger::open(url)?)),
        })
    }
}

/// The daemon's ledger for reports: a database's connection opened once
/// and kept (the API and `/metrics` read it per request, per tenant); a
/// SQLite file opened per report (it may not exist yet).
pub enum LedgerReader {
    File(PathBuf),
    Database(PgLedger),
}

impl LedgerReader {
    pub fn open(db: &LedgerDb) -> Result<LedgerReader> {
        Ok(match db {
            LedgerDb::Sqlite(path) => LedgerReader::File(path.clone()),
            LedgerDb::Postgres(url) => LedgerReader::Database(PgLedger::open(url)?),
        })
    }

    /// As [`LedgerDb::open_for_reading`].
    pub fn open_for_reading(&self) -> Result<Option<Box<dyn UsageLedger>>> {
        Ok(match self {
            LedgerReader::File(path) if !path.exists() => None,
            LedgerReader::File(path) => Some(Box::new(Ledger::open_read_only(path)?)),
            LedgerReader::Database(ledger) => Some(Box::new(ledger.clone())),
        })
    }
}

/// Never the URL's password: the path, or what a message may say of a URL.
impl std::fmt::Display for LedgerDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerDb::Sqlite(path) => write!(f, "{}", path.display()),
            LedgerDb::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl std::fmt::Debug for LedgerDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LedgerDb({self})")
    }
}
