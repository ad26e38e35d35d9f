//! From receipt chains to ledger rows: a session's rows are read from its
//! verified chain, both when the session ends and when `openclaw usage
//! rebuild` recreates the whole ledger from every session in the home.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ed25519_dalek::VerifyingKey;
use receipts::{Body, ReadChainError, UnverifiedStream};

use super::ledger::{Ledger, UsageLedger, UsageRow, LEDGER_FILE};
use super::ledger_db::LedgerDb;
use super::pg_ledger::PgLedger;
use crate::bundle;
// A session whose chain names no tenant (from before labels) is `local`'s,
// like one run without `--tenant`.
use crate::session::config::DEFAULT_TENANT;

/// The user of a session that names none.
pub const UNKNOWN_USER: &str = "unknown";

/// The ledger rows of a session bundle's chain, verified against the pinned
/// key: one per usage receipt, labelled with the tenant and user its
/// session_start names.
pub fn rows_of(session_dir: &Path, key: &VerifyingKey) -> Result<Vec<UsageRow>> {
    rows_verified(session_dir, std::slice::from_ref(key), None)
}

/// The rows of a session bundle's chain, verified against the pinned key
/// that signed it (the one whose id its first line names; with no such key,
/// against the first, for the error), every row's tenant replaced by
/// `tenant` when given (a deleted tenant's archive label: its chains still
/// name the old tenant).
///
/// Read as `openclaw verify` reads it: a line at a time, memory bounded by
/// the chain's bounds (and the rows) whatever the file's size, stopping at
/// the first line refused. Rows count only once the whole chain verified.
fn rows_verified(
    session_dir: &Path,
    keys: &[VerifyingKey],
    tenant: Option<&str>,
) -> Result<Vec<UsageRow>> {
    let path = session_dir.join(bundle::RECEIPTS);
    let reading = || format!("reading {}", path.display());
    let (file, len) = bundle::open_regular_file(&path).with_context(reading)?;
    let mut stream = UnverifiedStream::new(std::io::Read::take(file, len));
    let signer = stream.embedded_key().ok().map(|k| receipts::key_id(&k));
    let key = keys
        .iter()
        .find(|k| Some(receipts::key_id(k)) == signer)
        .or(keys.first())
        .context("no receipt public key to verify with")?;
    // The first receipt is the session_start (the verifier sees to it):
    // its labels are known before any usage receipt.
    let mut labels: Option<(String, String)> = None;
    let mut rows = Vec::new();
    let verified = stream.verify(key, |r| match &r.receipt.body {
        Body::SessionStart {
            tenant: named,
            user,
            ..
        } => {
            labels = Some((
                tenant
                    .map(str::to_owned)
                    .or_else(|| named.clone())
                    .unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
                user.clone().unwrap_or_else(|| UNKNOWN_USER.to_owned()),
            ));
        }
        Body::Usage(u) => {
            let (tenant, user) = labels.clone().unwrap_or_default();
            rows.push(UsageRow {
                session: r.receipt.session.clone(),
                seq: r.receipt.seq,
                ts: r.receipt.ts.clone(),
                tenant,
                user,
                record: u.clone(),
            });
        }
        _ => {}
    });
    match verified {
        Ok(_) => Ok(rows),
        Err(ReadChainError::Read(e)) => Err(anyhow::Error::new(e).context(reading())),
        Err(ReadChainError::Chain(e)) => {
            Err(anyhow::Error::new(e).context(format!("{} does not verify", path.display())))
        }
    }
}

