//! A session bundle: `<home>/sessions/<id>/` with `session.json`,
//! `capabilities.cap`, `receipts.jsonl`, `events.jsonl`, `report.json`,
//! `report.html`, `console.log` (the command's output) and, on the kvm
//! backend, `guest-console.log` (the guest kernel's serial console). This module names the files and reads and
//! writes the ones the supervisor owns.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const SESSION_JSON: &str = "session.json";
pub const CAPABILITIES: &str = "capabilities.cap";
pub const RECEIPTS: &str = "receipts.jsonl";
pub const EVENTS: &str = "events.jsonl";
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_HTML: &str = "report.html";
pub const CONSOLE_LOG: &str = "console.log";

/// `session.json`: what ran, where, under which token, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    /// `running`, `completed` (command exited 0), `failed`, `interrupted`
    /// (Ctrl-C / SIGTERM), `timed_out`, or `supervisor_died` (set by
    /// recovery: the supervisor process died while the session ran; shown
    /// as "interrupted (supervisor died)"). `interrupted` and `timed_out`
    /// say what the supervisor did, never what the exit code is: a command
    /// exiting 130 or 124 by itself is `failed`.
    pub status: String,
    /// Isolation backend actually used, and why it was chosen.
    pub backend: String,
    pub backend_reason: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Time to a ready sandbox (namespace set up or VM booted), ms.
    pub sandbox_ready_ms: Option<u64>,
    /// kvm backend: VM creation to the guest init's boot marker, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_ms: Option<u64>,
    /// kvm backend: the microVM's vCPUs and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_vcpus: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_mem_mib: Option<u64>,
    /// The microVM's root filesystem: `name (id prefix)`, or `initramfs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_image: Option<String>,
    pub command: Vec<String>,
    pub task: Option<String>,
    pub exit_code: Option<i32>,
    pub capabilities: CapabilitySummary,
    /// SHA-256 fingerprint of the session CA certificate (DER), hex.
    pub ca_fingerprint: String,
    /// Key id of the receipt-signing key.
    pub receipt_key_id: String,
    /// `--resolve` overrides and `--upstream-ca` files the proxy used.
    pub resolve: Vec<String>,
    pub upstream_ca: Vec<String>,
    /// The supervisor's pid while running: the UI tells live from crashed.
    pub supervisor_pid: Option<u32>,
    /// With the pid, what makes the supervisor one process and not whatever
    /// reuses its pid later: its start time (clock ticks since boot, field
    /// 22 of `/proc/<pid>/stat`) and the boot it ran in
    /// (`/proc/sys/kernel/random/boot_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_boot_id: Option<String>,
    /// When recovery closed the session of a dead supervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_at: Option<String>,
    /// The session's resource bounds, what it used of them and which it hit.
    #[serde(default)]
    pub bounds: SessionBounds,
    /// Who the session is billed to (`openclaw run --tenant`); absent in
    /// sessions from before labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Who ran it (`openclaw run --user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Names of the secrets the session may use (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// Status of a session whose supervisor died (written by recovery).
pub const STATUS_SUPERVISOR_DIED: &str = "supervisor_died";

/// The id of the running kernel's boot (changes at every boot).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `openclaw run --work-max`, `--console-max` and `--dns-refusal-receipts`,
/// and what the session used of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionBounds {
    /// The size cap of `/work` (0: none).
    pub work_max_bytes: u64,
    /// What `/work` held when the command ended (capped `/work` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_used_bytes: Option<u64>,
    /// `/work` filled up while the command ran: writes there failed with
    /// `ENOSPC`.
    #[serde(default)]
    pub work_full: bool,
    /// How much output `console.log` keeps.
    pub console_max_bytes: u64,
    /// Every byte the command wrote to stdout and stderr, kept or not.
    #[serde(default)]
    pub console_bytes: u64,
    /// Of which `console.log` holds.
    #[serde(default)]
    pub console_kept_bytes: u64,
    /// Refused DNS names receipted one by one before aggregate receipts.
    pub dns_refusal_receipts: usize,
    /// The bounds the session hit, one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hit: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySummary {
    /// "4 grants, 2 constraints"
    pub summary: String,
    /// One line per grant.
    pub grants: Vec<String>,
    pub revocation_ids: Vec<String>,
    pub expires_at: Option<String>,
    /// The token's LLM budget (`llm.budget_usd`, the narrowest any block
    /// sets) in micro-USD, read from the verified token at session start;
    /// absent without a budget and in bundles from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_budget_micro_usd: Option<u64>,
}

impl SessionInfo {
    /// Records the calling process as the session's supervisor.
    pub fn set_supervisor_to_self(&mut self) {
        let me = ::netns::records::Owner::current();
        self.supervisor_pid = Some(me.pid);
        self.supervisor_start = Some(me.start);
        self.supervisor_boot_id = boot_id();
    }

