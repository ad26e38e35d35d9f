//! `openclaw run`: run a command (the agent) in a sandbox under a capability
//! token. Parses the command line into a [`RunConfig`] and hands it to the
//! session runner.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::session::backends::choice;
use crate::session::config::{ApproveMode, BackendChoice, Bounds, RunConfig, SessionLabels};
use crate::session::runner;
use crate::tenants::QuotaDb;
use crate::usage::LedgerDb;
use crate::{home, keys};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw run --capabilities task.cap -- ./agent.sh
  openclaw run --capabilities task.cap --secrets ~/.openclaw/secrets.toml \\
      --agent \"Book a flight to NYC for Tuesday\" -- python3 agent.py
  openclaw run --capabilities task.cap --resolve api.staging.example=127.0.0.1:8443 \\
      --upstream-ca staging-ca.pem --approve deny -- ./agent.sh
  openclaw run --capabilities task.cap --tenant acme --user alice -- ./agent.sh

The command runs in a sandbox whose only way out is openclaw's proxy: DNS,
HTTP and HTTPS (TLS is terminated and re-encrypted with a per-session CA the
sandbox trusts). Every request is decided against the capability token and
receipted in <home>/sessions/<id>/. Credentials from --secrets never enter
the sandbox: it sees placeholders in environment variables named after each
secret in upper case (united_login -> $UNITED_LOGIN).

Bounds (each hit is recorded in the bundle's session.json and report):
  --work-max        /work is a file system of this size on the host disk;
                    writes past it fail with ENOSPC inside the sandbox
  --console-max     console.log keeps this much output, then counts the rest
  --dns-refusal-receipts  refused DNS names receipted one by one, then in
                    signed aggregate receipts (count + digest of the names)

Exit status: the command's own, or
  124  --timeout passed; the command was stopped
  125  openclaw could not set up or run the session (message on stderr,
       naming the stage that failed: backend, image build, VM start, boot, ...)
  130  interrupted (Ctrl-C / SIGTERM)
  128+N  the command was killed by signal N (e.g. 137: memory limit)
Needs root (network namespaces, cgroups).")]
pub struct RunArgs {
    /// Capability token file (from `openclaw cap mint`).
    #[arg(long, short = 'c', value_name = "FILE.cap")]
    capabilities: PathBuf,
    /// Root public key the token must be signed by [default: <home>/keys/root.pub].
    #[arg(long, value_name = "ROOT.pub")]
    pubkey: Option<PathBuf>,
    /// Receipt-signing private key [default: <home>/keys/receipt.key].
    #[arg(long, value_name = "RECEIPT.key")]
    receipt_key: Option<PathBuf>,
    /// Secrets file (TOML, mode 0600): credentials the proxy injects.
    #[arg(long, value_name = "SECRETS.toml")]
    secrets: Option<PathBuf>,
    /// Service catalog (TOML) classifying requests into actions [default: built in].
    #[arg(long, value_name = "CATALOG.toml")]
    catalog: Option<PathBuf>,
    /// Isolation backend: kvm (microVM; builds the guest image when missing),
    /// netns (namespaces) or auto (kvm where a cached probe says this host
    /// boots the guest quickly, else netns; says which and why).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// The microVM's root filesystem: an image name or id from `openclaw
    /// image list`, a path to one, or `initramfs` for the busybox-and-curl
    /// guest [default: the newest image named debian].
    #[arg(long, value_name = "NAME|ID|PATH")]
    image: Option<String>,
    /// How approvals are answered: prompt on the terminal, deny all, or
    /// approve all (for unattended demos). Without a terminal, prompt denies.
    #[arg(long, value_enum, default_value_t = ApproveArg::Prompt)]
    approve: ApproveArg,
    /// How long a held request waits for an answer before it is denied.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    approval_timeout: Duration,
    /// Directory copied into the sandbox as its working directory (/work);
    /// the results are left in the session bundle's work/.
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Send HOST's traffic to ADDR:PORT instead of resolving it (repeatable);
    /// recorded in the session.
    #[arg(long, value_name = "HOST=ADDR:PORT", value_parser = parse_resolve)]
    resolve: Vec<(String, SocketAddr)>,
    /// Extra CA certificate (PEM) trusted for upstream TLS (repeatable).
    #[arg(long, value_name = "CA.pem")]
    upstream_ca: Vec<PathBuf>,
    /// Print the live action stream as NDJSON on stdout instead of lines.
    #[arg(long)]
    json_events: bool,
    /// Task text passed to the command as $OPENCLAW_TASK.
    #[arg(long, value_name = "TASK")]
    agent: Option<String>,
    /// Memory limit of the sandbox.
    #[arg(long, value_name = "MiB", default_value_t = 1024)]
    memory_mib: u64,
    /// Process limit of the sandbox.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pids_max: u64,
    /// Stop the command (and its sandbox or microVM) after this long; exit 124.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Size of the sandbox's /work (netns backend): a file system of this
    /// size on the host disk, past which writes fail with ENOSPC and the
    /// session records `work_full`. 0: no cap (a plain directory; needs no
    /// loop device or mkfs.ext4).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    work_max: u64,
    /// Most output kept in the bundle's console.log; past it a marker line,
    /// and the rest is counted (session.json), not kept.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    console_max: u64,
    /// Distinct refused DNS names receipted one by one; past them, one
    /// signed aggregate receipt per 1024 refusals or 10 s (their count and
    /// the SHA-256 of the names).
    #[arg(long, value_name = "N", default_value_t = Bounds::default().dns_refusal_receipts)]
    dns_refusal_receipts: usize,
    /// Who the session is billed to: a label on the session, its receipts and
    /// its usage ledger rows (`openclaw usage report --by tenant`).
    #[arg(long, value_name = "TENANT", default_value = "local")]
    tenant: String,
    /// Who ran it [default: the invoking user: $SUDO_USER, else $USER].
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Directory of session bundles [default: <home>/sessions]
    /// (`openclaw serve` passes a tenant's `<tenant root>/sessions`).
    #[arg(long, value_name = "DIR")]
    sessions_dir: Option<PathBuf>,
    /// The openclaw home: rates.toml, the usage ledger (ledger.db), images,
    /// and the default keys/ and sessions/ [default: $OPENCLAW_HOME, else
    /// ~/.openclaw; with --sessions-dir alone, that directory's parent].
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// The control store whose LLM tokens/day and USD/day quotas of
    /// `--tenant` each LLM call is held against: past them the call gets a
    /// provider-shaped 429 (`openclaw serve` passes it). A path
    /// (`<home>/control.db`) or the daemon's postgres:// URL; a URL with a
    /// password belongs in OPENCLAW_QUOTA_DB: argv is visible to every user
    /// of the host (the sandbox never sees either).
    #[arg(
        long,
        env = "OPENCLAW_QUOTA_DB",
        hide_env_values = true,
        value_name = "PATH|URL",
        value_parser = QuotaDb::from_arg
    )]
    quota_db: Option<QuotaDb>,
    /// With --tenant and a PostgreSQL --quota-db: how long the session's
    /// lease in the tenant's sessions quota lasts unless renewed (renewed
    /// every sixth of it; at least 3s). Cut off from the database for
    /// about that long, the session is stopped, as on Ctrl-C.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::serve::parse_lease_ttl)]
    lease_ttl: std::time::Duration,
    /// Where the session's usage rows go: a ledger file, or the daemon's
    /// postgres:// URL [default: <home>/ledger.db]. A URL with a password
    /// belongs in OPENCLAW_LEDGER_DB (`openclaw serve --database` passes it
    /// there; the sandbox never sees it).
    #[arg(
        long,
        env = "OPENCLAW_LEDGER_DB",
        hide_env_values = true,
        value_name = "PATH|URL",
        value_parser = LedgerDb::from_arg
    )]
    ledger_db: Option<LedgerDb>,
    /// How long each call to a PostgreSQL --quota-db or --ledger-db may
    /// take, connecting included, before it fails (`openclaw serve` passes
    /// its own): a hung or unreachable database holds no call of the
    /// session longer, and a lease it cannot renew in time stops the
    /// session [default: 5s].
    #[arg(
        long,
        env = crate::tenants::CALL_TIMEOUT_ENV,
        value_name = "DURATION",
        value_parser = crate::tenants::parse_call_timeout
    )]
    database_timeout: Option<std::time::Duration>,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Kvm,
    Netns,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ApproveArg {
    Prompt,
    Deny,
    Auto,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 90s, 2m, 1h)"))
}

