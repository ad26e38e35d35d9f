//! Shared setup for the enforcement tests: the flight-booking token minted
//! from `examples/flight-booking/policy.toml`, its catalog, a secrets store,
//! a recording HTTPS upstream that plays every service (its own test CA) and
//! keeps what it was sent (`/vault/<how>` reads it back: compressed, with
//! trailers, escaped), the real proxy with the enforcing gate on loopback,
//! curl, and chain checks.
#![allow(dead_code, clippy::unwrap_used)]

pub mod usage_provider;

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use capabilities::{Capability, Counters, Policy, UnverifiedToken};
use ed25519_dalek::SigningKey;
use enforce::{
    ApprovalBroker, Catalog, DnsRefusalLimit, EnforceConfig, Enforcement, EnforcingGate, Event,
    Ledger, SecretStore,
};
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::{Proxy, ProxyConfig, ProxyHandle};
use receipts::{DurableSink, LogOptions, ReceiptLog, SessionStart, UnverifiedChain, VerifiedChain};
use test_support::{Scripted, ScriptedBroker, TestCa};
use tokio::{net::TcpListener, sync::broadcast, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

pub const POLICY: &str = include_str!("../../../examples/flight-booking/policy.toml");
pub const CATALOG: &str = include_str!("../../../examples/flight-booking/catalog.toml");

/// The secrets the host holds; the sandbox only ever sees placeholders.
pub const LOGIN_SECRET: &str = "Hunter2-real-P@ss";
pub const CARD_SECRET: &str = "4111111111111111";
pub const SECRETS: &str = r#"
[[secret]]
name = "united_login"
value = "Hunter2-real-P@ss"

[[secret]]
name = "united_card"
value = "4111111111111111"
"#;

/// Every service of the scenario, played by one upstream.
pub const HOSTS: &[&str] = &[
    "google.com",
    "united.com",
    "kayak.com",
    "api.mail.example",
    "hooks.slack.com",
    "evil.example",
    "api.openai.com",
    "api.anthropic.com",
];

/// What the upstream saw of one request, body included.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub host: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// An HTTPS upstream answering every host with a JSON echo of the request:
/// `{"ok":true,"host":…,"path":…,"body":…}`, so a secret the proxy injected
/// comes straight back (and must be masked on the way to the sandbox).
pub struct Mock {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    pub async fn start(ca: &TestCa) -> Mock {
        let acceptor = TlsAcceptor::from(ca.server_config(HOSTS, &[b"h2", b"http/1.1"]));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| answer(s.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Mock {
            addr,
            seen,
            connections,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests the upstream served for `host`.
    pub fn seen_for(&self, host: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.host == host).collect()
    }
}

/// The upstream's response body.
type MockBody = BoxBody<Bytes, Infallible>;

async fn answer(
    seen: Arc<Mutex<Vec<Seen>>>,
    mut req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let websocket = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h).to_owned())
        })
        .unwrap_or_default();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req.headers().clone();
    // What a WebSocket handshake's key asks for (the proxy checks it).
    let ws_key = headers.get("sec-websocket-key");
    let ws_accept = test_support::websocket_accept(ws_key.map_or(&b""[..], |k| k.as_bytes()));
    let range = headers
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    // What this host was last sent (by a request other than a read), for
    // `/vault/<how>`: a server that stores what it is given and shows it.
    let stored = seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|s| s.host == host && !s.path.starts_with("/vault/"))
        .map(|s| s.body.clone())
        .unwrap_or_default();
    let json = serde_json::json!({
        "ok": true,
        "host": host,
        "path": path,
        "body": String::from_utf8_lossy(&body),
    });
    seen.lock().unwrap().push(Seen {
        method,
        host,
        path: path.clone(),
        headers,
        body,
    });
    if let Some(how) = path.strip_prefix("/vault/") {
        // a server that honours `Range` (static files, object
        // stores): 206 with the bytes asked for.
        if let Some(range) = range.filter(|_| how == "plain") {
            return Ok(ranged(&range, &stored));
        }
        return Ok(vault(how, &stored));
    }
    if let Some(on_upgrade) = on_upgrade {
        return Ok(websocket_echo(on_upgrade, seen, stored, &ws_accept));
    }
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())).boxed());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    Ok(resp)
}

