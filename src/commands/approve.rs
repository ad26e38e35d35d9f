//! `openclaw approve` / `openclaw deny`: answer a running session's pending
//! approval from a terminal, through the session's control socket.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::bundle;
use crate::control::{self, ControlClientError, ControlRequest, PendingWire};
use crate::home;

/// The approver named in the approval receipt for answers given here.
pub const APPROVER: &str = "terminal:approve-cmd";

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw approve 20261122-101500-3f9a1c        # list what the session waits for
  openclaw approve 20261122-101500-3f9a1c 5      # approve pending approval 5
  openclaw deny ~/.openclaw/sessions/20261122-101500-3f9a1c 5

The answer goes through the session's control socket (<session>/control.sock,
owner-only) and is receipted with the approver \"terminal:approve-cmd\".")]
pub struct AnswerArgs {
    /// Session id (under <home>/sessions) or path to a session directory.
    session: String,
    /// The pending approval's id (shown by the monitor and the web UI);
    /// without it, the pending approvals are listed.
    id: Option<u64>,
}

pub fn execute(args: AnswerArgs, approve: bool) -> Result<ExitCode> {
    let dir = bundle::resolve_dir(&home::sessions_dir()?, &args.session);
    let info =
        bundle::read_info(&dir).with_context(|| format!("{} is not a session", args.session))?;
    if info.status != "running" {
        bail!(
            "session {} is not running (status: {}); nothing to answer",
            info.id,
            info.status
        );
    }
    let pending = match control::call_blocking(&dir, &ControlRequest::Pending) {
        Ok(reply) => serde_json::from_value::<Vec<PendingWire>>(reply["pending"].clone())
            .context("reading the pending list")?,
        Err(ControlClientError::NotRunning(_)) => bail!(
            "session {} is not running: its control socket is gone (the supervisor ended or crashed)",
            info.id
        ),
        Err(err) => return Err(err.into()),
    };
    let Some(id) = args.id else {
        if pending.is_empty() {
            println!("session {}: no pending approvals", info.id);
        }
        for p in &pending {
            println!("{}", describe(p));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let request = ControlRequest::Answer {
        id,
        approve,
        approver: Some(APPROVER.into()),
    };
    match control::call_blocking(&dir, &request) {
        Ok(_) => {
            println!(
                "{} approval {id} of session {}",
                if approve { "approved" } else { "denied" },
                info.id
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(ControlClientError::Refused(reason)) => {
            let ids: Vec<String> = pending.iter().map(|p| p.id.to_string()).collect();
            bail!(
                "approval {id} is not pending in session {} ({reason}); pending now: {}",
                info.id,
                if ids.is_empty() {
                    "none".to_owned()
                } else {
                    ids.join(", ")
                }
            )
        }
        Err(err) => Err(err.into()),
    }
}

/// `5  POST united.com/api/booking/purchase $487.00 · payments above … · 97 s left`
fn describe(p: &PendingWire) -> String {
    let a = &p.action;
    let text = |k: &str| a.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let mut s = format!(
        "{}  {} {}{}",
        p.id,
        text("method"),
        text("host"),
        text("path")
    );
    if let Some(c) = a.get("amount_cents").and_then(|v| v.as_u64()) {
        s.push_str(&format!(" ${}.{:02}", c / 100, c % 100));
    }
    if let Some(r) = a.get("recipients").and_then(|v| v.as_array()) {
        let names: Vec<&str> = r.iter().filter_map(|v| v.as_str()).collect();
        if !names.is_empty() {
            s.push_str(&format!(" to {}", names.join(", ")));
        }
    }
    s.push_str(&format!(
        " · {} · {} s left",
        p.reason,
        p.remaining_ms / 1000
    ));
    s
}
