//! Session reports: `report.json` (counts, spend, bytes, timeline, receipt
//! status) derived from a session bundle, and `report.html`, one
//! self-contained page a reviewer can open offline. The web UI serves the
//! same page (see [`render_html`]), live.
//!
//! The receipts are the source of truth for what was decided; the bundle's
//! `events.jsonl` adds what only the proxy saw afterwards (status, bytes).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use ed25519_dalek::VerifyingKey;
use receipts::{Body, UnverifiedChain};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bundle::{self, Outcome, SessionInfo};

/// Content-Security-Policy by hash for our self-contained pages.
pub mod csp;

/// Everything a reviewer sees about one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub session: SessionInfo,
    pub duration_ms: Option<u64>,
    pub counts: Counts,
    pub bytes: Bytes,
    pub spend: Spend,
    pub receipts: ChainStatus,
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Decision receipts: every action the proxy decided.
    pub actions: u64,
    pub allowed: u64,
    pub blocked: u64,
    /// Actions that needed a human, by outcome.
    pub approvals: ApprovalCounts,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalCounts {
    pub approved: u64,
    pub denied: u64,
    /// Not answered in time: denied by the timeout.
    pub expired: u64,
    /// Still waiting (only while the session runs).
    pub pending: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    pub up: u64,
    pub down: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    /// Payments that were forwarded, in cents.
    pub payments_cents: u64,
    pub currency: Option<String>,
    /// LLM spend: the usage receipts' costs when the session was metered,
    /// else (sessions from before metering) the allowed calls' estimates.
    pub llm_micro_usd: u64,
    /// The metered LLM calls' tokens, summed (usage receipts).
    #[serde(default)]
    pub llm: LlmTotals,
    /// The session's LLM budget (the token's `llm.budget_usd`, as
    /// `session.json` recorded it), micro-USD: what `llm_micro_usd` is
    /// spent against. Absent without a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_budget_micro_usd: Option<u64>,
}

/// The usage receipts of a session, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmTotals {
    pub calls: u64,
    pub tokens: receipts::UsageTokens,
    pub cost_micro_usd: u64,
    /// Calls charged their reservation (the provider reported no usage).
    pub estimated_calls: u64,
}

/// The receipt chain's verification result, as of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    /// `valid`, `interrupted` (valid, closed by recovery after the
    /// supervisor died), `invalid`, `unverified` (no key to check with) or
    /// `open` (session still running, or its supervisor died and recovery
    /// has not closed it yet: no session_end).
    pub status: String,
    pub detail: String,
    pub count: u64,
    pub key_id: Option<String>,
    pub last_hash: Option<String>,
}

/// One decided action, with its approval and outcome when known.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub seq: u64,
    pub ts: String,
    /// The action facts as receipted (type, method, host, path, amount…).
    pub action: Value,
    pub decision: String,
    pub reason: String,
    pub grant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default)]
    pub bytes_up: u64,
    #[serde(default)]
    pub bytes_down: u64,
    /// An LLM call's usage receipt: tokens and cost as the provider reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CallUsage>,
}

/// One metered call's usage, from its usage receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallUsage {
    pub model: String,
    pub tokens: receipts::UsageTokens,
    pub cost_micro_usd: u64,
    pub estimated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalOutcome {
    pub approved: bool,
    pub approver: String,
    pub answered_at: String,
}

/// Builds the report of the bundle in `dir`. `key` pins the receipt-signing
/// key; without it the chain is read but reported as unverified.
pub fn build(dir: &Path, key: Option<&VerifyingKey>) -> Result<Report> {
    let session = bundle::read_info(dir)?;
    let chain_bytes = std::fs::read(dir.join(bundle::RECEIPTS)).unwrap_or_default();
    let outcomes = bundle::read_outcomes(dir)?;
    Ok(build_from(session, &chain_bytes, &outcomes, key))
}

