//! The verifier's bounds on what it holds waiting for a signature (a run of
//! lines without a sig of their own, and any one line) are the writer's own:
//! chains the real writer makes at its longest runs still verify, and a
//! receipt longer than a line may be is refused when written.

mod support;

use std::time::{Duration, SystemTime};

use receipts::{
    AppendError, DecisionRecord, Entry, LogOptions, ReceiptLog, UnverifiedChain, VerifiedChain,
    MAX_BATCH, MAX_LINE_BYTES, MAX_UNSIGNED_RUN_BYTES,
};
use serde_json::json;
use support::*;

/// A decision whose path has `pad` bytes.
fn padded(i: usize, pad: usize) -> Entry {
    Entry::Decision {
        decided_at: SystemTime::now(),
        record: DecisionRecord {
            action: json!({"type": "web", "method": "GET", "host": "example.com",
                "path": format!("/{i}/{}", "p".repeat(pad))}),
            counters: json!({"spent_cents": 0}),
            decision: json!({"decision": "allow", "reason": "web", "grant": "web",
                "revocation_ids": ["a1b2", "c3d4"]}),
            body_sha256: None,
        },
    }
}

/// A log as large as the writer allows, whose receipts wait for company as
/// long as they can: queued with `submit_deferred`, nothing wakes the
/// writer, so only the writer's own rules end a run without a signature.
fn largest_runs(entries: impl Iterator<Item = Entry>) -> (VerifiedChain, Vec<Vec<u8>>) {
    let sink = MemorySink::default();
    let options = LogOptions {
        max_batch: usize::MAX,
        defer: Duration::from_secs(3600),
        ..LogOptions::default()
    };
    let log = ReceiptLog::with_sink(sink.clone(), fixed_key(), session_start("bounds"), options)
        .expect("start");
    for entry in entries {
        log.submit_deferred(entry).expect("queue");
    }
    log.finish().expect("finish");
    let bytes = sink.0.lock().expect("sink").clone();
    let lines = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let chain = UnverifiedChain::from_bytes(bytes)
        .verify(&fixed_key().verifying_key())
        .expect("what the writer writes verifies");
    (chain, lines)
}

/// Each run of lines without a sig: (lines, bytes).
fn unsigned_runs(chain: &VerifiedChain, lines: &[Vec<u8>]) -> Vec<(usize, usize)> {
    let mut runs = vec![(0, 0)];
    for (r, line) in chain.receipts.iter().zip(lines) {
        if r.signed {
            runs.push((0, 0));
        } else {
            let run = runs.last_mut().expect("one");
            run.0 += 1;
            run.1 += line.len();
        }
    }
    runs.retain(|&(n, _)| n > 0);
    runs
}

#[test]
fn the_writers_longest_runs_without_a_signature_verify() {
    let (chain, lines) = largest_runs((0..2 * MAX_BATCH + 10).map(|i| decision_entry(i as u64)));
    assert_eq!(chain.receipts.len(), 2 * MAX_BATCH + 12);
    let longest = unsigned_runs(&chain, &lines).iter().map(|&(n, _)| n).max();
    assert_eq!(longest, Some(MAX_BATCH - 1));
}

#[test]
fn the_writer_signs_before_a_run_holds_more_bytes_than_a_reader_accepts() {
    let pad = MAX_LINE_BYTES / 2;
    let (chain, lines) = largest_runs((0..80).map(|i| padded(i, pad)));
    let runs = unsigned_runs(&chain, &lines);
    let most = runs.iter().map(|&(_, bytes)| bytes).max().expect("runs");
    assert!(most <= MAX_UNSIGNED_RUN_BYTES, "{runs:?}");
    // The byte rule ended the runs, long before the count would.
    assert!(
        most > MAX_UNSIGNED_RUN_BYTES - 2 * MAX_LINE_BYTES,
        "{runs:?}"
    );
    assert!(runs.len() > 2, "{runs:?}");
}

#[test]
fn a_receipt_longer_than_a_line_may_be_is_refused_and_fails_the_log_closed() {
    let sink = MemorySink::default();
    let log = ReceiptLog::with_sink(
        sink,
        fixed_key(),
        session_start("too-long"),
        LogOptions::default(),
    )
    .expect("start");
    log.append(padded(1, MAX_LINE_BYTES - 1000)).expect("fits");
    let err = log.append(padded(2, MAX_LINE_BYTES)).expect_err("too long");
    assert!(
        err.to_string().contains(&format!(
            "longer than the {MAX_LINE_BYTES} a receipt line may have"
        )),
        "{err}"
    );
    // Its seq was taken: the chain cannot go on past it.
    assert!(matches!(
        log.append(padded(3, 0)),
        Err(AppendError::Poisoned { .. })
    ));
}
