//! Ledger rows while a session runs: each `usage` event names the seq of its
//! usage receipt; a writer thread reads that receipt from the session's own
//! `receipts.jsonl` once it is on disk and writes its row, so spend can be
//! read (a USD/day quota) before the session ends. The row is the one the
//! end-of-session fill and `openclaw usage rebuild` write from the verified
//! chain (same key, session and seq; same values), so those stay correct:
//! they insert-or-ignore it. Nothing here is on the proxy's path: the events
//! come off the broadcast, SQLite runs on its own thread.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use enforce::{Event, EventKind};
use receipts::Body;
use tokio::sync::broadcast;

use super::ledger::{UsageLedger, UsageRow};
use super::ledger_db::LedgerDb;

/// How often a usage receipt not yet on disk is looked for again (the
/// receipt log writes it with the next write, or after its `defer`: 100 ms).
const RETRY: Duration = Duration::from_millis(20);
/// How long one is waited for before the end-of-session fill is left to
/// write it.
const GIVE_UP: Duration = Duration::from_secs(10);

/// The session's labels, as its session_start records them.
#[derive(Debug, Clone)]
pub struct Labels {
    pub tenant: String,
    pub user: String,
}

/// The running writer; [`LiveLedger::finish`] stops it.
pub struct LiveLedger {
    forward: tokio::task::JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

impl LiveLedger {
    /// Follows `events` for usage events; writes their rows to the ledger
    /// at `ledger` from the chain at `receipts`.
    pub fn start(
        events: broadcast::Receiver<Event>,
        ledger: LedgerDb,
        receipts: PathBuf,
        labels: Labels,
    ) -> LiveLedger {
        let (tx, rx) = mpsc::channel::<u64>();
        let writer = std::thread::Builder::new()
            .name("ledger-live".into())
            .spawn(move || write_rows(rx, &ledger, &receipts, &labels))
            .ok();
        let forward = tokio::spawn(forward(events, tx));
        LiveLedger { forward, writer }
    }

