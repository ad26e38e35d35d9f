//! The sessions the UI shows: bundles under `<home>/sessions`, whether each
//! is live (its supervisor alive and its control socket present), their
//! reports (cached until a bundle file changes) and the receipt keys the
//! reports are verified with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::bundle::{self, SessionInfo};
use crate::control::CONTROL_SOCK;
use crate::keys;
use crate::report::{self, Report};

/// Longest session id accepted from a URL.
const MAX_ID: usize = 128;

/// A session id from a URL: letters, digits, `-`, `_`, `.`, not starting
/// with a dot. Nothing else can name a path outside the sessions directory.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// One row of the sessions list.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub id: String,
    /// `running`, `completed`, `failed`, `interrupted`, or `stale` (says
    /// running but its supervisor is gone).
    pub status: String,
    pub live: bool,
    pub backend: String,
    pub started_at: String,
    pub duration_ms: Option<u64>,
    pub command: Vec<String>,
    pub task: Option<String>,
    pub actions: u64,
    pub allowed: u64,
    pub blocked: u64,
    pub pending: u64,
    pub approved: u64,
    pub denied: u64,
    pub spend_cents: u64,
    pub currency: Option<String>,
    pub llm_micro_usd: u64,
    /// The session's LLM budget, micro-USD, when its token sets one.
    pub llm_budget_micro_usd: Option<u64>,
    pub receipts: String,
}

