//! LLM calls past `max_body_bytes`: a request to an LLM endpoint the catalog
//! knows is read on up to `max_llm_body_bytes` so it can be metered (coding
//! and RAG agents send prompts of hundreds of KiB), a body past that cap is
//! refused with the cap's name, and a session reads only a few such bodies
//! at once: the rest wait for a read permit. Real proxy, real TLS, the mock
//! provider of `support/usage_provider.rs`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use receipts::Body;
use serde_json::json;
use support::usage_provider::*;
use support::*;

const CHAT: &str = "https://api.openai.com/v1/chat/completions";

async fn session(catalog: &str) -> Session {
    session_with(BUDGET_POLICY, catalog).await
}

async fn session_with(policy: &str, catalog: &str) -> Session {
    Session::start(Options {
        policy: policy.into(),
        catalog: catalog.into(),
        secrets: String::new(),
        upstream: Some(provider().await),
        ..Options::default()
    })
    .await
}

/// A chat request body of about `size` bytes naming gpt-test, with an
/// output limit (so metering leaves it as sent).
fn big_chat(size: usize) -> String {
    json!({"model": "gpt-test", "max_tokens": 50,
        "messages": [{"role": "user", "content": "a".repeat(size)}]})
    .to_string()
}

/// The allowed decisions' body digests, in chain order.
fn allowed_digests(chain: &receipts::VerifiedChain) -> Vec<Option<String>> {
    chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            Body::Decision(d) if d.decision["decision"] == "allow" => Some(d.body_sha256.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kib_chat_completion_under_a_budget_is_metered_and_forwarded_whole() {
    let s = session(LLM_CATALOG).await;
    let body = big_chat(200 * 1024);
    let usage = usage_header(json!({"prompt_tokens": 51_300, "completion_tokens": 7}));
    let r = post(&s, CHAT, &body, &[usage]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let sent = receipts::sha256_hex(body.as_bytes());
    assert_eq!(
        r.header("x-received-sha256"),
        Some(sent.as_str()),
        "the provider got the whole body as sent"
    );

    let chain = s.finish_and_verify();
    let u = usages(&chain);
    assert_eq!(u.len(), 1, "one usage receipt");
    assert_eq!((u[0].tokens.input, u[0].tokens.output), (51_300, 7));
    assert!(!u[0].estimated, "the provider's figures, not an estimate");
    assert_eq!(u[0].model, "gpt-test");
    assert_eq!(allowed_digests(&chain), vec![Some(sent)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_body_past_max_llm_body_bytes_is_refused_with_the_caps_reason() {
    let s = session(&format!("max_llm_body_bytes = 131072\n{LLM_CATALOG}")).await;
    let usage = usage_header(json!({"prompt_tokens": 10, "completion_tokens": 7}));
    // Within the LLM cap (past max_body_bytes) it goes; past it, refused.
    let within = post(
        &s,
        CHAT,
        &big_chat(100 * 1024),
        std::slice::from_ref(&usage),
    )
    .await;
    assert_eq!(within.status, 200, "{within:?}");
    let past = post(&s, CHAT, &big_chat(200 * 1024), &[usage]).await;
    let reason = past.blocked().unwrap_or_default();
    assert!(
        reason.contains("131072-byte cap (max_llm_body_bytes)"),
        "refused for the cap: {past:?}"
    );
    assert_ne!(past.status, 200);
    let chain = s.finish_and_verify();
    assert_eq!(usages(&chain).len(), 1, "only the call within the cap went");
}

/// Opens a TLS connection to the proxy as api.openai.com and sends the
/// head of a chat call of `body.len()` bytes and its first `sent` bytes.
async fn start_call(s: &Session, body: &str, sent: usize) -> SandboxTls {
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 7});
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nx-usage: {usage}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.stalled_upload("api.openai.com", &head, &body.as_bytes()[..sent])
        .await
}

/// Four large bodies whose senders stall past `max_body_bytes` hold the
/// session's four read permits: a fifth large call waits (it is neither
/// answered nor refused), and goes, metered, once one of the four is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_llm_bodies_past_the_permits_wait_for_one() {
    // Each call reserves about 0.51 USD (200 K input tokens at worst).
    let policy = BUDGET_POLICY.replace("\"1.00\"", "\"10.00\"");
    let s = session_with(&policy, LLM_CATALOG).await;
    let body = big_chat(200 * 1024);
    // Past the 64 KiB first cap, so each holds a permit while it stalls.
    let stalled_at = 100 * 1024;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(start_call(&s, &body, stalled_at).await);
    }
    // A moment for the proxy to read the four heads and take the permits.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let fifth_body = body.clone();
    let usage = usage_header(json!({"prompt_tokens": 10, "completion_tokens": 7}));
    let fifth = {
        let s = &s;
        async move { post(s, CHAT, &fifth_body, &[usage]).await }
    };
    tokio::pin!(fifth);
    // While the four stall, the fifth has its whole body sent and waits.
    let early = tokio::time::timeout(Duration::from_secs(3), &mut fifth).await;
    assert!(
        early.is_err(),
        "a fifth large body was decided while four held the permits: {early:?}"
    );

    // One of the four completes: its permit frees and the fifth goes.
    let first = finish_upload(stalled.remove(0), &body, stalled_at).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let fifth = fifth.await;
    assert_eq!(fifth.status, 200, "{fifth:?}");

    for io in stalled {
        let reply = finish_upload(io, &body, stalled_at).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    let chain = s.finish_and_verify();
    let u = usages(&chain);
    assert_eq!(u.len(), 5, "all five metered");
    assert!(u.iter().all(|u| !u.estimated && u.tokens.input == 10));
}
