//! Settlement of LLM calls against the tenant's day quotas: every call that
//! goes upstream is held and settled (a client that gives up included),
//! and a call the quota could not count never leaves. A mock provider over
//! real TLS answers with the usage a test asks for (`x-usage`: the usage
//! object, `x-model`: the model the answer names, `x-delay-ms`: how long
//! it thinks).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use enforce::{DayQuota, QuotaRefusal};
use receipts::Body;
use serde_json::json;
use support::usage_provider::*;
use support::*;

/// What the tenant's quota store was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum QuotaCall {
    Reserve(u64),
    Settle { micro_usd: u64, tokens: u64 },
    Release,
}

/// A tenant day quota that records every call and keeps the figures as the
/// daemon's store does (`check_room`): settled spend + holds under the USD
/// quota, settled tokens + held tokens under the tokens quota.
#[derive(Default)]
struct RecordingQuota {
    usd: Option<u64>,
    tokens: Option<u64>,
    state: Mutex<QuotaState>,
}

#[derive(Default)]
struct QuotaState {
    calls: Vec<QuotaCall>,
    spent: u64,
    tokens: u64,
    /// (id, micro-USD, tokens) of the calls in flight.
    holds: Vec<(u64, u64, u64)>,
    /// The worst-case tokens of every hold granted.
    granted_tokens: Vec<u64>,
    next: u64,
}

impl RecordingQuota {
    fn calls(&self) -> Vec<QuotaCall> {
        self.state.lock().unwrap().calls.clone()
    }
    fn settled(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        (s.spent, s.tokens)
    }
    fn granted_tokens(&self) -> Vec<u64> {
        self.state.lock().unwrap().granted_tokens.clone()
    }
}

