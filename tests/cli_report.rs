//! `openclaw report` on a bundle someone sent, run as a reviewer would: the
//! real binary, a bundle on disk, a public key, no openclaw home.

use std::path::{Path, PathBuf};
use std::process::Command;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("receipts/fixtures/golden")
}

/// The golden chain (complete, valid), then a 1.5 GiB hole: what a
/// preallocated log leaves after its last line, only larger. Under a 1 GiB
/// address-space cap, a report that reads the whole file first cannot hold
/// it (and took the chain for missing); one that reads as it verifies
/// reports the chain valid.
#[test]
fn a_chain_with_a_huge_unwritten_tail_is_reported_without_holding_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let info = serde_json::json!({
        "id": "golden-0001", "status": "completed", "backend": "netns",
        "backend_reason": "", "started_at": "2026-11-18T11:06:40Z",
        "ended_at": "2026-11-18T11:06:47Z", "command": [], "task": null,
        "exit_code": 0, "ca_fingerprint": "", "receipt_key_id": "",
        "resolve": [], "upstream_ca": [],
        "capabilities": {"summary": "", "grants": [], "revocation_ids": [], "expires_at": null},
    });
    std::fs::write(dir.join("session.json"), info.to_string()).expect("session.json");
    let chain = dir.join("receipts.jsonl");
    std::fs::copy(golden_dir().join("receipts.jsonl"), &chain).expect("copy");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&chain)
        .expect("open");
    let len = file.metadata().expect("stat").len();
    file.set_len(len + (3 << 29)).expect("a hole of NULs");
    drop(file);
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 1048576 && exec "$0" report "$@""#)
        .arg(env!("CARGO_BIN_EXE_openclaw"))
        .arg(dir)
        .arg("--key")
        .arg(golden_dir().join("receipt.pub"))
        .env_remove("OPENCLAW_HOME")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run openclaw");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json"))
            .expect("json");
    assert_eq!(
        report["receipts"]["status"], "valid",
        "{}",
        report["receipts"]
    );
    assert_eq!(report["receipts"]["count"], 7);
}
