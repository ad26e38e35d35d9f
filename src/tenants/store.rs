//! The `Store` trait: what the control plane keeps outside the tenants'
//! directories (tenants and their token hashes, the admin token hash), so
//! the same daemon can run on SQLite (one host) or on a shared database.
//!
//! What any implementation must keep (a PostgreSQL one included):
//! - names are compared exactly (byte-wise, no collation or case folding;
//!   `TenantName` is already lower case);
//! - `insert_tenant` is atomic: of two concurrent inserts of one name, one
//!   gets `TenantExists` (a unique key, not a read-then-write);
//! - `replace_tenant_token` and `delete_tenant` take effect for every reader
//!   as soon as they return (no cache in front of the hash: a rotated token
//!   is refused at once, on every host);
//! - only hashes are stored, as 32 raw bytes; the store never sees a token;
//! - times are RFC 3339 UTC strings as given (no server-side clock);
//! - quotas (`quotas`, `set_quotas`) belong to a tenant: setting them for a
//!   tenant that does not exist is `NoSuchTenant`, a tenant with none set
//!   reads as all-unlimited, `delete_tenant` removes them with the tenant (a
//!   new tenant of that name starts unlimited), and a set is seen by every
//!   reader as soon as it returns (no cache: the daemon reads them per
//!   request). Plain SQL: one row per tenant, a NULL column is no limit,
//!   USD as integer micro-USD.
//! - `archive_usage` moves what a deleted tenant spent (its usage ledger
//!   rows where the store keeps them, its day spend and quota holds) from
//!   its name to an archive label that is no tenant's name, in one
//!   transaction: a new tenant of the name starts with nothing spent, and
//!   the operator still reads the old figures under the label.
//! - a deletion is resumable (`begin_delete`, then `archive_usage`, then
//!   `finish_delete`): `begin_delete` marks the tenant as being deleted
//!   under its archive label in one transaction, and from then on the
//!   tenant reads as absent (`tenants`, `tenant_token`, `quotas`, the day
//!   quotas' joins) while its name stays taken (`insert_tenant` is
//!   `TenantExists`) until `finish_delete` removes the record and its
//!   quotas. A second `begin_delete` returns the label the first recorded;
//!   `interrupted_deletes` lists the marked ones.

use super::name::TenantName;
use super::quota::Quotas;
use super::token::TokenHash;

/// One tenant as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TenantRecord {
    pub name: TenantName,
    pub created_at: String,
    /// When its current token was issued (creation or last rotation).
    pub token_issued_at: String,
}

/// What [`Store::begin_delete`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteBegun {
    /// The label the deletion archives under: the one given, or the one an
    /// interrupted deletion recorded.
    pub archive: String,
    /// The tenant was already marked: this finishes an interrupted deletion.
    pub resumed: bool,
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantStoreError {
    #[error("tenant {0} already exists")]
    TenantExists(TenantName),
    #[error("no tenant {0}")]
    NoSuchTenant(TenantName),
    #[error("control-plane storage: {0}")]
    Backend(String),
}

