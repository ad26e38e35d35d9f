//! Slow and idle clients: a stalled or trickling request body is cut and
//! reported, idle HTTP/1.1 and HTTP/2 connections are closed. Real TLS
//! clients against the proxy with short limits.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Env, Recorder, HOST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

async fn env_with(tweak: impl FnOnce(&mut proxy::Limits)) -> Env {
    Env::start_with(BOTH, Recorder::default(), |cfg| tweak(&mut cfg.limits)).await
}

async fn read_all_within(tls: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, tls.read_to_end(&mut out))
        .await
        .ok()
        .map(|_| String::from_utf8_lossy(&out).into_owned())
}

/// Head, then part of the body, then nothing: 408, Connection: close, a
/// `body-timeout` refusal, and no upstream connection (the gate was still
/// reading the body when the deadline passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_is_cut_and_reported() {
    let env = env_with(|l| l.body_timeout = Duration::from_millis(300)).await;
    let mut tls = env.tls(b"http/1.1").await;
    tls.write_all(
        format!("POST /buffer HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n0123456789")
            .as_bytes(),
    )
    .await
    .unwrap();
    let start = Instant::now();
    let reply = read_all_within(&mut tls, Duration::from_secs(10))
        .await
        .expect("the proxy ends the connection");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    let lower = reply.to_ascii_lowercase();
    assert!(
        lower.contains("x-openclaw-blocked: body-timeout"),
        "{reply}"
    );
    assert!(lower.contains("connection: close"), "{reply}");
    assert_eq!(env.gate.refusal_reasons(), ["body-timeout"]);
    let r = &env.gate.refusals.lock().unwrap()[0];
    assert_eq!(r.request.as_ref().unwrap().path, "/buffer");
    assert_eq!(env.upstream.connections(), 0);
}

/// A body that keeps arriving, one byte at a time, too slowly: it never
/// stalls for a whole `body_timeout`, yet it is cut when its allowance
/// (`body_timeout` + bytes / `body_min_rate`) is used up. Over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_h2_request_body_is_cut_and_reported() {
    use http_body_util::BodyExt;
    let env = env_with(|l| {
        l.body_timeout = Duration::from_millis(800);
        l.body_min_rate = 1000;
    })
    .await;
    let io = hyper_util::rt::TokioIo::new(env.tls(b"h2").await);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let feeder = tokio::spawn(async move {
        // A byte every 500 ms: each wait is under 800 ms, the total is not.
        for _ in 0..20 {
            if tx.send(bytes::Bytes::from_static(b"x")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|b| {
            (
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)),
                rx,
            )
        })
    }));
    let req = http::Request::post(format!("https://{HOST}/buffer"))
        .body(body.boxed())
        .unwrap();
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answered before the body ends")
        .unwrap();
    assert_eq!(resp.status(), 408);
    assert_eq!(resp.headers()["x-openclaw-blocked"], "body-timeout");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(env.gate.refusal_reasons(), ["body-timeout"]);
    assert_eq!(env.upstream.connections(), 0);
    feeder.abort();
}

/// An idle HTTP/1.1 keep-alive connection is closed after `header_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http11_keep_alive_connection_is_closed() {
    let env = env_with(|l| l.header_timeout = Duration::from_millis(400)).await;
    let mut tls = env.tls(b"http/1.1").await;
    tls.write_all(format!("GET /hello HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let start = Instant::now();
    let rest = read_all_within(&mut tls, Duration::from_secs(10)).await;
    assert!(rest.is_some(), "idle connection still open after 10 s");
    assert!(start.elapsed() >= Duration::from_millis(300));
}

/// An idle HTTP/2 connection is closed after `idle_timeout`, although the
/// client answers the proxy's pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connection_is_closed() {
    let env = env_with(|l| {
        l.idle_timeout = Duration::from_millis(400);
        l.header_timeout = Duration::from_millis(100); // ping interval
    })
    .await;
    let io = hyper_util::rt::TokioIo::new(env.tls(b"h2").await);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("https://{HOST}/hello"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("idle h2 connection still open after 10 s")
        .unwrap()
        .ok();
    assert!(start.elapsed() >= Duration::from_millis(300));
    // A long response keeps it open: streams in flight are not idle.
    let io = hyper_util::rt::TokioIo::new(env.tls(b"h2").await);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://{HOST}/sse?n=3&gap_ms=400"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    use http_body_util::BodyExt;
    let body = send.send_request(req).await.unwrap().into_body();
    let all = body.collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&all).matches("data:").count(), 3);
}

/// A sandbox that opens an HTTP/2 connection and never sends the client
/// preface holds no connection slot past `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connection_without_a_preface_is_closed_when_idle() {
    let env = env_with(|l| l.idle_timeout = Duration::from_millis(400)).await;
    let mut tls = env.tls(b"h2").await;
    let start = Instant::now();
    // The proxy's SETTINGS come first; then the connection must end.
    let rest = read_all_within(&mut tls, Duration::from_secs(10)).await;
    assert!(
        rest.is_some(),
        "h2 connection without a preface still open after 10 s"
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(env.upstream.connections(), 0);
}

/// Past `max_connections`, new connections are closed on accept and
/// reported; a slot freed is usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let env = env_with(|l| l.max_connections = 2).await;
    let held = [env.tls(b"http/1.1").await, env.tls(b"http/1.1").await];
    let mut third = tokio::net::TcpStream::connect(env.proxy.https_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(env.gate.refusal_reasons(), ["connection-limit"]);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = env.curl("/hello", &["--http1.1"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(env.upstream.connections(), 1, "only the allowed request's");
}

/// A client that connects and sends nothing (or never finishes its
/// handshake) is cut after `handshake_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_cut_after_the_handshake_timeout() {
    let env = env_with(|l| l.handshake_timeout = Duration::from_millis(300)).await;
    let mut tcp = tokio::net::TcpStream::connect(env.proxy.https_addr().unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("cut before 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(env.upstream.connections(), 0);
}
