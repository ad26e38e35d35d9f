//! LLM metering end to end: curl through the real proxy to mock OpenAI
//! (Chat, Responses, embeddings) and Anthropic HTTPS upstreams with real
//! TLS, streamed (in small pieces that cut events apart) and not. Each
//! call is reserved at its worst case, settled to what the provider
//! reported with a `usage` receipt linked to its decision, charged its
//! reservation when the stream is cut, and a client that did not ask for
//! the usage chunk never sees it. Fifty concurrent calls never spend past
//! a tiny budget. Budget warnings are receipts and events, once per level.
//! An `[[approval]]` spend threshold holds every call after it for a human.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use receipts::{Body, BudgetWarningRecord, UsageRecord, UsageTokens, VerifiedChain};
use serde_json::{json, Value};
use support::*;
use test_support::{Scripted, TestCa};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const POLICY: &str = r#"
[llm]
providers = ["api.openai.com", "api.anthropic.com"]
budget_usd = "1.00"
"#;

const CATALOG: &str = r#"
[[llm_price]]
model = "gpt-test"
input_usd_per_mtok = "2.50"
output_usd_per_mtok = "10"
"#;

type MockBody = BoxBody<Bytes, std::io::Error>;

/// An LLM provider: answers the four shapes, streamed when asked, with
/// fixed usage (12 prompt tokens of which 4 cached, output the smaller of
/// 7 and the request's limit, or all of the limit with `x-mock-output:
/// all`); `x-mock-cut: 1` cuts a stream before its end. Keeps the bodies it
/// was sent.
struct LlmUpstream {
    upstream: ExternalUpstream,
    /// The request bodies, as received.
    bodies: Arc<Mutex<Vec<Bytes>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn llm_upstream() -> LlmUpstream {
    let ca = TestCa::new("llm providers");
    let acceptor = TlsAcceptor::from(ca.server_config(HOSTS, &[b"h2", b"http/1.1"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let seen = bodies.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| answer(seen.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    LlmUpstream {
        upstream: ExternalUpstream {
            addr,
            ca_pem: ca.cert_pem().to_owned(),
        },
        bodies,
        _task: task,
    }
}

async fn answer(
    seen: Arc<Mutex<Vec<Bytes>>>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let cut = req.headers().contains_key("x-mock-cut");
    let all = req.headers().contains_key("x-mock-output");
    let raw = req.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    seen.lock().unwrap().push(raw);
    let limit = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| body[*k].as_u64())
        .unwrap_or(7);
    let output = if all { limit } else { limit.min(7) };
    // The model asked for answers (a call is charged at the dearer of the
    // two, or its reservation when the answering one is unpriced).
    let model = body["model"].clone();
    let stream = body["stream"] == true;
    let include_usage = body["stream_options"]["include_usage"] == true;
    let (events, whole): (Vec<String>, Value) = match path.as_str() {
        "/v1/chat/completions" => {
            let usage = json!({"prompt_tokens": 12, "completion_tokens": output,
                "total_tokens": 12 + output, "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2}});
            let chunk = |choices: Value, usage: Value| {
                let mut c = json!({"id": "chatcmpl-m", "object": "chat.completion.chunk",
                    "model": model, "choices": choices});
                if include_usage {
                    c["usage"] = usage;
                }
                format!("data: {c}\n\n")
            };
            let mut events = vec![
                chunk(
                    json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
                    Value::Null,
                ),
                chunk(
                    json!([{"index": 0, "delta": {"content": "Hello"}}]),
                    Value::Null,
                ),
                chunk(
                    json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
                    Value::Null,
                ),
            ];
            if include_usage {
                events.push(chunk(json!([]), usage.clone()));
            }
            events.push("data: [DONE]\n\n".to_owned());
            let whole = json!({"id": "chatcmpl-m", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}}],
                "usage": usage});
            (events, whole)
        }
        "/v1/responses" => {
            let usage = json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4},
                "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 2},
                "total_tokens": 12 + output});
            let response = json!({"id": "resp_m", "object": "response", "model": model,
                "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hello"}]}],
                "usage": usage});
            let events = vec![
                format!(
                    "event: response.created\ndata: {}\n\n",
                    json!({"type": "response.created", "response": {"id": "resp_m", "usage": null}})
                ),
                format!(
                    "event: response.output_text.delta\ndata: {}\n\n",
                    json!({"type": "response.output_text.delta", "delta": "Hello"})
                ),
                format!(
                    "event: response.completed\ndata: {}\n\n",
                    json!({"type": "response.completed", "response": response})
                ),
            ];
            (events, response)
        }
        "/v1/messages" => {
            let start = json!({"type": "message_start", "message": {"id": "msg_m", "type": "message",
                "model": model, "content": [], "usage": {"input_tokens": 12,
                "cache_read_input_tokens": 4, "cache_creation_input_tokens": 3, "output_tokens": 1}}});
            let events = vec![
                format!("event: message_start\ndata: {start}\n\n"),
                format!(
                    "event: content_block_delta\ndata: {}\n\n",
                    json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": "Hello"}})
                ),
                format!(
                    "event: message_delta\ndata: {}\n\n",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                        "usage": {"output_tokens": output}})
                ),
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
            ];
            let whole = json!({"id": "msg_m", "type": "message", "model": model,
                "content": [{"type": "text", "text": "Hello"}], "usage": {"input_tokens": 12,
                "cache_read_input_tokens": 4, "cache_creation_input_tokens": 3, "output_tokens": output}});
            (events, whole)
        }
        _ => {
            let whole = json!({"object": "list", "model": model,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
                "usage": {"prompt_tokens": 5, "total_tokens": 5}});
            (Vec::new(), whole)
        }
    };
    if !stream {
        let mut resp = Response::new(
            Full::new(Bytes::from(whole.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        );
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        return Ok(resp);
    }
    // The stream in 257-byte pieces, so events arrive cut apart (the
    // readers' unit tests cut at every offset). Not smaller: h2 (0.4.20+)
    // charges each DATA frame under 256 bytes against a connection budget
    // while it sits unread, and past it the receiving proxy's upstream
    // connection ends with GOAWAY ENHANCE_YOUR_CALM — which 7-byte pieces
    // reached under load when three streams shared one connection.
    let text = events.concat().into_bytes();
    let keep = if cut { text.len() / 2 } else { text.len() };
    let mut frames: Vec<Result<Frame<Bytes>, std::io::Error>> = text[..keep]
        .chunks(257)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    if cut {
        frames.push(Err(std::io::Error::other("cut mid-stream")));
    }
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
        frames,
    ))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "text/event-stream".parse().unwrap(),
    );
    Ok(resp)
}