/// Tenants, token hashes and (later) quotas, whatever holds them.
pub trait Store: Send + Sync {
    /// A cheap round trip proving the storage answers (readiness).
    fn ping(&self) -> Result<(), TenantStoreError>;
    fn insert_tenant(
        &self,
        name: &TenantName,
        token: &TokenHash,
        at: &str,
    ) -> Result<(), TenantStoreError>;
    /// Every tenant, by name.
    fn tenants(&self) -> Result<Vec<TenantRecord>, TenantStoreError>;
    fn tenant_token(&self, name: &TenantName) -> Result<Option<TokenHash>, TenantStoreError>;
    fn replace_tenant_token(
        &self,
        name: &TenantName,
        token: &TokenHash,
        at: &str,
    ) -> Result<(), TenantStoreError>;
    /// Removes the record and its quotas at once (a creation undone).
    fn delete_tenant(&self, name: &TenantName) -> Result<(), TenantStoreError>;
    /// Marks the tenant as being deleted under `archive` (its token is
    /// refused from now on, see the module notes); `NoSuchTenant` when there
    /// is no record, marked or not. A tenant already marked keeps its mark.
    fn begin_delete(
        &self,
        name: &TenantName,
        archive: &str,
    ) -> Result<DeleteBegun, TenantStoreError>;
    /// Removes the record marked with `archive`, and its quotas; a record
    /// already gone (another deleter finished first) is no error.
    fn finish_delete(&self, name: &TenantName, archive: &str) -> Result<(), TenantStoreError>;
    /// The tenants marked by a `begin_delete` that no `finish_delete`
    /// followed, with their archive labels.
    fn interrupted_deletes(&self) -> Result<Vec<(TenantName, String)>, TenantStoreError>;
    /// Relabels everything spent under `name` (ledger rows, day spend,
    /// quota holds) as `archive` (see the module notes). Called once the
    /// deleted tenant's sessions have ended, so none writes under the name
    /// afterwards.
    fn archive_usage(&self, name: &TenantName, archive: &str) -> Result<(), TenantStoreError>;
    fn admin_token(&self) -> Result<Option<TokenHash>, TenantStoreError>;
    /// Sets (or replaces) the one admin token.
    fn set_admin_token(&self, token: &TokenHash, at: &str) -> Result<(), TenantStoreError>;
    /// The tenant's quotas (all `None` when none were set); `None` when
    /// there is no such tenant.
    fn quotas(&self, name: &TenantName) -> Result<Option<Quotas>, TenantStoreError>;
    /// Replaces all four of the tenant's quotas at once; `NoSuchTenant`
    /// when it does not exist.
    fn set_quotas(
        &self,
        name: &TenantName,
        quotas: &Quotas,
        at: &str,
    ) -> Result<(), TenantStoreError>;
}

/// The contract above as a test any implementation runs (a PostgreSQL one
/// with two connections to one database).
#[cfg(test)]
pub mod conformance {
    use super::*;

    fn name(s: &str) -> TenantName {
        TenantName::parse(s).expect("name")
    }

