//! The receipt byte format: typed receipt bodies, canonical (RFC 8785) line
//! encoding, the signing input, key ids and line hashes.

use std::{borrow::Cow, io::Write as _};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    canonical::{self, canonical_str, write_canonical_str},
    usage::{BudgetWarningRecord, UsageRecord},
};

/// Format version of every receipt as first defined: `session_start`,
/// `decision`, `approval` and a `session_end` written by the supervisor.
pub const FORMAT_VERSION: u32 = 1;

/// Format version of a `session_end` that carries [`Interruption`] (written
/// by recovery after the supervisor died). Versions are per line: a line
/// carries the lowest version that can express it, so a verifier that
/// predates interruptions refuses exactly the line that needs them (rather
/// than skipping the unknown member and calling the chain a normal end),
/// and keeps reading every other chain.
pub const INTERRUPTED_END_VERSION: u32 = 2;

/// Format version of a `usage` receipt (what one metered LLM call used and
/// cost): a verifier that predates metering refuses exactly those lines.
pub const USAGE_VERSION: u32 = 3;

/// Format version of a `budget_warning` receipt (the LLM spend reached a
/// warning level of its budget); older verifiers refuse exactly those lines.
pub const BUDGET_WARNING_VERSION: u32 = 4;

/// Format version of a line written without a `sig` of its own: one
/// signature per group commit. The group's last line is signed, and its
/// `prev` hash (which covers the line before it, whose `prev` covers the one
/// before that, ...) binds every unsigned line of the group to it. An older
/// verifier refuses exactly the unsigned lines.
pub const UNSIGNED_VERSION: u32 = 5;

/// The newest format version this crate writes and reads.
pub const LATEST_FORMAT_VERSION: u32 = UNSIGNED_VERSION;

/// The format version a receipt with this body is written with (and must
/// carry to verify).
pub fn version_of(body: &Body) -> u32 {
    match body {
        Body::SessionEnd {
            interrupted: Some(_),
            ..
        } => INTERRUPTED_END_VERSION,
        Body::Usage(_) => USAGE_VERSION,
        Body::BudgetWarning(_) => BUDGET_WARNING_VERSION,
        _ => FORMAT_VERSION,
    }
}

/// The format version of a line with this body written without its own
/// signature (covered by the next signed line's): at least
/// [`UNSIGNED_VERSION`]. session_start and session_end are always signed.
pub fn unsigned_version_of(body: &Body) -> u32 {
    version_of(body).max(UNSIGNED_VERSION)
}

/// Room for a quoted `ts` (29 bytes through the year 9999).
const QUOTED_TS_MAX: usize = 40;

/// `prev` of the first receipt (seq 0): 64 zeros, since it has no predecessor.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One receipt as written on a line, minus its `sig` (kept beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Format version ([`version_of`] the body: [`FORMAT_VERSION`],
    /// [`INTERRUPTED_END_VERSION`] for an interrupted `session_end`,
    /// [`USAGE_VERSION`] for `usage`, [`BUDGET_WARNING_VERSION`] for
    /// `budget_warning`).
    pub v: u32,
    /// Session id, the same on every line of a chain.
    pub session: String,
    /// Position in the chain, from 0, no gaps.
    pub seq: u64,
    /// RFC 3339 UTC with microseconds. For decisions: the `now` the decision was made with.
    pub ts: String,
    /// Hex SHA-256 of the previous line's bytes (without its newline), or [`GENESIS_PREV`].
    pub prev: String,
    /// Key id of the signing key ([`key_id`]).
    pub signer: String,
    #[serde(flatten)]
    pub body: Body,
}

