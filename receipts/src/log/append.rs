//! The handle every caller clones: it encodes a receipt on the caller's
//! thread and queues it with its seq. Whichever submitter finds nobody
//! chaining takes a turn: it fills in seq and prev and hashes everything
//! queued (its own receipt and those queued meanwhile), in order, and hands
//! each line to the writer thread; the others never wait for it. Lines are
//! chained without a signature of their own (format version 5): the writer
//! signs the last line of each write it takes, and that line's `prev` chain
//! binds every line before it. So a write costs one signature however many
//! receipts it carries, and a lone receipt is signed alone. A receipt nobody
//! waits for (a call's usage, after its response) is queued with
//! [`ReceiptLog::submit_deferred`]: it does not wake the writer, so it rides
//! with the next write, or is written after [`LogOptions::defer`]. Creating a
//! log writes and waits for session_start; finishing it writes session_end.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use ed25519_dalek::SigningKey;

use super::file::PreallocatedFile;
use super::writer::{writer_loop, HashSlot, Line, Next, Queue, Queued, State, TakenWrite, Wake};
use super::{
    io_err, lock, AppendError, Appended, CommitStats, DurableSink, Entry, LogOptions, OpenLogError,
    PendingReceipt, SessionStart, MAX_BATCH, MAX_LINE_BYTES, MAX_UNSIGNED_RUN_BYTES,
};
use crate::format::{
    self, Body, CanonicalDecision, Interruption, InterruptionCause, Prepared, GENESIS_PREV,
};

/// A cloneable, thread-safe handle on one session's receipt chain.
#[derive(Clone)]
pub struct ReceiptLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReceiptLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptLog")
            .field("session", &self.shared.signer.session)
            .field("key_id", &self.shared.signer.key_id)
            .finish()
    }
}

