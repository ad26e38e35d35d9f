//! The per-session CA (ECDSA P-256) and the cache of leaf certificates it
//! mints, one fresh key per host, each minted once per session.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};
use time::{Duration, OffsetDateTime};

use crate::ProxyError;

/// The CA is valid for a week: longer than any session, short enough that a
/// leaked session CA is soon useless (it is also trusted by one guest only).
const CA_VALIDITY: Duration = Duration::days(7);
/// Leaves live for a day; backdated an hour for guest clock skew.
const LEAF_VALIDITY: Duration = Duration::days(1);
const BACKDATE: Duration = Duration::hours(1);
/// Bound on distinct hosts per session, so a guest cannot grow the cache
/// without limit; past it, leaves are minted but not kept.
const MAX_CACHED_LEAVES: usize = 4096;

type LeafSlot = Arc<OnceLock<Option<Arc<CertifiedKey>>>>;

/// A session's certificate authority. The guest trusts [`SessionCa::cert_pem`].
pub struct SessionCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    leaves: Mutex<HashMap<String, LeafSlot>>,
    mints: AtomicU64,
    hits: AtomicU64,
}

impl std::fmt::Debug for SessionCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCa").finish_non_exhaustive()
    }
}

impl SessionCa {
    /// Generate a fresh CA key and self-signed certificate.
    pub fn generate(session: &str) -> Result<Self, ProxyError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(ProxyError::CaGenerate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "openclaw");
        dn.push(DnType::CommonName, format!("openclaw session {session} CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(ProxyError::CaGenerate)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(Self {
            cert,
            key,
            cert_pem,
            cert_der,
            leaves: Mutex::new(HashMap::new()),
            mints: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        })
    }

    /// The CA certificate, PEM; install it in the sandbox's trust store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Leaves minted so far (cache misses).
    pub fn leaves_minted(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// Leaf lookups served from the cache.
    pub fn leaf_cache_hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// The leaf for `host` (lowercased DNS name or IP literal), minted on
    /// first use. Concurrent first requests for one host mint once: the
    /// others wait on the same slot.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, ProxyError> {
        let slot = {
            let mut map = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(host) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = LeafSlot::default();
                    if map.len() < MAX_CACHED_LEAVES {
                        map.insert(host.to_owned(), slot.clone());
                    }
                    slot
                }
            }
        };
        let mut minted_here = None;
        let mut fresh = false;
        let leaf = slot.get_or_init(|| {
            fresh = true;
            self.mints.fetch_add(1, Ordering::Relaxed);
            match self.mint(host) {
                Ok(leaf) => Some(Arc::new(leaf)),
                Err(e) => {
                    minted_here = Some(e);
                    None
                }
            }
        });
        if let Some(e) = minted_here {
            return Err(e);
        }
        match leaf {
            Some(leaf) => {
                if !fresh {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                }
                Ok(leaf.clone())
            }
            None => Err(ProxyError::LeafUnavailable {
                host: host.to_owned(),
            }),
        }
    }

    fn mint(&self, host: &str) -> Result<CertifiedKey, ProxyError> {
        let mint_err = |source| ProxyError::LeafMint {
            host: host.to_owned(),
            source,
        };
        // A fresh key per leaf: the CA key never signs TLS handshakes.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(mint_err)?;
        let mut params = CertificateParams::default();
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.to_owned().try_into().map_err(mint_err)?),
        };
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(mint_err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
            .map_err(ProxyError::LeafKey)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signer,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{
        client::{danger::ServerCertVerifier, WebPkiServerVerifier},
        pki_types::{ServerName, UnixTime},
        RootCertStore,
    };

    fn verify(ca: &SessionCa, leaf: &CertifiedKey, name: &str) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).expect("add root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &leaf.cert[1..],
                &ServerName::try_from(name.to_owned()).expect("name"),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn leaves_chain_to_the_session_ca_with_their_own_keys() {
        let ca = SessionCa::generate("t").expect("ca");
        let a = ca.leaf("a.example.com").expect("leaf a");
        let b = ca.leaf("b.example.com").expect("leaf b");
        let ip = ca.leaf("192.0.2.7").expect("leaf ip");
        verify(&ca, &a, "a.example.com").expect("a validates");
        verify(&ca, &b, "b.example.com").expect("b validates");
        verify(&ca, &ip, "192.0.2.7").expect("IP SAN validates");
        // Names are bound: a's leaf is no good for b.
        assert!(verify(&ca, &a, "b.example.com").is_err());
        // Another session's CA does not vouch for these leaves.
        let other = SessionCa::generate("u").expect("other ca");
        assert!(verify(&other, &a, "a.example.com").is_err());
        let spki = |k: &CertifiedKey| k.key.public_key().expect("spki").as_ref().to_vec();
        assert_ne!(spki(&a), spki(&b), "one key per leaf");
        assert_ne!(
            spki(&a),
            ca.key.public_key_der(),
            "CA key never used as a leaf key"
        );
        assert_ne!(spki(&b), ca.key.public_key_der());
    }

    #[test]
    fn second_lookup_hits_the_cache() {
        let ca = SessionCa::generate("t").expect("ca");
        let first = ca.leaf("a.example.com").expect("leaf");
        let again = ca.leaf("a.example.com").expect("leaf");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!((ca.leaves_minted(), ca.leaf_cache_hits()), (1, 1));
    }

    #[test]
    fn concurrent_first_requests_mint_once() {
        let ca = Arc::new(SessionCa::generate("t").expect("ca"));
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let leaves: Vec<Arc<CertifiedKey>> = (0..16)
            .map(|_| {
                let (ca, barrier) = (ca.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    ca.leaf("same.example.com").expect("leaf")
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        assert_eq!(ca.leaves_minted(), 1);
        assert!(leaves.iter().all(|l| Arc::ptr_eq(l, &leaves[0])));
    }
}
