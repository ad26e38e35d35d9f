//! HTTP/2 requests h2 would refuse on its own (a header list over its limit,
//! malformed requests, CONTINUATION floods): each is refused with exactly one
//! refusal event and no upstream connection. Valid shapes that exercise the
//! same machinery (CONTINUATION, padding, priority, the HPACK dynamic table)
//! are forwarded. A raw HTTP/2 client over real TLS, since h2's own client
//! will not send malformed requests.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Env, Recorder, HOST};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
const MAX_HEADER_BYTES: usize = 16 * 1024;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

async fn env() -> Env {
    Env::start_with(BOTH, Recorder::default(), |cfg| {
        cfg.limits.max_header_bytes = MAX_HEADER_BYTES;
    })
    .await
}

async fn settle() {
    // Refusal events are reported as the connection task unwinds.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn int(out: &mut Vec<u8>, first: u8, prefix: u8, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// HPACK literal, new name, no Huffman; with or without indexing.
fn literal(name: &str, value: &str, index: bool) -> Vec<u8> {
    let mut out = vec![if index { 0x40 } else { 0 }];
    int(&mut out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    int(&mut out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
    out
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    fields
        .iter()
        .flat_map(|(n, v)| literal(n, v, false))
        .collect()
}

/// A GET for `path` with the usual pseudo-headers, then `extra`.
fn get(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut f = vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", HOST),
        (":path", path),
    ];
    f.extend_from_slice(extra);
    block(&f)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header block as HEADERS + CONTINUATION frames of at most `chunk` bytes.
fn split_block(stream: u32, end_stream: bool, block: &[u8], chunk: usize) -> Vec<u8> {
    let parts: Vec<&[u8]> = block.chunks(chunk).collect();
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let last = if i + 1 == parts.len() { END_HEADERS } else { 0 };
        if i == 0 {
            let es = if end_stream { END_STREAM } else { 0 };
            out.extend(frame(HEADERS, es | last, stream, part));
        } else {
            out.extend(frame(CONTINUATION, last, stream, part));
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Response { status: u16, body: String },
    Reset(u32),
    GoAway(u32),
    Closed,
}

/// A hand-written HTTP/2 client: raw frames over a rustls connection.
struct RawH2 {
    tls: TlsStream<TcpStream>,
    decoder: loona_hpack::Decoder<'static>,
    buf: Vec<u8>,
}

impl RawH2 {
    async fn connect(env: &Env) -> RawH2 {
        let mut tls = env.tls(b"h2").await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        tls.write_all(&hello).await.unwrap();
        RawH2 {
            tls,
            decoder: loona_hpack::Decoder::new(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The proxy may already have cut the connection: the outcome says.
        let _ = self.tls.write_all(bytes).await;
        let _ = self.tls.flush().await;
    }

    async fn read_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    return Some((f[3], f[4], stream, f[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(20), self.tls.read(&mut chunk))
                .await
                .expect("no answer from the proxy within 20 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Frames until `stream` ends (or the connection does).
    async fn outcome(&mut self, stream: u32) -> Outcome {
        let mut status = None;
        let mut body = Vec::new();
        while let Some((kind, flags, id, payload)) = self.read_frame().await {
            match kind {
                SETTINGS if flags & 1 == 0 => self.send(&frame(SETTINGS, 1, 0, &[])).await,
                HEADERS => {
                    // Every block is decoded, to keep the table in step.
                    let mut st = None;
                    self.decoder
                        .decode_with_cb(&payload, |n, v| {
                            if &*n == b":status" {
                                st = std::str::from_utf8(&v).unwrap().parse().ok();
                            }
                        })
                        .unwrap();
                    if id == stream {
                        // Trailers carry no :status.
                        status = status.or(st);
                        if flags & END_STREAM != 0 {
                            break;
                        }
                    }
                }
                DATA if id == stream => {
                    body.extend_from_slice(&payload);
                    if flags & END_STREAM != 0 {
                        break;
                    }
                }
                RST_STREAM if id == stream => {
                    return Outcome::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()))
                }
                GOAWAY => {
                    return Outcome::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap()))
                }
                _ => {}
            }
        }
        match status {
            Some(status) => Outcome::Response {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
            None => Outcome::Closed,
        }
    }
}

fn reasons(env: &Env) -> Vec<&'static str> {
    env.gate.refusal_reasons()
}

/// Send `bytes` (after the preface) on a new connection; the request on
/// stream 1 must be refused by closing the connection, with one event.
async fn assert_refused(env: &Env, what: &str, bytes: &[u8], reason: &str) {
    let before = reasons(env).len();
    let mut c = RawH2::connect(env).await;
    c.send(bytes).await;
    assert_eq!(c.outcome(1).await, Outcome::Closed, "{what}");
    settle().await;
    let r = reasons(env);
    assert_eq!(r[before..], [reason], "{what}: exactly one event");
    let detail = &env.gate.refusals.lock().unwrap()[before].detail;
    assert!(!detail.contains("secret"), "{what}: {detail}");
    assert_eq!(env.upstream.connections(), 0, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_lists_over_h2s_limit_end_the_connection_with_one_event() {
    let env = env().await;
    // 5 × the limit (over h2's 4 ×), in HEADERS + CONTINUATION frames.
    let big = "s".repeat(5 * MAX_HEADER_BYTES);
    let b = get("/hello", &[("x-secret", &big)]);
    assert_refused(
        &env,
        "list over 4 × max",
        &split_block(1, true, &b, 16 * 1024),
        "headers-too-large",
    )
    .await;
    // Small on the wire, huge once decoded: one 4 KB table entry, then
    // hundreds of one-byte references to it (over h2's GOAWAY threshold).
    let mut b = get("/hello", &[]);
    b.extend(literal("x-secret", &"s".repeat(4000), true));
    b.extend(std::iter::repeat_n(0x80 | 62, 400));
    assert!(b.len() < 16 * 1024);
    assert_refused(
        &env,
        "HPACK bomb",
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &b),
        "headers-too-large",
    )
    .await;
    // A CONTINUATION flood: empty frames that never end the block.
    let mut flood = frame(HEADERS, END_STREAM, 1, &get("/hello", &[]));
    for _ in 0..200 {
        flood.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    assert_refused(&env, "CONTINUATION flood", &flood, "headers-too-large").await;
    assert_eq!(env.upstream.requests(), 0);
}

/// Between our limit and h2's, `handle` answers 431 and reports it; the
/// watch lets the list through, so there is still exactly one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_between_the_two_limits_are_reported_once_by_handle() {
    let env = env().await;
    let mut c = RawH2::connect(&env).await;
    let big = "s".repeat(2 * MAX_HEADER_BYTES);
    let b = get("/hello", &[("x-secret", &big)]);
    c.send(&split_block(1, true, &b, 16 * 1024)).await;
    match c.outcome(1).await {
        Outcome::Response { status, body } => {
            assert_eq!(status, 431);
            assert!(body.contains("headers-too-large"), "{body}");
        }
        other => panic!("expected a 431 response, got {other:?}"),
    }
    // The connection carries on.
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &get("/hello", &[]),
    ))
    .await;
    match c.outcome(3).await {
        Outcome::Response { status, .. } => assert_eq!(status, 200),
        other => panic!("expected a 200 response, got {other:?}"),
    }
    settle().await;
    assert_eq!(reasons(&env), ["headers-too-large"]);
    assert_eq!(env.upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_h2_finds_malformed_end_the_connection_with_one_event() {
    let env = env().await;
    let pseudo_after = block(&[
        (":method", "GET"),
        (":scheme", "https"),
        ("x-a", "1"),
        (":authority", HOST),
        (":path", "/hello"),
    ]);
    let no_method = block(&[
        (":scheme", "https"),
        (":authority", HOST),
        (":path", "/hello"),
    ]);
    let no_path = block(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", HOST),
    ]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("connection", get("/hello", &[("connection", "close")])),
        ("keep-alive", get("/hello", &[("keep-alive", "timeout=5")])),
        (
            "proxy-connection",
            get("/hello", &[("proxy-connection", "x")]),
        ),
        (
            "transfer-encoding",
            get("/hello", &[("transfer-encoding", "chunked")]),
        ),
        ("upgrade", get("/hello", &[("upgrade", "websocket")])),
        ("te: gzip", get("/hello", &[("te", "gzip")])),
        ("uppercase name", get("/hello", &[("X-Secret", "1")])),
        ("missing :method", no_method),
        ("missing :path", no_path),
        ("unknown pseudo-header", get("/hello", &[(":secret", "1")])),
        ("pseudo after regular", pseudo_after),
        ("repeated pseudo", get("/hello", &[(":path", "/again")])),
        ("status in request", get("/hello", &[(":status", "200")])),
        ("leading space", get("/hello", &[("x-a", " 1")])),
        ("trailing tab", get("/hello", &[("x-a", "1\t")])),
    ];
    for (what, b) in &cases {
        let f = frame(HEADERS, END_HEADERS | END_STREAM, 1, b);
        assert_refused(&env, what, &f, "malformed-request").await;
    }
    // A non-zero content-length on a request that ends with its headers.
    let f = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get("/echo", &[("content-length", "5")]),
    );
    assert_refused(
        &env,
        "END_STREAM with content-length",
        &f,
        "malformed-request",
    )
    .await;
    // Conflicting content-lengths: a smuggling shape.
    let f = frame(
        HEADERS,
        END_HEADERS,
        1,
        &get("/echo", &[("content-length", "5"), ("content-length", "6")]),
    );
    assert_refused(&env, "conflicting content-length", &f, "request-smuggling").await;
    // A malformed request behind a valid one on the same connection: the
    // valid one is answered, then the connection ends with one event.
    let mut c = RawH2::connect(&env).await;
    let before = reasons(&env).len();
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get("/hello", &[]),
    ))
    .await;
    assert!(matches!(
        c.outcome(1).await,
        Outcome::Response { status: 200, .. }
    ));
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &get("/hello", &[("connection", "close")]),
    ))
    .await;
    assert_eq!(c.outcome(3).await, Outcome::Closed);
    settle().await;
    assert_eq!(reasons(&env)[before..], ["malformed-request"]);
    assert_eq!(env.upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_blocks_using_continuation_padding_priority_and_the_table_are_forwarded() {
    let env = env().await;
    let mut c = RawH2::connect(&env).await;
    // A block split across CONTINUATION frames: as many as h2 allows for
    // this limit (5 without END_HEADERS, then the last).
    let b = get("/headers", &[("x-long", &"v".repeat(1500))]);
    let frames = split_block(1, true, &b, 240);
    assert_eq!(frames.len(), b.len() + 9 * 7);
    c.send(&frames).await;
    match c.outcome(1).await {
        Outcome::Response { status, body } => {
            assert_eq!(status, 200);
            assert!(
                body.contains(&format!("x-long: {}", "v".repeat(1500))),
                "{body}"
            );
        }
        other => panic!("split block: {other:?}"),
    }
    // Padded, with priority fields.
    let mut payload = vec![9]; // pad length
    payload.extend_from_slice(&[0, 0, 0, 0, 15]); // depends on stream 0, weight
    payload.extend(get("/headers", &[("x-padded", "yes")]));
    payload.extend_from_slice(&[0; 9]);
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM | PADDED | PRIORITY,
        3,
        &payload,
    ))
    .await;
    match c.outcome(3).await {
        Outcome::Response { status, body } => {
            assert_eq!(status, 200);
            assert!(body.contains("x-padded: yes"), "{body}");
        }
        other => panic!("padded block: {other:?}"),
    }
    // Several requests through the dynamic table: later blocks are mostly
    // references to entries the earlier ones added.
    let mut enc = loona_hpack::Encoder::new();
    let mut sizes = Vec::new();
    let token = "t".repeat(200);
    for i in 0..6u32 {
        let n = format!("n{i}");
        let fields: [(&[u8], &[u8]); 6] = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", HOST.as_bytes()),
            (b":path", b"/headers"),
            (b"x-token", token.as_bytes()),
            (b"x-n", n.as_bytes()),
        ];
        let b = enc.encode(fields);
        sizes.push(b.len());
        let stream = 5 + 2 * i;
        c.send(&frame(HEADERS, END_HEADERS | END_STREAM, stream, &b))
            .await;
        match c.outcome(stream).await {
            Outcome::Response { status, body } => {
                assert_eq!(status, 200);
                assert!(body.contains(&format!("x-token: {token}")), "{body}");
                assert!(body.contains(&format!("x-n: n{i}")), "{body}");
            }
            other => panic!("table request {i}: {other:?}"),
        }
    }
    assert!(sizes[5] < sizes[0] / 2, "{sizes:?}");
    // Trailers on a request body still pass.
    c.send(&frame(
        HEADERS,
        END_HEADERS,
        17,
        &block(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", HOST),
            (":path", "/echo"),
            ("te", "trailers"),
        ]),
    ))
    .await;
    c.send(&frame(DATA, 0, 17, b"body bytes")).await;
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        17,
        &block(&[("x-t", "1")]),
    ))
    .await;
    match c.outcome(17).await {
        Outcome::Response { status, body } => {
            assert_eq!(status, 200);
            assert_eq!(body, "body bytes");
        }
        other => panic!("trailers: {other:?}"),
    }
    settle().await;
    assert!(reasons(&env).is_empty(), "{:?}", reasons(&env));
    assert_eq!(env.upstream.requests(), 9);
}

