//! Every fail-closed case: refused, reported to the gate as a refusal, and
//! the upstream's connection counter shows no connection was made.
#![allow(clippy::unwrap_used)]

mod common;

use std::{net::SocketAddr, sync::Arc};

use common::{stdout, Env, HOST, OTHER};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

fn https(env: &Env) -> SocketAddr {
    env.proxy.https_addr().unwrap()
}

/// Send raw bytes over TLS (SNI = HOST) and read until the proxy closes.
async fn raw_tls(env: &Env, bytes: &[u8]) -> String {
    let cfg = test_support::client_config(env.proxy.ca_pem(), &[b"http/1.1"]);
    let mut tls = test_support::tls_connect(https(env), HOST, cfg)
        .await
        .unwrap();
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn settle() {
    // Refusal events are reported as the connection task unwinds.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sni_is_refused_before_any_upstream_connection() {
    let env = Env::start(BOTH).await;
    let mut cfg = (*test_support::client_config(env.proxy.ca_pem(), &[b"http/1.1"])).clone();
    cfg.enable_sni = false;
    let r = test_support::tls_connect(https(&env), HOST, Arc::new(cfg)).await;
    assert!(r.is_err(), "handshake without SNI must fail");
    // curl to an IP literal sends no SNI either.
    let port = https(&env).port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-k"])
        .arg(format!("https://127.0.0.1:{port}/hello"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    settle().await;
    assert_eq!(env.gate.refusal_reasons(), ["no-sni", "no-sni"]);
    assert_eq!(env.upstream.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_fronting_is_refused_on_http11_and_h2() {
    let env = Env::start(BOTH).await;
    for proto in ["--http1.1", "--http2"] {
        let host = format!("Host: {OTHER}");
        let out = env
            .curl("/hello", &[proto, "-H", &host, "-i", "-d", "a=1"])
            .await;
        let text = stdout(&out).to_ascii_lowercase();
        assert!(text.contains(" 403"), "{proto}: {text}");
        assert!(
            text.contains("x-openclaw-blocked: domain-fronting"),
            "{proto}: {text}"
        );
    }
    settle().await;
    assert_eq!(
        env.gate.refusal_reasons(),
        ["domain-fronting", "domain-fronting"]
    );
    let r = &env.gate.refusals.lock().unwrap()[0];
    assert_eq!(r.conn.sni.as_ref().map(|h| h.as_str()), Some(HOST));
    assert_eq!(r.request.as_ref().unwrap().host.as_str(), OTHER);
    assert_eq!(env.upstream.connections(), 0);
}

/// A server name or Host that is not a host name (`capabilities::Host`) is
/// refused by the proxy before the gate is asked: `bad-sni` for the TLS
/// server name, `malformed-request` for the Host (both used to get through
/// to the gate, whose token then blocked a malformed host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_name_or_host_that_is_not_a_host_name_is_refused() {
    let env = Env::start(BOTH).await;
    let cfg = test_support::client_config(env.proxy.ca_pem(), &[b"http/1.1"]);
    let r = test_support::tls_connect(https(&env), "api_x.example.com", cfg).await;
    assert!(
        r.is_err(),
        "handshake with a non-host server name must fail"
    );
    for host in ["[::1]", "api_x.example.com", "api.example.com.."] {
        let mut tcp = TcpStream::connect(env.proxy.http_addr().unwrap())
            .await
            .unwrap();
        tcp.write_all(format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = vec![0u8; 1024];
        let n = tcp.read(&mut head).await.unwrap();
        let text = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 400"), "{host}: {text}");
        assert!(
            text.contains("x-openclaw-blocked: malformed-request"),
            "{host}: {text}"
        );
    }
    settle().await;
    assert_eq!(
        env.gate.refusal_reasons(),
        [
            "bad-sni",
            "malformed-request",
            "malformed-request",
            "malformed-request"
        ]
    );
    assert!(env.gate.exchanges.lock().unwrap().is_empty(), "gate asked");
    assert_eq!(env.upstream.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_bytes_on_the_tls_port_are_refused() {
    let env = Env::start(BOTH).await;
    let mut tcp = TcpStream::connect(https(&env)).await.unwrap();
    tcp.write_all(format!("GET /hello HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    assert!(!String::from_utf8_lossy(&out).contains("200"));
    settle().await;
    assert_eq!(env.gate.refusal_reasons(), ["not-tls"]);
    assert_eq!(env.upstream.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_malformed_and_oversized_heads_are_refused() {
    let env = Env::start(BOTH).await;
    let big = "a".repeat(70 * 1024);
    let cases: Vec<(String, &str)> = vec![
        (
            format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            "request-smuggling",
        ),
        (
            format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            "request-smuggling",
        ),
        (
            // Smuggled behind an innocent first request: the whole read is refused.
            format!("GET /hello HTTP/1.1\r\nHost: {HOST}\r\n\r\nPOST /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            "request-smuggling",
        ),
        (format!("GET /hello HTTP/1.1\r\nHost: {HOST}\r\nBad Header\r\n\r\n"), "malformed-request"),
        (format!("GET /hello HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {big}\r\n\r\n"), "headers-too-large"),
    ];
    for (bytes, reason) in &cases {
        let reply = raw_tls(&env, bytes.as_bytes()).await;
        // Answered before the close: status, reason, Connection: close, why.
        let status = if *reason == "headers-too-large" {
            "431"
        } else {
            "400"
        };
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status} ")),
            "{reason}: {reply}"
        );
        let lower = reply.to_ascii_lowercase();
        assert!(lower.contains("\r\nconnection: close\r\n"), "{reply}");
        assert!(
            lower.contains(&format!("\r\nx-openclaw-blocked: {reason}\r\n")),
            "{reply}"
        );
        assert!(
            reply.contains(&format!("\"reason\":\"{reason}\",\"detail\":")),
            "{reply}"
        );
        assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
    }
    settle().await;
    let want: Vec<&str> = cases.iter().map(|(_, r)| *r).collect();
    assert_eq!(env.gate.refusal_reasons(), want);
    assert_eq!(env.upstream.connections(), 0);
}

/// A smuggling shape pipelined behind a request whose response is still
/// streaming: answering now would corrupt that response, so the connection
/// is only cut (and reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_behind_a_response_in_flight_only_closes() {
    let env = Env::start(BOTH).await;
    let mut tls = env.tls(b"http/1.1").await;
    tls.write_all(format!("GET /sse?n=3&gap_ms=300 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 512];
    let n = tls.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    tls.write_all(format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx").as_bytes())
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("HTTP/1.1 400"), "{rest}");
    settle().await;
    assert_eq!(env.gate.refusal_reasons(), ["request-smuggling"]);
    assert_eq!(env.upstream.connections(), 1, "only the first request's");
}

/// HTTP/2's header-list limit: refused with 431 and reported like
/// HTTP/1.1's, without an upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_h2_header_list_is_refused_and_reported() {
    let env = Env::start_with(BOTH, common::Recorder::default(), |cfg| {
        cfg.limits.max_header_bytes = 16 * 1024;
    })
    .await;
    let io = hyper_util::rt::TokioIo::new(env.tls(b"h2").await);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = |big: usize| {
        http::Request::get(format!("https://{HOST}/hello"))
            .header("x-big", "a".repeat(big))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let resp = send.send_request(req(20 * 1024)).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(resp.headers()["x-openclaw-blocked"], "headers-too-large");
    // The connection carries on: a normal request on it still works.
    let resp = send.send_request(req(100)).await.unwrap();
    assert_eq!(resp.status(), 200);
    settle().await;
    assert_eq!(env.gate.refusal_reasons(), ["headers-too-large"]);
    assert_eq!(env.upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_is_refused() {
    let env = Env::start(BOTH).await;
    let reply = raw_tls(&env, b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply
        .to_ascii_lowercase()
        .contains("x-openclaw-blocked: missing-host"));
    settle().await;
    assert_eq!(env.gate.refusal_reasons(), ["missing-host"]);
    assert_eq!(env.upstream.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_upstream_addresses_are_refused_unless_overridden() {
    let env = Env::start(BOTH).await;
    let port = https(&env).port();
    // `localhost` is not in the override table: it resolves to loopback.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(&env.session_ca)
        .arg("--connect-to")
        .arg(format!("localhost:443:127.0.0.1:{port}"))
        .arg("https://localhost/hello")
        .output()
        .await
        .unwrap();
    let text = stdout(&out).to_ascii_lowercase();
    assert!(
        text.contains(" 403") && text.contains("x-openclaw-blocked: forbidden-upstream"),
        "{text}"
    );
    settle().await;
    assert_eq!(env.gate.refusal_reasons(), ["forbidden-upstream"]);
    assert_eq!(env.proxy.stats().upstream_connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_refusal_answers_403_without_upstream_connection() {
    let env = Env::start(BOTH).await;
    for proto in ["--http1.1", "--http2"] {
        let out = env
            .curl("/blocked/thing", &[proto, "-i", "-d", "x=1"])
            .await;
        let text = stdout(&out).to_ascii_lowercase();
        assert!(text.contains(" 403"), "{text} {out:?}");
        assert!(text.contains("x-openclaw-blocked: no-capability"), "{text}");
        assert!(
            text.contains("{\"blocked\":true,\"reason\":\"no-capability\"}"),
            "{text}"
        );
    }
    assert_eq!(env.upstream.connections(), 0);
    let ex = env.gate.exchanges.lock().unwrap().clone();
    assert_eq!(ex.len(), 2);
    assert!(ex
        .iter()
        .all(|e| e.outcome == proxy::ExchangeOutcome::Refused));
    // An allowed request afterwards does connect.
    let out = env.curl("/hello", &[]).await;
    assert!(out.status.success());
    assert_eq!(env.upstream.connections(), 1);
}

/// A Host header goes upstream as the sandbox wrote it, so it may name
/// only the host the proxy checked. A second Host (servers take the first,
/// the last, join them or refuse) and userinfo (`other@api.example.com`: a
/// server routing on the Host text would not read the host checked) are
/// refused before anything is sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_header_that_says_more_than_the_checked_host_is_refused() {
    let env = Env::start(BOTH).await;
    let cases = [
        format!("Host: {HOST}\r\nHost: {OTHER}\r\n"),
        format!("Host: {HOST}\r\nHost: {HOST}\r\n"),
        format!("Host: {OTHER}@{HOST}\r\n"),
        format!("Host: user:pw@{HOST}\r\n"),
    ];
    for host in &cases {
        let reply = raw_tls(
            &env,
            format!("GET /hello HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{host:?}: {reply}");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains("x-openclaw-blocked: malformed-request"),
            "{host:?}: {reply}"
        );
    }
    // Userinfo in an absolute-form target: dropped on the way upstream, but
    // a sign the request means another authority (RFC 9110 §4.2.4).
    let reply = raw_tls(
        &env,
        format!(
            "GET https://{OTHER}@{HOST}/hello HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    settle().await;
    assert_eq!(env.gate.refusal_reasons(), ["malformed-request"; 5]);
    let details: Vec<String> = env
        .gate
        .refusals
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.detail.clone())
        .collect();
    assert!(details[0].contains("more than one Host"), "{details:?}");
    assert!(details[2].contains("userinfo"), "{details:?}");
    assert!(details[4].contains("userinfo"), "{details:?}");
    assert_eq!(env.upstream.connections(), 0);

    // The same Host with the listener's port, alone, is forwarded, with
    // the bare name the gate read (`canonical_host`).
    let reply = raw_tls(
        &env,
        format!("GET /hello HTTP/1.1\r\nHost: {HOST}:443\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let hosts: Vec<String> = env
        .upstream
        .last_request()
        .expect("forwarded")
        .headers
        .get_all("host")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(hosts, [HOST]);
}

/// Headers with which a front proxy tells the application another URL,
/// host or path than the request line and Host say: an upstream that
/// trusts them would run something other than what was decided, so they
/// are refused on HTTP/1.1 and HTTP/2 before anything goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_reroute_the_request_upstream_are_refused() {
    let env = Env::start(BOTH).await;
    let headers = [
        "X-Original-URL: /admin/delete",
        "X-Rewrite-URL: /admin/delete",
        "X-Forwarded-Host: other.example.com",
        "X-Forwarded-Prefix: /admin",
        "X-Host: other.example.com",
        "Forwarded: host=other.example.com",
    ];
    let mut want = Vec::new();
    for proto in ["--http1.1", "--http2"] {
        for h in headers {
            let out = env.curl("/hello", &[proto, "-H", h, "-i"]).await;
            let text = stdout(&out).to_ascii_lowercase();
            assert!(text.contains(" 403"), "{proto} {h}: {text}");
            assert!(
                text.contains("x-openclaw-blocked: routing-override"),
                "{proto} {h}: {text}"
            );
            want.push("routing-override");
        }
    }
    settle().await;
    assert_eq!(env.gate.refusal_reasons(), want);
    let detail = env.gate.refusals.lock().unwrap()[0].detail.clone();
    assert!(detail.contains("x-original-url"), "{detail}");
    assert_eq!(env.upstream.connections(), 0);
    // Headers of the same families that route nothing still pass.
    let out = env
        .curl("/hello", &["-H", "X-Forwarded-For: 10.0.0.1", "-i"])
        .await;
    assert!(stdout(&out).contains(" 200"), "{}", stdout(&out));
}

/// Servers that hand headers on as CGI variables (PHP under Apache or
/// FastCGI, WSGI servers) read `_` in a name as `-`: `X_Forwarded_Host`
/// reroutes there as `X-Forwarded-Host` does, and was forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_headers_in_cgi_spelling_are_refused_too() {
    let env = Env::start(BOTH).await;
    let mut want = Vec::new();
    for proto in ["--http1.1", "--http2"] {
        for h in [
            "X_Forwarded_Host: other.example.com",
            "X-Original_URL: /admin",
        ] {
            let out = env.curl("/hello", &[proto, "-H", h, "-i"]).await;
            let text = stdout(&out).to_ascii_lowercase();
            assert!(text.contains(" 403"), "{proto} {h}: {text}");
            assert!(
                text.contains("x-openclaw-blocked: routing-override"),
                "{proto} {h}: {text}"
            );
            want.push("routing-override");
        }
    }
    settle().await;
    assert_eq!(env.gate.refusal_reasons(), want);
    assert_eq!(env.upstream.connections(), 0);
}
