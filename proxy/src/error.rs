//! `ProxyError`, and the one function that turns any of them into the HTTP
//! status and block reason the sandbox sees.

use std::{io, net::IpAddr, path::PathBuf};

use http::StatusCode;

/// Everything that can go wrong in the proxy, named after the stage that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("generating the session CA: {0}")]
    CaGenerate(rcgen::Error),
    #[error("minting a leaf certificate for {host}: {source}")]
    LeafMint { host: String, source: rcgen::Error },
    #[error("no leaf certificate could be minted for {host}")]
    LeafUnavailable { host: String },
    #[error("loading a leaf signing key: {0}")]
    LeafKey(rustls::Error),
    #[error("building a TLS configuration: {0}")]
    TlsConfig(rustls::Error),
    #[error("reading extra CA file {path}: {source}")]
    ExtraRoots { path: PathBuf, source: io::Error },
    #[error("extra CA file {path} holds no usable certificate")]
    NoRootsInFile { path: PathBuf },
    #[error("upstream override {0:?} is not a host name")]
    BadOverride(String),
    #[error("binding the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("the ClientHello carries no server name (SNI)")]
    NoSni,
    #[error("the ClientHello's server name {0:?} is not a host name")]
    BadSni(String),
    #[error("not a TLS connection: {0}")]
    NotTls(io::Error),
    #[error("TLS handshake with the sandbox failed: {0}")]
    ClientTls(io::Error),
    #[error("request host {host:?} does not match the TLS server name {sni:?}")]
    DomainFronting { sni: String, host: String },
    #[error("request names no host")]
    MissingHost,
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("request smuggling shape: {0}")]
    Smuggling(&'static str),
    #[error(
        "the {0} header asks the server to route to another URL, host or path than the one decided"
    )]
    RoutingOverride(&'static str),
    #[error("request headers exceed the limit")]
    HeadersTooLarge,
    #[error("not carried: {0}")]
    UpgradeRefused(&'static str),
    #[error("upstream switched protocols for a request that did not ask to")]
    UnaskedUpgrade,
    #[error("upstream answered a WebSocket upgrade by switching to another protocol")]
    NotWebSocket,
    #[error("upstream's 101 lacks the Sec-WebSocket-Accept that answers the key sent")]
    WebSocketAccept,
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("too many connections for this session")]
    ConnectionLimit,
    #[error("resolving upstream {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("upstream {host} resolves to {addr}, which is not a public address")]
    ForbiddenUpstream { host: String, addr: IpAddr },
    #[error("connecting to upstream {host}: {source}")]
    UpstreamConnect { host: String, source: io::Error },
    #[error("TLS with upstream {host}: {source}")]
    UpstreamTls { host: String, source: io::Error },
    #[error("HTTP with upstream: {0}")]
    UpstreamHttp(#[from] hyper::Error),
    #[error("HTTP/2 with upstream: {0}")]
    UpstreamH2(#[from] h2::Error),
    #[error("upstream {host} did not answer in time")]
    UpstreamTimeout { host: String },
    #[error("reading the request body: {0}")]
    RequestBody(String),
    #[error("the request body was not fully buffered, so it cannot be replaced")]
    BodyNotBuffered,
}

/// What the sandbox is told when the proxy refuses or fails a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// Status of the response sent to the sandbox (when there is an HTTP
    /// exchange to answer; TLS-level refusals just close the connection).
    pub status: StatusCode,
    /// Short stable reason, sent as `X-Openclaw-Blocked` and put in events.
    pub reason: &'static str,
    /// True when this is a fail-closed refusal of something the proxy could
    /// not read or will not carry (the enforcing gate writes a blocked receipt for it);
    /// false for plain failures (upstream down, internal errors).
    pub refusal: bool,
}

impl ProxyError {
    /// The single mapping from an error to the status and reason the sandbox sees.
    pub fn blocked(&self) -> Blocked {
        use ProxyError as E;
        let (status, reason, refusal) = match self {
            E::NoSni => (StatusCode::FORBIDDEN, "no-sni", true),
            E::BadSni(_) => (StatusCode::FORBIDDEN, "bad-sni", true),
            E::NotTls(_) => (StatusCode::BAD_REQUEST, "not-tls", true),
            E::DomainFronting { .. } => (StatusCode::FORBIDDEN, "domain-fronting", true),
            E::MissingHost => (StatusCode::BAD_REQUEST, "missing-host", true),
            E::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed-request", true),
            E::Smuggling(_) => (StatusCode::BAD_REQUEST, "request-smuggling", true),
            E::RoutingOverride(_) => (StatusCode::FORBIDDEN, "routing-override", true),
            E::UpgradeRefused(_) => (StatusCode::FORBIDDEN, "upgrade-refused", true),
            E::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                true,
            ),
            E::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body-timeout", true),
            E::ConnectionLimit => (StatusCode::SERVICE_UNAVAILABLE, "connection-limit", true),
            E::ForbiddenUpstream { .. } => (StatusCode::FORBIDDEN, "forbidden-upstream", true),
            E::Resolve { .. } => (StatusCode::BAD_GATEWAY, "upstream-unresolvable", false),
            E::UpstreamConnect { .. } => (StatusCode::BAD_GATEWAY, "upstream-unreachable", false),
            E::UpstreamTls { .. } => (StatusCode::BAD_GATEWAY, "upstream-tls", false),
            E::UpstreamHttp(_) | E::UpstreamH2(_) | E::UnaskedUpgrade | E::NotWebSocket => {
                (StatusCode::BAD_GATEWAY, "upstream-protocol", false)
            }
            E::WebSocketAccept => (StatusCode::BAD_GATEWAY, "websocket-accept", false),
            E::UpstreamTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout", false),
            E::RequestBody(_) => (StatusCode::BAD_REQUEST, "request-body", false),
            E::ClientTls(_) => (StatusCode::BAD_REQUEST, "client-tls", false),
            E::CaGenerate(_)
            | E::LeafMint { .. }
            | E::LeafUnavailable { .. }
            | E::LeafKey(_)
            | E::TlsConfig(_)
            | E::ExtraRoots { .. }
            | E::NoRootsInFile { .. }
            | E::BadOverride(_)
            | E::Bind { .. }
            | E::BodyNotBuffered => (StatusCode::INTERNAL_SERVER_ERROR, "internal", false),
        };
        Blocked {
            status,
            reason,
            refusal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_closed_cases_are_refusals_and_upstream_failures_are_not() {
        for e in [
            ProxyError::NoSni,
            ProxyError::Smuggling("cl+te"),
            ProxyError::HeadersTooLarge,
            ProxyError::DomainFronting {
                sni: "a".into(),
                host: "b".into(),
            },
        ] {
            assert!(e.blocked().refusal, "{e}");
            assert!(e.blocked().status.is_client_error(), "{e}");
        }
        let down = ProxyError::UpstreamTimeout { host: "a".into() };
        assert!(!down.blocked().refusal);
        assert_eq!(down.blocked().status, StatusCode::GATEWAY_TIMEOUT);
    }
}
