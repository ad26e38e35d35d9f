//! Interrupted ends: a chain whose supervisor died is reopened (torn tail
//! cut) and closed by recovery with a `session_end` that says so; it
//! verifies as complete-but-interrupted, distinct from a chain cut without
//! an end. An interrupted end edited, re-versioned, forged or re-signed by
//! another key fails verification at its line.

mod support;

use std::io::Write;

use ed25519_dalek::SigningKey;
use receipts::{
    Body, ChainError, Interruption, InterruptionCause, LogOptions, OpenLogError, Receipt,
    ReceiptLog, UnverifiedChain, FORMAT_VERSION, INTERRUPTED_END_VERSION,
};
use support::*;

fn verify(bytes: &[u8]) -> Result<receipts::VerifiedChain, ChainError> {
    UnverifiedChain::from_bytes(bytes.to_vec()).verify(&fixed_key().verifying_key())
}

/// A chain the way a killed supervisor leaves it: start, `decisions`
/// decisions, no end, and half a line torn off at the end.
fn crashed_chain(decisions: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("receipts.jsonl");
    let log = ReceiptLog::create(&path, fixed_key(), session_start("crashed")).expect("create");
    for i in 0..decisions {
        // Only the decisions: approval answers are not needed here.
        log.append(decision_entry(i * 4)).expect("append");
    }
    // Dropping without finish: no session_end, like a SIGKILL after the
    // last acknowledged receipt.
    drop(log);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    f.write_all(b"{\"action\":{\"method\":\"GE")
        .expect("torn write");
    (dir, path)
}

/// Recovery's part: reopen with the chain's own key, close as interrupted.
fn recover(path: &std::path::Path, key: SigningKey) -> Vec<u8> {
    let (log, recovered) =
        ReceiptLog::open_existing(path, key, LogOptions::default()).expect("reopen");
    assert!(recovered.truncated_bytes > 0, "the torn line is cut");
    log.finish_interrupted(InterruptionCause::SupervisorDied)
        .expect("interrupted end");
    std::fs::read(path).expect("read")
}

#[test]
fn a_crashed_chain_closed_by_recovery_verifies_as_interrupted_at_the_last_durable_seq() {
    let (_dir, path) = crashed_chain(12);
    let before = std::fs::read(&path).expect("read");
    // Cut without an end: invalid, and says so.
    let complete = &before[..before.iter().rposition(|&b| b == b'\n').expect("lines") + 1];
    assert_eq!(
        verify(complete).map(|_| ()),
        Err(ChainError::MissingEnd { line: 14 })
    );
    let after = recover(&path, fixed_key());
    let chain = verify(&after).expect("verifies");
    assert_eq!(chain.receipts.len(), 14);
    let interrupted = chain.interruption().expect("interrupted");
    assert_eq!(interrupted.cause, InterruptionCause::SupervisorDied);
    assert_eq!(interrupted.at_seq, 12, "the last decision's seq");
    assert!(receipts::parse_time(&interrupted.recovered_at).is_some());
    assert!(interrupted
        .to_string()
        .starts_with("interrupted (supervisor died) at seq 12, recovered at "));
    let end = &chain.receipts[13].receipt;
    assert_eq!(end.v, INTERRUPTED_END_VERSION);
    assert!(matches!(
        end.body,
        Body::SessionEnd {
            count: 14,
            interrupted: Some(Interruption { at_seq: 12, .. }),
            ..
        }
    ));
    // Every line before the end is untouched and still format version 1.
    assert_eq!(&after[..complete.len()], complete);
    assert!(chain.receipts[..13]
        .iter()
        .all(|r| r.receipt.v == FORMAT_VERSION));
    // A closed chain is not reopened, by recovery or anyone.
    let err = ReceiptLog::open_existing(&path, fixed_key(), LogOptions::default())
        .expect_err("already ended");
    assert!(matches!(err, OpenLogError::Ended { .. }), "{err}");
}

#[test]
fn a_chain_with_only_its_start_closes_at_seq_zero() {
    let (_dir, path) = crashed_chain(0);
    let chain = verify(&recover(&path, fixed_key())).expect("verifies");
    assert_eq!(chain.receipts.len(), 2);
    assert_eq!(chain.interruption().expect("interrupted").at_seq, 0);
}

#[test]
fn another_key_cannot_reopen_the_chain() {
    let (_dir, path) = crashed_chain(3);
    let err = ReceiptLog::open_existing(&path, other_key(), LogOptions::default())
        .expect_err("another key");
    assert!(
        matches!(
            err,
            OpenLogError::Chain {
                source: ChainError::WrongSigner { line: 1, .. },
                ..
            }
        ),
        "{err}"
    );
    // Nothing was written: the chain is still cut, torn tail and all.
    assert!(!std::fs::read(&path).expect("read").ends_with(b"\n"));
}

/// The interrupted golden chain, as lines, with its end parsed.
fn golden_parts() -> (Vec<u8>, Vec<Vec<u8>>, Receipt) {
    let bytes = golden_interrupted_chain();
    let ls: Vec<Vec<u8>> = lines(&bytes).iter().map(|l| l.to_vec()).collect();
    let end: Receipt = serde_json::from_slice(ls.last().expect("end")).expect("parse");
    (bytes, ls, end)
}