/// The pure part of [`build`], for tests and the live UI.
pub fn build_from(
    session: SessionInfo,
    chain_bytes: &[u8],
    outcomes: &[Outcome],
    key: Option<&VerifyingKey>,
) -> Report {
    let receipts_status = chain_status(chain_bytes, key);
    let outcome_by_seq: HashMap<u64, &Outcome> =
        outcomes.iter().map(|o| (o.receipt_seq, o)).collect();

    let mut timeline: Vec<TimelineEntry> = Vec::new();
    let mut index_by_seq: HashMap<u64, usize> = HashMap::new();
    let mut llm_micro_usd = 0;
    let mut llm = LlmTotals::default();
    // Parse leniently: a report of a damaged chain still shows what it can;
    // its status says the chain is invalid.
    for line in chain_bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(receipt) = serde_json::from_slice::<receipts::Receipt>(line) else {
            continue;
        };
        match receipt.body {
            Body::Decision(record) => {
                let field = |name: &str| record.decision.get(name).and_then(Value::as_str);
                let outcome = outcome_by_seq.get(&receipt.seq);
                if let Some(cost) = record.action.get("cost_micro_usd").and_then(Value::as_u64) {
                    if field("decision") == Some("allow") {
                        llm_micro_usd += cost;
                    }
                }
                index_by_seq.insert(receipt.seq, timeline.len());
                timeline.push(TimelineEntry {
                    seq: receipt.seq,
                    ts: receipt.ts,
                    decision: field("decision").unwrap_or("block").to_owned(),
                    reason: field("reason").unwrap_or_default().to_owned(),
                    grant: field("grant").map(str::to_owned),
                    action: record.action,
                    approval: None,
                    status: outcome.and_then(|o| o.status),
                    bytes_up: outcome.map_or(0, |o| o.bytes_up),
                    bytes_down: outcome.map_or(0, |o| o.bytes_down),
                    usage: None,
                });
            }
            Body::Usage(u) => {
                llm.calls += 1;
                llm.cost_micro_usd = llm.cost_micro_usd.saturating_add(u.cost_micro_usd);
                llm.estimated_calls += u64::from(u.estimated);
                let (t, add) = (&mut llm.tokens, &u.tokens);
                for (sum, n) in [
                    (&mut t.input, add.input),
                    (&mut t.cached_input, add.cached_input),
                    (&mut t.cache_write_5m, add.cache_write_5m),
                    (&mut t.cache_write_1h, add.cache_write_1h),
                    (&mut t.output, add.output),
                    (&mut t.reasoning, add.reasoning),
                ] {
                    *sum = sum.saturating_add(n);
                }
                if let Some(&i) = index_by_seq.get(&u.decision_seq) {
                    timeline[i].usage = Some(CallUsage {
                        model: u.model,
                        tokens: u.tokens,
                        cost_micro_usd: u.cost_micro_usd,
                        estimated: u.estimated,
                    });
                }
            }
            Body::Approval(answer) => {
                if let Some(&i) = index_by_seq.get(&answer.decision_seq) {
                    timeline[i].approval = Some(ApprovalOutcome {
                        approved: answer.approved,
                        approver: answer.approver,
                        answered_at: answer.answered_at,
                    });
                }
            }
            Body::SessionStart { .. } | Body::BudgetWarning(_) | Body::SessionEnd { .. } => {}
        }
    }

    let mut counts = Counts::default();
    let mut spend = Spend {
        llm_micro_usd: if llm.calls > 0 {
            llm.cost_micro_usd
        } else {
            llm_micro_usd
        },
        llm,
        llm_budget_micro_usd: session.capabilities.llm_budget_micro_usd,
        ..Spend::default()
    };
    let mut bytes = Bytes::default();
    for entry in &timeline {
        counts.actions += 1;
        bytes.up += entry.bytes_up;
        bytes.down += entry.bytes_down;
        let forwarded = match (entry.decision.as_str(), &entry.approval) {
            ("allow", _) => {
                counts.allowed += 1;
                true
            }
            ("approval", None) => {
                counts.approvals.pending += 1;
                false
            }
            ("approval", Some(a)) if a.approved => {
                counts.approvals.approved += 1;
                true
            }
            ("approval", Some(a)) if a.approver == "timeout" => {
                counts.approvals.expired += 1;
                false
            }
            ("approval", Some(_)) => {
                counts.approvals.denied += 1;
                false
            }
            _ => {
                counts.blocked += 1;
                false
            }
        };
        if forwarded && entry.action.get("type").and_then(Value::as_str) == Some("payment") {
            spend.payments_cents += entry
                .action
                .get("amount_cents")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if spend.currency.is_none() {
                spend.currency = entry
                    .action
                    .get("currency")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
        }
    }

    Report {
        duration_ms: session.duration_ms(),
        session,
        counts,
        bytes,
        spend,
        receipts: receipts_status,
        timeline,
    }
}

