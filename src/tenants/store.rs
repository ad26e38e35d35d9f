//! The `Store` trait: what the control plane keeps outside the tenants'
//! directories (tenants and their token hashes, the admin token hash), so
//! the same daemon can run on SQLite (one host) or on a shared database.
//!
//! What any implementation must keep (a PostgreSQL one included):
//! - names are compared exactly (byte-wise, no collation or case folding;
//!   `TenantName` is already lower case);
//! - `insert_tenant` is atomic: of two concurrent inserts of one name, one
//!   gets `TenantExists` (a unique key, not a read-then-write);
//! - `replace_tenant_token` and `delete_tenant` take effect for every reader
//!   as soon as they return (no cache in front of the hash: a rotated token
//!   is refused at once, on every host);
//! - only hashes are stored, as 32 raw bytes; the store never sees a token;
//! - times are RFC 3339 UTC strings as given (no server-side clock).

use super::name::TenantName;
use super::token::TokenHash;

/// One tenant as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TenantRecord {
    pub name: TenantName,
    pub created_at: String,
    /// When its current token was issued (creation or last rotation).
    pub token_issued_at: String,
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantStoreError {
    #[error("tenant {0} already exists")]
    TenantExists(TenantName),
    #[error("no tenant {0}")]
    NoSuchTenant(TenantName),
    #[error("control-plane storage: {0}")]
    Backend(String),
}

/// Tenants, token hashes and (later) quotas, whatever holds them.
pub trait Store: Send + Sync {
    /// A cheap round trip proving the storage answers (readiness).
    fn ping(&self) -> Result<(), TenantStoreError>;
    fn insert_tenant(
        &self,
        name: &TenantName,
        token: &TokenHash,
        at: &str,
    ) -> Result<(), TenantStoreError>;
    /// Every tenant, by name.
    fn tenants(&self) -> Result<Vec<TenantRecord>, TenantStoreError>;
    fn tenant_token(&self, name: &TenantName) -> Result<Option<TokenHash>, TenantStoreError>;
    fn replace_tenant_token(
        &self,
        name: &TenantName,
        token: &TokenHash,
        at: &str,
    ) -> Result<(), TenantStoreError>;
    fn delete_tenant(&self, name: &TenantName) -> Result<(), TenantStoreError>;
    fn admin_token(&self) -> Result<Option<TokenHash>, TenantStoreError>;
    /// Sets (or replaces) the one admin token.
    fn set_admin_token(&self, token: &TokenHash, at: &str) -> Result<(), TenantStoreError>;
}
