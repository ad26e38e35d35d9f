//! A tenant's directory, `<home>/tenants/<name>/`: its layout (sessions,
//! secrets, keys, settings), its creation with its own capability root key
//! and receipt key, and the one way to turn a tenant-relative path into a
//! path on disk without leaving the root (no absolute paths, no `..`, no
//! encoded separators, no symlink that resolves outside).

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

use super::name::TenantName;
use crate::keys;

/// `<home>/tenants`: one directory per tenant.
pub const TENANTS_DIR: &str = "tenants";
/// Where deleted tenants' directories go (kept, never reachable by name).
pub const DELETED_DIR: &str = "tenants-deleted";
/// The tenant's settings file (comments only at creation; `settings.rs`).
pub const SETTINGS: &str = "settings.toml";

/// Why a tenant-relative path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantPathError {
    #[error("the path is empty")]
    Empty,
    #[error("absolute paths are refused")]
    Absolute,
    #[error("the path component {0:?} is refused")]
    BadComponent(String),
    #[error("the path resolves outside the tenant's directory")]
    Escapes,
}

/// The directory of one tenant. Holds no open handles: each use resolves
/// again, so a directory swapped under it is caught by the containment check.
#[derive(Debug, Clone)]
pub struct TenantRoot {
    dir: PathBuf,
}

impl TenantRoot {
    pub fn of(home: &Path, name: &TenantName) -> TenantRoot {
        TenantRoot {
            dir: home.join(TENANTS_DIR).join(name.as_str()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `sessions/`: one bundle per session, as `<home>/sessions` for `openclaw run`.
    pub fn sessions_dir(&self) -> PathBuf {
        self.dir.join("sessions")
    }

    /// `keys/`: the tenant's capability root key and receipt key.
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// Creates the directory (which must not exist) with its layout and a
    /// fresh capability root key pair and receipt key pair under `keys/`:
    /// a token minted for this tenant verifies under no other tenant's key.
    pub fn create(&self) -> Result<()> {
        let parent = self
            .dir
            .parent()
            .context("a tenant directory has a parent")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        // create_dir, not create_dir_all: a leftover directory of the same
        // name is not silently adopted.
        std::fs::create_dir(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        for (sub, mode) in [("sessions", 0o755), ("secrets", 0o700), ("keys", 0o700)] {
            let dir = self.dir.join(sub);
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            set_mode(&dir, mode)?;
        }
        std::fs::write(
            self.dir.join(SETTINGS),
            "# Settings of this tenant: [tenant] (PUT /v1/settings), [admin] (the operator).\n",
        )
        .context("writing settings.toml")?;
        let keys_dir = self.keys_dir();
        let root = keys::generate();
        keys::write_signing_key(&keys_dir.join(keys::ROOT_KEY), &root, false)?;
        keys::write_verifying_key(&keys_dir.join(keys::ROOT_PUB), &root.verifying_key(), false)?;
        let receipt = keys::generate();
        keys::write_signing_key(&keys_dir.join(keys::RECEIPT_KEY), &receipt, false)?;
        keys::write_verifying_key(
            &keys_dir.join(keys::RECEIPT_PUB),
            &receipt.verifying_key(),
            false,
        )?;
        Ok(())
    }

    /// Whether the layout and keys are all there (readiness).
    pub fn is_complete(&self) -> bool {
        let keys = self.keys_dir();
        self.sessions_dir().is_dir()
            && [keys::ROOT_PUB, keys::RECEIPT_PUB]
                .iter()
                .all(|k| keys.join(k).is_file())
    }

    /// `rel` (a tenant-relative path from a request) joined onto the root.
    /// Refused: empty, absolute, any `.`/`..`/empty component, `\`, `%`
    /// (an encoded separator is never decoded into one) and NUL; and a
    /// result whose existing part resolves (symlinks followed) outside the
    /// tenant's directory. The file need not exist.
    pub fn join(&self, rel: &str) -> Result<PathBuf, TenantPathError> {
        if rel.is_empty() {
            return Err(TenantPathError::Empty);
        }
        if rel.starts_with('/') {
            return Err(TenantPathError::Absolute);
        }
        for part in rel.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.contains(['\\', '%', '\0']) {
                return Err(TenantPathError::BadComponent(part.to_owned()));
            }
        }
        let path = self.dir.join(rel);
        // What the path is after the checks above: only normal components.
        debug_assert!(Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_))));
        self.contain(&path)?;
        Ok(path)
    }

