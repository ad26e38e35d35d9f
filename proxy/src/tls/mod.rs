//! TLS on both sides: the session CA and its leaf cache (sandbox side), the
//! upstream client with its roots and address policy (internet side).
//!
//! There is no `danger` module: the only upstream override is adding trust
//! roots (extra CA files for tests and the offline demo), which weakens
//! nothing. Disabling verification is deliberately not offered.

pub(crate) mod ca;
pub(crate) mod server;
pub(crate) mod upstream;
