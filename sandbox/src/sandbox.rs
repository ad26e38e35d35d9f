//! The `netns` backend's process sandbox: [`Sandbox::spawn`] runs one
//! command in fresh mount, pid, uts and ipc namespaces inside the session's
//! network namespace, on a read-only system root, as an unprivileged user
//! with no capabilities, `no_new_privs`, a seccomp filter and cgroup limits.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use netns::records::{self, Owner};
use netns::SessionNetwork;

use crate::cgroup::{CgroupVersion, LimitEvents, SandboxCgroup};
use crate::child::{self, ChildPlan};
use crate::rootfs::{self, Stage};
use crate::work::WorkVolume;
use crate::{lifeline, seccomp, SandboxError};

/// What the sandbox's standard streams are connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxStdio {
    /// The supervisor's own stream (pass-through).
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// A pipe; take the parent's end with `SandboxChild::take_stdin` and co.
    Pipe,
}

/// What to run and how. Build with [`SandboxSpec::new`], then adjust fields.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Session network namespace to run in (`SessionNetwork::path`).
    pub netns_path: PathBuf,
    /// Resolver written to the sandbox's `/etc/resolv.conf` (the proxy).
    pub resolver: Ipv4Addr,
    /// Name prefix for cgroups and staging (`SessionNetwork::name`).
    pub session_name: String,
    /// Program to run: an absolute path, or a name searched in the
    /// sandbox's `PATH` directories.
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Variables beyond the fixed ones (`PATH`, `HOME`, `TMPDIR`, the four
    /// CA variables). Nothing of the supervisor's environment is passed.
    pub env: Vec<(OsString, OsString)>,
    /// PEM of the session CA: the only trust anchor the sandbox sees.
    pub ca_pem: Vec<u8>,
    /// Host directory bound read-write at `/work` (it must be writable by
    /// `uid`); `None` gives a private empty tmpfs there.
    pub workdir: Option<PathBuf>,
    /// A size-capped volume mounted at `/work` instead of `workdir`: writes
    /// past its cap fail with `ENOSPC` (see [`WorkVolume`]).
    pub work_volume: Option<Arc<WorkVolume>>,
    /// Unprivileged uid/gid the command runs as (default 65534/65534).
    pub uid: u32,
    pub gid: u32,
    /// Memory limit of the whole sandbox in bytes (default 1 GiB).
    pub memory_bytes: u64,
    /// Maximum number of processes/threads (default 256).
    pub pids_max: u64,
    /// Size of the private `/tmp` tmpfs in bytes (default 256 MiB; it is
    /// also charged to `memory_bytes`).
    pub tmp_bytes: u64,
    pub stdin: SandboxStdio,
    pub stdout: SandboxStdio,
    pub stderr: SandboxStdio,
}

/// Where the sandbox sees its working directory.
pub const SANDBOX_WORKDIR: &str = rootfs::WORKDIR_IN;
/// Where the session CA sits inside the sandbox.
pub const SANDBOX_CA_BUNDLE: &str = rootfs::CA_BUNDLE_IN;
const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl SandboxSpec {
    /// A spec running `program` with `args` in `net`, trusting `ca_pem`.
    pub fn new(
        net: &SessionNetwork,
        program: impl Into<OsString>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
        ca_pem: impl Into<Vec<u8>>,
    ) -> SandboxSpec {
        SandboxSpec {
            netns_path: net.path().to_path_buf(),
            resolver: net.proxy_addr(),
            session_name: net.name().to_string(),
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            ca_pem: ca_pem.into(),
            workdir: None,
            work_volume: None,
            uid: 65534,
            gid: 65534,
            memory_bytes: 1 << 30,
            pids_max: 256,
            tmp_bytes: 256 << 20,
            stdin: SandboxStdio::Inherit,
            stdout: SandboxStdio::Inherit,
            stderr: SandboxStdio::Inherit,
        }
    }

    /// Adds one environment variable (e.g. a credential placeholder or
    /// `OPENCLAW_TASK`).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The full environment the command gets.
    pub fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), SANDBOX_PATH.into()),
            ("HOME".into(), SANDBOX_WORKDIR.into()),
            ("TMPDIR".into(), "/tmp".into()),
        ];
        for var in [
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
        ] {
            env.push((var.into(), SANDBOX_CA_BUNDLE.into()));
        }
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }
}

