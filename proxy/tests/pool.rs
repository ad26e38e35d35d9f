//! Upstream connection pooling: sandbox connections of one session share
//! upstream connections; sessions never do; upgrades are never pooled; an
//! idle pooled connection expires; a request that reached upstream is never
//! sent twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{stdout, Env, Recorder, HOST};
use proxy::{AllowAll, Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_connections_of_one_session_share_upstream_connections() {
    // HTTP/1.1 upstream: one connection, handed from one sandbox connection
    // to the next once its response has been delivered.
    let env = Env::start(&[b"http/1.1"]).await;
    for _ in 0..3 {
        let out = env.curl("/hello", &["--http1.1"]).await;
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(env.proxy.stats().connections, 3);
    assert_eq!(env.upstream.connections(), 1);
    assert_eq!(env.proxy.stats().upstream_connections, 1);

    // HTTP/2 upstream: concurrent sandbox connections multiplex on one.
    let env = Env::start(&[b"h2"]).await;
    let out = env.curl("/hello", &["--http2"]).await; // opens it
    assert!(out.status.success(), "{out:?}");
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(env.curl("/sse?n=2&gap_ms=200", &["--http2"]));
    }
    for out in futures_util::future::join_all(runs).await {
        assert_eq!(stdout(&out).matches("data:").count(), 2, "{out:?}");
    }
    assert_eq!(env.proxy.stats().connections, 5);
    assert_eq!(env.upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_never_share_upstream_connections() {
    let env = Env::start(BOTH).await;
    let mut cfg = ProxyConfig::loopback("second-session");
    cfg.upstream.platform_roots = false;
    cfg.upstream.extra_ca_files = vec![env.upstream_ca.write_pem(env.dir.path())];
    cfg.upstream.overrides = HashMap::from([(HOST.to_owned(), env.upstream.addr)]);
    let second = Proxy::start(cfg, Arc::new(AllowAll)).await.unwrap();
    let ca2 = env.dir.path().join("second-ca.pem");
    std::fs::write(&ca2, second.ca_pem()).unwrap();
    for _ in 0..2 {
        assert!(env.curl("/hello", &["--http1.1"]).await.status.success());
        let port = second.https_addr().unwrap().port();
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--http1.1", "--max-time", "20", "--cacert"])
            .arg(&ca2)
            .arg("--connect-to")
            .arg(format!("{HOST}:443:127.0.0.1:{port}"))
            .arg(format!("https://{HOST}/hello"))
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    // One per session, each reused by its own second request.
    assert_eq!(env.upstream.connections(), 2);
    assert_eq!(env.proxy.stats().upstream_connections, 1);
    assert_eq!(second.stats().upstream_connections, 1);
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_never_pooled() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let env = Env::start(BOTH).await;
    assert!(env.curl("/hello", &["--http1.1"]).await.status.success());
    assert_eq!(env.upstream.connections(), 1);
    for i in 0..2 {
        let tls = env.tls(b"http/1.1").await;
        let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{HOST}/ws"), tls)
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
        ws.close(None).await.unwrap();
        // Each upgrade had its own connection, the pooled one stayed idle.
        assert_eq!(env.upstream.connections(), 2 + i);
    }
    assert!(env.curl("/hello", &["--http1.1"]).await.status.success());
    assert_eq!(env.upstream.connections(), 3, "the pooled one again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_http1_requests_reuse_their_connections_in_the_next_round() {
    // 40 sandbox connections at once, twice: the second round finds every
    // connection the first opened waiting idle, and opens none beyond the
    // peak concurrency (an idle cap below it would close some, to be
    // opened again at the cost of a TLS handshake each).
    const AT_ONCE: usize = 40;
    let env = Env::start(&[b"http/1.1"]).await;
    for round in 0..2 {
        let runs: Vec<_> = (0..AT_ONCE)
            .map(|_| env.curl("/sse?n=2&gap_ms=300", &["--http1.1"]))
            .collect();
        for out in futures_util::future::join_all(runs).await {
            assert_eq!(stdout(&out).matches("data:").count(), 2, "{out:?}");
        }
        let opened = env.upstream.connections();
        assert!(
            opened <= AT_ONCE,
            "round {round}: {opened} upstream connections for {AT_ONCE} concurrent requests"
        );
    }
    assert_eq!(env.proxy.stats().connections, 2 * AT_ONCE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_expire() {
    let env = Env::start_with(&[b"http/1.1"], Recorder::default(), |cfg| {
        cfg.upstream.pool_idle_timeout = Duration::from_millis(200);
    })
    .await;
    assert!(env.curl("/hello", &["--http1.1"]).await.status.success());
    assert!(env.curl("/hello", &["--http1.1"]).await.status.success());
    assert_eq!(env.upstream.connections(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(env.curl("/hello", &["--http1.1"]).await.status.success());
    assert_eq!(env.upstream.connections(), 2);
}

/// An upstream that reads one request head per connection, counts it, and
/// closes without answering.
async fn answer_nothing_upstream(
    ca: &test_support::TestCa,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&[HOST], &[b"http/1.1"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let h = heads.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, h) = (acceptor.clone(), h.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_reached_upstream_is_never_sent_twice() {
    let ca = test_support::TestCa::new("silent upstream");
    let (addr, heads) = answer_nothing_upstream(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = ca.write_pem(dir.path());
    let env = Env::start_with(BOTH, Recorder::default(), |cfg| {
        cfg.upstream.extra_ca_files = vec![pem];
        cfg.upstream.overrides.insert(HOST.into(), addr);
    })
    .await;
    for (method, expected) in [("GET", 1), ("POST", 2)] {
        let out = env
            .curl("/hello", &["--http1.1", "-i", "-X", method, "-d", "x"])
            .await;
        let text = stdout(&out);
        assert!(text.starts_with("HTTP/1.1 502"), "{method}: {text}");
        assert_eq!(heads.load(Ordering::SeqCst), expected, "{method} sent once");
    }
}
