//! Signed, hash-chained receipts: the record of every decision openclaw makes,
//! written durably before the decision takes effect and verifiable offline.
//!
//! The public interface is:
//! - [`ReceiptLog`]: the durable, group-committing writer (`create`,
//!   `open_existing`, `with_sink`, `append`/`submit`, `finish`, and
//!   `finish_interrupted` for recovery after the supervisor died).
//! - [`written_part`]: a receipt file up to its unwritten (NUL) tail, for
//!   readers of a live or crashed log file.
//! - [`UnverifiedChain`] → [`VerifiedChain`] via `verify(&key)`, failing with a
//!   [`ChainError`] that names the first bad line; [`LineVerifier`] checks one
//!   line at a time; [`VerifiedChain::interruption`] tells a chain closed by
//!   recovery ([`InterruptedEnd`]) from one its supervisor ended.
//! - [`UnverifiedStream`] → [`VerifiedStream`]: the same checks on a chain
//!   read line by line from any `Read`, in memory bounded by the chain's
//!   bounds, stopping at the first bad line ([`ReadChainError`]).
//! - [`rederive`]: each decision of a [`VerifiedChain`] re-run against the
//!   session's capability token, as a [`Rederivation`] naming every
//!   [`DecisionMismatch`] with its line; [`Rederiver`] does it receipt by
//!   receipt, for a chain read as a stream.
//! - [`CanonicalDecision`]: a decision encoded straight from the typed
//!   action, counters and decision (how the proxy appends one per request;
//!   the line is the one the equivalent [`DecisionRecord`] makes), its
//!   action a [`RecordedAction`] (the facts and the request's query).
//! - [`Receipt`], [`Body`], [`DecisionRecord`], [`ApprovalRecord`],
//!   [`UsageRecord`], [`BudgetWarningRecord`]: the format (see `docs/receipts.md`); [`cost_micro_usd`]
//!   prices a call's [`UsageTokens`] at a [`RateSnapshot`]'s [`ModelPrice`].
#![forbid(unsafe_code)]

/// Batch verification of one signer's signatures.
mod batch;
/// RFC 8785 bytes straight from typed values.
mod canonical;
/// Byte format: typed receipts, canonical encoding, signing input, key ids.
mod format;
/// Durable append with group commit and crash recovery.
mod log;
/// Decision re-derivation against the session's capability token.
mod rederive;
/// Verification of a chain as it is read, in bounded memory.
mod stream;
/// The usage record of a metered LLM call and the cost formula.
mod usage;
/// Offline verification.
mod verify;
/// One-pass parsing of a line for verification.
mod wire;

pub use format::{
    format_time, key_id, line_hash, parse_time, sha256_hex, sign_line, unsigned_line,
    unsigned_version_of, version_of, ApprovalRecord, Body, CanonicalDecision, DecisionRecord,
    Interruption, InterruptionCause, Receipt, RecordedAction, BUDGET_WARNING_VERSION,
    FORMAT_VERSION, GENESIS_PREV, INTERRUPTED_END_VERSION, LATEST_FORMAT_VERSION, UNSIGNED_VERSION,
    USAGE_VERSION,
};
pub use log::{
    AppendError, Appended, CommitStats, DurableSink, Entry, LogOptions, OpenLogError,
    PendingReceipt, ReceiptLog, Recovered, SessionStart, MAX_BATCH, MAX_LINE_BYTES,
    MAX_UNSIGNED_RUN_BYTES,
};
pub use rederive::{rederive, Coverage, DecisionMismatch, ReasonChanged, Rederivation, Rederiver};
pub use stream::{ReadChainError, UnverifiedStream, VerifiedStream};
pub use usage::{
    cost_micro_usd, BudgetWarningRecord, ModelPrice, RateSnapshot, UsageRecord, UsageTokens,
};
pub use verify::{
    danger, kind_name, written_part, ChainError, InterruptedEnd, LineVerifier, UnverifiedChain,
    VerifiedChain, VerifiedReceipt,
};
