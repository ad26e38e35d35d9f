//! `openclaw ui`: serve sessions and reports in a browser.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct UiArgs {}

pub fn execute(_args: UiArgs) -> Result<ExitCode> {
    bail!("`openclaw ui` is not built yet (issue 8)")
}
