//! `openclaw`: run an AI agent in a sandbox whose only way out is a
//! capability-checking, receipt-writing egress proxy.
//!
//! This file parses the command line, starts logging and dispatches to
//! `commands/`, each a thin adapter over the library crates.
#![forbid(unsafe_code)]

/// Replacing a file whole: beside, synced, renamed over, directory synced.
mod atomic_file;
/// The control plane's audit log: `<home>/audit.jsonl`.
mod audit;
/// The credential broker: tenant secrets sealed at rest, resolved per session.
mod broker;
/// A session bundle on disk: its files, `session.json`, `events.jsonl`.
mod bundle;
/// One thin adapter per subcommand.
mod commands;
/// A running session's control socket: protocol, server, client.
mod control;
/// Built-in offline scenarios with their mock services.
mod demo;
/// Where openclaw keeps keys and sessions.
mod home;
/// Key files: ed25519 keys as PEM.
mod keys;
/// Session reports: `report.json` and the self-contained HTML page.
mod report;
/// `openclaw serve`: the control plane's HTTP API.
mod serve;
/// One agent session, from its configuration to the report.
mod session;
/// Tenants: names, directories, hashed tokens, the store.
mod tenants;
/// `openclaw ui`: the web UI.
mod ui;
/// LLM usage across sessions: the ledger, its rebuild, reports.
mod usage;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc: the proxy allocates and frees small buffers on every request
/// from several threads at once; glibc's malloc costs ~20 % more CPU per
/// enforced request there (benches/enforce.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run an AI agent inside a sandbox whose only way out is an egress proxy
/// that checks every request against a capability token and signs a receipt
/// for every decision.
#[derive(Debug, Parser)]
#[command(name = "openclaw", version, propagate_version = true)]
#[command(after_help = "Getting started:
  openclaw keygen                       # create the root and receipt keys in ~/.openclaw
  openclaw cap mint policy.toml --key ~/.openclaw/keys/root.key -o task.cap
  openclaw run --capabilities task.cap -- ./agent.sh
  openclaw verify ~/.openclaw/sessions/<id>
  openclaw usage report --by tenant     # LLM tokens and cost across sessions

Or try the offline demo:  openclaw demo flight-booking")]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command (the agent) in a sandbox under a capability token.
    Run(Box<commands::run::RunArgs>),
    /// Mint, attenuate, inspect and check capability tokens.
    #[command(subcommand)]
    Cap(commands::cap::CapCommand),
    /// Verify a session's receipt chain offline.
    Verify(commands::verify::VerifyArgs),
    /// Approve a running session's pending action.
    Approve(commands::approve::AnswerArgs),
    /// Deny a running session's pending action.
    Deny(commands::approve::AnswerArgs),
    /// Regenerate (and open) a session's HTML report.
    Report(commands::report::ReportArgs),
    /// Create the capability root key pair and the receipt-signing key pair.
    Keygen(commands::keygen::KeygenArgs),
    /// Run a built-in scenario offline, with its own mock services.
    Demo(commands::demo::DemoArgs),
    /// Serve the sessions list, live sessions and reports in a browser.
    Ui(commands::ui::UiArgs),
    /// Clean up after supervisors that died and close their sessions as interrupted.
    Recover(commands::recover::RecoverArgs),
    /// Whether this host can run sessions (KVM, namespaces, cgroups, images, storage).
    Doctor(commands::doctor::DoctorArgs),
    /// Build or locate the microVM guest image (kernel and initramfs).
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// LLM usage across sessions: reports (table, CSV, JSON) and the ledger's rebuild.
    #[command(subcommand)]
    Usage(commands::usage::UsageCommand),
    /// Serve the control plane's HTTP API for many tenants.
    Serve(commands::serve::ServeArgs),
    /// Create, list, rotate and delete tenants; issue the admin token.
    Tenants(commands::tenants::TenantsArgs),
    /// Read the control plane's audit log.
    Audit(commands::audit::AuditArgs),
    /// Set, list and remove a tenant's secrets (sealed at rest).
    #[command(subcommand)]
    Secrets(commands::secrets::SecretsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match main_exec(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line, with the cause chain: "error: reading x.cap: No such file or directory".
            eprintln!("error: {err:#}");
            ExitCode::from(commands::EXIT_FAILURE)
        }
    }
}

fn main_exec(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => commands::run::execute(*args),
        Command::Cap(cmd) => commands::cap::execute(cmd),
        Command::Verify(args) => commands::verify::execute(args),
        Command::Approve(args) => commands::approve::execute(args, true),
        Command::Deny(args) => commands::approve::execute(args, false),
        Command::Report(args) => commands::report::execute(args),
        Command::Keygen(args) => commands::keygen::execute(args),
        Command::Demo(args) => commands::demo::execute(args),
        Command::Ui(args) => commands::ui::execute(args),
        Command::Image(cmd) => commands::image::execute(cmd),
        Command::Recover(args) => commands::recover::execute(args),
        Command::Doctor(args) => commands::doctor::execute(args),
        Command::Usage(cmd) => commands::usage::execute(cmd),
        Command::Serve(args) => commands::serve::execute(args),
        Command::Tenants(cmd) => commands::tenants::execute(cmd),
        Command::Audit(args) => commands::audit::execute(args),
        Command::Secrets(cmd) => commands::secrets::execute(cmd),
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
