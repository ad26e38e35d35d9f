//! Shared helpers for the receipts integration tests: fixed keys, an
//! in-memory sink, and chain builders.
#![allow(dead_code)] // each test file uses a different subset

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use receipts::{
    ApprovalRecord, Body, DecisionRecord, DurableSink, Entry, Interruption, InterruptionCause,
    LogOptions, Receipt, ReceiptLog, SessionStart, GENESIS_PREV,
};
use serde_json::{json, Value};

/// The fixed key the golden fixture is signed with (never used for anything real).
pub fn fixed_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5a; 32])
}

pub fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[0xa5; 32])
}

#[derive(Clone, Default)]
pub struct MemorySink(pub Arc<Mutex<Vec<u8>>>);

impl DurableSink for MemorySink {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.lock().expect("sink lock").extend_from_slice(bytes);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn session_start(id: &str) -> SessionStart {
    SessionStart {
        session_id: id.into(),
        revocation_ids: vec!["a1b2".into(), "c3d4".into()],
        sandbox: "netns".into(),
        capability_sha256: None,
        tenant: None,
        user: None,
    }
}

/// A decision entry of a varying shape, so the chain covers every field kind.
pub fn decision_entry(i: u64) -> Entry {
    let (action, decision) = match i % 4 {
        0 => (
            json!({"type": "web", "method": "GET", "host": "google.com", "path": format!("/travel/flights/{i}")}),
            json!({"decision": "allow", "reason": "web_access", "grant": "web", "revocation_ids": ["a1b2", "c3d4"]}),
        ),
        1 => (
            json!({"type": "web", "method": "POST", "host": "hooks.slack.com", "path": "/services/T024"}),
            json!({"decision": "block", "reason": "no capability", "grant": null, "revocation_ids": ["a1b2", "c3d4"]}),
        ),
        2 => (
            json!({"type": "payment", "method": "POST", "host": "united.com", "path": "/api/booking/purchase",
                   "amount_cents": 48700 + i, "currency": "USD", "merchant": "united.com"}),
            json!({"decision": "approval", "reason": "amount above auto-approve limit", "grant": "payment", "revocation_ids": ["a1b2", "c3d4"]}),
        ),
        _ => (
            json!({"type": "login", "method": "POST", "host": "united.com", "path": "/api/auth/login", "credential": "united"}),
            json!({"decision": "allow", "reason": "login", "grant": "login", "revocation_ids": ["a1b2", "c3d4"]}),
        ),
    };
    Entry::Decision {
        decided_at: SystemTime::now(),
        record: DecisionRecord {
            action,
            counters: json!({"spent_cents": i * 10, "emails_sent": 0, "llm_spent_micro_usd": 0}),
            decision,
            body_sha256: Some(receipts::sha256_hex(format!("body {i}").as_bytes())),
        },
    }
}

/// A complete chain from the real writer: start, `decisions` decisions (each
/// approval-gated one answered), end. Every third decision and every
/// approval is deferred, so it rides with the next receipt's group: the
/// chain mixes signed lines with lines covered by the next signed one
/// (format version 5), as a busy session's chain does.
pub fn build_chain(decisions: u64) -> Vec<u8> {
    let sink = MemorySink::default();
    let log = ReceiptLog::with_sink(
        sink.clone(),
        fixed_key(),
        session_start("tamper"),
        LogOptions {
            // Never signed alone by the writer: each deferred receipt is
            // covered by the next append's signature, the same every run.
            defer: std::time::Duration::from_secs(3600),
            ..LogOptions::default()
        },
    )
    .expect("start");
    for i in 0..decisions {
        let seq = if i % 3 == 1 {
            log.submit_deferred(decision_entry(i)).expect("defer").seq()
        } else {
            log.append(decision_entry(i)).expect("append").seq
        };
        if i % 4 == 2 {
            log.submit_deferred(Entry::Approval(ApprovalRecord {
                decision_seq: seq,
                approved: i % 8 == 2,
                approver: if i % 8 == 2 { "terminal" } else { "timeout" }.into(),
                answered_at: receipts::format_time(SystemTime::now()),
                reason: None,
            }))
            .expect("approval");
        }
    }
    log.finish().expect("finish");
    let bytes = sink.0.lock().expect("sink lock").clone();
    bytes
}

/// Whether a line carries its own signature (else the next signed line's
/// covers it).
pub fn is_signed(line: &[u8]) -> bool {
    value(line).get("sig").is_some()
}

/// The golden chain: fixed key, fixed times, so it is byte-for-byte stable.
pub fn golden_chain() -> Vec<u8> {
    golden_with_end(None)
}

/// The golden chain of a session whose supervisor died after its last
/// decision: the same receipts up to there, then the `session_end` recovery
/// wrote (format version 2, `interrupted`), a minute later.
pub fn golden_interrupted_chain() -> Vec<u8> {
    golden_with_end(Some(InterruptionCause::SupervisorDied))
}

fn golden_with_end(interrupted: Option<InterruptionCause>) -> Vec<u8> {
    let key = fixed_key();
    let signer = receipts::key_id(&key.verifying_key());
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456);
    let at = |ms: u64| receipts::format_time(t0 + Duration::from_millis(ms));
    let bodies: Vec<(String, Body)> = vec![
        (
            at(0),
            Body::SessionStart {
                public_key: hex::encode(key.verifying_key().as_bytes()),
                revocation_ids: vec!["a1b2".into(), "c3d4".into()],
                sandbox: "kvm".into(),
                capability_sha256: Some(receipts::sha256_hex(b"golden token")),
                tenant: None,
                user: None,
            },
        ),
        (at(120), decision_body(0)),
        (at(250), decision_body(1)),
        (at(400), decision_body(2)),
        (
            at(4400),
            Body::Approval(ApprovalRecord {
                decision_seq: 3,
                approved: true,
                approver: "terminal".into(),
                answered_at: at(4390),
                reason: Some("operator typed y".into()),
            }),
        ),
        (at(5000), decision_body(3)),
    ];
    let mut out = Vec::new();
    let mut prev = GENESIS_PREV.to_owned();
    let count = bodies.len() as u64 + 1;
    let mut push = |seq: u64, ts: String, body: Body, prev: &mut String| {
        let receipt = Receipt {
            v: receipts::version_of(&body),
            session: if interrupted.is_some() {
                "golden-0002".into()
            } else {
                "golden-0001".into()
            },
            seq,
            ts,
            prev: prev.clone(),
            signer: signer.clone(),
            body,
        };
        let line = receipts::sign_line(&receipt, &key).expect("sign");
        *prev = hex::encode(receipts::line_hash(&line));
        out.extend_from_slice(&line);
        out.push(b'\n');
    };
    for (seq, (ts, body)) in bodies.into_iter().enumerate() {
        push(seq as u64, ts, body, &mut prev);
    }
    let last = prev.clone();
    push(
        count - 1,
        at(if interrupted.is_some() { 65_000 } else { 6000 }),
        Body::SessionEnd {
            count,
            last,
            interrupted: interrupted.map(|cause| Interruption {
                cause,
                at_seq: count - 2,
            }),
        },
        &mut prev,
    );
    out
}

