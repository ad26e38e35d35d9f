//! Compressed response bodies decoded as they stream, so that echo masking
//! sees the bytes the sandbox would read after decompressing: gzip (any
//! number of members, each checked against its CRC), deflate (zlib-wrapped
//! as RFC 9110 says, or raw as some servers send it), br and zstd. Each
//! pull makes at most [`OUT`] bytes, so a small chunk that expands a
//! thousandfold goes out piece by piece as the sandbox reads, never whole.

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use bytes::{Buf, Bytes, BytesMut};
use flate2::{Crc, Decompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder as ZstdDecoder, Operation};

/// Largest piece of decoded output one pull makes.
pub(super) const OUT: usize = 64 * 1024;
/// Longest gzip header accepted (file name and comment included).
const MAX_GZIP_HEADER: usize = 64 * 1024;
/// zstd window limit: 8 MiB, what RFC 8878 §3.1.1.1.2 asks HTTP decoders
/// to support; a frame asking for more is refused rather than given memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A content-coding the proxy can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// Reads one `Content-Encoding` token (case-insensitive); `None` for
    /// codings the proxy cannot decode.
    pub fn parse(token: &str) -> Option<Coding> {
        match token.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            "br" => Some(Coding::Brotli),
            "zstd" => Some(Coding::Zstd),
            _ => None,
        }
    }
}

/// Why a compressed body could not be decoded (the response is cut).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compressed response: {0}")]
pub struct DecodeError(pub String);

fn err(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

type Brotli = BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>;

enum Gzip {
    /// Waiting for (the rest of) a member's header.
    Header,
    Body {
        inflate: Decompress,
        crc: Crc,
    },
    /// The member's deflate stream ended; its CRC and length follow.
    Trailer {
        crc: Crc,
    },
    /// Between members: the body may end here, or another member follow.
    Between,
}

enum Engine {
    Gzip(Gzip),
    /// `None` until the first two bytes tell zlib from raw deflate.
    Deflate(Option<Decompress>),
    Brotli(Box<Brotli>),
    Zstd {
        decoder: Box<ZstdDecoder<'static>>,
        /// Inside a frame (zstd's hint was not 0).
        mid_frame: bool,
    },
}

/// One body's decoder: compressed bytes pushed in, plain bytes pulled out.
pub struct BodyDecoder {
    engine: Engine,
    /// Compressed bytes not consumed yet.
    input: BytesMut,
    /// Some input arrived (an empty body is complete whatever its coding:
    /// HEAD answers and 304s carry `Content-Encoding` and no body).
    seen_input: bool,
    /// The compressed stream signalled its end (deflate, br).
    ended: bool,
    /// No more input will come.
    finished: bool,
}

impl BodyDecoder {
    pub fn new(coding: Coding) -> Result<BodyDecoder, DecodeError> {
        let engine = match coding {
            Coding::Gzip => Engine::Gzip(Gzip::Header),
            Coding::Deflate => Engine::Deflate(None),
            Coding::Brotli => Engine::Brotli(Box::new(BrotliState::new(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            ))),
            Coding::Zstd => {
                let mut decoder =
                    ZstdDecoder::new().map_err(|e| err(format!("zstd decoder: {e}")))?;
                decoder
                    .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .map_err(|e| err(format!("zstd decoder: {e}")))?;
                Engine::Zstd {
                    decoder: Box::new(decoder),
                    mid_frame: false,
                }
            }
        };
        Ok(BodyDecoder {
            engine,
            input: BytesMut::new(),
            seen_input: false,
            ended: false,
            finished: false,
        })
    }

    /// More compressed bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.seen_input |= !chunk.is_empty();
        self.input.extend_from_slice(chunk);
    }

    /// No more compressed bytes will come.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The next piece of plain output (at most [`OUT`] bytes); `None` when
    /// more input is needed or, after [`finish`](Self::finish), when all
    /// was given out. A stream that is corrupt, has bytes after its end or
    /// (once finished) is cut short is an error.
    pub fn pull(&mut self) -> Result<Option<Bytes>, DecodeError> {
        let mut out = vec![0u8; OUT];
        loop {
            let (written, progressed) = self.step(&mut out)?;
            if written > 0 {
                out.truncate(written);
                return Ok(Some(Bytes::from(out)));
            }
            if progressed {
                continue;
            }
            if !self.finished || self.complete() {
                return Ok(None);
            }
            return Err(err("the body ends inside the compressed stream"));
        }
    }

    /// Whether the body may end here.
    fn complete(&self) -> bool {
        if !self.seen_input {
            return true;
        }
        self.input.is_empty()
            && match &self.engine {
                Engine::Gzip(g) => matches!(g, Gzip::Between),
                Engine::Deflate(_) | Engine::Brotli(_) => self.ended,
                Engine::Zstd { mid_frame, .. } => !mid_frame,
            }
    }

    /// One decoding step into `out`: (bytes written, whether anything
    /// moved: input consumed, output made or a state changed).
    fn step(&mut self, out: &mut [u8]) -> Result<(usize, bool), DecodeError> {
        if self.ended {
            return match self.input.is_empty() {
                true => Ok((0, false)),
                false => Err(err("bytes after the end of the compressed stream")),
            };
        }
        match &mut self.engine {
            Engine::Gzip(state) => gzip_step(state, &mut self.input, out),
            Engine::Deflate(slot) => {
                if slot.is_none() {
                    if self.input.len() < 2 {
                        return Ok((0, false));
                    }
                    let (cmf, flg) = (self.input[0], self.input[1]);
                    let zlib = cmf & 0x0f == 8
                        && cmf >> 4 <= 7
                        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0;
                    *slot = Some(Decompress::new(zlib));
                }
                let inflate = slot.as_mut().expect("set above");
                let (used, written, status) = inflate_step(inflate, &self.input, out)?;
                self.input.advance(used);
                self.ended = status == Status::StreamEnd;
                Ok((written, used > 0 || written > 0 || self.ended))
            }
            Engine::Brotli(state) => {
                if self.input.is_empty() && !self.finished {
                    return Ok((0, false));
                }
                let (mut avail_in, mut in_off) = (self.input.len(), 0);
                let (mut avail_out, mut out_off, mut total) = (out.len(), 0, 0);
                let result = BrotliDecompressStream(
                    &mut avail_in,
                    &mut in_off,
                    &self.input,
                    &mut avail_out,
                    &mut out_off,
                    out,
                    &mut total,
                    state,
                );
                self.input.advance(in_off);
                match result {
                    BrotliResult::ResultFailure => Err(err("br stream does not decode")),
                    BrotliResult::ResultSuccess => {
                        self.ended = true;
                        Ok((out_off, true))
                    }
                    BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => {
                        Ok((out_off, in_off > 0 || out_off > 0))
                    }
                }
            }
            Engine::Zstd { decoder, mid_frame } => {
                if self.input.is_empty() && !*mid_frame {
                    return Ok((0, false));
                }
                let status = decoder
                    .run_on_buffers(&self.input, out)
                    .map_err(|e| err(format!("zstd stream does not decode: {e}")))?;
                self.input.advance(status.bytes_read);
                *mid_frame = status.remaining != 0;
                Ok((
                    status.bytes_written,
                    status.bytes_read > 0 || status.bytes_written > 0,
                ))
            }
        }
    }
}

