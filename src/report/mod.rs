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
use receipts::UnverifiedChain;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::atomic_file;
use crate::bundle::{self, Outcome, SessionInfo};

/// Content-Security-Policy by hash for our self-contained pages.
pub mod csp;
/// A running session's report, kept up to date from what its bundle appends.
mod follow;
/// The timeline and totals, built receipt by receipt.
mod timeline;

pub use follow::ReportFollower;
use timeline::TimelineTally;

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
    /// supervisor died), `invalid` (also a chain without session_end when
    /// `session.json` no longer says running: its tail was cut),
    /// `unverified` (no key to check with) or `open` (session still
    /// running, or its supervisor died and recovery has not closed it yet:
    /// no session_end).
    pub status: String,
    pub detail: String,
    pub count: u64,
    pub key_id: Option<String>,
    pub last_hash: Option<String>,
    /// How many lines, from the first, are proven (signed by the key and
    /// chained): all of them unless `invalid`; `None` when not checked.
    #[serde(default)]
    pub verified: Option<u64>,
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
    /// Past the point where the chain stopped verifying: what this entry
    /// says is not proven, and it is not in the counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
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
/// key; without it the chain is read but reported as unverified. The chain
/// is read as it is verified ([`ReportFollower`]), not held whole.
pub fn build(dir: &Path, key: Option<&VerifyingKey>) -> Result<Report> {
    ReportFollower::new(dir, key.copied()).into_report()
}

/// [`build`] from the whole chain file in memory, for a follower whose
/// file was rewritten under it.
fn build_whole(dir: &Path, key: Option<&VerifyingKey>) -> Result<Report> {
    let session = bundle::read_info(dir)?;
    let chain_bytes = bundle::read_regular_file(&dir.join(bundle::RECEIPTS)).unwrap_or_default();
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
    let receipts_status = chain_status(chain_bytes, key, session.status == "running");
    let outcomes: HashMap<u64, Outcome> = outcomes
        .iter()
        .map(|o| (o.receipt_seq, o.clone()))
        .collect();
    let mut timeline: Vec<TimelineEntry> = Vec::new();
    let mut tally = TimelineTally::default();
    // Parse leniently: a report of a damaged chain still shows what it can;
    // its status says the chain is invalid. Past the verified lines nothing
    // is taken as fact (see `TimelineTally::apply`).
    let lines = chain_bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    for (index, line) in lines.enumerate() {
        let Ok(receipt) = serde_json::from_slice::<receipts::Receipt>(line) else {
            continue;
        };
        // Within the verified prefix there are no empty lines (they fail
        // verification), so `index` is the line's place in the chain there.
        let proven = receipts_status.verified.is_none_or(|n| (index as u64) < n);
        tally.apply(&mut timeline, receipt, proven, &outcomes);
    }
    let (counts, bytes, spend) = tally.totals(session.capabilities.llm_budget_micro_usd);
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

/// `running`: the session may still be writing its chain (its
/// `session.json` says so), so a chain without its end is open, not cut.
fn chain_status(bytes: &[u8], key: Option<&VerifyingKey>, running: bool) -> ChainStatus {
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
            verified: None,
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
            verified: Some(chain.receipts.len() as u64),
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
            verified: Some(chain.receipts.len() as u64),
        },
        // A finished session's chain always ends in session_end (recovery
        // writes one for a supervisor that died): without it, it was cut.
        Err(err @ receipts::ChainError::MissingEnd { .. }) if !running => ChainStatus {
            status: "invalid".into(),
            detail: format!("{err}, but the session is not running: the chain's tail is missing"),
            count: lines,
            key_id,
            last_hash: None,
            verified: Some(lines),
        },
        Err(receipts::ChainError::MissingEnd { .. }) => ChainStatus {
            status: "open".into(),
            detail: "session still running: the chain has no session_end yet".into(),
            count: lines,
            key_id,
            last_hash: None,
            // Every line verified: only the end is missing.
            verified: Some(lines),
        },
        Err(err) => {
            let verified = verified_prefix(bytes, key);
            ChainStatus {
                status: "invalid".into(),
                detail: format!(
                    "{err}; only the first {verified} of {lines} receipts are proven, \
                     the rest are marked unverified and not counted"
                ),
                count: lines,
                key_id,
                last_hash: None,
                verified: Some(verified),
            }
        }
    }
}

