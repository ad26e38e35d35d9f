//! The flight-booking scenario's upstream services, served offline on
//! loopback over HTTPS: google.com (flight search), kayak.com (price
//! comparison), united.com (login, flights, purchase), hooks.slack.com (the
//! webhook the agent must never reach) and a mail API.
//!
//! One TLS listener serves every host (routing on the Host header) with a
//! certificate from the demo's own CA. Each request is recorded in a
//! [`MockLedger`] so the demo and its tests can prove what the services saw:
//! the real password arrived at united.com, the webhook was never called.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The hosts the mock services answer for.
pub const HOSTS: &[&str] = &[
    "google.com",
    "kayak.com",
    "united.com",
    "hooks.slack.com",
    "api.mail.example",
];

/// Largest request body the mocks accept; the scenario's bodies are tiny.
const MAX_BODY: usize = 64 * 1024;

/// What the mocks expect as real credentials. They hold the secrets on the
/// "internet" side, as a real airline would.
#[derive(Clone)]
pub struct ExpectedSecrets {
    pub united_password: String,
    pub card_number: String,
}

/// One request as a mock service saw it, minus secret values: only whether
/// the expected secret was presented.
#[derive(Debug, Clone, Serialize)]
pub struct SeenRequest {
    pub host: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// For login and purchase: did the request carry the real secret?
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_secret_presented: Option<bool>,
}

/// Every request the mock services answered, in order.
#[derive(Clone, Default)]
pub struct MockLedger(Arc<Mutex<Vec<SeenRequest>>>);

impl MockLedger {
    pub fn snapshot(&self) -> Vec<SeenRequest> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn record(&self, seen: SeenRequest) {
        if let Ok(mut v) = self.0.lock() {
            v.push(seen);
        }
    }
}

/// The running mock services.
pub struct MockServices {
    pub addr: SocketAddr,
    pub ledger: MockLedger,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockServices {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the services on 127.0.0.1 (ephemeral port) with the given TLS
/// server configuration (a certificate valid for every name in [`HOSTS`]).
pub async fn start(
    tls: Arc<rustls::ServerConfig>,
    secrets: ExpectedSecrets,
) -> Result<MockServices> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding the mock services on 127.0.0.1")?;
    let addr = listener.local_addr().context("mock services address")?;
    let ledger = MockLedger::default();
    let state = Arc::new(State {
        secrets,
        ledger: ledger.clone(),
    });
    let acceptor = TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(MockServices { addr, ledger, task })
}

struct State {
    secrets: ExpectedSecrets,
    ledger: MockLedger,
}

impl State {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let host = request_host(&req);
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = parse_query(req.uri().query().unwrap_or(""));
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return self.answer(&host, &method, &path, None, bad_request("body")),
        };
        let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);

        let (presented, response) = match (host.as_str(), &method, path.as_str()) {
            ("google.com", &Method::GET, "/travel/flights/search") => {
                (None, ok(google_search(&query)))
            }
            ("kayak.com", &Method::GET, "/api/compare") => (None, ok(kayak_compare(&query))),
            ("united.com", &Method::POST, "/api/auth/login") => {
                let real = json_body["password"].as_str() == Some(&self.secrets.united_password);
                let response = if real {
                    ok(json!({"session": "mp-7f3a", "member": "MileagePlus ****2291"}))
                } else {
                    status(
                        StatusCode::UNAUTHORIZED,
                        json!({"error": "invalid credentials"}),
                    )
                };
                (Some(real), response)
            }
            ("united.com", &Method::GET, "/api/flights") => (None, ok(united_flights(&query))),
            ("united.com", &Method::POST, "/api/booking/purchase") => {
                let real = json_body["card_number"].as_str() == Some(&self.secrets.card_number);
                let response = if real {
                    ok(json!({
                        "confirmation": "HKJX7M",
                        "charged": json_body["total"],
                        "currency": json_body["currency"],
                        "card": format!("****{}", last4(&self.secrets.card_number)),
                    }))
                } else {
                    status(
                        StatusCode::PAYMENT_REQUIRED,
                        json!({"error": "card declined"}),
                    )
                };
                (Some(real), response)
            }
            ("hooks.slack.com", &Method::POST, p) if p.starts_with("/services/") => {
                (None, ok(json!({"ok": true})))
            }
            ("api.mail.example", &Method::POST, "/v1/send") => (
                None,
                ok(json!({"id": "msg-0001", "to": json_body["to"], "status": "queued"})),
            ),
            _ => (
                None,
                status(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"})),
            ),
        };
        self.answer(&host, &method, &path, presented, response)
    }

    fn answer(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        real_secret_presented: Option<bool>,
        response: Response<Full<Bytes>>,
    ) -> Response<Full<Bytes>> {
        self.ledger.record(SeenRequest {
            host: host.to_owned(),
            method: method.to_string(),
            path: path.to_owned(),
            status: response.status().as_u16(),
            real_secret_presented,
        });
        response
    }
}

