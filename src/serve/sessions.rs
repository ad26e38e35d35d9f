//! A tenant's sessions as the API shows them: the bundles under
//! `<home>/tenants/<name>/sessions/`, read as `openclaw ui` reads
//! `<home>/sessions` (`ui::sessions`), plus containment: a session whose
//! directory or bundle files resolve outside the tenant's root (a symlink
//! into another tenant) does not exist for the API.

use serde_json::Value;

use crate::bundle;
use crate::keys;
use crate::report::Report;
use crate::tenants::TenantRoot;
use crate::ui::sessions::{ids_newest_first, is_live, row, valid_id, SessionRow, Sessions};

/// Bundle files the API reads (through `ui::sessions` and `verify`).
const BUNDLE_FILES: [&str; 5] = [
    bundle::SESSION_JSON,
    bundle::RECEIPTS,
    bundle::EVENTS,
    bundle::CAPABILITIES,
    bundle::REPORT_JSON,
];

/// The session directory of `id` when it and every bundle file in it stay
/// inside the tenant's root; `None` otherwise (answered as 404).
fn contained_dir(root: &TenantRoot, id: &str) -> Option<std::path::PathBuf> {
    if !valid_id(id) {
        return None;
    }
    let dir = root.join(&format!("sessions/{id}")).ok()?;
    for file in BUNDLE_FILES {
        root.join(&format!("sessions/{id}/{file}")).ok()?;
    }
    Some(dir)
}

/// Every session of the tenant, newest first. Enumerated here by
/// directory name (not through `Sessions::list`, which names rows by what
/// their session.json says): each directory is checked for containment
/// before anything in it is read.
pub fn list(root: &TenantRoot) -> Vec<SessionRow> {
    list_with_receipts(root)
        .into_iter()
        .map(|(row, _)| row)
        .collect()
}

/// One session's report (its receipts checked against the tenant's receipt key).
pub fn get(root: &TenantRoot, id: &str) -> Option<Report> {
    read(root, &Sessions::new(root.path()), id).map(|(_, report)| report)
}

/// The directory and report of `id`, if contained and if the bundle says
/// it is `id` (a bundle claiming another session's id is not shown).
fn read(root: &TenantRoot, sessions: &Sessions, id: &str) -> Option<(std::path::PathBuf, Report)> {
    contained_dir(root, id)?;
    let dir = sessions.dir_of(id)?;
    let report = sessions.report(id, &dir)?;
    (report.session.id == id).then_some((dir, report))
}

/// `openclaw verify`'s JSON report for the session, against the tenant's
/// receipt key, each decision re-derived under the tenant's root key.
pub fn verify(root: &TenantRoot, id: &str) -> Option<Value> {
    contained_dir(root, id)?;
    let dir = Sessions::new(root.path()).dir_of(id)?;
    let keys_dir = root.keys_dir();
    let report = crate::commands::verify::verify_bundle_json(
        &dir,
        &keys_dir.join(keys::RECEIPT_PUB),
        Some(&keys_dir.join(keys::ROOT_PUB)),
    );
    // Host paths are not the tenant's business: paths in the report (the
    // receipts file, an unreadable file's message) become tenant-relative.
    let text = report.to_string();
    let prefix = format!("{}/", root.path().display());
    let prefix = serde_json::to_string(&prefix).unwrap_or_default();
    let prefix = prefix.trim_matches('"');
    serde_json::from_str(&text.replace(prefix, "")).ok()
}

/// The session's directory when it is the tenant's, and whether it still
/// runs (live, or its bundle says running); `None` when it does not exist
/// for the tenant.
pub fn dir_of(root: &TenantRoot, id: &str) -> Option<(std::path::PathBuf, bool)> {
    let (dir, report) = read(root, &Sessions::new(root.path()), id)?;
    let running = is_live(&dir, &report.session) || report.session.status == "running";
    Some((dir, running))
}

/// How many of the tenant's sessions are running now (live: marked
/// running, supervisor alive, control socket bound), for the
/// concurrent-sessions quota. Reads only each session.json.
pub fn running_count(root: &TenantRoot) -> usize {
    ids_newest_first(&root.sessions_dir())
        .iter()
        .filter(|id| {
            contained_dir(root, id)
                .is_some_and(|dir| bundle::read_info(&dir).is_ok_and(|info| is_live(&dir, &info)))
        })
        .count()
}

/// Every session of the tenant as listed, each with the number of receipts
/// in its chain (for `/metrics`).
pub fn list_with_receipts(root: &TenantRoot) -> Vec<(SessionRow, u64)> {
    let sessions = Sessions::new(root.path());
    ids_newest_first(&root.sessions_dir())
        .iter()
        .filter_map(|id| {
            let (dir, report) = read(root, &sessions, id)?;
            let count = report.receipts.count;
            Some((row(&report, is_live(&dir, &report.session)), count))
        })
        .collect()
}