    /// Whether the process recorded as supervisor still runs: the same pid
    /// with the same start time in the same boot. Without a recorded start
    /// time (bundles from before it was recorded) an existing pid counts as
    /// alive, so a live session is never taken for a dead one.
    pub fn supervisor_alive(&self) -> bool {
        let Some(pid) = self.supervisor_pid else {
            return false;
        };
        if let (Some(then), Some(now)) = (&self.supervisor_boot_id, boot_id()) {
            if *then != now {
                return false;
            }
        }
        ::netns::records::Owner {
            pid,
            start: self.supervisor_start.unwrap_or(0),
        }
        .is_alive()
    }

    pub fn duration_ms(&self) -> Option<u64> {
        let start = humantime::parse_rfc3339(&self.started_at).ok()?;
        let end = match &self.ended_at {
            Some(end) => humantime::parse_rfc3339(end).ok()?,
            None => SystemTime::now(),
        };
        end.duration_since(start).ok().map(|d| d.as_millis() as u64)
    }
}

/// A bundle file opened for reading, and its size, if it is a regular file.
/// A bundle may come from someone else (`openclaw verify`, `openclaw report`
/// on a bundle sent for audit): a file that is a FIFO would have the reader
/// wait for a writer (or read whatever one sends), and a device such as
/// /dev/zero never ends. The file is opened without waiting for a writer
/// and checked; read it up to the size it had then.
pub fn open_regular_file(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(
            "it is not a regular file (a FIFO, device or directory is never a bundle file)",
        ));
    }
    Ok((file, meta.len()))
}

/// A bundle file's bytes, if it is a regular file ([`open_regular_file`]).
pub fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let (file, len) = open_regular_file(path)?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(usize::try_from(len).map_err(std::io::Error::other)?)?;
    file.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}

pub fn read_info(dir: &Path) -> Result<SessionInfo> {
    let path = dir.join(SESSION_JSON);
    let bytes = read_regular_file(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Replaces `session.json` whole ([`crate::atomic_file::replace`]), so a
/// reader never sees half a file and a crash leaves the old or the new.
pub fn write_info(dir: &Path, info: &SessionInfo) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(info).context("encoding session.json")?;
    crate::atomic_file::replace(&dir.join(SESSION_JSON), &bytes, 0o644)
}

/// What the proxy reported after a decision: the status sent to the
/// sandbox and the bytes each way, keyed by the decision receipt's seq. Read
/// from the `completed` events in `events.jsonl`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    #[serde(alias = "receipt")]
    pub receipt_seq: u64,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub bytes_up: u64,
    #[serde(default, alias = "bytes")]
    pub bytes_down: u64,
}

/// The outcomes recorded in `events.jsonl` (missing file: none yet).
pub fn read_outcomes(dir: &Path) -> Result<Vec<Outcome>> {
    let path = dir.join(EVENTS);
    let file = match open_regular_file(&path) {
        Ok((file, len)) => std::io::Read::take(file, len),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut outcomes = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        // Only `completed` events carry an outcome; a torn last line after a
        // crash is skipped rather than failing the report.
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if value.get("kind").and_then(|k| k.as_str()) != Some("completed") {
            continue;
        }
        if let Ok(outcome) = serde_json::from_value::<Outcome>(value) {
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

/// Appends one NDJSON line to `events.jsonl`.
pub struct EventsFile {
    file: std::fs::File,
}

impl EventsFile {
    pub fn create(dir: &Path) -> Result<Self> {
        let path = dir.join(EVENTS);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(EventsFile { file })
    }

    pub fn append(&mut self, line: &str) -> Result<()> {
        writeln!(self.file, "{line}").context("writing events.jsonl")
    }
}

/// `<home>/sessions/<id>` for a session id or a path given by the user.
pub fn resolve_dir(sessions_dir: &Path, session: &str) -> PathBuf {
    let as_path = Path::new(session);
    if as_path.join(SESSION_JSON).exists() || session.contains('/') {
        as_path.to_path_buf()
    } else {
        sessions_dir.join(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `session.json` is replaced without following anything planted at a
    /// temporary name (before, `.session.json.tmp` was fixed and written
    /// through a link), and a failed write leaves no temporary behind.
    #[test]
    fn session_json_is_replaced_without_following_or_leaving_a_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("outside");
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.path().join(".session.json.tmp")).expect("symlink");
        write_info(dir.path(), &SessionInfo::default()).expect("write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        read_info(dir.path()).expect("session.json reads back");

        let blocked = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(blocked.path().join(SESSION_JSON)).expect("mkdir");
        write_info(blocked.path(), &SessionInfo::default()).expect_err("a directory refuses");
        let names: Vec<_> = std::fs::read_dir(blocked.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [SESSION_JSON], "no temporary left");
    }
}
