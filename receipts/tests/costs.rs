//! Golden files for the cost arithmetic of each provider shape (cached
//! input, cache writes, reasoning, per-request fees), and `usage` receipts
//! written, encoded and verified as part of a chain.
//!
//! Each `fixtures/costs/*.json` holds the provider's own `usage` object, the
//! tokens it normalizes to (the proxy's readers are checked against the same
//! files), the prices, and the cost worked out by hand.

mod support;

use std::path::PathBuf;

use receipts::{
    cost_micro_usd, Body, ChainError, Entry, LogOptions, ModelPrice, RateSnapshot, ReceiptLog,
    UnverifiedChain, UsageRecord, UsageTokens, USAGE_VERSION,
};
use serde::Deserialize;
use support::*;

#[derive(Deserialize)]
struct CostCase {
    api: String,
    tokens: UsageTokens,
    price: ModelPrice,
    cost_micro_usd: u64,
}

fn cases() -> Vec<(String, CostCase)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/costs");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("cost fixtures") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read fixture");
            let case: CostCase =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path.display().to_string(), case));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_golden_cost_matches_the_formula() {
    let cases = cases();
    for api in [
        "openai.chat",
        "openai.responses",
        "openai.embeddings",
        "anthropic.messages",
    ] {
        assert!(
            cases.iter().any(|(_, c)| c.api == api),
            "no cost fixture for {api}"
        );
    }
    // Every priced kind appears in some fixture with a non-zero count.
    let any = |f: fn(&UsageTokens) -> u64| cases.iter().any(|(_, c)| f(&c.tokens) > 0);
    assert!(any(|t| t.cached_input) && any(|t| t.cache_write_5m) && any(|t| t.cache_write_1h));
    assert!(any(|t| t.reasoning) && cases.iter().any(|(_, c)| c.price.per_request > 0));
    for (name, case) in &cases {
        assert_eq!(
            cost_micro_usd(&case.tokens, &case.price),
            case.cost_micro_usd,
            "{name}"
        );
    }
}

fn usage(decision_seq: u64, estimated: bool) -> UsageRecord {
    let tokens = UsageTokens {
        input: 87,
        cached_input: 1920,
        output: 300,
        reasoning: 192,
        ..UsageTokens::default()
    };
    let price = ModelPrice {
        model: "gpt-4o".into(),
        input: 2_500_000,
        cached_input: 1_250_000,
        output: 10_000_000,
        ..ModelPrice::default()
    };
    UsageRecord {
        decision_seq,
        provider: "api.openai.com".into(),
        api: "openai.chat".into(),
        model: "gpt-4o-2024-08-06".into(),
        response_id: Some("chatcmpl-abc".into()),
        cost_micro_usd: if estimated {
            40_000
        } else {
            cost_micro_usd(&tokens, &price)
        },
        tokens: if estimated {
            UsageTokens::default()
        } else {
            tokens
        },
        rates: RateSnapshot {
            card_sha256: receipts::sha256_hex(b"rates.toml"),
            price,
        },
        reserved_micro_usd: 40_000,
        estimated,
    }
}

#[test]
fn usage_receipts_are_version_3_lines_that_verify_and_read_back() {
    let sink = MemorySink::default();
    let log = ReceiptLog::with_sink(
        sink.clone(),
        fixed_key(),
        session_start("usage"),
        LogOptions::default(),
    )
    .expect("start");
    // One usage per call: the verifier refuses a second usage for a decision.
    let mut records = Vec::new();
    for estimated in [false, true] {
        let decision = log.append(llm_decision_entry("allow")).expect("decision");
        let record = usage(decision.seq, estimated);
        log.append(Entry::Usage(record.clone())).expect("usage");
        records.push(record);
    }
    log.finish().expect("finish");
    let bytes = sink.0.lock().expect("sink lock").clone();
    let chain = UnverifiedChain::from_bytes(bytes.clone())
        .verify(&fixed_key().verifying_key())
        .expect("a chain with usage receipts verifies");
    let read: Vec<&UsageRecord> = chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            Body::Usage(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(read, records.iter().collect::<Vec<_>>());
    let texts: Vec<&str> = std::str::from_utf8(&bytes)
        .expect("utf8")
        .lines()
        .filter(|l| l.contains("\"kind\":\"usage\""))
        .collect();
    assert_eq!(texts.len(), 2);
    for text in &texts {
        assert!(text.contains(&format!("\"v\":{USAGE_VERSION}")), "{text}");
        assert!(text.contains("\"tokens\":{\"cache_write_1h\":0,"), "{text}");
    }
}

#[test]
fn a_usage_receipt_claiming_version_1_is_refused_at_its_line() {
    let key = fixed_key();
    let sink = MemorySink::default();
    let log = ReceiptLog::with_sink(
        sink.clone(),
        key.clone(),
        session_start("usage-v1"),
        LogOptions::default(),
    )
    .expect("start");
    let decision = log.append(llm_decision_entry("allow")).expect("decision");
    log.append(Entry::Usage(usage(decision.seq, false)))
        .expect("usage");
    log.finish().expect("finish");
    let bytes = sink.0.lock().expect("sink lock").clone();
    // Re-sign the usage line as version 1 with the right key and re-chain
    // the end: only the version is wrong.
    let mut parsed: Vec<receipts::Receipt> = std::str::from_utf8(&bytes)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("receipt"))
        .collect();
    parsed[2].v = 1;
    let mut out = Vec::new();
    let mut prev = receipts::GENESIS_PREV.to_owned();
    let last = parsed.len() - 1;
    for (i, r) in parsed.iter_mut().enumerate() {
        r.prev = prev.clone();
        if i == last {
            if let Body::SessionEnd { last, .. } = &mut r.body {
                *last = prev.clone();
            }
        }
        let line = receipts::sign_line(r, &key).expect("sign");
        prev = hex::encode(receipts::line_hash(&line));
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    let err = UnverifiedChain::from_bytes(out)
        .verify(&key.verifying_key())
        .expect_err("a usage line must be version 3");
    assert_eq!(
        err,
        ChainError::VersionForKind {
            line: 3,
            what: "usage",
            expected: USAGE_VERSION,
            found: 1,
        }
    );
}
