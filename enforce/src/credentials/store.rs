//! The host's secrets: the secrets file (owner-only, never quoted in
//! errors), each secret with its optional header injection, host list and
//! placement list, and values that never show in `Debug`.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use capabilities::Host;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::placeholder::PLACEHOLDER_PREFIX;
use super::placement::Placement;

/// Why the secrets file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("secrets file {path} is readable by others (mode {mode:o}); run chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
    #[error("secrets file {path} is owned by uid {owner}, not by this user (uid {me})")]
    Owner { path: String, owner: u32, me: u32 },
    #[error("secrets file is not valid TOML: {0}")]
    Parse(String),
    #[error("secret {name:?}: {problem}")]
    Secret { name: String, problem: String },
}

/// A secret value. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
struct SecretValue(String);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    #[serde(default)]
    secret: Vec<SecretEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretEntry {
    name: String,
    /// The value itself (taken as written, even when it starts with `env:`).
    value: Option<SecretValue>,
    /// Where to read the value when the file is loaded: `env:NAME` or
    /// `file:/absolute/path`.
    value_from: Option<String>,
    header: Option<String>,
    format: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    placement: Vec<String>,
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretValue)
    }
}

/// A header the proxy adds for granted hosts (e.g. an API key), with no
/// placeholder involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    pub header: HeaderName,
    /// Contains `{}` exactly once, where the secret goes.
    pub format: String,
}

/// One secret from the secrets file.
#[derive(Debug, Clone)]
pub struct Secret {
    name: String,
    value: SecretValue,
    injection: Option<Injection>,
    /// Extra narrowing from the secrets file: when non-empty, the secret is
    /// used only at these hosts *and* where the token grants it.
    hosts: Vec<Host>,
    /// Where in a request its placeholder may be substituted, beyond the
    /// catalog rule's `credential_field` and the injection header.
    placements: Vec<Placement>,
}

impl Secret {
    /// Builds a secret (for tests and programmatic use).
    pub fn new(name: &str, value: &str) -> Result<Self, SecretsError> {
        Self::from_entry(SecretEntry {
            name: name.to_owned(),
            value: Some(SecretValue(value.to_owned())),
            value_from: None,
            header: None,
            format: None,
            hosts: Vec::new(),
            placement: Vec::new(),
        })
    }

    /// Adds places its placeholder may be substituted (`json:/password`, ...).
    pub fn with_placement(mut self, placements: &[&str]) -> Result<Self, SecretsError> {
        for p in placements {
            let p = Placement::parse(p).map_err(|problem| SecretsError::Secret {
                name: self.name.clone(),
                problem,
            })?;
            self.placements.push(p);
        }
        Ok(self)
    }

    /// Adds a header injection: `format` with `{}` replaced by the secret.
    pub fn with_injection(mut self, header: &str, format: &str) -> Result<Self, SecretsError> {
        self.injection = Some(injection(&self.name, header, format, &self.value.0)?);
        Ok(self)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn injection(&self) -> Option<&Injection> {
        self.injection.as_ref()
    }

    /// The secrets file's `placement` list.
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    fn from_entry(mut e: SecretEntry) -> Result<Self, SecretsError> {
        let bad = |problem: &str| SecretsError::Secret {
            name: e.name.clone(),
            problem: problem.to_owned(),
        };
        if e.name.is_empty()
            || !e
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(bad("names are lowercase letters, digits and _"));
        }
        let value = match (e.value.take(), &e.value_from) {
            (Some(v), None) => v,
            (None, Some(from)) => SecretValue(resolve_reference(from).map_err(|p| bad(&p))?),
            (Some(_), Some(_)) => return Err(bad("give `value` or `value_from`, not both")),
            (None, None) => return Err(bad("missing `value` (or `value_from`)")),
        };
        if value.0.is_empty() {
            return Err(bad("empty value"));
        }
        if value.0.contains(PLACEHOLDER_PREFIX) {
            return Err(bad("a value may not contain the placeholder prefix"));
        }
        let injection = match (&e.header, &e.format) {
            (None, None) => None,
            (Some(h), f) => Some(injection(
                &e.name,
                h,
                f.as_deref().unwrap_or("{}"),
                &value.0,
            )?),
            (None, Some(_)) => return Err(bad("`format` needs `header`")),
        };
        let hosts = e
            .hosts
            .iter()
            .map(|h| Host::parse(h.trim()).map_err(|_| bad("`hosts` must be host names")))
            .collect::<Result<_, _>>()?;
        let placements = e
            .placement
            .iter()
            .map(|p| Placement::parse(p.trim()).map_err(|problem| bad(&problem)))
            .collect::<Result<_, _>>()?;
        Ok(Secret {
            hosts,
            placements,
            value,
            name: e.name,
            injection,
        })
    }

