//! WebSockets, the one kind of upgrade the proxy carries: which requests ask
//! for one (an HTTP/1.1 `Upgrade: websocket`, an HTTP/2 extended CONNECT
//! for `websocket`, RFC 8441; every other upgrade and every plain CONNECT
//! is refused), the HTTP/1.1 upgrade request an HTTP/2 one becomes
//! upstream, and the tunnel after upstream's `101`: bytes counted as they
//! pass, and, when the gate filters the response, each server message
//! passed through that filter and framed again.

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::{
    decide::{FilterError, ResponseFilter},
    ProxyError,
};

/// The only `:protocol` an HTTP/2 extended CONNECT may name.
const WEBSOCKET: &str = "websocket";
/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;
/// Read size of the tunnel's pumps.
const PUMP_BUF: usize = 16 * 1024;

/// What a request asks of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asks {
    /// An ordinary request (an `Upgrade` header without `Connection:
    /// upgrade` is no upgrade request: the header is hop-by-hop and dropped).
    Request,
    /// An HTTP/1.1 WebSocket upgrade.
    WebSocket,
    /// An HTTP/2 extended CONNECT for a WebSocket.
    H2WebSocket,
}

fn connection_lists_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Reads what a request asks, or refuses it: the proxy is not a tunnel, so
/// a CONNECT (other than an HTTP/2 extended CONNECT for a WebSocket) and an
/// upgrade to anything but a WebSocket are refused before the gate.
pub(crate) fn asks<B>(req: &Request<B>) -> Result<Asks, ProxyError> {
    let refuse = |why: &'static str| Err(ProxyError::UpgradeRefused(why));
    if req.method() == Method::CONNECT {
        let protocol = req.extensions().get::<hyper::ext::Protocol>();
        return match protocol {
            None => refuse("CONNECT: the proxy opens no tunnels"),
            Some(p) if req.version() == Version::HTTP_2 && p.as_str() == WEBSOCKET => {
                websocket_headers(req.headers(), false)?;
                Ok(Asks::H2WebSocket)
            }
            Some(_) => refuse("extended CONNECT for a protocol other than websocket"),
        };
    }
    let upgrade = req.headers().get_all(header::UPGRADE);
    if upgrade.iter().next().is_none()
        || req.version() != Version::HTTP_11
        || !connection_lists_upgrade(req.headers())
    {
        return Ok(Asks::Request);
    }
    let mut values = upgrade.iter();
    let only = values.next().filter(|_| values.next().is_none());
    let is_websocket = only
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(WEBSOCKET));
    if !is_websocket {
        return refuse("an upgrade to something other than websocket");
    }
    if req.method() != Method::GET {
        return refuse("a WebSocket upgrade that is not a GET");
    }
    // A server that reads the handshake head itself takes whatever follows
    // it as WebSocket frames, while the gate (and the proxy, forwarding it)
    // read those bytes as the request's body.
    if announces_body(req.headers()) {
        return refuse("a WebSocket upgrade with a body");
    }
    websocket_headers(req.headers(), true)?;
    Ok(Asks::WebSocket)
}

/// Whether a request's head announces a body: a `Transfer-Encoding`, or a
/// `Content-Length` other than zero.
fn announces_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|b| *b != b'0'))
}

/// Whether a `101`'s head switches to a WebSocket: exactly one `Upgrade`,
/// naming `websocket` (RFC 6455 §4.1, the client's check).
pub(crate) fn switched_to_websocket(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::UPGRADE).iter();
    values
        .next()
        .filter(|_| values.next().is_none())
        .is_some_and(|v| {
            v.as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(WEBSOCKET.as_bytes())
        })
}

