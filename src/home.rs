//! Where openclaw keeps its keys and sessions: `$OPENCLAW_HOME`, else `~/.openclaw`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The openclaw home directory (not created here).
pub fn home_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OPENCLAW_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".openclaw")),
        None => bail!("neither OPENCLAW_HOME nor HOME is set; pass the directory explicitly"),
    }
}

/// Default directory for key files.
pub fn keys_dir() -> Result<PathBuf> {
    Ok(home_dir()?.join("keys"))
}

/// Default directory holding one bundle per session.
pub fn sessions_dir() -> Result<PathBuf> {
    Ok(home_dir()?.join("sessions"))
}

/// The chain heads of ended sessions, outside their bundles: see [`ChainHead`].
pub const CHAIN_HEADS_FILE: &str = "chain-heads.jsonl";

/// `<home>/chain-heads.jsonl`.
pub fn chain_heads_path(home: &Path) -> PathBuf {
    home.join(CHAIN_HEADS_FILE)
}

/// Where a session's receipt chain ended, as its supervisor saw it: one
/// line of `<home>/chain-heads.jsonl`. Someone who can edit a bundle can
/// cut its chain and have recovery close it again as interrupted; this
/// record, kept outside the bundle, is what `openclaw verify --head/--heads`
/// checks the chain against and why `openclaw recover` refuses to close a
/// session again. Hashes only, never anything secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub session: String,
    /// seq of the chain's last receipt (its session_end).
    pub seq: u64,
    /// `sha256:` and the hex SHA-256 of that receipt's line.
    pub head: String,
    /// When the session ended, RFC 3339 UTC.
    pub at: String,
}

impl ChainHead {
    pub fn new(session: &str, seq: u64, hash: [u8; 32], at: SystemTime) -> ChainHead {
        ChainHead {
            session: session.to_owned(),
            seq,
            head: format!("{HEAD_PREFIX}{}", hex::encode(hash)),
            at: receipts::format_time(at),
        }
    }
}

/// How a head is written: `sha256:` then 64 lowercase hex digits.
pub const HEAD_PREFIX: &str = "sha256:";

/// The 32 bytes of a head as printed (`sha256:HEX`, or the hex alone).
pub fn parse_head(text: &str) -> Result<[u8; 32]> {
    let digits = text.trim().strip_prefix(HEAD_PREFIX).unwrap_or(text.trim());
    let mut out = [0u8; 32];
    if digits.len() != 64
        || !digits.bytes().all(|b| b.is_ascii_hexdigit())
        || hex::decode_to_slice(digits.to_ascii_lowercase(), &mut out).is_err()
    {
        bail!("a chain head is sha256: and 64 hex digits, not {text:?}");
    }
    Ok(out)
}

/// Appends `head` to `<home>/chain-heads.jsonl` (created 0600) with one
/// O_APPEND write, and syncs it (and, when it is new, its directory).
pub fn record_chain_head(home: &Path, head: &ChainHead) -> Result<()> {
    let path = chain_heads_path(home);
    let created = !path.exists();
    let mut line = serde_json::to_vec(head)?;
    line.push(b'\n');
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(&line)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    if created {
        File::open(home)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", home.display()))?;
    }
    Ok(())
}

/// Every record in a chain-heads file (none if it does not exist). A line
/// that is not a record is an error: the file is evidence, not a cache.
/// Only lines with their newline count: a last line without one is a
/// record being appended (one write, newline included) as this reads.
pub fn read_chain_heads(path: &Path) -> Result<Vec<ChainHead>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a chain head", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn chain_heads_are_appended_0600_and_read_back_and_heads_parse_as_printed() {
        let home = tempfile::tempdir().expect("tempdir");
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let first = ChainHead::new("s1", 4, [0xab; 32], at);
        let second = ChainHead::new("s2", 9, [0x01; 32], at);
        record_chain_head(home.path(), &first).expect("first");
        record_chain_head(home.path(), &second).expect("second");
        let path = chain_heads_path(home.path());
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            read_chain_heads(&path).expect("read"),
            vec![first.clone(), second]
        );
        assert_eq!(first.head, format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(parse_head(&first.head).expect("parse"), [0xab; 32]);
        assert_eq!(parse_head(&"AB".repeat(32)).expect("bare hex"), [0xab; 32]);
        for bad in ["sha256:", "sha256:zz", "md5:00", &"a".repeat(63)] {
            assert!(parse_head(bad).is_err(), "{bad}");
        }
        assert!(read_chain_heads(&home.path().join("none"))
            .expect("none")
            .is_empty());
        std::fs::write(&path, "{}\n").expect("write");
        assert!(read_chain_heads(&path).is_err());
        // A record still being appended is not read yet.
        let line = serde_json::to_string(&first).expect("json");
        std::fs::write(&path, format!("{line}\n{}", &line[..20])).expect("write");
        assert_eq!(read_chain_heads(&path).expect("read"), vec![first]);
    }
}