/// What a receipt records; its `kind` field names the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// First line: binds the session to its signer, token and sandbox.
    SessionStart {
        /// Hex of the 32-byte ed25519 public key that signs this chain.
        public_key: String,
        /// Revocation ids of the session's capability token, root block first.
        revocation_ids: Vec<String>,
        /// Isolation backend (`kvm`, `netns`, ...).
        sandbox: String,
        /// Hex SHA-256 of the session's `capabilities.cap` file, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capability_sha256: Option<String>,
        /// Who the session is billed to (`openclaw run --tenant`); absent in
        /// chains written before sessions were labelled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        /// Who ran the session (`openclaw run --user`); absent likewise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// One authorization decision, with everything needed to re-run it.
    Decision(DecisionRecord),
    /// A human's (or the timeout's) answer to an approval-gated decision.
    Approval(ApprovalRecord),
    /// What a metered LLM call used and cost, after its response ended
    /// ([`USAGE_VERSION`]).
    Usage(UsageRecord),
    /// The LLM spend reached a warning level of the budget
    /// ([`BUDGET_WARNING_VERSION`]).
    BudgetWarning(BudgetWarningRecord),
    /// Last line: commits to the number of receipts and the last hash.
    SessionEnd {
        /// Number of receipts in the chain, this one included (its seq + 1).
        count: u64,
        /// Hex SHA-256 of the line before this one (equals `prev`).
        last: String,
        /// Present when the supervisor did not end the session itself: it
        /// died, and recovery closed the chain later (this receipt's `ts`
        /// is when). Such a line is [`INTERRUPTED_END_VERSION`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interrupted: Option<Interruption>,
    },
}

/// Why and where a chain was closed by someone other than its supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interruption {
    pub cause: InterruptionCause,
    /// seq of the last receipt the supervisor wrote (this end's seq − 1):
    /// everything up to it is what the session did.
    pub at_seq: u64,
}

/// What ended a session without its supervisor's `session_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterruptionCause {
    /// The supervisor process died (SIGKILL, OOM killer, a crash, a
    /// reboot); the next openclaw process recovered the session.
    SupervisorDied,
}

impl InterruptionCause {
    /// The words reports and the verifier use.
    pub fn describe(self) -> &'static str {
        match self {
            InterruptionCause::SupervisorDied => "interrupted (supervisor died)",
        }
    }
}

/// A decision receipt's content. The three JSON values are recorded verbatim
/// and not interpreted here: they are `capabilities::Action`,
/// `capabilities::Counters` (as they were when deciding) and
/// `capabilities::Decision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The action facts (never credential values; bodies only as digests).
    pub action: Value,
    /// The session counters the decision was made with.
    pub counters: Value,
    /// The decision: `decision` (allow|block|approval), `reason`, `grant`, `revocation_ids`.
    pub decision: Value,
    /// Hex SHA-256 of the request body, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

impl DecisionRecord {
    /// The request's query string as the sandbox sent it (the bytes after
    /// `?`, credential placeholders never substituted), when its URI had
    /// one: `action.query` ([`RecordedAction`]).
    pub fn query(&self) -> Option<&str> {
        self.action.get(QUERY_MEMBER).and_then(Value::as_str)
    }

    /// The action facts the token decided on: `action` without the
    /// recorded query (which is what went upstream, not a fact the token
    /// reads), as `capabilities::Action` parses them.
    pub fn action_facts(&self) -> Value {
        let mut facts = self.action.clone();
        if let Value::Object(members) = &mut facts {
            members.remove(QUERY_MEMBER);
        }
        facts
    }
}

/// The member of a decision's `action` that holds the request's query.
const QUERY_MEMBER: &str = "query";

/// A decision receipt's `action` member: the action facts, and beside their
/// `path` the request's query string when its URI had one (`query`, exactly
/// the bytes after `?` as the sandbox sent them; `""` after a bare `?`, so
/// `/a?` and `/a` differ). Without a query it encodes exactly as the facts
/// do, so chains written before the query was recorded read the same.
pub struct RecordedAction<'a, A: ?Sized> {
    pub facts: &'a A,
    pub query: Option<&'a str>,
}

impl<A: Serialize + ?Sized> Serialize for RecordedAction<'_, A> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The facts' members and `query`, as one object.
        #[derive(Serialize)]
        struct WithQuery<'a, A: ?Sized> {
            #[serde(flatten)]
            facts: &'a A,
            query: &'a str,
        }
        match self.query {
            None => self.facts.serialize(serializer),
            Some(query) => WithQuery {
                facts: self.facts,
                query,
            }
            .serialize(serializer),
        }
    }
}

/// A decision receipt's content already in canonical form, made from the
/// typed action, counters and decision without a `serde_json::Value` in
/// between: how the enforcing path records a decision (one per request).
/// It reads back as the same [`DecisionRecord`], and its line is the one
/// that record would make, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalDecision {
    /// `{"action":…,["body_sha256":…,]"counters":…,"decision":…`: the
    /// receipt line's start, its first members in order, still open (the
    /// log writes the rest of the line after them, in the same buffer).
    bytes: Vec<u8>,
}

