//! The sessions the UI shows: bundles under `<home>/sessions` (or, for the
//! daemon, a tenant's `sessions/`, every path checked by
//! [`TenantRoot::join`]), whether each is live (its supervisor alive and its
//! control socket present), their reports (cached until a bundle file
//! changes) and the receipt keys the reports are verified with.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::bundle::{self, SessionInfo};
use crate::control::CONTROL_SOCK;
use crate::keys;
use crate::report::{self, Report};
use crate::tenants::{TenantName, TenantRoot};

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

/// Bundle files a tenant's session is read through; each must resolve
/// inside the tenant's root.
const TENANT_BUNDLE_FILES: [&str; 5] = [
    bundle::SESSION_JSON,
    bundle::RECEIPTS,
    bundle::EVENTS,
    bundle::CAPABILITIES,
    bundle::REPORT_JSON,
];

/// What changes a report: each stamped bundle file's inode, size and change
/// time. The inode catches `session.json`, which is replaced by a rename
/// (a new inode) even when the size is unchanged and the rewrite falls in
/// the same coarse clock tick as the last one.
type Stamp = Vec<Option<(u64, u64, i64, i64)>>;

/// A report as cached: shared, so a list does not copy every timeline.
struct Cached {
    stamp: Stamp,
    report: Arc<Report>,
}

pub struct Sessions {
    dir: PathBuf,
    home: PathBuf,
    /// Set for a tenant's sessions (the daemon): every directory and bundle
    /// file is checked to stay inside this root before it is read.
    root: Option<TenantRoot>,
    keys: Mutex<HashMap<String, VerifyingKey>>,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Sessions {
    pub fn new(home: &Path) -> Self {
        Self::with_root(home, None)
    }

    /// A tenant's sessions: `<root>/sessions`, verified with the tenant's
    /// receipt key (`<root>/keys/receipt.pub`), contained in its root.
    pub fn for_tenant(root: &TenantRoot) -> Self {
        Self::with_root(root.path(), Some(root.clone()))
    }

    fn with_root(home: &Path, root: Option<TenantRoot>) -> Self {
        let sessions = Sessions {
            dir: home.join("sessions"),
            home: home.to_path_buf(),
            root,
            keys: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        };
        sessions.rescan_keys();
        sessions
    }

    /// The bundle directory of a valid id, if it is a real directory (not a
    /// symlink) holding a `session.json`; for a tenant, only when it and
    /// every bundle file in it resolve inside the tenant's root.
    pub fn dir_of(&self, id: &str) -> Option<PathBuf> {
        if !valid_id(id) {
            return None;
        }
        let dir = match &self.root {
            Some(root) => root.join(&format!("sessions/{id}")).ok()?,
            None => self.dir.join(id),
        };
        let meta = std::fs::symlink_metadata(&dir).ok()?;
        if !meta.is_dir() {
            return None;
        }
        if let Some(root) = &self.root {
            // The directory is real (not a link) and resolves inside the
            // root, so what is not a link in it is inside too; a link is
            // resolved by the join. (Half the cost of joining every file:
            // a list checks each session this way.)
            for file in TENANT_BUNDLE_FILES {
                let link = std::fs::symlink_metadata(dir.join(file))
                    .is_ok_and(|m| m.file_type().is_symlink());
                if link {
                    root.join(&format!("sessions/{id}/{file}")).ok()?;
                }
            }
        }
        dir.join(bundle::SESSION_JSON).is_file().then_some(dir)
    }

    /// The directory and report of `id`. For a tenant, a bundle whose
    /// `session.json` names another id does not exist.
    pub fn lookup(&self, id: &str) -> Option<(PathBuf, Arc<Report>)> {
        let dir = self.dir_of(id)?;
        let report = self.report(id, &dir)?;
        (self.root.is_none() || report.session.id == id).then_some((dir, report))
    }

    /// The directory of `id` to serve. For a tenant, only when its report
    /// names it ([`Sessions::lookup`]); for `openclaw ui`, whenever the
    /// directory is there (its pages say when the report cannot be read).
    pub fn find(&self, id: &str) -> Option<PathBuf> {
        if self.root.is_some() {
            self.lookup(id).map(|(dir, _)| dir)
        } else {
            self.dir_of(id)
        }
    }

    /// Every session, newest first. A session costs its directory checks
    /// and its files' stamps; its report is rebuilt only when they changed.
    pub fn list(&self) -> Vec<SessionRow> {
        self.list_reports()
            .iter()
            .map(|(dir, report)| row(report, is_live(dir, &report.session)))
            .collect()
    }

    /// Every session's directory and report, newest first; cached reports
    /// of sessions no longer there are dropped.
    pub fn list_reports(&self) -> Vec<(PathBuf, Arc<Report>)> {
        let ids = ids_newest_first(&self.dir);
        let found: Vec<(PathBuf, Arc<Report>)> =
            ids.iter().filter_map(|id| self.lookup(id)).collect();
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|id, _| ids.binary_search_by(|x| id.cmp(x)).is_ok());
        }
        found
    }

    /// The session's report, rebuilt only when a bundle file changed.
    pub fn report(&self, id: &str, dir: &Path) -> Option<Arc<Report>> {
        let stamp = stamp(dir);
        if let Ok(cache) = self.cache.lock() {
            if let Some(cached) = cache.get(id) {
                if cached.stamp == stamp {
                    return Some(cached.report.clone());
                }
            }
        }
        let info = bundle::read_info(dir).ok()?;
        let key = self.key_for(&info.receipt_key_id);
        let report = match report::build(dir, key.as_ref()) {
            Ok(r) => Arc::new(r),
            Err(err) => {
                tracing::warn!("report of {id}: {err:#}");
                return None;
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                id.to_owned(),
                Cached {
                    stamp,
                    report: report.clone(),
                },
            );
        }
        Some(report)
    }

    /// The operator's receipt public key with this id: `<home>/keys` or a
    /// demo's keys. Unknown ids rescan once (a demo may have just made it).
    pub(crate) fn key_for(&self, key_id: &str) -> Option<VerifyingKey> {
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

/// One [`Sessions`] per tenant, kept for the daemon's life, so its report
/// cache serves every list of that tenant (the API's and the UI's).
#[derive(Default)]
pub struct TenantSessions {
    by_tenant: Mutex<HashMap<TenantName, Arc<Sessions>>>,
}

impl TenantSessions {
    /// The tenant's sessions. A tenant deleted and created again under the
    /// same name reuses the entry: its reports are keyed by session id and
    /// stamped by inode, and an unknown receipt key id rescans the keys.
    pub fn of(&self, name: &TenantName, root: &TenantRoot) -> Arc<Sessions> {
        let mut map = self.by_tenant.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.clone())
            .or_insert_with(|| Arc::new(Sessions::for_tenant(root)))
            .clone()
    }
}

