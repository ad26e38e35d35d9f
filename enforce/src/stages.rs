//! The stages a request passes before the token decides it: its body read
//! (up to the catalog's cap), classification by the service catalog (a
//! WebSocket is its own kind of action), the placeholder checks (where the
//! token grants the credential, and where in the request it may go), and
//! the substitution prepared; an LLM call is priced and its body rewritten
//! by metering between classification and the credential checks. Each lets
//! the request on or refuses it with a typed [`Block`]; the gate records
//! every block in one place and asks the token about the rest.

use std::time::{Duration, SystemTime};

use capabilities::{Action, ActionType, Capability, Host};
use proxy::{GateRequest, RequestBody};
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;

use crate::catalog::{Catalog, RequestView, Rule};
use crate::credentials::{Findings, Placement, SessionCredentials, Substituted};
use crate::metering::{Metering, Plan, LARGE_BODY_READS_PER_SESSION};

/// How long the gate waits for the body bytes it needs before deciding; a
/// sandbox that sends headers and then stalls gets a refusal, not a held task.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Which stage made a decision, recorded in the receipt's decision as
/// `stage` so an auditor re-deriving decisions from the token knows which
/// ones the token alone made. Every stage other than `token` can only
/// refuse (it never turns a token's block into an allow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The capability token's `authorize`.
    Token,
    /// The service catalog could not classify the request (body over the
    /// cap, amount unreadable, a WebSocket to an endpoint it reads, ...).
    Catalog,
    /// A credential placeholder went where the token does not grant it, or
    /// to a place in the request where it does not belong.
    Credential,
    /// `authorize_dns` refused a name.
    Dns,
    /// The proxy's own fail-closed checks (no SNI, fronting, smuggling...).
    Proxy,
    /// The tenant's day quota (LLM USD or tokens per UTC day) refused an
    /// LLM call, or could not be consulted.
    Quota,
}

/// What forwarding changes in a request: the URI and headers with
/// credentials substituted or injected, and the body if it changed. `None`
/// when the request carries no placeholder and nothing is injected for its
/// host, so the request goes as it is (no copy made).
pub(crate) type Prepared = Option<(http::Uri, http::HeaderMap, Substituted)>;

/// A request a stage before the token refused, with what its receipt
/// records. The gate's `record_block` is the one place a block becomes a
/// receipt, an event and the sandbox's answer.
pub(crate) struct Block {
    pub stage: Stage,
    pub reason: String,
    /// The action as far as the stages read it (a plain web action when
    /// the request could not be classified).
    pub action: Action,
    /// SHA-256 of the body, when all of it was read.
    pub body_sha256: Option<String>,
}

/// What the stages made of a request they let through.
pub(crate) struct Screened {
    pub action: Action,
    pub body_sha256: Option<String>,
    pub prepared: Prepared,
    /// An LLM call the proxy meters.
    pub metered: Option<Plan>,
    /// The read permit of a body read whole (past `max_body_bytes`): held
    /// as long as the body is, so the permits bound the memory such
    /// bodies take while they wait for a human and go upstream too.
    pub large_body: Option<OwnedSemaphorePermit>,
}

/// The stages, over one session's catalog, credentials and token.
pub(crate) struct Stages<'a> {
    pub catalog: &'a Catalog,
    pub creds: &'a SessionCredentials,
    pub cap: &'a Capability,
    pub metering: &'a Metering,
}