struct Shared {
    signer: Arc<Signer>,
    queue: Arc<Queue>,
    key: SigningKey,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// The chain's serial state and the key, shared by the submitters' chaining
/// turns and the writer thread (which signs).
pub(super) struct Signer {
    /// The serial part: a receipt's prev is the hash of the line before it,
    /// so filling in prev/seq and hashing happen one at a time, and the
    /// writer's signature of a write's last line changes that line (and so
    /// the next one's prev). Held line by line by the submitter whose turn
    /// it is (`State::chaining`), and by the writer while it takes a write;
    /// always taken before `Queue::state`.
    chain: Mutex<Chain>,
    /// The key for signing: aws-lc's Ed25519 signs in ~9 µs where
    /// ed25519-dalek takes ~16 µs here, under the chain lock. Ed25519
    /// signatures are deterministic: both give the same bytes.
    key: aws_lc_rs::signature::Ed25519KeyPair,
    key_id: String,
    session: String,
    /// Most lines one signature covers (`LogOptions::max_batch`): a line
    /// that would make a longer run without one is signed as it is chained.
    max_group: usize,
}

struct Chain {
    /// Hash of the last line (the genesis value is written for seq 0).
    prev: [u8; 32],
    /// The last line chained, while it is the last line of the writer's
    /// buffer and unsigned: the writer signs it if it ends a write (nothing
    /// is chained onto it meanwhile: the writer holds this lock).
    open: Option<Open>,
    /// Lines chained since the last signed one, and their bytes.
    run: usize,
    run_bytes: usize,
    /// Reused buffers: the signing input and one line.
    scratch: Vec<u8>,
    line: Vec<u8>,
}

/// What the writer needs to sign the open line: its encoding and place.
struct Open {
    prepared: Prepared,
    seq: u64,
    prev_hex: [u8; 64],
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
        log.queue_next(Next::Ready(prepared), false)?.wait()?;
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
        let aws_key = aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(
            key.as_bytes(),
            key.verifying_key().as_bytes(),
        )
        .map_err(|e| OpenLogError::Key(e.to_string()))?;
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                next_seq,
                ended: false,
                queued: Vec::new(),
                chaining: false,
                urgent: false,
                buf: Vec::new(),
                lens: VecDeque::new(),
                buf_seq: next_seq,
                failed: None,
                stopping: false,
                writer_idle: false,
                writer_watching: false,
                gathering_until: None,
                deferred_since: None,
                waiting: BTreeMap::new(),
                stats: CommitStats::default(),
            }),
            work: Condvar::new(),
            durable: AtomicU64::new(next_seq),
        });
        let options = LogOptions {
            max_batch: options.max_batch.clamp(1, MAX_BATCH),
            ..options
        };
        let signer = Arc::new(Signer {
            chain: Mutex::new(Chain {
                prev,
                open: None,
                run: 0,
                run_bytes: 0,
                scratch: Vec::new(),
                line: Vec::new(),
            }),
            key: aws_key,
            key_id: format::key_id(&key.verifying_key()),
            session: session.clone(),
            max_group: options.max_batch,
        });
        let (thread_queue, thread_signer) = (Arc::clone(&queue), Arc::clone(&signer));
        let handle = std::thread::Builder::new()
            .name(format!("receipts-{session}"))
            .spawn(move || {
                let turn_queue = Arc::clone(&thread_queue);
                writer_loop(&thread_queue, sink, options, move |n, buf, queued| {
                    thread_signer.take_for_write(&turn_queue, n, buf, queued)
                });
            })
            .map_err(OpenLogError::Thread)?;
        Ok(ReceiptLog {
            shared: Arc::new(Shared {
                signer,
                queue,
                key,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Batches committed so far and how long their syncs took.
    pub fn commit_stats(&self) -> CommitStats {
        lock(&self.shared.queue.state).stats.clone()
    }

    pub fn session_id(&self) -> &str {
        &self.shared.signer.session
    }

    /// Key id written in each receipt's `signer`.
    pub fn key_id(&self) -> &str {
        &self.shared.signer.key_id
    }

    /// Appends and blocks until the receipt is durable.
    pub fn append(&self, entry: Entry) -> Result<Appended, AppendError> {
        self.submit(entry)?.wait()
    }

    /// Queues a receipt and wakes the writer; its seq and place in the
    /// chain are fixed now. The returned handle resolves once it is durable
    /// (or failed).
    pub fn submit(&self, entry: Entry) -> Result<PendingReceipt, AppendError> {
        self.submit_entry(entry, false)
    }

    /// Queues a receipt that nothing waits for (a call's usage once its
    /// response is over) without waking the writer: its seq and place in
    /// the chain are fixed now, and it is written with the next write (whose
    /// signed last line covers it), or after [`LogOptions::defer`] if none
    /// comes. So a receipt that follows an action's usually rides with the
    /// next action's signature and write instead of paying for its own. A
    /// crash before then loses it, as it would lose a receipt not yet
    /// written: nothing was acknowledged on its account.
    pub fn submit_deferred(&self, entry: Entry) -> Result<PendingReceipt, AppendError> {
        self.submit_entry(entry, true)
    }

    fn submit_entry(&self, entry: Entry, deferred: bool) -> Result<PendingReceipt, AppendError> {
        // Everything that does not depend on the chain is encoded here, on
        // the caller's thread, before it is queued for chaining.
        let prepared = match entry {
            Entry::CanonicalDecision { decided_at, record } => {
                self.prepare_decision(decided_at, record)
            }
            // The same route, once the JSON values are encoded.
            Entry::Decision { decided_at, record } => {
                let record = CanonicalDecision::from_record(&record)
                    .map_err(|e| AppendError::Encode(e.to_string()))?;
                self.prepare_decision(decided_at, record)
            }
            Entry::Approval(record) => self.prepare(SystemTime::now(), &Body::Approval(record))?,
            Entry::Usage(record) => self.prepare(SystemTime::now(), &Body::Usage(record))?,
            Entry::BudgetWarning(record) => {
                self.prepare(SystemTime::now(), &Body::BudgetWarning(record))?
            }
        };
        self.queue_next(Next::Ready(prepared), deferred)
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
        let end = self.queue_next(Next::End(SystemTime::now(), interrupted), false)?;
        let appended = end.wait()?;
        self.shared.stop();
        Ok(appended)
    }

    fn prepare_decision(&self, decided_at: SystemTime, record: CanonicalDecision) -> Prepared {
        let signer = &self.shared.signer;
        Prepared::canonical_decision(&signer.session, &signer.key_id, decided_at, record)
    }

    fn prepare(&self, ts: SystemTime, body: &Body) -> Result<Prepared, AppendError> {
        prepare(
            &self.shared.signer.session,
            &self.shared.signer.key_id,
            ts,
            body,
        )
    }

    fn queue_next(&self, next: Next, deferred: bool) -> Result<PendingReceipt, AppendError> {
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
        let queued = Queued {
            next,
            slot: Arc::clone(&hash),
            deferred,
        };
        let pending = PendingReceipt {
            queue: Arc::clone(queue),
            seq,
            hash,
            registered: false,
        };
        if state.chaining {
            // Another submitter is chaining: it takes this one too.
            state.queued.push(queued);
        } else {
            // Nobody is chaining (so nothing is queued): this submitter
            // chains its own receipt, then whatever was queued meanwhile,
            // then returns to wait like the rest.
            state.chaining = true;
            drop(state);
            shared.signer.chain_turn(queue, seq, queued);
        }
        Ok(pending)
    }
}

impl Signer {
    /// A chaining turn (`state.chaining` set by the caller, whose receipt
    /// `first` gets `seq`): chains it, then the receipts queued meanwhile,
    /// in order, handing each line to the writer as soon as it is chained
    /// (an idle writer starts on it at once), until nothing is left, so no
    /// queued receipt is ever left behind. The queue is looked at under the
    /// same lock that hands a line over: an uncontended receipt takes the
    /// queue lock twice (queued, handed over), not four times.
    fn chain_turn(&self, queue: &Queue, seq: u64, first: Queued) {
        // Receipts taken from the queue, in reverse: the next is popped.
        let mut taken: Vec<Queued> = Vec::new();
        let (mut seq, mut current) = (seq, first);
        loop {
            // The chain lock per line, not per turn: the writer takes it
            // too, and must not wait for a long turn to end.
            let mut chain = lock(&self.chain);
            let chain = &mut *chain;
            let Queued {
                next,
                slot,
                deferred,
            } = current;
            let (hash, signed) = match self.chain_one(seq, next, chain) {
                Ok(chained) => chained,
                Err(e) => {
                    // session_end (encoded here), or a line too long for
                    // any reader: its seq is taken, so the chain cannot
                    // go on past it. Fail closed: what is not yet with
                    // the writer fails too.
                    let mut state = lock(&queue.state);
                    let from = if state.lens.is_empty() {
                        seq
                    } else {
                        state.buf_seq
                    };
                    chain.open = None;
                    state.chaining = false;
                    let waiting = state.fail_waking_all(from, e.to_string());
                    drop(state);
                    waiting.into_iter().for_each(Wake::wake);
                    return;
                }
            };
            let mut state = lock(&queue.state);
            // After a failure the line is dropped: its waiter gets the
            // error.
            if state.failed.is_none() {
                let line = Line {
                    len: chain.line.len() + 1,
                    queued: Instant::now(),
                    signed,
                    deferred,
                    hash,
                    slot,
                };
                Self::hand_over(queue, &mut state, seq, &chain.line, line);
            }
            seq += 1;
            current = match taken.pop() {
                Some(next) => next,
                None if state.queued.is_empty() => {
                    state.chaining = false;
                    return;
                }
                None => {
                    debug_assert_eq!(state.next_seq - state.queued.len() as u64, seq);
                    // Both are empty here but for capacity: they swap.
                    std::mem::swap(&mut state.queued, &mut taken);
                    taken.reverse();
                    taken.pop().expect("the queue was not empty")
                }
            };
        }
    }

    /// Appends a chained line to the writer's buffer and wakes the writer
    /// if it waits for this line (or for the company this line completes).
    fn hand_over(queue: &Queue, state: &mut State, seq: u64, bytes: &[u8], line: Line) {
        if state.lens.is_empty() {
            state.buf_seq = seq;
        }
        state.buf.extend_from_slice(bytes);
        state.buf.push(b'\n');
        let deferred = line.deferred;
        state.lens.push_back(line);
        if deferred {
            state.deferred_since.get_or_insert_with(Instant::now);
        } else {
            state.urgent = true;
        }
        if state.writer_idle && (state.urgent || !state.writer_watching) {
            // An urgent line, or a deferred one that an idle writer
            // without a deadline would never look at.
            state.writer_idle = false;
            queue.work.notify_one();
        } else if state
            .gathering_until
            .is_some_and(|enough| state.lens.len() >= enough)
        {
            // The company the gathering writer waits for is here.
            state.gathering_until = None;
            queue.work.notify_one();
        }
    }

    /// Fills in seq and prev and hashes one line into `chain.line`, signed
    /// only when it must be (session_start, session_end, or a run of
    /// `max_group` lines without a signature); otherwise it is left open for
    /// the writer. Returns the line's hash and whether it is signed.
    fn chain_one(
        &self,
        seq: u64,
        next: Next,
        chain: &mut Chain,
    ) -> Result<([u8; 32], bool), AppendError> {
        let (prepared, edge) = match next {
            Next::Ready(p) => (p, seq == 0),
            // session_end commits to its own seq and the last hash: only
            // known here.
            Next::End(ts, interrupted) => (
                prepare(
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
                true,
            ),
        };
        let mut prev_hex = [0u8; 64];
        if seq == 0 {
            prev_hex.copy_from_slice(GENESIS_PREV.as_bytes());
        } else {
            hex::encode_to_slice(chain.prev, &mut prev_hex).expect("64 hex digits for 32 bytes");
        }
        chain.line.clear();
        // A line that could take the run past what a reader accepts
        // without a signature is signed now (the byte rule never comes
        // into play for lines of ordinary size).
        let signed = edge
            || chain.run + 1 >= self.max_group
            || chain.run_bytes + MAX_LINE_BYTES > MAX_UNSIGNED_RUN_BYTES;
        if signed {
            self.sign(
                &prepared,
                seq,
                &prev_hex,
                &mut chain.scratch,
                &mut chain.line,
            );
        } else {
            prepared.unsigned_into(seq, &prev_hex, None, &mut chain.line);
        }
        // Signed by the writer later, the line grows by its sig member.
        let signed_len = chain.line.len() + if signed { 0 } else { SIG_MEMBER_BYTES };
        if signed_len > MAX_LINE_BYTES {
            chain.line.clear();
            return Err(AppendError::Encode(format!(
                "receipt {seq} would be a line of {signed_len} bytes, longer than the \
                 {MAX_LINE_BYTES} a receipt line may have"
            )));
        }
        if signed {
            chain.open = None;
            chain.run = 0;
            chain.run_bytes = 0;
        } else {
            chain.run_bytes += chain.line.len();
            chain.open = Some(Open {
                prepared,
                seq,
                prev_hex,
            });
            chain.run += 1;
        }
        let hash = format::line_hash(&chain.line);
        chain.prev = hash;
        Ok((hash, signed))
    }

    fn sign(
        &self,
        prepared: &Prepared,
        seq: u64,
        prev_hex: &[u8; 64],
        scratch: &mut Vec<u8>,
        line: &mut Vec<u8>,
    ) {
        prepared.sign_into(
            seq,
            prev_hex,
            |input| {
                let mut sig = [0u8; 64];
                sig.copy_from_slice(self.key.sign(input).as_ref());
                sig
            },
            scratch,
            line,
        );
    }

    /// The writer's take (called without the queue lock): how many of the
    /// queued lines the next write holds — all of them when at most `n`,
    /// else up to the last signed line among the first `n` (one exists: a
    /// run without a signature is shorter than `max_group`) — with the
    /// last one signed. The open line, if it ends the write, is signed
    /// here, under the chain lock, so nothing is chained onto its unsigned
    /// form meanwhile. The bytes go to `buf`, queue times to `queued`;
    /// None if there is nothing (failed meanwhile).
    pub(super) fn take_for_write(
        &self,
        queue: &Queue,
        n: usize,
        buf: &mut Vec<u8>,
        queued: &mut Vec<Instant>,
    ) -> Option<TakenWrite> {
        let mut chain = lock(&self.chain);
        let chain = &mut *chain;
        let state = lock(&queue.state);
        let len = state.lens.len();
        if len == 0 {
            return None;
        }
        let take = if len <= n {
            len
        } else {
            (0..n)
                .rev()
                .find(|&i| state.lens[i].signed)
                .map_or(len, |i| i + 1)
        };
        let mut state = if take == len && !state.lens[len - 1].signed {
            // The buffer ends with the open line: sign it now.
            let Some(open) = chain.open.take() else {
                // Cannot happen (the unsigned last line is the open one);
                // if it did, nothing may be written unsigned: fail closed.
                let mut state = state;
                let from = state.buf_seq;
                let waiting = state
                    .fail_waking_all(from, "the last line to write has no signer state".into());
                drop(state);
                waiting.into_iter().for_each(Wake::wake);
                return None;
            };
            drop(state);
            chain.line.clear();
            self.sign(
                &open.prepared,
                open.seq,
                &open.prev_hex,
                &mut chain.scratch,
                &mut chain.line,
            );
            chain.line.push(b'\n');
            let hash = format::line_hash(&chain.line[..chain.line.len() - 1]);
            chain.prev = hash;
            chain.run = 0;
            chain.run_bytes = 0;
            let mut state = lock(&queue.state);
            let last = state
                .lens
                .back_mut()
                .expect("still there: chaining needs our lock");
            let old_len = last.len;
            last.len = chain.line.len();
            last.signed = true;
            last.hash = hash;
            let cut = state.buf.len() - old_len;
            state.buf.truncate(cut);
            state.buf.extend_from_slice(&chain.line);
            state
        } else {
            state
        };
        Some(TakenWrite::take(&mut state, take, buf, queued))
    }
}

/// `,"sig":"` + 128 hex digits + `"`: what signing adds to a line.
const SIG_MEMBER_BYTES: usize = 8 + 128 + 1;

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

    use super::super::test_utils::{
        decision, deferring, hammer, key, recording, start, FailingSink,
    };
    use super::super::{lock, AppendError, Entry, LogOptions, ReceiptLog};
    use crate::{CanonicalDecision, UnverifiedChain};

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
    fn a_canonical_decision_is_written_as_the_same_receipt_as_its_record() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let log =
            ReceiptLog::with_sink(recording(&writes, 1), key(), start(), LogOptions::default())
                .expect("start");
        let decided_at = std::time::SystemTime::now();
        let entries: Vec<_> = (0..40)
            .map(|i| {
                let Entry::Decision { record, .. } = decision(i) else {
                    unreachable!("decision() makes decisions")
                };
                let canonical = CanonicalDecision::from_record(&record).expect("encode");
                (record, canonical)
            })
            .collect();
        // Both kinds interleaved from several threads, so some land unsigned
        // inside a group and some sign it.
        std::thread::scope(|scope| {
            for chunk in entries.chunks(10) {
                let log = &log;
                scope.spawn(move || {
                    for (record, canonical) in chunk {
                        log.append(Entry::Decision {
                            decided_at,
                            record: record.clone(),
                        })
                        .expect("append");
                        log.append(Entry::CanonicalDecision {
                            decided_at,
                            record: canonical.clone(),
                        })
                        .expect("append");
                    }
                });
            }
        });
        log.finish().expect("finish");
        let chain = UnverifiedChain::from_bytes(lock(&writes).concat())
            .verify(&key().verifying_key())
            .expect("verifies");
        let bodies: Vec<_> = chain.receipts[1..81]
            .iter()
            .map(|r| (r.receipt.ts.clone(), r.receipt.body.clone()))
            .collect();
        for (record, _) in &entries {
            let twice = bodies
                .iter()
                .filter(|(ts, body)| {
                    *ts == crate::format_time(decided_at)
                        && *body == crate::Body::Decision(record.clone())
                })
                .count();
            assert_eq!(twice, 2, "{record:?}");
        }
    }

    /// The lines of all writes, and whether each carries its own sig.
    fn signed_flags(writes: &[Vec<u8>]) -> Vec<Vec<bool>> {
        writes
            .iter()
            .map(|w| {
                w.split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| l.windows(7).any(|x| x == b"\"sig\":\""))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_busy_log_signs_once_per_group_and_every_write_ends_with_a_signed_line() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let log =
            ReceiptLog::with_sink(recording(&writes, 2), key(), start(), LogOptions::default())
                .expect("start");
        let outcomes = hammer(&log, 8, 40);
        assert!(outcomes.iter().flatten().all(Result::is_ok));
        let stats = log.commit_stats();
        log.finish().expect("finish");
        // Appenders that queue while another signs ride with its next group.
        assert!(
            stats.signed < stats.receipts,
            "{} signatures for {} receipts",
            stats.signed,
            stats.receipts
        );
        let writes = lock(&writes).clone();
        for (i, flags) in signed_flags(&writes).iter().enumerate() {
            assert_eq!(
                flags.last(),
                Some(&true),
                "write {i} ends unsigned: {flags:?}"
            );
        }
        let chain = UnverifiedChain::from_bytes(writes.concat())
            .verify(&key().verifying_key())
            .expect("verifies");
        assert_eq!(chain.receipts.len(), 8 * 40 + 2);
    }

    #[test]
    fn a_receipt_alone_is_signed_alone() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let log =
            ReceiptLog::with_sink(recording(&writes, 0), key(), start(), LogOptions::default())
                .expect("start");
        for i in 0..5 {
            log.append(decision(i)).expect("append");
        }
        log.finish().expect("finish");
        let flags: Vec<bool> = signed_flags(&lock(&writes)).concat();
        assert_eq!(flags, [true; 7]);
    }

    #[test]
    fn a_deferred_receipt_rides_with_the_next_one_and_is_never_left_behind() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let patient = deferring(std::time::Duration::from_secs(3600));
        let log =
            ReceiptLog::with_sink(recording(&writes, 0), key(), start(), patient).expect("start");
        let deferred = log.submit_deferred(decision(1)).expect("defer");
        assert_eq!(deferred.seq(), 1);
        assert_eq!(log.append(decision(2)).expect("append").seq, 2);
        deferred.wait().expect("durable with the next");
        // Dropped without finish (as a dying supervisor would): the writer
        // still signs and writes what was deferred before it stops.
        log.submit_deferred(decision(3)).expect("defer");
        drop(log);
        assert_eq!(
            signed_flags(&lock(&writes)),
            [vec![true], vec![false, true], vec![true]],
            "session_start; the deferred one with the next; the last alone"
        );

        // Nobody else comes: the writer signs it alone after `defer`.
        let writes = Arc::new(Mutex::new(Vec::new()));
        let brief = deferring(std::time::Duration::from_millis(5));
        let log =
            ReceiptLog::with_sink(recording(&writes, 0), key(), start(), brief).expect("start");
        log.submit_deferred(decision(1))
            .expect("defer")
            .wait()
            .expect("durable");
        assert_eq!(signed_flags(&lock(&writes)), [vec![true], vec![true]]);
        log.finish().expect("finish");
        let chain = UnverifiedChain::from_bytes(lock(&writes).concat())
            .verify(&key().verifying_key())
            .expect("verifies");
        assert_eq!(chain.receipts.len(), 3);
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
