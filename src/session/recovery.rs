//! Recovery after a supervisor died: [`recover`] removes what dead
//! supervisors left on the host (sandboxes, cgroups, namespaces, taps,
//! staging: `sandbox::cleanup_stale`) and closes each of their sessions
//! honestly: its chain gets a signed `session_end` saying the session was
//! interrupted at seq N (`receipts::ReceiptLog::finish_interrupted`),
//! `session.json` says `supervisor_died`, the report is regenerated, and
//! the audit log gets the `session.end` line its supervisor never wrote.
//!
//! Chain files are read as `openclaw verify` reads them: a line at a time,
//! memory bounded by the chain's own bounds whatever the file's size, and a
//! chain is checked with its key (stopping at the first line refused)
//! before it is reopened to be closed.
//!
//! Run at the start of every `openclaw run`, by `openclaw recover`, and by
//! `openclaw serve` (for a session child that died, and at its own start). Sessions whose supervisor still runs (same
//! pid, start time and boot) are never touched.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use nix::fcntl::{Flock, FlockArg};
use receipts::{
    ChainError, InterruptionCause, LogOptions, OpenLogError, ReadChainError, ReceiptLog,
    UnverifiedStream, MAX_LINE_BYTES,
};

use crate::audit::{AuditLog, Via};
use crate::bundle::{self, SessionInfo, STATUS_SUPERVISOR_DIED};
use crate::report;
use crate::session::config::DEFAULT_TENANT;
use crate::usage::LedgerDb;

/// Held while recovering, so two openclaw processes starting at once do not
/// both close the same chain. Host-wide (under `/run/openclaw`, beside the
/// owner records), and kept out of the sessions directory, whose entries
/// are sessions.
const LOCK_FILE: &str = "recover.lock";

/// What [`recover`] did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Sandboxes of dead supervisors whose processes, cgroups and staging
    /// were removed.
    pub sandboxes: Vec<String>,
    /// Their session network namespaces (with the taps inside), removed.
    pub networks: Vec<String>,
    /// Sessions of dead supervisors, one entry each.
    pub sessions: Vec<RecoveredSession>,
}

/// One session whose supervisor was found dead.
#[derive(Debug)]
pub struct RecoveredSession {
    pub id: String,
    pub chain: ChainOutcome,
}

/// What became of a dead supervisor's chain.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainOutcome {
    /// Closed with an interrupted `session_end` at `end_seq`; `at_seq` was
    /// the supervisor's last receipt.
    Closed { at_seq: u64, end_seq: u64 },
    /// The supervisor had written its own `session_end` before it died.
    AlreadyEnded,
    /// No chain was ever started (the supervisor died during setup).
    NoChain,
    /// Left as it is, and why: the chain is not ours to sign (another key)
    /// or cannot be reopened. It stays cut, and `openclaw verify` says so.
    LeftOpen(String),
    /// Refused, nothing written: the session's end is recorded in the
    /// home's chain-heads.jsonl, so its chain ended; an open chain now means
    /// the bundle was edited (cut) since, and closing it as interrupted
    /// would launder the cut.
    Refused(String),
}

impl std::fmt::Display for RecoveredSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.chain {
            ChainOutcome::Closed { at_seq, end_seq } => write!(
                f,
                "{}: interrupted (supervisor died) at seq {at_seq}; chain closed with session_end at seq {end_seq}",
                self.id
            ),
            ChainOutcome::AlreadyEnded => {
                write!(f, "{}: supervisor died after ending its chain", self.id)
            }
            ChainOutcome::NoChain => write!(
                f,
                "{}: supervisor died before its chain started",
                self.id
            ),
            ChainOutcome::LeftOpen(why) => {
                write!(f, "{}: chain left open: {why}", self.id)
            }
            ChainOutcome::Refused(why) => {
                write!(f, "{}: refused to close its chain: {why}", self.id)
            }
        }
    }
}

/// Recovers everything dead supervisors left: host resources first (their
/// processes could still write otherwise), then each session under
/// `sessions_dir` still marked running whose supervisor is gone. Chains
/// are closed only with `receipt_key`, and only when it is the chain's own
/// signer; without a key they are left open. Their metered calls go to the
/// usage ledger of `home`, their ends to its audit log (via `cli`), and a
/// session whose end `home`'s chain-heads.jsonl records is never closed
/// again. Blocking.
pub fn recover(
    sessions_dir: &Path,
    home: &Path,
    receipt_key: Option<&SigningKey>,
) -> Result<Recovery> {
    let ledger = LedgerDb::Sqlite(crate::usage::ledger_path(home));
    let audit = Audited {
        log: &AuditLog::at_home(home),
        via: Via::Cli,
    };
    recover_into(
        sessions_dir,
        &crate::home::chain_heads_path(home),
        &ledger,
        audit,
        receipt_key,
    )
}