/// `1GiB`, `512MiB`, `64M`, `10k`, `4096`: bytes, with binary multiples.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 1GiB, 512MiB, 64M, 4096)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

pub(crate) fn parse_resolve(text: &str) -> Result<(String, SocketAddr), String> {
    let (host, addr) = text
        .split_once('=')
        .ok_or_else(|| "expected HOST=ADDR:PORT, e.g. api.example.com=127.0.0.1:8443".to_owned())?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not ADDR:PORT (e.g. 127.0.0.1:8443)"))?;
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err("empty host before '='".into());
    }
    Ok((host, addr))
}

pub fn execute(mut args: RunArgs) -> Result<ExitCode> {
    args.quota_db = args
        .quota_db
        .map(|db| db.with_timeout(args.database_timeout));
    args.ledger_db = args
        .ledger_db
        .map(|db| db.with_timeout(args.database_timeout));
    // A session of `openclaw serve` ends with its daemon.
    let daemon_started = crate::serve::end_with_daemon()?;
    if args.work_max != 0 && args.work_max < sandbox::MIN_WORK_BYTES {
        bail!(
            "--work-max must be 0 (no cap) or at least {} MiB",
            sandbox::MIN_WORK_BYTES >> 20
        );
    }
    // With a shared database the session counts in its tenant's sessions
    // quota on every host, as a daemon's do (which hold theirs); held until
    // it ends.
    let _lease = if daemon_started {
        None
    } else {
        crate::serve::cli_session_lease(
            args.quota_db.as_ref(),
            &args.tenant,
            crate::serve::LeaseTiming::new(args.lease_ttl),
        )?
    };
    let config = config_from_args(args, daemon_started)?;
    runner::run(config)
}

