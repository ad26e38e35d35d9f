//! Reading one receipt line for verification in a single pass: the typed
//! receipt, where the `sig` member sits in the exact bytes, and whether the
//! top-level members are in canonical order. No intermediate `Value` tree and
//! no re-encoding: the signing input is the line with the `sig` member cut out.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::format::{ApprovalRecord, Body, DecisionRecord, Interruption, Receipt};
use crate::usage::{BudgetWarningRecord, RateSnapshot, UsageRecord, UsageTokens};

/// A parsed line.
pub(crate) struct Parsed<'a> {
    /// `v` if present (checked before anything else about the format).
    pub(crate) v: Option<u64>,
    /// The 128 hex digits of `sig`, borrowed from the line.
    pub(crate) sig: Option<&'a str>,
    /// Whether the top-level keys are strictly increasing in RFC 8785 order.
    pub(crate) sorted: bool,
    fields: Fields,
}

/// Every top-level member this format knows; unknown ones are skipped, as
/// the typed encoding always did.
#[derive(Default)]
struct Fields {
    session: Option<String>,
    seq: Option<u64>,
    ts: Option<String>,
    prev: Option<String>,
    signer: Option<String>,
    kind: Option<String>,
    public_key: Option<String>,
    revocation_ids: Option<Vec<String>>,
    sandbox: Option<String>,
    capability_sha256: Option<Option<String>>,
    tenant: Option<Option<String>>,
    user: Option<Option<String>>,
    action: Option<Value>,
    counters: Option<Value>,
    decision: Option<Value>,
    body_sha256: Option<Option<String>>,
    decision_seq: Option<u64>,
    approved: Option<bool>,
    approver: Option<String>,
    answered_at: Option<String>,
    reason: Option<Option<String>>,
    count: Option<u64>,
    last: Option<String>,
    interrupted: Option<Option<Interruption>>,
    provider: Option<String>,
    api: Option<String>,
    model: Option<String>,
    response_id: Option<Option<String>>,
    tokens: Option<UsageTokens>,
    rates: Option<RateSnapshot>,
    cost_micro_usd: Option<u64>,
    reserved_micro_usd: Option<u64>,
    estimated: Option<bool>,
    usage_seq: Option<u64>,
    percent: Option<u64>,
    spent_micro_usd: Option<u64>,
    budget_micro_usd: Option<u64>,
}

/// Parses a line. Errors are the parser's (syntax, types, duplicate keys).
pub(crate) fn parse(line: &[u8]) -> Result<Parsed<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let parsed = (&mut de).deserialize_map(LineVisitor)?;
    de.end()?;
    Ok(parsed)
}

impl Parsed<'_> {
    /// The typed receipt, or which member is missing or wrong for its kind.
    pub(crate) fn into_receipt(self) -> Result<Receipt, String> {
        let f = self.fields;
        let v = self.v.ok_or_else(|| missing("v"))?;
        let v = u32::try_from(v).map_err(|_| format!("v {v} is out of range"))?;
        let body = match f.kind.as_deref().ok_or_else(|| missing("kind"))? {
            "session_start" => Body::SessionStart {
                public_key: f.public_key.ok_or_else(|| missing("public_key"))?,
                revocation_ids: f.revocation_ids.ok_or_else(|| missing("revocation_ids"))?,
                sandbox: f.sandbox.ok_or_else(|| missing("sandbox"))?,
                capability_sha256: f.capability_sha256.flatten(),
                tenant: f.tenant.flatten(),
                user: f.user.flatten(),
            },
            "decision" => Body::Decision(DecisionRecord {
                action: f.action.ok_or_else(|| missing("action"))?,
                counters: f.counters.ok_or_else(|| missing("counters"))?,
                decision: f.decision.ok_or_else(|| missing("decision"))?,
                body_sha256: f.body_sha256.flatten(),
            }),
            "approval" => Body::Approval(ApprovalRecord {
                decision_seq: f.decision_seq.ok_or_else(|| missing("decision_seq"))?,
                approved: f.approved.ok_or_else(|| missing("approved"))?,
                approver: f.approver.ok_or_else(|| missing("approver"))?,
                answered_at: f.answered_at.ok_or_else(|| missing("answered_at"))?,
                reason: f.reason.flatten(),
            }),
            "usage" => Body::Usage(UsageRecord {
                decision_seq: f.decision_seq.ok_or_else(|| missing("decision_seq"))?,
                provider: f.provider.ok_or_else(|| missing("provider"))?,
                api: f.api.ok_or_else(|| missing("api"))?,
                model: f.model.ok_or_else(|| missing("model"))?,
                response_id: f.response_id.flatten(),
                tokens: f.tokens.ok_or_else(|| missing("tokens"))?,
                rates: f.rates.ok_or_else(|| missing("rates"))?,
                cost_micro_usd: f.cost_micro_usd.ok_or_else(|| missing("cost_micro_usd"))?,
                reserved_micro_usd: f
                    .reserved_micro_usd
                    .ok_or_else(|| missing("reserved_micro_usd"))?,
                estimated: f.estimated.ok_or_else(|| missing("estimated"))?,
            }),
            "budget_warning" => Body::BudgetWarning(BudgetWarningRecord {
                usage_seq: f.usage_seq.ok_or_else(|| missing("usage_seq"))?,
                percent: f.percent.ok_or_else(|| missing("percent"))?,
                spent_micro_usd: f.spent_micro_usd.ok_or_else(|| missing("spent_micro_usd"))?,
                budget_micro_usd: f
                    .budget_micro_usd
                    .ok_or_else(|| missing("budget_micro_usd"))?,
            }),
            "session_end" => Body::SessionEnd {
                count: f.count.ok_or_else(|| missing("count"))?,
                last: f.last.ok_or_else(|| missing("last"))?,
                interrupted: f.interrupted.flatten(),
            },
            other => {
                return Err(format!(
                    "unknown variant `{other}`, expected one of `session_start`, `decision`, `approval`, `usage`, `budget_warning`, `session_end`"
                ))
            }
        };
        Ok(Receipt {
            v,
            session: f.session.ok_or_else(|| missing("session"))?,
            seq: f.seq.ok_or_else(|| missing("seq"))?,
            ts: f.ts.ok_or_else(|| missing("ts"))?,
            prev: f.prev.ok_or_else(|| missing("prev"))?,
            signer: f.signer.ok_or_else(|| missing("signer"))?,
            body,
        })
    }
}