/// The directory names under a sessions directory, newest first (session
/// ids start with their time); none when it cannot be read.
pub fn ids_newest_first(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

/// What changes a report: the bundle files' sizes and times.
type Stamp = Vec<(u64, Option<SystemTime>)>;

pub struct Sessions {
    dir: PathBuf,
    home: PathBuf,
    keys: Mutex<HashMap<String, VerifyingKey>>,
    cache: Mutex<HashMap<String, (Stamp, Report)>>,
}

impl Sessions {
    pub fn new(home: &Path) -> Self {
        let sessions = Sessions {
            dir: home.join("sessions"),
            home: home.to_path_buf(),
            keys: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        };
        sessions.rescan_keys();
        sessions
    }

    /// The bundle directory of a valid id, if it is a real directory (not a
    /// symlink) holding a `session.json`.
    pub fn dir_of(&self, id: &str) -> Option<PathBuf> {
        if !valid_id(id) {
            return None;
        }
        let dir = self.dir.join(id);
        let meta = std::fs::symlink_metadata(&dir).ok()?;
        (meta.is_dir() && dir.join(bundle::SESSION_JSON).is_file()).then_some(dir)
    }

    /// Every session, newest first.
    pub fn list(&self) -> Vec<SessionRow> {
        ids_newest_first(&self.dir)
            .iter()
            .filter_map(|id| {
                let dir = self.dir_of(id)?;
                let report = self.report(id, &dir)?;
                Some(row(&report, is_live(&dir, &report.session)))
            })
            .collect()
    }

    /// The session's report, rebuilt only when a bundle file changed.
    pub fn report(&self, id: &str, dir: &Path) -> Option<Report> {
        let stamp = stamp(dir);
        if let Ok(cache) = self.cache.lock() {
            if let Some((s, r)) = cache.get(id) {
                if *s == stamp {
                    return Some(r.clone());
                }
            }
        }
        let info = bundle::read_info(dir).ok()?;
        let key = self.key_for(&info.receipt_key_id);
        let report = match report::build(dir, key.as_ref()) {
            Ok(r) => r,
            Err(err) => {
                tracing::warn!("report of {id}: {err:#}");
                return None;
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(id.to_owned(), (stamp, report.clone()));
        }
        Some(report)
    }

    /// The operator's receipt public key with this id: `<home>/keys` or a
    /// demo's keys. Unknown ids rescan once (a demo may have just made it).
    fn key_for(&self, key_id: &str) -> Option<VerifyingKey> {
        if let Some(k) = self.keys.lock().ok()?.get(key_id) {
            return Some(*k);
        }
        self.rescan_keys();
        self.keys.lock().ok()?.get(key_id).copied()
    }

    fn rescan_keys(&self) {
        let mut paths = vec![self.home.join("keys").join(keys::RECEIPT_PUB)];
        if let Ok(demos) = std::fs::read_dir(self.home.join("demo")) {
            for demo in demos.filter_map(|d| d.ok()) {
                paths.push(demo.path().join("keys").join(keys::RECEIPT_PUB));
            }
        }
        let found: HashMap<String, VerifyingKey> = paths
            .iter()
            .filter(|p| p.is_file())
            .filter_map(|p| keys::read_verifying_key(p).ok())
            .map(|k| (receipts::key_id(&k), k))
            .collect();
        if let Ok(mut keys) = self.keys.lock() {
            keys.extend(found);
        }
    }
}

fn stamp(dir: &Path) -> Stamp {
    [bundle::SESSION_JSON, bundle::RECEIPTS, bundle::EVENTS]
        .iter()
        .map(|name| match std::fs::metadata(dir.join(name)) {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(_) => (0, None),
        })
        .collect()
}

/// A session is live when it says so, its supervisor process (pid, start
/// time and boot) still runs and its control socket is there.
pub fn is_live(dir: &Path, info: &SessionInfo) -> bool {
    info.status == "running" && info.supervisor_alive() && dir.join(CONTROL_SOCK).exists()
}

pub(crate) fn row(report: &Report, live: bool) -> SessionRow {
    let s = &report.session;
    let c = &report.counts;
    SessionRow {
        id: s.id.clone(),
        status: if s.status == "running" && !live {
            "stale".into()
        } else {
            s.status.clone()
        },
        live,
        backend: s.backend.clone(),
        started_at: s.started_at.clone(),
        duration_ms: report.duration_ms,
        command: s.command.clone(),
        task: s.task.clone(),
        actions: c.actions,
        allowed: c.allowed,
        blocked: c.blocked,
        pending: c.approvals.pending,
        approved: c.approvals.approved,
        denied: c.approvals.denied + c.approvals.expired,
        spend_cents: report.spend.payments_cents,
        currency: report.spend.currency.clone(),
        llm_micro_usd: report.spend.llm_micro_usd,
        llm_budget_micro_usd: report.spend.llm_budget_micro_usd,
        receipts: report.receipts.status.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_the_sessions_directory() {
        assert!(valid_id("20261122-101500-3f9a1c"));
        for bad in [
            "", "..", "../x", "a/b", ".hidden", "a\\b", "a%2fb", "x\0", "a b", "é",
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(!valid_id(&"a".repeat(MAX_ID + 1)));
    }

    #[test]
    fn lists_bundles_newest_first_and_skips_symlinks_and_junk() {
        let home = tempfile::tempdir().expect("tempdir");
        let sessions = home.path().join("sessions");
        for (id, status) in [
            ("20261122-000001-aaaaaa", "completed"),
            ("20261122-000002-bbbbbb", "running"),
        ] {
            let dir = sessions.join(id);
            std::fs::create_dir_all(&dir).expect("mkdir");
            let info = SessionInfo {
                id: id.into(),
                status: status.into(),
                backend: "netns".into(),
                started_at: "2026-11-22T00:00:01Z".into(),
                // Not a live process: shown as stale.
                supervisor_pid: Some(u32::MAX),
                ..SessionInfo::default()
            };
            bundle::write_info(&dir, &info).expect("write");
        }
        std::fs::create_dir_all(sessions.join("junk")).expect("mkdir");
        std::os::unix::fs::symlink(
            sessions.join("20261122-000001-aaaaaa"),
            sessions.join("link"),
        )
        .expect("symlink");
        let s = Sessions::new(home.path());
        let rows = s.list();
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["20261122-000002-bbbbbb", "20261122-000001-aaaaaa"]);
        assert_eq!(rows[0].status, "stale");
        assert!(!rows[0].live);
        assert_eq!(rows[1].status, "completed");
        assert!(s.dir_of("link").is_none());
        assert!(s.dir_of("../sessions").is_none());
        assert!(s.dir_of("20261122-000001-aaaaaa").is_some());
    }
}
