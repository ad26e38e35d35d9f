//! The control socket's protocol: NDJSON over `<dir>/control.sock`, one
//! [`ControlRequest`] per line, each answered `{"ok":true,…}` or
//! `{"ok":false,"error":…}` (with `"not_taken":true` when an answer came
//! after the question was decided); pending approvals travel as
//! [`PendingWire`].
//! Documented in `docs/ui.md`.

use std::time::SystemTime;

use enforce::PendingApproval;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The socket's file name inside the session directory.
pub const CONTROL_SOCK: &str = "control.sock";

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// → `{"ok":true,"session":…,"pid":…}`
    Info,
    /// → `{"ok":true,"pending":[PendingWire…]}`
    Pending,
    /// → `{"ok":true}` (this answer is the one the gate acts on) or
    /// `{"ok":false,"error":…}`, with `"not_taken":true` when the question
    /// was already decided (another answer, the timeout, withdrawn)
    Answer {
        id: u64,
        approve: bool,
        /// Named in the approval receipt; `control` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approver: Option<String>,
    },
    /// → `{"ok":true}`, then `{"pending":[…]}` now and on every change,
    /// `{"event":Event}` per event, `{"lagged":N}` when this reader fell
    /// behind; the stream ends when the session does.
    Subscribe,
    /// → `{"ok":true,"latency":LatencyWire}`: the session's proxied
    /// requests' durations so far (`latency.rs`).
    Latency,
}

/// A pending approval on the wire: the broker's question plus the time left
/// as the supervisor sees it (the page counts down from its own clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingWire {
    pub id: u64,
    /// The action as the catalog classified it (type, method, host, path,
    /// amount_cents, currency, merchant, recipients…).
    pub action: Value,
    /// The query string the request goes upstream with, if any (the
    /// action's path has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub reason: String,
    /// Seq of the decision receipt (its grant is in the report's timeline).
    pub decision_seq: u64,
    pub asked_at: String,
    /// Seconds the gate waits in total.
    pub timeout: u64,
    /// Milliseconds left before the timeout denies it.
    pub remaining_ms: u64,
}

impl PendingWire {
    pub(super) fn from_pending(p: &PendingApproval, now: SystemTime) -> Self {
        let r = &p.request;
        let deadline = humantime::parse_rfc3339(&r.asked_at)
            .map(|t| t + r.timeout)
            .unwrap_or(now);
        PendingWire {
            id: r.id,
            action: serde_json::to_value(&r.action).unwrap_or(Value::Null),
            query: r.query.clone(),
            reason: r.reason.clone(),
            decision_seq: r.decision_seq,
            asked_at: r.asked_at.clone(),
            timeout: r.timeout.as_secs(),
            remaining_ms: deadline
                .duration_since(now)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_documented() {
        let parse = |s: &str| serde_json::from_str::<ControlRequest>(s);
        assert_eq!(
            parse(r#"{"op":"pending"}"#).expect("ok"),
            ControlRequest::Pending
        );
        assert_eq!(
            parse(r#"{"op":"answer","id":4,"approve":false}"#).expect("ok"),
            ControlRequest::Answer {
                id: 4,
                approve: false,
                approver: None
            }
        );
        assert!(parse(r#"{"op":"answer","id":4}"#).is_err());
        assert!(parse(r#"{"op":"shutdown"}"#).is_err());
    }
}
