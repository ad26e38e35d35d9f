//! The API's routes and handlers. A request is read (head, bearer token,
//! a bounded body) on the async side, then handled on a blocking thread
//! (SQLite, bundle files). Order of checks under `/v1`: the token (401),
//! then whether this identity may see the route at all (404, never 403),
//! then the method (405), then the input (400 naming the field).
//!
//! Path parameters are matched on the raw path, never percent-decoded: `%2F`
//! or `%2e%2e` in an id is not a separator or `..`, it is an id that names
//! nothing (404).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bytes::Bytes;
use clap::ValueEnum;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::json;

use super::error::{json, ApiBody, ApiError};
use super::identity::ProxyUser;
use super::launch::{self, CreateSession, Stopped};
use super::leases::Lease;
use super::quota;
use super::state::State;
use super::{events, metrics, openapi, secrets, sessions, workdir};
use crate::audit::{self, Actor, AuditRecord, Outcome, Via};
use crate::commands::doctor::{self, Diagnosis};
use crate::control::{self, ControlClientError, ControlRequest};
use crate::tenants::settings::{self, Settings};
use crate::tenants::{Caller, Identity, Quotas, QuotasJson, TenantName, TenantOpError, TenantRoot};
use crate::usage::report::{self as usage_report, GroupKey, Sums, UsageReport};

/// Largest request body taken (a session's capability token and command
/// are a few KiB at most).
const MAX_BODY: usize = 64 * 1024;
/// Largest `POST /v1/sessions` body: room for a workdir archive at its
/// bound, in base64, besides the rest.
const MAX_SESSION_BODY: usize = workdir::MAX_ARCHIVE_BYTES / 3 * 4 + 4 + MAX_BODY;
/// How long a tenant's deletion waits for its sessions to end after
/// SIGTERM before it kills them (a stop closes the chain in well under it).
pub(super) const TENANT_STOP_LIMIT: Duration = Duration::from_secs(10);
/// How long `/readyz` reuses `openclaw doctor`'s checks (they unshare
/// namespaces and boot a tiny KVM guest: too much for every probe).
const DOCTOR_TTL: Duration = Duration::from_secs(10);

/// A request once read: what the handlers need, owned.
struct Parsed {
    method: Method,
    path: String,
    query: Option<String>,
    bearer: Option<String>,
    json_body: bool,
    body: Bytes,
    /// The user a trusted proxy named (`identity`), put there by the listener.
    proxy_user: ProxyUser,
}

pub async fn handle(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Response<ApiBody> {
    let request_id = audit::new_request_id();
    let limit = body_limit(&state, &req).await;
    let mut response = match read(req, limit).await {
        Ok(parsed) => {
            let id = request_id.clone();
            let handled = tokio::task::spawn_blocking(move || dispatch(&state, &parsed, &id)).await;
            match handled {
                Ok(Ok(response)) => response,
                Ok(Err(err)) => err.into_response(),
                Err(join) => ApiError::internal(&request_id, &anyhow!("handler died: {join}"))
                    .into_response(),
            }
        }
        Err(err) => err.into_response(),
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The most body bytes taken: [`MAX_BODY`], or for a session create by a
/// tenant's valid token, room for a workdir archive. Only an authenticated
/// tenant can make the daemon hold that much; anyone else sending more than
/// `MAX_BODY` gets 413.
async fn body_limit(state: &Arc<State>, req: &Request<hyper::body::Incoming>) -> usize {
    if req.method() != Method::POST || req.uri().path() != "/v1/sessions" {
        return MAX_BODY;
    }
    let Some(token) = bearer(req.headers()) else {
        return MAX_BODY;
    };
    let state = state.clone();
    let tenant = tokio::task::spawn_blocking(move || {
        matches!(
            state.registry.authenticate(&token),
            Ok(Some(Identity::Tenant(_)))
        )
    })
    .await;
    if matches!(tenant, Ok(true)) {
        MAX_SESSION_BODY
    } else {
        MAX_BODY
    }
}

async fn read(req: Request<hyper::body::Incoming>, limit: usize) -> Result<Parsed, ApiError> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(ApiError::too_large())
        }
        Err(_) => {
            return Err(ApiError::invalid(
                "body",
                "the request body could not be read",
            ))
        }
    };
    Ok(Parsed {
        json_body: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json")),
        bearer: bearer(&parts.headers),
        proxy_user: parts
            .extensions
            .get::<ProxyUser>()
            .cloned()
            .unwrap_or(ProxyUser::None),
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        body,
    })
}

/// The token of a single `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// The path takes one method, named as `Allow` spells it (`"GET"`).
fn only(req: &Parsed, method: &'static str) -> Result<(), ApiError> {
    if req.method.as_str() == method {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(method))
    }
}

fn dispatch(state: &State, req: &Parsed, request_id: &str) -> Result<Response<ApiBody>, ApiError> {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["healthz"] => {
            only(req, "GET")?;
            Ok(json(StatusCode::OK, &json!({"status": "ok"})))
        }
        ["readyz"] => {
            only(req, "GET")?;
            Ok(readiness(state))
        }
        ["metrics"] => {
            // The admin token, as for admin routes (401 without, 404 to tenants).
            admin_only(&authenticate(state, req, request_id)?)?;
            only(req, "GET")?;
            let text = metrics::render(state).map_err(|e| ApiError::internal(request_id, &e))?;
            Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .body(http_body_util::Full::new(Bytes::from(text)).boxed())
                .map_err(|e| ApiError::internal(request_id, &e.into()))
        }
        ["openapi.json"] => {
            only(req, "GET")?;
            Ok(json(StatusCode::OK, &openapi::document()))
        }
        ["v1", rest @ ..] => {
            let who = authenticate(state, req, request_id)?;
            // Input, so after the token: 400 naming the header.
            if let ProxyUser::Invalid { header, why } = &req.proxy_user {
                return Err(ApiError::invalid(header, why.clone()));
            }
            if let Identity::Tenant(tenant) = &who {
                admit_request(state, tenant, request_id)?;
            }
            v1(state, req, &who, rest, request_id)
        }
        _ => Err(ApiError::not_found()),
    }
}

