//! A running session's report kept up to date from what its bundle appends:
//! the live page's follower. Each update reads only the bytes
//! `receipts.jsonl` and `events.jsonl` gained since the last one, carrying
//! the chain verifier's state and the timeline between updates, so an
//! update costs what was appended, not the session's length.
//!
//! The chain is only ever appended to. Before reading on, an update checks
//! that the bytes already taken as proven are still there: the same file
//! (device and inode), at least as long, and the last proven line still
//! hashing to what was verified (its hash chains every line before it).
//! A file replaced, cut into its proven lines or with that line changed is
//! reported invalid from then on, with the report rebuilt from the whole
//! file each update, never taken as a continuation.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ed25519_dalek::VerifyingKey;
use receipts::{Body, ChainError, InterruptedEnd, LineVerifier, Receipt, MAX_LINE_BYTES};

use super::{build_whole, ChainStatus, Outcome, Report, TimelineTally};
use crate::bundle::{self, SessionInfo};

/// How much of a bundle file is read at once.
const CHUNK: usize = 256 << 10;

/// One watched session's report, updated from what its bundle appends.
pub struct ReportFollower {
    dir: PathBuf,
    key: Option<VerifyingKey>,
    chain: ChainFollow,
    events: EventsFollow,
    tally: TimelineTally,
    report: Report,
    /// Why the chain file is no longer the one being followed: from then on
    /// every update is a whole rebuild, reported invalid.
    rewritten: Option<String>,
}

impl ReportFollower {
    /// A follower of the bundle in `dir`; `key` pins the receipt-signing key
    /// (without it the chain is read but reported as unverified).
    pub fn new(dir: &Path, key: Option<VerifyingKey>) -> Self {
        ReportFollower {
            dir: dir.to_path_buf(),
            chain: ChainFollow::new(key),
            key,
            events: EventsFollow::default(),
            tally: TimelineTally::default(),
            report: super::build_from(SessionInfo::default(), b"", &[], None),
            rewritten: None,
        }
    }

    /// The report of the bundle as it is now, read once.
    pub fn into_report(mut self) -> Result<Report> {
        self.update()?;
        Ok(self.report)
    }

    /// Reads what the bundle appended since the last update; the report as
    /// of now.
    pub fn update(&mut self) -> Result<&Report> {
        let session = bundle::read_info(&self.dir)?;
        let running = session.status == "running";
        // An events.jsonl that cannot be read fails the report, as a
        // session.json that cannot: said, not shown without its outcomes.
        let events = self.events.read_new(&self.dir)?;
        if self.rewritten.is_none() {
            if let Err(why) = self.follow(events, running) {
                self.rewritten = Some(why);
            }
        }
        if let Some(why) = &self.rewritten {
            let mut report = build_whole(&self.dir, self.key.as_ref())?;
            report.receipts.detail = format!("{why}; {}", report.receipts.detail);
            report.receipts.status = "invalid".into();
            report.receipts.last_hash = None;
            self.report = report;
            return Ok(&self.report);
        }
        let (counts, bytes, spend) = self.tally.totals(session.capabilities.llm_budget_micro_usd);
        let report = &mut self.report;
        report.receipts = self.chain.status(running);
        report.duration_ms = session.duration_ms();
        report.session = session;
        report.counts = counts;
        report.bytes = bytes;
        report.spend = spend;
        Ok(&self.report)
    }

    /// Reads the new outcomes and receipts into the timeline; `Err` says
    /// how the chain file was rewritten.
    fn follow(&mut self, events: EventsRead, running: bool) -> Result<(), String> {
        let timeline = &mut self.report.timeline;
        let tally = &mut self.tally;
        match events {
            EventsRead::Appended(outcomes) => {
                for o in &outcomes {
                    tally.attach(timeline, o.receipt_seq, Some(o));
                }
            }
            // events.jsonl was replaced or cut: every outcome anew.
            EventsRead::Restarted => tally.attach_all(timeline, &self.events.outcomes),
        }
        let outcomes = &self.events.outcomes;
        let path = self.dir.join(bundle::RECEIPTS);
        match self.chain.read_new(&path, running, |receipt, proven| {
            tally.apply(timeline, receipt, proven, outcomes)
        }) {
            Ok(()) => Ok(()),
            Err(Rewritten::Why(why)) => Err(why),
            Err(Rewritten::Unproven) => {
                // Recovery may cut lines no signature covers yet: the state
                // had read past them, so read the whole file again.
                tracing::debug!("{}: unproven tail cut, re-reading", path.display());
                self.chain = ChainFollow::new(self.key);
                self.tally = TimelineTally::default();
                self.report.timeline.clear();
                self.follow(EventsRead::Restarted, running)
            }
        }
    }
}

