//! What runs inside the new namespaces after `clone3`: the sandbox's init
//! (PID 1) builds the root, forks the command, forwards signals to it, reaps
//! orphans, reports the command's wait status, and ends everything when the
//! supervisor's lifeline hangs up (the supervisor died).
//!
//! The parent may be multi-threaded, so from the clone onwards this code is
//! restricted to async-signal-safe work: raw syscalls on data the parent
//! prepared ([`ChildPlan`]), no allocation, no locks, no panics.

use std::ffi::CString;
use std::os::fd::RawFd;

use crate::rootfs::{Op, Stage};

/// Everything the child needs, built by the parent before the clone.
pub(crate) struct ChildPlan {
    pub netns_fd: RawFd,
    /// Read end: one byte arrives once the parent placed us in the cgroups.
    pub go_r: RawFd,
    /// Write end (CLOEXEC): `[stage u32, errno i32]` on a setup failure.
    pub err_w: RawFd,
    /// Write end: the command's raw wait status (4 bytes).
    pub status_w: RawFd,
    /// Read end of the supervisor's lifeline (`lifeline.rs`): hangs up when
    /// the supervisor process is gone.
    pub lifeline: RawFd,
    /// Fds to place on 0, 1, 2 in the command (`-1`: keep the inherited).
    pub stdio: [RawFd; 3],
    /// Fds init keeps before building the root (sorted, deduplicated).
    pub keep_init: Vec<RawFd>,
    pub ops: Vec<Op>,
    pub new_root: CString,
    pub hostname: CString,
    pub workdir: CString,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub cap_last: libc::c_int,
    /// Seccomp programs: (length, pointer into a buffer the parent keeps
    /// alive, which the child's copy of memory holds too).
    pub filters: Vec<libc::sock_fprog>,
    pub program: CString,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
}

/// Reports `stage` and the current errno to the parent, then exits.
fn fail(plan: &ChildPlan, stage: Stage) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing a stack buffer to a pipe fd we own, then exiting
    // without running destructors (which could touch the parent's state).
    unsafe {
        libc::write(plan.err_w, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Checks a libc return value (`-1` is failure).
fn check(plan: &ChildPlan, rc: libc::c_int, stage: Stage) {
    if rc == -1 {
        fail(plan, stage);
    }
}

/// Closes every fd not in `keep` (sorted ascending).
fn close_all_except(keep: &[RawFd]) {
    let mut next: u32 = 0;
    for &fd in keep {
        let fd = fd as u32;
        if fd > next {
            // SAFETY: close_range only closes descriptors; none of the
            // closed ones is used by this process afterwards.
            unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0u32) };
        }
        next = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, next, u32::MAX, 0u32) };
}

fn run_op(plan: &ChildPlan, op: &Op) {
    if let Err(stage) = apply_op(op) {
        fail(plan, stage);
    }
}

/// Replays one mount step; on failure, the step's stage (errno is left as
/// the syscall set it). Async-signal-safe: raw syscalls on C strings the
/// caller prepared before forking.
pub(crate) fn apply_op(op: &Op) -> Result<(), Stage> {
    let opt = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    let ok = |rc: libc::c_int, stage: Stage| if rc == -1 { Err(stage) } else { Ok(()) };
    // SAFETY: every pointer comes from a CString the op owns, or is null
    // where the syscall allows it.
    unsafe {
        match op {
            Op::Mount {
                src,
                dst,
                fstype,
                flags,
                data,
                stage,
            } => ok(
                libc::mount(
                    opt(src),
                    dst.as_ptr(),
                    opt(fstype),
                    *flags,
                    opt(data).cast(),
                ),
                *stage,
            ),
            Op::Mkdir { path, stage } => ok(libc::mkdir(path.as_ptr(), 0o755), *stage),
            Op::Touch { path, stage } => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                ok(fd, *stage)?;
                libc::close(fd);
                Ok(())
            }
            Op::Symlink {
                target,
                link,
                stage,
            } => ok(libc::symlink(target.as_ptr(), link.as_ptr()), *stage),
        }
    }
}