impl DayQuota for RecordingQuota {
    fn reserve(&self, micro_usd: u64, tokens: Option<u64>) -> Result<u64, QuotaRefusal> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(QuotaCall::Reserve(micro_usd));
        let held: u64 = s.holds.iter().map(|h| h.1).sum();
        let held_tokens: u64 = s.holds.iter().map(|h| h.2).sum();
        if let Some(q) = self.usd {
            if s.spent + held + micro_usd > q {
                return Err(QuotaRefusal::Exceeded {
                    quota: "usd_per_day",
                    detail: "over".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        if let Some(q) = self.tokens {
            let Some(t) = tokens else {
                return Err(QuotaRefusal::Unbounded {
                    quota: "llm_tokens_per_day",
                });
            };
            if s.tokens >= q || s.tokens + held_tokens + t > q {
                return Err(QuotaRefusal::Exceeded {
                    quota: "llm_tokens_per_day",
                    detail: "over".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        s.next += 1;
        let id = s.next;
        s.holds.push((id, micro_usd, tokens.unwrap_or(0)));
        s.granted_tokens.push(tokens.unwrap_or(0));
        Ok(id)
    }
    fn reserve_unpriced(&self, tokens: Option<u64>) -> Result<u64, QuotaRefusal> {
        // As the stores: refused under a USD quota, else held at 0 µ$.
        if self.usd.is_some() {
            return Err(QuotaRefusal::Unpriced {
                quota: "usd_per_day",
            });
        }
        self.reserve(0, tokens)
    }
    fn settle(&self, hold: u64, micro_usd: u64, tokens: u64) {
        let mut s = self.state.lock().unwrap();
        s.calls.push(QuotaCall::Settle { micro_usd, tokens });
        s.holds.retain(|h| h.0 != hold);
        s.spent += micro_usd;
        s.tokens += tokens;
    }
    fn release(&self, hold: u64) {
        let mut s = self.state.lock().unwrap();
        s.calls.push(QuotaCall::Release);
        s.holds.retain(|h| h.0 != hold);
    }
}

async fn session(policy: &str, quota: Option<Arc<RecordingQuota>>) -> Session {
    let upstream = provider().await;
    Session::start(Options {
        policy: policy.into(),
        catalog: LLM_CATALOG.into(),
        secrets: String::new(),
        upstream: Some(upstream),
        day_quota: quota.map(|q| q as Arc<dyn DayQuota>),
        ..Options::default()
    })
    .await
}

/// A chat request body of about `size` bytes naming `model`.
fn big_chat(model: &str, size: usize) -> String {
    let filler = "a".repeat(size);
    json!({"model": model, "max_tokens": 50,
        "messages": [{"role": "user", "content": filler}]})
    .to_string()
}

/// A client that goes away before the response head (it asked, the
/// provider is thinking) still has its call settled: the proxy reports the
/// exchange as `ClientGone` when it drops the request, so the call gets
/// its usage receipt (at the reservation, estimated) and the tenant's
/// quota hold is settled, never released as if the call had not gone
/// upstream (the provider ran it), over HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_before_its_response_head_is_settled() {
    let quota = Arc::new(RecordingQuota {
        usd: Some(10_000_000),
        ..RecordingQuota::default()
    });
    let s = session(BUDGET_POLICY, Some(quota.clone())).await;
    let usage = usage_header(json!({"prompt_tokens": 1_000, "completion_tokens": 50}));
    for http in ["--http1.1", "--http2"] {
        // The client gives up after 1 s.
        let r = post_with(
            &s,
            "https://api.openai.com/v1/chat/completions",
            r#"{"model":"gpt-test","max_tokens":50,"messages":[]}"#,
            &[usage.clone(), "x-delay-ms: 2500".to_owned()],
            &[http, "--max-time", "1"],
        )
        .await;
        assert_eq!(r.status, 0, "{http}: the client did not give up: {r:?}");
    }
    // The provider answers after 2.5 s; give it time, and the proxy too.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let chain = s.finish_and_verify();
    // The session ends: its gate and metering go.
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = quota.calls();
    let u = usages(&chain);
    let decisions = chain
        .receipts
        .iter()
        .filter(|r| matches!(r.receipt.body, Body::Decision(_)))
        .count();
    assert_eq!(
        u.len(),
        decisions,
        "{decisions} calls forwarded, {} usage receipt(s); quota calls {calls:?}",
        u.len()
    );
    assert!(
        calls
            .iter()
            .filter(|c| matches!(c, QuotaCall::Settle { .. }))
            .count()
            == decisions,
        "quota holds not settled: {calls:?}"
    );
    // No usage came back: each is charged its reservation, and says so.
    assert!(u.iter().all(|u| u.estimated), "{u:?}");
}

/// An LLM call the proxy cannot meter (its body is past the catalog's
/// LLM read cap, `max_llm_body_bytes`, or it names no `model`, as Azure's
/// deployment paths allow) could be neither held nor settled on the
/// tenant's day quotas: under them it is refused with a reason, also in a
/// session without `budget_usd`. A body past `max_body_bytes` but within
/// the LLM cap is metered and held like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_call_the_proxy_cannot_meter_is_refused_under_a_day_quota() {
    let quota = Arc::new(RecordingQuota {
        usd: Some(1_000_000),
        tokens: Some(100_000),
        ..RecordingQuota::default()
    });
    let s = Session::start(Options {
        policy: TENANT_POLICY.into(),
        catalog: format!("max_llm_body_bytes = 131072\n{LLM_CATALOG}"),
        secrets: String::new(),
        upstream: Some(provider().await),
        day_quota: Some(quota.clone() as Arc<dyn DayQuota>),
        ..Options::default()
    })
    .await;
    let usage = usage_header(json!({"prompt_tokens": 20_000, "completion_tokens": 50}));
    let url = "https://api.openai.com/v1/chat/completions";
    // 1. Past the 128 KiB LLM read cap.
    let big = post(
        &s,
        url,
        &big_chat("gpt-test", 140 * 1024),
        std::slice::from_ref(&usage),
    )
    .await;
    // 2. No model (an Azure deployment path names it).
    let azure = "https://api.openai.com/openai/deployments/gpt-dear/chat/completions";
    let no_model = post(
        &s,
        azure,
        r#"{"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#,
        std::slice::from_ref(&usage),
    )
    .await;
    // 3. Past the 64 KiB max_body_bytes, within the LLM cap: metered.
    let large = post(
        &s,
        url,
        &big_chat("gpt-test", 70 * 1024),
        std::slice::from_ref(&usage),
    )
    .await;
    let chain = s.finish_and_verify();
    assert!(
        big.blocked()
            .unwrap_or_default()
            .contains("131072-byte cap (max_llm_body_bytes)"),
        "refused for the LLM cap: {big:?}"
    );
    assert!(
        no_model
            .blocked()
            .unwrap_or_default()
            .contains("unknown cost"),
        "refused with a reason: {no_model:?}"
    );
    let forwarded = [&big, &no_model].iter().filter(|r| r.status == 200).count();
    assert!(
        forwarded == 0 || quota.calls().len() >= 2 * forwarded,
        "{forwarded} LLM call(s) went upstream (statuses {}, {}) with no hold on the \
         tenant's day quota: quota calls {:?}, usage receipts {}",
        big.status,
        no_model.status,
        quota.calls(),
        usages(&chain).len()
    );
    assert_eq!(large.status, 200, "{large:?}");
    let u = usages(&chain);
    assert_eq!(u.len(), 1, "only the call within the cap went: {u:?}");
    assert_eq!(u[0].tokens.input, 20_000);
    assert_eq!(quota.settled().1, 20_050, "held and settled on the quota");
}

/// A model the rate card does not price (o1-pro, gpt-4-turbo,
/// claude-3-opus, ...) would reserve 0 and settle at 0 against the
/// tenant's `usd_per_day`: under that quota it is refused with a reason,
/// also in a session without a budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpriced_model_is_refused_under_the_usd_day_quota() {
    let quota = Arc::new(RecordingQuota {
        usd: Some(1_000_000),
        ..RecordingQuota::default()
    });
    let s = session(TENANT_POLICY, Some(quota.clone())).await;
    // 1M input tokens of o1-pro: 150 USD at OpenAI's price.
    let usage = usage_header(json!({"input_tokens": 1_000_000, "output_tokens": 100}));
    let mut ok = 0;
    for _ in 0..3 {
        let r = post(
            &s,
            "https://api.openai.com/v1/responses",
            r#"{"model":"o1-pro","max_output_tokens":100,"input":"hi"}"#,
            std::slice::from_ref(&usage),
        )
        .await;
        ok += usize::from(r.status == 200);
        let why = r.blocked().unwrap_or_default();
        assert!(
            why.contains("usd_per_day") && why.contains("o1-pro"),
            "refused with a reason: {r:?}"
        );
    }
    let (spent, tokens) = quota.settled();
    assert!(
        ok == 0 || spent > 1_000_000,
        "{ok} o1-pro calls of 1M input tokens each went upstream and the tenant's \
         usd_per_day ($1) was charged {spent} micro-USD ({tokens} tokens): {:?}",
        quota.calls()
    );
}

/// The tenant's `llm_tokens_per_day` is settled with every billed token:
/// cache reads and cache writes (Anthropic) and cached input (OpenAI) as
/// well as input and output, as the control plane's usage report counts
/// them (`UsageTokens::total`). Else prompt caching would move almost all
/// input out of the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_day_quota_counts_cached_and_cache_write_tokens() {
    let quota = Arc::new(RecordingQuota {
        tokens: Some(1_000_000),
        ..RecordingQuota::default()
    });
    let s = session(TENANT_POLICY, Some(quota.clone())).await;
    let usage = usage_header(
        json!({"input_tokens": 12, "cache_read_input_tokens": 40_000,
        "cache_creation_input_tokens": 30_000, "output_tokens": 7}),
    );
    let r = post(
        &s,
        "https://api.anthropic.com/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":50,"messages":[]}"#,
        &[usage],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let chain = s.finish_and_verify();
    let u = usages(&chain);
    assert_eq!(u.len(), 1);
    let t = u[0].tokens;
    let reported = t.input + t.cached_input + t.cache_write_5m + t.cache_write_1h + t.output;
    assert_eq!(reported, 70_019, "{t:?}");
    let (_, tokens) = quota.settled();
    assert_eq!(
        tokens, reported,
        "the provider reported {reported} tokens; llm_tokens_per_day was charged {tokens}"
    );
}

/// Calls in flight hold their worst-case tokens: eight calls fired at once
/// (the provider thinks for a while, so they overlap) against a tokens
/// quota that fits three never all pass on the same settled figure (0).
/// Without the token hold every one passed and the day settled at eight
/// calls' tokens, far past the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_never_pass_the_tokens_day_quota() {
    const QUOTA: u64 = 1_000;
    let quota = Arc::new(RecordingQuota {
        tokens: Some(QUOTA),
        ..RecordingQuota::default()
    });
    let s = Arc::new(session(TENANT_POLICY, Some(quota.clone())).await);
    // About 270 bytes and 50 output tokens: a worst case near 320 tokens;
    // the provider bills 250.
    let body = big_chat("gpt-test", 200);
    let usage = usage_header(json!({"prompt_tokens": 200, "completion_tokens": 50}));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (s, body, usage) = (s.clone(), body.clone(), usage.clone());
            tokio::spawn(async move {
                post(
                    &s,
                    "https://api.openai.com/v1/chat/completions",
                    &body,
                    &[usage, "x-delay-ms: 1500".to_owned()],
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap().status);
    }
    let passed = statuses.iter().filter(|&&st| st == 200).count();
    let granted = quota.granted_tokens();
    let held: u64 = granted.iter().sum();
    assert!(passed >= 1, "the first call fits: {statuses:?}");
    assert_eq!(granted.len(), passed, "{statuses:?}");
    assert!(
        granted.iter().all(|&t| t >= 250),
        "a worst case below the billed tokens: {granted:?}"
    );
    assert!(
        held <= QUOTA,
        "the admitted calls' worst cases {granted:?} pass the quota of {QUOTA}"
    );
    assert!(
        statuses.iter().all(|&st| st == 200 || st == 429),
        "{statuses:?}"
    );
    let (_, tokens) = quota.settled();
    assert_eq!(tokens, 250 * passed as u64, "{statuses:?}");
    assert!(tokens <= QUOTA, "settled {tokens} tokens past {QUOTA}");
}

/// Under a tokens quota a call whose tokens the proxy cannot bound (input
/// by reference to a model of no known context window) never leaves:
/// refused with the reason, as an unpriced model under usd_per_day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_of_unbounded_tokens_is_refused_under_the_tokens_day_quota() {
    let quota = Arc::new(RecordingQuota {
        tokens: Some(1_000_000),
        ..RecordingQuota::default()
    });
    let s = session(TENANT_POLICY, Some(quota.clone())).await;
    let r = post(
        &s,
        "https://api.openai.com/v1/responses",
        r#"{"model":"gpt-test","max_output_tokens":50,"previous_response_id":"resp_1","input":"hi"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    let why = r.blocked().unwrap_or_default();
    assert!(
        why.contains("llm_tokens_per_day") && why.contains("context_window"),
        "refused with the reason: {r:?}"
    );
    let chain = s.finish_and_verify();
    assert!(usages(&chain).is_empty());
    assert!(quota.granted_tokens().is_empty(), "refused before holding");
}