/// How many lines, from the first, verify and are covered by a signature:
/// what a report of a broken chain may take as fact.
fn verified_prefix(bytes: &[u8], key: &VerifyingKey) -> u64 {
    let mut verifier = receipts::LineVerifier::new(*key);
    let mut proven = 0;
    let mut rest = receipts::written_part(bytes);
    // A last line without its newline is torn: never proven.
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        if verifier.push(&rest[..end]).is_err() {
            break;
        }
        if verifier.uncovered() == 0 {
            proven = verifier.lines() as u64;
        }
        rest = &rest[end + 1..];
    }
    proven
}

/// Writes `report.json` and `report.html` into the bundle.
pub fn write(dir: &Path, report: &Report) -> Result<()> {
    let json = serde_json::to_vec_pretty(report).context("encoding report.json")?;
    // Replaced, never written through: `openclaw report` is run on bundles
    // others send, and a report file linked to the reader's own files must
    // not overwrite them.
    atomic_file::replace(&dir.join(bundle::REPORT_JSON), &json, REPORT_MODE)?;
    atomic_file::replace(
        &dir.join(bundle::REPORT_HTML),
        render_html(report, None).as_bytes(),
        REPORT_MODE,
    )
}

/// Reports are read by whoever the bundle is shared with.
const REPORT_MODE: u32 = 0o644;

/// Timeline entries a page shows from the start and from the end of a
/// session; the rest are counted in `timeline_omitted`.
pub const PAGE_HEAD: usize = 500;
pub const PAGE_TAIL: usize = 1500;
/// Longest list a page shows of one field.
pub const PAGE_LIST_MAX: usize = 64;
/// Longest text a page shows of one field, in bytes.
pub const PAGE_TEXT_MAX: usize = 2048;

/// The report as a page shows it: a session of any size makes a page of
/// bounded size. The timeline keeps its first [`PAGE_HEAD`] and last
/// [`PAGE_TAIL`] entries (`timeline_omitted` says how many are left out in
/// between, and where), texts are cut at [`PAGE_TEXT_MAX`] bytes and lists at
/// [`PAGE_LIST_MAX`] items, each cut saying what it left out. The counts
/// cover every entry; `report.json` keeps them all, whole.
pub fn page_data(report: &Report) -> Value {
    let all = &report.timeline;
    let (head, tail) = if all.len() > PAGE_HEAD + PAGE_TAIL {
        (&all[..PAGE_HEAD], &all[all.len() - PAGE_TAIL..])
    } else {
        (&all[..], &all[..0])
    };
    let without_timeline = Report {
        session: report.session.clone(),
        duration_ms: report.duration_ms,
        counts: report.counts.clone(),
        bytes: report.bytes.clone(),
        spend: report.spend.clone(),
        receipts: report.receipts.clone(),
        timeline: Vec::new(),
    };
    let mut value = serde_json::to_value(&without_timeline).unwrap_or(Value::Null);
    bound_for_page(&mut value);
    let shown: Vec<Value> = head
        .iter()
        .chain(tail)
        .map(|e| {
            let mut entry = serde_json::to_value(e).unwrap_or(Value::Null);
            bound_for_page(&mut entry);
            entry
        })
        .collect();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("timeline".into(), Value::Array(shown));
        if !tail.is_empty() {
            obj.insert(
                "timeline_omitted".into(),
                serde_json::json!({"count": all.len() - head.len() - tail.len(), "after": head.len()}),
            );
        }
    }
    value
}

