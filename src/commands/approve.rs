//! `openclaw approve` / `openclaw deny`: answer a running session's pending
//! approval from a terminal, through the session's control socket.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::bundle;
use crate::control::{self, ControlClientError, ControlRequest, PendingWire};
use crate::home;
use crate::session::screen::visible_inline;

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
        Err(ControlClientError::NotTaken(reason)) => bail!("{reason}"),
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

/// Longest agent-supplied value shown (the rest is counted), as in the
/// approval prompt.
const MAX_FACT_CHARS: usize = 200;

/// `5  POST united.com/api/booking/purchase $487.00 · payments above … · 97 s left`
///
/// Printed on the operator's terminal: every value from the agent's request
/// is made visible (escapes, bidi controls) and bounded, as the approval
/// prompt shows it.
fn describe(p: &PendingWire) -> String {
    let a = &p.action;
    let v = |text: &str| visible_inline(text, MAX_FACT_CHARS);
    let text = |k: &str| v(a.get(k).and_then(|v| v.as_str()).unwrap_or_default());
    let mut s = format!(
        "{}  {} {}{}",
        p.id,
        text("method"),
        text("host"),
        text("path")
    );
    if let Some(q) = &p.query {
        s.push('?');
        s.push_str(&v(q));
    }
    if let Some(c) = a.get("amount_cents").and_then(|v| v.as_u64()) {
        s.push_str(&format!(" ${}.{:02}", c / 100, c % 100));
    }
    if let Some(r) = a.get("recipients").and_then(|v| v.as_array()) {
        let names: Vec<String> = r.iter().filter_map(|x| x.as_str()).map(v).collect();
        if !names.is_empty() {
            s.push_str(&format!(" to {}", names.join(", ")));
        }
    }
    s.push_str(&format!(
        " · {} · {} s left",
        v(&p.reason),
        p.remaining_ms / 1000
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listing is printed on the operator's terminal: what the agent
    /// wrote (recipients, subject-like text in the path, the query) must
    /// not move the cursor, recolour or reorder it, nor run off the screen.
    #[test]
    fn the_listing_shows_the_agents_text_visible_and_bounded() {
        let p = PendingWire {
            id: 7,
            action: serde_json::json!({
                "type": "email", "method": "POST", "host": "api.mail.example",
                "path": "/v1/send",
                "recipients": ["a@x.com\u{1b}[2K\r", "b@y.com\u{202e}moc.live@"],
            }),
            query: Some(format!("q={}", "d".repeat(500))),
            reason: "every email needs approval".into(),
            decision_seq: 3,
            asked_at: "2026-12-06T15:00:00Z".into(),
            timeout: 120,
            remaining_ms: 97_000,
        };
        let line = describe(&p);
        assert!(
            !line.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{line:?}"
        );
        assert!(line.contains("a@x.com\\x1b[2K\\x0d"), "{line}");
        assert!(
            line.contains("POST api.mail.example/v1/send?q=ddd"),
            "{line}"
        );
        assert!(line.contains("more characters"), "{line}");
        assert!(
            line.ends_with("every email needs approval · 97 s left"),
            "{line}"
        );
    }
}
