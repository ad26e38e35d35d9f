//! A mock LLM provider over real TLS for the metering tests: it answers
//! Chat, Responses and Messages calls with the usage a test asks for
//! (`x-usage`: the usage object, `x-model`: the model the answer names,
//! `x-service-tier`: the tier it says served the call, as OpenAI does for
//! a project whose default tier is priority — top level — and Anthropic
//! for an organization with Priority Tier capacity — in `usage`;
//! `x-delay-ms`: how long it thinks) — a request with `"stream": true` as
//! an event stream — and curl POSTs through the proxy.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use receipts::{Body, UsageRecord, VerifiedChain};
use serde_json::{json, Value};
use test_support::TestCa;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{ExternalUpstream, Reply, Session, HOSTS};

/// gpt-test is cheap, gpt-dear is 40 times dearer.
pub const LLM_CATALOG: &str = r#"
[[llm_price]]
model = "gpt-test"
input_usd_per_mtok = "2.50"
output_usd_per_mtok = "10"

[[llm_price]]
model = "gpt-dear"
input_usd_per_mtok = "100"
output_usd_per_mtok = "400"
"#;

pub const BUDGET_POLICY: &str = r#"
[llm]
providers = ["api.openai.com", "api.anthropic.com"]
budget_usd = "1.00"
"#;

/// A tenant session: no per-session budget, the tenant's day quotas apply.
pub const TENANT_POLICY: &str = r#"
[llm]
providers = ["api.openai.com", "api.anthropic.com"]
"#;

pub type MockBody = BoxBody<Bytes, std::io::Error>;

pub async fn provider() -> ExternalUpstream {
    let ca = TestCa::new("mock llm providers");
    let acceptor = TlsAcceptor::from(ca.server_config(HOSTS, &[b"h2", b"http/1.1"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(answer);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    ExternalUpstream {
        addr,
        ca_pem: ca.cert_pem().to_owned(),
    }
}

/// [`answer_body`], with the SHA-256 of the request body as received in
/// `x-received-sha256` (what a receipt's `body_sha256` must name).
pub async fn answer(req: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    let (mut resp, received) = answer_body(req).await;
    resp.headers_mut()
        .insert("x-received-sha256", received.parse().unwrap());
    Ok(resp)
}

async fn answer_body(req: Request<Incoming>) -> (Response<MockBody>, String) {
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let usage: Value = header("x-usage")
        .map(|u| serde_json::from_str(&u).unwrap())
        .unwrap_or(Value::Null);
    let served = header("x-model");
    let served_tier = header("x-service-tier");
    let delay = header("x-delay-ms").and_then(|d| d.parse::<u64>().ok());
    let raw = req.into_body().collect().await.unwrap().to_bytes();
    let received = receipts::sha256_hex(&raw);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let model = served.unwrap_or_else(|| body["model"].as_str().unwrap_or("none").to_owned());
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut whole = if path.ends_with("/messages") {
        json!({"id": "msg_r", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn",
            "usage": usage})
    } else if path.ends_with("/responses") {
        json!({"id": "resp_r", "object": "response", "status": "completed", "model": model,
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hello"}]}],
            "usage": usage})
    } else {
        json!({"id": "chatcmpl-r", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop"}],
            "usage": usage})
    };
    if path.ends_with("/messages") {
        // Anthropic names the tier that served the call inside `usage`
        // (its requests' `auto` and `standard_only` are no tier names).
        if let (Some(tier), Some(u)) = (served_tier, whole["usage"].as_object_mut()) {
            u.insert("service_tier".into(), Value::from(tier));
        }
        if body["stream"] == true {
            return (messages_stream(&whole), received);
        }
        return (json_answer(&whole), received);
    }
    // OpenAI names the tier that served the call: the one asked for, or
    // the project's default when asked for none or `auto`.
    let tier = served_tier
        .map(Value::from)
        .or_else(|| body.get("service_tier").cloned());
    if let Some(tier) = &tier {
        whole["service_tier"] = tier.clone();
    }
    if body["stream"] == true {
        return (stream(&path, &body, whole, usage, tier), received);
    }
    (json_answer(&whole), received)
}

fn json_answer(whole: &Value) -> Response<MockBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(whole.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    resp
}

/// `whole` (a Messages answer) as Anthropic streams it: `message_start`
/// with the usage's input side (its `service_tier` too) and a first output
/// count, a text delta, `message_delta` with the cumulative output count.
fn messages_stream(whole: &Value) -> Response<MockBody> {
    let mut start = whole.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    if let Some(u) = start["usage"].as_object_mut() {
        u.insert("output_tokens".into(), json!(1));
    }
    let events = [
        json!({"type": "message_start", "message": start}),
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Hello"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": whole["usage"]["output_tokens"]}}),
        json!({"type": "message_stop"}),
    ];
    let text: String = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect();
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "text/event-stream".parse().unwrap(),
    );
    resp
}

