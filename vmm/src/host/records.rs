//! Owner records under [`RUN_DIR`]: who created each session network and
//! sandbox, so the next supervisor can remove what a crashed one left.
//!
//! A record names its owner by pid *and* process start time, so a recycled
//! pid is not mistaken for the owner still being alive.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{cgroup, netns, SandboxError, RUN_DIR};

/// A process identity that survives pid reuse: pid plus its start time in
/// clock ticks since boot (field 22 of `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
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

    /// The owner record line.
    pub fn to_line(self) -> String {
        format!("{} {}", self.pid, self.start)
    }

    pub fn parse(line: &str) -> Option<Owner> {
        let mut it = line.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        Some(Owner { pid, start })
    }

    /// Whether this exact process still runs.
    pub fn is_alive(self) -> bool {
        match start_time(self.pid) {
            Some(start) => self.start == 0 || start == self.start,
            None => false,
        }
    }
}

/// Start time of `pid`, or `None` if it does not exist.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts with field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Creates `dir` (and parents) owner-only.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), SandboxError> {
    fs::create_dir_all(dir).map_err(|source| SandboxError::Records {
        path: dir.to_path_buf(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
        SandboxError::Records {
            path: dir.to_path_buf(),
            source,
        }
    })
}

/// Creates `path` exclusively with `contents`; `Ok(false)` if it exists.
pub(crate) fn create_exclusive(path: &Path, contents: &str) -> Result<bool, SandboxError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match file {
        Ok(mut f) => {
            f.write_all(contents.as_bytes())
                .map_err(|source| SandboxError::Records {
                    path: path.to_path_buf(),
                    source,
                })?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(SandboxError::Records {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn net_dir() -> PathBuf {
    Path::new(RUN_DIR).join("net")
}

pub(crate) fn sandboxes_dir() -> PathBuf {
    Path::new(RUN_DIR).join("sandboxes")
}

/// What [`cleanup_stale`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StaleCleanup {
    /// Network namespaces removed (names as under `/run/netns`).
    pub networks: Vec<String>,
    /// Sandboxes whose processes, cgroups and staging were removed.
    pub sandboxes: Vec<String>,
}

/// Removes session networks and sandboxes whose owning supervisor is dead:
/// kills their processes, deletes their cgroups, namespaces and staging
/// directories. Call once at supervisor start; resources of live
/// supervisors are left alone. Blocking.
pub fn cleanup_stale() -> Result<StaleCleanup, SandboxError> {
    let mut done = StaleCleanup::default();

    // Sandboxes first: their processes hold the namespaces open.
    let sdir = sandboxes_dir();
    for entry in read_dir_or_empty(&sdir)? {
        let owner = fs::read_to_string(entry.join("owner"))
            .ok()
            .and_then(|l| Owner::parse(&l));
        if owner.is_some_and(Owner::is_alive) {
            continue;
        }
        let name = file_name(&entry);
        cgroup::remove_stale(&name)?;
        remove_tree(&entry)?;
        done.sandboxes.push(name);
    }

    let ndir = net_dir();
    let mut live_names = Vec::new();
    for entry in read_dir_or_empty(&ndir)? {
        let text = fs::read_to_string(&entry).unwrap_or_default();
        let mut lines = text.lines();
        let name = lines.next().unwrap_or("").to_string();
        let owner = lines.next().and_then(Owner::parse);
        if owner.is_some_and(Owner::is_alive) {
            live_names.push(name);
            continue;
        }
        if !name.is_empty() {
            netns::delete_netns(&name)?;
            done.networks.push(name);
        }
        let _ = fs::remove_file(&entry);
    }

    // Namespaces named like ours with no record at all (a crash between
    // `ip netns add` and ... cannot happen since the record comes first,
    // but a hand-deleted /run/openclaw can).
    for entry in read_dir_or_empty(Path::new(netns::NETNS_DIR))? {
        let name = file_name(&entry);
        if name.starts_with(netns::NAME_PREFIX)
            && !live_names.contains(&name)
            && !done.networks.contains(&name)
        {
            netns::delete_netns(&name)?;
            done.networks.push(name);
        }
    }
    Ok(done)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_dir_or_empty(dir: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(SandboxError::Records {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn remove_tree(path: &Path) -> Result<(), SandboxError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SandboxError::Records {
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
}
