//! Usage receipts in the chain: written by the real writer after llm
//! decisions, verified with each cost re-derived from the receipt's own rate
//! snapshot. A cost edited and re-signed (so every signature and link still
//! holds), a usage naming a decision that did not let a call out, or a
//! second usage for one call, fails verification at its line. Budget
//! warnings follow the usage that reached them, each level once, with a
//! spend the usage receipts before them do not exceed.

mod support;

use std::time::SystemTime;

use receipts::{
    cost_micro_usd, sign_line, ApprovalRecord, Body, BudgetWarningRecord, ChainError, Entry,
    LogOptions, ModelPrice, RateSnapshot, Receipt, ReceiptLog, UnverifiedChain, UsageRecord,
    UsageTokens, BUDGET_WARNING_VERSION,
};
use support::*;

fn verify(bytes: &[u8]) -> Result<receipts::VerifiedChain, ChainError> {
    UnverifiedChain::from_bytes(bytes.to_vec()).verify(&fixed_key().verifying_key())
}

fn sonnet() -> RateSnapshot {
    RateSnapshot {
        card_sha256: receipts::sha256_hex(b"rate card"),
        price: ModelPrice {
            model: "claude-sonnet-4".into(),
            input: 3_000_000,
            cached_input: 300_000,
            cache_write_5m: 3_750_000,
            cache_write_1h: 6_000_000,
            output: 15_000_000,
            per_request: 0,
        },
    }
}

fn usage(decision_seq: u64, tokens: UsageTokens) -> UsageRecord {
    let rates = sonnet();
    UsageRecord {
        decision_seq,
        provider: "api.anthropic.com".into(),
        api: "anthropic.messages".into(),
        model: "claude-sonnet-4-20250514".into(),
        response_id: Some(format!("msg_{decision_seq}")),
        cost_micro_usd: cost_micro_usd(&tokens, &rates.price),
        tokens,
        rates,
        reserved_micro_usd: 90_000,
        estimated: false,
    }
}

fn tokens(input: u64, cached: u64, write: u64, output: u64) -> UsageTokens {
    UsageTokens {
        input,
        cached_input: cached,
        cache_write_5m: write,
        cache_write_1h: 0,
        output,
        reasoning: 0,
    }
}

/// start; allowed llm call + usage; approval-gated call approved + usage;
/// a cut stream (estimated: charged its reservation); end.
fn metered_chain() -> Vec<u8> {
    let sink = MemorySink::default();
    let log = ReceiptLog::with_sink(
        sink.clone(),
        fixed_key(),
        session_start("metered"),
        LogOptions::default(),
    )
    .expect("start");
    let a = log.append(llm_decision_entry("allow")).expect("decision");
    log.append(Entry::Usage(usage(a.seq, tokens(1200, 3000, 500, 800))))
        .expect("usage");
    let b = log
        .append(llm_decision_entry("approval"))
        .expect("decision");
    log.append(Entry::Approval(ApprovalRecord {
        decision_seq: b.seq,
        approved: true,
        approver: "terminal".into(),
        answered_at: receipts::format_time(SystemTime::now()),
        reason: None,
    }))
    .expect("approval");
    log.append(Entry::Usage(usage(b.seq, tokens(10, 0, 0, 5))))
        .expect("usage");
    let c = log.append(llm_decision_entry("allow")).expect("decision");
    let mut cut = usage(c.seq, UsageTokens::default());
    cut.estimated = true;
    cut.response_id = None;
    cut.cost_micro_usd = cut.reserved_micro_usd;
    log.append(Entry::Usage(cut)).expect("usage");
    log.finish().expect("finish");
    let bytes = sink.0.lock().expect("sink").clone();
    bytes
}

/// The chain with line `line` (1-based) replaced by `edit` of its receipt,
/// and every later line re-linked and re-signed with the chain's own key, so
/// only what `edit` changed can fail.
fn resigned(bytes: &[u8], line: usize, edit: impl FnOnce(&mut Receipt)) -> Vec<u8> {
    let key = fixed_key();
    let mut receipts: Vec<Receipt> = lines(bytes)
        .iter()
        .map(|l| serde_json::from_slice(l).expect("receipt"))
        .collect();
    edit(&mut receipts[line - 1]);
    let mut out = Vec::new();
    let mut prev = receipts::GENESIS_PREV.to_owned();
    for r in &mut receipts {
        r.prev = prev.clone();
        if let Body::SessionEnd { last, .. } = &mut r.body {
            *last = prev.clone();
        }
        let signed = sign_line(r, &key).expect("sign");
        prev = hex::encode(receipts::line_hash(&signed));
        out.extend_from_slice(&signed);
        out.push(b'\n');
    }
    out
}