async fn session(policy: &str, llm: &LlmUpstream) -> Session {
    session_with(policy, llm, Vec::new()).await
}

/// A session whose approval questions are answered by `script`.
async fn session_with(policy: &str, llm: &LlmUpstream, script: Vec<Scripted>) -> Session {
    Session::start(Options {
        policy: policy.into(),
        catalog: CATALOG.into(),
        secrets: String::new(),
        upstream: Some(ExternalUpstream {
            addr: llm.upstream.addr,
            ca_pem: llm.upstream.ca_pem.clone(),
        }),
        script,
        ..Options::default()
    })
    .await
}

/// (decision seq, usage record) of every usage receipt.
fn usages(chain: &VerifiedChain) -> Vec<(u64, UsageRecord)> {
    chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            Body::Usage(u) => Some((r.receipt.seq, u.clone())),
            _ => None,
        })
        .collect()
}

async fn post(s: &Session, url: &str, body: &str, extra: &[&str]) -> Reply {
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
    ];
    args.extend_from_slice(extra);
    s.curl(url, &args).await
}

/// 12 prompt tokens, 4 of them cached, and `output` tokens, at the test
/// prices (2.50 in — cached too, as `[[llm_price]]` has no cached rate — and
/// 10 out per million).
fn chat_tokens(output: u64) -> UsageTokens {
    UsageTokens {
        input: 8,
        cached_input: 4,
        output,
        reasoning: 2,
        ..UsageTokens::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_is_settled_to_the_providers_usage() {
    let llm = llm_upstream().await;
    let s = session(POLICY, &llm).await;
    let openai = "https://api.openai.com";
    let calls = [
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-test","max_tokens":50,"messages":[]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-test","max_tokens":50,"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            "/v1/responses",
            r#"{"model":"gpt-test","max_output_tokens":50,"input":"hi"}"#,
        ),
        (
            "/v1/responses",
            r#"{"model":"gpt-test","max_output_tokens":50,"stream":true}"#,
        ),
        ("/v1/embeddings", r#"{"model":"gpt-test","input":"hi"}"#),
    ];
    for (path, body) in calls {
        let r = post(&s, &format!("{openai}{path}"), body, &[]).await;
        assert_eq!(r.status, 200, "{path} {body}: {r:?}");
        assert!(
            r.body.contains("Hello") || path == "/v1/embeddings",
            "{r:?}"
        );
    }
    for body in [
        r#"{"model":"gpt-test","max_tokens":50,"messages":[]}"#,
        r#"{"model":"gpt-test","max_tokens":50,"stream":true,"messages":[]}"#,
    ] {
        let r = post(&s, "https://api.anthropic.com/v1/messages", body, &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }

    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    let u = usages(&chain);
    assert_eq!(d.len(), 7);
    assert_eq!(u.len(), 7, "{u:?}");
    let anthropic = UsageTokens {
        input: 12,
        cached_input: 4,
        cache_write_5m: 3,
        output: 7,
        ..UsageTokens::default()
    };
    let expected = [
        ("openai.chat", chat_tokens(7), Some("chatcmpl-m")),
        ("openai.chat", chat_tokens(7), Some("chatcmpl-m")),
        ("openai.responses", chat_tokens(7), Some("resp_m")),
        ("openai.responses", chat_tokens(7), Some("resp_m")),
        (
            "openai.embeddings",
            UsageTokens {
                input: 5,
                ..UsageTokens::default()
            },
            None,
        ),
        ("anthropic.messages", anthropic, Some("msg_m")),
        ("anthropic.messages", anthropic, Some("msg_m")),
    ];
    let mut total = 0;
    for (((seq, usage), (decision_seq, verdict, _, _, action)), (api, tokens, id)) in
        u.iter().zip(&d).zip(expected)
    {
        assert_eq!(verdict, "allow");
        // Linked to its decision, written after it.
        assert_eq!(usage.decision_seq, *decision_seq);
        assert!(seq > decision_seq);
        assert_eq!(
            (usage.api.as_str(), usage.tokens),
            (api, tokens),
            "{usage:?}"
        );
        assert_eq!(usage.response_id.as_deref(), id);
        assert!(!usage.estimated);
        assert_eq!(usage.model, "gpt-test");
        assert_eq!(usage.rates.price.output, 10_000_000);
        // The decision reserved the worst case; the call cost what it used.
        assert_eq!(
            usage.reserved_micro_usd,
            action["cost_micro_usd"].as_u64().unwrap()
        );
        assert_eq!(
            usage.cost_micro_usd,
            receipts::cost_micro_usd(&usage.tokens, &usage.rates.price)
        );
        assert!(usage.cost_micro_usd < usage.reserved_micro_usd);
        total += usage.cost_micro_usd;
    }
    // 8 + 4 in at 2.5, 7 out at 10: 100 micro-USD.
    assert_eq!(u[0].1.cost_micro_usd, 100);
    // The counters hold what the calls cost, not their worst cases.
    assert_eq!(s.ledger.committed().llm_spent_micro_usd, total);
    assert_eq!(s.rederive(&chain), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_chunk_is_asked_for_and_removed_for_a_client_that_did_not_ask() {
    let llm = llm_upstream().await;
    let mut s = session(POLICY, &llm).await;
    let url = "https://api.openai.com/v1/chat/completions";
    let asked = post(
        &s,
        url,
        r#"{"model":"gpt-test","max_tokens":50,"stream":true,"stream_options":{"include_usage":true}}"#,
        &[],
    )
    .await;
    // No limit, no include_usage: the proxy sets both.
    let plain = post(
        &s,
        url,
        r#"{"model":"gpt-test","stream":true,"messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!((asked.status, plain.status), (200, 200));
    assert!(asked.body.contains(r#""choices":[],"#), "{}", asked.body);
    assert!(asked.body.contains("prompt_tokens"), "{}", asked.body);
    // The client that did not ask sees the stream it would have seen.
    assert!(!plain.body.contains("prompt_tokens"), "{}", plain.body);
    assert!(!plain.body.contains(r#""choices":[]"#), "{}", plain.body);
    assert!(plain.body.contains("Hello") && plain.body.ends_with("data: [DONE]\n\n"));
    let raw = llm.bodies.lock().unwrap().clone();
    let sent: Vec<Value> = raw
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(sent[1]["stream_options"]["include_usage"], true);
    assert_eq!(sent[1]["max_completion_tokens"], 4096);
    assert!(sent[0].get("max_completion_tokens").is_none());

    let chain = s.finish_and_verify();
    let u = usages(&chain);
    assert_eq!(u.len(), 2);
    assert_eq!(u[1].1.tokens, chat_tokens(7));
    assert!(!u[1].1.estimated);
    // The decision's digest is of the body the provider received.
    let d: Vec<_> = chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            Body::Decision(d) => d.body_sha256.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(d[1], receipts::sha256_hex(&raw[1]));
    assert_eq!(d[0], receipts::sha256_hex(&raw[0]));
    let events = s.drain_events();
    let usage_events: Vec<_> = events
        .iter()
        .filter(|e| e.kind == enforce::EventKind::Usage)
        .collect();
    assert_eq!(usage_events.len(), 2);
    let ue = usage_events[1].usage.as_ref().unwrap();
    assert_eq!((ue.cost_micro_usd, ue.estimated), (100, false));
    assert_eq!(ue.budget_micro_usd, Some(1_000_000));
    assert_eq!(ue.budget_spent_micro_usd, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_midway_is_charged_its_reservation_and_marked_estimated() {
    let llm = llm_upstream().await;
    let s = session(POLICY, &llm).await;
    for url in [
        "https://api.openai.com/v1/chat/completions",
        "https://api.anthropic.com/v1/messages",
    ] {
        let body = r#"{"model":"gpt-test","max_tokens":50,"stream":true,"stream_options":{"include_usage":true}}"#;
        let r = post(&s, url, body, &["-H", "x-mock-cut: 1"]).await;
        assert!(
            !r.body.contains("[DONE]") && !r.body.contains("message_stop"),
            "{r:?}"
        );
    }
    // The sandbox's side is over when curl returns; the proxy's may settle
    // a moment later (when it drops the cut body).
    for _ in 0..200 {
        if s.ledger.committed().llm_spent_micro_usd > 0
            && s.receipts_text().matches("\"kind\":\"usage\"").count() == 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let chain = s.finish_and_verify();
    let u = usages(&chain);
    assert_eq!(u.len(), 2, "{u:?}");
    let mut total = 0;
    for (_, usage) in &u {
        assert!(usage.estimated, "{usage:?}");
        assert_eq!(usage.tokens, UsageTokens::default());
        assert_eq!(usage.cost_micro_usd, usage.reserved_micro_usd);
        assert!(usage.reserved_micro_usd > 500);
        total += usage.cost_micro_usd;
    }
    assert_eq!(s.ledger.committed().llm_spent_micro_usd, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_never_spend_past_a_tiny_budget() {
    let llm = llm_upstream().await;
    let policy = r#"
[llm]
providers = ["api.openai.com"]
budget_usd = "0.02"
"#;
    let s = session(policy, &llm).await;
    let url = "https://api.openai.com/v1/chat/completions";
    // Each call may use (and, with x-mock-output, does use) 600 output
    // tokens: 6000 micro-USD and a little input, so three fit in 20000.
    let calls = (0..50).map(|i| {
        let s = &s;
        async move {
            let body = if i % 2 == 0 {
                r#"{"model":"gpt-test","max_tokens":600,"messages":[]}"#
            } else {
                r#"{"model":"gpt-test","max_tokens":600,"stream":true,"messages":[]}"#
            };
            post(s, url, body, &["-H", "x-mock-output: all"]).await
        }
    });
    let replies = futures_util::future::join_all(calls).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused = replies.iter().filter(|r| r.status == 403).count();
    assert_eq!(ok + refused, 50, "{replies:?}");
    // Whatever the interleaving: the first three decisions see at most two
    // others' worst cases (2 × ~6200), the fourth three calls of at least 6030.
    assert_eq!(ok, 3, "{ok} calls went out");

    let chain = s.finish_and_verify();
    let u = usages(&chain);
    assert_eq!(u.len(), ok);
    let spent: u64 = u.iter().map(|(_, x)| x.cost_micro_usd).sum();
    assert!(spent <= 20_000, "{spent}");
    assert!(u
        .iter()
        .all(|(_, x)| !x.estimated && x.tokens.output == 600));
    assert_eq!(s.ledger.committed().llm_spent_micro_usd, spent);
    // Every decision saw every earlier reservation: none let the spend
    // (with its own worst case) pass the budget.
    for (_, verdict, _, reason, action) in decisions(&chain) {
        if verdict == "block" {
            assert!(reason.contains("exhausted"), "{reason}");
        } else {
            assert!(action["cost_micro_usd"].as_u64().unwrap() >= 6_000);
        }
    }
    assert_eq!(s.rederive(&chain), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_a_price_is_blocked_under_a_budget_naming_the_rate_card() {
    let llm = llm_upstream().await;
    let s = session(POLICY, &llm).await;
    let r = post(
        &s,
        "https://api.openai.com/v1/chat/completions",
        r#"{"model":"gpt-unpriced","max_tokens":5,"messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.blocked().unwrap().contains("rate card"), "{r:?}");
    assert!(llm.bodies.lock().unwrap().is_empty());
    let chain = s.finish_and_verify();
    assert!(usages(&chain).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_warnings_are_receipts_after_the_usage_that_reached_them_once_per_level() {
    let llm = llm_upstream().await;
    let policy = r#"
[llm]
providers = ["api.openai.com"]
budget_usd = "0.01"
"#;
    let mut s = session(policy, &llm).await;
    let url = "https://api.openai.com/v1/chat/completions";
    // 12 input tokens (30 micro-USD) and all of max_tokens out at 10 per
    // million: 1030, then 8030 (streamed) — 9060 of 10000, past 50 % and
    // 80 % at once —, then 5 out: 80 more, no level left to reach.
    for body in [
        r#"{"model":"gpt-test","max_tokens":100,"messages":[]}"#,
        r#"{"model":"gpt-test","max_tokens":800,"stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
    ] {
        let r = post(&s, url, body, &["-H", "x-mock-output: all"]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = post(
        &s,
        url,
        r#"{"model":"gpt-test","max_tokens":5,"messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    let events = s.drain_events();
    let chain = s.finish_and_verify();
    let u = usages(&chain);
    let costs: Vec<u64> = u.iter().map(|(_, x)| x.cost_micro_usd).collect();
    assert_eq!(costs, vec![1030, 8030, 80]);
    let warnings: Vec<(u64, BudgetWarningRecord)> = chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            Body::BudgetWarning(w) => Some((r.receipt.seq, w.clone())),
            _ => None,
        })
        .collect();
    let second_usage = u[1].0;
    assert_eq!(
        warnings.iter().map(|(_, w)| w.clone()).collect::<Vec<_>>(),
        [50, 80]
            .map(|percent| BudgetWarningRecord {
                usage_seq: second_usage,
                percent,
                spent_micro_usd: 9060,
                budget_micro_usd: 10_000,
            })
            .to_vec()
    );
    assert!(warnings.iter().all(|(seq, _)| *seq > second_usage));
    // The events say the same and name their receipts.
    let warned: Vec<(Option<u64>, u64, u64)> = events
        .iter()
        .filter(|e| e.kind == enforce::EventKind::BudgetWarning)
        .map(|e| {
            let w = e.budget_warning.unwrap();
            (e.receipt, w.percent, w.spent_micro_usd)
        })
        .collect();
    assert_eq!(
        warned,
        warnings
            .iter()
            .map(|(seq, w)| (Some(*seq), w.percent, w.spent_micro_usd))
            .collect::<Vec<_>>()
    );
    assert_eq!(s.rederive(&chain), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_the_spend_threshold_are_held_for_a_human() {
    let llm = llm_upstream().await;
    let policy = r#"
[llm]
providers = ["api.openai.com"]
budget_usd = "1.00"
[[approval]]
type = "llm"
once_spent_usd = "0.005"
"#;
    let s = session_with(policy, &llm, vec![Scripted::Approve, Scripted::Deny]).await;
    let url = "https://api.openai.com/v1/chat/completions";
    // 5030 micro-USD: let out without a question (nothing spent yet).
    let r = post(
        &s,
        url,
        r#"{"model":"gpt-test","max_tokens":500,"messages":[]}"#,
        &["-H", "x-mock-output: all"],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(s.broker.asked().is_empty());
    // Past $0.005: the next call is held; the human says yes, it goes out.
    let small = r#"{"model":"gpt-test","max_tokens":5,"messages":[]}"#;
    let r = post(&s, url, small, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(llm.bodies.lock().unwrap().len(), 2);
    // And the one after it too; the human says no: it never leaves.
    let r = post(&s, url, small, &[]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.blocked().unwrap().contains("denied by test"), "{r:?}");
    assert_eq!(llm.bodies.lock().unwrap().len(), 2);
    assert_eq!(s.broker.asked().len(), 2);

    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    let verdicts: Vec<&str> = d.iter().map(|x| x.1.as_str()).collect();
    assert_eq!(verdicts, ["allow", "approval", "approval"]);
    for (_, _, _, reason, _) in &d[1..] {
        assert!(
            reason.contains("after the session's llm spend reached $0.005"),
            "{reason}"
        );
    }
    // The spend it names: the first call, settled (5030) or, if its
    // settlement came after this decision, still at its reservation.
    assert!(d[1].3.contains(" micro-USD spent)"), "{}", d[1].3);
    assert_eq!(
        approvals(&chain),
        vec![
            (d[1].0, true, "test".to_owned()),
            (d[2].0, false, "test".to_owned())
        ]
    );
    // The approved call was metered; the denied one was not.
    let u = usages(&chain);
    assert_eq!(
        u.iter().map(|(_, x)| x.decision_seq).collect::<Vec<_>>(),
        [d[0].0, d[1].0]
    );
    assert_eq!(s.ledger.committed().llm_spent_micro_usd, 5030 + 80);
    assert_eq!(s.rederive(&chain), 3);
}

/// A client's `null` limit and `stream_options` are replaced by the
/// proxy's, not left after them: the provider's parser (the last member
/// wins: Python, JS, Go, serde_json's `Value` — this mock) would read the
/// `null`s, with no output limit and no usage chunk, and the call reserved
/// for 4096 tokens would run to the model's maximum and be settled at the
/// reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_limit_and_stream_options_are_replaced_so_the_provider_reads_the_proxys() {
    let llm = llm_upstream().await;
    let s = session(POLICY, &llm).await;
    let r = post(
        &s,
        "https://api.openai.com/v1/chat/completions",
        r#"{"model":"gpt-test","stream":true,"stream_options":null,"max_completion_tokens":null,"messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The client did not ask for the usage chunk: it does not see it.
    assert!(!r.body.contains("prompt_tokens"), "{}", r.body);
    let raw = llm.bodies.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&raw[0]);
    // One member of each name (the body is re-encoded, keys unescaped).
    for name in ["\"max_completion_tokens\":", "\"stream_options\":"] {
        assert_eq!(text.matches(name).count(), 1, "{name} in {text}");
    }
    let sent: Value = serde_json::from_slice(&raw[0]).unwrap();
    assert_eq!(sent["max_completion_tokens"], 4096, "{text}");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));

    let chain = s.finish_and_verify();
    let u = usages(&chain);
    assert_eq!(u.len(), 1);
    let usage = &u[0].1;
    assert!(!usage.estimated);
    assert_eq!(usage.tokens, chat_tokens(7));
    // Reserved for the body sent (a token a byte at 2.5 µ$) and 4096
    // output tokens at 10 µ$: the limit the provider read.
    let reserved = (raw[0].len() as u64 * 2_500_000 + 4096 * 10_000_000).div_ceil(1_000_000);
    assert_eq!(usage.reserved_micro_usd, reserved);
}
