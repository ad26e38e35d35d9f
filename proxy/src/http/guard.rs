//! `H1Guard`: watches the HTTP/1.1 byte stream from the sandbox before hyper
//! parses it, and cuts the connection on request-smuggling shapes hyper
//! would tolerate (Content-Length with Transfer-Encoding, duplicate
//! Content-Length), oversized or malformed heads. It follows message framing
//! (fixed-length and chunked bodies) so every request head is checked,
//! including pipelined ones, and those after a refused CONNECT or Upgrade:
//! it stops only when the proxy has switched the connection to another
//! protocol (a WebSocket the gate allowed and upstream accepted).

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ProxyError;

const MAX_HEADERS: usize = 128;
const MAX_CHUNK_LINE: usize = 4096;

/// Why the guard cut a connection; read back after hyper reports the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuardTrip {
    ClWithTe,
    DuplicateCl,
    TooLarge,
    Malformed(&'static str),
}

impl GuardTrip {
    pub(crate) fn into_error(self) -> ProxyError {
        match self {
            GuardTrip::ClWithTe => ProxyError::Smuggling("Content-Length with Transfer-Encoding"),
            GuardTrip::DuplicateCl => ProxyError::Smuggling("duplicate Content-Length"),
            GuardTrip::TooLarge => ProxyError::HeadersTooLarge,
            GuardTrip::Malformed(what) => ProxyError::Malformed(what.to_owned()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkLine,
    ChunkData(u64),
    ChunkCr,
    ChunkLf,
    Trailers,
    /// The proxy switched the connection to another protocol (it answered
    /// `101` to a WebSocket upgrade): what follows is no longer HTTP/1.1.
    /// Never entered on a request head alone: an upgrade or CONNECT the
    /// proxy refuses leaves the connection HTTP/1.1, as hyper reads it.
    Opaque,
}

/// The framing tracker, separate from I/O so it can be tested on bytes.
#[derive(Debug)]
pub(crate) struct H1Scanner {
    state: State,
    line: Vec<u8>,
    max_head: usize,
    /// Complete request heads that passed.
    heads: u64,
    /// Of those, heads asking to leave HTTP/1.1 (CONNECT or `Upgrade`).
    upgrades: u64,
}

impl H1Scanner {
    pub(crate) fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            line: Vec::new(),
            max_head,
            heads: 0,
            upgrades: 0,
        }
    }

    /// The connection now speaks another protocol: stop parsing it.
    pub(crate) fn switch(&mut self) {
        self.state = State::Opaque;
        self.line = Vec::new();
    }

    /// Request heads asking to leave HTTP/1.1 seen so far.
    #[cfg(test)]
    pub(crate) fn upgrades(&self) -> u64 {
        self.upgrades
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), GuardTrip> {
        while !data.is_empty() {
            match self.state {
                State::Opaque => return Ok(()),
                State::Head => {
                    if self.line.is_empty() {
                        // Empty lines before a request line are tolerated.
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return Ok(());
                        }
                    }
                    let before = self.line.len();
                    let start = before.saturating_sub(3);
                    let room = self.max_head + 1 - before.min(self.max_head + 1);
                    let take = data.len().min(room);
                    self.line.extend_from_slice(&data[..take]);
                    let end = find_head_end(&self.line[start..]).map(|e| start + e);
                    // httparse (so hyper) also ends lines at a bare LF: a
                    // head written with them would reach hyper while this
                    // scanner, waiting for CRLF CRLF, fell out of step with
                    // it and missed the heads behind it.
                    let head_bytes = &self.line[..end.unwrap_or(self.line.len())];
                    if has_bare_lf(head_bytes, before) {
                        return Err(GuardTrip::Malformed("bare LF in a request head"));
                    }
                    match end {
                        Some(end) => {
                            let consumed = end - (self.line.len() - take);
                            self.line.truncate(end);
                            let (state, upgrade) = check_head(&self.line)?;
                            self.state = state;
                            self.heads += 1;
                            self.upgrades += u64::from(upgrade);
                            self.line.clear();
                            data = &data[consumed..];
                        }
                        None if self.line.len() > self.max_head => return Err(GuardTrip::TooLarge),
                        None => data = &data[take..],
                    }
                }
                State::Fixed(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::Head
                    } else {
                        State::Fixed(n - take)
                    };
                }
                State::ChunkLine | State::Trailers => {
                    let nl = data.iter().position(|b| *b == b'\n');
                    let take = nl.map_or(data.len(), |i| i + 1);
                    if self.line.len() + take > MAX_CHUNK_LINE {
                        return Err(GuardTrip::TooLarge);
                    }
                    self.line.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if nl.is_some() {
                        self.state = self.line_done()?;
                        self.line.clear();
                    }
                }
                State::ChunkData(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::ChunkCr
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::ChunkCr | State::ChunkLf => {
                    let want = if self.state == State::ChunkCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if data[0] != want {
                        return Err(GuardTrip::Malformed("chunk not followed by CRLF"));
                    }
                    data = &data[1..];
                    self.state = if want == b'\r' {
                        State::ChunkLf
                    } else {
                        State::ChunkLine
                    };
                }
            }
        }
        Ok(())
    }

