//! Offline chain verification: [`UnverifiedChain`] becomes a [`VerifiedChain`]
//! only when every line is canonical, signed by the pinned key, linked to the
//! line before it, in sequence, and the chain is opened and closed properly.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

use crate::batch;
use crate::format::{
    self, Body, Interruption, InterruptionCause, Receipt, FORMAT_VERSION, GENESIS_PREV,
    LATEST_FORMAT_VERSION, UNSIGNED_VERSION,
};
use crate::wire::{self, sig_member};

/// The most receipts one write, and one signature, covers: the writer
/// clamps `LogOptions::max_batch` to it, so a run of lines without a
/// signature of their own is always shorter than this. The verifier refuses
/// a longer run: only the writer's key could have ended it, and a reader
/// would otherwise hold every line of it waiting for that signature.
pub const MAX_BATCH: usize = 4096;

/// The longest receipt line the writer writes, in bytes without its newline
/// (with its `sig`, whether or not it gets one). A receipt that would be
/// longer is refused (and, since its seq is taken, fails the log closed).
/// Under the default proxy limits (64 KiB request head, 64 KiB inspected
/// body) a line stays far below: the path appears twice (action and
/// reason), at most 256 KiB each through an HTTP/2 header list.
pub const MAX_LINE_BYTES: usize = 2 << 20;

/// The most bytes (lines without their newlines) a run of lines without a
/// signature of their own holds: the writer signs a line that could make
/// the run longer. With [`MAX_BATCH`] lines of a few hundred bytes a run
/// never comes near; the bound is for the verifier, which refuses a longer
/// run, so what it holds for a crafted file stays bounded in bytes too.
pub const MAX_UNSIGNED_RUN_BYTES: usize = 16 << 20;

/// Why a chain failed verification. Every variant names the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the receipt chain is empty")]
    Empty,
    #[error("line {line}: not a receipt: {why}")]
    Malformed { line: usize, why: String },
    #[error("line {line}: not in canonical form (RFC 8785 JSON)")]
    NotCanonical { line: usize },
    #[error(
        "line {line}: unsupported format version {found} (this verifier reads {FORMAT_VERSION} to {LATEST_FORMAT_VERSION})"
    )]
    UnsupportedVersion { line: usize, found: u32 },
    #[error("line {line}: {what} must be format version {expected}, not {found}")]
    VersionForKind {
        line: usize,
        /// The kind of line: "a session_end with interrupted", "a decision", ...
        what: &'static str,
        expected: u32,
        found: u32,
    },
    #[error("line {line}: seq is {found}, expected {expected}")]
    SeqMismatch {
        line: usize,
        expected: u64,
        found: u64,
    },
    #[error("line {line}: session is {found:?}, expected {expected:?}")]
    SessionMismatch {
        line: usize,
        expected: String,
        found: String,
    },
    #[error("line {line}: prev does not match SHA-256 of line {}", line - 1)]
    HashMismatch { line: usize },
    #[error("line {line}: prev of the first receipt is not the genesis value")]
    BadGenesis { line: usize },
    #[error("line {line}: signed by key {found}, expected key {expected}")]
    WrongSigner {
        line: usize,
        expected: String,
        found: String,
    },
    #[error("line {line}: signature does not verify")]
    BadSignature { line: usize },
    #[error(
        "line {line}: a line without its own sig must be format version {expected}, not {found}"
    )]
    UnsignedVersion {
        line: usize,
        expected: u32,
        found: u32,
    },
    #[error("line {line}: a {kind} must carry its own sig")]
    UnsignedEdge { line: usize, kind: &'static str },
    #[error("line {line}: no sig of its own, and no signed line after it covers it (the chain was cut after line {last})")]
    Uncovered { line: usize, last: usize },
    #[error("line {line}: {bytes} bytes long; the receipt writer never writes a line longer than {max} bytes")]
    LineTooLong {
        line: usize,
        bytes: usize,
        max: usize,
    },
    #[error(
        "line {line}: lines {first} to {line} carry no sig of their own: the receipt writer signs at least every {max}th line (one signature per write of at most {max} receipts)",
        max = MAX_BATCH
    )]
    UnsignedRunTooLong { line: usize, first: usize },
    #[error(
        "line {line}: lines {first} to {line} carry no sig of their own and hold {bytes} bytes; the receipt writer signs before a run without a signature holds more than {max} bytes",
        max = MAX_UNSIGNED_RUN_BYTES
    )]
    UnsignedRunTooLarge {
        line: usize,
        first: usize,
        bytes: usize,
    },
    #[error(
        "line {line}: session_start names public key {found}, not the verifying key {expected}"
    )]
    KeyMismatch {
        line: usize,
        expected: String,
        found: String,
    },
    #[error("line {line}: the chain must open with session_start, found {found}")]
    MissingStart { line: usize, found: String },
    #[error("line {line}: a second session_start")]
    DuplicateStart { line: usize },
    #[error("line {line}: receipt after session_end")]
    AfterEnd { line: usize },
    #[error("line {line}: session_end count is {found}, expected {expected}")]
    EndCountMismatch {
        line: usize,
        expected: u64,
        found: u64,
    },
    #[error("line {line}: session_end last hash does not match SHA-256 of line {}", line - 1)]
    EndHashMismatch { line: usize },
    #[error("line {line}: approval refers to seq {decision_seq}, which is not an earlier unanswered decision")]
    BadApprovalReference { line: usize, decision_seq: u64 },
    #[error("line {line}: usage refers to seq {decision_seq}, which is not an earlier allowed llm decision without usage")]
    BadUsageReference { line: usize, decision_seq: u64 },
    #[error("line {line}: usage cost is {recorded} micro-USD, but {derived} is what {basis}")]
    UsageCostMismatch {
        line: usize,
        recorded: u64,
        derived: u64,
        /// What `derived` is: the tokens at the recorded prices, or the
        /// reservation of an estimated call.
        basis: &'static str,
    },
    #[error("line {line}: budget_warning refers to seq {usage_seq}, which is not an earlier usage receipt")]
    BadWarningReference { line: usize, usage_seq: u64 },
    #[error("line {line}: budget_warning says {recorded} micro-USD spent, but the usage receipts up to seq {usage_seq} alone cost {at_least}")]
    WarningSpentMismatch {
        line: usize,
        usage_seq: u64,
        recorded: u64,
        at_least: u64,
    },
    #[error("line {line}: the chain ends without session_end (cut after line {})", line - 1)]
    MissingEnd { line: usize },
    #[error("line {line}: torn (no terminating newline)")]
    Torn { line: usize },
}