/// Cuts every text and list in `value` to what a page shows, in place, and
/// writes out the characters a browser would not show as themselves
/// ([`hidden_char`]).
pub fn bound_for_page(value: &mut Value) {
    if let Value::String(text) = value {
        spell_out(text, hidden_char);
    }
    match value {
        Value::String(text) if text.len() > PAGE_TEXT_MAX => {
            let mut end = PAGE_TEXT_MAX;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let cut = text.len() - end;
            text.truncate(end);
            text.push_str(&format!("… [{cut} more bytes not shown]"));
        }
        Value::Array(items) => {
            if items.len() > PAGE_LIST_MAX {
                let cut = items.len() - PAGE_LIST_MAX;
                items.truncate(PAGE_LIST_MAX);
                items.push(Value::String(format!("[{cut} more not shown]")));
            }
            items.iter_mut().for_each(bound_for_page);
        }
        Value::Object(members) => {
            for (name, member) in members.iter_mut() {
                if IDENTITY_MEMBERS.contains(&name.as_str()) {
                    spell_out_non_ascii(member);
                }
                bound_for_page(member);
            }
        }
        _ => {}
    }
}

/// Members that name who or where an action goes: a reader compares them
/// with an address they know, so a lookalike letter (Cyrillic `о` in
/// `company.com`) must not pass for the one it imitates.
const IDENTITY_MEMBERS: [&str; 3] = ["host", "merchant", "recipients"];

/// Writes every non-ASCII character of the strings in `value` out as
/// `⟨U+XXXX⟩`: an address that is not plain ASCII shows that it is not.
fn spell_out_non_ascii(value: &mut Value) {
    match value {
        Value::String(text) => spell_out(text, |c| !c.is_ascii()),
        Value::Array(items) => items.iter_mut().for_each(spell_out_non_ascii),
        _ => {}
    }
}

/// Rewrites `text` with each character `hide` picks written out as
/// `⟨U+XXXX⟩`; untouched (no copy) when there is none.
fn spell_out(text: &mut String, hide: impl Fn(char) -> bool) {
    use std::fmt::Write;
    if !text.chars().any(&hide) {
        return;
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if hide(c) {
            let _ = write!(shown, "⟨U+{:04X}⟩", u32::from(c));
        } else {
            shown.push(c);
        }
    }
    *text = shown;
}

