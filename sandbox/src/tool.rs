//! [`ToolJail`]: one run of a host program on untrusted input (e2fsprogs on
//! a guest's disk) with the least it needs: as an unprivileged uid with no
//! capabilities, no supplementary groups and `no_new_privs`; in fresh
//! mount, pid, network, IPC and UTS namespaces (no network at all); on a
//! read-only root holding only the host's program and library directories,
//! a private `/proc`, `/dev/{null,zero,urandom,fd,stdin,stdout,stderr}`
//! and the paths the caller
//! binds; under rlimits and a wall-clock timeout. A bug in the program then
//! runs with none of the supervisor's powers.
//!
//! The program is started with `std::process::Command`; the confinement
//! happens in its `pre_exec` hook, in the child forked from this (possibly
//! multi-threaded) process, so it is limited to async-signal-safe work:
//! raw syscalls on data prepared before the fork, no allocation, no locks.
//! That child unshares the namespaces and forks once more (a raw fork):
//! the grandchild is PID 1 of the new pid namespace and becomes the
//! program; the child only waits for it and passes its status on. When the
//! program ends, or is killed, everything it may have started ends with it
//! (the kernel kills a pid namespace with its PID 1), so nothing of it
//! outlives [`ToolJail::run`].

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::child::{apply_op, drop_privileges, raw_fork};
use crate::rootfs::{bind_ops, cstr, dev_ops, proc_ops, system_dir_ops, Op, Stage};
use crate::SandboxError;

/// Where the program itself is bound, read-only, inside the jail.
const PROGRAM_IN: &str = "/.tool";
/// Device nodes the jail has (bound from the host).
const DEVICES: &[&str] = &["null", "zero", "urandom"];
/// The program's whole environment: the supervisor's (which may hold
/// credentials) is not passed on.
const TOOL_ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    ("LC_ALL", "C"),
    // debugfs would otherwise start a pager for some listings.
    ("PAGER", "__none__"),
    ("DEBUGFS_PAGER", "__none__"),
];
/// Captured output past this much per stream is a failure, not memory.
const OUTPUT_MAX: usize = 256 << 20;
/// How often the wait for the program looks at the clock.
const WAIT_PERIOD: Duration = Duration::from_millis(10);

/// Resource limits of one confined run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolLimits {
    /// `RLIMIT_AS`, bytes.
    pub address_space: u64,
    /// `RLIMIT_CPU`, seconds (the kernel kills the program past it).
    pub cpu_seconds: u64,
    /// `RLIMIT_FSIZE`: no file the program writes grows past this.
    pub file_size: u64,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// Wall-clock time, after which the program and everything it started
    /// are killed.
    pub timeout: Duration,
}

/// What a confined run printed, and how it ended.
#[derive(Debug)]
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a confined run did not happen or did not finish. Nothing is ever
/// run unconfined instead.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The jail could not be built (namespaces, mounts, limits, dropping
    /// privileges): the program did not run.
    #[error("could not confine {program} ({stage}): {source}; it was not run")]
    Confine {
        program: String,
        stage: &'static str,
        source: std::io::Error,
    },
    /// The program ran past [`ToolLimits::timeout`] and was killed.
    #[error("{program} ran longer than {timeout:?} and was killed")]
    TimedOut { program: String, timeout: Duration },
    /// The program printed more than the jail keeps.
    #[error("{program} printed more than {OUTPUT_MAX} bytes on one stream and was killed")]
    OutputTooLarge { program: String },
}

/// A jail for running programs, built in an empty host directory.
#[derive(Debug, Clone)]
pub struct ToolJail {
    /// An empty directory on the host, owned by root, the jail's root
    /// tmpfs is mounted on (in the jail's own mount namespace only).
    root: PathBuf,
    uid: u32,
    gid: u32,
    /// (host path, path inside): bound read-write.
    binds: Vec<(PathBuf, PathBuf)>,
    limits: ToolLimits,
}

/// Everything the forked children need, prepared before the fork.
struct Plan {
    ops: Vec<Op>,
    root: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    cap_last: libc::c_int,
    limits: [(libc::__rlimit_resource_t, libc::rlim_t); 5],
    /// Write end (CLOEXEC): `[stage u32, errno i32]` on a setup failure.
    err_w: libc::c_int,
}

impl ToolJail {
    /// A jail rooted at the empty directory `root`, running programs as
    /// `uid`/`gid` under `limits`.
    pub fn new(root: &Path, uid: u32, gid: u32, limits: ToolLimits) -> ToolJail {
        ToolJail {
            root: root.to_path_buf(),
            uid,
            gid,
            binds: Vec::new(),
            limits,
        }
    }

