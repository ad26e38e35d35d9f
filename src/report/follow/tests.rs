//! The follower against the whole-file build: a session written by the real
//! receipt log, read as it grows, rewritten under the watcher.

use std::path::Path;
use std::time::SystemTime;

use ed25519_dalek::SigningKey;
use receipts::{DecisionRecord, Entry, ReceiptLog, SessionStart};
use serde_json::json;

use super::*;
// The whole-file build, as `report::build` was before it followed.
use crate::report::build_whole as build;

fn write_info(dir: &Path, status: &str) {
    let info = SessionInfo {
        id: "s".into(),
        status: status.into(),
        ..SessionInfo::default()
    };
    bundle::write_info(dir, &info).expect("session.json");
}

fn start(id: &str) -> SessionStart {
    SessionStart {
        session_id: id.into(),
        revocation_ids: vec![],
        sandbox: "netns".into(),
        capability_sha256: None,
        tenant: None,
        user: None,
    }
}

fn decision(i: u64, verdict: &str) -> Entry {
    Entry::Decision {
        decided_at: SystemTime::now(),
        record: DecisionRecord {
            action: json!({"type": "payment", "method": "POST", "host": "shop.example",
                "path": format!("/buy/{i}"), "amount_cents": i, "currency": "USD"}),
            counters: json!({}),
            decision: json!({"decision": verdict, "reason": "", "grant": null, "revocation_ids": []}),
            body_sha256: None,
        },
    }
}

/// What the page shows of a report, the clock aside.
fn shown(report: &Report) -> serde_json::Value {
    json!({
        "receipts": report.receipts,
        "counts": report.counts,
        "bytes": report.bytes,
        "spend": report.spend,
        "timeline": report.timeline,
    })
}

#[test]
fn an_appended_receipt_is_shown_and_the_follower_says_what_a_whole_build_says() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let key = SigningKey::from_bytes(&[21; 32]);
    let verifying = key.verifying_key();
    write_info(dir, "running");
    let log = ReceiptLog::create(&dir.join(bundle::RECEIPTS), key, start("s")).expect("log");
    let mut follower = ReportFollower::new(dir, Some(verifying));
    let report = follower.update().expect("update");
    assert_eq!(report.receipts.status, "open");
    assert!(report.timeline.is_empty());

    for i in 1..=5 {
        log.append(decision(i, if i % 2 == 0 { "block" } else { "allow" }))
            .expect("append");
        let events = format!(
            "{}\n",
            json!({"kind": "completed", "receipt_seq": i, "status": 200, "bytes_up": i, "bytes_down": 10 * i})
        );
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(bundle::EVENTS))
            .and_then(|mut f| std::io::Write::write_all(&mut f, events.as_bytes()))
            .expect("event");
        let report = follower.update().expect("update");
        assert_eq!(report.timeline.len() as u64, i, "the new receipt is shown");
        assert_eq!(report.timeline.last().map(|e| e.seq), Some(i));
        assert_eq!(report.receipts.status, "open");
        let whole = build(dir, Some(&verifying)).expect("build");
        assert_eq!(shown(report), shown(&whole), "after receipt {i}");
    }
    log.finish().expect("end");
    write_info(dir, "completed");
    let report = follower.update().expect("update");
    assert_eq!(report.receipts.status, "valid");
    assert_eq!(report.receipts.verified, Some(7));
    assert_eq!(report.counts.actions, 5);
    assert_eq!(report.bytes.up, 15);
    let whole = build(dir, Some(&verifying)).expect("build");
    assert_eq!(shown(report), shown(&whole));

    // Without a key: read, not verified, as the whole build says.
    let mut unkeyed = ReportFollower::new(dir, None);
    let report = unkeyed.update().expect("update");
    assert_eq!(report.receipts.status, "unverified");
    assert_eq!(shown(report), shown(&build(dir, None).expect("build")));
}

