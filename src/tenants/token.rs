//! Bearer tokens of `openclaw serve`: tenant tokens `tk_<name>_<32 hex>` and
//! the admin token `tkadm_<32 hex>`, 128 bits from the OS RNG each. Only
//! their SHA-256 is ever stored; comparisons run in constant time over the
//! hashes, so neither a stored hash nor the timing of a refusal tells an
//! attacker how much of a guess was right.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::name::TenantName;

/// Prefix of a tenant token (then the tenant's name, `_`, the secret).
const TENANT_PREFIX: &str = "tk_";
/// Prefix of the admin token. Not `tk_admin_`: that would be a tenant
/// named `admin`.
const ADMIN_PREFIX: &str = "tkadm_";
/// Random bytes per token (hex-encoded: 32 characters).
const SECRET_BYTES: usize = 16;

/// SHA-256 of a token: what the store keeps. Equality is constant-time.
#[derive(Clone, Copy)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time equality: every byte is compared whatever differs first.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for TokenHash {
    // A hash is not the token, but it still does not belong in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

fn secret_hex() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new token for `name`: `tk_<name>_<32 hex>`.
pub fn new_tenant_token(name: &TenantName) -> String {
    format!("{TENANT_PREFIX}{name}_{}", secret_hex())
}

/// A new admin token: `tkadm_<32 hex>`.
pub fn new_admin_token() -> String {
    format!("{ADMIN_PREFIX}{}", secret_hex())
}

/// What a presented token claims to be, from its shape alone (nothing is
/// trusted until its hash matched the stored one).
#[derive(Debug, PartialEq, Eq)]
pub enum Claimed {
    Admin,
    Tenant(TenantName),
}

/// Reads the claim of a well-formed token; `None` for anything else.
pub fn claimed(token: &str) -> Option<Claimed> {
    if let Some(secret) = token.strip_prefix(ADMIN_PREFIX) {
        return is_secret(secret).then_some(Claimed::Admin);
    }
    let rest = token.strip_prefix(TENANT_PREFIX)?;
    // Names hold no '_', so the last '_' ends the name.
    let (name, secret) = rest.rsplit_once('_')?;
    if !is_secret(secret) {
        return None;
    }
    TenantName::parse(name).ok().map(Claimed::Tenant)
}

fn is_secret(text: &str) -> bool {
    text.len() == SECRET_BYTES * 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_their_documented_shape_and_claim() {
        let acme = TenantName::parse("acme-2").expect("name");
        let token = new_tenant_token(&acme);
        assert!(token.starts_with("tk_acme-2_"), "{token}");
        assert_eq!(token.len(), "tk_acme-2_".len() + 32);
        assert_eq!(claimed(&token), Some(Claimed::Tenant(acme.clone())));
        assert_ne!(new_tenant_token(&acme), token, "fresh randomness each time");
        let admin = new_admin_token();
        assert_eq!(claimed(&admin), Some(Claimed::Admin));
        for bad in [
            "",
            "tk_",
            "tk_acme_",
            "tk_acme_0123",
            "tk_ACME_0123456789abcdef0123456789abcdef",
            "tk_../x_0123456789abcdef0123456789abcdef",
            "tk_acme_0123456789ABCDEF0123456789ABCDEF",
            "tkadm_xyz",
            "Bearer tk_acme_0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(claimed(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hashes_match_only_the_same_token() {
        let a = TokenHash::of("tk_a_0123456789abcdef0123456789abcdef");
        let same = TokenHash::of("tk_a_0123456789abcdef0123456789abcdef");
        let other = TokenHash::of("tk_a_0123456789abcdef0123456789abcdee");
        assert!(a.matches(&same));
        assert!(!a.matches(&other));
        assert_eq!(format!("{a:?}"), "TokenHash(..)");
    }
}