impl CanonicalDecision {
    /// Encodes the three values (which must serialize as the documented
    /// action, counters and decision objects) and the body digest.
    pub fn new<A, C, D>(
        action: &A,
        counters: &C,
        decision: &D,
        body_sha256: Option<&str>,
    ) -> Result<Self, serde_json::Error>
    where
        A: Serialize + ?Sized,
        C: Serialize + ?Sized,
        D: Serialize + ?Sized,
    {
        let mut bytes = Vec::with_capacity(512);
        let mut writer = canonical::Writer::default();
        bytes.extend_from_slice(b"{\"action\":");
        writer.append(action, &mut bytes)?;
        if let Some(digest) = body_sha256 {
            bytes.extend_from_slice(b",\"body_sha256\":");
            write_canonical_str(digest, &mut bytes);
        }
        bytes.extend_from_slice(b",\"counters\":");
        writer.append(counters, &mut bytes)?;
        bytes.extend_from_slice(b",\"decision\":");
        writer.append(decision, &mut bytes)?;
        Ok(CanonicalDecision { bytes })
    }

    /// The same content from a record of JSON values.
    pub fn from_record(record: &DecisionRecord) -> Result<Self, serde_json::Error> {
        Self::new(
            &record.action,
            &record.counters,
            &record.decision,
            record.body_sha256.as_deref(),
        )
    }

    /// The content as a [`DecisionRecord`] (what a reader of the receipt
    /// gets).
    pub fn to_record(&self) -> Result<DecisionRecord, serde_json::Error> {
        let mut object = Vec::with_capacity(self.bytes.len() + 1);
        object.extend_from_slice(&self.bytes);
        object.push(b'}');
        serde_json::from_slice(&object)
    }
}

/// An approval answer, referring to the decision receipt it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// `seq` of the decision receipt (whose decision was `approval`).
    pub decision_seq: u64,
    pub approved: bool,
    /// Who answered: `terminal`, `ui`, `api`, `timeout`, ...
    pub approver: String,
    /// When the answer came, RFC 3339 UTC.
    pub answered_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Key id: hex of the first 16 bytes of SHA-256 over the 32-byte public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..16])
}

/// Hex SHA-256 of one line's bytes, without its terminating newline.
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// Hex SHA-256 of arbitrary bytes (request bodies, token files).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// RFC 3339 UTC with microseconds, the form of `ts` and `answered_at`.
pub fn format_time(t: std::time::SystemTime) -> String {
    use std::fmt::Write as _;
    // Sized once: `to_string` grows the string as it goes (three
    // allocations, on every event and receipt).
    let mut text = String::with_capacity(QUOTED_TS_MAX);
    write!(text, "{}", humantime::format_rfc3339_micros(t)).expect("writing to a String");
    text
}