/// Where the `session.end` lines of recovered sessions go, and how the
/// process that recovers them was asked (`api`: a daemon's; `cli`: the
/// operator's `openclaw recover` or `openclaw run`).
#[derive(Clone, Copy)]
pub struct Audited<'a> {
    pub log: &'a AuditLog,
    pub via: Via,
}

/// [`recover`], the sessions' metered calls going to `ledger` (a daemon's
/// on `--database`, a session's `--ledger-db`), their ends to `audit` (with
/// `--database`, also its audit table), the ended sessions' heads read from
/// `heads` (the home's chain-heads.jsonl).
pub fn recover_into(
    sessions_dir: &Path,
    heads: &Path,
    ledger: &LedgerDb,
    audit: Audited<'_>,
    receipt_key: Option<&SigningKey>,
) -> Result<Recovery> {
    let mut done = Recovery::default();
    let stale = sandbox::cleanup_stale().context("removing dead supervisors' sandboxes")?;
    done.sandboxes = stale.sandboxes;
    done.networks = stale.networks;
    done.sessions = recover_sessions(sessions_dir, heads, ledger, audit, receipt_key)?;
    Ok(done)
}

/// The sessions part of [`recover`]: closes every session under
/// `sessions_dir` still marked running whose supervisor is gone.
fn recover_sessions(
    sessions_dir: &Path,
    heads: &Path,
    ledger: &LedgerDb,
    audit: Audited<'_>,
    receipt_key: Option<&SigningKey>,
) -> Result<Vec<RecoveredSession>> {
    let mut done = Vec::new();
    let entries = match std::fs::read_dir(sessions_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e).with_context(|| format!("reading {}", sessions_dir.display())),
    };
    let _lock = lock()?;
    let mut dirs: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        // Not a bundle, or one being written: not ours to judge.
        let Ok(info) = bundle::read_info(&dir) else {
            continue;
        };
        let dead = info.status == "running" && !info.supervisor_alive();
        let died_before = info.status == STATUS_SUPERVISOR_DIED;
        if !dead && !died_before {
            continue;
        }
        let tail = ChainTail::read(&dir.join(bundle::RECEIPTS));
        // A chain an earlier recovery had to leave open (no key, another
        // key) is retried; reported only if it closes now.
        let retry = died_before && tail.is_open();
        if !dead && !retry {
            continue;
        }
        if let Some(why) = anchored_end(&tail, &info, heads) {
            done.push(RecoveredSession {
                id: info.id,
                chain: ChainOutcome::Refused(why),
            });
            continue;
        }
        let recovered = recover_session(&dir, ledger, audit, info, receipt_key, retry)
            .with_context(|| format!("recovering session {}", dir.display()))?;
        done.extend(recovered);
    }
    Ok(done)
}

fn lock() -> Result<Flock<File>> {
    let dir = Path::new(::netns::RUN_DIR);
    ::netns::records::ensure_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {}", path.display()))
}

