//! Decision re-derivation against real tokens: an honest chain re-derives,
//! and each way a recorded decision can part from its token is named with
//! its line.

use std::time::SystemTime;

use capabilities::{Action, ActionType, Counters, Policy, Verdict};
use ed25519_dalek::SigningKey;
use receipts::{
    rederive, Coverage, DecisionMismatch, DecisionRecord, Entry, ReceiptLog, RecordedAction,
    SessionStart, UnverifiedChain, VerifiedChain,
};

/// A small flight-booking envelope: flight search, one merchant, approval
/// above $400.
const POLICY: &str = r#"
[web]
allow = ["google.com/travel/flights"]
methods = ["GET", "HEAD"]

[payment]
merchant = "united.com"
currency = "USD"
max_per_charge = "600.00"
approval_above = "400.00"
card = "united_card"
"#;

fn root() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

fn web(method: &str, host: &str, path: &str) -> Action {
    serde_json::from_value(
        serde_json::json!({"type": "web", "method": method, "host": host, "path": path}),
    )
    .expect("action")
}

/// The session's token (base64) and its verified chain of three decisions
/// (search: allow, Slack: block, purchase: approval) on lines 2-4;
/// `tweak(i, decision_json)` may forge decision `i` before it is signed.
fn session(tweak: impl Fn(usize, &mut serde_json::Value)) -> (String, VerifiedChain) {
    let dir = tempfile::tempdir().expect("tempdir");
    let receipt_key = SigningKey::from_bytes(&[4; 32]);
    let policy = Policy::from_toml_str(POLICY).expect("policy");
    let now = SystemTime::now();
    let token = capabilities::mint(&policy, &root().to_bytes(), now).expect("mint");
    let capability = capabilities::UnverifiedToken::from_base64(&token)
        .expect("parse")
        .verify(&root().verifying_key().to_bytes())
        .expect("verify");
    let path = dir.path().join("receipts.jsonl");
    let log = ReceiptLog::create(
        &path,
        receipt_key.clone(),
        SessionStart {
            session_id: "rederive".into(),
            revocation_ids: capability.revocation_ids(),
            sandbox: "netns".into(),
            capability_sha256: Some(receipts::sha256_hex(token.as_bytes())),
            tenant: None,
            user: None,
        },
    )
    .expect("create log");
    let counters = Counters::default();
    let actions = [
        web("GET", "google.com", "/travel/flights/search"),
        web("POST", "hooks.slack.com", "/services/T024"),
        Action {
            kind: ActionType::Payment,
            amount_cents: Some(48_700),
            currency: Some("USD".into()),
            merchant: Some("united.com".into()),
            ..web("POST", "united.com", "/api/booking/purchase")
        },
    ];
    // The requests' queries, recorded beside the path (no fact the token
    // reads): one with data, a bare `?`, none.
    let queries = [Some("q=SFO-JFK&date=2027-01-14"), Some(""), None];
    for (i, (action, query)) in actions.iter().zip(queries).enumerate() {
        let mut decision =
            serde_json::to_value(capability.authorize(action, &counters, now)).expect("json");
        decision["stage"] = "token".into();
        tweak(i, &mut decision);
        let recorded = RecordedAction {
            facts: action,
            query,
        };
        log.append(Entry::Decision {
            decided_at: now,
            record: DecisionRecord {
                action: serde_json::to_value(&recorded).expect("json"),
                counters: serde_json::to_value(counters).expect("json"),
                decision,
                body_sha256: None,
            },
        })
        .expect("append");
    }
    log.finish().expect("finish");
    let bytes = std::fs::read(&path).expect("read chain");
    let chain = UnverifiedChain::from_bytes(bytes)
        .verify(&receipt_key.verifying_key())
        .expect("a valid chain");
    (token, chain)
}

