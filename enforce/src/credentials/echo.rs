//! Echo masking: a secret a response sends back is replaced by its
//! placeholder before the sandbox sees it, in header values and in bodies
//! streamed chunk by chunk. A secret is found, in any ASCII case, as
//! written raw, JSON-escaped, form- or URL-encoded, and through the escapes
//! servers emit: the text is also read with its JSON (and JavaScript)
//! escapes undone, with its HTML character references undone and with its
//! percent-encoding undone (`escapes.rs`), and each of these readings read
//! again through one more layer, so `H\u0075nter2`, `H&#117;nter2`,
//! `H\u0026#117;nter2` and `H%2575nter2` are masked like `Hunter2`.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::encode::{base64_spellings, json_escaped, percent_encoded, uri_encoded};
use super::escapes::{self, Unescaped};
use super::finder::build;
use super::store::Secret;

/// Undoes one kind of escape (`escapes.rs`).
type Undo = fn(&[u8]) -> Unescaped;

/// The layers of escapes undone, each with the byte every escape of its
/// kind starts with.
/// The most bytes filtered at once. Reading a chunk builds up to twelve
/// readings of it, each with an offset map (about 200 bytes per input byte
/// in all when escapes are dense), so a large chunk is filtered in pieces:
/// memory stays bounded whatever a server sends in one read, and the
/// readings stay in cache (`cargo bench --bench echo`: an escape-dense
/// MiB in one push 42–134 ms of CPU, in 16 KiB pieces 18–20 ms).
const PIECE: usize = 16 << 10;

const LAYERS: [(u8, Undo); 3] = [
    (b'\\', escapes::json),
    (b'&', escapes::html),
    (b'%', escapes::percent),
];

/// A secret found in raw text: its range and what replaces it (an index
/// into `EchoMask::replacements`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hit {
    start: usize,
    end: usize,
    with: usize,
}

/// The finders over every secret, each match mapped to the placeholder
/// that replaces it.
pub(super) struct EchoMask {
    /// Over the raw text: every encoded form of every secret, base64 included.
    encoded: AhoCorasick,
    /// Pattern → index into `replacements`.
    encoded_with: Vec<usize>,
    /// Over the raw text, when it holds a zero byte: the UTF-16 / UTF-32
    /// spellings that have one (all but UTF-16 of a secret with no Latin-1
    /// character). Apart, because in one automaton with the others they
    /// made its prefilter more than twice as slow on ordinary text, where
    /// they cannot match.
    zeroed: Option<AhoCorasick>,
    zeroed_with: Vec<usize>,
    longest_encoded: usize,
    /// Over unescaped text: every secret as it is, and its base64 spellings.
    plain: AhoCorasick,
    /// Pattern → index into `replacements`.
    plain_with: Vec<usize>,
    longest_plain: usize,
    /// The patterns of `encoded` and `plain`, to tell whether a message's
    /// tail could be the start of one (`partial_start`).
    encoded_forms: Vec<Vec<u8>>,
    plain_forms: Vec<Vec<u8>>,
    /// Secret `i`'s placeholder at `i`; after them, the placeholders
    /// spelled in UTF-16 and UTF-32, for the secrets found so spelled.
    replacements: Vec<Vec<u8>>,
}