impl ChainError {
    /// The 1-based line the error is about (0 for an empty chain).
    pub fn line(&self) -> usize {
        use ChainError::*;
        match self {
            Empty => 0,
            Malformed { line, .. }
            | NotCanonical { line }
            | UnsupportedVersion { line, .. }
            | VersionForKind { line, .. }
            | SeqMismatch { line, .. }
            | SessionMismatch { line, .. }
            | HashMismatch { line }
            | BadGenesis { line }
            | WrongSigner { line, .. }
            | BadSignature { line }
            | UnsignedVersion { line, .. }
            | UnsignedEdge { line, .. }
            | Uncovered { line, .. }
            | LineTooLong { line, .. }
            | UnsignedRunTooLong { line, .. }
            | UnsignedRunTooLarge { line, .. }
            | KeyMismatch { line, .. }
            | MissingStart { line, .. }
            | DuplicateStart { line }
            | AfterEnd { line }
            | EndCountMismatch { line, .. }
            | EndHashMismatch { line }
            | BadApprovalReference { line, .. }
            | BadUsageReference { line, .. }
            | UsageCostMismatch { line, .. }
            | BadWarningReference { line, .. }
            | WarningSpentMismatch { line, .. }
            | MissingEnd { line }
            | Torn { line } => *line,
        }
    }
}

/// A receipt that passed every check, with its line hash.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedReceipt {
    pub receipt: Receipt,
    /// SHA-256 of this line's bytes.
    pub hash: [u8; 32],
    /// Whether the line carries its own signature; if not (format version
    /// 5), the next signed line's covers it.
    pub signed: bool,
}

/// A line that passed the checks that do not need the signature, with the
/// signature and its input kept for (batch) verification. A line without a
/// `sig` of its own (format version 5) has none: the next signed line's
/// signature covers it, through `prev`.
pub(crate) struct Checked {
    pub(crate) receipt: Receipt,
    pub(crate) hash: [u8; 32],
    pub(crate) signing_input: Vec<u8>,
    pub(crate) sig: Option<Signature>,
}

/// Checks lines one at a time, carrying the chain state between them.
/// Cloneable so tests (and recovery) can resume from any prefix.
#[derive(Debug, Clone)]
pub struct LineVerifier {
    key: VerifyingKey,
    key_id: String,
    key_hex: String,
    /// Lines accepted so far.
    lines: usize,
    prev: [u8; 32],
    session: Option<String>,
    ended: bool,
    /// seq -> whether an approval has answered it, for approval-gated decisions.
    decisions: BTreeMap<u64, bool>,
    /// seq -> where each llm decision stands, for the usage receipts that
    /// name it.
    llm_calls: BTreeMap<u64, LlmCall>,
    /// seq of each usage receipt -> the cost of every usage receipt up to
    /// it, for the budget warnings that name it.
    usage_costs: BTreeMap<u64, u64>,
    /// Budget warning levels (percent) written so far: each once.
    warned: BTreeSet<u64>,
    /// The first of the lines accepted since the last signed one: lines
    /// without a sig of their own, not yet covered by a signature.
    uncovered_from: Option<usize>,
    /// The bytes of those lines. With their number, bounded by what the
    /// writer ever leaves between signatures: a crafted file of unsigned
    /// lines is refused there, not read on waiting for a signature.
    uncovered_bytes: usize,
    /// The first line refused, if any. The chain state may already hold
    /// part of that line (a bad signature is found last), so from then on
    /// every `push` and `finish` gives this error: a caller that goes on
    /// after an error cannot end with a chain that verifies.
    refused: Option<ChainError>,
}

/// An llm decision as the usage receipts see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LlmCall {
    /// Held for approval, not answered yes (yet).
    Held,
    /// Let out (allowed, or approved): one usage receipt may name it.
    LetOut,
    /// Its usage receipt came.
    Metered,
}

impl LineVerifier {
    pub fn new(key: VerifyingKey) -> Self {
        LineVerifier {
            key_id: format::key_id(&key),
            key_hex: hex::encode(key.as_bytes()),
            key,
            lines: 0,
            prev: [0; 32],
            session: None,
            ended: false,
            decisions: BTreeMap::new(),
            llm_calls: BTreeMap::new(),
            usage_costs: BTreeMap::new(),
            warned: BTreeSet::new(),
            uncovered_from: None,
            uncovered_bytes: 0,
            refused: None,
        }
    }

    /// Number of lines accepted so far.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// SHA-256 of the last accepted line (zeros before the first).
    pub fn last_hash(&self) -> [u8; 32] {
        self.prev
    }

