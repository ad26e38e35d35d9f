//! The session's event stream: one event per decision (allowed, blocked,
//! pending, approved, denied), per finished exchange (completed), per
//! settled LLM call (usage) and per budget warning, on a broadcast channel
//! the terminal monitor and the web UI subscribe to.
//! Events carry names and facts, never secret values or bodies.

use std::time::SystemTime;

use capabilities::{Action, ActionType};
use receipts::UsageTokens;
use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for a slow subscriber before it starts missing some.
pub const EVENT_BUFFER: usize = 4096;

/// How a `completed` event's reason starts when the exchange failed.
pub(crate) const FAILED_PREFIX: &str = "failed: ";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Decided allow; the request is going upstream.
    Allowed,
    /// Refused (by the token, the catalog, the credential rules, a receipt
    /// failure, or the proxy's own fail-closed checks; see `reason`).
    Blocked,
    /// Held for a human; an `approved` or `denied` event follows.
    Pending,
    /// A human said yes; the request is going upstream.
    Approved,
    /// A human said no, nobody answered in time, the broker went away, or
    /// the client went away while its request was held.
    Denied,
    /// The exchange ended (status and bytes known).
    Completed,
    /// A metered LLM call was settled (see `usage`).
    Usage,
    /// The LLM spend reached a warning level of the budget (see `budget_warning`).
    BudgetWarning,
}

/// What a settled LLM call used and cost (on `usage` events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageEvent {
    /// Seq of the decision receipt the call went out under.
    pub decision_seq: u64,
    pub model: String,
    pub tokens: UsageTokens,
    pub cost_micro_usd: u64,
    /// No usage was reported: the call was charged its reservation.
    pub estimated: bool,
    /// The session's LLM spend after this call (micro-USD).
    pub budget_spent_micro_usd: u64,
    /// The token's LLM budget, if it has one.
    pub budget_micro_usd: Option<u64>,
}

/// A warning level of the LLM budget reached (on `budget_warning` events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BudgetWarning {
    /// The level, in percent of the budget.
    pub percent: u64,
    pub spent_micro_usd: u64,
    pub budget_micro_usd: u64,
}

/// One event. `request` ties the events of one request together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// RFC 3339 UTC.
    pub at: String,
    pub kind: EventKind,
    /// Request number within the session (0 for DNS and connection-level events).
    pub request: u64,
    /// Sandbox connection id.
    pub conn: u64,
    /// Action type (`web`, `payment`, ...).
    #[serde(rename = "type")]
    pub action: ActionType,
    pub method: String,
    pub host: String,
    /// Path without the query.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Names of credentials injected into the request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// HTTP status sent to the sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Response body bytes delivered to the sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Request body bytes sent upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Seq of the receipt recording this event, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<u64>,
    /// Who answered an approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// On `usage` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageEvent>,
    /// On `budget_warning` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_warning: Option<BudgetWarning>,
}

impl Event {
    /// An event about `action`, with the other fields empty.
    pub fn about(kind: EventKind, request: u64, conn: u64, action: &Action) -> Self {
        Event {
            at: humantime_rfc3339(SystemTime::now()),
            kind,
            request,
            conn,
            action: action.kind,
            method: action.method.clone(),
            host: action.host.clone(),
            path: action.path.clone(),
            grant: None,
            reason: None,
            amount_cents: action.amount_cents,
            currency: action.currency.clone(),
            credentials: Vec::new(),
            status: None,
            bytes: None,
            bytes_up: None,
            receipt: None,
            approver: None,
            usage: None,
            budget_warning: None,
        }
    }