/// What RFC 6455 §1.3 appends to the key before hashing it.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether a `101`'s `Sec-WebSocket-Accept` answers the key sent (RFC 6455
/// §4.1, the client's check): exactly one, base64(SHA-1(key + GUID)). A
/// server that answers otherwise did not read the handshake as a
/// WebSocket one, so what it speaks after the switch is not known.
pub(crate) fn accepts_key(key: Option<&HeaderValue>, headers: &HeaderMap) -> bool {
    let Some(key) = key else {
        return false;
    };
    let mut values = headers.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
    let Some(accept) = values.next().filter(|_| values.next().is_none()) else {
        return false;
    };
    let mut sha1 = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key.as_bytes().trim_ascii());
    sha1.update(ACCEPT_GUID);
    accept.as_bytes().trim_ascii() == base64(sha1.finish().as_ref()).as_bytes()
}

/// The WebSocket handshake headers a request must carry (RFC 6455 §4.1,
/// RFC 8441 §5: no key over HTTP/2).
fn websocket_headers(headers: &HeaderMap, key: bool) -> Result<(), ProxyError> {
    let one = |name: &str| {
        let mut all = headers.get_all(name).iter();
        all.next().filter(|_| all.next().is_none()).cloned()
    };
    if one("sec-websocket-version").is_none_or(|v| v.as_bytes().trim_ascii() != b"13") {
        return Err(ProxyError::UpgradeRefused(
            "a WebSocket request without Sec-WebSocket-Version 13",
        ));
    }
    if key && one("sec-websocket-key").is_none() {
        return Err(ProxyError::UpgradeRefused(
            "a WebSocket upgrade without one Sec-WebSocket-Key",
        ));
    }
    Ok(())
}

