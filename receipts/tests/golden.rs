//! The golden chain: a checked-in `receipts.jsonl` signed with a fixed key, so
//! any change to the byte format shows up as a diff of the fixture.
//!
//! Regenerate after an intended format change (and bump `FORMAT_VERSION` if
//! old chains no longer verify):
//!     REGENERATE_GOLDEN=1 cargo test -p receipts --test golden

mod support;

use std::path::PathBuf;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::VerifyingKey;
use receipts::{Body, Receipt, UnverifiedChain};
use support::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden")
}

#[test]
fn golden_fixture_matches_the_current_encoder_and_verifies() {
    let expected = golden_chain();
    let pem = fixed_key()
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    if std::env::var_os("REGENERATE_GOLDEN").is_some() {
        std::fs::create_dir_all(dir()).expect("mkdir");
        std::fs::write(dir().join("receipts.jsonl"), &expected).expect("write");
        std::fs::write(dir().join("receipt.pub"), &pem).expect("write");
    }
    let fixture = std::fs::read(dir().join("receipts.jsonl")).expect("fixture");
    assert!(
        fixture == expected,
        "the receipt encoding changed; if intended, regenerate with \
         REGENERATE_GOLDEN=1 cargo test -p receipts --test golden\nexpected:\n{}",
        String::from_utf8_lossy(&expected)
    );
    let key_text = std::fs::read_to_string(dir().join("receipt.pub")).expect("key fixture");
    let key = VerifyingKey::from_public_key_pem(&key_text).expect("pem key");
    assert_eq!(key, fixed_key().verifying_key());

    let chain = UnverifiedChain::from_bytes(fixture.clone())
        .verify(&key)
        .expect("golden chain verifies");
    let kinds: Vec<&str> = chain
        .receipts
        .iter()
        .map(|r| receipts::kind_name(&r.receipt.body))
        .collect();
    assert_eq!(
        kinds,
        [
            "session_start",
            "decision",
            "decision",
            "decision",
            "approval",
            "decision",
            "session_end"
        ]
    );
    assert_eq!(chain.session(), "golden-0001");
    // Each line is exactly what re-signing its parsed content gives: no
    // field is lost or reordered by a parse/encode round trip.
    for line in lines(&fixture) {
        let receipt: Receipt = serde_json::from_slice(line).expect("parse");
        assert_eq!(
            receipts::sign_line(&receipt, &fixed_key()).expect("sign"),
            line
        );
    }
    match &chain.receipts[6].receipt.body {
        Body::SessionEnd {
            count,
            last,
            interrupted: None,
        } => {
            assert_eq!(*count, 7);
            assert_eq!(last, &hex::encode(chain.receipts[5].hash));
        }
        other => panic!("last receipt is {other:?}"),
    }
}

#[test]
fn golden_lines_hold_no_bodies_only_digests() {
    let fixture = std::fs::read(dir().join("receipts.jsonl")).expect("fixture");
    let text = String::from_utf8(fixture).expect("utf8");
    assert!(!text.contains("body 0"), "a body leaked into a receipt");
    assert!(text.contains(&receipts::sha256_hex(b"body 0")));
}

/// The golden chain of an interrupted session: the supervisor died after
/// its last decision and recovery closed the chain with a format-2
/// `session_end` that says so. Old chains keep their version-1 bytes (the
/// fixture above is unchanged by interruptions).
#[test]
fn golden_interrupted_fixture_matches_the_encoder_and_verifies_as_interrupted() {
    let expected = golden_interrupted_chain();
    let path = dir().join("interrupted.jsonl");
    if std::env::var_os("REGENERATE_GOLDEN").is_some() {
        std::fs::create_dir_all(dir()).expect("mkdir");
        std::fs::write(&path, &expected).expect("write");
    }
    let fixture = std::fs::read(&path).expect("fixture");
    assert!(
        fixture == expected,
        "the interrupted end's encoding changed; if intended, regenerate with \
         REGENERATE_GOLDEN=1 cargo test -p receipts --test golden\nexpected:\n{}",
        String::from_utf8_lossy(&expected)
    );
    let chain = UnverifiedChain::from_bytes(fixture.clone())
        .verify(&fixed_key().verifying_key())
        .expect("interrupted golden chain verifies");
    let interrupted = chain.interruption().expect("an interrupted end");
    assert_eq!(interrupted.at_seq, 5);
    assert_eq!(interrupted.recovered_at, "2026-11-18T11:07:45.123456Z");
    assert_eq!(
        interrupted.to_string(),
        "interrupted (supervisor died) at seq 5, recovered at 2026-11-18T11:07:45.123456Z"
    );
    let ls = lines(&fixture);
    let versions: Vec<u64> = ls
        .iter()
        .map(|l| value(l)["v"].as_u64().expect("v"))
        .collect();
    assert_eq!(versions, [1, 1, 1, 1, 1, 1, 2]);
    assert_eq!(
        value(ls[6])["interrupted"],
        serde_json::json!({"cause": "supervisor_died", "at_seq": 5})
    );
    // Every line but the end is what a live supervisor writes, byte for byte.
    let normal = golden_chain();
    let normal = lines(&normal);
    for k in 1..6 {
        let (a, b) = (value(ls[k]), value(normal[k]));
        assert_eq!(a["kind"], b["kind"]);
        assert_eq!(a["ts"], b["ts"]);
    }
    // The normal chain has no interruption.
    let normal_chain = UnverifiedChain::from_bytes(golden_chain())
        .verify(&fixed_key().verifying_key())
        .expect("verifies");
    assert_eq!(normal_chain.interruption(), None);
}

