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
//!
//! `openclaw serve` serves the same pages under `/ui/` for the tenant whose
//! token logged in (`serve::ui`): the routes below the root are [`pages`],
//! shared, with a [`View`] that names the tenant's sessions, its login's
//! CSRF token, the approver and how answers are audited.

/// Also used by `openclaw serve` (`GET /v1/sessions/{id}/bundle`).
pub(crate) mod archive;
pub mod auth;
mod live;
/// The daemon's logins: a tenant token traded for a cookie.
pub(crate) mod logins;
/// Also read by `openclaw serve` (a tenant's sessions are listed the same way).
pub(crate) mod sessions;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
use crate::report::{self, csp, LivePage, Report};
use auth::Access;
use sessions::Sessions;

/// The approver named in receipts for answers given in the browser.
pub const APPROVER: &str = "ui";

const LIST_TEMPLATE: &str = include_str!("list.html");
/// How long the UI waits for a session's control socket.
pub const CONTROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest request body taken (an answer is a few dozen bytes).
pub(crate) const MAX_BODY: usize = 4096;

pub(crate) type Body = BoxBody<Bytes, Infallible>;

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
    view: View,
}

/// Whose pages are served and how: where the UI is mounted, whose sessions
/// it shows, the CSRF token its pages carry and who answers approvals.
/// `openclaw ui` has one for its life; the daemon makes one per request
/// from the tenant's login.
pub(crate) struct View {
    /// Path of the UI's root without the final slash: `""` for `openclaw
    /// ui`, `"/ui"` for the daemon.
    pub prefix: &'static str,
    pub sessions: Arc<Sessions>,
    /// What the pages carry and answers must send back ([`auth::CSRF_HEADER`]).
    pub csrf: String,
    /// The approver the approval receipt names.
    pub approver: String,
    /// The list page offers a logout button posting `csrf` (daemon logins).
    pub logout: bool,
    /// Run on a blocking thread once an answer was tried; an error means
    /// the answer cannot be recorded, and the reply says so (500).
    pub on_answer: Option<AnswerHook>,
    /// Asked on a blocking thread at every refresh of a live stream; `false`
    /// (the login no longer holds) ends the stream.
    pub still_allowed: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

pub(crate) type AnswerHook = Arc<dyn Fn(&AnswerRecord) -> Result<()> + Send + Sync>;

/// An answer given in the browser and what became of it.
pub(crate) struct AnswerRecord {
    pub session: String,
    pub approval: u64,
    pub approve: bool,
    pub outcome: AnswerOutcome,
}

pub(crate) enum AnswerOutcome {
    /// The session took it (and receipted it).
    Done,
    /// No such pending approval (never asked, answered, timed out).
    NotPending(String),
    /// Not taken: the question was already decided (the text says how and
    /// by whom); this answer changed nothing.
    NotTaken(String),
    NotRunning,
    /// The control socket did not answer in time; the approval stays pending.
    TimedOut,
    /// The control socket failed otherwise.
    Failed(String),
}

impl Server {
    pub async fn bind(config: UiConfig) -> Result<Self> {
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("listening on {}", config.addr))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let access = Access::new(addr, config.remote);
        let view = View {
            prefix: "",
            sessions: Arc::new(Sessions::new(&config.home)),
            csrf: access.csrf().to_owned(),
            approver: APPROVER.into(),
            logout: false,
            on_answer: None,
            still_allowed: None,
        };
        Ok(Server {
            listener,
            state: Arc::new(State { access, view }),
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
    harden(&mut response);
    response
}

/// The headers every UI response carries (pages set their own CSP).
pub(crate) fn harden(response: &mut Response<Body>) {
    let h = response.headers_mut();
    // No CORS headers, ever: other origins get nothing readable.
    h.insert(header::X_CONTENT_TYPE_OPTIONS, hv("nosniff"));
    h.entry(header::REFERRER_POLICY)
        .or_insert(hv("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, hv("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(hv("no-store"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(hv("default-src 'none'; frame-ancestors 'none'"));
}

/// For a page with a form: under `no-referrer` a browser sends a form's
/// POST with `Origin: null`, which the origin check must refuse; under
/// `same-origin` it names this origin, and still tells no other site
/// anything.
pub(crate) fn same_origin_referrer(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(header::REFERRER_POLICY, hv("same-origin"));
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
    pages(&state.view, req, &segments).await
}

/// The UI's routes below its root (`segments` of the raw path, never
/// percent-decoded), once the caller has established who may see them:
/// - `[""]` the sessions list; `["api", "sessions"]` the same as JSON;
/// - `["sessions", id]` the session page; `…/events` its live stream;
///   `POST …/approvals` an answer (CSRF); `…/bundle.tar.gz` its bundle.
pub(crate) async fn pages(
    view: &View,
    req: Request<Incoming>,
    segments: &[&str],
) -> Response<Body> {
    match (req.method().clone(), segments) {
        (Method::GET, [""]) => match list(view).await {
            Some(rows) => list_page(view, &rows),
            None => text(StatusCode::INTERNAL_SERVER_ERROR, "listing failed"),
        },
        (Method::GET, ["api", "sessions"]) => match list(view).await {
            Some(rows) => json(StatusCode::OK, &rows),
            None => text(StatusCode::INTERNAL_SERVER_ERROR, "listing failed"),
        },
        (method, ["sessions", id, rest @ ..]) => {
            let Some(dir) = find(view, id).await else {
                return text(StatusCode::NOT_FOUND, "no such session");
            };
            match (method, rest) {
                (Method::GET, []) => session_page(view, id, &dir).await,
                (Method::GET, ["events"]) => live::events(view, id, dir),
                (Method::POST, ["approvals"]) => answer(view, id, &dir, req).await,
                (Method::GET, ["bundle.tar.gz"]) => bundle(view, id, dir).await,
                _ => text(StatusCode::NOT_FOUND, "not found"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Reading bundles and verifying chains is blocking work.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

async fn list(view: &View) -> Option<Vec<sessions::SessionRow>> {
    let sessions = view.sessions.clone();
    blocking(move || sessions.list()).await
}

async fn find(view: &View, id: &str) -> Option<PathBuf> {
    let (sessions, id) = (view.sessions.clone(), id.to_owned());
    blocking(move || sessions.find(&id)).await.flatten()
}

async fn report_of(view: &View, id: &str, dir: &Path) -> Option<Arc<Report>> {
    let (sessions, id, dir) = (view.sessions.clone(), id.to_owned(), dir.to_path_buf());
    blocking(move || sessions.report(&id, &dir)).await.flatten()
}

fn list_page(view: &View, rows: &[sessions::SessionRow]) -> Response<Body> {
    let data = serde_json::to_string(rows).unwrap_or_else(|_| "[]".into());
    let logout = if view.logout {
        format!(
            "<form class=\"logout\" method=\"post\" action=\"{}/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Log out</button></form>",
            view.prefix,
            // Hex: nothing to escape, checked rather than assumed.
            view.csrf
                .chars()
                .filter(char::is_ascii_hexdigit)
                .collect::<String>()
        )
    } else {
        String::new()
    };
    // The data goes in last, so nothing in it is taken for a placeholder.
    let html = LIST_TEMPLATE
        .replace("__LOGOUT__", &logout)
        .replace("__SESSIONS_JSON__", &report::script_safe(&data));
    let mut policy = csp::policy_for(LIST_TEMPLATE);
    if view.logout {
        policy = policy.replace("form-action 'none'", "form-action 'self'");
    }
    let mut response = page(html, &policy);
    if view.logout {
        same_origin_referrer(&mut response);
    }
    response
}

async fn session_page(view: &View, id: &str, dir: &Path) -> Response<Body> {
    let Some(report) = report_of(view, id, dir).await else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the session's bundle is unreadable",
        );
    };
    let live = sessions::is_live(dir, &report.session);
    let base = format!("{}/sessions/{id}", view.prefix);
    let page_live = LivePage {
        events_url: live.then(|| format!("{base}/events")),
        answer_url: format!("{base}/approvals"),
        csrf_token: view.csrf.clone(),
        bundle_url: (!live).then(|| format!("{base}/bundle.tar.gz")),
        list_url: Some(format!("{}/", view.prefix)),
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

async fn answer(view: &View, id: &str, dir: &Path, req: Request<Incoming>) -> Response<Body> {
    if !auth::csrf_matches(req.headers(), &view.csrf) {
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
        approver: Some(view.approver.clone()),
    };
    // A supervisor that does not answer in time leaves the approval pending
    // (its own timeout denies it); the page says so rather than hanging.
    let outcome = match tokio::time::timeout(CONTROL_TIMEOUT, control::call(dir, &request)).await {
        Err(_) => AnswerOutcome::TimedOut,
        Ok(Ok(_)) => AnswerOutcome::Done,
        Ok(Err(ControlClientError::Refused(reason))) => AnswerOutcome::NotPending(reason),
        Ok(Err(ControlClientError::NotTaken(reason))) => AnswerOutcome::NotTaken(reason),
        Ok(Err(ControlClientError::NotRunning(_))) => AnswerOutcome::NotRunning,
        Ok(Err(err)) => AnswerOutcome::Failed(err.to_string()),
    };
    let record = AnswerRecord {
        session: id.to_owned(),
        approval: answer.id,
        approve: answer.approve,
        outcome,
    };
    let record = match view.on_answer.clone() {
        None => record,
        Some(hook) => {
            let recorded = tokio::task::spawn_blocking(move || {
                let result = hook(&record);
                (record, result)
            })
            .await;
            match recorded {
                Ok((record, Ok(()))) => record,
                Ok((_, Err(err))) => {
                    tracing::error!("recording an answer given in the UI: {err:#}");
                    return json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &serde_json::json!({"ok": false, "error": "the answer could not be recorded"}),
                    );
                }
                Err(_) => {
                    return json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &serde_json::json!({"ok": false, "error": "the answer could not be recorded"}),
                    )
                }
            }
        }
    };
    match record.outcome {
        AnswerOutcome::Done => json(StatusCode::OK, &serde_json::json!({"ok": true})),
        AnswerOutcome::NotPending(reason) => json(
            StatusCode::CONFLICT,
            &serde_json::json!({"ok": false, "error": reason}),
        ),
        AnswerOutcome::NotTaken(reason) => json(
            StatusCode::CONFLICT,
            &serde_json::json!({"ok": false, "error": reason, "not_taken": true}),
        ),
        AnswerOutcome::NotRunning => json(
            StatusCode::CONFLICT,
            &serde_json::json!({"ok": false, "error": "the session is not running"}),
        ),
        AnswerOutcome::TimedOut => json(
            StatusCode::GATEWAY_TIMEOUT,
            &serde_json::json!({"ok": false, "error": "the session did not answer in time"}),
        ),
        AnswerOutcome::Failed(err) => json(
            StatusCode::BAD_GATEWAY,
            &serde_json::json!({"ok": false, "error": err}),
        ),
    }
}

async fn bundle(view: &View, id: &str, dir: PathBuf) -> Response<Body> {
    if let Some(report) = report_of(view, id, &dir).await {
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

pub(crate) fn page(html: String, policy: &str) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(
            header::CONTENT_SECURITY_POLICY,
            format!("{policy}; frame-ancestors 'none'"),
        )
        .body(Full::new(Bytes::from(html)).boxed())
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad page"))
}

pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

pub(crate) fn text(status: StatusCode, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{message}\n"))).boxed())
        .expect("static response parts are valid")
}

pub(crate) fn empty() -> Body {
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
