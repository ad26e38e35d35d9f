//! One request: check the destination and what it asks of the connection,
//! ask the gate, forward upstream (or open the WebSocket it asks for),
//! stream the response back through the gate's response verdict.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use bytes::Bytes;
use capabilities::Host;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::{
    body::{Body, Incoming},
    client::conn::http1,
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;

use super::{
    blocked_response, canonical_content_length,
    client::{CloseUpstream, ConnUpstream},
    deadline::BodyDeadline,
    fold_transfer_codings, join_cookies,
    metered::{Metered, Report, Upload},
    pool::Lease,
    shaped_response, strip_hop_by_hop,
    websocket::{self, Asks, MessageMask},
    BoxError, ProxyBody,
};
use crate::{
    decide::{
        ConnInfo, ExchangeOutcome, GateRequest, GateVerdict, Listener, Refusal, RequestSummary,
        ResponseVerdict,
    },
    shared::Shared,
    ProxyError, RequestBody,
};

/// How much of a refused request's body is read before answering.
const DRAIN_BYTES: usize = 256 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Per sandbox connection: who it is and how it reaches upstream.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub info: ConnInfo,
    pub pool: ConnUpstream,
    /// HTTP/1.1: set just before the `101` of a WebSocket the proxy carries
    /// is returned, so the smuggling guard stops parsing (`H1Guard`).
    pub switched: Arc<AtomicBool>,
}

impl ConnCtx {
    /// Report a fail-closed refusal and build the response for it.
    pub(crate) fn refuse(
        &self,
        err: &ProxyError,
        request: Option<RequestSummary>,
    ) -> Response<ProxyBody> {
        let blocked = err.blocked();
        if blocked.refusal {
            self.shared.refusal(Refusal {
                conn: self.info.clone(),
                request,
                reason: blocked.reason,
                detail: err.to_string(),
            });
        }
        blocked_response(blocked.status, blocked.reason)
    }

