//! The browser UI of `openclaw ui`, served by the daemon under `/ui/` for
//! the tenant whose token logged in (`docs/ui.md`). The login page posts a
//! tenant token (never in a URL); the daemon checks it as the API checks a
//! bearer token and answers with a login cookie (`ui::logins`). Every
//! request after that checks the login's token against the store again, so
//! a rotated token or a deleted tenant is refused at once. The pages and
//! their handlers are `openclaw ui`'s own (`ui::pages`), given a view of the
//! tenant's sessions only (contained by `TenantRoot::join`), the login's
//! CSRF token, the approver `ui:<tenant>` and an audit line per answer.

use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::identity::ProxyUser;
use super::state::State;
use crate::audit::{self, Actor, AuditRecord, Outcome, Via};
use crate::report::csp;
use crate::tenants::Identity;
use crate::ui::logins::{self, Login};
use crate::ui::{self, auth, AnswerOutcome, AnswerRecord, Body, View};

/// Where the UI is mounted (no final slash).
pub const PREFIX: &str = "/ui";
/// The login cookie's path: sent with the UI's requests only, never the API's.
const COOKIE_PATH: &str = "/ui";
const LOGIN_TEMPLATE: &str = include_str!("../ui/login.html");

/// Whether the daemon's UI serves `path`.
pub fn serves(path: &str) -> bool {
    path == PREFIX || path.starts_with("/ui/")
}

/// One request below `/ui`.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let request_id = audit::new_request_id();
    let mut response = route(&state, req, &request_id).await;
    ui::harden(&mut response);
    if let Ok(v) = http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

async fn route(state: &Arc<State>, req: Request<Incoming>, request_id: &str) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    match (req.method().clone(), rest) {
        (_, "") => return redirect("/ui/"),
        (Method::GET, "/login") => return login_page(StatusCode::OK, ""),
        (Method::POST, "/login") => return login(state, req).await,
        (Method::POST, "/logout") => return logout(state, req).await,
        (_, "/login") => return method_not_allowed("GET, POST"),
        (_, "/logout") => return method_not_allowed("POST"),
        _ => {}
    }
    if let ProxyUser::Invalid { header, .. } = proxy_user(&req) {
        return ui::text(
            StatusCode::BAD_REQUEST,
            &format!("the {header} header is not a valid user name"),
        );
    }
    let login = match current_login(state, req.headers()).await {
        Ok(Some(login)) => login,
        Ok(None) => {
            // A person opening a page is sent to log in; a script is told.
            let page =
                rest == "/" || (rest.starts_with("/sessions/") && rest.matches('/').count() == 2);
            return if req.method() == Method::GET && page {
                redirect("/ui/login")
            } else {
                ui::text(StatusCode::UNAUTHORIZED, "log in at /ui/login")
            };
        }
        Err(()) => {
            return ui::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the login could not be checked",
            )
        }
    };
    let view = view_for(state, &login, proxy_user(&req), request_id);
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    ui::pages(&view, req, &segments).await
}

fn proxy_user(req: &Request<Incoming>) -> ProxyUser {
    req.extensions()
        .get::<ProxyUser>()
        .cloned()
        .unwrap_or(ProxyUser::None)
}

/// Whether `token` still proves `login`'s tenant, asked of the store as
/// the API asks it (constant-time over the hash; no cache in front).
fn token_holds(state: &State, login: &Login) -> Result<bool, ()> {
    match state.registry.authenticate(login.token()) {
        Ok(Some(Identity::Tenant(name))) => Ok(name == login.tenant),
        Ok(_) => Ok(false),
        Err(e) => {
            tracing::warn!(tenant = %login.tenant, "checking a UI login: {e}");
            Err(())
        }
    }
}

/// The request's login, if it has one whose token the store still takes.
/// A login whose token no longer holds is ended (with every other login
/// of that token); a store that cannot answer is an error, never a pass.
async fn current_login(
    state: &Arc<State>,
    headers: &http::HeaderMap,
) -> Result<Option<Arc<Login>>, ()> {
    let Some(login) = state.logins.find(headers) else {
        return Ok(None);
    };
    let (st, l) = (state.clone(), login.clone());
    let holds = tokio::task::spawn_blocking(move || token_holds(&st, &l))
        .await
        .map_err(|_| ())??;
    if holds {
        Ok(Some(login))
    } else {
        state.logins.end_token_of(&login);
        Ok(None)
    }
}