fn missing(field: &str) -> String {
    format!("missing field `{field}`")
}

/// RFC 8785 member order: UTF-16 code units (bytewise for ASCII keys).
fn key_less(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        a < b
    } else {
        a.encode_utf16().lt(b.encode_utf16())
    }
}

/// A top-level key: borrowed when it has no escapes (always, for this
/// format's keys), owned otherwise.
struct Key<'a>(std::borrow::Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(v.to_owned().into()))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// `Some(value)` even for JSON null (a present member), for `Option<Option<T>>`
/// and required `Value` members.
fn present<'de, T: de::Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

struct LineVisitor;

impl<'de> Visitor<'de> for LineVisitor {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a receipt object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed<'de>, A::Error> {
        let mut f = Fields::default();
        let mut v = None;
        let mut sig: Option<&'de str> = None;
        let mut sorted = true;
        let mut last_key: Option<Key<'de>> = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if let Some(last) = &last_key {
                sorted &= key_less(&last.0, &key.0);
            }
            let m = &mut map;
            match &*key.0 {
                "v" => present(&mut v, "v", m)?,
                "sig" => {
                    if sig.is_some() {
                        return Err(de::Error::duplicate_field("sig"));
                    }
                    // Borrowed, so its position in the line is known; hex
                    // never needs escapes, so a sig that does is refused.
                    sig = Some(m.next_value::<&'de str>()?);
                }
                "session" => present(&mut f.session, "session", m)?,
                "seq" => present(&mut f.seq, "seq", m)?,
                "ts" => present(&mut f.ts, "ts", m)?,
                "prev" => present(&mut f.prev, "prev", m)?,
                "signer" => present(&mut f.signer, "signer", m)?,
                "kind" => present(&mut f.kind, "kind", m)?,
                "public_key" => present(&mut f.public_key, "public_key", m)?,
                "revocation_ids" => present(&mut f.revocation_ids, "revocation_ids", m)?,
                "sandbox" => present(&mut f.sandbox, "sandbox", m)?,
                "capability_sha256" => present(&mut f.capability_sha256, "capability_sha256", m)?,
                "tenant" => present(&mut f.tenant, "tenant", m)?,
                "user" => present(&mut f.user, "user", m)?,
                "action" => present(&mut f.action, "action", m)?,
                "counters" => present(&mut f.counters, "counters", m)?,
                "decision" => present(&mut f.decision, "decision", m)?,
                "body_sha256" => present(&mut f.body_sha256, "body_sha256", m)?,
                "decision_seq" => present(&mut f.decision_seq, "decision_seq", m)?,
                "approved" => present(&mut f.approved, "approved", m)?,
                "approver" => present(&mut f.approver, "approver", m)?,
                "answered_at" => present(&mut f.answered_at, "answered_at", m)?,
                "reason" => present(&mut f.reason, "reason", m)?,
                "count" => present(&mut f.count, "count", m)?,
                "last" => present(&mut f.last, "last", m)?,
                "interrupted" => present(&mut f.interrupted, "interrupted", m)?,
                "provider" => present(&mut f.provider, "provider", m)?,
                "api" => present(&mut f.api, "api", m)?,
                "model" => present(&mut f.model, "model", m)?,
                "response_id" => present(&mut f.response_id, "response_id", m)?,
                "tokens" => present(&mut f.tokens, "tokens", m)?,
                "rates" => present(&mut f.rates, "rates", m)?,
                "cost_micro_usd" => present(&mut f.cost_micro_usd, "cost_micro_usd", m)?,
                "reserved_micro_usd" => {
                    present(&mut f.reserved_micro_usd, "reserved_micro_usd", m)?
                }
                "estimated" => present(&mut f.estimated, "estimated", m)?,
                "usage_seq" => present(&mut f.usage_seq, "usage_seq", m)?,
                "percent" => present(&mut f.percent, "percent", m)?,
                "spent_micro_usd" => present(&mut f.spent_micro_usd, "spent_micro_usd", m)?,
                "budget_micro_usd" => present(&mut f.budget_micro_usd, "budget_micro_usd", m)?,
                _ => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            last_key = Some(key);
        }
        Ok(Parsed {
            v,
            sig,
            sorted,
            fields: f,
        })
    }
}

/// Where the `sig` member is in `line`, given the borrowed hex digits:
/// `(start, end)` of the exact bytes `,"sig":"<128 hex>"`, or `None` if the
/// member is not spelled exactly so (whitespace, escapes, first member).
pub(crate) fn sig_member(line: &[u8], sig: &str) -> Option<(usize, usize)> {
    const OPEN: &[u8] = b",\"sig\":\"";
    // The hex digits are borrowed from `line`: their offset is a pointer difference.
    let at = (sig.as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
    let start = at.checked_sub(OPEN.len())?;
    let end = at + sig.len() + 1;
    if end > line.len() || &line[start..at] != OPEN || line[end - 1] != b'"' {
        return None;
    }
    Some((start, end))
}