impl EchoMask {
    /// `placeholders[i]` replaces `secrets[i]`; `None` when there is no secret.
    pub(super) fn new(secrets: &[Secret], placeholders: &[String]) -> Option<Self> {
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        let mut encoded_with = Vec::new();
        let mut zeroed: Vec<Vec<u8>> = Vec::new();
        let mut zeroed_with = Vec::new();
        let mut plain = Vec::new();
        let mut plain_with = Vec::new();
        let mut replacements: Vec<Vec<u8>> =
            placeholders.iter().map(|p| p.as_bytes().to_vec()).collect();
        for (i, s) in secrets.iter().enumerate() {
            let base64 = base64_spellings(s.value());
            let mut forms = vec![
                s.value().to_owned(),
                json_escaped(s.value()),
                percent_encoded(s.value()),
                uri_encoded(s.value()),
            ];
            forms.extend(base64.iter().cloned());
            forms.sort();
            forms.dedup();
            for f in forms {
                encoded.push(f.into_bytes());
                encoded_with.push(i);
            }
            // A body in UTF-16 or UTF-32 with no charset label (a labelled
            // one is refused, `response.rs`): the secret in each of the four
            // byte orders, replaced by its placeholder in the same spelling
            // so the text still decodes.
            for wide in WIDE_SPELLINGS {
                let form = wide(s.value());
                let with = replacements.len();
                replacements.push(wide(&placeholders[i]));
                if form.contains(&0) {
                    zeroed.push(form);
                    zeroed_with.push(with);
                } else {
                    encoded.push(form);
                    encoded_with.push(with);
                }
            }
            // Base64 text can itself be escaped (`\/` in JSON, `%2B` in a
            // URL): its spellings are looked for in the readings too.
            for f in std::iter::once(s.value().to_owned()).chain(base64) {
                plain.push(f);
                plain_with.push(i);
            }
        }
        Some(EchoMask {
            longest_encoded: encoded
                .iter()
                .chain(&zeroed)
                .map(Vec::len)
                .max()
                .unwrap_or(0),
            longest_plain: plain.iter().map(String::len).max().unwrap_or(0),
            encoded: build(&encoded, true)?,
            plain: build(&plain, true)?,
            zeroed: build(&zeroed, true),
            zeroed_with,
            encoded_forms: encoded.iter().chain(&zeroed).cloned().collect(),
            plain_forms: plain.iter().map(|f| f.as_bytes().to_vec()).collect(),
            encoded_with,
            plain_with,
            replacements,
        })
    }

    /// Replaces echoed secrets in response header values by their placeholders.
    pub(super) fn mask_headers(&self, headers: &mut HeaderMap) {
        let names: Vec<HeaderName> = headers.keys().cloned().collect();
        for name in names {
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            if !values
                .iter()
                .any(|v| !self.hits(v.as_bytes(), true).0.is_empty())
            {
                continue;
            }
            headers.remove(&name);
            for v in values {
                let masked = self.mask_all(v.as_bytes());
                // A placeholder is always valid header text.
                let hv = HeaderValue::from_bytes(&masked)
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                headers.append(name.clone(), hv);
            }
        }
    }

