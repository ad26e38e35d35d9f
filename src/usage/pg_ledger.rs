//! The usage ledger in the control plane's PostgreSQL database (`openclaw
//! serve --database`): the `usage` table (schema in tenants/postgres.rs),
//! the same rows and keys as ledger.db, so every host's sessions land in
//! one ledger and every daemon's `GET /v1/usage` reads it. The connection
//! is a [`PgStore`]'s: its own thread, safe from any caller.

use std::sync::Arc;

use anyhow::Result;

use super::ledger::{GroupRow, UsageLedger, UsageRow};
use crate::tenants::{postgres_error as db, DatabaseUrl, PgStore, TenantStoreError};

/// A handle on the database's ledger; clones share its connection.
#[derive(Clone)]
pub struct PgLedger {
    store: Arc<PgStore>,
}

/// PostgreSQL integers are signed 64-bit: a figure past that (never real)
/// is refused rather than wrapped, as in ledger.db.
fn int(n: u64) -> Result<i64, TenantStoreError> {
    i64::try_from(n).map_err(|_| TenantStoreError::Backend("a usage figure exceeds 2^63".into()))
}

const INSERT: &str = "INSERT INTO usage (session, seq, ts, day, tenant, \"user\", provider, api,
        model, response_id, tokens_input, tokens_cached_input, tokens_cache_write_5m,
        tokens_cache_write_1h, tokens_output, tokens_reasoning, cost_micro_usd,
        reserved_micro_usd, card_sha256, estimated, decision_seq)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
        $19, $20, $21)
     ON CONFLICT (session, seq) DO NOTHING";

/// Writes `rows` in `tx`; how many were new.
fn insert_rows(
    tx: &mut postgres::Transaction<'_>,
    rows: &[UsageRow],
) -> Result<usize, TenantStoreError> {
    let stmt = tx.prepare(INSERT).map_err(db)?;
    let mut added = 0;
    for row in rows {
        let u = &row.record;
        let t = &u.tokens;
        added += tx
            .execute(
                &stmt,
                &[
                    &row.session,
                    &int(row.seq)?,
                    &row.ts,
                    &row.day(),
                    &row.tenant,
                    &row.user,
                    &u.provider,
                    &u.api,
                    &u.model,
                    &u.response_id,
                    &int(t.input)?,
                    &int(t.cached_input)?,
                    &int(t.cache_write_5m)?,
                    &int(t.cache_write_1h)?,
                    &int(t.output)?,
                    &int(t.reasoning)?,
                    &int(u.cost_micro_usd)?,
                    &int(u.reserved_micro_usd)?,
                    &u.rates.card_sha256,
                    &i64::from(u.estimated),
                    &int(u.decision_seq)?,
                ],
            )
            .map_err(db)?;
    }
    usize::try_from(added).map_err(|_| TenantStoreError::Backend("row count".into()))
}

impl PgLedger {
    /// Connects (creating or migrating the schema). The URL's password is
    /// in no error.
    pub fn open(url: &DatabaseUrl) -> Result<PgLedger> {
        Ok(PgLedger {
            store: Arc::new(PgStore::open(url)?),
        })
    }

    /// Replaces every row by `rows` in one transaction (`openclaw usage
    /// rebuild --database`): readers see the old ledger or the new one,
    /// never a part. Returns how many rows it now holds.
    pub fn replace_all(&mut self, rows: Vec<UsageRow>) -> Result<usize> {
        Ok(self.store.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            tx.execute("DELETE FROM usage", &[]).map_err(db)?;
            let added = insert_rows(&mut tx, &rows)?;
            tx.commit().map_err(db)?;
            Ok(added)
        })?)
    }
}

impl UsageLedger for PgLedger {
    fn insert(&mut self, rows: &[UsageRow]) -> Result<usize> {
        let rows = rows.to_vec();
        Ok(self.store.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            let added = insert_rows(&mut tx, &rows)?;
            tx.commit().map_err(db)?;
            Ok(added)
        })?)
    }

    fn grouped(
        &self,
        sql: &str,
        keys: usize,
        from: &str,
        to: &str,
        tenant: Option<&str>,
    ) -> Result<Vec<GroupRow>> {
        let (sql, from, to, tenant) = (
            sql.to_owned(),
            from.to_owned(),
            to.to_owned(),
            tenant.map(str::to_owned),
        );
        let found = self
            .store
            .call(move |c| c.query(&sql, &[&from, &to, &tenant]).map_err(db))?;
        Ok(found
            .into_iter()
            .map(|r| {
                let key_values = (0..keys).map(|i| r.get::<_, String>(i)).collect();
                let mut sums = [0i64; 8];
                for (i, sum) in sums.iter_mut().enumerate() {
                    *sum = r.get::<_, Option<i64>>(keys + i).unwrap_or(0);
                }
                (key_values, sums)
            })
            .collect())
    }
}
