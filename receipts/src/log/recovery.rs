//! Reopening a log after a crash: verify every complete line with the key,
//! cut a torn last line and the unwritten (NUL) tail of the preallocated
//! file (never acknowledged), and continue the chain.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::Path;

use ed25519_dalek::SigningKey;

use super::file::PreallocatedFile;
use super::{io_err, LogOptions, OpenLogError, ReceiptLog};
use crate::stream::{all_nul, READ_CHUNK};
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
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let (written, data_after_gap) = read_written_part(&mut file).map_err(io_err(path))?;
        let complete = written
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let (mut verifier, mut session, mut covered) =
            verify_lines(path, &key, &written[..complete])?;
        if covered < complete {
            // Lines after the last signed one: a group whose signed line
            // never reached the disk. Nothing in it was acknowledged (a
            // write ends with its groups' signed lines, and acknowledgement
            // follows its sync), and nothing vouches for its bytes: cut it.
            (verifier, session, covered) = verify_lines(path, &key, &written[..covered])?;
        }
        let complete = covered;
        let truncated_bytes = (written.len() - complete) as u64 + data_after_gap;
        let Some(session) = session else {
            return Err(OpenLogError::NoStart {
                path: path.to_owned(),
            });
        };
        let cut = |file: &std::fs::File| {
            file.set_len(complete as u64)
                .and_then(|()| file.sync_all())
                .map_err(io_err(path))
        };
        if verifier.ended() {
            // A crash between session_end and the close that cuts the
            // zeroed tail leaves NULs after the end: only those are cut.
            if truncated_bytes == 0 && (complete as u64) < file_len {
                cut(&file)?;
            }
            return Err(OpenLogError::Ended {
                path: path.to_owned(),
            });
        }
        if (complete as u64) < file_len {
            cut(&file)?;
        }
        let receipts = verifier.lines() as u64;
        let file = PreallocatedFile::new(file, path, complete as u64).map_err(io_err(path))?;
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

/// Reads the file up to its first NUL (the written part: no line holds one)
/// and counts the bytes that are not NUL after it, without holding them: a
/// preallocated end, or a hole a crash left, may be far longer than the
/// lines (gigabytes), and only the lines are needed whole.
fn read_written_part(file: &mut std::fs::File) -> std::io::Result<(Vec<u8>, u64)> {
    let mut written = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut after_gap: Option<u64> = None;
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let read = &chunk[..n];
        match after_gap.as_mut() {
            Some(count) => *count += non_nul(read),
            None => match read.iter().position(|&b| b == 0) {
                Some(gap) => {
                    written.extend_from_slice(&read[..gap]);
                    after_gap = Some(non_nul(&read[gap..]));
                }
                None => written.extend_from_slice(read),
            },
        }
    }
    Ok((written, after_gap.unwrap_or(0)))
}

/// Bytes that are not NUL; a run of NULs (the usual case) is told by
/// [`all_nul`]'s comparison, not byte by byte.
fn non_nul(bytes: &[u8]) -> u64 {
    bytes
        .chunks(4096)
        .filter(|c| !all_nul(c))
        .map(|c| c.iter().filter(|&&b| b != 0).count() as u64)
        .sum()
}

/// Verifies the complete lines in `bytes`: the verifier after them, the
/// session, and where the part covered by signatures ends (after the last
/// signed line; a line with no sig of its own is covered by the next signed
/// one).
fn verify_lines(
    path: &Path,
    key: &SigningKey,
    bytes: &[u8],
) -> Result<(LineVerifier, Option<String>, usize), OpenLogError> {
    let mut verifier = LineVerifier::new(key.verifying_key());
    let mut session = None;
    let mut covered = 0;
    let mut at = 0;
    let lines = match bytes.len() {
        0 => None,
        n => Some(bytes[..n - 1].split(|&b| b == b'\n')),
    };
    for line in lines.into_iter().flatten() {
        let r = verifier.push(line).map_err(|source| OpenLogError::Chain {
            path: path.to_owned(),
            source,
        })?;
        session.get_or_insert(r.receipt.session);
        at += line.len() + 1;
        if verifier.uncovered() == 0 {
            covered = at;
        }
    }
    Ok((verifier, session, covered))
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