    /// `text` with every secret (raw, encoded or escaped) replaced by its
    /// placeholder; borrowed when it holds none, so text without a secret
    /// (and without an escape to read through) costs a scan and no
    /// allocation.
    pub(super) fn masked<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let (hits, _) = self.hits(text.as_bytes(), true);
        if hits.is_empty() {
            return Cow::Borrowed(text);
        }
        let out = self.masked_with(text.as_bytes(), &hits);
        Cow::Owned(String::from_utf8_lossy(&out).into_owned())
    }

    /// All of `bytes`, masked (nothing held back).
    pub(super) fn mask_all(&self, bytes: &[u8]) -> Vec<u8> {
        let (hits, _) = self.hits(bytes, true);
        self.masked_with(bytes, &hits)
    }

    /// `bytes` with `hits` (all of `bytes`' hits) replaced.
    fn masked_with(&self, bytes: &[u8], hits: &[Hit]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let end = self.replace(bytes, hits, 0, bytes.len(), &mut out);
        out.extend_from_slice(&bytes[end..]);
        out
    }

    /// Appends `bytes[from..cut]` to `out` with the hits that end by `cut`
    /// replaced; returns where it stopped (`cut`, or the start of a hit
    /// running past it). Hits ending by `from` were replaced when those
    /// bytes went out.
    fn replace(
        &self,
        bytes: &[u8],
        hits: &[Hit],
        from: usize,
        cut: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        let mut pos = from;
        for h in hits.iter().filter(|h| h.end > from) {
            if h.end > cut {
                let stop = h.start.min(cut).max(pos);
                out.extend_from_slice(&bytes[pos..stop]);
                return stop;
            }
            out.extend_from_slice(&bytes[pos..h.start.max(pos)]);
            out.extend_from_slice(&self.replacements[h.with]);
            pos = h.end;
        }
        out.extend_from_slice(&bytes[pos..cut.max(pos)]);
        cut.max(pos)
    }

    /// The readings of `buf` that can differ from it: each layer of escapes
    /// undone where its marker occurs, then (where the first layer undid
    /// something and left a marker of the next) a second layer undone over
    /// the first (an HTML fragment in a JSON string, a JSON text quoted in
    /// another, a percent-encoded value encoded twice). Nothing is built
    /// for text without markers.
    fn readings(buf: &[u8]) -> Vec<Unescaped> {
        let mut read = Vec::new();
        for (marker, undo) in LAYERS {
            if memchr::memchr(marker, buf).is_none() {
                continue;
            }
            let first = undo(buf);
            if !first.matters() {
                continue;
            }
            if first.changed {
                for (marker2, undo2) in LAYERS {
                    if memchr::memchr(marker2, &first.bytes).is_none() {
                        continue;
                    }
                    let second = undo2(&first.bytes);
                    if second.matters() {
                        read.push(escapes::compose(&first, second, buf.len()));
                    }
                }
            }
            read.push(first);
        }
        read
    }

    /// Every secret in `buf` (merged where readings overlap), and from
    /// where on a streaming filter must hold bytes back: a match could
    /// start there and end in bytes not received yet, or an escape is cut.
    /// With `at_end` nothing more comes. No hit runs across the hold.
    fn hits(&self, buf: &[u8], at_end: bool) -> (Vec<Hit>, usize) {
        let mut hits: Vec<Hit> = self
            .encoded
            .find_iter(buf)
            .map(|m| Hit {
                start: m.start(),
                end: m.end(),
                with: self.encoded_with[m.pattern().as_usize()],
            })
            .collect();
        if let Some(zeroed) = self
            .zeroed
            .as_ref()
            .filter(|_| memchr::memchr(0, buf).is_some())
        {
            hits.extend(zeroed.find_iter(buf).map(|m| Hit {
                start: m.start(),
                end: m.end(),
                with: self.zeroed_with[m.pattern().as_usize()],
            }));
        }
        let mut hold = if at_end {
            buf.len()
        } else {
            buf.len()
                .saturating_sub(self.longest_encoded.saturating_sub(1))
        };
        let read = Self::readings(buf);
        for u in &read {
            for m in self.plain.find_iter(&u.bytes) {
                hits.push(Hit {
                    start: u.from[m.start()].0,
                    end: u.from[m.end() - 1].1,
                    with: self.plain_with[m.pattern().as_usize()],
                });
            }
            if !at_end {
                let decoded_end = u.raw_len(buf.len());
                let keep_from = u
                    .bytes
                    .len()
                    .saturating_sub(self.longest_plain.saturating_sub(1));
                let view_hold = u.from.get(keep_from).map_or(decoded_end, |r| r.0);
                hold = hold.min(view_hold).min(decoded_end);
            }
        }
        hits.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
        let mut merged: Vec<Hit> = Vec::with_capacity(hits.len());
        for h in hits {
            match merged.last_mut() {
                Some(last) if h.start < last.end => last.end = last.end.max(h.end),
                _ => merged.push(h),
            }
        }
        if !at_end {
            hold = Self::settle(&read, &merged, hold);
        }
        (merged, hold)
    }

    /// `at`, moved back until it cuts inside no escape (of any reading) and
    /// no match: a held tail is read again with the next chunk and must
    /// start where every reading can start.
    fn settle(read: &[Unescaped], merged: &[Hit], mut at: usize) -> usize {
        loop {
            let mut next = read.iter().fold(at, |at, u| {
                let i = u.from.partition_point(|r| r.1 <= at);
                match u.from.get(i) {
                    Some(r) if r.0 < at => r.0,
                    _ => at,
                }
            });
            let i = merged.partition_point(|h| h.end <= next);
            if let Some(h) = merged.get(i).filter(|h| h.start < next) {
                next = h.start;
            }
            if next == at {
                return at;
            }
            at = next;
        }
    }

    /// The earliest offset of `buf` from which its tail could begin a
    /// secret's spelling (raw, or in a reading, or as an escape cut off)
    /// that bytes after `buf` would complete; `buf.len()` when none could.
    /// `hits` are `buf`'s, read as ended.
    fn partial_start(&self, buf: &[u8], hits: &[Hit]) -> usize {
        let read = Self::readings(buf);
        let mut at = tail_prefix(buf, &self.encoded_forms);
        for u in &read {
            if let Some(i) = u.incomplete {
                at = at.min(i);
            }
            let k = tail_prefix(&u.bytes, &self.plain_forms);
            if let Some(r) = u.from.get(k) {
                at = at.min(r.0);
            }
        }
        Self::settle(&read, hits, at)
    }

    /// A streaming filter over a response body.
    pub(super) fn filter(self: &Arc<Self>) -> EchoFilter {
        EchoFilter {
            mask: self.clone(),
            carry: BytesMut::new(),
            held_end: None,
            sent: 0,
        }
    }
}