fn stamp(dir: &Path) -> Stamp {
    [bundle::SESSION_JSON, bundle::RECEIPTS, bundle::EVENTS]
        .iter()
        .map(|name| {
            std::fs::metadata(dir.join(name))
                .ok()
                .map(|m| (m.ino(), m.len(), m.ctime(), m.ctime_nsec()))
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

    fn write(dir: &Path, id: &str, task: &str) {
        let info = SessionInfo {
            id: id.into(),
            status: "completed".into(),
            backend: "netns".into(),
            started_at: "2026-12-04T00:00:01Z".into(),
            task: Some(task.into()),
            ..SessionInfo::default()
        };
        bundle::write_info(dir, &info).expect("write");
    }

    #[test]
    fn a_cached_report_follows_a_same_size_rewrite_at_once() {
        let home = tempfile::tempdir().expect("tempdir");
        let id = "20261204-000001-aaaaaa";
        let dir = home.path().join("sessions").join(id);
        std::fs::create_dir_all(&dir).expect("mkdir");
        write(&dir, id, "aaaa");
        let s = Sessions::new(home.path());
        assert_eq!(s.list()[0].task.as_deref(), Some("aaaa"));
        // Same size, likely the same clock tick: the rename's new inode
        // still tells the cache.
        write(&dir, id, "bbbb");
        assert_eq!(s.list()[0].task.as_deref(), Some("bbbb"));
        // Cached otherwise: the same report, not a rebuilt one.
        let (first, second) = (s.lookup(id).expect("one"), s.lookup(id).expect("two"));
        assert!(Arc::ptr_eq(&first.1, &second.1));
        std::fs::remove_dir_all(&dir).expect("rm");
        assert!(s.list().is_empty());
        assert!(s.cache.lock().expect("cache").is_empty(), "pruned");
    }

    #[test]
    fn a_tenants_sessions_stay_inside_its_root() {
        let home = tempfile::tempdir().expect("tempdir");
        let roots: Vec<TenantRoot> = ["a", "b"]
            .iter()
            .map(|n| {
                let root = TenantRoot::of(home.path(), &TenantName::parse(n).expect("name"));
                root.create().expect("create");
                root
            })
            .collect();
        let (a, b) = (&roots[0], &roots[1]);
        let own = "20261204-000001-aaaaaa";
        let theirs = "20261204-000002-bbbbbb";
        std::fs::create_dir_all(a.sessions_dir().join(own)).expect("mkdir");
        write(&a.sessions_dir().join(own), own, "mine");
        std::fs::create_dir_all(b.sessions_dir().join(theirs)).expect("mkdir");
        write(&b.sessions_dir().join(theirs), theirs, "theirs");
        // A link to b's session; a directory of a's own whose receipts link
        // into b; a bundle claiming another id.
        std::os::unix::fs::symlink(b.sessions_dir().join(theirs), a.sessions_dir().join(theirs))
            .expect("symlink");
        let half = a.sessions_dir().join("20261204-000003-cccccc");
        std::fs::create_dir_all(&half).expect("mkdir");
        write(&half, "20261204-000003-cccccc", "half");
        std::os::unix::fs::symlink(
            b.sessions_dir().join(theirs).join(bundle::SESSION_JSON),
            half.join(bundle::RECEIPTS),
        )
        .expect("symlink");
        let liar = a.sessions_dir().join("20261204-000004-dddddd");
        std::fs::create_dir_all(&liar).expect("mkdir");
        write(&liar, own, "claims another id");
        // A link that stays inside the root is fine.
        let inner = a.sessions_dir().join("20261204-000005-eeeeee");
        std::fs::create_dir_all(&inner).expect("mkdir");
        write(&inner, "20261204-000005-eeeeee", "inner");
        std::fs::rename(
            inner.join(bundle::SESSION_JSON),
            a.path().join("moved.json"),
        )
        .expect("move");
        std::os::unix::fs::symlink(
            a.path().join("moved.json"),
            inner.join(bundle::SESSION_JSON),
        )
        .expect("symlink");

        let s = Sessions::for_tenant(a);
        let ids: Vec<String> = s.list().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["20261204-000005-eeeeee", own]);
        for id in [
            theirs,
            "20261204-000003-cccccc",
            "20261204-000004-dddddd",
            "..",
            "../b",
        ] {
            assert!(s.find(id).is_none(), "{id}");
        }
        assert!(s.find(own).is_some());
    }
}