    /// Whether a session_end has been accepted.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Lines accepted since the last signed line: they carry no sig of their
    /// own and no signature covers them yet. They are authentic only once a
    /// later signed line verifies (its `prev` chain binds them); a chain
    /// that ends while this is not 0 fails.
    pub fn uncovered(&self) -> usize {
        self.uncovered_from
            .map_or(0, |first| self.lines + 1 - first)
    }

    /// Checks the next line (without its newline), signature included. A
    /// line without a sig of its own is accepted provisionally: see
    /// [`uncovered`](Self::uncovered).
    /// Once a line is refused, so is everything after it.
    pub fn push(&mut self, line: &[u8]) -> Result<VerifiedReceipt, ChainError> {
        if let Some(e) = &self.refused {
            return Err(e.clone());
        }
        let pushed = self.check_unsigned(line).and_then(|checked| {
            if let Some(sig) = &checked.sig {
                if self.key.verify_strict(&checked.signing_input, sig).is_err() {
                    return Err(signature_error(&checked.signing_input, self.lines));
                }
            }
            Ok(VerifiedReceipt {
                signed: checked.sig.is_some(),
                receipt: checked.receipt,
                hash: checked.hash,
            })
        });
        if let Err(e) = &pushed {
            self.refused = Some(e.clone());
        }
        pushed
    }

    /// Ends verification: the chain must have been closed by session_end,
    /// every line covered by a signature, and no line refused.
    pub fn finish(&self) -> Result<(), ChainError> {
        if let Some(e) = &self.refused {
            return Err(e.clone());
        }
        if self.lines == 0 {
            return Err(ChainError::Empty);
        }
        if let Some(line) = self.uncovered_from {
            return Err(ChainError::Uncovered {
                line,
                last: self.lines,
            });
        }
        if !self.ended {
            return Err(ChainError::MissingEnd {
                line: self.lines + 1,
            });
        }
        Ok(())
    }

    /// The error for the next line when it is `bytes` long, more than
    /// [`MAX_LINE_BYTES`] (a stream keeps only the length of such a line):
    /// what [`check_unsigned`](Self::check_unsigned) says of it.
    pub(crate) fn refuse_length(&self, bytes: usize) -> ChainError {
        let line = self.lines + 1;
        if self.ended {
            return ChainError::AfterEnd { line };
        }
        ChainError::LineTooLong {
            line,
            bytes,
            max: MAX_LINE_BYTES,
        }
    }

    /// Every check except the signature; on success the line is accepted
    /// (the caller must then verify the signature or discard this verifier).
    pub(crate) fn check_unsigned(&mut self, line: &[u8]) -> Result<Checked, ChainError> {
        let line_no = self.lines + 1;
        let malformed = |why: String| ChainError::Malformed { line: line_no, why };
        if self.ended || line.len() > MAX_LINE_BYTES {
            return Err(self.refuse_length(line.len()));
        }
        let parsed = wire::parse(line).map_err(|e| {
            malformed(match e.classify() {
                serde_json::error::Category::Data => e.to_string(),
                _ => format!("invalid JSON: {e}"),
            })
        })?;
        let Some(sig_hex) = parsed.sig else {
            return self.check_without_sig(line, parsed);
        };
        let sig = decode_hex::<64>(sig_hex)
            .map(|b| Signature::from_bytes(&b))
            .ok_or_else(|| malformed("sig is not 128 lowercase hex digits".into()))?;
        // The line must be exactly the canonical form of the whole receipt.
        // The signing input is the line without its `sig` member; the
        // signature proves the signer wrote those bytes, and the signer
        // writes canonical JSON only. What is left to check here is that
        // the `sig` member itself is spelled and placed canonically: exact
        // bytes, and top-level members in order. (When a signature fails,
        // `signature_error` says whether the line was canonical at all.)
        let (start, end) = sig_member(line, sig_hex)
            .filter(|_| parsed.sorted)
            .ok_or(ChainError::NotCanonical { line: line_no })?;
        readable_version(line_no, parsed.v)?;
        let receipt = parsed.into_receipt().map_err(malformed)?;
        self.check_fields(line_no, &receipt)?;
        let hash = format::line_hash(line);
        let mut signing_input = Vec::with_capacity(line.len() - (end - start));
        signing_input.extend_from_slice(&line[..start]);
        signing_input.extend_from_slice(&line[end..]);
        self.lines = line_no;
        self.prev = hash;
        // Its signature covers every unsigned line before it (its prev is
        // the hash of the line before, whose prev covers the one before...).
        self.uncovered_from = None;
        self.uncovered_bytes = 0;
        Ok(Checked {
            receipt,
            hash,
            signing_input,
            sig: Some(sig),
        })
    }