    /// On HTTP/1.1, ask hyper to close the connection after this response
    /// (a refused upgrade: the sandbox may already be speaking the protocol
    /// it asked for, and nothing good follows on that connection).
    fn close_after(&self, resp: &mut Response<ProxyBody>) {
        if self.info.alpn.as_deref() != Some("h2") {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// The destination host of a request: `:authority` / absolute-form target,
/// else `Host`; its port dropped and read as a [`Host`] (one that is not,
/// an IPv6 literal say, is refused as malformed). When both are present
/// they must agree.
///
/// A Host header goes upstream as the sandbox wrote it (`to_h1`), so it
/// must say nothing but the host checked here: a second Host is refused
/// (servers take the first, the last, join them or refuse), and so is
/// userinfo (`other@api.example.com`: a server that routes on the Host
/// text would not read the host checked). RFC 9110 §4.2.4 has recipients
/// treat userinfo in an http(s) authority as an error; the target's is
/// refused for the same reason.
fn request_host<B>(req: &Request<B>) -> Result<Host, ProxyError> {
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Err(ProxyError::Malformed(
            "userinfo in the request target's authority".into(),
        ));
    }
    let from_uri = req.uri().host().map(read_host).transpose()?;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let from_header = match hosts.next() {
        Some(v) => {
            if hosts.next().is_some() {
                return Err(ProxyError::Malformed(
                    "more than one Host header (servers read a repeated Host differently)".into(),
                ));
            }
            let v = v
                .to_str()
                .map_err(|_| ProxyError::Malformed("non-ASCII Host".into()))?;
            let auth: http::uri::Authority = v
                .parse()
                .map_err(|_| ProxyError::Malformed("unparsable Host".into()))?;
            if v.contains('@') {
                return Err(ProxyError::Malformed("userinfo in the Host header".into()));
            }
            Some(read_host(auth.host())?)
        }
        None => None,
    };
    match (from_uri, from_header) {
        (Some(u), Some(h)) if u != h => Err(ProxyError::DomainFronting {
            sni: u.to_string(),
            host: h.to_string(),
        }),
        (Some(h), _) | (None, Some(h)) => Ok(h),
        (None, None) => Err(ProxyError::MissingHost),
    }
}

/// Headers with which front proxies tell the application behind them which
/// URL, host or path a request was for. An application that trusts them
/// (IIS URL rewriting and older Symfony for the first two; frameworks told
/// to trust their proxy for the rest) routes on them instead of the
/// request line and Host the decision read, and whether a given upstream
/// trusts them cannot be known here. Nobody but a proxy has reason to
/// send them, and openclaw's sandbox has no proxy but openclaw.
const ROUTING_OVERRIDES: [&str; 6] = [
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-host",
    "forwarded",
];

/// The first routing-override header the request carries, if any, also
/// in CGI spelling: servers that hand headers on as CGI variables (PHP
/// under Apache or FastCGI, WSGI servers) read `X_Forwarded_Host` as
/// `X-Forwarded-Host` (both are `HTTP_X_FORWARDED_HOST`).
fn routing_override<B>(req: &Request<B>) -> Option<&'static str> {
    let headers = req.headers();
    if let Some(name) = ROUTING_OVERRIDES
        .into_iter()
        .find(|name| headers.contains_key(*name))
    {
        return Some(name);
    }
    headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .find_map(|k| {
            ROUTING_OVERRIDES
                .into_iter()
                .find(|name| cgi_spelling_of(k.as_str(), name))
        })
}

/// Whether a (lower-case) header name is `want` with some `-` written `_`.
fn cgi_spelling_of(name: &str, want: &str) -> bool {
    name.len() == want.len()
        && name
            .bytes()
            .zip(want.bytes())
            .all(|(n, w)| n == w || (n == b'_' && w == b'-'))
}

/// The port upstream is reached on from a listener (the override table,
/// for tests and the offline demo, names whole addresses).
fn default_port(l: Listener) -> u16 {
    match l {
        Listener::Https => 443,
        Listener::Http => 80,
    }
}

/// A port the request names, in its target's authority or its Host, other
/// than `port`: upstream is reached on `port` whatever the request says, and
/// the receipt names the host alone, while a server or front end that routes
/// by the Host's port would take the request for another site.
fn other_port<B>(req: &Request<B>, port: u16) -> Option<u16> {
    let from_host = req
        .headers()
        .get(header::HOST)
        .filter(|v| v.as_bytes().contains(&b':'))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<http::uri::Authority>().ok())
        .and_then(|a| a.port_u16());
    [req.uri().port_u16(), from_host]
        .into_iter()
        .flatten()
        .find(|p| *p != port)
}

/// The Host header rewritten as the host checked: without the port (only
/// the listener's own gets past `other_port`), a trailing dot or upper
/// case. A server's virtual-host routing may take `kayak.com.` or
/// `kayak.com:443` for another site than `kayak.com`, the name the gate
/// decided on and the receipt names; so the gate and upstream both get
/// that name. Left as it is (nothing allocated) when the sandbox wrote it
/// so; an HTTP/2 request carries none (`:authority` is rebuilt from the
/// host upstream, `to_h2`, or a Host from it, `to_h1`).
fn canonical_host(headers: &mut HeaderMap, host: &Host) {
    let Some(written) = headers.get(header::HOST) else {
        return;
    };
    if written.as_bytes() == host.as_str().as_bytes() {
        return;
    }
    match HeaderValue::from_str(host.as_str()) {
        Ok(v) => {
            headers.insert(header::HOST, v);
        }
        // A `Host` is header text; were it not, `to_h1` writes one again.
        Err(_) => {
            headers.remove(header::HOST);
        }
    }
}

