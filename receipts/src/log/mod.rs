//! The durable receipt writer: a cloneable handle that signs and chains each
//! receipt, and a writer thread that commits appends from many callers in one
//! write + fdatasync (group commit). An append is acknowledged only after its
//! line is on disk; after any write or sync failure the log refuses every
//! further append, so the chain never continues over a hole.
//!
//! This file holds the vocabulary every part shares (entries, outcomes,
//! errors, options, the sink); the parts are below.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::format::{ApprovalRecord, CanonicalDecision, DecisionRecord};
use crate::usage::{BudgetWarningRecord, UsageRecord};
use crate::verify::ChainError;

/// The handle: queues each receipt; one submitter at a time signs and
/// chains what is queued; creates a log.
mod append;
/// The log file, zeroed ahead of the writes so a commit syncs data only.
mod file;
/// Acknowledgements: a queued receipt's wait (blocking or `.await`) until durable.
mod pending;
/// Reopening a log after a crash.
mod recovery;
/// What the writer has committed, and how long it took.
mod stats;
/// The writer thread: group commit of queued lines.
mod writer;

#[cfg(test)]
mod test_utils;

pub use append::ReceiptLog;
pub use pending::PendingReceipt;
pub use recovery::Recovered;
pub use stats::CommitStats;

/// Where receipt lines go. `sync` must make everything written so far durable.
/// Implemented for [`File`]; tests elsewhere can implement it to fail on demand.
pub trait DurableSink: Send + 'static {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    /// Called once when the log stops cleanly, after its last sync (a log
    /// file cuts its zeroed tail here). Errors are ignored: every line is
    /// already durable.
    fn close(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl DurableSink for File {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(self, bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// What session_start binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStart {
    pub session_id: String,
    /// Revocation ids of the session's token, root block first.
    pub revocation_ids: Vec<String>,
    /// Isolation backend: `kvm`, `netns`, ...
    pub sandbox: String,
    /// Hex SHA-256 of the session's `capabilities.cap` file, if any.
    pub capability_sha256: Option<String>,
    /// Who the session is billed to (`openclaw run --tenant`), if labelled.
    pub tenant: Option<String>,
    /// Who ran it (`openclaw run --user`), if labelled.
    pub user: Option<String>,
}

/// A receipt to append (session_start and session_end are written by the log).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A decision, stamped with the `now` it was made with.
    Decision {
        decided_at: SystemTime,
        record: DecisionRecord,
    },
    /// The same, already encoded from typed values (the enforcing path).
    CanonicalDecision {
        decided_at: SystemTime,
        record: CanonicalDecision,
    },
    Approval(ApprovalRecord),
    /// What a metered LLM call used, when its response ended.
    Usage(UsageRecord),
    /// The LLM spend reached a warning level of the budget.
    BudgetWarning(BudgetWarningRecord),
}

/// An acknowledged receipt: durable on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// SHA-256 of the receipt's line.
    pub hash: [u8; 32],
}

/// Why an append was not acknowledged. The caller must treat any of these as
/// "no receipt": fail closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("writing receipt {seq} failed: {why}")]
    Write { seq: u64, why: String },
    #[error("the receipt log failed earlier ({why}) and accepts no more receipts")]
    Poisoned { why: String },
    #[error("the session has ended; no more receipts")]
    Ended,
    #[error("encoding receipt: {0}")]
    Encode(String),
    #[error("the receipt writer thread is gone")]
    WriterGone,
}

/// Why a log could not be created or reopened.
#[derive(Debug, thiserror::Error)]
pub enum OpenLogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Chain {
        path: PathBuf,
        #[source]
        source: ChainError,
    },
    #[error("{path}: no complete session_start; nothing was ever acknowledged, start a new log")]
    NoStart { path: PathBuf },
    #[error("{path}: the session has already ended")]
    Ended { path: PathBuf },
    #[error("writing session_start: {0}")]
    Start(#[from] AppendError),
    #[error("starting the receipt writer thread: {0}")]
    Thread(io::Error),
    #[error("the receipt key cannot be used for signing: {0}")]
    Key(String),
}

// What a valid chain may hold, which the writer stays within: the
// verifier's bounds, owned there.
pub use crate::verify::{MAX_BATCH, MAX_LINE_BYTES, MAX_UNSIGNED_RUN_BYTES};

/// Tuning for the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Most receipts committed by one write + fdatasync. 1 means one fsync
    /// per receipt; clamped to [`MAX_BATCH`].
    pub max_batch: usize,
    /// How long the writer, woken by a receipt while the log is busy,
    /// waits for others before it writes (never longer than the last sync
    /// took, so a receipt waits at most about one commit interval more).
    /// Busy: the last write ended within a millisecond and carried more
    /// than one receipt somebody waited on. A receipt that arrives alone
    /// is written at once. Under load, fewer and larger writes cost less
    /// CPU per receipt (one write, fdatasync, signature and wake-up round
    /// for many); zero never gathers.
    pub gather: Duration,
    /// How long a receipt queued with
    /// [`ReceiptLog::submit_deferred`] may wait for the next signing turn
    /// to cover it before the writer signs it alone (about twice this at
    /// most, since an idle writer looks that often).
    pub defer: Duration,
    /// The writer thread's nice value (Linux: per thread); 0 (the
    /// default) leaves it as the process's. Below 0 the writer preempts a
    /// request worker each time a sync ends or a receipt comes; at 0 a
    /// busy machine makes it wait for a core, and the receipts that come
    /// meanwhile join its next write. On a two-core VM where a context
    /// switch is dear, 0 measured better under load (about twice the
    /// receipts per write, less CPU per request: docs/proxy.md, "The
    /// writer at the process's priority"); an idle core runs it at once
    /// either way, so a lone request is not delayed. Raising priority
    /// needs CAP_SYS_NICE or RLIMIT_NICE; without, the writer keeps the
    /// process's (`CommitStats::writer_nice` says which).
    pub writer_nice: i32,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            max_batch: MAX_BATCH,
            gather: Duration::from_micros(150),
            defer: Duration::from_millis(100),
            writer_nice: 0,
        }
    }
}

/// Locks ignoring poisoning: every critical section leaves the state consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenLogError + '_ {
    move |source| OpenLogError::Io {
        path: path.to_owned(),
        source,
    }
}