/// The earliest `i` for which `hay[i..]` is a proper prefix of one of
/// `patterns` (ASCII case aside, as the finders match); `hay.len()` if none.
fn tail_prefix(hay: &[u8], patterns: &[Vec<u8>]) -> usize {
    let mut best = hay.len();
    for p in patterns {
        let from = hay.len() - p.len().saturating_sub(1).min(hay.len());
        if let Some(i) = (from..best).find(|&i| p[..hay.len() - i].eq_ignore_ascii_case(&hay[i..]))
        {
            best = i;
        }
    }
    best
}

/// `v` in UTF-16 LE, UTF-16 BE, UTF-32 LE and UTF-32 BE.
const WIDE_SPELLINGS: [fn(&str) -> Vec<u8>; 4] = [
    |v| v.encode_utf16().flat_map(u16::to_le_bytes).collect(),
    |v| v.encode_utf16().flat_map(u16::to_be_bytes).collect(),
    |v| v.chars().flat_map(|c| u32::from(c).to_le_bytes()).collect(),
    |v| v.chars().flat_map(|c| u32::from(c).to_be_bytes()).collect(),
];

/// A secret whose first bytes already went out (the end of a message
/// released without its continuation) was completed by what followed:
/// nothing can mask it any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitSecret;

/// Replaces a secret echoed in a response body by its placeholder, across
/// chunk boundaries: it holds back the tail where a secret (in any of its
/// readings) could still be completing and releases it with the next chunk
/// or at the end. After [`finish`](Self::finish) it takes a new stream.
///
/// A WebSocket's data messages are one stream to it, so a secret split
/// across two messages is masked: [`end_message`](Self::end_message) ends
/// a message but keeps back a tail that could begin a secret; the next
/// message's bytes decide it ([`push_message`](Self::push_message) tells
/// where the ended message stops in its output), or
/// [`release`](Self::release) gives it out as it is and remembers it, so
/// a secret it began that a later message completes is an error.
pub struct EchoFilter {
    mask: Arc<EchoMask>,
    carry: BytesMut,
    /// Where in `carry` the message whose end is held ended.
    held_end: Option<usize>,
    /// The first `sent` bytes of `carry` already went out as they were
    /// (released unfinished); kept to see a secret they began complete.
    sent: usize,
}

/// What a push gave out in a message stream: bytes of the message in
/// progress on the output side (the held one, while its end is held) and,
/// once the held message's end is decided, the bytes of the next one.
pub type Pushed = (Bytes, Option<Bytes>);