    /// A line written without a sig of its own (one signature per group
    /// commit): the same checks, but its bytes are authentic only through
    /// the next signed line, whose `prev` chain commits to them exactly (so,
    /// as for a signed line, canonical form need not be re-derived: the
    /// signer writes canonical JSON only).
    fn check_without_sig(
        &mut self,
        line: &[u8],
        parsed: wire::Parsed<'_>,
    ) -> Result<Checked, ChainError> {
        let line_no = self.lines + 1;
        let first = self.uncovered_from.unwrap_or(line_no);
        // The writer signs at least every MAX_BATCH-th line.
        if line_no - first + 1 >= MAX_BATCH {
            return Err(ChainError::UnsignedRunTooLong {
                line: line_no,
                first,
            });
        }
        let bytes = self.uncovered_bytes + line.len();
        if bytes > MAX_UNSIGNED_RUN_BYTES {
            return Err(ChainError::UnsignedRunTooLarge {
                line: line_no,
                first,
                bytes,
            });
        }
        if !parsed.sorted {
            return Err(ChainError::NotCanonical { line: line_no });
        }
        readable_version(line_no, parsed.v)?;
        if let Some(found) = parsed.v {
            if found < u64::from(UNSIGNED_VERSION) {
                // A reader of versions before 5 would call it malformed.
                return Err(ChainError::Malformed {
                    line: line_no,
                    why: "no sig field".into(),
                });
            }
        }
        let receipt = parsed
            .into_receipt()
            .map_err(|why| ChainError::Malformed { line: line_no, why })?;
        if let kind @ (Body::SessionStart { .. } | Body::SessionEnd { .. }) = &receipt.body {
            return Err(ChainError::UnsignedEdge {
                line: line_no,
                kind: kind_name(kind),
            });
        }
        let expected = format::unsigned_version_of(&receipt.body);
        if receipt.v != expected {
            return Err(ChainError::UnsignedVersion {
                line: line_no,
                expected,
                found: receipt.v,
            });
        }
        self.check_fields_of(line_no, &receipt)?;
        let hash = format::line_hash(line);
        self.lines = line_no;
        self.prev = hash;
        self.uncovered_from.get_or_insert(line_no);
        self.uncovered_bytes = bytes;
        Ok(Checked {
            receipt,
            hash,
            signing_input: Vec::new(),
            sig: None,
        })
    }

    fn check_fields(&mut self, line: usize, r: &Receipt) -> Result<(), ChainError> {
        let expected_version = format::version_of(&r.body);
        if r.v != expected_version {
            return Err(ChainError::VersionForKind {
                line,
                what: match &r.body {
                    Body::SessionEnd {
                        interrupted: Some(_),
                        ..
                    } => "a session_end with interrupted",
                    body => kind_name(body),
                },
                expected: expected_version,
                found: r.v,
            });
        }
        self.check_fields_of(line, r)
    }

    /// Every check of a receipt's members but its version.
    fn check_fields_of(&mut self, line: usize, r: &Receipt) -> Result<(), ChainError> {
        let expected_seq = (line - 1) as u64;
        if r.seq != expected_seq {
            return Err(ChainError::SeqMismatch {
                line,
                expected: expected_seq,
                found: r.seq,
            });
        }
        if let Some(session) = &self.session {
            if &r.session != session {
                return Err(ChainError::SessionMismatch {
                    line,
                    expected: session.clone(),
                    found: r.session.clone(),
                });
            }
        }
        if line == 1 {
            if r.prev != GENESIS_PREV {
                return Err(ChainError::BadGenesis { line });
            }
        } else if decode_hex::<32>(&r.prev) != Some(self.prev) {
            return Err(ChainError::HashMismatch { line });
        }
        if r.signer != self.key_id {
            return Err(ChainError::WrongSigner {
                line,
                expected: self.key_id.clone(),
                found: r.signer.clone(),
            });
        }
        if humantime::parse_rfc3339(&r.ts).is_err() {
            return Err(ChainError::Malformed {
                line,
                why: format!("ts {:?} is not RFC 3339 UTC", r.ts),
            });
        }
        match (&r.body, line) {
            (Body::SessionStart { public_key, .. }, 1) => {
                if public_key != &self.key_hex {
                    return Err(ChainError::KeyMismatch {
                        line,
                        expected: self.key_hex.clone(),
                        found: public_key.clone(),
                    });
                }
                self.session = Some(r.session.clone());
            }
            (Body::SessionStart { .. }, _) => return Err(ChainError::DuplicateStart { line }),
            (body, 1) => {
                return Err(ChainError::MissingStart {
                    line,
                    found: kind_name(body).to_owned(),
                })
            }
            (Body::Decision(d), _) => {
                if let Some(digest) = &d.body_sha256 {
                    if decode_hex::<32>(digest).is_none() {
                        return Err(ChainError::Malformed {
                            line,
                            why: "body_sha256 is not 64 lowercase hex digits".into(),
                        });
                    }
                }
                let verdict = d.decision.get("decision").and_then(Value::as_str);
                if verdict == Some("approval") {
                    self.decisions.insert(r.seq, false);
                }
                if d.action.get("type").and_then(Value::as_str) == Some("llm") {
                    match verdict {
                        Some("allow") => {
                            self.llm_calls.insert(r.seq, LlmCall::LetOut);
                        }
                        Some("approval") => {
                            self.llm_calls.insert(r.seq, LlmCall::Held);
                        }
                        _ => {}
                    }
                }
            }
            (Body::Approval(a), _) => {
                match self.decisions.get_mut(&a.decision_seq) {
                    Some(answered @ false) => {
                        *answered = true;
                        if a.approved {
                            if let Some(call) = self.llm_calls.get_mut(&a.decision_seq) {
                                *call = LlmCall::LetOut;
                            }
                        }
                    }
                    _ => {
                        return Err(ChainError::BadApprovalReference {
                            line,
                            decision_seq: a.decision_seq,
                        })
                    }
                }
                if humantime::parse_rfc3339(&a.answered_at).is_err() {
                    return Err(ChainError::Malformed {
                        line,
                        why: format!("answered_at {:?} is not RFC 3339 UTC", a.answered_at),
                    });
                }
            }
            (Body::Usage(u), _) => {
                match self.llm_calls.get_mut(&u.decision_seq) {
                    Some(call @ LlmCall::LetOut) => *call = LlmCall::Metered,
                    _ => {
                        return Err(ChainError::BadUsageReference {
                            line,
                            decision_seq: u.decision_seq,
                        })
                    }
                }
                if decode_hex::<32>(&u.rates.card_sha256).is_none() {
                    return Err(ChainError::Malformed {
                        line,
                        why: "rates.card_sha256 is not 64 lowercase hex digits".into(),
                    });
                }
                let derived = u.expected_cost();
                if u.cost_micro_usd != derived {
                    return Err(ChainError::UsageCostMismatch {
                        line,
                        recorded: u.cost_micro_usd,
                        derived,
                        basis: if u.estimated {
                            "this estimated call reserved"
                        } else {
                            "its tokens cost at its recorded prices"
                        },
                    });
                }
                let before = self.usage_costs.last_key_value().map_or(0, |(_, sum)| *sum);
                self.usage_costs
                    .insert(r.seq, before.saturating_add(u.cost_micro_usd));
            }
            (Body::BudgetWarning(w), _) => {
                let Some(&at_least) = self.usage_costs.get(&w.usage_seq) else {
                    return Err(ChainError::BadWarningReference {
                        line,
                        usage_seq: w.usage_seq,
                    });
                };
                let malformed = |why: String| Err(ChainError::Malformed { line, why });
                if !(1..=100).contains(&w.percent) {
                    return malformed(format!(
                        "budget_warning percent {} is not 1 to 100",
                        w.percent
                    ));
                }
                if w.budget_micro_usd == 0 {
                    return malformed("budget_warning of a zero budget".into());
                }
                if u128::from(w.spent_micro_usd) * 100
                    < u128::from(w.percent) * u128::from(w.budget_micro_usd)
                {
                    return malformed(format!(
                        "budget_warning at {} % but {} of {} micro-USD spent",
                        w.percent, w.spent_micro_usd, w.budget_micro_usd
                    ));
                }
                if !self.warned.insert(w.percent) {
                    return malformed(format!("a second budget_warning at {} %", w.percent));
                }
                // The spend counts every settled call (and in-flight
                // reservations): at least what the chain's usage receipts
                // up to the one that reached the level cost.
                if w.spent_micro_usd < at_least {
                    return Err(ChainError::WarningSpentMismatch {
                        line,
                        usage_seq: w.usage_seq,
                        recorded: w.spent_micro_usd,
                        at_least,
                    });
                }
            }
            (
                Body::SessionEnd {
                    count,
                    last,
                    interrupted,
                },
                _,
            ) => {
                if *count != r.seq + 1 {
                    return Err(ChainError::EndCountMismatch {
                        line,
                        expected: r.seq + 1,
                        found: *count,
                    });
                }
                if last != &r.prev {
                    return Err(ChainError::EndHashMismatch { line });
                }
                if let Some(Interruption { at_seq, .. }) = interrupted {
                    // The end names the supervisor's last receipt: the one
                    // right before it (line 1 at least, session_start).
                    if at_seq.checked_add(1) != Some(r.seq) {
                        return Err(ChainError::Malformed {
                            line,
                            why: format!(
                                "interrupted.at_seq is {at_seq}, expected {} (the receipt before this end)",
                                r.seq - 1
                            ),
                        });
                    }
                }
                self.ended = true;
            }
        }
        Ok(())
    }
}