#[test]
fn a_break_in_the_chain_read_in_pieces_is_reported_as_the_whole_build_reports_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let key = SigningKey::from_bytes(&[22; 32]);
    let verifying = key.verifying_key();
    let path = dir.join(bundle::RECEIPTS);
    let log = ReceiptLog::create(&path, key, start("s")).expect("log");
    for i in 1..=4 {
        log.append(decision(i, "allow")).expect("append");
    }
    log.finish().expect("end");
    let good = std::fs::read(&path).expect("read");
    // Line 3 edited: its signature fails; lines after it are unverified.
    let text = String::from_utf8(good).expect("utf8");
    let edited = text.replacen("/buy/2", "/buy/9", 1).into_bytes();
    write_info(dir, "completed");
    let mut follower = ReportFollower::new(dir, Some(verifying));
    // The file grows a few bytes at a time, ending mid-line too.
    std::fs::write(&path, b"").expect("empty");
    for end in (0..=edited.len()).step_by(97).chain([edited.len()]) {
        std::fs::write(&path, &edited[..end]).expect("grow");
        let report = follower.update().expect("update").clone();
        let whole = build(dir, Some(&verifying)).expect("build");
        assert_eq!(shown(&report), shown(&whole), "after {end} bytes");
    }
    let report = follower.update().expect("update");
    assert_eq!(report.receipts.status, "invalid");
    assert_eq!(report.receipts.verified, Some(2));
    let flags: Vec<bool> = report.timeline.iter().map(|e| e.unverified).collect();
    assert_eq!(flags, [false, true, true, true]);
}

#[test]
fn a_chain_rewritten_under_the_watcher_is_reported_invalid() {
    let tmp = tempfile::tempdir().expect("tmp");
    let key = SigningKey::from_bytes(&[23; 32]);
    let verifying = key.verifying_key();
    // A finished session, and another of the same key: valid on its own.
    let session = |name: &str, n: u64| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).expect("mkdir");
        write_info(&dir, "completed");
        let log =
            ReceiptLog::create(&dir.join(bundle::RECEIPTS), key.clone(), start("s")).expect("log");
        for i in 1..=n {
            log.append(decision(i, "allow")).expect("append");
        }
        log.finish().expect("end");
        dir
    };
    let watched = session("watched", 3);
    let other = session("other", 2);
    let path = watched.join(bundle::RECEIPTS);
    let original = std::fs::read(&path).expect("read");

    // Replaced (by rename) with another chain that verifies by itself: a
    // whole rebuild, what the page did before, calls it valid.
    let mut follower = ReportFollower::new(&watched, Some(verifying));
    assert_eq!(follower.update().expect("update").receipts.status, "valid");
    let tmp_copy = watched.join("swap");
    std::fs::copy(other.join(bundle::RECEIPTS), &tmp_copy).expect("copy");
    std::fs::rename(&tmp_copy, &path).expect("swap");
    assert_eq!(
        build(&watched, Some(&verifying))
            .expect("build")
            .receipts
            .status,
        "valid"
    );
    let report = follower.update().expect("update");
    assert_eq!(report.receipts.status, "invalid");
    assert!(
        report.receipts.detail.contains("replaced"),
        "{}",
        report.receipts.detail
    );
    // It stays so: the follower never takes the new file as a continuation.
    assert_eq!(
        follower.update().expect("update").receipts.status,
        "invalid"
    );

    // The same file rewritten in place: the last verified line changed.
    std::fs::write(&path, &original).expect("restore");
    let mut follower = ReportFollower::new(&watched, Some(verifying));
    assert_eq!(follower.update().expect("update").receipts.status, "valid");
    let mut edited = original.clone();
    let at = edited.len() - 10;
    edited[at] = if edited[at] == b'0' { b'1' } else { b'0' };
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &edited))
        .expect("rewrite in place");
    let report = follower.update().expect("update");
    assert_eq!(report.receipts.status, "invalid");
    assert!(
        report.receipts.detail.contains("rewritten"),
        "{}",
        report.receipts.detail
    );

    // Cut into its verified lines.
    std::fs::write(&path, &original).expect("restore");
    let mut follower = ReportFollower::new(&watched, Some(verifying));
    assert_eq!(follower.update().expect("update").receipts.status, "valid");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(original.len() as u64 / 2).expect("cut");
    let report = follower.update().expect("update");
    assert_eq!(report.receipts.status, "invalid");
    assert!(
        report.receipts.detail.contains("cut"),
        "{}",
        report.receipts.detail
    );
}

