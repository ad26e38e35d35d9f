//! `H2Watch`: reads the sandbox's HTTP/2 byte stream ahead of h2 and cuts the
//! connection, with one refusal event, on every header block h2 would refuse
//! on its own (a list over h2's limit, a malformed request, a CONTINUATION
//! flood) — h2 answers those itself, so the proxy's code would never see them.
//!
//! It follows the frame layer (preface, 9-byte frame headers; only HEADERS and
//! CONTINUATION payloads are buffered), decodes each complete header block with
//! its own HPACK decoder kept in step with h2's (every block, in order), and
//! applies h2 0.4's rules (`HeaderBlock::load`, `hpack::Header::new`,
//! `Recv::recv_headers`, `server::Peer::convert_poll_message`). The frames of a
//! header block are held back until the block has been checked, so a refused
//! block never reaches h2: exactly one event, nothing sent upstream.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use http::{
    uri::{Authority, PathAndQuery, Scheme},
    Method, StatusCode,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::hpack::{HpackDecoder, HpackError};
use crate::ProxyError;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEAD: usize = 9;
/// SETTINGS_HEADER_TABLE_SIZE as h2 decodes with it: hyper's server does not
/// advertise one, so the protocol default applies.
pub(crate) const H2_HEADER_TABLE: usize = 4096;
/// SETTINGS_MAX_FRAME_SIZE serve_h2 gives hyper (the protocol default).
pub(crate) const H2_MAX_FRAME: usize = 16 * 1024;
/// h2's `MAX_HEADER_LIST_ABUSE_MULTIPLIER`: beyond this many times its limit
/// h2 stops decoding and sends GOAWAY instead of a 431.
const ABUSE_MULTIPLIER: usize = 4;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Why the watch cut a connection; read back when the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum H2Trip {
    TooLarge,
    Malformed(&'static str),
    Smuggling(&'static str),
}

impl H2Trip {
    pub(crate) fn into_error(self) -> ProxyError {
        match self {
            H2Trip::TooLarge => ProxyError::HeadersTooLarge,
            H2Trip::Malformed(what) => ProxyError::Malformed(what.to_owned()),
            H2Trip::Smuggling(what) => ProxyError::Smuggling(what),
        }
    }
}

/// The limits h2 was configured with, which the watch mirrors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct H2Limits {
    /// SETTINGS_MAX_HEADER_LIST_SIZE given to h2 (its 431 threshold).
    pub list: usize,
    /// SETTINGS_MAX_FRAME_SIZE given to h2.
    pub frame: usize,
}

impl H2Limits {
    /// h2's cap on CONTINUATION frames (without END_HEADERS) in one block.
    fn continuations(&self) -> usize {
        let min_frames = (self.list / self.frame.max(1)).max(1);
        min_frames.saturating_add(min_frames >> 2).max(5)
    }
    /// Compressed bytes one block may buffer: a list h2 accepts is smaller
    /// than this in any encoding a real encoder picks (HPACK literals cost
    /// less than the 32 bytes per field the list size adds), plus one frame
    /// of padding slack.
    fn block_cap(&self) -> usize {
        self.list.saturating_add(self.frame)
    }
}

/// A header block being assembled from HEADERS + CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// Stream offset of the HEADERS frame's first byte: nothing from here on
    /// reaches h2 before the block is checked.
    start: u64,
    continuations: usize,
}

/// The frame tracker and header-block checker, separate from I/O so it can
/// be tested on bytes.
pub(crate) struct H2Scanner {
    limits: H2Limits,
    preface_left: usize,
    head: [u8; FRAME_HEAD],
    head_len: usize,
    /// Payload bytes of the current frame not seen yet.
    payload_left: usize,
    /// Flags and kind of the current frame (when its payload is buffered).
    frame_flags: u8,
    frame_kind: u8,
    /// Where the current frame's payload starts in `buf`.
    frag_start: usize,
    buffering: bool,
    block: Option<Block>,
    /// Invariant: holds the compressed bytes of `block` (empty without one).
    buf: Vec<u8>,
    decoder: HpackDecoder,
    /// Highest client stream id whose request headers were seen.
    max_stream: u32,
    /// Bytes fed so far.
    fed: u64,
}