/// Parses a `ts` / `answered_at` value (RFC 3339 UTC).
pub fn parse_time(text: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

/// Encodes and signs a receipt: returns the line (without newline).
///
/// Signing input: the RFC 8785 canonical JSON of the receipt without `sig`.
/// The line: the canonical JSON of the receipt with `sig` (128 lowercase hex).
pub fn sign_line(receipt: &Receipt, key: &SigningKey) -> Result<Vec<u8>, serde_json::Error> {
    let (prepared, prev) = prepared_with_prev(receipt)?;
    let mut line = Vec::new();
    let mut scratch = Vec::new();
    prepared.sign_into(
        receipt.seq,
        &prev,
        |input| key.sign(input).to_bytes(),
        &mut scratch,
        &mut line,
    );
    Ok(line)
}

/// Encodes a receipt without a signature of its own (for tests and tools
/// that build chains by hand): the line a group commit writes for every
/// receipt of the group but the last. `receipt.v` must be
/// [`unsigned_version_of`] its body for the line to verify.
pub fn unsigned_line(receipt: &Receipt) -> Result<Vec<u8>, serde_json::Error> {
    let (prepared, prev) = prepared_with_prev(receipt)?;
    let mut line = Vec::new();
    prepared.unsigned_into(receipt.seq, &prev, Some(receipt.v), &mut line);
    Ok(line)
}

/// A whole receipt's [`Prepared`] form and its `prev` as it goes between
/// the quotes (64 hex digits in every real receipt; encoded properly anyway).
fn prepared_with_prev(receipt: &Receipt) -> Result<(Prepared, Vec<u8>), serde_json::Error> {
    let prepared = Prepared::new(
        receipt.v,
        &receipt.session,
        &receipt.ts,
        &receipt.signer,
        &receipt.body,
    )?;
    let quoted = canonical_str(&receipt.prev);
    Ok((prepared, quoted[1..quoted.len() - 1].to_vec()))
}

/// A receipt encoded in canonical form except for the members that depend on
/// its place in the chain (`prev`, `seq`) and on signing (`sig`). Built off
/// the chain lock, so only filling in those members and signing is serial.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// Canonical members in RFC 8785 order, with `"prev":"` … `","seq":` … left open.
    bytes: Vec<u8>,
    /// Where the 64 hex digits of `prev` go.
    prev_at: usize,
    /// Where the decimal digits of `seq` go.
    seq_at: usize,
    /// Where `,"sig":"…"` goes in the line (never first: `prev` sorts before it).
    sig_at: usize,
    /// Where the digits of `v` are, and how many: a line written without
    /// its own signature carries [`unsigned_version_of`] its body instead.
    v_at: usize,
    v_len: usize,
    /// The version for that case.
    unsigned_v: u32,
}