/// How the chain file changed other than by appending.
enum Rewritten {
    /// Bytes already taken as proven changed: reported invalid.
    Why(String),
    /// Only lines no signature covered yet were cut.
    Unproven,
}

/// The chain file as followed so far.
struct ChainFollow {
    /// `None` without a key: lines are read, not verified.
    verifier: Option<LineVerifier>,
    key_id: Option<String>,
    /// Device and inode of the file first read.
    identity: Option<(u64, u64)>,
    /// Bytes read and pushed (whole lines).
    consumed: u64,
    /// Bytes of the committed lines: proven, or past the first refused
    /// line (unverified), or every line without a key.
    committed: u64,
    /// The last proven line: where it starts, its length (without the
    /// newline) and its hash.
    last_proven: Option<(u64, u64, [u8; 32])>,
    /// Lines pushed after the last signed one, waiting for its signature
    /// (at most `MAX_BATCH`).
    pending: Vec<Receipt>,
    /// Non-empty lines read (pending included).
    lines: u64,
    /// Lines proven, from the first.
    proven: u64,
    /// The first line refused: from it on, lines are shown unverified.
    refused: Option<ChainError>,
    /// The end of a chain closed by recovery.
    interruption: Option<InterruptedEnd>,
    /// As of the last read: a line without its newline yet at the end.
    torn: bool,
    /// As of the last read: data after the first NUL (checked once the
    /// session no longer runs; a running session's file ends in NULs).
    data_after_gap: bool,
    /// Bytes of a line too long to keep, being skipped to its newline.
    skipping: bool,
    /// Where such a line starts: it was refused already, and is skipped
    /// when read again.
    too_long_at: Option<u64>,
}

impl ChainFollow {
    fn new(key: Option<VerifyingKey>) -> Self {
        ChainFollow {
            verifier: key.map(LineVerifier::new),
            key_id: key.as_ref().map(receipts::key_id),
            identity: None,
            consumed: 0,
            committed: 0,
            last_proven: None,
            pending: Vec::new(),
            lines: 0,
            proven: 0,
            refused: None,
            interruption: None,
            torn: false,
            data_after_gap: false,
            skipping: false,
            too_long_at: None,
        }
    }

