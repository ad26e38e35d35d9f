//! What the log's unit tests share: a fixed key, a session start, decision
//! entries, sinks that fail or record on demand, and many appending threads.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ed25519_dalek::SigningKey;
use serde_json::json;

use super::{lock, AppendError, Appended, DurableSink, Entry, ReceiptLog, SessionStart};
use crate::DecisionRecord;

pub(super) fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

pub(super) fn start() -> SessionStart {
    SessionStart {
        session_id: "sess-1".into(),
        revocation_ids: vec!["aa".into()],
        sandbox: "netns".into(),
        capability_sha256: None,
        tenant: None,
        user: None,
    }
}

/// Default options but for how long a deferred receipt may wait.
pub(super) fn deferring(defer: std::time::Duration) -> super::LogOptions {
    super::LogOptions {
        defer,
        ..super::LogOptions::default()
    }
}

/// Reopens a log file after a (simulated) crash, with default options.
pub(super) fn reopen(path: &std::path::Path) -> (super::ReceiptLog, super::Recovered) {
    super::ReceiptLog::open_existing(path, key(), super::LogOptions::default()).expect("reopen")
}

pub(super) fn decision(i: u64) -> Entry {
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

/// Fails every write after the first `ok` ones.
pub(super) struct FailingSink {
    pub(super) ok: usize,
    pub(super) written: Arc<Mutex<Vec<u8>>>,
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

/// Records each write (so batches are visible) and fails from the
/// `fail_at`-th write on.
pub(super) struct RecordingSink {
    pub(super) writes: Arc<Mutex<Vec<Vec<u8>>>>,
    pub(super) fail_at: usize,
    /// A slow disk, so appends queue up behind a sync.
    pub(super) sync_delay: std::time::Duration,
}

/// A recording sink that never fails, whose syncs take `sync_ms`.
pub(super) fn recording(writes: &Arc<Mutex<Vec<Vec<u8>>>>, sync_ms: u64) -> RecordingSink {
    RecordingSink {
        writes: Arc::clone(writes),
        fail_at: usize::MAX,
        sync_delay: std::time::Duration::from_millis(sync_ms),
    }
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
pub(super) fn hammer(
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
