//! `UpstreamPool`: the upstream connections of ONE proxy instance (= one
//! session), shared by its sandbox connections. A connection is opened lazily
//! by the first forwarded request that needs it (refused requests never cause
//! one) and kept for later requests of any sandbox connection of the same
//! session; sessions never share (each has its own proxy and pool).
//!
//! Keyed by listener (scheme), host (= SNI) and the ALPN list offered
//! upstream, so a request only rides a connection whose handshake offered
//! exactly what its own client offered; the negotiated protocol decides the
//! slot: one multiplexed HTTP/2 connection, or idle HTTP/1.1 connections
//! checked out one request at a time and given back when the response body
//! has been delivered completely. Upgrades (WebSocket) never use the pool.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use http::{header, uri::Scheme, HeaderValue, Method, Request, Response, Uri, Version};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2, TrySendError},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;

use super::{Io, ProxyBody};
use crate::{decide::Listener, server::Shared, tls::server::AlpnOffer, ProxyError};

/// Idle HTTP/1.1 connections kept per key; more are closed when given back.
const MAX_IDLE_PER_KEY: usize = 32;
/// How long a given-back HTTP/1.1 connection may take to become ready again
/// (its response just ended; it is normally ready within microseconds).
const READY_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    listener: Listener,
    host: Arc<str>,
    offer: AlpnOffer,
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

#[derive(Default)]
struct KeyPool {
    h2: Option<(http2::SendRequest<ProxyBody>, Instant)>,
    idle: Vec<Idle>,
    /// HTTP/1.1 connections alive for this key: idle, leased or connecting.
    open_h1: usize,
    /// Signalled when an HTTP/1.1 connection is given back or closed.
    returned: Arc<Notify>,
}

impl KeyPool {
    fn is_empty(&self) -> bool {
        self.h2.is_none() && self.idle.is_empty() && self.open_h1 == 0
    }
}

enum Pick {
    H2(http2::SendRequest<ProxyBody>),
    Idle(http1::SendRequest<ProxyBody>),
    Open,
    Wait(Arc<Notify>),
}

/// The pool of one proxy instance.
pub(crate) struct UpstreamPool {
    keys: Mutex<HashMap<PoolKey, KeyPool>>,
    idle_timeout: Duration,
    /// Bound on HTTP/1.1 connections per key (busy and idle together).
    max_h1_per_key: usize,
    /// Requests handed back unsent by a reused connection (retried or not).
    unsent: AtomicU64,
}

impl UpstreamPool {
    pub(crate) fn new(idle_timeout: Duration, max_h1_per_key: usize) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            idle_timeout,
            max_h1_per_key: max_h1_per_key.max(1),
            unsent: AtomicU64::new(0),
        }
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, KeyPool>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What to send on; `reuse` false (a retry) always opens a new connection.
    fn pick(&self, key: &PoolKey, reuse: bool) -> Pick {
        let mut keys = self.lock();
        if !keys.contains_key(key) {
            // First use of this key: nothing to reuse, reserve a slot.
            let kp = KeyPool {
                open_h1: 1,
                ..KeyPool::default()
            };
            keys.insert(key.clone(), kp);
            return Pick::Open;
        }
        let Some(kp) = keys.get_mut(key) else {
            return Pick::Open;
        };
        let now = Instant::now();
        if let Some((s, used)) = kp.h2.as_mut().filter(|_| reuse) {
            if !s.is_closed() {
                *used = now;
                return Pick::H2(s.clone());
            }
            kp.h2 = None;
        }
        if reuse {
            while let Some(e) = kp.idle.pop() {
                if e.sender.is_closed() || now.duration_since(e.since) > self.idle_timeout {
                    kp.open_h1 -= 1;
                    continue;
                }
                return Pick::Idle(e.sender);
            }
        }
        if kp.open_h1 < self.max_h1_per_key {
            kp.open_h1 += 1;
            return Pick::Open;
        }
        Pick::Wait(kp.returned.clone())
    }

    /// An HTTP/1.1 connection leaves the pool for good (closed, failed, or
    /// its exchange did not end cleanly), or a reserved slot was not used.
    fn release_slot(&self, key: &PoolKey) {
        let mut keys = self.lock();
        if let Some(kp) = keys.get_mut(key) {
            kp.open_h1 = kp.open_h1.saturating_sub(1);
            kp.returned.notify_one();
            if kp.is_empty() {
                keys.remove(key);
            }
        }
    }

    fn give_back(&self, key: &PoolKey, sender: http1::SendRequest<ProxyBody>) {
        let mut keys = self.lock();
        let Some(kp) = keys.get_mut(key) else { return };
        if sender.is_closed() || kp.idle.len() >= MAX_IDLE_PER_KEY {
            kp.open_h1 = kp.open_h1.saturating_sub(1);
        } else {
            kp.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        kp.returned.notify_one();
    }

    fn store_h2(&self, key: &PoolKey, sender: &http2::SendRequest<ProxyBody>) {
        let mut keys = self.lock();
        let kp = keys.entry(key.clone()).or_default();
        // The slot was reserved as a possible HTTP/1.1 connection.
        kp.open_h1 = kp.open_h1.saturating_sub(1);
        kp.returned.notify_one();
        // The newest wins: an older one still serves its open streams.
        kp.h2 = Some((sender.clone(), Instant::now()));
    }

    /// Close what has been idle longer than the idle timeout.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut keys = self.lock();
        keys.retain(|_, kp| {
            let before = kp.idle.len();
            kp.idle.retain(|e| {
                !e.sender.is_closed() && now.duration_since(e.since) <= self.idle_timeout
            });
            kp.open_h1 -= before - kp.idle.len();
            if kp.h2.as_ref().is_some_and(|(s, used)| {
                s.is_closed() || now.duration_since(*used) > self.idle_timeout
            }) {
                kp.h2 = None;
            }
            !kp.is_empty()
        });
    }
}

