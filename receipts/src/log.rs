//! The durable receipt writer: a cloneable handle that signs and chains each
//! receipt, and a writer thread that commits appends from many callers in one
//! write + fdatasync (group commit). An append is acknowledged only after its
//! line is on disk; after any write or sync failure the log refuses every
//! further append, so the chain never continues over a hole.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;

use crate::format::{
    self, ApprovalRecord, Body, DecisionRecord, Prepared, FORMAT_VERSION, GENESIS_PREV,
};
use crate::verify::{ChainError, LineVerifier};

/// Where receipt lines go. `sync` must make everything written so far durable.
/// Implemented for [`File`]; tests elsewhere can implement it to fail on demand.
pub trait DurableSink: Send + 'static {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
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
}

/// A receipt to append (session_start and session_end are written by the log).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A decision, stamped with the `now` it was made with.
    Decision {
        decided_at: SystemTime,
        record: DecisionRecord,
    },
    Approval(ApprovalRecord),
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

/// Tuning for the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Most receipts committed by one write + fdatasync. 1 means one fsync per receipt.
    pub max_batch: usize,
    /// How long the writer, woken by a first receipt, waits for others
    /// before it writes (never longer than the last sync took, so a receipt
    /// waits at most about one commit interval more). Fewer, larger syncs
    /// cost less CPU when many requests are in flight; zero writes at once.
    pub gather: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            max_batch: 4096,
            gather: Duration::ZERO,
        }
    }
}

/// What the writer has committed so far, for benchmarks and monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Batches written (one write + fdatasync each).
    pub batches: u64,
    /// Receipts in those batches.
    pub receipts: u64,
    /// Write + fdatasync time of each batch: `sync_log2_us[i]` counts
    /// batches that took under 2^i µs (the last bucket: the rest).
    pub sync_log2_us: [u64; 24],
    /// Total write + fdatasync time.
    pub sync_total: Duration,
    /// Total time spent gathering before writes.
    pub gather_total: Duration,
    /// Per receipt, queued (signed) to durable: `queued_log2_us[i]` counts
    /// receipts that took under 2^i µs.
    pub queued_log2_us: [u64; 24],
    /// Receipts already queued when the batch before theirs was taken, so
    /// they waited for more than the batch in progress plus their own. With
    /// every queued receipt taken at once this stays 0 unless `max_batch`
    /// cuts a batch short.
    pub late: u64,
}

impl CommitStats {
    /// One batch: its receipts' queue times, its gathering and its write +
    /// fdatasync time, and when the batch before it was taken.
    fn record(
        &mut self,
        queued: &[Instant],
        durable_at: Instant,
        cycle: Cycle,
        previous_taken: Option<Instant>,
    ) {
        self.batches += 1;
        self.receipts += queued.len() as u64;
        self.sync_total += cycle.sync;
        self.gather_total += cycle.gather;
        log2_bucket(&mut self.sync_log2_us, cycle.sync);
        for &at in queued {
            log2_bucket(
                &mut self.queued_log2_us,
                durable_at.saturating_duration_since(at),
            );
            if previous_taken.is_some_and(|taken| at < taken) {
                self.late += 1;
            }
        }
    }

    /// Upper bound of the `q` quantile (0..=1) of write + fdatasync time.
    pub fn sync_quantile(&self, q: f64) -> Duration {
        log2_quantile(&self.sync_log2_us, q)
    }

    /// Upper bound of the `q` quantile (0..=1) of queued → durable time.
    pub fn queued_quantile(&self, q: f64) -> Duration {
        log2_quantile(&self.queued_log2_us, q)
    }
}

/// Gathering and write + fdatasync time of one batch.
#[derive(Debug, Clone, Copy, Default)]
struct Cycle {
    gather: Duration,
    sync: Duration,
}

fn log2_bucket(buckets: &mut [u64; 24], d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let bucket = (u64::BITS - us.leading_zeros()) as usize;
    buckets[bucket.min(buckets.len() - 1)] += 1;
}

fn log2_quantile(buckets: &[u64; 24], q: f64) -> Duration {
    let total: u64 = buckets.iter().sum();
    let want = (q.clamp(0.0, 1.0) * total as f64).ceil() as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= want.max(1) {
            return Duration::from_micros(1 << i);
        }
    }
    Duration::MAX
}

