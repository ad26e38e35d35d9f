//! Binding the proxy's sockets in the calling thread's network namespace.
//! For the session's namespace the caller runs [`Listeners::bind`] on a
//! thread inside it (the `netns` crate's `run_in`) and hands the bound
//! sockets to [`crate::Proxy::start_with_listeners`]: the sockets keep
//! belonging to that namespace while outbound connects, made from the
//! runtime's threads, leave from the host's namespace.

use std::net::{SocketAddr, TcpListener, UdpSocket};

use crate::ProxyError;

/// Where to listen. `None` disables a listener.
#[derive(Debug, Clone, Default)]
pub struct ListenAddrs {
    /// Intercepted TLS (443 in the sandbox; port 0 in tests).
    pub https: Option<SocketAddr>,
    /// Plain HTTP (80 in the sandbox).
    pub http: Option<SocketAddr>,
    /// DNS over UDP and TCP on the same port (53 in the sandbox).
    pub dns: Option<SocketAddr>,
}

/// Already-bound sockets, ready for [`crate::Proxy::start_with_listeners`].
#[derive(Debug, Default)]
pub struct Listeners {
    pub https: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub dns_udp: Option<UdpSocket>,
    pub dns_tcp: Option<TcpListener>,
}

fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let l = TcpListener::bind(addr).map_err(|source| ProxyError::Bind { what, addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| ProxyError::Bind { what, addr, source })?;
    Ok(l)
}

impl Listeners {
    /// Bind in the calling thread's network namespace (non-blocking sockets).
    pub fn bind(addrs: &ListenAddrs) -> Result<Self, ProxyError> {
        let mut out = Listeners::default();
        if let Some(a) = addrs.https {
            out.https = Some(bind_tcp("https", a)?);
        }
        if let Some(a) = addrs.http {
            out.http = Some(bind_tcp("http", a)?);
        }
        if let Some(a) = addrs.dns {
            // TCP on the port UDP got (matters when asked for port 0). An
            // ephemeral UDP port can be taken for TCP (say by an outgoing
            // connection): then try another one.
            let mut attempts = if a.port() == 0 { 16 } else { 1 };
            loop {
                let dns_err = |what, source| ProxyError::Bind {
                    what,
                    addr: a,
                    source,
                };
                let udp = UdpSocket::bind(a).map_err(|e| dns_err("dns-udp", e))?;
                udp.set_nonblocking(true)
                    .map_err(|e| dns_err("dns-udp", e))?;
                let bound = udp.local_addr().map_err(|e| dns_err("dns-udp", e))?;
                attempts -= 1;
                match bind_tcp("dns-tcp", bound) {
                    Ok(tcp) => {
                        out.dns_tcp = Some(tcp);
                        out.dns_udp = Some(udp);
                        break;
                    }
                    Err(ProxyError::Bind { source, .. })
                        if attempts > 0 && source.kind() == std::io::ErrorKind::AddrInUse => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }
}
