//! The facts a decision is made from (one request's [`Action`], the session's
//! [`Counters`]) and the [`Decision`] itself. Their JSON forms are the
//! documented `ACTION.json` / `COUNTERS.json` / decision formats, and receipts
//! record them verbatim so an auditor can re-run a decision offline.

use serde::{Deserialize, Serialize};

/// What kind of thing a request does, as classified by the proxy's catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionType {
    Web,
    Login,
    Payment,
    Email,
    Llm,
    /// A WebSocket opened (an HTTP/1.1 upgrade, or HTTP/2 extended
    /// CONNECT): its own kind, never covered by a `web` grant, because what
    /// flows after the handshake is not read request by request.
    Websocket,
}

/// One action an agent attempted. Fields that do not apply to a type are absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    #[serde(rename = "type")]
    pub kind: ActionType,
    pub method: String,
    pub host: String,
    #[serde(default = "root_path")]
    pub path: String,
    /// Payment amount in the smallest currency unit (cents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Name (never value) of the credential the request uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Estimated cost of an LLM call in micro-USD, when the catalog can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micro_usd: Option<u64>,
}

impl Action {
    /// A plain request: `kind`, method, host and path, none of the payment,
    /// mail, credential or cost details.
    pub fn request(
        kind: ActionType,
        method: impl Into<String>,
        host: impl Into<String>,
        path: impl Into<String>,
    ) -> Action {
        Action {
            kind,
            method: method.into(),
            host: host.into(),
            path: path.into(),
            amount_cents: None,
            currency: None,
            merchant: None,
            recipients: Vec::new(),
            subject: None,
            credential: None,
            cost_micro_usd: None,
        }
    }
}

fn root_path() -> String {
    "/".to_owned()
}

/// What the session has already done, counted only for forwarded actions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Counters {
    /// Sum of forwarded payments, in cents.
    pub spent_cents: u64,
    /// Number of forwarded emails.
    pub emails_sent: u64,
    /// LLM spend so far, in micro-USD.
    pub llm_spent_micro_usd: u64,
}

/// The three outcomes of authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Block,
    /// Allowed only if a human says yes in time.
    Approval,
}

/// A decision and why, as printed by `openclaw cap check` and recorded in receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub decision: Verdict,
    pub reason: String,
    /// The grant that matched (`web`, `payment`, ...), if any did.
    pub grant: Option<String>,
    /// Revocation ids of the token's blocks, root first.
    pub revocation_ids: Vec<String>,
}