/// What reopening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Complete receipts kept.
    pub receipts: u64,
    /// Bytes of a torn last line that were cut off.
    pub truncated_bytes: u64,
}

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
    /// so filling in prev/seq, signing and hashing happen one at a time here.
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
    next_seq: u64,
    prev: [u8; 32],
    ended: bool,
    /// Reused buffers: the signing input and the signed line.
    scratch: Vec<u8>,
    line: Vec<u8>,
}

/// Lines waiting for the writer, and what is durable. Lock order: chain, then queue.
struct Queue {
    state: Mutex<State>,
    /// Signalled when there is work for an idle writer or it should stop.
    work: Condvar,
    /// Broadcast once per committed (or failed) batch.
    done: Condvar,
}

struct State {
    /// Signed lines (with newlines) not yet taken by the writer.
    buf: Vec<u8>,
    /// Length of each line in `buf` and when it was queued, oldest first.
    lens: VecDeque<(usize, Instant)>,
    /// Seq of the first line in `buf`.
    buf_seq: u64,
    /// Every receipt with seq below this is on disk.
    durable: u64,
    /// Set once a write or sync failed: receipts from this seq on are not
    /// durable, and nothing more is accepted.
    failed: Option<(u64, String)>,
    stopping: bool,
    writer_idle: bool,
    /// Threads blocked in [`PendingReceipt::wait`].
    blocked: usize,
    /// Futures waiting for their seq.
    wakers: BTreeMap<u64, Waker>,
    stats: CommitStats,
}

impl State {
    fn outcome(&self, appended: Appended) -> Option<Result<Appended, AppendError>> {
        if appended.seq < self.durable {
            return Some(Ok(appended));
        }
        match &self.failed {
            Some((from, why)) if appended.seq >= *from => Some(Err(AppendError::Write {
                seq: appended.seq,
                why: why.clone(),
            })),
            _ => None,
        }
    }
}

/// An append on its way to disk. Wait for it with [`PendingReceipt::wait`]
/// (blocking) or `.await` it (it is a plain `Future`, runtime-agnostic).
pub struct PendingReceipt {
    queue: Arc<Queue>,
    appended: Appended,
    /// Whether a waker for this receipt may be registered in the queue.
    registered: bool,
}

impl PendingReceipt {
    pub fn wait(self) -> Result<Appended, AppendError> {
        let mut s = lock(&self.queue.state);
        loop {
            if let Some(r) = s.outcome(self.appended) {
                return r;
            }
            s.blocked += 1;
            s = self
                .queue
                .done
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.blocked -= 1;
        }
    }
}

impl Future for PendingReceipt {
    type Output = Result<Appended, AppendError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut s = lock(&this.queue.state);
        match s.outcome(this.appended) {
            Some(r) => Poll::Ready(r),
            None => {
                s.wakers.insert(this.appended.seq, cx.waker().clone());
                drop(s);
                this.registered = true;
                Poll::Pending
            }
        }
    }
}

impl Drop for PendingReceipt {
    fn drop(&mut self) {
        // A future dropped before completion leaves no waker behind.
        if self.registered {
            lock(&self.queue.state).wakers.remove(&self.appended.seq);
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
        };
        let prepared = log.prepare(SystemTime::now(), &body)?;
        log.submit_prepared(Next::Ready(prepared))?.wait()?;
        Ok(log)
    }

