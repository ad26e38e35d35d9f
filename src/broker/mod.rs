//! The credential broker: a tenant's secrets kept encrypted at rest under
//! `<tenant root>/secrets/`, with a key only the daemon's user reads
//! (`<home>/keys/secrets.key`), set and removed with one audit line each,
//! and resolved into a session's secrets file when a session names them
//! (`docs/credentials.md`, "Tenant secrets").

/// The at-rest key: `<home>/keys/secrets.key`, made on first use.
mod key;
/// One tenant's encrypted secrets: set, list, remove, resolve.
mod vault;

pub use vault::{has_secret, BrokerError, SecretFields, TenantSecrets};
