//! Benchmark: ledger rows written per second, as openclaw writes them —
//! live, one row per settled LLM call, each its own transaction in the WAL
//! ledger (`synchronous = NORMAL`: a commit is not fsynced, a checkpoint
//! is; the receipt chain is the durable record), as the binary's
//! `src/usage/live.rs` does; and in batches of one session's rows into a
//! fresh ledger without a journal, as `openclaw usage rebuild` does.
//!
//!     cargo bench -p usage-ledger --bench ledger
//!
//! Measured (2026-12-03, session 8, release, three runs, load average 3.8
//! on 2 cores shared with other builds, /tmp on the root disk): live
//! 8,150-8,310 rows/s (~121 µs a row); rebuild 64,900-73,000 rows/s.

use std::time::{Duration, Instant};

use receipts::{ModelPrice, RateSnapshot, UsageRecord, UsageTokens};
use usage_ledger::{Ledger, UsageRow, LEDGER_FILE};

const LIVE_ROWS: u64 = 5_000;
const REBUILD_SESSIONS: u64 = 100;
const ROWS_PER_SESSION: u64 = 500;

fn row(session: u64, seq: u64) -> UsageRow {
    UsageRow {
        session: format!("2026-12-03T22-00-00Z-{session:08x}"),
        seq,
        ts: "2026-12-03T22:00:00.123456Z".into(),
        tenant: "acme".into(),
        user: "dev".into(),
        record: UsageRecord {
            decision_seq: seq - 1,
            provider: "api.openai.com".into(),
            api: "openai.chat".into(),
            model: "gpt-4o-mini".into(),
            response_id: Some(format!("chatcmpl-{session}-{seq}")),
            tokens: UsageTokens {
                input: 87,
                cached_input: 1920,
                output: 300,
                ..UsageTokens::default()
            },
            rates: RateSnapshot {
                card_sha256: receipts::sha256_hex(b"rates"),
                price: ModelPrice {
                    model: "gpt-4o-mini".into(),
                    input: 150_000,
                    cached_input: 75_000,
                    output: 600_000,
                    ..ModelPrice::default()
                },
            },
            cost_micro_usd: 206,
            reserved_micro_usd: 3_000,
            estimated: false,
        },
    }
}

fn per_second(rows: u64, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Live: one row, one transaction, as each call settles.
    let rows: Vec<UsageRow> = (0..LIVE_ROWS).map(|i| row(i % 8, 2 + i)).collect();
    let mut live = Ledger::open(&dir.path().join(LEDGER_FILE)).expect("open");
    let start = Instant::now();
    for r in &rows {
        assert_eq!(live.insert(std::slice::from_ref(r)).expect("insert"), 1);
    }
    let live_time = start.elapsed();
    drop(live);

    // Rebuild: one transaction per session's chain, no journal.
    let mut fresh = Ledger::create_fresh(&dir.path().join("fresh.db")).expect("create");
    let sessions: Vec<Vec<UsageRow>> = (0..REBUILD_SESSIONS)
        .map(|s| (0..ROWS_PER_SESSION).map(|i| row(s, 2 + i)).collect())
        .collect();
    let start = Instant::now();
    for session in &sessions {
        fresh.insert(session).expect("insert");
    }
    let rebuild_time = start.elapsed();
    let rebuilt = REBUILD_SESSIONS * ROWS_PER_SESSION;

    println!("usage ledger rows written:");
    println!(
        "  live (1 row/transaction, WAL)      {:>10.0} rows/s ({:.1} µs/row, {LIVE_ROWS} rows)",
        per_second(LIVE_ROWS, live_time),
        live_time.as_secs_f64() * 1e6 / LIVE_ROWS as f64
    );
    println!(
        "  rebuild ({ROWS_PER_SESSION} rows/transaction, no journal) {:>10.0} rows/s ({rebuilt} rows)",
        per_second(rebuilt, rebuild_time)
    );
}