    /// The secret's value (for substitution and echo masking only).
    pub(super) fn value(&self) -> &str {
        &self.value.0
    }

    /// Does the secrets file allow this secret at `host`?
    pub(super) fn host_ok(&self, host: &Host) -> bool {
        self.hosts.is_empty() || self.hosts.contains(host)
    }
}

/// The value a `value_from` reference names, read now: `env:NAME` (the
/// variable must be set, UTF-8) or `file:/path` (absolute; the file whole,
/// less one trailing newline). `Err` says what is wrong without any of the
/// value.
fn resolve_reference(from: &str) -> Result<String, String> {
    if let Some(var) = from.strip_prefix("env:") {
        if var.is_empty() || var.contains(['=', '\0']) {
            return Err(format!(
                "`value_from` {from:?}: not an environment variable name"
            ));
        }
        return match std::env::var(var) {
            Ok(v) => Ok(v),
            Err(std::env::VarError::NotPresent) => Err(format!(
                "`value_from` {from:?}: the environment variable {var} is not set"
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                "`value_from` {from:?}: the environment variable {var} is not UTF-8"
            )),
        };
    }
    if let Some(path) = from.strip_prefix("file:") {
        if !Path::new(path).is_absolute() {
            return Err(format!("`value_from` {from:?}: the path must be absolute"));
        }
        let mut text = std::fs::read_to_string(path)
            .map_err(|e| format!("`value_from` {from:?}: cannot read the file: {e}"))?;
        if let Some(v) = text.strip_suffix('\n') {
            let keep = v.strip_suffix('\r').unwrap_or(v).len();
            text.truncate(keep);
        }
        return Ok(text);
    }
    Err(format!(
        "`value_from` {from:?}: expected env:NAME or file:/absolute/path"
    ))
}

fn injection(
    name: &str,
    header: &str,
    format: &str,
    value: &str,
) -> Result<Injection, SecretsError> {
    let bad = |problem: &str| SecretsError::Secret {
        name: name.to_owned(),
        problem: problem.to_owned(),
    };
    let header = HeaderName::from_bytes(header.as_bytes()).map_err(|_| bad("bad header name"))?;
    if format.matches("{}").count() != 1 {
        return Err(bad("`format` must contain {} exactly once"));
    }
    HeaderValue::from_str(&format.replace("{}", value))
        .map_err(|_| bad("the value cannot go in a header"))?;
    Ok(Injection {
        header,
        format: format.to_owned(),
    })
}

/// The host's secrets, loaded from the secrets file.
#[derive(Debug, Clone, Default)]
pub struct SecretStore {
    secrets: Vec<Secret>,
}