    /// A `completed` event whose exchange with the upstream failed (the
    /// sandbox got the proxy's error answer, not the upstream's).
    pub fn exchange_failed(&self) -> bool {
        self.kind == EventKind::Completed
            && self
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(FAILED_PREFIX))
    }

    /// One line for a terminal: `✓ allowed  GET  google.com/travel  web · 200 · 2.3KB`.
    pub fn line(&self) -> String {
        let (mark, word) = match self.kind {
            EventKind::Allowed => ("✓", "allowed"),
            EventKind::Blocked => ("✕", "blocked"),
            EventKind::Pending => ("●", "approval"),
            EventKind::Approved => ("✓", "approved"),
            EventKind::Denied => ("✕", "denied"),
            EventKind::Completed if self.exchange_failed() => ("!", "failed"),
            EventKind::Completed => ("·", "done"),
            EventKind::Usage => ("$", "usage"),
            EventKind::BudgetWarning => ("!", "budget"),
        };
        let mut out = format!(
            "{mark} {word:<8} {:<5} {}{}",
            self.method, self.host, self.path
        );
        if let Some(c) = self.amount_cents {
            out.push_str(&format!(" ${}.{:02}", c / 100, c % 100));
        }
        let mut tail: Vec<String> = Vec::new();
        if let Some(g) = &self.grant {
            tail.push(g.clone());
        }
        if !self.credentials.is_empty() {
            tail.push(format!(
                "credential injected ({})",
                self.credentials.join(", ")
            ));
        }
        if let Some(s) = self.status {
            tail.push(s.to_string());
        }
        if let Some(b) = self.bytes {
            tail.push(human_bytes(b));
        }
        if let Some(a) = &self.approver {
            tail.push(format!("by {a}"));
        }
        if let Some(u) = &self.usage {
            let t = &u.tokens;
            let mut tokens = format!("{} in", t.input);
            if t.cached_input > 0 {
                tokens.push_str(&format!(" + {} cached", t.cached_input));
            }
            if t.cache_write_5m + t.cache_write_1h > 0 {
                tokens.push_str(&format!(
                    " + {} cache write",
                    t.cache_write_5m + t.cache_write_1h
                ));
            }
            tokens.push_str(&format!(" / {} out", t.output));
            tail.push(u.model.clone());
            tail.push(tokens);
            let mut cost = usd(u.cost_micro_usd);
            if u.estimated {
                cost.push_str(" (estimated: no usage reported)");
            }
            tail.push(cost);
            if let Some(b) = u.budget_micro_usd {
                tail.push(format!("{} of {}", usd(u.budget_spent_micro_usd), usd(b)));
            }
        }
        if let Some(w) = &self.budget_warning {
            tail.push(format!(
                "{}% of the LLM budget reached: {} of {}",
                w.percent,
                usd(w.spent_micro_usd),
                usd(w.budget_micro_usd)
            ));
        }
        if let Some(r) = &self.reason {
            // The mark already says "failed".
            tail.push(r.strip_prefix(FAILED_PREFIX).unwrap_or(r).to_owned());
        }
        if !tail.is_empty() {
            out.push_str("  ");
            out.push_str(&tail.join(" · "));
        }
        out
    }
}

fn humantime_rfc3339(t: SystemTime) -> String {
    receipts::format_time(t)
}

/// Micro-USD as dollars with six decimals: `$0.005618`.
fn usd(micro: u64) -> String {
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b}B"),
        1024..1_048_576 => format!("{}.{}KB", b / 1024, (b % 1024) * 10 / 1024),
        _ => format!("{}.{}MB", b / 1_048_576, (b % 1_048_576) * 10 / 1_048_576),
    }
}

/// The sending side of the session's event stream. Sending never blocks and
/// never fails the request: with no subscriber, events are dropped.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        EventBus {
            tx: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    /// A new receiver that sees events sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn send(&self, event: Event) {
        ratelog::debug!(kind = ?event.kind, request = event.request, host = %event.host, "event");
        // An error only means nobody is listening.
        let _ = self.tx.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_and_print() {
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        let action = Action {
            kind: ActionType::Payment,
            method: "POST".into(),
            host: "united.com".into(),
            path: "/api/booking/purchase".into(),
            amount_cents: Some(48_700),
            currency: Some("USD".into()),
            merchant: None,
            recipients: Vec::new(),
            subject: None,
            credential: None,
            cost_micro_usd: None,
        };
        let mut e = Event::about(EventKind::Pending, 7, 3, &action);
        e.reason = Some("payments above $400.00 need approval".into());
        bus.send(e.clone());
        let got = rx.try_recv().expect("event delivered");
        assert_eq!(got, e);
        let json = serde_json::to_value(&got).expect("json");
        assert_eq!(json["kind"], "pending");
        assert_eq!(json["type"], "payment");
        assert_eq!(json["amount_cents"], 48_700);
        assert!(json.get("status").is_none());
        let line = got.line();
        assert!(
            line.starts_with("● approval POST  united.com/api/booking/purchase $487.00"),
            "{line}"
        );
        assert_eq!(human_bytes(2355), "2.2KB");
        let mut u = Event::about(EventKind::Usage, 8, 3, &action);
        u.usage = Some(UsageEvent {
            decision_seq: 4,
            model: "gpt-4o".into(),
            tokens: UsageTokens {
                input: 87,
                cached_input: 1920,
                output: 300,
                reasoning: 192,
                ..UsageTokens::default()
            },
            cost_micro_usd: 5_618,
            estimated: false,
            budget_spent_micro_usd: 1_005_618,
            budget_micro_usd: Some(2_000_000),
        });
        assert!(
            u.line().ends_with(
                "gpt-4o · 87 in + 1920 cached / 300 out · $0.005618 · $1.005618 of $2.000000"
            ),
            "{}",
            u.line()
        );
        let json = serde_json::to_value(&u).expect("json");
        assert_eq!(json["kind"], "usage");
        assert_eq!(json["usage"]["tokens"]["cached_input"], 1920);
        assert_eq!(human_bytes(10), "10B");
    }
}