fn view_for(state: &Arc<State>, login: &Arc<Login>, user: ProxyUser, request_id: &str) -> View {
    let tenant = login.tenant.clone();
    let root = state.registry.root(&tenant);
    let on_answer = {
        let (state, tenant, request_id) = (state.clone(), tenant.clone(), request_id.to_owned());
        Arc::new(move |answer: &AnswerRecord| {
            let (outcome, detail) = match &answer.outcome {
                AnswerOutcome::Done if answer.approve => (Outcome::Ok, "approved"),
                AnswerOutcome::Done => (Outcome::Ok, "denied"),
                AnswerOutcome::NotPending(_) => (Outcome::Refused, "no such pending approval"),
                // Never "approved"/"denied": this answer changed nothing.
                AnswerOutcome::NotTaken(_) => (Outcome::Refused, "not taken: already decided"),
                AnswerOutcome::NotRunning => (Outcome::Refused, "the session is not running"),
                AnswerOutcome::TimedOut => (Outcome::Failed, "the session did not answer in time"),
                AnswerOutcome::Failed(_) => {
                    (Outcome::Failed, "the session's control socket failed")
                }
            };
            let actor = match &user {
                ProxyUser::User(_) => Actor::User,
                _ => Actor::Tenant,
            };
            let target = format!("{}/{}", answer.session, answer.approval);
            let mut record =
                AuditRecord::now(actor, Via::Ui, "approval.answer", &target, &request_id);
            record.tenant = Some(tenant.to_string());
            if let ProxyUser::User(name) = &user {
                record.user = Some(name.clone());
            }
            record.outcome = outcome;
            record.detail = Some(detail.to_owned());
            state.registry.audit().append(&record)
        }) as ui::AnswerHook
    };
    let still_allowed = {
        let (state, login) = (state.clone(), login.clone());
        Arc::new(move || token_holds(&state, &login).unwrap_or(false))
            as Arc<dyn Fn() -> bool + Send + Sync>
    };
    View {
        prefix: PREFIX,
        sessions: state.sessions.of(&tenant, &root),
        csrf: login.csrf.clone(),
        approver: format!("ui:{tenant}"),
        logout: true,
        on_answer: Some(on_answer),
        still_allowed: Some(still_allowed),
    }
}

/// `POST /ui/login` `token=…` (a form): a tenant token becomes a login
/// cookie. The admin token has no sessions and is refused like a wrong one.
async fn login(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    // A page of another site must not log a browser into a tenant it chose.
    if !auth::same_origin(req.headers()) {
        return ui::text(StatusCode::FORBIDDEN, "cross-origin login refused");
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return ui::text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the login form (application/x-www-form-urlencoded)",
        );
    }
    let body = match Limited::new(req.into_body(), ui::MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return ui::text(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let Some(token) = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
    else {
        return login_page(StatusCode::BAD_REQUEST, "Paste your tenant token.");
    };
    let st = state.clone();
    let presented = token.clone();
    let who = tokio::task::spawn_blocking(move || st.registry.authenticate(&presented)).await;
    match who {
        Ok(Ok(Some(Identity::Tenant(tenant)))) => {
            tracing::info!(%tenant, "UI login");
            let (cookie, _) = state.logins.create(tenant, token);
            Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, "/ui/")
                .header(header::SET_COOKIE, logins::set_cookie(&cookie, COOKIE_PATH))
                .body(ui::empty())
                .expect("static response parts are valid")
        }
        Ok(Ok(Some(Identity::Admin))) => login_page(
            StatusCode::UNAUTHORIZED,
            "The admin token has no sessions: log in with a tenant token.",
        ),
        Ok(Ok(None)) => login_page(StatusCode::UNAUTHORIZED, "That token is not valid."),
        Ok(Err(e)) => {
            tracing::warn!("checking a UI login: {e}");
            login_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The token could not be checked; try again.",
            )
        }
        Err(_) => login_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The token could not be checked; try again.",
        ),
    }
}

/// `POST /ui/logout`: the list page's button (the CSRF token as the form
/// field `csrf`) or a script (the CSRF header). Ends the login here, so the
/// cookie is worthless even if the browser kept it.
async fn logout(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let Some(login) = state.logins.find(req.headers()) else {
        return redirect_clearing("/ui/login");
    };
    if !auth::same_origin(req.headers()) {
        return ui::text(StatusCode::FORBIDDEN, "cross-origin logout refused");
    }
    let by_header = auth::csrf_matches(req.headers(), &login.csrf);
    let headers = req.headers().clone();
    let by_form = !by_header && {
        let body = Limited::new(req.into_body(), ui::MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        form_urlencoded::parse(&body).any(|(k, v)| k == "csrf" && auth::ct_eq(&v, &login.csrf))
    };
    if !(by_header || by_form) {
        return ui::text(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    state.logins.end(&headers);
    redirect_clearing("/ui/login")
}

fn login_page(status: StatusCode, message: &'static str) -> Response<Body> {
    // Messages are fixed text of this file: nothing to escape.
    let html = LOGIN_TEMPLATE.replace("__MESSAGE__", message);
    let policy =
        csp::policy_for(LOGIN_TEMPLATE).replace("form-action 'none'", "form-action 'self'");
    let mut response = ui::page(html, &policy);
    *response.status_mut() = status;
    ui::same_origin_referrer(&mut response);
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = ui::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    response
}

fn redirect(to: &'static str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to)
        .body(ui::empty())
        .expect("static response parts are valid")
}

fn redirect_clearing(to: &'static str) -> Response<Body> {
    let mut response = redirect(to);
    if let Ok(v) = http::HeaderValue::from_str(&logins::clear_cookie(COOKIE_PATH)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}
