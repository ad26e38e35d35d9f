//! LLM usage beyond one session: the ledger (`<home>/ledger.db`), its
//! rebuild from the receipt chains, and the usage reports
//! (`docs/metering.md`).

/// The SQLite ledger (the `usage-ledger` crate) with anyhow errors.
pub mod ledger;
/// Which store keeps the ledger (SQLite file or PostgreSQL).
pub mod ledger_db;
/// Ledger rows while a session runs, from its usage events.
pub mod live;
/// The ledger in the control plane's PostgreSQL database.
mod pg_ledger;
/// Chains to ledger rows: at a session's end and for a whole rebuild.
pub mod rebuild;
/// Sums over periods and keys; table, CSV and JSON.
pub mod report;

pub use ledger_db::{LedgerDb, LedgerReader};
pub use rebuild::{ledger_path, rebuild_into, record_session, ChainSource};

/// Micro-USD as an exact decimal dollar amount: `18375` → `0.018375`.
pub fn format_usd(micro: u64) -> String {
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_exact() {
        assert_eq!(format_usd(0), "0.000000");
        assert_eq!(format_usd(18_375), "0.018375");
        assert_eq!(format_usd(12_000_001), "12.000001");
        assert_eq!(format_usd(u64::MAX), "18446744073709.551615");
    }
}