/// Whether the written part of a bundle's chain (up to its first NUL)
/// holds a usage receipt's kind, read a chunk at a time.
fn mentions_usage(session_dir: &Path) -> bool {
    const USAGE_KIND: &[u8] = b"\"kind\":\"usage\"";
    let Ok((file, len)) = bundle::open_regular_file(&session_dir.join(bundle::RECEIPTS)) else {
        return false;
    };
    let mut file = std::io::Read::take(file, len);
    let mut buf = vec![0u8; 256 << 10];
    // The end of the last chunk, for a kind split across two reads.
    let mut carried = 0;
    loop {
        let n = match std::io::Read::read(&mut file, &mut buf[carried..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let filled = carried + n;
        let written = buf[carried..filled]
            .iter()
            .position(|&b| b == 0)
            .map_or(filled, |nul| carried + nul);
        if buf[..written]
            .windows(USAGE_KIND.len())
            .any(|w| w == USAGE_KIND)
        {
            return true;
        }
        if written < filled {
            return false;
        }
        carried = (USAGE_KIND.len() - 1).min(filled);
        buf.copy_within(filled - carried..filled, 0);
    }
}

/// Adds an ended session's rows to `ledger` (the same reading as rebuild).
/// Returns how many rows were new; a session without a usage receipt (or
/// without a chain at all) has none, and is not read further.
pub fn record_session(ledger: &LedgerDb, session_dir: &Path, key: &VerifyingKey) -> Result<usize> {
    if !mentions_usage(session_dir) {
        return Ok(0);
    }
    let rows = rows_of(session_dir, key)?;
    if rows.is_empty() {
        return Ok(0);
    }
    ledger.open()?.insert(&rows)
}

/// What a rebuild did.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Sessions whose chain verified, and their rows.
    pub sessions: usize,
    pub rows: usize,
    /// Sessions left out: (directory, why).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Where a rebuild reads chains: a directory of session bundles and the
/// receipt keys its chains may be signed by (the home's sessions with the
/// home's keys; each tenant's with that tenant's key).
pub struct ChainSource {
    pub sessions_dir: PathBuf,
    pub keys: Vec<VerifyingKey>,
    /// The tenant every row of these chains is labelled with, instead of
    /// the one their session_start names: a deleted tenant's chains keep
    /// the archive label its deletion gave their rows
    /// (`tenants-deleted/<name>-<ns>`), so a rebuild neither drops them nor
    /// gives them back to a new tenant of the same name.
    pub tenant_label: Option<String>,
}

/// Recreates the ledger at `ledger_path` from every session bundle under
/// each source's directory, each chain verified first against the one of
/// that source's keys that signed it (a chain that does not verify, or has
/// not ended, is left out and reported). The new
/// ledger is written beside the old one and renamed over it only when
/// complete, so an interrupted rebuild leaves the old ledger (or none)
/// rather than a partial one.
pub fn rebuild(ledger_path: &Path, sources: &[ChainSource]) -> Result<Rebuilt> {
    let mut done = Rebuilt::default();
    let dirs = session_dirs(sources)?;
    let tmp = sibling(ledger_path, ".rebuild");
    // A rebuild killed earlier may have left its file: start over.
    remove_if_exists(&tmp)?;
    let mut fresh = Ledger::create_fresh(&tmp)?;
    for (dir, source) in dirs {
        match rows_verified(&dir, &source.keys, source.tenant_label.as_deref()) {
            Ok(rows) => {
                done.rows += fresh.insert(&rows)?;
                done.sessions += 1;
            }
            Err(e) => done.skipped.push((dir, format!("{e:#}"))),
        }
    }
    drop(fresh);
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    // The old ledger's WAL and shared-memory files belong to the old
    // database: they must not be applied to the new one. Fold the WAL into
    // the old file first (best effort: it may be the damage being repaired),
    // so a rebuild killed between here and the rename leaves it whole.
    if ledger_path.exists() {
        if let Ok(old) = rusqlite::Connection::open(ledger_path) {
            let _ = old.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        }
    }
    for suffix in ["-wal", "-shm"] {
        remove_if_exists(&sibling(ledger_path, suffix))?;
    }
    std::fs::rename(&tmp, ledger_path)
        .with_context(|| format!("moving the rebuilt ledger to {}", ledger_path.display()))?;
    if let Some(parent) = ledger_path.parent() {
        // The rename is durable only once the directory is.
        if let Ok(dir) = std::fs::File::open(parent) {
            dir.sync_all().ok();
        }
    }
    // Back to WAL for the writers that follow.
    Ledger::open(ledger_path)?;
    Ok(done)
}

/// Recreates `ledger` from the chains of `sources`: [`rebuild`] for a
/// SQLite file; in PostgreSQL, every row replaced in one transaction.
pub fn rebuild_into(ledger: &LedgerDb, sources: &[ChainSource]) -> Result<Rebuilt> {
    let url = match ledger {
        LedgerDb::Sqlite(path) => return rebuild(path, sources),
        LedgerDb::Postgres(url) => url,
    };
    let mut done = Rebuilt::default();
    let mut rows = Vec::new();
    for (dir, source) in session_dirs(sources)? {
        match rows_verified(&dir, &source.keys, source.tenant_label.as_deref()) {
            Ok(found) => {
                rows.extend(found);
                done.sessions += 1;
            }
            Err(e) => done.skipped.push((dir, format!("{e:#}"))),
        }
    }
    done.rows = PgLedger::open(url)?.replace_all(rows)?;
    Ok(done)
}

/// Every session bundle under the sources' directories, with the source it
/// was found in (the keys its chain may be signed by), in order.
fn session_dirs(sources: &[ChainSource]) -> Result<Vec<(PathBuf, &ChainSource)>> {
    let mut dirs: Vec<(PathBuf, &ChainSource)> = Vec::new();
    for source in sources {
        let mut found: Vec<PathBuf> = match std::fs::read_dir(&source.sessions_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(bundle::RECEIPTS).is_file())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("listing {}", source.sessions_dir.display()));
            }
        };
        found.sort();
        dirs.extend(found.into_iter().map(|d| (d, source)));
    }
    Ok(dirs)
}

