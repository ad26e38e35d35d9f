//! `openclaw run`: run a command in a sandbox under a capability token.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct RunArgs {}

pub fn execute(_args: RunArgs) -> Result<ExitCode> {
    bail!("`openclaw run` is not built yet (issue 6)")
}