/// Entry point of the `netns` backend.
pub struct Sandbox;

static SANDBOX_SEQ: AtomicU32 = AtomicU32::new(0);

/// Host-side resources of one sandbox, removed on drop.
struct Resources {
    name: String,
    staging: PathBuf,
    cgroup: Option<SandboxCgroup>,
}

impl Drop for Resources {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.remove() {
                tracing::warn!(sandbox = %self.name, error = %e, "cgroup removal failed; cleanup_stale will retry");
            }
        }
        if let Err(e) = records::remove_tree(&self.staging) {
            tracing::warn!(sandbox = %self.name, error = %e, "staging removal failed; cleanup_stale will retry");
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SandboxError::Pipe(e.into()))
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString, SandboxError> {
    CString::new(bytes)
        .map_err(|_| SandboxError::InvalidSpec(format!("{what} contains a NUL byte")))
}

/// Resolves `program` against the sandbox's PATH; the sandbox sees the
/// host's `/usr` and friends, so the host's view answers.
fn resolve_program(program: &OsString) -> Result<PathBuf, SandboxError> {
    let p = Path::new(program);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    if program.as_bytes().contains(&b'/') || program.is_empty() {
        return Err(SandboxError::InvalidSpec(format!(
            "program {p:?} must be absolute or a bare name"
        )));
    }
    SANDBOX_PATH
        .split(':')
        .filter(|d| d.starts_with("/usr") || d.starts_with("/bin") || d.starts_with("/sbin"))
        .map(|d| Path::new(d).join(p))
        .find(|c| c.is_file())
        .ok_or_else(|| SandboxError::InvalidSpec(format!("program {p:?} not found in PATH")))
}

fn stdio_pair(
    mode: SandboxStdio,
    child_reads: bool,
) -> Result<(Option<OwnedFd>, Option<File>), SandboxError> {
    match mode {
        SandboxStdio::Inherit => Ok((None, None)),
        SandboxStdio::Null => {
            let f = File::options()
                .read(child_reads)
                .write(!child_reads)
                .open("/dev/null")
                .map_err(SandboxError::Pipe)?;
            Ok((Some(f.into()), None))
        }
        SandboxStdio::Pipe => {
            let (r, w) = pipe()?;
            if child_reads {
                Ok((Some(r), Some(File::from(w))))
            } else {
                Ok((Some(w), Some(File::from(r))))
            }
        }
    }
}