    /// Stops following events and waits for the rows already announced
    /// that are on disk (a missing one is the end-of-session fill's).
    pub async fn finish(mut self) {
        self.forward.abort();
        let _ = (&mut self.forward).await;
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }
}

impl Drop for LiveLedger {
    /// An early return: stop following; the thread ends with the channel.
    fn drop(&mut self) {
        self.forward.abort();
    }
}

/// Usage events' receipt seqs, from the broadcast to the writer thread. A
/// lagged receiver skips some: their rows come with the session's end.
async fn forward(mut events: broadcast::Receiver<Event>, tx: mpsc::Sender<u64>) {
    loop {
        match events.recv().await {
            Ok(event) if event.kind == EventKind::Usage => {
                if let Some(seq) = event.receipt {
                    if tx.send(seq).is_err() {
                        return;
                    }
                }
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The writer thread: for each announced seq, reads the chain's new
/// complete lines and writes every usage receipt among them.
fn write_rows(rx: mpsc::Receiver<u64>, ledger: &LedgerDb, receipts: &Path, labels: &Labels) {
    // Opened at the first row: a session without LLM calls creates no
    // ledger, as before.
    let mut db: Option<Box<dyn UsageLedger>> = None;
    let mut chain = ChainTail::new(receipts.to_path_buf());
    // Seqs announced and not yet seen on disk, with when they were.
    let mut waiting: Vec<(u64, Instant)> = Vec::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        let next = if waiting.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(RETRY)
        };
        match next {
            Ok(seq) => waiting.push((seq, Instant::now())),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        let rows = chain.new_usage_rows(labels);
        let seen: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        if !rows.is_empty() {
            if db.is_none() {
                match ledger.open() {
                    Ok(l) => db = Some(l),
                    Err(err) => tracing::warn!("live usage ledger: {err:#}"),
                }
            }
            if let Some(Err(err)) = db.as_mut().map(|l| l.insert(&rows)) {
                tracing::warn!("live usage ledger: {err:#}");
            }
        }
        waiting.retain(|(seq, since)| {
            !seen.contains(seq) && *seq >= chain.next_seq && since.elapsed() < GIVE_UP
        });
        if !open {
            // The session is over: what is not on disk now is the end
            // fill's to write.
            break;
        }
    }
}

/// The session's chain, read forward as it grows: complete lines only.
struct ChainTail {
    path: PathBuf,
    offset: u64,
    /// Seq after the last line read.
    next_seq: u64,
    partial: Vec<u8>,
}

impl ChainTail {
    fn new(path: PathBuf) -> Self {
        ChainTail {
            path,
            offset: 0,
            next_seq: 0,
            partial: Vec::new(),
        }
    }

    /// The rows of the usage receipts in the lines written since last time.
    fn new_usage_rows(&mut self, labels: &Labels) -> Vec<UsageRow> {
        // The log file is preallocated: past its last line it holds NULs
        // (megabytes of them) until they are overwritten, so reading stops
        // at the first chunk that holds one, not at the end of the file:
        // this runs every `RETRY` while a usage receipt is awaited.
        let mut chunk = vec![0u8; 64 << 10];
        let read = File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.offset))?;
            loop {
                let n = match f.read(&mut chunk) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    read => read?,
                };
                let written = receipts::written_part(&chunk[..n]);
                self.offset += written.len() as u64;
                self.partial.extend_from_slice(written);
                if n == 0 || written.len() < n {
                    return Ok(());
                }
            }
        });
        if read.is_err() {
            return Vec::new();
        }
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        let mut rows = Vec::new();
        for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(receipt) = serde_json::from_slice::<receipts::Receipt>(line) else {
                continue;
            };
            self.next_seq = receipt.seq + 1;
            if let Body::Usage(record) = receipt.body {
                rows.push(UsageRow {
                    session: receipt.session,
                    seq: receipt.seq,
                    ts: receipt.ts,
                    tenant: labels.tenant.clone(),
                    user: labels.user.clone(),
                    record,
                });
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ed25519_dalek::SigningKey;
    use receipts::{DecisionRecord, Entry, ReceiptLog, SessionStart};

    use super::*;

    fn decision(i: u64) -> Entry {
        Entry::Decision {
            decided_at: SystemTime::now(),
            record: DecisionRecord {
                action: serde_json::json!({"type": "web", "path": format!("/{i}")}),
                counters: serde_json::json!({}),
                decision: serde_json::json!({"decision": "allow"}),
                body_sha256: None,
            },
        }
    }

    /// The log file is zeroed ahead of its lines: the tail must stop at the
    /// NULs and read the lines written over them later, not skip past them.
    #[test]
    fn the_tail_reads_lines_written_over_the_preallocated_nuls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(crate::bundle::RECEIPTS);
        let start = SessionStart {
            session_id: "live".into(),
            revocation_ids: Vec::new(),
            sandbox: "none".into(),
            capability_sha256: None,
            tenant: None,
            user: None,
        };
        let log =
            ReceiptLog::create(&path, SigningKey::from_bytes(&[5; 32]), start).expect("create");
        log.append(decision(1)).expect("append");
        // Bounded wait for the zeroing thread to put NULs after the lines.
        for _ in 0..500 {
            if std::fs::read(&path).expect("read").last() == Some(&0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(std::fs::read(&path).expect("read").last(), Some(&0));
        let labels = Labels {
            tenant: "t".into(),
            user: "u".into(),
        };
        let mut tail = ChainTail::new(path.clone());
        assert!(tail.new_usage_rows(&labels).is_empty());
        assert_eq!(tail.next_seq, 2);
        log.append(decision(2)).expect("append");
        log.append(decision(3)).expect("append");
        tail.new_usage_rows(&labels);
        assert_eq!(
            tail.next_seq, 4,
            "the lines written over the NULs were read"
        );
        log.finish().expect("finish");
        tail.new_usage_rows(&labels);
        assert_eq!(tail.next_seq, 5);
    }
}
