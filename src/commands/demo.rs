//! `openclaw demo`: run a built-in scenario offline with its mock services.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct DemoArgs {}

pub fn execute(_args: DemoArgs) -> Result<ExitCode> {
    bail!("`openclaw demo` is not built yet (issue 6)")
}
