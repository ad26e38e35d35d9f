//! `openclaw ui`: the web UI. A small hyper server on loopback that lists
//! sessions, shows each one (live through its control socket while it
//! runs, from its bundle afterwards) and answers approvals as `ui`.
//!
//! Routes (all need the access cookie; see [`auth`]):
//! - `GET /` the sessions list; `GET /api/sessions` the same as JSON;
//! - `GET /sessions/{id}` the session page (the report template, live);
//! - `GET /sessions/{id}/events` server-sent events `{report, pending, ended}`;
//! - `POST /sessions/{id}/approvals` `{id, approve}` + CSRF header;
//! - `GET /sessions/{id}/bundle.tar.gz` a finished session's bundle.

/// Also used by `openclaw serve` (`GET /v1/sessions/{id}/bundle`).
pub(crate) mod archive;
pub mod auth;
mod live;
/// Also read by `openclaw serve` (a tenant's sessions are listed the same way).
pub(crate) mod sessions;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::control::{self, ControlClientError, ControlRequest};
use crate::report::{self, csp, LivePage};
use auth::Access;
use sessions::Sessions;

/// The approver named in receipts for answers given in the browser.
pub const APPROVER: &str = "ui";

const LIST_TEMPLATE: &str = include_str!("list.html");
/// How long the UI waits for a session's control socket.
pub const CONTROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest request body taken (an answer is a few dozen bytes).
const MAX_BODY: usize = 4096;

type Body = BoxBody<Bytes, Infallible>;

pub struct UiConfig {
    pub home: PathBuf,
    pub addr: SocketAddr,
    /// Serve on a non-loopback address (the operator said so).
    pub remote: bool,
}

pub struct Server {
    listener: TcpListener,
    state: Arc<State>,
}

struct State {
    access: Access,
    sessions: Arc<Sessions>,
}

impl State {
    fn sessions_arc(&self) -> Arc<Sessions> {
        self.sessions.clone()
    }
}

