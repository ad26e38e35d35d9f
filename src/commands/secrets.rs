//! `openclaw secrets`: a tenant's secrets for `openclaw serve` sessions —
//! set (the value read from stdin, never from the command line), list
//! (names and fields, never values) and remove. Sealed at rest by the
//! credential broker (`src/broker/`); each change is an audit line.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::audit::{self, Actor, Via};
use crate::broker::{SecretFields, TenantSecrets};
use crate::home;
use crate::tenants::{self, Caller, TenantName};

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Store (or replace) a secret of a tenant; the value is read from stdin.
    Set(SetArgs),
    /// List a tenant's secrets: names and fields, never values.
    List(ListArgs),
    /// Remove a secret of a tenant.
    Rm(RmArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  printf %s \"$KEY\" | openclaw secrets set --tenant acme llm_key \\
      --header Authorization --format 'Bearer {}' --host api.openai.com
  openclaw secrets set --tenant acme united_login --placement json:/password < pw.txt

The value is everything on stdin, less one trailing newline. It is stored
encrypted under <home>/keys/secrets.key and never printed, logged or audited.
A session uses it when POST /v1/sessions names it in \"secrets\".")]
pub struct SetArgs {
    /// The tenant.
    #[arg(long, value_name = "TENANT")]
    tenant: String,
    /// The secret's name: a-z, 0-9 and _ (the sandbox sees $NAME upper-cased).
    #[arg(value_name = "NAME")]
    name: String,
    /// Use it only at this host (repeatable; the capability token must grant it too).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Add this header to requests to granted hosts...
    #[arg(long, value_name = "HEADER")]
    header: Option<String>,
    /// ...as this text, {} replaced by the value [default: {}].
    #[arg(long, value_name = "FORMAT", requires = "header")]
    format: Option<String>,
    /// Where else its placeholder may go: header:NAME, json:/pointer,
    /// form:field, query:name (repeatable).
    #[arg(long, value_name = "PLACE")]
    placement: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The tenant.
    #[arg(long, value_name = "TENANT")]
    tenant: String,
    /// One JSON array on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The tenant.
    #[arg(long, value_name = "TENANT")]
    tenant: String,
    /// The secret's name.
    #[arg(value_name = "NAME")]
    name: String,
}

fn caller() -> Caller {
    Caller {
        actor: Actor::Admin,
        via: Via::Cli,
        request_id: format!("cli-{}", audit::new_request_id()),
        user: None,
    }
}

/// The tenant, which must exist in this home.
fn tenant_secrets(text: &str) -> Result<TenantSecrets> {
    let home = home::home_dir()?;
    let name = TenantName::parse(text).with_context(|| format!("--tenant {text:?}"))?;
    // Tenants in PostgreSQL are found there (`openclaw tenants --database`).
    let database = std::env::var("OPENCLAW_DATABASE")
        .ok()
        .filter(|url| !url.is_empty())
        .map(|url| tenants::DatabaseUrl::from_arg(&url).unwrap_or_else(|never| match never {}));
    let registry = tenants::open_registry(&home, database.as_ref())?;
    if registry.store().tenant_token(&name)?.is_none() {
        bail!("no tenant {name} (create it with `openclaw tenants create {name}`)");
    }
    TenantSecrets::open(&home, &name)
}

/// stdin whole, less one trailing newline (`echo` adds one).
fn read_value() -> Result<String> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("type the value, then Ctrl-D (it is shown as typed; prefer a pipe):");
    }
    let mut value = String::new();
    stdin
        .read_to_string(&mut value)
        .context("reading the value from stdin (it must be UTF-8)")?;
    if let Some(v) = value.strip_suffix('\n') {
        let keep = v.strip_suffix('\r').unwrap_or(v).len();
        value.truncate(keep);
    }
    if value.is_empty() {
        bail!("no value on stdin");
    }
    Ok(value)
}

pub fn execute(cmd: SecretsCommand) -> Result<ExitCode> {
    match cmd {
        SecretsCommand::Set(args) => {
            let secrets = tenant_secrets(&args.tenant)?;
            let value = read_value()?;
            let fields = SecretFields {
                hosts: args.hosts,
                header: args.header,
                format: args.format,
                placement: args.placement,
            };
            secrets.set(&caller(), &args.name, &value, &fields)?;
            eprintln!("stored secret {} of tenant {}", args.name, args.tenant);
        }
        SecretsCommand::List(args) => {
            let listed = tenant_secrets(&args.tenant)?.list()?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else if listed.is_empty() {
                println!("no secrets (store one with `openclaw secrets set --tenant T NAME`)");
            } else {
                println!("{:<24} {:<22} FIELDS", "NAME", "UPDATED");
                for s in listed {
                    let mut fields = Vec::new();
                    if !s.fields.hosts.is_empty() {
                        fields.push(format!("hosts={}", s.fields.hosts.join(",")));
                    }
                    if let Some(h) = &s.fields.header {
                        let f = s.fields.format.as_deref().unwrap_or("{}");
                        fields.push(format!("header={h}: {f}"));
                    }
                    if !s.fields.placement.is_empty() {
                        fields.push(format!("placement={}", s.fields.placement.join(",")));
                    }
                    println!("{:<24} {:<22} {}", s.name, s.updated_at, fields.join(" "));
                }
            }
        }
        SecretsCommand::Rm(args) => {
            tenant_secrets(&args.tenant)?.remove(&caller(), &args.name)?;
            eprintln!("removed secret {} of tenant {}", args.name, args.tenant);
        }
    }
    Ok(ExitCode::SUCCESS)
}
