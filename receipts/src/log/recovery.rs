//! Reopening a log after a crash: verify every complete line with the key,
//! cut a torn last line and the unwritten (NUL) tail of the preallocated
//! file (never acknowledged), and continue the chain.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use ed25519_dalek::SigningKey;

use super::file::PreallocatedFile;
use super::{io_err, LogOptions, OpenLogError, ReceiptLog};
use crate::stream::{LineSource, Piece};
use crate::verify::LineVerifier;

/// What reopening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Complete receipts kept.
    pub receipts: u64,
    /// Bytes of never-acknowledged writes that were cut off: a torn last
    /// line, and complete lines after the last signed one (a group whose
    /// signed line did not reach the disk). The NUL tail of the
    /// preallocated file, never written, is not counted.
    pub truncated_bytes: u64,
}

impl ReceiptLog {
    /// Reopens a chain after a crash: verifies it with the key, cuts a torn
    /// last line and any lines after the last signed one (never
    /// acknowledged: acknowledgements follow fdatasync of whole groups,
    /// which end signed), and continues it. A complete line that does not verify
    /// is an error, not something to cut.
    ///
    /// The file is preallocated, so a crash leaves NULs where nothing was
    /// written yet. Every acknowledged line, and every byte before it, was
    /// on disk, so the first NUL is past all of them: from there on nothing
    /// is kept, whatever pages of a batch in flight reached the disk after
    /// it. (A line never holds a NUL: canonical JSON escapes it.)
    pub fn open_existing(
        path: &Path,
        key: SigningKey,
        options: LogOptions,
    ) -> Result<(ReceiptLog, Recovered), OpenLogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let mut lines = read_lines(path, &key, &file, None)?;
        let truncated_bytes = lines.written - lines.covered + lines.after_gap;
        if lines.covered < lines.complete {
            // Lines after the last signed one: a group whose signed line
            // never reached the disk. Nothing in it was acknowledged (a
            // write ends with its groups' signed lines, and acknowledgement
            // follows its sync), and nothing vouches for its bytes: cut it.
            // The verifier there comes from reading up to it again (only
            // after such a crash) rather than a copy kept at every signed
            // line on the way.
            lines = read_lines(path, &key, &file, Some(lines.covered))?;
        }
        let ReadLines {
            verifier,
            session,
            covered: complete,
            ..
        } = lines;
        let Some(session) = session else {
            return Err(OpenLogError::NoStart {
                path: path.to_owned(),
            });
        };
        let cut = |file: &std::fs::File| {
            file.set_len(complete)
                .and_then(|()| file.sync_all())
                .map_err(io_err(path))
        };
        if verifier.ended() {
            // A crash between session_end and the close that cuts the
            // zeroed tail leaves NULs after the end: only those are cut.
            if truncated_bytes == 0 && complete < file_len {
                cut(&file)?;
            }
            return Err(OpenLogError::Ended {
                path: path.to_owned(),
            });
        }
        if complete < file_len {
            cut(&file)?;
        }
        let receipts = verifier.lines() as u64;
        let file = PreallocatedFile::new(file, path, complete).map_err(io_err(path))?;
        let log = Self::spawn(file, key, session, receipts, verifier.last_hash(), options)?;
        Ok((
            log,
            Recovered {
                receipts,
                truncated_bytes,
            },
        ))
    }
}

/// What reading a log's lines found. Offsets are bytes from the start.
struct ReadLines {
    /// The verifier after the last line read.
    verifier: LineVerifier,
    session: Option<String>,
    /// Where the last complete line ends.
    complete: u64,
    /// Where the part covered by signatures ends: after the last signed
    /// line (a line with no sig of its own is covered by the next signed
    /// one).
    covered: u64,
    /// Where the written part ends: the first NUL, or the end of the file
    /// (a torn last line is between `complete` and here).
    written: u64,
    /// Bytes that are not NUL after the first NUL: pages of a write in
    /// flight that reached the disk beyond a hole.
    after_gap: u64,
}

