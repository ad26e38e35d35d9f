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