fn authenticate(state: &State, req: &Parsed, request_id: &str) -> Result<Identity, ApiError> {
    let token = req.bearer.as_deref().ok_or_else(ApiError::unauthorized)?;
    match state.registry.authenticate(token) {
        Ok(Some(who)) => Ok(who),
        Ok(None) => Err(ApiError::unauthorized()),
        Err(e) => Err(ApiError::internal(request_id, &e.into())),
    }
}

/// The tenant's requests-per-minute quota: 429 with `Retry-After` when
/// its window is full. Read from the store on every request (no cache: a
/// change applies at once).
fn admit_request(state: &State, tenant: &TenantName, request_id: &str) -> Result<(), ApiError> {
    let quotas = state
        .registry
        .quotas(tenant)
        .map_err(|e| op_error(e, request_id))?;
    state
        .limits
        .admit(tenant, quotas.requests_per_minute)
        .map_err(|seconds| {
            state.limits.refused(tenant, "requests_per_minute");
            ApiError::quota_exceeded(
                "requests_per_minute",
                "the tenant's requests-per-minute quota is reached",
                seconds,
            )
        })
}

fn v1(
    state: &State,
    req: &Parsed,
    who: &Identity,
    rest: &[&str],
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    match rest {
        ["sessions"] => {
            let tenant = tenant_only(who)?;
            let root = state.registry.root(tenant);
            match req.method {
                Method::GET => {
                    no_query(req)?;
                    // Through the tenant's cached reports: a list costs
                    // the bundles' stamps, not a rebuild of every report.
                    let rows = state.sessions.of(tenant, &root).list();
                    Ok(json(StatusCode::OK, &json!({"sessions": rows})))
                }
                Method::POST => create_session(state, req, tenant, request_id),
                _ => Err(ApiError::method_not_allowed("GET, POST")),
            }
        }
        ["sessions", id, "stop"] => {
            let tenant = tenant_only(who)?;
            let root = state.registry.root(tenant);
            only(req, "POST")?;
            no_query(req)?;
            let report = sessions::get(&root, id).ok_or_else(ApiError::not_found)?;
            stop_session(
                state,
                req,
                tenant,
                id,
                report.session.status == "running",
                request_id,
            )
        }
        ["sessions", id] => {
            let root = state.registry.root(tenant_only(who)?);
            only(req, "GET")?;
            no_query(req)?;
            let report = sessions::get(&root, id).ok_or_else(ApiError::not_found)?;
            Ok(json(StatusCode::OK, &report))
        }
        ["sessions", id, "bundle"] => {
            let root = state.registry.root(tenant_only(who)?);
            only(req, "GET")?;
            no_query(req)?;
            let (dir, running) = sessions::dir_of(&root, id).ok_or_else(ApiError::not_found)?;
            if running {
                return Err(ApiError::conflict("the session is still running"));
            }
            // The archive streams from a blocking thread as it is written.
            let rx = crate::ui::archive::stream_tar_gz(dir, (*id).to_owned());
            Response::builder()
                .header(header::CONTENT_TYPE, "application/gzip")
                .header(
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"openclaw-session-{id}.tar.gz\""),
                )
                .body(crate::ui::ChannelBody::new(rx).boxed())
                .map_err(|e| ApiError::internal(request_id, &e.into()))
        }
        ["sessions", id, "events"] => {
            let root = state.registry.root(tenant_only(who)?);
            only(req, "GET")?;
            no_query(req)?;
            let dir = running_dir(&root, id)?;
            let presented = req.bearer.clone().ok_or_else(ApiError::unauthorized)?;
            Ok(events::stream(
                dir,
                state.registry.still_holds(presented, who.clone()),
            ))
        }
        ["sessions", id, "approvals"] => {
            let root = state.registry.root(tenant_only(who)?);
            only(req, "GET")?;
            no_query(req)?;
            let dir = running_dir(&root, id)?;
            match control::call_blocking(&dir, &ControlRequest::Pending) {
                Ok(reply) => Ok(json(
                    StatusCode::OK,
                    &json!({"pending": reply["pending"].clone()}),
                )),
                Err(ControlClientError::NotRunning(_)) => {
                    Err(ApiError::conflict("the session is not running"))
                }
                Err(e) => Err(ApiError::internal(request_id, &e.into())),
            }
        }
        ["sessions", id, "approvals", approval] => {
            let tenant = tenant_only(who)?;
            let root = state.registry.root(tenant);
            only(req, "POST")?;
            no_query(req)?;
            let (dir, running) = sessions::dir_of(&root, id).ok_or_else(ApiError::not_found)?;
            answer_approval(state, req, tenant, id, approval, &dir, running, request_id)
        }
        ["sessions", id, "receipts", "verify"] => {
            let root = state.registry.root(tenant_only(who)?);
            only(req, "GET")?;
            no_query(req)?;
            let report = sessions::verify(&root, id).ok_or_else(ApiError::not_found)?;
            Ok(json(StatusCode::OK, &report))
        }
        ["secrets"] => {
            let tenant = tenant_only(who)?;
            only(req, "GET")?;
            no_query(req)?;
            secrets::list(state.registry.home(), tenant, request_id)
        }
        ["secrets", name] => {
            let tenant = tenant_only(who)?;
            let home = state.registry.home();
            match req.method {
                Method::PUT => {
                    no_query(req)?;
                    let body = json_request(req, secrets::PUT_SHAPE)?;
                    secrets::put(home, tenant, name, body, &req.proxy_user, request_id)
                }
                Method::DELETE => {
                    no_query(req)?;
                    secrets::remove(home, tenant, name, &req.proxy_user, request_id)
                }
                _ => Err(ApiError::method_not_allowed("PUT, DELETE")),
            }
        }
        ["usage"] => {
            only(req, "GET")?;
            usage_of(state, req, who, request_id)
        }
        ["settings"] => {
            let tenant = tenant_only(who)?;
            let root = state.registry.root(tenant);
            match req.method {
                Method::GET => {
                    no_query(req)?;
                    let now =
                        Settings::read(&root).map_err(|e| ApiError::internal(request_id, &e))?;
                    Ok(json(StatusCode::OK, &now.to_json()))
                }
                Method::PUT => {
                    no_query(req)?;
                    put_tenant_settings(state, req, tenant, &root, request_id)
                }
                _ => Err(ApiError::method_not_allowed("GET, PUT")),
            }
        }
        ["ratecard"] => {
            admin_only(who)?;
            match req.method {
                Method::GET => {
                    no_query(req)?;
                    ratecard(state, request_id)
                }
                Method::PUT => {
                    no_query(req)?;
                    put_ratecard(state, req, request_id)
                }
                _ => Err(ApiError::method_not_allowed("GET, PUT")),
            }
        }
        ["tenants"] => {
            admin_only(who)?;
            match req.method {
                Method::GET => {
                    no_query(req)?;
                    let tenants = state
                        .registry
                        .list()
                        .map_err(|e| ApiError::internal(request_id, &e.into()))?;
                    Ok(json(StatusCode::OK, &json!({"tenants": tenants})))
                }
                Method::POST => create_tenant(state, req, request_id),
                _ => Err(ApiError::method_not_allowed("GET, POST")),
            }
        }
        ["tenants", name] => {
            admin_only(who)?;
            only(req, "DELETE")?;
            no_query(req)?;
            let name = name_param(name)?;
            // Its sessions are stopped before its directory moves: a deleted
            // tenant's sandbox keeps no egress and no decrypted secret.
            state
                .registry
                .delete_ending(&api_admin(request_id), &name, || {
                    let n = state.launcher.stop_tenant(&name, TENANT_STOP_LIMIT).len();
                    tracing::info!(tenant = %name, "deleted: stopped {n} session(s)");
                    Ok(())
                })
                .map_err(|e| op_error(e, request_id))?;
            Ok(json(
                StatusCode::OK,
                &json!({"name": name, "deleted": true}),
            ))
        }
        ["tenants", name, "quotas"] => {
            admin_only(who)?;
            if !matches!(req.method, Method::GET | Method::PUT) {
                return Err(ApiError::method_not_allowed("GET, PUT"));
            }
            no_query(req)?;
            let name = name_param(name)?;
            let quotas = if req.method == Method::PUT {
                let body: QuotasJson = json_request(
                    req,
                    "{\"sessions\"?, \"requests_per_minute\"?, \"llm_tokens_per_day\"?, \"usd_per_day\"?} (numbers or null)",
                )?;
                let quotas = body
                    .checked()
                    .map_err(|(field, why)| ApiError::invalid(field, why))?;
                state
                    .registry
                    .set_quotas(&api_admin(request_id), &name, &quotas)
                    .map_err(|e| op_error(e, request_id))?;
                quotas
            } else {
                state
                    .registry
                    .quotas(&name)
                    .map_err(|e| op_error(e, request_id))?
            };
            let mut body = json!(quotas.to_json());
            body["name"] = json!(name);
            Ok(json(StatusCode::OK, &body))
        }
        ["tenants", name, "settings"] => {
            admin_only(who)?;
            if !matches!(req.method, Method::GET | Method::PUT) {
                return Err(ApiError::method_not_allowed("GET, PUT"));
            }
            no_query(req)?;
            let name = name_param(name)?;
            // 404 for a tenant that does not exist (its directory may linger).
            state
                .registry
                .quotas(&name)
                .map_err(|e| op_error(e, request_id))?;
            let root = state.registry.root(&name);
            if req.method == Method::PUT {
                put_admin_settings(state, req, &name, &root, request_id)
            } else {
                let now = Settings::read(&root).map_err(|e| ApiError::internal(request_id, &e))?;
                let mut body = now.to_json();
                body["name"] = json!(name);
                Ok(json(StatusCode::OK, &body))
            }
        }
        ["tenants", name, "token"] => {
            admin_only(who)?;
            only(req, "POST")?;
            no_query(req)?;
            let name = name_param(name)?;
            let token = state
                .registry
                .rotate(&api_admin(request_id), &name)
                .map_err(|e| op_error(e, request_id))?;
            Ok(json(StatusCode::OK, &json!({"name": name, "token": token})))
        }
        _ => Err(ApiError::not_found()),
    }
}

