//! The `netns` backend: one command in fresh mount/pid/uts/ipc namespaces
//! inside a session network (from the `netns` crate), on a read-only system
//! root, unprivileged, seccomp-filtered, cgroup-limited.
//!
//! The public interface is:
//! - [`Sandbox::spawn`] with a [`SandboxSpec`] → [`SandboxChild`], signalled
//!   from elsewhere through a [`SandboxKiller`];
//! - [`WorkVolume`]: a size-capped `/work` on the host disk, given to a
//!   spec as `work_volume`;
//! - [`ToolJail`]: one host program run unprivileged, offline, in its own
//!   namespaces on a minimal read-only root (e2fsprogs reading a guest's
//!   disk);
//! - [`cleanup_stale`]: removes what crashed supervisors left behind
//!   (sandboxes, then their session networks);
//! - [`SandboxError`]: every failure, named after the stage that failed.
//!
//! All calls block (they fork, wait, run `ip`); from async code call them
//! through `tokio::task::spawn_blocking`. See `docs/sandbox.md`.
//!
//! Unsafe code sits in `sandbox.rs` (clone3, pidfds), `child.rs` (the init's
//! raw syscalls after the clone), `rootfs.rs` (one `setxattr`) and
//! `work.rs` (loop-device ioctls, the mount API), `tool.rs` (the jail's
//! `pre_exec` hook); every block says why it
//! is sound.

/// cgroup v2/v1 memory and pids limits of one sandbox.
mod cgroup;
/// The sandbox's init: what runs in the new namespaces after `clone3`.
mod child;
/// The supervisor's lifeline: a pipe each init watches, cut when the
/// supervisor dies.
mod lifeline;
/// The sandbox's root: staged `/etc`, the mount plan, the staging directory.
mod rootfs;
/// [`SandboxSpec`], [`Sandbox::spawn`], the running [`SandboxChild`].
mod sandbox;
/// The seccomp filter the command runs under.
mod seccomp;
/// [`cleanup_stale`]: leftovers of dead supervisors.
mod stale;
/// [`ToolJail`]: a host program confined to run on untrusted input.
mod tool;
/// [`WorkVolume`]: `/work` as a size-capped file system on the host disk.
mod work;

use std::io;
use std::path::PathBuf;

pub use cgroup::LimitEvents;
pub use cgroup::{host_version as cgroup_version, CgroupVersion};
pub use sandbox::{Sandbox, SandboxChild, SandboxKiller, SandboxSpec, SandboxStdio};
pub use sandbox::{SANDBOX_CA_BUNDLE, SANDBOX_WORKDIR};
pub use stale::{cleanup_stale, StaleCleanup};
pub use tool::{ToolError, ToolJail, ToolLimits, ToolOutput};
pub use work::{WorkUsage, WorkVolume, MIN_WORK_BYTES};

/// Everything that can go wrong while building, running or removing a
/// sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The session network, its namespace file or the owner records.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// No usable memory + pids cgroup controllers (neither v2 nor v1).
    #[error("no usable cgroup memory and pids controllers: {0}")]
    CgroupUnavailable(String),
    /// Creating, configuring or removing a cgroup failed.
    #[error("cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    /// The spec cannot be run (bad program, argument with NUL, ...).
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// Preparing the sandbox's root (staging dir, /etc copy) failed.
    #[error("staging the sandbox root at {path}: {source}")]
    Stage { path: PathBuf, source: io::Error },
    /// Building the seccomp filter failed.
    #[error("building the seccomp filter: {0}")]
    Seccomp(String),
    /// A pipe for the child could not be created.
    #[error("creating a pipe: {0}")]
    Pipe(io::Error),
    /// `clone3` failed.
    #[error("clone3 of the sandbox init: {0}")]
    Clone(io::Error),
    /// A setup step inside the new namespaces failed before the command
    /// started; `stage` names the step, `errno` the reason.
    #[error("sandbox setup failed at {stage}: {}", io::Error::from_raw_os_error(*errno))]
    ChildSetup { stage: &'static str, errno: i32 },
    /// Making the size-capped `/work` volume failed at `stage`.
    #[error("the /work volume: {stage}: {source}")]
    WorkVolume {
        stage: &'static str,
        source: io::Error,
    },
    /// Waiting for or signalling the sandbox failed.
    #[error("waiting for or signalling the sandbox: {0}")]
    Wait(io::Error),
}
