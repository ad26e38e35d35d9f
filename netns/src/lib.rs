//! The session network namespace: one named network namespace per session
//! holding the proxy's address and nothing that routes anywhere, the owner
//! records that let the next supervisor remove what a crashed one left, and
//! the one way to run code inside a namespace.
//!
//! The public interface is:
//! - [`SessionNetwork`]: created per session, torn down on drop;
//! - [`run_in`] (and [`SessionNetwork::run_in`]): a closure on a throwaway
//!   thread inside a namespace. The proxy's listeners and the VMM's tap are
//!   opened this way by their caller and handed over already open, so no
//!   other crate enters a namespace from a thread;
//! - [`cleanup_stale_networks`]: removes the networks of dead supervisors;
//! - [`records`]: the owner records, shared with the sandbox's staging;
//! - [`NetnsError`]: every failure, named after the stage that failed.
//!
//! All calls block (they run `ip`, start a thread and wait for it); from
//! async code call them through `tokio::task::spawn_blocking`. See
//! `docs/sandbox.md`.
#![forbid(unsafe_code)]

/// Entering a namespace: [`run_in`] and [`open`].
mod enter;
/// Named namespaces under `/run/netns` and the `ip` calls on them.
mod iproute;
/// [`SessionNetwork`]: create, address, route, tear down.
mod network;
/// Owner records under [`RUN_DIR`] and the stale-network cleanup.
pub mod records;

use std::io;
use std::path::PathBuf;

pub use enter::{open, run_in};
pub use network::SessionNetwork;
pub use records::cleanup_stale_networks;

/// Where the supervisor keeps its owner records and sandbox staging
/// directories (on the host, never visible inside a sandbox).
pub const RUN_DIR: &str = "/run/openclaw";

/// Everything that can go wrong while building, entering or removing a
/// session network.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
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
    /// Opening or entering the network namespace failed.
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
}
