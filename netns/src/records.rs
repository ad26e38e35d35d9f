//! Owner records under [`RUN_DIR`]: who created each session network (and,
//! through the `sandbox` crate, each sandbox), so the next supervisor can
//! remove what a crashed one left; and that removal for networks.
//!
//! A record names its owner by pid *and* process start time, so a recycled
//! pid is not mistaken for the owner still being alive.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::iproute::{delete_netns, NAME_PREFIX, NETNS_DIR};
use crate::{NetnsError, RUN_DIR};

/// A process identity that survives pid reuse: pid plus its start time in
/// clock ticks since boot (field 22 of `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    /// The calling process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        // Reading our own stat cannot fail while we are running; 0 only
        // weakens the pid-reuse check.
        let start = start_time(pid).unwrap_or(0);
        Owner { pid, start }
    }

    /// The owner record line (`<pid> <start>`).
    pub fn to_line(self) -> String {
        format!("{} {}", self.pid, self.start)
    }

    /// Reads an owner record line back.
    pub fn parse(line: &str) -> Option<Owner> {
        let mut it = line.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        Some(Owner { pid, start })
    }

    /// Whether this exact process still runs. A zombie does not: it has
    /// exited, and where no init reaps orphans (a container whose pid 1
    /// does not wait) it would otherwise look alive forever.
    pub fn is_alive(self) -> bool {
        match stat_fields(self.pid) {
            Some((state, start)) => {
                !matches!(state, 'Z' | 'X') && (self.start == 0 || start == self.start)
            }
            None => false,
        }
    }
}

/// Start time of `pid`, or `None` if it does not exist.
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid).map(|(_, start)| start)
}

/// State letter and start time of `pid` from `/proc/<pid>/stat`.
fn stat_fields(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts with field 3 (state); start time is field 22.
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// Creates `dir` (and parents) owner-only.
pub fn ensure_dir(dir: &Path) -> Result<(), NetnsError> {
    fs::create_dir_all(dir).map_err(|source| NetnsError::Records {
        path: dir.to_path_buf(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
        NetnsError::Records {
            path: dir.to_path_buf(),
            source,
        }
    })
}

/// Writes `contents` to a private temporary file in `dir`, for
/// [`publish`] to link into place: a record is never seen half-written.
pub(crate) fn write_temp(dir: &Path, contents: &str) -> Result<PathBuf, NetnsError> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{seq}", std::process::id()));
    let err = |source| NetnsError::Records {
        path: tmp.clone(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    Ok(tmp)
}

/// Links the complete record `tmp` to `path` if nothing is there yet
/// (`link` is atomic and exclusive); `Ok(false)` if `path` exists.
pub(crate) fn publish(tmp: &Path, path: &Path) -> Result<bool, NetnsError> {
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(NetnsError::Records {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether a `.tmp-<pid>-<seq>` entry belongs to a dead process.
pub fn temp_is_stale(name: &str) -> bool {
    name.strip_prefix(".tmp-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| start_time(pid).is_none())
}

pub(crate) fn net_dir() -> PathBuf {
    Path::new(RUN_DIR).join("net")
}

/// Removes the session networks whose owning supervisor is dead, and the
/// namespaces named like ours that have no record at all; returns their
/// names (as under `/run/netns`). Networks of live supervisors are left
/// alone. Run it after anything that may still hold a namespace open
/// (the `sandbox` crate's `cleanup_stale` removes stale sandboxes first).
/// Blocking.
pub fn cleanup_stale_networks() -> Result<Vec<String>, NetnsError> {
    let mut removed = Vec::new();

    // Namespaces are listed before the records are read: a namespace's
    // record is published before the namespace is created, so every
    // namespace listed here has its record visible below.
    let mut orphans: Vec<String> = read_dir_or_empty(Path::new(NETNS_DIR))?
        .iter()
        .map(|p| file_name(p))
        .filter(|n| n.starts_with(NAME_PREFIX))
        .collect();

    let ndir = net_dir();
    for entry in read_dir_or_empty(&ndir)? {
        let file = file_name(&entry);
        if file.starts_with('.') {
            if temp_is_stale(&file) {
                let _ = fs::remove_file(&entry);
            }
            continue;
        }
        let text = fs::read_to_string(&entry).unwrap_or_default();
        let mut lines = text.lines();
        let name = lines.next().unwrap_or("").to_string();
        let owner = lines.next().and_then(Owner::parse);
        orphans.retain(|n| *n != name);
        if owner.is_some_and(Owner::is_alive) {
            continue;
        }
        if !name.is_empty() {
            delete_netns(&name)?;
            removed.push(name);
        }
        let _ = fs::remove_file(&entry);
    }

    // Namespaces named like ours without any record (e.g. /run/openclaw
    // deleted by hand).
    for name in orphans {
        delete_netns(&name)?;
        removed.push(name);
    }
    Ok(removed)
}

/// The last component of `p` as text (empty if it has none).
pub fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The entries of `dir`; none if `dir` does not exist.
pub fn read_dir_or_empty(dir: &Path) -> Result<Vec<PathBuf>, NetnsError> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(NetnsError::Records {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Removes `path` and everything below it; gone already is fine.
pub fn remove_tree(path: &Path) -> Result<(), NetnsError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Records {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_round_trips_and_detects_liveness() {
        let me = Owner::current();
        assert!(me.start > 0);
        assert_eq!(Owner::parse(&me.to_line()), Some(me));
        assert!(me.is_alive());
        let wrong_start = Owner {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!wrong_start.is_alive(), "a recycled pid is not the owner");
    }

    #[test]
    fn dead_process_is_not_alive() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let start = start_time(pid).unwrap_or(1);
        child.wait().expect("wait");
        assert!(!Owner { pid, start }.is_alive());
    }

    #[test]
    fn an_exited_process_not_yet_reaped_is_not_alive() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let start = start_time(pid).expect("not reaped yet: its stat exists");
        // Exited but not waited for: a zombie, with its stat still there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while stat_fields(pid).map(|(state, _)| state) != Some('Z') {
            assert!(std::time::Instant::now() < deadline, "true did not exit");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!Owner { pid, start }.is_alive());
        child.wait().expect("wait");
    }
}
