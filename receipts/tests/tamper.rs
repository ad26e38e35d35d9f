//! Tamper suite: on a chain of more than 100 receipts, every single-byte
//! change, deleted line, swapped pair, duplicated line, cut tail and line
//! re-signed with another key fails verification and names the right line.

mod support;

use ed25519_dalek::VerifyingKey;
use receipts::{ChainError, LineVerifier, Receipt, UnverifiedChain};
use support::*;

fn pinned() -> VerifyingKey {
    fixed_key().verifying_key()
}

fn verify(bytes: &[u8]) -> Result<(), ChainError> {
    UnverifiedChain::from_bytes(bytes.to_vec())
        .verify(&pinned())
        .map(|_| ())
}

/// The first error when verifying `bytes` from line `from` (1-based) on,
/// resuming from a verifier that already accepted the lines before it. Same
/// rules as `UnverifiedChain::verify`, without redoing the intact prefix.
fn first_error_from(prefix: &LineVerifier, bytes: &[u8], offset: usize) -> ChainError {
    let mut v = prefix.clone();
    let mut rest = &bytes[offset..];
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return ChainError::Torn {
                line: v.lines() + 1,
            };
        };
        if let Err(e) = v.push(&rest[..end]) {
            return e;
        }
        rest = &rest[end + 1..];
    }
    v.finish().expect_err("tampered chain must not verify")
}

struct Fixture {
    bytes: Vec<u8>,
    /// Byte offset where each line starts.
    offsets: Vec<usize>,
    /// prefixes[k]: verifier that accepted lines 1..=k.
    prefixes: Vec<LineVerifier>,
}

fn fixture() -> Fixture {
    let bytes = build_chain(100);
    let ls = lines(&bytes);
    assert!(ls.len() > 100, "{} lines", ls.len());
    let mut offsets = Vec::new();
    let mut off = 0;
    let mut v = LineVerifier::new(pinned());
    let mut prefixes = vec![v.clone()];
    for l in &ls {
        offsets.push(off);
        off += l.len() + 1;
        v.push(l).expect("intact line verifies");
        prefixes.push(v.clone());
    }
    verify(&bytes).expect("intact chain verifies");
    Fixture {
        bytes,
        offsets,
        prefixes,
    }
}

#[test]
fn every_single_byte_change_names_its_line() {
    let f = fixture();
    let n = f.offsets.len();
    let mut cases = 0;
    let mut t = f.bytes.clone();
    for k in 0..n {
        let start = f.offsets[k];
        let end = f.offsets.get(k + 1).copied().unwrap_or(f.bytes.len());
        // Every byte of the line, its newline included.
        for i in start..end {
            for flip in [0x01u8, 0x20, 0x80] {
                t[i] ^= flip;
                let err = first_error_from(&f.prefixes[k], &t, start);
                assert_eq!(
                    err.line(),
                    k + 1,
                    "byte {} of line {} ^ {flip:#x}: {err}",
                    i - start,
                    k + 1
                );
                // Once per line, the whole-chain verifier (batched
                // signatures) must agree exactly.
                if i == start + (k * 13) % (end - start) && flip == 0x01 {
                    assert_eq!(verify(&t), Err(err));
                }
                t[i] ^= flip;
                cases += 1;
            }
        }
    }
    assert!(cases > 100 * 300, "{cases} cases");
}

#[test]
fn deleting_any_line_names_that_line() {
    let f = fixture();
    let ls = lines(&f.bytes);
    for k in 0..ls.len() {
        let mut t = ls.clone();
        t.remove(k);
        let err = verify(&join(&t)).expect_err("deleted line");
        assert_eq!(err.line(), k + 1, "delete line {}: {err}", k + 1);
    }
}

#[test]
fn swapping_adjacent_lines_names_the_first_of_them() {
    let f = fixture();
    let ls = lines(&f.bytes);
    for k in 0..ls.len() - 1 {
        let mut t = ls.clone();
        t.swap(k, k + 1);
        let err = verify(&join(&t)).expect_err("swapped lines");
        assert_eq!(err.line(), k + 1, "swap {} and {}: {err}", k + 1, k + 2);
    }
}

#[test]
fn duplicating_a_line_names_the_copy() {
    let f = fixture();
    let ls = lines(&f.bytes);
    for k in 0..ls.len() {
        let mut t = ls.clone();
        t.insert(k + 1, ls[k]);
        let err = verify(&join(&t)).expect_err("duplicated line");
        assert_eq!(err.line(), k + 2, "duplicate line {}: {err}", k + 1);
    }
}

