//! Verification of a chain read from a stream, one line at a time: what it
//! holds is bounded by the chain's bounds ([`MAX_LINE_BYTES`], a batch of
//! signatures), never by the file's size, and it stops reading at the first
//! line it refuses. [`UnverifiedChain::verify`](crate::UnverifiedChain::verify)
//! is this over a byte slice, so both say the same of the same bytes.

use std::io::{self, Read};

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use crate::format::Receipt;
use crate::verify::{
    decode_hex, interruption_of, verify_signatures, ChainError, Checked, InterruptedEnd,
    LineVerifier, UnverifiedChain, VerifiedChain, VerifiedReceipt, BATCH, MAX_LINE_BYTES,
};

/// Why a chain read from a stream is not verified: the stream failed, or a
/// line did.
#[derive(Debug, thiserror::Error)]
pub enum ReadChainError {
    #[error("{0}")]
    Read(#[from] io::Error),
    #[error("{0}")]
    Chain(#[from] ChainError),
}

/// The most line bytes a batch of signatures waits for before it is
/// verified: with [`MAX_LINE_BYTES`] lines a batch of [`BATCH`] could
/// otherwise hold a gigabyte.
const BATCH_BYTES: usize = 4 << 20;

/// How much is read from the stream at once. Lines are verified in batches
/// of what one read brought (up to [`BATCH`]), so the buffer is large
/// enough for a full batch of ordinary lines.
pub(crate) const READ_CHUNK: usize = 256 << 10;

/// A receipt stream (`receipts.jsonl`), not yet checked.
pub struct UnverifiedStream<R> {
    lines: LineSource<R>,
}

/// A chain read from a stream that verified. Its receipts went, in order, to
/// the caller's function as they were read; this keeps what a summary
/// needs: the first and last receipt and the counts.
#[derive(Debug, Clone)]
pub struct VerifiedStream {
    /// Receipts in the chain.
    pub receipts: usize,
    /// Receipts that carry a signature of their own.
    pub signatures: usize,
    start: Receipt,
    end: Receipt,
    last_hash: [u8; 32],
    /// The verifying key the chain was checked against.
    pub key: VerifyingKey,
}

impl VerifiedStream {
    pub fn session(&self) -> &str {
        &self.start.session
    }

    /// The session_start receipt (always the first).
    pub fn start(&self) -> &Receipt {
        &self.start
    }

    /// SHA-256 of the last line.
    pub fn last_hash(&self) -> [u8; 32] {
        self.last_hash
    }

    /// How the session was interrupted, when recovery (not its supervisor)
    /// closed the chain; `None` for a session that ended normally.
    pub fn interruption(&self) -> Option<InterruptedEnd> {
        interruption_of(&self.end)
    }
}

impl<R: Read> UnverifiedStream<R> {
    pub fn new(reader: R) -> Self {
        UnverifiedStream {
            lines: LineSource::new(reader),
        }
    }

    /// The public key that the chain's first line claims signed it (reads
    /// that line, and keeps it for [`verify`](Self::verify)). Not trusted:
    /// use it only when the operator explicitly accepts that.
    pub fn embedded_key(&mut self) -> Result<VerifyingKey, ReadChainError> {
        let first = match self.lines.peek()? {
            Piece::Line(line) => line,
            Piece::End { data_after_gap } => {
                return Err(match data_after_gap {
                    true => gap_error(1),
                    false => ChainError::Empty,
                }
                .into())
            }
            Piece::Torn(_) => return Err(ChainError::Torn { line: 1 }.into()),
            Piece::Long(bytes) => {
                return Err(ChainError::LineTooLong {
                    line: 1,
                    bytes: *bytes,
                    max: MAX_LINE_BYTES,
                }
                .into())
            }
        };
        let value: Value = serde_json::from_slice(first).map_err(|e| ChainError::Malformed {
            line: 1,
            why: format!("invalid JSON: {e}"),
        })?;
        let key = value
            .get("public_key")
            .and_then(Value::as_str)
            .and_then(decode_hex::<32>)
            .and_then(|b| VerifyingKey::from_bytes(&b).ok());
        key.ok_or_else(|| {
            ChainError::MissingStart {
                line: 1,
                found: "a line without a valid public_key".into(),
            }
            .into()
        })
    }

    /// Verifies the chain against the pinned key, handing each receipt to
    /// `each` once its line (and its batch's signatures) checked; reports
    /// the first bad line. A receipt without a sig of its own is handed over
    /// before the signed line that covers it: what `each` gathered counts
    /// only if the whole chain verifies.
    ///
    /// Reading stops at the first refused line. Signatures are checked in
    /// batches of what is already read: the stream is never waited on with
    /// a signature unchecked, so a bad one is reported even when no more
    /// input comes.
    pub fn verify(
        mut self,
        key: &VerifyingKey,
        each: impl FnMut(VerifiedReceipt),
    ) -> Result<VerifiedStream, ReadChainError> {
        let mut verifier = LineVerifier::new(*key);
        let mut done = Settled::new(key, each);
        let mut batch: Vec<Checked> = Vec::new();
        let mut batch_bytes = 0;
        loop {
            // Settle the batch before the next line when it is full, or
            // when that line needs a read that may wait.
            if batch.len() >= BATCH || batch_bytes >= BATCH_BYTES || !self.lines.has_buffered() {
                done.settle(&mut batch)?;
                batch_bytes = 0;
            }
            let line_no = verifier.lines() + 1;
            let structural = match self.lines.next() {
                Ok(Piece::Line(line)) => match verifier.check_unsigned(&line) {
                    Ok(c) => {
                        batch_bytes += line.len();
                        batch.push(c);
                        continue;
                    }
                    Err(e) => ReadChainError::Chain(e),
                },
                Ok(Piece::Long(bytes)) => verifier.refuse_length(bytes).into(),
                Ok(Piece::Torn(_)) => ChainError::Torn { line: line_no }.into(),
                Ok(Piece::End {
                    data_after_gap: true,
                }) => gap_error(line_no).into(),
                Ok(Piece::End {
                    data_after_gap: false,
                }) => break,
                Err(e) => e.into(),
            };
            // A bad signature on an earlier line of the batch is the first
            // bad line, before this one's failure (or the stream's).
            done.settle(&mut batch)?;
            return Err(structural);
        }
        done.settle(&mut batch)?;
        verifier.finish()?;
        let (Some(start), Some(end)) = (done.start, done.end) else {
            // finish() refuses a chain without lines.
            return Err(ChainError::Empty.into());
        };
        Ok(VerifiedStream {
            receipts: done.receipts,
            signatures: done.signatures,
            start,
            end,
            last_hash: verifier.last_hash(),
            key: *key,
        })
    }
}

/// The lines whose signatures verified, handed on as they settle.
struct Settled<'k, F> {
    key: &'k VerifyingKey,
    each: F,
    receipts: usize,
    signatures: usize,
    start: Option<Receipt>,
    end: Option<Receipt>,
}

impl<'k, F: FnMut(VerifiedReceipt)> Settled<'k, F> {
    fn new(key: &'k VerifyingKey, each: F) -> Self {
        Settled {
            key,
            each,
            receipts: 0,
            signatures: 0,
            start: None,
            end: None,
        }
    }

