//! Sending a request upstream for one sandbox connection: on a pooled
//! connection when its key has one ([`super::pool::UpstreamPool`]), else on a
//! new one; HTTP/1.1 or HTTP/2 whatever the sandbox spoke, and one retry on
//! a new connection for an idempotent request a reused connection handed
//! back unsent.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use capabilities::Host;
use http::{header, uri::Scheme, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::{
    body::Body,
    client::conn::{http1, TrySendError},
};
use hyper_util::rt::TokioIo;

use super::{
    h2client::{H2Sender, SendFailed},
    pool::{Lease, Pick, PoolKey, Reserved},
    Io, ProxyBody,
};
use crate::{decide::Listener, shared::Shared, tls::server::AlpnOffer, ProxyError};

/// How long a given-back HTTP/1.1 connection may take to become ready again
/// (its response just ended; it is normally ready within microseconds).
const READY_WAIT: Duration = Duration::from_secs(1);

enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(H2Sender),
}

/// How one sandbox connection reaches upstream: its listener and the ALPN
/// list its client offered (offered upstream unchanged).
pub(crate) struct ConnUpstream {
    shared: Arc<Shared>,
    listener: Listener,
    offer: AlpnOffer,
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl ConnUpstream {
    pub(crate) fn new(shared: Arc<Shared>, listener: Listener, offer: AlpnOffer) -> Self {
        Self {
            shared,
            listener,
            offer,
        }
    }

    pub(crate) fn offer(&self) -> AlpnOffer {
        self.offer
    }

    /// Open a fresh upstream byte stream; returns it and whether it speaks h2.
    pub(crate) async fn open_stream(
        &self,
        host: &Host,
        offer: AlpnOffer,
    ) -> Result<(Box<dyn Io>, bool), ProxyError> {
        match self.listener {
            Listener::Https => {
                let (tls, h2) = self.shared.upstream.connect_tls(host, offer).await?;
                Ok((Box::new(tls), h2))
            }
            Listener::Http => Ok((
                Box::new(self.shared.upstream.connect_tcp(host, 80).await?),
                false,
            )),
        }
    }

    async fn open(&self, host: &Host) -> Result<Sender, ProxyError> {
        let (io, h2) = self.open_stream(host, self.offer).await?;
        if h2 {
            Ok(Sender::H2(H2Sender::handshake(io).await?))
        } else {
            let (send, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H1(send))
        }
    }

    /// Send one request upstream on a pooled or new connection. Returns the
    /// response and, for HTTP/1.1, the lease to give back when its body ends.
    /// A request that failed on a reused connection before any of it was
    /// written is retried once on a new connection, if its method is
    /// idempotent.
    pub(crate) async fn send(
        &self,
        host: &Host,
        req: Request<ProxyBody>,
    ) -> Result<(Response<ProxyBody>, Option<Lease>), ProxyError> {
        let key = PoolKey {
            listener: self.listener,
            host: host.clone(),
            offer: self.offer,
        };
        let retry_ok = idempotent(req.method());
        match self.send_once(&key, host, req, true).await {
            Err(Failed::Unsent(req, e)) => {
                self.shared.pool.unsent.fetch_add(1, Ordering::Relaxed);
                ratelog::debug!(
                    error = %e,
                    retry = retry_ok,
                    "reused upstream connection closed before the request was written"
                );
                if !retry_ok {
                    return Err(e);
                }
                match self.send_once(&key, host, *req, false).await {
                    Ok(r) => Ok(r),
                    Err(Failed::Unsent(_, e) | Failed::Other(e)) => Err(e),
                }
            }
            Ok(r) => Ok(r),
            Err(Failed::Other(e)) => Err(e),
        }
    }

    async fn send_once(
        &self,
        key: &PoolKey,
        host: &Host,
        req: Request<ProxyBody>,
        allow_reuse: bool,
    ) -> Result<(Response<ProxyBody>, Option<Lease>), Failed> {
        let pool = &self.shared.pool;
        loop {
            match pool.pick(key, allow_reuse) {
                Pick::H2(s) => {
                    let req = to_h2(req, host, self.listener).map_err(Failed::Other)?;
                    return send_h2(s, req).await;
                }
                Pick::Idle(mut s) => {
                    // Given back as soon as its response ended: ready in a moment
                    // unless upstream closed it, then the next one is tried.
                    let ready = s.is_ready()
                        || matches!(
                            tokio::time::timeout(READY_WAIT, s.ready()).await,
                            Ok(Ok(()))
                        );
                    if !ready {
                        pool.release_slot(key);
                        continue;
                    }
                    let lease = Lease::new(self.shared.pool.clone(), key.clone());
                    return send_h1(s, lease, to_h1(req, host)).await;
                }
                Pick::Open => {
                    let reserved = Reserved::new(pool, key);
                    return self.send_new(key, host, req, reserved).await;
                }
                Pick::Wait(notify) => notify.notified().await,
            }
        }
    }

    async fn send_new(
        &self,
        key: &PoolKey,
        host: &Host,
        req: Request<ProxyBody>,
        mut reserved: Reserved<'_>,
    ) -> Result<(Response<ProxyBody>, Option<Lease>), Failed> {
        let sender = self.open(host).await.map_err(Failed::Other)?;
        reserved.keep();
        match sender {
            Sender::H2(s) => {
                self.shared.pool.store_h2(key, &s);
                let req = to_h2(req, host, self.listener).map_err(Failed::Other)?;
                // A fresh connection that closed at once is not retried.
                send_h2(s, req).await.map_err(|e| match e {
                    Failed::Unsent(_, e) | Failed::Other(e) => Failed::Other(e),
                })
            }
            Sender::H1(s) => {
                let lease = Lease::new(self.shared.pool.clone(), key.clone());
                send_h1(s, lease, to_h1(req, host)).await
            }
        }
    }
}

async fn send_h1(
    mut s: http1::SendRequest<ProxyBody>,
    mut lease: Lease,
    req: Request<ProxyBody>,
) -> Result<(Response<ProxyBody>, Option<Lease>), Failed> {
    let result = s.try_send_request(req).await;
    lease.hold(s);
    match result {
        Ok(resp) => Ok((
            resp.map(|b| b.map_err(Into::into).boxed_unsync()),
            Some(lease),
        )),
        // The lease drops here unreusable: that connection is closed.
        Err(e) => Err(Failed::from_try(e)),
    }
}

async fn send_h2(
    s: H2Sender,
    req: Request<ProxyBody>,
) -> Result<(Response<ProxyBody>, Option<Lease>), Failed> {
    match s.send(req).await {
        Ok(resp) => Ok((resp.map(|b| b.map_err(Into::into).boxed_unsync()), None)),
        Err(SendFailed::Unsent(req, e)) => Err(Failed::Unsent(req, e)),
        Err(SendFailed::Other(e)) => Err(Failed::Other(e)),
    }
}

enum Failed {
    /// Nothing of the request was written; here it is back.
    Unsent(Box<Request<ProxyBody>>, ProxyError),
    Other(ProxyError),
}

impl Failed {
    fn from_try(mut e: TrySendError<Request<ProxyBody>>) -> Self {
        match e.take_message() {
            Some(req) => Failed::Unsent(Box::new(req), e.into_error().into()),
            None => Failed::Other(e.into_error().into()),
        }
    }
}

fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"))
}

