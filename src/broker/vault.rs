//! One tenant's secrets at rest: `<tenant root>/secrets/<name>.json`, each
//! the entry's non-secret fields (hosts, header, format, placement) in
//! clear and its value sealed with XChaCha20-Poly1305 under the home's
//! [`SecretsKey`], a fresh random 192-bit nonce per write. The associated
//! data binds the tenant, the secret's name and its fields: a file moved
//! to another tenant or name, or with its hosts widened, does not open.
//! Set and remove write their audit line (never the value) before they
//! return.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::key::SecretsKey;
use crate::audit::{AuditLog, AuditRecord, Outcome};
use crate::tenants::{Caller, TenantName, TenantRoot};

/// The format of a stored secret; part of the associated data.
const VERSION: u32 = 1;
/// Longest secret name (it is a file name and an environment variable).
const NAME_MAX: usize = 64;

/// Why a broker operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("secret names are 1 to {NAME_MAX} of a-z, 0-9 and _")]
    BadName,
    #[error("the tenant has no secret {0}")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
    #[error("secret {0} does not decrypt: it was altered, moved from another tenant or name, or sealed under another key")]
    Tampered(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The non-secret fields of an entry, as in the secrets file
/// (`docs/credentials.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretFields {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
}

/// A stored secret as listed: everything but the value.
#[derive(Debug, Clone, Serialize)]
pub struct StoredSecret {
    pub name: String,
    #[serde(flatten)]
    pub fields: SecretFields,
    pub updated_at: String,
}

/// The file on disk.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    version: u32,
    name: String,
    fields: SecretFields,
    updated_at: String,
    /// 24 bytes, hex.
    nonce: String,
    /// The value sealed with its 16-byte tag, hex.
    ciphertext: String,
}

/// One secrets-file entry (what `openclaw run --secrets` reads).
#[derive(Serialize)]
struct FileEntry<'a> {
    name: &'a str,
    value: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    hosts: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    placement: &'a [String],
}

#[derive(Serialize)]
struct FileOut<'a> {
    secret: Vec<FileEntry<'a>>,
}

/// Whether the tenant of `root` has a secret of this name (no key needed).
pub fn has_secret(root: &TenantRoot, name: &str) -> bool {
    check_name(name).is_ok()
        && root
            .path()
            .join("secrets")
            .join(format!("{name}.json"))
            .is_file()
}

/// The secrets of one tenant, with the key that seals them.
pub struct TenantSecrets {
    tenant: TenantName,
    dir: PathBuf,
    key: SecretsKey,
    audit: AuditLog,
}

fn check_name(name: &str) -> Result<(), BrokerError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(BrokerError::BadName)
    }
}

/// The secrets-file text of these entries; `Err` says why one is not a
/// valid entry (the enforcement's own parser decides; its errors never
/// quote a value).
fn secrets_file(entries: &[(&str, &str, &SecretFields)]) -> Result<String, BrokerError> {
    let out = FileOut {
        secret: entries
            .iter()
            .map(|(name, value, fields)| FileEntry {
                name,
                value,
                header: fields.header.as_deref(),
                format: fields.format.as_deref(),
                hosts: &fields.hosts,
                placement: &fields.placement,
            })
            .collect(),
    };
    let text = toml::to_string(&out)
        .map_err(|_| BrokerError::Invalid("the entry cannot be written as TOML".into()))?;
    enforce::SecretStore::from_toml(&text).map_err(|e| BrokerError::Invalid(e.to_string()))?;
    Ok(text)
}

impl TenantSecrets {
    /// The secrets of `tenant` in `home`, sealed under `key`.
    pub fn new(home: &Path, tenant: &TenantName, key: SecretsKey) -> TenantSecrets {
        TenantSecrets {
            dir: TenantRoot::of(home, tenant).path().join("secrets"),
            tenant: tenant.clone(),
            key,
            audit: AuditLog::at_home(home),
        }
    }

    /// The home's key (created on first use) and the tenant's secrets.
    pub fn open(home: &Path, tenant: &TenantName) -> anyhow::Result<TenantSecrets> {
        Ok(Self::new(home, tenant, SecretsKey::load_or_create(home)?))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Binds the ciphertext to this tenant, this name and these fields.
    fn aad(&self, name: &str, fields: &SecretFields) -> Vec<u8> {
        serde_json::to_vec(&(
            "openclaw-secret",
            VERSION,
            self.tenant.as_str(),
            name,
            fields,
        ))
        .unwrap_or_default()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&Key::from(*self.key.bytes()))
    }

    /// Stores (or replaces) a secret; one audit line `secret.set`.
    pub fn set(
        &self,
        caller: &Caller,
        name: &str,
        value: &str,
        fields: &SecretFields,
    ) -> Result<(), BrokerError> {
        let result = self.set_inner(name, value, fields);
        self.record(caller, "secret.set", name, &result)?;
        result
    }