fn recover_session(
    dir: &Path,
    ledger: &LedgerDb,
    audit: Audited<'_>,
    mut info: SessionInfo,
    receipt_key: Option<&SigningKey>,
    retry: bool,
) -> Result<Option<RecoveredSession>> {
    let recovered_at = SystemTime::now();
    let chain = close_chain(&dir.join(bundle::RECEIPTS), &info, receipt_key);
    if retry && matches!(chain, ChainOutcome::LeftOpen(_)) {
        return Ok(None);
    }
    // The session ended with its supervisor's last receipt (or, without
    // one, when it started); recovery is when that was found out.
    info.ended_at = Some(
        ChainTail::read(&dir.join(bundle::RECEIPTS))
            .last_receipt_time()
            .unwrap_or_else(|| info.started_at.clone()),
    );
    info.recovered_at = Some(receipts::format_time(recovered_at));
    info.status = STATUS_SUPERVISOR_DIED.into();
    info.supervisor_pid = None;
    info.supervisor_start = None;
    info.supervisor_boot_id = None;
    let id = info.id.clone();
    bundle::write_info(dir, &info)?;
    let key = receipt_key.map(SigningKey::verifying_key);
    let report = report::build(dir, key.as_ref())?;
    report::write(dir, &report)?;
    // Its metered calls reach the ledger as an ended session's do (an
    // index: on failure `openclaw usage rebuild` recreates it).
    if let Some(key) = key.as_ref() {
        if let Err(err) = crate::usage::record_session(ledger, dir, key) {
            tracing::warn!("the usage ledger was not updated for {id}: {err:#}");
        }
    }
    // The end its supervisor never wrote, once: a retry that closes the
    // chain later changes what the bundle holds, not when the session ended.
    if !retry {
        let end = crate::audit::SessionEnd {
            id: &id,
            tenant: info.tenant.as_deref().unwrap_or(DEFAULT_TENANT),
            via: audit.via,
            status: &info.status,
            receipts: Some(report.receipts.count),
            chain_head: report.receipts.last_hash.as_deref(),
        };
        // Said, not fatal: the bundle and the chain record the end.
        if let Err(err) = audit.log.append(&end.record()) {
            tracing::warn!("the end of recovered session {id} was not audited: {err:#}");
        }
    }
    Ok(Some(RecoveredSession { id, chain }))
}

/// Why an open chain must not be closed: its session's end is recorded in
/// `heads` (under the bundle's id or the one its chain's session_start
/// signs), or `heads` cannot be read. None for a chain that needs no end
/// (ended, or never started) or a session never recorded as ended.
fn anchored_end(tail: &ChainTail, info: &SessionInfo, heads: &Path) -> Option<String> {
    if !tail.is_open() {
        return None;
    }
    let records = match crate::home::read_chain_heads(heads) {
        Ok(records) => records,
        Err(err) => {
            return Some(format!(
                "the ended sessions' chain heads cannot be read ({err:#}); no chain is closed \
                 until they can"
            ))
        }
    };
    let signed_id = tail.session();
    let head = records
        .iter()
        .rev()
        .find(|h| h.session == info.id || Some(&h.session) == signed_id.as_ref())?;
    Some(format!(
        "session {} ended at seq {} with chain head {} ({}, recorded in {}), but its chain is \
         open now: the bundle was edited after the session ended. Nothing was written; check \
         it with `openclaw verify {} --heads {}`",
        head.session,
        head.seq,
        head.head,
        head.at,
        heads.display(),
        tail.dir().display(),
        heads.display()
    ))
}

/// What a chain file's written part (up to its first NUL: a crashed log's
/// preallocated tail is not lines) begins and ends with, read a chunk at a
/// time: its first line and its last three, each at most
/// [`MAX_LINE_BYTES`]. Not verified: which chains look open, and when they
/// last wrote; closing one verifies it first ([`close_chain`]).
struct ChainTail {
    path: std::path::PathBuf,
    first: Option<Vec<u8>>,
    /// The last lines, oldest first; a torn end (no newline) included.
    last: VecDeque<Vec<u8>>,
    /// A line longer than a receipt's bound: reading stopped there, and
    /// the chain ends with no line a writer wrote.
    overlong: bool,
}

impl ChainTail {
    const KEPT: usize = 3;

    /// The chain file at `path`; one that is missing or cannot be read (a
    /// FIFO or device is never read) has no lines.
    fn read(path: &Path) -> ChainTail {
        let mut tail = ChainTail {
            path: path.to_owned(),
            first: None,
            last: VecDeque::new(),
            overlong: false,
        };
        if let Ok((file, len)) = bundle::open_regular_file(path) {
            if let Err(err) = tail.scan(file.take(len)) {
                tracing::warn!("reading {}: {err}", path.display());
            }
        }
        tail
    }

