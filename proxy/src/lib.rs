//! The sandbox's only way out: a TLS-intercepting HTTP proxy with its own DNS
//! responder. It carries traffic faithfully and refuses what it cannot read;
//! every decision is delegated to a [`Gate`] (the `enforce` crate plugs the
//! capability token, credentials, approvals and receipts in there).
//!
//! The public interface is:
//! - [`Proxy::start`] / [`Proxy::start_with_listeners`] → [`ProxyHandle`]
//!   (addresses, the session CA's PEM, counters, [`ProxyHandle::shutdown`]);
//! - [`ProxyConfig`], [`ListenAddrs`], [`Listeners`] (bound by the caller,
//!   e.g. inside the session's network namespace), [`UpstreamConfig`], [`Limits`];
//! - the decision seam: [`Gate`] and the types it sees ([`GateRequest`],
//!   [`RequestBody`], [`ConnInfo`], [`Refusal`], [`Exchange`], [`ResponseVerdict`],
//!   [`ResponseFilter`], [`FilterError`]);
//!   [`AllowAll`] is the permissive gate of the transport's own tests;
//! - [`SessionCa`] (the per-session CA and its leaf cache);
//! - [`ProxyError`] and its one mapping to an HTTP status and block reason.
//!
//! Hosts (request host, SNI, pool and override keys) are
//! [`capabilities::Host`]s: read once, compared as such.
#![forbid(unsafe_code)]

/// `Limits` and `ProxyConfig`: what one proxy instance is given.
mod config;
/// `Gate`: the hook through which every DNS name, request, response and refusal passes.
mod decide;
/// DNS responder (UDP and TCP) answering with the proxy's address or NXDOMAIN.
mod dns;
/// The crate's error and its single mapping to a refusal.
mod error;
/// Entry points for the fuzz targets (`fuzz/`); not part of the API.
#[doc(hidden)]
pub mod fuzzing;
/// HTTP/1.1 and HTTP/2 serving, request forwarding, smuggling guard, bodies.
mod http;
/// Listener binding in the calling thread's network namespace.
mod listen;
/// `Proxy::start`: accept loops, connection limits, shutdown.
mod server;
/// `Shared`: the state every connection of one proxy instance uses.
mod shared;
/// Session CA, leaf minting and cache, upstream TLS client and address policy.
mod tls;

pub use crate::http::coding_tokens;
pub use config::{Limits, ProxyConfig};
pub use decide::{
    AllowAll, BufferHold, ConnInfo, DnsVerdict, Exchange, ExchangeOutcome, FilterError, Gate,
    GateRequest, GateTag, GateVerdict, Listener, Refusal, RequestBody, RequestSummary,
    ResponseFilter, ResponseVerdict,
};
pub use error::{Blocked, ProxyError};
pub use listen::{ListenAddrs, Listeners};
pub use server::{Proxy, ProxyHandle, ProxyStats};
pub use tls::ca::SessionCa;
pub use tls::upstream::{is_forbidden_upstream, UpstreamConfig};
