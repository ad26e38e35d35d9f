//! Memory and pids limits for one sandbox through cgroups, on either the
//! unified v2 hierarchy or the v1 `memory` and `pids` controllers (detected
//! from `/proc/self/mounts`; v2 wins when it has both controllers).
//!
//! Each sandbox gets `<mount>/openclaw/<name>` (v2) or
//! `<memory-mount>/openclaw/<name>` + `<pids-mount>/openclaw/<name>` (v1).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::SandboxError;

/// Which cgroup hierarchy holds the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One unified hierarchy (`cgroup2`), the default on current distros.
    V2,
    /// Separate `memory` and `pids` controller hierarchies.
    V1,
}

/// How often a limit was hit, read from the cgroup's event counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitEvents {
    /// Forks refused because `pids.max` was reached.
    pub pids_max: u64,
    /// Processes killed by the OOM killer inside the cgroup.
    pub oom_kills: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    V2 { root: PathBuf },
    V1 { memory: PathBuf, pids: PathBuf },
}

/// Finds the hierarchy to use on this host.
fn detect() -> Result<Layout, SandboxError> {
    let mounts =
        fs::read_to_string("/proc/self/mounts").map_err(|source| SandboxError::Cgroup {
            path: PathBuf::from("/proc/self/mounts"),
            source,
        })?;
    detect_from(&mounts, |p| fs::read_to_string(p).ok())
}

fn detect_from(
    mounts: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Result<Layout, SandboxError> {
    let mut memory = None;
    let mut pids = None;
    let mut v2_note = String::from("no cgroup2 mount");
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let (dir, fstype, opts) = (PathBuf::from(f[1]), f[2], f[3]);
        if fstype == "cgroup2" {
            let ctrls = read(&dir.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| ctrls.split_whitespace().any(|x| x == c);
            if has("memory") && has("pids") {
                return Ok(Layout::V2 { root: dir });
            }
            v2_note = format!("cgroup2 at {} lacks memory/pids", dir.display());
        } else if fstype == "cgroup" {
            for o in opts.split(',') {
                match o {
                    "memory" => memory = Some(dir.clone()),
                    "pids" => pids = Some(dir.clone()),
                    _ => {}
                }
            }
        }
    }
    match (memory, pids) {
        (Some(memory), Some(pids)) => Ok(Layout::V1 { memory, pids }),
        _ => Err(SandboxError::CgroupUnavailable(format!(
            "{v2_note}, and no cgroup v1 memory + pids mounts"
        ))),
    }
}

/// The cgroup version this host will use for sandboxes.
pub fn host_version() -> Result<CgroupVersion, SandboxError> {
    Ok(match detect()? {
        Layout::V2 { .. } => CgroupVersion::V2,
        Layout::V1 { .. } => CgroupVersion::V1,
    })
}

/// One sandbox's cgroup(s). Removed by [`SandboxCgroup::remove`].
#[derive(Debug)]
pub(crate) struct SandboxCgroup {
    version: CgroupVersion,
    /// v2: one dir; v1: [memory, pids].
    dirs: Vec<PathBuf>,
}

fn cg_err(path: &Path) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Cgroup {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value).map_err(cg_err(path))
}

fn mkdir(path: &Path) -> Result<(), SandboxError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(cg_err(path)(e)),
    }
}

