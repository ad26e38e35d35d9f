//! Real curl and rustls clients through the proxy to a local HTTPS upstream:
//! HTTP/1.1 and HTTP/2, GET and POST, streaming uploads, pipelining, ALPN
//! passed through, SSE, WebSocket, plain HTTP, leaf certificate caching.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{stdout, Env, HOST};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_get_over_http11_and_h2() {
    let env = Env::start(BOTH).await;
    let out = env
        .curl("/hello", &["--http1.1", "-w", " %{http_version}"])
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), format!("hello {HOST} HTTP/1.1 GET 1.1"));
    let out = env
        .curl("/hello", &["--http2", "-w", " %{http_version}"])
        .await;
    assert!(out.status.success(), "{out:?}");
    // h2 on both legs; upstream saw :authority (hyper maps it to the URI host).
    assert_eq!(stdout(&out), format!("hello {HOST} HTTP/2.0 GET 2"));
    let ex = env.gate.exchanges_when(2).await;
    assert_eq!(ex.len(), 2);
    assert!(ex
        .iter()
        .all(|e| e.status == Some(http::StatusCode::OK) && e.bytes_down > 0));
    env.proxy.shutdown().await;
}

/// A HEAD is answered with the GET's head and no body, whichever protocol
/// each leg speaks: upstream's `Content-Length` says what a GET would carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_over_http11_and_h2_gets_the_head_and_no_body() {
    // Upstream speaks what the sandbox offered, or HTTP/1.1 only.
    for upstream in [&[b"http/1.1".as_slice()][..], BOTH] {
        let env = Env::start(upstream).await;
        for sandbox in ["--http1.1", "--http2"] {
            let out = env.curl("/hello", &["-I", sandbox]).await;
            assert!(
                out.status.success(),
                "{sandbox}, upstream {upstream:?}: {out:?}"
            );
            let head = stdout(&out).to_ascii_lowercase();
            assert!(head.contains(" 200"), "{head}");
            assert!(head.contains("content-length: "), "{head}");
        }
        env.proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_post_fixed_and_chunked_bodies_are_echoed() {
    let env = Env::start(BOTH).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let file = env.dir.path().join("upload.bin");
    std::fs::write(&file, &data).unwrap();
    let at = format!("@{}", file.display());
    for extra in [
        vec!["--http1.1"],
        vec!["--http1.1", "-H", "Transfer-Encoding: chunked"],
        vec!["--http2"],
    ] {
        let mut args = extra.clone();
        args.extend(["--data-binary", &at]);
        let out = env.curl("/echo", &args).await;
        assert!(out.status.success(), "{extra:?}: {out:?}");
        assert_eq!(out.stdout.len(), data.len(), "{extra:?}");
        assert!(out.stdout == data, "{extra:?}: echoed body differs");
        let seen = env.upstream.last_request().unwrap();
        assert_eq!(seen.method, "POST");
    }
    let ex = env.gate.exchanges_when(3).await;
    assert_eq!(ex.len(), 3, "{ex:?}");
    assert!(ex.iter().all(|e| e.bytes_up == data.len() as u64), "{ex:?}");
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_one_upstream_connection_and_pipelining_works() {
    let env = Env::start(&[b"http/1.1"]).await;
    let port = env.proxy.https_addr().unwrap().port();
    let cfg = test_support::client_config(env.proxy.ca_pem(), &[b"http/1.1"]);
    let mut tls = test_support::tls_connect(([127, 0, 0, 1], port).into(), HOST, cfg)
        .await
        .unwrap();
    // Three pipelined requests in one write.
    let req = format!("GET /hello HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    tls.write_all(
        format!("{req}{req}GET /hello HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut all = String::new();
    tls.read_to_string(&mut all).await.unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 3, "{all}");
    assert_eq!(all.matches("hello api.example.com HTTP/1.1 GET").count(), 3);
    assert_eq!(env.upstream.connections(), 1, "keep-alive upstream");
    assert_eq!(env.upstream.requests(), 3);
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_answer_follows_what_upstream_chose() {
    // Upstream speaks only HTTP/1.1; the client offers h2 and http/1.1.
    let env = Env::start(&[b"http/1.1"]).await;
    let port = env.proxy.https_addr().unwrap().port();
    let cfg = test_support::client_config(env.proxy.ca_pem(), BOTH);
    let mut negotiated = Vec::new();
    for _ in 0..2 {
        let tls = test_support::tls_connect(([127, 0, 0, 1], port).into(), HOST, cfg.clone())
            .await
            .unwrap();
        let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        negotiated.push(alpn.clone());
        let io = TokioIo::new(tls);
        let status = if alpn.as_deref() == Some(b"h2") {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get(format!("https://{HOST}/hello"))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            send.send_request(req).await.unwrap().status()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("/hello")
                .header("host", HOST)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            send.send_request(req).await.unwrap().status()
        };
        assert_eq!(status, 200);
        assert_eq!(
            env.upstream.last_request().unwrap().version,
            http::Version::HTTP_11
        );
    }
    // First contact: the client's preference (translated h2 → HTTP/1.1);
    // afterwards the proxy answers what upstream chose.
    assert_eq!(negotiated[0].as_deref(), Some(&b"h2"[..]));
    assert_eq!(negotiated[1].as_deref(), Some(&b"http/1.1"[..]));
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one() {
    let env = Env::start(BOTH).await;
    let port = env.proxy.https_addr().unwrap().port();
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let cfg = test_support::client_config(env.proxy.ca_pem(), &[alpn]);
        let tls = test_support::tls_connect(([127, 0, 0, 1], port).into(), HOST, cfg)
            .await
            .unwrap();
        let io = TokioIo::new(tls);
        let resp = if alpn == b"h2" {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get(format!("https://{HOST}/sse?n=4&gap_ms=300"))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("/sse?n=4&gap_ms=300")
                .header("host", HOST)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            send.send_request(req).await.unwrap()
        };
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let start = Instant::now();
        let mut body = resp.into_body();
        let mut arrivals = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                if data.is_empty() {
                    continue; // HTTP/2 may end the stream with an empty DATA frame
                }
                arrivals.push((start.elapsed(), String::from_utf8(data.to_vec()).unwrap()));
            }
        }
        let events: Vec<&str> = arrivals.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            events,
            [
                "data: event 0\n\n",
                "data: event 1\n\n",
                "data: event 2\n\n",
                "data: event 3\n\n"
            ],
            "{alpn:?}"
        );
        // Streamed, not buffered: the first event is here long before the last.
        assert!(arrivals[0].0 < Duration::from_millis(250), "{arrivals:?}");
        assert!(arrivals[3].0 >= Duration::from_millis(800), "{arrivals:?}");
    }
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let env = Env::start(BOTH).await;
    let port = env.proxy.https_addr().unwrap().port();
    let cfg = test_support::client_config(env.proxy.ca_pem(), &[b"http/1.1"]);
    let tls = test_support::tls_connect(([127, 0, 0, 1], port).into(), HOST, cfg)
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{HOST}/ws"), tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo, Message::text(format!("ping {i}")));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.close(None).await.unwrap();
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_listener_forwards_by_host_header() {
    let plain = test_support::Upstream::http().await;
    let env = Env::start_with(BOTH, common::Recorder::default(), |cfg| {
        cfg.upstream
            .overrides
            .insert("plain.example.com".into(), plain.addr);
    })
    .await;
    let port = env.proxy.http_addr().unwrap().port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--connect-to"])
        .arg(format!("plain.example.com:80:127.0.0.1:{port}"))
        .arg("http://plain.example.com/hello")
        .output()
        .await
        .unwrap();
    assert_eq!(
        stdout(&out),
        "hello plain.example.com HTTP/1.1 GET",
        "{out:?}"
    );
    assert_eq!(plain.connections(), 1);
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_is_minted_once_and_served_from_cache_after() {
    let env = Env::start(BOTH).await;
    for _ in 0..3 {
        let out = env.curl("/hello", &["--http1.1"]).await;
        assert!(out.status.success(), "{out:?}");
    }
    let stats = env.proxy.stats();
    assert_eq!(stats.leaves_minted, 1, "{stats:?}");
    assert!(stats.leaf_cache_hits >= 2, "{stats:?}");
    env.proxy.shutdown().await;
}

/// POST `abc` with the trailer `x-checksum: sum` to `/trailers` on `addr`
/// (SNI and Host = HOST) over `alpn`; returns what the server says it saw.
async fn post_with_trailers(addr: std::net::SocketAddr, ca_pem: &str, alpn: &[u8]) -> String {
    let cfg = test_support::client_config(ca_pem, &[alpn]);
    let tls = test_support::tls_connect(addr, HOST, cfg).await.unwrap();
    let io = TokioIo::new(tls);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("sum"));
    let body = http_body_util::Full::new(bytes::Bytes::from_static(b"abc"))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    let resp = if alpn == b"h2" {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(format!("https://{HOST}/trailers"))
            .body(body)
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("/trailers")
            .header("host", HOST)
            .header("transfer-encoding", "chunked")
            // hyper sends only the trailer fields the head announces.
            .header("trailer", "x-checksum")
            .body(body)
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Request trailers come after the head and, for a streamed body, after
/// the request has gone upstream: the gate never decides on them, so they
/// are not forwarded (a server that merges them into the headers would act
/// on fields nobody checked). The upstream's `/trailers` route does see
/// trailers sent to it directly, so the check below can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_are_not_forwarded() {
    let env = Env::start(BOTH).await;
    let proxy = env.proxy.https_addr().unwrap();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let direct = post_with_trailers(env.upstream.addr, env.upstream_ca.cert_pem(), alpn).await;
        assert_eq!(direct, "x-checksum: sum\n", "{alpn:?}");
        let through = post_with_trailers(proxy, env.proxy.ca_pem(), alpn).await;
        assert_eq!(through, "", "{alpn:?}");
    }
    env.proxy.shutdown().await;
}
