//! The seam between carrying traffic (this crate) and deciding it (the
//! `enforce` crate): the [`Gate`] trait the proxy calls for every DNS name,
//! request, response, refusal and finished exchange, and the types it sees.
//!
//! Ordering guarantees the gate can rely on:
//! - `request` is awaited before any upstream connection is opened for that
//!   request; it may take minutes (an approval hold) without stalling other
//!   connections or other streams of the same HTTP/2 connection.
//! - A `Refuse` verdict, and every fail-closed case the proxy detects itself
//!   (reported through `refused`), never opens an upstream connection.
//! - `completed` is called exactly once per request that reached `request`,
//!   after the response body ended (or failed, or the client went away; for
//!   a WebSocket, after the tunnel closed).
//! - `response` sees every response head the sandbox is sent from upstream,
//!   the `101` of a WebSocket included, and its verdict filters the body
//!   (a WebSocket's messages) or refuses the response.

mod body;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use capabilities::Host;
use http::{request::Parts, response, HeaderMap, StatusCode};

pub use body::{BufferHold, RequestBody};

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// TLS, intercepted (port 443 in the sandbox).
    Https,
    /// Plain HTTP (port 80 in the sandbox).
    Http,
}

/// What the proxy knows about the sandbox-side connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Unique per proxy instance, for correlating events.
    pub id: u64,
    pub peer: SocketAddr,
    pub listener: Listener,
    /// The TLS server name (None on the plain-HTTP listener).
    pub sni: Option<Host>,
    /// ALPN protocol agreed with the sandbox, if any.
    pub alpn: Option<String>,
}

/// Answer for one DNS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsVerdict {
    /// Answer A queries with the proxy's own address.
    ResolveToProxy,
    /// NXDOMAIN.
    NxDomain,
}

/// One request as the gate sees it, before anything is sent upstream.
///
/// The gate may rewrite `head` (method, path and query, headers) and the body
/// (see [`RequestBody`]); the destination host is fixed by the TLS server name
/// and cannot be changed.
#[derive(Debug)]
pub struct GateRequest {
    /// `https` or `http`.
    pub scheme: &'static str,
    /// Destination host, without port; equal to the SNI on TLS.
    pub host: Host,
    /// Method, URI in origin form (`/path?query`), version, headers.
    /// Hop-by-hop headers were already removed (an upgrade keeps `Upgrade:
    /// websocket` and `Connection: upgrade`).
    pub head: Parts,
    pub body: RequestBody,
    /// The request opens a WebSocket (an HTTP/1.1 `Upgrade: websocket`, or
    /// an HTTP/2 extended CONNECT with `:protocol` websocket): if forwarded,
    /// bytes flow both ways after upstream's `101` until either side closes.
    /// Every other upgrade, and every plain CONNECT, the proxy refuses itself.
    pub websocket: bool,
    /// Set by the gate to find this request again at its response and
    /// completion ([`RequestSummary::tag`]).
    pub tag: Option<GateTag>,
}

/// The gate's answer for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// Send it upstream (with whatever rewrites the gate made).
    Forward,
    /// Answer the sandbox with `status`, an `X-Openclaw-Blocked: reason`
    /// header and a small JSON body; no upstream connection is opened.
    Refuse { status: StatusCode, reason: String },
    /// Refuse with an answer the gate shaped (e.g. a provider-shaped `429`
    /// for a tenant's day quota): `status`, `headers` and `body` as given,
    /// plus the `X-Openclaw-Blocked: reason` header; nothing goes upstream.
    Respond {
        status: StatusCode,
        reason: String,
        headers: http::HeaderMap,
        body: bytes::Bytes,
    },
}

/// Method, host and path of a request, for events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSummary {
    pub method: String,
    pub scheme: &'static str,
    pub host: Host,
    /// Path and query as forwarded.
    pub path: String,
    /// The gate's [`GateTag`] on this request, if it set one.
    pub tag: Option<GateTag>,
}

/// A number the gate attaches to a request in [`Gate::request`]
/// ([`GateRequest::tag`], never sent upstream); it comes back in that
/// request's [`RequestSummary`] at [`Gate::response`] and
/// [`Gate::completed`], so concurrent requests with the same method and
/// path on one HTTP/2 connection are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GateTag(pub u64);

/// A fail-closed refusal the proxy made on its own (no SNI, not TLS, domain
/// fronting, malformed or smuggling-shaped HTTP, oversized headers, forbidden
/// upstream address, connection limit). The enforcing gate writes a blocked receipt.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub conn: ConnInfo,
    /// The request, when the refusal happened after one was parsed.
    pub request: Option<RequestSummary>,
    /// Stable reason (same string as the `X-Openclaw-Blocked` header).
    pub reason: &'static str,
    /// Human-readable detail (never contains header values or bodies).
    pub detail: String,
}

/// How an exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// The response body was delivered completely.
    Completed,
    /// The gate refused the request; nothing was sent upstream.
    Refused,
    /// The proxy could not complete it (upstream failure, body error).
    Failed(String),
    /// The sandbox went away before the response body ended.
    ClientGone,
}

