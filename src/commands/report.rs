//! `openclaw report`: regenerate (and open) a session's `report.json` and
//! `report.html` from its bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::{bundle, home, keys, report};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw report 20261122-101500-3f9a          # a session id under ~/.openclaw/sessions
  openclaw report ./bundle --key receipt.pub    # a bundle someone sent you
  openclaw report 20261122-101500-3f9a --open   # and open it in a browser

The report's receipt status is checked against the receipt-signing public key
(default: the openclaw home's keys/receipt.pub). For a full audit use
`openclaw verify`.")]
pub struct ReportArgs {
    /// Session id (under <home>/sessions) or path to a session directory.
    session: String,
    /// Receipt-signing public key to check the chain with.
    #[arg(long, value_name = "RECEIPT.pub")]
    key: Option<PathBuf>,
    /// Open report.html with xdg-open afterwards.
    #[arg(long)]
    open: bool,
}

pub fn execute(args: ReportArgs) -> Result<ExitCode> {
    let dir = bundle::resolve_dir(&home::sessions_dir()?, &args.session);
    anyhow::ensure!(
        dir.join(bundle::SESSION_JSON).exists(),
        "{} is not a session directory (no {})",
        dir.display(),
        bundle::SESSION_JSON
    );
    let key_path = match args.key {
        Some(path) => Some(path),
        None => home::keys_dir()
            .ok()
            .map(|d| d.join(keys::RECEIPT_PUB))
            .filter(|p| p.exists()),
    };
    let key = key_path
        .as_deref()
        .map(keys::read_verifying_key)
        .transpose()?;
    let report = report::build(&dir, key.as_ref())?;
    report::write(&dir, &report)?;
    let html = dir.join(bundle::REPORT_HTML);
    let c = &report.counts;
    println!(
        "{}  {} actions: {} allowed, {} blocked, {} approved, {} denied · receipts {}",
        html.display(),
        c.actions,
        c.allowed,
        c.blocked,
        c.approvals.approved,
        c.approvals.denied + c.approvals.expired,
        report.receipts.status
    );
    if args.open {
        std::process::Command::new("xdg-open")
            .arg(&html)
            .status()
            .context("running xdg-open")?;
    }
    Ok(ExitCode::SUCCESS)
}