impl SandboxCgroup {
    /// Creates the cgroup(s) for sandbox `name` with the given limits.
    pub fn create(name: &str, memory_bytes: u64, pids_max: u64) -> Result<Self, SandboxError> {
        let layout = detect()?;
        let cg = match layout {
            Layout::V2 { root } => {
                // Controllers must be enabled down the path; the root is
                // exempt from the no-internal-processes rule, `openclaw/`
                // holds no processes.
                write(&root.join("cgroup.subtree_control"), "+memory +pids")?;
                let parent = root.join("openclaw");
                mkdir(&parent)?;
                write(&parent.join("cgroup.subtree_control"), "+memory +pids")?;
                let dir = parent.join(name);
                mkdir(&dir)?;
                let cg = SandboxCgroup {
                    version: CgroupVersion::V2,
                    dirs: vec![dir.clone()],
                };
                let limits = (|| {
                    write(&dir.join("memory.max"), &memory_bytes.to_string())?;
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                    write(&dir.join("pids.max"), &pids_max.to_string())
                })();
                (cg, limits)
            }
            Layout::V1 { memory, pids } => {
                let mdir = memory.join("openclaw").join(name);
                let pdir = pids.join("openclaw").join(name);
                mkdir(&memory.join("openclaw"))?;
                mkdir(&pids.join("openclaw"))?;
                mkdir(&mdir)?;
                let cg = SandboxCgroup {
                    version: CgroupVersion::V1,
                    dirs: vec![mdir.clone()],
                };
                let mut cg = cg;
                let limits = mkdir(&pdir).and_then(|()| {
                    cg.dirs.push(pdir.clone());
                    write(
                        &mdir.join("memory.limit_in_bytes"),
                        &memory_bytes.to_string(),
                    )?;
                    // With swap accounting, cap memory+swap too so the limit
                    // cannot be sidestepped by swapping.
                    let memsw = mdir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &memory_bytes.to_string())?;
                    }
                    write(&pdir.join("pids.max"), &pids_max.to_string())
                });
                (cg, limits)
            }
        };
        let (cg, limits) = cg;
        if let Err(e) = limits {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Moves `pid` (and its future children) into the cgroup(s).
    pub fn add(&self, pid: i32) -> Result<(), SandboxError> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes currently counted against `pids.max`.
    pub fn pids_current(&self) -> u64 {
        let file = match self.version {
            CgroupVersion::V2 => self.dirs[0].join("pids.current"),
            CgroupVersion::V1 => match self.dirs.get(1) {
                Some(d) => d.join("pids.current"),
                None => return 0,
            },
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Event counters of the limits.
    pub fn events(&self) -> LimitEvents {
        let read_key = |file: PathBuf, key: &str| -> u64 {
            fs::read_to_string(file)
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        let mut it = l.split_whitespace();
                        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
                    })
                })
                .unwrap_or(0)
        };
        match self.version {
            CgroupVersion::V2 => LimitEvents {
                pids_max: read_key(self.dirs[0].join("pids.events"), "max"),
                oom_kills: read_key(self.dirs[0].join("memory.events"), "oom_kill"),
            },
            CgroupVersion::V1 => LimitEvents {
                pids_max: self
                    .dirs
                    .get(1)
                    .map(|d| read_key(d.join("pids.events"), "max"))
                    .unwrap_or(0),
                oom_kills: read_key(self.dirs[0].join("memory.oom_control"), "oom_kill"),
            },
        }
    }

    /// Kills every process left in the cgroup(s) and removes them.
    pub fn remove(&self) -> Result<(), SandboxError> {
        remove_dirs(&self.dirs)
    }
}

/// Kills every process in `dirs` (one sandbox's cgroups), then removes them.
///
/// v2 with `cgroup.kill` (Linux 5.14+) kills the whole cgroup in one write.
/// Elsewhere (v1, older v2) the cgroup is first barred from forking
/// (`pids.max` = 0), so a loop that SIGKILLs every pid in `cgroup.procs`
/// until none is left cannot be outrun by a fork bomb.
fn remove_dirs(dirs: &[PathBuf]) -> Result<(), SandboxError> {
    let present: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
    let one_shot = present.iter().any(|d| {
        let kill = d.join("cgroup.kill");
        kill.exists() && fs::write(&kill, "1").is_ok()
    });
    if !one_shot {
        for d in &present {
            let max = d.join("pids.max");
            if max.exists() {
                let _ = fs::write(&max, "0");
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for d in present {
        loop {
            let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // EBUSY while killed processes are still exiting.
                Err(e) if Instant::now() < deadline => {
                    tracing::trace!(cgroup = %d.display(), error = %e, "cgroup busy, retrying");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(cg_err(d)(e)),
            }
        }
    }
    Ok(())
}

/// Removes the cgroup(s) of a dead supervisor's sandbox `name`.
pub(crate) fn remove_stale(name: &str) -> Result<(), SandboxError> {
    let dirs = match detect() {
        Ok(Layout::V2 { root }) => vec![root.join("openclaw").join(name)],
        Ok(Layout::V1 { memory, pids }) => vec![
            memory.join("openclaw").join(name),
            pids.join("openclaw").join(name),
        ],
        Err(_) => return Ok(()),
    };
    remove_dirs(&dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn hybrid_host_without_v2_controllers_uses_v1() {
        let layout = detect_from(HYBRID, |_| Some(String::new())).expect("layout");
        assert_eq!(
            layout,
            Layout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                pids: "/sys/fs/cgroup/pids".into()
            }
        );
    }

    #[test]
    fn v2_with_controllers_wins() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        let layout =
            detect_from(mounts, |_| Some("cpuset cpu io memory pids\n".into())).expect("layout");
        assert_eq!(
            layout,
            Layout::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
    }

    #[test]
    fn missing_controllers_fail_closed() {
        let mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        assert!(matches!(
            detect_from(mounts, |_| None),
            Err(SandboxError::CgroupUnavailable(_))
        ));
    }
}
