//! Test-only helpers shared by the workspace's tests: a throwaway CA, local
//! HTTPS and HTTP upstream servers that count their connections and serve a
//! few fixed routes (hello, echo, large download, SSE, WebSocket echo, an
//! LLM provider's Chat and Messages answers), rustls client/in-memory TLS
//! pair helpers, a scripted approval broker,
//! the adversarial Go upstream (a real server-side parser, `go_upstream`), and
//! a private PostgreSQL server per test (`postgres`).
#![allow(clippy::unwrap_used)] // test support: panicking on setup failure is the point

mod approval;
mod go_upstream;
mod https_client;
pub mod llm;
mod mitm;
mod nginx;
mod postgres;
mod spread;
pub use approval::{purchase_question, Scripted, ScriptedBroker};
pub use go_upstream::{go_fold_orbits, go_upstream_binary, GoUpstream};
pub use https_client::HttpsClient;
pub use llm::LlmAnswer;
pub use mitm::Mitmdump;
pub use nginx::Nginx;
pub use postgres::{PostgresServer, POSTGRES_USER};
pub use spread::{
    env_parse, median, median_difference, round_ratios, rounds_from_env, rounds_of, spread, Spread,
};

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    ClientConfig, RootCertStore, ServerConfig,
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = BoxBody<Bytes, BoxError>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A throwaway certificate authority for test upstreams.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        Self { cert, key, pem }
    }

    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// Write the CA certificate to `dir/test-ca.pem` and return the path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A leaf certificate for `hosts` signed by this CA, and its key, as
    /// PEM (for servers that read files).
    pub fn leaf_pem(&self, hosts: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server configuration for `hosts` (DNS names or IPs) with `alpn`.
    pub fn server_config(&self, hosts: &[&str], alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// A rustls client trusting only `ca_pem`, offering `alpn`.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pem_certs(ca_pem) {
        roots.add(c).unwrap();
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

fn rustls_pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    // rcgen/pem blocks: decode with rustls-pki-types' PEM support.
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// Connect with TLS to `addr` presenting `name` as SNI.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(cfg).connect(name, tcp).await
}

/// An in-memory TLS pair (client, server) over a duplex pipe, handshaken.
pub async fn tls_pair(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    tokio_rustls::server::TlsStream<tokio::io::DuplexStream>,
) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let (c, s) = tokio::join!(
        TlsConnector::from(client).connect(name, c),
        TlsAcceptor::from(server).accept(s)
    );
    (c.unwrap(), s.unwrap())
}

/// What an upstream saw of the last request.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    /// Connections that have ended (either side closed them).
    closed: AtomicUsize,
    requests: AtomicUsize,
    last: Mutex<Option<SeenRequest>>,
}

/// A local upstream server (HTTPS or plain HTTP) with fixed routes:
/// `/hello`, `/echo` (streams the request body back), `/bytes/N` (N bytes,
/// generated in 64 KiB chunks), `/sse?n=K&gap_ms=M`, `/ws` (WebSocket echo),
/// `/headers` (request headers as text), `/trailers` (request trailers as text), `/v1/chat/completions` and
/// `/v1/messages` (an LLM provider, [`llm`]).
pub struct Upstream {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// HTTPS on 127.0.0.1, certificate for `hosts` from `ca`, ALPN `alpn`.
    pub async fn https(ca: &TestCa, hosts: &[&str], alpn: &[&[u8]]) -> Self {
        Self::start(Some(TlsAcceptor::from(ca.server_config(hosts, alpn)))).await
    }

    /// Plain HTTP on 127.0.0.1.
    pub async fn http() -> Self {
        Self::start(None).await
    }

