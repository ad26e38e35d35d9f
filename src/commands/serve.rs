//! `openclaw serve`: run the control plane's HTTP API until SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::tenants::DatabaseArg;
use crate::home;
use crate::serve::{self, ServeConfig};

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
}

pub fn execute(args: ServeArgs) -> Result<ExitCode> {
    let home = home::home_dir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve::run(ServeConfig {
        home,
        addr: args.addr,
        database: args.database.database,
    }))?;
    Ok(ExitCode::SUCCESS)
}
