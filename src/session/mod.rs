//! One agent session: its network, proxy, sandbox and receipts, from start
//! to the report. `config` is shared by every file here; `runner` is the
//! lifecycle and the only file that ties the others together.

/// The approval prompt on the operator's terminal.
mod approval_prompt;
/// The isolation backends: which one, and running the command in it.
pub mod backends;
/// What every session file shares: the run configuration, exit codes, the shutdown signal.
pub mod config;
/// The command's output, shown made visible and kept raw in `console.log`.
pub(crate) mod console;
/// The session's enforcement point: catalog, secrets, approvals, the gate.
mod enforcement;
/// The live monitor on the terminal and `events.jsonl`.
mod monitor;
/// Recovery after a supervisor died: host leftovers removed, its sessions
/// closed as interrupted.
pub mod recovery;
/// The lifecycle: bundle, network, receipts, proxy, backend, teardown, report.
pub mod runner;
/// The operator's terminal: agent text made visible, the prompt's hold.
pub(crate) mod screen;
/// Terminals for tests: one that records, one that stalls.
#[cfg(test)]
mod test_terminal;