    async fn start(tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.connections.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let (c, tls) = (c.clone(), tls.clone());
                tokio::spawn(async move {
                    let ended = c.clone();
                    let svc = hyper::service::service_fn(move |req| route(c.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(tcp).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                                .await;
                        }
                    }
                    ended.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            counters,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Connections that have ended so far.
    pub fn closed(&self) -> usize {
        self.counters.closed.load(Ordering::SeqCst)
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    pub fn last_request(&self) -> Option<SeenRequest> {
        self.counters.last.lock().unwrap().clone()
    }
}

fn full(s: impl Into<Bytes>) -> RespBody {
    Full::new(s.into()).map_err(|n| match n {}).boxed()
}

fn query_param(q: Option<&str>, name: &str) -> Option<u64> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

async fn route(
    c: Arc<Counters>,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    c.requests.fetch_add(1, Ordering::SeqCst);
    *c.last.lock().unwrap() = Some(SeenRequest {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_owned();
    let resp = match path.as_str() {
        "/hello" => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| req.uri().host().map(str::to_owned))
                .unwrap_or_default();
            Response::new(full(format!(
                "hello {host} {:?} {}",
                req.version(),
                req.method()
            )))
        }
        // An LLM provider (llm.rs): OpenAI Chat Completions and Anthropic
        // Messages, streamed or not, with fixed usage figures that tests
        // read back from receipts, reports and the ledger.
        "/v1/chat/completions" | "/v1/messages" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let Ok(body) = body else {
                return Ok(status(StatusCode::BAD_REQUEST));
            };
            match llm::llm_answer(&path, &body) {
                Some(LlmAnswer::Json(json)) => {
                    let mut resp = Response::new(full(json));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    resp
                }
                Some(LlmAnswer::Events(events)) => {
                    let (tx, rx) = mpsc::channel(events.len().max(1));
                    for e in events {
                        let _ = tx.try_send(Bytes::from(e));
                    }
                    let mut r = Response::new(ChannelBody(rx).boxed());
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
                    r
                }
                None => status(StatusCode::NOT_FOUND),
            }
        }
        "/echo" => Response::new(req.into_body().map_err(|e| Box::new(e) as BoxError).boxed()),
        // The request's trailers as text, once its body has been read.
        "/trailers" => {
            let Ok(body) = req.into_body().collect().await else {
                return Ok(status(StatusCode::BAD_REQUEST));
            };
            let mut out = String::new();
            for (k, v) in body.trailers().into_iter().flatten() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(out))
        }
        "/headers" => {
            let mut out = String::new();
            for (k, v) in req.headers() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(out))
        }
        "/sse" => {
            let n = query_param(req.uri().query(), "n").unwrap_or(3);
            let gap = query_param(req.uri().query(), "gap_ms").unwrap_or(200);
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for i in 0..n {
                    if tx
                        .send(Bytes::from(format!("data: event {i}\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(gap)).await;
                }
            });
            let mut r = Response::new(ChannelBody(rx).boxed());
            r.headers_mut()
                .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
            r
        }
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                return Ok(status(StatusCode::BAD_REQUEST));
            };
            let on_up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                use tokio_tungstenite::tungstenite::protocol::Role;
                let Ok(up) = on_up.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    Role::Server,
                    None,
                )
                .await;
                use tokio_tungstenite::tungstenite::Message;
                while let Some(Ok(msg)) = futures_next(&mut ws).await {
                    let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                    if matches!(msg, Message::Close(_))
                        || (echo && futures_send(&mut ws, msg).await.is_err())
                    {
                        return;
                    }
                }
            });
            let accept = websocket_accept(key.as_bytes());
            let mut r = Response::new(Empty::new().map_err(|n| match n {}).boxed());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = r.headers_mut();
            h.insert(header::CONNECTION, "upgrade".parse().unwrap());
            h.insert(header::UPGRADE, "websocket".parse().unwrap());
            h.insert("sec-websocket-accept", accept.parse().unwrap());
            r
        }
        p if p.starts_with("/bytes/") => {
            let n: u64 = p["/bytes/".len()..].parse().unwrap_or(0);
            let mut r = Response::new(Generated { left: n }.boxed());
            r.headers_mut().insert(header::CONTENT_LENGTH, n.into());
            r
        }
        _ => status(StatusCode::NOT_FOUND),
    };
    Ok(resp)
}

fn status(s: StatusCode) -> Response<RespBody> {
    let mut r = Response::new(full(""));
    *r.status_mut() = s;
    r
}

async fn futures_next<S>(
    ws: &mut S,
) -> Option<Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    futures_util::StreamExt::next(ws).await
}

async fn futures_send<S>(
    ws: &mut S,
    m: tokio_tungstenite::tungstenite::Message,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: futures_util::Sink<
            tokio_tungstenite::tungstenite::Message,
            Error = tokio_tungstenite::tungstenite::Error,
        > + Unpin,
{
    futures_util::SinkExt::send(ws, m).await
}

/// `n` bytes generated 64 KiB at a time: the upstream never holds the body.
struct Generated {
    left: u64,
}

const CHUNK: &[u8] = &[b'x'; 64 * 1024];

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let n = this.left.min(CHUNK.len() as u64) as usize;
        this.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A body fed by a channel: each message is one data frame; it ends when the
/// sender is dropped.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// The `Sec-WebSocket-Accept` that answers `key` (RFC 6455 §4.2.2), for
/// mock WebSocket servers: the proxy refuses a `101` without it.
pub fn websocket_accept(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}
