//! Reopening a log after a crash: verify every complete line with the key,
//! cut a torn last line (never acknowledged), and continue the chain.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use ed25519_dalek::SigningKey;

use super::{io_err, LogOptions, OpenLogError, ReceiptLog};
use crate::verify::LineVerifier;

/// What reopening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Complete receipts kept.
    pub receipts: u64,
    /// Bytes of a torn last line that were cut off.
    pub truncated_bytes: u64,
}

impl ReceiptLog {
    /// Reopens a chain after a crash: verifies it with the key, cuts a torn
    /// last line (never acknowledged: acknowledgements follow fdatasync of
    /// whole lines), and continues it. A complete line that does not verify
    /// is an error, not something to cut.
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
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let truncated_bytes = (bytes.len() - complete) as u64;
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
        if verifier.ended() {
            return Err(OpenLogError::Ended {
                path: path.to_owned(),
            });
        }
        if truncated_bytes > 0 {
            file.set_len(complete as u64).map_err(io_err(path))?;
            file.sync_data().map_err(io_err(path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
        let receipts = verifier.lines() as u64;
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
