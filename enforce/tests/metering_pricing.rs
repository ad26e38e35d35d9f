//! What an LLM call is priced at: the model that answered, its service
//! tier, its long-context rate, input it sends by reference, and tool uses
//! the provider bills. A mock provider over real TLS answers with the usage
//! a test asks for (`x-usage`: the usage object, `x-model`: the model the
//! answer names, `x-delay-ms`: how long it thinks).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use serde_json::json;
use support::usage_provider::*;
use support::*;

async fn session(policy: &str) -> Session {
    let upstream = provider().await;
    Session::start(Options {
        policy: policy.into(),
        catalog: LLM_CATALOG.into(),
        secrets: String::new(),
        upstream: Some(upstream),
        ..Options::default()
    })
    .await
}

/// The provider says which model answered (an Azure deployment path picks
/// it, OpenRouter's `models` list may fall back): the call is charged at
/// the dearer of that model and the one the body named, never the cheaper;
/// an answering model the card does not price leaves the call at its
/// reservation, marked estimated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_charged_at_the_dearer_of_the_model_asked_for_and_the_model_that_answered() {
    let usage = usage_header(json!({"prompt_tokens": 1_000, "completion_tokens": 1_000}));
    let s = session(BUDGET_POLICY).await;
    let r = post(
        &s,
        "https://api.openai.com/openai/deployments/gpt-dear/chat/completions",
        r#"{"model":"gpt-test","max_tokens":1000,"messages":[]}"#,
        &[usage.clone(), "x-model: gpt-dear".to_owned()],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""model":"gpt-dear""#), "{}", r.body);
    let u = usages(&s.finish_and_verify());
    assert_eq!(u.len(), 1);
    // gpt-dear: 1000 × 100 + 1000 × 400 per million = 500_000 micro-USD.
    assert_eq!(
        (
            u[0].cost_micro_usd,
            u[0].estimated,
            u[0].rates.price.model.as_str()
        ),
        (500_000, false, "gpt-dear"),
        "{:?}",
        u[0]
    );

    let s = session(TENANT_POLICY).await;
    // A cheaper answering model does not lower the charge.
    let r = post(
        &s,
        "https://api.openai.com/v1/chat/completions",
        r#"{"model":"gpt-dear","max_tokens":1000,"messages":[]}"#,
        &[usage.clone(), "x-model: gpt-test".to_owned()],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // An answering model nothing prices: the reservation, estimated.
    let r = post(
        &s,
        "https://api.openai.com/v1/chat/completions",
        r#"{"model":"gpt-test","max_tokens":1000,"messages":[]}"#,
        &[usage, "x-model: gpt-unpriced-xl".to_owned()],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let u = usages(&s.finish_and_verify());
    assert_eq!(u.len(), 2);
    assert_eq!((u[0].cost_micro_usd, u[0].estimated), (500_000, false));
    assert!(u[1].estimated, "{:?}", u[1]);
    assert_eq!(u[1].cost_micro_usd, u[1].reserved_micro_usd);
    assert!(u[1].reserved_micro_usd > 0);
}

/// Input the body only points at (`previous_response_id`, a conversation,
/// a file id, an image URL) is billed in full: such a call is reserved for
/// the model's whole context window, so concurrent calls cannot together
/// spend past the budget; where the card states no window it is refused,
/// saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_with_input_by_reference_reserve_the_context_window_or_are_refused() {
    let s = Arc::new(session(BUDGET_POLICY).await);
    // Each call: the stored conversation fills gpt-4o's 128k window, at
    // 2.50 per million: 0.32 USD; the reservation is that plus 10 output
    // (at the default tier it names: with none, the project's default may
    // be priority, reserved at 4.25 per million).
    let usage = usage_header(json!({"input_tokens": 128_000, "output_tokens": 10}));
    let mut calls = Vec::new();
    for _ in 0..4 {
        let (s, usage) = (s.clone(), usage.clone());
        calls.push(tokio::spawn(async move {
            post(
                &s,
                "https://api.openai.com/v1/responses",
                r#"{"model":"gpt-4o","service_tier":"default","max_output_tokens":10,"previous_response_id":"resp_long","input":"go on"}"#,
                &[usage, "x-delay-ms: 1500".to_owned()],
            )
            .await
        }));
    }
    let mut ok = 0;
    for c in calls {
        let r = c.await.unwrap();
        ok += usize::from(r.status == 200);
    }
    let spent = s.ledger.committed().llm_spent_micro_usd;
    assert_eq!(ok, 3, "three windows of 320_100 fit in 1.00 USD");
    assert_eq!(spent, 3 * 320_100);

    // gpt-test's price has no context window: refused, saying why.
    let r = post(
        &s,
        "https://api.openai.com/v1/chat/completions",
        r#"{"model":"gpt-test","max_tokens":10,"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    let why = r.blocked().unwrap();
    assert!(
        why.contains("image URL") && why.contains("context_window"),
        "{why}"
    );
}

/// OpenAI's `"service_tier": "priority"` costs more (gpt-4o: 4.25 / 17
/// USD per million instead of 2.50 / 10): it is reserved and settled at
/// the priority prices; a tier the card cannot price is refused under a
/// budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_tier_call_is_reserved_and_charged_at_the_priority_rate() {
    let s = session(BUDGET_POLICY).await;
    let usage = usage_header(json!({"prompt_tokens": 50, "completion_tokens": 10_000}));
    let r = post(
        &s,
        "https://api.openai.com/v1/chat/completions",
        r#"{"model":"gpt-4o","service_tier":"priority","max_completion_tokens":10000,"messages":[]}"#,
        &[usage],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains(r#""service_tier":"priority""#),
        "{}",
        r.body
    );
    let r = post(
        &s,
        "https://api.openai.com/v1/chat/completions",
        r#"{"model":"gpt-4o","service_tier":"scale","max_completion_tokens":10,"messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.blocked().unwrap().contains("\"scale\""), "{r:?}");
    let u = usages(&s.finish_and_verify());
    assert_eq!(u.len(), 1);
    // 50 × 4.25 + 10000 × 17 per million, rounded up: 170_213 micro-USD.
    assert_eq!(
        (
            u[0].cost_micro_usd,
            u[0].estimated,
            u[0].rates.price.model.as_str()
        ),
        (170_213, false, "gpt-4o priority"),
        "{:?}",
        u[0]
    );
    // The reservation: the body's 88 bytes and 10000 output, at priority.
    assert_eq!(u[0].reserved_micro_usd, 170_374);
}

/// Claude Sonnet 4 / 4.5 bill a request whose input passes 200k tokens at
/// 6 / 22.50 USD per million (not 3 / 15), output included; at or below
/// it, the base prices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_context_call_is_priced_at_the_long_context_rate() {
    let s = session(TENANT_POLICY).await;
    for input in [300_000, 150_000] {
        let usage = usage_header(json!({"input_tokens": input, "output_tokens": 1_000}));
        let r = post(
            &s,
            "https://api.anthropic.com/v1/messages",
            r#"{"model":"claude-sonnet-4-5","max_tokens":1000,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"file","file_id":"file_big"}}]}]}"#,
            &[usage, "anthropic-beta: context-1m-2025-08-07,files-api-2025-04-14".to_owned()],
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let u = usages(&s.finish_and_verify());
    assert_eq!(u.len(), 2);
    // 300k × 6 + 1k × 22.50 per million = 1_822_500 micro-USD.
    assert_eq!(
        (
            u[0].cost_micro_usd,
            u[0].estimated,
            u[0].rates.price.model.as_str()
        ),
        (
            1_822_500,
            false,
            "claude-sonnet-4-5 above 200000 input tokens"
        )
    );
    // 150k × 3 + 1k × 15 per million = 465_000 micro-USD.
    assert_eq!((u[1].cost_micro_usd, u[1].estimated), (465_000, false));
    // Reserved for the 1M window at the long-context cache-write rate.
    assert!(u[0].reserved_micro_usd >= 12_000_000, "{:?}", u[0]);
}

/// Tools the provider runs (Anthropic's web search, 10 USD per 1000 uses,
/// its results billed as input) cannot be bounded before the call: under a
/// budget a request offering one is refused, saying so; a response that
/// reports such uses anyway is charged its reservation, marked estimated,
/// not its tokens alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_run_tools_are_refused_under_a_budget_and_reported_uses_charge_the_reservation() {
    let s = session(BUDGET_POLICY).await;
    let usage = usage_header(json!({"input_tokens": 100, "output_tokens": 10,
        "server_tool_use": {"web_search_requests": 20}}));
    let r = post(
        &s,
        "https://api.anthropic.com/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":50,"messages":[],
            "tools":[{"type":"web_search_20250305","name":"web_search","max_uses":20}]}"#,
        std::slice::from_ref(&usage),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.blocked().unwrap().contains("web_search_20250305"),
        "{r:?}"
    );
    // A client tool (bash) is the client's to run: it goes.
    let r = post(
        &s,
        "https://api.anthropic.com/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":50,"messages":[],
            "tools":[{"type":"bash_20250124","name":"bash"}]}"#,
        &[usage],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let u = usages(&s.finish_and_verify());
    assert_eq!(u.len(), 1);
    assert!(u[0].estimated, "20 web searches reported: {:?}", u[0]);
    assert_eq!(u[0].cost_micro_usd, u[0].reserved_micro_usd);
}

/// A project whose default tier is priority has calls that ask for no tier
/// (or `auto`) served, and billed, at priority prices; the response names
/// the tier (`"service_tier": "priority"`, top level in a JSON answer, in
/// each Chat chunk, in `response.completed`). Such a call is charged the
/// priority prices, streamed or not, and reserved for them beforehand; a
/// model the card has no priority price for is charged its reservation,
/// marked estimated; a call the response says was served at the default
/// tier is charged standard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_served_at_priority_without_asking_is_charged_priority_prices() {
    let s = session(TENANT_POLICY).await;
    let chat = usage_header(json!({"prompt_tokens": 50, "completion_tokens": 10_000}));
    let responses = usage_header(json!({"input_tokens": 50, "output_tokens": 10_000}));
    let priority = "x-service-tier: priority".to_owned();
    for (url, body, usage) in [
        (
            "https://api.openai.com/v1/chat/completions",
            r#"{"model":"gpt-4o","max_completion_tokens":10000,"messages":[]}"#,
            &chat,
        ),
        (
            "https://api.openai.com/v1/chat/completions",
            r#"{"model":"gpt-4o","service_tier":"auto","stream":true,"max_completion_tokens":10000,"messages":[]}"#,
            &chat,
        ),
        (
            "https://api.openai.com/v1/responses",
            r#"{"model":"gpt-4o","max_output_tokens":10000,"input":"hi"}"#,
            &responses,
        ),
        (
            "https://api.openai.com/v1/responses",
            r#"{"model":"gpt-4o","stream":true,"max_output_tokens":10000,"input":"hi"}"#,
            &responses,
        ),
    ] {
        let r = post(&s, url, body, &[usage.clone(), priority.clone()]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body.contains(r#""service_tier":"priority""#),
            "{}",
            r.body
        );
    }
    // o1 has no priority price on the card.
    let r = post(
        &s,
        "https://api.openai.com/v1/chat/completions",
        r#"{"model":"o1","max_completion_tokens":100,"messages":[]}"#,
        &[chat.clone(), priority.clone()],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // Served at the default tier: standard.
    let r = post(
        &s,
        "https://api.openai.com/v1/chat/completions",
        r#"{"model":"gpt-4o","max_completion_tokens":10000,"messages":[]}"#,
        &[chat.clone(), "x-service-tier: default".to_owned()],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    let u = usages(&s.finish_and_verify());
    assert_eq!(u.len(), 6);
    for (i, u) in u[..4].iter().enumerate() {
        // 50 × 4.25 + 10000 × 17 per million, rounded up.
        assert_eq!(
            (u.cost_micro_usd, u.estimated, u.rates.price.model.as_str()),
            (170_213, false, "gpt-4o priority"),
            "call {i}: {u:?}"
        );
        // Reserved at priority prices: 10000 output at 17 is 170_000
        // (at the standard 10, 100_000 and the body's bytes).
        assert!(u.reserved_micro_usd > 170_000, "call {i}: {u:?}");
    }
    assert!(u[4].estimated, "{:?}", u[4]);
    assert_eq!(u[4].cost_micro_usd, u[4].reserved_micro_usd);
    assert!(u[4].reserved_micro_usd > 0);
    // 50 × 2.50 + 10000 × 10 per million.
    assert_eq!(
        (
            u[5].cost_micro_usd,
            u[5].estimated,
            u[5].rates.price.model.as_str()
        ),
        (100_125, false, "gpt-4o"),
        "{:?}",
        u[5]
    );
}

/// Anthropic serves a request that names no tier (or `auto`) from an
/// organization's Priority Tier capacity when it has some, and says so in
/// `usage.service_tier` (`message_start`'s when streamed). Such a call is
/// charged the card's priority prices (cache writes at the tier's own),
/// streamed or not, and reserved for them beforehand; one served at
/// `standard` is charged standard; a model the card has no priority price
/// for is charged its reservation, marked estimated; `standard_only` is
/// reserved at standard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_call_served_at_priority_is_charged_priority_prices() {
    let upstream = provider().await;
    let s = Session::start(Options {
        policy: TENANT_POLICY.into(),
        catalog: LLM_CATALOG.into(),
        secrets: String::new(),
        upstream: Some(upstream),
        rates: Some(ANTHROPIC_PRIORITY_RATES.into()),
        ..Options::default()
    })
    .await;
    let usage = usage_header(
        json!({"input_tokens": 50, "cache_creation_input_tokens": 1_000,
        "output_tokens": 10_000}),
    );
    let url = "https://api.anthropic.com/v1/messages";
    let haiku = r#"{"model":"claude-haiku-4-5","max_tokens":10000,"messages":[]}"#;
    let streamed = r#"{"model":"claude-haiku-4-5","stream":true,"max_tokens":10000,"messages":[]}"#;
    let tier = |t: &str| format!("x-service-tier: {t}");
    for (body, served) in [
        (haiku, "priority"),
        (streamed, "priority"),
        (streamed, "standard"),
        (
            r#"{"model":"claude-sonnet-4","max_tokens":100,"messages":[]}"#,
            "priority",
        ),
        (
            r#"{"model":"claude-haiku-4-5","service_tier":"standard_only","max_tokens":10000,"messages":[]}"#,
            "standard",
        ),
    ] {
        let r = post(&s, url, body, &[usage.clone(), tier(served)]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body.contains(&format!(r#""service_tier":"{served}""#)),
            "{}",
            r.body
        );
    }
    let u = usages(&s.finish_and_verify());
    assert_eq!(u.len(), 5);
    for (i, u) in u[..2].iter().enumerate() {
        // 50 × 2.00 + 1000 × 2.50 (5-minute writes) + 10000 × 10 per million.
        assert_eq!(
            (u.cost_micro_usd, u.estimated, u.rates.price.model.as_str()),
            (102_600, false, "claude-haiku-4-5 priority"),
            "call {i}: {u:?}"
        );
        // Reserved at priority prices: 10000 output at 10 is 100_000.
        assert!(u.reserved_micro_usd > 100_000, "call {i}: {u:?}");
    }
    // 50 × 1.00 + 1000 × 1.25 + 10000 × 5 per million.
    assert_eq!(
        (
            u[2].cost_micro_usd,
            u[2].estimated,
            u[2].rates.price.model.as_str()
        ),
        (51_300, false, "claude-haiku-4-5"),
        "{:?}",
        u[2]
    );
    assert!(u[3].estimated, "{:?}", u[3]);
    assert_eq!(u[3].cost_micro_usd, u[3].reserved_micro_usd);
    assert!(u[3].reserved_micro_usd > 0);
    // standard_only: reserved at standard (10000 output at 5 and the body).
    assert!(u[4].reserved_micro_usd < 100_000, "{:?}", u[4]);
    assert_eq!((u[4].cost_micro_usd, u[4].estimated), (51_300, false));
}

/// The built-in Claude Haiku 4.5 with Priority Tier prices (made up: they
/// are contracted, not published).
const ANTHROPIC_PRIORITY_RATES: &str = r#"
[[model]]
name = "claude-haiku-4-5"
match = "prefix"
input = "1.00"
cached_input = "0.10"
cache_write_5m = "1.25"
cache_write_1h = "2.00"
output = "5.00"
context_window = 200000
priority = { input = "2.00", cached_input = "0.20", cache_write_5m = "2.50", cache_write_1h = "4.00", output = "10.00" }
"#;

/// A request that asks for no tier (or `auto`) may be served at priority,
/// so it is reserved at the dearer of the standard and priority prices: a
/// budget that covers its worst case at standard but not at priority
/// refuses it. One that names the default tier (or flex) is reserved at
/// standard and goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_may_be_served_at_priority_is_reserved_at_priority_prices() {
    let s = session(BUDGET_POLICY).await;
    // 80000 output: 0.80 USD at the standard 10 per million, 1.36 at 17.
    for tier in ["", r#""service_tier":"auto","#] {
        let body =
            format!(r#"{{"model":"gpt-4o",{tier}"max_completion_tokens":80000,"messages":[]}}"#);
        let r = post(&s, "https://api.openai.com/v1/chat/completions", &body, &[]).await;
        assert_eq!(r.status, 403, "{tier}: {r:?}");
        let why = r.blocked().unwrap();
        assert!(why.contains("budget"), "{why}");
        let body = format!(r#"{{"model":"gpt-4o",{tier}"max_output_tokens":80000,"input":"hi"}}"#);
        let r = post(&s, "https://api.openai.com/v1/responses", &body, &[]).await;
        assert_eq!(r.status, 403, "{tier}: {r:?}");
    }
    let usage = usage_header(json!({"prompt_tokens": 50, "completion_tokens": 100}));
    let mut sent = Vec::new();
    for tier in ["default", "flex"] {
        let body = format!(
            r#"{{"model":"gpt-4o","service_tier":"{tier}","max_completion_tokens":80000,"messages":[]}}"#
        );
        let r = post(
            &s,
            "https://api.openai.com/v1/chat/completions",
            &body,
            std::slice::from_ref(&usage),
        )
        .await;
        assert_eq!(r.status, 200, "{tier}: {r:?}");
        sent.push(body);
    }
    let u = usages(&s.finish_and_verify());
    assert_eq!(u.len(), 2);
    for (u, body) in u.iter().zip(&sent) {
        // 80000 × 10 and the body's bytes at 2.50 per million, rounded up.
        let reserved = 800_000 + (body.len() as u64 * 5).div_ceil(2);
        assert_eq!(u.reserved_micro_usd, reserved, "{u:?}");
        // 50 × 2.50 + 100 × 10 per million.
        assert_eq!((u.cost_micro_usd, u.estimated), (1_125, false), "{u:?}");
    }
}
