//! Receipt chains written for tests that read them back: a session's
//! signed start from the receipts crate's own writer, then whatever lines
//! the test needs.

use std::path::Path;

use ed25519_dalek::SigningKey;
use receipts::{DecisionRecord, Receipt, ReceiptLog, SessionStart};

/// The session_start line (without its newline) the receipt writer signs
/// for `id`, labelled with `tenant`.
pub fn start_line(key: &SigningKey, id: &str, tenant: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("receipts.jsonl");
    let log = ReceiptLog::create(
        &path,
        key.clone(),
        SessionStart {
            session_id: id.into(),
            revocation_ids: vec!["r0".into()],
            sandbox: "netns".into(),
            capability_sha256: None,
            tenant: Some(tenant.into()),
            user: None,
        },
    )
    .expect("create chain");
    drop(log);
    let bytes = std::fs::read(&path).expect("read chain");
    receipts::written_part(&bytes)
        .split(|&b| b == b'\n')
        .next()
        .expect("line 1")
        .to_vec()
}

/// A chain `id` signed by `key` whose session_start is followed by `n`
/// decisions without a sig of their own, each linked to the one before: a
/// run longer than the writer ever leaves unsigned once `n` reaches
/// `receipts::MAX_BATCH`, so the verifier refuses line `MAX_BATCH + 1`.
pub fn unsigned_flood(key: &SigningKey, id: &str, tenant: &str, n: usize) -> Vec<u8> {
    unsigned_flood_after(start_line(key, id, tenant), n)
}

/// The session_start line `first`, then `n` decisions linked to it without
/// a sig of their own (see [`unsigned_flood`]).
pub fn unsigned_flood_after(first: Vec<u8>, n: usize) -> Vec<u8> {
    let start: Receipt = serde_json::from_slice(&first).expect("session_start");
    let mut bytes = first.clone();
    bytes.push(b'\n');
    let mut prev = first;
    for seq in 1..=n as u64 {
        let receipt = Receipt {
            v: receipts::UNSIGNED_VERSION,
            session: start.session.clone(),
            seq,
            ts: start.ts.clone(),
            prev: hex::encode(receipts::line_hash(&prev)),
            signer: start.signer.clone(),
            body: receipts::Body::Decision(DecisionRecord {
                action: serde_json::json!({"type": "web", "method": "GET",
                    "host": "example.com", "path": format!("/flood/{seq}")}),
                counters: serde_json::json!({}),
                decision: serde_json::json!({"decision": "allow"}),
                body_sha256: None,
            }),
        };
        let line = receipts::unsigned_line(&receipt).expect("encode");
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
        prev = line;
    }
    bytes
}

/// Extends the file at `path` by a 4 GiB hole (sparse: no disk) and one
/// last byte: a reader that takes the whole file into memory cannot hold it
/// under [`super::capped`]'s 2 GiB address space.
/// Extends the chain file by a 4 GiB hole and nothing after it: the unwritten
/// (NUL) end of a preallocated log, only much longer than the writer leaves.
pub fn add_a_4gib_nul_tail(path: &Path) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open chain");
    let len = file.metadata().expect("stat").len();
    file.set_len(len + (4 << 30)).expect("extend with a hole");
}

pub fn add_a_4gib_hole(path: &Path) {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open chain");
    let len = file.metadata().expect("stat").len();
    file.set_len(len + (4 << 30)).expect("extend with a hole");
    std::io::Write::write_all(&mut &file, b"x").expect("last byte");
}