    /// Reopens a chain after a crash: verifies it with the key, cuts a torn
    /// last line (never acknowledged: acknowledgements follow fdatasync of
    /// whole lines), and continues it. A complete line that does not verify
    /// is an error, not something to cut.
    pub fn open_existing(
        path: &Path,
        key: SigningKey,
        options: LogOptions,
    ) -> Result<(ReceiptLog, Recovered), OpenLogError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err(path))?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let truncated_bytes = (bytes.len() - complete) as u64;
        let mut verifier = LineVerifier::new(key.verifying_key());
        let mut session = None;
        let lines = match complete {
            0 => None,
            n => Some(bytes[..n - 1].split(|&b| b == b'\n')),
        };
        for line in lines.into_iter().flatten() {
            let r = verifier.push(line).map_err(|source| OpenLogError::Chain {
                path: path.to_owned(),
                source,
            })?;
            session.get_or_insert(r.receipt.session);
        }
        let Some(session) = session else {
            return Err(OpenLogError::NoStart {
                path: path.to_owned(),
            });
        };
        if verifier.ended() {
            return Err(OpenLogError::Ended {
                path: path.to_owned(),
            });
        }
        if truncated_bytes > 0 {
            file.set_len(complete as u64).map_err(io_err(path))?;
            file.sync_data().map_err(io_err(path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
        let receipts = verifier.lines() as u64;
        let log = Self::spawn(file, key, session, receipts, verifier.last_hash(), options)?;
        Ok((
            log,
            Recovered {
                receipts,
                truncated_bytes,
            },
        ))
    }

    fn spawn(
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
                buf: Vec::new(),
                lens: VecDeque::new(),
                buf_seq: next_seq,
                durable: next_seq,
                failed: None,
                stopping: false,
                writer_idle: false,
                blocked: 0,
                wakers: BTreeMap::new(),
                stats: CommitStats::default(),
            }),
            work: Condvar::new(),
            done: Condvar::new(),
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
                    next_seq,
                    prev,
                    ended: false,
                    scratch: Vec::new(),
                    line: Vec::new(),
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
        };
        // Everything that does not depend on the chain is encoded here, on
        // the caller's thread, before taking the chain lock.
        let prepared = self.prepare(ts, &body)?;
        self.submit_prepared(Next::Ready(prepared))
    }

    /// Writes session_end (count and last hash) and waits for it and for
    /// every earlier append, then stops the writer. Other handles get
    /// [`AppendError::Ended`] afterwards.
    pub fn finish(self) -> Result<Appended, AppendError> {
        let end = self.submit_prepared(Next::End(SystemTime::now()))?;
        let appended = end.wait()?;
        self.shared.stop();
        Ok(appended)
    }

    fn prepare(&self, ts: SystemTime, body: &Body) -> Result<Prepared, AppendError> {
        let ts = format::format_time(ts);
        Prepared::new(
            FORMAT_VERSION,
            &self.shared.session,
            &ts,
            &self.shared.key_id,
            body,
        )
        .map_err(|e| AppendError::Encode(e.to_string()))
    }

    fn submit_prepared(&self, next: Next) -> Result<PendingReceipt, AppendError> {
        let shared = &self.shared;
        let mut chain = lock(&shared.chain);
        let chain = &mut *chain;
        if let Some(why) = &lock(&shared.queue.state).failed {
            return Err(AppendError::Poisoned { why: why.1.clone() });
        }
        if chain.ended {
            return Err(AppendError::Ended);
        }
        let seq = chain.next_seq;
        let end = matches!(next, Next::End(_));
        let prepared = match next {
            Next::Ready(p) => p,
            // session_end commits to its own seq and the last hash: only
            // known here.
            Next::End(ts) => self.prepare(
                ts,
                &Body::SessionEnd {
                    count: seq + 1,
                    last: hex::encode(chain.prev),
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
                sig.copy_from_slice(shared.signer.sign(input).as_ref());
                sig
            },
            &mut chain.scratch,
            &mut chain.line,
        );
        let hash = format::line_hash(&chain.line);
        {
            let mut state = lock(&shared.queue.state);
            if let Some(why) = &state.failed {
                return Err(AppendError::Poisoned { why: why.1.clone() });
            }
            if state.stopping {
                return Err(AppendError::Ended);
            }
            if state.buf.is_empty() {
                state.buf_seq = seq;
            }
            state.buf.extend_from_slice(&chain.line);
            state.buf.push(b'\n');
            state.lens.push_back((chain.line.len() + 1, Instant::now()));
            if state.writer_idle {
                state.writer_idle = false;
                shared.queue.work.notify_one();
            }
        }
        chain.next_seq = seq + 1;
        chain.prev = hash;
        chain.ended = end;
        Ok(PendingReceipt {
            queue: Arc::clone(&shared.queue),
            appended: Appended { seq, hash },
            registered: false,
        })
    }
}

