//! HTTP/2 to upstream (`proxy/src/http/h2client.rs`, the h2 crate driven
//! by the proxy rather than by hyper's client): a body larger than every
//! flow-control window goes up and comes back whole while upstream answers
//! before it has read it; what upstream receives in the head; an idle
//! pooled HTTP/2 connection is really closed when the pool lets it go.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{stdout, Env, Recorder};

/// 3 MiB: over the upstream's and the proxy's per-stream windows, so the
/// request body waits for window updates both ways.
const BIG: usize = 3 * 1024 * 1024;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_every_window_goes_up_and_comes_back_whole() {
    let env = Env::start(&[b"h2"]).await;
    let sent = pattern(BIG);
    let file = env.dir.path().join("big.bin");
    std::fs::write(&file, &sent).unwrap();
    let back = env.dir.path().join("back.bin");
    // `/echo` answers at once and streams the request body back as it
    // reads it: the response head arrives while the body is still going up.
    let out = env
        .curl(
            "/echo",
            &[
                "--http2",
                "--data-binary",
                &format!("@{}", file.display()),
                "-o",
                back.to_str().unwrap(),
                "-w",
                "%{http_code} %{http_version}",
            ],
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "200 2");
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the echoed body differs from what was sent");
    assert_eq!(env.upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gets_the_head_hyper_would_have_sent() {
    let env = Env::start(&[b"h2"]).await;
    // curl over HTTP/1.1 to the proxy, HTTP/2 upstream (the ALPN offer is
    // the sandbox's, so offer both): a body of known size carries its
    // length, connection headers never reach upstream.
    let out = env
        .curl(
            "/headers",
            &[
                "--http2",
                "-H",
                "x-kept: 1",
                "-H",
                "te: trailers",
                "--data-binary",
                "abc",
            ],
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("content-length: 3\n"), "{text}");
    assert!(text.contains("x-kept: 1\n"), "{text}");
    for hop in [
        "connection:",
        "keep-alive:",
        "transfer-encoding:",
        "upgrade:",
    ] {
        assert!(!text.contains(hop), "{hop} reached upstream: {text}");
    }
    let seen = env.upstream.last_request().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_when_the_pool_lets_it_go() {
    let env = Env::start_with(&[b"h2"], Recorder::default(), |cfg| {
        cfg.upstream.pool_idle_timeout = Duration::from_millis(200);
    })
    .await;
    assert!(env.curl("/hello", &["--http2"]).await.status.success());
    assert_eq!(env.upstream.connections(), 1);
    // Past the idle timeout the sweep drops the pool's handle; with no
    // stream left the connection must end, not linger for the session.
    let mut waited = Duration::ZERO;
    while env.upstream.closed() < 1 {
        assert!(
            waited < Duration::from_secs(30),
            "the idle HTTP/2 upstream connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert!(env.curl("/hello", &["--http2"]).await.status.success());
    assert_eq!(env.upstream.connections(), 2);
}