/// `whole` (the answer) as OpenAI streams it. Chat: a content chunk and,
/// when asked for, the usage chunk, each naming the tier that served it.
/// Responses: `response.created` with the tier asked for (`auto` when
/// none), a text delta, and `response.completed` with the tier that served
/// it and the usage.
fn stream(
    path: &str,
    body: &Value,
    whole: Value,
    usage: Value,
    tier: Option<Value>,
) -> Response<MockBody> {
    let mut events = Vec::new();
    if path.ends_with("/responses") {
        let mut created = whole.clone();
        created["status"] = json!("in_progress");
        created["usage"] = Value::Null;
        created["output"] = json!([]);
        created["service_tier"] = body.get("service_tier").cloned().unwrap_or(json!("auto"));
        events.push(json!({"type": "response.created", "response": created}));
        events.push(json!({"type": "response.output_text.delta", "delta": "Hello"}));
        events.push(json!({"type": "response.completed", "response": whole}));
    } else {
        let mut chunk = json!({"id": whole["id"], "object": "chat.completion.chunk",
            "model": whole["model"], "choices": [{"index": 0, "delta": {"content": "Hello"}}]});
        if let Some(tier) = &tier {
            chunk["service_tier"] = tier.clone();
        }
        events.push(chunk.clone());
        if body["stream_options"]["include_usage"] == true {
            chunk["choices"] = json!([]);
            chunk["usage"] = usage;
            events.push(chunk);
        }
    }
    let mut text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    if !path.ends_with("/responses") {
        text.push_str("data: [DONE]\n\n");
    }
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "text/event-stream".parse().unwrap(),
    );
    resp
}

pub async fn post(s: &Session, url: &str, body: &str, headers: &[String]) -> Reply {
    post_with(s, url, body, headers, &[]).await
}

/// [`post`] with more curl options (`--max-time 1`, `--http2`).
pub async fn post_with(
    s: &Session,
    url: &str,
    body: &str,
    headers: &[String],
    curl: &[&str],
) -> Reply {
    let mut args: Vec<&str> = vec![
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        "@-",
    ];
    for h in headers {
        args.extend(["-H", h.as_str()]);
    }
    args.extend_from_slice(curl);
    // The body through stdin (it may be larger than an argument may be).
    let port = s.proxy.https_addr().unwrap().port();
    let mut child = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "60", "--cacert"])
        .arg(&s.session_ca)
        .arg("--connect-to")
        .arg(format!("::127.0.0.1:{port}"))
        .args(&args)
        .arg(url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(body.as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    Reply::parse(&out.stdout, &out.stderr)
}

pub fn usages(chain: &VerifiedChain) -> Vec<UsageRecord> {
    chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            Body::Usage(u) => Some(u.clone()),
            _ => None,
        })
        .collect()
}

pub fn usage_header(v: Value) -> String {
    format!("x-usage: {v}")
}