/// `v`, if the line has one, is a version this verifier reads (checked
/// before anything else about the line's format).
fn readable_version(line: usize, v: Option<u64>) -> Result<(), ChainError> {
    match v {
        Some(found)
            if !(u64::from(FORMAT_VERSION)..=u64::from(LATEST_FORMAT_VERSION)).contains(&found) =>
        {
            Err(ChainError::UnsupportedVersion {
                line,
                found: u32::try_from(found).unwrap_or(u32::MAX),
            })
        }
        _ => Ok(()),
    }
}

/// A line whose signature does not verify: if its signed part is not even
/// canonical JSON it was edited by hand or by a tool (say so), otherwise the
/// content or the signature was changed.
fn signature_error(signing_input: &[u8], line: usize) -> ChainError {
    let canonical = serde_json::from_slice::<Value>(signing_input)
        .ok()
        .and_then(|v| serde_json_canonicalizer::to_vec(&v).ok());
    if canonical.as_deref() == Some(signing_input) {
        ChainError::BadSignature { line }
    } else {
        ChainError::NotCanonical { line }
    }
}

/// The name written in a receipt's `kind` field.
pub fn kind_name(body: &Body) -> &'static str {
    match body {
        Body::SessionStart { .. } => "session_start",
        Body::Decision(_) => "decision",
        Body::Approval(_) => "approval",
        Body::Usage(_) => "usage",
        Body::BudgetWarning(_) => "budget_warning",
        Body::SessionEnd { .. } => "session_end",
    }
}

/// Lowercase hex of exactly N bytes; anything else (uppercase too) is refused,
/// so each value has one spelling.
pub(crate) fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The bytes of a `receipts.jsonl`, not yet checked.
#[derive(Debug, Clone)]
pub struct UnverifiedChain {
    bytes: Vec<u8>,
}

/// A chain that verified: every receipt, in order.
#[derive(Debug, Clone)]
pub struct VerifiedChain {
    pub receipts: Vec<VerifiedReceipt>,
    /// The verifying key the chain was checked against.
    pub key: VerifyingKey,
}

impl VerifiedChain {
    pub fn session(&self) -> &str {
        &self.receipts[0].receipt.session
    }

    /// The session_start body (always the first receipt).
    pub fn start(&self) -> &Receipt {
        &self.receipts[0].receipt
    }

    /// SHA-256 of the last line.
    pub fn last_hash(&self) -> [u8; 32] {
        self.receipts.last().map(|r| r.hash).unwrap_or_default()
    }

    /// How the session was interrupted, when recovery (not its supervisor)
    /// closed the chain; `None` for a session that ended normally.
    pub fn interruption(&self) -> Option<InterruptedEnd> {
        interruption_of(&self.receipts.last()?.receipt)
    }
}