fn request_host<B>(req: &Request<B>) -> String {
    let raw = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let without_port = raw.rsplit_once(':').map_or(raw.as_str(), |(h, _)| h);
    without_port.trim_start_matches("www.").to_ascii_lowercase()
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn last4(number: &str) -> &str {
    &number[number.len().saturating_sub(4)..]
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    status(StatusCode::OK, body)
}

fn bad_request(what: &str) -> Response<Full<Bytes>> {
    status(
        StatusCode::BAD_REQUEST,
        json!({ "error": format!("bad {what}") }),
    )
}

fn status(code: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn route(query: &HashMap<String, String>) -> (String, String) {
    let from = query.get("from").cloned().unwrap_or_else(|| "SFO".into());
    let to = query.get("to").cloned().unwrap_or_else(|| "JFK".into());
    (from, to)
}

/// A page of search results, about the size the seed story shows (~2 KB).
fn google_search(query: &HashMap<String, String>) -> Value {
    let (from, to) = route(query);
    let carriers = [
        ("United", 487),
        ("Delta", 512),
        ("JetBlue", 455),
        ("American", 530),
    ];
    let results: Vec<Value> = carriers
        .iter()
        .enumerate()
        .flat_map(|(i, (carrier, price))| {
            (0..3).map(move |j| {
                json!({
                    "carrier": carrier,
                    "depart": format!("{:02}:{:02}", 6 + i * 3 + j, (j * 25) % 60),
                    "stops": j % 2,
                    "round_trip_usd": price + (j as i64) * 38,
                })
            })
        })
        .collect();
    json!({ "from": from, "to": to, "results": results })
}

fn kayak_compare(query: &HashMap<String, String>) -> Value {
    let (from, to) = route(query);
    json!({
        "from": from, "to": to,
        "cheapest": {"carrier": "JetBlue", "usd": 455},
        "best": {"carrier": "United", "usd": 487, "flights": ["UA 2847", "UA 1192"]},
    })
}

/// United's own flight list: six candidates, the two the agent books among them.
fn united_flights(query: &HashMap<String, String>) -> Value {
    let (from, to) = route(query);
    let date = query
        .get("date")
        .cloned()
        .unwrap_or_else(|| "2025-01-14".into());
    let flights: Vec<Value> = [
        ("UA 2847", "07:05", 243),
        ("UA 1534", "09:40", 281),
        ("UA 0612", "12:15", 259),
        ("UA 1192", "18:10", 244),
        ("UA 0398", "20:30", 302),
        ("UA 2211", "22:55", 219),
    ]
    .iter()
    .map(|(number, depart, usd)| {
        json!({
            "flight": number, "from": from, "to": to, "date": date, "depart": depart,
            "fare_usd": usd, "cabin": "economy", "seats_left": 9,
            "aircraft": "Boeing 737-900", "meal": "snacks for purchase",
        })
    })
    .collect();
    json!({ "flights": flights })
}

/// A TLS server configuration for the mock services: a leaf per requested
/// name, minted by the demo's upstream CA.
pub fn tls_config(ca: Arc<proxy::SessionCa>) -> Result<Arc<rustls::ServerConfig>> {
    #[derive(Debug)]
    struct PerName(Arc<proxy::SessionCa>);
    impl rustls::server::ResolvesServerCert for PerName {
        fn resolve(
            &self,
            hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            let name = hello.server_name()?;
            HOSTS
                .contains(&name.trim_start_matches("www."))
                .then(|| self.0.leaf(name).ok())
                .flatten()
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions for the mock services")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(PerName(ca)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