impl SecretStore {
    /// Reads a secrets file, refusing one that group or others can read or
    /// that another user owns.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| SecretsError::Read {
            path: shown.clone(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::Permissions { path: shown, mode });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(SecretsError::Owner {
                path: shown,
                owner: meta.uid(),
                me,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
            path: shown,
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses secrets from TOML text (no file checks).
    pub fn from_toml(text: &str) -> Result<Self, SecretsError> {
        // The TOML error's message may quote the offending line, which may
        // hold a secret: keep only its position.
        let file: SecretsFile = toml::from_str(text).map_err(|e| {
            SecretsError::Parse(match e.span() {
                Some(span) => format!("syntax error at byte {}", span.start),
                None => "syntax error".to_owned(),
            })
        })?;
        let secrets = file
            .secret
            .into_iter()
            .map(Secret::from_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(secrets)
    }

    /// A store from secrets built in code.
    pub fn new(secrets: Vec<Secret>) -> Result<Self, SecretsError> {
        let mut seen = std::collections::BTreeSet::new();
        for s in &secrets {
            if !seen.insert(s.name.clone()) {
                return Err(SecretsError::Secret {
                    name: s.name.clone(),
                    problem: "defined twice".into(),
                });
            }
        }
        Ok(SecretStore { secrets })
    }

    pub fn names(&self) -> Vec<&str> {
        self.secrets.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub(super) fn secrets(&self) -> &[Secret] {
        &self.secrets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_secret_entries_are_refused() {
        for (text, why) in [
            ("[[secret]]\nname='Bad-Name'\nvalue='x'", "lowercase"),
            ("[[secret]]\nname='a'\nvalue=''", "empty"),
            (
                "[[secret]]\nname='a'\nvalue='x'\nformat='{}'",
                "needs `header`",
            ),
            (
                "[[secret]]\nname='a'\nvalue='x'\nheader='X'\nformat='no slot'",
                "exactly once",
            ),
            (
                "[[secret]]\nname='a'\nvalue=\"x\\ny\"\nheader='X'",
                "cannot go in a header",
            ),
            (
                "[[secret]]\nname='a'\nvalue='x'\n[[secret]]\nname='a'\nvalue='y'",
                "twice",
            ),
            (
                "[[secret]]\nname='a'\nvalue='x'\nplacement=['body:/x']",
                "header, json, form or query",
            ),
        ] {
            let err = SecretStore::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn file_mode_and_owner_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, "[[secret]]\nname='a'\nvalue='v'\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = SecretStore::load(&path).expect_err("0644 refused");
        assert!(
            matches!(err, SecretsError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            SecretStore::load(&path).expect("0600 ok").names(),
            vec!["a"]
        );
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None)
                .expect("chown");
            let err = SecretStore::load(&path).expect_err("other owner refused");
            assert!(
                matches!(err, SecretsError::Owner { owner: 65534, .. }),
                "{err}"
            );
        }
    }

    /// `value_from` reads an environment variable or a file when the file
    /// is loaded; a literal `value` that starts with `env:` stays literal;
    /// a missing variable or file is an error naming it, not the value.
    #[test]
    fn values_come_from_references_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-the-file\n").expect("write");
        // PATH is set wherever tests run; setting a variable here would race
        // with other threads reading the environment.
        let path = std::env::var("PATH").expect("PATH is set");
        let text = format!(
            "[[secret]]\nname='a'\nvalue_from='env:PATH'\n\
             [[secret]]\nname='b'\nvalue_from='file:{}'\n\
             [[secret]]\nname='c'\nvalue='env:PATH'\n",
            file.display()
        );
        let store = SecretStore::from_toml(&text).expect("parses");
        let values: Vec<&str> = store.secrets().iter().map(Secret::value).collect();
        assert_eq!(values, [path.as_str(), "from-the-file", "env:PATH"]);
        let unset = "OPENCLAW_TEST_UNSET_7F3A";
        assert!(std::env::var_os(unset).is_none());
        let text = format!("[[secret]]\nname='a'\nvalue_from='env:{unset}'\n");
        let err = SecretStore::from_toml(&text)
            .expect_err("unset")
            .to_string();
        assert!(err.contains(unset) && err.contains("not set"), "{err}");
        for (entry, why) in [
            (
                format!("value_from='file:{}/missing'", dir.path().display()),
                "cannot read the file",
            ),
            ("value_from='file:relative/pw'".to_owned(), "absolute"),
            (
                "value_from='vault:x'".to_owned(),
                "expected env:NAME or file:",
            ),
            ("value='x'\nvalue_from='env:HOME'".to_owned(), "not both"),
            (String::new(), "missing `value`"),
        ] {
            let text = format!("[[secret]]\nname='a'\n{entry}\n");
            let err = SecretStore::from_toml(&text).expect_err(&entry).to_string();
            assert!(err.contains(why), "{entry}: {err}");
        }
    }

    /// A host list is read by the one `Host` reading: a port or an IPv6
    /// literal, once dropped or kept as text, now refuses the file.
    #[test]
    fn secret_hosts_are_hosts() {
        let store =
            SecretStore::from_toml("[[secret]]\nname='k'\nvalue='v'\nhosts=[' API.openai.com. ']")
                .expect("parses");
        let host = Host::parse("api.openai.com").expect("host");
        assert!(store.secrets()[0].host_ok(&host));
        for bad in ["api.openai.com:443", "[::1]", "a_b.example"] {
            let text = format!("[[secret]]\nname='k'\nvalue='v'\nhosts=['{bad}']");
            let err = SecretStore::from_toml(&text).expect_err(bad).to_string();
            assert!(err.contains("host names"), "{bad}: {err}");
        }
    }
}