/// Where a session's files are: the default keys directory, its sessions
/// directory and its home (rates, ledger, images), from `--home` and
/// `--sessions-dir`, with `default_home` ($OPENCLAW_HOME or ~/.openclaw)
/// asked only when needed.
#[derive(Debug, PartialEq, Eq)]
struct Places {
    keys_dir: PathBuf,
    sessions_dir: PathBuf,
    home: PathBuf,
}

fn places(
    home: Option<PathBuf>,
    sessions_dir: Option<PathBuf>,
    default_home: impl FnOnce() -> Result<PathBuf>,
) -> Result<Places> {
    let base = match &home {
        Some(dir) => dir.clone(),
        None => default_home()?,
    };
    // As before --home existed: a sessions directory given alone keeps its
    // parent as the session's home.
    let session_home = match (home, &sessions_dir) {
        (Some(dir), _) => dir,
        (None, Some(sessions)) => choice::home_of(sessions),
        (None, None) => base.clone(),
    };
    Ok(Places {
        keys_dir: base.join("keys"),
        sessions_dir: sessions_dir.unwrap_or_else(|| base.join("sessions")),
        home: session_home,
    })
}

fn config_from_args(args: RunArgs, daemon_started: bool) -> Result<RunConfig> {
    let places = places(args.home, args.sessions_dir, home::home_dir)?;
    let keys_dir = places.keys_dir.clone();
    let pubkey = args.pubkey.unwrap_or_else(|| keys_dir.join(keys::ROOT_PUB));
    let receipt_key = args
        .receipt_key
        .unwrap_or_else(|| keys_dir.join(keys::RECEIPT_KEY));
    if !receipt_key.exists() {
        bail!(
            "no receipt-signing key at {} (run `openclaw keygen`, or pass --receipt-key)",
            receipt_key.display()
        );
    }
    let labels = SessionLabels::new(Some(args.tenant), args.user).map_err(anyhow::Error::msg)?;
    let token_text = std::fs::read_to_string(&args.capabilities)
        .with_context(|| format!("reading {}", args.capabilities.display()))?;
    Ok(RunConfig {
        token_text,
        root_public_key: keys::read_verifying_key(&pubkey)
            .with_context(|| "the capability root public key (--pubkey)")?,
        receipt_key: keys::read_signing_key(&receipt_key)?,
        secrets: args.secrets,
        catalog: args.catalog,
        backend: match args.backend {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Kvm => BackendChoice::Kvm,
            BackendArg::Netns => BackendChoice::Netns,
        },
        image: args.image,
        approve: match args.approve {
            ApproveArg::Prompt => ApproveMode::Prompt,
            ApproveArg::Deny => ApproveMode::Deny,
            ApproveArg::Auto => ApproveMode::Auto,
        },
        approval_timeout: args.approval_timeout,
        workdir: args.workdir,
        resolve: args.resolve,
        upstream_ca: args.upstream_ca,
        json_events: args.json_events,
        task: args.agent,
        memory_bytes: args.memory_mib << 20,
        pids_max: args.pids_max,
        command: args.command,
        sessions_dir: places.sessions_dir,
        home: places.home,
        timeout: args.timeout,
        bounds: Bounds {
            dns_refusal_receipts: args.dns_refusal_receipts,
            work_max_bytes: args.work_max,
            console_max_bytes: args.console_max,
        },
        labels,
        quota_db: args.quota_db,
        ledger_db: args.ledger_db,
        daemon_started,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_is_given_or_the_default_or_the_sessions_directorys_parent() {
        let p = PathBuf::from;
        let default = || Ok(p("/default"));
        let no_default = || -> Result<PathBuf> { anyhow::bail!("not asked") };
        assert_eq!(
            places(None, None, default).expect("places"),
            Places {
                keys_dir: p("/default/keys"),
                sessions_dir: p("/default/sessions"),
                home: p("/default"),
            }
        );
        assert_eq!(
            places(Some(p("/h")), None, no_default).expect("places"),
            Places {
                keys_dir: p("/h/keys"),
                sessions_dir: p("/h/sessions"),
                home: p("/h"),
            }
        );
        // openclaw serve: a tenant's sessions, the daemon's home.
        assert_eq!(
            places(Some(p("/h")), Some(p("/h/tenants/a/sessions")), no_default).expect("places"),
            Places {
                keys_dir: p("/h/keys"),
                sessions_dir: p("/h/tenants/a/sessions"),
                home: p("/h"),
            }
        );
        // --sessions-dir alone: its parent, as before --home.
        assert_eq!(
            places(None, Some(p("/x/sessions")), default).expect("places"),
            Places {
                keys_dir: p("/default/keys"),
                sessions_dir: p("/x/sessions"),
                home: p("/x"),
            }
        );
    }

    #[test]
    fn sizes_parse_with_binary_multiples() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("10k"), Ok(10 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
