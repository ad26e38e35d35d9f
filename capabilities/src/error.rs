//! The crate's one error type, [`CapabilityError`], named by the stage that failed.

/// Why a policy, token or key could not be used. Authorization itself never
/// errors: it blocks, with a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// The policy text is not valid TOML for the policy schema.
    #[error("policy: {0}")]
    PolicyParse(String),
    /// The policy parsed but a value is not acceptable.
    #[error("policy: {0}")]
    PolicyInvalid(String),
    /// A key is not a 32-byte ed25519 key.
    #[error("key: {0}")]
    Key(String),
    /// The token text is not a biscuit token.
    #[error("token format: {0}")]
    Format(String),
    /// The token's signature chain does not verify against the root key.
    #[error("token signature does not verify against the root public key: {0}")]
    Signature(String),
    /// One of the token's blocks is on the revocation list.
    #[error("token revoked (revocation id {id})")]
    Revoked { id: String },
    /// The token is sealed: nothing can be appended.
    #[error("token is sealed and cannot be attenuated")]
    Sealed,
    /// Building the token's datalog failed (a bug if it ever happens).
    #[error("datalog: {0}")]
    Datalog(String),
}