/// The default ledger path in an openclaw home.
pub fn ledger_path(home: &Path) -> PathBuf {
    home.join(LEDGER_FILE)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ed25519_dalek::SigningKey;
    use receipts::{DecisionRecord, Entry, ReceiptLog, SessionStart, UsageRecord};
    use serde_json::json;

    use super::*;

    /// A session bundle with one allowed llm call and its usage receipt,
    /// labelled or not.
    fn session(dir: &Path, key: &SigningKey, labelled: bool) {
        std::fs::create_dir_all(dir).expect("dir");
        let log = ReceiptLog::create(
            &dir.join(bundle::RECEIPTS),
            key.clone(),
            SessionStart {
                session_id: "s1".into(),
                revocation_ids: vec![],
                sandbox: "netns".into(),
                capability_sha256: None,
                tenant: labelled.then(|| "acme".to_owned()),
                user: labelled.then(|| "alice".to_owned()),
            },
        )
        .expect("chain");
        let d = log
            .append(Entry::Decision {
                decided_at: SystemTime::now(),
                record: DecisionRecord {
                    action: json!({"type": "llm", "method": "POST", "host": "h", "path": "/v1/messages"}),
                    counters: json!({}),
                    decision: json!({"decision": "allow", "reason": "", "grant": "llm", "revocation_ids": []}),
                    body_sha256: None,
                },
            })
            .expect("decision");
        log.append(Entry::Usage(UsageRecord {
            decision_seq: d.seq,
            provider: "h".into(),
            api: "anthropic.messages".into(),
            model: "claude-haiku-4-5".into(),
            response_id: None,
            tokens: receipts::UsageTokens::default(),
            rates: receipts::RateSnapshot {
                card_sha256: receipts::sha256_hex(b"c"),
                ..Default::default()
            },
            cost_micro_usd: 7,
            reserved_micro_usd: 7,
            estimated: true,
        }))
        .expect("usage");
        log.finish().expect("end");
    }

    /// What both ledgers must do alike, through the one interface: a
    /// session recorded once however often it is written, reports that
    /// sum and group its rows the same, and a rebuild from the chains that
    /// ends with the same rows (and drops rows no chain backs).
    fn ledger_contract(db: &LedgerDb) {
        use super::super::report::{parse_period, query, today, GroupKey};
        let tmp = tempfile::tempdir().expect("tmp");
        let key = SigningKey::from_bytes(&[9; 32]);
        let dir = tmp.path().join("sessions/s1");
        session(&dir, &key, true);
        let vk = key.verifying_key();
        assert!(
            db.open_for_reading().expect("open").is_none() || matches!(db, LedgerDb::Postgres(_)),
            "a SQLite ledger is not made by reading it"
        );
        assert_eq!(record_session(db, &dir, &vk).expect("first"), 1);
        assert_eq!(record_session(db, &dir, &vk).expect("again"), 0);
        let rows = rows_of(&dir, &vk).expect("chain");
        assert_eq!(
            (rows[0].tenant.as_str(), rows[0].user.as_str()),
            ("acme", "alice")
        );
        assert_eq!(rows[0].seq, 2);
        assert_eq!(rows[0].record.cost_micro_usd, 7);
        // Another key: the chain does not verify, nothing is recorded.
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(record_session(db, &dir, &other).is_err());
        // No chain at all (a session that failed before it): nothing to do.
        assert_eq!(record_session(db, tmp.path(), &vk).expect("none"), 0);
        // A row no chain backs (as if written and its bundle lost).
        let mut stray = rows[0].clone();
        stray.session = "gone".into();
        stray.tenant = "other".into();
        db.open().expect("open").insert(&[stray]).expect("stray");

        let report = |by: &[GroupKey], tenant: Option<&str>| {
            let ledger = db.open_for_reading().expect("open").expect("exists");
            let period = parse_period("2000-01-01..2999-12-31", &today()).expect("period");
            query(ledger.as_ref(), &period, tenant, by).expect("query")
        };
        let all = report(&[GroupKey::Tenant, GroupKey::User], None);
        let keys: Vec<Vec<String>> = all.rows.iter().map(|r| r.keys.clone()).collect();
        assert_eq!(keys, [["acme", "alice"], ["other", "alice"]]);
        assert_eq!((all.total.calls, all.total.cost_micro_usd), (2, 14));
        assert_eq!(all.total.estimated_calls, 2);
        let acme = report(&[GroupKey::Session, GroupKey::Model], Some("acme"));
        assert_eq!(acme.rows.len(), 1);
        assert_eq!(
            acme.rows[0].keys,
            ["claude-haiku-4-5", "s1"],
            "model, then session"
        );
        assert_eq!(acme.total.calls, 1);

        let sources = [ChainSource {
            sessions_dir: tmp.path().join("sessions"),
            keys: vec![vk],
            tenant_label: None,
        }];
        let done = rebuild_into(db, &sources).expect("rebuild");
        assert_eq!((done.sessions, done.rows), (1, 1), "{:?}", done.skipped);
        let after = report(&[GroupKey::Tenant], None);
        assert_eq!(after.rows.len(), 1, "the stray row is gone");
        assert_eq!(after.total.cost_micro_usd, 7);
    }

    #[test]
    fn the_sqlite_ledger_keeps_the_ledger_contract() {
        let tmp = tempfile::tempdir().expect("tmp");
        ledger_contract(&LedgerDb::Sqlite(tmp.path().join(LEDGER_FILE)));
    }

    #[test]
    #[cfg_attr(
        not(openclaw_has_postgres),
        ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
    )]
    fn the_postgres_ledger_keeps_the_ledger_contract() {
        test_requirements::require(
            &[test_requirements::Requirement::Postgres],
            "usage::rebuild::the_postgres_ledger_keeps_the_ledger_contract",
        );
        let server = test_support::PostgresServer::start();
        let url = crate::tenants::DatabaseUrl::from_arg(&server.create_database("ledger"))
            .expect("infallible");
        ledger_contract(&LedgerDb::Postgres(url));
    }

    #[test]
    fn unlabelled_sessions_are_local_and_unknown() {
        let tmp = tempfile::tempdir().expect("tmp");
        let key = SigningKey::from_bytes(&[9; 32]);
        session(&tmp.path().join("s"), &key, false);
        let rows = rows_of(&tmp.path().join("s"), &key.verifying_key()).expect("chain");
        assert_eq!(
            (rows[0].tenant.as_str(), rows[0].user.as_str()),
            (DEFAULT_TENANT, UNKNOWN_USER)
        );
    }
}
