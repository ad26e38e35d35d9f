//! `openclaw usage`: LLM usage across sessions from the ledger
//! (`<home>/ledger.db`): `report` sums it, `rebuild` recreates it from the
//! sessions' receipt chains.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::tenants::DatabaseArg;
use crate::tenants::DELETED_DIR;
use crate::usage::report::{self, GroupKey};
use crate::usage::{self, LedgerDb};
use crate::{home, keys};

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Sum metered LLM calls by tenant, user, session, model or day.
    Report(ReportArgs),
    /// Recreate the ledger from every session's receipt chain.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw usage report                                  # this month, by day, tenant and model
  openclaw usage report --by tenant --period last-month
  openclaw usage report --by user,model --tenant acme --period 2026-03
  openclaw usage report --period 2026-03-01..2026-03-15 --csv > march.csv
  openclaw usage report --by session --period today --json

Every metered LLM call is one ledger row: written when its session ends, from
the session's verified receipt chain (the chain is the record; the ledger is
an index of it, see `openclaw usage rebuild`). Days are UTC.

Columns:
  date, tenant, user, session, model   the group (those chosen with --by)
  calls               metered calls
  tokens_in           every input token: uncached + cache reads + cache writes
  tokens_cached_in    of tokens_in, read from the provider's prompt cache
  tokens_cache_write  of tokens_in, written to the cache (5-minute and 1-hour)
  tokens_out          output tokens, reasoning included
  tokens_reasoning    of tokens_out, reasoning
  cost_usd            exact, at the prices recorded with each call (a later
                      rate card change does not change it)
  estimated_calls     calls whose provider reported no usage (stream cut):
                      charged their reservation
--csv always groups by date, tenant and model (plus --by), for finance.")]
pub struct ReportArgs {
    /// Group by these (comma-separated): tenant, user, session, model, day.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [GroupKey::Day, GroupKey::Tenant, GroupKey::Model])]
    by: Vec<GroupKey>,
    /// today, yesterday, current-month, last-month, YYYY-MM, YYYY-MM-DD or
    /// FROM..TO (days, inclusive; UTC).
    #[arg(long, value_name = "PERIOD", default_value = "current-month")]
    period: String,
    /// Only this tenant's calls.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// CSV (RFC 4180) on stdout.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// The ledger [default: <home>/ledger.db].
    #[arg(long, value_name = "LEDGER.db", conflicts_with = "database")]
    ledger: Option<PathBuf>,
    #[command(flatten)]
    database: DatabaseArg,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw usage rebuild
  openclaw usage rebuild --key receipt.pub --key old-receipt.pub --sessions /srv/openclaw/sessions

Reads every <sessions>/<id>/receipts.jsonl (without --sessions: the home's
sessions, every tenant's, <home>/tenants/<name>/sessions, and every deleted
tenant's, <home>/tenants-deleted/<name>-<ns>/sessions, whose rows keep the
label tenants-deleted/<name>-<ns>; each tenant's chains checked against its own
keys/receipt.pub), verifies the chain against the
receipt-signing public key, and writes one ledger row per usage receipt into a
new ledger that replaces the old one when complete. A chain that does not
verify, or whose session has not ended (still running, or its supervisor died:
run `openclaw recover` first), is left out and listed; the exit status is then
1. Run it after the ledger was lost or damaged: the result is the same
whenever it runs.")]
pub struct RebuildArgs {
    /// Receipt-signing public key (repeatable: each chain is checked against
    /// the one that signed it) [default: <home>/keys/receipt.pub, and the
    /// demo's <home>/demo/flight-booking/keys/receipt.pub if present].
    #[arg(long, value_name = "RECEIPT.pub")]
    key: Vec<PathBuf>,
    /// Directory of session bundles [default: <home>/sessions, each
    /// tenant's <home>/tenants/<name>/sessions and each deleted tenant's
    /// <home>/tenants-deleted/<name>-<ns>/sessions].
    #[arg(long, value_name = "DIR")]
    sessions: Option<PathBuf>,
    /// The ledger [default: <home>/ledger.db].
    #[arg(long, value_name = "LEDGER.db", conflicts_with = "database")]
    ledger: Option<PathBuf>,
    #[command(flatten)]
    database: DatabaseArg,
}

pub fn execute(cmd: UsageCommand) -> Result<ExitCode> {
    match cmd {
        UsageCommand::Report(args) => report_cmd(args),
        UsageCommand::Rebuild(args) => rebuild_cmd(args),
    }
}

/// Each tenant's sessions under `tenants_dir` with its receipt key; a tenant
/// without one has nothing that could verify. With `archived`, the
/// directory holds deleted tenants (`<home>/tenants-deleted/<name>-<ns>`),
/// whose rows keep the label their deletion gave them.
fn tenant_sources(tenants_dir: &Path, archived: bool) -> Result<Vec<usage::ChainSource>> {
    let entries = match std::fs::read_dir(tenants_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", tenants_dir.display())),
    };
    let mut sources = Vec::new();
    for root in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let key = root.join("keys").join(keys::RECEIPT_PUB);
        let tenant_label = match (archived, root.file_name().and_then(|n| n.to_str())) {
            (false, _) => None,
            (true, Some(name)) => Some(format!("{DELETED_DIR}/{name}")),
            // Not a name the deletion made: nothing of ours.
            (true, None) => continue,
        };
        if key.is_file() {
            sources.push(usage::ChainSource {
                sessions_dir: root.join("sessions"),
                keys: vec![keys::read_verifying_key(&key)
                    .with_context(|| format!("the tenant's receipt key {}", key.display()))?],
                tenant_label,
            });
        }
    }
    sources.sort_by(|a, b| a.sessions_dir.cmp(&b.sessions_dir));
    Ok(sources)
}

