//! The isolation backends a session runs its command in: [`choice`] decides
//! which one (and says why), [`netns`] and [`kvm`] run the command to its
//! end, each handed one [`BackendContext`]; [`image`] is the kvm backend's
//! guest image.

use std::path::Path;
use std::time::Instant;

use ::netns::SessionNetwork;

use super::config::RunConfig;
use super::console::Console;
use super::enforcement::SessionEnforcement;
use super::monitor::Monitor;
use crate::bundle::SessionInfo;

/// `--backend kvm|netns|auto`: the probes and the cached verdict.
pub mod choice;
/// Where the guest image lives; building it when missing.
pub mod image;
/// The microVM backend.
pub mod kvm;
/// The namespace sandbox backend.
pub mod netns;

/// What a backend gets from the session. Everything in it is set up before
/// the backend starts (bundle, session network, receipts, enforcement,
/// proxy, control socket) and torn down by the runner after it returns.
pub struct BackendContext<'a> {
    pub config: &'a RunConfig,
    /// The session bundle's directory.
    pub dir: &'a Path,
    /// `session.json`: the backend records when its sandbox was ready.
    pub info: &'a mut SessionInfo,
    /// The session network the sandbox or guest is placed in; the proxy
    /// listens on its proxy address.
    pub network: &'a SessionNetwork,
    /// The session CA (PEM) the sandbox or guest trusts.
    pub ca_pem: &'a str,
    /// The credential placeholders for the command's environment.
    pub enforcement: &'a SessionEnforcement,
    /// The command's output goes here (and to `console.log`).
    pub console: Console,
    pub monitor: &'a Monitor,
    /// When the session started: the time to a ready sandbox counts from it.
    pub started: Instant,
}