impl Prepared {
    /// Canonicalizes every member except `prev`, `seq` and `sig`.
    pub(crate) fn new(
        v: u32,
        session: &str,
        ts: &str,
        signer: &str,
        body: &Body,
    ) -> Result<Self, serde_json::Error> {
        if let Body::Decision(record) = body {
            let members = CanonicalDecision::from_record(record)?;
            return Ok(Prepared::decision(
                v,
                session,
                &canonical_str(ts),
                signer,
                members,
            ));
        }
        // (key, canonical value); None marks prev, seq and sig.
        let mut members: Vec<(Cow<'_, str>, Option<Vec<u8>>)> = Vec::with_capacity(16);
        let Value::Object(body_members) = serde_json::to_value(body)? else {
            return Err(serde::ser::Error::custom("a receipt body is a JSON object"));
        };
        let mut writer = canonical::Writer::default();
        for (k, v) in body_members {
            let mut bytes = Vec::new();
            writer.append(&v, &mut bytes)?;
            members.push((k.into(), Some(bytes)));
        }
        members.push(("v".into(), Some(v.to_string().into_bytes())));
        for (k, text) in [("session", session), ("ts", ts), ("signer", signer)] {
            members.push((k.into(), Some(canonical_str(text))));
        }
        for k in ["prev", "seq", "sig"] {
            members.push((k.into(), None));
        }
        // RFC 8785 orders members by the UTF-16 code units of their keys.
        members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
        if members.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(serde::ser::Error::custom(
                "a receipt body repeats a top-level member",
            ));
        }
        let mut out = Vec::with_capacity(
            members
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 4)
                .sum::<usize>()
                + 16,
        );
        let (mut prev_at, mut seq_at, mut sig_at, mut v_at, mut v_len) = (0, 0, 0, 0, 0);
        out.push(b'{');
        for (i, (k, v)) in members.iter().enumerate() {
            if k == "sig" {
                sig_at = out.len();
                continue;
            }
            if i > 0 {
                out.push(b',');
            }
            write_canonical_str(k, &mut out);
            out.push(b':');
            match (k.as_ref(), v) {
                ("v", Some(v)) => {
                    v_at = out.len();
                    v_len = v.len();
                    out.extend_from_slice(v);
                }
                (_, Some(v)) => out.extend_from_slice(v),
                ("prev", None) => {
                    out.push(b'"');
                    prev_at = out.len();
                    out.push(b'"');
                }
                _ => seq_at = out.len(),
            }
        }
        out.push(b'}');
        // `v` sorts after `seq` and `sig`, so it is filled in last.
        debug_assert!(prev_at < seq_at && seq_at <= sig_at && sig_at <= v_at);
        Ok(Prepared {
            bytes: out,
            prev_at,
            seq_at,
            sig_at,
            v_at,
            v_len,
            unsigned_v: unsigned_version_of(body),
        })
    }

    /// A decision receipt from its canonical content, stamped `decided_at`.
    pub(crate) fn canonical_decision(
        session: &str,
        signer: &str,
        decided_at: std::time::SystemTime,
        record: CanonicalDecision,
    ) -> Prepared {
        // RFC 3339 text needs no escaping: quoted, it is canonical as is.
        let mut ts = [0u8; QUOTED_TS_MAX];
        let mut cursor = &mut ts[..];
        write!(
            cursor,
            "\"{}\"",
            humantime::format_rfc3339_micros(decided_at)
        )
        .expect("a quoted RFC 3339 timestamp fits");
        let len = QUOTED_TS_MAX - cursor.len();
        Prepared::decision(FORMAT_VERSION, session, &ts[..len], signer, record)
    }

    /// A decision receipt, written straight in member order: its top-level
    /// keys are always the same, so nothing needs sorting. `ts` is the
    /// quoted canonical timestamp.
    fn decision(
        v: u32,
        session: &str,
        ts: &[u8],
        signer: &str,
        members: CanonicalDecision,
    ) -> Prepared {
        // action < body_sha256 < counters < decision < kind < prev < seq <
        // session < sig < signer < ts < v in UTF-16 (here: ASCII) order.
        let mut out = members.bytes;
        out.reserve(session.len() + signer.len() + ts.len() + 80);
        out.extend_from_slice(b",\"kind\":\"decision\",\"prev\":\"");
        let prev_at = out.len();
        out.extend_from_slice(b"\",\"seq\":");
        let seq_at = out.len();
        out.extend_from_slice(b",\"session\":");
        write_canonical_str(session, &mut out);
        let sig_at = out.len();
        out.extend_from_slice(b",\"signer\":");
        write_canonical_str(signer, &mut out);
        out.extend_from_slice(b",\"ts\":");
        out.extend_from_slice(ts);
        out.extend_from_slice(b",\"v\":");
        let v_at = out.len();
        write!(out, "{v}").expect("writing to a Vec cannot fail");
        let v_len = out.len() - v_at;
        out.push(b'}');
        Prepared {
            bytes: out,
            prev_at,
            seq_at,
            sig_at,
            v_at,
            v_len,
            // unsigned_version_of a decision body.
            unsigned_v: UNSIGNED_VERSION,
        }
    }

    /// Appends the line without `sig` to `out`, with `prev`, `seq` and (if
    /// given) a version in place of the encoded one. Returns where in `out`
    /// the `sig` member would go.
    fn fill(&self, seq: u64, prev_hex: &[u8], v: Option<u32>, out: &mut Vec<u8>) -> usize {
        let b = &self.bytes;
        let start = out.len();
        out.extend_from_slice(&b[..self.prev_at]);
        out.extend_from_slice(prev_hex);
        out.extend_from_slice(&b[self.prev_at..self.seq_at]);
        let before = out.len();
        if seq <= 1 << 53 {
            write!(out, "{seq}").expect("writing to a Vec cannot fail");
        } else {
            // RFC 8785 numbers are doubles: beyond 2^53 they round.
            serde_json_canonicalizer::to_writer(&seq, &mut *out)
                .expect("writing a number to a Vec cannot fail");
        }
        let sig_at = start + self.sig_at + prev_hex.len() + (out.len() - before);
        match v {
            None => out.extend_from_slice(&b[self.seq_at..]),
            Some(v) => {
                out.extend_from_slice(&b[self.seq_at..self.v_at]);
                write!(out, "{v}").expect("writing to a Vec cannot fail");
                out.extend_from_slice(&b[self.v_at + self.v_len..]);
            }
        }
        sig_at
    }

    /// Fills in `prev` and `seq` and appends the line without a signature
    /// of its own (version [`unsigned_version_of`] its body, or `v` when
    /// given) to `line`: a group commit's line before the group's last.
    pub(crate) fn unsigned_into(
        &self,
        seq: u64,
        prev_hex: &[u8],
        v: Option<u32>,
        line: &mut Vec<u8>,
    ) {
        self.fill(seq, prev_hex, Some(v.unwrap_or(self.unsigned_v)), line);
    }

    /// Fills in `prev` (64 hex digits) and `seq`, signs, and appends the line
    /// (without newline) to `line`. `scratch` receives the signing input.
    pub(crate) fn sign_into(
        &self,
        seq: u64,
        prev_hex: &[u8],
        sign: impl FnOnce(&[u8]) -> [u8; 64],
        scratch: &mut Vec<u8>,
        line: &mut Vec<u8>,
    ) {
        scratch.clear();
        let sig_at = self.fill(seq, prev_hex, None, scratch);
        let sig = sign(scratch);
        let mut sig_hex = [0u8; 128];
        hex::encode_to_slice(sig, &mut sig_hex).expect("128 hex digits for 64 bytes");
        line.reserve(scratch.len() + 138);
        line.extend_from_slice(&scratch[..sig_at]);
        line.extend_from_slice(b",\"sig\":\"");
        line.extend_from_slice(&sig_hex);
        line.push(b'"');
        line.extend_from_slice(&scratch[sig_at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_32_hex_chars_and_differs_per_key() {
        let a = SigningKey::from_bytes(&[1; 32]).verifying_key();
        let b = SigningKey::from_bytes(&[2; 32]).verifying_key();
        assert_eq!(key_id(&a).len(), 32);
        assert_ne!(key_id(&a), key_id(&b));
    }

    /// The straightforward encoding: canonicalize the whole receipt, sign,
    /// add `sig`, canonicalize again. The fast encoder must match it byte
    /// for byte.
    fn reference_line(receipt: &Receipt, key: &SigningKey) -> Vec<u8> {
        let mut value = serde_json::to_value(receipt).expect("value");
        let input = serde_json_canonicalizer::to_vec(&value).expect("jcs");
        let sig = key.sign(&input);
        if let Value::Object(map) = &mut value {
            map.insert("sig".to_owned(), Value::String(hex::encode(sig.to_bytes())));
        }
        serde_json_canonicalizer::to_vec(&value).expect("jcs")
    }

    #[test]
    fn the_fast_encoder_matches_whole_receipt_canonicalization_for_every_kind() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let bodies = [
            Body::SessionStart {
                public_key: hex::encode(key.verifying_key().as_bytes()),
                revocation_ids: vec!["a".into(), "b".into()],
                sandbox: "kvm".into(),
                capability_sha256: None,
                tenant: None,
                user: None,
            },
            Body::SessionStart {
                public_key: hex::encode(key.verifying_key().as_bytes()),
                revocation_ids: vec![],
                sandbox: "netns".into(),
                capability_sha256: Some(sha256_hex(b"token")),
                tenant: Some("acme \"é\"".into()),
                user: Some("alice".into()),
            },
            Body::Decision(DecisionRecord {
                // Keys that sort around the receipt's own (prev, seq, sig),
                // escapes, non-ASCII, floats, nesting.
                action: serde_json::json!({"type": "web", "sig": "x", "seq": 1, "prev": null,
                    "path": "/a\"b\\c\u{1}\u{7f}é😀", "z": [1.5, 1e21, -0.0, {"b": 1, "a": 2}],
                    "\u{e9}": 1, "\u{1f600}": 2, "\u{ff61}": 3}),
                counters: serde_json::json!({"spent_cents": 12, "emails_sent": 0}),
                decision: serde_json::json!({"decision": "allow", "reason": "ok", "grant": null}),
                body_sha256: Some(sha256_hex(b"body")),
            }),
            Body::Decision(DecisionRecord {
                action: Value::Null,
                counters: serde_json::json!([]),
                decision: serde_json::json!("block"),
                body_sha256: None,
            }),
            Body::Approval(ApprovalRecord {
                decision_seq: 3,
                approved: true,
                approver: "terminal".into(),
                answered_at: "2026-01-01T00:00:01.000000Z".into(),
                reason: Some("operator typed y".into()),
            }),
            Body::Approval(ApprovalRecord {
                decision_seq: 9,
                approved: false,
                approver: "timeout".into(),
                answered_at: "2026-01-01T00:00:01.000000Z".into(),
                reason: None,
            }),
            Body::Usage(UsageRecord {
                decision_seq: 4,
                provider: "api.openai.com".into(),
                api: "openai.chat".into(),
                model: "gpt-4o-mini-é".into(),
                response_id: Some("chatcmpl-1".into()),
                tokens: crate::UsageTokens {
                    input: 10,
                    cached_input: 2,
                    output: 7,
                    reasoning: 3,
                    ..Default::default()
                },
                rates: crate::RateSnapshot {
                    card_sha256: sha256_hex(b"card"),
                    price: crate::ModelPrice {
                        model: "gpt-4o-mini".into(),
                        input: 150_000,
                        output: 600_000,
                        ..Default::default()
                    },
                },
                cost_micro_usd: 6,
                reserved_micro_usd: 900,
                estimated: false,
            }),
            Body::Usage(UsageRecord {
                decision_seq: u64::MAX,
                provider: "api.anthropic.com".into(),
                api: "anthropic.messages".into(),
                model: String::new(),
                response_id: None,
                tokens: crate::UsageTokens::default(),
                rates: crate::RateSnapshot::default(),
                cost_micro_usd: 900,
                reserved_micro_usd: 900,
                estimated: true,
            }),
            Body::BudgetWarning(BudgetWarningRecord {
                usage_seq: 5,
                percent: 80,
                spent_micro_usd: 800_001,
                budget_micro_usd: 1_000_000,
            }),
            Body::SessionEnd {
                count: 12,
                last: sha256_hex(b"last"),
                interrupted: None,
            },
            Body::SessionEnd {
                count: 12,
                last: sha256_hex(b"last"),
                interrupted: Some(Interruption {
                    cause: InterruptionCause::SupervisorDied,
                    at_seq: 10,
                }),
            },
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            for seq in [0, 9, 10, 1 << 53, (1 << 53) + 1, u64::MAX] {
                let receipt = Receipt {
                    v: version_of(&body),
                    session: format!("sess-{i}-é"),
                    seq,
                    ts: "2026-01-01T00:00:00.000000Z".into(),
                    prev: if seq == 10 {
                        "not \"hex\" \u{1}".into()
                    } else {
                        sha256_hex(&seq.to_le_bytes())
                    },
                    signer: key_id(&key.verifying_key()),
                    body: body.clone(),
                };
                let line = sign_line(&receipt, &key).expect("encode");
                assert_eq!(
                    String::from_utf8(line).expect("utf8"),
                    String::from_utf8(reference_line(&receipt, &key)).expect("utf8"),
                );
            }
        }
    }

    #[test]
    fn encoded_line_is_canonical_sorted_and_ends_with_no_newline() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let receipt = Receipt {
            v: FORMAT_VERSION,
            session: "s".into(),
            seq: 0,
            ts: "2026-01-01T00:00:00.000000Z".into(),
            prev: GENESIS_PREV.into(),
            signer: key_id(&key.verifying_key()),
            body: Body::SessionEnd {
                count: 1,
                last: GENESIS_PREV.into(),
                interrupted: None,
            },
        };
        let line = sign_line(&receipt, &key).expect("encode");
        let text = String::from_utf8(line).expect("utf8");
        assert!(
            text.starts_with("{\"count\":1,\"kind\":\"session_end\",\"last\":"),
            "{text}"
        );
        assert!(!text.contains('\n') && !text.contains(' '));
        let value: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["sig"].as_str().map(str::len), Some(128));
    }

    proptest::proptest! {
        /// Decision receipts built from arbitrary JSON match the whole-receipt
        /// reference encoding.
        #[test]
        fn decision_lines_match_the_reference(
            action in crate::canonical::tests::any_json(),
            counters in crate::canonical::tests::any_json(),
            decision in crate::canonical::tests::any_json(),
            digest in proptest::option::of("[0-9a-f]{64}"),
            seq in proptest::prelude::any::<u64>(),
        ) {
            let key = SigningKey::from_bytes(&[9; 32]);
            let receipt = Receipt {
                v: FORMAT_VERSION,
                session: "s".into(),
                seq,
                ts: "2026-01-01T00:00:00.000000Z".into(),
                prev: GENESIS_PREV.into(),
                signer: key_id(&key.verifying_key()),
                body: Body::Decision(DecisionRecord { action, counters, decision, body_sha256: digest }),
            };
            let reference = reference_line(&receipt, &key);
            proptest::prop_assert_eq!(sign_line(&receipt, &key).expect("encode"), reference.clone());
            // The enforcing path's route: typed values straight to bytes.
            let Body::Decision(record) = &receipt.body else { unreachable!() };
            let canonical = CanonicalDecision::from_record(record).expect("encode");
            let decided_at = parse_time(&receipt.ts).expect("ts");
            let prepared = Prepared::canonical_decision(&receipt.session, &receipt.signer, decided_at, canonical);
            let (mut line, mut scratch) = (Vec::new(), Vec::new());
            prepared.sign_into(seq, GENESIS_PREV.as_bytes(), |input| key.sign(input).to_bytes(), &mut scratch, &mut line);
            proptest::prop_assert_eq!(line, reference);
            let unsigned = Receipt { v: UNSIGNED_VERSION, ..receipt.clone() };
            let mut line = Vec::new();
            prepared.unsigned_into(seq, GENESIS_PREV.as_bytes(), None, &mut line);
            proptest::prop_assert_eq!(line, unsigned_line(&unsigned).expect("encode"));
        }
    }

    #[test]
    fn a_recorded_query_sits_beside_the_path_and_no_query_leaves_the_facts_as_they_were() {
        #[derive(Serialize)]
        struct Facts<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            method: &'a str,
            path: &'a str,
            recipients: Vec<&'a str>,
        }
        let facts = Facts {
            kind: "web",
            method: "POST",
            path: "/api/transfer",
            recipients: vec!["r"],
        };
        let counters = serde_json::json!({});
        let decision = serde_json::json!({"decision": "allow"});
        let encode = |query: Option<&str>| {
            let recorded = RecordedAction {
                facts: &facts,
                query,
            };
            let fast = CanonicalDecision::new(&recorded, &counters, &decision, None)
                .expect("encode")
                .to_record()
                .expect("parse");
            // The general route (a Value, then the canonicalizer) agrees.
            let general = DecisionRecord {
                action: serde_json::to_value(&recorded).expect("value"),
                counters: counters.clone(),
                decision: decision.clone(),
                body_sha256: None,
            };
            assert_eq!(
                CanonicalDecision::from_record(&general).expect("encode"),
                CanonicalDecision::new(&recorded, &counters, &decision, None).expect("encode")
            );
            fast
        };
        let without = encode(None);
        assert_eq!(without.action, serde_json::to_value(&facts).expect("value"));
        assert_eq!(without.query(), None);
        for query in [
            "to=mallory&amount=9999",
            "",
            "a=%2F&b",
            "x=\"\\\u{1}\u{202e}é",
        ] {
            let with = encode(Some(query));
            assert_eq!(with.query(), Some(query));
            assert_eq!(with.action_facts(), without.action);
        }
        let line = CanonicalDecision::new(
            &RecordedAction {
                facts: &facts,
                query: Some("a=1"),
            },
            &counters,
            &decision,
            None,
        )
        .expect("encode");
        assert!(String::from_utf8_lossy(&line.bytes).starts_with(
            r#"{"action":{"method":"POST","path":"/api/transfer","query":"a=1","recipients":["r"],"type":"web"}"#
        ));
    }

    #[test]
    fn a_canonical_decision_reads_back_as_its_record() {
        #[derive(Serialize)]
        struct Action<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            host: &'a str,
            amount_cents: Option<u64>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            recipients: Vec<&'a str>,
        }
        let action = Action {
            kind: "payment",
            host: "pay.example",
            amount_cents: Some(48_700),
            recipients: vec![],
        };
        let counters = serde_json::json!({"spent_cents": 1, "emails_sent": 0});
        let decision = serde_json::json!({"decision": "approval", "reason": "over \"limit\" é",
            "grant": null, "revocation_ids": ["a"], "stage": "token"});
        let digest = sha256_hex(b"body");
        let canonical =
            CanonicalDecision::new(&action, &counters, &decision, Some(&digest)).expect("encode");
        let record = DecisionRecord {
            action: serde_json::to_value(&action).expect("value"),
            counters,
            decision,
            body_sha256: Some(digest),
        };
        assert_eq!(canonical.to_record().expect("parse"), record);
        assert_eq!(
            CanonicalDecision::from_record(&record).expect("encode"),
            canonical
        );
    }
}