/// An HTTP/1.1 upstream connection checked out for one exchange. Attach it
/// to the response body ([`super::metered::Metered`]): when the body was
/// delivered completely it goes back to the pool ([`Lease::reusable`]);
/// dropped otherwise, the connection is closed.
pub(crate) struct Lease {
    shared: Arc<Shared>,
    key: PoolKey,
    sender: Option<http1::SendRequest<ProxyBody>>,
    reusable: bool,
}

impl Lease {
    pub(crate) fn reusable(&mut self) {
        self.reusable = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let pool = &self.shared.pool;
        match self.sender.take() {
            Some(s) if self.reusable => pool.give_back(&self.key, s),
            _ => pool.release_slot(&self.key),
        }
    }
}

/// A reserved HTTP/1.1 slot that is released unless it becomes a lease.
struct Reserved<'a> {
    pool: &'a UpstreamPool,
    key: &'a PoolKey,
    armed: bool,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release_slot(self.key);
        }
    }
}

enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
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
        host: &str,
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

    async fn open(&self, host: &str) -> Result<Sender, ProxyError> {
        let (io, h2) = self.open_stream(host, self.offer).await?;
        let io = TokioIo::new(io);
        if h2 {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .adaptive_window(true)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(send))
        } else {
            let (send, conn) = http1::Builder::new().handshake(io).await?;
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
        host: &str,
        req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), ProxyError> {
        let key = PoolKey {
            listener: self.listener,
            host: Arc::from(host),
            offer: self.offer,
        };
        let retry_ok = idempotent(req.method());
        match self.send_once(&key, host, req, true).await {
            Err(Failed::Unsent(req, e)) => {
                self.shared.pool.unsent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
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
        host: &str,
        req: Request<ProxyBody>,
        allow_reuse: bool,
    ) -> Result<(Response<Incoming>, Option<Lease>), Failed> {
        let pool = &self.shared.pool;
        loop {
            match pool.pick(key, allow_reuse) {
                Pick::H2(mut s) => {
                    let req = to_h2(req, host, self.listener).map_err(Failed::Other)?;
                    return s
                        .try_send_request(req)
                        .await
                        .map(|r| (r, None))
                        .map_err(Failed::from_try);
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
                    let lease = Lease {
                        shared: self.shared.clone(),
                        key: key.clone(),
                        sender: None,
                        reusable: false,
                    };
                    return send_h1(s, lease, to_h1(req, host)).await;
                }
                Pick::Open => {
                    let reserved = Reserved {
                        pool,
                        key,
                        armed: true,
                    };
                    return self.send_new(key, host, req, reserved).await;
                }
                Pick::Wait(notify) => notify.notified().await,
            }
        }
    }

    async fn send_new(
        &self,
        key: &PoolKey,
        host: &str,
        req: Request<ProxyBody>,
        mut reserved: Reserved<'_>,
    ) -> Result<(Response<Incoming>, Option<Lease>), Failed> {
        let sender = self.open(host).await.map_err(Failed::Other)?;
        reserved.armed = false;
        match sender {
            Sender::H2(mut s) => {
                self.shared.pool.store_h2(key, &s);
                let req = to_h2(req, host, self.listener).map_err(Failed::Other)?;
                s.send_request(req)
                    .await
                    .map(|r| (r, None))
                    .map_err(|e| Failed::Other(e.into()))
            }
            Sender::H1(s) => {
                let lease = Lease {
                    shared: self.shared.clone(),
                    key: key.clone(),
                    sender: None,
                    reusable: false,
                };
                send_h1(s, lease, to_h1(req, host)).await
            }
        }
    }
}

async fn send_h1(
    mut s: http1::SendRequest<ProxyBody>,
    mut lease: Lease,
    req: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Option<Lease>), Failed> {
    let result = s.try_send_request(req).await;
    lease.sender = Some(s);
    match result {
        Ok(resp) => Ok((resp, Some(lease))),
        // The lease drops here unreusable: that connection is closed.
        Err(e) => Err(Failed::from_try(e)),
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

fn to_h1(mut req: Request<ProxyBody>, host: &str) -> Request<ProxyBody> {
    *req.version_mut() = Version::HTTP_11;
    *req.uri_mut() = origin_form(req.uri());
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(host) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req
}

fn to_h2(
    mut req: Request<ProxyBody>,
    host: &str,
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
        host.parse()
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
        decide::AllowAll, http::stall::StallWatch, tls::ca::SessionCa, tls::server::ServerConfigs,
        tls::upstream::UpstreamClient, Limits, UpstreamConfig,
    };
    use http_body_util::{BodyExt, Full};
    use std::{
        io::{Read, Write},
        net::SocketAddr,
        sync::{atomic::AtomicUsize, mpsc},
    };

    const HOST: &str = "pool.example.com";

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
            pool: UpstreamPool::new(cfg.pool_idle_timeout, limits.max_connections),
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
        Result<(Response<Incoming>, Option<Lease>), ProxyError>,
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
            .send(HOST, request(Method::GET, "/prime"))
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
        let result = cu.send(HOST, request(method, "/x")).await;
        (result, seen, shared)
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