    /// Reads the lines appended since the last call, handing each receipt
    /// to `apply` (with whether it is proven) once it is settled.
    fn read_new(
        &mut self,
        path: &Path,
        running: bool,
        mut apply: impl FnMut(Receipt, bool),
    ) -> Result<(), Rewritten> {
        let opened = bundle::open_regular_file(path);
        let (mut file, len) = match opened {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.identity.is_none() => {
                return Ok(());
            }
            Err(e) => {
                return Err(Rewritten::Why(format!(
                    "{} cannot be read: {e}",
                    path.display()
                )))
            }
        };
        self.check_unchanged(&mut file, len)?;
        if self.consumed > len {
            return Err(Rewritten::Unproven);
        }
        file.seek(SeekFrom::Start(self.consumed))
            .map_err(|e| Rewritten::Why(format!("reading {}: {e}", path.display())))?;
        let mut reader = file.take(len - self.consumed);
        let mut buf = vec![0u8; CHUNK];
        // The line being read, and where it starts.
        let mut line: Vec<u8> = Vec::new();
        let mut at = self.consumed;
        let mut gap = false;
        let mut data_in_gap = false;
        self.skipping = self.too_long_at == Some(self.consumed);
        'read: loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Rewritten::Why(format!("reading {}: {e}", path.display()))),
            };
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                let stop = chunk.iter().position(|&b| b == b'\n' || b == 0);
                let taken = &chunk[..stop.unwrap_or(chunk.len())];
                if !self.skipping {
                    line.extend_from_slice(taken);
                    if line.len() > MAX_LINE_BYTES {
                        // Refused by its length: the rest is not kept.
                        self.push(&line, &mut apply);
                        line.clear();
                        self.skipping = true;
                        self.too_long_at = Some(self.consumed);
                    }
                }
                at += taken.len() as u64;
                let Some(i) = stop else { break };
                if chunk[i] == 0 {
                    gap = true;
                    data_in_gap = chunk[i..].iter().any(|&b| b != 0);
                    break 'read;
                }
                at += 1;
                if !std::mem::take(&mut self.skipping) {
                    self.push(&line, &mut apply);
                    line.clear();
                }
                self.consumed = at;
                if self.pending.is_empty() {
                    self.committed = at;
                }
                chunk = &chunk[i + 1..];
            }
        }
        // A line not yet ended is read again next time, whole.
        self.torn = !line.is_empty() || self.skipping;
        self.data_after_gap = data_in_gap;
        if gap && !running && !data_in_gap {
            self.data_after_gap = rest_is_not_all_nul(&mut reader)
                .map_err(|e| Rewritten::Why(format!("reading {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// The file is the one followed, and what it held is still there.
    fn check_unchanged(&mut self, file: &mut File, len: u64) -> Result<(), Rewritten> {
        let meta = file
            .metadata()
            .map_err(|e| Rewritten::Why(format!("receipts.jsonl cannot be read: {e}")))?;
        let identity = (meta.dev(), meta.ino());
        match self.identity {
            None => self.identity = Some(identity),
            Some(known) if known != identity => {
                return Err(Rewritten::Why(
                    "receipts.jsonl was replaced by another file while the session was watched"
                        .into(),
                ))
            }
            Some(_) => {}
        }
        if len < self.committed {
            return Err(Rewritten::Why(format!(
                "receipts.jsonl was cut to {len} bytes while the session was watched: \
                 {} bytes of it had been read",
                self.committed
            )));
        }
        if let Some((start, bytes, hash)) = self.last_proven {
            let mut last = Vec::new();
            let read = file
                .seek(SeekFrom::Start(start))
                .and_then(|_| file.take(bytes).read_to_end(&mut last));
            if read.is_err() || receipts::line_hash(&last) != hash {
                return Err(Rewritten::Why(format!(
                    "receipts.jsonl was rewritten while the session was watched: line {} is \
                     no longer the line that was verified",
                    self.proven
                )));
            }
        }
        Ok(())
    }

    /// One whole line (without its newline).
    fn push(&mut self, line: &[u8], apply: &mut impl FnMut(Receipt, bool)) {
        // Empty lines are not receipts (the verifier refuses one).
        if line.is_empty() && (self.refused.is_some() || self.verifier.is_none()) {
            return;
        }
        self.lines += u64::from(!line.is_empty());
        let Some(verifier) = self.verifier.as_mut().filter(|_| self.refused.is_none()) else {
            // Without a key every line is shown; past a refused line,
            // shown unverified.
            if let Ok(receipt) = serde_json::from_slice::<Receipt>(line) {
                apply(receipt, self.verifier.is_none());
            }
            return;
        };
        let start = self.consumed;
        match verifier.push(line) {
            Ok(verified) if verifier.uncovered() == 0 => {
                for receipt in self.pending.drain(..) {
                    apply(receipt, true);
                }
                if let Body::SessionEnd {
                    interrupted: Some(i),
                    ..
                } = &verified.receipt.body
                {
                    self.interruption = Some(InterruptedEnd {
                        cause: i.cause,
                        at_seq: i.at_seq,
                        recovered_at: verified.receipt.ts.clone(),
                    });
                }
                apply(verified.receipt, true);
                self.proven = verifier.lines() as u64;
                self.last_proven = Some((start, line.len() as u64, verified.hash));
            }
            Ok(verified) => self.pending.push(verified.receipt),
            Err(e) => {
                self.refused = Some(e);
                for receipt in self.pending.drain(..) {
                    apply(receipt, false);
                }
                if let Ok(receipt) = serde_json::from_slice::<Receipt>(line) {
                    apply(receipt, false);
                }
            }
        }
    }

    /// The chain's status as the report gives it ([`super::chain_status`]
    /// says the same of the whole file). While the session runs, a chain
    /// that verified so far is `open`, even mid-write.
    fn status(&self, running: bool) -> ChainStatus {
        let count = self.lines + u64::from(self.torn);
        let Some(verifier) = &self.verifier else {
            return ChainStatus {
                status: "unverified".into(),
                detail: "no receipt public key given; run `openclaw verify --key`".into(),
                count,
                key_id: None,
                last_hash: None,
                verified: None,
            };
        };
        let key_id = self.key_id.clone();
        let invalid = |err: &dyn std::fmt::Display| ChainStatus {
            status: "invalid".into(),
            detail: format!(
                "{err}; only the first {} of {count} receipts are proven, the rest are marked \
                 unverified and not counted",
                self.proven
            ),
            count,
            key_id: key_id.clone(),
            last_hash: None,
            verified: Some(self.proven),
        };
        if let Some(err) = &self.refused {
            return invalid(err);
        }
        let complete = verifier.ended() && self.pending.is_empty() && !self.torn;
        if running && !complete {
            return ChainStatus {
                status: "open".into(),
                detail: "session still running: the chain has no session_end yet".into(),
                count,
                key_id,
                last_hash: None,
                verified: Some(self.proven),
            };
        }
        let line = verifier.lines() + 1;
        if self.torn {
            return invalid(&ChainError::Torn { line });
        }
        if self.data_after_gap {
            return invalid(&ChainError::Malformed {
                line,
                why: "a NUL byte, and data after it (only NULs may follow the last line: the \
                      unwritten end of a preallocated log)"
                    .into(),
            });
        }
        if let Err(err) = verifier.finish() {
            return match err {
                ChainError::MissingEnd { .. } => ChainStatus {
                    status: "invalid".into(),
                    detail: format!(
                        "{err}, but the session is not running: the chain's tail is missing"
                    ),
                    count,
                    key_id,
                    last_hash: None,
                    verified: Some(self.proven),
                },
                err => invalid(&err),
            };
        }
        let (status, detail) = match &self.interruption {
            Some(i) => (
                "interrupted",
                format!("{count} receipts, every signature valid, chain closed by recovery: {i}"),
            ),
            None => (
                "valid",
                format!("{count} receipts, every signature valid, chain complete"),
            ),
        };
        ChainStatus {
            status: status.into(),
            detail,
            count,
            key_id,
            last_hash: Some(hex::encode(verifier.last_hash())),
            verified: Some(count),
        }
    }
}

/// Whether `bytes` are all NULs, compared a page at a time (memcmp: the
/// unwritten tail of a preallocated log may be large).
fn all_nul(bytes: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// Reads to the end: whether anything but NULs is left.
fn rest_is_not_all_nul(reader: &mut impl Read) -> std::io::Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) if !all_nul(&buf[..n]) => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What an update found in `events.jsonl`.
enum EventsRead {
    /// Outcomes appended since the last read.
    Appended(Vec<Outcome>),
    /// The file was replaced or cut: `outcomes` was read again whole.
    Restarted,
}

/// `events.jsonl` as followed so far: the outcomes by decision seq.
#[derive(Default)]
struct EventsFollow {
    identity: Option<(u64, u64)>,
    /// Bytes of whole lines read.
    offset: u64,
    outcomes: HashMap<u64, Outcome>,
}

impl EventsFollow {
    fn read_new(&mut self, dir: &Path) -> Result<EventsRead> {
        let path = dir.join(bundle::EVENTS);
        let (mut file, len) = match bundle::open_regular_file(&path) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let restarted = self.offset > 0;
                *self = EventsFollow::default();
                return Ok(match restarted {
                    true => EventsRead::Restarted,
                    false => EventsRead::Appended(Vec::new()),
                });
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let meta = file.metadata()?;
        let identity = Some((meta.dev(), meta.ino()));
        let restarted = self.identity.is_some() && (self.identity != identity || len < self.offset);
        if restarted {
            *self = EventsFollow::default();
        }
        self.identity = identity;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.take(len - self.offset)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        // A line not yet ended is read again next time.
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset += whole as u64;
        let mut appended = Vec::new();
        for line in bytes[..whole].split(|&b| b == b'\n') {
            // Only `completed` events carry an outcome.
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if value.get("kind").and_then(|k| k.as_str()) != Some("completed") {
                continue;
            }
            if let Ok(outcome) = serde_json::from_value::<Outcome>(value) {
                self.outcomes.insert(outcome.receipt_seq, outcome.clone());
                appended.push(outcome);
            }
        }
        Ok(match restarted {
            true => EventsRead::Restarted,
            false => EventsRead::Appended(appended),
        })
    }
}

#[cfg(test)]
mod tests;