impl H2Scanner {
    pub(crate) fn new(limits: H2Limits) -> Self {
        let decoder = HpackDecoder::new(H2_HEADER_TABLE);
        Self {
            limits,
            preface_left: PREFACE_LEN,
            head: [0; FRAME_HEAD],
            head_len: 0,
            payload_left: 0,
            frame_flags: 0,
            frame_kind: 0,
            frag_start: 0,
            buffering: false,
            block: None,
            buf: Vec::new(),
            decoder,
            max_stream: 0,
            fed: 0,
        }
    }

    /// Bytes fed so far.
    pub(crate) fn fed(&self) -> u64 {
        self.fed
    }

    /// Bytes before this offset may be given to h2: the start of a header
    /// block still being received, else everything fed.
    pub(crate) fn safe_until(&self) -> u64 {
        self.block.as_ref().map_or(self.fed, |b| b.start)
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), H2Trip> {
        while !data.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(data.len());
                self.preface_left -= n;
                data = self.advance(data, n);
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                if self.buffering {
                    if self.buf.len() + n > self.limits.block_cap() {
                        return Err(H2Trip::TooLarge);
                    }
                    self.buf.extend_from_slice(&data[..n]);
                }
                self.payload_left -= n;
                data = self.advance(data, n);
                if self.payload_left == 0 {
                    self.end_frame()?;
                }
            } else {
                let n = (FRAME_HEAD - self.head_len).min(data.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
                self.head_len += n;
                // The frame starts where its header's first byte was.
                let frame_start = self.fed - (self.head_len - n) as u64;
                data = self.advance(data, n);
                if self.head_len == FRAME_HEAD {
                    self.head_len = 0;
                    self.start_frame(frame_start)?;
                    if self.payload_left == 0 {
                        self.end_frame()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn advance<'a>(&mut self, data: &'a [u8], n: usize) -> &'a [u8] {
        self.fed += n as u64;
        &data[n..]
    }

    fn start_frame(&mut self, frame_start: u64) -> Result<(), H2Trip> {
        let h = &self.head;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.payload_left = len;
        self.buffering = false;
        let in_block = self.block.is_some();
        match kind {
            _ if in_block && kind != CONTINUATION => {
                return Err(H2Trip::Malformed(
                    "header block interrupted by another frame",
                ))
            }
            HEADERS | CONTINUATION if len > self.limits.frame => {
                return Err(H2Trip::Malformed(
                    "header frame larger than SETTINGS_MAX_FRAME_SIZE",
                ))
            }
            HEADERS => {
                if stream == 0 {
                    return Err(H2Trip::Malformed("HEADERS on stream 0"));
                }
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    start: frame_start,
                    continuations: 0,
                });
            }
            CONTINUATION => {
                let max = self.limits.continuations();
                let Some(block) = self.block.as_mut() else {
                    return Err(H2Trip::Malformed("CONTINUATION without HEADERS"));
                };
                if block.stream != stream {
                    return Err(H2Trip::Malformed("CONTINUATION on another stream"));
                }
                if flags & END_HEADERS == 0 {
                    block.continuations += 1;
                    if block.continuations > max {
                        return Err(H2Trip::TooLarge);
                    }
                }
            }
            PUSH_PROMISE => return Err(H2Trip::Malformed("PUSH_PROMISE from the client")),
            // Everything else is skipped by length.
            _ => return Ok(()),
        }
        self.buffering = true;
        self.frame_kind = kind;
        self.frame_flags = flags;
        self.frag_start = self.buf.len();
        Ok(())
    }

    fn end_frame(&mut self) -> Result<(), H2Trip> {
        if !self.buffering {
            return Ok(());
        }
        self.buffering = false;
        if self.frame_kind == HEADERS {
            self.strip_headers_fields()?;
        }
        if self.frame_flags & END_HEADERS != 0 {
            let result = self.finish_block();
            self.buf.clear();
            if self.buf.capacity() > H2_MAX_FRAME {
                // An idle connection does not keep a large block's buffer.
                self.buf = Vec::new();
            }
            self.block = None;
            return result;
        }
        Ok(())
    }

