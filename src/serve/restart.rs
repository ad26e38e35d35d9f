//! What a daemon that died left behind, settled when the next one starts
//! (before it listens): in every tenant's sessions directory, a session
//! still marked running whose `openclaw run` outlived the daemon (an
//! orphan) is stopped — SIGTERM, so its runner closes its own chain, then
//! SIGKILL at the limit — and every session whose supervisor is gone is
//! recovered with `session::recovery` (sandbox removed, chain closed as
//! interrupted, `supervisor_died`).
//!
//! Files a dead daemon's starts left in a tenant's `spawn/` (a token, a
//! secrets file holding decrypted values, an unpacked workdir) are removed
//! once older than any start can be ([`STALE_SPAWN`]); failed starts' logs
//! are kept for the operator.
//!
//! Stopped, not adopted: the dead daemon's answers about the session (its
//! event streams, pending approvals, the 201 its client waited for) are
//! gone with it, and a session nobody can watch is safer ended with its
//! record closed than left to run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bundle::{self, SessionInfo};
use crate::keys;
use crate::session::recovery;
use crate::tenants::{QuotaDb, Registry};
use crate::usage::LedgerDb;

/// Age past which a file in `spawn/` belongs to no start in progress (a
/// start waits at most 300 s for its sandbox; another daemon on the same
/// home may be in the middle of one).
const STALE_SPAWN: Duration = Duration::from_secs(15 * 60);

/// What [`settle`] did.
#[derive(Debug, Default)]
pub struct Settled {
    /// Orphaned session processes signalled (`<tenant>/<id>`).
    pub stopped: Vec<String>,
    /// Of those, still running at the limit and SIGKILLed.
    pub killed: usize,
    /// Sessions closed by recovery (`<tenant>/<id>`).
    pub recovered: Vec<String>,
    /// Stale spawn files and workdirs removed.
    pub spawn_removed: usize,
}

/// Stops orphans (waiting up to `limit` for them), then recovers every
/// tenant's sessions whose supervisor is gone. Blocking. `quota_db`:
/// where the sessions' LLM calls held day quota (their holds are released
/// with their recovery); `ledger`: where their metered calls are recorded.
pub fn settle(
    registry: &Registry,
    quota_db: Option<&QuotaDb>,
    ledger: &LedgerDb,
    limit: Duration,
) -> Result<Settled> {
    let mut settled = Settled::default();
    let mut tenants = Vec::new();
    // A tenant whose deletion was interrupted too: its sessions are
    // settled before the daemon finishes the deletion.
    let interrupted = registry
        .store()
        .interrupted_deletes()
        .context("listing the interrupted deletes")?;
    let names = registry
        .list()
        .context("listing the tenants")?
        .into_iter()
        .map(|record| record.name)
        .chain(interrupted.into_iter().map(|(name, _)| name));
    for name in names {
        let root = registry.root(&name);
        settled.spawn_removed += remove_stale_spawn(&root.path().join("spawn"), STALE_SPAWN);
        tenants.push((
            name.to_string(),
            root.sessions_dir(),
            root.keys_dir().join(keys::RECEIPT_KEY),
        ));
    }
    if settled.spawn_removed > 0 {
        tracing::info!(
            removed = settled.spawn_removed,
            "removed what dead starts left in the tenants' spawn directories"
        );
    }
    let me = std::env::current_exe().context("finding the daemon's executable")?;
    let mut orphans: Vec<SessionInfo> = Vec::new();
    for (tenant, sessions, _) in &tenants {
        for info in running_sessions(sessions) {
            let Some(pid) = info.supervisor_pid.filter(|_| info.supervisor_alive()) else {
                continue;
            };
            if parent_is_openclaw(pid, &me) {
                // Another live openclaw process (a second daemon) runs it.
                continue;
            }
            tracing::info!(
                tenant,
                session = info.id,
                pid,
                "stopping an orphaned session"
            );
            kill(pid, nix::sys::signal::Signal::SIGTERM);
            settled.stopped.push(format!("{tenant}/{}", info.id));
            orphans.push(info);
        }
    }
    let deadline = Instant::now() + limit;
    while orphans.iter().any(SessionInfo::supervisor_alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for info in orphans.iter().filter(|i| i.supervisor_alive()) {
        if let Some(pid) = info.supervisor_pid {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
            settled.killed += 1;
        }
    }
    // A SIGKILLed supervisor is gone at once (a zombie counts as gone),
    // and its session is recovered below with the rest.
    for (tenant, sessions, key_path) in &tenants {
        let key = match keys::read_signing_key(key_path) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(tenant, "no receipt key, chains stay open: {e:#}");
                None
            }
        };
        // One tenant's broken bundle must not keep the daemon from serving
        // the others: warned, and retried at the next start.
        let audit = recovery::Audited {
            log: registry.audit(),
            via: crate::audit::Via::Api,
        };
        match recovery::recover_into(
            sessions,
            &crate::home::chain_heads_path(registry.home()),
            ledger,
            audit,
            key.as_ref(),
        ) {
            Ok(done) => {
                // Their LLM calls in flight hold no day quota any more.
                for session in done.sessions {
                    match quota_db {
                        // A control.db that was never made holds nothing.
                        Some(QuotaDb::Sqlite(path)) if !path.exists() => {}
                        Some(db) => db.release_session(&session.id),
                        None => {}
                    }
                    tracing::info!(tenant, "recovered: {session}");
                    settled.recovered.push(format!("{tenant}/{}", session.id));
                }
            }
            Err(e) => tracing::warn!(tenant, "recovering the tenant's sessions: {e:#}"),
        }
    }
    Ok(settled)
}

