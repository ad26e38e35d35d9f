//! Slow readers (`Limits::write_stall_timeout`): a sandbox that stops reading
//! a large response has its connection closed (HTTP/1.1) or its stream's
//! upstream side dropped (HTTP/2 window never reopened), the upstream side
//! is freed, other clients carry on meanwhile; a reader that is slow but
//! keeps making progress is not cut. Real TLS, a local HTTPS upstream that
//! streams 64 MiB and reports when a body is dropped before its end.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{stdout, Env, Recorder, HOST};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use proxy::ExchangeOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIG: u64 = 64 << 20;
const LIMIT: Duration = Duration::from_secs(1);
/// The least time a cut may come after the test stopped reading: the guard
/// counts from the proxy's last write progress, which can come a little
/// before the test's last read returns (and timers round to milliseconds).
const NOT_BEFORE: Duration = Duration::from_millis(900);
/// Generous bound for anything that should happen "about LIMIT" from now.
const WITHIN: Duration = Duration::from_secs(30);

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    /// Response bodies dropped before their last byte was taken.
    cut: AtomicUsize,
    /// Response bodies that ended.
    finished: AtomicUsize,
}

/// `left` bytes of zeros in 64 KiB frames.
struct Streamed {
    left: u64,
    counters: Arc<Counters>,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let n = this.left.min(ZEROS.len() as u64);
        this.left -= n;
        if this.left == 0 {
            this.counters.finished.fetch_add(1, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &ZEROS[..n as usize],
        )))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        if self.left > 0 {
            self.counters.cut.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// HTTPS upstream: `/bytes/N` streams N bytes.
async fn upstream(ca: &test_support::TestCa, alpn: &[&[u8]]) -> (SocketAddr, Arc<Counters>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&[HOST], alpn));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, c) = (acceptor.clone(), c.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let n = req
                        .uri()
                        .path()
                        .strip_prefix("/bytes/")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let body = Streamed {
                        left: n,
                        counters: c.clone(),
                    };
                    let mut resp = http::Response::new(body);
                    resp.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, n.into());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (addr, counters)
}

struct Setup {
    env: Env,
    up: Arc<Counters>,
}

async fn setup(upstream_alpn: &[&[u8]]) -> Setup {
    let ca = test_support::TestCa::new("slow-reader upstream");
    let (addr, up) = upstream(&ca, upstream_alpn).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = ca.write_pem(dir.path());
    let env = Env::start_with(upstream_alpn, Recorder::default(), |cfg| {
        cfg.limits.write_stall_timeout = LIMIT;
        cfg.upstream.extra_ca_files = vec![pem];
        cfg.upstream.overrides.insert(HOST.into(), addr);
    })
    .await;
    // The CA file is read at start; the directory may go.
    drop(dir);
    Setup { env, up }
}

