//! The ledger file: idempotent writes, its journal modes, a schema version
//! or a figure it cannot hold refused.

use receipts::{ModelPrice, RateSnapshot, UsageRecord, UsageTokens};

use super::*;

fn row(session: &str, seq: u64) -> UsageRow {
    UsageRow {
        session: session.into(),
        seq,
        ts: "2026-12-03T22:00:00Z".into(),
        tenant: "local".into(),
        user: "dev".into(),
        record: UsageRecord {
            decision_seq: seq - 1,
            provider: "api.openai.com".into(),
            api: "openai.chat".into(),
            model: "gpt-4o-mini".into(),
            response_id: Some(format!("chatcmpl-{seq}")),
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
                    ..ModelPrice::default()
                },
            },
            cost_micro_usd: 206,
            reserved_micro_usd: 3_000,
            estimated: false,
        },
    }
}

fn count(ledger: &Ledger) -> i64 {
    ledger
        .conn()
        .query_row("SELECT COUNT(*) FROM usage", [], |r| r.get(0))
        .expect("count")
}

fn journal(ledger: &Ledger) -> String {
    ledger
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode")
}

#[test]
fn writing_a_sessions_rows_twice_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LEDGER_FILE);
    let mut ledger = Ledger::open(&path).expect("open");
    assert_eq!(journal(&ledger), "wal");
    let rows: Vec<UsageRow> = (2..5).map(|seq| row("s1", seq)).collect();
    assert_eq!(ledger.insert(&rows).expect("insert"), 3);
    assert_eq!(ledger.insert(&rows).expect("again"), 0);
    assert_eq!(ledger.insert(&[row("s2", 2)]).expect("other session"), 1);
    drop(ledger);
    let read = Ledger::open_read_only(&path).expect("read only");
    assert_eq!(count(&read), 4);
    let (day, cost): (String, i64) = read
        .conn()
        .query_row(
            "SELECT day, cost_micro_usd FROM usage WHERE session = 's2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row");
    assert_eq!((day.as_str(), cost), ("2026-12-03", 206));
}

#[test]
fn a_rebuild_ledger_has_no_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fresh.db");
    let mut ledger = Ledger::create_fresh(&path).expect("create");
    assert_eq!(journal(&ledger), "off");
    assert_eq!(ledger.insert(&[row("s", 2)]).expect("insert"), 1);
    drop(ledger);
    assert_eq!(count(&Ledger::open_read_only(&path).expect("read")), 1);
}

#[test]
fn another_schema_version_is_refused_naming_the_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LEDGER_FILE);
    let ledger = Ledger::open(&path).expect("open");
    ledger
        .conn()
        .execute_batch("PRAGMA user_version = 7;")
        .expect("version");
    drop(ledger);
    for opened in [Ledger::open(&path), Ledger::open_read_only(&path)] {
        let err = opened.err().expect("refused");
        assert!(
            matches!(err, LedgerError::Version { version: 7, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("openclaw usage rebuild"), "{err}");
    }
    // Not a database at all.
    std::fs::write(&path, b"not sqlite, not at all, definitely not").expect("write");
    let _ = std::fs::remove_file(dir.path().join("ledger.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("ledger.db-shm"));
    let err = Ledger::open(&path).err().expect("refused");
    assert!(matches!(err, LedgerError::Damaged { .. }), "{err}");
}

#[test]
fn a_figure_past_sqlites_integers_is_refused_and_nothing_of_the_batch_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = Ledger::open(&dir.path().join(LEDGER_FILE)).expect("open");
    let mut big = row("s", 3);
    big.record.cost_micro_usd = u64::MAX;
    let err = ledger.insert(&[row("s", 2), big]).expect_err("refused");
    assert!(matches!(err, LedgerError::TooLarge(_)), "{err}");
    assert_eq!(count(&ledger), 0);
}
