//! What upstream receives is what the gate read and what the exchange
//! reports: bodies, heads and fields that two HTTP parsers (the proxy's
//! and upstream's, or the guard's and hyper's) could read differently.
//! Real TLS on both legs; raw bytes where the exact shape matters.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Env, HOST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Send raw bytes over TLS (SNI = HOST, ALPN http/1.1) and read until the
/// proxy closes.
async fn raw_tls(env: &Env, bytes: &[u8]) -> String {
    let mut tls = env.tls(b"http/1.1").await;
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// httparse (under hyper) takes a bare LF as a line end; the guard looked
/// only for CRLF CRLF, so a bare-LF head reached hyper unchecked and left
/// the guard out of step: the heads pipelined behind it (here a duplicate
/// Content-Length, which hyper merges) were never checked. A bare LF in a head is now
/// refused before hyper reads any of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_with_bare_lf_line_ends_is_refused() {
    let env = Env::start(BOTH).await;
    let cases = [
        format!("GET /hello HTTP/1.1\nHost: {HOST}\nConnection: close\n\n"),
        format!(
            "GET /hello HTTP/1.1\nHost: {HOST}\n\nGET /hello HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        ),
        format!("GET /hello HTTP/1.1\r\nHost: {HOST}\nConnection: close\r\n\r\n"),
    ];
    for bytes in &cases {
        let reply = raw_tls(&env, bytes.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400 "), "{bytes:?}: {reply}");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains("\r\nx-openclaw-blocked: malformed-request\r\n"),
            "{reply}"
        );
        assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(env.gate.refusal_reasons(), ["malformed-request"; 3]);
    assert_eq!(env.upstream.connections(), 0);
}