/// What to sign next: an encoded receipt, or session_end (encoded under the
/// chain lock because it commits to the chain).
enum Next {
    Ready(Prepared),
    End(SystemTime),
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

fn writer_loop(queue: &Queue, mut sink: impl DurableSink, options: LogOptions) {
    let mut buf = Vec::new();
    let mut queued = Vec::new();
    // The last sync's duration bounds the gathering wait.
    let mut last_sync = Duration::ZERO;
    let mut previous_taken = None;
    loop {
        buf.clear();
        queued.clear();
        let mut gathered = Duration::ZERO;
        let (first, next, taken) = {
            let mut state = lock(&queue.state);
            while state.lens.is_empty() && !state.stopping {
                state.writer_idle = true;
                state = queue
                    .work
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            state.writer_idle = false;
            if state.lens.is_empty() {
                return;
            }
            let gather = options.gather.min(last_sync);
            if !gather.is_zero() && !state.stopping && state.lens.len() < options.max_batch {
                // Let the receipts of requests already in flight join this
                // batch: nobody needs to wake the writer for them.
                let started = Instant::now();
                drop(state);
                std::thread::sleep(gather);
                gathered = started.elapsed();
                state = lock(&queue.state);
            }
            let first = state.buf_seq;
            let n = state.lens.len().min(options.max_batch);
            if n == state.lens.len() {
                // The usual case: take everything, leave an empty buffer
                // with capacity (the two buffers swap back and forth).
                std::mem::swap(&mut state.buf, &mut buf);
                queued.extend(state.lens.drain(..).map(|(_, at)| at));
            } else {
                let mut bytes = 0;
                for (len, at) in state.lens.drain(..n) {
                    bytes += len;
                    queued.push(at);
                }
                buf.extend_from_slice(&state.buf[..bytes]);
                state.buf.drain(..bytes);
            }
            state.buf_seq = first + n as u64;
            // Under the lock: every receipt queued before this instant is
            // in this batch or an earlier one.
            (first, first + n as u64, Instant::now())
        };
        let syncing = Instant::now();
        let result = sink.write_all(&buf).and_then(|()| sink.sync());
        let durable_at = Instant::now();
        last_sync = durable_at - syncing;
        let cycle = Cycle {
            gather: gathered,
            sync: last_sync,
        };
        let wake: Vec<Waker> = {
            let mut state = lock(&queue.state);
            state
                .stats
                .record(&queued, durable_at, cycle, previous_taken);
            match result {
                Ok(()) => state.durable = next,
                Err(e) => {
                    // Poison: no new receipt is chained onto lines that may
                    // not exist on disk, and everything from `first` on fails.
                    state.failed = Some((first, e.to_string()));
                    state.buf.clear();
                    state.lens.clear();
                }
            }
            if state.blocked > 0 {
                queue.done.notify_all();
            }
            let keep = match state.failed {
                Some(_) => BTreeMap::new(),
                None => state.wakers.split_off(&next),
            };
            std::mem::replace(&mut state.wakers, keep)
                .into_values()
                .collect()
        };
        previous_taken = Some(taken);
        for w in wake {
            w.wake();
        }
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
    use super::*;
    use crate::{LineVerifier, UnverifiedChain};
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[42; 32])
    }

    fn start() -> SessionStart {
        SessionStart {
            session_id: "sess-1".into(),
            revocation_ids: vec!["aa".into()],
            sandbox: "netns".into(),
            capability_sha256: None,
        }
    }

    fn decision(i: u64) -> Entry {
        Entry::Decision {
            decided_at: SystemTime::now(),
            record: DecisionRecord {
                action: json!({"type": "web", "method": "GET", "host": "example.com", "path": format!("/{i}")}),
                counters: json!({"spent_cents": 0, "emails_sent": 0, "llm_spent_micro_usd": 0}),
                decision: json!({"decision": "allow", "reason": "web", "grant": "web", "revocation_ids": ["aa"]}),
                body_sha256: None,
            },
        }
    }

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

    /// Fails every write after the first `ok` ones.
    struct FailingSink {
        ok: usize,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl DurableSink for FailingSink {
        fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
            if self.ok == 0 {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.ok -= 1;
            lock(&self.written).extend_from_slice(bytes);
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
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

    /// Records each write (so batches are visible) and fails from the
    /// `fail_at`-th write on.
    struct RecordingSink {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        fail_at: usize,
        /// A slow disk, so appends queue up behind a sync.
        sync_delay: std::time::Duration,
    }

    impl DurableSink for RecordingSink {
        fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
            let mut writes = lock(&self.writes);
            if writes.len() >= self.fail_at {
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
            writes.push(bytes.to_vec());
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            std::thread::sleep(self.sync_delay);
            Ok(())
        }
    }

    /// Appends from `threads` threads until each has `per_thread` answers
    /// or its first error; returns the outcomes per thread, in order.
    fn hammer(
        log: &ReceiptLog,
        threads: u64,
        per_thread: u64,
    ) -> Vec<Vec<Result<Appended, AppendError>>> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..per_thread {
                        let r = log.append(decision(t * 1000 + i));
                        let failed = r.is_err();
                        out.push(r);
                        if failed {
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    }

    #[test]
    fn gathering_lets_receipts_submitted_meanwhile_join_the_batch() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let sink = RecordingSink {
            writes: Arc::clone(&writes),
            fail_at: usize::MAX,
            sync_delay: std::time::Duration::from_millis(300),
        };
        let options = LogOptions {
            gather: Duration::from_millis(200),
            ..LogOptions::default()
        };
        let log = ReceiptLog::with_sink(sink, key(), start(), options).expect("start");
        // The first receipt wakes the writer, which waits (bounded by the
        // 300 ms session_start sync) so the two submitted 20 ms later join.
        let first = log.submit(decision(1)).expect("submit");
        std::thread::sleep(Duration::from_millis(20));
        let later: Vec<_> = (2..4)
            .map(|i| log.submit(decision(i)).expect("submit"))
            .collect();
        first.wait().expect("durable");
        for p in later {
            p.wait().expect("durable");
        }
        let stats = log.commit_stats();
        log.finish().expect("finish");
        let writes = lock(&writes).clone();
        let per_write: Vec<usize> = writes
            .iter()
            .map(|w| w.iter().filter(|&&b| b == b'\n').count())
            .collect();
        assert_eq!(
            per_write,
            [1, 3, 1],
            "session_start, the three, session_end"
        );
        assert_eq!((stats.batches, stats.receipts), (2, 4));
        assert!(stats.gather_total > Duration::ZERO);
        assert!(stats.sync_quantile(1.0) >= Duration::from_millis(300));
    }

    #[test]
    fn without_gathering_the_writer_does_not_wait_for_more() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let sink = RecordingSink {
            writes: Arc::clone(&writes),
            fail_at: usize::MAX,
            sync_delay: std::time::Duration::from_millis(300),
        };
        let log =
            ReceiptLog::with_sink(sink, key(), start(), LogOptions::default()).expect("start");
        let first = log.submit(decision(1)).expect("submit");
        // Long enough for the writer to take the first receipt alone.
        std::thread::sleep(Duration::from_millis(100));
        let second = log.submit(decision(2)).expect("submit");
        first.wait().expect("durable");
        second.wait().expect("durable");
        let stats = log.commit_stats();
        log.finish().expect("finish");
        let per_write: Vec<usize> = lock(&writes)
            .iter()
            .map(|w| w.iter().filter(|&&b| b == b'\n').count())
            .collect();
        assert_eq!(per_write, [1, 1, 1, 1]);
        assert_eq!(stats.gather_total, Duration::ZERO);
    }

    #[test]
    fn max_batch_one_writes_each_receipt_alone_and_the_default_groups_them() {
        for (max_batch, grouped) in [(1, false), (4096, true)] {
            let writes = Arc::new(Mutex::new(Vec::new()));
            let sink = RecordingSink {
                writes: Arc::clone(&writes),
                fail_at: usize::MAX,
                sync_delay: std::time::Duration::from_millis(2),
            };
            let log = ReceiptLog::with_sink(
                sink,
                key(),
                start(),
                LogOptions {
                    max_batch,
                    ..LogOptions::default()
                },
            )
            .expect("start");
            let outcomes = hammer(&log, 8, 40);
            assert!(outcomes.iter().flatten().all(Result::is_ok));
            let stats = log.commit_stats();
            assert_eq!(stats.queued_log2_us.iter().sum::<u64>(), 8 * 40 + 1);
            if grouped {
                // Everything queued rides the next batch.
                assert_eq!(stats.late, 0);
            } else {
                // One receipt per sync: seven threads' receipts queue up
                // behind one batch after another.
                assert!(stats.late > 0, "{stats:?}");
            }
            log.finish().expect("finish");
            let writes = lock(&writes).clone();
            let per_write: Vec<usize> = writes
                .iter()
                .map(|w| w.iter().filter(|&&b| b == b'\n').count())
                .collect();
            assert_eq!(per_write.iter().sum::<usize>(), 8 * 40 + 2);
            assert!(writes.iter().all(|w| w.ends_with(b"\n")));
            if grouped {
                assert!(per_write.iter().any(|&n| n > 1), "{per_write:?}");
            } else {
                assert!(per_write.iter().all(|&n| n == 1), "{per_write:?}");
            }
            let chain = UnverifiedChain::from_bytes(writes.concat())
                .verify(&key().verifying_key())
                .expect("verifies");
            assert_eq!(chain.receipts.len(), 8 * 40 + 2);
        }
    }

    #[test]
    fn a_failed_batch_fails_every_receipt_not_yet_durable_across_threads() {
        for fail_at in [2, 5, 9] {
            let writes = Arc::new(Mutex::new(Vec::new()));
            let sink = RecordingSink {
                writes: Arc::clone(&writes),
                fail_at,
                sync_delay: std::time::Duration::ZERO,
            };
            let log =
                ReceiptLog::with_sink(sink, key(), start(), LogOptions::default()).expect("start");
            let outcomes = hammer(&log, 8, 200);
            let written = lock(&writes).concat();
            let lines = written.iter().filter(|&&b| b == b'\n').count() as u64;
            for thread in &outcomes {
                let (last, acked) = thread.split_last().expect("at least one answer");
                // Every thread ends on an error: the log is poisoned for good.
                match last {
                    Err(AppendError::Write { seq, .. }) => assert!(*seq >= lines),
                    Err(AppendError::Poisoned { .. }) => {}
                    other => panic!("fail_at {fail_at}: {other:?}"),
                }
                // Everything acknowledged is on the sink.
                for a in acked {
                    assert!(a.as_ref().expect("acked").seq < lines);
                }
            }
            // What reached the sink is a clean, verifiable prefix.
            let mut verifier = LineVerifier::new(key().verifying_key());
            for line in written[..written.len() - 1].split(|&b| b == b'\n') {
                verifier.push(line).expect("prefix verifies");
            }
            assert!(matches!(
                log.append(decision(0)),
                Err(AppendError::Poisoned { .. })
            ));
        }
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

    #[test]
    fn reopen_cuts_a_torn_line_and_continues_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("receipts.jsonl");
        let log = ReceiptLog::create(&path, key(), start()).expect("create");
        for i in 0..5 {
            log.append(decision(i)).expect("append");
        }
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        Write::write_all(&mut f, b"{\"action\":{\"ty").expect("torn write");
        drop(f);
        let (log, rec) =
            ReceiptLog::open_existing(&path, key(), LogOptions::default()).expect("reopen");
        assert_eq!(
            rec,
            Recovered {
                receipts: 6,
                truncated_bytes: 14
            }
        );
        assert_eq!(log.append(decision(9)).expect("append").seq, 6);
        log.finish().expect("finish");
        let chain = UnverifiedChain::from_bytes(std::fs::read(&path).expect("read"))
            .verify(&key().verifying_key())
            .expect("verifies");
        assert_eq!(chain.receipts.len(), 8);
        let err =
            ReceiptLog::open_existing(&path, key(), LogOptions::default()).expect_err("ended");
        assert!(matches!(err, OpenLogError::Ended { .. }), "{err}");
        let other = SigningKey::from_bytes(&[9; 32]);
        assert!(
            ReceiptLog::create(&path, other, start()).is_err(),
            "never clobbers"
        );
    }

    #[test]
    fn submit_is_a_future_that_resolves_when_durable() {
        let log = ReceiptLog::with_sink(
            FailingSink {
                ok: 10,
                written: Arc::default(),
            },
            key(),
            start(),
            LogOptions::default(),
        )
        .expect("start");
        let pending = log.submit(decision(1)).expect("submit");
        // A minimal executor: poll with a thread-unparking waker.
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut pending = Box::pin(pending);
        let appended = loop {
            match pending.as_mut().poll(&mut cx) {
                Poll::Ready(r) => break r.expect("durable"),
                Poll::Pending => std::thread::park(),
            }
        };
        assert_eq!(appended.seq, 1);
    }
}