/// The directory of the tenant's session `id` while it runs: 404 when the
/// tenant has no such session, 409 when it has ended.
fn running_dir(root: &TenantRoot, id: &str) -> Result<std::path::PathBuf, ApiError> {
    let (dir, running) = sessions::dir_of(root, id).ok_or_else(ApiError::not_found)?;
    if !running {
        return Err(ApiError::conflict("the session is not running"));
    }
    Ok(dir)
}

/// Tenant routes: the admin token has no sessions of its own (404).
fn tenant_only(who: &Identity) -> Result<&TenantName, ApiError> {
    match who {
        Identity::Tenant(name) => Ok(name),
        Identity::Admin => Err(ApiError::not_found()),
    }
}

/// Admin routes: a tenant token is told they do not exist (404).
fn admin_only(who: &Identity) -> Result<(), ApiError> {
    match who {
        Identity::Admin => Ok(()),
        Identity::Tenant(_) => Err(ApiError::not_found()),
    }
}

fn api_admin(request_id: &str) -> Caller {
    Caller {
        actor: Actor::Admin,
        via: Via::Api,
        request_id: request_id.to_owned(),
        user: None,
    }
}

fn name_param(text: &str) -> Result<TenantName, ApiError> {
    TenantName::parse(text).map_err(|e| ApiError::invalid("name", e.to_string()))
}