/// The sandbox's init. Never returns.
///
/// # Safety
/// Call only in the child of a `clone3` with `CLONE_NEWNS | CLONE_NEWPID`
/// (it rebuilds the mount table and pivots the root), with `plan` built by
/// the parent before the clone.
pub(crate) unsafe fn run_init(plan: &ChildPlan) -> ! {
    use libc::*;
    let mut byte = 0u8;
    // SAFETY: (whole block) raw syscalls on fds and C strings the plan owns;
    // see the module doc for why nothing here allocates.
    unsafe {
        // First of all drop the copies of the parent's fds, the write ends
        // of the go pipe and of the lifeline among them: while we held
        // those, neither would hang up if the supervisor died now.
        close_all_except(&plan.keep_init);
        if read(plan.go_r, (&mut byte as *mut u8).cast(), 1) != 1 {
            fail(plan, Stage::WaitParent);
        }
        // Own session: no controlling terminal, so the command cannot push
        // keystrokes into the operator's terminal (TIOCSTI) and terminal
        // signals reach only the supervisor, which decides what to forward.
        setsid();
        check(plan, setns(plan.netns_fd, CLONE_NEWNET), Stage::EnterNetns);
        close(plan.netns_fd);
        let root = c"/".as_ptr();
        // Nothing we mount may propagate back to the host.
        check(
            plan,
            mount(
                std::ptr::null(),
                root,
                std::ptr::null(),
                MS_REC | MS_PRIVATE,
                std::ptr::null(),
            ),
            Stage::MakePrivate,
        );
        for op in &plan.ops {
            run_op(plan, op);
        }
        check(plan, chdir(plan.new_root.as_ptr()), Stage::PivotRoot);
        // pivot_root(".", ".") stacks the old root on top of the new one;
        // detaching it leaves only the new root.
        let dot = c".".as_ptr();
        check(
            plan,
            syscall(SYS_pivot_root, dot, dot) as c_int,
            Stage::PivotRoot,
        );
        check(plan, umount2(dot, MNT_DETACH), Stage::PivotRoot);
        check(plan, chdir(root), Stage::PivotRoot);
        check(
            plan,
            mount(
                std::ptr::null(),
                root,
                std::ptr::null(),
                MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
                std::ptr::null(),
            ),
            Stage::RemountRoot,
        );
        check(
            plan,
            sethostname(plan.hostname.as_ptr(), plan.hostname.as_bytes().len()),
            Stage::Hostname,
        );

        // Signals init forwards, plus SIGCHLD; blocked and read from a
        // signalfd, so one poll waits for them and for the lifeline.
        let mut set: sigset_t = std::mem::zeroed();
        sigemptyset(&mut set);
        for sig in [
            SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT,
        ] {
            sigaddset(&mut set, sig);
        }
        sigprocmask(SIG_BLOCK, &set, std::ptr::null_mut());
        let signals = signalfd(-1, &set, SFD_CLOEXEC);
        check(plan, signals, Stage::Signals);

        let cmd = raw_fork();
        if cmd == -1 {
            fail(plan, Stage::Fork);
        }
        if cmd == 0 {
            exec_command(plan);
        }
        let mut keep = [plan.status_w, plan.lifeline, signals];
        keep.sort_unstable();
        close_all_except(&keep);
        let mut watch = [
            pollfd {
                fd: plan.lifeline,
                events: POLLIN,
                revents: 0,
            },
            pollfd {
                fd: signals,
                events: POLLIN,
                revents: 0,
            },
        ];
        loop {
            if poll(watch.as_mut_ptr(), watch.len() as nfds_t, -1) < 0 {
                continue; // EINTR
            }
            // Nothing is ever written to the lifeline: any event on it is
            // its hang-up (or a broken fd): the supervisor is gone, so no
            // proxy serves this sandbox and nobody waits for its status.
            // Exiting PID 1 kills everything left in the namespace.
            if watch[0].revents != 0 {
                _exit(137);
            }
            if watch[1].revents & POLLIN == 0 {
                continue;
            }
            let mut info: signalfd_siginfo = std::mem::zeroed();
            let size = std::mem::size_of::<signalfd_siginfo>();
            if read(signals, (&mut info as *mut signalfd_siginfo).cast(), size) != size as isize {
                continue;
            }
            let sig = info.ssi_signo as c_int;
            if sig != SIGCHLD {
                kill(cmd, sig);
                continue;
            }
            loop {
                let mut status: c_int = 0;
                let pid = waitpid(-1, &mut status, WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == cmd {
                    let bytes = status.to_ne_bytes();
                    write(plan.status_w, bytes.as_ptr().cast(), bytes.len());
                    // Exiting PID 1 kills everything left in the namespace.
                    _exit(0);
                }
            }
        }
    }
}

/// fork(2) as a bare clone syscall: the child's pid in the parent, 0 in
/// the child, -1 on error (errno set). Not libc's fork(): glibc's runs
/// atfork handlers and takes malloc's arena locks, and one of them may have
/// been held by another thread of the supervisor at the moment the caller
/// was itself cloned or forked; such a lock is never released in this copy
/// and fork() would wait forever.
///
/// # Safety
/// The usual fork rules: the child runs only async-signal-safe code until
/// it execs or exits.
pub(crate) unsafe fn raw_fork() -> libc::pid_t {
    // SAFETY: clone with no flags but the exit signal is fork; the caller
    // keeps the child to async-signal-safe code.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        ) as libc::pid_t
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The command process: drops everything, then `execve`. Never returns.
fn exec_command(plan: &ChildPlan) -> ! {
    use libc::*;
    // SAFETY: (whole block) raw syscalls on plan-owned data, in a freshly
    // forked single-threaded child.
    unsafe {
        let mut empty: sigset_t = std::mem::zeroed();
        sigemptyset(&mut empty);
        sigprocmask(SIG_SETMASK, &empty, std::ptr::null_mut());
        // Ignored dispositions survive execve (the Rust runtime ignores
        // SIGPIPE); the command starts with defaults.
        for sig in 1..32 {
            if sig != SIGKILL && sig != SIGSTOP {
                signal(sig, SIG_DFL);
            }
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            if fd >= 0 && dup2(fd, target as c_int) == -1 {
                fail(plan, Stage::Stdio);
            }
        }
        check(plan, chdir(plan.workdir.as_ptr()), Stage::Chdir);

        if let Err(stage) = drop_privileges(plan.uid, plan.gid, plan.cap_last) {
            fail(plan, stage);
        }
        for prog in &plan.filters {
            check(
                plan,
                prctl(
                    PR_SET_SECCOMP,
                    SECCOMP_MODE_FILTER as c_ulong,
                    prog as *const sock_fprog,
                ),
                Stage::Seccomp,
            );
        }
        let mut keep = [0, 1, 2, plan.err_w];
        keep.sort_unstable();
        close_all_except(&keep);
        execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
        fail(plan, Stage::Exec)
    }
}

/// Becomes `uid`/`gid` for good: no capabilities in any set (bounding,
/// ambient, inheritable; permitted and effective go with the uid), no
/// supplementary groups, and `no_new_privs`, so no exec can gain any back.
/// On failure, the stage (errno is left as the syscall set it).
///
/// Async-signal-safe (raw syscalls, stack data only): callers run it in a
/// child forked from a multi-threaded process.
pub(crate) fn drop_privileges(
    uid: libc::uid_t,
    gid: libc::gid_t,
    cap_last: libc::c_int,
) -> Result<(), Stage> {
    use libc::*;
    let ok = |rc: c_long, stage: Stage| if rc == -1 { Err(stage) } else { Ok(()) };
    // SAFETY: (whole block) raw syscalls on stack data.
    unsafe {
        for cap in 0..=cap_last {
            ok(
                prctl(PR_CAPBSET_DROP, cap as c_ulong, 0, 0, 0).into(),
                Stage::DropCaps,
            )?;
        }
        ok(
            prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL as c_ulong, 0, 0, 0).into(),
            Stage::DropCaps,
        )?;
        // Raw syscalls: glibc's wrappers broadcast the change to every
        // thread it knows of, and after a raw fork its thread list still
        // names the parent's threads, which are not here to answer.
        ok(
            syscall(SYS_setgroups, 0usize, std::ptr::null::<gid_t>()),
            Stage::SetIds,
        )?;
        ok(syscall(SYS_setresgid, gid, gid, gid), Stage::SetIds)?;
        ok(syscall(SYS_setresuid, uid, uid, uid), Stage::SetIds)?;
        // setresuid away from 0 cleared permitted and effective; clear the
        // inheritable set as well.
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        ok(
            syscall(SYS_capset, &header as *const CapHeader, data.as_ptr()),
            Stage::DropCaps,
        )?;
        ok(
            prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(),
            Stage::NoNewPrivs,
        )
    }
}
