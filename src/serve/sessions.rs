//! A tenant's sessions as the API shows them: the bundles under
//! `<home>/tenants/<name>/sessions/`, read as `openclaw ui` reads
//! `<home>/sessions` (`ui::sessions`), with containment: a session whose
//! directory or bundle files resolve outside the tenant's root (a symlink
//! into another tenant) does not exist for the API, nor does a bundle whose
//! `session.json` names another id (`Sessions::for_tenant`). The list is
//! not here: `GET /v1/sessions` reads the daemon's per-tenant cache
//! (`State::sessions`).

use serde_json::Value;

use crate::bundle;
use crate::keys;
use crate::report::Report;
use crate::tenants::TenantRoot;
use crate::ui::sessions::{ids_newest_first, is_live, row, SessionRow, Sessions};

/// One session's report (its receipts checked against the tenant's receipt key).
pub fn get(root: &TenantRoot, id: &str) -> Option<Report> {
    Sessions::for_tenant(root)
        .lookup(id)
        .map(|(_, report)| (*report).clone())
}

/// `openclaw verify`'s JSON report for the session, against the tenant's
/// receipt key, each decision re-derived under the tenant's root key.
pub fn verify(root: &TenantRoot, id: &str) -> Option<Value> {
    let dir = Sessions::for_tenant(root).dir_of(id)?;
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
    let (dir, report) = Sessions::for_tenant(root).lookup(id)?;
    let running = is_live(&dir, &report.session) || report.session.status == "running";
    Some((dir, running))
}

/// How many of the tenant's sessions are running now (live: marked
/// running, supervisor alive, control socket bound), for the
/// concurrent-sessions quota. Reads only each session.json.
pub fn running_count(root: &TenantRoot) -> usize {
    let sessions = Sessions::for_tenant(root);
    ids_newest_first(&root.sessions_dir())
        .iter()
        .filter(|id| {
            sessions
                .dir_of(id)
                .is_some_and(|dir| bundle::read_info(&dir).is_ok_and(|info| is_live(&dir, &info)))
        })
        .count()
}

/// Every session of the tenant as listed, each with the number of receipts
/// in its chain (for `/metrics`).
pub fn list_with_receipts(root: &TenantRoot) -> Vec<(SessionRow, u64)> {
    Sessions::for_tenant(root)
        .list_reports()
        .iter()
        .map(|(dir, report)| {
            (
                row(report, is_live(dir, &report.session)),
                report.receipts.count,
            )
        })
        .collect()
}