fn no_query(req: &Parsed) -> Result<(), ApiError> {
    match req.query.as_deref() {
        None | Some("") => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "query",
            "this route takes no query parameters",
        )),
    }
}

fn op_error(err: TenantOpError, request_id: &str) -> ApiError {
    match err {
        TenantOpError::Exists(_) => ApiError::conflict("the tenant already exists"),
        TenantOpError::NotFound(_) => ApiError::not_found(),
        TenantOpError::Failed(e) => ApiError::internal(request_id, &e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
}

fn create_tenant(
    state: &State,
    req: &Parsed,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    no_query(req)?;
    let body: CreateTenant = json_request(req, "{\"name\": \"tenant-name\"}")?;
    let name =
        TenantName::parse(&body.name).map_err(|e| ApiError::invalid("name", e.to_string()))?;
    let token = state
        .registry
        .create(&api_admin(request_id), &name)
        .map_err(|e| op_error(e, request_id))?;
    Ok(json(
        StatusCode::CREATED,
        &json!({"name": name, "token": token}),
    ))
}

/// A request's JSON body as `T`: 415 unless it is declared JSON, 400 on
/// field `body` naming the `shape` expected when it does not parse.
fn json_request<T: serde::de::DeserializeOwned>(req: &Parsed, shape: &str) -> Result<T, ApiError> {
    if !req.json_body {
        return Err(ApiError::unsupported_media_type());
    }
    let invalid = || ApiError::invalid("body", format!("expected {shape}"));
    // Every body is an object: serde would also fill a struct from an array
    // (`[null, null]`), which the document does not allow.
    let value: serde_json::Value = serde_json::from_slice(&req.body).map_err(|_| invalid())?;
    if !value.is_object() {
        return Err(invalid());
    }
    serde_json::from_value(value).map_err(|_| invalid())
}

/// One audit line for a session change by a tenant; the change is not
/// answered as done when the line cannot be written.
#[allow(clippy::too_many_arguments)]
fn audit_session(
    state: &State,
    req: &Parsed,
    tenant: &TenantName,
    action: &str,
    target: &str,
    request_id: &str,
    outcome: Outcome,
    detail: Option<&str>,
) -> Result<(), ApiError> {
    // A user named by a trusted proxy acts inside the tenant.
    let actor = match &req.proxy_user {
        ProxyUser::User(_) => Actor::User,
        _ => Actor::Tenant,
    };
    let mut record = AuditRecord::now(actor, Via::Api, action, target, request_id);
    record.tenant = Some(tenant.to_string());
    if let ProxyUser::User(name) = &req.proxy_user {
        record.user = Some(name.clone());
    }
    record.outcome = outcome;
    record.detail = detail.map(str::to_owned);
    state
        .registry
        .audit()
        .append(&record)
        .map_err(|e| ApiError::internal(request_id, &e))
}

/// `POST /v1/sessions`: checks the body (400 naming the field), starts
/// `openclaw run` in the tenant's layout, answers 201 once session.json
/// exists.
fn create_session(
    state: &State,
    req: &Parsed,
    tenant: &TenantName,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    no_query(req)?;
    let body: CreateSession = json_request(
        req,
        "{\"capabilities\": \"<.cap text>\" | \"policy\": \"<policy TOML>\", \"command\": [\"argv\", ...], \
         \"backend\"?, \"image\"?, \"approve\"?, \"approval_timeout\"?, \"task\"?, \"secrets\"?, \"workdir\"?}",
    )?;
    let root = state.registry.root(tenant);
    let settings = Settings::read(&root).map_err(|e| ApiError::internal(request_id, &e))?;
    let mut checked = launch::check(&root, state.registry.home(), &settings, body)
        .map_err(|(field, why)| ApiError::invalid(field, why))?;
    let quotas = state
        .registry
        .quotas(tenant)
        .map_err(|e| op_error(e, request_id))?;
    // Fail closed: a day quota the session's proxy could not hold calls to
    // refuses the session rather than leave its LLM calls unbounded.
    if !state.launcher.holds_day_quotas()
        && (quotas.llm_tokens_per_day.is_some() || quotas.micro_usd_per_day.is_some())
    {
        return Err(ApiError::conflict(
            "the tenant has LLM day quotas, and this daemon's sessions hold none",
        ));
    }
    // With a sessions quota, counting and starting are one step per tenant
    // (held until the new session is ready and counts as running).
    let lock = state.limits.create_lock(tenant);
    let _held = quotas
        .sessions
        .is_some()
        .then(|| lock.lock().unwrap_or_else(|e| e.into_inner()));
    let lease = create_quota(state, tenant, &root, &quotas, request_id);
    if let Err(refusal) = lease {
        if refusal.status == StatusCode::TOO_MANY_REQUESTS {
            state
                .limits
                .refused(tenant, refusal.field.unwrap_or("usd_per_day"));
            audit_session(
                state,
                req,
                tenant,
                "session.create",
                "-",
                request_id,
                Outcome::Refused,
                Some(match refusal.field {
                    Some("sessions") => "quota exceeded: sessions",
                    Some("llm_tokens_per_day") => "quota exceeded: llm_tokens_per_day",
                    _ => "quota exceeded: usd_per_day",
                }),
            )?;
        }
        return Err(refusal);
    }
    checked.lease = lease?;
    if let ProxyUser::User(name) = &req.proxy_user {
        checked.user = Some(name.clone());
    }
    match state.launcher.start(tenant, &root, checked) {
        Ok(id) => {
            audit_session(
                state,
                req,
                tenant,
                "session.create",
                &id,
                request_id,
                Outcome::Ok,
                None,
            )?;
            Ok(json(StatusCode::CREATED, &json!({"id": id})))
        }
        Err(e) if e.is::<launch::Draining>() => {
            audit_session(
                state,
                req,
                tenant,
                "session.create",
                "-",
                request_id,
                Outcome::Refused,
                Some("the daemon is shutting down"),
            )?;
            Err(ApiError::unavailable(e.to_string()))
        }
        Err(e) => {
            audit_session(
                state,
                req,
                tenant,
                "session.create",
                "-",
                request_id,
                Outcome::Failed,
                Some("the session did not start"),
            )?;
            Err(ApiError::internal(request_id, &e))
        }
    }
}

/// The quotas a new session must fit: fewer running sessions than the
/// `sessions` quota, and the day's LLM tokens and USD (the tenant's ledger
/// rows of today, UTC) below theirs. 429 naming the quota otherwise. With
/// `--database`, the session's lease (`leases`): the sessions quota
/// counted over every daemon on the database.
fn create_quota(
    state: &State,
    tenant: &TenantName,
    root: &TenantRoot,
    quotas: &Quotas,
    request_id: &str,
) -> Result<Option<Lease>, ApiError> {
    if let Some(limit) = quotas.sessions {
        let running = sessions::running_count(root) as u64;
        if running >= limit {
            return Err(ApiError::quota_exceeded(
                "sessions",
                format!("{running} sessions are running; the tenant's quota is {limit}"),
                quota::SESSIONS_RETRY_AFTER,
            ));
        }
    }
    if quotas.llm_tokens_per_day.is_some() || quotas.micro_usd_per_day.is_some() {
        day_quotas(state, tenant, quotas, request_id)?;
    }
    let Some(leases) = &state.leases else {
        return Ok(None);
    };
    match leases.acquire(tenant, quotas.sessions) {
        Ok(Ok(lease)) => Ok(Some(lease)),
        Ok(Err(live)) => Err(ApiError::quota_exceeded(
            "sessions",
            format!(
                "{live} sessions are running on the daemons of this database; the tenant's quota is {}",
                quotas.sessions.unwrap_or(0)
            ),
            quota::SESSIONS_RETRY_AFTER,
        )),
        // Fail closed: a quota that cannot be counted starts nothing.
        Err(e) => {
            tracing::error!(request_id, tenant = tenant.as_str(), "taking a session lease: {e}");
            Err(ApiError::unavailable(
                "the sessions quota could not be counted (the database did not answer); try again",
            ))
        }
    }
}

/// The day's LLM tokens and USD of the tenant below its quotas.
fn day_quotas(
    state: &State,
    tenant: &TenantName,
    quotas: &Quotas,
    request_id: &str,
) -> Result<(), ApiError> {
    let used = quota::usage_today(&state.ledger, tenant)
        .map_err(|e| ApiError::internal(request_id, &e))?;
    if quotas.llm_tokens_per_day.is_some_and(|q| used.tokens >= q) {
        return Err(ApiError::quota_exceeded(
            "llm_tokens_per_day",
            "the tenant's LLM tokens for today (UTC) are used up",
            quota::seconds_to_utc_midnight(),
        ));
    }
    if quotas
        .micro_usd_per_day
        .is_some_and(|q| used.micro_usd >= q)
    {
        return Err(ApiError::quota_exceeded(
            "usd_per_day",
            "the tenant's USD for today (UTC) is used up",
            quota::seconds_to_utc_midnight(),
        ));
    }
    Ok(())
}

/// `POST /v1/sessions/{id}/stop`: SIGTERM to the session's `openclaw run`
/// (its chain is closed as it ends); 202, or 409 when it is not running
/// under this daemon (its bundle says it ended, or another process runs it).
fn stop_session(
    state: &State,
    req: &Parsed,
    tenant: &TenantName,
    id: &str,
    running: bool,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let stopped = if running {
        state.launcher.stop(tenant, id)
    } else {
        Ok(Stopped::NotRunning)
    };
    match stopped {
        Ok(Stopped::Signalled) => {
            audit_session(
                state,
                req,
                tenant,
                "session.stop",
                id,
                request_id,
                Outcome::Ok,
                None,
            )?;
            Ok(json(
                StatusCode::ACCEPTED,
                &json!({"id": id, "stopping": true}),
            ))
        }
        Ok(Stopped::NotRunning) => {
            audit_session(
                state,
                req,
                tenant,
                "session.stop",
                id,
                request_id,
                Outcome::Refused,
                Some("the session is not running"),
            )?;
            Err(ApiError::conflict("the session is not running"))
        }
        Err(e) => {
            audit_session(
                state,
                req,
                tenant,
                "session.stop",
                id,
                request_id,
                Outcome::Failed,
                Some("the session could not be signalled"),
            )?;
            Err(ApiError::internal(request_id, &e))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    answer: String,
}

/// `POST /v1/sessions/{id}/approvals/{approval_id}` `{"answer": "approve"|"deny"}`:
/// answered through the session's control socket as `openclaw approve`
/// does, the approver named `api:<tenant>` in the approval receipt.
#[allow(clippy::too_many_arguments)]
fn answer_approval(
    state: &State,
    req: &Parsed,
    tenant: &TenantName,
    id: &str,
    approval: &str,
    dir: &std::path::Path,
    running: bool,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let approval_id: u64 = approval
        .parse()
        .map_err(|_| ApiError::invalid("approval_id", "expected a number"))?;
    let body: AnswerBody = json_request(req, "{\"answer\": \"approve\"|\"deny\"}")?;
    let approve = match body.answer.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(ApiError::invalid("answer", "expected approve or deny")),
    };
    let target = format!("{id}/{approval_id}");
    let audit = |outcome, detail: Option<&str>| {
        audit_session(
            state,
            req,
            tenant,
            "approval.answer",
            &target,
            request_id,
            outcome,
            detail,
        )
    };
    if !running {
        audit(Outcome::Refused, Some("the session is not running"))?;
        return Err(ApiError::conflict("the session is not running"));
    }
    let request = ControlRequest::Answer {
        id: approval_id,
        approve,
        approver: Some(format!("api:{tenant}")),
    };
    match control::call_blocking(dir, &request) {
        Ok(_) => {
            audit(
                Outcome::Ok,
                Some(if approve { "approved" } else { "denied" }),
            )?;
            Ok(json(
                StatusCode::OK,
                &json!({"id": id, "approval_id": approval_id, "answer": body.answer}),
            ))
        }
        Err(ControlClientError::NotRunning(_)) => {
            audit(Outcome::Refused, Some("the session is not running"))?;
            Err(ApiError::conflict("the session is not running"))
        }
        // Already decided (another answer, the timeout, withdrawn): this
        // answer changed nothing, and the audit line says so, never
        // "approved"/"denied".
        Err(ControlClientError::NotTaken(why)) => {
            audit(Outcome::Refused, Some(&format!("not taken: {why}")))?;
            Err(ApiError::conflict(why))
        }
        // No such pending approval (never asked, or long gone).
        Err(ControlClientError::Refused(_)) => {
            audit(Outcome::Refused, Some("no such pending approval"))?;
            Err(ApiError::not_found())
        }
        Err(e) => {
            audit(Outcome::Failed, Some("the session's control socket failed"))?;
            Err(ApiError::internal(request_id, &e.into()))
        }
    }
}

/// `GET /v1/usage?period=&by=&tenant=`: `openclaw usage report --json` over
/// the ledger, scoped to the caller's tenant (the admin: all tenants, or
/// the one named). The query is form-decoded as clients encode it
/// (`by=day%2Cmodel` is `by=day,model`).
fn usage_of(
    state: &State,
    req: &Parsed,
    who: &Identity,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let mut period = "current-month".to_owned();
    let mut by = vec![GroupKey::Day, GroupKey::Tenant, GroupKey::Model];
    let mut tenant = None;
    let query = req.query.as_deref().unwrap_or("");
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "period" => period = value.into_owned(),
            "by" => {
                by = value
                    .split(',')
                    .map(|k| GroupKey::from_str(k, true))
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        ApiError::invalid(
                            "by",
                            "expected a comma list of tenant, user, session, model, day",
                        )
                    })?;
            }
            "tenant" => {
                tenant = Some(
                    TenantName::parse(&value)
                        .map_err(|e| ApiError::invalid("tenant", e.to_string()))?,
                )
            }
            _ => {
                return Err(ApiError::invalid(
                    "query",
                    "known parameters: period, by, tenant",
                ))
            }
        }
    }
    let scope = match who {
        Identity::Admin => tenant,
        Identity::Tenant(own) => {
            if tenant.as_ref().is_some_and(|t| t != own) {
                return Err(ApiError::not_found());
            }
            Some(own.clone())
        }
    };
    let period = usage_report::parse_period(&period, &usage_report::today())
        .map_err(|e| ApiError::invalid("period", format!("{e:#}")))?;
    let opened = state
        .ledger
        .open_for_reading()
        .map_err(|e| ApiError::internal(request_id, &e))?;
    let report = if let Some(ledger) = opened {
        usage_report::query(
            ledger.as_ref(),
            &period,
            scope.as_ref().map(TenantName::as_str),
            &by,
        )
        .map_err(|e| ApiError::internal(request_id, &e))?
    } else {
        // No metered call yet: an empty report, not an error.
        by.sort();
        by.dedup();
        UsageReport {
            period,
            tenant: scope.map(|t| t.to_string()),
            by,
            rows: Vec::new(),
            total: Sums::default(),
        }
    };
    Ok(json(StatusCode::OK, &report))
}