/// The end of one request: for the event stream and metering.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub conn: ConnInfo,
    pub request: RequestSummary,
    /// Status sent to the sandbox (101 for a WebSocket tunnel).
    pub status: Option<StatusCode>,
    /// Request body bytes sent upstream (tunnel bytes for WebSockets).
    pub bytes_up: u64,
    /// Response body bytes delivered to the sandbox.
    pub bytes_down: u64,
    pub duration: Duration,
    pub outcome: ExchangeOutcome,
}

/// Why a [`ResponseFilter`] could not go on (a compressed body that does not
/// decode, say): the response to the sandbox is cut there, never passed on
/// as complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("response filter: {0}")]
pub struct FilterError(pub String);

/// Rewrites a response body as it streams to the sandbox (the enforcing
/// gate uses this to replace an echoed secret by its placeholder, after
/// decoding a compressed body). Input and output are decoupled so that a
/// filter may expand what it is given without holding all of it: the proxy
/// [`push`](Self::push)es one chunk from upstream, then [`pull`](Self::pull)s
/// until it returns `None`, and only then reads the next chunk (so output
/// is made as the sandbox takes it). A filter looking for a pattern holds
/// back a tail across chunks and releases it after [`finish`](Self::finish).
///
/// For a WebSocket, each message is one stream: pushed frame by frame,
/// then `finish`ed and drained; the same filter then takes the next message.
pub trait ResponseFilter: Send + 'static {
    /// The next chunk of the upstream body.
    fn push(&mut self, chunk: Bytes) -> Result<(), FilterError>;
    /// The next piece of output; `None` when more input is needed (or,
    /// after `finish`, when everything was given out).
    fn pull(&mut self) -> Result<Option<Bytes>, FilterError>;
    /// The upstream body ended: hold nothing back any more.
    fn finish(&mut self) -> Result<(), FilterError>;
    /// Rewrite the trailers (sent after the body's last byte).
    fn trailers(&mut self, _trailers: &mut HeaderMap) {}

    /// A WebSocket's messages, in place of `finish` at each message's end:
    /// a filter may treat them as one stream (so what it rewrites may span
    /// two messages). `pull` then gives the rest of the ended message;
    /// `true` says the filter holds some of it back, to be decided by the
    /// next message's bytes: `pull` gives the held message's bytes until
    /// [`message_ended`](Self::message_ended) says they are all out. By
    /// default each message is a stream of its own.
    fn end_message(&mut self) -> Result<bool, FilterError> {
        self.finish()?;
        Ok(false)
    }
    /// While a message's end is held: whether all of it was pulled (the
    /// next piece starts the next message); consumes that mark.
    fn message_ended(&mut self) -> bool {
        true
    }
    /// No continuation is coming (soon): `pull` gives the held message's
    /// end as it is, then `message_ended` is true. The filter may refuse
    /// later input that its released end began.
    fn release_message(&mut self) -> Result<(), FilterError> {
        Ok(())
    }
}

/// What the gate makes of a response head.
pub enum ResponseVerdict {
    /// Send the body as it comes.
    Pass,
    /// Send the body through this filter; the proxy drops `Content-Length`.
    Filter(Box<dyn ResponseFilter>),
    /// Do not send this response (the sandbox gets `502` with this reason
    /// in `X-Openclaw-Blocked`; nothing of the body is read); the exchange
    /// ends as `Failed`. For what the gate cannot make safe to show (a body
    /// in an encoding it cannot decode, say).
    Refuse(String),
}

impl std::fmt::Debug for ResponseVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseVerdict::Pass => f.write_str("Pass"),
            ResponseVerdict::Filter(_) => f.write_str("Filter(..)"),
            ResponseVerdict::Refuse(r) => f.debug_tuple("Refuse").field(r).finish(),
        }
    }
}

/// The decision hook. One instance per proxy (per session).
#[async_trait::async_trait]
pub trait Gate: Send + Sync + 'static {
    /// Decide a DNS name (lowercased, no trailing dot).
    fn dns(&self, name: &str) -> DnsVerdict;

    /// Decide a request. May read (a bounded prefix of) the body, rewrite the
    /// head and body, and take as long as an approval needs.
    async fn request(&self, req: &mut GateRequest, conn: &ConnInfo) -> GateVerdict;

    /// Inspect or rewrite the response head (hop-by-hop headers already
    /// removed; transfer-codings other than chunked moved into
    /// `Content-Encoding`, so the head names every coding of the body), and
    /// say how its body goes to the sandbox.
    fn response(
        &self,
        _req: &RequestSummary,
        _head: &mut response::Parts,
        _conn: &ConnInfo,
    ) -> ResponseVerdict {
        ResponseVerdict::Pass
    }

    /// A fail-closed refusal the proxy made without asking.
    fn refused(&self, event: Refusal);

    /// An exchange ended (exactly once per request that reached `request`).
    fn completed(&self, _exchange: Exchange) {}
}

/// Permissive gate for the transport's own tests: every name resolves,
/// every request is forwarded. Records nothing; tests wrap it to observe
/// events.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

#[async_trait::async_trait]
impl Gate for AllowAll {
    fn dns(&self, _name: &str) -> DnsVerdict {
        DnsVerdict::ResolveToProxy
    }
    async fn request(&self, _req: &mut GateRequest, _conn: &ConnInfo) -> GateVerdict {
        GateVerdict::Forward
    }
    fn refused(&self, event: Refusal) {
        ratelog::info!(conn = event.conn.id, reason = event.reason, "refused");
    }
}
