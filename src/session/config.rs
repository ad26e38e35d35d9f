//! What every part of a session shares: the run configuration (already read
//! from files and flags), the backend and approval choices, the session's
//! own exit codes and the shutdown signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};

/// openclaw could not set up or run the session (the command's own exit
/// codes pass through unchanged).
pub const EXIT_SETUP: u8 = 125;
/// The session was interrupted (Ctrl-C / SIGTERM).
pub const EXIT_INTERRUPTED: i32 = 130;
/// The session's `--timeout` passed (as timeout(1) reports it).
pub const EXIT_TIMEOUT: i32 = 124;

/// How the command's run ended, as the supervisor saw it: the session's
/// status comes from this, never from the exit code alone (a command, or a
/// guest reporting its status, can exit 130 or 124 by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The command ended by itself with this exit code (128+N for a
    /// signal; on kvm, as the guest reported it).
    Exited(i32),
    /// `--timeout` passed and the supervisor stopped the command.
    TimedOut,
    /// Ctrl-C / SIGTERM reached the supervisor, which stopped the command.
    Interrupted,
}

impl RunEnd {
    /// The session's exit code.
    pub fn code(self) -> i32 {
        match self {
            RunEnd::Exited(code) => code,
            RunEnd::TimedOut => EXIT_TIMEOUT,
            RunEnd::Interrupted => EXIT_INTERRUPTED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Kvm,
    Netns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApproveMode {
    /// Ask on the terminal; without one, deny.
    Prompt,
    Deny,
    /// Approve everything (unattended demos).
    Auto,
}

/// How much of the host one session may fill, each an `openclaw run` flag;
/// hitting one is recorded (`session.json`'s `bounds`, the receipts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Distinct refused DNS names receipted one by one; past them, aggregate
    /// receipts (`--dns-refusal-receipts`).
    pub dns_refusal_receipts: usize,
    /// Size cap of the netns sandbox's `/work` in bytes; 0: no cap, `/work`
    /// is a plain directory in the bundle (`--work-max`).
    pub work_max_bytes: u64,
    /// Most bytes of output kept in `console.log` (`--console-max`).
    pub console_max_bytes: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            dns_refusal_receipts: enforce::DnsRefusalLimit::default().receipted,
            work_max_bytes: 1 << 30,
            console_max_bytes: super::console::DEFAULT_CONSOLE_MAX,
        }
    }
}

/// Everything one session needs, already read from files and flags.
pub struct RunConfig {
    pub token_text: String,
    pub root_public_key: VerifyingKey,
    pub receipt_key: SigningKey,
    pub secrets: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    pub backend: BackendChoice,
    /// `--image`: the kvm backend's root filesystem (name, id, path or
    /// `initramfs`); None: the default image.
    pub image: Option<String>,
    pub approve: ApproveMode,
    pub approval_timeout: Duration,
    pub workdir: Option<PathBuf>,
    pub resolve: Vec<(String, SocketAddr)>,
    pub upstream_ca: Vec<PathBuf>,
    pub json_events: bool,
    pub task: Option<String>,
    pub memory_bytes: u64,
    pub pids_max: u64,
    pub command: Vec<String>,
    pub sessions_dir: PathBuf,
    /// The openclaw home the session draws on and reports to: its rate card
    /// (`rates.toml`), usage ledger (`ledger.db`), images and KVM probe
    /// cache. Not derived from `sessions_dir`: `openclaw serve` puts a
    /// tenant's sessions under the tenant's root but keeps one home.
    pub home: PathBuf,
    /// Stop the command (and its sandbox or VM) after this long.
    pub timeout: Option<Duration>,
    pub bounds: Bounds,
    /// Who the session is billed to and who ran it.
    pub labels: SessionLabels,
    /// The store whose day quotas of `labels.tenant` each LLM call is held
    /// against (`openclaw run --quota-db`: control.db or PostgreSQL);
    /// `None`: no quota.
    pub quota_db: Option<crate::tenants::QuotaDb>,
    /// Where the session's usage rows go (`openclaw run --ledger-db`);
    /// `None`: the home's `ledger.db`.
    pub ledger_db: Option<crate::usage::LedgerDb>,
    /// `openclaw serve` started this run: its end is audited as its
    /// tenant's (via `api`), not the operator's (via `cli`).
    pub daemon_started: bool,
}

impl RunConfig {
    /// The ledger the session's rows are written to.
    pub fn ledger(&self) -> crate::usage::LedgerDb {
        self.ledger_db.clone().unwrap_or_else(|| {
            crate::usage::LedgerDb::Sqlite(crate::usage::ledger_path(&self.home))
        })
    }
}

/// `openclaw run --tenant T --user U`: recorded in `session.json` and the
/// chain's session_start, and on every ledger row of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLabels {
    pub tenant: String,
    pub user: String,
}

/// The tenant of a session run without `--tenant`.
pub const DEFAULT_TENANT: &str = "local";

impl SessionLabels {
    /// The labels given, or the defaults: tenant `local`, and the invoking
    /// user (`SUDO_USER` when run through sudo, else `USER`, else the name
    /// of the process's uid, else the uid).
    pub fn new(tenant: Option<String>, user: Option<String>) -> Result<SessionLabels, String> {
        let labels = SessionLabels {
            tenant: tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
            user: user.unwrap_or_else(invoking_user),
        };
        for (what, value) in [("--tenant", &labels.tenant), ("--user", &labels.user)] {
            check_label(what, value)?;
        }
        Ok(labels)
    }
}

/// A label is 1 to 128 characters, none of them control characters (they
/// end up in terminals, CSV files and HTML).
fn check_label(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.chars().count() > 128 || value.chars().any(char::is_control) {
        return Err(format!(
            "{what} {value:?}: a label is 1 to 128 characters, without control characters"
        ));
    }
    Ok(())
}

fn invoking_user() -> String {
    for var in ["SUDO_USER", "USER"] {
        if let Some(name) = std::env::var(var)
            .ok()
            .filter(|v| check_label(var, v).is_ok())
        {
            return name;
        }
    }
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
