//! The writer thread: takes the chained lines queued (up to `max_batch`),
//! signs the last one it takes unless it is signed already (one signature
//! per write: its `prev` chain covers the lines before it), optionally
//! gathers a little longer first, commits them with one write + fdatasync,
//! publishes the new durable mark and wakes exactly the waiters that mark
//! covers. Lines queued with `submit_deferred` alone do not wake it: they
//! wait for the next write, or `LogOptions::defer`. A failed write or sync
//! poisons the queue: everything from the failed batch on fails, and
//! nothing more is accepted.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::Waker;
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime};

use super::stats::Cycle;
use super::{lock, CommitStats, DurableSink, LogOptions};
use crate::format::{InterruptionCause, Prepared};

/// What to chain next: an encoded receipt, or session_end (encoded when it
/// is chained, because it commits to the chain), interrupted or not.
pub(super) enum Next {
    Ready(Prepared),
    End(SystemTime, Option<InterruptionCause>),
}

/// Receipts on their way to disk, and what is durable. Lock order: the
/// chain (`append::Signer`), then `state`.
pub(super) struct Queue {
    pub(super) state: Mutex<State>,
    /// Signalled when there is work for an idle writer or it should stop.
    pub(super) work: Condvar,
    /// Every receipt with a seq below this is on disk. Read without the
    /// lock by waiters, so a woken waiter does not queue on `state` again.
    pub(super) durable: AtomicU64,
}

/// Where a receipt's line hash is left for its waiter: it is final only
/// when the writer takes the line (it may sign it), on the writer's thread.
pub(super) type HashSlot = Arc<OnceLock<[u8; 32]>>;

/// Who to wake when a receipt is durable (or failed).
pub(super) enum Wake {
    /// A future: its task's waker.
    Task(Waker),
    /// A thread blocked in [`PendingReceipt::wait`](super::PendingReceipt::wait).
    Thread(Thread),
}

impl Wake {
    pub(super) fn wake(self) {
        match self {
            Wake::Task(w) => w.wake(),
            Wake::Thread(t) => t.unpark(),
        }
    }
}

/// A submitted receipt waiting to be chained.
pub(super) struct Queued {
    pub(super) next: Next,
    /// Where its line's hash goes once it is final.
    pub(super) slot: HashSlot,
    /// Queued with `submit_deferred`: it does not wake the writer.
    pub(super) deferred: bool,
}

/// A chained line waiting for the writer.
pub(super) struct Line {
    /// Bytes, newline included.
    pub(super) len: usize,
    /// When it was handed to the writer.
    pub(super) queued: Instant,
    /// Whether it carries a signature. A write always ends with such a line
    /// (the writer signs the last one it takes), so every acknowledged line
    /// is covered by a signature on disk.
    pub(super) signed: bool,
    /// Queued with `submit_deferred`: nobody waits on it now.
    pub(super) deferred: bool,
    /// SHA-256 of the line as it stands (set in `slot` when written).
    pub(super) hash: [u8; 32],
    pub(super) slot: HashSlot,
}

/// What one write took from the queue (its bytes are in the writer's buffer).
pub(super) struct TakenWrite {
    /// Seq of its first line.
    pub(super) first: u64,
    pub(super) count: u64,
    /// Lines in it that carry a signature.
    pub(super) signed: u64,
    /// Lines in it that were not deferred: receipts someone waits on.
    pub(super) urgent: u64,
    /// When it was taken, under the queue lock: every line queued before
    /// is in this write or an earlier one.
    pub(super) at: Instant,
}