/// The interruption a chain's last receipt records, if it is a session_end
/// written by recovery.
pub(crate) fn interruption_of(end: &Receipt) -> Option<InterruptedEnd> {
    match &end.body {
        Body::SessionEnd {
            interrupted: Some(i),
            ..
        } => Some(InterruptedEnd {
            cause: i.cause,
            at_seq: i.at_seq,
            recovered_at: end.ts.clone(),
        }),
        _ => None,
    }
}

/// A verified chain's interrupted end, in the words of `openclaw verify`:
/// "interrupted (supervisor died) at seq N, recovered at T".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptedEnd {
    pub cause: InterruptionCause,
    /// The supervisor's last receipt.
    pub at_seq: u64,
    /// When recovery closed the chain (the end receipt's `ts`).
    pub recovered_at: String,
}

impl std::fmt::Display for InterruptedEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at seq {}, recovered at {}",
            self.cause.describe(),
            self.at_seq,
            self.recovered_at
        )
    }
}

/// Signatures are checked in batches of this many lines (batch ed25519
/// verification is about twice as fast per signature as one at a time).
/// Above ~190 points the multiscalar multiplication switches to Pippenger's
/// method, which gets cheaper per point as the batch grows: measured on a
/// 10k chain, 64 → 55k receipts/s, 512 → 62k/s, 2048 → 61k/s.
pub(crate) const BATCH: usize = 512;

/// The part of a receipt file that holds lines: everything before the first
/// NUL byte. A log file is preallocated with zeros ahead of its writes, so
/// while a session runs, or after a crash, the bytes after its last line are
/// NULs; no line ever holds one (canonical JSON escapes it as `\u0000`).
/// Readers of a live or crashed file stop here.
pub fn written_part(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(end) => &bytes[..end],
        None => bytes,
    }
}

impl UnverifiedChain {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        UnverifiedChain { bytes }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Batch-verifies; on failure finds the first bad line one at a time.
pub(crate) fn verify_signatures(
    key: &VerifyingKey,
    batch: &[Checked],
    first_line: usize,
) -> Result<(), ChainError> {
    if batch.is_empty() {
        return Ok(());
    }
    let items: Vec<(&[u8], &Signature)> = batch
        .iter()
        .filter_map(|c| Some((c.signing_input.as_slice(), c.sig.as_ref()?)))
        .collect();
    if batch::verify_one_signer(key, &items) {
        return Ok(());
    }
    for (i, c) in batch.iter().enumerate() {
        let Some(sig) = &c.sig else { continue };
        if key.verify_strict(&c.signing_input, sig).is_err() {
            return Err(signature_error(&c.signing_input, first_line + i));
        }
    }
    // Batch verification can reject what strict single verification accepts
    // only for crafted small-order components; treat that as bad too.
    Err(ChainError::BadSignature { line: first_line })
}

pub mod danger {
    //! Verification that trusts the key the chain names for itself. This only
    //! proves the chain is internally consistent, not who wrote it: anyone
    //! can write a self-consistent chain with a key of their own.
    use super::*;

