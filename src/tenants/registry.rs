//! The tenants of one openclaw home: create, list, rotate, delete, the admin
//! token, and who a bearer token is. Every state change writes its audit
//! line (done, refused or failed) before it returns, so the CLI and the API
//! cannot answer a change the audit log does not hold.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::name::TenantName;
use super::quota::Quotas;
use super::root::{TenantRoot, DELETED_DIR};
use super::store::{DeleteBegun, Store, TenantRecord, TenantStoreError};
use super::token::{self, Claimed, TokenHash};
use crate::audit::{Actor, AuditLog, AuditRecord, AuditTable, Outcome, Via};

/// Who is asking, for the audit line.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    pub via: Via,
    pub request_id: String,
    /// The user a trusted proxy named (`actor` is then `User`).
    pub user: Option<String>,
}

/// Who a bearer token proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Admin,
    Tenant(TenantName),
}

/// A tenant operation that did not happen (or not entirely).
#[derive(Debug, thiserror::Error)]
pub enum TenantOpError {
    #[error("tenant {0} already exists")]
    Exists(TenantName),
    #[error("no tenant {0}")]
    NotFound(TenantName),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl TenantOpError {
    fn outcome(&self) -> (Outcome, String) {
        match self {
            TenantOpError::Exists(_) => (Outcome::Refused, "the tenant already exists".into()),
            TenantOpError::NotFound(_) => (Outcome::Refused, "no such tenant".into()),
            TenantOpError::Failed(e) => (Outcome::Failed, format!("{e:#}")),
        }
    }
}

impl From<TenantStoreError> for TenantOpError {
    fn from(e: TenantStoreError) -> Self {
        match e {
            TenantStoreError::TenantExists(n) => TenantOpError::Exists(n),
            TenantStoreError::NoSuchTenant(n) => TenantOpError::NotFound(n),
            other => TenantOpError::Failed(other.into()),
        }
    }
}

/// Each interrupted deletion a start found, and whether it was finished.
pub type FinishedDeletes = Vec<(TenantName, Result<(), TenantOpError>)>;

pub struct Registry {
    home: PathBuf,
    store: Arc<dyn Store>,
    audit: AuditLog,
}

/// [`Registry::authenticate`] on `store`.
fn authenticate_in(
    store: &dyn Store,
    presented: &str,
) -> Result<Option<Identity>, TenantStoreError> {
    let hash = TokenHash::of(presented);
    let (stored, identity) = match token::claimed(presented) {
        Some(Claimed::Admin) => (store.admin_token()?, Identity::Admin),
        Some(Claimed::Tenant(name)) => (store.tenant_token(&name)?, Identity::Tenant(name)),
        None => (None, Identity::Admin),
    };
    let (stored, known) = match stored {
        Some(h) => (h, true),
        None => (TokenHash([0xff; 32]), false),
    };
    Ok((stored.matches(&hash) && known).then_some(identity))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Registry {
    pub fn new(home: &Path, store: Arc<dyn Store>) -> Registry {
        Registry {
            home: home.to_path_buf(),
            store,
            audit: AuditLog::at_home(home),
        }
    }

    /// Audit lines also into `table` (the shared database's), see
    /// [`AuditLog::also_into`].
    pub fn with_audit_table(mut self, table: Arc<dyn AuditTable>) -> Registry {
        self.audit = self.audit.also_into(table);
        self
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The audit log (session changes are recorded by `serve`).
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn root(&self, name: &TenantName) -> TenantRoot {
        TenantRoot::of(&self.home, name)
    }

    pub fn list(&self) -> Result<Vec<TenantRecord>, TenantStoreError> {
        self.store.tenants()
    }

    /// Creates the tenant's directory, keys and record; returns its token
    /// (the only time it exists in clear).
    pub fn create(&self, caller: &Caller, name: &TenantName) -> Result<String, TenantOpError> {
        let result = self.create_inner(name);
        self.record(caller, "tenant.create", name, &result)?;
        result
    }

    fn create_inner(&self, name: &TenantName) -> Result<String, TenantOpError> {
        let root = self.root(name);
        // The directory, then the record: a creation writes the record
        // before the directory, so a directory seen here with no record
        // after it is a leftover, not a concurrent creation.
        if std::fs::symlink_metadata(root.path()).is_ok() {
            if self.store.tenant_token(name)?.is_some() {
                return Err(TenantOpError::Exists(name.clone()));
            }
            return Err(TenantOpError::Failed(anyhow::anyhow!(
                "{} exists without a tenant record: move it away first",
                root.path().display()
            )));
        }
        // The record first: the store's unique key decides which of two
        // concurrent creations wins (the other gets `Exists`, not a clash
        // over the directory). Nobody holds the token until it is returned.
        let token = token::new_tenant_token(name);
        self.store
            .insert_tenant(name, &TokenHash::of(&token), &now_rfc3339())?;
        if let Err(e) = root.create() {
            // No tenant without its directory. A half-made directory is left
            // for the operator (it may not be ours to delete: the next create
            // names it).
            let _ = self.store.delete_tenant(name);
            return Err(e.into());
        }
        Ok(token)
    }

    /// Replaces the tenant's token: the old one is refused from now on.
    pub fn rotate(&self, caller: &Caller, name: &TenantName) -> Result<String, TenantOpError> {
        let token = token::new_tenant_token(name);
        let result = self
            .store
            .replace_tenant_token(name, &TokenHash::of(&token), &now_rfc3339())
            .map_err(TenantOpError::from)
            .map(|()| token);
        self.record(caller, "tenant.token.rotate", name, &result)?;
        result
    }

    /// Deletes the tenant: marks its record as being deleted (its token
    /// stops working, no session starts for it, the name stays taken),
    /// relabels what it spent (ledger rows, day spend) as
    /// `tenants-deleted/<name>-<unix ns>`, moves its directory there, and
    /// only then removes the record: the data and the figures are kept for
    /// the operator, and a new tenant of the same name starts empty. Each
    /// step is harmless to run again, so a deletion that failed half way is
    /// finished by the next one (`resumed` in the answer, under the label
    /// the first chose). For a caller that runs no sessions (the CLI checks
    /// that none runs first); the daemon uses [`Registry::delete_ending`].
    pub fn delete(&self, caller: &Caller, name: &TenantName) -> Result<DeleteBegun, TenantOpError> {
        self.delete_ending(caller, name, || Ok(()))
    }

    /// [`Registry::delete`], calling `end_sessions` (stop the tenant's
    /// running sessions and wait for them) once the record is marked (no
    /// new session can start) and before the usage is relabelled and the
    /// directory moved (no session writes under the name or into the
    /// directory after that).
    pub fn delete_ending(
        &self,
        caller: &Caller,
        name: &TenantName,
        end_sessions: impl FnOnce() -> anyhow::Result<()>,
    ) -> Result<DeleteBegun, TenantOpError> {
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // A label no tenant can have ('/' is not in names), naming where
        // the tenant's directory goes.
        let fresh = format!("{DELETED_DIR}/{name}-{stamp}");
        let result = self
            .store
            .begin_delete(name, &fresh)
            .map_err(TenantOpError::from)
            .and_then(|begun| {
                end_sessions().map_err(|e| {
                    TenantOpError::Failed(e.context(format!(
                        "tenant {name} is being deleted, but its sessions did not all end; its usage and directory are left in place (delete it again to finish)"
                    )))
                })?;
                self.finish_steps(name, &begun.archive)?;
                Ok(begun)
            });
        let resumed = matches!(&result, Ok(b) if b.resumed);
        self.record_with(
            caller,
            "tenant.delete",
            name,
            &result,
            resumed.then_some("completed an interrupted delete"),
        )?;
        result
    }

    /// Finishes every deletion the store has marked but that never
    /// finished (a daemon's start: a CLI or a daemon that failed or died
    /// half way). `ended(name)` says whether the tenant's sessions have all
    /// ended (else it is left for the next start or delete); each one
    /// finished is audited as a `tenant.delete` by `caller`.
    pub fn finish_interrupted_deletes(
        &self,
        caller: &Caller,
        ended: impl Fn(&TenantName) -> bool,
    ) -> Result<FinishedDeletes, TenantStoreError> {
        let mut done = Vec::new();
        for (name, archive) in self.store.interrupted_deletes()? {
            let result = if ended(&name) {
                self.finish_steps(&name, &archive)
            } else {
                Err(TenantOpError::Failed(anyhow::anyhow!(
                    "tenant {name} is being deleted but some of its sessions still run"
                )))
            };
            let audited = self.record_with(
                caller,
                "tenant.delete",
                &name,
                &result,
                Some("completed an interrupted delete"),
            );
            done.push((name, result.and(audited)));
        }
        Ok(done)
    }

    /// The steps after the mark, each harmless to repeat: relabel the
    /// usage as `archive`, move the directory to where `archive` names,
    /// remove the record.
    fn finish_steps(&self, name: &TenantName, archive: &str) -> Result<(), TenantOpError> {
        let archived = archive
            .strip_prefix(&format!("{DELETED_DIR}/"))
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| {
                TenantOpError::Failed(anyhow::anyhow!(
                    "tenant {name} is marked deleted under {archive:?}, which is no archive label"
                ))
            })?;
        self.store.archive_usage(name, archive).map_err(|e| {
            TenantOpError::Failed(anyhow::Error::new(e).context(format!(
                "tenant {name} is being deleted, but its usage could not be archived as {archive} (delete it again to finish)"
            )))
        })?;
        let root = self.root(name);
        if std::fs::symlink_metadata(root.path()).is_ok() {
            let graveyard = self.home.join(DELETED_DIR);
            std::fs::create_dir_all(&graveyard)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", graveyard.display()))?;
            let to = graveyard.join(archived);
            std::fs::rename(root.path(), &to).map_err(|e| {
                anyhow::anyhow!(
                    "tenant {name} is being deleted, but moving {} to {} failed: {e} (delete it again to finish)",
                    root.path().display(),
                    to.display()
                )
            })?;
        }
        self.store.finish_delete(name, archive)?;
        Ok(())
    }

    /// The tenant's quotas; `NotFound` when there is no such tenant.
    pub fn quotas(&self, name: &TenantName) -> Result<Quotas, TenantOpError> {
        self.store
            .quotas(name)?
            .ok_or_else(|| TenantOpError::NotFound(name.clone()))
    }

    /// Replaces the tenant's quotas (`quota.set`, audited; the values are in
    /// the line's detail).
    pub fn set_quotas(
        &self,
        caller: &Caller,
        name: &TenantName,
        quotas: &Quotas,
    ) -> Result<(), TenantOpError> {
        let result = self
            .store
            .set_quotas(name, quotas, &now_rfc3339())
            .map_err(TenantOpError::from);
        let mut line = AuditRecord::now(
            caller.actor,
            caller.via,
            "quota.set",
            name.as_str(),
            &caller.request_id,
        );
        line.tenant = Some(name.to_string());
        match &result {
            // Numbers only: nothing a caller typed is echoed.
            Ok(()) => line.detail = Some(quota_detail(quotas)),
            Err(e) => {
                (line.outcome, line.detail) = {
                    let (o, d) = e.outcome();
                    (o, Some(d))
                }
            }
        }
        self.audit
            .append(&line)
            .map_err(|e| TenantOpError::Failed(e.context("the change was made but not audited")))?;
        result
    }

    /// Issues a new admin token (replacing any); returns it.
    pub fn new_admin_token(&self, caller: &Caller) -> Result<String, TenantOpError> {
        let token = token::new_admin_token();
        let result = self
            .store
            .set_admin_token(&TokenHash::of(&token), &now_rfc3339())
            .map_err(TenantOpError::from)
            .map(|()| token);
        let mut line = AuditRecord::now(
            caller.actor,
            caller.via,
            "admin.token.set",
            "admin",
            &caller.request_id,
        );
        if let Err(e) = &result {
            (line.outcome, line.detail) = {
                let (o, d) = e.outcome();
                (o, Some(d))
            };
        }
        self.audit.append(&line)?;
        result
    }

    /// Who `presented` proves to be. Its hash is compared in constant time
    /// with the stored hash of the identity it claims; a malformed or
    /// unknown claim still costs one comparison, against a hash no token has.
    pub fn authenticate(&self, presented: &str) -> Result<Option<Identity>, TenantStoreError> {
        authenticate_in(self.store.as_ref(), presented)
    }

    /// Whether `presented` still proves to be `who`, asked again by a
    /// long-lived stream opened with it (a rotated or deleted token ends
    /// it); a store that does not answer counts as no.
    pub fn still_holds(
        &self,
        presented: String,
        who: Identity,
    ) -> Arc<dyn Fn() -> bool + Send + Sync> {
        let store = self.store.clone();
        Arc::new(move || {
            authenticate_in(store.as_ref(), &presented).is_ok_and(|now| now.as_ref() == Some(&who))
        })
    }

    fn record<T>(
        &self,
        caller: &Caller,
        action: &str,
        name: &TenantName,
        result: &Result<T, TenantOpError>,
    ) -> Result<(), TenantOpError> {
        self.record_with(caller, action, name, result, None)
    }

    /// [`Registry::record`] with a fixed phrase as the detail of success.
    fn record_with<T>(
        &self,
        caller: &Caller,
        action: &str,
        name: &TenantName,
        result: &Result<T, TenantOpError>,
        ok_detail: Option<&str>,
    ) -> Result<(), TenantOpError> {
        let mut line = AuditRecord::now(
            caller.actor,
            caller.via,
            action,
            name.as_str(),
            &caller.request_id,
        );
        line.tenant = Some(name.to_string());
        match result {
            Ok(_) => line.detail = ok_detail.map(str::to_owned),
            Err(e) => {
                let (outcome, detail) = e.outcome();
                line.outcome = outcome;
                line.detail = Some(detail);
            }
        }
        // No answer without its line: a change the log cannot record is
        // reported as failed (the token it made is never shown).
        self.audit
            .append(&line)
            .map_err(|e| TenantOpError::Failed(e.context("the change was made but not audited")))
    }
}

/// `sessions=2 requests_per_minute=- llm_tokens_per_day=- micro_usd_per_day=500000`.
fn quota_detail(q: &Quotas) -> String {
    let v = |x: Option<u64>| x.map_or("-".to_owned(), |n| n.to_string());
    format!(
        "sessions={} requests_per_minute={} llm_tokens_per_day={} micro_usd_per_day={}",
        v(q.sessions),
        v(q.requests_per_minute),
        v(q.llm_tokens_per_day),
        v(q.micro_usd_per_day)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::SqliteStore;

    fn registry() -> (tempfile::TempDir, Registry) {
        let home = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&home.path().join("control.db")).expect("store");
        let registry = Registry::new(home.path(), Arc::new(store));
        (home, registry)
    }

    fn cli() -> Caller {
        Caller {
            actor: Actor::Admin,
            via: Via::Cli,
            request_id: "r".into(),
            user: None,
        }
    }

    #[test]
    fn tokens_authenticate_until_rotated_or_deleted_and_every_change_is_audited() {
        let (home, reg) = registry();
        let acme = TenantName::parse("acme").expect("name");
        let token = reg.create(&cli(), &acme).expect("create");
        assert_eq!(
            reg.authenticate(&token).expect("auth"),
            Some(Identity::Tenant(acme.clone()))
        );
        assert!(matches!(
            reg.create(&cli(), &acme),
            Err(TenantOpError::Exists(_))
        ));
        // One character off, another tenant's name with the same secret,
        // and garbage: nobody.
        let mut wrong = token.clone();
        let last = wrong.pop().expect("non-empty");
        wrong.push(if last == '0' { '1' } else { '0' });
        let other = TenantName::parse("other").expect("name");
        for bad in [wrong.as_str(), &token.replacen("acme", "other", 1), "", "x"] {
            assert_eq!(reg.authenticate(bad).expect("auth"), None, "{bad:?}");
        }
        reg.create(&cli(), &other).expect("create other");
        let rotated = reg.rotate(&cli(), &acme).expect("rotate");
        assert_eq!(reg.authenticate(&token).expect("auth"), None, "old token");
        assert_eq!(
            reg.authenticate(&rotated).expect("auth"),
            Some(Identity::Tenant(acme.clone()))
        );
        let admin = reg.new_admin_token(&cli()).expect("admin");
        assert_eq!(
            reg.authenticate(&admin).expect("auth"),
            Some(Identity::Admin)
        );
        reg.delete(&cli(), &acme).expect("delete");
        assert_eq!(reg.authenticate(&rotated).expect("auth"), None, "deleted");
        assert!(!reg.root(&acme).path().exists(), "moved away");
        assert!(matches!(
            reg.delete(&cli(), &acme),
            Err(TenantOpError::NotFound(_))
        ));
        let lines = reg.audit().read(&Default::default()).expect("audit");
        let summary: Vec<(String, Outcome)> = lines
            .iter()
            .map(|l| (l.action.clone(), l.outcome))
            .collect();
        assert_eq!(
            summary,
            [
                ("tenant.create".to_string(), Outcome::Ok),
                ("tenant.create".to_string(), Outcome::Refused),
                ("tenant.create".to_string(), Outcome::Ok),
                ("tenant.token.rotate".to_string(), Outcome::Ok),
                ("admin.token.set".to_string(), Outcome::Ok),
                ("tenant.delete".to_string(), Outcome::Ok),
                ("tenant.delete".to_string(), Outcome::Refused),
            ]
        );
        // No token in any file the registry wrote.
        for token in [&token, &rotated, &admin] {
            for path in files_under(home.path()) {
                let bytes = std::fs::read(&path).expect("read");
                assert!(
                    !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                    "token found in {}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn quotas_are_set_read_and_audited() {
        let (_home, reg) = registry();
        let acme = TenantName::parse("acme").expect("name");
        let ghost = TenantName::parse("ghost").expect("name");
        reg.create(&cli(), &acme).expect("create");
        assert_eq!(reg.quotas(&acme).expect("quotas"), Quotas::default());
        let q = Quotas {
            sessions: Some(3),
            micro_usd_per_day: Some(2_500_000),
            ..Quotas::default()
        };
        reg.set_quotas(&cli(), &acme, &q).expect("set");
        assert_eq!(reg.quotas(&acme).expect("quotas"), q);
        assert!(matches!(
            reg.set_quotas(&cli(), &ghost, &q),
            Err(TenantOpError::NotFound(_))
        ));
        assert!(matches!(
            reg.quotas(&ghost),
            Err(TenantOpError::NotFound(_))
        ));
        let lines = reg.audit().read(&Default::default()).expect("audit");
        let quota_lines: Vec<(&str, Outcome, Option<&str>)> = lines
            .iter()
            .filter(|l| l.action == "quota.set")
            .map(|l| (l.target.as_str(), l.outcome, l.detail.as_deref()))
            .collect();
        assert_eq!(
            quota_lines,
            [
                (
                    "acme",
                    Outcome::Ok,
                    Some("sessions=3 requests_per_minute=- llm_tokens_per_day=- micro_usd_per_day=2500000")
                ),
                ("ghost", Outcome::Refused, Some("no such tenant")),
            ]
        );
    }

    #[test]
    fn of_concurrent_creations_one_wins_and_the_other_is_refused() {
        let (_home, reg) = registry();
        for round in 0..10 {
            let name = TenantName::parse(&format!("r{round}")).expect("name");
            let (one, two) = std::thread::scope(|s| {
                let a = s.spawn(|| reg.create(&cli(), &name));
                let b = s.spawn(|| reg.create(&cli(), &name));
                (a.join().expect("thread"), b.join().expect("thread"))
            });
            let won = [&one, &two].iter().filter(|r| r.is_ok()).count();
            let refused = [&one, &two]
                .iter()
                .filter(|r| matches!(r, Err(TenantOpError::Exists(_))))
                .count();
            assert_eq!((won, refused), (1, 1), "round {round}: {one:?} {two:?}");
            assert!(reg.root(&name).is_complete());
        }
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
