//! `openclaw audit`: the control plane's audit log (`<home>/audit.jsonl`, or
//! with `--database` the database's `audit` table: every host's lines),
//! filtered by tenant and time, printed as JSON lines.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use super::tenants::DatabaseArg;
use crate::audit::{self, AuditFilter, AuditLog};
use crate::home;
use crate::tenants::{PgStore, TenantName};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw audit
  openclaw audit --tenant acme --since 1h
  openclaw audit --since 2026-12-01T00:00:00Z | jq .action
  OPENCLAW_DATABASE=postgres://… openclaw audit   # every host's lines

One JSON object per line: time, actor (admin, tenant, user), via (cli, api),
tenant, action, target, request_id, outcome (ok, refused, failed), detail.")]
pub struct AuditArgs {
    /// Only lines about this tenant.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// Only lines at or after this: an RFC 3339 time or a duration back from now (1h, 30m, 2d).
    #[arg(long, value_name = "TIME|DURATION")]
    since: Option<String>,
    // --database: the lines of every host, from the database's `audit` table.
    #[command(flatten)]
    database: DatabaseArg,
}

pub fn execute(args: AuditArgs) -> Result<ExitCode> {
    let home = home::home_dir()?;
    let tenant = args
        .tenant
        .as_deref()
        .map(TenantName::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    let since = args
        .since
        .as_deref()
        .map(|s| audit::parse_since(s, std::time::SystemTime::now()))
        .transpose()?;
    let filter = AuditFilter {
        tenant: tenant.map(|t| t.to_string()),
        since,
    };
    let mut log = AuditLog::at_home(&home);
    if let Some(url) = &args.database.url() {
        log = log.also_into(Arc::new(PgStore::open(url)?));
    }
    for record in log.read(&filter)? {
        println!("{}", serde_json::to_string(&record)?);
    }
    Ok(ExitCode::SUCCESS)
}