fn chain_status(bytes: &[u8], key: Option<&VerifyingKey>) -> ChainStatus {
    // A running session's file ends in its preallocated NULs: not a line.
    let lines = receipts::written_part(bytes)
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64;
    let Some(key) = key else {
        return ChainStatus {
            status: "unverified".into(),
            detail: "no receipt public key given; run `openclaw verify --key`".into(),
            count: lines,
            key_id: None,
            last_hash: None,
        };
    };
    let key_id = Some(receipts::key_id(key));
    match UnverifiedChain::from_bytes(bytes.to_vec()).verify(key) {
        Ok(chain) if chain.interruption().is_some() => ChainStatus {
            status: "interrupted".into(),
            detail: format!(
                "{} receipts, every signature valid, chain closed by recovery: {}",
                chain.receipts.len(),
                chain
                    .interruption()
                    .map(|i| i.to_string())
                    .unwrap_or_default()
            ),
            count: chain.receipts.len() as u64,
            key_id,
            last_hash: Some(hex::encode(chain.last_hash())),
        },
        Ok(chain) => ChainStatus {
            status: "valid".into(),
            detail: format!(
                "{} receipts, every signature valid, chain complete",
                chain.receipts.len()
            ),
            count: chain.receipts.len() as u64,
            key_id,
            last_hash: Some(hex::encode(chain.last_hash())),
        },
        Err(receipts::ChainError::MissingEnd { .. }) => ChainStatus {
            status: "open".into(),
            detail: "session still running: the chain has no session_end yet".into(),
            count: lines,
            key_id,
            last_hash: None,
        },
        Err(err) => ChainStatus {
            status: "invalid".into(),
            detail: err.to_string(),
            count: lines,
            key_id,
            last_hash: None,
        },
    }
}

/// Writes `report.json` and `report.html` into the bundle.
pub fn write(dir: &Path, report: &Report) -> Result<()> {
    let json = serde_json::to_vec_pretty(report).context("encoding report.json")?;
    std::fs::write(dir.join(bundle::REPORT_JSON), json)
        .with_context(|| format!("writing {}", dir.join(bundle::REPORT_JSON).display()))?;
    std::fs::write(dir.join(bundle::REPORT_HTML), render_html(report, None))
        .with_context(|| format!("writing {}", dir.join(bundle::REPORT_HTML).display()))?;
    Ok(())
}

/// The one page template, shared by `report.html` and the web UI.
const TEMPLATE: &str = include_str!("page.html");

/// The one page template, shared by `report.html` and the web UI. The report
/// travels inside the page as JSON, so the file needs nothing from the
/// network; `live` (the UI) adds the URLs the page follows and posts to.
/// Inline code runs only by hash ([`page_csp`]), also when opened as a file.
pub fn render_html(report: &Report, live: Option<&LivePage>) -> String {
    let data = serde_json::to_string(report).unwrap_or_else(|_| "null".into());
    let live_json = live
        .map(|l| serde_json::to_string(l).unwrap_or_else(|_| "null".into()))
        .unwrap_or_else(|| "null".into());
    // The report's text (paths, reasons) goes in last, so nothing in it is
    // taken for a placeholder.
    TEMPLATE
        .replace("__CSP__", &html_escape(&page_csp()))
        .replace("__TITLE__", &html_escape(&report.session.id))
        .replace("__LIVE_JSON__", &script_safe(&live_json))
        .replace("__REPORT_JSON__", &script_safe(&data))
}

/// The page's Content-Security-Policy (the UI also sends it as a header).
pub fn page_csp() -> String {
    csp::policy_for(TEMPLATE)
}

/// What the UI's page needs beyond the report: where to follow events
/// (running sessions), how to answer approvals, where to download the
/// bundle (finished sessions) and the way back to the list.
#[derive(Debug, Clone, Serialize)]
pub struct LivePage {
    pub events_url: Option<String>,
    pub answer_url: String,
    pub csrf_token: String,
    pub bundle_url: Option<String>,
    pub list_url: Option<String>,
}