impl Sandbox {
    /// Starts `spec`'s command. Returns once the command has been exec'd
    /// (or with the stage that failed). Blocking: builds a staged `/etc`,
    /// cgroups and forks; typically a few milliseconds.
    pub fn spawn(spec: SandboxSpec) -> Result<SandboxChild, SandboxError> {
        let started = Instant::now();
        let seq = SANDBOX_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{}-{}", spec.session_name, std::process::id(), seq);
        let program = resolve_program(&spec.program)?;
        if spec.uid == 0 || spec.gid == 0 {
            return Err(SandboxError::InvalidSpec(
                "uid and gid must not be 0".into(),
            ));
        }
        if spec.workdir.is_some() && spec.work_volume.is_some() {
            return Err(SandboxError::InvalidSpec(
                "give either a workdir or a work volume, not both".into(),
            ));
        }
        if let Some(w) = &spec.workdir {
            if !w.is_dir() {
                return Err(SandboxError::InvalidSpec(format!(
                    "workdir {} is not a directory",
                    w.display()
                )));
            }
        }

        // Staging first (it carries the owner record), cgroups second, so
        // a crash at any point leaves something cleanup_stale finds.
        let sandboxes = rootfs::sandboxes_dir();
        records::ensure_dir(&sandboxes)?;
        let staging = rootfs::staging_dir(&name);
        // Built under a temporary name and renamed into place once its
        // owner record is in, so cleanup_stale never sees it half-made.
        let building = sandboxes.join(format!(".tmp-{}-{seq}", std::process::id()));
        let stage_err = |source| SandboxError::Stage {
            path: staging.clone(),
            source,
        };
        std::fs::create_dir(&building).map_err(stage_err)?;
        let mut res = Resources {
            name: name.clone(),
            staging: building.clone(),
            cgroup: None,
        };
        std::fs::write(building.join("owner"), Owner::current().to_line()).map_err(stage_err)?;
        std::fs::rename(&building, &staging).map_err(stage_err)?;
        res.staging = staging.clone();
        let root = staging.join("root");
        std::fs::create_dir(&root).map_err(stage_err)?;
        let etc = rootfs::stage_etc(Path::new("/etc"), &staging, spec.resolver, &spec.ca_pem)?;
        let cgroup = SandboxCgroup::create(&name, spec.memory_bytes, spec.pids_max)?;
        let version = cgroup.version();
        res.cgroup = Some(cgroup);

        let ops = rootfs::plan(&rootfs::RootSpec {
            root: &root,
            etc: &etc,
            workdir: spec.workdir.as_deref(),
            work_device: spec.work_volume.as_ref().map(|v| v.device()),
            uid: spec.uid,
            gid: spec.gid,
            tmp_size: spec.tmp_bytes,
        })?;
        let filters = seccomp::build()?;
        let fprogs: Vec<libc::sock_fprog> = filters
            .programs
            .iter()
            .map(|p| libc::sock_fprog {
                len: p.len() as u16,
                // seccompiler's sock_filter has the kernel's layout.
                filter: p.as_ptr() as *mut libc::sock_filter,
            })
            .collect();

        let netns = netns::open(&spec.netns_path)?;
        let lifeline = lifeline::read_end()?;
        let (go_r, go_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let (in_child, in_parent) = stdio_pair(spec.stdin, true)?;
        let (out_child, out_parent) = stdio_pair(spec.stdout, false)?;
        let (errs_child, errs_parent) = stdio_pair(spec.stderr, false)?;
        let raw = |f: &Option<OwnedFd>| f.as_ref().map_or(-1, |f| f.as_raw_fd());
        let stdio = [raw(&in_child), raw(&out_child), raw(&errs_child)];

        let program_c = cstring(program.as_os_str().as_bytes(), "program")?;
        let mut argv_c = vec![program_c.clone()];
        for a in &spec.args {
            argv_c.push(cstring(a.as_bytes(), "an argument")?);
        }
        let mut envp_c = Vec::new();
        for (k, v) in spec.environment() {
            if k.as_bytes().contains(&b'=') {
                return Err(SandboxError::InvalidSpec(format!(
                    "env name {k:?} contains '='"
                )));
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp_c.push(cstring(&kv, "an environment variable")?);
        }
        let ptrs = |v: &[CString]| {
            let mut p: Vec<*const libc::c_char> = v.iter().map(|c| c.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let mut keep_init: Vec<RawFd> = vec![
            0,
            1,
            2,
            netns.as_raw_fd(),
            go_r.as_raw_fd(),
            err_w.as_raw_fd(),
            status_w.as_raw_fd(),
            lifeline,
        ];
        keep_init.extend(stdio.iter().filter(|&&fd| fd >= 0));
        keep_init.sort_unstable();
        keep_init.dedup();
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);

        let plan = ChildPlan {
            netns_fd: netns.as_raw_fd(),
            go_r: go_r.as_raw_fd(),
            err_w: err_w.as_raw_fd(),
            status_w: status_w.as_raw_fd(),
            lifeline,
            stdio,
            keep_init,
            ops,
            new_root: rootfs::cstr(&root)?,
            hostname: CString::new("openclaw").expect("no NUL"),
            workdir: CString::new(SANDBOX_WORKDIR).expect("no NUL"),
            uid: spec.uid,
            gid: spec.gid,
            cap_last,
            filters: fprogs,
            argv: ptrs(&argv_c),
            envp: ptrs(&envp_c),
            program: program_c,
        };

        let args = CloneArgs {
            flags: (libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC) as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets
        // a copy of this thread's memory and continues on its own copy of
        // the stack. The child branch only calls `run_init`, which never
        // returns and uses only async-signal-safe syscalls on `plan`.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            // SAFETY: we are the clone3 child with fresh mount and pid
            // namespaces; `plan` was completed before the clone.
            unsafe { child::run_init(&plan) }
        }
        if pid < 0 {
            return Err(SandboxError::Clone(std::io::Error::last_os_error()));
        }
        let pid = Pid::from_raw(pid as i32);
        // A pidfd names this very process even after it is reaped, so
        // signals sent through it can never hit a recycled pid. We are the
        // only reaper and have not waited yet: the pid is still ours here.
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        let pidfd = if pidfd < 0 {
            let e = std::io::Error::last_os_error();
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(SandboxError::Clone(e));
        } else {
            // SAFETY: the syscall just returned this fd; nothing else owns it.
            std::sync::Arc::new(unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) })
        };
        // The child's ends live on in the child only.
        drop((
            go_r, err_w, status_w, in_child, out_child, errs_child, netns,
        ));

        let mut child = SandboxChild {
            pid,
            killer: SandboxKiller { pidfd },
            status_r: Some(File::from(status_r)),
            exit: None,
            stdin: in_parent,
            stdout: out_parent,
            stderr: errs_parent,
            version,
            res,
        };
        let cg = child.res.cgroup.as_ref().expect("set above");
        if let Err(e) = cg.add(pid.as_raw()) {
            child.kill_and_reap();
            return Err(e);
        }
        let mut go_w = File::from(go_w);
        if let Err(e) = std::io::Write::write_all(&mut go_w, b"g") {
            child.kill_and_reap();
            return Err(SandboxError::Pipe(e));
        }
        drop(go_w);
        // EOF on the error pipe means the command was exec'd (the pipe is
        // close-on-exec); 8 bytes name the stage that failed.
        let mut msg = Vec::with_capacity(8);
        let mut err_r = File::from(err_r);
        let _ = err_r.read_to_end(&mut msg);
        if msg.len() >= 8 {
            let stage = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
            let errno = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
            child.kill_and_reap();
            return Err(SandboxError::ChildSetup {
                stage: Stage::from_u32(stage).map_or("unknown", Stage::name),
                errno,
            });
        }
        drop(filters);
        tracing::debug!(sandbox = %name, pid = pid.as_raw(), elapsed_us = started.elapsed().as_micros() as u64, "sandbox started");
        Ok(child)
    }
}

/// A running sandbox. Dropping it kills everything inside and removes its
/// cgroups and staging (the session network stays: it belongs to the
/// session).
pub struct SandboxChild {
    killer: SandboxKiller,
    /// PID (in the supervisor's namespace) of the sandbox's init.
    pid: Pid,
    status_r: Option<File>,
    exit: Option<ExitStatus>,
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    version: CgroupVersion,
    res: Resources,
}

impl std::fmt::Debug for SandboxChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxChild")
            .field("pid", &self.pid)
            .field("name", &self.res.name)
            .field("exit", &self.exit)
            .finish()
    }
}