    /// Verifies the batch's signatures and hands its receipts on, emptying
    /// it; the first bad signature's line otherwise.
    fn settle(&mut self, batch: &mut Vec<Checked>) -> Result<(), ChainError> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        verify_signatures(self.key, batch, self.receipts + 1)?;
        if self.start.is_none() {
            self.start = Some(batch[0].receipt.clone());
        }
        self.end = Some(last.receipt.clone());
        for c in batch.drain(..) {
            self.receipts += 1;
            self.signatures += usize::from(c.sig.is_some());
            (self.each)(VerifiedReceipt {
                signed: c.sig.is_some(),
                receipt: c.receipt,
                hash: c.hash,
            });
        }
        Ok(())
    }
}

/// Data after the first NUL: only NULs may follow the last line.
fn gap_error(line: usize) -> ChainError {
    ChainError::Malformed {
        line,
        why: "a NUL byte, and data after it (only NULs may follow the last \
              line: the unwritten end of a preallocated log)"
            .into(),
    }
}

/// Whether `bytes` are all NULs, compared a page at a time (memcmp: the
/// unwritten tail of a preallocated log may be large).
pub(crate) fn all_nul(bytes: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
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

/// What comes next in a receipt file.
#[derive(Debug)]
pub(crate) enum Piece {
    /// A line of at most [`MAX_LINE_BYTES`], without its newline.
    Line(Vec<u8>),
    /// A line, newline-terminated, longer than that: only its length was
    /// kept.
    Long(usize),
    /// Bytes without a newline before the end (of the stream, or of the
    /// written part at a NUL): how many.
    Torn(usize),
    /// The end of the lines. Bytes after the first NUL are the unwritten
    /// end of a preallocated log, read through to see that they are all
    /// NULs.
    End { data_after_gap: bool },
}

/// Splits a stream into [`Piece`]s, holding at most one line of
/// [`MAX_LINE_BYTES`] and one read's worth of input.
pub(crate) struct LineSource<R> {
    reader: R,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[pos..len]`.
    pos: usize,
    len: usize,
    eof: bool,
    /// A piece read ahead by `peek`.
    peeked: Option<Piece>,
}

impl<R: Read> LineSource<R> {
    pub(crate) fn new(reader: R) -> Self {
        LineSource {
            reader,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            peeked: None,
        }
    }

    /// Whether the next piece can start without reading (a line may still
    /// need more).
    fn has_buffered(&self) -> bool {
        self.peeked.is_some() || self.pos < self.len || self.eof
    }

    fn peek(&mut self) -> io::Result<&Piece> {
        if self.peeked.is_none() {
            self.peeked = Some(self.read_piece()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
    }

    pub(crate) fn next(&mut self) -> io::Result<Piece> {
        match self.peeked.take() {
            Some(piece) => Ok(piece),
            None => self.read_piece(),
        }
    }

    /// Refills the buffer when it is empty; false at the end of the stream.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        loop {
            match self.reader.read(&mut self.buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    (self.pos, self.len) = (0, n);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn read_piece(&mut self) -> io::Result<Piece> {
        let mut line = Vec::new();
        // Bytes of the line so far, kept in `line` up to MAX_LINE_BYTES.
        let mut bytes = 0usize;
        loop {
            if !self.fill()? {
                return Ok(if bytes == 0 {
                    Piece::End {
                        data_after_gap: false,
                    }
                } else {
                    Piece::Torn(bytes)
                });
            }
            let chunk = &self.buf[self.pos..self.len];
            let stop = chunk.iter().position(|&b| b == b'\n' || b == 0);
            let taken = &chunk[..stop.unwrap_or(chunk.len())];
            if bytes + taken.len() <= MAX_LINE_BYTES {
                line.extend_from_slice(taken);
            } else {
                // A line already too long is refused by its length alone:
                // nothing more of it is kept.
                line = Vec::new();
            }
            bytes += taken.len();
            self.pos += taken.len();
            match stop.map(|i| chunk[i]) {
                None => continue,
                Some(b'\n') => {
                    self.pos += 1;
                    return Ok(if bytes > MAX_LINE_BYTES {
                        Piece::Long(bytes)
                    } else {
                        Piece::Line(line)
                    });
                }
                Some(_) if bytes > 0 => return Ok(Piece::Torn(bytes)),
                Some(_) => {
                    return Ok(Piece::End {
                        data_after_gap: self.rest_is_not_all_nul()?,
                    })
                }
            }
        }
    }

    /// Reads to the end of the stream: whether anything but NULs is left.
    fn rest_is_not_all_nul(&mut self) -> io::Result<bool> {
        while self.fill()? {
            if !all_nul(&self.buf[self.pos..self.len]) {
                return Ok(true);
            }
            self.pos = self.len;
        }
        Ok(false)
    }

    /// After an `End` that found data after the gap: reads to the end of
    /// the stream and counts the bytes that are not NUL (recovery reports
    /// them as cut). What `rest_is_not_all_nul` skipped was all NUL.
    pub(crate) fn non_nul_rest(&mut self) -> io::Result<u64> {
        let mut count = 0;
        while self.fill()? {
            count += non_nul(&self.buf[self.pos..self.len]);
            self.pos = self.len;
        }
        Ok(count)
    }
}

/// The whole-file readings of a chain held in memory are this reader over
/// its bytes (here rather than in `verify.rs`, which this module builds on).
impl UnverifiedChain {
    /// The public key that the chain's first line claims signed it. Not
    /// trusted: use it only when the operator explicitly accepts that
    /// (`danger::verify_trusting_embedded_key`).
    pub fn embedded_key(&self) -> Result<VerifyingKey, ChainError> {
        UnverifiedStream::new(self.bytes())
            .embedded_key()
            .map_err(|e| match e {
                ReadChainError::Chain(e) => e,
                ReadChainError::Read(e) => unreachable!("reading a byte slice cannot fail: {e}"),
            })
    }

    /// Verifies the whole chain against the pinned key and reports the first
    /// bad line: [`UnverifiedStream::verify`] over these bytes, keeping
    /// every receipt.
    pub fn verify(&self, key: &VerifyingKey) -> Result<VerifiedChain, ChainError> {
        let mut receipts = Vec::new();
        match UnverifiedStream::new(self.bytes()).verify(key, |r| receipts.push(r)) {
            Ok(_) => Ok(VerifiedChain {
                receipts,
                key: *key,
            }),
            Err(ReadChainError::Chain(e)) => Err(e),
            Err(ReadChainError::Read(e)) => {
                unreachable!("reading a byte slice cannot fail: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{self, Body, FORMAT_VERSION, GENESIS_PREV};
    use ed25519_dalek::SigningKey;

    /// A reader that serves `data` in reads of at most `step` bytes, then
    /// fails every read: whatever is read past `data` is an error.
    struct ThenFails {
        data: Vec<u8>,
        at: usize,
        step: usize,
        reads_past_end: usize,
    }

    impl Read for ThenFails {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                self.reads_past_end += 1;
                return Err(io::Error::other("read past the end of what was written"));
            }
            let n = out.len().min(self.step).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// session_start, then a decision, signed by `key`.
    fn two_lines(key: &SigningKey) -> [Vec<u8>; 2] {
        let mut receipt = Receipt {
            v: FORMAT_VERSION,
            session: "s".into(),
            seq: 0,
            ts: "2026-01-01T00:00:00.000000Z".into(),
            prev: GENESIS_PREV.into(),
            signer: format::key_id(&key.verifying_key()),
            body: Body::SessionStart {
                public_key: hex::encode(key.verifying_key().as_bytes()),
                revocation_ids: vec!["x".into()],
                sandbox: "netns".into(),
                capability_sha256: None,
                tenant: None,
                user: None,
            },
        };
        let start = format::sign_line(&receipt, key).expect("sign");
        receipt.seq = 1;
        receipt.prev = hex::encode(format::line_hash(&start));
        receipt.body = Body::Decision(format::DecisionRecord {
            action: serde_json::json!({"type": "http"}),
            counters: serde_json::json!({}),
            decision: serde_json::json!({"decision": "allow"}),
            body_sha256: None,
        });
        let decision = format::sign_line(&receipt, key).expect("sign");
        [start, decision]
    }

    #[test]
    fn pieces_are_lines_long_lines_torn_ends_and_the_nul_tail() {
        let pieces = |bytes: &[u8]| {
            let mut source = LineSource::new(bytes);
            let mut out = Vec::new();
            loop {
                match source.next().expect("a slice reads") {
                    Piece::End { data_after_gap } => {
                        let after = source.non_nul_rest().expect("a slice reads");
                        out.push(format!("end {data_after_gap} {after}"));
                        return out;
                    }
                    Piece::Line(l) => out.push(String::from_utf8(l).expect("utf8")),
                    Piece::Long(n) => out.push(format!("long {n}")),
                    Piece::Torn(n) => out.push(format!("torn {n}")),
                }
            }
        };
        assert_eq!(pieces(b"a\nbc\n"), ["a", "bc", "end false 0"]);
        assert_eq!(pieces(b"a\nbc"), ["a", "torn 2", "end false 0"]);
        assert_eq!(pieces(b"a\nb\0\0"), ["a", "torn 1", "end false 0"]);
        assert_eq!(pieces(b"a\n\0\0\0"), ["a", "end false 0"]);
        assert_eq!(pieces(b"a\n\0\0x\0y\n"), ["a", "end true 3"]);
        assert_eq!(pieces(b"a\nb\0x"), ["a", "torn 1", "end true 1"]);
        assert_eq!(pieces(b""), ["end false 0"]);
        let mut long = vec![b'x'; MAX_LINE_BYTES + 5];
        long.extend_from_slice(b"\nok\n");
        assert_eq!(
            pieces(&long),
            [
                format!("long {}", MAX_LINE_BYTES + 5),
                "ok".into(),
                "end false 0".into()
            ]
        );
        let exact = [vec![b'y'; MAX_LINE_BYTES], b"\n".to_vec()].concat();
        assert_eq!(pieces(&exact)[0].len(), MAX_LINE_BYTES);
    }

    #[test]
    fn a_bad_line_is_refused_without_reading_past_it() {
        let key = SigningKey::from_bytes(&[11; 32]);
        let [start, decision] = two_lines(&key);
        // Right in every member but its signature: found only by the
        // signature check, which batches lines.
        let text = String::from_utf8(decision.clone()).expect("utf8");
        let at = text.find("\"sig\":\"").expect("sig") + 7;
        let flipped = if &text[at..=at] == "0" { "1" } else { "0" };
        let forged = format!("{}{flipped}{}", &text[..at], &text[at + 1..]).into_bytes();
        for (bad, expected) in [
            (b"not json".to_vec(), "not a receipt"),
            (forged, "signature does not verify"),
        ] {
            let data = [start.clone(), b"\n".to_vec(), bad, b"\n".to_vec()].concat();
            for step in [1, 7, data.len()] {
                let mut reader = ThenFails {
                    data: data.clone(),
                    at: 0,
                    step,
                    reads_past_end: 0,
                };
                let err = UnverifiedStream::new(&mut reader)
                    .verify(&key.verifying_key(), |_| {})
                    .expect_err("line 2 is bad");
                assert!(
                    matches!(&err, ReadChainError::Chain(e) if e.line() == 2),
                    "{err}"
                );
                assert!(err.to_string().contains(expected), "{err}");
                assert_eq!(reader.reads_past_end, 0, "read past line 2 (step {step})");
            }
        }
        // The intact two lines verify as far as they go: the stream ended
        // without session_end, which is read to the end to find out.
        let data = [start, b"\n".to_vec(), decision, b"\n".to_vec()].concat();
        let mut seen = Vec::new();
        let err = UnverifiedStream::new(data.as_slice())
            .verify(&key.verifying_key(), |r| seen.push(r.receipt.seq))
            .expect_err("no end");
        assert!(matches!(
            err,
            ReadChainError::Chain(ChainError::MissingEnd { line: 3 })
        ));
        assert_eq!(seen, [0, 1]);
    }
}
