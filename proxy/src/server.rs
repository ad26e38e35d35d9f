//! `Proxy::start`: builds the session CA and TLS configurations, runs the
//! accept loops (HTTPS, HTTP, DNS), bounds connections, shuts down cleanly.
//! What it is given is in `config.rs`; what its connections share, in
//! `shared.rs`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{watch, Semaphore},
    task::{JoinHandle, JoinSet},
};
use tracing::Instrument;

use crate::{
    config::ProxyConfig,
    decide::{ConnInfo, Gate, Listener, Refusal},
    dns,
    http::{
        pool::UpstreamPool,
        serve::{serve_plain, serve_tls},
        stall::{sweep_stalled, StallWatch},
    },
    listen::Listeners,
    shared::Shared,
    tls::{ca::SessionCa, server::ServerConfigs, upstream::UpstreamClient},
    ProxyError,
};

/// Counters, for tests, benchmarks and the session report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    pub connections: u64,
    pub upstream_connections: u64,
    pub refusals: u64,
    pub leaves_minted: u64,
    pub leaf_cache_hits: u64,
}

/// Entry point.
#[derive(Debug)]
pub struct Proxy;

/// A running proxy. Dropping it without [`ProxyHandle::shutdown`] leaves the
/// tasks running until the runtime ends.
pub struct ProxyHandle {
    ca: Arc<SessionCa>,
    shared: Arc<Shared>,
    https: Option<SocketAddr>,
    http: Option<SocketAddr>,
    dns: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Bind per `config.listen` in the caller's network namespace and start
    /// serving. Must be called within a tokio runtime.
    pub async fn start(
        config: ProxyConfig,
        gate: Arc<dyn Gate>,
    ) -> Result<ProxyHandle, ProxyError> {
        let listeners = Listeners::bind(&config.listen)?;
        Self::start_with_listeners(config, listeners, gate).await
    }

    /// Start serving on sockets the caller already bound (non-blocking),
    /// e.g. with [`Listeners::bind`] inside the session's network namespace.
    /// `config.listen` is ignored.
    pub async fn start_with_listeners(
        config: ProxyConfig,
        listeners: Listeners,
        gate: Arc<dyn Gate>,
    ) -> Result<ProxyHandle, ProxyError> {
        let ca = Arc::new(SessionCa::generate(&config.session)?);
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            gate: gate.clone(),
            upstream: UpstreamClient::new(&config.upstream)?,
            pool: Arc::new(UpstreamPool::new(
                config.upstream.pool_idle_timeout,
                config.limits.max_connections,
            )),
            server_configs: ServerConfigs::new(ca.clone())?,
            conn_limit: Arc::new(Semaphore::new(config.limits.max_connections)),
            limits: config.limits.clone(),
            next_conn: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            stalls: StallWatch::new(config.limits.write_stall_timeout),
            stop: stop_rx.clone(),
        });
        let bind_err = |what, source| ProxyError::Bind {
            what,
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            source,
        };
        // Every task of this proxy, and each connection under it, logs
        // with the session it serves (and the connection's id).
        let span = tracing::error_span!("proxy", session = %config.session);
        let mut tasks = Vec::new();
        let addr_of = |what: &'static str, l: &std::net::TcpListener| {
            l.local_addr().map_err(|e| bind_err(what, e))
        };
        let (mut https, mut http, mut dns_addr) = (None, None, None);
        if let Some(l) = listeners.https {
            https = Some(addr_of("https", &l)?);
            let l = TcpListener::from_std(l).map_err(|e| bind_err("https", e))?;
            tasks.push(spawn_in(
                &span,
                accept_loop(l, shared.clone(), Listener::Https),
            ));
        }
        if let Some(l) = listeners.http {
            http = Some(addr_of("http", &l)?);
            let l = TcpListener::from_std(l).map_err(|e| bind_err("http", e))?;
            tasks.push(spawn_in(
                &span,
                accept_loop(l, shared.clone(), Listener::Http),
            ));
        }
        tasks.push(spawn_in(&span, sweep_pool(shared.clone())));
        tasks.push(spawn_in(
            &span,
            sweep_stalled(shared.stalls.clone(), stop_rx.clone()),
        ));
        if let Some(s) = listeners.dns_udp {
            dns_addr = Some(s.local_addr().map_err(|e| bind_err("dns-udp", e))?);
            let s = UdpSocket::from_std(s).map_err(|e| bind_err("dns-udp", e))?;
            tasks.push(spawn_in(
                &span,
                dns::serve_udp(s, gate.clone(), config.advertise, stop_rx.clone()),
            ));
        }
        if let Some(l) = listeners.dns_tcp {
            dns_addr = dns_addr.or(Some(addr_of("dns-tcp", &l)?));
            let l = TcpListener::from_std(l).map_err(|e| bind_err("dns-tcp", e))?;
            tasks.push(spawn_in(
                &span,
                dns::serve_tcp(l, gate.clone(), config.advertise, stop_rx.clone()),
            ));
        }
        Ok(ProxyHandle {
            ca,
            shared,
            https,
            http,
            dns: dns_addr,
            stop: stop_tx,
            tasks,
        })
    }
}

/// Spawns `fut` inside `span` (a spawned task does not inherit the
/// spawner's span).
fn spawn_in<F>(span: &tracing::Span, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut.instrument(span.clone()))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, kind: Listener) {
    let mut stop = shared.stop.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: back off, don't spin.
                        ratelog::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                let Ok(permit) = shared.conn_limit.clone().try_acquire_owned() else {
                    let conn = ConnInfo { id, peer, listener: kind, sni: None, alpn: None };
                    let err = ProxyError::ConnectionLimit;
                    shared.refusal(Refusal { conn, request: None, reason: err.blocked().reason, detail: err.to_string() });
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                let shared = shared.clone();
                let span = tracing::error_span!("conn", conn = id);
                conns.spawn(async move {
                    let _permit = permit;
                    match kind {
                        Listener::Https => serve_tls(shared, tcp, peer, id).await,
                        Listener::Http => serve_plain(shared, tcp, peer, id).await,
                    }
                }.instrument(span));
            }
        }
    }
    conns.shutdown().await;
}

/// Close pooled upstream connections idle past their timeout, so an
/// abandoned host does not keep a connection open for the whole session.
async fn sweep_pool(shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    let period = (shared.pool.idle_timeout() / 2).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(period) => shared.pool.sweep(),
        }
    }
}

impl ProxyHandle {
    /// The session CA certificate (PEM) the sandbox must trust.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    pub fn ca(&self) -> &SessionCa {
        &self.ca
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// DNS address (UDP and TCP share the port).
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections: self.shared.connections.load(Ordering::Relaxed),
            upstream_connections: self.shared.upstream.connections.load(Ordering::Relaxed),
            refusals: self.shared.refusals.load(Ordering::Relaxed),
            leaves_minted: self.ca.leaves_minted(),
            leaf_cache_hits: self.ca.leaf_cache_hits(),
        }
    }

    /// Exchanges ended because the sandbox stopped reading (a write stalled
    /// for `Limits::write_stall_timeout`); not refusals.
    pub fn write_stalls(&self) -> u64 {
        self.shared.stalls.stalls()
    }

    /// Stop accepting, close every sandbox connection and tunnel, release
    /// the sockets.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