    /// `one` and `two` are two handles onto the same empty storage.
    pub fn check(one: &dyn Store, two: &dyn Store) {
        one.ping().expect("ping");
        let h1 = TokenHash::of("one");
        let h2 = TokenHash::of("two");
        one.insert_tenant(&name("b"), &h1, "t1").expect("insert b");
        one.insert_tenant(&name("a"), &h1, "t1").expect("insert a");
        assert!(matches!(
            two.insert_tenant(&name("a"), &h2, "t2"),
            Err(TenantStoreError::TenantExists(_))
        ));
        let names: Vec<String> = two
            .tenants()
            .expect("list")
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(names, ["a", "b"], "exact names, in name order");
        // A rotation through one handle is what the other reads next.
        one.replace_tenant_token(&name("a"), &h2, "t3")
            .expect("rotate");
        let stored = two.tenant_token(&name("a")).expect("get").expect("some");
        assert!(stored.matches(&h2) && !stored.matches(&h1));
        let listed = two.tenants().expect("list");
        assert_eq!(
            (
                listed[0].created_at.as_str(),
                listed[0].token_issued_at.as_str()
            ),
            ("t1", "t3")
        );
        assert!(matches!(
            one.replace_tenant_token(&name("zz"), &h2, "t3"),
            Err(TenantStoreError::NoSuchTenant(_))
        ));
        assert!(two.tenant_token(&name("zz")).expect("get").is_none());
        two.delete_tenant(&name("b")).expect("delete");
        assert!(one.tenant_token(&name("b")).expect("get").is_none());
        assert!(matches!(
            one.delete_tenant(&name("b")),
            Err(TenantStoreError::NoSuchTenant(_))
        ));
        // Of concurrent creations of one name through both handles, exactly one wins.
        for round in 0..20 {
            let racer = name(&format!("race-{round}"));
            let (r1, r2) = std::thread::scope(|s| {
                let t1 = s.spawn(|| one.insert_tenant(&racer, &h1, "t4"));
                let t2 = s.spawn(|| two.insert_tenant(&racer, &h2, "t4"));
                (t1.join().expect("thread"), t2.join().expect("thread"))
            });
            let won = [&r1, &r2].iter().filter(|r| r.is_ok()).count();
            let lost = [&r1, &r2]
                .iter()
                .filter(|r| matches!(r, Err(TenantStoreError::TenantExists(_))))
                .count();
            assert_eq!((won, lost), (1, 1), "round {round}: {r1:?} {r2:?}");
            one.delete_tenant(&racer).expect("clean up");
        }
        assert!(one.admin_token().expect("admin").is_none());
        one.set_admin_token(&h1, "t5").expect("set");
        two.set_admin_token(&h2, "t6").expect("replace");
        assert!(one
            .admin_token()
            .expect("admin")
            .expect("some")
            .matches(&h2));
        one.insert_tenant(&name("c"), &h1, "t7").expect("insert c");
        // Quotas: unlimited until set, replaced whole, seen through the
        // other handle at once, gone with their tenant.
        assert_eq!(
            two.quotas(&name("c")).expect("quotas"),
            Some(Quotas::default())
        );
        assert_eq!(two.quotas(&name("zz")).expect("quotas"), None);
        let set = Quotas {
            sessions: Some(2),
            requests_per_minute: Some(0),
            llm_tokens_per_day: Some(u64::from(u32::MAX) * 4),
            micro_usd_per_day: Some(1),
        };
        one.set_quotas(&name("c"), &set, "t8").expect("set quotas");
        assert_eq!(two.quotas(&name("c")).expect("quotas"), Some(set));
        let fewer = Quotas {
            sessions: Some(5),
            ..Quotas::default()
        };
        two.set_quotas(&name("c"), &fewer, "t9")
            .expect("replace quotas");
        assert_eq!(one.quotas(&name("c")).expect("quotas"), Some(fewer));
        assert!(matches!(
            one.set_quotas(&name("zz"), &set, "t9"),
            Err(TenantStoreError::NoSuchTenant(_))
        ));
        assert_eq!(
            one.quotas(&name("a")).expect("quotas"),
            Some(Quotas::default())
        );
        one.set_quotas(&name("a"), &set, "t10").expect("set a");
        one.delete_tenant(&name("a")).expect("delete a");
        // Whatever it spent moves to a label no tenant has.
        one.archive_usage(&name("a"), "tenants-deleted/a-1")
            .expect("archive a's usage");
        assert_eq!(two.quotas(&name("a")).expect("quotas"), None);
        two.insert_tenant(&name("a"), &h1, "t11").expect("a again");
        assert_eq!(
            one.quotas(&name("a")).expect("quotas"),
            Some(Quotas::default()),
            "a new tenant of a deleted one's name starts unlimited"
        );
        // A resumable deletion: marked, the tenant reads as absent on
        // either handle but its name stays taken; a second begin returns
        // the first label; finished, the name is free.
        one.set_quotas(&name("c"), &set, "t12").expect("set c");
        let begun = one
            .begin_delete(&name("c"), "tenants-deleted/c-1")
            .expect("begin");
        assert_eq!(
            begun,
            DeleteBegun {
                archive: "tenants-deleted/c-1".into(),
                resumed: false
            }
        );
        assert!(two.tenant_token(&name("c")).expect("get").is_none());
        assert_eq!(two.quotas(&name("c")).expect("quotas"), None);
        assert!(matches!(
            two.set_quotas(&name("c"), &set, "t13"),
            Err(TenantStoreError::NoSuchTenant(_))
        ));
        assert!(matches!(
            two.replace_tenant_token(&name("c"), &h2, "t13"),
            Err(TenantStoreError::NoSuchTenant(_))
        ));
        assert!(!two
            .tenants()
            .expect("list")
            .iter()
            .any(|t| t.name.as_str() == "c"));
        assert!(matches!(
            two.insert_tenant(&name("c"), &h2, "t13"),
            Err(TenantStoreError::TenantExists(_))
        ));
        assert_eq!(
            two.interrupted_deletes().expect("interrupted"),
            [(name("c"), "tenants-deleted/c-1".to_owned())]
        );
        assert_eq!(
            two.begin_delete(&name("c"), "tenants-deleted/c-2")
                .expect("begin again"),
            DeleteBegun {
                archive: "tenants-deleted/c-1".into(),
                resumed: true
            }
        );
        assert!(matches!(
            one.begin_delete(&name("zz"), "tenants-deleted/zz-1"),
            Err(TenantStoreError::NoSuchTenant(_))
        ));
        two.finish_delete(&name("c"), "tenants-deleted/c-1")
            .expect("finish");
        one.finish_delete(&name("c"), "tenants-deleted/c-1")
            .expect("finishing twice is harmless");
        assert!(one.interrupted_deletes().expect("interrupted").is_empty());
        one.insert_tenant(&name("c"), &h1, "t14").expect("c again");
        assert_eq!(
            two.quotas(&name("c")).expect("quotas"),
            Some(Quotas::default()),
            "the marked tenant's quotas went with it"
        );
    }
}