/// A request's host (its port already split off) as a [`Host`].
fn read_host(text: &str) -> Result<Host, ProxyError> {
    Host::parse(text)
        .map_err(|_| ProxyError::Malformed(format!("host {text:?} is not a host name")))
}

fn summary(greq: &GateRequest) -> RequestSummary {
    RequestSummary {
        method: greq.head.method.to_string(),
        scheme: greq.scheme,
        host: greq.host.clone(),
        path: greq
            .head
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.to_string()),
        tag: greq.tag,
    }
}

/// The size of an HTTP/2 request's header list as RFC 9113 §6.5.2 counts it
/// (name + value + 32 per field, pseudo-headers included).
fn h2_header_list_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let pseudo = [
        (":method", req.method().as_str().len()),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (
            ":authority",
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
        (
            ":path",
            uri.path_and_query().map_or(0, |p| p.as_str().len()),
        ),
    ];
    let pseudo: usize = pseudo.iter().map(|(n, v)| n.len() + v + 32).sum();
    pseudo
        + req
            .headers()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum::<usize>()
}

pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    // HTTP/1.1 heads are measured by the guard; HTTP/2's own limit is set
    // above ours so that oversized lists arrive here and are reported.
    if req.version() == Version::HTTP_2
        && h2_header_list_size(&req) > ctx.shared.limits.max_header_bytes
    {
        let resp = ctx.refuse(&ProxyError::HeadersTooLarge, None);
        drain(req.into_body()).await;
        return Ok(resp);
    }
    let host = match request_host(&req) {
        Ok(h) => h,
        Err(e) => {
            let resp = ctx.refuse(&e, None);
            drain(req.into_body()).await;
            return Ok(resp);
        }
    };
    let early_summary = || RequestSummary {
        method: req.method().to_string(),
        scheme: scheme(ctx.info.listener),
        host: host.clone(),
        // With the query (as the summary's other uses): the refusal's
        // receipt records what the sandbox sent.
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        tag: None,
    };
    if let Some(sni) = &ctx.info.sni {
        if *sni != host {
            let e = ProxyError::DomainFronting {
                sni: sni.to_string(),
                host: host.to_string(),
            };
            let resp = ctx.refuse(&e, Some(early_summary()));
            drain(req.into_body()).await;
            return Ok(resp);
        }
    }
    let upstream_port = default_port(ctx.info.listener);
    if let Some(port) = other_port(&req, upstream_port) {
        let e = ProxyError::Malformed(format!(
            "the request names port {port}; it can only go upstream on port {upstream_port}"
        ));
        let resp = ctx.refuse(&e, Some(early_summary()));
        drain(req.into_body()).await;
        return Ok(resp);
    }
    // HTTP/1.1 shapes are caught by the guard before hyper; this covers HTTP/2.
    if req.headers().get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        let e = ProxyError::Smuggling("duplicate Content-Length");
        let resp = ctx.refuse(&e, Some(early_summary()));
        drain(req.into_body()).await;
        return Ok(resp);
    }
    if let Some(name) = routing_override(&req) {
        let resp = ctx.refuse(&ProxyError::RoutingOverride(name), Some(early_summary()));
        drain(req.into_body()).await;
        return Ok(resp);
    }
    // What it asks of the connection: a CONNECT or an upgrade to anything
    // but a WebSocket is refused here (the proxy opens no tunnels).
    let asks = match websocket::asks(&req) {
        Ok(asks) => asks,
        Err(e) => {
            let mut resp = ctx.refuse(&e, Some(early_summary()));
            ctx.close_after(&mut resp);
            drain(req.into_body()).await;
            return Ok(resp);
        }
    };
    let websocket = asks != Asks::Request;
    let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut head, body) = req.into_parts();
    let mut expired = None;
    let body = if body.is_end_stream() {
        body.map_err(Into::into).boxed_unsync()
    } else {
        let limits = &ctx.shared.limits;
        let flag = Arc::new(AtomicBool::new(false));
        expired = Some(flag.clone());
        let body = body.map_err(Into::into).boxed_unsync();
        BodyDeadline::new(body, limits.body_timeout, limits.body_min_rate, flag).boxed_unsync()
    };
    strip_hop_by_hop(&mut head.headers, asks == Asks::WebSocket);
    join_cookies(&mut head.headers);
    canonical_content_length(&mut head.headers);
    canonical_host(&mut head.headers, &host);
    if asks == Asks::H2WebSocket {
        websocket::h2_to_upgrade(&mut head);
    }
    head.uri = head
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    let body = RequestBody::new(body);
    let mut greq = GateRequest {
        scheme: scheme(ctx.info.listener),
        host,
        head,
        body,
        websocket,
        tag: None,
    };
    let verdict = ctx.shared.gate.request(&mut greq, &ctx.info).await;
    let request = summary(&greq);
    let bytes_up = Arc::new(AtomicU64::new(0));
    let mut report = Report::new(
        ctx.shared.gate.clone(),
        ctx.info.clone(),
        request.clone(),
        bytes_up.clone(),
        started,
    );
    let refusal = match verdict {
        GateVerdict::Forward => None,
        GateVerdict::Refuse { status, reason } => Some((status, blocked_response(status, &reason))),
        GateVerdict::Respond {
            status,
            reason,
            headers,
            body,
        } => Some((status, shaped_response(status, &reason, headers, body))),
    };
    if let Some((status, mut resp)) = refusal {
        // Read (and drop) a small body first: answering an HTTP/2 stream
        // whose body is still arriving makes clients report a stream reset
        // instead of the 403.
        let mut body = greq.body;
        let _ = tokio::time::timeout(DRAIN_TIME, body.buffer_up_to(DRAIN_BYTES)).await;
        drop(body);
        report.status = Some(status);
        report.send(0, ExchangeOutcome::Refused);
        if websocket {
            ctx.close_after(&mut resp);
        }
        return Ok(resp);
    }
    if let Some(on_upgrade) = on_upgrade {
        return Ok(tunnel(&ctx, greq, on_upgrade, report, asks).await);
    }
    let GateRequest {
        host,
        mut head,
        mut body,
        ..
    } = greq;
    // A GET or HEAD whose body length is unknown: whether it has a body at
    // all decides how it goes to an HTTP/1.1 upstream (`to_h1`), so read
    // its first frame now (clients that end the stream with an empty DATA
    // frame send bodiless GETs this way).
    let bodiless_method = matches!(head.method, Method::GET | Method::HEAD);
    let peeked = if bodiless_method && body.length_unknown() {
        body.buffer_up_to(1).await
    } else if !bodiless_method && body.has_content() {
        // Another body that an HTTP/1.1 upstream answering without reading
        // it would take for a request of its own goes on a connection
        // upstream closes after this exchange. Usually decided on what the
        // gate buffered; otherwise its first bytes are read now (whichever
        // protocol upstream turns out to speak: a server that ignores ALPN
        // speaks HTTP/1.1 even to an h2-only offer).
        body.could_be_a_request().await.map(|yes| {
            if yes {
                head.extensions.insert(CloseUpstream);
            }
        })
    } else {
        Ok(())
    };
    if let Some(len) = body.replaced_len() {
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let timed_out = || expired.as_ref().is_some_and(|f| f.load(Ordering::Relaxed));
    if timed_out() {
        // The gate read the body and its deadline passed: nothing to send.
        return Ok(fail(&ctx, ProxyError::BodyTimeout, report));
    }
    if let Err(e) = peeked {
        // The sandbox's body failed before any of it went upstream.
        return Ok(fail(&ctx, e, report));
    }
    // Reported once the body has ended too: upstream may answer first.
    let upload = body.has_content().then(|| Arc::new(Upload::default()));
    if let Some(upload) = &upload {
        report.after_upload(upload.clone());
    }
    let upstream_req = Request::from_parts(head, body.into_upstream(bytes_up, upload));
    match ctx.pool.send(&host, upstream_req).await {
        Ok((resp, lease)) => Ok(respond(&ctx, resp, report, false, lease)),
        Err(e) => {
            // A body cut by its deadline fails the upstream send: say why.
            let e = if timed_out() {
                ProxyError::BodyTimeout
            } else {
                e
            };
            Ok(fail(&ctx, e, report))
        }
    }
}