    fn scan(&mut self, file: impl Read) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(256 << 10, WrittenPart::new(file));
        let mut line = Vec::new();
        loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let taken = &chunk[..newline.unwrap_or(chunk.len())];
            if line.len() + taken.len() > MAX_LINE_BYTES {
                self.overlong = true;
                return Ok(());
            }
            line.extend_from_slice(taken);
            let used = taken.len() + usize::from(newline.is_some());
            reader.consume(used);
            if newline.is_some() {
                self.push(std::mem::take(&mut line));
            }
        }
        self.push(line);
        Ok(())
    }

    fn push(&mut self, line: Vec<u8>) {
        if line.is_empty() {
            return;
        }
        if self.first.is_none() {
            self.first = Some(line.clone());
        }
        if self.last.len() == Self::KEPT {
            self.last.pop_front();
        }
        self.last.push_back(line);
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The session id the chain's first line names (signed with it).
    fn session(&self) -> Option<String> {
        serde_json::from_slice::<receipts::Receipt>(self.first.as_ref()?)
            .ok()
            .map(|r| r.session)
    }

    /// Whether the chain has lines but no `session_end` last.
    fn is_open(&self) -> bool {
        if self.overlong {
            return true;
        }
        self.last.back().is_some_and(|l| {
            !matches!(
                serde_json::from_slice::<receipts::Receipt>(l),
                Ok(receipts::Receipt {
                    body: receipts::Body::SessionEnd { .. },
                    ..
                })
            )
        })
    }

    /// `ts` of the chain's last receipt before any end recovery wrote.
    fn last_receipt_time(&self) -> Option<String> {
        let mut parsed = self
            .last
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_slice::<receipts::Receipt>(l).ok());
        let last = parsed.next()?;
        let interrupted_end = matches!(
            last.body,
            receipts::Body::SessionEnd {
                interrupted: Some(_),
                ..
            }
        );
        if interrupted_end {
            return parsed.next().map(|r| r.ts);
        }
        Some(last.ts)
    }
}

/// A chain file's written part: reads end at its first NUL, as a reopened
/// log's do (`receipts::written_part`).
struct WrittenPart<R> {
    inner: R,
    ended: bool,
}

impl<R> WrittenPart<R> {
    fn new(inner: R) -> Self {
        WrittenPart {
            inner,
            ended: false,
        }
    }
}

impl<R: Read> Read for WrittenPart<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        match buf[..n].iter().position(|&b| b == 0) {
            Some(nul) => {
                self.ended = true;
                Ok(nul)
            }
            None => Ok(n),
        }
    }
}

/// What a chain read with its key as a stream says of closing it.
enum Closable {
    /// Verified to its end, which the supervisor wrote.
    Ended,
    /// Every line verified, and it stops short of its end (after a torn
    /// line, or lines no signature covers yet, which the reopen cuts).
    Open,
    /// No line at all.
    Empty,
}

/// Reads the chain at `path` as `openclaw verify` does, the written part
/// only: a line at a time, stopping at the first line refused. What a
/// reopen would refuse is refused here without reading further (or holding
/// more than a batch of lines).
fn check_before_reopening(path: &Path, key: &SigningKey) -> Result<Closable, String> {
    let (file, len) = bundle::open_regular_file(path).map_err(|e| format!("reading it: {e}"))?;
    let stream = UnverifiedStream::new(WrittenPart::new(file.take(len)));
    match stream.verify(&key.verifying_key(), |_| {}) {
        Ok(_) => Ok(Closable::Ended),
        Err(ReadChainError::Chain(
            ChainError::MissingEnd { .. } | ChainError::Uncovered { .. } | ChainError::Torn { .. },
        )) => Ok(Closable::Open),
        Err(ReadChainError::Chain(ChainError::Empty)) => Ok(Closable::Empty),
        Err(ReadChainError::Chain(e)) => Err(format!(
            "it does not verify with this receipt key ({}): {e}",
            receipts::key_id(&key.verifying_key())
        )),
        Err(ReadChainError::Read(e)) => Err(format!("reading it: {e}")),
    }
}

