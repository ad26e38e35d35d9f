//! The receipt byte format: typed receipt bodies, canonical (RFC 8785) line
//! encoding, the signing input, key ids and line hashes.

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
    let mut value = serde_json::to_value(receipt)?;
    let signing_input = serde_json_canonicalizer::to_vec(&value)?;
    let sig = key.sign(&signing_input);
    if let Value::Object(map) = &mut value {
        map.insert("sig".to_owned(), Value::String(hex::encode(sig.to_bytes())));
    }
    serde_json_canonicalizer::to_vec(&value)
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