fn usage_mut(r: &mut Receipt) -> &mut UsageRecord {
    match &mut r.body {
        Body::Usage(u) => u,
        other => panic!("not a usage receipt: {other:?}"),
    }
}

#[test]
fn a_metered_chain_verifies_and_its_costs_are_the_formulas() {
    let bytes = metered_chain();
    let chain = verify(&bytes).expect("valid");
    let costs: Vec<(u64, bool)> = chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            Body::Usage(u) => Some((u.cost_micro_usd, u.estimated)),
            _ => None,
        })
        .collect();
    // 1200 × 3 + 3000 × 0.3 + 500 × 3.75 + 800 × 15 = 3600 + 900 + 1875 + 12000.
    assert_eq!(costs, vec![(18_375, false), (105, false), (90_000, true)]);
    // The re-signing helper changes nothing by itself.
    assert_eq!(resigned(&bytes, 3, |_| {}), bytes);
}

#[test]
fn an_edited_cost_fails_at_its_line_even_when_re_signed() {
    let bytes = metered_chain();
    // Line 3 is the first usage receipt.
    let cheaper = resigned(&bytes, 3, |r| usage_mut(r).cost_micro_usd = 18_374);
    let err = verify(&cheaper).expect_err("edited cost");
    assert_eq!(
        err,
        ChainError::UsageCostMismatch {
            line: 3,
            recorded: 18_374,
            derived: 18_375,
            basis: "its tokens cost at its recorded prices",
        }
    );
    assert!(
        err.to_string()
            .starts_with("line 3: usage cost is 18374 micro-USD"),
        "{err}"
    );
    // Tokens edited instead (fewer output tokens, same cost): caught too.
    let fewer = resigned(&bytes, 3, |r| usage_mut(r).tokens.output = 700);
    assert!(matches!(
        verify(&fewer),
        Err(ChainError::UsageCostMismatch { line: 3, .. })
    ));
    // The snapshot's price edited: caught.
    let price = resigned(&bytes, 6, |r| usage_mut(r).rates.price.output = 1);
    assert!(matches!(
        verify(&price),
        Err(ChainError::UsageCostMismatch { line: 6, .. })
    ));
    // An estimated call must cost exactly its reservation.
    let estimated = resigned(&bytes, 8, |r| usage_mut(r).cost_micro_usd = 1);
    assert_eq!(
        verify(&estimated).expect_err("estimated"),
        ChainError::UsageCostMismatch {
            line: 8,
            recorded: 1,
            derived: 90_000,
            basis: "this estimated call reserved",
        }
    );
    // Edited without re-signing: refused at the same line.
    let text = String::from_utf8(bytes.clone()).expect("utf8");
    let edited = text.replacen("\"cost_micro_usd\":18375", "\"cost_micro_usd\":18374", 1);
    assert_ne!(edited, text);
    assert_eq!(
        verify(edited.as_bytes()).expect_err("unsigned edit").line(),
        3
    );
}

#[test]
fn usage_must_name_an_earlier_call_that_was_let_out_and_only_once() {
    let bytes = metered_chain();
    // Line 2 is the first decision (seq 1), line 4 the approval-gated one (seq 3).
    for (decision_seq, why) in [
        (0, "session_start"),
        (3 + 100, "no such receipt"),
        (2, "a usage receipt, not a decision"),
        (1 + 5, "a later decision"),
    ] {
        let bad = resigned(&bytes, 3, |r| usage_mut(r).decision_seq = decision_seq);
        assert_eq!(
            verify(&bad).expect_err(why),
            ChainError::BadUsageReference {
                line: 3,
                decision_seq
            },
            "{why}"
        );
    }
    // The second call's usage names the first call again: charged twice.
    let twice = resigned(&bytes, 6, |r| usage_mut(r).decision_seq = 1);
    assert_eq!(
        verify(&twice).expect_err("twice"),
        ChainError::BadUsageReference {
            line: 6,
            decision_seq: 1
        }
    );
}