/// `--database`'s ledger, else `--ledger`'s file, else the home's.
fn ledger_or_default(path: Option<PathBuf>, database: DatabaseArg) -> Result<LedgerDb> {
    Ok(match (database.url(), path) {
        (Some(url), _) => LedgerDb::Postgres(url),
        (None, Some(p)) => LedgerDb::Sqlite(p),
        (None, None) => LedgerDb::Sqlite(usage::ledger_path(&home::home_dir()?)),
    })
}

fn report_cmd(args: ReportArgs) -> Result<ExitCode> {
    let at = ledger_or_default(args.ledger, args.database)?;
    let ledger = at.open_for_reading()?.with_context(|| {
        format!(
            "no usage ledger at {at} yet: it is written when a session with metered LLM calls ends (or by `openclaw usage rebuild`)"
        )
    })?;
    let period = report::parse_period(&args.period, &report::today())?;
    let mut by = args.by;
    if args.csv {
        by.extend([GroupKey::Day, GroupKey::Tenant, GroupKey::Model]);
    }
    let found = report::query(ledger.as_ref(), &period, args.tenant.as_deref(), &by)?;
    if args.csv {
        print!("{}", report::to_csv(&found));
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        print!("{}", report::to_table(&found));
    }
    Ok(ExitCode::SUCCESS)
}

fn rebuild_cmd(args: RebuildArgs) -> Result<ExitCode> {
    let read = |p: &PathBuf| {
        keys::read_verifying_key(p)
            .with_context(|| format!("the receipt-signing public key (--key) {}", p.display()))
    };
    let pinned = if args.key.is_empty() {
        // The defaults that exist: a daemon's home may have none of its own.
        let home = home::home_dir()?;
        let demo = home
            .join("demo/flight-booking/keys")
            .join(keys::RECEIPT_PUB);
        [home::keys_dir()?.join(keys::RECEIPT_PUB), demo]
            .iter()
            .filter(|p| p.exists())
            .map(read)
            .collect::<Result<Vec<_>>>()?
    } else {
        args.key.iter().map(read).collect::<Result<Vec<_>>>()?
    };
    let mut sources = vec![usage::ChainSource {
        sessions_dir: match &args.sessions {
            Some(p) => p.clone(),
            None => home::sessions_dir()?,
        },
        keys: pinned,
        tenant_label: None,
    }];
    if args.sessions.is_none() {
        // The home's whole layout: each tenant's sessions (`openclaw serve`)
        // with that tenant's own receipt key, and each deleted tenant's.
        let home = home::home_dir()?;
        sources.extend(tenant_sources(&home.join("tenants"), false)?);
        sources.extend(tenant_sources(&home.join(DELETED_DIR), true)?);
    }
    let ledger = ledger_or_default(args.ledger, args.database)?;
    let done = usage::rebuild_into(&ledger, &sources)?;
    println!(
        "rebuilt {ledger}: {} usage row(s) from {} session(s)",
        done.rows, done.sessions
    );
    for (dir, why) in &done.skipped {
        println!("  skipped {}: {why}", dir.display());
    }
    Ok(if done.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILURE)
    })
}
