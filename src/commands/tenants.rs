//! `openclaw tenants`: create, list, rotate and delete the tenants of this
//! openclaw home, and issue the admin token of `openclaw serve`. Tokens are
//! printed once and stored only as SHA-256; each change is an audit line.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::audit::{self, Actor, Via};
use crate::home;
use crate::tenants::{self, Caller, DatabaseUrl, Registry, TenantName};

// `openclaw tenants [--database URL] ...` (plain comments on these two: a
// doc comment would become the subcommand's help text).
#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(flatten)]
    pub database: DatabaseArg,
    #[command(subcommand)]
    pub command: TenantsCommand,
}

// Where tenants and token hashes are kept, for `tenants` and `serve`.
#[derive(Debug, Args)]
pub struct DatabaseArg {
    /// Keep tenants and token hashes in this PostgreSQL database
    /// (postgres://USER@HOST/DB) instead of <home>/control.db, so several
    /// hosts share them. A URL with a password belongs in OPENCLAW_DATABASE:
    /// argv is visible to every user of the host.
    #[arg(
        long,
        global = true,
        env = "OPENCLAW_DATABASE",
        hide_env_values = true,
        value_name = "URL",
        value_parser = DatabaseUrl::from_arg
    )]
    pub database: Option<DatabaseUrl>,
    /// How long each call to the --database server may take, connecting
    /// included, before it fails (and with it the command or request that
    /// needed it: a hung or unreachable server never holds one up for
    /// longer) [default: 5s].
    #[arg(
        long,
        global = true,
        env = tenants::CALL_TIMEOUT_ENV,
        value_name = "DURATION",
        value_parser = tenants::parse_call_timeout
    )]
    pub database_timeout: Option<std::time::Duration>,
}