/// Over HTTP/2 a `host` field may come beside `:authority`; towards an
/// HTTP/1.1 upstream it becomes the Host header, so two of them are
/// refused as on HTTP/1.1 (`refusals.rs`), before anything goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_field_beside_authority_is_refused() {
    let env = Env::start_with(&[b"http/1.1"], Recorder::default(), |cfg| {
        cfg.limits.max_header_bytes = MAX_HEADER_BYTES;
    })
    .await;
    // Offer both, as curl does: the proxy offers upstream what the sandbox
    // offered, and this upstream speaks only HTTP/1.1.
    let cfg = test_support::client_config(env.proxy.ca_pem(), &[b"h2", b"http/1.1"]);
    let mut tls = test_support::tls_connect(env.proxy.https_addr().unwrap(), HOST, cfg)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    tls.write_all(&hello).await.unwrap();
    let mut c = RawH2 {
        tls,
        decoder: loona_hpack::Decoder::new(),
        buf: Vec::new(),
    };
    let block = get("/hello", &[("host", HOST), ("host", common::OTHER)]);
    c.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        .await;
    let outcome = c.outcome(1).await;
    assert!(
        matches!(
            outcome,
            Outcome::Response { status: 400, .. } | Outcome::Closed
        ),
        "{outcome:?}"
    );
    settle().await;
    assert_eq!(reasons(&env), ["malformed-request"]);
    assert_eq!(env.upstream.connections(), 0);
}
