//! `<home>/keys/secrets.key`: the 32-byte key that seals tenant secrets at
//! rest, hex text, mode 0600, created on first use. Made whole in a
//! temporary file and hard-linked into place, so two processes creating it
//! at once agree on one key and nobody reads a half-written one.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::RngCore;

/// The key file's name under `<home>/keys/`.
pub const SECRETS_KEY: &str = "secrets.key";

/// The at-rest key. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SecretsKey([u8; 32]);

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

impl SecretsKey {
    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The home's key, created (0600, in a 0700 `keys/`) when missing.
    pub fn load_or_create(home: &Path) -> Result<SecretsKey> {
        let dir = home.join("keys");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(SECRETS_KEY);
        if !path.exists() {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let tmp = dir.join(format!(".{SECRETS_KEY}.{}", crate::audit::new_request_id()));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| {
                    f.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())?;
                    f.sync_all()
                });
            let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                // Another process made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        Self::load(&path)
    }

    /// Reads a key file, refusing one that group or others can read or
    /// that another user owns (as the secrets file is checked).
    fn load(path: &Path) -> Result<SecretsKey> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.mode() & 0o077 != 0 {
            bail!(
                "{} is readable by others (mode {:o}); run chmod 600 on it",
                path.display(),
                meta.mode() & 0o7777
            );
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            bail!(
                "{} is owned by uid {}, not by this user (uid {me})",
                path.display(),
                meta.uid()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key)
            .map_err(|_| anyhow::anyhow!("{} is not 64 hex characters", path.display()))?;
        Ok(SecretsKey(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_private_and_then_reused() {
        let home = tempfile::tempdir().expect("tempdir");
        let a = SecretsKey::load_or_create(home.path()).expect("create");
        let b = SecretsKey::load_or_create(home.path()).expect("reuse");
        assert_eq!(a.bytes(), b.bytes());
        assert!(!format!("{a:?}").contains(&hex::encode(a.bytes())));
        let path = home.path().join("keys").join(SECRETS_KEY);
        let mode = std::fs::metadata(&path).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file left beside it.
        let names: Vec<_> = std::fs::read_dir(home.path().join("keys"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [SECRETS_KEY]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = SecretsKey::load_or_create(home.path()).expect_err("0640 refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
