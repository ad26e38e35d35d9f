//! The audit line of a session's end, written by the supervisor that ran
//! it (`openclaw run`, also when `openclaw serve` started it), next to the
//! `session.create` line of its start.

use super::{new_request_id, Actor, AuditRecord, Outcome, Via};

/// What a session's end line says.
pub struct SessionEnd<'a> {
    pub id: &'a str,
    pub tenant: &'a str,
    /// `Api` when `openclaw serve` started the session (its tenant's
    /// request), `Cli` when the operator ran it.
    pub via: Via,
    /// `session.json`'s final status: `completed`, `interrupted`,
    /// `timed_out`, `work_full` or `failed`.
    pub status: &'a str,
    /// Receipts in the chain and its last hash, when the chain was read.
    pub receipts: Option<u64>,
    pub chain_head: Option<&'a str>,
}

impl SessionEnd<'_> {
    /// `session.end` on the session's id: outcome `ok` unless the session
    /// failed (`failed`, `work_full`); the detail names the status, the
    /// receipt count and the chain head (hashes and counts only).
    pub fn record(&self) -> AuditRecord {
        let actor = match self.via {
            Via::Cli => Actor::Admin,
            Via::Api | Via::Ui => Actor::Tenant,
        };
        // No request asked for the end: a fresh id, `cli-` as the
        // terminal's commands have theirs.
        let request_id = match self.via {
            Via::Cli => format!("cli-{}", new_request_id()),
            Via::Api | Via::Ui => new_request_id(),
        };
        let mut record = AuditRecord::now(actor, self.via, "session.end", self.id, &request_id);
        record.tenant = Some(self.tenant.to_owned());
        record.outcome = match self.status {
            "failed" | "work_full" => Outcome::Failed,
            _ => Outcome::Ok,
        };
        let mut detail = self.status.to_owned();
        match self.receipts {
            Some(n) => detail.push_str(&format!("; {n} receipts")),
            None => detail.push_str("; receipts not read"),
        }
        if let Some(head) = self.chain_head {
            detail.push_str(&format!("; chain head {head}"));
        }
        record.detail = Some(detail);
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_line_names_status_receipts_and_head() {
        let end = SessionEnd {
            id: "20261206-220000-abcdef",
            tenant: "acme",
            via: Via::Api,
            status: "interrupted",
            receipts: Some(4),
            chain_head: Some("c8ef72"),
        };
        let record = end.record();
        assert_eq!(record.action, "session.end");
        assert_eq!(record.target, "20261206-220000-abcdef");
        assert_eq!(record.actor, Actor::Tenant);
        assert_eq!(record.tenant.as_deref(), Some("acme"));
        assert_eq!(record.outcome, Outcome::Ok);
        assert_eq!(
            record.detail.as_deref(),
            Some("interrupted; 4 receipts; chain head c8ef72")
        );
        let failed = SessionEnd {
            status: "failed",
            via: Via::Cli,
            receipts: None,
            chain_head: None,
            ..end
        }
        .record();
        assert_eq!(failed.outcome, Outcome::Failed);
        assert_eq!(failed.actor, Actor::Admin);
        assert_eq!(failed.detail.as_deref(), Some("failed; receipts not read"));
        assert!(
            failed.request_id.starts_with("cli-"),
            "{}",
            failed.request_id
        );
    }
}