    /// Checks that `path` (under the root) resolves inside the root: its
    /// deepest existing ancestor, symlinks followed, is the root or below.
    pub fn contain(&self, path: &Path) -> Result<(), TenantPathError> {
        let root = self
            .dir
            .canonicalize()
            .map_err(|_| TenantPathError::Escapes)?;
        let mut probe = path;
        loop {
            match probe.canonicalize() {
                Ok(real) if real.starts_with(&root) => return Ok(()),
                Ok(_) => return Err(TenantPathError::Escapes),
                // Missing (or a dangling link): look at its parent; a
                // dangling link is then refused when it is opened, since
                // creating through it would leave the root.
                Err(_) => match std::fs::symlink_metadata(probe) {
                    Ok(m) if m.file_type().is_symlink() => return Err(TenantPathError::Escapes),
                    _ => probe = probe.parent().ok_or(TenantPathError::Escapes)?,
                },
            }
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_tenants() -> (tempfile::TempDir, TenantRoot, TenantRoot) {
        let home = tempfile::tempdir().expect("tempdir");
        let a = TenantRoot::of(home.path(), &TenantName::parse("a").expect("name"));
        let b = TenantRoot::of(home.path(), &TenantName::parse("b").expect("name"));
        a.create().expect("create a");
        b.create().expect("create b");
        (home, a, b)
    }

    #[test]
    fn create_lays_out_the_directory_once() {
        let (_home, a, _b) = two_tenants();
        assert!(a.is_complete());
        for sub in ["sessions", "secrets", "keys", SETTINGS] {
            assert!(a.path().join(sub).exists(), "{sub}");
        }
        assert!(a.create().is_err(), "an existing directory is not adopted");
    }

    #[test]
    fn joins_stay_inside_the_root() {
        let (home, a, b) = two_tenants();
        std::fs::create_dir(a.sessions_dir().join("s1")).expect("mkdir");
        let ok = a.join("sessions/s1/session.json").expect("inside");
        assert_eq!(ok, a.path().join("sessions/s1/session.json"));
        let refused = [
            ("", TenantPathError::Empty),
            ("/etc/passwd", TenantPathError::Absolute),
            (
                "../b/keys/root.key",
                TenantPathError::BadComponent("..".into()),
            ),
            (
                "sessions/../../b",
                TenantPathError::BadComponent("..".into()),
            ),
            ("sessions/./s1", TenantPathError::BadComponent(".".into())),
            ("sessions//s1", TenantPathError::BadComponent("".into())),
            (
                "sessions%2F..%2F..%2Fb",
                TenantPathError::BadComponent("sessions%2F..%2F..%2Fb".into()),
            ),
            ("%2e%2e/b", TenantPathError::BadComponent("%2e%2e".into())),
            (
                "sessions\\..\\b",
                TenantPathError::BadComponent("sessions\\..\\b".into()),
            ),
        ];
        for (rel, why) in refused {
            assert_eq!(a.join(rel), Err(why), "{rel:?}");
        }
        // A symlink inside A pointing into B (or anywhere outside A) is refused,
        // whether the target exists or not.
        std::os::unix::fs::symlink(b.sessions_dir(), a.sessions_dir().join("x")).expect("link");
        assert_eq!(a.join("sessions/x"), Err(TenantPathError::Escapes));
        assert_eq!(a.join("sessions/x/new"), Err(TenantPathError::Escapes));
        std::os::unix::fs::symlink(home.path().join("nowhere"), a.sessions_dir().join("d"))
            .expect("link");
        assert_eq!(a.join("sessions/d"), Err(TenantPathError::Escapes));
        // A symlink that stays inside is followed.
        std::os::unix::fs::symlink(a.sessions_dir().join("s1"), a.sessions_dir().join("in"))
            .expect("link");
        assert!(a.join("sessions/in").is_ok());
    }

    #[test]
    fn a_token_minted_under_one_tenant_never_verifies_under_another() {
        let (_home, a, b) = two_tenants();
        let policy = capabilities::Policy::from_toml_str(
            "ttl = \"30m\"\n[web]\nallow = [\"example.com\"]\nmethods = [\"get\"]\n",
        )
        .expect("policy");
        let a_key = keys::read_signing_key(&a.keys_dir().join(keys::ROOT_KEY)).expect("a key");
        let token = capabilities::mint(&policy, &a_key.to_bytes(), std::time::SystemTime::now())
            .expect("mint");
        let a_pub = keys::read_verifying_key(&a.keys_dir().join(keys::ROOT_PUB)).expect("a pub");
        let b_pub = keys::read_verifying_key(&b.keys_dir().join(keys::ROOT_PUB)).expect("b pub");
        assert_ne!(a_pub, b_pub);
        let parsed = capabilities::UnverifiedToken::from_base64(&token).expect("parse");
        assert!(parsed.clone().verify(a_pub.as_bytes()).is_ok());
        assert!(
            parsed.verify(b_pub.as_bytes()).is_err(),
            "A's token must not verify under B's root key"
        );
    }
}