impl Stages<'_> {
    /// The stages before the token, in order: read the body (up to the
    /// catalog's cap), classify the request, refuse placeholders the token
    /// does not grant here, prepare the substitution. The first that
    /// refuses says why in a [`Block`].
    ///
    /// Either way the action comes out with its facts masked
    /// ([`SessionCredentials::mask_facts`]): the one place every request's
    /// action passes before the token decides it, so the decision, its
    /// receipt, the events, an approval question and an auditor's
    /// re-derivation all read the same facts, with a secret the sandbox
    /// wrote into them (a path, a host, a subject) as its placeholder. The
    /// request itself goes upstream as the sandbox sent it.
    pub(crate) async fn run(
        &self,
        req: &mut GateRequest,
        now: SystemTime,
    ) -> Result<Screened, Block> {
        let mut screened = self.screen(req, now).await;
        let action = match &mut screened {
            Ok(s) => &mut s.action,
            Err(b) => &mut b.action,
        };
        self.creds.mask_facts(action);
        screened
    }

    /// The stages of [`Self::run`], the action's facts as read.
    async fn screen(&self, req: &mut GateRequest, now: SystemTime) -> Result<Screened, Block> {
        let host = req.host.clone();
        let method = req.head.method.as_str().to_owned();
        let pq = req
            .head
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let unclassified = |reason: String, body_sha256: Option<String>| Block {
            stage: Stage::Catalog,
            reason,
            action: fallback_action(&method, host.as_str(), &path_only(&pq)),
            body_sha256,
        };

        // Read the body up to the cap: classification and the credential
        // scan need it. The rest (if any) streams unread behind it, unless
        // the body must be read whole (an LLM call, a `POST` whose rest
        // could name `_method`): that one holds a read permit as long as
        // the gate holds it.
        let head = RequestView {
            method: &method,
            host: &host,
            path_and_query: &pq,
            headers: &req.head.headers,
        };
        let large_body = match self.read_body(&head, &mut req.body).await {
            Ok(permit) => permit,
            Err(why) => return Err(unclassified(why, None)),
        };
        let complete = req.body.is_complete();
        let mut body_sha256 = complete
            .then(|| {
                (!req.body.buffered().is_empty()).then(|| receipts::sha256_hex(req.body.buffered()))
            })
            .flatten();

        // Classify.
        let view = head;
        let mut matched = self.catalog.match_request(&view);
        if large_body.is_some() {
            matched = matched.read_whole();
        }
        let mut action = match matched.classify(&view, Some(req.body.buffered()), complete) {
            Ok(a) => a,
            Err(e) => {
                let rule = matched.rule().map_or("", |r| r.name());
                return Err(unclassified(
                    format!("cannot classify ({rule}): {e}"),
                    body_sha256,
                ));
            }
        };
        if req.websocket {
            if let Err(reason) = self.websocket(&view, &mut action) {
                return Err(Block {
                    stage: Stage::Catalog,
                    reason,
                    action,
                    body_sha256,
                });
            }
        }

        // An LLM call is priced at its worst case (what the budget sees),
        // and its body may be rewritten (an output limit, a request for
        // usage) before the credential scan and the receipt's digest, so
        // both describe what the provider receives.
        let mut metered = None;
        if action.kind == ActionType::Llm && !req.websocket && complete {
            let planned = self
                .metering
                .plan(host.as_str(), &path_only(&pq), req.body.buffered());
            if let Some(plan) = planned {
                // Refused here with what makes it unbounded; the token's
                // check would only say "unknown cost".
                if let Some(reason) = self.metering.refusal(&plan) {
                    return Err(Block {
                        stage: Stage::Catalog,
                        reason,
                        action,
                        body_sha256,
                    });
                }
                if let Some(body) = &plan.body {
                    if req.body.replace(body.clone()).is_err() {
                        return Err(unclassified(
                            "the llm request body could not be rewritten".into(),
                            body_sha256,
                        ));
                    }
                    body_sha256 = Some(receipts::sha256_hex(body));
                }
                action.cost_micro_usd = plan.reserved;
                metered = Some(plan);
            }
        }

        // A placeholder of another session (one that ended: its secret is
        // revoked with it); placeholders where the token does not grant
        // them, or in a place of the request they do not belong: exfiltration.
        let findings = self.creds.scan(&pq, &req.head.headers, req.body.buffered());
        let foreign = || {
            let (name, place) = self
                .creds
                .foreign(&pq, &req.head.headers, req.body.buffered())?;
            Some(format!(
                "credential revoked: a placeholder of {name} in {place} to {host} is not \
                 one of this session's (its session ended, or it was never issued here)"
            ))
        };
        let prepared = match self
            .exfiltration(&findings, &host, req.scheme, now)
            .or_else(|| self.misplaced(&findings, matched.rule(), &host, &pq, req, complete))
            .or_else(foreign)
        {
            Some(reason) => Err(reason),
            None => self.prepare(req, &host, &findings, complete, now),
        };
        match prepared {
            Ok(prepared) => Ok(Screened {
                action,
                body_sha256,
                prepared,
                metered,
                large_body,
            }),
            Err(reason) => Err(Block {
                stage: Stage::Credential,
                reason,
                action,
                body_sha256,
            }),
        }
    }

    /// Buffers the request body up to the catalog's cap, within
    /// [`BODY_READ_TIMEOUT`]. A body the catalog must read whole to check
    /// it ([`Catalog::reads_whole`]: an LLM call to meter, a rule's body
    /// fields, a `POST` whose rest could name `_method`, an encoded one
    /// decoded to check it) is read on, up to [`Catalog::max_whole_body`],
    /// under a read permit of the session's
    /// ([`LARGE_BODY_READS_PER_SESSION`] of them, which bound the memory
    /// such bodies hold), waited for within the same timeout (or the
    /// shorter `MeterSettings::large_body_permit_wait`); the permit is
    /// returned to be held while the body is (through an approval wait and
    /// then inside the buffered bytes the proxy sends until the last of them
    /// is written or dropped, `gate.rs` `forward`). A body past that cap is
    /// refused: it cannot be checked whole.
    async fn read_body(
        &self,
        head: &RequestView<'_>,
        body: &mut RequestBody,
    ) -> Result<Option<OwnedSemaphorePermit>, String> {
        if body.is_complete() {
            // Nothing left to read (a GET): no deadline to arm.
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
        let late = || {
            format!(
                "request body not received within {} s",
                BODY_READ_TIMEOUT.as_secs()
            )
        };
        let unreadable = |e: proxy::ProxyError| format!("request body unreadable: {e}");
        let cap = self.catalog.max_body_bytes();
        tokio::time::timeout_at(deadline, body.buffer_up_to(cap))
            .await
            .map_err(|_| late())?
            .map_err(unreadable)?;
        let complete = body.is_complete();
        if !self.catalog.reads_whole(head, body.buffered(), complete) {
            return Ok(None);
        }
        let whole = self.catalog.max_whole_body();
        let what = if complete {
            "a content-encoded request body (decoded to be checked)".to_owned()
        } else {
            format!("a request body over max_body_bytes ({cap} bytes)")
        };
        let permit_wait = tokio::time::Instant::now()
            .checked_add(self.metering.settings.large_body_permit_wait)
            .map_or(deadline, |t| t.min(deadline));
        let permit = match tokio::time::timeout_at(
            permit_wait,
            self.metering.large_body_reads.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            // Never closed; were it, nothing could be read: refuse.
            Ok(Err(_)) => return Err("large request body read permits are closed".into()),
            Err(_) => {
                return Err(format!(
                    "{what} not read: it must be read whole to be checked, and this session \
                     already reads {LARGE_BODY_READS_PER_SESSION} such bodies at once (none \
                     ended within {} s); send fewer large requests at once (or retry when one \
                     is done)",
                    self.metering
                        .settings
                        .large_body_permit_wait
                        .min(BODY_READ_TIMEOUT)
                        .as_secs_f64()
                ))
            }
        };
        if complete {
            return Ok(Some(permit));
        }
        // One byte more than the cap: a body of exactly the cap then ends.
        tokio::time::timeout_at(deadline, body.buffer_up_to(whole.bytes.saturating_add(1)))
            .await
            .map_err(|_| {
                format!(
                    "{what} not received within {} s (the wait for one of the session's \
                     {LARGE_BODY_READS_PER_SESSION} large-body read permits included); send the \
                     body faster, or fewer large requests at once",
                    BODY_READ_TIMEOUT.as_secs()
                )
            })?
            .map_err(unreadable)?;
        if !body.is_complete() || body.buffered().len() > whole.bytes {
            return Err(format!(
                "request body over the {whole}: it cannot be checked whole (an LLM call's \
                 cost, a method override, the catalog rule's fields), so it is refused; send a \
                 smaller request, or raise {} in the service catalog",
                whole.setting
            ));
        }
        Ok(Some(permit))
    }

    /// Why the request must not go, when it carries a placeholder of a
    /// credential the token does not grant at `host` (over `scheme`).
    fn exfiltration(
        &self,
        findings: &Findings,
        host: &Host,
        scheme: &str,
        now: SystemTime,
    ) -> Option<String> {
        findings
            .by_credential
            .iter()
            .find(|(name, _)| !self.credential_granted(name, host, scheme, now))
            .map(|(name, (sighting, place))| {
                let why = if scheme != "https" && self.creds.file_allows(name, host) {
                    " (credentials are only sent over https)"
                } else {
                    ""
                };
                format!(
                    "credential exfiltration: placeholder of {name} ({sighting:?}) in {place} to {host}{why}"
                )
            })
    }

    /// A WebSocket request as an action: its own kind, unless it would open
    /// a socket to an endpoint the catalog reads (a payment, email, login
    /// or LLM API, whatever the rule's method) or to a host the token names
    /// as an LLM provider: what flows after the handshake is not read, so
    /// those are refused (`Err` with why; `action` is set as recorded).
    fn websocket(&self, view: &RequestView<'_>, action: &mut Action) -> Result<(), String> {
        let llm = |what: String| {
            format!(
                "a WebSocket to {what} is an llm call whose cost cannot be bounded: \
                 WebSocket LLM calls are not metered yet, so they are refused \
                 (use the provider's HTTP API)"
            )
        };
        match self.catalog.websocket_endpoint(view) {
            Some((ActionType::Llm, rule)) => {
                action.kind = ActionType::Llm;
                Err(llm(format!("an LLM endpoint ({rule})")))
            }
            Some((kind, rule)) => {
                action.kind = ActionType::Websocket;
                let reason = format!(
                    "a WebSocket to {rule}, an endpoint the catalog reads as {} requests, \
                     cannot be read message by message: refused",
                    serde_json::to_value(kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                );
                Err(reason)
            }
            None if self.cap.names_llm_provider(view.host) => {
                action.kind = ActionType::Llm;
                Err(llm(format!("LLM provider {}", view.host)))
            }
            None => {
                action.kind = ActionType::Websocket;
                Ok(())
            }
        }
    }

    /// Why the request must not go, when a (granted) credential's
    /// placeholder sits somewhere in it other than where that credential
    /// goes: the matched rule's `credential_field` (when the rule names the
    /// credential), the secrets file's `placement` list, its injection header.
    fn misplaced(
        &self,
        findings: &Findings,
        rule: Option<&Rule>,
        host: &Host,
        path_and_query: &str,
        req: &GateRequest,
        complete: bool,
    ) -> Option<String> {
        findings.by_credential.keys().find_map(|name| {
            let rule_places: Vec<Placement> = rule
                .and_then(Rule::credential)
                .filter(|(c, _)| c == name)
                .and_then(|(_, place)| place.cloned())
                .into_iter()
                .collect();
            self.creds
                .misplaced(
                    name,
                    &rule_places,
                    path_and_query,
                    &req.head.headers,
                    req.body.buffered(),
                    complete,
                )
                .map(|why| format!("credential exfiltration: {why} to {host}"))
        })
    }

    /// Prepares the substitution now (pure computation), so a request whose
    /// credentials cannot be placed is refused before any receipt says
    /// "allow"; it is applied only if the decision forwards. The scan sees
    /// every exact placeholder, so with no finding and no header injection
    /// possible for this host there is nothing to prepare.
    fn prepare(
        &self,
        req: &GateRequest,
        host: &Host,
        findings: &Findings,
        complete: bool,
        now: SystemTime,
    ) -> Result<Prepared, String> {
        if findings.is_empty()
            && !self
                .creds
                .injectable()
                .any(|name| self.creds.file_allows(name, host))
        {
            return Ok(None);
        }
        let granted = |name: &str| self.credential_granted(name, host, req.scheme, now);
        let mut new_uri = req.head.uri.clone();
        let mut new_headers = req.head.headers.clone();
        self.creds
            .substitute(
                &granted,
                &mut new_uri,
                &mut new_headers,
                req.body.buffered(),
                complete,
            )
            .map(|s| Some((new_uri, new_headers, s)))
            .map_err(|e| e.to_string())
    }

    /// May the credential `name` go to `host` (over `scheme`) now: the
    /// secrets file and the token both say so, and only over TLS.
    pub(crate) fn credential_granted(
        &self,
        name: &str,
        host: &Host,
        scheme: &str,
        now: SystemTime,
    ) -> bool {
        // Secrets travel only over TLS to the upstream.
        scheme == "https"
            && self.creds.file_allows(name, host)
            && self.cap.credential_allowed(name, host.as_str(), now)
    }
}

/// A request's path without its query or fragment (`/` when empty).
pub(crate) fn path_only(path_and_query: &str) -> String {
    let p = path_and_query.split(['?', '#']).next().unwrap_or("/");
    if p.is_empty() {
        "/".to_owned()
    } else {
        p.to_owned()
    }
}

/// A plain web action for requests that could not be classified.
pub(crate) fn fallback_action(method: &str, host: &str, path: &str) -> Action {
    Action::request(
        ActionType::Web,
        method.to_ascii_uppercase(),
        host.to_owned(),
        path.to_owned(),
    )
}
