//! The receipt byte format: typed receipt bodies, canonical (RFC 8785) line
//! encoding, the signing input, key ids and line hashes.

use std::io::Write as _;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Format version written in every receipt's `v` field.
pub const FORMAT_VERSION: u32 = 1;

/// `prev` of the first receipt (seq 0): 64 zeros, since it has no predecessor.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One receipt as written on a line, minus its `sig` (kept beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Format version ([`FORMAT_VERSION`]).
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
    },
    /// One authorization decision, with everything needed to re-run it.
    Decision(DecisionRecord),
    /// A human's (or the timeout's) answer to an approval-gated decision.
    Approval(ApprovalRecord),
    /// Last line: commits to the number of receipts and the last hash.
    SessionEnd {
        /// Number of receipts in the chain, this one included (its seq + 1).
        count: u64,
        /// Hex SHA-256 of the line before this one (equals `prev`).
        last: String,
    },
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
    humantime::format_rfc3339_micros(t).to_string()
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
    let prepared = Prepared::new(
        receipt.v,
        &receipt.session,
        &receipt.ts,
        &receipt.signer,
        &receipt.body,
    )?;
    // prev is 64 hex digits in every real receipt; encode it properly anyway.
    let prev = serde_json_canonicalizer::to_vec(&receipt.prev)?;
    let prev = &prev[1..prev.len() - 1];
    let mut line = Vec::new();
    let mut scratch = Vec::new();
    prepared.sign_into(receipt.seq, prev, key, &mut scratch, &mut line);
    Ok(line)
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
        let Value::Object(body) = serde_json::to_value(body)? else {
            return Err(serde::ser::Error::custom("a receipt body is a JSON object"));
        };
        // (key, canonical value); None marks prev, seq and sig.
        let mut members: Vec<(String, Option<Vec<u8>>)> = Vec::with_capacity(body.len() + 7);
        for (k, v) in &body {
            members.push((k.clone(), Some(serde_json_canonicalizer::to_vec(v)?)));
        }
        for (k, v) in [
            ("v", Value::from(v)),
            ("session", session.into()),
            ("ts", ts.into()),
            ("signer", signer.into()),
        ] {
            members.push((k.to_owned(), Some(serde_json_canonicalizer::to_vec(&v)?)));
        }
        for k in ["prev", "seq", "sig"] {
            members.push((k.to_owned(), None));
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
        let (mut prev_at, mut seq_at, mut sig_at) = (0, 0, 0);
        out.push(b'{');
        for (i, (k, v)) in members.iter().enumerate() {
            if k == "sig" {
                sig_at = out.len();
                continue;
            }
            if i > 0 {
                out.push(b',');
            }
            serde_json_canonicalizer::to_writer(k, &mut out)?;
            out.push(b':');
            match (k.as_str(), v) {
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
        Ok(Prepared {
            bytes: out,
            prev_at,
            seq_at,
            sig_at,
        })
    }

    /// Fills in `prev` (64 hex digits) and `seq`, signs, and appends the line
    /// (without newline) to `line`. `scratch` receives the signing input.
    pub(crate) fn sign_into(
        &self,
        seq: u64,
        prev_hex: &[u8],
        key: &SigningKey,
        scratch: &mut Vec<u8>,
        line: &mut Vec<u8>,
    ) {
        let b = &self.bytes;
        scratch.clear();
        scratch.extend_from_slice(&b[..self.prev_at]);
        scratch.extend_from_slice(prev_hex);
        scratch.extend_from_slice(&b[self.prev_at..self.seq_at]);
        let before = scratch.len();
        if seq <= 1 << 53 {
            write!(scratch, "{seq}").expect("writing to a Vec cannot fail");
        } else {
            // RFC 8785 numbers are doubles: beyond 2^53 they round.
            serde_json_canonicalizer::to_writer(&seq, scratch)
                .expect("writing a number to a Vec cannot fail");
        }
        let sig_at = self.sig_at + prev_hex.len() + (scratch.len() - before);
        scratch.extend_from_slice(&b[self.seq_at..]);
        let sig = key.sign(scratch).to_bytes();
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
            },
            Body::SessionStart {
                public_key: hex::encode(key.verifying_key().as_bytes()),
                revocation_ids: vec![],
                sandbox: "netns".into(),
                capability_sha256: Some(sha256_hex(b"token")),
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
            Body::SessionEnd {
                count: 12,
                last: sha256_hex(b"last"),
            },
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            for seq in [0, 9, 10, 1 << 53, (1 << 53) + 1, u64::MAX] {
                let receipt = Receipt {
                    v: FORMAT_VERSION,
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
}