    fn line_done(&self) -> Result<State, GuardTrip> {
        let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        let line = line
            .strip_suffix(b"\r")
            .ok_or(GuardTrip::Malformed("bare LF in chunked framing"))?;
        if self.state == State::Trailers {
            return Ok(if line.is_empty() {
                State::Head
            } else {
                State::Trailers
            });
        }
        let size = line.split(|b| *b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or(GuardTrip::Malformed("bad chunk size"))?;
        Ok(if size == 0 {
            State::Trailers
        } else {
            State::ChunkData(size)
        })
    }
}

/// Whether `head[from..]` holds an LF not preceded by CR (the byte before
/// `from` counts as the preceding one).
fn has_bare_lf(head: &[u8], from: usize) -> bool {
    (from..head.len()).any(|i| head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Validate one complete request head; return the framing state that
/// follows (its body, then the next head: hyper goes on reading HTTP/1.1
/// after an upgrade or CONNECT it does not switch for) and whether it asks
/// to leave HTTP/1.1.
fn check_head(head: &[u8]) -> Result<(State, bool), GuardTrip> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(GuardTrip::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(GuardTrip::TooLarge),
        Err(_) => return Err(GuardTrip::Malformed("unparsable request head")),
    }
    let mut content_length: Option<u64> = None;
    let mut cl_count = 0;
    let mut te: Option<&[u8]> = None;
    let mut upgrade = req.method == Some("CONNECT");
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            cl_count += 1;
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or(GuardTrip::Malformed("bad Content-Length"))?;
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return Err(GuardTrip::Malformed("repeated Transfer-Encoding"));
            }
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if cl_count > 1 {
        return Err(GuardTrip::DuplicateCl);
    }
    if te.is_some() && content_length.is_some() {
        return Err(GuardTrip::ClWithTe);
    }
    let state = match (te, content_length) {
        (Some(te), _) => {
            // `chunked` alone. hyper removes the chunked framing and the
            // body goes upstream with the proxy's own framing and no
            // transfer-coding: under another coding (`gzip, chunked`)
            // upstream would get coded bytes nobody tells it are coded
            // (and the gate read them coded), and `chunked, chunked` means
            // another body to a server that decodes twice. Either way not
            // what the sandbox sent. (Not ending in chunked: no framing.)
            if !te.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(GuardTrip::Malformed(
                    "a Transfer-Encoding other than chunked alone",
                ));
            }
            State::ChunkLine
        }
        (None, Some(n)) if n > 0 => State::Fixed(n),
        _ => State::Head,
    };
    Ok((state, upgrade))
}

/// An I/O wrapper feeding the [`H1Scanner`] with everything read; on a trip
/// nothing of the offending read reaches hyper, the sandbox is answered
/// (`400`/`431` with `Connection: close` and the reason) when no earlier
/// response is still on its way, and the read fails so hyper drops the
/// connection. The reason is kept for the refusal event.
pub(crate) struct H1Guard<IO> {
    inner: IO,
    scanner: H1Scanner,
    trip: Arc<Mutex<Option<GuardTrip>>>,
    /// Set by the proxy just before it answers `101` to an upgrade it
    /// carries; from then on reads pass unparsed. Invariant: never set on a
    /// connection that goes on speaking HTTP/1.1.
    switched: Arc<AtomicBool>,
    /// Responses whose body hyper has finished with (see `serve_h1`).
    answered: Arc<AtomicU64>,
    /// Bytes written since the last completed flush.
    dirty: bool,
    /// The refusal being written: bytes and how far.
    answer: Option<(Vec<u8>, usize)>,
}

impl<IO> H1Guard<IO> {
    pub(crate) fn new(
        inner: IO,
        max_head: usize,
        answered: Arc<AtomicU64>,
        switched: Arc<AtomicBool>,
    ) -> (Self, Arc<Mutex<Option<GuardTrip>>>) {
        let trip = Arc::new(Mutex::new(None));
        (
            Self {
                inner,
                scanner: H1Scanner::new(max_head),
                trip: trip.clone(),
                switched,
                answered,
                dirty: false,
                answer: None,
            },
            trip,
        )
    }
}

/// The whole HTTP/1.1 answer to a tripped connection.
fn refusal_bytes(trip: GuardTrip) -> Vec<u8> {
    let err = trip.into_error();
    let b = err.blocked();
    let body = format!(
        "{{\"blocked\":true,\"reason\":\"{}\",\"detail\":{}}}\n",
        b.reason,
        super::json_string(&err.to_string())
    );
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\n{}: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
        b.status.as_u16(),
        b.status.canonical_reason().unwrap_or(""),
        super::BLOCKED_HEADER,
        b.reason,
        body.len(),
        body
    )
    .into_bytes()
}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "request refused by guard")
}