impl EchoFilter {
    /// Filters one chunk of a body; returns what can be sent now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        // A body never has bytes released early, so no secret can be split.
        self.push_message(chunk).map(|(b, _)| b).unwrap_or_default()
    }

    /// Releases the held-back tail.
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.carry);
        let from = std::mem::take(&mut self.sent).min(rest.len());
        self.held_end = None;
        Bytes::from(self.mask.mask_all(&rest[from..]))
    }

    /// Filters one chunk of a message stream, in pieces of at most
    /// [`PIECE`] bytes: the output is the same as for the whole chunk (the
    /// filter reads across pushes), but a piece's readings stay small.
    pub fn push_message(&mut self, chunk: &[u8]) -> Result<Pushed, SplitSecret> {
        if chunk.len() <= PIECE {
            return self.push_piece(chunk);
        }
        let (mut first, mut next): (Vec<u8>, Option<Vec<u8>>) = (Vec::new(), None);
        for piece in chunk.chunks(PIECE) {
            let (out, after) = self.push_piece(piece)?;
            // Once the held message's end is decided, what follows belongs
            // to the next message.
            match &mut next {
                Some(n) => n.extend_from_slice(&out),
                None => first.extend_from_slice(&out),
            }
            if let Some(after) = after {
                next.get_or_insert_with(Vec::new).extend_from_slice(&after);
            }
        }
        Ok((Bytes::from(first), next.map(Bytes::from)))
    }

    fn push_piece(&mut self, chunk: &[u8]) -> Result<Pushed, SplitSecret> {
        self.carry.extend_from_slice(chunk);
        let buf = std::mem::take(&mut self.carry);
        let (hits, hold) = self.mask.hits(&buf, false);
        self.check_sent(&hits)?;
        Ok(self.emit(&buf, &hits, hold))
    }

    /// Ends a message of a stream: returns what can go out now (as
    /// [`push_message`](Self::push_message) does: a message whose end was
    /// held is decided here), and whether a tail of this message that
    /// could begin a secret is held back (its end waits for the next
    /// message or [`release`](Self::release)).
    pub fn end_message(&mut self) -> Result<(Pushed, bool), SplitSecret> {
        let buf = std::mem::take(&mut self.carry);
        let (hits, _) = self.mask.hits(&buf, true);
        self.check_sent(&hits)?;
        let at = self.mask.partial_start(&buf, &hits);
        let (first, mut next) = self.emit(&buf, &hits, at);
        let mut first = first.to_vec();
        if self.held_end.is_some() {
            // This message is all a possible secret's middle: the one
            // before it goes out as it is (a secret completed later ends
            // the stream).
            first.extend_from_slice(&self.release());
            next = Some(Bytes::new());
        }
        let held = self.carry.len() > self.sent;
        if held {
            self.held_end = Some(self.carry.len());
        }
        Ok(((Bytes::from(first), next), held))
    }

    /// Gives out `buf[sent..limit]` (stopping before a hit running past
    /// `limit`) and keeps the rest, split where the held message ends once
    /// that end is decided.
    fn emit(&mut self, buf: &[u8], hits: &[Hit], limit: usize) -> Pushed {
        let mut first = Vec::new();
        let mut next = None;
        let stop = if limit <= self.sent {
            limit
        } else {
            // The held message runs to its end, or past it to the end of a
            // secret it began: the whole placeholder stays in the message
            // the secret began in (its final frame is still unsent) and the
            // next message starts with the server's bytes after it.
            let split = self.held_end.map(|m| {
                hits.iter()
                    .find(|h| h.start < m && h.end > m)
                    .map_or(m, |h| h.end)
            });
            match split {
                Some(m) if m <= limit => {
                    let at = self.mask.replace(buf, hits, self.sent, m, &mut first);
                    let mut rest = Vec::new();
                    let stop = self.mask.replace(buf, hits, at, limit, &mut rest);
                    next = Some(Bytes::from(rest));
                    self.held_end = None;
                    stop
                }
                _ => self.mask.replace(buf, hits, self.sent, limit, &mut first),
            }
        };
        self.keep(buf, stop);
        (Bytes::from(first), next)
    }

    /// Gives out the held message's end as it is (masked alone: no
    /// continuation came); its bytes stay as context.
    pub fn release(&mut self) -> Bytes {
        let Some(end) = self.held_end.take() else {
            return Bytes::new();
        };
        let out = self.mask.mask_all(&self.carry[self.sent..end]);
        self.sent = end;
        Bytes::from(out)
    }

    /// Fails when a secret began in bytes already sent and ends after them.
    fn check_sent(&self, hits: &[Hit]) -> Result<(), SplitSecret> {
        match hits
            .iter()
            .any(|h| h.start < self.sent && h.end > self.sent)
        {
            true => Err(SplitSecret),
            false => Ok(()),
        }
    }

    /// Keeps `buf[stop..]` as the carry (offsets shift by `stop`).
    fn keep(&mut self, buf: &[u8], stop: usize) {
        self.carry.extend_from_slice(&buf[stop..]);
        self.sent = self.sent.saturating_sub(stop);
        self.held_end = self.held_end.map(|m| m - stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(values: &[&str]) -> Arc<EchoMask> {
        let secrets: Vec<Secret> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Secret::new(&format!("s{i}"), v).expect("secret"))
            .collect();
        let placeholders: Vec<String> = (0..values.len()).map(|i| format!("<P{i}>")).collect();
        Arc::new(EchoMask::new(&secrets, &placeholders).expect("mask"))
    }

    /// Streams `body` through a filter in pieces of `step`.
    fn stream(m: &Arc<EchoMask>, body: &[u8], step: usize) -> String {
        let mut f = m.filter();
        let mut out = Vec::new();
        for piece in body.chunks(step) {
            out.extend_from_slice(&f.push(piece));
        }
        out.extend_from_slice(&f.finish());
        String::from_utf8(out).expect("utf8")
    }

    /// `body` masked whole; streamed in pieces of 1 to 9 bytes it must
    /// come out the same.
    fn masked_alike_in_any_split(m: &Arc<EchoMask>, body: &str) -> String {
        let whole = String::from_utf8(m.mask_all(body.as_bytes())).expect("utf8");
        for step in 1..=9 {
            assert_eq!(
                stream(m, body.as_bytes(), step),
                whole,
                "step {step}: {body}"
            );
        }
        whole
    }

    /// Two messages of a stream, back to back, cut at `cut`: the output
    /// (both messages joined) and where the first ended in it.
    fn two_messages(m: &Arc<EchoMask>, body: &[u8], cut: usize) -> (Vec<u8>, usize) {
        let mut f = m.filter();
        let mut out = Vec::new();
        let mut first_end = None;
        let take = |out: &mut Vec<u8>, end: &mut Option<usize>, (a, b): Pushed| {
            out.extend_from_slice(&a);
            if let Some(b) = b {
                *end = Some(out.len());
                out.extend_from_slice(&b);
            }
        };
        let pushed = f.push_message(&body[..cut]).expect("no split");
        take(&mut out, &mut first_end, pushed);
        let (p, held) = f.end_message().expect("no split");
        take(&mut out, &mut first_end, p);
        if !held {
            first_end = Some(out.len());
        }
        let pushed = f.push_message(&body[cut..]).expect("no split");
        take(&mut out, &mut first_end, pushed);
        let (p, held) = f.end_message().expect("no split");
        take(&mut out, &mut first_end, p);
        if held {
            out.extend_from_slice(&f.release());
        }
        (out, first_end.expect("the first message ended"))
    }

    #[test]
    fn back_to_back_messages_are_masked_as_one_stream() {
        let m = mask(&["Hunter2!\"real-P@ss/é"]);
        for body in [
            r#"{"a":"Hunter2!\"real-P@ss\/\u00e9"}"#,
            "x Hunter2!%22real-P%40ss%2F%C3%A9 y",
            "HUNTER2!\"REAL-P@SS/é and &#72;unter2!&quot;real-P@ss/&eacute;",
        ] {
            let whole = m.mask_all(body.as_bytes());
            for cut in 0..=body.len() {
                let (out, first_end) = two_messages(&m, body.as_bytes(), cut);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&whole),
                    "cut {cut}: {body}"
                );
                // The first message ends at the cut or, when a secret
                // runs across it, after that secret's placeholder.
                let (hits, _) = m.hits(body.as_bytes(), true);
                let end = hits
                    .iter()
                    .find(|h| h.start < cut && h.end > cut)
                    .map_or(cut, |h| h.end);
                let first = m.mask_all(&body.as_bytes()[..end]);
                assert_eq!(first_end, first.len(), "cut {cut}: {body}");
            }
        }
    }

    /// A secret in UTF-16 or UTF-32 (a body with no charset label, which
    /// a client may sniff by its BOM or its zero bytes) is replaced by its
    /// placeholder in the same spelling, streamed in any pieces.
    #[test]
    fn wide_spellings_are_masked_in_their_own_spelling() {
        let m = mask(&["Hunter2-réal"]);
        for wide in WIDE_SPELLINGS {
            let mut body = wide("\u{feff}{\"key\": \"");
            body.extend(wide("Hunter2-réal"));
            body.extend(wide("\"}"));
            let mut expected = wide("\u{feff}{\"key\": \"");
            expected.extend(wide("<P0>"));
            expected.extend(wide("\"}"));
            assert_eq!(m.mask_all(&body), expected);
            for step in 1..=9 {
                let mut f = m.filter();
                let mut out = Vec::new();
                for piece in body.chunks(step) {
                    out.extend_from_slice(&f.push(piece));
                }
                out.extend_from_slice(&f.finish());
                assert_eq!(out, expected, "step {step}");
            }
        }
    }

    /// A chunk longer than `PIECE` is filtered in pieces: secrets across
    /// the pieces' edges, in a body and across two large messages, come
    /// out as the whole body masked at once does.
    #[test]
    fn a_large_chunk_masks_as_the_whole_body_does() {
        let secret = "Hunter2!\"real-P@ss";
        let m = mask(&[secret]);
        let spellings = [
            secret.to_owned(),
            r#"Hunter2!\"real-P@ss"#.to_owned(),
            "Hunter2!%22real-P%40ss".to_owned(),
        ];
        let filler = r#"\u003ca href=\"/p?q=1\u0026amp;r=%2Fx\"\u003e "#;
        let mut body = filler.repeat(4 * PIECE / filler.len());
        for (i, k) in [1, 7, 19].into_iter().enumerate() {
            let at = (i + 1) * PIECE - k;
            let at = (0..=at)
                .rev()
                .find(|&a| body.is_char_boundary(a))
                .expect("boundary");
            body.replace_range(at..at + spellings[i].len(), &spellings[i]);
        }
        let whole = m.mask_all(body.as_bytes());
        assert!(!String::from_utf8_lossy(&whole).contains("P@ss"));
        assert_eq!(
            stream(&m, body.as_bytes(), body.len()),
            String::from_utf8_lossy(&whole)
        );
        for cut in [PIECE - 3, PIECE + 2, 2 * PIECE - 5] {
            let (out, _) = two_messages(&m, body.as_bytes(), cut);
            assert_eq!(out, whole, "cut {cut}");
        }
    }

    #[test]
    fn a_released_end_completed_later_is_an_error() {
        let m = mask(&["Hunter2"]);
        let mut f = m.filter();
        assert_eq!(f.push_message(b"x Hun").expect("push").0, "");
        let (p, held) = f.end_message().expect("end");
        assert!(held && p.1.is_none());
        assert_eq!(p.0, "x ");
        assert_eq!(f.release(), "Hun");
        // A message that does not complete it passes ...
        let (p, _) = f.end_message().expect("empty");
        assert!(p.0.is_empty());
        assert_eq!(f.push_message(b"te").expect("push").0, "");
        // ... one that does is refused.
        assert_eq!(f.push_message(b"r2 y"), Err(SplitSecret));
        // A message that is all a secret's middle lets the one before it go.
        let mut f = m.filter();
        f.push_message(b"Hu").expect("push");
        assert!(f.end_message().expect("end").1);
        f.push_message(b"nt").expect("push");
        let ((first, next), held) = f.end_message().expect("end");
        assert_eq!((&first[..], next.as_deref()), (&b"Hu"[..], Some(&b""[..])));
        assert!(held);
        assert_eq!(f.push_message(b"er2"), Err(SplitSecret));
    }

    #[test]
    fn escaped_echoes_are_masked_in_any_split() {
        let m = mask(&["Hunter2/\"é\"&<x>", "k"]);
        let bodies = [
            // JSON with some characters \u-escaped, `/` as `\/`.
            r#"{"a":"\u0048unter2\/\"\u00e9\"\u0026\u003cx\u003e","b":1}"#,
            r#"{"a":"\u0048\u0075\u006e\u0074\u0065\u0072\u0032\/\u0022\u00E9\u0022\u0026\u003C\u0078\u003E"}"#,
            // HTML: numeric (decimal, hex, leading zeros, no `;`) and named.
            "<p>H&#117;nter&#x32;&#x2F;&quot;&eacute;&#34;&amp;&lt;x&#00062</p>",
            "<p>&#72;unter2&sol;&QUOT;&#xe9;&quot&AMP;&LT;x&gt;</p>",
            // Raw and form-encoded.
            "Hunter2/\"é\"&<x> and Hunter2%2F%22%C3%A9%22%26%3Cx%3E",
        ];
        for body in bodies {
            for step in [1, 2, 5, body.len()] {
                let out = stream(&m, body.as_bytes(), step);
                assert!(!out.contains("unter"), "step {step}: {out}");
                assert!(out.contains("<P0>"), "step {step}: {out}");
            }
        }
        // Text around an echo is left as it was, escapes included.
        assert_eq!(
            stream(
                &m,
                br#"{"x":"\u00e9","a":"\u0048unter2\/\"\u00e9\"&<x>"}"#,
                3
            ),
            r#"{"x":"\u00e9","a":"<P0>"}"#
        );
        // The one-letter secret is masked wherever it stands.
        assert_eq!(stream(&m, b"&#107;", 1), "<P1>");
    }

    #[test]
    fn layered_js_percent_and_upper_cased_echoes_are_masked_in_any_split() {
        let m = mask(&["Hunter2!\"real-P@ss/é"]);
        let bodies = [
            // A JSON text quoted in JSON (a request echoed as a string).
            r#"{"body":"{\"password\":\"Hunter2!\\\"real-P@ss\\/\\u00e9\"}"}"#,
            // An HTML fragment in JSON as Go writes it (`&` as `\u0026`)...
            r#"{"html":"\u003cb\u003eHunter2!\u0026#34;real-P@ss/\u0026eacute;\u003c/b\u003e"}"#,
            // ... and as PHP does (`/` as `\/`, `&` raw).
            r#"{"html":"Hunter2!&quot;real-P@ss\/&#233;"}"#,
            // JSON in an HTML attribute.
            r#"<div data-x="{&quot;pw&quot;:&quot;Hunter2!\&quot;real-P@ss\/\u00e9&quot;}">"#,
            // Twice HTML-escaped.
            "<p>Hunter2!&amp;quot;real-P@ss/&amp;eacute;</p>",
            // A JavaScript string literal.
            r#"var s = "Hunter2\x21\x22real\x2dP\x40ss\x2f\xe9";"#,
            // Percent-encoded as encodeURIComponent does, then twice.
            "/next?v=Hunter2!%22real-P%40ss%2F%C3%A9&w=Hunter2%2521%2522real-P%2540ss%252F%25C3%25A9",
            // A URL in JSON.
            r#"{"url":"\/u?v=Hunter2!%22real-P%40ss\/%C3%A9"}"#,
            // Upper-cased, raw and escaped.
            "HUNTER2!\"REAL-P@SS/é",
            r#"{"a":"HUNTER2!\"REAL-P@SS\/\u00e9"}"#,
        ];
        for body in bodies {
            let whole = masked_alike_in_any_split(&m, body);
            assert!(!whole.to_lowercase().contains("unter2"), "{body}: {whole}");
            assert!(whole.contains("<P0>"), "{body}: {whole}");
        }
        // The replacement covers the raw bytes of the secret, no more.
        assert_eq!(
            m.masked(bodies[1]),
            r#"{"html":"\u003cb\u003e<P0>\u003c/b\u003e"}"#
        );
        assert_eq!(m.masked(bodies[0]), r#"{"body":"{\"password\":\"<P0>\"}"}"#);
        // Text without escapes builds no other reading.
        assert!(EchoMask::readings(b"{\"a\":\"plain text\"}").is_empty());
        assert_eq!(EchoMask::readings(br#"{"a":"\\u0041"}"#).len(), 2);
    }

    #[test]
    fn base64_spellings_are_masked_in_any_split() {
        let m = mask(&["Hunter2!\"real-P@ss/é", "short"]);
        let bodies = [
            // base64 of `{"pw":"<secret>"}`, both alphabets.
            "eyJwdyI6Ikh1bnRlcjIhInJlYWwtUEBzcy/DqSJ9",
            "token=eyJwdyI6Ikh1bnRlcjIhInJlYWwtUEBzcy_DqSJ9;",
            // Other alignments, in JSON with `/` as `\/`.
            r#"{"a":"eHlIdW50ZXIyISJyZWFsLVBAc3Mvw6kifQ==","b":"Pz8\/SHVudGVyMiEicmVhbC1QQHNzL8OpIn0="}"#,
            // Percent-encoded in a URL.
            "/cb?state=eyJwdyI6Ikh1bnRlcjIhInJlYWwtUEBzcy%2FDqSJ9",
        ];
        for body in bodies {
            let whole = masked_alike_in_any_split(&m, body);
            assert!(!whole.contains("bnRlcjIh"), "{body}: {whole}");
            assert!(!whole.contains("ZXIyISJy"), "{body}: {whole}");
            assert!(whole.contains("<P0>"), "{body}: {whole}");
        }
        // Only the characters that carry the secret's bits are replaced.
        assert_eq!(m.masked(bodies[0]), "eyJwdyI6Ik<P0>SJ9");
        // A secret too short for a distinctive base64 spelling has none.
        assert_eq!(m.masked("c2hvcnQ="), "c2hvcnQ=");
    }

    #[test]
    fn headers_are_masked_through_escapes_too() {
        let m = mask(&["Hunter2"]);
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("H&#117;nter2"));
        h.insert("x-b", HeaderValue::from_static("nothing"));
        m.mask_headers(&mut h);
        assert_eq!(h["x-a"], "<P0>");
        assert_eq!(h["x-b"], "nothing");
    }
}