    /// Verifies against the public key in the chain's own session_start.
    pub fn verify_trusting_embedded_key(
        chain: &UnverifiedChain,
    ) -> Result<VerifiedChain, ChainError> {
        let key = chain.embedded_key()?;
        chain.verify(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{sign_line, Receipt};
    use ed25519_dalek::SigningKey;

    fn start_body(key: &SigningKey) -> Body {
        Body::SessionStart {
            public_key: hex::encode(key.verifying_key().as_bytes()),
            revocation_ids: vec!["x".into()],
            sandbox: "netns".into(),
            capability_sha256: None,
            tenant: None,
            user: None,
        }
    }

    /// A chain written by hand: session_start, then each (body, version,
    /// signed) in turn with its seq and prev filled in.
    fn hand_chain(key: &SigningKey, rest: &[(Body, u32, bool)]) -> Vec<Vec<u8>> {
        let start = start_body(key);
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut prev = GENESIS_PREV.to_owned();
        for (seq, (body, v, signed)) in std::iter::once((start, FORMAT_VERSION, true))
            .chain(rest.iter().cloned())
            .enumerate()
        {
            let receipt = Receipt {
                v,
                session: "s".into(),
                seq: seq as u64,
                ts: "2026-01-01T00:00:00.000000Z".into(),
                prev: prev.clone(),
                signer: format::key_id(&key.verifying_key()),
                body,
            };
            let line = if signed {
                sign_line(&receipt, key).expect("sign")
            } else {
                format::unsigned_line(&receipt).expect("encode")
            };
            prev = hex::encode(format::line_hash(&line));
            lines.push(line);
        }
        lines
    }

    fn decision_body(i: u64) -> Body {
        Body::Decision(format::DecisionRecord {
            action: serde_json::json!({"type": "http", "i": i}),
            counters: serde_json::json!({}),
            decision: serde_json::json!({"decision": "allow"}),
            body_sha256: None,
        })
    }

    fn verify_lines(key: &SigningKey, lines: &[Vec<u8>]) -> Result<usize, ChainError> {
        let mut bytes = lines.join(&b'\n');
        bytes.push(b'\n');
        let chain = UnverifiedChain::from_bytes(bytes).verify(&key.verifying_key())?;
        assert_eq!(chain.receipts[1].receipt.v, UNSIGNED_VERSION);
        Ok(chain.receipts.len())
    }

    #[test]
    fn lines_without_a_sig_verify_only_when_a_later_signed_line_covers_them() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let end = |count: u64, last: &[u8]| Body::SessionEnd {
            count,
            last: hex::encode(format::line_hash(last)),
            interrupted: None,
        };
        let mut lines = hand_chain(
            &key,
            &[
                (decision_body(1), UNSIGNED_VERSION, false),
                (decision_body(2), UNSIGNED_VERSION, false),
                (decision_body(3), FORMAT_VERSION, true),
            ],
        );
        let last = lines[3].clone();
        let with_end = {
            let mut all = hand_chain(
                &key,
                &[
                    (decision_body(1), UNSIGNED_VERSION, false),
                    (decision_body(2), UNSIGNED_VERSION, false),
                    (decision_body(3), FORMAT_VERSION, true),
                    (end(5, &last), FORMAT_VERSION, true),
                ],
            );
            assert_eq!(all[..4], lines[..]);
            all.remove(4)
        };
        lines.push(with_end);
        assert_eq!(verify_lines(&key, &lines), Ok(5), "covered lines verify");

        // Line by line: the two wait for line 4's signature.
        let mut v = LineVerifier::new(key.verifying_key());
        let uncovered: Vec<usize> = lines
            .iter()
            .map(|l| {
                v.push(l).expect("accepted");
                v.uncovered()
            })
            .collect();
        assert_eq!(uncovered, [0, 1, 2, 0, 0]);
        v.finish().expect("closed");

        // Cut after the unsigned lines: nothing vouches for them.
        assert_eq!(
            verify_lines(&key, &lines[..3]),
            Err(ChainError::Uncovered { line: 2, last: 3 })
        );
        // A changed unsigned line is caught by the next line's prev.
        let mut edited = lines.clone();
        edited[2] = String::from_utf8(edited[2].clone())
            .expect("utf8")
            .replace("\"i\":2", "\"i\":7")
            .into_bytes();
        assert_eq!(
            verify_lines(&key, &edited),
            Err(ChainError::HashMismatch { line: 4 })
        );
        // The covering line's signature removed (and its version raised):
        // its own bytes changed, so the end's link breaks; and as the last
        // line, it would cover nothing.
        let stripped = {
            let mut r: Receipt = serde_json::from_slice(&lines[3]).expect("parse");
            r.v = UNSIGNED_VERSION;
            format::unsigned_line(&r).expect("encode")
        };
        let mut t = lines.clone();
        t[3] = stripped.clone();
        assert_eq!(
            verify_lines(&key, &t),
            Err(ChainError::HashMismatch { line: 5 })
        );
        assert_eq!(
            verify_lines(&key, &t[..4]),
            Err(ChainError::Uncovered { line: 2, last: 4 })
        );
    }

    /// Lines 2.. of a chain: `n` decisions without a sig, each with a
    /// path of `pad` bytes.
    fn unsigned_run(key: &SigningKey, n: usize, pad: usize) -> Vec<Vec<u8>> {
        let body = |i: usize| {
            Body::Decision(format::DecisionRecord {
                action: serde_json::json!({"type": "http", "i": i, "path": "x".repeat(pad)}),
                counters: serde_json::json!({}),
                decision: serde_json::json!({"decision": "allow"}),
                body_sha256: None,
            })
        };
        let rest: Vec<_> = (0..n).map(|i| (body(i), UNSIGNED_VERSION, false)).collect();
        hand_chain(key, &rest)
    }

    fn first_refusal(key: &SigningKey, lines: &[Vec<u8>]) -> ChainError {
        let mut v = LineVerifier::new(key.verifying_key());
        lines
            .iter()
            .find_map(|l| v.push(l).err())
            .unwrap_or_else(|| v.finish().expect_err("never covered"))
    }

    #[test]
    fn a_run_without_signatures_longer_than_the_writer_makes_is_refused_where_it_passes_the_bound()
    {
        let key = SigningKey::from_bytes(&[8; 32]);
        // The writer signs at least every MAX_BATCH-th line: MAX_BATCH - 1
        // unsigned lines wait for a signature, one more is refused.
        let lines = unsigned_run(&key, MAX_BATCH + 3, 0);
        assert_eq!(
            first_refusal(&key, &lines[..MAX_BATCH]),
            ChainError::Uncovered {
                line: 2,
                last: MAX_BATCH
            }
        );
        let refused = first_refusal(&key, &lines);
        assert_eq!(
            refused,
            ChainError::UnsignedRunTooLong {
                line: MAX_BATCH + 1,
                first: 2
            }
        );
        assert!(
            refused.to_string().contains("every 4096th line"),
            "{refused}"
        );
        let mut bytes = lines.join(&b'\n');
        bytes.push(b'\n');
        assert_eq!(
            UnverifiedChain::from_bytes(bytes)
                .verify(&key.verifying_key())
                .map(|c| c.receipts.len()),
            Err(refused)
        );

        // In bytes: lines of 1 MiB, 16 of them fit in the writer's bound.
        let pad = 1 << 20;
        let lines = unsigned_run(&key, 20, pad - 300);
        let refused = first_refusal(&key, &lines);
        assert!(
            matches!(refused, ChainError::UnsignedRunTooLarge { line: 18, first: 2, bytes }
                if bytes > MAX_UNSIGNED_RUN_BYTES),
            "{refused}"
        );
    }

    #[test]
    fn a_line_longer_than_the_writer_writes_is_refused_before_it_is_read() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut lines = hand_chain(&key, &[]);
        lines.push(vec![b'{'; MAX_LINE_BYTES + 1]);
        assert_eq!(
            first_refusal(&key, &lines),
            ChainError::LineTooLong {
                line: 2,
                bytes: MAX_LINE_BYTES + 1,
                max: MAX_LINE_BYTES
            }
        );
        lines[1].truncate(MAX_LINE_BYTES);
        assert!(matches!(
            first_refusal(&key, &lines),
            ChainError::Malformed { line: 2, .. }
        ));
    }

