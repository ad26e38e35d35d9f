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
//!   after the response body ended (or failed, or the client went away).

mod body;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use capabilities::Host;
use http::{request::Parts, response, StatusCode};

pub use body::RequestBody;

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
    /// Hop-by-hop headers were already removed.
    pub head: Parts,
    pub body: RequestBody,
}

/// The gate's answer for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// Send it upstream (with whatever rewrites the gate made).
    Forward,
    /// Answer the sandbox with `status`, an `X-Openclaw-Blocked: reason`
    /// header and a small JSON body; no upstream connection is opened.
    Refuse { status: StatusCode, reason: String },
}

/// Method, host and path of a request, for events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSummary {
    pub method: String,
    pub scheme: &'static str,
    pub host: Host,
    /// Path and query as forwarded.
    pub path: String,
}

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

/// Rewrites a response body as it streams to the sandbox (the enforcing
/// gate uses this to replace an echoed secret by its placeholder). Called per
/// data chunk, so a filter looking for a pattern must hold back a tail
/// across chunk boundaries and release it from `finish`.
pub trait ResponseFilter: Send + 'static {
    fn data(&mut self, chunk: Bytes) -> Bytes;
    fn finish(&mut self) -> Bytes {
        Bytes::new()
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

    /// Inspect or rewrite the response head; return a filter to rewrite the
    /// body. When a filter is returned the proxy drops `Content-Length`.
    fn response(
        &self,
        _req: &RequestSummary,
        _head: &mut response::Parts,
        _conn: &ConnInfo,
    ) -> Option<Box<dyn ResponseFilter>> {
        None
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