fn with_last(ls: &[Vec<u8>], last: &[u8]) -> Vec<u8> {
    let mut refs: Vec<&[u8]> = ls.iter().map(Vec::as_slice).collect();
    *refs.last_mut().expect("lines") = last;
    join(&refs)
}

#[test]
fn every_byte_of_an_interrupted_end_is_bound() {
    let (bytes, ls, _) = golden_parts();
    verify(&bytes).expect("intact");
    let start = bytes.len() - ls.last().expect("end").len() - 1;
    let mut t = bytes.clone();
    for i in start..bytes.len() {
        for flip in [0x01u8, 0x20, 0x80] {
            t[i] ^= flip;
            let err = verify(&t).expect_err("tampered end");
            assert_eq!(err.line(), 7, "byte {} ^ {flip:#x}: {err}", i - start);
            t[i] ^= flip;
        }
    }
}

#[test]
fn an_interrupted_end_forged_with_another_key_fails() {
    let (_, ls, end) = golden_parts();
    let other = other_key();
    // Keeping the pinned key's id: the signature fails. Claiming the
    // other key's id: the signer is wrong.
    let forged = receipts::sign_line(&end, &other).expect("sign");
    assert_eq!(
        verify(&with_last(&ls, &forged)).map(|_| ()),
        Err(ChainError::BadSignature { line: 7 })
    );
    let mut claimed = end.clone();
    claimed.signer = receipts::key_id(&other.verifying_key());
    let forged = receipts::sign_line(&claimed, &other).expect("sign");
    assert!(matches!(
        verify(&with_last(&ls, &forged)),
        Err(ChainError::WrongSigner { line: 7, .. })
    ));
    // Closing a normal chain's cut tail with a forged interrupted end, or
    // turning its normal end into an interrupted one, needs the key too.
    let normal = golden_chain();
    let normal: Vec<Vec<u8>> = lines(&normal).iter().map(|l| l.to_vec()).collect();
    let mut normal_end: Receipt =
        serde_json::from_slice(normal.last().expect("end")).expect("parse");
    normal_end.v = INTERRUPTED_END_VERSION;
    if let Body::SessionEnd { interrupted, .. } = &mut normal_end.body {
        *interrupted = Some(Interruption {
            cause: InterruptionCause::SupervisorDied,
            at_seq: 5,
        });
    }
    let forged = receipts::sign_line(&normal_end, &other).expect("sign");
    assert_eq!(
        verify(&with_last(&normal, &forged)).map(|_| ()),
        Err(ChainError::BadSignature { line: 7 })
    );
}

/// Even the key holder cannot write an inconsistent interrupted end: each
/// edit below is re-signed with the right key and still fails at its line.
#[test]
fn an_interrupted_end_must_be_consistent_even_when_signed_by_the_key() {
    let (_, ls, end) = golden_parts();
    let key = fixed_key();
    let resign = |r: &Receipt| with_last(&ls, &receipts::sign_line(r, &key).expect("sign"));

    // It names the receipt right before it.
    for wrong in [0, 4, 6, 1 << 40] {
        let mut r = end.clone();
        if let Body::SessionEnd { interrupted, .. } = &mut r.body {
            interrupted.as_mut().expect("interrupted").at_seq = wrong;
        }
        let err = verify(&resign(&r)).map(|_| ()).expect_err("wrong at_seq");
        assert!(
            matches!(&err, ChainError::Malformed { line: 7, why } if why.contains("at_seq")),
            "at_seq {wrong}: {err}"
        );
    }
    // Version 1 cannot carry an interruption (an old verifier would skip
    // it and call the chain a normal end).
    let mut v1 = end.clone();
    v1.v = FORMAT_VERSION;
    assert_eq!(
        verify(&resign(&v1)).map(|_| ()),
        Err(ChainError::VersionForKind {
            line: 7,
            what: "a session_end with interrupted",
            expected: 2,
            found: 1
        })
    );
    // A plain end in version 2.
    let mut plain = end.clone();
    if let Body::SessionEnd { interrupted, .. } = &mut plain.body {
        *interrupted = None;
    }
    assert!(matches!(
        verify(&resign(&plain)),
        Err(ChainError::VersionForKind {
            line: 7,
            what: "session_end",
            expected: 1,
            found: 2
        })
    ));
    // A version this verifier does not know.
    let mut future = end.clone();
    future.v = receipts::LATEST_FORMAT_VERSION + 1;
    assert_eq!(
        verify(&resign(&future)).map(|_| ()),
        Err(ChainError::UnsupportedVersion {
            line: 7,
            found: receipts::LATEST_FORMAT_VERSION + 1
        })
    );
    // A decision in version 2.
    let mut decision: Receipt = serde_json::from_slice(&ls[1]).expect("parse");
    decision.v = INTERRUPTED_END_VERSION;
    let line = receipts::sign_line(&decision, &key).expect("sign");
    let mut refs: Vec<&[u8]> = ls.iter().map(Vec::as_slice).collect();
    refs[1] = &line;
    assert!(matches!(
        verify(&join(&refs)),
        Err(ChainError::VersionForKind {
            line: 2,
            what: "decision",
            ..
        })
    ));
}

#[test]
fn nothing_may_follow_an_interrupted_end() {
    let (bytes, ls, _) = golden_parts();
    let mut t = bytes.clone();
    t.extend_from_slice(&ls[1]);
    t.push(b'\n');
    assert_eq!(
        verify(&t).map(|_| ()),
        Err(ChainError::AfterEnd { line: 8 })
    );
}
