//! `openclaw keygen`: create the capability root key pair and the
//! receipt-signing key pair.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::{home, keys};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw keygen                 # writes ~/.openclaw/keys/{root,receipt}.{key,pub}
  openclaw keygen --dir ./keys    # somewhere else
  openclaw keygen --force         # replace existing keys (old tokens stop verifying!)

root.key mints capability tokens; give root.pub to whoever checks them.
receipt.key signs receipts; give receipt.pub to auditors for `openclaw verify --key`.
Private keys are written with mode 0600.")]
pub struct KeygenArgs {
    /// Directory for the key files [default: $OPENCLAW_HOME/keys or ~/.openclaw/keys].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

pub fn execute(args: KeygenArgs) -> Result<ExitCode> {
    let dir = match args.dir {
        Some(dir) => dir,
        None => home::keys_dir()?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if !args.force {
        // Check all four first so a refusal leaves nothing half-written.
        for name in [
            keys::ROOT_KEY,
            keys::ROOT_PUB,
            keys::RECEIPT_KEY,
            keys::RECEIPT_PUB,
        ] {
            let path = dir.join(name);
            anyhow::ensure!(
                !path.exists(),
                "{} already exists (use --force to replace it)",
                path.display()
            );
        }
    }
    for (key_name, pub_name, what) in [
        (keys::ROOT_KEY, keys::ROOT_PUB, "capability root"),
        (keys::RECEIPT_KEY, keys::RECEIPT_PUB, "receipt signing"),
    ] {
        let key = keys::generate();
        keys::write_signing_key(&dir.join(key_name), &key, args.force)?;
        keys::write_verifying_key(&dir.join(pub_name), &key.verifying_key(), args.force)?;
        println!(
            "{what:16} {}  (public: {})",
            dir.join(key_name).display(),
            dir.join(pub_name).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