impl SandboxChild {
    /// PID of the sandbox's init (PID 1 inside) in the supervisor's view.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Unique name of this sandbox (cgroup and staging directory name).
    pub fn name(&self) -> &str {
        &self.res.name
    }

    /// Which cgroup hierarchy holds the limits.
    pub fn cgroup_version(&self) -> CgroupVersion {
        self.version
    }

    /// The cgroup directories (v2: one; v1: memory, pids).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.res
            .cgroup
            .as_ref()
            .map(|c| c.dirs().to_vec())
            .unwrap_or_default()
    }

    /// How often the limits were hit so far.
    pub fn limit_events(&self) -> LimitEvents {
        self.res
            .cgroup
            .as_ref()
            .map(SandboxCgroup::events)
            .unwrap_or_default()
    }

    /// Processes currently alive in the sandbox.
    pub fn pids_current(&self) -> u64 {
        self.res
            .cgroup
            .as_ref()
            .map(SandboxCgroup::pids_current)
            .unwrap_or(0)
    }

    pub fn take_stdin(&mut self) -> Option<File> {
        self.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<File> {
        self.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<File> {
        self.stderr.take()
    }

    /// Waits for the command to end and returns its status (a signal if it
    /// was killed, e.g. SIGKILL by the OOM killer or [`kill`](Self::kill)).
    /// Everything else in the sandbox dies with it. Blocking.
    pub fn wait(&mut self) -> Result<ExitStatus, SandboxError> {
        self.wait_flags(None)
            .map(|s| s.expect("blocking wait returns a status"))
    }

    /// Returns the status if the command has ended, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, SandboxError> {
        self.wait_flags(Some(WaitPidFlag::WNOHANG))
    }

    fn wait_flags(
        &mut self,
        flags: Option<WaitPidFlag>,
    ) -> Result<Option<ExitStatus>, SandboxError> {
        if let Some(s) = self.exit {
            return Ok(Some(s));
        }
        let init_status = loop {
            match waitpid(self.pid, flags) {
                Ok(WaitStatus::StillAlive) => return Ok(None),
                Ok(WaitStatus::Exited(_, code)) => break ExitStatus::from_raw((code & 0xff) << 8),
                Ok(WaitStatus::Signaled(_, sig, _)) => break ExitStatus::from_raw(sig as i32),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(SandboxError::Wait(e.into())),
            }
        };
        // init writes the command's raw status before exiting; if init was
        // killed first there is none and init's own status stands.
        let mut buf = Vec::new();
        if let Some(mut r) = self.status_r.take() {
            let _ = r.read_to_end(&mut buf);
        }
        let status = if buf.len() >= 4 {
            ExitStatus::from_raw(i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]))
        } else {
            init_status
        };
        self.exit = Some(status);
        Ok(Some(status))
    }

    /// Sends `signal` to the command (through init, which forwards
    /// SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2, SIGWINCH, SIGCONT).
    pub fn signal(&self, signal: Signal) -> Result<(), SandboxError> {
        self.killer.signal(signal)
    }

    /// A cloneable handle that can signal or kill this sandbox from another
    /// thread or task while [`wait`](Self::wait) blocks (e.g. on Ctrl-C);
    /// safe to use after the sandbox ended.
    pub fn killer(&self) -> SandboxKiller {
        self.killer.clone()
    }

    /// Kills the whole sandbox at once (SIGKILL to its init ends the pid
    /// namespace). Does not wait; call [`wait`](Self::wait) after.
    pub fn kill(&self) -> Result<(), SandboxError> {
        self.signal(Signal::SIGKILL)
    }

    fn kill_and_reap(&mut self) {
        let _ = self.kill();
        let _ = self.wait();
    }
}