/// Read and drop up to `DRAIN_BYTES` of a refused request's body (bounded in
/// time): answering an HTTP/2 stream whose body is still arriving makes
/// clients report a stream reset instead of the refusal.
async fn drain(body: Incoming) {
    let mut body = RequestBody::new(body.map_err(Into::into).boxed_unsync());
    let _ = tokio::time::timeout(DRAIN_TIME, body.buffer_up_to(DRAIN_BYTES)).await;
}

fn scheme(l: Listener) -> &'static str {
    match l {
        Listener::Https => "https",
        Listener::Http => "http",
    }
}

fn fail(ctx: &ConnCtx, e: ProxyError, mut report: Report) -> Response<ProxyBody> {
    ratelog::debug!(conn = ctx.info.id, error = %e, "upstream failed");
    let mut resp = ctx.refuse(&e, Some(report.request.clone()));
    if matches!(e, ProxyError::BodyTimeout) && ctx.info.alpn.as_deref() != Some("h2") {
        // The rest of that body is still due on this HTTP/1.1 connection.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    report.status = Some(resp.status());
    report.send(0, ExchangeOutcome::Failed(e.blocked().reason.to_owned()));
    resp
}

fn respond<B>(
    ctx: &ConnCtx,
    resp: Response<B>,
    mut report: Report,
    close: bool,
    lease: Option<Lease>,
) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Only `tunnel` carries a switch, for a request that asked for one;
        // the body and lease go: that upstream connection is closed.
        return fail(ctx, ProxyError::UnaskedUpgrade, report);
    }
    fold_transfer_codings(&mut parts.headers);
    strip_hop_by_hop(&mut parts.headers, false);
    drop_reason_phrase(&mut parts);
    if close {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let filter = match ctx
        .shared
        .gate
        .response(&report.request, &mut parts, &ctx.info)
    {
        ResponseVerdict::Pass => None,
        ResponseVerdict::Filter(f) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Some(f)
        }
        ResponseVerdict::Refuse(reason) => {
            // Nothing of the body is read; dropping it with the lease
            // closes that upstream connection.
            tracing::debug!(conn = ctx.info.id, reason = %reason, "response refused");
            let mut resp = blocked_response(StatusCode::BAD_GATEWAY, &reason);
            if close {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            report.status = Some(resp.status());
            report.send(0, ExchangeOutcome::Failed(reason));
            return resp;
        }
    };
    report.status = Some(parts.status);
    let body = Metered::new(
        body.map_err(Into::into).boxed_unsync(),
        filter,
        report,
        lease,
    )
    .boxed_unsync();
    // HTTP/2 flow control can stall a stream without ever blocking the
    // socket (which `StallGuard` watches): watch the body too.
    let body = if ctx.info.alpn.as_deref() == Some("h2") {
        ctx.shared.stalls.watch(ctx.info.id, body).boxed_unsync()
    } else {
        body
    };
    Response::from_parts(parts, body)
}