/// Removes what dead starts left in `spawn`: tokens (`.cap`), decrypted
/// secrets (`.secrets.toml`) and unpacked workdirs (`.work/`) last changed
/// more than `older_than` ago. Returns how many went.
fn remove_stale_spawn(spawn: &Path, older_than: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(spawn) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = [".cap", ".secrets.toml", ".work"]
            .iter()
            .any(|suffix| name.ends_with(suffix));
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let stale = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > older_than);
        if !kind || !stale {
            continue;
        }
        let gone = if meta.is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        match gone {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("removing {}: {e}", entry.path().display()),
        }
    }
    removed
}

/// The bundles under `sessions` marked running.
fn running_sessions(sessions: &Path) -> Vec<SessionInfo> {
    let Ok(entries) = std::fs::read_dir(sessions) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| bundle::read_info(&e.path()).ok())
        .filter(|info| info.status == "running")
        .collect()
}

/// Whether `pid`'s parent is a live process of the daemon's executable:
/// the session belongs to a daemon that still runs.
fn parent_is_openclaw(pid: u32, me: &Path) -> bool {
    let Some(ppid) = parent_pid(pid) else {
        return false;
    };
    std::fs::read_link(format!("/proc/{ppid}/exe")).is_ok_and(|exe: PathBuf| exe == me)
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold ')'): state, ppid.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn kill(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_tokens_secrets_and_workdirs_are_removed_from_spawn() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let spawn = tmp.path();
        for name in ["a.cap", "a.secrets.toml", "a.log"] {
            std::fs::write(spawn.join(name), "x").expect("write");
        }
        std::fs::create_dir_all(spawn.join("a.work/d")).expect("mkdir");
        // Young: a start may be using them.
        assert_eq!(remove_stale_spawn(spawn, Duration::from_secs(60)), 0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(remove_stale_spawn(spawn, Duration::from_millis(10)), 3);
        let left: Vec<String> = std::fs::read_dir(spawn)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["a.log"], "a failed start's log is kept");
        assert_eq!(remove_stale_spawn(&spawn.join("none"), Duration::ZERO), 0);
    }
}
