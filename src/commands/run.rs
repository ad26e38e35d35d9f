//! `openclaw run`: run a command (the agent) in a sandbox under a capability
//! token. Parses the command line into a [`RunConfig`] and hands it to the
//! session runner.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::session::config::{ApproveMode, BackendChoice, RunConfig};
use crate::session::runner;
use crate::{home, keys};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw run --capabilities task.cap -- ./agent.sh
  openclaw run --capabilities task.cap --secrets ~/.openclaw/secrets.toml \\
      --agent \"Book a flight to NYC for Tuesday\" -- python3 agent.py
  openclaw run --capabilities task.cap --resolve api.staging.example=127.0.0.1:8443 \\
      --upstream-ca staging-ca.pem --approve deny -- ./agent.sh

The command runs in a sandbox whose only way out is openclaw's proxy: DNS,
HTTP and HTTPS (TLS is terminated and re-encrypted with a per-session CA the
sandbox trusts). Every request is decided against the capability token and
receipted in <home>/sessions/<id>/. Credentials from --secrets never enter
the sandbox: it sees placeholders in environment variables named after each
secret in upper case (united_login -> $UNITED_LOGIN).

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

fn parse_resolve(text: &str) -> Result<(String, SocketAddr), String> {
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

pub fn execute(args: RunArgs) -> Result<ExitCode> {
    let config = config_from_args(args)?;
    runner::run(config)
}

fn config_from_args(args: RunArgs) -> Result<RunConfig> {
    let keys_dir = home::keys_dir()?;
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
        sessions_dir: home::sessions_dir()?,
        timeout: args.timeout,
    })
}