/// Verifies the log's complete lines as they are read (up to `until`
/// bytes, when given), holding one line and one read's worth of the file:
/// a chain, a torn end and a preallocated or crash-left NUL end may each
/// be gigabytes. A complete line that does not verify is an error.
fn read_lines(
    path: &Path,
    key: &SigningKey,
    mut file: &File,
    until: Option<u64>,
) -> Result<ReadLines, OpenLogError> {
    let read_err = |source| OpenLogError::Io {
        path: path.to_owned(),
        source,
    };
    file.seek(SeekFrom::Start(0)).map_err(&read_err)?;
    let mut source = LineSource::new(file.take(until.unwrap_or(u64::MAX)));
    let mut verifier = LineVerifier::new(key.verifying_key());
    let chain_err = |source| OpenLogError::Chain {
        path: path.to_owned(),
        source,
    };
    let (mut session, mut complete, mut covered) = (None, 0u64, 0u64);
    let (written, after_gap) = loop {
        match source.next().map_err(&read_err)? {
            Piece::Line(line) => {
                let r = verifier.push(&line).map_err(chain_err)?;
                session.get_or_insert(r.receipt.session);
                complete += line.len() as u64 + 1;
                if verifier.uncovered() == 0 {
                    covered = complete;
                }
            }
            Piece::Long(bytes) => return Err(chain_err(verifier.refuse_length(bytes))),
            Piece::Torn(bytes) => {
                let after_gap = match source.next().map_err(&read_err)? {
                    Piece::End {
                        data_after_gap: true,
                    } => source.non_nul_rest().map_err(&read_err)?,
                    _ => 0,
                };
                break (complete + bytes as u64, after_gap);
            }
            Piece::End { data_after_gap } => {
                let after_gap = match data_after_gap {
                    true => source.non_nul_rest().map_err(&read_err)?,
                    false => 0,
                };
                break (complete, after_gap);
            }
        }
    };
    Ok(ReadLines {
        verifier,
        session,
        complete,
        covered,
        written,
        after_gap,
    })
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use ed25519_dalek::SigningKey;

    use super::super::test_utils::{decision, deferring, key, reopen, start};
    use super::super::{LogOptions, OpenLogError, ReceiptLog, Recovered};
    use crate::UnverifiedChain;

    #[test]
    fn reopen_cuts_a_torn_line_and_continues_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("receipts.jsonl");
        let log = ReceiptLog::create(&path, key(), start()).expect("create");
        for i in 0..5 {
            log.append(decision(i)).expect("append");
        }
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        Write::write_all(&mut f, b"{\"action\":{\"ty").expect("torn write");
        drop(f);
        let (log, rec) = reopen(&path);
        assert_eq!(
            rec,
            Recovered {
                receipts: 6,
                truncated_bytes: 14
            }
        );
        assert_eq!(log.append(decision(9)).expect("append").seq, 6);
        log.finish().expect("finish");
        let chain = UnverifiedChain::from_bytes(std::fs::read(&path).expect("read"))
            .verify(&key().verifying_key())
            .expect("verifies");
        assert_eq!(chain.receipts.len(), 8);
        let err =
            ReceiptLog::open_existing(&path, key(), LogOptions::default()).expect_err("ended");
        assert!(matches!(err, OpenLogError::Ended { .. }), "{err}");
        let other = SigningKey::from_bytes(&[9; 32]);
        assert!(
            ReceiptLog::create(&path, other, start()).is_err(),
            "never clobbers"
        );
    }

    #[test]
    fn reopen_cuts_lines_that_no_signature_covers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("receipts.jsonl");
        let patient = deferring(std::time::Duration::from_secs(3600));
        let log = ReceiptLog::create_with(&path, key(), start(), patient).expect("create");
        log.append(decision(1)).expect("append");
        log.submit_deferred(decision(2)).expect("defer");
        log.submit_deferred(decision(3)).expect("defer");
        log.append(decision(4)).expect("append");
        drop(log);
        // A crash that lost the group's signed last line but kept the two
        // before it (never acknowledged: the group's write had not synced).
        let bytes = std::fs::read(&path).expect("read");
        let ends: Vec<usize> = bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(ends.len(), 5);
        std::fs::write(&path, &bytes[..ends[3]]).expect("cut the signed line");
        let (log, rec) = reopen(&path);
        assert_eq!(
            rec,
            Recovered {
                receipts: 2,
                truncated_bytes: (ends[3] - ends[1]) as u64
            }
        );
        assert_eq!(log.append(decision(9)).expect("append").seq, 2);
        log.finish().expect("finish");
        let chain = UnverifiedChain::from_bytes(std::fs::read(&path).expect("read"))
            .verify(&key().verifying_key())
            .expect("verifies");
        assert_eq!(chain.receipts.len(), 4);
    }
}
