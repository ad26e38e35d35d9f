//! `openclaw recover` on bundles written by the test: a session still
//! marked running whose supervisor is gone (no pid), with the chain the
//! test needs. How recovery reads a chain (as `openclaw verify` does: a
//! line at a time, stopping at the first line refused) and what it leaves
//! in the home (session.json, the audit log). Needs root, as the command
//! does (it also removes dead supervisors' sandboxes, cgroups, namespaces).

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};

mod support;

use support::{capped, capped_to, chains, run, text};

fn receipt_key() -> SigningKey {
    SigningKey::from_bytes(&[0x71; 32])
}

/// A home with the receipt key pair where `openclaw recover` looks.
fn home() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("home");
    let keys = home.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let key = receipt_key();
    let private = key.to_pkcs8_pem(LineEnding::LF).expect("pem");
    std::fs::write(keys.join("receipt.key"), private.as_bytes()).expect("write key");
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    std::fs::write(keys.join("receipt.pub"), public).expect("write key");
    home
}

/// A bundle `id` of tenant `acme` marked running with no supervisor (as a
/// dead one's looks to recovery), holding `chain` as its receipts.
fn dead_session(home: &Path, id: &str, chain: &[u8]) -> PathBuf {
    let dir = home.join("sessions").join(id);
    std::fs::create_dir_all(&dir).expect("session dir");
    std::fs::write(dir.join("receipts.jsonl"), chain).expect("chain");
    let info = json!({
        "id": id,
        "status": "running",
        "backend": "netns",
        "backend_reason": "written by the test",
        "started_at": "2026-12-07T01:00:00.000000Z",
        "command": ["true"],
        "capabilities": {"summary": "", "grants": [], "revocation_ids": ["r0"]},
        "ca_fingerprint": "",
        "receipt_key_id": receipts::key_id(&receipt_key().verifying_key()),
        "resolve": [],
        "upstream_ca": [],
        "tenant": "acme",
    });
    std::fs::write(dir.join("session.json"), info.to_string()).expect("session.json");
    dir
}

/// `openclaw verify` of the bundle with the home's receipt key, which must
/// pass.
fn verified(home: &Path, dir: &Path, more: &[&str]) -> std::process::Output {
    let key = home.join("keys/receipt.pub");
    let mut args = vec!["verify", dir.to_str().expect("utf8"), "--key"];
    args.push(key.to_str().expect("utf8"));
    args.extend_from_slice(more);
    let out = run(home, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    out
}

fn session_json(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("session.json")).expect("read"))
        .expect("json")
}

/// A chain whose session_start is followed by more lines without a
/// signature than the writer ever leaves, then a 4 GiB hole and a byte.
/// Under a 2 GiB address-space cap a recovery that reads the whole chain
/// file cannot even hold it; one that reads as it verifies refuses the
/// flood where it passes the bound and leaves the chain open, saying why,
/// having read a few megabytes.
#[test]
fn recovery_refuses_a_flooded_chain_without_reading_the_rest_of_the_file() {
    let home = home();
    let id = "20261207-010000-f100d0";
    let flood = chains::unsigned_flood(&receipt_key(), id, "acme", receipts::MAX_BATCH + 500);
    let dir = dead_session(home.path(), id, &flood);
    chains::add_a_4gib_hole(&dir.join("receipts.jsonl"));
    let out = capped(home.path(), &["recover"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("! {id}: chain left open"))
            && said.contains(&format!("line {}", receipts::MAX_BATCH + 1)),
        "{said}"
    );
    assert_eq!(session_json(&dir)["status"], "supervisor_died");
}

/// A dead session's valid chain followed by a 4 GiB unwritten (NUL) end,
/// as a preallocated log leaves one, only longer: reopening it to close the
/// chain reads the written lines and scans the rest, instead of reading the
/// whole file into memory (which a 2 GiB address-space cap does not allow).
#[test]
fn a_chain_with_a_long_unwritten_end_is_closed_without_reading_it_into_memory() {
    let home = home();
    let id = "20261207-010000-a110c0";
    let mut chain = chains::start_line(&receipt_key(), id, "acme");
    chain.push(b'\n');
    let dir = dead_session(home.path(), id, &chain);
    let receipts = dir.join("receipts.jsonl");
    chains::add_a_4gib_nul_tail(&receipts);
    let out = capped(home.path(), &["recover"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("✓ {id}: interrupted (supervisor died) at seq 0")),
        "{said}"
    );
    assert_eq!(session_json(&dir)["status"], "supervisor_died");
    // The NUL end is cut and the chain closed: it verifies.
    assert!(std::fs::metadata(&receipts).expect("stat").len() < 1 << 20);
    verified(home.path(), &dir, &[]);
}

/// A dead session's chain whose last line is torn 300 MiB long (a write
/// that never ended with its newline, garbage after the last line): the
/// reopen that closes the chain reads its lines as it verifies them and
/// only counts the torn end it cuts, so it runs under a 256 MiB
/// address-space cap that a reopen holding the written part could not.
#[test]
fn a_chain_with_a_long_torn_end_is_closed_without_holding_it() {
    let home = home();
    let id = "20261207-010000-70a000";
    let mut chain = chains::start_line(&receipt_key(), id, "acme");
    chain.push(b'\n');
    let dir = dead_session(home.path(), id, &chain);
    let receipts = dir.join("receipts.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&receipts)
        .expect("open chain");
    let garbage = vec![b'x'; 1 << 20];
    for _ in 0..300 {
        std::io::Write::write_all(&mut file, &garbage).expect("torn end");
    }
    drop(file);
    let out = capped_to(home.path(), &["recover"], 256);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("✓ {id}: interrupted (supervisor died) at seq 0")),
        "{said}"
    );
    assert!(std::fs::metadata(&receipts).expect("stat").len() < 1 << 20);
    verified(home.path(), &dir, &[]);
}

/// A session whose supervisor died has its end audited by the recovery
/// that closes it, as a supervisor audits the end of the session it ran:
/// a `session.end` line naming the status, the receipts and the chain's
/// head (the one `openclaw verify` reports for the closed chain).
#[test]
fn a_session_closed_by_recovery_has_its_end_audited() {
    let home = home();
    let id = "20261207-010000-e0d000";
    let mut chain = chains::start_line(&receipt_key(), id, "acme");
    chain.push(b'\n');
    let dir = dead_session(home.path(), id, &chain);
    let out = run(home.path(), &["recover"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("✓ {id}: interrupted (supervisor died) at seq 0")),
        "{}",
        text(&out)
    );
    let verified = verified(home.path(), &dir, &["--json"]);
    let verified: Value = serde_json::from_slice(&verified.stdout).expect("json");
    let head = verified["last_hash"].as_str().expect("last_hash");

    let audit = std::fs::read_to_string(home.path().join("audit.jsonl")).unwrap_or_default();
    let ends: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("audit json"))
        .filter(|l| l["action"] == "session.end")
        .collect();
    assert_eq!(ends.len(), 1, "{audit}");
    let end = &ends[0];
    assert_eq!(
        (&end["target"], &end["tenant"], &end["via"], &end["outcome"]),
        (&json!(id), &json!("acme"), &json!("cli"), &json!("ok")),
        "{end}"
    );
    assert_eq!(
        end["detail"],
        format!("supervisor_died; 2 receipts; chain head {head}"),
        "{end}"
    );
    // A second recovery finds nothing to do, and audits nothing again.
    let again = run(home.path(), &["recover"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let audit = std::fs::read_to_string(home.path().join("audit.jsonl")).expect("audit");
    assert_eq!(audit.matches("session.end").count(), 1, "{audit}");
}