#[test]
fn a_blocked_or_denied_call_has_no_usage() {
    for (verdict, approved) in [
        ("block", None),
        ("approval", Some(false)),
        ("approval", None),
    ] {
        let sink = MemorySink::default();
        let log = ReceiptLog::with_sink(
            sink.clone(),
            fixed_key(),
            session_start("refused"),
            LogOptions::default(),
        )
        .expect("start");
        let d = log.append(llm_decision_entry(verdict)).expect("decision");
        if let Some(approved) = approved {
            log.append(Entry::Approval(ApprovalRecord {
                decision_seq: d.seq,
                approved,
                approver: "timeout".into(),
                answered_at: receipts::format_time(SystemTime::now()),
                reason: None,
            }))
            .expect("approval");
        }
        let line = log
            .append(Entry::Usage(usage(d.seq, tokens(1, 0, 0, 1))))
            .expect("usage")
            .seq as usize
            + 1;
        log.finish().expect("finish");
        let bytes = sink.0.lock().expect("sink").clone();
        assert_eq!(
            verify(&bytes).expect_err(verdict),
            ChainError::BadUsageReference {
                line,
                decision_seq: d.seq
            },
            "{verdict} {approved:?}"
        );
    }
    // A usage after a web decision: not an llm call.
    let sink = MemorySink::default();
    let log = ReceiptLog::with_sink(
        sink.clone(),
        fixed_key(),
        session_start("web"),
        LogOptions::default(),
    )
    .expect("start");
    let d = log.append(decision_entry(0)).expect("web decision");
    log.append(Entry::Usage(usage(d.seq, tokens(1, 0, 0, 1))))
        .expect("usage");
    log.finish().expect("finish");
    let bytes = sink.0.lock().expect("sink").clone();
    assert!(matches!(
        verify(&bytes),
        Err(ChainError::BadUsageReference { line: 3, .. })
    ));
}

#[test]
fn session_labels_are_recorded_and_unlabelled_chains_still_verify() {
    let mut start = session_start("labelled");
    start.tenant = Some("acme".into());
    start.user = Some("alice".into());
    let sink = MemorySink::default();
    let log = ReceiptLog::with_sink(sink.clone(), fixed_key(), start, LogOptions::default())
        .expect("start");
    log.finish().expect("finish");
    let bytes = sink.0.lock().expect("sink").clone();
    let chain = verify(&bytes).expect("valid");
    match &chain.start().body {
        Body::SessionStart { tenant, user, .. } => {
            assert_eq!(
                (tenant.as_deref(), user.as_deref()),
                (Some("acme"), Some("alice"))
            );
        }
        other => panic!("{other:?}"),
    }
    let text = String::from_utf8(bytes).expect("utf8");
    assert!(text.contains("\"tenant\":\"acme\"") && text.contains("\"user\":\"alice\""));
    // A chain written before labels existed (the golden fixture) verifies
    // and has none.
    let golden = verify(&golden_chain()).expect("golden");
    assert!(matches!(
        &golden.start().body,
        Body::SessionStart {
            tenant: None,
            user: None,
            ..
        }
    ));
}

/// start; llm call + usage (18375); llm call + usage (105); warnings at 50 %
/// and 80 % of a 20000 micro-USD budget, both reached by the second usage
/// (seq 4); end.
fn warned_chain() -> Vec<u8> {
    let sink = MemorySink::default();
    let log = ReceiptLog::with_sink(
        sink.clone(),
        fixed_key(),
        session_start("warned"),
        LogOptions::default(),
    )
    .expect("start");
    let a = log.append(llm_decision_entry("allow")).expect("decision");
    log.append(Entry::Usage(usage(a.seq, tokens(1200, 3000, 500, 800))))
        .expect("usage");
    let b = log.append(llm_decision_entry("allow")).expect("decision");
    let u = log
        .append(Entry::Usage(usage(b.seq, tokens(10, 0, 0, 5))))
        .expect("usage");
    for percent in [50, 80] {
        log.append(Entry::BudgetWarning(BudgetWarningRecord {
            usage_seq: u.seq,
            percent,
            spent_micro_usd: 18_480,
            budget_micro_usd: 20_000,
        }))
        .expect("warning");
    }
    log.finish().expect("finish");
    let bytes = sink.0.lock().expect("sink").clone();
    bytes
}