fn close_chain(path: &Path, info: &SessionInfo, key: Option<&SigningKey>) -> ChainOutcome {
    if !path.exists() {
        return ChainOutcome::NoChain;
    }
    let Some(key) = key else {
        return ChainOutcome::LeftOpen("no receipt key to close it with".into());
    };
    // session.json names the signer; the reopen below checks it for real
    // (every line, the first one's public key included).
    let ours = receipts::key_id(&key.verifying_key());
    if !info.receipt_key_id.is_empty() && info.receipt_key_id != ours {
        return ChainOutcome::LeftOpen(format!(
            "signed by key {}, not by this receipt key ({ours}); never signed with another key",
            info.receipt_key_id
        ));
    }
    // Read first without writing: a chain that already ended, holds no
    // line, or does not verify is told apart (and said why) before the
    // reopen cuts anything.
    match check_before_reopening(path, key) {
        Ok(Closable::Open) => {}
        Ok(Closable::Ended) => return ChainOutcome::AlreadyEnded,
        Ok(Closable::Empty) => return ChainOutcome::NoChain,
        Err(why) => return ChainOutcome::LeftOpen(why),
    }
    match ReceiptLog::open_existing(path, key.clone(), LogOptions::default()) {
        Ok((log, _)) => match log.finish_interrupted(InterruptionCause::SupervisorDied) {
            Ok(end) => ChainOutcome::Closed {
                at_seq: end.seq.saturating_sub(1),
                end_seq: end.seq,
            },
            Err(e) => ChainOutcome::LeftOpen(format!("writing its session_end: {e}")),
        },
        Err(OpenLogError::Ended { .. }) => ChainOutcome::AlreadyEnded,
        Err(OpenLogError::NoStart { .. }) => ChainOutcome::NoChain,
        Err(e) => ChainOutcome::LeftOpen(format!(
            "it does not reopen with this receipt key ({ours}): {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use receipts::{SessionStart, UnverifiedChain};

    use super::*;

    /// A session whose supervisor "died" (a pid that no longer runs) with a
    /// chain signed by `key` holding a session_start only, as a SIGKILL
    /// leaves it.
    fn sqlite_ledger(home: &Path) -> LedgerDb {
        LedgerDb::Sqlite(crate::usage::ledger_path(home))
    }

    /// The home's audit log, as `openclaw recover` writes it. Leaked: one
    /// small handle per test.
    fn audited(home: &Path) -> Audited<'static> {
        Audited {
            log: Box::leak(Box::new(AuditLog::at_home(home))),
            via: Via::Cli,
        }
    }

    fn dead_session(sessions: &Path, id: &str, key: &SigningKey) -> std::path::PathBuf {
        let dir = sessions.join(id);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let log = ReceiptLog::create(
            &dir.join(bundle::RECEIPTS),
            key.clone(),
            SessionStart {
                session_id: id.into(),
                revocation_ids: vec!["r".into()],
                sandbox: "netns".into(),
                capability_sha256: None,
                tenant: None,
                user: None,
            },
        )
        .expect("chain");
        drop(log);
        let mut gone = std::process::Command::new("true").spawn().expect("spawn");
        let pid = gone.id();
        gone.wait().expect("reap");
        let info = SessionInfo {
            id: id.into(),
            status: "running".into(),
            started_at: "2026-12-03T10:00:00.000000Z".into(),
            receipt_key_id: receipts::key_id(&key.verifying_key()),
            supervisor_pid: Some(pid),
            supervisor_start: Some(1),
            supervisor_boot_id: bundle::boot_id(),
            ..SessionInfo::default()
        };
        bundle::write_info(&dir, &info).expect("session.json");
        dir
    }

    #[test]
    fn a_live_supervisor_is_told_from_a_reused_pid_and_another_boot() {
        let mut info = SessionInfo::default();
        info.set_supervisor_to_self();
        assert!(info.supervisor_alive());
        let mut reused = info.clone();
        reused.supervisor_start = reused.supervisor_start.map(|s| s + 1);
        assert!(!reused.supervisor_alive(), "same pid, other start time");
        let mut rebooted = info.clone();
        rebooted.supervisor_boot_id = Some("another-boot".into());
        assert!(
            !rebooted.supervisor_alive(),
            "same pid and start, other boot"
        );
        let mut none = info;
        none.supervisor_pid = None;
        assert!(!none.supervisor_alive());
    }

    #[test]
    fn a_chain_is_closed_only_with_its_own_key_and_only_once() {
        let home = tempfile::tempdir().expect("tempdir");
        let (ours, other) = (crate::keys::generate(), crate::keys::generate());
        let dir = dead_session(home.path(), "20261203-100000-aaaaaa", &ours);
        let chain = dir.join(bundle::RECEIPTS);
        let before = std::fs::read(&chain).expect("chain");

        // Another key: the chain is left open, not a byte changed; the
        // session is still marked as one whose supervisor died.
        let done = recover_sessions(
            home.path(),
            &home.path().join("chain-heads.jsonl"),
            &sqlite_ledger(home.path()),
            audited(home.path()),
            Some(&other),
        )
        .expect("recover");
        assert_eq!(done.len(), 1);
        assert!(
            matches!(&done[0].chain, ChainOutcome::LeftOpen(why) if why.contains("signed by key")),
            "{:?}",
            done[0]
        );
        assert_eq!(std::fs::read(&chain).expect("chain"), before);
        let info = bundle::read_info(&dir).expect("info");
        assert_eq!(info.status, STATUS_SUPERVISOR_DIED);

        // Retried with its own key by a later recovery: closed, once.
        let done = recover_sessions(
            home.path(),
            &home.path().join("chain-heads.jsonl"),
            &sqlite_ledger(home.path()),
            audited(home.path()),
            Some(&ours),
        )
        .expect("recover");
        assert_eq!(
            done[0].chain,
            ChainOutcome::Closed {
                at_seq: 0,
                end_seq: 1
            }
        );
        let verified = UnverifiedChain::from_bytes(std::fs::read(&chain).expect("chain"))
            .verify(&ours.verifying_key())
            .expect("verifies");
        let end = verified.interruption().expect("interrupted end");
        assert_eq!(end.at_seq, 0);
        assert_eq!(
            end.to_string(),
            format!(
                "interrupted (supervisor died) at seq 0, recovered at {}",
                end.recovered_at
            )
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(bundle::REPORT_JSON)).expect("report"))
                .expect("json");
        assert_eq!(report["receipts"]["status"], "interrupted");
        assert!(recover_sessions(
            home.path(),
            &home.path().join("chain-heads.jsonl"),
            &sqlite_ledger(home.path()),
            audited(home.path()),
            Some(&ours)
        )
        .expect("again")
        .is_empty());
    }

    #[test]
    fn a_session_recorded_as_ended_is_never_closed_again() {
        let home = tempfile::tempdir().expect("tempdir");
        let key = crate::keys::generate();
        let id = "20261203-100000-cccccc";
        let dir = dead_session(home.path(), id, &key);
        let heads = home.path().join("chain-heads.jsonl");
        let chain = std::fs::read(dir.join(bundle::RECEIPTS)).expect("chain");
        let info = std::fs::read(dir.join(bundle::SESSION_JSON)).expect("info");
        let untouched = || {
            assert_eq!(
                std::fs::read(dir.join(bundle::RECEIPTS)).expect("chain"),
                chain
            );
            assert_eq!(
                std::fs::read(dir.join(bundle::SESSION_JSON)).expect("info"),
                info
            );
        };
        crate::home::record_chain_head(
            home.path(),
            &crate::home::ChainHead::new(id, 7, [1; 32], SystemTime::now()),
        )
        .expect("record");
        let ledger = sqlite_ledger(home.path());
        let done = recover_sessions(
            home.path(),
            &heads,
            &ledger,
            audited(home.path()),
            Some(&key),
        )
        .expect("recover");
        assert!(
            matches!(&done[0].chain, ChainOutcome::Refused(why)
                if why.contains("ended at seq 7") && why.contains("the bundle was edited")),
            "{:?}",
            done
        );
        untouched();
        // A heads file that cannot be read stops every close.
        std::fs::write(&heads, "not a record\n").expect("corrupt");
        let done = recover_sessions(
            home.path(),
            &heads,
            &ledger,
            audited(home.path()),
            Some(&key),
        )
        .expect("recover");
        assert!(
            matches!(&done[0].chain, ChainOutcome::Refused(why) if why.contains("cannot be read")),
            "{:?}",
            done
        );
        untouched();
        // Another session's record: closed as before.
        std::fs::remove_file(&heads).expect("rm");
        crate::home::record_chain_head(
            home.path(),
            &crate::home::ChainHead::new("another", 7, [1; 32], SystemTime::now()),
        )
        .expect("record");
        let done = recover_sessions(
            home.path(),
            &heads,
            &ledger,
            audited(home.path()),
            Some(&key),
        )
        .expect("recover");
        assert!(matches!(done[0].chain, ChainOutcome::Closed { .. }));
    }

    #[test]
    fn a_session_whose_supervisor_runs_is_not_touched() {
        let home = tempfile::tempdir().expect("tempdir");
        let key = crate::keys::generate();
        let dir = dead_session(home.path(), "20261203-100000-bbbbbb", &key);
        let mut info = bundle::read_info(&dir).expect("info");
        info.set_supervisor_to_self();
        bundle::write_info(&dir, &info).expect("write");
        let chain = std::fs::read(dir.join(bundle::RECEIPTS)).expect("chain");
        assert!(recover_sessions(
            home.path(),
            &home.path().join("chain-heads.jsonl"),
            &sqlite_ledger(home.path()),
            audited(home.path()),
            Some(&key)
        )
        .expect("recover")
        .is_empty());
        assert_eq!(bundle::read_info(&dir).expect("info").status, "running");
        assert_eq!(
            std::fs::read(dir.join(bundle::RECEIPTS)).expect("chain"),
            chain
        );
    }
}