/// Marks a request whose body could be read as a request of its own by a
/// server that answers without reading it ([`body_could_be_a_request`]): it
/// goes to an HTTP/1.1 upstream with `Connection: close`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CloseUpstream;

/// How far a body prefix can be scanned for a request line before the
/// proxy stops waiting and assumes one (a method is a short token).
const REQUEST_LINE_SCAN: usize = 64;

/// Whether a request body's first bytes could be read as the start of a
/// request: `None` while `prefix` (the body's first bytes; `ended` when it
/// is the whole body) cannot tell yet.
///
/// An upstream endpoint that answers without reading the body (a redirect,
/// a static file, an early error) leaves it on the connection, and the
/// server then reads it as the next request, one no receipt describes, or
/// runs its bytes into the method of the request that comes next. Such a
/// request starts at the body's first byte, after the empty lines servers
/// skip (blanks skipped too, for lenient ones): a method token followed by
/// a blank. A body that starts with anything else (JSON, a form field
/// `a=1`, a multipart boundary line) reads as a malformed request line,
/// which servers answer 400 and close, so it keeps the connection pooled;
/// a token that runs to the end of the body, or past the scan limit, is
/// taken for a request.
pub(crate) fn body_could_be_a_request(prefix: &[u8], ended: bool) -> Option<bool> {
    let blanks = prefix
        .iter()
        .take_while(|b| matches!(**b, b'\r' | b'\n' | b' ' | b'\t'))
        .count();
    let token = prefix[blanks..]
        .iter()
        .take_while(|b| is_tchar(**b))
        .count();
    match prefix.get(blanks + token) {
        Some(_) if token == 0 => Some(false),
        Some(after) => Some(matches!(*after, b' ' | b'\t' | 0x0b | 0x0c)),
        // A token to the body's end runs into the next request's method;
        // blanks alone are skipped before that request.
        None if ended => Some(token > 0),
        None if prefix.len() >= REQUEST_LINE_SCAN => Some(true),
        None => None,
    }
}

