//! Key files: ed25519 keys as PEM (PKCS#8 private, SPKI public), shared by the
//! capability root key and the receipt-signing key. Private key files are
//! created 0600 and never overwritten by accident.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// File names inside a keys directory.
pub const ROOT_KEY: &str = "root.key";
pub const ROOT_PUB: &str = "root.pub";
pub const RECEIPT_KEY: &str = "receipt.key";
pub const RECEIPT_PUB: &str = "receipt.pub";

pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// Writes a private key with mode 0600; with `force` an existing file is replaced.
pub fn write_signing_key(path: &Path, key: &SigningKey, force: bool) -> Result<()> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding private key")?;
    write_new(path, pem.as_bytes(), 0o600, force)
}

pub fn write_verifying_key(path: &Path, key: &VerifyingKey, force: bool) -> Result<()> {
    let pem = key
        .to_public_key_pem(LineEnding::LF)
        .context("encoding public key")?;
    write_new(path, pem.as_bytes(), 0o644, force)
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading private key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&text)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "{} is not an ed25519 private key (PKCS#8 PEM)",
                path.display()
            )
        })
}

pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading public key {}", path.display()))?;
    VerifyingKey::from_public_key_pem(&text)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{} is not an ed25519 public key (SPKI PEM)", path.display()))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            path.display()
        );
    }
    // Written beside and renamed, so a crash never leaves a half-written
    // key and the mode is right from the first byte.
    crate::atomic_file::replace(path, bytes, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_key_round_trips_with_mode_0600_and_refuses_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        let key = generate();
        write_signing_key(&path, &key, false).expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            read_signing_key(&path).expect("read").to_bytes(),
            key.to_bytes()
        );
        let err = write_signing_key(&path, &generate(), false).expect_err("must refuse");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(
            read_signing_key(&path).expect("read").to_bytes(),
            key.to_bytes()
        );
        write_signing_key(&path, &generate(), true).expect("force");
        assert_ne!(
            read_signing_key(&path).expect("read").to_bytes(),
            key.to_bytes()
        );
    }

    #[test]
    fn public_key_round_trips_and_garbage_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pub");
        let key = generate().verifying_key();
        write_verifying_key(&path, &key, false).expect("write");
        assert_eq!(read_verifying_key(&path).expect("read"), key);
        std::fs::write(&path, "not a key").expect("write");
        assert!(read_verifying_key(&path).is_err());
        assert!(read_signing_key(&path).is_err());
    }

    /// Writing `k.key` is no business of a file named `k.tmp` beside it;
    /// before, the write used that name for its temporary and deleted it.
    #[test]
    fn writing_a_key_leaves_other_files_beside_it_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let unrelated = dir.path().join("k.tmp");
        std::fs::write(&unrelated, b"mine").expect("unrelated");
        let path = dir.path().join("k.key");
        write_signing_key(&path, &generate(), false).expect("write");
        assert_eq!(std::fs::read(&unrelated).expect("still there"), b"mine");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["k.key", "k.tmp"], "no temporary left");
    }
}
