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
    /// `running`, `completed` (command exited 0), `failed`, `interrupted`,
    /// `timed_out`.
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
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySummary {
    /// "4 grants, 2 constraints"
    pub summary: String,
    /// One line per grant.
    pub grants: Vec<String>,
    pub revocation_ids: Vec<String>,
    pub expires_at: Option<String>,
}

impl SessionInfo {
    pub fn duration_ms(&self) -> Option<u64> {
        let start = humantime::parse_rfc3339(&self.started_at).ok()?;
        let end = match &self.ended_at {
            Some(end) => humantime::parse_rfc3339(end).ok()?,
            None => SystemTime::now(),
        };
        end.duration_since(start).ok().map(|d| d.as_millis() as u64)
    }
}

pub fn read_info(dir: &Path) -> Result<SessionInfo> {
    let path = dir.join(SESSION_JSON);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Writes `session.json` atomically (write beside, rename), so a reader never
/// sees half a file.
pub fn write_info(dir: &Path, info: &SessionInfo) -> Result<()> {
    let path = dir.join(SESSION_JSON);
    let tmp = dir.join(".session.json.tmp");
    let bytes = serde_json::to_vec_pretty(info).context("encoding session.json")?;
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
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
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
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