/// One inflate call: (input used, output written, status).
fn inflate_step(
    inflate: &mut Decompress,
    input: &[u8],
    out: &mut [u8],
) -> Result<(usize, usize, Status), DecodeError> {
    let (in0, out0) = (inflate.total_in(), inflate.total_out());
    let status = inflate
        .decompress(input, out, FlushDecompress::None)
        .map_err(|e| err(format!("deflate stream does not decode: {e}")))?;
    let used = usize::try_from(inflate.total_in() - in0).expect("at most the input's length");
    let written = usize::try_from(inflate.total_out() - out0).expect("at most the output's length");
    Ok((used, written, status))
}

/// Length of a complete gzip member header at the start of `b` (RFC 1952
/// §2.3), `None` while it is incomplete.
fn gzip_header_len(b: &[u8]) -> Result<Option<usize>, DecodeError> {
    if b.len() >= 2 && (b[0], b[1]) != (0x1f, 0x8b) {
        return Err(err("not a gzip member"));
    }
    if b.len() < 10 {
        return Ok(None);
    }
    if b[2] != 8 {
        return Err(err("gzip member not deflated"));
    }
    let flags = b[3];
    if flags & 0xe0 != 0 {
        return Err(err("gzip header with reserved flags"));
    }
    let mut at = 10;
    if flags & 0x04 != 0 {
        let Some(x) = b.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([x[0], x[1]]));
    }
    for bit in [0x08, 0x10] {
        if flags & bit != 0 {
            match b
                .get(at..)
                .and_then(|rest| rest.iter().position(|&c| c == 0))
            {
                Some(nul) => at += nul + 1,
                None if b.len() > MAX_GZIP_HEADER => return Err(err("gzip header too long")),
                None => return Ok(None),
            }
        }
    }
    if flags & 0x02 != 0 {
        at += 2;
    }
    if at > MAX_GZIP_HEADER {
        return Err(err("gzip header too long"));
    }
    Ok((b.len() >= at).then_some(at))
}

