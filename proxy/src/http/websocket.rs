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
};

use bytes::{Buf, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    websocket_headers(req.headers(), true)?;
    Ok(Asks::WebSocket)
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
/// piece of filter output goes out as a frame of the message; the message's
/// last frame carries what the filter held back. Control frames (ping,
/// pong, close: at most 125 bytes, never fragmented, possibly between the
/// frames of a message) go through a second filter, whole.
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
    /// Opcode (1 text, 2 binary) of the message in progress.
    message: Option<u8>,
    /// A frame of the message in progress has been sent on.
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
            sent_first: false,
        }
    }

    /// Parses `input`, appending the frames to send on to `out`.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FilterError> {
        self.buf.extend_from_slice(input);
        loop {
            match self.state {
                FrameState::Header => {
                    if !self.header()? {
                        return Ok(());
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
                        return Ok(());
                    }
                    if fin {
                        self.data.finish()?;
                        let mut rest = Vec::new();
                        while let Some(b) = self.data.pull()? {
                            rest.extend_from_slice(&b);
                        }
                        let opcode = self.next_opcode();
                        write_frame(out, true, opcode, &rest);
                        self.message = None;
                    }
                    self.state = FrameState::Header;
                }
                FrameState::Control { opcode, len } => {
                    if self.buf.len() < len {
                        return Ok(());
                    }
                    let payload = self.buf.split_to(len).freeze();
                    self.control.push(payload)?;
                    self.control.finish()?;
                    let mut masked = Vec::new();
                    while let Some(b) = self.control.pull()? {
                        masked.extend_from_slice(&b);
                    }
                    if masked.len() > MAX_CONTROL {
                        return Err(bad("a masked control frame grew past 125 bytes"));
                    }
                    write_frame(out, true, opcode, &masked);
                    self.state = FrameState::Header;
                }
            }
        }
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
                self.sent_first = false;
                FrameState::Data { fin, left: len }
            }
            _ => return Err(bad("an unknown opcode")),
        };
        Ok(true)
    }

    /// The opcode of the next frame of the message in progress.
    fn next_opcode(&mut self) -> u8 {
        if self.sent_first {
            0
        } else {
            self.sent_first = true;
            self.message.unwrap_or(0x2)
        }
    }

    /// Sends on what the data filter has ready, as frames of the message.
    fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError> {
        while let Some(b) = self.data.pull()? {
            if !b.is_empty() {
                let opcode = self.next_opcode();
                write_frame(out, false, opcode, &b);
            }
        }
        Ok(())
    }
}

/// Copies one direction of a tunnel until the reader ends (then shuts the
/// writer down), counting the bytes written; with `mask`, what is written
/// is the masked frames.
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
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return writer.shutdown().await;
        }
        let bytes = match mask.as_mut() {
            None => &buf[..n],
            Some(m) => {
                out.clear();
                m.feed(&buf[..n], &mut out).map_err(io::Error::other)?;
                &out[..]
            }
        };
        if bytes.is_empty() {
            continue;
        }
        writer.write_all(bytes).await?;
        writer.flush().await?;
        counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
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
    fn websocket_keys_are_16_bytes_of_base64() {
        assert_eq!(base64(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        let k = websocket_key();
        assert_eq!(k.len(), 24);
        assert_ne!(k, websocket_key());
    }
}
