//! Where openclaw keeps its keys and sessions: `$OPENCLAW_HOME`, else `~/.openclaw`.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// The openclaw home directory (not created here).
pub fn home_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OPENCLAW_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".openclaw")),
        None => bail!("neither OPENCLAW_HOME nor HOME is set; pass the directory explicitly"),
    }
}

/// Default directory for key files.
pub fn keys_dir() -> Result<PathBuf> {
    Ok(home_dir()?.join("keys"))
}

/// Default directory holding one bundle per session.
pub fn sessions_dir() -> Result<PathBuf> {
    Ok(home_dir()?.join("sessions"))
}