/// JSON inside a `<script>` element must not be able to close it.
pub fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ed25519_dalek::SigningKey;
    use receipts::{
        DecisionRecord, Entry, RateSnapshot, ReceiptLog, SessionStart, UsageRecord, UsageTokens,
    };
    use serde_json::json;

    use super::*;

    #[test]
    fn metered_calls_show_their_tokens_and_cost_and_the_session_totals() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("receipts.jsonl");
        let key = SigningKey::from_bytes(&[3; 32]);
        let log = ReceiptLog::create(
            &path,
            key.clone(),
            SessionStart {
                session_id: "s".into(),
                revocation_ids: vec![],
                sandbox: "netns".into(),
                capability_sha256: None,
                tenant: Some("acme".into()),
                user: Some("alice".into()),
            },
        )
        .expect("chain");
        let mut seqs = Vec::new();
        for (i, estimated) in [(1u64, false), (2, true)] {
            let d = log
                .append(Entry::Decision {
                    decided_at: SystemTime::now(),
                    record: DecisionRecord {
                        // The pre-metering estimate, which usage receipts replace.
                        action: json!({"type": "llm", "method": "POST", "host": "api.openai.com",
                            "path": "/v1/chat/completions", "cost_micro_usd": 999_999}),
                        counters: json!({}),
                        decision: json!({"decision": "allow", "reason": "", "grant": "llm", "revocation_ids": []}),
                        body_sha256: None,
                    },
                })
                .expect("decision");
            seqs.push(d.seq);
            let tokens = if estimated {
                UsageTokens::default()
            } else {
                UsageTokens {
                    input: 100,
                    cached_input: 50,
                    output: 30,
                    reasoning: 10,
                    ..UsageTokens::default()
                }
            };
            log.append(Entry::Usage(UsageRecord {
                decision_seq: d.seq,
                provider: "api.openai.com".into(),
                api: "openai.chat".into(),
                model: "gpt-4o-mini".into(),
                response_id: None,
                tokens,
                rates: RateSnapshot {
                    card_sha256: receipts::sha256_hex(b"card"),
                    ..RateSnapshot::default()
                },
                cost_micro_usd: if estimated { 500 } else { 0 },
                reserved_micro_usd: 500,
                estimated,
            }))
            .map(|_| ())
            .unwrap_or_else(|e| panic!("usage {i}: {e}"));
        }
        log.finish().expect("end");
        let bytes = std::fs::read(&path).expect("read");
        let report = build_from(
            SessionInfo::default(),
            &bytes,
            &[],
            Some(&key.verifying_key()),
        );
        assert_eq!(
            report.receipts.status, "valid",
            "{}",
            report.receipts.detail
        );
        let first = report.timeline[0].usage.as_ref().expect("usage");
        assert_eq!((first.tokens.input, first.tokens.output), (100, 30));
        assert!(report.timeline[1].usage.as_ref().expect("usage").estimated);
        assert_eq!(report.spend.llm.calls, 2);
        assert_eq!(report.spend.llm.estimated_calls, 1);
        assert_eq!(report.spend.llm.tokens.cached_input, 50);
        // Usage receipts replace the estimates: 0 + 500, not 2 × 999999.
        assert_eq!(report.spend.llm_micro_usd, 500);
        assert_eq!(seqs, vec![1, 3]);
    }
    #[test]
    fn the_llm_budget_comes_from_session_json_and_is_absent_without_one() {
        let mut session = SessionInfo::default();
        session.capabilities.llm_budget_micro_usd = Some(2_000_000);
        let report = build_from(session, b"", &[], None);
        assert_eq!(report.spend.llm_budget_micro_usd, Some(2_000_000));
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["spend"]["llm_budget_micro_usd"], 2_000_000);

        let report = build_from(SessionInfo::default(), b"", &[], None);
        assert_eq!(report.spend.llm_budget_micro_usd, None);
        let json = serde_json::to_value(&report).expect("json");
        assert!(
            json["spend"].get("llm_budget_micro_usd").is_none(),
            "{json}"
        );
    }
}