    fn set_inner(&self, name: &str, value: &str, fields: &SecretFields) -> Result<(), BrokerError> {
        check_name(name)?;
        secrets_file(&[(name, value, fields)])?;
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = self.aad(name, fields);
        let ciphertext = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing the secret failed"))?;
        let sealed = Sealed {
            version: VERSION,
            name: name.to_owned(),
            fields: fields.clone(),
            updated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ciphertext),
        };
        let text = serde_json::to_vec_pretty(&sealed).context("encoding the secret")?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        // Whole or not at all: a temporary file, synced, renamed over.
        crate::atomic_file::replace(&self.path(name), &text, 0o600)?;
        Ok(())
    }

    /// Removes a secret; one audit line `secret.remove` (refused when
    /// there is no such secret).
    pub fn remove(&self, caller: &Caller, name: &str) -> Result<(), BrokerError> {
        let result = check_name(name).and_then(|()| match std::fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BrokerError::Unknown(name.to_owned()))
            }
            Err(e) => Err(anyhow::Error::from(e)
                .context(format!("removing {}", self.path(name).display()))
                .into()),
        });
        self.record(caller, "secret.remove", name, &result)?;
        result
    }

    /// The tenant's secrets, by name, without their values.
    pub fn list(&self) -> Result<Vec<StoredSecret>, BrokerError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(anyhow::Error::from(e)
                    .context(format!("listing {}", self.dir.display()))
                    .into())
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.context("listing the tenant's secrets")?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if check_name(name).is_err() {
                continue;
            }
            let sealed = self.read(name)?;
            out.push(StoredSecret {
                name: name.to_owned(),
                fields: sealed.fields,
                updated_at: sealed.updated_at,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read(&self, name: &str) -> Result<Sealed, BrokerError> {
        let path = self.path(name);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BrokerError::Unknown(name.to_owned()))
            }
            Err(e) => {
                return Err(anyhow::Error::from(e)
                    .context(format!("reading {}", path.display()))
                    .into())
            }
        };
        serde_json::from_slice(&text).map_err(|_| BrokerError::Tampered(name.to_owned()))
    }

    /// The value of one secret, opened with its name, this tenant and its
    /// fields as associated data.
    fn open_value(&self, name: &str) -> Result<(String, SecretFields), BrokerError> {
        check_name(name)?;
        let sealed = self.read(name)?;
        let tampered = || BrokerError::Tampered(name.to_owned());
        if sealed.version != VERSION {
            return Err(tampered());
        }
        let mut nonce = [0u8; 24];
        hex::decode_to_slice(&sealed.nonce, &mut nonce).map_err(|_| tampered())?;
        let ciphertext = hex::decode(&sealed.ciphertext).map_err(|_| tampered())?;
        let aad = self.aad(name, &sealed.fields);
        let value = self
            .cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| tampered())?;
        let value = String::from_utf8(value).map_err(|_| tampered())?;
        Ok((value, sealed.fields))
    }

    /// The secrets-file text (`openclaw run --secrets`) holding the named
    /// secrets, decrypted. The caller writes it 0600 and removes it once
    /// the session has read it.
    pub fn resolve(&self, names: &[String]) -> Result<String, BrokerError> {
        let opened = names
            .iter()
            .map(|n| self.open_value(n).map(|(v, f)| (n.as_str(), v, f)))
            .collect::<Result<Vec<_>, _>>()?;
        let entries: Vec<(&str, &str, &SecretFields)> =
            opened.iter().map(|(n, v, f)| (*n, v.as_str(), f)).collect();
        secrets_file(&entries)
    }

    /// Writes the audit line of a set or remove (never the value).
    fn record(
        &self,
        caller: &Caller,
        action: &str,
        name: &str,
        result: &Result<(), BrokerError>,
    ) -> Result<(), BrokerError> {
        let target = if check_name(name).is_ok() { name } else { "-" };
        let mut line =
            AuditRecord::now(caller.actor, caller.via, action, target, &caller.request_id);
        line.tenant = Some(self.tenant.to_string());
        line.user = caller.user.clone();
        if let Err(e) = result {
            (line.outcome, line.detail) = match e {
                BrokerError::BadName => (Outcome::Refused, Some("bad secret name".into())),
                BrokerError::Unknown(_) => (Outcome::Refused, Some("no such secret".into())),
                BrokerError::Invalid(_) => (Outcome::Refused, Some("invalid entry".into())),
                BrokerError::Tampered(_) | BrokerError::Failed(_) => {
                    (Outcome::Failed, Some("storage".into()))
                }
            };
        }
        self.audit
            .append(&line)
            .map_err(|e| BrokerError::Failed(e.context("the audit line could not be written")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, AuditFilter, Via};

    fn caller() -> Caller {
        Caller {
            actor: Actor::Admin,
            via: Via::Cli,
            request_id: "cli-test".into(),
            user: None,
        }
    }

    fn tenant(name: &str) -> TenantName {
        TenantName::parse(name).expect("name")
    }

    const VALUE: &str = "s3cr3t-\"value\" with spaces";

    #[test]
    fn secrets_are_sealed_listed_without_values_and_resolved() {
        let home = tempfile::tempdir().expect("tempdir");
        let a = TenantSecrets::open(home.path(), &tenant("a")).expect("open");
        let fields = SecretFields {
            hosts: vec!["api.example.com".into()],
            header: Some("Authorization".into()),
            format: Some("Bearer {}".into()),
            placement: vec![],
        };
        a.set(&caller(), "llm_key", VALUE, &fields).expect("set");
        a.set(&caller(), "pin", "1234", &SecretFields::default())
            .expect("set");
        let listed = a.list().expect("list");
        assert_eq!(
            listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["llm_key", "pin"]
        );
        assert_eq!(listed[0].fields, fields);
        // Nothing under the home holds the value: not the sealed file, not
        // the key, not the audit log.
        for path in walk(home.path()) {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
                "{} holds the value",
                path.display()
            );
        }
        let text = a.resolve(&["llm_key".into()]).expect("resolve");
        let store = enforce::SecretStore::from_toml(&text).expect("a secrets file");
        assert_eq!(store.names(), ["llm_key"]);
        assert!(
            text.contains("s3cr3t-"),
            "the value is in the session's file"
        );
        assert!(matches!(
            a.resolve(&["nope".into()]),
            Err(BrokerError::Unknown(n)) if n == "nope"
        ));
        a.remove(&caller(), "pin").expect("rm");
        assert!(matches!(
            a.remove(&caller(), "pin"),
            Err(BrokerError::Unknown(_))
        ));
        let lines = AuditLog::at_home(home.path())
            .read(&AuditFilter::default())
            .expect("audit");
        let actions: Vec<_> = lines
            .iter()
            .map(|l| (l.action.as_str(), l.target.as_str(), l.outcome))
            .collect();
        assert_eq!(
            actions,
            [
                ("secret.set", "llm_key", Outcome::Ok),
                ("secret.set", "pin", Outcome::Ok),
                ("secret.remove", "pin", Outcome::Ok),
                ("secret.remove", "pin", Outcome::Refused),
            ]
        );
        assert!(lines.iter().all(|l| l.tenant.as_deref() == Some("a")));
    }

    #[test]
    fn a_sealed_secret_moved_renamed_or_widened_does_not_open() {
        let home = tempfile::tempdir().expect("tempdir");
        let key = SecretsKey::load_or_create(home.path()).expect("key");
        let a = TenantSecrets::new(home.path(), &tenant("a"), key.clone());
        let b = TenantSecrets::new(home.path(), &tenant("b"), key.clone());
        let fields = SecretFields {
            hosts: vec!["api.example.com".into()],
            ..SecretFields::default()
        };
        a.set(&caller(), "k", VALUE, &fields).expect("set");
        assert!(a.resolve(&["k".into()]).is_ok());
        // To another tenant, same name.
        std::fs::create_dir_all(&b.dir).expect("mkdir");
        std::fs::copy(a.path("k"), b.path("k")).expect("copy");
        assert!(matches!(
            b.resolve(&["k".into()]),
            Err(BrokerError::Tampered(_))
        ));
        // To another name, same tenant.
        std::fs::copy(a.path("k"), a.path("other")).expect("copy");
        assert!(matches!(
            a.resolve(&["other".into()]),
            Err(BrokerError::Tampered(_))
        ));
        // Its hosts widened in the clear part.
        let text = std::fs::read_to_string(a.path("k")).expect("read");
        std::fs::write(a.path("k"), text.replace("api.example.com", "evil.example"))
            .expect("write");
        assert!(matches!(
            a.resolve(&["k".into()]),
            Err(BrokerError::Tampered(_))
        ));
        // Under another home's key.
        std::fs::write(a.path("k"), &text).expect("restore");
        assert!(a.resolve(&["k".into()]).is_ok());
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let other_key = SecretsKey::load_or_create(elsewhere.path()).expect("key");
        let a2 = TenantSecrets::new(home.path(), &tenant("a"), other_key);
        assert!(matches!(
            a2.resolve(&["k".into()]),
            Err(BrokerError::Tampered(_))
        ));
    }

    #[test]
    fn bad_names_and_entries_are_refused_without_quoting_the_value() {
        let home = tempfile::tempdir().expect("tempdir");
        let a = TenantSecrets::open(home.path(), &tenant("a")).expect("open");
        for bad in ["", "Upper", "a-b", "../x", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(
                    a.set(&caller(), bad, "v", &SecretFields::default()),
                    Err(BrokerError::BadName)
                ),
                "{bad:?}"
            );
        }
        let bad_host = SecretFields {
            hosts: vec!["host:443".into()],
            ..SecretFields::default()
        };
        let err = a
            .set(&caller(), "k", "topsecret", &bad_host)
            .expect_err("bad host");
        assert!(!err.to_string().contains("topsecret"), "{err}");
        let err = a
            .set(&caller(), "k", "has ocs_ inside", &SecretFields::default())
            .expect_err("placeholder prefix");
        assert!(matches!(err, BrokerError::Invalid(_)), "{err}");
        assert!(a.list().expect("list").is_empty());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("ls") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