/// A token character (RFC 9110 §5.6.2): what a method is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn to_h1(mut req: Request<ProxyBody>, host: &Host) -> Request<ProxyBody> {
    *req.version_mut() = Version::HTTP_11;
    *req.uri_mut() = origin_form(req.uri());
    // `handle` has read the first frame of a GET or HEAD body of unknown
    // length, so a bodiless one has ended by now and goes as it came.
    let body = req.body();
    if matches!(*req.method(), Method::GET | Method::HEAD) && !body.is_end_stream() {
        let length_unknown = body.size_hint().exact().is_none();
        let headers = req.headers_mut();
        // hyper sends a GET or HEAD whose body length it does not know with
        // no body at all (it assumes those have none), after the gate read
        // one: chunked framing instead.
        if length_unknown {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        // A server that does not read a GET's body (some do not) would take
        // it for the next request on this connection: upstream closes it
        // after this one.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if req.extensions().get::<CloseUpstream>().is_some() {
        // Likewise for a body that reads as a request (`handle` looked).
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(host.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req
}

fn to_h2(
    mut req: Request<ProxyBody>,
    host: &Host,
    listener: Listener,
) -> Result<Request<ProxyBody>, ProxyError> {
    *req.version_mut() = Version::HTTP_2;
    let scheme = match listener {
        Listener::Https => Scheme::HTTPS,
        Listener::Http => Scheme::HTTP,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(
        host.as_str()
            .parse()
            .map_err(|_| ProxyError::Malformed("host is not a valid authority".into()))?,
    );
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| ProxyError::Malformed("request target".into()))?;
    // :authority carries the host in HTTP/2.
    req.headers_mut().remove(header::HOST);
    Ok(req)
}

#[cfg(test)]
mod tests {
    //! The retry path, driven for real: a pooled HTTP/1.1 connection that
    //! upstream has closed, taken from the pool before the proxy noticed.
    //! The current-thread runtime fixes the order: the close becomes
    //! readable in the same driver turn in which the request is queued on
    //! the connection, and the connection's task reads (sees the close)
    //! before it would write, so hyper hands the request back unsent.
    use super::*;
    use crate::{
        decide::AllowAll, http::pool::UpstreamPool, http::stall::StallWatch, tls::ca::SessionCa,
        tls::server::ServerConfigs, tls::upstream::UpstreamClient, Limits, UpstreamConfig,
    };
    use http_body_util::Full;
    use std::{
        collections::HashMap,
        io::{Read, Write},
        net::SocketAddr,
        sync::{
            atomic::{AtomicU64, AtomicUsize},
            mpsc, Mutex,
        },
    };

    const HOST: &str = "pool.example.com";

    fn host() -> Host {
        Host::parse(HOST).expect("test host")
    }

    /// What the upstream saw: connections, and each request line with the
    /// connection (by accept order) it came on.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        requests: Mutex<Vec<(usize, String)>>,
    }

    /// A blocking TLS upstream on its own threads (so it acts while the
    /// test's runtime thread is blocked). Answers every request with a
    /// keep-alive `200 ok`; its first connection, after its first answer,
    /// waits for `close` and then closes (close_notify, FIN), acking on
    /// the returned receiver.
    fn upstream(
        ca: &test_support::TestCa,
    ) -> (SocketAddr, Arc<Seen>, mpsc::Sender<()>, mpsc::Receiver<()>) {
        let cfg = ca.server_config(&[HOST], &[b"http/1.1"]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let (close_tx, close_rx) = mpsc::channel::<()>();
        let (ack_tx, ack_rx) = mpsc::channel::<()>();
        let close = Arc::new(Mutex::new(Some((close_rx, ack_tx))));
        let s = seen.clone();
        std::thread::spawn(move || {
            for (n, tcp) in listener.incoming().enumerate() {
                let Ok(tcp) = tcp else { return };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let (cfg, s) = (cfg.clone(), s.clone());
                let close = if n == 0 {
                    close.lock().expect("lock").take()
                } else {
                    None
                };
                std::thread::spawn(move || serve(n, tcp, cfg, &s, close));
            }
        });
        (addr, seen, close_tx, ack_rx)
    }

    fn serve(
        n: usize,
        tcp: std::net::TcpStream,
        cfg: Arc<rustls::ServerConfig>,
        seen: &Seen,
        mut close: Option<(mpsc::Receiver<()>, mpsc::Sender<()>)>,
    ) {
        let conn = rustls::ServerConnection::new(cfg).expect("server connection");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // One request: head, then a Content-Length body.
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match tls.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match tls.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            buf.drain(..head_end + len);
            let line = head.lines().next().unwrap_or_default().to_owned();
            seen.requests.lock().expect("lock").push((n, line));
            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if tls.write_all(ok).and_then(|()| tls.flush()).is_err() {
                return;
            }
            if let Some((close_rx, ack)) = close.take() {
                let _ = close_rx.recv();
                tls.conn.send_close_notify();
                let _ = tls.flush();
                let _ = tls.sock.shutdown(std::net::Shutdown::Both);
                let _ = ack.send(());
                return;
            }
        }
    }

    fn shared(addr: SocketAddr, ca_file: std::path::PathBuf) -> Arc<Shared> {
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let cfg = UpstreamConfig {
            platform_roots: false,
            extra_ca_files: vec![ca_file],
            overrides: HashMap::from([(HOST.to_owned(), addr)]),
            ..UpstreamConfig::default()
        };
        let ca = Arc::new(SessionCa::generate("pool-test").expect("ca"));
        let limits = Limits::default();
        Arc::new(Shared {
            gate: Arc::new(AllowAll),
            upstream: UpstreamClient::new(&cfg).expect("upstream client"),
            pool: Arc::new(UpstreamPool::new(
                cfg.pool_idle_timeout,
                limits.max_connections,
            )),
            server_configs: ServerConfigs::new(ca).expect("server configs"),
            conn_limit: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            next_conn: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            stalls: StallWatch::new(limits.write_stall_timeout),
            limits,
            stop,
        })
    }

    fn request(method: Method, path: &str) -> Request<ProxyBody> {
        let body = if method == Method::POST { "x" } else { "" };
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, HOST)
            .header(header::CONTENT_LENGTH, body.len())
            .body(
                Full::new(bytes::Bytes::from_static(body.as_bytes()))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("request")
    }

    /// Prime the pool with one connection, have upstream close it behind
    /// the proxy's back, then send `method` on the stale connection.
    async fn on_a_stale_connection(
        method: Method,
    ) -> (
        Result<(Response<ProxyBody>, Option<Lease>), ProxyError>,
        Arc<Seen>,
        Arc<Shared>,
    ) {
        let ca = test_support::TestCa::new("pool upstream");
        let (addr, seen, close, closed) = upstream(&ca);
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(addr, ca.write_pem(dir.path()));
        let offer = AlpnOffer {
            h2: false,
            http11: true,
            h2_first: false,
        };
        let cu = ConnUpstream::new(shared.clone(), Listener::Https, offer);
        let (resp, lease) = cu
            .send(&host(), request(Method::GET, "/prime"))
            .await
            .expect("prime");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
        let mut lease = lease.expect("an HTTP/1.1 lease");
        lease.reusable();
        drop(lease);
        // Let the connection's task settle idle, waiting for a request.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Upstream closes it while this (the runtime's only) thread blocks:
        // nothing on the proxy side has seen the close yet.
        close.send(()).expect("upstream alive");
        closed
            .recv_timeout(Duration::from_secs(10))
            .expect("upstream closed its connection");
        std::thread::sleep(Duration::from_millis(200));
        // One driver turn: the close is read into readiness and wakes the
        // connection's task, but this future is polled first.
        tokio::task::yield_now().await;
        let result = cu.send(&host(), request(method, "/x")).await;
        (result, seen, shared)
    }

    #[test]
    fn bodies_that_read_as_a_request_are_told_from_ordinary_ones() {
        let verdict = |b: &[u8]| body_could_be_a_request(b, true);
        for request in [
            &b"GET /admin HTTP/1.1\r\n"[..],
            b"\r\n\r\nDELETE /x HTTP/1.1",
            b" \tPOST\t/x",
            b"FOO /",
            // Runs into the next request's method.
            b"GET",
            b"42",
        ] {
            assert_eq!(verdict(request), Some(true), "{request:?}");
        }
        for ordinary in [
            &b"{\"model\":\"x\"}"[..],
            b"[1, 2]",
            b"a=1&b=2",
            b"--boundary\r\nContent-Disposition: form-data",
            b"\x0a\x05hello",
            b"\r\n",
            b"",
        ] {
            assert_eq!(verdict(ordinary), Some(false), "{ordinary:?}");
        }
        // More may come: wait for it, up to the scan limit.
        assert_eq!(body_could_be_a_request(b"\r\nGE", false), None);
        assert_eq!(body_could_be_a_request(b"", false), None);
        assert_eq!(
            body_could_be_a_request(&[b'a'; REQUEST_LINE_SCAN], false),
            Some(true)
        );
    }

    #[tokio::test]
    async fn an_unsent_idempotent_request_is_retried_on_a_new_connection() {
        let (result, seen, shared) = on_a_stale_connection(Method::GET).await;
        let (resp, _lease) = result.expect("retried and answered");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            shared.pool.unsent.load(Ordering::Relaxed),
            1,
            "handed back unsent by the stale connection"
        );
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        let requests = seen.requests.lock().expect("lock").clone();
        assert_eq!(
            requests,
            [
                (0, "GET /prime HTTP/1.1".to_owned()),
                (1, "GET /x HTTP/1.1".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn an_unsent_post_is_not_retried_and_fails_closed() {
        let (result, seen, shared) = on_a_stale_connection(Method::POST).await;
        let err = result.err().expect("not retried: an error");
        assert_eq!(err.blocked().status, http::StatusCode::BAD_GATEWAY);
        assert_eq!(shared.pool.unsent.load(Ordering::Relaxed), 1);
        // No second connection, and the POST never reached upstream.
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        let requests = seen.requests.lock().expect("lock").clone();
        assert_eq!(requests, [(0, "GET /prime HTTP/1.1".to_owned())]);
    }
}