impl<IO: AsyncRead + AsyncWrite + Unpin> H1Guard<IO> {
    /// Write the refusal (if any), flush, close; then fail the read.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, pos)) = self.answer.as_mut() {
            while *pos < bytes.len() {
                match Pin::new(&mut self.inner).poll_write(cx, &bytes[*pos..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(refused())),
                    Poll::Ready(Ok(n)) => *pos += n,
                    Poll::Pending => return Poll::Pending,
                }
            }
            // Best effort from here: the connection ends either way.
            let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
            let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
            self.answer = None;
        }
        Poll::Ready(Err(refused()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for H1Guard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.answer.is_some() {
            return this.poll_answer(cx);
        }
        if this.scanner.state == State::Opaque {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.switched.load(Ordering::Acquire) {
            this.scanner.switch();
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let heads_before = this.scanner.heads;
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Err(trip) = this.scanner.feed(&buf.filled()[before..]) {
            // Nothing of the offending read reaches hyper.
            buf.set_filled(before);
            *this.trip.lock().unwrap_or_else(|p| p.into_inner()) = Some(trip);
            // Answer only between responses: bytes written into the middle of
            // one still being sent would corrupt it.
            let idle = this.answered.load(Ordering::Acquire) == heads_before && !this.dirty;
            if idle {
                this.answer = Some((refusal_bytes(trip), 0));
            }
            return this.poll_answer(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for H1Guard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.dirty = true;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.dirty = false;
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.dirty = true;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(bytes: &[u8]) -> Result<(), GuardTrip> {
        H1Scanner::new(8192).feed(bytes)
    }

    fn scan_bytewise(bytes: &[u8]) -> Result<(), GuardTrip> {
        let mut s = H1Scanner::new(8192);
        bytes.chunks(1).try_for_each(|c| s.feed(c))
    }

    #[test]
    fn plain_pipelined_requests_pass() {
        let reqs = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\nGET /z HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan(reqs), Ok(()));
        assert_eq!(scan_bytewise(reqs), Ok(()));
    }

    #[test]
    fn smuggling_shapes_trip() {
        let cl_te = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(scan(cl_te), Err(GuardTrip::ClWithTe));
        let dup =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(scan_bytewise(dup), Err(GuardTrip::DuplicateCl));
        // The second, pipelined request is the smuggled one: still caught.
        let hidden = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(hidden), Err(GuardTrip::ClWithTe));
        for te in [
            "chunked, gzip",
            "gzip, chunked",
            "chunked, chunked",
            "identity",
        ] {
            let head = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
            let trip = scan(head.as_bytes());
            assert!(matches!(trip, Err(GuardTrip::Malformed(_))), "{te}");
        }
        let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n";
        assert_eq!(scan(chunked), Ok(()));
    }

    #[test]
    fn oversized_and_malformed_heads_trip() {
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(scan(&big), Err(GuardTrip::TooLarge));
        assert!(matches!(
            scan(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(GuardTrip::Malformed(_))
        ));
        let bad_chunk = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(matches!(scan(bad_chunk), Err(GuardTrip::Malformed(_))));
    }

    /// httparse ends lines at a bare LF too; the scanner refuses them
    /// rather than wait for a CRLF CRLF hyper does not need.
    #[test]
    fn bare_lf_in_a_head_trips() {
        for head in [
            &b"GET / HTTP/1.1\nHost: a\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        ] {
            let what = String::from_utf8_lossy(head);
            assert!(matches!(scan(head), Err(GuardTrip::Malformed(_))), "{what}");
            assert!(
                matches!(scan_bytewise(head), Err(GuardTrip::Malformed(_))),
                "{what}"
            );
        }
        // Empty lines before a request line stay tolerated (hyper skips them).
        assert_eq!(scan(b"\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
    }

    /// A refused upgrade or CONNECT leaves the connection HTTP/1.1 (hyper
    /// reads the next request from it): the guard keeps checking, and
    /// counts the heads that asked to leave.
    #[test]
    fn heads_after_an_upgrade_or_connect_are_still_checked() {
        let smuggled =
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for first in [
            &b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 3\r\n\r\nabc",
        ] {
            let mut s = H1Scanner::new(8192);
            s.feed(first).expect("the upgrade request itself passes");
            assert_eq!(s.upgrades(), 1);
            assert_eq!(s.state, State::Head, "{}", String::from_utf8_lossy(first));
            assert_eq!(s.feed(smuggled), Err(GuardTrip::ClWithTe));
            let mut all = first.to_vec();
            all.extend_from_slice(smuggled);
            assert_eq!(scan_bytewise(&all), Err(GuardTrip::ClWithTe));
        }
    }

    /// Only the proxy's switch (it answered 101) stops the parsing.
    #[test]
    fn a_switched_connection_is_opaque() {
        let mut s = H1Scanner::new(8192);
        s.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .expect("passes");
        s.switch();
        assert_eq!(s.feed(b"\x81\x05hello not http at all\r\n\r\n"), Ok(()));
    }
}
