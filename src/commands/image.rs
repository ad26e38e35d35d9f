//! `openclaw image …`: build or locate the microVM guest image.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build (or reuse) the guest kernel and base initramfs.
    Build,
}

pub fn execute(_cmd: ImageCommand) -> Result<ExitCode> {
    bail!("`openclaw image` is not built yet (issue 7)")
}
