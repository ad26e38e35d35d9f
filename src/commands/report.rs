//! `openclaw report`: regenerate a session's HTML report.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct ReportArgs {}

pub fn execute(_args: ReportArgs) -> Result<ExitCode> {
    bail!("`openclaw report` is not built yet (issue 6)")
}
