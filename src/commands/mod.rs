//! One module per subcommand; each is a thin adapter over the library crates.

pub mod approve;
pub mod audit;
pub mod cap;
pub mod demo;
pub mod doctor;
pub mod image;
pub mod keygen;
pub mod recover;
pub mod report;
pub mod run;
pub mod secrets;
pub mod serve;
pub mod tenants;
pub mod ui;
pub mod usage;
pub mod verify;

/// Generic failure (bad input, I/O). Commands with richer codes document their own.
pub const EXIT_FAILURE: u8 = 1;