    /// Binds `host` (a file or a directory) read-write at `inside`, a name
    /// directly under the jail's `/`. What the program may write is only
    /// what the uid may write there.
    pub fn bind(mut self, host: &Path, inside: &str) -> ToolJail {
        self.binds.push((host.to_path_buf(), PathBuf::from(inside)));
        self
    }

    /// Runs `program` (a path, or a name looked up in the host's program
    /// directories) with `args` in the jail, feeding it `stdin`, and
    /// returns what it printed once it ended. Fails closed: if any part of
    /// the jail cannot be built, the program does not run.
    pub fn run(
        &self,
        program: &Path,
        args: &[&OsStr],
        stdin: &[u8],
    ) -> Result<ToolOutput, ToolError> {
        let name = program.display().to_string();
        let confine = |stage: &'static str| {
            let name = name.clone();
            move |source| ToolError::Confine {
                program: name,
                stage,
                source,
            }
        };
        let host_program = find_program(program)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
            .map_err(confine("finding the program"))?;
        let ops = self
            .plan(&host_program)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .map_err(confine("planning the jail's mounts"))?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(std::io::Error::from)
            .map_err(confine("creating a pipe"))?;
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        let l = &self.limits;
        let plan = Plan {
            ops,
            root: cstr(&self.root)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .map_err(confine("planning the jail's mounts"))?,
            uid: self.uid,
            gid: self.gid,
            cap_last,
            limits: [
                (libc::RLIMIT_AS, l.address_space),
                (libc::RLIMIT_CPU, l.cpu_seconds),
                (libc::RLIMIT_FSIZE, l.file_size),
                (libc::RLIMIT_NOFILE, l.open_files),
                (libc::RLIMIT_CORE, 0),
            ],
            err_w: err_w.as_raw_fd(),
        };

        let mut cmd = Command::new(PROGRAM_IN);
        cmd.arg0(program.file_name().unwrap_or(program.as_os_str()))
            .args(args)
            .env_clear()
            .envs(TOOL_ENV.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills the child and the
            // program together.
            .process_group(0);
        // SAFETY: the hook runs in the child forked by `spawn`, between
        // fork and exec; `confine_in_child` is async-signal-safe (raw
        // syscalls on `plan`, which was built before the fork and is not
        // touched by the parent until `spawn` returned).
        unsafe {
            cmd.pre_exec(move || confine_in_child(&plan));
        }
        let spawned = cmd.spawn();
        drop(err_w);
        let mut child = match spawned {
            Ok(child) => child,
            Err(source) => {
                let stage = read_failed_stage(err_r).map_or("starting the program", Stage::name);
                return Err(confine(stage)(source));
            }
        };
        drop(err_r);

        let feed = child.stdin.take().map(|mut pipe| {
            let input = stdin.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            })
        });
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut over = false;
                if let Some(mut pipe) = pipe {
                    let mut buf = [0u8; 64 << 10];
                    while let Ok(n @ 1..) = pipe.read(&mut buf) {
                        if kept.len() + n > OUTPUT_MAX {
                            over = true;
                        } else {
                            kept.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                (kept, over)
            })
        };
        let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let err = drain(child.stderr.take().map(|p| Box::new(p) as _));

        let deadline = Instant::now() + self.limits.timeout;
        let pgid = child.id() as libc::pid_t;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(WAIT_PERIOD),
                _ => {
                    // The program's process group, and through its
                    // parent-death signal the program's pid namespace.
                    // SAFETY: kill takes plain integers.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    let _ = child.wait();
                    break None;
                }
            }
        };
        if let Some(feed) = feed {
            let _ = feed.join();
        }
        let (stdout, over_out) = out.join().unwrap_or_default();
        let (stderr, over_err) = err.join().unwrap_or_default();
        let Some(status) = status else {
            return Err(ToolError::TimedOut {
                program: name,
                timeout: self.limits.timeout,
            });
        };
        if over_out || over_err {
            return Err(ToolError::OutputTooLarge { program: name });
        }
        Ok(ToolOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// The jail's mounts, up to `pivot_root` into [`Self::root`].
    fn plan(&self, program: &Path) -> Result<Vec<Op>, SandboxError> {
        use libc::{MS_NODEV, MS_NOEXEC, MS_NOSUID};
        let r = &self.root;
        let s = |v: &str| CString::new(v).expect("static strings have no NUL");
        let mut ops = vec![Op::Mount {
            src: Some(s("tmpfs")),
            dst: cstr(r)?,
            fstype: Some(s("tmpfs")),
            flags: MS_NOSUID | MS_NODEV,
            data: Some(s("mode=0755,size=64k")),
            stage: Stage::MountRoot,
        }];
        system_dir_ops(r, &mut ops)?;
        let inside = r.join(PROGRAM_IN.trim_start_matches('/'));
        ops.push(Op::Touch {
            path: cstr(&inside)?,
            stage: Stage::BindSystem,
        });
        bind_ops(
            &mut ops,
            program,
            &inside,
            true,
            MS_NODEV,
            Stage::BindSystem,
        )?;

        proc_ops(r, &mut ops)?;
        dev_ops(r, DEVICES, "16k", false, &mut ops)?;

        for (host, inside) in &self.binds {
            let name = inside
                .strip_prefix("/")
                .ok()
                .filter(|n| n.components().count() == 1 && n != &Path::new(PROGRAM_IN))
                .ok_or_else(|| {
                    SandboxError::InvalidSpec(format!(
                        "{} is not a name directly under the jail's /",
                        inside.display()
                    ))
                })?;
            let at = r.join(name);
            let meta = std::fs::metadata(host).map_err(|source| SandboxError::Stage {
                path: host.clone(),
                source,
            })?;
            ops.push(if meta.is_dir() {
                Op::Mkdir {
                    path: cstr(&at)?,
                    stage: Stage::BindWorkdir,
                }
            } else {
                Op::Touch {
                    path: cstr(&at)?,
                    stage: Stage::BindWorkdir,
                }
            });
            bind_ops(
                &mut ops,
                host,
                &at,
                false,
                MS_NODEV | MS_NOEXEC,
                Stage::BindWorkdir,
            )?;
        }
        Ok(ops)
    }
}