    /// Remove a HEADERS frame's padding and priority fields (h2
    /// `Headers::load`), leaving only the header block fragment.
    fn strip_headers_fields(&mut self) -> Result<(), H2Trip> {
        let stream = self.block.as_ref().map_or(0, |b| b.stream);
        let frag = &self.buf[self.frag_start..];
        let mut skip = 0;
        let mut pad = 0;
        if self.frame_flags & PADDED != 0 {
            let Some(&p) = frag.first() else {
                return Err(H2Trip::Malformed("padded HEADERS without a pad length"));
            };
            pad = usize::from(p);
            skip = 1;
        }
        if self.frame_flags & PRIORITY != 0 {
            let Some(dep) = frag.get(skip..skip + 5) else {
                return Err(H2Trip::Malformed("HEADERS priority fields truncated"));
            };
            let dep = u32::from_be_bytes([dep[0], dep[1], dep[2], dep[3]]) & 0x7fff_ffff;
            if dep == stream {
                return Err(H2Trip::Malformed("stream depends on itself"));
            }
            skip += 5;
        }
        if pad > frag.len() - skip {
            return Err(H2Trip::Malformed("HEADERS padding longer than the frame"));
        }
        let end = self.buf.len() - pad;
        self.buf.truncate(end);
        self.buf.drain(self.frag_start..self.frag_start + skip);
        Ok(())
    }

    /// Decode the complete block and apply h2's rules to it.
    fn finish_block(&mut self) -> Result<(), H2Trip> {
        let Some(block) = self.block.as_ref() else {
            return Ok(());
        };
        let (stream, end_stream) = (block.stream, block.end_stream);
        let mut check = Check::new(self.limits.list);
        match self.decoder.decode(&self.buf, |n, v| check.field(n, v)) {
            Ok(()) => {}
            Err(HpackError::TableSizeTooLarge) => {
                return Err(H2Trip::Malformed(
                    "HPACK table size over the advertised one",
                ))
            }
            Err(_) => return Err(H2Trip::Malformed("HPACK decoding failed")),
        }
        check.verdict()?;
        if stream % 2 == 0 {
            return Err(H2Trip::Malformed("client HEADERS on an even stream id"));
        }
        if stream > self.max_stream {
            self.max_stream = stream;
            check.request(end_stream)
        } else if !end_stream {
            Err(H2Trip::Malformed("trailers without END_STREAM"))
        } else {
            Ok(())
        }
    }
}

const METHOD: u8 = 1;
const SCHEME: u8 = 2;
const AUTHORITY: u8 = 4;
const PATH: u8 = 8;
const PROTOCOL: u8 = 16;
const STATUS: u8 = 32;

/// What one header block showed, field by field (no field is copied).
struct Check {
    limit: usize,
    size: usize,
    /// A regular field was seen (pseudo-headers must come first).
    reg: bool,
    /// h2 would have stopped decoding here (a decode error, or a list far
    /// over its limit): the verdict is already known.
    stop: Option<H2Trip>,
    malformed: Option<&'static str>,
    pseudo: u8,
    connect: bool,
    /// An unusable :authority, :scheme or :path (checked only on requests).
    bad_uri: Option<&'static str>,
    content_length: Option<u64>,
    bad_length: Option<H2Trip>,
}

