//! The SQLite [`Store`]: `<home>/control.db` in WAL mode, so `openclaw
//! tenants ...` at the terminal and a running `openclaw serve` share it (a
//! rotation by the CLI is seen by the daemon's next request).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

use super::name::TenantName;
use super::quota::Quotas;
use super::store::{DeleteBegun, Store, TenantRecord, TenantStoreError};
use super::token::TokenHash;

/// The store's file name in the openclaw home.
pub const CONTROL_DB: &str = "control.db";

/// `PRAGMA user_version` of the schema below; another version is refused.
/// Versions 1 (no quotas table), 2 (no day quota tables), 3 (no
/// `quota_holds.tokens`) and 4 (no `tenants.deleting`) are upgraded in
/// place.
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY NOT NULL,
    token_sha256 BLOB NOT NULL CHECK (length(token_sha256) = 32),
    created_at TEXT NOT NULL,
    token_issued_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS admin_token (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token_sha256 BLOB NOT NULL CHECK (length(token_sha256) = 32),
    issued_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quotas (
    tenant TEXT PRIMARY KEY NOT NULL,
    sessions INTEGER CHECK (sessions >= 0),
    requests_per_minute INTEGER CHECK (requests_per_minute >= 0),
    llm_tokens_per_day INTEGER CHECK (llm_tokens_per_day >= 0),
    micro_usd_per_day INTEGER CHECK (micro_usd_per_day >= 0),
    updated_at TEXT NOT NULL
);
-- The proxy's day quotas (tenants/day_quota.rs): each tenant's settled LLM
-- spend per UTC day, and the worst cases of calls in flight.
CREATE TABLE IF NOT EXISTS day_spend (
    tenant TEXT NOT NULL,
    day TEXT NOT NULL,
    micro_usd INTEGER NOT NULL CHECK (micro_usd >= 0),
    tokens INTEGER NOT NULL CHECK (tokens >= 0),
    PRIMARY KEY (tenant, day)
);
CREATE TABLE IF NOT EXISTS quota_holds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    day TEXT NOT NULL,
    micro_usd INTEGER NOT NULL CHECK (micro_usd >= 0),
    tokens INTEGER NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    session TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quota_holds_by_day ON quota_holds (tenant, day);
";

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// The usage ledger beside the store (`<home>/ledger.db`), relabelled
    /// with a deleted tenant's day spend.
    ledger: PathBuf,
}

fn backend(e: impl std::fmt::Display) -> TenantStoreError {
    TenantStoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if missing) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, TenantStoreError> {
        let conn = Connection::open(path)
            .map_err(|e| backend(format!("opening {}: {e}", path.display())))?;
        // The CLI and the daemon may write at once: wait rather than fail.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(backend)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(backend(format!(
                "{} refused WAL mode ({mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(backend)?;
        match version {
            // Every table is `IF NOT EXISTS`: version 1 gains the quotas
            // table, version 2 the day quota tables; version 3's holds gain
            // their tokens (0: they held none); every tenant before version
            // 5 gains its deletion mark (NULL: not being deleted).
            0..=4 => {
                conn.execute_batch(SCHEMA).map_err(backend)?;
                if version == 3 {
                    add_column(
                        &conn,
                        "quota_holds",
                        "tokens",
                        "INTEGER NOT NULL DEFAULT 0 CHECK (tokens >= 0)",
                    )?;
                }
                add_column(&conn, "tenants", "deleting", "TEXT")?;
                conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(backend)?;
            }
            SCHEMA_VERSION => {}
            other => {
                return Err(backend(format!(
                    "{} has schema version {other}; this openclaw reads {SCHEMA_VERSION}",
                    path.display()
                )))
            }
        }
        // Token hashes are not secrets, but nobody else needs to read them.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            ledger: path.with_file_name(crate::usage::ledger::LEDGER_FILE),
        })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, TenantStoreError> {
        self.conn
            .lock()
            .map_err(|_| backend("a thread panicked holding the store"))
    }
}

/// `ALTER TABLE table ADD COLUMN column decl`, unless another opener added
/// it a moment before.
fn add_column(
    conn: &Connection,
    table: &str,
    column: &str,
    decl: &str,
) -> Result<(), TenantStoreError> {
    let added = conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"));
    let has: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if !has {
        added.map_err(backend)?;
    }
    Ok(())
}

fn hash_from(blob: Vec<u8>) -> Result<TokenHash, TenantStoreError> {
    let bytes: [u8; 32] = blob
        .try_into()
        .map_err(|_| backend("a stored token hash is not 32 bytes"))?;
    Ok(TokenHash(bytes))
}

impl Store for SqliteStore {
    fn ping(&self) -> Result<(), TenantStoreError> {
        self.conn()?
            .query_row("SELECT count(*) FROM tenants", [], |r| r.get::<_, i64>(0))
            .map(drop)
            .map_err(backend)
    }