    #[test]
    fn a_line_verifier_that_refused_a_line_accepts_nothing_after_it() {
        let key = SigningKey::from_bytes(&[6; 32]);
        let forger = SigningKey::from_bytes(&[7; 32]);
        let first = hand_chain(&key, &[(decision_body(1), FORMAT_VERSION, true)]);
        // A session_end for the chain cut after line 2, written by someone
        // without the key: right in every member, but for its signature.
        let end = Receipt {
            v: FORMAT_VERSION,
            session: "s".into(),
            seq: 2,
            ts: "2026-01-01T00:00:00.000000Z".into(),
            prev: hex::encode(format::line_hash(&first[1])),
            signer: format::key_id(&key.verifying_key()),
            body: Body::SessionEnd {
                count: 3,
                last: hex::encode(format::line_hash(&first[1])),
                interrupted: None,
            },
        };
        let forged = sign_line(&end, &forger).expect("sign");
        let mut v = LineVerifier::new(key.verifying_key());
        for line in &first {
            v.push(line).expect("genuine");
        }
        assert_eq!(v.push(&forged), Err(ChainError::BadSignature { line: 3 }));
        // A caller that notes the error and carries on must not end up
        // with a closed chain, nor accept anything more.
        assert_eq!(v.finish(), Err(ChainError::BadSignature { line: 3 }));
        assert_eq!(
            v.push(&forged).map(|r| r.receipt.seq),
            Err(ChainError::BadSignature { line: 3 })
        );
    }

    #[test]
    fn a_line_without_a_sig_must_say_so_in_its_version_and_never_opens_or_closes() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let first_error = |rest: &[(Body, u32, bool)]| {
            let lines = hand_chain(&key, rest);
            let mut v = LineVerifier::new(key.verifying_key());
            lines
                .iter()
                .find_map(|l| v.push(l).err())
                .expect("an error")
        };
        // A version-1 line without sig: what an old reader would say too.
        assert_eq!(
            first_error(&[(decision_body(1), FORMAT_VERSION, false)]),
            ChainError::Malformed {
                line: 2,
                why: "no sig field".into()
            }
        );
        assert_eq!(
            first_error(&[(decision_body(1), 4, false)]),
            ChainError::Malformed {
                line: 2,
                why: "no sig field".into()
            }
        );
        // A signed line keeps the lowest version that expresses it.
        assert!(matches!(
            first_error(&[(decision_body(1), UNSIGNED_VERSION, true)]),
            ChainError::VersionForKind {
                line: 2,
                expected: FORMAT_VERSION,
                found: UNSIGNED_VERSION,
                ..
            }
        ));
        // session_end always carries its own signature.
        let end = Body::SessionEnd {
            count: 2,
            last: "0".repeat(64),
            interrupted: None,
        };
        assert_eq!(
            first_error(&[(end, UNSIGNED_VERSION, false)]),
            ChainError::UnsignedEdge {
                line: 2,
                kind: "session_end"
            }
        );
        // And session_start: a chain whose first line has no sig.
        let lines = hand_chain(&key, &[]);
        let mut r: Receipt = serde_json::from_slice(&lines[0]).expect("parse");
        r.v = UNSIGNED_VERSION;
        let unsigned_start = format::unsigned_line(&r).expect("encode");
        assert_eq!(
            LineVerifier::new(key.verifying_key()).push(&unsigned_start),
            Err(ChainError::UnsignedEdge {
                line: 1,
                kind: "session_start"
            })
        );
    }

    #[test]
    fn the_sig_member_is_found_in_the_exact_bytes_and_must_be_canonical() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let receipt = Receipt {
            v: FORMAT_VERSION,
            session: "s".into(),
            seq: 0,
            ts: "2026-01-01T00:00:00.000000Z".into(),
            prev: GENESIS_PREV.into(),
            signer: format::key_id(&key.verifying_key()),
            body: start_body(&key),
        };
        let line = sign_line(&receipt, &key).expect("sign");
        let mut v = LineVerifier::new(key.verifying_key());
        assert_eq!(v.push(&line).expect("verifies").receipt, receipt);
        let text = String::from_utf8(line.clone()).expect("utf8");
        let sig_at = text.find(",\"sig\":").expect("sig member");
        let sig_end = sig_at + 8 + 128 + 1;
        let sig_member = &text[sig_at..sig_end];
        let without = format!("{}{}", &text[..sig_at], &text[sig_end..]);
        let reject = |bad: String| {
            let mut v = LineVerifier::new(key.verifying_key());
            assert_eq!(
                v.push(bad.as_bytes()),
                Err(ChainError::NotCanonical { line: 1 }),
                "{bad}"
            );
        };
        // A space after the first brace: the signed part is not canonical.
        reject(format!("{{ {}", &text[1..]));
        // The signed part intact, the sig member moved or respelled.
        let end = without.len() - 1;
        reject(format!("{}{}}}", &without[..end], sig_member));
        reject(format!("{{{},{}", &sig_member[1..], &without[1..]));
        reject(text.replace(",\"sig\":", ", \"sig\":"));
        reject(text.replace(",\"sig\":", ",\"sig\" :"));
        reject(text.replace(",\"sig\":", ",\"\\u0073ig\":"));
        // A duplicated member is refused (as malformed or not canonical).
        let dup = text.replacen("{", "{\"v\":1,", 1);
        let mut v = LineVerifier::new(key.verifying_key());
        assert!(v.push(dup.as_bytes()).is_err());
    }
}