impl Check {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            size: 0,
            reg: false,
            stop: None,
            malformed: None,
            pseudo: 0,
            connect: false,
            bad_uri: None,
            content_length: None,
            bad_length: None,
        }
    }

    fn add_size(&mut self, name: usize, value: usize) {
        self.size = self.size.saturating_add(name + value + 32);
        if self.size > self.limit.saturating_mul(ABUSE_MULTIPLIER) {
            self.stop = Some(H2Trip::TooLarge);
        }
    }

    fn field(&mut self, name: &[u8], value: &[u8]) {
        if self.stop.is_some() {
            return;
        }
        let Some(rest) = name.strip_prefix(b":") else {
            return self.regular(name, value);
        };
        // h2's `Header::new`: a bad pseudo-header fails the decode.
        let (bit, valid) = match rest {
            b"authority" => (AUTHORITY, std::str::from_utf8(value).is_ok()),
            b"method" => (METHOD, Method::from_bytes(value).is_ok()),
            b"scheme" => (SCHEME, std::str::from_utf8(value).is_ok()),
            b"path" => (PATH, std::str::from_utf8(value).is_ok()),
            b"protocol" => (PROTOCOL, std::str::from_utf8(value).is_ok()),
            b"status" => (STATUS, StatusCode::from_bytes(value).is_ok()),
            _ => {
                self.stop = Some(H2Trip::Malformed("unknown pseudo-header"));
                return;
            }
        };
        if !valid {
            self.stop = Some(H2Trip::Malformed("invalid pseudo-header value"));
            return;
        }
        if self.reg {
            self.malformed
                .get_or_insert("pseudo-header after a regular header");
            return;
        }
        if self.pseudo & bit != 0 {
            self.malformed.get_or_insert("repeated pseudo-header");
            return;
        }
        self.pseudo |= bit;
        self.add_size(name.len(), value.len());
        // `convert_poll_message`'s URI checks, while the value is at hand.
        let bad = match bit {
            METHOD => {
                self.connect = value == b"CONNECT";
                None
            }
            AUTHORITY => Authority::try_from(value)
                .is_err()
                .then_some("unparsable :authority"),
            SCHEME => Scheme::try_from(value)
                .is_err()
                .then_some("unparsable :scheme"),
            PATH if value.is_empty() => Some("empty :path"),
            PATH => PathAndQuery::try_from(value)
                .is_err()
                .then_some("unparsable :path"),
            _ => None,
        };
        if let Some(bad) = bad {
            self.bad_uri.get_or_insert(bad);
        }
    }

    fn regular(&mut self, name: &[u8], value: &[u8]) {
        // h2 takes names with `HeaderName::from_lowercase` and values with
        // `HeaderValue::from_bytes`; a failure fails the decode.
        if name.is_empty()
            || name.len() > 0xffff
            || !name.iter().all(|&b| H2_NAME_CHARS[b as usize])
        {
            self.stop = Some(H2Trip::Malformed(
                "invalid header name (uppercase or not a token)",
            ));
            return;
        }
        if !value
            .iter()
            .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
        {
            self.stop = Some(H2Trip::Malformed("control character in a header value"));
            return;
        }
        // RFC 9113 §8.2.1: malformed. An HTTP/1.1 upstream strips that
        // whitespace when it parses the field the proxy writes; the gate
        // would have read the value with it.
        if matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'))
        {
            self.malformed
                .get_or_insert("whitespace at the start or end of a header value");
            return;
        }
        match name {
            b"connection" | b"transfer-encoding" | b"upgrade" | b"keep-alive"
            | b"proxy-connection" => {
                self.malformed.get_or_insert("connection-specific header");
                return;
            }
            b"te" if value != b"trailers" => {
                self.malformed.get_or_insert("te other than trailers");
                return;
            }
            b"content-length" => match parse_u64(value) {
                None => {
                    self.bad_length
                        .get_or_insert(H2Trip::Malformed("unparsable content-length"));
                }
                Some(n) if self.content_length.is_some_and(|first| first != n) => {
                    self.bad_length
                        .get_or_insert(H2Trip::Smuggling("conflicting Content-Length"));
                }
                Some(n) => {
                    self.content_length.get_or_insert(n);
                }
            },
            _ => {}
        }
        self.reg = true;
        self.add_size(name.len(), value.len());
    }

    /// The block-level verdict, in h2's order (`HeaderBlock::load`).
    fn verdict(&self) -> Result<(), H2Trip> {
        if let Some(trip) = self.stop {
            return Err(trip);
        }
        if let Some(what) = self.malformed {
            return Err(H2Trip::Malformed(what));
        }
        if self.size >= self.limit {
            return Err(H2Trip::TooLarge);
        }
        Ok(())
    }

    /// The request-level verdict (`recv_headers`, `convert_poll_message`,
    /// hyper's CONNECT body check).
    fn request(&self, end_stream: bool) -> Result<(), H2Trip> {
        if let Some(trip) = self.bad_length {
            return Err(trip);
        }
        if end_stream && self.content_length.is_some_and(|n| n > 0) {
            return Err(H2Trip::Malformed(
                "END_STREAM with a non-zero content-length",
            ));
        }
        // The server enables extended CONNECT (RFC 8441, for WebSockets),
        // so `:protocol` is h2's to check: on CONNECT only.
        let extended = self.pseudo & PROTOCOL != 0;
        if extended && !self.connect {
            return Err(H2Trip::Malformed(
                ":protocol on a request other than CONNECT",
            ));
        }
        if self.pseudo & STATUS != 0 {
            return Err(H2Trip::Malformed(":status in a request"));
        }
        if self.pseudo & METHOD == 0 {
            return Err(H2Trip::Malformed("missing :method"));
        }
        if let Some(bad) = self.bad_uri {
            return Err(H2Trip::Malformed(bad));
        }
        if self.connect && extended {
            if self.pseudo & SCHEME == 0 {
                return Err(H2Trip::Malformed("missing :scheme in extended CONNECT"));
            }
            if self.pseudo & PATH == 0 {
                return Err(H2Trip::Malformed("missing :path in extended CONNECT"));
            }
            if self.content_length.is_some_and(|n| n > 0) {
                return Err(H2Trip::Malformed("CONNECT with a body"));
            }
        } else if self.connect {
            if self.pseudo & SCHEME != 0 {
                return Err(H2Trip::Malformed(":scheme in CONNECT"));
            }
            if self.pseudo & PATH != 0 {
                return Err(H2Trip::Malformed(":path in CONNECT"));
            }
            if self.content_length.is_some_and(|n| n > 0) {
                return Err(H2Trip::Malformed("CONNECT with a body"));
            }
        } else {
            if self.pseudo & SCHEME == 0 {
                return Err(H2Trip::Malformed("missing :scheme"));
            }
            if self.pseudo & PATH == 0 {
                return Err(H2Trip::Malformed("missing :path"));
            }
        }
        Ok(())
    }
}

