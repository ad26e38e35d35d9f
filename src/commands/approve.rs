//! `openclaw approve` / `openclaw deny`: answer a running session's pending
//! approval from a terminal, through the session's control socket.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct AnswerArgs {
    /// Session id (under <home>/sessions) or path to a session directory.
    session: String,
    /// The pending approval's id (shown by the monitor and the web UI).
    id: u64,
}

pub fn execute(_args: AnswerArgs, _approve: bool) -> Result<ExitCode> {
    bail!("`openclaw approve`/`deny` are not built yet (issue 8)")
}
