//! One agent session: its bundle on disk, its network, proxy, sandbox and
//! receipts, from start to the report.

mod approval_prompt;
pub mod backend;
pub mod bundle;
mod console;
pub mod control;
mod enforcement;
pub mod kvm;
mod monitor;
pub mod runner;