/// A TLS connection to the proxy whose socket has a tiny receive buffer, so
/// that not reading quickly blocks the proxy's writes.
async fn small_window_tls(
    env: &Env,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(env.proxy.https_addr().unwrap()).await.unwrap();
    let cfg = test_support::client_config(env.proxy.ca_pem(), &[alpn]);
    let name = rustls::pki_types::ServerName::try_from(HOST.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WITHIN, "{what}: not within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// curl downloads `n` bytes through the proxy completely.
async fn well_behaved_download(env: &Env, n: u64, proto: &str) {
    let out = env
        .curl(
            &format!("/bytes/{n}"),
            &[
                proto,
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{http_code}",
            ],
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), format!("{n} 200"));
}

/// HTTP/1.1: the sandbox reads 64 KiB of a 64 MiB response, then stops.
/// Once the proxy's writes have been blocked for the limit, it closes the
/// connection; the upstream body is dropped (its pooled connection closed);
/// meanwhile another client downloads normally. Not a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_reader_that_stops_is_closed_and_upstream_freed() {
    let Setup { env, up } = setup(&[b"http/1.1"]).await;
    let mut tls = small_window_tls(&env, b"http/1.1").await;
    tls.write_all(format!("GET /bytes/{BIG} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = vec![0u8; 64 * 1024];
    tls.read_exact(&mut got).await.unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    let stopped = Instant::now();

    // Others are not held up: a full download on the same proxy. (On a
    // slow machine it may outlast the limit, so the stalled reader can be
    // cut before it ends: only the count after both says which stalled.)
    well_behaved_download(&env, 8 << 20, "--http1.1").await;

    eventually("stall detected", || env.proxy.write_stalls() >= 1).await;
    assert_eq!(
        env.proxy.write_stalls(),
        1,
        "only the reader that stopped stalled, not the healthy download"
    );
    assert!(stopped.elapsed() >= NOT_BEFORE, "{:?}", stopped.elapsed());
    eventually("upstream body dropped", || {
        up.cut.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(up.finished.load(Ordering::SeqCst), 1, "only curl's");

    // The connection is over: what was buffered drains, then it ends well
    // short of the whole body.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(WITHIN, tls.read_to_end(&mut rest))
        .await
        .expect("connection closed");
    let total = got.len() + rest.len();
    assert!((total as u64) < BIG, "{total} bytes: {end:?}");

    assert!(env.gate.refusal_reasons().is_empty(), "not a refusal");
    let outcomes: Vec<_> = env
        .gate
        .exchanges
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.outcome.clone())
        .collect();
    assert!(
        outcomes.contains(&ExchangeOutcome::ClientGone),
        "{outcomes:?}"
    );
    // The pool still works after the cut connection was closed.
    well_behaved_download(&env, 1 << 20, "--http1.1").await;
}

/// HTTP/1.1 reader that is slow but steady (16 KiB every 100 ms, far below
/// what the proxy could send) for several times the limit: never cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_slow_but_steady_reader_is_not_cut() {
    let Setup { env, up } = setup(&[b"http/1.1"]).await;
    let mut tls = small_window_tls(&env, b"http/1.1").await;
    tls.write_all(format!("GET /bytes/{BIG} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let start = Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    while start.elapsed() < LIMIT * 5 {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection ended after {total} bytes");
        total += n;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.proxy.write_stalls(), 0);
    assert_eq!(up.cut.load(Ordering::SeqCst), 0);
    // Still alive: it reads on.
    let n = tls.read(&mut buf).await.unwrap();
    assert!(n > 0);
    assert!((total as u64) < BIG, "the reader really was slow");
}

/// GET of the big download over HTTP/2 by a client whose stream window is
/// 16 KiB: it opens only as the body is read.
async fn get_big_with_small_window(env: &Env) -> http::Response<hyper::body::Incoming> {
    let io = hyper_util::rt::TokioIo::new(env.tls(b"h2").await);
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 * 1024)
            .handshake(io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://{HOST}/bytes/{BIG}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    send.send_request(req).await.unwrap()
}

/// HTTP/2: the client advertises a 16 KiB stream window and never opens it
/// again, while its socket is read normally (nothing blocks at the TCP
/// level). The proxy drops that response's upstream side after the limit
/// (the pooled upstream HTTP/2 connection stays and serves others); the
/// stream, once the client does open its window, fails instead of ending as
/// if complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_whose_window_never_opens_is_cut_upstream() {
    let Setup { env, up } = setup(&[b"h2"]).await;
    let resp = get_big_with_small_window(&env).await;
    assert_eq!(resp.status(), 200);
    // Not polling the body: hyper releases no window.
    let body = resp.into_body();
    let stalled_from = Instant::now();

    // A download on the same proxy; see the HTTP/1.1 test for why the
    // stalls are counted only after both.
    well_behaved_download(&env, 8 << 20, "--http2").await;

    eventually("stall detected", || env.proxy.write_stalls() >= 1).await;
    assert_eq!(
        env.proxy.write_stalls(),
        1,
        "only the stream whose window never opened stalled, not the healthy download"
    );
    assert!(stalled_from.elapsed() >= NOT_BEFORE);
    eventually("upstream stream dropped", || {
        up.cut.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(env.gate.refusal_reasons().is_empty(), "not a refusal");

    // Opening the window now: the stream fails, it never looks complete.
    let read = tokio::time::timeout(WITHIN, body.collect())
        .await
        .expect("stream ends");
    assert!(read.is_err(), "a cut body must not end cleanly");

    // The pooled upstream connections serve on (curl's offer, h2 and
    // http/1.1, is its own pool key: two connections, no new one).
    let before = up.connections.load(Ordering::SeqCst);
    well_behaved_download(&env, 1 << 20, "--http2").await;
    assert_eq!(up.connections.load(Ordering::SeqCst), before);
}

/// HTTP/2 reader that keeps opening its window, slowly: never cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_slow_but_steady_reader_is_not_cut() {
    let Setup { env, up } = setup(&[b"h2"]).await;
    let mut body = get_big_with_small_window(&env).await.into_body();
    let start = Instant::now();
    let mut total = 0usize;
    while start.elapsed() < LIMIT * 5 {
        let frame = body.frame().await.expect("more").expect("no error");
        total += frame.data_ref().map_or(0, |d| d.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.proxy.write_stalls(), 0);
    assert_eq!(up.cut.load(Ordering::SeqCst), 0);
    assert!(total > 0 && (total as u64) < BIG, "{total}");
}

/// Reads pass through until paused; then the reader is parked (its waker
/// kept) until resumed.
struct Pausable<T> {
    inner: T,
    paused: Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Pausable<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let mut p = this.paused.lock().unwrap();
        if p.0 {
            p.1 = Some(cx.waker().clone());
            return Poll::Pending;
        }
        drop(p);
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Pausable<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// HTTP/2 at the transport level: the client grants a window larger than
/// the body, then stops reading its socket (4 KiB receive buffer). The
/// proxy's writes block; after the limit the upstream stream is dropped and
/// the body never ends as if complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_that_stops_reading_its_socket_is_closed() {
    let Setup { env, up } = setup(&[b"h2"]).await;
    let paused = Arc::new(std::sync::Mutex::new((false, None)));
    let io = Pausable {
        inner: small_window_tls(&env, b"h2").await,
        paused: paused.clone(),
    };
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(u32::MAX >> 1)
            .initial_connection_window_size(u32::MAX >> 1)
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("https://{HOST}/bytes/{BIG}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    paused.lock().unwrap().0 = true;
    let stopped = Instant::now();

    well_behaved_download(&env, 8 << 20, "--http2").await;

    eventually("stall detected", || env.proxy.write_stalls() >= 1).await;
    assert!(stopped.elapsed() >= NOT_BEFORE);
    eventually("upstream stream dropped", || {
        up.cut.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(env.gate.refusal_reasons().is_empty(), "not a refusal");

    // Reading again: what was buffered arrives, then the connection ends
    // and the body fails short of its length.
    let waker = {
        let mut p = paused.lock().unwrap();
        p.0 = false;
        p.1.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
    let rest = tokio::time::timeout(WITHIN, body.collect())
        .await
        .expect("stream ends");
    assert!(rest.is_err(), "a cut body must not end cleanly");
    // Which guard fires first is a race: the transport guard closes the
    // connection; the body watch (hyper stops asking for the body while its
    // writes block) resets only the stream. Either way the upstream side is
    // gone (checked above) and the body failed.
    drop(send);
    conn.abort();
}