impl Server {
    pub async fn bind(config: UiConfig) -> Result<Self> {
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("listening on {}", config.addr))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        Ok(Server {
            listener,
            state: Arc::new(State {
                access: Access::new(addr, config.remote),
                sessions: Arc::new(Sessions::new(&config.home)),
            }),
        })
    }

    /// The URL to open: it carries the access token once.
    pub fn url(&self) -> Result<String> {
        let addr = self.listener.local_addr()?;
        Ok(format!(
            "http://{addr}/?token={}",
            self.state.access.token()
        ))
    }

    pub async fn run(self) -> Result<()> {
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("ui accept: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                // A client that never finishes its request head is dropped.
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("ui connection: {err}");
                }
            });
        }
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let mut response = route(state, req).await;
    let h = response.headers_mut();
    // No CORS headers, ever: other origins get nothing readable.
    h.insert(header::X_CONTENT_TYPE_OPTIONS, hv("nosniff"));
    h.insert(header::REFERRER_POLICY, hv("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, hv("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(hv("no-store"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(hv("default-src 'none'; frame-ancestors 'none'"));
    response
}

fn hv(s: &'static str) -> http::HeaderValue {
    http::HeaderValue::from_static(s)
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    let access = &state.access;
    if !access.host_ok(req.headers()) {
        return text(StatusCode::MISDIRECTED_REQUEST, "unknown Host");
    }
    let path = req.uri().path().to_owned();
    // The printed URL: trade the token for the cookie, then drop it from the
    // address bar (and from history) with a redirect.
    if let Some(token) = query_param(req.uri().query(), "token") {
        if req.method() == Method::GET && access.token_matches(&token) {
            return Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, local_target(&path))
                .header(header::SET_COOKIE, access.set_cookie())
                .body(empty())
                .expect("static response parts are valid");
        }
        return text(StatusCode::UNAUTHORIZED, "wrong access token");
    }
    if !access.has_cookie(req.headers()) {
        return text(
            StatusCode::UNAUTHORIZED,
            "open the URL `openclaw ui` printed (it carries the access token)",
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, [""]) => list_page(state),
        (Method::GET, ["api", "sessions"]) => json(StatusCode::OK, &state.sessions.list()),
        (method, ["sessions", id, rest @ ..]) => {
            let Some(dir) = state.sessions.dir_of(id) else {
                return text(StatusCode::NOT_FOUND, "no such session");
            };
            match (method, rest) {
                (Method::GET, []) => session_page(state, id, &dir),
                (Method::GET, ["events"]) => live::events(state, id, dir),
                (Method::POST, ["approvals"]) => answer(state, &dir, req).await,
                (Method::GET, ["bundle.tar.gz"]) => bundle(state, id, dir),
                _ => text(StatusCode::NOT_FOUND, "not found"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn list_page(state: &State) -> Response<Body> {
    let data = serde_json::to_string(&state.sessions.list()).unwrap_or_else(|_| "[]".into());
    let html = LIST_TEMPLATE.replace("__SESSIONS_JSON__", &report::script_safe(&data));
    page(html, &csp::policy_for(LIST_TEMPLATE))
}

fn session_page(state: &State, id: &str, dir: &std::path::Path) -> Response<Body> {
    let Some(report) = state.sessions.report(id, dir) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the session's bundle is unreadable",
        );
    };
    let live = sessions::is_live(dir, &report.session);
    let base = format!("/sessions/{id}");
    let page_live = LivePage {
        events_url: live.then(|| format!("{base}/events")),
        answer_url: format!("{base}/approvals"),
        csrf_token: state.access.csrf().to_owned(),
        bundle_url: (!live).then(|| format!("{base}/bundle.tar.gz")),
        list_url: Some("/".into()),
    };
    page(
        report::render_html(&report, Some(&page_live)),
        &report::page_csp(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    id: u64,
    approve: bool,
}

async fn answer(state: &State, dir: &std::path::Path, req: Request<Incoming>) -> Response<Body> {
    if !state.access.csrf_ok(req.headers()) {
        return text(StatusCode::FORBIDDEN, "missing or wrong CSRF header");
    }
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send application/json");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let Ok(answer) = serde_json::from_slice::<Answer>(&body) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected {\"id\": N, \"approve\": bool}",
        );
    };
    let request = ControlRequest::Answer {
        id: answer.id,
        approve: answer.approve,
        approver: Some(APPROVER.into()),
    };
    // A supervisor that does not answer in time leaves the approval pending
    // (its own timeout denies it); the page says so rather than hanging.
    let reply = tokio::time::timeout(CONTROL_TIMEOUT, control::call(dir, &request)).await;
    let Ok(reply) = reply else {
        return json(
            StatusCode::GATEWAY_TIMEOUT,
            &serde_json::json!({"ok": false, "error": "the session did not answer in time"}),
        );
    };
    match reply {
        Ok(_) => json(StatusCode::OK, &serde_json::json!({"ok": true})),
        Err(ControlClientError::Refused(reason)) => json(
            StatusCode::CONFLICT,
            &serde_json::json!({"ok": false, "error": reason}),
        ),
        Err(ControlClientError::NotRunning(_)) => json(
            StatusCode::CONFLICT,
            &serde_json::json!({"ok": false, "error": "the session is not running"}),
        ),
        Err(err) => json(
            StatusCode::BAD_GATEWAY,
            &serde_json::json!({"ok": false, "error": err.to_string()}),
        ),
    }
}

fn bundle(state: &State, id: &str, dir: PathBuf) -> Response<Body> {
    if let Some(report) = state.sessions.report(id, &dir) {
        if sessions::is_live(&dir, &report.session) {
            return text(StatusCode::CONFLICT, "the session is still running");
        }
    }
    let rx = archive::stream_tar_gz(dir, id.to_owned());
    Response::builder()
        .header(header::CONTENT_TYPE, "application/gzip")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"openclaw-session-{id}.tar.gz\""),
        )
        .body(ChannelBody { rx }.boxed())
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad session id"))
}

fn page(html: String, policy: &str) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(
            header::CONTENT_SECURITY_POLICY,
            format!("{policy}; frame-ancestors 'none'"),
        )
        .body(Full::new(Bytes::from(html)).boxed())
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad page"))
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{message}\n"))).boxed())
        .expect("static response parts are valid")
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

/// Where to send the browser after the token: the same path on this
/// server, never another host (`//evil.example` is a network-path reference).
fn local_target(path: &str) -> &str {
    if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') {
        path
    } else {
        "/"
    }
}

/// The value of `name` in a query string (tokens are hex: no decoding).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A response body fed from a channel: event streams and archives.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> ChannelBody {
        ChannelBody { rx }
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_redirect_stays_on_this_server() {
        assert_eq!(local_target("/sessions/x"), "/sessions/x");
        assert_eq!(local_target("//evil.example/x"), "/");
        assert_eq!(local_target("/\\evil.example"), "/");
        assert_eq!(local_target("*"), "/");
    }

    #[test]
    fn token_query_parsing() {
        assert_eq!(
            query_param(Some("a=1&token=abc"), "token").as_deref(),
            Some("abc")
        );
        assert_eq!(query_param(Some("tokenx=abc"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }
}