#[test]
fn cutting_the_tail_anywhere_is_detected() {
    let f = fixture();
    let n = f.offsets.len();
    assert_eq!(verify(b""), Err(ChainError::Empty));
    for keep in 1..n {
        // Cut at a line boundary: no session_end.
        let cut = f.offsets[keep];
        assert_eq!(
            verify(&f.bytes[..cut]),
            Err(ChainError::MissingEnd { line: keep + 1 })
        );
        // Cut inside the next line: torn.
        assert_eq!(
            verify(&f.bytes[..cut + 10]),
            Err(ChainError::Torn { line: keep + 1 })
        );
    }
    let msg = verify(&f.bytes[..f.offsets[5]])
        .expect_err("cut")
        .to_string();
    assert_eq!(
        msg,
        "line 6: the chain ends without session_end (cut after line 5)"
    );
}

#[test]
fn a_line_changed_and_re_signed_with_another_key_names_that_line() {
    let f = fixture();
    let ls = lines(&f.bytes);
    let other = other_key();
    for k in 0..ls.len() {
        let mut receipt: Receipt = serde_json::from_slice(ls[k]).expect("parse");
        receipt.ts = "2030-01-01T00:00:00.000000Z".into();
        // Keeping the pinned key's id, then claiming the other key's id.
        for claim_other in [false, true] {
            if claim_other {
                receipt.signer = receipts::key_id(&other.verifying_key());
            }
            let line = receipts::sign_line(&receipt, &other).expect("sign");
            let mut t = ls.clone();
            t[k] = &line;
            let err = verify(&join(&t)).expect_err("re-signed");
            assert_eq!(err.line(), k + 1, "re-signed line {}: {err}", k + 1);
            let expected_kind = if claim_other {
                matches!(err, ChainError::WrongSigner { .. })
            } else {
                matches!(err, ChainError::BadSignature { .. })
            };
            assert!(expected_kind, "line {}: {err:?}", k + 1);
        }
    }
}

#[test]
fn a_line_re_signed_with_the_right_key_breaks_the_next_link() {
    // Only the key holder can do this; the chain still shows where.
    let f = fixture();
    let ls = lines(&f.bytes);
    let k = 40; // line 41
    let mut receipt: Receipt = serde_json::from_slice(ls[k - 1]).expect("parse");
    receipt.ts = "2030-01-01T00:00:00.000000Z".into();
    let line = receipts::sign_line(&receipt, &fixed_key()).expect("sign");
    let mut t = ls.clone();
    t[k - 1] = &line;
    let err = verify(&join(&t)).expect_err("broken link");
    assert_eq!(err, ChainError::HashMismatch { line: 41 });
    assert_eq!(
        err.to_string(),
        "line 41: prev does not match SHA-256 of line 40"
    );
}

#[test]
fn another_pinned_key_fails_on_line_one() {
    let f = fixture();
    let err = UnverifiedChain::from_bytes(f.bytes.clone())
        .verify(&other_key().verifying_key())
        .expect_err("wrong key");
    assert!(
        matches!(err, ChainError::WrongSigner { line: 1, .. }),
        "{err}"
    );
    // Trusting the embedded key works, and is a separate, named call.
    let chain = UnverifiedChain::from_bytes(f.bytes);
    receipts::danger::verify_trusting_embedded_key(&chain).expect("self-consistent");
}

/// Whole-chain verification checks signatures in batches of hundreds of
/// lines: on a chain several batches long, a bad signature in a later batch
/// is still named, and before a structural break further on.
#[test]
fn long_chains_name_bad_signatures_across_signature_batches() {
    let bytes = build_chain(1_600);
    let ls = lines(&bytes);
    assert!(ls.len() > 2_000, "{} lines", ls.len());
    verify(&bytes).expect("intact long chain verifies");

    // One hex digit of line 1,700's signature changed (still lowercase hex).
    let bad_sig = |line: &[u8]| -> Vec<u8> {
        let mut l = line.to_vec();
        let at = l
            .windows(7)
            .position(|w| w == b"\"sig\":\"")
            .expect("sig member")
            + 7
            + 10;
        l[at] = if l[at] == b'0' { b'1' } else { b'0' };
        l
    };
    let mut tampered: Vec<Vec<u8>> = ls.iter().map(|l| l.to_vec()).collect();
    tampered[1_699] = bad_sig(&tampered[1_699]);
    let refs: Vec<&[u8]> = tampered.iter().map(Vec::as_slice).collect();
    assert_eq!(
        verify(&join(&refs)),
        Err(ChainError::BadSignature { line: 1_700 })
    );

    // And with line 1,900 deleted too, the earlier bad signature still wins.
    let mut both = refs.clone();
    both.remove(1_899);
    assert_eq!(
        verify(&join(&both)),
        Err(ChainError::BadSignature { line: 1_700 })
    );

    // The deletion alone is named at its own line.
    let mut deleted = ls.clone();
    deleted.remove(1_899);
    assert_eq!(verify(&join(&deleted)).map_err(|e| e.line()), Err(1_900));
}
