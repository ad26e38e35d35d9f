//! Host-side isolation: the session network namespace, tap devices and the
//! `netns` process sandbox.
//!
//! The public interface is:
//! - [`SessionNetwork`]: one named network namespace per session holding the
//!   proxy's address and nothing that routes anywhere; torn down on drop.
//! - [`Sandbox::spawn`] with a [`SandboxSpec`] → [`SandboxChild`]: a command
//!   in fresh mount/pid/uts/ipc namespaces inside that network, on a
//!   read-only system root, unprivileged, seccomp-filtered, cgroup-limited.
//! - [`cleanup_stale`]: removes what crashed supervisors left behind.
//! - [`SandboxError`]: every failure, named after the stage that failed.
//!
//! All calls block (they run `ip`, fork, wait); from async code call them
//! through `tokio::task::spawn_blocking`. See `docs/sandbox.md`.

mod cgroup;
mod child;
mod netns;
mod records;
mod rootfs;
mod sandbox;
mod seccomp;

use std::io;
use std::path::PathBuf;

pub use cgroup::LimitEvents;
pub use cgroup::{host_version as cgroup_version, CgroupVersion};
pub use netns::SessionNetwork;
pub use records::{cleanup_stale, StaleCleanup};
pub use sandbox::{Sandbox, SandboxChild, SandboxKiller, SandboxSpec, SandboxStdio};
pub use sandbox::{SANDBOX_CA_BUNDLE, SANDBOX_WORKDIR};

/// Where the supervisor keeps its owner records and sandbox staging
/// directories (on the host, never visible inside a sandbox).
pub const RUN_DIR: &str = "/run/openclaw";

/// Everything that can go wrong while building, running or removing a
/// session network or sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The session id is empty, too long or has characters other than
    /// `[A-Za-z0-9_-]` (it becomes part of namespace and cgroup names).
    #[error("invalid session id {0:?}: use 1-32 characters from [A-Za-z0-9_-]")]
    InvalidSessionId(String),
    /// All 254 per-session address slots are taken by live sessions.
    #[error("no free session address slot (254 sessions already running)")]
    NoFreeSlot,
    /// Reading or writing the supervisor's runtime records failed.
    #[error("runtime records under {path}: {source}")]
    Records { path: PathBuf, source: io::Error },
    /// `ip` could not be started (iproute2 missing?).
    #[error("could not run `ip` (is iproute2 installed?): {0}")]
    IpSpawn(io::Error),
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}")]
    IpCommand { args: String, stderr: String },
    /// Entering the session network namespace failed.
    #[error("entering network namespace {path}: {source}")]
    EnterNetns { path: PathBuf, source: io::Error },
    /// Binding a listener inside the session namespace failed.
    #[error("binding {addr} in the session namespace: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    /// A closure run inside the namespace panicked.
    #[error("the thread running inside the network namespace panicked")]
    NetnsThreadPanicked,
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
    /// Waiting for or signalling the sandbox failed.
    #[error("waiting for or signalling the sandbox: {0}")]
    Wait(io::Error),
}
