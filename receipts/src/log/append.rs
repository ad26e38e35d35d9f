//! The handle every caller clones: it encodes a receipt on the caller's
//! thread and queues it with its seq. Whichever submitter finds nobody
//! signing becomes the signer: it fills in seq and prev, signs and hashes
//! everything queued (its own receipt and those queued meanwhile), in order,
//! and hands the lines to the writer thread. The others never wait for a
//! lock held across a signature: they queue and go to wait for durability.
//! Creating a log writes and waits for session_start; finishing it writes
//! session_end.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use ed25519_dalek::SigningKey;

use super::file::PreallocatedFile;
use super::writer::{writer_loop, HashSlot, Next, Queue, State};
use super::{
    io_err, lock, AppendError, Appended, CommitStats, DurableSink, Entry, LogOptions, OpenLogError,
    PendingReceipt, SessionStart,
};
use crate::format::{self, Body, Interruption, InterruptionCause, Prepared, GENESIS_PREV};

/// A cloneable, thread-safe handle on one session's receipt chain.
#[derive(Clone)]
pub struct ReceiptLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReceiptLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptLog")
            .field("session", &self.shared.session)
            .field("key_id", &self.shared.key_id)
            .finish()
    }
}

struct Shared {
    /// The serial part: a receipt's prev is the hash of the line before it,
    /// so filling in prev/seq, signing and hashing happen one at a time.
    /// Held only by the submitter whose turn it is to sign (`State::signing`),
    /// so nobody ever waits for it.
    chain: Mutex<Chain>,
    queue: Arc<Queue>,
    key: SigningKey,
    /// The same key for signing: aws-lc's Ed25519 signs in ~9 µs where
    /// ed25519-dalek takes ~16 µs here, on every receipt and under the chain
    /// lock. Ed25519 signatures are deterministic: both give the same bytes.
    signer: aws_lc_rs::signature::Ed25519KeyPair,
    key_id: String,
    session: String,
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct Chain {
    /// Hash of the last signed line (the genesis value is written for seq 0).
    prev: [u8; 32],
    /// Reused buffers: the signing input, the signed line, the line with
    /// its newline, and the taken queue.
    scratch: Vec<u8>,
    line: Vec<u8>,
    signed: Vec<u8>,
    taken: Vec<(Next, HashSlot)>,
}

impl ReceiptLog {
    /// Creates `path` (which must not exist), writes session_start and
    /// returns once it is durable (file, its data and its directory entry).
    pub fn create(
        path: &Path,
        key: SigningKey,
        start: SessionStart,
    ) -> Result<ReceiptLog, OpenLogError> {
        Self::create_with(path, key, start, LogOptions::default())
    }

    /// [`ReceiptLog::create`] with writer tuning.
    pub fn create_with(
        path: &Path,
        key: SigningKey,
        start: SessionStart,
        options: LogOptions,
    ) -> Result<ReceiptLog, OpenLogError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map_err(io_err(path))?;
        sync_parent_dir(path)?;
        let file = PreallocatedFile::new(file, path, 0).map_err(io_err(path))?;
        Self::with_sink(file, key, start, options)
    }

    /// A new chain over any sink (files, or a test sink that fails on demand).
    /// Writes session_start and waits for it.
    pub fn with_sink(
        sink: impl DurableSink,
        key: SigningKey,
        start: SessionStart,
        options: LogOptions,
    ) -> Result<ReceiptLog, OpenLogError> {
        let session = start.session_id.clone();
        let log = Self::spawn(sink, key, session, 0, [0; 32], options)?;
        let body = Body::SessionStart {
            public_key: hex::encode(log.shared.key.verifying_key().as_bytes()),
            revocation_ids: start.revocation_ids,
            sandbox: start.sandbox,
            capability_sha256: start.capability_sha256,
            tenant: start.tenant,
            user: start.user,
        };
        let prepared = log.prepare(SystemTime::now(), &body)?;
        log.submit_prepared(Next::Ready(prepared))?.wait()?;
        Ok(log)
    }