fn warning_mut(r: &mut Receipt) -> &mut BudgetWarningRecord {
    match &mut r.body {
        Body::BudgetWarning(w) => w,
        other => panic!("not a budget warning: {other:?}"),
    }
}

#[test]
fn budget_warnings_verify_after_the_usage_that_reached_them() {
    let bytes = warned_chain();
    let chain = verify(&bytes).expect("valid");
    let warnings: Vec<(u64, BudgetWarningRecord)> = chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            Body::BudgetWarning(w) => Some((r.receipt.v.into(), w.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 2);
    for ((v, w), percent) in warnings.iter().zip([50, 80]) {
        assert_eq!(*v, u64::from(BUDGET_WARNING_VERSION));
        assert_eq!((w.usage_seq, w.percent), (4, percent));
    }
    let line6 = value(lines(&bytes)[5]);
    assert_eq!(line6["kind"], "budget_warning");
    assert_eq!(line6["v"], 4);
    // Chains without warnings are unchanged: still version 3 at most.
    let metered = metered_chain();
    assert!(lines(&metered)
        .iter()
        .all(|l| value(l)["v"].as_u64() <= Some(3)));
    verify(&metered).expect("metered chain");
    assert_eq!(resigned(&bytes, 6, |_| {}), bytes);
}

#[test]
fn an_edited_budget_warning_fails_at_its_line_even_when_re_signed() {
    let bytes = warned_chain();
    // Lines 6 and 7 are the warnings (seq 5 and 6); line 5 the usage they name.
    for (usage_seq, why) in [
        (3, "a decision"),
        (0, "session_start"),
        (6, "itself, later"),
    ] {
        let bad = resigned(&bytes, 6, |r| warning_mut(r).usage_seq = usage_seq);
        assert_eq!(
            verify(&bad).expect_err(why),
            ChainError::BadWarningReference { line: 6, usage_seq },
            "{why}"
        );
    }
    // Naming the first usage instead is fine (the spend covers it).
    verify(&resigned(&bytes, 6, |r| warning_mut(r).usage_seq = 2)).expect("earlier usage");
    // A spend below what the usage receipts cost: caught.
    let lower = resigned(&bytes, 7, |r| warning_mut(r).spent_micro_usd = 18_479);
    let err = verify(&lower).expect_err("lower spend");
    assert_eq!(
        err,
        ChainError::WarningSpentMismatch {
            line: 7,
            usage_seq: 4,
            recorded: 18_479,
            at_least: 18_480,
        }
    );
    assert!(err.to_string().contains("alone cost 18480"), "{err}");
    // A spend above it (calls in flight) is the normal case.
    verify(&resigned(&bytes, 7, |r| {
        warning_mut(r).spent_micro_usd = 19_000
    }))
    .expect("more");
    let malformed = |line: usize, edit: &dyn Fn(&mut BudgetWarningRecord), why: &str| {
        let bad = resigned(&bytes, line, |r| edit(warning_mut(r)));
        match verify(&bad) {
            Err(ChainError::Malformed { line: l, why: w }) => {
                assert_eq!(l, line);
                assert!(w.contains(why), "{w}");
            }
            other => panic!("{why}: {other:?}"),
        }
    };
    malformed(6, &|w| w.percent = 0, "is not 1 to 100");
    malformed(7, &|w| w.percent = 101, "is not 1 to 100");
    malformed(7, &|w| w.percent = 50, "a second budget_warning at 50 %");
    malformed(7, &|w| w.budget_micro_usd = 0, "zero budget");
    // 80 % of 20000 is 16000: a warning at 80 % with less spent is false.
    malformed(
        7,
        &|w| w.budget_micro_usd = 23_101,
        "budget_warning at 80 % but 18480 of 23101",
    );
    // Written with the usage version: refused.
    let old = resigned(&bytes, 6, |r| r.v = 3);
    assert_eq!(
        verify(&old).expect_err("version"),
        ChainError::VersionForKind {
            line: 6,
            what: "budget_warning",
            expected: 4,
            found: 3,
        }
    );
}