impl TakenWrite {
    /// Takes the first `n` queued lines into `buf` (empty on entry), their
    /// queue times into `queued`, and fills in their hash slots: the lines
    /// are final now.
    pub(super) fn take(
        state: &mut State,
        n: usize,
        buf: &mut Vec<u8>,
        queued: &mut Vec<Instant>,
    ) -> TakenWrite {
        let first = state.buf_seq;
        let (mut signed, mut urgent) = (0, 0);
        let mut bytes = 0;
        for line in state.lens.drain(..n) {
            bytes += line.len;
            queued.push(line.queued);
            signed += u64::from(line.signed);
            urgent += u64::from(!line.deferred);
            let _ = line.slot.set(line.hash);
        }
        if state.lens.is_empty() {
            // The usual case: take everything, leave an empty buffer with
            // capacity (the two buffers swap back and forth).
            std::mem::swap(&mut state.buf, buf);
            state.urgent = false;
            state.deferred_since = None;
        } else {
            buf.extend_from_slice(&state.buf[..bytes]);
            state.buf.drain(..bytes);
        }
        state.buf_seq = first + n as u64;
        TakenWrite {
            first,
            count: n as u64,
            signed,
            urgent,
            at: Instant::now(),
        }
    }
}

pub(super) struct State {
    /// Seq the next submitted receipt gets.
    pub(super) next_seq: u64,
    /// session_end is queued: nothing more is accepted.
    pub(super) ended: bool,
    /// Submitted receipts not yet chained, in seq order.
    pub(super) queued: Vec<Queued>,
    /// Whether a submitter is chaining queued receipts; the others only
    /// queue theirs and go to wait.
    pub(super) chaining: bool,
    /// Some line in `buf` was not deferred: the writer should write now.
    pub(super) urgent: bool,
    /// Chained lines (with newlines) not yet taken by the writer.
    pub(super) buf: Vec<u8>,
    /// Each line in `buf`, oldest first; the last is always signed.
    pub(super) lens: VecDeque<Line>,
    /// Seq of the first line in `buf`.
    pub(super) buf_seq: u64,
    /// Set once a write, sync or encoding failed: receipts from this seq on
    /// are not durable, and nothing more is accepted.
    pub(super) failed: Option<(u64, String)>,
    pub(super) stopping: bool,
    pub(super) writer_idle: bool,
    /// The idle writer waits with a deadline: it will look at the queue by
    /// itself, so a deferred receipt need not wake it.
    pub(super) writer_watching: bool,
    /// The writer is gathering until this many lines are queued: the
    /// submitter of the line that makes them wakes it.
    pub(super) gathering_until: Option<usize>,
    /// When the oldest deferred line in `buf` was chained.
    pub(super) deferred_since: Option<Instant>,
    /// Waiters by seq (one receipt, one waiter).
    pub(super) waiting: BTreeMap<u64, Wake>,
    pub(super) stats: CommitStats,
}

impl State {
    /// Marks the log failed from `seq` on: unchained and unwritten receipts
    /// are dropped (their waiters get the error).
    pub(super) fn fail(&mut self, seq: u64, why: String) {
        // Everything queued from `seq` on is dropped here; a batch still in
        // flight may fail after a later receipt did: the earliest counts.
        match &mut self.failed {
            Some((from, _)) => *from = (*from).min(seq),
            None => self.failed = Some((seq, why)),
        }
        self.queued.clear();
        self.deferred_since = None;
        self.urgent = false;
        self.buf.clear();
        self.lens.clear();
    }

    /// [`fail`](Self::fail), and takes every waiter to wake (after the lock
    /// is released): nothing more becomes durable.
    pub(super) fn fail_waking_all(&mut self, seq: u64, why: String) -> Vec<Wake> {
        self.fail(seq, why);
        std::mem::take(&mut self.waiting).into_values().collect()
    }
}

/// How recently the last write must have ended, carrying more than one
/// waited-on receipt, for the writer to gather: under load the next
/// receipts come within a sync or two; a receipt after a pause comes alone.
const COMPANY_WINDOW: Duration = Duration::from_millis(1);

