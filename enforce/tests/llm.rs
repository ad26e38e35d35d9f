//! LLM calls through the proxy: the built-in OpenAI-style endpoint is an
//! `llm` action, the API key is injected as a header for the granted
//! provider only (the sandbox never holds it), and the spend budget, metered
//! from the catalog's price table, refuses the call that would exceed it.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

const POLICY: &str = r#"
[llm]
providers = ["api.openai.com"]
credential = "llm_key"
budget_usd = "0.025"

[web]
allow = ["kayak.com"]
"#;

const CATALOG: &str = r#"
[[llm_price]]
model = "gpt-test"
input_usd_per_mtok = "2.50"
output_usd_per_mtok = "10"
"#;

const SECRETS: &str = r#"
[[secret]]
name = "llm_key"
value = "sk-test-secret-123"
header = "Authorization"
format = "Bearer {}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_calls_get_the_key_injected_and_stop_at_the_budget() {
    let s = Session::start(Options {
        policy: POLICY.into(),
        catalog: CATALOG.into(),
        secrets: SECRETS.into(),
        ..Options::default()
    })
    .await;
    let url = "https://api.openai.com/v1/chat/completions";
    let body =
        r#"{"model":"gpt-test","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;
    // Each call's worst case is one input token per body byte × $2.50/Mtok
    // plus 1000 output tokens × $10/Mtok ≈ $0.0102: two fit in $0.025, a
    // third does not. The mock's answer reports no usage, so each is
    // charged its worst case.
    let args = [
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "authorization: Bearer not-the-key",
        "--data-binary",
        body,
    ];
    let call = || s.curl(url, &args);
    for _ in 0..2 {
        let r = call().await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = call().await;
    assert_eq!(r.status, 403, "{r:?}");
    let seen = s.mock.seen_for("api.openai.com");
    assert_eq!(seen.len(), 2);
    for req in &seen {
        assert_eq!(req.headers["authorization"], "Bearer sk-test-secret-123");
    }
    let spent = s.ledger.committed().llm_spent_micro_usd;
    let per_call = (body.len() as u64 * 25).div_ceil(10) + 10_000;
    assert!(
        spent >= 2 * 10_000 && spent <= 2 * (per_call + 1),
        "{spent}"
    );

    // The key is not added for another host, even one the token lets the
    // agent reach.
    let r = s.curl("https://kayak.com/api/compare", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let kayak = s.mock.seen_for("kayak.com");
    assert!(kayak[0].headers.get("authorization").is_none());

    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    let verdicts: Vec<&str> = d.iter().map(|x| x.1.as_str()).collect();
    assert_eq!(verdicts, vec!["allow", "allow", "block", "allow"]);
    assert_eq!(d[0].4["type"], "llm");
    assert!(d[0].4["cost_micro_usd"].as_u64().unwrap() > 10_000);
    assert_eq!(s.rederive(&chain), 4);
    assert!(!s.receipts_text().contains("sk-test-secret-123"));
}

/// Issue 14 §6: a call the proxy cannot price (a model with no price) would
/// cost a budget nothing; under a budget it is blocked, says how to make it
/// priceable, and never reaches the provider. A call without an output
/// limit is priced: the proxy sets the limit (issue 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_call_the_catalog_cannot_price_is_blocked_under_a_budget() {
    let s = Session::start(Options {
        policy: POLICY.into(),
        catalog: CATALOG.into(),
        secrets: SECRETS.into(),
        ..Options::default()
    })
    .await;
    let url = "https://api.openai.com/v1/chat/completions";
    let session = &s;
    let post = |body: &'static str| async move {
        let args = [
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ];
        session.curl(url, &args).await
    };
    let unpriced = [
        // A model the rate card has no price for.
        r#"{"model":"gpt-unknown","max_tokens":10,"messages":[]}"#,
        // Not JSON naming a model.
        r#"{"messages":[]}"#,
    ];
    for body in unpriced {
        let r = post(body).await;
        assert_eq!(r.status, 403, "{body}: {r:?}");
    }
    let r = post(r#"{"model":"gpt-test","max_tokens":10,"messages":[]}"#).await;
    assert_eq!(r.status, 200, "{r:?}");
    // No max_tokens: priced with the limit the proxy sets, which the
    // provider receives.
    let r = post(r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen_for("api.openai.com");
    assert_eq!(seen.len(), 2);
    let sent: serde_json::Value = serde_json::from_slice(&seen[1].body).unwrap();
    // The default (4096) lowered to what the budget has left.
    let limit = sent["max_completion_tokens"].as_u64().unwrap();
    assert!(limit > 1000 && limit < 4096, "{limit}");

    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    let verdicts: Vec<&str> = d.iter().map(|x| x.1.as_str()).collect();
    assert_eq!(verdicts, vec!["block", "block", "allow", "allow"]);
    for (_, _, _, reason, action) in &d[..2] {
        assert!(reason.contains("unknown cost"), "{reason}");
        assert!(reason.contains("rate card"), "{reason}");
        assert!(action.get("cost_micro_usd").is_none_or(|c| c.is_null()));
    }
    assert!(d[3].4["cost_micro_usd"].as_u64().unwrap() >= limit * 10);
    assert_eq!(s.rederive(&chain), 4);
}
