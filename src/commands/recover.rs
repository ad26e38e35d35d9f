//! `openclaw recover`: clean up after supervisors that died (SIGKILL, the
//! OOM killer, a crash) and close their sessions as interrupted; a thin
//! adapter over `session::recovery`, which `openclaw run` also calls at its
//! start.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::session::recovery::{self, ChainOutcome};
use crate::{home, keys};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw recover                              # the default home ($OPENCLAW_HOME or ~/.openclaw)
  openclaw recover --home /srv/openclaw

Every `openclaw run` does this first; run it yourself after a crash to clean
up at once. For each session still marked running whose supervisor process
is gone (the same pid, start time and boot are checked, so a reused pid is
never taken for it), recovery:
  - kills whatever is left of its sandbox and removes its cgroups, network
    namespace (with its taps) and staging directory;
  - closes its receipt chain with a signed session_end that says
    \"interrupted (supervisor died) at seq N\" and when it was recovered,
    signed only with the chain's own receipt key (a chain signed by another
    key is left open and named here);
  - marks session.json `supervisor_died` and regenerates the report.
Sessions whose supervisor still runs are not touched. `openclaw verify`
accepts a chain closed this way (exit 0) and says it was interrupted; a
chain cut without any end stays invalid.

A session whose end <home>/chain-heads.jsonl records (its supervisor wrote
it when the chain ended) is never closed again: an open chain there means
the bundle was cut after the session ended. Recovery refuses it, writes
nothing for it, names it, and exits 1.

Exit status: 0 done (also when a chain had to be left open: see the
output), 1 recovery itself failed or refused a session that had ended.
Needs root (cgroups, namespaces).")]
pub struct RecoverArgs {
    /// openclaw home holding keys/ and sessions/ [default: $OPENCLAW_HOME or ~/.openclaw].
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Receipt-signing private key that closes the chains [default: <home>/keys/receipt.key].
    #[arg(long, value_name = "RECEIPT.key")]
    receipt_key: Option<PathBuf>,
}

pub fn execute(args: RecoverArgs) -> Result<ExitCode> {
    let home = match args.home {
        Some(dir) => dir,
        None => home::home_dir()?,
    };
    let key_path = args
        .receipt_key
        .unwrap_or_else(|| home.join("keys").join(keys::RECEIPT_KEY));
    // Without the key the host is still cleaned up; chains stay open.
    let key = if key_path.exists() {
        Some(keys::read_signing_key(&key_path)?)
    } else {
        eprintln!(
            "warning: no receipt key at {}: chains of dead sessions stay open",
            key_path.display()
        );
        None
    };
    let done = recovery::recover(&home.join("sessions"), &home, key.as_ref())?;
    for name in &done.sandboxes {
        println!("removed sandbox {name}");
    }
    for name in &done.networks {
        println!("removed network namespace {name}");
    }
    let mut refused = false;
    for session in &done.sessions {
        match session.chain {
            ChainOutcome::Refused(_) => {
                refused = true;
                eprintln!("✕ {session}");
            }
            ChainOutcome::LeftOpen(_) => println!("! {session}"),
            _ => println!("✓ {session}"),
        }
    }
    if done.sandboxes.is_empty() && done.networks.is_empty() && done.sessions.is_empty() {
        println!("nothing to recover");
    }
    Ok(if refused {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