/// Turns an HTTP/2 extended CONNECT's head into the HTTP/1.1 upgrade
/// request upstream receives (WebSockets always use a dedicated HTTP/1.1
/// upstream connection), before the gate sees it: the gate decides, and
/// the receipt records, what upstream gets.
pub(crate) fn h2_to_upgrade(head: &mut http::request::Parts) {
    head.method = Method::GET;
    head.version = Version::HTTP_11;
    head.extensions.remove::<hyper::ext::Protocol>();
    let h = &mut head.headers;
    h.insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert("sec-websocket-key", websocket_key());
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
fn websocket_key() -> HeaderValue {
    let mut raw = [0u8; 16];
    let rng = rustls::crypto::aws_lc_rs::default_provider().secure_random;
    if rng.fill(&mut raw).is_err() {
        // Only a nonce against broken caches, not a secret: a fixed one still
        // yields a valid handshake.
        raw = *b"openclaw-ws-key!";
    }
    HeaderValue::from_str(&base64(&raw)).expect("base64 is header text")
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Where a server frame's parsing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameState {
    /// Waiting for (the rest of) a frame header.
    Header,
    /// Inside a data frame's payload.
    Data { fin: bool, left: u64 },
    /// Waiting for a whole control frame's payload.
    Control { opcode: u8, len: usize },
}

/// A server's WebSocket frames with each message's payload passed through
/// the gate's filter and framed again (masking may change a message's
/// length, so frames cannot be patched in place). Data frames stream: each
/// piece of filter output goes out as a frame of the message. Control
/// frames (ping, pong, close: at most 125 bytes, never fragmented, possibly
/// between the frames of a message) go through a second filter, whole.
///
/// Data messages are one stream to their filter, so a secret split across
/// two messages is masked too: when a message ends with a tail that could
/// begin a secret, its final frame is held until the next message's bytes
/// decide the tail; a close frame or [`release`](Self::release) (the pump,
/// when the upstream pauses or ends) sends it on as it is. Control frames
/// are never held (a ping waits for its pong): a control payload ending in
/// a secret's start goes out as it is, and the tunnel ends if the next
/// control frame completes that secret (the filter's error).
///
/// Fails closed on what it cannot read: a masked server frame (RFC 6455
/// §5.1), reserved bits (no extension may be agreed on a masked tunnel: the
/// proxy refuses the `101` otherwise), an unknown opcode, a continuation
/// without a message or a new message inside one, a fragmented or oversized
/// control frame.
pub(crate) struct MessageMask {
    data: Box<dyn ResponseFilter>,
    control: Box<dyn ResponseFilter>,
    /// Received bytes not yet parsed.
    buf: BytesMut,
    state: FrameState,
    /// Opcode (1 text, 2 binary) of the message being read.
    message: Option<u8>,
    /// The message frames go out for: the one being read, or while `held`
    /// the one before it.
    out: Option<Out>,
    /// `out` was read to its end; its final frame waits.
    held: bool,
}

/// A message on the output side.
#[derive(Debug, Clone, Copy)]
struct Out {
    opcode: u8,
    /// A frame of it has been sent on.
    sent_first: bool,
}

fn bad(what: &str) -> FilterError {
    FilterError(format!("WebSocket from upstream: {what}"))
}

/// Appends one unmasked frame.
fn write_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

impl MessageMask {
    pub(crate) fn new(data: Box<dyn ResponseFilter>, control: Box<dyn ResponseFilter>) -> Self {
        Self {
            data,
            control,
            buf: BytesMut::new(),
            state: FrameState::Header,
            message: None,
            out: None,
            held: false,
        }
    }

    /// Parses `input`, appending the frames to send on to `out`; returns
    /// whether a message's final frame is held (see [`release`](Self::release)).
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<bool, FilterError> {
        self.buf.extend_from_slice(input);
        loop {
            match self.state {
                FrameState::Header => {
                    if !self.header()? {
                        return Ok(self.held);
                    }
                }
                FrameState::Data { fin, left } => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    if take > 0 {
                        let chunk = self.buf.split_to(take).freeze();
                        self.data.push(chunk)?;
                        self.drain(out)?;
                    }
                    let left = left - take as u64;
                    if left > 0 {
                        self.state = FrameState::Data { fin, left };
                        return Ok(self.held);
                    }
                    if fin {
                        self.end_message(out)?;
                    }
                    self.state = FrameState::Header;
                }
                FrameState::Control { opcode, len } => {
                    if self.buf.len() < len {
                        return Ok(self.held);
                    }
                    if opcode == 0x8 {
                        // Nothing follows a close: the held end goes first.
                        self.release(out)?;
                    }
                    let payload = self.buf.split_to(len).freeze();
                    self.control.push(payload)?;
                    if self.control.end_message()? {
                        self.control.release_message()?;
                    }
                    let mut masked = Vec::new();
                    while let Some(b) = self.control.pull()? {
                        masked.extend_from_slice(&b);
                    }
                    self.control.message_ended();
                    if masked.len() > MAX_CONTROL {
                        return Err(bad("a masked control frame grew past 125 bytes"));
                    }
                    write_frame(out, true, opcode, &masked);
                    self.state = FrameState::Header;
                }
            }
        }
    }

    /// Sends on the held final frame, with what the filter held back of its
    /// message as it is.
    pub(crate) fn release(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError> {
        if self.held {
            self.data.release_message()?;
            self.drain_held(out)?;
        }
        Ok(())
    }

    /// The message being read ended.
    fn end_message(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError> {
        let held = self.data.end_message()?;
        if self.held {
            // The message before it: the filter decides its end now.
            self.drain_held(out)?;
        }
        let mut rest = Vec::new();
        while let Some(b) = self.data.pull()? {
            rest.extend_from_slice(&b);
        }
        let opcode = self.next_opcode();
        if held {
            if !rest.is_empty() {
                write_frame(out, false, opcode, &rest);
            }
            self.held = true;
        } else {
            write_frame(out, true, opcode, &rest);
            self.out = None;
        }
        self.message = None;
        Ok(())
    }

    /// Parses a frame header if all of it is here (false: wait for more).
    fn header(&mut self) -> Result<bool, FilterError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(false);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0f);
        if b[1] & 0x80 != 0 {
            return Err(bad("a masked frame"));
        }
        if rsv != 0 {
            return Err(bad("reserved bits set"));
        }
        let (len, header_len) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let n = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
                if n >> 63 != 0 {
                    return Err(bad("a frame length with its top bit set"));
                }
                (n, 10)
            }
            126 | 127 => return Ok(false),
            n => (u64::from(n), 2),
        };
        self.buf.advance(header_len);
        self.state = match opcode {
            0x8..=0xa => {
                if !fin || len > MAX_CONTROL as u64 {
                    return Err(bad("a fragmented or oversized control frame"));
                }
                FrameState::Control {
                    opcode,
                    len: len as usize,
                }
            }
            0x0 if self.message.is_none() => return Err(bad("a continuation without a message")),
            0x0 => FrameState::Data { fin, left: len },
            0x1 | 0x2 if self.message.is_some() => return Err(bad("a new message inside another")),
            0x1 | 0x2 => {
                self.message = Some(opcode);
                if !self.held {
                    self.out = Some(Out {
                        opcode,
                        sent_first: false,
                    });
                }
                FrameState::Data { fin, left: len }
            }
            _ => return Err(bad("an unknown opcode")),
        };
        Ok(true)
    }

    /// The opcode of the next frame of the message going out.
    fn next_opcode(&mut self) -> u8 {
        match self.out.as_mut() {
            Some(o) if !o.sent_first => {
                o.sent_first = true;
                o.opcode
            }
            Some(_) => 0,
            None => 0x2,
        }
    }

    /// Sends on what the data filter has ready, as frames of the message
    /// going out.
    fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError> {
        if self.held {
            self.drain_held(out)?;
        }
        self.send_ready(out)
    }

    /// What the data filter has ready, as non-final frames of the message
    /// going out.
    fn send_ready(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError> {
        while let Some(b) = self.data.pull()? {
            if !b.is_empty() {
                let opcode = self.next_opcode();
                write_frame(out, false, opcode, &b);
            }
        }
        Ok(())
    }

    /// Sends on what the filter has ready of the held message and, if its
    /// end is decided, its final frame; frames then go out for the message
    /// being read.
    fn drain_held(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError> {
        self.send_ready(out)?;
        if self.data.message_ended() {
            let opcode = self.next_opcode();
            write_frame(out, true, opcode, &[]);
            self.held = false;
            self.out = self.message.map(|opcode| Out {
                opcode,
                sent_first: false,
            });
        }
        Ok(())
    }
}

/// How long a message's final frame may wait for the next message to tell
/// whether its tail begins a secret: longer than back-to-back messages
/// take to arrive (a stream chunked into messages sends them in one go),
/// short enough that a request/response peer waiting on the message does
/// not notice. Counted from the hold's start, so pings cannot stretch it.
const HOLD: Duration = Duration::from_millis(75);

/// Copies one direction of a tunnel until the reader ends (then shuts the
/// writer down), counting the bytes written; with `mask`, what is written
/// is the masked frames, and a held final frame goes out when `HOLD`
/// passes without its continuation, or when the reader ends.
pub(crate) async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    counter: &AtomicU64,
    mut mask: Option<MessageMask>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PUMP_BUF];
    let mut out = Vec::new();
    let mut held_until: Option<Instant> = None;
    loop {
        let read = reader.read(&mut buf);
        // `read` is cancel safe: a timeout loses no bytes.
        let n = match held_until {
            Some(t) => match tokio::time::timeout_at(t, read).await {
                Ok(n) => Some(n?),
                Err(_) => None,
            },
            None => Some(read.await?),
        };
        out.clear();
        let bytes = match (mask.as_mut(), n) {
            (None, Some(n)) if n > 0 => &buf[..n],
            // Without a mask nothing is held, so no timeout.
            (None, _) => return writer.shutdown().await,
            (Some(m), Some(0) | None) => {
                m.release(&mut out).map_err(io::Error::other)?;
                held_until = None;
                &out[..]
            }
            (Some(m), Some(n)) => {
                let held = m.feed(&buf[..n], &mut out).map_err(io::Error::other)?;
                held_until = match (held, held_until) {
                    (false, _) => None,
                    (true, None) => Some(Instant::now() + HOLD),
                    (true, t) => t,
                };
                &out[..]
            }
        };
        if !bytes.is_empty() {
            writer.write_all(bytes).await?;
            writer.flush().await?;
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        if n == Some(0) {
            return writer.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Replaces `secret` with `mask` (whole, in one pushed piece or across
    /// pieces), holding back a tail as the enforcing gate's filter does.
    struct Replace {
        carry: Vec<u8>,
        ready: Vec<Bytes>,
    }
    const SECRET: &[u8] = b"s3cr3t";
    const MASK: &[u8] = b"ocs_placeholder_xyz";
    impl Replace {
        fn boxed() -> Box<dyn ResponseFilter> {
            Box::new(Replace {
                carry: Vec::new(),
                ready: Vec::new(),
            })
        }
        fn release(&mut self, keep: usize) {
            let text = std::mem::take(&mut self.carry);
            let mut out = Vec::new();
            let mut i = 0;
            while i < text.len() {
                if text[i..].starts_with(SECRET) {
                    out.extend_from_slice(MASK);
                    i += SECRET.len();
                } else if text.len() - i < SECRET.len()
                    && SECRET.starts_with(&text[i..])
                    && keep > 0
                {
                    self.carry = text[i..].to_vec();
                    break;
                } else {
                    out.push(text[i]);
                    i += 1;
                }
            }
            self.ready.push(Bytes::from(out));
        }
    }
    impl ResponseFilter for Replace {
        fn push(&mut self, chunk: Bytes) -> Result<(), FilterError> {
            self.carry.extend_from_slice(&chunk);
            self.release(1);
            Ok(())
        }
        fn pull(&mut self) -> Result<Option<Bytes>, FilterError> {
            Ok((!self.ready.is_empty()).then(|| self.ready.remove(0)))
        }
        fn finish(&mut self) -> Result<(), FilterError> {
            self.release(0);
            Ok(())
        }
    }

    /// `Replace` with a WebSocket's messages one stream, as the enforcing
    /// gate's filter: a message ending in the start of `SECRET` is held;
    /// the next message decides it (the mask goes in the message the secret
    /// began in); a released end that the next bytes complete is an error.
    #[derive(Default)]
    struct Stream {
        text: Vec<u8>,
        /// The first `sent` bytes of `text` went out as they were.
        sent: usize,
        held_end: Option<usize>,
        /// `None`: the held message ends here.
        ready: std::collections::VecDeque<Option<Bytes>>,
    }
    impl Stream {
        fn boxed() -> Box<dyn ResponseFilter> {
            Box::<Stream>::default()
        }
        fn run(&mut self) -> Result<(), FilterError> {
            let t = &self.text;
            let found = |i: usize| t[i..].starts_with(SECRET);
            if (0..self.sent).any(|i| found(i) && i + SECRET.len() > self.sent) {
                return Err(FilterError("split".into()));
            }
            let hold = (0..t.len())
                .find(|&i| t.len() - i < SECRET.len() && SECRET.starts_with(&t[i..]))
                .unwrap_or(t.len());
            let mut i = self.sent;
            let mut out = Vec::new();
            while i < hold {
                if self.held_end == Some(i) {
                    self.ready
                        .push_back(Some(Bytes::from(std::mem::take(&mut out))));
                    self.ready.push_back(None);
                    self.held_end = None;
                }
                if found(i) {
                    out.extend_from_slice(MASK);
                    i += SECRET.len();
                    if self.held_end.is_some_and(|m| m < i) {
                        // Began in the held message: the mask stays there.
                        self.held_end = Some(i);
                    }
                } else {
                    out.push(t[i]);
                    i += 1;
                }
            }
            if self.held_end == Some(hold) {
                self.ready
                    .push_back(Some(Bytes::from(std::mem::take(&mut out))));
                self.ready.push_back(None);
                self.held_end = None;
            }
            self.ready.push_back(Some(Bytes::from(out)));
            let stop = if hold <= self.sent { hold } else { i };
            self.text.drain(..stop);
            self.sent = self.sent.saturating_sub(stop);
            self.held_end = self.held_end.map(|m| m - stop);
            Ok(())
        }
    }
    impl ResponseFilter for Stream {
        fn push(&mut self, chunk: Bytes) -> Result<(), FilterError> {
            self.text.extend_from_slice(&chunk);
            self.run()
        }
        fn pull(&mut self) -> Result<Option<Bytes>, FilterError> {
            match self.ready.front() {
                Some(Some(_)) => Ok(self.ready.pop_front().flatten()),
                _ => Ok(None),
            }
        }
        fn finish(&mut self) -> Result<(), FilterError> {
            unreachable!("messages end with end_message")
        }
        fn end_message(&mut self) -> Result<bool, FilterError> {
            self.run()?;
            if self.held_end.is_some() {
                self.release_message()?;
            }
            let held = self.text.len() > self.sent;
            if held {
                self.held_end = Some(self.text.len());
            }
            Ok(held)
        }
        fn message_ended(&mut self) -> bool {
            let ended = matches!(self.ready.front(), Some(None));
            if ended {
                self.ready.pop_front();
            }
            ended
        }
        fn release_message(&mut self) -> Result<(), FilterError> {
            if let Some(m) = self.held_end.take() {
                let b = Bytes::copy_from_slice(&self.text[self.sent..m]);
                self.ready.push_back(Some(b));
                self.ready.push_back(None);
                self.sent = m;
            }
            Ok(())
        }
    }

    /// Reads frames back: (fin, opcode, payload).
    fn frames(mut b: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (fin, op) = (b[0] & 0x80 != 0, b[0] & 0x0f);
            assert_eq!(b[1] & 0x80, 0, "never masked");
            let (len, h) = match b[1] & 0x7f {
                126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            out.push((fin, op, b[h..h + len].to_vec()));
            b = &b[h + len..];
        }
        out
    }

    /// Whole messages: (opcode, payload), control frames included.
    fn messages(f: &[(bool, u8, Vec<u8>)]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut current: Option<(u8, Vec<u8>)> = None;
        for (fin, op, p) in f {
            if *op >= 8 {
                out.push((*op, p.clone()));
                continue;
            }
            let c = current.get_or_insert((*op, Vec::new()));
            c.1.extend_from_slice(p);
            if *fin {
                out.push(current.take().expect("a message in progress"));
            }
        }
        out
    }

    #[test]
    fn messages_are_masked_across_frames_and_reads() {
        // A text message in three fragments with the secret split over
        // two of them and a ping (holding the secret) in between, then a
        // binary message, a 300-byte message (16-bit length) and a close.
        let mut input = Vec::new();
        write_frame(&mut input, false, 1, b"hello s3c");
        write_frame(&mut input, false, 0, b"r3");
        write_frame(&mut input, true, 9, b"ping s3cr3t");
        write_frame(&mut input, true, 0, b"t bye");
        write_frame(&mut input, true, 2, b"s3cr3t");
        let long = [b"x".repeat(290), SECRET.to_vec()].concat();
        write_frame(&mut input, true, 1, &long);
        write_frame(&mut input, true, 8, b"\x03\xe8s3cr3t");
        for step in [1, 2, 3, 7, input.len()] {
            let mut m = MessageMask::new(Replace::boxed(), Replace::boxed());
            let mut out = Vec::new();
            for piece in input.chunks(step) {
                m.feed(piece, &mut out).expect("valid frames");
            }
            let got = messages(&frames(&out));
            let long_masked = [b"x".repeat(290), MASK.to_vec()].concat();
            assert_eq!(
                got,
                vec![
                    (9, b"ping ocs_placeholder_xyz".to_vec()),
                    (1, b"hello ocs_placeholder_xyz bye".to_vec()),
                    (2, MASK.to_vec()),
                    (1, long_masked),
                    (8, b"\x03\xe8ocs_placeholder_xyz".to_vec()),
                ],
                "step {step}"
            );
        }
    }

    fn stream_mask() -> MessageMask {
        MessageMask::new(Stream::boxed(), Stream::boxed())
    }

    #[test]
    fn a_secret_split_across_messages_is_masked_in_the_message_it_began_in() {
        let mut input = Vec::new();
        write_frame(&mut input, true, 1, b"one s3c");
        write_frame(&mut input, false, 2, b"r3t two ");
        write_frame(&mut input, true, 0, b"s3cr3");
        write_frame(&mut input, true, 1, b"t three");
        for step in [1, 2, 5, input.len()] {
            let mut m = stream_mask();
            let mut out = Vec::new();
            let mut held = false;
            for piece in input.chunks(step) {
                held = m.feed(piece, &mut out).expect("valid frames");
            }
            assert!(!held, "step {step}");
            assert_eq!(
                messages(&frames(&out)),
                vec![
                    (1, b"one ocs_placeholder_xyz".to_vec()),
                    (2, b" two ocs_placeholder_xyz".to_vec()),
                    (1, b" three".to_vec()),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn a_held_final_frame_waits_for_release_or_a_close() {
        let mut msg = Vec::new();
        write_frame(&mut msg, true, 1, b"hello s3c");
        let mut m = stream_mask();
        let mut out = Vec::new();
        assert!(m.feed(&msg, &mut out).expect("valid"), "held");
        // What cannot be part of a secret went out; the message is open.
        assert_eq!(frames(&out), vec![(false, 1, b"hello ".to_vec())]);
        // A ping passes the held frame (control frames may come between
        // a message's frames).
        let mut ping = Vec::new();
        write_frame(&mut ping, true, 9, b"p");
        out.clear();
        assert!(m.feed(&ping, &mut out).expect("valid"));
        assert_eq!(frames(&out), vec![(true, 9, b"p".to_vec())]);
        // The pump's timeout: the tail goes out as it is.
        out.clear();
        m.release(&mut out).expect("release");
        assert_eq!(
            frames(&out),
            vec![(false, 0, b"s3c".to_vec()), (true, 0, vec![])]
        );
        // Then a message completing that secret ends the tunnel...
        let mut rest = Vec::new();
        write_frame(&mut rest, true, 1, b"r3t");
        assert!(m.feed(&rest, &mut Vec::new()).is_err());
        // ... while one that does not is delivered.
        let mut m = stream_mask();
        m.feed(&msg, &mut Vec::new()).expect("valid");
        m.release(&mut Vec::new()).expect("release");
        let mut out = Vec::new();
        let mut other = Vec::new();
        write_frame(&mut other, true, 1, b"ret");
        assert!(!m.feed(&other, &mut out).expect("valid"));
        assert_eq!(messages(&frames(&out)), vec![(1, b"ret".to_vec())]);

        // A close frame sends the held frame first.
        let mut m = stream_mask();
        let mut input = msg.clone();
        write_frame(&mut input, true, 8, b"\x03\xe8");
        let mut out = Vec::new();
        assert!(!m.feed(&input, &mut out).expect("valid"));
        assert_eq!(
            messages(&frames(&out)),
            vec![(1, b"hello s3c".to_vec()), (8, b"\x03\xe8".to_vec())]
        );
    }

    #[test]
    fn a_secret_split_across_control_frames_ends_the_tunnel() {
        let mut input = Vec::new();
        write_frame(&mut input, true, 9, b"ping s3c");
        let mut m = stream_mask();
        let mut out = Vec::new();
        // Never held: the payload goes out as it is.
        assert!(!m.feed(&input, &mut out).expect("valid"));
        assert_eq!(frames(&out), vec![(true, 9, b"ping s3c".to_vec())]);
        let mut next = Vec::new();
        write_frame(&mut next, true, 9, b"r3t");
        assert!(m.feed(&next, &mut Vec::new()).is_err());
    }

    #[test]
    fn frames_that_cannot_be_read_end_the_tunnel() {
        let cases: [&[u8]; 6] = [
            b"\x81\x85abcdhello",  // masked
            b"\xc1\x01x",          // RSV1 (an extension)
            b"\x83\x00",           // unknown opcode
            b"\x80\x00",           // continuation without a message
            b"\x01\x01x\x01\x01y", // a new message inside one
            b"\x09\x01x",          // fragmented ping
        ];
        for c in cases {
            let mut m = MessageMask::new(Replace::boxed(), Replace::boxed());
            assert!(m.feed(c, &mut Vec::new()).is_err(), "{c:?}");
        }
        // A control frame whose masked payload would pass 125 bytes.
        let mut m = MessageMask::new(Replace::boxed(), Replace::boxed());
        let mut input = Vec::new();
        write_frame(
            &mut input,
            true,
            9,
            &[b"y".repeat(118), SECRET.to_vec()].concat(),
        );
        assert!(m.feed(&input, &mut Vec::new()).is_err());
    }

    #[test]
    fn asks_tells_websockets_from_other_upgrades() {
        let ws = |f: &dyn Fn(http::request::Builder) -> http::request::Builder| {
            let b = Request::builder()
                .uri("/ws")
                .header("connection", "keep-alive, Upgrade")
                .header("upgrade", "WebSocket")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("sec-websocket-version", "13");
            asks(&f(b).body(()).expect("request"))
        };
        assert_eq!(ws(&|b| b).expect("websocket"), Asks::WebSocket);
        assert!(ws(&|b| b.method("POST")).is_err());
        assert!(ws(&|b| b.header("upgrade", "h2c")).is_err());
        assert!(ws(&|b| b.header("content-length", "5")).is_err());
        assert!(ws(&|b| b.header("transfer-encoding", "chunked")).is_err());
        assert_eq!(
            ws(&|b| b.header("content-length", "0")).expect("no body"),
            Asks::WebSocket
        );
        let h2c = Request::builder()
            .header("connection", "upgrade")
            .header("upgrade", "h2c")
            .body(())
            .expect("request");
        assert!(matches!(asks(&h2c), Err(ProxyError::UpgradeRefused(_))));
        // Without `Connection: upgrade` it is a plain request.
        let plain = Request::builder()
            .header("upgrade", "h2c")
            .body(())
            .expect("request");
        assert_eq!(asks(&plain).expect("plain"), Asks::Request);
        let connect = Request::builder()
            .method("CONNECT")
            .uri("united.com:443")
            .body(())
            .expect("request");
        assert!(matches!(asks(&connect), Err(ProxyError::UpgradeRefused(_))));
        let no_key = Request::builder()
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .body(())
            .expect("request");
        assert!(asks(&no_key).is_err());
    }

    #[test]
    fn the_accept_must_answer_the_key_sent() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let answer = |accepts: &[&'static str]| {
            let mut h = HeaderMap::new();
            for a in accepts {
                h.append(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static(a));
            }
            h
        };
        // RFC 6455 §1.3's example.
        let right = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert!(accepts_key(Some(&key), &answer(&[right])));
        assert!(!accepts_key(None, &answer(&[right])));
        assert!(!accepts_key(Some(&key), &answer(&[])));
        assert!(!accepts_key(Some(&key), &answer(&[right, right])));
        let other = HeaderValue::from_static("AQIDBAUGBwgJCgsMDQ4PEA==");
        assert!(!accepts_key(Some(&other), &answer(&[right])));
    }

    #[test]
    fn websocket_keys_are_16_bytes_of_base64() {
        assert_eq!(base64(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        let k = websocket_key();
        assert_eq!(k.len(), 24);
        assert_ne!(k, websocket_key());
    }
}
