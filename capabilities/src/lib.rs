//! Capability tokens for openclaw: a human-readable policy becomes an
//! attenuable biscuit token, and every action an agent attempts is decided
//! against it by [`Capability::authorize`].
//!
//! The public interface is:
//! - [`Policy`]: the policy file (`Policy::from_toml_str`), also used for narrowing;
//! - [`mint`]: policy + root private key → base64 token;
//! - [`UnverifiedToken`]: a parsed token; `verify` turns it into a [`Capability`];
//! - [`Capability`]: `authorize`, `authorize_dns`, `credential_allowed`,
//!   `names_llm_provider`, `attenuate`, `seal`, `revocation_ids`, `expires_at`,
//!   `summary`;
//! - [`Action`] and [`Counters`]: the facts of one request and of the session so far;
//! - [`Decision`] and [`Verdict`]: what the token says about them;
//! - [`Summary`]: the "4 grants, 2 constraints" view;
//! - [`Host`] and [`HostPattern`]: the one reading of a host name that every
//!   crate compares, and a grant's `*.` wildcard ([`HostError`]);
//! - [`path`]: the one reading of a request path ([`check_path`] refuses the
//!   spellings servers route differently; [`path_readings`] for the catalog);
//! - [`CapabilityError`].
//!
//! Biscuit types stay inside this crate so an upgrade touches only here.
//! The datalog design is in `docs/capabilities.md`.
#![forbid(unsafe_code)]

/// Action, counters and decision types (the JSON formats).
mod action;
/// Deciding an action against a verified token.
mod authorize;
/// Policy → datalog blocks, and block records read back.
mod datalog;
/// The crate's error.
mod error;
/// Host names and `*.` host patterns, parsed once.
mod host;
/// Request paths: refused spellings, routing readings, canonical form.
pub mod path;
/// The policy file schema.
pub mod policy;
/// Minting, verification, attenuation, sealing, summaries.
mod token;
/// The token's datalog loaded once per capability; per-request checks.
mod world;

pub use action::{Action, ActionType, Counters, Decision, Verdict};
pub use error::CapabilityError;
pub use host::{Host, HostError, HostPattern};
pub use path::{check_path, path_readings, PathError};
pub use policy::Policy;
pub use token::{mint, Capability, Summary, UnverifiedToken};