/// Signals one sandbox through a pidfd: never reaches another process,
/// even after the sandbox was reaped and its pid reused.
#[derive(Debug, Clone)]
pub struct SandboxKiller {
    pidfd: std::sync::Arc<OwnedFd>,
}

impl SandboxKiller {
    /// Sends `signal` to the sandbox's init (forwarded to the command, see
    /// [`SandboxChild::signal`]). A sandbox that already ended is `Ok`.
    pub fn signal(&self, signal: Signal) -> Result<(), SandboxError> {
        // SAFETY: pidfd_send_signal on an fd we own, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(SandboxError::Wait(e))
        }
    }

    /// SIGKILLs the sandbox's init: the whole pid namespace ends at once.
    pub fn kill(&self) -> Result<(), SandboxError> {
        self.signal(Signal::SIGKILL)
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill_and_reap();
        }
        // `res` drops next: cgroups (killing any straggler) and staging.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_resolve_in_path_and_relative_paths_are_refused() {
        let sh = resolve_program(&"sh".into()).expect("sh exists");
        assert!(sh.is_absolute() && sh.ends_with("sh") && sh.is_file());
        assert!(matches!(
            resolve_program(&"./x".into()),
            Err(SandboxError::InvalidSpec(_))
        ));
        assert!(matches!(
            resolve_program(&"no-such-program-here".into()),
            Err(SandboxError::InvalidSpec(_))
        ));
    }

    #[test]
    fn caller_env_overrides_fixed_vars_and_nothing_leaks_from_host() {
        std::env::set_var("OPENCLAW_TEST_HOST_SECRET", "leak");
        let spec = SandboxSpec {
            netns_path: "/nonexistent".into(),
            resolver: Ipv4Addr::new(10, 200, 1, 1),
            session_name: "openclaw-t".into(),
            program: "sh".into(),
            args: vec![],
            env: vec![
                ("HOME".into(), "/tmp".into()),
                ("OPENCLAW_TASK".into(), "book".into()),
            ],
            ca_pem: vec![],
            workdir: None,
            work_volume: None,
            uid: 65534,
            gid: 65534,
            memory_bytes: 1 << 30,
            pids_max: 64,
            tmp_bytes: 1 << 20,
            stdin: SandboxStdio::Null,
            stdout: SandboxStdio::Null,
            stderr: SandboxStdio::Null,
        };
        let env = spec.environment();
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone());
        assert_eq!(get("HOME"), Some("/tmp".into()));
        assert_eq!(get("OPENCLAW_TASK"), Some("book".into()));
        assert_eq!(get("SSL_CERT_FILE"), Some(SANDBOX_CA_BUNDLE.into()));
        assert_eq!(get("OPENCLAW_TEST_HOST_SECRET"), None);
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
    }
}
