//! Reopening a log after a crash: verify every complete line with the key,
//! cut a torn last line and the unwritten (NUL) tail of the preallocated
//! file (never acknowledged), and continue the chain.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::Path;

use ed25519_dalek::SigningKey;

use super::file::PreallocatedFile;
use super::{io_err, LogOptions, OpenLogError, ReceiptLog};
use crate::verify::{written_part, LineVerifier};

/// What reopening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Complete receipts kept.
    pub receipts: u64,
    /// Bytes of torn, never-acknowledged writes that were cut off (the NUL
    /// tail of the preallocated file, never written, is not counted).
    pub truncated_bytes: u64,
}

impl ReceiptLog {
    /// Reopens a chain after a crash: verifies it with the key, cuts a torn
    /// last line (never acknowledged: acknowledgements follow fdatasync of
    /// whole lines), and continues it. A complete line that does not verify
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
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err(path))?;
        let written = written_part(&bytes);
        let complete = written
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let truncated_bytes = bytes[complete..].iter().filter(|&&b| b != 0).count() as u64;
        let mut verifier = LineVerifier::new(key.verifying_key());
        let mut session = None;
        let lines = match complete {
            0 => None,
            n => Some(bytes[..n - 1].split(|&b| b == b'\n')),
        };
        for line in lines.into_iter().flatten() {
            let r = verifier.push(line).map_err(|source| OpenLogError::Chain {
                path: path.to_owned(),
                source,
            })?;
            session.get_or_insert(r.receipt.session);
        }
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
            if truncated_bytes == 0 && complete < bytes.len() {
                cut(&file)?;
            }
            return Err(OpenLogError::Ended {
                path: path.to_owned(),
            });
        }
        if complete < bytes.len() {
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

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use ed25519_dalek::SigningKey;

    use super::super::test_utils::{decision, key, start};
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
        let (log, rec) =
            ReceiptLog::open_existing(&path, key(), LogOptions::default()).expect("reopen");
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
}