/// A WebSocket server: answers `101` (the stored value in a header too),
/// records the first bytes the client sends as a `Seen` with path
/// `/ws-data`, then sends one text message holding the stored value and a
/// close frame, and ends the connection.
fn websocket_echo(
    on_upgrade: hyper::upgrade::OnUpgrade,
    seen: Arc<Mutex<Vec<Seen>>>,
    stored: Vec<u8>,
    accept: &str,
) -> Response<MockBody> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let header =
        http::HeaderValue::from_bytes(&stored).unwrap_or(http::HeaderValue::from_static("-"));
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut buf = vec![0u8; 4096];
        let n = io.read(&mut buf).await.unwrap_or(0);
        seen.lock().unwrap().push(Seen {
            method: "WS".into(),
            host: String::new(),
            path: "/ws-data".into(),
            headers: http::HeaderMap::new(),
            body: buf[..n].to_vec(),
        });
        let mut message = b"stored: ".to_vec();
        message.extend_from_slice(&stored);
        let mut out = vec![0x81, 126];
        out.extend_from_slice(&u16::try_from(message.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&message);
        out.extend_from_slice(&[0x88, 0x02, 0x03, 0xe8]);
        let _ = io.write_all(&out).await;
        let _ = io.shutdown().await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(http::header::UPGRADE, "websocket".parse().unwrap());
    h.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
    h.insert("sec-websocket-accept", accept.parse().unwrap());
    h.insert("x-stored", header);
    resp
}

/// `bytes=a-b` of `stored`, as a 206.
fn ranged(range: &str, stored: &[u8]) -> Response<MockBody> {
    let (a, b) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .unwrap();
    let a: usize = a.parse().unwrap();
    let b: usize = b
        .parse::<usize>()
        .unwrap()
        .min(stored.len().saturating_sub(1));
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(&stored[a..=b])).boxed());
    *resp.status_mut() = http::StatusCode::PARTIAL_CONTENT;
    resp.headers_mut().insert(
        http::header::CONTENT_RANGE,
        format!("bytes {a}-{b}/{}", stored.len()).parse().unwrap(),
    );
    resp
}