    pub(super) fn spawn(
        sink: impl DurableSink,
        key: SigningKey,
        session: String,
        next_seq: u64,
        prev: [u8; 32],
        options: LogOptions,
    ) -> Result<ReceiptLog, OpenLogError> {
        let signer = aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(
            key.as_bytes(),
            key.verifying_key().as_bytes(),
        )
        .map_err(|e| OpenLogError::Key(e.to_string()))?;
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                next_seq,
                ended: false,
                unsigned: Vec::new(),
                signing: false,
                buf: Vec::new(),
                lens: VecDeque::new(),
                buf_seq: next_seq,
                failed: None,
                stopping: false,
                writer_idle: false,
                waiting: BTreeMap::new(),
                stats: CommitStats::default(),
            }),
            work: Condvar::new(),
            durable: AtomicU64::new(next_seq),
        });
        let thread_queue = Arc::clone(&queue);
        let options = LogOptions {
            max_batch: options.max_batch.max(1),
            ..options
        };
        let handle = std::thread::Builder::new()
            .name(format!("receipts-{session}"))
            .spawn(move || writer_loop(&thread_queue, sink, options))
            .map_err(OpenLogError::Thread)?;
        Ok(ReceiptLog {
            shared: Arc::new(Shared {
                chain: Mutex::new(Chain {
                    prev,
                    scratch: Vec::new(),
                    line: Vec::new(),
                    signed: Vec::new(),
                    taken: Vec::new(),
                }),
                queue,
                key_id: format::key_id(&key.verifying_key()),
                signer,
                key,
                session,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Batches committed so far and how long their syncs took.
    pub fn commit_stats(&self) -> CommitStats {
        lock(&self.shared.queue.state).stats.clone()
    }

    pub fn session_id(&self) -> &str {
        &self.shared.session
    }

    /// Key id written in each receipt's `signer`.
    pub fn key_id(&self) -> &str {
        &self.shared.key_id
    }

    /// Appends and blocks until the receipt is durable.
    pub fn append(&self, entry: Entry) -> Result<Appended, AppendError> {
        self.submit(entry)?.wait()
    }

    /// Signs and queues a receipt; its seq and place in the chain are fixed
    /// now. The returned handle resolves once it is durable (or failed).
    pub fn submit(&self, entry: Entry) -> Result<PendingReceipt, AppendError> {
        let (ts, body) = match entry {
            Entry::Decision { decided_at, record } => (decided_at, Body::Decision(record)),
            Entry::Approval(record) => (SystemTime::now(), Body::Approval(record)),
            Entry::Usage(record) => (SystemTime::now(), Body::Usage(record)),
            Entry::BudgetWarning(record) => (SystemTime::now(), Body::BudgetWarning(record)),
        };
        // Everything that does not depend on the chain is encoded here, on
        // the caller's thread, before it is queued for signing.
        let prepared = self.prepare(ts, &body)?;
        self.submit_prepared(Next::Ready(prepared))
    }

    /// Writes session_end (count and last hash) and waits for it and for
    /// every earlier append, then stops the writer. Other handles get
    /// [`AppendError::Ended`] afterwards.
    pub fn finish(self) -> Result<Appended, AppendError> {
        self.finish_with(None)
    }

    /// Closes a chain whose supervisor died: a `session_end` that says so
    /// (`interrupted`, naming the supervisor's last seq; its `ts` is now, the
    /// recovery time). For a log reopened with
    /// [`open_existing`](Self::open_existing) by recovery, never by a live
    /// supervisor.
    pub fn finish_interrupted(self, cause: InterruptionCause) -> Result<Appended, AppendError> {
        self.finish_with(Some(cause))
    }

    fn finish_with(self, interrupted: Option<InterruptionCause>) -> Result<Appended, AppendError> {
        let end = self.submit_prepared(Next::End(SystemTime::now(), interrupted))?;
        let appended = end.wait()?;
        self.shared.stop();
        Ok(appended)
    }

    fn prepare(&self, ts: SystemTime, body: &Body) -> Result<Prepared, AppendError> {
        prepare(&self.shared.session, &self.shared.key_id, ts, body)
    }

    fn submit_prepared(&self, next: Next) -> Result<PendingReceipt, AppendError> {
        let shared = &self.shared;
        let queue = &shared.queue;
        let mut state = lock(&queue.state);
        if let Some(why) = &state.failed {
            return Err(AppendError::Poisoned { why: why.1.clone() });
        }
        if state.ended || state.stopping {
            return Err(AppendError::Ended);
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.ended = matches!(next, Next::End(..));
        let hash: HashSlot = Arc::new(OnceLock::new());
        state.unsigned.push((next, Arc::clone(&hash)));
        let pending = PendingReceipt {
            queue: Arc::clone(queue),
            seq,
            hash,
            registered: false,
        };
        if !state.signing {
            // Nobody is signing: this submitter signs everything queued
            // until the queue is empty, then returns to wait like the rest.
            state.signing = true;
            self.sign_queued(state);
        }
        Ok(pending)
    }

    /// The signer's turn: takes the queue, signs it in order without the
    /// queue lock, hands each line to the writer as soon as it is signed (an
    /// idle writer starts on it at once instead of waiting for the turn to
    /// end), and repeats until nothing is left, so no queued receipt is ever
    /// left without a signer.
    fn sign_queued<'a>(&'a self, mut state: MutexGuard<'a, State>) {
        let shared = &self.shared;
        let queue = &shared.queue;
        let mut chain = lock(&shared.chain);
        let chain = &mut *chain;
        loop {
            let first = state.next_seq - state.unsigned.len() as u64;
            std::mem::swap(&mut state.unsigned, &mut chain.taken);
            drop(state);
            let mut failure = None;
            let mut taken = std::mem::take(&mut chain.taken);
            for (i, (next, slot)) in taken.drain(..).enumerate() {
                let seq = first + i as u64;
                chain.signed.clear();
                match shared.sign_one(seq, next, chain) {
                    Ok(hash) => {
                        let _ = slot.set(hash);
                        let mut state = lock(&queue.state);
                        // After a failure the line is dropped: its waiter
                        // gets the error.
                        if state.failed.is_none() {
                            if state.lens.is_empty() {
                                state.buf_seq = seq;
                            }
                            state.buf.extend_from_slice(&chain.signed);
                            state.lens.push_back((chain.signed.len(), Instant::now()));
                            if state.writer_idle {
                                state.writer_idle = false;
                                queue.work.notify_one();
                            }
                        }
                    }
                    Err(e) => {
                        // Only session_end is encoded here; it is the last.
                        failure = Some((seq, e.to_string()));
                        break;
                    }
                }
            }
            taken.clear();
            // Kept for its capacity: the next turn swaps it with the queue.
            chain.taken = taken;
            state = lock(&queue.state);
            if let Some((seq, why)) = failure {
                // Fail closed: what is not yet with the writer fails too.
                let from = if state.lens.is_empty() {
                    seq
                } else {
                    state.buf_seq
                };
                state.fail(from, why);
                let waiting = std::mem::take(&mut state.waiting);
                state.signing = false;
                drop(state);
                for w in waiting.into_values() {
                    w.wake();
                }
                return;
            }
            if state.unsigned.is_empty() {
                state.signing = false;
                return;
            }
        }
    }
}

impl Shared {
    /// Fills in seq and prev, signs, hashes and appends one line (with its
    /// newline) to `chain.signed`. Returns the line's hash.
    fn sign_one(&self, seq: u64, next: Next, chain: &mut Chain) -> Result<[u8; 32], AppendError> {
        let prepared = match next {
            Next::Ready(p) => p,
            // session_end commits to its own seq and the last hash: only
            // known here.
            Next::End(ts, interrupted) => prepare(
                &self.session,
                &self.key_id,
                ts,
                &Body::SessionEnd {
                    count: seq + 1,
                    last: hex::encode(chain.prev),
                    interrupted: interrupted.map(|cause| Interruption {
                        cause,
                        // A log always holds session_start before its end.
                        at_seq: seq.saturating_sub(1),
                    }),
                },
            )?,
        };
        let mut prev_hex = [0u8; 64];
        if seq == 0 {
            prev_hex.copy_from_slice(GENESIS_PREV.as_bytes());
        } else {
            hex::encode_to_slice(chain.prev, &mut prev_hex).expect("64 hex digits for 32 bytes");
        }
        chain.line.clear();
        prepared.sign_into(
            seq,
            &prev_hex,
            |input| {
                let mut sig = [0u8; 64];
                sig.copy_from_slice(self.signer.sign(input).as_ref());
                sig
            },
            &mut chain.scratch,
            &mut chain.line,
        );
        let hash = format::line_hash(&chain.line);
        chain.prev = hash;
        chain.signed.extend_from_slice(&chain.line);
        chain.signed.push(b'\n');
        Ok(hash)
    }
}

/// Encodes everything of a receipt except prev, seq and sig.
fn prepare(
    session: &str,
    key_id: &str,
    ts: SystemTime,
    body: &Body,
) -> Result<Prepared, AppendError> {
    let ts = format::format_time(ts);
    Prepared::new(format::version_of(body), session, &ts, key_id, body)
        .map_err(|e| AppendError::Encode(e.to_string()))
}

impl Shared {
    fn stop(&self) {
        lock(&self.queue.state).stopping = true;
        self.queue.work.notify_all();
        if let Some(handle) = lock(&self.writer).take() {
            // The writer drains what is queued before it exits.
            let _ = handle.join();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes a newly created file's directory entry durable.
fn sync_parent_dir(path: &Path) -> Result<(), OpenLogError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::sync::{Arc, Mutex};

    use super::super::test_utils::{decision, key, start, FailingSink};
    use super::super::{lock, AppendError, LogOptions, ReceiptLog};
    use crate::UnverifiedChain;

    #[test]
    fn concurrent_appends_form_one_verifiable_chain_with_unique_seqs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("receipts.jsonl");
        let log = ReceiptLog::create(&path, key(), start()).expect("create");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| log.append(decision(t * 100 + i)).expect("append").seq)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("join"))
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        let end = log.finish().expect("finish");
        assert_eq!(end.seq, 101);
        let chain = UnverifiedChain::from_bytes(std::fs::read(&path).expect("read"))
            .verify(&key().verifying_key())
            .expect("verifies");
        assert_eq!(chain.receipts.len(), 102);
        assert_eq!(chain.last_hash(), end.hash);
    }

    #[test]
    fn a_failed_write_fails_the_append_and_poisons_the_log() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = FailingSink {
            ok: 2,
            written: Arc::clone(&written),
        };
        let log =
            ReceiptLog::with_sink(sink, key(), start(), LogOptions::default()).expect("start");
        assert_eq!(log.append(decision(1)).expect("second write ok").seq, 1);
        let err = log.append(decision(2)).expect_err("third write fails");
        assert!(matches!(err, AppendError::Write { seq: 2, .. }), "{err}");
        let err = log.append(decision(3)).expect_err("poisoned");
        assert!(matches!(err, AppendError::Poisoned { .. }), "{err}");
        assert!(log.clone().finish().is_err());
        // What reached the sink is a clean prefix: two whole lines.
        let bytes = lock(&written).clone();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 2);
    }

    #[test]
    fn dev_full_enospc_is_reported_to_the_caller() {
        let file = OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let err = ReceiptLog::with_sink(file, key(), start(), LogOptions::default())
            .expect_err("no space");
        assert!(err.to_string().contains("No space left"), "{err}");
    }
}
