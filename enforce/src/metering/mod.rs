//! LLM metering: what a call costs. The rate card lives here so the proxy
//! side and the binary read prices the same way.

/// The operator's rate card: `rates.toml`, built-in defaults, hashing.
pub mod rates;

pub use rates::{ModelMatch, RateCard, RateCardError, RateEntry, BUILTIN_AS_OF};