/// `stored` sent back as `how` says, whatever the request asked for
/// (`Accept-Encoding` is ignored, as some servers do).
fn vault(how: &str, stored: &[u8]) -> Response<MockBody> {
    use std::io::Write;
    let text = String::from_utf8_lossy(stored).into_owned();
    let (coding, body): (Option<&str>, Vec<u8>) = match how {
        "plain" => (None, stored.to_vec()),
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(stored).unwrap();
            (Some("gzip"), e.finish().unwrap())
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(stored).unwrap();
            (Some("deflate"), e.finish().unwrap())
        }
        "br" => {
            let mut out = Vec::new();
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(stored).unwrap();
            drop(w);
            (Some("br"), out)
        }
        "zstd" => (Some("zstd"), zstd::stream::encode_all(stored, 3).unwrap()),
        // A coding the proxy does not decode.
        "compress" => (Some("compress"), stored.to_vec()),
        // Every character as `\u00XX`, and `/` as `\/`, as JSON encoders
        // that escape everything do.
        "json" => (
            None,
            text.chars()
                .map(|c| match c {
                    '/' => "\\/".to_owned(),
                    c => format!("\\u{:04x}", u32::from(c)),
                })
                .collect::<String>()
                .into_bytes(),
        ),
        // HTML character references: hex, decimal and named, in turn.
        "html" => (
            None,
            text.chars()
                .enumerate()
                .map(|(i, c)| match (c, i % 3) {
                    ('@', _) => "&commat;".to_owned(),
                    (c, 0) => format!("&#x{:x};", u32::from(c)),
                    (c, 1) => format!("&#{};", u32::from(c)),
                    (c, _) => c.to_string(),
                })
                .collect::<String>()
                .into_bytes(),
        ),
        // Chunked, one byte a chunk, the value again in a trailer.
        "trailers" => {
            let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = stored
                .iter()
                .map(|b| Ok(Frame::data(Bytes::copy_from_slice(&[*b]))))
                .collect();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-stored", http::HeaderValue::from_bytes(stored).unwrap());
            frames.push(Ok(Frame::trailers(trailers)));
            let body = StreamBody::new(futures_util::stream::iter(frames));
            let mut resp = Response::new(BodyExt::boxed(body));
            resp.headers_mut()
                .insert("trailer", http::HeaderValue::from_static("x-stored"));
            return resp;
        }
        // the stored text as the status line's reason phrase.
        "reason" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"x")).boxed());
            let reason: Vec<u8> = stored
                .iter()
                .copied()
                .filter(|b| *b >= 0x20 && *b < 0x7f)
                .collect();
            resp.extensions_mut()
                .insert(hyper::ext::ReasonPhrase::try_from(reason).unwrap());
            return resp;
        }
        // percent-encoded as JavaScript's encodeURIComponent does
        // (`!'()*~` left as they are), say in a redirect's Location.
        "uri-component" => {
            let enc: String = stored
                .iter()
                .map(|&b| {
                    if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let mut resp = Response::new(
                Full::new(Bytes::from(format!("<a href=\"/u?v={enc}\">x</a>"))).boxed(),
            );
            *resp.status_mut() = http::StatusCode::FOUND;
            resp.headers_mut().insert(
                http::header::LOCATION,
                format!("/next?v={enc}").parse().unwrap(),
            );
            return resp;
        }
        // the text in UTF-16LE, as its Content-Type says.
        "utf16" => {
            let body: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "text/plain; charset=utf-16le".parse().unwrap(),
            );
            return resp;
        }
        // the text in UTF-16LE behind a BOM, with no charset label (a
        // client sniffs it: Python's charset_normalizer, a browser).
        "utf16-bare" => {
            let body: Vec<u8> = "\u{feff}"
                .encode_utf16()
                .chain(text.encode_utf16())
                .flat_map(u16::to_le_bytes)
                .collect();
            let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "application/octet-stream".parse().unwrap(),
            );
            return resp;
        }
        // the stored password as Go writes an HTML fragment into
        // JSON: HTML-escaped (`"` as `&#34;`), then `&` as `\u0026`.
        "go-html-json" => {
            let v: serde_json::Value = serde_json::from_slice(stored).unwrap();
            let pw = v["password"].as_str().unwrap();
            let html = pw
                .replace('&', "&amp;")
                .replace('"', "&#34;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            let json =
                serde_json::to_string(&serde_json::json!({ "html": format!("<b>{html}</b>") }))
                    .unwrap()
                    .replace('&', "\\u0026")
                    .replace('<', "\\u003c")
                    .replace('>', "\\u003e");
            (None, json.into_bytes())
        }
        // base64 of the stored text (a token or cookie built from it).
        "base64" => (
            None,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, stored).into_bytes(),
        ),
        // a JavaScript string literal as Google's and Go's JS
        // escapers write it: punctuation as `\xHH`.
        "js" => {
            let js: String = text
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_string()
                    } else {
                        format!("\\x{:02x}", u32::from(c))
                    }
                })
                .collect();
            (None, format!("var stored = \"{js}\";").into_bytes())
        }
        // upper-cased (a server normalising what it stores).
        "upper" => (None, text.to_uppercase().into_bytes()),
        other => panic!("no vault mode {other}"),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    if let Some(c) = coding {
        resp.headers_mut()
            .insert(http::header::CONTENT_ENCODING, c.parse().unwrap());
    }
    // The stored value also comes back in a header.
    resp.headers_mut().insert(
        "x-stored",
        http::HeaderValue::from_bytes(stored).unwrap_or(http::HeaderValue::from_static("-")),
    );
    resp
}

/// A receipt sink that writes to a real file until `fail` is set, then to
/// `/dev/full` (every write fails with ENOSPC): a disk filling up mid-session.
pub struct FillingDisk {
    pub file: std::fs::File,
    pub full: std::fs::File,
    pub fail: Arc<AtomicBool>,
}

impl DurableSink for FillingDisk {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if self.fail.load(Ordering::SeqCst) {
            Write::write_all(&mut self.full, bytes)?;
            self.full.flush()
        } else {
            Write::write_all(&mut self.file, bytes)
        }
    }
    fn sync(&mut self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            self.full.sync_data()
        } else {
            self.file.sync_data()
        }
    }
}