#[test]
fn honest_decisions_re_derive_from_the_token() {
    let (token, chain) = session(|_, _| {});
    let queries: Vec<Option<&str>> = chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            receipts::Body::Decision(d) => Some(d.query()),
            _ => None,
        })
        .collect();
    assert_eq!(queries, [Some("q=SFO-JFK&date=2027-01-14"), Some(""), None]);
    let found = rederive(&chain, token.as_bytes(), Some(&root().verifying_key()));
    assert_eq!(found.coverage, Coverage::Checked { decisions: 3 });
    assert_eq!(found.mismatches, []);
    assert_eq!(found.reason_changes, []);

    // Without the root key only the token's binding is checked.
    let found = rederive(&chain, token.as_bytes(), None);
    assert_eq!(found.coverage, Coverage::NoRootKey);
    assert_eq!(found.mismatches, []);
}

#[test]
fn an_allow_for_an_action_the_token_blocks_is_named_with_its_line() {
    let (token, chain) = session(|i, decision| {
        if i == 1 {
            assert_eq!(decision["decision"], "block");
            decision["decision"] = "allow".into();
            decision["reason"] = "web_access".into();
        }
    });
    let found = rederive(&chain, token.as_bytes(), Some(&root().verifying_key()));
    assert_eq!(found.coverage, Coverage::Checked { decisions: 3 });
    assert_eq!(found.mismatches.len(), 1, "{:?}", found.mismatches);
    let mismatch = &found.mismatches[0];
    assert_eq!(mismatch.line(), 3);
    match mismatch {
        DecisionMismatch::NotFromToken {
            recorded, derived, ..
        } => {
            assert_eq!(recorded.decision, Verdict::Allow);
            assert_eq!(derived.decision, Verdict::Block);
        }
        other => panic!("{other:?}"),
    }
    let text = mismatch.to_string();
    assert!(
        text.starts_with("line 3: decision does not follow from the token: recorded allow"),
        "{text}"
    );
    assert!(text.contains("the token says block"), "{text}");
}

#[test]
fn another_reason_for_the_same_decision_is_only_a_warning() {
    let (token, chain) = session(|i, decision| {
        if i == 0 {
            decision["reason"] = "an older wording".into();
        }
    });
    let found = rederive(&chain, token.as_bytes(), Some(&root().verifying_key()));
    assert_eq!(found.mismatches, []);
    assert_eq!(found.reason_changes.len(), 1);
    assert_eq!(found.reason_changes[0].line, 2);
    assert_eq!(found.reason_changes[0].recorded, "an older wording");
    assert!(found.reason_changes[0]
        .to_string()
        .starts_with("line 2: same decision, different reason: recorded \"an older wording\""));
}

#[test]
fn a_swapped_token_or_wrong_root_key_is_named() {
    let (_, chain) = session(|_, _| {});
    // A token from another root key, put in the bundle afterwards.
    let other_root = SigningKey::from_bytes(&[9; 32]);
    let policy = Policy::from_toml_str("[web]\nallow = [\"hooks.slack.com\"]\n").expect("policy");
    let swapped =
        capabilities::mint(&policy, &other_root.to_bytes(), SystemTime::now()).expect("mint");
    let found = rederive(&chain, swapped.as_bytes(), Some(&root().verifying_key()));
    assert_eq!(found.coverage, Coverage::TokenUnusable);
    let kinds: Vec<&DecisionMismatch> = found.mismatches.iter().collect();
    assert!(
        matches!(
            kinds[..],
            [
                DecisionMismatch::TokenDigest { .. },
                DecisionMismatch::RevocationIds,
                DecisionMismatch::RootKey { .. }
            ]
        ),
        "{kinds:?}"
    );
    assert_eq!(found.mismatches[0].line(), 1);
    assert!(found.mismatches[0]
        .to_string()
        .starts_with("line 1: session_start binds a different capabilities.cap"));
    assert_eq!(found.mismatches[2].line(), 0);
    assert!(found.mismatches[2]
        .to_string()
        .contains("does not verify with the given root key"));

    // Not a token at all: named, and nothing is re-run.
    let found = rederive(&chain, b"\xffnot base64", Some(&root().verifying_key()));
    assert_eq!(found.coverage, Coverage::TokenUnusable);
    assert!(
        matches!(
            found.mismatches[..],
            [
                DecisionMismatch::TokenDigest { .. },
                DecisionMismatch::NotAToken { .. }
            ]
        ),
        "{:?}",
        found.mismatches
    );
}

