//! One audit line: `{"time", "actor", "via", "tenant", "user"?, "action",
//! "target", "request_id", "outcome", "detail"}`. Field values come from validated
//! names and fixed strings; a token or a secret has no field to go in.

use serde::{Deserialize, Serialize};

/// Who asked for the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The admin token, or the operator at the terminal (root on the host).
    Admin,
    /// A tenant's token (its name is in `tenant`).
    Tenant,
    /// A user inside a tenant, named by a trusted proxy (`user`); the
    /// tenant is still the bearer token's.
    User,
}

/// Where the request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Cli,
    Api,
    /// The browser UI `openclaw serve` serves (`/ui/`).
    Ui,
}

/// How the change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Not done: the request was wrong (the tenant exists, no such tenant).
    Refused,
    /// Not done, or not entirely: something broke (storage, disk).
    Failed,
}

/// One line of `audit.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC, milliseconds.
    pub time: String,
    pub actor: Actor,
    pub via: Via,
    /// The tenant the change concerns (for `tenant.*` actions, the one created,
    /// rotated or deleted); `null` for admin-wide changes.
    pub tenant: Option<String>,
    /// With actor `user`: the name the trusted proxy gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `tenant.create`, `tenant.delete`, `tenant.token.rotate`, `admin.token.set`.
    pub action: String,
    /// What the action was applied to (a tenant name, `admin`).
    pub target: String,
    pub request_id: String,
    pub outcome: Outcome,
    /// Why a change was refused or failed (never input echoed back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditRecord {
    /// A record stamped now.
    pub fn now(actor: Actor, via: Via, action: &str, target: &str, request_id: &str) -> Self {
        AuditRecord {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            actor,
            via,
            tenant: None,
            user: None,
            action: action.to_owned(),
            target: target.to_owned(),
            request_id: request_id.to_owned(),
            outcome: Outcome::Ok,
            detail: None,
        }
    }
}
