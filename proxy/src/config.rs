//! What one proxy instance is given: where to listen, how to reach
//! upstream, and the resource bounds that keep one sandbox from starving
//! another session's proxy.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use crate::{listen::ListenAddrs, tls::upstream::UpstreamConfig};

/// Resource bounds for one session's proxy, so one sandbox cannot starve
/// another session's proxy (each session runs its own instance).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent sandbox connections (HTTPS and HTTP together); more are
    /// closed on accept and reported as refusals.
    pub max_connections: usize,
    /// Time allowed for the ClientHello and for the rest of the handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to receive a request head (HTTP/1.1). hyper starts it
    /// whenever the connection waits for a head, so it is also the HTTP/1.1
    /// idle keep-alive timeout. Also the HTTP/2 keep-alive ping interval.
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body; see `body_min_rate`.
    pub body_timeout: Duration,
    /// Bytes per second a request body must average: all waits for body
    /// data together may last `body_timeout` plus one second per this many
    /// bytes received (a trickling body runs out).
    pub body_min_rate: u64,
    /// An HTTP/2 connection with no open stream for this long is closed
    /// (pings alone do not keep it).
    pub idle_timeout: Duration,
    /// Largest request head accepted (HTTP/1.1 head, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_h2_streams: u32,
    /// A sandbox that stops reading a response: a write to its connection
    /// that makes no progress this long closes the connection, and an
    /// HTTP/2 response stream whose client grants no window this long has
    /// its upstream side dropped (the pooled connection or stream is freed).
    /// Only time spent blocked on the sandbox counts.
    pub write_stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            body_min_rate: 1024,
            idle_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_h2_streams: 128,
            write_stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything a proxy instance needs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Session id, used in the CA's name and in logs.
    pub session: String,
    pub listen: ListenAddrs,
    /// The address DNS answers point to (the proxy's address as the
    /// sandbox sees it).
    pub advertise: Ipv4Addr,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
}

impl ProxyConfig {
    /// Loopback listeners on ephemeral ports, Mozilla roots, default limits.
    pub fn loopback(session: &str) -> Self {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            session: session.to_owned(),
            listen: ListenAddrs {
                https: Some(any),
                http: Some(any),
                dns: Some(any),
            },
            advertise: Ipv4Addr::LOCALHOST,
            upstream: UpstreamConfig::default(),
            limits: Limits::default(),
        }
    }
}
