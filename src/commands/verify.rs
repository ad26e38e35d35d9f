//! `openclaw verify`: verify a session's receipt chain offline.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct VerifyArgs {}

pub fn execute(_args: VerifyArgs) -> Result<ExitCode> {
    bail!("`openclaw verify` is not built yet (issue 3)")
}