/// The queries of the golden query chain's decisions, in order: data in
/// the query, none at all, a bare `?`, percent-encoding and a key without
/// `=`, a credential's placeholder.
pub const GOLDEN_QUERIES: [Option<&str>; 5] = [
    Some("to=mallory&amount=9999"),
    None,
    Some(""),
    Some("a=%2F&b"),
    Some("key=openclaw-placeholder-maps_key-0000"),
];

/// A chain whose decision receipts record their requests' queries
/// (`action.query`), made the way the enforcing path makes them: typed
/// action and query through [`receipts::RecordedAction`] and
/// [`receipts::CanonicalDecision`]. Fixed key and times.
pub fn golden_query_chain() -> Vec<u8> {
    let key = fixed_key();
    let signer = receipts::key_id(&key.verifying_key());
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_100_000_654_321);
    let at = |ms: u64| receipts::format_time(t0 + Duration::from_millis(ms));
    let mut bodies = vec![Body::SessionStart {
        public_key: hex::encode(key.verifying_key().as_bytes()),
        revocation_ids: vec!["a1b2".into()],
        sandbox: "netns".into(),
        capability_sha256: None,
        tenant: None,
        user: None,
    }];
    let paths = ["/api/transfer", "/api/transfer", "/a", "/a", "/maps/api"];
    for (i, (query, path)) in GOLDEN_QUERIES.iter().zip(paths).enumerate() {
        let action = capabilities::Action::request(
            capabilities::ActionType::Web,
            if i == 0 { "POST" } else { "GET" },
            "example.com",
            path,
        );
        let decision = json!({"decision": "allow", "reason": "web_access", "grant": "web",
            "revocation_ids": ["a1b2"], "stage": "token"});
        let recorded = receipts::RecordedAction {
            facts: &action,
            query: *query,
        };
        let record = receipts::CanonicalDecision::new(
            &recorded,
            &capabilities::Counters::default(),
            &decision,
            None,
        )
        .expect("encode")
        .to_record()
        .expect("read back");
        bodies.push(Body::Decision(record));
    }
    let mut out = Vec::new();
    let mut prev = GENESIS_PREV.to_owned();
    let count = bodies.len() as u64 + 1;
    bodies.push(Body::SessionEnd {
        count,
        last: String::new(),
        interrupted: None,
    });
    for (seq, mut body) in bodies.into_iter().enumerate() {
        if let Body::SessionEnd { last, .. } = &mut body {
            *last = prev.clone();
        }
        let receipt = Receipt {
            v: receipts::version_of(&body),
            session: "golden-query".into(),
            seq: seq as u64,
            ts: at(seq as u64 * 100),
            prev: prev.clone(),
            signer: signer.clone(),
            body,
        };
        let line = receipts::sign_line(&receipt, &key).expect("sign");
        prev = hex::encode(receipts::line_hash(&line));
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    out
}

fn decision_body(i: u64) -> Body {
    match decision_entry(i) {
        Entry::Decision { record, .. } => Body::Decision(record),
        Entry::CanonicalDecision { .. }
        | Entry::Approval(_)
        | Entry::Usage(_)
        | Entry::BudgetWarning(_) => {
            unreachable!("decision_entry makes decisions from JSON values")
        }
    }
}

/// Splits a chain into lines without their newlines.
pub fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    let body = bytes.strip_suffix(b"\n").expect("chain ends with newline");
    body.split(|&b| b == b'\n').collect()
}

pub fn join(lines: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

pub fn value(line: &[u8]) -> Value {
    serde_json::from_slice(line).expect("json line")
}

/// An `llm` decision with this verdict (`allow`, `approval`, `block`): a
/// usage receipt may name it once it let the call out.
pub fn llm_decision_entry(verdict: &str) -> Entry {
    Entry::Decision {
        decided_at: SystemTime::now(),
        record: DecisionRecord {
            action: json!({"type": "llm", "method": "POST", "host": "api.anthropic.com",
                "path": "/v1/messages", "cost_micro_usd": 90_000}),
            counters: json!({"spent_cents": 0, "emails_sent": 0, "llm_spent_micro_usd": 0}),
            decision: json!({"decision": verdict, "reason": "llm", "grant": "llm",
                "revocation_ids": ["a1b2"]}),
            body_sha256: None,
        },
    }
}