/// An upstream other than the [`Mock`] that plays every service (the
/// adversarial Go upstream): where it listens and the CA it is signed by.
pub struct ExternalUpstream {
    pub addr: SocketAddr,
    pub ca_pem: String,
}

pub struct Options {
    pub policy: String,
    pub catalog: String,
    pub secrets: String,
    pub broker: Option<Arc<dyn ApprovalBroker>>,
    pub script: Vec<Scripted>,
    pub approval_timeout: Duration,
    /// Receipts go through a [`FillingDisk`] controlled by this flag.
    pub disk_full: Option<Arc<AtomicBool>>,
    pub dns_refusals: DnsRefusalLimit,
    /// LLM metering settings.
    pub metering: enforce::MeterSettings,
    /// Every service is played by this upstream instead of the mock.
    pub upstream: Option<ExternalUpstream>,
    /// The tenant's day quotas, if any.
    pub day_quota: Option<Arc<dyn enforce::DayQuota>>,
    /// A `rates.toml` read over the built-in card (the operator's file).
    pub rates: Option<String>,
}

impl Options {
    /// The default session with the united.com login set to `secret` (the
    /// card as usual): for reading a stored secret back in forms a server
    /// writes it in.
    pub fn with_login(secret: &str) -> Options {
        Options {
            secrets: format!(
                "[[secret]]\nname = \"united_login\"\nvalue = '{secret}'\n\n\
                 [[secret]]\nname = \"united_card\"\nvalue = \"4111111111111111\"\n"
            ),
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: POLICY.to_owned(),
            catalog: CATALOG.to_owned(),
            secrets: SECRETS.to_owned(),
            broker: None,
            script: vec![Scripted::Approve],
            approval_timeout: Duration::from_secs(30),
            disk_full: None,
            dns_refusals: DnsRefusalLimit::default(),
            metering: enforce::MeterSettings::default(),
            upstream: None,
            day_quota: None,
            rates: None,
        }
    }
}

/// One proxy session with the enforcing gate.
/// The sandbox's side of a TLS connection to the proxy.
pub type SandboxTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Sends the rest of `body` (after its first `sent` bytes) on a
/// [`Session::stalled_upload`] and reads the whole reply.
pub async fn finish_upload(mut io: SandboxTls, body: &str, sent: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(&body.as_bytes()[sent..]).await.unwrap();
    io.flush().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), io.read_to_end(&mut out))
        .await
        .expect("the proxy answers and closes")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

pub struct Session {
    pub proxy: ProxyHandle,
    /// The session's token (to re-derive decisions).
    pub cap: Capability,
    pub gate: Arc<EnforcingGate>,
    pub placeholders: BTreeMap<String, String>,
    pub events: broadcast::Receiver<Event>,
    pub mock: Mock,
    pub broker: ScriptedBroker,
    pub ledger: Arc<Ledger>,
    pub receipts_path: PathBuf,
    pub receipt_key: SigningKey,
    pub session_ca: PathBuf,
    pub dir: tempfile::TempDir,
}

/// Mints the policy with a fresh root key and verifies it.
pub fn capability(policy: &str) -> Capability {
    let root = SigningKey::generate(&mut rand::rngs::OsRng);
    let policy = Policy::from_toml_str(policy).unwrap();
    let token = capabilities::mint(&policy, &root.to_bytes(), SystemTime::now()).unwrap();
    UnverifiedToken::from_base64(&token)
        .unwrap()
        .verify(&root.verifying_key().to_bytes())
        .unwrap()
}

impl Session {
    /// Opens an HTTP/1.1 TLS connection to the proxy as `host` and sends
    /// `head` (with its blank line) and `first`, the start of a body: an
    /// upload that stalls there until [`finish_upload`].
    pub async fn stalled_upload(&self, host: &str, head: &str, first: &[u8]) -> SandboxTls {
        use tokio::io::AsyncWriteExt;
        let ca = std::fs::read_to_string(&self.session_ca).unwrap();
        let cfg = test_support::client_config(&ca, &[b"http/1.1"]);
        let mut io = test_support::tls_connect(self.proxy.https_addr().unwrap(), host, cfg)
            .await
            .unwrap();
        io.write_all(head.as_bytes()).await.unwrap();
        io.write_all(first).await.unwrap();
        io.flush().await.unwrap();
        io
    }

