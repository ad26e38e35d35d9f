//! Echo masking: a secret a response sends back (raw, JSON-escaped or
//! percent-encoded) is replaced by its placeholder before the sandbox sees
//! it, in header values and in bodies streamed chunk by chunk.

use std::sync::Arc;

use aho_corasick::AhoCorasick;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::encode::{json_escaped, percent_encoded, uri_encoded};
use super::finder::build;
use super::store::Secret;

/// The finder over every form of every secret value, each mapped to the
/// placeholder that replaces it.
pub(super) struct EchoMask {
    echo: AhoCorasick,
    /// Pattern → index into `placeholders`.
    echo_secret: Vec<usize>,
    longest_echo: usize,
    placeholders: Vec<String>,
}

impl EchoMask {
    /// `placeholders[i]` replaces `secrets[i]`; `None` when there is no secret.
    pub(super) fn new(secrets: &[Secret], placeholders: &[String]) -> Option<Self> {
        let mut echo_patterns = Vec::new();
        let mut echo_secret = Vec::new();
        for (i, s) in secrets.iter().enumerate() {
            let mut forms = vec![
                s.value().to_owned(),
                json_escaped(s.value()),
                percent_encoded(s.value()),
                uri_encoded(s.value()),
            ];
            forms.sort();
            forms.dedup();
            for f in forms {
                echo_patterns.push(f);
                echo_secret.push(i);
            }
        }
        Some(EchoMask {
            longest_echo: echo_patterns.iter().map(String::len).max().unwrap_or(0),
            echo: build(&echo_patterns, false)?,
            echo_secret,
            placeholders: placeholders.to_vec(),
        })
    }

    /// Replaces echoed secrets in response header values by their placeholders.
    pub(super) fn mask_headers(&self, headers: &mut HeaderMap) {
        let echo = &self.echo;
        let names: Vec<HeaderName> = headers.keys().cloned().collect();
        for name in names {
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            if !values.iter().any(|v| echo.is_match(v.as_bytes())) {
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

    /// `text` with every secret (raw or encoded) replaced by its placeholder.
    pub(super) fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask_all(text.as_bytes())).into_owned()
    }

    fn mask_all(&self, bytes: &[u8]) -> Vec<u8> {
        let echo = &self.echo;
        let mut out = Vec::with_capacity(bytes.len());
        let mut last = 0;
        for m in echo.find_iter(bytes) {
            out.extend_from_slice(&bytes[last..m.start()]);
            out.extend_from_slice(
                self.placeholders[self.echo_secret[m.pattern().as_usize()]].as_bytes(),
            );
            last = m.end();
        }
        out.extend_from_slice(&bytes[last..]);
        out
    }

    /// A streaming filter over a response body.
    pub(super) fn filter(self: &Arc<Self>) -> EchoFilter {
        EchoFilter {
            mask: self.clone(),
            carry: BytesMut::new(),
        }
    }
}

/// Replaces a secret echoed in a response body by its placeholder, across
/// chunk boundaries: it holds back a tail one byte shorter than the longest
/// pattern and releases it with the next chunk or at the end.
pub struct EchoFilter {
    mask: Arc<EchoMask>,
    carry: BytesMut,
}

impl EchoFilter {
    /// Filters one chunk; returns what can be sent now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mask = &*self.mask;
        let echo = &mask.echo;
        self.carry.extend_from_slice(chunk);
        let buf = std::mem::take(&mut self.carry);
        let keep = mask.longest_echo.saturating_sub(1);
        let safe_end = buf.len().saturating_sub(keep);
        let mut out = BytesMut::with_capacity(buf.len());
        let mut pos = 0;
        for m in echo.find_iter(&buf[..]) {
            if m.start() >= safe_end {
                break;
            }
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(
                mask.placeholders[mask.echo_secret[m.pattern().as_usize()]].as_bytes(),
            );
            pos = m.end();
        }
        let cut = pos.max(safe_end);
        out.extend_from_slice(&buf[pos..cut]);
        self.carry.extend_from_slice(&buf[cut..]);
        out.freeze()
    }

    /// Releases the held-back tail.
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.carry);
        Bytes::from(self.mask.mask_all(&rest))
    }
}