/// Drops upstream's own reason phrase (hyper keeps it as an extension and
/// would write it to an HTTP/1.1 sandbox): it is text no gate filter sees
/// (a server may put a stored secret there), and clients ignore it; the
/// sandbox gets the status code's standard phrase.
fn drop_reason_phrase(parts: &mut http::response::Parts) {
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
}

/// A WebSocket the gate let through: a dedicated HTTP/1.1 upstream
/// connection (an HTTP/2 extended CONNECT was already turned into an
/// upgrade request); on `101` its head goes through the gate's response
/// verdict like any other, then both sides are spliced until either closes
/// (or the proxy shuts down), the bytes counted as they pass and the
/// server's messages filtered when the gate filters this response.
async fn tunnel(
    ctx: &ConnCtx,
    greq: GateRequest,
    down: OnUpgrade,
    mut report: Report,
    asks: Asks,
) -> Response<ProxyBody> {
    let h2 = asks == Asks::H2WebSocket;
    let GateRequest {
        host,
        mut head,
        body,
        ..
    } = greq;
    // What upstream's `Sec-WebSocket-Accept` must answer.
    let key = head.headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let offer = ctx.pool_offer_http11();
    let (io, _) = match ctx.pool.open_stream(&host, offer).await {
        Ok(s) => s,
        Err(e) => return fail(ctx, e, report),
    };
    let (mut send, conn) = match http1::handshake(TokioIo::new(io)).await {
        Ok(x) => x,
        Err(e) => return fail(ctx, e.into(), report),
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    if !head.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(host.as_str()) {
            head.headers.insert(header::HOST, v);
        }
    }
    let req = Request::from_parts(head, body.into_upstream(report.bytes_up.clone(), None));
    let mut resp = match send.send_request(req).await {
        Ok(r) => r,
        Err(e) => return fail(ctx, e.into(), report),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Not switched: an HTTP/1.1 sandbox connection is closed after this
        // answer (the guard goes on parsing it meanwhile).
        return respond(ctx, resp, report, !h2, None);
    }
    // The tunnel is the WebSocket the gate decided and the receipt names
    // only if upstream switched to that: anything else is a protocol
    // nobody checked. Dropping `resp` closes that upstream connection.
    if !websocket::switched_to_websocket(resp.headers()) {
        let mut refused = fail(ctx, ProxyError::NotWebSocket, report);
        ctx.close_after(&mut refused);
        return refused;
    }
    // Nor if it did not answer the key it was sent: it did not read the
    // handshake as a WebSocket one.
    if !websocket::accepts_key(key.as_ref(), resp.headers()) {
        let mut refused = fail(ctx, ProxyError::WebSocketAccept, report);
        ctx.close_after(&mut refused);
        return refused;
    }
    let up = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, true);
    drop_reason_phrase(&mut parts);
    let mask = match message_mask(ctx, &report.request, &mut parts) {
        Ok(mask) => mask,
        Err(reason) => {
            // Dropping `up` closes the upgraded upstream connection.
            let mut resp = blocked_response(StatusCode::BAD_GATEWAY, &reason);
            ctx.close_after(&mut resp);
            report.status = Some(resp.status());
            report.send(0, ExchangeOutcome::Failed(reason));
            return resp;
        }
    };
    report.status = Some(StatusCode::SWITCHING_PROTOCOLS);
    let mut stop = ctx.shared.stop.clone();
    tokio::spawn(async move {
        let (Ok(d), Ok(u)) = tokio::join!(down, up) else {
            let failed = ExchangeOutcome::Failed("upgrade did not complete".into());
            return report.send(0, failed);
        };
        let (from_sandbox, to_sandbox) = tokio::io::split(TokioIo::new(d));
        let (from_upstream, to_upstream) = tokio::io::split(TokioIo::new(u));
        // Counted as they pass, so a tunnel cut by shutdown still reports them.
        let sent = report.bytes_up.clone();
        let delivered = AtomicU64::new(0);
        let splice = async {
            tokio::try_join!(
                websocket::pump(from_sandbox, to_upstream, &sent, None),
                websocket::pump(from_upstream, to_sandbox, &delivered, mask),
            )
        };
        let result = tokio::select! {
            r = splice => r.map(|_| ()),
            _ = stop.changed() => Ok(()),
        };
        let outcome = match result {
            Ok(()) => ExchangeOutcome::Completed,
            Err(e) => ExchangeOutcome::Failed(format!("tunnel: {e}")),
        };
        report.send(delivered.load(Ordering::Relaxed), outcome);
    });
    if h2 {
        // RFC 8441 §5: the extended CONNECT is answered 200, without the
        // HTTP/1.1 handshake's headers.
        parts.status = StatusCode::OK;
        for name in [
            header::UPGRADE,
            header::CONNECTION,
            header::SEC_WEBSOCKET_ACCEPT,
        ] {
            parts.headers.remove(name);
        }
    } else {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        // From the next read on the sandbox connection carries WebSocket frames.
        ctx.switched.store(true, Ordering::Release);
    }
    Response::from_parts(
        parts,
        Empty::new().map_err(|never| match never {}).boxed_unsync(),
    )
}