impl DatabaseArg {
    /// `--database`, its calls bounded by `--database-timeout` when given.
    pub fn url(&self) -> Option<DatabaseUrl> {
        self.database
            .clone()
            .map(|url| url.with_timeout(self.database_timeout))
    }
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant (its directory, keys and token); prints the token once.
    Create(NameArg),
    /// List the tenants.
    List(ListArgs),
    /// Tenant tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Delete a tenant: its token stops working, its directory moves to
    /// <home>/tenants-deleted/. Finishes a delete that was interrupted.
    Delete(NameArg),
    /// Issue a new admin token for `openclaw serve` (replacing any); prints it once.
    AdminToken,
    /// Show a tenant's quotas, or change the ones named (`none`: no limit).
    Quota(QuotaArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw tenants quota acme                       # show them
  openclaw tenants quota acme --sessions 4 --usd-per-day 25
  openclaw tenants quota acme --requests-per-minute none

Quotas not named keep their value. Days are UTC days; tokens are input +
output tokens from the usage ledger. A running `openclaw serve` applies a
change from its next request.")]
pub struct QuotaArgs {
    /// The tenant's name.
    #[arg(value_name = "NAME")]
    name: String,
    /// Sessions running at once.
    #[arg(long, value_name = "N|none", value_parser = parse_limit)]
    sessions: Option<Limit>,
    /// API requests in any 60 s window.
    #[arg(long, value_name = "N|none", value_parser = parse_limit)]
    requests_per_minute: Option<Limit>,
    /// LLM tokens (input + output) per UTC day.
    #[arg(long, value_name = "N|none", value_parser = parse_limit)]
    llm_tokens_per_day: Option<Limit>,
    /// US dollars of LLM calls per UTC day (e.g. 2.50).
    #[arg(long, value_name = "USD|none", value_parser = parse_usd_limit)]
    usd_per_day: Option<Limit>,
    /// Print the quotas as one JSON object (the API's shape).
    #[arg(long)]
    json: bool,
}

/// A quota value from the command line; `None` inside is no limit.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<u64>);

fn parse_limit(text: &str) -> Result<Limit, String> {
    if text == "none" {
        return Ok(Limit(None));
    }
    text.parse()
        .map(|n| Limit(Some(n)))
        .map_err(|_| "expected a whole number or `none`".to_owned())
}

/// Dollars to micro-USD (the ledger's unit).
fn parse_usd_limit(text: &str) -> Result<Limit, String> {
    if text == "none" {
        return Ok(Limit(None));
    }
    let usd: f64 = text
        .parse()
        .map_err(|_| "expected a dollar amount or `none`".to_owned())?;
    tenants::usd_to_micro(usd).map(|m| Limit(Some(m)))
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Replace the tenant's token: the old one is refused at once; prints the new one.
    Rotate(NameArg),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw tenants create acme          # prints tk_acme_<32 hex> once
  openclaw tenants token rotate acme
  openclaw tenants delete acme

A tenant name is 1 to 63 of a-z, 0-9 and '-', starting with a letter or digit.")]
pub struct NameArg {
    /// The tenant's name.
    #[arg(value_name = "NAME")]
    name: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON array on stdout.
    #[arg(long)]
    json: bool,
}

fn caller() -> Caller {
    // The operator at the terminal manages tenants as the admin does.
    Caller {
        actor: Actor::Admin,
        via: Via::Cli,
        request_id: format!("cli-{}", audit::new_request_id()),
        user: None,
    }
}

fn parse_name(text: &str) -> Result<TenantName> {
    TenantName::parse(text).with_context(|| format!("tenant name {text:?}"))
}

pub fn execute(args: TenantsArgs) -> Result<ExitCode> {
    let home = home::home_dir()?;
    let registry = tenants::open_registry(&home, args.database.url().as_ref())?;
    match args.command {
        TenantsCommand::Create(arg) => {
            let name = parse_name(&arg.name)?;
            let token = registry.create(&caller(), &name)?;
            eprintln!(
                "created tenant {name} in {}; its token (shown once, stored only as SHA-256):",
                registry.root(&name).path().display()
            );
            println!("{token}");
        }
        TenantsCommand::List(args) => list(&registry, args.json)?,
        TenantsCommand::Token(TokenCommand::Rotate(arg)) => {
            let name = parse_name(&arg.name)?;
            let token = registry.rotate(&caller(), &name)?;
            eprintln!(
                "rotated the token of {name}; the old one is refused from now on. New token:"
            );
            println!("{token}");
        }
        TenantsCommand::Delete(arg) => {
            let name = parse_name(&arg.name)?;
            // The CLI cannot stop a daemon's sessions: it refuses rather
            // than leave them running under a deleted tenant.
            let running = crate::serve::sessions::running_count(&registry.root(&name));
            if running > 0 {
                anyhow::bail!(
                    "tenant {name} has {running} running session(s): stop them first, or delete it over the API (DELETE /v1/tenants/{name}), which stops them"
                );
            }
            let deleted = registry.delete(&caller(), &name)?;
            println!(
                "deleted tenant {name}{} (its directory and usage are under {}/{})",
                if deleted.resumed {
                    ": completed an interrupted delete"
                } else {
                    ""
                },
                home.display(),
                deleted.archive
            );
        }
        TenantsCommand::AdminToken => {
            let token = registry.new_admin_token(&caller())?;
            eprintln!(
                "new admin token for `openclaw serve` (shown once; any previous one is refused):"
            );
            println!("{token}");
        }
        TenantsCommand::Quota(args) => quota(&registry, args)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn quota(registry: &Registry, args: QuotaArgs) -> Result<()> {
    let name = parse_name(&args.name)?;
    let mut quotas = registry.quotas(&name)?;
    let changes = [
        (args.sessions, &mut quotas.sessions),
        (args.requests_per_minute, &mut quotas.requests_per_minute),
        (args.llm_tokens_per_day, &mut quotas.llm_tokens_per_day),
        (args.usd_per_day, &mut quotas.micro_usd_per_day),
    ];
    let mut changed = false;
    for (given, slot) in changes {
        if let Some(Limit(value)) = given {
            *slot = value;
            changed = true;
        }
    }
    if changed {
        registry.set_quotas(&caller(), &name, &quotas)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&quotas.to_json())?);
        return Ok(());
    }
    let show = |v: Option<u64>| v.map_or("no limit".to_owned(), |n| n.to_string());
    println!(
        "quotas of {name}{}:",
        if changed { " (changed)" } else { "" }
    );
    println!("  sessions              {}", show(quotas.sessions));
    println!(
        "  requests per minute   {}",
        show(quotas.requests_per_minute)
    );
    println!(
        "  LLM tokens per day    {}",
        show(quotas.llm_tokens_per_day)
    );
    println!(
        "  USD per day           {}",
        quotas
            .micro_usd_per_day
            .map_or("no limit".to_owned(), crate::usage::format_usd)
    );
    Ok(())
}

fn list(registry: &Registry, json: bool) -> Result<()> {
    let tenants = registry.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&tenants)?);
        return Ok(());
    }
    if tenants.is_empty() {
        println!("no tenants (create one with `openclaw tenants create NAME`)");
        return Ok(());
    }
    println!("{:<32} {:<22} TOKEN ISSUED", "NAME", "CREATED");
    for t in tenants {
        println!("{:<32} {:<22} {}", t.name, t.created_at, t.token_issued_at);
    }
    Ok(())
}