fn gzip_step(
    state: &mut Gzip,
    input: &mut BytesMut,
    out: &mut [u8],
) -> Result<(usize, bool), DecodeError> {
    match state {
        Gzip::Between if input.is_empty() => Ok((0, false)),
        Gzip::Between => {
            *state = Gzip::Header;
            Ok((0, true))
        }
        Gzip::Header => match gzip_header_len(input)? {
            None => Ok((0, false)),
            Some(n) => {
                input.advance(n);
                *state = Gzip::Body {
                    inflate: Decompress::new(false),
                    crc: Crc::new(),
                };
                Ok((0, true))
            }
        },
        Gzip::Body { inflate, crc } => {
            let (used, written, status) = inflate_step(inflate, input, out)?;
            input.advance(used);
            crc.update(&out[..written]);
            let ended = status == Status::StreamEnd;
            if ended {
                let crc = std::mem::replace(crc, Crc::new());
                *state = Gzip::Trailer { crc };
            }
            Ok((written, used > 0 || written > 0 || ended))
        }
        Gzip::Trailer { crc } => {
            if input.len() < 8 {
                return Ok((0, false));
            }
            let sum = u32::from_le_bytes([input[0], input[1], input[2], input[3]]);
            let size = u32::from_le_bytes([input[4], input[5], input[6], input[7]]);
            if sum != crc.sum() || size != crc.amount() {
                return Err(err("gzip member fails its CRC or length check"));
            }
            input.advance(8);
            *state = Gzip::Between;
            Ok((0, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("compress");
        e.finish().expect("compress")
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).expect("compress");
        drop(w);
        out
    }

    /// Decodes `body` fed in pieces of `step` bytes, pulling after each.
    fn decode(coding: Coding, body: &[u8], step: usize) -> Result<Vec<u8>, DecodeError> {
        let mut d = BodyDecoder::new(coding)?;
        let mut out = Vec::new();
        for piece in body.chunks(step.max(1)) {
            d.push(piece);
            while let Some(b) = d.pull()? {
                assert!(b.len() <= OUT);
                out.extend_from_slice(&b);
            }
        }
        d.finish();
        while let Some(b) = d.pull()? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        let mut v = b"{\"secret\":\"Hunter2\"} ".repeat(5000);
        v.extend((0..=255u8).cycle().take(70_000));
        v
    }

    #[test]
    fn every_coding_decodes_in_any_split() {
        let data = sample();
        let mut deflate_zlib =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        deflate_zlib.write_all(&data).expect("compress");
        let mut deflate_raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflate_raw.write_all(&data).expect("compress");
        let zstd = zstd::stream::encode_all(&data[..], 3).expect("compress");
        // Two gzip members back to back read as one body.
        let (a, b) = data.split_at(1000);
        let two_members = [gzip(a), gzip(b)].concat();
        let cases = [
            (Coding::Gzip, gzip(&data)),
            (Coding::Gzip, two_members),
            (Coding::Deflate, deflate_zlib.finish().expect("compress")),
            (Coding::Deflate, deflate_raw.finish().expect("compress")),
            (Coding::Zstd, zstd),
            (Coding::Brotli, brotli(&data)),
        ];
        for (coding, body) in cases {
            for step in [1, 7, 4096, body.len()] {
                let got = decode(coding, &body, step).expect("decodes");
                assert!(got == data, "{coding:?} step {step}: {} bytes", got.len());
            }
        }
    }

    #[test]
    fn broken_streams_are_errors_never_passed_as_complete() {
        let body = gzip(&sample());
        // Cut short.
        assert!(decode(Coding::Gzip, &body[..body.len() - 3], 100).is_err());
        // A flipped byte in the deflate data or the CRC.
        for i in [body.len() / 2, body.len() - 6] {
            let mut bad = body.clone();
            bad[i] ^= 0x55;
            assert!(decode(Coding::Gzip, &bad, 512).is_err(), "byte {i}");
        }
        // Garbage after the last member, or after a zstd frame.
        let mut trailing = body.clone();
        trailing.extend_from_slice(b"xx");
        assert!(decode(Coding::Gzip, &trailing, 512).is_err());
        assert!(decode(Coding::Deflate, b"\x78\x9c\xff\xff", 1).is_err());
        assert!(decode(Coding::Brotli, b"not brotli at all", 3).is_err());
        assert!(decode(Coding::Zstd, b"not zstd at all", 3).is_err());
        // An empty body is fine whatever it claims (HEAD, 304).
        assert_eq!(decode(Coding::Gzip, b"", 1), Ok(Vec::new()));
    }

    /// A bomb: 16 MiB of zeros in ~16 KiB of gzip comes out in pieces of
    /// at most `OUT` bytes per pull, whatever the chunk that carried it.
    #[test]
    fn output_is_bounded_per_pull() {
        let body = gzip(&vec![0u8; 16 << 20]);
        assert!(body.len() < 64 * 1024);
        let mut d = BodyDecoder::new(Coding::Gzip).expect("decoder");
        d.push(&body);
        let mut total = 0;
        while let Some(b) = d.pull().expect("decodes") {
            assert!(b.len() <= OUT);
            total += b.len();
        }
        assert_eq!(total, 16 << 20);
    }

    #[test]
    fn codings_parse_case_insensitively() {
        assert_eq!(Coding::parse(" GZip "), Some(Coding::Gzip));
        assert_eq!(Coding::parse("x-gzip"), Some(Coding::Gzip));
        assert_eq!(Coding::parse("BR"), Some(Coding::Brotli));
        assert_eq!(Coding::parse("compress"), None);
    }
}