/// The golden chain of decisions that record their requests' queries
/// (`action.query`, beside `path`): the same encoding rules as every other
/// member, absent without a query, `""` after a bare `?`. The chains above,
/// written before queries were recorded, verify unchanged.
#[test]
fn golden_query_fixture_matches_the_encoder_and_verifies() {
    let expected = golden_query_chain();
    let path = dir().join("query.jsonl");
    if std::env::var_os("REGENERATE_GOLDEN").is_some() {
        std::fs::create_dir_all(dir()).expect("mkdir");
        std::fs::write(&path, &expected).expect("write");
    }
    let fixture = std::fs::read(&path).expect("fixture");
    assert!(
        fixture == expected,
        "the query's encoding changed; if intended, regenerate with \
         REGENERATE_GOLDEN=1 cargo test -p receipts --test golden\nexpected:\n{}",
        String::from_utf8_lossy(&expected)
    );
    let chain = UnverifiedChain::from_bytes(fixture.clone())
        .verify(&fixed_key().verifying_key())
        .expect("query golden chain verifies");
    let queries: Vec<Option<&str>> = chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            Body::Decision(d) => Some(d.query()),
            _ => None,
        })
        .collect();
    assert_eq!(queries, GOLDEN_QUERIES);
    let ls = lines(&fixture);
    assert!(
        ls[1].starts_with(
            br#"{"action":{"host":"example.com","method":"POST","path":"/api/transfer","query":"to=mallory&amount=9999","type":"web"},"#
        ),
        "{}",
        String::from_utf8_lossy(ls[1])
    );
    assert!(!String::from_utf8_lossy(ls[2]).contains(r#""query":"#));
    assert!(String::from_utf8_lossy(ls[3]).contains(r#""path":"/a","query":"","type":"web""#));
    // Every line is what re-signing its parsed content gives (the general
    // encoder agrees with the enforcing path's), and the facts without the
    // query are a `capabilities::Action`.
    for line in lines(&fixture) {
        let receipt: Receipt = serde_json::from_slice(line).expect("parse");
        assert_eq!(
            receipts::sign_line(&receipt, &fixed_key()).expect("sign"),
            line
        );
        if let Body::Decision(d) = &receipt.body {
            let facts: capabilities::Action =
                serde_json::from_value(d.action_facts()).expect("facts");
            assert_eq!(facts.host, "example.com");
        }
    }
    // The chain without queries still verifies, and reads no query.
    let old =
        UnverifiedChain::from_bytes(std::fs::read(dir().join("receipts.jsonl")).expect("fixture"))
            .verify(&fixed_key().verifying_key())
            .expect("a chain from before queries verifies");
    assert!(old.receipts.iter().all(|r| match &r.receipt.body {
        Body::Decision(d) => d.query().is_none(),
        _ => true,
    }));
}

/// Changing a recorded query (to another, to none, or adding one where
/// there was none) breaks verification at that line.
#[test]
fn a_changed_query_fails_verification_at_its_line() {
    let fixture = golden_query_chain();
    let ls = lines(&fixture);
    let edits: [(usize, &str, &str); 4] = [
        (1, "to=mallory", "to=alice!!"),
        (1, r#","query":"to=mallory&amount=9999""#, ""),
        (
            2,
            r#""path":"/api/transfer","#,
            r#""path":"/api/transfer","query":"x","#,
        ),
        (3, r#","query":"""#, ""),
    ];
    for (k, from, to) in edits {
        let text = String::from_utf8(ls[k].to_vec()).expect("utf8");
        assert!(text.contains(from), "line {}: {text}", k + 1);
        let changed = text.replacen(from, to, 1);
        let mut t = ls.clone();
        t[k] = changed.as_bytes();
        let err = UnverifiedChain::from_bytes(join(&t))
            .verify(&fixed_key().verifying_key())
            .expect_err("a changed query must not verify");
        assert_eq!(err.line(), k + 1, "{from:?} → {to:?}: {err}");
    }
}
