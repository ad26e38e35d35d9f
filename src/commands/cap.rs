//! `openclaw cap …`: mint, attenuate, inspect and check capability tokens.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum CapCommand {
    /// Mint a token from a policy file.
    Mint,
}

pub fn execute(_cmd: CapCommand) -> Result<ExitCode> {
    bail!("`openclaw cap` is not built yet (issue 2)")
}
