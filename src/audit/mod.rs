//! The audit log of the control plane: `<home>/audit.jsonl`, one JSON line
//! per state change (who, which tenant, what, on what, which request, how it
//! ended), appended and fsynced before the change is answered; tokens never
//! appear in it (`docs/control-plane.md`).

/// Appending (one fsynced write per line) and reading back with filters.
mod log;
/// The line format: [`AuditRecord`], its actor and outcome.
mod record;
/// The line of a session's end.
mod session;

pub use log::{parse_since, AuditFilter, AuditLog, AuditTable};
pub use record::{Actor, AuditRecord, Outcome, Via};
pub use session::SessionEnd;

/// A fresh request id: 16 hex characters from the OS RNG.
pub fn new_request_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}
