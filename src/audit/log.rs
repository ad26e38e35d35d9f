//! `<home>/audit.jsonl`: opened `O_APPEND` for each line, the whole line in
//! one `write`, then `fsync` before the caller answers. State changes are
//! rare (tenants, tokens), so a sync per line costs nothing that matters and
//! a line the caller was told about is on disk. A file rather than a table:
//! it is read with `tail`, `grep` and `jq`, shipped by any log forwarder, and
//! can be made append-only with `chattr +a`. With `--database` each line
//! also goes into the database's `audit` table ([`AuditTable`]), which
//! `openclaw audit --database` reads: every host's lines, the same JSONL.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::record::AuditRecord;

/// The audit log's file name in the openclaw home.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// A table every host of a shared deployment writes its lines into too (the
/// PostgreSQL store's `audit`), so one query reads them all.
pub trait AuditTable: Send + Sync {
    /// Stores one line (the JSON text, without its newline) of `record`.
    fn append_line(&self, record: &AuditRecord, line: &str) -> Result<()>;
    /// Every stored line, in the order they were stored.
    fn lines(&self) -> Result<Vec<String>>;
}

pub struct AuditLog {
    path: PathBuf,
    /// One writer at a time within this process; across processes each
    /// line is one `O_APPEND` write, which the kernel does not interleave.
    lock: Mutex<()>,
    /// Also written, and read instead of the file, when set (`--database`).
    table: Option<Arc<dyn AuditTable>>,
}

impl AuditLog {
    pub fn at_home(home: &Path) -> AuditLog {
        AuditLog {
            path: home.join(AUDIT_FILE),
            lock: Mutex::new(()),
            table: None,
        }
    }

    /// Every line also into `table` (after the file: a line the table holds
    /// is in some host's file too), and [`AuditLog::read`] reads the table.
    pub fn also_into(mut self, table: Arc<dyn AuditTable>) -> AuditLog {
        self.table = Some(table);
        self
    }

    /// Another handle on the same file (and table): each line is one
    /// `O_APPEND` write, so two handles never interleave within a line.
    pub fn share(&self) -> AuditLog {
        AuditLog {
            path: self.path.clone(),
            lock: Mutex::new(()),
            table: self.table.clone(),
        }
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and syncs it to disk.
    pub fn append(&self, record: &AuditRecord) -> Result<()> {
        let mut line = serde_json::to_vec(record).context("encoding an audit line")?;
        line.push(b'\n');
        let _guard = self
            .lock
            .lock()
            .map_err(|_| anyhow::anyhow!("a thread panicked writing the audit log"))?;
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("opening the audit log {}", self.path.display()))?;
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("writing the audit log {}", self.path.display()))?;
        if let Some(table) = &self.table {
            let text = std::str::from_utf8(&line[..line.len() - 1])
                .context("an audit line that is not UTF-8")?;
            table
                .append_line(record, text)
                .context("writing the audit line to the database")?;
        }
        Ok(())
    }

    /// The records that pass `filter`, in file order. A line that is not a
    /// record (a torn last line after a crash) is an error naming its line.
    pub fn read(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        if let Some(table) = &self.table {
            let mut out = Vec::new();
            for (i, line) in table.lines()?.iter().enumerate() {
                let record: AuditRecord = serde_json::from_str(line)
                    .with_context(|| format!("the database's audit line {}", i + 1))?;
                if filter.accepts(&record) {
                    out.push(record);
                }
            }
            return Ok(out);
        }
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        let mut out = Vec::new();
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", self.path.display()))?;
            if line.is_empty() {
                continue;
            }
            let record: AuditRecord = serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", self.path.display(), i + 1))?;
            if filter.accepts(&record) {
                out.push(record);
            }
        }
        Ok(out)
    }
}

/// What `openclaw audit` keeps.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    /// Records at or after this time.
    pub since: Option<SystemTime>,
}

impl AuditFilter {
    fn accepts(&self, record: &AuditRecord) -> bool {
        if let Some(t) = &self.tenant {
            if record.tenant.as_deref() != Some(t.as_str()) {
                return false;
            }
        }
        if let Some(since) = self.since {
            // A time that does not parse is kept: a filter never hides a
            // line it cannot read.
            if let Ok(at) = humantime::parse_rfc3339(&record.time) {
                return at >= since;
            }
        }
        true
    }
}

/// `--since`: an RFC 3339 time, or a duration back from `now` (`1h`, `30m`, `2d`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    let back = humantime::parse_duration(text).with_context(|| {
        format!("--since {text:?}: expected an RFC 3339 time (2026-12-03T10:00:00Z) or a duration (1h, 30m, 2d)")
    })?;
    now.checked_sub(back)
        .with_context(|| format!("--since {text:?} reaches before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Outcome, Via};

    fn record(tenant: &str, time: &str) -> AuditRecord {
        AuditRecord {
            tenant: Some(tenant.into()),
            time: time.into(),
            ..AuditRecord::now(Actor::Admin, Via::Cli, "tenant.create", tenant, "r1")
        }
    }

    #[test]
    fn lines_append_and_filter_by_tenant_and_time() {
        let home = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::at_home(home.path());
        assert!(log.read(&AuditFilter::default()).expect("empty").is_empty());
        log.append(&record("a", "2026-12-01T00:00:00.000Z"))
            .expect("a");
        let mut refused = record("b", "2026-12-03T00:00:00.000Z");
        refused.outcome = Outcome::Refused;
        log.append(&refused).expect("b");
        let all = log.read(&AuditFilter::default()).expect("read");
        assert_eq!(all.len(), 2);
        assert_eq!(all[1], refused);
        let only_a = AuditFilter {
            tenant: Some("a".into()),
            since: None,
        };
        assert_eq!(log.read(&only_a).expect("read").len(), 1);
        let since = AuditFilter {
            tenant: None,
            since: Some(humantime::parse_rfc3339("2026-12-02T00:00:00Z").expect("time")),
        };
        let late = log.read(&since).expect("read");
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].tenant.as_deref(), Some("b"));
        let text = std::fs::read_to_string(log.path()).expect("file");
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(log.path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn since_takes_times_and_durations() {
        let now = humantime::parse_rfc3339("2026-12-03T12:00:00Z").expect("now");
        assert_eq!(
            parse_since("1h", now).expect("1h"),
            humantime::parse_rfc3339("2026-12-03T11:00:00Z").expect("t")
        );
        assert_eq!(
            parse_since("2026-12-01T00:00:00Z", now).expect("rfc"),
            humantime::parse_rfc3339("2026-12-01T00:00:00Z").expect("t")
        );
        assert!(parse_since("yesterday-ish", now).is_err());
    }
}
