//! The usage ledger: `<home>/ledger.db`, SQLite in WAL mode, one row per
//! usage receipt, keyed by (session, receipt seq) so writing a session's rows
//! twice changes nothing. The receipt chains are the source of truth; this is
//! an index over them (the binary's `usage rebuild` recreates it, its
//! `usage report` queries it). A library of its own so a benchmark can link
//! it (`benches/ledger.rs`: rows written per second).
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// The SQLite file: schema, opening, idempotent writes.
mod ledger;

pub use ledger::{Ledger, UsageRow, LEDGER_FILE};

use ledger::SCHEMA_VERSION;

/// What a ledger operation failed at; each says how to recover where there
/// is a way.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("opening the usage ledger {}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("creating the usage ledger {}", path.display())]
    Create {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the usage ledger {} is unreadable or damaged: recreate it with `openclaw usage rebuild`", path.display())]
    Damaged {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the usage ledger {} is unreadable or damaged: recreate it with `openclaw usage rebuild`: journal mode is {mode}, not {wanted}", path.display())]
    JournalMode {
        path: PathBuf,
        mode: String,
        wanted: &'static str,
    },
    #[error("the usage ledger {} has schema version {version}, this openclaw reads {SCHEMA_VERSION}: recreate it with `openclaw usage rebuild`", path.display())]
    Version { path: PathBuf, version: i64 },
    #[error("{what}")]
    Write {
        what: &'static str,
        source: rusqlite::Error,
    },
    #[error("a usage figure exceeds SQLite's integer range")]
    TooLarge(#[from] std::num::TryFromIntError),
}