/// `GET /readyz`: 200 when the control-plane store answers a query, every
/// tenant's directory has its sessions directory and public keys, and
/// `openclaw doctor` finds at least one backend that can start a session;
/// 503 naming the failing checks otherwise. Only names and fixed phrases:
/// no tenant names, no paths on the host (the probe needs no token).
fn readiness(state: &State) -> Response<ApiBody> {
    let storage = state.registry.store().ping();
    let tenants = state.registry.list();
    let keys = match &tenants {
        Ok(list) => {
            let missing = list
                .iter()
                .filter(|t| !state.registry.root(&t.name).is_complete())
                .count();
            if missing == 0 {
                Ok(format!(
                    "{} tenants, each with its directory and keys",
                    list.len()
                ))
            } else {
                Err(format!(
                    "{missing} of {} tenants lack their directory or keys",
                    list.len()
                ))
            }
        }
        Err(_) => Err("tenants could not be listed".to_owned()),
    };
    let diagnosis = doctor_cached(state.registry.home());
    let backends = diagnosis
        .backends
        .iter()
        .map(|(name, verdict)| {
            if verdict.usable {
                format!("{name}: usable")
            } else {
                format!("{name}: not usable ({})", verdict.missing.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let checks = json!([
        {"name": "storage", "ok": storage.is_ok(),
         "detail": match &storage { Ok(()) => "the store answers".to_owned(), Err(e) => e.to_string() }},
        {"name": "tenant_keys", "ok": keys.is_ok(),
         "detail": match &keys { Ok(d) | Err(d) => d.clone() }},
        {"name": "backends", "ok": diagnosis.can_run_sessions,
         "detail": format!("{backends} (`openclaw doctor` on the host says what to do)")},
    ]);
    let ready = storage.is_ok() && keys.is_ok() && diagnosis.can_run_sessions;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &json!({"ready": ready, "checks": checks}))
}

/// `openclaw doctor`'s diagnosis of the daemon's home, at most
/// [`DOCTOR_TTL`] old. Probes that arrive while it runs wait for it
/// instead of running their own.
fn doctor_cached(home: &std::path::Path) -> Arc<Diagnosis> {
    static CACHE: Mutex<Option<(Instant, Arc<Diagnosis>)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, diagnosis)) = cache.as_ref() {
        if at.elapsed() < DOCTOR_TTL {
            return diagnosis.clone();
        }
    }
    let diagnosis = Arc::new(doctor::diagnose(home));
    *cache = Some((Instant::now(), diagnosis.clone()));
    diagnosis
}

/// One `settings.set` audit line by the admin for tenant `name`.
fn audit_admin_change(
    state: &State,
    action: &str,
    target: &str,
    tenant: Option<&TenantName>,
    request_id: &str,
    outcome: Outcome,
    detail: String,
) -> Result<(), ApiError> {
    let mut record = AuditRecord::now(Actor::Admin, Via::Api, action, target, request_id);
    record.tenant = tenant.map(|t| t.to_string());
    record.outcome = outcome;
    record.detail = Some(detail);
    state
        .registry
        .audit()
        .append(&record)
        .map_err(|e| ApiError::internal(request_id, &e))
}

/// An audit line's words for one table of settings: keys and checked
/// values only (backends and modes are fixed words, images valid names).
fn settings_detail(table: &str, values: &serde_json::Value) -> String {
    let mut parts = vec![table.to_owned()];
    if let Some(map) = values.as_object() {
        for (key, value) in map {
            let shown = match value {
                serde_json::Value::Null => "-".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            parts.push(format!("{key}={shown}"));
        }
    }
    parts.join(" ")
}

/// `PUT /v1/settings`: replaces the tenant's own table. An admin-only key
/// is refused by name (400, one `refused` audit line); values must keep the
/// admin's bounds; an image must be in the home's store.
fn put_tenant_settings(
    state: &State,
    req: &Parsed,
    tenant: &TenantName,
    root: &TenantRoot,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let body: serde_json::Map<String, serde_json::Value> = json_request(
        req,
        "{\"backend\"?, \"approve\"?, \"approval_timeout\"?, \"image\"?} (null: openclaw's default)",
    )?;
    // Every outcome is one `settings.set` line about the tenant.
    let audit = |outcome, detail: &str| {
        audit_session(
            state,
            req,
            tenant,
            "settings.set",
            tenant.as_str(),
            request_id,
            outcome,
            Some(detail),
        )
    };
    let keys = match settings::tenant_keys_from_json(&body) {
        Ok(keys) => keys,
        Err((field, why)) => {
            if settings::ADMIN_KEYS.contains(&field) {
                audit(Outcome::Refused, &format!("admin-only key: {field}"))?;
            }
            return Err(ApiError::invalid(field, why));
        }
    };
    let mut next = Settings::read(root).map_err(|e| ApiError::internal(request_id, &e))?;
    next.tenant = keys.clone();
    next.tenant_within_bounds()
        .map_err(|(field, why)| ApiError::invalid(field, why))?;
    if let Some(name) = &keys.image {
        launch::stored_image(state.registry.home(), &next.admin, name)
            .map_err(|(field, why)| ApiError::invalid(field, why))?;
    }
    let written = Settings::replace_tenant(root, keys);
    let detail = settings_detail("tenant", &next.to_json()["tenant"]);
    match written {
        Ok(now) => {
            audit(Outcome::Ok, &detail)?;
            Ok(json(StatusCode::OK, &now.to_json()))
        }
        Err(e) => {
            audit(Outcome::Failed, "the settings could not be written")?;
            Err(ApiError::internal(request_id, &e))
        }
    }
}

/// `PUT /v1/tenants/{name}/settings`: replaces the admin's table (the
/// tenant's own is kept; where it now breaks the bounds, the tenant's
/// sessions are refused naming the field until one of them changes).
fn put_admin_settings(
    state: &State,
    req: &Parsed,
    name: &TenantName,
    root: &TenantRoot,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let body: serde_json::Map<String, serde_json::Value> = json_request(
        req,
        "{\"allowed_backends\"?, \"allowed_images\"?, \"max_approval_timeout\"?, \"allow_policy\"?} (null: no bound)",
    )?;
    let keys = settings::admin_keys_from_json(&body)
        .map_err(|(field, why)| ApiError::invalid(field, why))?;
    let shown = Settings {
        admin: keys.clone(),
        ..Settings::default()
    };
    let detail = settings_detail("admin", &shown.to_json()["admin"]);
    let audit = |outcome, detail: String| {
        audit_admin_change(
            state,
            "settings.set",
            name.as_str(),
            Some(name),
            request_id,
            outcome,
            detail,
        )
    };
    match Settings::replace_admin(root, keys) {
        Ok(now) => {
            audit(Outcome::Ok, detail)?;
            let mut body = now.to_json();
            body["name"] = json!(name);
            Ok(json(StatusCode::OK, &body))
        }
        Err(e) => {
            audit(Outcome::Failed, "the settings could not be written".into())?;
            Err(ApiError::internal(request_id, &e))
        }
    }
}

/// `<home>/rates.toml`, the operator's rate card.
fn rates_path(state: &State) -> std::path::PathBuf {
    state.registry.home().join("rates.toml")
}

/// `GET /v1/ratecard`: the card sessions price with: the file's text
/// (`null`: no file, the built-in card) and its hash (`null` when the
/// file does not parse: sessions refuse to start until it is replaced).
fn ratecard(state: &State, request_id: &str) -> Result<Response<ApiBody>, ApiError> {
    let path = rates_path(state);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ApiError::internal(request_id, &e.into())),
    };
    let card = match &text {
        Some(text) => enforce::RateCard::from_toml(text, "rates.toml").ok(),
        None => Some(enforce::RateCard::builtin()),
    };
    Ok(json(
        StatusCode::OK,
        &json!({
            "rates": text,
            "sha256": card.as_ref().map(|c| c.sha256().to_owned()),
            "models": card.as_ref().map(|c| c.entries().count()),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRatecard {
    rates: String,
}

/// `PUT /v1/ratecard` `{"rates": "<TOML>"}`: checked with the parser the
/// sessions use (400 `rates` naming the line; the old card stays), then
/// written atomically. Sessions started from now on price with it; a
/// running session keeps the card it started with, and every ledger row
/// keeps the prices it was charged at.
fn put_ratecard(
    state: &State,
    req: &Parsed,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let body: PutRatecard = json_request(req, "{\"rates\": \"<rates.toml text>\"}")?;
    let card = match enforce::RateCard::from_toml(&body.rates, "rates.toml") {
        Ok(card) => card,
        Err(e) => {
            let (line, why) = ratecard_problem(&body.rates, &e);
            audit_admin_change(
                state,
                "ratecard.set",
                "rates.toml",
                None,
                request_id,
                Outcome::Refused,
                match line {
                    Some(n) => format!("invalid at line {n}"),
                    None => "invalid".to_owned(),
                },
            )?;
            return Err(ApiError::invalid("rates", why));
        }
    };
    let written = settings::write_atomically(&rates_path(state), body.rates.as_bytes());
    let detail = format!("sha256 {}", card.sha256());
    match written {
        Ok(()) => {
            audit_admin_change(
                state,
                "ratecard.set",
                "rates.toml",
                None,
                request_id,
                Outcome::Ok,
                detail,
            )?;
            Ok(json(
                StatusCode::OK,
                &json!({"sha256": card.sha256(), "models": card.entries().count()}),
            ))
        }
        Err(e) => {
            audit_admin_change(
                state,
                "ratecard.set",
                "rates.toml",
                None,
                request_id,
                Outcome::Failed,
                "the card could not be written".into(),
            )?;
            Err(ApiError::internal(request_id, &e))
        }
    }
}

/// The line a rate card's error is on (1-based) and the message for the
/// client: `line N: ...`. A syntax error carries its line; an entry's error
/// names its model, found by its `name = "..."` line.
fn ratecard_problem(text: &str, err: &enforce::RateCardError) -> (Option<usize>, String) {
    match err {
        enforce::RateCardError::Syntax { message, .. } => {
            let line = message
                .split_once("at line ")
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<usize>().ok());
            // toml's message: a location line, the source excerpt, then the
            // problem on its last line.
            let problem = message
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("not valid TOML");
            let shown = match line {
                Some(n) => format!("line {n}: {problem}"),
                None => problem.to_owned(),
            };
            (line, shown)
        }
        enforce::RateCardError::Entry { model, problem, .. } => {
            let quoted = format!("{model:?}");
            let line = text
                .lines()
                .position(|l| {
                    let l = l.trim_start();
                    l.starts_with("name") && l.contains(&quoted)
                })
                .map(|i| i + 1);
            let shown = match line {
                Some(n) => format!("line {n}: model {quoted}: {problem}"),
                None => format!("model {quoted}: {problem}"),
            };
            (line, shown)
        }
        enforce::RateCardError::Read { .. } => (None, "the card could not be read".into()),
    }
}
