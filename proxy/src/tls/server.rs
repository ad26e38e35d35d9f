//! Sandbox-side TLS: server configurations (one per ALPN answer) whose
//! certificate resolver serves leaves from the session CA by SNI.

use std::sync::Arc;

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};

use super::ca::SessionCa;
use crate::ProxyError;

/// An application protocol the proxy speaks on either leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    H2,
    Http11,
}

impl Proto {
    pub(crate) fn alpn(self) -> &'static [u8] {
        match self {
            Proto::H2 => b"h2",
            Proto::Http11 => b"http/1.1",
        }
    }
}

/// The protocols a client offered that the proxy can carry, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct AlpnOffer {
    pub h2: bool,
    pub http11: bool,
    pub h2_first: bool,
}

impl AlpnOffer {
    pub(crate) fn from_client<'a>(protocols: Option<impl Iterator<Item = &'a [u8]>>) -> Self {
        let mut offer = AlpnOffer::default();
        for p in protocols.into_iter().flatten() {
            match p {
                b"h2" => {
                    offer.h2_first |= !offer.http11;
                    offer.h2 = true;
                }
                b"http/1.1" => offer.http11 = true,
                _ => {}
            }
        }
        offer
    }

    /// The list to send upstream, in the client's order.
    pub(crate) fn protocols(self) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        if self.h2 && self.h2_first {
            v.push(b"h2".to_vec());
        }
        if self.http11 {
            v.push(b"http/1.1".to_vec());
        }
        if self.h2 && !self.h2_first {
            v.push(b"h2".to_vec());
        }
        v
    }

    pub(crate) fn only_http11(self) -> Self {
        AlpnOffer {
            h2: false,
            http11: self.http11 || self.h2,
            h2_first: false,
        }
    }
}

#[derive(Debug)]
struct LeafResolver(Arc<SessionCa>);

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?.to_ascii_lowercase();
        self.0.leaf(&sni).ok()
    }
}

/// Server configurations sharing one resolver and one ticket key, differing
/// only in the single ALPN protocol they will agree to.
///
/// Handshake cost on the sandbox leg: classical X25519 instead of the
/// X25519+ML-KEM hybrid (this leg never leaves the host, so a post-quantum
/// share buys nothing here; upstream keeps the provider's defaults), the
/// cheapest TLS 1.3 suite first, and one
/// stateless session ticket per handshake lets a client that resumes skip
/// the certificate signature.
pub(crate) struct ServerConfigs {
    h2: Arc<ServerConfig>,
    http11: Arc<ServerConfig>,
    none: Arc<ServerConfig>,
}

impl ServerConfigs {
    pub(crate) fn new(ca: Arc<SessionCa>) -> Result<Self, ProxyError> {
        let resolver = Arc::new(LeafResolver(ca));
        use rustls::crypto::aws_lc_rs::kx_group;
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        // rustls follows the client's order among the groups it supports.
        provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
        // AES-128-GCM/SHA-256 first, chosen over the client's order: its key
        // schedule runs on SHA-NI; SHA-384's was a tenth of a handshake's CPU.
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let provider = Arc::new(provider);
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(ProxyError::TlsConfig)?;
        let make = |alpn: Option<Proto>| -> Result<Arc<ServerConfig>, ProxyError> {
            let mut cfg = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(ProxyError::TlsConfig)?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            cfg.alpn_protocols = alpn.map(|p| vec![p.alpn().to_vec()]).unwrap_or_default();
            cfg.ticketer = ticketer.clone();
            cfg.ignore_client_order = true;
            cfg.send_tls13_tickets = 1;
            Ok(Arc::new(cfg))
        };
        Ok(Self {
            h2: make(Some(Proto::H2))?,
            http11: make(Some(Proto::Http11))?,
            none: make(None)?,
        })
    }

    pub(crate) fn for_answer(&self, answer: Option<Proto>) -> Arc<ServerConfig> {
        match answer {
            Some(Proto::H2) => self.h2.clone(),
            Some(Proto::Http11) => self.http11.clone(),
            None => self.none.clone(),
        }
    }
}

/// The ALPN answer to give the sandbox: what upstream chose last time for
/// this host when known (so both legs usually match), else the client's
/// preference. Whatever the legs end up speaking, the proxy translates.
pub(crate) fn choose_answer(offer: AlpnOffer, upstream_h2: Option<bool>) -> Option<Proto> {
    match (offer.h2, offer.http11, upstream_h2) {
        (false, false, _) => None,
        (true, false, _) => Some(Proto::H2),
        (false, true, _) => Some(Proto::Http11),
        (true, true, Some(true)) => Some(Proto::H2),
        (true, true, Some(false)) => Some(Proto::Http11),
        (true, true, None) if offer.h2_first => Some(Proto::H2),
        (true, true, None) => Some(Proto::Http11),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_keeps_client_order_and_drops_unknown_protocols() {
        let offered: [&[u8]; 3] = [b"spdy/3", b"http/1.1", b"h2"];
        let offer = AlpnOffer::from_client(Some(offered.into_iter()));
        assert_eq!(
            offer.protocols(),
            vec![b"http/1.1".to_vec(), b"h2".to_vec()]
        );
        let offered: [&[u8]; 2] = [b"h2", b"http/1.1"];
        let offer = AlpnOffer::from_client(Some(offered.into_iter()));
        assert_eq!(
            offer.protocols(),
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(offer.only_http11().protocols(), vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn answer_follows_upstream_when_known() {
        let both = AlpnOffer {
            h2: true,
            http11: true,
            h2_first: true,
        };
        assert_eq!(choose_answer(both, None), Some(Proto::H2));
        assert_eq!(choose_answer(both, Some(false)), Some(Proto::Http11));
        assert_eq!(choose_answer(AlpnOffer::default(), Some(true)), None);
    }
}
