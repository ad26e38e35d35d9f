//! `openclaw serve`: run the control plane's HTTP API until SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::tenants::DatabaseArg;
use crate::home;
use crate::serve::{self, ServeConfig};
use crate::tenants::QuotaDb;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw tenants admin-token          # once: the admin token, printed once
  openclaw tenants create acme          # a tenant and its token
  openclaw serve --addr 127.0.0.1:8787
  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8787/v1/sessions

Serves the API described at /openapi.json (docs/control-plane.md). Tenants,
token hashes: <home>/control.db, or the PostgreSQL database of --database /
OPENCLAW_DATABASE; audit: <home>/audit.jsonl; a tenant's
sessions: <home>/tenants/<name>/sessions. SIGTERM stops accepting, lets
requests in flight finish and exits 0.")]
pub struct ServeArgs {
    /// Address to listen on (plain HTTP: put TLS in front for anything but loopback).
    #[arg(long, default_value = "127.0.0.1:8787")]
    addr: SocketAddr,
    #[command(flatten)]
    database: DatabaseArg,
    /// Every session's traffic for HOST goes to ADDR:PORT instead of being
    /// resolved (repeatable; `openclaw run --resolve`): a staging or test
    /// upstream. The operator's setting, never a tenant's.
    #[arg(long, value_name = "HOST=ADDR:PORT", value_parser = super::run::parse_resolve)]
    resolve: Vec<(String, SocketAddr)>,
    /// Extra CA certificate (PEM) every session trusts for upstream TLS
    /// (repeatable; `openclaw run --upstream-ca`).
    #[arg(long, value_name = "CA.pem")]
    upstream_ca: Vec<std::path::PathBuf>,
    /// A reverse proxy's network (repeatable, e.g. 10.0.0.5/32): from a peer
    /// inside one, --identity-header names the user acting inside the
    /// bearer token's tenant; from any other peer that header is ignored.
    #[arg(long, value_name = "CIDR")]
    trusted_proxy: Vec<ipnet::IpNet>,
    /// The header a trusted proxy puts the authenticated user in (e.g.
    /// X-Remote-User); needs --trusted-proxy.
    #[arg(long, value_name = "NAME")]
    identity_header: Option<String>,
    /// With --database: how long a session's lease lasts unless renewed
    /// (renewed every sixth of it; at least 3s). A daemon that cannot reach
    /// the database to renew a lease stops its session before it lapses.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = serve::parse_lease_ttl)]
    lease_ttl: std::time::Duration,
}

pub fn execute(args: ServeArgs) -> Result<ExitCode> {
    let home = home::home_dir()?;
    let identity = serve::TrustedProxies::new(args.trusted_proxy, args.identity_header)
        .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Day quotas live beside the tenants: in control.db, or in the shared
    // database so every daemon on it holds LLM calls against the same figures.
    // Its calls bounded by --database-timeout, which its sessions are given.
    let database = args.database.url();
    let quota_db = Some(match &database {
        None => QuotaDb::Sqlite(home.join(crate::tenants::CONTROL_DB)),
        Some(url) => QuotaDb::Postgres(url.clone()),
    });
    // Every daemon on the database writes its sessions' usage to one ledger there.
    let ledger_db = database.clone().map(crate::usage::LedgerDb::Postgres);
    runtime.block_on(serve::run(ServeConfig {
        home,
        addr: args.addr,
        database,
        sessions: serve::SessionDefaults {
            resolve: args.resolve,
            upstream_ca: args.upstream_ca,
            quota_db,
            ledger_db,
        },
        identity,
        leases: serve::LeaseTiming::new(args.lease_ttl),
    }))?;
    Ok(ExitCode::SUCCESS)
}
