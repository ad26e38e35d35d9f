//! Capability tokens for openclaw: a human-readable policy becomes an
//! attenuable biscuit token, and every action an agent attempts is decided
//! against it by [`Capability::authorize`].
//!
//! The public interface is:
//! - [`Action`] and [`Counters`]: the facts of one request and of the session so far;
//! - [`Decision`] and [`Verdict`]: what the token says about them;
//!
//! Biscuit types stay inside this crate so an upgrade touches only here.
#![forbid(unsafe_code)]

mod action;

pub use action::{Action, ActionType, Counters, Decision, Verdict};