/// Characters that change how the text around them looks without showing
/// themselves: direction overrides and isolates (a recipient that reads as
/// another address), zero-width and other format characters (Unicode
/// category Cf), line and paragraph separators, and C0/C1 controls but tab
/// and newline. On a page they are written out as `⟨U+XXXX⟩`.
fn hidden_char(c: char) -> bool {
    matches!(u32::from(c),
        0x00..=0x08 | 0x0B..=0x1F | 0x7F..=0x9F
        | 0xAD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// The one page template, shared by `report.html` and the web UI.
const TEMPLATE: &str = include_str!("page.html");

/// The one page template, shared by `report.html` and the web UI. The report
/// travels inside the page as JSON, so the file needs nothing from the
/// network; `live` (the UI) adds the URLs the page follows and posts to.
/// Inline code runs only by hash ([`page_csp`]), also when opened as a file.
pub fn render_html(report: &Report, live: Option<&LivePage>) -> String {
    let data = page_data(report).to_string();
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

    /// A chain of: allow (seq 1), a blocked payment (seq 2), a payment held
    /// for approval (seq 3), session_end.
    /// With `approve`, the held payment is then approved (seq 4).
    fn three_decisions(path: &Path, key: &SigningKey, approve: bool) {
        let log = ReceiptLog::create(
            path,
            key.clone(),
            SessionStart {
                session_id: "s".into(),
                revocation_ids: vec![],
                sandbox: "netns".into(),
                capability_sha256: None,
                tenant: None,
                user: None,
            },
        )
        .expect("chain");
        for (decision, amount) in [("allow", 0u64), ("block", 90_000), ("approval", 48_700)] {
            log.append(Entry::Decision {
                decided_at: SystemTime::now(),
                record: DecisionRecord {
                    action: json!({"type": "payment", "method": "POST", "host": "shop.example",
                        "path": "/buy", "amount_cents": amount, "currency": "USD"}),
                    counters: json!({}),
                    decision: json!({"decision": decision, "reason": "", "grant": null, "revocation_ids": []}),
                    body_sha256: None,
                },
            })
            .expect("decision");
        }
        if approve {
            log.append(Entry::Approval(receipts::ApprovalRecord {
                decision_seq: 3,
                approved: true,
                approver: "ui".into(),
                answered_at: "2026-12-06T00:00:00Z".into(),
                reason: None,
            }))
            .expect("approval");
        }
        log.finish().expect("end");
    }

    #[test]
    fn receipts_past_a_break_in_the_chain_are_marked_and_never_counted() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("receipts.jsonl");
        let key = SigningKey::from_bytes(&[5; 32]);
        three_decisions(&path, &key, false);
        let good = std::fs::read_to_string(&path).expect("read");

        // The blocked payment's line edited to say allowed: its signature
        // no longer verifies.
        let lines: Vec<&str> = good.lines().collect();
        let forged = lines[2].replace("\"decision\":\"block\"", "\"decision\":\"allow\"");
        assert_ne!(forged, lines[2], "the edit applies");
        let edited = good.replace(lines[2], &forged);
        let report = build_from(
            SessionInfo::default(),
            edited.as_bytes(),
            &[],
            Some(&key.verifying_key()),
        );
        assert_eq!(report.receipts.status, "invalid");
        assert_eq!(report.counts.allowed, 1, "the forged allow is not counted");
        assert_eq!(report.counts.actions, 1);
        assert_eq!(report.spend.payments_cents, 0);
        assert_eq!(report.receipts.verified, Some(2), "session_start and seq 1");
        let flags: Vec<bool> = report.timeline.iter().map(|e| e.unverified).collect();
        assert_eq!(flags, [false, true, true]);

        // An approval signed by another key (the same chain otherwise),
        // spliced in before session_end: it approves nothing.
        let other = tmp.path().join("other.jsonl");
        three_decisions(&other, &SigningKey::from_bytes(&[6; 32]), true);
        let other = std::fs::read_to_string(&other).expect("read");
        let approval = other.lines().nth(4).expect("approval line");
        assert!(approval.contains("\"approval\""), "{approval}");
        let appended = good.replace(lines[4], &format!("{approval}\n{}", lines[4]));
        let report = build_from(
            SessionInfo::default(),
            appended.as_bytes(),
            &[],
            Some(&key.verifying_key()),
        );
        assert_eq!(report.receipts.status, "invalid");
        assert!(
            report.timeline[2].approval.is_none(),
            "{:?}",
            report.timeline[2].approval
        );
        assert_eq!(report.counts.approvals.approved, 0);
        assert_eq!(report.counts.approvals.pending, 1);
        assert_eq!(report.spend.payments_cents, 0);
        assert!(report.timeline.iter().all(|e| !e.unverified));

        // The untouched chain: everything verified, nothing marked.
        let report = build_from(
            SessionInfo::default(),
            good.as_bytes(),
            &[],
            Some(&key.verifying_key()),
        );
        assert_eq!(report.receipts.status, "valid");
        assert_eq!(report.receipts.verified, Some(5));
        assert!(report.timeline.iter().all(|e| !e.unverified));
        // Without a key nothing is checked: the status says so.
        let report = build_from(SessionInfo::default(), good.as_bytes(), &[], None);
        assert_eq!(report.receipts.verified, None);
    }

    fn entry(seq: u64, path: String) -> TimelineEntry {
        TimelineEntry {
            seq,
            ts: "2026-12-06T00:00:00.000000Z".into(),
            action: json!({"type": "web_access", "method": "GET", "host": "a.example", "path": path}),
            decision: "block".into(),
            reason: "no capability".into(),
            grant: None,
            approval: None,
            status: None,
            bytes_up: 0,
            bytes_down: 0,
            usage: None,
            unverified: false,
        }
    }

    /// The JSON a page embeds, read back as the page's script reads it.
    fn embedded(page: &str) -> Value {
        let start = page
            .find("<script id=\"report-data\" type=\"application/json\">")
            .expect("block");
        let body = &page[start..];
        let body =
            &body[body.find('>').expect("tag end") + 1..body.find("</script>").expect("end")];
        serde_json::from_str(body).expect("json")
    }

    #[test]
    fn a_huge_session_renders_a_bounded_page_that_says_what_it_left_out() {
        // A hostile agent's cheap blocked requests: 100 000 receipts, one of
        // them with a 4 MB path and one with 100 000 recipients.
        let mut report = build_from(SessionInfo::default(), b"", &[], None);
        report.timeline = (1..=100_000)
            .map(|seq| entry(seq, format!("/x/{seq}")))
            .collect();
        report.timeline[10].action["path"] = json!("/".repeat(4 << 20));
        report.timeline[11].action["recipients"] = json!(vec!["a@b.c"; 100_000]);
        let page = render_html(&report, None);
        assert!(page.len() < 2 << 20, "page of {} bytes", page.len());
        let data = embedded(&page);
        let shown = data["timeline"].as_array().expect("timeline");
        assert_eq!(shown.len(), PAGE_HEAD + PAGE_TAIL);
        assert_eq!(
            data["timeline_omitted"]["count"],
            100_000 - (PAGE_HEAD + PAGE_TAIL) as u64
        );
        assert_eq!(data["timeline_omitted"]["after"], PAGE_HEAD as u64);
        // The first and the latest are there; the counts cover everything.
        assert_eq!(shown[0]["seq"], 1);
        assert_eq!(shown[shown.len() - 1]["seq"], 100_000);
        let path = shown[10]["action"]["path"].as_str().expect("path");
        assert!(
            path.len() < 4096 && path.ends_with("more bytes not shown]"),
            "{}",
            &path[path.len() - 40..]
        );
        let recipients = shown[11]["action"]["recipients"].as_array().expect("list");
        assert!(recipients.len() <= PAGE_LIST_MAX + 1);
        assert_eq!(
            recipients.last(),
            Some(&json!(format!(
                "[{} more not shown]",
                100_000 - PAGE_LIST_MAX
            )))
        );
        // report.json keeps every receipt, whole.
        assert_eq!(report.timeline.len(), 100_000);
        // A small session is shown whole, with nothing said to be left out.
        report.timeline.truncate(3);
        let data = embedded(&render_html(&report, None));
        assert_eq!(data["timeline"].as_array().map(Vec::len), Some(3));
        assert!(data.get("timeline_omitted").is_none(), "{data}");
    }

    #[test]
    fn invisible_and_direction_characters_show_as_what_they_are() {
        // An email held for approval whose recipient reads, rendered, as
        // "bob@company.com" while it is another address; a subject with a
        // zero-width space and a line separator; a path with a BOM.
        let mut report = build_from(SessionInfo::default(), b"", &[], None);
        let mut e = entry(1, "/a\u{feff}b".into());
        e.action = json!({"type": "email", "method": "POST", "host": "mail.example", "path": "/send",
            "recipients": ["\u{202e}moc.ynapmoc@bob", "c\u{200b}d@e.f"], "subject": "hi\u{2028}there\u{2066}x\u{2069}"});
        report.timeline.push(e);
        let page = render_html(&report, None);
        let data = embedded(&page);
        let action = &data["timeline"][0]["action"];
        assert_eq!(action["recipients"][0], "⟨U+202E⟩moc.ynapmoc@bob");
        assert_eq!(action["recipients"][1], "c⟨U+200B⟩d@e.f");
        assert_eq!(action["subject"], "hi⟨U+2028⟩there⟨U+2066⟩x⟨U+2069⟩");
        let text = data.to_string();
        for c in ['\u{202e}', '\u{200b}', '\u{2028}', '\u{2066}', '\u{feff}'] {
            assert!(!text.contains(c), "{c:?} reached the page");
        }
        // The same for what the live page gets besides the report (pending
        // approvals pass through the same function).
        let mut pending = json!({"id": 1, "action": {"recipients": ["x\u{202d}y"]}});
        bound_for_page(&mut pending);
        assert_eq!(pending["action"]["recipients"][0], "x⟨U+202D⟩y");
        // report.json keeps the bytes as receipted.
        assert!(report.timeline[0].action["recipients"][0]
            .as_str()
            .is_some_and(|r| r.starts_with('\u{202e}')));
    }

    /// A decision's query (`action.query`) reaches report.json whole, and
    /// the page through the same bounds as the path: hidden characters
    /// written out, a long one cut with a marker; the page's script puts it
    /// after the path. A decision without a query has none.
    #[test]
    fn the_query_shows_beside_the_path_bounded_like_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("receipts.jsonl");
        let key = SigningKey::from_bytes(&[5; 32]);
        let log = ReceiptLog::create(
            &path,
            key.clone(),
            SessionStart {
                session_id: "q".into(),
                revocation_ids: vec![],
                sandbox: "netns".into(),
                capability_sha256: None,
                tenant: None,
                user: None,
            },
        )
        .expect("chain");
        let long = format!("x={}", "y".repeat(PAGE_TEXT_MAX * 4));
        let queries = [
            Some("to=mallory&amount=9999"),
            None,
            Some("note=\u{202e}moc.live\u{7}"),
            Some(long.as_str()),
        ];
        for query in queries {
            let action = capabilities::Action::request(
                capabilities::ActionType::Web,
                "POST",
                "bank.example",
                "/api/transfer",
            );
            let record = receipts::CanonicalDecision::new(
                &receipts::RecordedAction {
                    facts: &action,
                    query,
                },
                &capabilities::Counters::default(),
                &json!({"decision": "allow", "reason": "", "grant": "web", "revocation_ids": []}),
                None,
            )
            .expect("encode");
            log.append(Entry::CanonicalDecision {
                decided_at: SystemTime::now(),
                record,
            })
            .expect("decision");
        }
        log.finish().expect("end");
        let chain = std::fs::read(&path).expect("read");
        let report = build_from(
            SessionInfo::default(),
            &chain,
            &[],
            Some(&key.verifying_key()),
        );
        let whole: Vec<Option<&str>> = report
            .timeline
            .iter()
            .map(|e| e.action.get("query").and_then(Value::as_str))
            .collect();
        assert_eq!(whole, queries, "report.json keeps each query as receipted");
        let page = render_html(&report, None);
        let data = embedded(&page);
        let shown: Vec<Option<&str>> = data["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .map(|e| e["action"]["query"].as_str())
            .collect();
        assert_eq!(shown[..2], [Some("to=mallory&amount=9999"), None]);
        assert_eq!(shown[2], Some("note=⟨U+202E⟩moc.live⟨U+0007⟩"));
        let cut = shown[3].expect("the long query");
        assert!(
            cut.len() < PAGE_TEXT_MAX + 64 && cut.ends_with("more bytes not shown]"),
            "{}",
            &cut[cut.len() - 40..]
        );
        assert!(page.contains(r#"(typeof a.query === "string" ? "?" + a.query : "")"#));
    }

    #[test]
    fn a_finished_sessions_chain_without_its_end_is_cut_not_open() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("receipts.jsonl");
        let key = SigningKey::from_bytes(&[7; 32]);
        three_decisions(&path, &key, false);
        let good = std::fs::read_to_string(&path).expect("read");
        // The last decision and session_end cut off the file.
        let cut: String = good.lines().take(3).map(|l| format!("{l}\n")).collect();
        let finished = SessionInfo {
            status: "completed".into(),
            ..SessionInfo::default()
        };
        let report = build_from(finished, cut.as_bytes(), &[], Some(&key.verifying_key()));
        assert_eq!(
            report.receipts.status, "invalid",
            "{}",
            report.receipts.detail
        );
        assert!(
            report.receipts.detail.contains("cut"),
            "{}",
            report.receipts.detail
        );
        // What is there verified: it is shown and counted.
        assert_eq!(report.receipts.verified, Some(3));
        assert_eq!(report.counts.actions, 2);
        // While the session runs, the same bytes are a chain still open.
        let running = SessionInfo {
            status: "running".into(),
            ..SessionInfo::default()
        };
        let report = build_from(running, cut.as_bytes(), &[], Some(&key.verifying_key()));
        assert_eq!(report.receipts.status, "open");
    }

    #[test]
    fn writing_a_report_replaces_links_in_the_bundle_never_writes_through_them() {
        // A bundle someone sent, whose report files link to the auditor's own.
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("bundle");
        std::fs::create_dir(&dir).expect("mkdir");
        let victims = [tmp.path().join("bashrc"), tmp.path().join("notes")];
        for (victim, name) in victims
            .iter()
            .zip([bundle::REPORT_JSON, bundle::REPORT_HTML])
        {
            std::fs::write(victim, "mine").expect("victim");
            std::os::unix::fs::symlink(victim, dir.join(name)).expect("link");
        }
        let report = build_from(SessionInfo::default(), b"", &[], None);
        write(&dir, &report).expect("write");
        for victim in &victims {
            assert_eq!(std::fs::read_to_string(victim).expect("read"), "mine");
        }
        for name in [bundle::REPORT_JSON, bundle::REPORT_HTML] {
            let meta = std::fs::symlink_metadata(dir.join(name)).expect("meta");
            assert!(meta.is_file(), "{name} is a file of its own now");
        }
        let json = std::fs::read(dir.join(bundle::REPORT_JSON)).expect("read");
        assert!(serde_json::from_slice::<Report>(&json).is_ok());
    }

    /// A bundle someone sent whose files are FIFOs: the report neither
    /// waits for a writer nor reads what one sends.
    #[test]
    fn a_bundle_file_that_is_a_fifo_is_not_read() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        bundle::write_info(dir, &SessionInfo::default()).expect("session.json");
        for name in [bundle::RECEIPTS, bundle::EVENTS] {
            nix::unistd::mkfifo(&dir.join(name), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        }
        let err = build(dir, None).expect_err("events.jsonl is a FIFO");
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
        std::fs::remove_file(dir.join(bundle::EVENTS)).expect("rm");
        let report = build(dir, None).expect("report");
        assert_eq!(report.receipts.count, 0, "{:?}", report.receipts);
        std::fs::remove_file(dir.join(bundle::SESSION_JSON)).expect("rm");
        nix::unistd::mkfifo(
            &dir.join(bundle::SESSION_JSON),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .expect("mkfifo");
        let err = build(dir, None).expect_err("session.json is a FIFO");
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
    }

    #[test]
    fn a_lookalike_recipient_does_not_read_as_the_address_it_imitates() {
        let mut report = build_from(SessionInfo::default(), b"", &[], None);
        let mut e = entry(1, "/send".into());
        e.action = json!({"type": "email", "method": "POST", "host": "mail.example", "path": "/send",
            "recipients": ["bob@c\u{43e}mpany.com"]});
        report.timeline.push(e);
        let data = embedded(&render_html(&report, None));
        let shown = data["timeline"][0]["action"]["recipients"][0]
            .as_str()
            .expect("recipient");
        assert!(
            !shown.contains('\u{43e}'),
            "{shown} looks like bob@company.com"
        );
        assert_eq!(shown, "bob@c⟨U+043E⟩mpany.com");
        // Text that names no address keeps its letters.
        let mut v = json!({"subject": "привет", "host": "bücher.example"});
        bound_for_page(&mut v);
        assert_eq!(v["subject"], "привет");
        assert_eq!(v["host"], "b⟨U+00FC⟩cher.example");
    }
}
