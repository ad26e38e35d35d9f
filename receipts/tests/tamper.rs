//! Tamper suite: on a chain of more than 100 receipts, signed lines mixed
//! with lines covered by the next signed one, every single-byte change,
//! deleted line, swapped pair, duplicated line, cut tail and line re-signed
//! with another key fails verification and names the right line. (A line
//! without its own signature that still parses is named by the line after
//! it, whose `prev` no longer matches.)

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
    let unsigned = ls.iter().filter(|l| !is_signed(l)).count();
    assert!(
        unsigned > 30 && unsigned < ls.len() / 2,
        "{unsigned} of {} lines without their own signature",
        ls.len()
    );
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
    let mut named_by_next = 0;
    let mut t = f.bytes.clone();
    for k in 0..n {
        let start = f.offsets[k];
        let end = f.offsets.get(k + 1).copied().unwrap_or(f.bytes.len());
        let signed = is_signed(&f.bytes[start..end - 1]);
        // Every byte of the line, its newline included.
        for i in start..end {
            for flip in [0x01u8, 0x20, 0x80] {
                t[i] ^= flip;
                let err = first_error_from(&f.prefixes[k], &t, start);
                if !signed && err == (ChainError::HashMismatch { line: k + 2 }) {
                    // Still a well-formed line: the next line's prev says it changed.
                    named_by_next += 1;
                } else {
                    assert_eq!(
                        err.line(),
                        k + 1,
                        "byte {} of line {} ^ {flip:#x}: {err}",
                        i - start,
                        k + 1
                    );
                }
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
    assert!(
        named_by_next > 0,
        "no change to an unsigned line went unnoticed by its own checks"
    );
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
    let ls = lines(&f.bytes);
    let mut uncovered_cuts = 0;
    for keep in 1..n {
        // Cut at a line boundary: no session_end, or (when the last line
        // kept has no signature of its own) lines nothing vouches for.
        let cut = f.offsets[keep];
        let first_unsigned = (0..keep).rev().take_while(|&i| !is_signed(ls[i])).last();
        let expected = match first_unsigned {
            Some(i) => {
                uncovered_cuts += 1;
                ChainError::Uncovered {
                    line: i + 1,
                    last: keep,
                }
            }
            None => ChainError::MissingEnd { line: keep + 1 },
        };
        assert_eq!(verify(&f.bytes[..cut]), Err(expected));
        // Cut inside the next line: torn.
        assert_eq!(
            verify(&f.bytes[..cut + 10]),
            Err(ChainError::Torn { line: keep + 1 })
        );
    }
    assert!(uncovered_cuts > 10, "{uncovered_cuts}");
    let msg = verify(&f.bytes[..f.offsets[2]])
        .expect_err("cut")
        .to_string();
    assert_eq!(
        msg,
        "line 3: the chain ends without session_end (cut after line 2)"
    );
    let last_unsigned = (1..n)
        .find(|&i| !is_signed(ls[i]))
        .expect("an unsigned line");
    let msg = verify(&f.bytes[..f.offsets[last_unsigned + 1]])
        .expect_err("cut")
        .to_string();
    assert_eq!(
        msg,
        format!(
            "line {0}: no sig of its own, and no signed line after it covers it (the chain was cut after line {0})",
            last_unsigned + 1
        )
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
        // A line without its own signature gets one, at the version a
        // signed line of its kind carries.
        receipt.v = receipts::version_of(&receipt.body);
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
    // The first signed line from line 40 on (0-based index k).
    let k = (39..ls.len())
        .find(|&i| is_signed(ls[i]))
        .expect("a signed line");
    let mut receipt: Receipt = serde_json::from_slice(ls[k]).expect("parse");
    receipt.ts = "2030-01-01T00:00:00.000000Z".into();
    let line = receipts::sign_line(&receipt, &fixed_key()).expect("sign");
    let mut t = ls.clone();
    t[k] = &line;
    let err = verify(&join(&t)).expect_err("broken link");
    assert_eq!(err, ChainError::HashMismatch { line: k + 2 });
    assert_eq!(
        err.to_string(),
        format!(
            "line {}: prev does not match SHA-256 of line {}",
            k + 2,
            k + 1
        )
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

    // One hex digit of a signature changed (still lowercase hex).
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
    // The first signed line from line 1,700 on (0-based index bad).
    let bad = (1_699..ls.len())
        .find(|&i| is_signed(ls[i]))
        .expect("signed");
    assert!(bad < 1_800, "{bad}");
    let mut tampered: Vec<Vec<u8>> = ls.iter().map(|l| l.to_vec()).collect();
    tampered[bad] = bad_sig(&tampered[bad]);
    let refs: Vec<&[u8]> = tampered.iter().map(Vec::as_slice).collect();
    assert_eq!(
        verify(&join(&refs)),
        Err(ChainError::BadSignature { line: bad + 1 })
    );

    // And with line 1,900 deleted too, the earlier bad signature still wins.
    let mut both = refs.clone();
    both.remove(1_899);
    assert_eq!(
        verify(&join(&both)),
        Err(ChainError::BadSignature { line: bad + 1 })
    );

    // The deletion alone is named at its own line.
    let mut deleted = ls.clone();
    deleted.remove(1_899);
    assert_eq!(verify(&join(&deleted)).map_err(|e| e.line()), Err(1_900));
}