#[test]
fn blocks_by_other_stages_pass_but_they_may_not_allow() {
    // The proxy's credential stage refused a search the token allows.
    let (token, chain) = session(|i, decision| {
        if i == 0 {
            decision["decision"] = "block".into();
            decision["reason"] = "credential exfiltration".into();
            decision["stage"] = "credential".into();
        }
    });
    let found = rederive(&chain, token.as_bytes(), Some(&root().verifying_key()));
    assert_eq!(found.mismatches, []);
    assert_eq!(found.coverage, Coverage::Checked { decisions: 3 });

    // A stage other than the token claiming to allow is not believed.
    let (token, chain) = session(|i, decision| {
        if i == 1 {
            decision["decision"] = "allow".into();
            decision["stage"] = "catalog".into();
        }
    });
    let found = rederive(&chain, token.as_bytes(), Some(&root().verifying_key()));
    assert_eq!(
        found.mismatches,
        [DecisionMismatch::StageAllowed {
            line: 3,
            stage: "catalog".into(),
            recorded: Verdict::Allow
        }]
    );
    assert_eq!(
        found.mismatches[0].to_string(),
        "line 3: the catalog stage can only block, but recorded allow"
    );
}

#[test]
fn an_unreadable_decision_is_named_and_the_rest_still_checked() {
    let (token, chain) = session(|i, decision| {
        if i == 2 {
            decision["decision"] = "perhaps".into();
        }
    });
    let found = rederive(&chain, token.as_bytes(), Some(&root().verifying_key()));
    assert_eq!(found.coverage, Coverage::Checked { decisions: 2 });
    assert_eq!(found.mismatches.len(), 1, "{:?}", found.mismatches);
    assert!(matches!(
        &found.mismatches[0],
        DecisionMismatch::Unreadable { line: 4, why } if why.starts_with("recorded decision:")
    ));
}

/// Turns decision 1 (the Slack block) into an aggregate of refused DNS
/// names, as the gate writes past its per-name limit.
fn as_aggregate(decision: &mut serde_json::Value, aggregate: serde_json::Value) {
    decision["stage"] = "dns".into();
    decision["aggregate"] = aggregate;
}

fn aggregate(count: u64) -> serde_json::Value {
    let now = receipts::format_time(SystemTime::now() - std::time::Duration::from_secs(5));
    serde_json::json!({
        "count": count,
        "names_sha256": receipts::sha256_hex(b"a.example\nb.example\n"),
        "first": now,
        "last": now,
    })
}

#[test]
fn an_aggregate_of_dns_refusals_is_accepted_and_a_malformed_one_named() {
    let (token, chain) = session(|i, d| {
        if i == 1 {
            as_aggregate(d, aggregate(2));
        }
    });
    let found = rederive(&chain, token.as_bytes(), Some(&root().verifying_key()));
    assert_eq!(found.mismatches, []);
    assert_eq!(found.coverage, Coverage::Checked { decisions: 3 });

    for (what, tweak) in [
        ("no count", aggregate(0)),
        ("bad digest", {
            let mut a = aggregate(2);
            a["names_sha256"] = "not hex".into();
            a
        }),
        ("times out of order", {
            let mut a = aggregate(2);
            a["last"] = "1970-01-01T00:00:00.000000Z".into();
            a
        }),
    ] {
        let (token, chain) = session(|i, d| {
            if i == 1 {
                as_aggregate(d, tweak.clone());
            }
        });
        let found = rederive(&chain, token.as_bytes(), Some(&root().verifying_key()));
        assert!(
            matches!(
                found.mismatches.as_slice(),
                [DecisionMismatch::BadAggregate { line: 3, .. }]
            ),
            "{what}: {:?}",
            found.mismatches
        );
    }

    // An aggregate dressed as a token decision is not one.
    let (token, chain) = session(|i, d| {
        if i == 1 {
            d["aggregate"] = aggregate(2);
        }
    });
    let found = rederive(&chain, token.as_bytes(), Some(&root().verifying_key()));
    assert!(
        matches!(found.mismatches.as_slice(), [DecisionMismatch::BadAggregate { line: 3, why }] if why.contains("token block")),
        "{:?}",
        found.mismatches
    );
}