/// The gate's verdict on a `101`, as the tunnel needs it: `None` to pass
/// the server's frames as they come, a [`MessageMask`] when the gate
/// filters (two filters: control frames may come between a message's
/// frames), or why the WebSocket cannot be carried. A filtered WebSocket
/// with an extension agreed (permessage-deflate: compressed payloads the
/// filter cannot read) is refused; the enforcing gate asks for none where
/// it filters.
fn message_mask(
    ctx: &ConnCtx,
    request: &RequestSummary,
    parts: &mut http::response::Parts,
) -> Result<Option<MessageMask>, String> {
    let gate = &ctx.shared.gate;
    let data = match gate.response(request, parts, &ctx.info) {
        ResponseVerdict::Pass => return Ok(None),
        ResponseVerdict::Refuse(reason) => return Err(reason),
        ResponseVerdict::Filter(f) => f,
    };
    if parts.headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
        return Err(
            "websocket-extension: compressed WebSocket messages cannot be checked for secrets"
                .into(),
        );
    }
    match gate.response(request, &mut parts.clone(), &ctx.info) {
        ResponseVerdict::Filter(control) => Ok(Some(MessageMask::new(data, control))),
        _ => Err("websocket-filter: no filter for control frames".into()),
    }
}

impl ConnCtx {
    fn pool_offer_http11(&self) -> crate::tls::server::AlpnOffer {
        self.shared_offer().only_http11()
    }
    fn shared_offer(&self) -> crate::tls::server::AlpnOffer {
        self.pool.offer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_comes_from_authority_or_host_header_and_must_agree() {
        let r = Request::builder()
            .uri("/x")
            .header("host", "Example.COM.:443")
            .body(())
            .expect("request");
        assert_eq!(request_host(&r).expect("host").as_str(), "example.com");
        let r = Request::builder()
            .uri("https://a.example/x")
            .header("host", "b.example")
            .body(())
            .expect("request");
        assert!(matches!(
            request_host(&r),
            Err(ProxyError::DomainFronting { .. })
        ));
        let r = Request::builder().uri("/x").body(()).expect("request");
        assert!(matches!(request_host(&r), Err(ProxyError::MissingHost)));
    }

    /// A host the one `Host` reading refuses is refused here, before the
    /// gate is asked (an IPv6 literal or a name with `_` used to reach the
    /// token, which blocked it as malformed; two root dots used to be
    /// trimmed): fail closed, earlier.
    #[test]
    fn a_host_that_is_not_a_host_name_is_malformed() {
        for bad in ["[::1]", "[::1]:443", "foo_bar.example", "united.com.."] {
            let r = Request::builder()
                .uri("/x")
                .header("host", bad)
                .body(())
                .expect("request");
            assert!(
                matches!(request_host(&r), Err(ProxyError::Malformed(_))),
                "{bad}"
            );
        }
        let r = Request::builder()
            .uri("http://[::1]/x")
            .body(())
            .expect("request");
        assert!(matches!(request_host(&r), Err(ProxyError::Malformed(_))));
    }
}
