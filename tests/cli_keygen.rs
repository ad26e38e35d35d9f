//! `openclaw keygen` through the real binary: files, modes, refusal to overwrite.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod support;

use support::openclaw;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn keygen_writes_both_pairs_into_the_home_with_private_keys_0600() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = openclaw(home.path()).arg("keygen").output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = home.path().join("keys");
    for private in ["root.key", "receipt.key"] {
        assert_eq!(mode(&keys.join(private)), 0o600, "{private}");
        let text = std::fs::read_to_string(keys.join(private)).expect("read");
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
    }
    for public in ["root.pub", "receipt.pub"] {
        let text = std::fs::read_to_string(keys.join(public)).expect("read");
        assert!(text.starts_with("-----BEGIN PUBLIC KEY-----"), "{text}");
    }
    // Two independent key pairs, not one key twice.
    assert_ne!(
        std::fs::read(keys.join("root.key")).expect("read"),
        std::fs::read(keys.join("receipt.key")).expect("read")
    );
}

#[test]
fn keygen_refuses_to_overwrite_without_force_and_keeps_old_keys() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("elsewhere");
    let first = openclaw(home.path())
        .args(["keygen", "--dir"])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(first.status.success());
    let before = std::fs::read(dir.join("root.key")).expect("read");

    let again = openclaw(home.path())
        .args(["keygen", "--dir"])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.join("root.key")).expect("read"), before);

    let forced = openclaw(home.path())
        .args(["keygen", "--force", "--dir"])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(forced.status.success());
    assert_ne!(std::fs::read(dir.join("root.key")).expect("read"), before);
    assert_eq!(mode(&dir.join("root.key")), 0o600);
}

#[test]
fn every_subcommand_help_teaches_with_an_example() {
    let home = tempfile::tempdir().expect("tempdir");
    let top = openclaw(home.path()).arg("--help").output().expect("run");
    assert!(top.status.success());
    let text = String::from_utf8_lossy(&top.stdout);
    for sub in [
        "run", "cap", "verify", "report", "keygen", "demo", "ui", "image",
    ] {
        assert!(text.contains(sub), "top-level help lists {sub}: {text}");
    }
    let keygen = openclaw(home.path())
        .args(["keygen", "--help"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&keygen.stdout).contains("Examples:"));
}