    pub async fn start(opts: Options) -> Session {
        let dir = tempfile::tempdir().unwrap();
        let upstream_ca = TestCa::new("services");
        let mock = Mock::start(&upstream_ca).await;
        let cap = capability(&opts.policy);
        let receipt_key = SigningKey::generate(&mut rand::rngs::OsRng);
        let receipts_path = dir.path().join("receipts.jsonl");
        let start = SessionStart {
            session_id: "test-session".into(),
            revocation_ids: cap.revocation_ids(),
            sandbox: "none".into(),
            capability_sha256: None,
            tenant: None,
            user: None,
        };
        let log = match &opts.disk_full {
            None => ReceiptLog::create(&receipts_path, receipt_key.clone(), start).unwrap(),
            Some(flag) => {
                let sink = FillingDisk {
                    file: std::fs::File::create(&receipts_path).unwrap(),
                    full: std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/full")
                        .unwrap(),
                    fail: flag.clone(),
                };
                ReceiptLog::with_sink(sink, receipt_key.clone(), start, LogOptions::default())
                    .unwrap()
            }
        };
        let broker = ScriptedBroker::new(opts.script.clone());
        let ledger = Ledger::new(Counters::default());
        let catalog = Catalog::from_toml(&opts.catalog).unwrap();
        let card = match &opts.rates {
            None => enforce::RateCard::builtin(),
            Some(text) => {
                let path = dir.path().join("rates.toml");
                std::fs::write(&path, text).unwrap();
                enforce::RateCard::load(&path).unwrap()
            }
        };
        let rates = card.with_legacy_prices(catalog.llm_prices()).0;
        let enforcement = Enforcement::new(EnforceConfig {
            capability: cap.clone(),
            catalog,
            secrets: SecretStore::from_toml(&opts.secrets).unwrap(),
            receipts: log,
            broker: opts
                .broker
                .clone()
                .unwrap_or_else(|| Arc::new(broker.clone())),
            approval_timeout: opts.approval_timeout,
            counters: ledger.clone(),
            dns_refusals: opts.dns_refusals,
            rates,
            metering: opts.metering.clone(),
            day_quota: opts.day_quota.clone(),
        });
        let mut cfg = ProxyConfig::loopback("enforce-test");
        cfg.upstream.platform_roots = false;
        let (upstream_addr, upstream_ca_file) = match &opts.upstream {
            None => (mock.addr, upstream_ca.write_pem(dir.path())),
            Some(external) => {
                let path = dir.path().join("external-upstream-ca.pem");
                std::fs::write(&path, &external.ca_pem).unwrap();
                (external.addr, path)
            }
        };
        cfg.upstream.extra_ca_files = vec![upstream_ca_file];
        cfg.upstream.overrides = HOSTS
            .iter()
            .map(|h| ((*h).to_owned(), upstream_addr))
            .collect::<HashMap<_, _>>();
        let proxy = Proxy::start(cfg, enforcement.gate.clone()).await.unwrap();
        let session_ca = dir.path().join("session-ca.pem");
        std::fs::write(&session_ca, proxy.ca_pem()).unwrap();
        Session {
            proxy,
            cap,
            gate: enforcement.gate,
            placeholders: enforcement.placeholders,
            events: enforcement.events,
            mock,
            broker,
            ledger,
            receipts_path,
            receipt_key,
            session_ca,
            dir,
        }
    }

    pub fn placeholder(&self, name: &str) -> String {
        self.placeholders[name].clone()
    }

    /// curl `url` through the proxy's TLS listener; `args` go before the URL.
    pub async fn curl(&self, url: &str, args: &[&str]) -> Reply {
        let out = self.curl_output(url, args).await;
        Reply::parse(&out.stdout, &out.stderr)
    }