    fn insert_tenant(
        &self,
        name: &TenantName,
        token: &TokenHash,
        at: &str,
    ) -> Result<(), TenantStoreError> {
        let conn = self.conn()?;
        match conn.execute(
            "INSERT INTO tenants (name, token_sha256, created_at, token_issued_at) VALUES (?1, ?2, ?3, ?3)",
            params![name.as_str(), &token.0[..], at],
        ) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(TenantStoreError::TenantExists(name.clone()))
            }
            Err(e) => Err(backend(e)),
        }
    }

    fn tenants(&self) -> Result<Vec<TenantRecord>, TenantStoreError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(
                "SELECT name, created_at, token_issued_at FROM tenants WHERE deleting IS NULL
                 ORDER BY name",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (name, created_at, token_issued_at) = row.map_err(backend)?;
            // Whatever wrote the row, a name that is not valid is never
            // handed on to be joined onto a path.
            let name = TenantName::parse(&name)
                .map_err(|e| backend(format!("stored tenant name {name:?}: {e}")))?;
            out.push(TenantRecord {
                name,
                created_at,
                token_issued_at,
            });
        }
        Ok(out)
    }

    fn tenant_token(&self, name: &TenantName) -> Result<Option<TokenHash>, TenantStoreError> {
        let blob: Option<Vec<u8>> = self
            .conn()?
            .query_row(
                "SELECT token_sha256 FROM tenants WHERE name = ?1 AND deleting IS NULL",
                params![name.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        blob.map(hash_from).transpose()
    }

    fn replace_tenant_token(
        &self,
        name: &TenantName,
        token: &TokenHash,
        at: &str,
    ) -> Result<(), TenantStoreError> {
        let changed = self
            .conn()?
            .execute(
                "UPDATE tenants SET token_sha256 = ?2, token_issued_at = ?3
                 WHERE name = ?1 AND deleting IS NULL",
                params![name.as_str(), &token.0[..], at],
            )
            .map_err(backend)?;
        if changed == 0 {
            return Err(TenantStoreError::NoSuchTenant(name.clone()));
        }
        Ok(())
    }

    fn delete_tenant(&self, name: &TenantName) -> Result<(), TenantStoreError> {
        let mut conn = self.conn()?;
        // The tenant and its quotas go together (a new tenant of the name
        // starts unlimited).
        let tx = conn.transaction().map_err(backend)?;
        let changed = tx
            .execute(
                "DELETE FROM tenants WHERE name = ?1",
                params![name.as_str()],
            )
            .map_err(backend)?;
        if changed == 0 {
            return Err(TenantStoreError::NoSuchTenant(name.clone()));
        }
        tx.execute(
            "DELETE FROM quotas WHERE tenant = ?1",
            params![name.as_str()],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn begin_delete(
        &self,
        name: &TenantName,
        archive: &str,
    ) -> Result<DeleteBegun, TenantStoreError> {
        let mut conn = self.conn()?;
        // Immediate: the read and the mark are one step against another
        // writer (the daemon and the CLI share the file).
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        let mark: Option<Option<String>> = tx
            .query_row(
                "SELECT deleting FROM tenants WHERE name = ?1",
                params![name.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        let begun = match mark {
            None => return Err(TenantStoreError::NoSuchTenant(name.clone())),
            Some(Some(recorded)) => DeleteBegun {
                archive: recorded,
                resumed: true,
            },
            Some(None) => {
                tx.execute(
                    "UPDATE tenants SET deleting = ?2 WHERE name = ?1",
                    params![name.as_str(), archive],
                )
                .map_err(backend)?;
                DeleteBegun {
                    archive: archive.to_owned(),
                    resumed: false,
                }
            }
        };
        tx.commit().map_err(backend)?;
        Ok(begun)
    }

    fn finish_delete(&self, name: &TenantName, archive: &str) -> Result<(), TenantStoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(backend)?;
        let changed = tx
            .execute(
                "DELETE FROM tenants WHERE name = ?1 AND deleting = ?2",
                params![name.as_str(), archive],
            )
            .map_err(backend)?;
        if changed > 0 {
            tx.execute(
                "DELETE FROM quotas WHERE tenant = ?1",
                params![name.as_str()],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn interrupted_deletes(&self) -> Result<Vec<(TenantName, String)>, TenantStoreError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT name, deleting FROM tenants WHERE deleting IS NOT NULL ORDER BY name")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (name, archive) = row.map_err(backend)?;
            let name = TenantName::parse(&name)
                .map_err(|e| backend(format!("stored tenant name {name:?}: {e}")))?;
            out.push((name, archive));
        }
        Ok(out)
    }

    fn archive_usage(&self, name: &TenantName, archive: &str) -> Result<(), TenantStoreError> {
        // The ledger is its own file: relabelled first, so a failure leaves
        // the day spend (what the proxy's quota reads) under the name and
        // the delete is reported failed rather than half done unnoticed.
        if self.ledger.exists() {
            crate::usage::ledger::archive_tenant(&self.ledger, name.as_str(), archive)
                .map_err(|e| backend(format!("{} {e:#}", self.ledger.display())))?;
        }
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(backend)?;
        for table in ["day_spend", "quota_holds"] {
            tx.execute(
                &format!("UPDATE {table} SET tenant = ?2 WHERE tenant = ?1"),
                params![name.as_str(), archive],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn quotas(&self, name: &TenantName) -> Result<Option<Quotas>, TenantStoreError> {
        type Row = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
        let row: Option<Row> = self
            .conn()?
            .query_row(
                "SELECT q.sessions, q.requests_per_minute, q.llm_tokens_per_day, q.micro_usd_per_day
                 FROM tenants t LEFT JOIN quotas q ON q.tenant = t.name
                 WHERE t.name = ?1 AND t.deleting IS NULL",
                params![name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(backend)?;
        let Some((sessions, rpm, tokens, usd)) = row else {
            return Ok(None);
        };
        let unsigned = |v: Option<i64>| {
            v.map(u64::try_from)
                .transpose()
                .map_err(|_| backend("a stored quota is negative"))
        };
        Ok(Some(Quotas {
            sessions: unsigned(sessions)?,
            requests_per_minute: unsigned(rpm)?,
            llm_tokens_per_day: unsigned(tokens)?,
            micro_usd_per_day: unsigned(usd)?,
        }))
    }

    fn set_quotas(
        &self,
        name: &TenantName,
        quotas: &Quotas,
        at: &str,
    ) -> Result<(), TenantStoreError> {
        let signed = |v: Option<u64>| {
            v.map(i64::try_from)
                .transpose()
                .map_err(|_| backend("a quota over 2^63"))
        };
        // One statement: the row is written only while the tenant exists.
        let changed = self
            .conn()?
            .execute(
                "INSERT INTO quotas (tenant, sessions, requests_per_minute, llm_tokens_per_day,
                     micro_usd_per_day, updated_at)
                 SELECT name, ?2, ?3, ?4, ?5, ?6 FROM tenants
                 WHERE name = ?1 AND deleting IS NULL
                 ON CONFLICT (tenant) DO UPDATE SET sessions = excluded.sessions,
                     requests_per_minute = excluded.requests_per_minute,
                     llm_tokens_per_day = excluded.llm_tokens_per_day,
                     micro_usd_per_day = excluded.micro_usd_per_day,
                     updated_at = excluded.updated_at",
                params![
                    name.as_str(),
                    signed(quotas.sessions)?,
                    signed(quotas.requests_per_minute)?,
                    signed(quotas.llm_tokens_per_day)?,
                    signed(quotas.micro_usd_per_day)?,
                    at
                ],
            )
            .map_err(backend)?;
        if changed == 0 {
            return Err(TenantStoreError::NoSuchTenant(name.clone()));
        }
        Ok(())
    }

    fn admin_token(&self) -> Result<Option<TokenHash>, TenantStoreError> {
        let blob: Option<Vec<u8>> = self
            .conn()?
            .query_row(
                "SELECT token_sha256 FROM admin_token WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        blob.map(hash_from).transpose()
    }

    fn set_admin_token(&self, token: &TokenHash, at: &str) -> Result<(), TenantStoreError> {
        self.conn()?
            .execute(
                "INSERT INTO admin_token (id, token_sha256, issued_at) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET token_sha256 = excluded.token_sha256,
                     issued_at = excluded.issued_at",
                params![&token.0[..], at],
            )
            .map(drop)
            .map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::store::conformance;

    #[test]
    fn the_sqlite_store_keeps_the_store_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CONTROL_DB);
        // Two openers of one file: the daemon and the CLI beside it.
        let daemon = SqliteStore::open(&path).expect("open");
        let cli = SqliteStore::open(&path).expect("open again");
        conformance::check(&daemon, &cli);
        drop((daemon, cli));
        let again = SqliteStore::open(&path).expect("reopen");
        assert_eq!(again.tenants().expect("list").len(), 2, "rows are durable");
    }

    #[test]
    fn a_version_1_store_gains_the_quotas_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CONTROL_DB);
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE tenants (name TEXT PRIMARY KEY NOT NULL, token_sha256 BLOB NOT NULL,
                     created_at TEXT NOT NULL, token_issued_at TEXT NOT NULL);
                 CREATE TABLE admin_token (id INTEGER PRIMARY KEY, token_sha256 BLOB NOT NULL,
                     issued_at TEXT NOT NULL);
                 PRAGMA user_version = 1;",
            )
            .expect("version 1");
        }
        let store = SqliteStore::open(&path).expect("upgrade");
        let acme = TenantName::parse("acme").expect("name");
        store
            .insert_tenant(&acme, &TokenHash::of("x"), "t")
            .expect("insert");
        let q = Quotas {
            sessions: Some(1),
            ..Quotas::default()
        };
        store.set_quotas(&acme, &q, "t").expect("set");
        assert_eq!(store.quotas(&acme).expect("get"), Some(q));
    }
}