/// `program` itself if it names a path, else the first executable file of
/// that name in the host's program directories.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = TOOL_ENV
        .iter()
        .find(|(k, _)| *k == "PATH")
        .map(|(_, v)| *v)
        .unwrap_or_default();
    std::env::split_paths(OsStr::new(path))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The stage a failed child reported, if it got that far.
fn read_failed_stage(err_r: OwnedFd) -> Option<Stage> {
    let mut msg = [0u8; 8];
    let mut file = std::fs::File::from(err_r);
    file.read_exact(&mut msg).ok()?;
    Stage::from_u32(u32::from_ne_bytes(msg[..4].try_into().ok()?))
}

/// Reports `stage` and errno on the plan's pipe; the error `pre_exec`
/// returns, which fails the spawn.
fn report(plan: &Plan, stage: Stage) -> std::io::Error {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing a stack buffer to a pipe fd the plan holds open.
    unsafe { libc::write(plan.err_w, msg.as_ptr().cast(), msg.len()) };
    std::io::Error::from_raw_os_error(errno)
}

/// The `pre_exec` hook: in the child `spawn` forked, builds the jail and
/// returns (to exec the program) only in the grandchild inside it.
/// Async-signal-safe throughout (see the module doc): raw syscalls on the
/// plan, `io::Error`s from raw errnos, which do not allocate.
fn confine_in_child(plan: &Plan) -> std::io::Result<()> {
    use libc::*;
    // SAFETY: (whole block) raw syscalls on data the plan owns, in a
    // freshly forked child that runs nothing else.
    unsafe {
        // If the supervisor's thread that started us goes, so do we (and,
        // through the program's own parent-death signal, the program).
        if prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong, 0, 0, 0) == -1 {
            return Err(report(plan, Stage::ParentDeath));
        }
        let namespaces = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;
        if unshare(namespaces) == -1 {
            return Err(report(plan, Stage::Namespaces));
        }
        let program = raw_fork();
        if program == -1 {
            return Err(report(plan, Stage::Fork));
        }
        if program != 0 {
            // The waiting parent: holds nothing of the caller's (so the
            // caller sees its pipes close when the program's do), passes
            // the program's end on as its own.
            syscall(SYS_close_range, 0u32, u32::MAX, 0u32);
            let mut status: c_int = 0;
            while waitpid(program, &mut status, 0) == -1 {
                if *__errno_location() != EINTR {
                    _exit(127);
                }
            }
            if WIFSIGNALED(status) {
                _exit(128 + WTERMSIG(status));
            }
            _exit(WEXITSTATUS(status));
        }
        // The program: PID 1 of its own pid namespace.
        let root = c"/".as_ptr();
        if mount(
            std::ptr::null(),
            root,
            std::ptr::null(),
            MS_REC | MS_PRIVATE,
            std::ptr::null(),
        ) == -1
        {
            return Err(report(plan, Stage::MakePrivate));
        }
        for op in &plan.ops {
            if let Err(stage) = apply_op(op) {
                return Err(report(plan, stage));
            }
        }
        let dot = c".".as_ptr();
        if chdir(plan.root.as_ptr()) == -1 {
            return Err(report(plan, Stage::PivotRoot));
        }
        if syscall(SYS_pivot_root, dot, dot) == 0 {
            if umount2(dot, MNT_DETACH) == -1 {
                return Err(report(plan, Stage::PivotRoot));
            }
        } else if *__errno_location() == EINVAL {
            // The host runs from its initramfs (rootfs), which cannot be
            // pivoted: the jail's root is moved over it and entered with
            // chroot. What lies beneath stays covered: the program has no
            // capability to unmount it or to chroot again.
            if mount(dot, root, std::ptr::null(), MS_MOVE, std::ptr::null()) == -1
                || chroot(dot) == -1
            {
                return Err(report(plan, Stage::PivotRoot));
            }
        } else {
            return Err(report(plan, Stage::PivotRoot));
        }
        if chdir(root) == -1 {
            return Err(report(plan, Stage::PivotRoot));
        }
        if mount(
            std::ptr::null(),
            root,
            std::ptr::null(),
            MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
            std::ptr::null(),
        ) == -1
        {
            return Err(report(plan, Stage::RemountRoot));
        }
        for (resource, value) in plan.limits {
            let limit = rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if setrlimit(resource, &limit) == -1 {
                return Err(report(plan, Stage::Limits));
            }
        }
        if let Err(stage) = drop_privileges(plan.uid, plan.gid, plan.cap_last) {
            return Err(report(plan, stage));
        }
        // After the uid change, which clears it; the waiting parent is
        // only ever killed after `spawn` returned, which is after this.
        if prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong, 0, 0, 0) == -1 {
            return Err(report(plan, Stage::ParentDeath));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ToolLimits {
        ToolLimits {
            address_space: 1 << 30,
            cpu_seconds: 10,
            file_size: 1 << 20,
            open_files: 64,
            timeout: Duration::from_secs(30),
        }
    }

    fn jail(dir: &Path) -> ToolJail {
        let root = dir.join("root");
        std::fs::create_dir(&root).expect("root");
        ToolJail::new(&root, 65534, 65534, limits())
    }

    fn sh(jail: &ToolJail, script: &str) -> ToolOutput {
        jail.run(
            Path::new("sh"),
            &[OsStr::new("-c"), OsStr::new(script)],
            b"",
        )
        .expect("run")
    }

    #[test]
    fn a_program_sees_only_the_jail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rw = dir.path().join("rw");
        std::fs::create_dir(&rw).expect("rw");
        std::os::unix::fs::chown(&rw, Some(65534), Some(65534)).expect("chown");
        let jail = jail(dir.path()).bind(&rw, "/out");
        let out = sh(
            &jail,
            "id -u; ls /; echo hi > /out/f && echo wrote; echo x > /usr/x || echo ro; \
             ls /proc | grep -c '^[0-9]'; ulimit -f",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(lines[0], "65534");
        assert!(text.contains("wrote\nro\n"), "{text}");
        assert!(
            !lines.contains(&"root") && !lines.contains(&"etc"),
            "{text}"
        );
        // sh, ls and grep: the pid namespace holds the program's own.
        assert!(lines.iter().any(|l| *l == "3" || *l == "2"), "{text}");
        assert_eq!(
            lines.last(),
            Some(&"2048"),
            "RLIMIT_FSIZE in 512-byte blocks"
        );
        assert_eq!(std::fs::read(rw.join("f")).expect("f"), b"hi\n");
    }

    #[test]
    fn a_program_past_its_time_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut jail = jail(dir.path());
        jail.limits.timeout = Duration::from_millis(300);
        let err = jail
            .run(
                Path::new("sh"),
                &[
                    OsStr::new("-c"),
                    OsStr::new("setsid sleep 1000.25 & sleep 1000"),
                ],
                b"",
            )
            .expect_err("timed out");
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err}");
        // The pid namespace goes with its PID 1; the kernel reaps the rest
        // of it right after, so allow it that moment.
        let left = || {
            Command::new("pgrep")
                .args(["-f", "^sleep 1000.25$"])
                .output()
                .expect("pgrep")
                .status
                .success()
        };
        for _ in 0..500 {
            if !left() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !left(),
            "a process the program started in its own session outlived it"
        );
    }

    #[test]
    fn a_jail_that_cannot_be_built_runs_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Not a directory: the root tmpfs cannot be mounted on it.
        let root = dir.path().join("root");
        std::fs::write(&root, b"").expect("file");
        let marker = dir.path().join("ran");
        let jail = ToolJail::new(&root, 65534, 65534, limits());
        let err = jail
            .run(
                Path::new("sh"),
                &[
                    OsStr::new("-c"),
                    OsStr::new(&format!("touch {}", marker.display())),
                ],
                b"",
            )
            .expect_err("no jail");
        assert!(
            matches!(&err, ToolError::Confine { stage, .. } if *stage == Stage::MountRoot.name()),
            "{err}"
        );
        assert!(!marker.exists());
    }
}
