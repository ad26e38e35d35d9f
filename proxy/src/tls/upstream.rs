//! The internet side: rustls client with Mozilla's roots plus extra CA files,
//! name resolution with an override table, and the SSRF address policy.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use capabilities::Host;
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

use super::server::AlpnOffer;
use crate::ProxyError;

/// Bound on the per-host ALPN memory (a guest cannot grow it without limit).
const MAX_LEARNED_HOSTS: usize = 4096;

/// How the proxy reaches upstream services.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Trust Mozilla's root program (webpki-roots). Off for offline tests.
    pub platform_roots: bool,
    /// Extra PEM CA files trusted for upstream TLS (tests, the offline demo).
    pub extra_ca_files: Vec<PathBuf>,
    /// `host → address` table consulted before DNS. Addresses named here are
    /// allowed even when loopback or private (that is what the table is for);
    /// the port of the address is used whatever port the sandbox asked. Each
    /// key must be a host name ([`Host`]); the proxy does not start otherwise.
    pub overrides: HashMap<String, SocketAddr>,
    pub connect_timeout: Duration,
    /// How long an unused upstream connection stays pooled for later
    /// requests of the same session.
    pub pool_idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            platform_roots: true,
            extra_ca_files: Vec::new(),
            overrides: HashMap::new(),
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// True for addresses an upstream must never be (SSRF defence): loopback,
/// private, link-local (cloud metadata lives there), shared, multicast,
/// reserved and unspecified ranges, also when embedded in IPv6.
pub fn is_forbidden_upstream(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local
        || (seg[0] & 0xffc0) == 0xfe80 // link-local
        || (seg[0] == 0x64 && seg[1] == 0xff9b && forbidden_v4(embedded_v4(seg[6], seg[7]))) // NAT64
        || (seg[0] == 0x2002 && forbidden_v4(embedded_v4(seg[1], seg[2]))) // 6to4
        || (seg[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

/// Client configurations per ALPN offer, the override table, and counters.
pub(crate) struct UpstreamClient {
    roots: Arc<RootCertStore>,
    configs: Mutex<HashMap<Vec<Vec<u8>>, Arc<ClientConfig>>>,
    overrides: HashMap<Host, SocketAddr>,
    connect_timeout: Duration,
    /// What each host's upstream chose last time (true = h2).
    alpn_seen: Mutex<HashMap<Host, bool>>,
    pub(crate) connections: AtomicU64,
}

impl UpstreamClient {
    pub(crate) fn new(cfg: &UpstreamConfig) -> Result<Self, ProxyError> {
        let mut roots = RootCertStore::empty();
        if cfg.platform_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for path in &cfg.extra_ca_files {
            let pem = std::fs::read(path).map_err(|source| ProxyError::ExtraRoots {
                path: path.clone(),
                source,
            })?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|source| ProxyError::ExtraRoots {
                    path: path.clone(),
                    source,
                })?;
                if roots.add(cert).is_ok() {
                    added += 1;
                }
            }
            if added == 0 {
                return Err(ProxyError::NoRootsInFile { path: path.clone() });
            }
        }
        let overrides = cfg
            .overrides
            .iter()
            .map(|(h, a)| match Host::parse(h) {
                Ok(host) => Ok((host, *a)),
                Err(_) => Err(ProxyError::BadOverride(h.clone())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            roots: Arc::new(roots),
            configs: Mutex::new(HashMap::new()),
            overrides,
            connect_timeout: cfg.connect_timeout,
            alpn_seen: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
        })
    }

    fn config(&self, alpn: Vec<Vec<u8>>) -> Result<Arc<ClientConfig>, ProxyError> {
        let mut map = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&alpn) {
            return Ok(c.clone());
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ProxyError::TlsConfig)?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.clone();
        let cfg = Arc::new(cfg);
        map.insert(alpn, cfg.clone());
        Ok(cfg)
    }

    /// What upstream chose for this host on an earlier connection.
    pub(crate) fn learned_h2(&self, host: &Host) -> Option<bool> {
        let seen = self.alpn_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(host).copied()
    }

    /// Resolve `host`, refusing non-public addresses unless overridden.
    pub(crate) async fn resolve(&self, host: &Host, port: u16) -> Result<SocketAddr, ProxyError> {
        if let Some(addr) = self.overrides.get(host) {
            return Ok(*addr);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|source| ProxyError::Resolve {
                host: host.to_string(),
                source,
            })?
            .collect();
        // Refuse if any answer is internal: a mixed answer is a rebinding trick.
        if let Some(bad) = addrs.iter().find(|a| is_forbidden_upstream(a.ip())) {
            return Err(ProxyError::ForbiddenUpstream {
                host: host.to_string(),
                addr: bad.ip(),
            });
        }
        addrs.first().copied().ok_or_else(|| ProxyError::Resolve {
            host: host.to_string(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        })
    }

    pub(crate) async fn connect_tcp(
        &self,
        host: &Host,
        port: u16,
    ) -> Result<TcpStream, ProxyError> {
        let addr = self.resolve(host, port).await?;
        let connect_err = |source| ProxyError::UpstreamConnect {
            host: host.to_string(),
            source,
        };
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProxyError::UpstreamTimeout {
                host: host.to_string(),
            })?
            .map_err(connect_err)?;
        self.connections.fetch_add(1, Ordering::Relaxed);
        tcp.set_nodelay(true).map_err(connect_err)?;
        Ok(tcp)
    }

    /// Connect with TLS offering `offer`; returns the stream and whether
    /// upstream chose h2.
    pub(crate) async fn connect_tls(
        &self,
        host: &Host,
        offer: AlpnOffer,
    ) -> Result<(TlsStream<TcpStream>, bool), ProxyError> {
        let tcp = self.connect_tcp(host, 443).await?;
        let tls_err = |source| ProxyError::UpstreamTls {
            host: host.to_string(),
            source,
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| tls_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let connector = TlsConnector::from(self.config(offer.protocols())?);
        let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| ProxyError::UpstreamTimeout {
                host: host.to_string(),
            })?
            .map_err(tls_err)?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if offer.h2 && offer.http11 {
            // Only a free choice teaches us the host's preference.
            let mut seen = self.alpn_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() < MAX_LEARNED_HOSTS || seen.contains_key(host) {
                seen.insert(host.clone(), h2);
            }
        }
        Ok((tls, h2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
        ] {
            let ip: IpAddr = ip.parse().expect("literal");
            assert!(is_forbidden_upstream(ip), "{ip} should be forbidden");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            let ip: IpAddr = ip.parse().expect("literal");
            assert!(!is_forbidden_upstream(ip), "{ip} should be allowed");
        }
    }

    #[tokio::test]
    async fn loopback_refused_unless_overridden() {
        let mut cfg = UpstreamConfig {
            platform_roots: false,
            ..Default::default()
        };
        let client = UpstreamClient::new(&cfg).expect("client");
        let localhost = Host::parse("localhost").expect("host");
        let err = client.resolve(&localhost, 443).await.expect_err("refused");
        assert!(matches!(err, ProxyError::ForbiddenUpstream { .. }), "{err}");
        cfg.overrides
            .insert("localhost".into(), "127.0.0.1:8443".parse().expect("addr"));
        let client = UpstreamClient::new(&cfg).expect("client");
        let addr = client.resolve(&localhost, 443).await.expect("allowed");
        assert_eq!(addr.port(), 8443);
    }

    /// Override keys are hosts too: one that is not (a port in it) stops
    /// the proxy from starting rather than never matching.
    #[test]
    fn an_override_that_is_not_a_host_name_is_refused() {
        let mut cfg = UpstreamConfig {
            platform_roots: false,
            ..Default::default()
        };
        cfg.overrides.insert(
            "united.com:443".into(),
            "127.0.0.1:8443".parse().expect("addr"),
        );
        let err = UpstreamClient::new(&cfg).err().expect("refused");
        assert!(matches!(err, ProxyError::BadOverride(_)), "{err}");
    }
}