/// Per-update cost for a session of 50,000 receipts, one receipt appended
/// before each update: the whole rebuild the live page did before (what
/// `Sessions::report` does when a bundle file changed) against the
/// follower. Prints the figures; asserts nothing about time.
#[test]
#[ignore = "bench: cargo test --bin openclaw follow::tests::update_cost -- --ignored --nocapture"]
fn update_cost_of_a_long_session() {
    use std::io::Write;
    use std::time::Instant;

    use receipts::{Body, Receipt, UNSIGNED_VERSION};

    const RECEIPTS: u64 = 50_000;
    const UPDATES: usize = 20;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    write_info(dir, "running");
    let key = SigningKey::from_bytes(&[24; 32]);
    let verifying = key.verifying_key();
    let mut prev = receipts::GENESIS_PREV.to_owned();
    let mut file = std::fs::File::create(dir.join(bundle::RECEIPTS)).expect("create");
    // Written as the log writes under load: one signature per 512 lines.
    let mut line_of = |seq: u64, signed: bool| {
        let body = if seq == 0 {
            Body::SessionStart {
                public_key: hex::encode(verifying.as_bytes()),
                revocation_ids: vec![],
                sandbox: "netns".into(),
                capability_sha256: None,
                tenant: None,
                user: None,
            }
        } else {
            let Entry::Decision { record, .. } = decision(seq, "allow") else {
                unreachable!("a decision")
            };
            Body::Decision(record)
        };
        let receipt = Receipt {
            v: if signed { 1 } else { UNSIGNED_VERSION },
            session: "s".into(),
            seq,
            ts: "2026-12-06T00:00:00.000000Z".into(),
            prev: prev.clone(),
            signer: receipts::key_id(&verifying),
            body,
        };
        let line = if signed {
            receipts::sign_line(&receipt, &key)
        } else {
            receipts::unsigned_line(&receipt)
        }
        .expect("encode");
        prev = hex::encode(receipts::line_hash(&line));
        [line, b"\n".to_vec()].concat()
    };
    let mut bytes = Vec::new();
    for seq in 0..RECEIPTS {
        bytes.extend(line_of(
            seq,
            seq == 0 || seq % 512 == 0 || seq == RECEIPTS - 1,
        ));
    }
    file.write_all(&bytes).expect("write");

    let mut follower = ReportFollower::new(dir, Some(verifying));
    let first = Instant::now();
    assert_eq!(
        follower.update().expect("update").timeline.len() as u64,
        RECEIPTS - 1
    );
    let first = first.elapsed();
    let (mut rebuild, mut follow) = (Vec::new(), Vec::new());
    for i in 0..UPDATES as u64 {
        file.write_all(&line_of(RECEIPTS + i, true))
            .expect("append");
        let t = Instant::now();
        let whole = build(dir, Some(&verifying)).expect("build");
        rebuild.push(t.elapsed());
        let t = Instant::now();
        let report = follower.update().expect("update");
        follow.push(t.elapsed());
        assert_eq!(report.timeline.len(), whole.timeline.len());
        assert_eq!(report.receipts.status, "open");
    }
    rebuild.sort();
    follow.sort();
    // Of the follower's update, the totals (kept as entries change).
    let t = Instant::now();
    let _ = follower.tally.totals(None);
    let recount = t.elapsed();
    println!(
        "{RECEIPTS} receipts, {UPDATES} updates of one appended receipt each: whole rebuild \
         median {:?}, follower median {:?}, of which the totals {recount:?} (its first \
         update, reading the whole chain: {first:?})",
        rebuild[UPDATES / 2],
        follow[UPDATES / 2]
    );
}