pub(super) fn writer_loop(
    queue: &Queue,
    mut sink: impl DurableSink,
    options: LogOptions,
    mut take: impl FnMut(usize, &mut Vec<u8>, &mut Vec<Instant>) -> Option<TakenWrite>,
) {
    lock(&queue.state).stats.writer_nice = set_writer_nice(options.writer_nice);
    let mut buf = Vec::new();
    let mut queued = Vec::new();
    // The last sync's duration bounds the gathering wait.
    let mut last_sync = Duration::ZERO;
    let mut previous_taken = None;
    // When the last write ended if it carried company (more than one
    // receipt somebody waited on): gathering is for a busy log only.
    let mut last_busy_write: Option<Instant> = None;
    // How many lines recent busy writes carried: the largest lately, slowly
    // forgotten. Gathering stops early once that many are queued.
    let mut company_size: usize = 0;
    // After a commit the writer keeps an eye on the queue for `defer`, so
    // the lines deferred meanwhile (a usage receipt after its call) need
    // not wake it; after that it sleeps until woken.
    let mut watch_until: Option<Instant> = None;
    loop {
        buf.clear();
        queued.clear();
        let mut gathered = Duration::ZERO;
        {
            let mut state = lock(&queue.state);
            loop {
                if state.stopping || (state.urgent && !state.lens.is_empty()) {
                    break;
                }
                let now = Instant::now();
                if !state.lens.is_empty() {
                    // Deferred lines only: written once they waited `defer`.
                    let due = state.deferred_since.map_or(now, |at| at + options.defer);
                    if now >= due {
                        break;
                    }
                    state = wait_idle(queue, state, Some(due - now));
                    continue;
                }
                match watch_until {
                    Some(until) if now < until => {
                        state = wait_idle(queue, state, Some(until - now));
                    }
                    _ => {
                        watch_until = None;
                        state = wait_idle(queue, state, None);
                    }
                }
            }
            state.writer_idle = false;
            state.writer_watching = false;
            if state.lens.is_empty() {
                // Stopping with nothing left: a clean end (after a failure
                // the file is left as it is).
                let clean = state.failed.is_none();
                drop(state);
                if clean {
                    // Best effort: a file keeps a NUL tail if this fails,
                    // which readers take as the unwritten end.
                    let _ = sink.close();
                }
                return;
            }
            let gather = options.gather.min(last_sync);
            let busy = last_busy_write.is_some_and(|ended| ended.elapsed() <= COMPANY_WINDOW);
            let enough = if busy {
                company_size.min(options.max_batch)
            } else {
                0
            };
            if !gather.is_zero() && !state.stopping && state.lens.len() < enough {
                // Requests came in company just now: let the receipts of
                // those in flight join this batch (one write, sync and
                // signature for all), until as many are queued as busy
                // writes lately carried (a fixed set of callers is then all
                // here: waiting longer would only idle them) or the window
                // ends. A receipt that arrives alone is never held here.
                let started = Instant::now();
                let deadline = started + gather;
                state.gathering_until = Some(enough);
                while state.lens.len() < enough && !state.stopping {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    state = queue
                        .work
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                state.gathering_until = None;
                gathered = started.elapsed();
            }
        }
        // Under the chain lock (taken before the queue's), with the last
        // line signed.
        let Some(TakenWrite {
            first,
            count,
            signed,
            urgent,
            at: taken,
        }) = take(options.max_batch, &mut buf, &mut queued)
        else {
            // Failed meanwhile (a session_end that did not encode).
            continue;
        };
        let next = first + count;
        let syncing = Instant::now();
        let result = sink.write_all(&buf).and_then(|()| sink.sync());
        let durable_at = Instant::now();
        last_sync = durable_at - syncing;
        let cycle = Cycle {
            gather: gathered,
            sync: last_sync,
        };
        let wake: Vec<Wake> = {
            let mut state = lock(&queue.state);
            state
                .stats
                .record(&queued, signed, durable_at, cycle, previous_taken);
            match result {
                Ok(()) => queue.durable.store(next, Ordering::Release),
                // Poison: no new receipt is chained onto lines that may not
                // exist on disk, and everything from `first` on fails.
                Err(e) => state.fail(first, e.to_string()),
            }
            let keep = match state.failed {
                Some(_) => BTreeMap::new(),
                None => state.waiting.split_off(&next),
            };
            std::mem::replace(&mut state.waiting, keep)
                .into_values()
                .collect()
        };
        previous_taken = Some(taken);
        let company = urgent > 1;
        last_busy_write = company.then_some(durable_at);
        if company {
            // The largest lately, so a batch cut short by the window does
            // not shrink the next one's aim.
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            company_size = count.max(company_size - company_size / 8);
        }
        watch_until = Some(durable_at + options.defer);
        for w in wake {
            w.wake();
        }
    }
}

/// Sets the calling thread's nice value (per thread on Linux); `None` if
/// `nice` is 0 or the process may not raise its priority.
fn set_writer_nice(nice: i32) -> Option<i32> {
    if nice == 0 {
        return None;
    }
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
        .ok()
        .map(|()| nice)
}

/// The writer's wait for work, with a deadline (it will look by itself) or
/// without (it must be woken).
fn wait_idle<'a>(
    queue: &'a Queue,
    mut state: std::sync::MutexGuard<'a, State>,
    deadline: Option<Duration>,
) -> std::sync::MutexGuard<'a, State> {
    state.writer_idle = true;
    state.writer_watching = deadline.is_some();
    match deadline {
        Some(d) => {
            queue
                .work
                .wait_timeout(state, d)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0
        }
        None => queue
            .work
            .wait(state)
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    }
}
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::super::test_utils::{decision, hammer, key, recording, start, RecordingSink};
    use super::super::{lock, AppendError, DurableSink, LogOptions, ReceiptLog};
    use crate::{LineVerifier, UnverifiedChain};

    #[test]
    fn a_busy_log_gathers_and_a_receipt_that_comes_alone_is_written_at_once() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        // A 100 ms disk; gathering is capped by the last sync, so 100 ms too.
        let sink = recording(&writes, 100);
        let options = LogOptions {
            gather: Duration::from_secs(10),
            // The writer must see the trio's next receipts within the
            // company window (1 ms) of its last write; the other tests load
            // both cores meanwhile, and a woken writer at the process's
            // priority can wait longer than that for one.
            writer_nice: -10,
            ..LogOptions::default()
        };
        let log = ReceiptLog::with_sink(sink, key(), start(), options).expect("start");
        let lone = |i| {
            // Longer than the window after a busy write.
            std::thread::sleep(Duration::from_millis(150));
            log.append(decision(i)).expect("append");
        };
        lone(1);
        lone(2);
        assert_eq!(log.commit_stats().gather_total, Duration::ZERO);

        // Company: three callers queue while receipt 10's write syncs, so
        // the next write carries all three. A fourth receipt queues while
        // that one syncs; the writer then holds it until the three callers
        // have sent their next receipts (or the window ends).
        let first = log.submit(decision(10)).expect("submit");
        std::thread::sleep(Duration::from_millis(30));
        let trio: Vec<_> = (0..3)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..2 {
                        log.append(decision(20 + t * 10 + i)).expect("append");
                    }
                })
            })
            .collect();
        first.wait().expect("durable");
        std::thread::sleep(Duration::from_millis(30));
        log.append(decision(50)).expect("append");
        for t in trio {
            t.join().expect("join");
        }
        let busy = log.commit_stats();
        assert!(busy.gather_total > Duration::ZERO, "{busy:?}");

        lone(3);
        let after = log.commit_stats();
        assert_eq!(after.gather_total, busy.gather_total, "{after:?}");
        assert_eq!(after.batches, busy.batches + 1);
        log.finish().expect("finish");
        let chain = UnverifiedChain::from_bytes(lock(&writes).concat())
            .verify(&key().verifying_key())
            .expect("verifies");
        assert_eq!(chain.receipts.len(), 2 + 3 + 1 + 6 + 1);
    }

    #[test]
    fn gathering_ends_when_as_many_are_queued_as_busy_writes_carried() {
        // Four callers that each wait for their receipt before the next: a
        // closed set. Once all four are queued, waiting out the window
        // (capped by the 30 ms sync) would only idle them.
        let writes = Arc::new(Mutex::new(Vec::new()));
        let options = LogOptions {
            gather: Duration::from_secs(10),
            ..LogOptions::default()
        };
        let log =
            ReceiptLog::with_sink(recording(&writes, 30), key(), start(), options).expect("start");
        // All four queue while this receipt's write syncs, so the next
        // write carries them all and the set is known from then on.
        let lead = log.submit(decision(0)).expect("submit");
        std::thread::sleep(Duration::from_millis(5));
        let outcomes = hammer(&log, 4, 20);
        lead.wait().expect("durable");
        assert!(outcomes.iter().flatten().all(Result::is_ok));
        let stats = log.commit_stats();
        // A full window per write would make these about equal. Only the
        // last few writes, as callers finish one by one, wait it out.
        assert!(
            stats.gather_total * 2 < stats.sync_total,
            "gathered {:?} against {:?} of syncs",
            stats.gather_total,
            stats.sync_total
        );
        log.finish().expect("finish");
    }

    /// The nice value of this process's thread named `name` (as
    /// /proc shows it: at most 15 bytes), from /proc.
    fn thread_nice(name: &str) -> i32 {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
            let dir = task.expect("task").path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
                // Fields after the parenthesised name start at field 3 (state);
                // nice is field 19.
                let after = &stat[stat.rfind(')').expect("comm") + 2..];
                let nice = after.split(' ').nth(16).expect("nice field");
                found.push(nice.parse::<i32>().expect("nice"));
            }
        }
        assert_eq!(found.len(), 1, "one thread named {name}: {found:?}");
        found[0]
    }

    #[test]
    fn the_writer_thread_runs_ahead_of_the_request_workers_when_allowed() {
        // The writer inherits this thread's nice value unless it sets one.
        let own =
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("own nice");
        for (session, writer_nice) in [("nice-ahead", -10), ("nice-as-is", 0)] {
            let writes = Arc::new(Mutex::new(Vec::new()));
            let start = crate::SessionStart {
                session_id: session.into(),
                ..start()
            };
            let options = LogOptions {
                writer_nice,
                ..LogOptions::default()
            };
            let log =
                ReceiptLog::with_sink(recording(&writes, 0), key(), start, options).expect("start");
            // Thread names are cut to 15 bytes: "receipts-nice-a".
            let name = &format!("receipts-{session}")[..15];
            let stats = log.commit_stats();
            match stats.writer_nice {
                Some(n) => assert_eq!((n, thread_nice(name)), (writer_nice, writer_nice)),
                None => assert_eq!(thread_nice(name), own, "{session}"),
            }
            if writer_nice == 0 {
                assert_eq!(stats.writer_nice, None);
            } else if rustix::process::geteuid().is_root() {
                // Root may raise priority: CI runs the tests as root.
                assert_eq!(stats.writer_nice, Some(writer_nice));
            }
            log.finish().expect("finish");
        }
    }

    #[test]
    fn without_gathering_the_writer_does_not_wait_for_more() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        // Default options gather, but only when the log is busy.
        let sink = recording(&writes, 300);
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
            let sink = recording(&writes, 2);
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

    /// Counts the lines that a sync has covered.
    struct SyncedLines {
        written: u64,
        synced: Arc<AtomicU64>,
    }

    impl DurableSink for SyncedLines {
        fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.written += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            std::thread::sleep(Duration::from_micros(200));
            self.synced.store(self.written, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn each_waiter_is_woken_by_its_own_batch_and_only_after_its_sync() {
        // Batches cut short (max_batch 3) put waiters behind the next
        // batch; each is still woken, and never before a sync covered it.
        for max_batch in [1, 3, 4096] {
            let synced = Arc::new(AtomicU64::new(0));
            let sink = SyncedLines {
                written: 0,
                synced: Arc::clone(&synced),
            };
            let options = LogOptions {
                max_batch,
                ..LogOptions::default()
            };
            let log = ReceiptLog::with_sink(sink, key(), start(), options).expect("start");
            let handles: Vec<_> = (0..16)
                .map(|t| {
                    let log = log.clone();
                    let synced = Arc::clone(&synced);
                    std::thread::spawn(move || {
                        for i in 0..30 {
                            let seq = log.append(decision(t * 100 + i)).expect("append").seq;
                            let on_disk = synced.load(Ordering::SeqCst);
                            assert!(seq < on_disk, "seq {seq} acked, {on_disk} lines synced");
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("join");
            }
            let end = log.finish().expect("finish");
            assert_eq!(end.seq, 16 * 30 + 1);
            assert_eq!(synced.load(Ordering::SeqCst), 16 * 30 + 2);
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
}
