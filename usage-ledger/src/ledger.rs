//! The ledger file: its schema, opening it (WAL; fresh without a journal
//! for a rebuild; read-only for reports) and idempotent writes.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};

use crate::LedgerError;

/// The ledger's file name in the openclaw home.
pub const LEDGER_FILE: &str = "ledger.db";

/// `PRAGMA user_version` of the schema below; a ledger of another version
/// is refused (rebuild it).
pub(crate) const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts TEXT NOT NULL,
    day TEXT NOT NULL,
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    provider TEXT NOT NULL,
    api TEXT NOT NULL,
    model TEXT NOT NULL,
    response_id TEXT,
    tokens_input INTEGER NOT NULL,
    tokens_cached_input INTEGER NOT NULL,
    tokens_cache_write_5m INTEGER NOT NULL,
    tokens_cache_write_1h INTEGER NOT NULL,
    tokens_output INTEGER NOT NULL,
    tokens_reasoning INTEGER NOT NULL,
    cost_micro_usd INTEGER NOT NULL,
    reserved_micro_usd INTEGER NOT NULL,
    card_sha256 TEXT NOT NULL,
    estimated INTEGER NOT NULL,
    decision_seq INTEGER NOT NULL,
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_day ON usage (day, tenant);
";

/// One ledger row: one usage receipt with its session's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub session: String,
    /// The usage receipt's seq in its chain.
    pub seq: u64,
    /// The usage receipt's `ts` (RFC 3339 UTC).
    pub ts: String,
    pub tenant: String,
    pub user: String,
    pub record: receipts::UsageRecord,
}

impl UsageRow {
    /// `YYYY-MM-DD` (UTC) of the row's time.
    pub fn day(&self) -> &str {
        self.ts.get(..10).unwrap_or(&self.ts)
    }
}

/// An open ledger.
pub struct Ledger {
    conn: Connection,
}

type Result<T> = std::result::Result<T, LedgerError>;

impl Ledger {
    /// Opens (creating if missing) the ledger at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<Ledger> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|source| LedgerError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::prepare(conn, path, "wal")
    }

    /// A ledger being built from nothing (rebuild): no journal at all, so
    /// the finished file is complete on its own and can be renamed into
    /// place; a build that dies is thrown away, never rolled back.
    pub fn create_fresh(path: &Path) -> Result<Ledger> {
        let conn = Connection::open(path).map_err(|source| LedgerError::Create {
            path: path.to_owned(),
            source,
        })?;
        Self::prepare(conn, path, "off")
    }

    /// Opens an existing ledger read-only (reports).
    pub fn open_read_only(path: &Path) -> Result<Ledger> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            |source| LedgerError::Open {
                path: path.to_owned(),
                source,
            },
        )?;
        let ledger = Ledger { conn };
        ledger.check_version(path)?;
        Ok(ledger)
    }

    fn prepare(conn: Connection, path: &Path, journal: &'static str) -> Result<Ledger> {
        let damaged = |source| LedgerError::Damaged {
            path: path.to_owned(),
            source,
        };
        // Several sessions may end at once: wait for the lock rather than fail.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(damaged)?;
        let mode: String = conn
            .query_row(&format!("PRAGMA journal_mode = {journal}"), [], |r| {
                r.get(0)
            })
            .map_err(damaged)?;
        if !mode.eq_ignore_ascii_case(journal) {
            return Err(LedgerError::JournalMode {
                path: path.to_owned(),
                mode,
                wanted: journal,
            });
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(damaged)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(damaged)?;
        if version == 0 {
            conn.execute_batch(SCHEMA).map_err(damaged)?;
            conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
                .map_err(damaged)?;
        }
        let ledger = Ledger { conn };
        ledger.check_version(path)?;
        Ok(ledger)
    }

    fn check_version(&self, path: &Path) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|source| LedgerError::Damaged {
                path: path.to_owned(),
                source,
            })?;
        if version != SCHEMA_VERSION {
            return Err(LedgerError::Version {
                path: path.to_owned(),
                version,
            });
        }
        Ok(())
    }

    /// Writes rows in one transaction; rows already present (same session
    /// and seq) are left as they are. Returns how many were new.
    pub fn insert(&mut self, rows: &[UsageRow]) -> Result<usize> {
        let write = |what| move |source| LedgerError::Write { what, source };
        let tx = self
            .conn
            .transaction()
            .map_err(write("starting a ledger write"))?;
        let mut added = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO usage (session, seq, ts, day, tenant, user, provider, api,
                    model, response_id, tokens_input, tokens_cached_input, tokens_cache_write_5m,
                    tokens_cache_write_1h, tokens_output, tokens_reasoning, cost_micro_usd,
                    reserved_micro_usd, card_sha256, estimated, decision_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18, ?19, ?20, ?21)",
                )
                .map_err(write("preparing a ledger write"))?;
            for row in rows {
                let u = &row.record;
                let t = &u.tokens;
                added += stmt
                    .execute(params![
                        row.session,
                        sql_int(row.seq)?,
                        row.ts,
                        row.day(),
                        row.tenant,
                        row.user,
                        u.provider,
                        u.api,
                        u.model,
                        u.response_id,
                        sql_int(t.input)?,
                        sql_int(t.cached_input)?,
                        sql_int(t.cache_write_5m)?,
                        sql_int(t.cache_write_1h)?,
                        sql_int(t.output)?,
                        sql_int(t.reasoning)?,
                        sql_int(u.cost_micro_usd)?,
                        sql_int(u.reserved_micro_usd)?,
                        u.rates.card_sha256,
                        u.estimated,
                        sql_int(u.decision_seq)?,
                    ])
                    .map_err(write("writing a ledger row"))?;
            }
        }
        tx.commit().map_err(write("committing a ledger write"))?;
        Ok(added)
    }

    /// The connection, for the reports' queries.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// SQLite integers are signed 64-bit: a count or cost past that (never real)
/// is refused rather than wrapped.
fn sql_int(n: u64) -> Result<i64> {
    Ok(i64::try_from(n)?)
}

#[cfg(test)]
mod tests;
