//! Decision re-derivation: every decision receipt of a verified chain re-run
//! against the session's capability token (its `capabilities.cap`) with the
//! recorded facts, counters and time, so an auditor learns whether each
//! decision follows from the token, not only that it was signed.

use std::fmt;

use capabilities::{Action, Capability, Counters, Decision, UnverifiedToken, Verdict};
use ed25519_dalek::VerifyingKey;

use crate::format::{parse_time, sha256_hex, Body, DecisionRecord, Receipt};
use crate::verify::VerifiedChain;

/// What re-running a chain's decisions found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rederivation {
    /// How far the re-derivation got.
    pub coverage: Coverage,
    /// Everything that does not follow from the token, in line order.
    pub mismatches: Vec<DecisionMismatch>,
    /// Decisions that came out the same, with another reason text.
    pub reason_changes: Vec<ReasonChanged>,
}

/// How far a re-derivation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every decision receipt was re-run; `decisions` of them were checked.
    Checked { decisions: usize },
    /// No root key: the token's binding to the chain was checked, no
    /// decision was re-run.
    NoRootKey,
    /// The token is unreadable or does not verify with the root key (a
    /// mismatch says which); no decision was re-run.
    TokenUnusable,
}

/// One thing that does not follow from the token. Line numbers are 1-based
/// lines of `receipts.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionMismatch {
    /// `session_start` binds another token (its SHA-256 is `recorded`).
    TokenDigest { recorded: String },
    /// The token file is not a capability token.
    NotAToken { why: String },
    /// `session_start` names revocation ids that are not the token's.
    RevocationIds,
    /// The token does not verify with the given root key.
    RootKey { why: String },
    /// A decision receipt's action, counters or decision cannot be read back.
    Unreadable { line: usize, why: String },
    /// A stage other than the token's (catalog, credential, dns, proxy, quota) can
    /// only add a block on top of the token's answer, yet recorded another.
    StageAllowed {
        line: usize,
        stage: String,
        recorded: Verdict,
    },
    /// An aggregate receipt (many refused DNS names in one decision) that
    /// is not one: another stage or verdict, no count, no digest, times out
    /// of order.
    BadAggregate { line: usize, why: String },
    /// The token, asked again, gives another verdict, grant or revocation ids.
    NotFromToken {
        line: usize,
        recorded: Decision,
        derived: Decision,
    },
}

impl DecisionMismatch {
    /// The line at fault; 0 when no one line is (the token itself).
    pub fn line(&self) -> usize {
        use DecisionMismatch::*;
        match self {
            TokenDigest { .. } | RevocationIds => 1,
            NotAToken { .. } | RootKey { .. } => 0,
            Unreadable { line, .. }
            | StageAllowed { line, .. }
            | BadAggregate { line, .. }
            | NotFromToken { line, .. } => *line,
        }
    }
}

impl fmt::Display for DecisionMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecisionMismatch::*;
        match self {
            TokenDigest { recorded } => write!(
                f,
                "line 1: session_start binds a different {TOKEN_FILE} (SHA-256 {recorded})"
            ),
            NotAToken { why } => write!(f, "{TOKEN_FILE} is not a capability token: {why}"),
            RevocationIds => write!(
                f,
                "line 1: session_start names token revocation ids that are not {TOKEN_FILE}'s"
            ),
            RootKey { why } => write!(
                f,
                "{TOKEN_FILE} does not verify with the given root key: {why}"
            ),
            Unreadable { line, why } => write!(f, "line {line}: cannot re-derive: {why}"),
            BadAggregate { line, why } => write!(f, "line {line}: malformed aggregate: {why}"),
            StageAllowed {
                line,
                stage,
                recorded,
            } => write!(
                f,
                "line {line}: the {stage} stage can only block, but recorded {}",
                verdict_name(*recorded)
            ),
            NotFromToken {
                line,
                recorded,
                derived,
            } => write!(
                f,
                "line {line}: decision does not follow from the token: recorded {} ({}), the \
                 token says {} ({})",
                verdict_name(recorded.decision),
                recorded.reason,
                verdict_name(derived.decision),
                derived.reason
            ),
        }
    }
}

/// A decision the token gives again, for another stated reason: worth a
/// warning, not a mismatch (reason texts may change between versions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonChanged {
    pub line: usize,
    pub recorded: String,
    pub derived: String,
}

impl fmt::Display for ReasonChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: same decision, different reason: recorded {:?}, re-derived {:?}",
            self.line, self.recorded, self.derived
        )
    }
}

/// The session bundle's token file, as the messages name it.
const TOKEN_FILE: &str = "capabilities.cap";

/// Re-derives `chain`'s decisions from `token_bytes` (the session's
/// `capabilities.cap`). The token's binding (`session_start`'s SHA-256 and
/// revocation ids) is checked always; the decisions only with the `root_key`
/// the token must verify against.
pub fn rederive(
    chain: &VerifiedChain,
    token_bytes: &[u8],
    root_key: Option<&VerifyingKey>,
) -> Rederivation {
    let mut rederiver = Rederiver::new(chain.start(), token_bytes, root_key);
    for (i, r) in chain.receipts.iter().enumerate() {
        rederiver.push(i + 1, &r.receipt);
    }
    rederiver.finish()
}

/// [`rederive`] one receipt at a time, for a chain read as a stream: made
/// from its session_start, fed every receipt in order with its line.
pub struct Rederiver {
    found: Rederivation,
    /// The token, when it verified with the root key: decisions are re-run.
    capability: Option<Capability>,
    decisions: usize,
}