    /// [`curl`](Self::curl)'s whole output (`-i`: head and body), as bytes.
    pub async fn curl_output(&self, url: &str, args: &[&str]) -> std::process::Output {
        let port = self.proxy.https_addr().unwrap().port();
        tokio::process::Command::new("curl")
            .args(["-sS", "-i", "--max-time", "60", "--cacert"])
            .arg(&self.session_ca)
            .arg("--connect-to")
            .arg(format!("::127.0.0.1:{port}"))
            .args(args)
            .arg(url)
            .output()
            .await
            .unwrap()
    }

    /// Stores the real united.com login upstream through the catalog's
    /// `json:/password` place (the mock keeps the last body it was sent);
    /// returns the login response.
    pub async fn store_login(&self) -> Reply {
        let login = self.placeholder("united_login");
        let r = self
            .post_json(
                "https://united.com/api/auth/login",
                &format!(r#"{{"username":"t","password":"{login}"}}"#),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!self.mock.seen_for("united.com").is_empty());
        r
    }

    /// POST a JSON body.
    pub async fn post_json(&self, url: &str, body: &str) -> Reply {
        self.curl(
            url,
            &[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data-binary",
                body,
            ],
        )
        .await
    }

    /// Writes session_end and verifies the whole chain with the pinned key.
    pub fn finish_and_verify(&self) -> VerifiedChain {
        self.gate.receipts().clone().finish().unwrap();
        let bytes = std::fs::read(&self.receipts_path).unwrap();
        UnverifiedChain::from_bytes(bytes)
            .verify(&self.receipt_key.verifying_key())
            .unwrap()
    }

    /// Re-runs every decision the token made (`stage = token`) with its
    /// recorded facts, counters and time, and checks it comes out the same;
    /// every other stage may only ever have refused. Returns how many
    /// token decisions were re-derived.
    pub fn rederive(&self, chain: &VerifiedChain) -> usize {
        let mut n = 0;
        for r in &chain.receipts {
            let receipts::Body::Decision(d) = &r.receipt.body else {
                continue;
            };
            let recorded: capabilities::Decision =
                serde_json::from_value(d.decision.clone()).unwrap();
            if d.decision["stage"] != "token" {
                assert_eq!(recorded.decision, capabilities::Verdict::Block, "{d:?}");
                continue;
            }
            // The recorded query is not a fact the token reads.
            let action: capabilities::Action = serde_json::from_value(d.action_facts()).unwrap();
            let counters: Counters = serde_json::from_value(d.counters.clone()).unwrap();
            let now = receipts::parse_time(&r.receipt.ts).unwrap();
            let derived = self.cap.authorize(&action, &counters, now);
            assert_eq!(
                (derived.decision, &derived.grant, &derived.revocation_ids),
                (recorded.decision, &recorded.grant, &recorded.revocation_ids),
                "line {}: {d:?}",
                r.receipt.seq + 1
            );
            n += 1;
        }
        n
    }

    /// The chain's lines so far (the live file's preallocated NUL tail cut).
    pub fn receipts_text(&self) -> String {
        let bytes = std::fs::read(&self.receipts_path).unwrap();
        String::from_utf8(receipts::written_part(&bytes).to_vec()).unwrap()
    }

    /// Every event received so far.
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }
}

/// A parsed `curl -i` reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub stderr: String,
}

impl Reply {
    pub fn parse(stdout: &[u8], stderr: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `X-Openclaw-Blocked` reason, if the proxy refused.
    pub fn blocked(&self) -> Option<&str> {
        self.header("x-openclaw-blocked")
    }
}

/// Decision receipts in chain order: (seq, verdict, stage, reason, action JSON).
pub fn decisions(chain: &VerifiedChain) -> Vec<(u64, String, String, String, serde_json::Value)> {
    chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            receipts::Body::Decision(d) => Some((
                r.receipt.seq,
                d.decision["decision"].as_str().unwrap_or("").to_owned(),
                d.decision["stage"].as_str().unwrap_or("").to_owned(),
                d.decision["reason"].as_str().unwrap_or("").to_owned(),
                d.action.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// Approval receipts: (decision_seq, approved, approver).
pub fn approvals(chain: &VerifiedChain) -> Vec<(u64, bool, String)> {
    chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            receipts::Body::Approval(a) => Some((a.decision_seq, a.approved, a.approver.clone())),
            _ => None,
        })
        .collect()
}