/// h2's `parse_u64` for content-length: digits only, at most 19 of them.
fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Bytes `HeaderName::from_lowercase` accepts: lowercase token characters.
const H2_NAME_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let ok = b"!\"#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz";
    let mut i = 0;
    while i < ok.len() {
        t[ok[i] as usize] = true;
        i += 1;
    }
    t
};

/// The watching wrapper around the sandbox's TLS stream.
pub(crate) struct H2Watch<IO> {
    inner: IO,
    scanner: H2Scanner,
    /// Bytes read but not yet given to h2, from stream offset `released`:
    /// the part of a header block still being received.
    held: Vec<u8>,
    released: u64,
    tripped: bool,
    trip: Arc<Mutex<Option<H2Trip>>>,
}

impl<IO> H2Watch<IO> {
    /// The wrapper and the slot where a trip is left for the caller.
    pub(crate) fn new(inner: IO, limits: H2Limits) -> (Self, Arc<Mutex<Option<H2Trip>>>) {
        let trip = Arc::new(Mutex::new(None));
        let watch = Self {
            inner,
            scanner: H2Scanner::new(limits),
            held: Vec::new(),
            released: 0,
            tripped: false,
            trip: trip.clone(),
        };
        (watch, trip)
    }
}

fn refused() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "HTTP/2 request refused by watch",
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for H2Watch<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tripped {
            return Poll::Ready(Err(refused()));
        }
        loop {
            // Held bytes a finished check has cleared go first.
            let safe = this.scanner.safe_until();
            if !this.held.is_empty() && safe > this.released {
                let n = usize::try_from(safe - this.released)
                    .unwrap_or(usize::MAX)
                    .min(buf.remaining())
                    .min(this.held.len());
                buf.put_slice(&this.held[..n]);
                this.held.drain(..n);
                this.released += n as u64;
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let got = buf.filled().len() - before;
            if got == 0 {
                // End of stream: a block still held was never complete, and
                // h2 would not have acted on it either.
                return Poll::Ready(Ok(()));
            }
            if let Err(trip) = this.scanner.feed(&buf.filled()[before..]) {
                // Nothing of the offending read reaches h2.
                buf.set_filled(before);
                *this.trip.lock().unwrap_or_else(|p| p.into_inner()) = Some(trip);
                this.tripped = true;
                return Poll::Ready(Err(refused()));
            }
            if this.held.is_empty() {
                // These bytes start at `released`; keep what is not cleared.
                let safe = this.scanner.safe_until().max(this.released);
                let keep = usize::try_from(this.scanner.fed() - safe).unwrap_or(usize::MAX);
                let pass = got - keep;
                this.held
                    .extend_from_slice(&buf.filled()[before + pass..before + got]);
                buf.set_filled(before + pass);
                this.released += pass as u64;
                if pass > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                this.held.extend_from_slice(&buf.filled()[before..]);
                buf.set_filled(before);
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for H2Watch<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: H2Limits = H2Limits {
        list: 4096,
        frame: 16384,
    };
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn int(out: &mut Vec<u8>, first: u8, prefix: u8, mut v: usize) {
        let max = (1usize << prefix) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// Literal without indexing, new name, no Huffman.
    fn lit(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0];
        int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
        out
    }

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        fields.iter().flat_map(|(n, v)| lit(n, v)).collect()
    }

    fn get(extra: &[(&str, &str)]) -> Vec<u8> {
        let mut f = vec![
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "a.example"),
            (":path", "/x"),
        ];
        f.extend_from_slice(extra);
        block(&f)
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn conn(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for f in frames {
            out.extend_from_slice(f);
        }
        out
    }

    fn headers(stream: u32, block: &[u8]) -> Vec<u8> {
        frame(HEADERS, END_HEADERS | END_STREAM, stream, block)
    }

    fn scan(bytes: &[u8]) -> Result<(), H2Trip> {
        H2Scanner::new(LIMITS).feed(bytes)
    }

    fn scan_bytewise(bytes: &[u8]) -> Result<(), H2Trip> {
        let mut s = H2Scanner::new(LIMITS);
        bytes.chunks(1).try_for_each(|c| s.feed(c))
    }

    #[test]
    fn valid_requests_pass_whole_and_byte_by_byte() {
        let data = frame(0x0, END_STREAM, 3, b"hello body");
        let bytes = conn(&[
            headers(1, &get(&[("te", "trailers"), ("x-a", "1")])),
            frame(HEADERS, END_HEADERS, 3, &get(&[("content-length", "10")])),
            data,
            frame(0x8, 0, 0, &[0, 0, 0, 1]), // WINDOW_UPDATE
        ]);
        assert_eq!(scan(&bytes), Ok(()));
        assert_eq!(scan_bytewise(&bytes), Ok(()));
    }

    #[test]
    fn a_block_is_held_until_its_last_continuation() {
        let b = get(&[("x-long", &"v".repeat(300))]);
        let (a, rest) = b.split_at(100);
        let (c1, c2) = rest.split_at(150);
        let bytes = conn(&[
            frame(HEADERS, END_STREAM, 1, a),
            frame(CONTINUATION, 0, 1, c1),
            frame(CONTINUATION, END_HEADERS, 1, c2),
        ]);
        let block_start = (PREFACE.len() + FRAME_HEAD) as u64;
        let mut s = H2Scanner::new(LIMITS);
        for (i, byte) in bytes.chunks(1).enumerate() {
            s.feed(byte).expect("a valid connection");
            let done = i + 1 == bytes.len();
            // Until the HEADERS frame's header is complete it is just bytes.
            let expect = if done || (i as u64) + 1 < block_start + FRAME_HEAD as u64 {
                s.fed()
            } else {
                block_start
            };
            assert_eq!(s.safe_until(), expect, "after byte {i}");
        }
    }

    #[test]
    fn padding_and_priority_are_stripped() {
        let b = get(&[]);
        let mut payload = vec![7]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // depends on stream 0, weight
        payload.extend_from_slice(&b);
        payload.extend_from_slice(&[0; 7]);
        let bytes = conn(&[frame(
            HEADERS,
            END_HEADERS | END_STREAM | PADDED | PRIORITY,
            1,
            &payload,
        )]);
        assert_eq!(scan_bytewise(&bytes), Ok(()));
        let mut self_dep = vec![0, 0, 0, 1, 16];
        self_dep.extend_from_slice(&b);
        let bytes = conn(&[frame(HEADERS, END_HEADERS | PRIORITY, 1, &self_dep)]);
        assert!(matches!(scan(&bytes), Err(H2Trip::Malformed(_))));
    }

    #[test]
    fn the_dynamic_table_follows_the_client_encoder() {
        let mut enc = loona_hpack::Encoder::new();
        let fields: [(&[u8], &[u8]); 5] = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"a.example"),
            (b":path", b"/x"),
            (b"x-token", &[b'v'; 200]),
        ];
        let frames: Vec<Vec<u8>> = (0..5)
            .map(|i| headers(2 * i + 1, &enc.encode(fields)))
            .collect();
        // Later blocks are mostly dynamic-table references.
        assert!(frames[4].len() < frames[0].len() / 2);
        assert_eq!(scan_bytewise(&conn(&frames)), Ok(()));
    }

    #[test]
    fn h2_malformed_shapes_trip() {
        let cases: Vec<Vec<u8>> = vec![
            get(&[("connection", "close")]),
            get(&[("keep-alive", "1")]),
            get(&[("proxy-connection", "x")]),
            get(&[("transfer-encoding", "chunked")]),
            get(&[("upgrade", "h2c")]),
            get(&[("te", "gzip")]),
            get(&[("X-Upper", "1")]),
            get(&[("x-bad", "a\u{1}b")]),
            block(&[(":scheme", "https"), (":path", "/"), (":authority", "a")]),
            block(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "a"),
            ]),
            get(&[(":bogus", "1")]),
            block(&[(":method", "GET"), ("x-a", "1"), (":path", "/")]),
            get(&[(":path", "/again")]),
            get(&[("content-length", "abc")]),
            get(&[("content-length", "5")]), // with END_STREAM
            get(&[(":status", "200")]),
        ];
        for (i, b) in cases.iter().enumerate() {
            let bytes = conn(&[headers(1, b)]);
            assert!(
                matches!(scan(&bytes), Err(H2Trip::Malformed(_))),
                "case {i}: {:?}",
                scan(&bytes)
            );
            assert_eq!(scan(&bytes), scan_bytewise(&bytes), "case {i}");
        }
        let cl = get(&[("content-length", "5"), ("content-length", "6")]);
        let bytes = conn(&[frame(HEADERS, END_HEADERS, 1, &cl)]);
        assert!(matches!(scan(&bytes), Err(H2Trip::Smuggling(_))));
        // Equal duplicates reach `handle`, which reports them.
        let cl = get(&[("content-length", "5"), ("content-length", "5")]);
        assert_eq!(scan(&conn(&[frame(HEADERS, END_HEADERS, 1, &cl)])), Ok(()));
        // Trailers must end the stream.
        let open = frame(HEADERS, END_HEADERS, 1, &get(&[]));
        let trailers = frame(HEADERS, END_HEADERS, 1, &block(&[("x-t", "1")]));
        assert!(matches!(
            scan(&conn(&[open.clone(), trailers])),
            Err(H2Trip::Malformed(_))
        ));
        let trailers = headers(1, &block(&[("x-t", "1")]));
        assert_eq!(scan(&conn(&[open, trailers])), Ok(()));
    }

    /// Extended CONNECT (RFC 8441): `:protocol` only on CONNECT, which then
    /// needs `:scheme` and `:path` and no body; a plain CONNECT keeps its
    /// RFC 9113 shape.
    #[test]
    fn extended_connect_shapes() {
        let ws = |extra: &[(&str, &str)], drop: &str| {
            let mut f = vec![
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "https"),
                (":authority", "a.example"),
                (":path", "/chat"),
            ];
            f.retain(|(n, _)| *n != drop);
            f.extend_from_slice(extra);
            frame(HEADERS, END_HEADERS, 1, &block(&f))
        };
        assert_eq!(scan(&conn(&[ws(&[], "")])), Ok(()));
        assert_eq!(scan_bytewise(&conn(&[ws(&[], "")])), Ok(()));
        for bad in [
            ws(&[], ":scheme"),
            ws(&[], ":path"),
            ws(&[("content-length", "3")], ""),
            headers(1, &get(&[(":protocol", "websocket")])),
            frame(
                HEADERS,
                END_HEADERS,
                1,
                &block(&[
                    (":method", "CONNECT"),
                    (":authority", "a.example:443"),
                    (":path", "/"),
                ]),
            ),
        ] {
            let bytes = conn(&[bad]);
            assert!(
                matches!(scan(&bytes), Err(H2Trip::Malformed(_))),
                "{:?}",
                scan(&bytes)
            );
        }
        let plain = block(&[(":method", "CONNECT"), (":authority", "a.example:443")]);
        assert_eq!(
            scan(&conn(&[frame(HEADERS, END_HEADERS, 1, &plain)])),
            Ok(())
        );
    }

    #[test]
    fn oversized_lists_and_continuation_floods_trip() {
        // h2 refuses a list of exactly its limit (`>=`).
        let pseudo = [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "a.example"),
            (":path", "/x"),
        ];
        let pseudo_size: usize = pseudo.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        let fill = LIMITS.list - pseudo_size - ("x-big".len() + 32);
        let at_limit = get(&[("x-big", &"a".repeat(fill))]);
        let below = get(&[("x-big", &"a".repeat(fill - 1))]);
        let mut c = Check::new(LIMITS.list);
        HpackDecoder::new(H2_HEADER_TABLE)
            .decode(&at_limit, |n, v| c.field(n, v))
            .expect("a valid block");
        assert_eq!(c.size, LIMITS.list);
        assert_eq!(scan(&conn(&[headers(1, &below)])), Ok(()));
        assert_eq!(scan(&conn(&[headers(1, &at_limit)])), Err(H2Trip::TooLarge));
        // Many empty CONTINUATION frames.
        let mut frames = vec![frame(HEADERS, 0, 1, &get(&[]))];
        frames.extend((0..100).map(|_| frame(CONTINUATION, 0, 1, &[])));
        assert_eq!(scan_bytewise(&conn(&frames)), Err(H2Trip::TooLarge));
        // Large ones: refused once the compressed block passes the cap.
        let mut frames = vec![frame(HEADERS, 0, 1, &get(&[]))];
        frames.extend((0..2).map(|_| frame(CONTINUATION, 0, 1, &[0x82; 12000])));
        assert_eq!(scan(&conn(&frames)), Err(H2Trip::TooLarge));
        // Another frame inside a block.
        let frames = [
            frame(HEADERS, 0, 1, &get(&[])),
            frame(0x8, 0, 0, &[0, 0, 0, 1]),
        ];
        assert!(matches!(scan(&conn(&frames)), Err(H2Trip::Malformed(_))));
    }

    #[test]
    fn table_size_updates_follow_the_advertised_size() {
        // Shrink to 0 then back to 4096 at the start of a block: fine.
        let mut b = vec![0x20, 0x3f, 0xe1, 0x1f];
        b.extend(get(&[]));
        assert_eq!(scan(&conn(&[headers(1, &b)])), Ok(()));
        // A block holding only an update (trailers), then one over 4096.
        let open = frame(HEADERS, END_HEADERS, 1, &get(&[]));
        assert_eq!(scan(&conn(&[open, headers(1, &[0x20])])), Ok(()));
        let mut b = vec![0x3f, 0xe2, 0x1f];
        b.extend(get(&[]));
        assert!(matches!(
            scan(&conn(&[headers(1, &b)])),
            Err(H2Trip::Malformed(_))
        ));
    }

    #[test]
    fn huffman_coded_requests_decode_in_step() {
        // RFC 7541 C.4.1 and C.4.2: Huffman-coded requests, the second one
        // referring to the table entry the first one added.
        let first = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let second = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        let mut dec = HpackDecoder::new(H2_HEADER_TABLE);
        let mut seen = Vec::new();
        for block in [&first[..], &second[..], &first[..]] {
            dec.decode(block, |n, v| seen.push((n.to_vec(), v.to_vec())))
                .expect("block decodes");
        }
        let has = |n: &[u8], v: &[u8]| seen.iter().filter(|(a, b)| a == n && b == v).count();
        assert_eq!(has(b":authority", b"www.example.com"), 3);
        assert_eq!(has(b"cache-control", b"no-cache"), 1);
        let bytes = conn(&[headers(1, &first), headers(3, &second)]);
        // :scheme http is fine for h2's rules too.
        assert_eq!(scan_bytewise(&bytes), Ok(()));
        // A Huffman string with bad padding fails like any decode error.
        let bad = [0x82, 0x86, 0x84, 0x41, 0x81, 0x00];
        assert!(matches!(
            scan(&conn(&[headers(1, &bad)])),
            Err(H2Trip::Malformed(_))
        ));
    }

    /// Hands out at most one byte per read.
    struct Trickle(std::io::Cursor<Vec<u8>>);

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let c = &mut self.get_mut().0;
            let pos = c.position() as usize;
            if let Some(&b) = c.get_ref().get(pos) {
                buf.put_slice(&[b]);
                c.set_position(pos as u64 + 1);
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn read_through(bytes: Vec<u8>) -> (io::Result<Vec<u8>>, Option<H2Trip>) {
        use tokio::io::AsyncReadExt;
        let (mut watch, trip) = H2Watch::new(Trickle(std::io::Cursor::new(bytes)), LIMITS);
        let mut out = Vec::new();
        let r = watch.read_to_end(&mut out).await.map(|_| out);
        let t = *trip.lock().expect("not poisoned");
        (r, t)
    }

    #[tokio::test]
    async fn the_wrapper_passes_valid_bytes_unchanged_one_byte_at_a_time() {
        let b = get(&[("x-long", &"v".repeat(300))]);
        let (a, c) = b.split_at(100);
        let bytes = conn(&[
            headers(1, &get(&[])),
            frame(HEADERS, END_STREAM, 3, a),
            frame(CONTINUATION, END_HEADERS, 3, c),
            frame(0x6, 0, 0, &[0; 8]), // PING
        ]);
        let (out, trip) = read_through(bytes.clone()).await;
        assert_eq!(out.expect("valid bytes pass"), bytes);
        assert_eq!(trip, None);
    }

    #[tokio::test]
    async fn the_wrapper_never_passes_a_refused_block() {
        let good = headers(1, &get(&[]));
        let bad = headers(3, &get(&[("connection", "x")]));
        let bytes = conn(&[good, bad]);
        let (out, trip) = read_through(bytes).await;
        assert_eq!(
            out.expect_err("the read fails").kind(),
            io::ErrorKind::InvalidData
        );
        assert!(matches!(trip, Some(H2Trip::Malformed(_))));
    }
}