impl Rederiver {
    /// Checks the token's binding to `start` (the chain's session_start)
    /// and, with the root key, the token itself.
    pub fn new(start: &Receipt, token_bytes: &[u8], root_key: Option<&VerifyingKey>) -> Self {
        let mut rederiver = Rederiver {
            found: Rederivation {
                coverage: Coverage::TokenUnusable,
                mismatches: Vec::new(),
                reason_changes: Vec::new(),
            },
            capability: None,
            decisions: 0,
        };
        let found = &mut rederiver.found;
        let start = &start.body;
        if let Body::SessionStart {
            capability_sha256: Some(digest),
            ..
        } = start
        {
            if digest != &sha256_hex(token_bytes) {
                found.mismatches.push(DecisionMismatch::TokenDigest {
                    recorded: digest.clone(),
                });
            }
        }
        let token = match std::str::from_utf8(token_bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| UnverifiedToken::from_base64(t.trim()).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(why) => {
                found.mismatches.push(DecisionMismatch::NotAToken { why });
                return rederiver;
            }
        };
        if let Body::SessionStart { revocation_ids, .. } = start {
            if revocation_ids != &token.revocation_ids() {
                found.mismatches.push(DecisionMismatch::RevocationIds);
            }
        }
        let Some(root_key) = root_key else {
            found.coverage = Coverage::NoRootKey;
            return rederiver;
        };
        match token.verify(&root_key.to_bytes()) {
            Ok(c) => rederiver.capability = Some(c),
            Err(e) => found
                .mismatches
                .push(DecisionMismatch::RootKey { why: e.to_string() }),
        }
        rederiver
    }

    /// Re-runs `receipt` (the chain's 1-based `line`) if it is a decision.
    pub fn push(&mut self, line: usize, receipt: &Receipt) {
        let Some(capability) = &self.capability else {
            return;
        };
        let found = &mut self.found;
        let Body::Decision(d) = &receipt.body else {
            return;
        };
        let (action, counters, recorded) = match recorded_facts(d) {
            Ok(facts) => facts,
            Err(why) => {
                found
                    .mismatches
                    .push(DecisionMismatch::Unreadable { line, why });
                return;
            }
        };
        // The chain verifier already checked ts parses.
        let Some(now) = parse_time(&receipt.ts) else {
            return;
        };
        self.decisions += 1;
        // Only `token`-stage decisions come from the token alone; the other
        // stages (catalog, credential, dns, proxy, quota) can only add a block on top,
        // so the token may well have allowed what they refused.
        let stage = d.decision.get("stage").and_then(|s| s.as_str());
        if let Some(aggregate) = d.decision.get("aggregate") {
            if let Err(why) = check_aggregate(aggregate, stage, recorded.decision, now) {
                found
                    .mismatches
                    .push(DecisionMismatch::BadAggregate { line, why });
                return;
            }
        }
        if let Some(stage) = stage.filter(|s| *s != "token") {
            if recorded.decision != Verdict::Block {
                found.mismatches.push(DecisionMismatch::StageAllowed {
                    line,
                    stage: stage.to_owned(),
                    recorded: recorded.decision,
                });
            }
            return;
        }
        let derived = capability.authorize(&action, &counters, now);
        if derived.decision != recorded.decision
            || derived.grant != recorded.grant
            || derived.revocation_ids != recorded.revocation_ids
        {
            found.mismatches.push(DecisionMismatch::NotFromToken {
                line,
                recorded,
                derived,
            });
        } else if derived.reason != recorded.reason {
            found.reason_changes.push(ReasonChanged {
                line,
                recorded: recorded.reason,
                derived: derived.reason,
            });
        }
    }

    /// What the re-derivation found.
    pub fn finish(mut self) -> Rederivation {
        if self.capability.is_some() {
            self.found.coverage = Coverage::Checked {
                decisions: self.decisions,
            };
        }
        self.found
    }
}

/// An aggregate decision (DNS refusals past the per-name limit, see
/// `docs/receipts.md`) can only be a `dns`-stage block counting at least one
/// refusal, with the SHA-256 of the names and the first and last refusal's
/// times, in order and not after the receipt.
fn check_aggregate(
    aggregate: &serde_json::Value,
    stage: Option<&str>,
    verdict: Verdict,
    ts: std::time::SystemTime,
) -> Result<(), String> {
    if stage != Some("dns") || verdict != Verdict::Block {
        return Err(format!(
            "only a dns-stage block may aggregate, this is a {} {}",
            stage.unwrap_or("stageless"),
            verdict_name(verdict)
        ));
    }
    let count = aggregate.get("count").and_then(|c| c.as_u64()).unwrap_or(0);
    if count == 0 {
        return Err("no count of refusals".into());
    }
    let digest = aggregate
        .get("names_sha256")
        .and_then(|d| d.as_str())
        .unwrap_or("");
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err("names_sha256 is not a SHA-256 in lower-case hex".into());
    }
    let time = |key: &str| {
        aggregate
            .get(key)
            .and_then(|t| t.as_str())
            .and_then(parse_time)
            .ok_or_else(|| format!("{key} is not a time"))
    };
    let (first, last) = (time("first")?, time("last")?);
    if first > last || last > ts {
        return Err("first, last and the receipt's time are out of order".into());
    }
    Ok(())
}

/// A decision receipt's action, counters and decision as typed values. The
/// recorded query is not a fact the token reads: the action is re-run
/// without it.
fn recorded_facts(d: &DecisionRecord) -> Result<(Action, Counters, Decision), String> {
    let action =
        serde_json::from_value(d.action_facts()).map_err(|e| format!("recorded action: {e}"))?;
    let counters = serde_json::from_value(d.counters.clone())
        .map_err(|e| format!("recorded counters: {e}"))?;
    let decision = serde_json::from_value(d.decision.clone())
        .map_err(|e| format!("recorded decision: {e}"))?;
    Ok((action, counters, decision))
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Block => "block",
        Verdict::Approval => "approval",
    }
}
