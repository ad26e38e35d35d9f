//! The gate's verdict on a response from a host where some credential may
//! be used: secrets the server echoes are masked in the head, the body and
//! the trailers. The body is decoded first when it is compressed (requests
//! to such hosts ask for `identity`, but a server may ignore that), so the
//! sandbox gets it decoded and masked; a coding the proxy cannot decode, or
//! several stacked, is refused rather than passed on unread, and so is a
//! charset in which ASCII text is not ASCII bytes (UTF-16, say).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, response, HeaderMap};
use proxy::{FilterError, ResponseFilter, ResponseVerdict};

use crate::credentials::{
    BodyDecoder, Coding, EchoFilter, Pushed, SessionCredentials, SplitSecret,
};

/// The verdict for a response head from such a host (its header values
/// already masked by the caller).
pub(crate) fn masked(
    creds: &Arc<SessionCredentials>,
    head: &mut response::Parts,
) -> ResponseVerdict {
    let Some(echo) = creds.echo_filter() else {
        return ResponseVerdict::Pass;
    };
    if let Some(charset) = unreadable_charset(&head.headers) {
        return ResponseVerdict::Refuse(format!(
            "response-charset: a body in charset {charset:?} cannot be checked for echoed secrets"
        ));
    }
    let codings: Vec<String> = proxy::coding_tokens(&head.headers, &header::CONTENT_ENCODING)
        .filter(|c| c != "identity")
        .collect();
    let decoder = match codings.as_slice() {
        [] => None,
        [one] => {
            let Some(coding) = Coding::parse(one) else {
                return ResponseVerdict::Refuse(format!(
                    "response-encoding: a {one} body cannot be checked for echoed secrets"
                ));
            };
            match BodyDecoder::new(coding) {
                Ok(d) => Some(d),
                Err(e) => return ResponseVerdict::Refuse(format!("response-encoding: {e}")),
            }
        }
        _ => {
            return ResponseVerdict::Refuse(format!(
                "response-encoding: stacked codings ({}) are not decoded to check them for echoed secrets",
                codings.join(", ")
            ))
        }
    };
    if decoder.is_some() {
        // The sandbox gets the body decoded.
        head.headers.remove(header::CONTENT_ENCODING);
    }
    ResponseVerdict::Filter(Box::new(MaskResponse {
        creds: creds.clone(),
        decoder,
        echo,
        ready: VecDeque::new(),
        input_done: false,
        tail_given: false,
    }))
}

/// Charset labels (prefixes, lower case) of encodings in which ASCII text is
/// ASCII bytes: the mask reads bodies as bytes; it finds a secret's raw
/// UTF-16 and UTF-32 spellings (`H\0u\0…`) but no escapes in them, and
/// UTF-7 or EBCDIC not at all, while the client decodes by the label. A
/// list of the readable ones rather than of the others, so an unknown
/// label is refused, not guessed.
const ASCII_COMPATIBLE_CHARSETS: [&str; 24] = [
    "utf-8",
    "utf8",
    "us-ascii",
    "ascii",
    "iso-8859-",
    "iso8859-",
    "iso_8859-",
    "latin",
    "l1",
    "windows-125",
    "cp125",
    "koi8",
    "shift_jis",
    "shift-jis",
    "sjis",
    "euc-",
    "gb2312",
    "gbk",
    "gb18030",
    "big5",
    "tis-620",
    "iso-2022-jp",
    "macintosh",
    "x-mac-",
];

/// The response's charset, when it names an encoding the mask cannot read
/// (see [`ASCII_COMPATIBLE_CHARSETS`]).
fn unreadable_charset(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';').skip(1))
        .filter_map(|param| {
            let text = String::from_utf8_lossy(param);
            let (name, value) = text.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("charset")
                .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
        })
        .find(|label| {
            !ASCII_COMPATIBLE_CHARSETS
                .iter()
                .any(|known| label.starts_with(known))
        })
}

/// Output not given out yet: masked bytes, and where a WebSocket message
/// whose end was held ends.
enum Ready {
    Bytes(Bytes),
    MessageEnd,
}

/// Decode (when compressed), then mask; see the module doc.
struct MaskResponse {
    creds: Arc<SessionCredentials>,
    decoder: Option<BodyDecoder>,
    echo: EchoFilter,
    ready: VecDeque<Ready>,
    input_done: bool,
    /// After `finish`: the echo filter's held-back tail was given out.
    tail_given: bool,
}

fn filter_error(e: impl std::fmt::Display) -> FilterError {
    FilterError(e.to_string())
}

fn split_secret(_: SplitSecret) -> FilterError {
    FilterError(
        "websocket-split-secret: a WebSocket message completed a secret whose start \
         had already gone out at the end of the message before it (which could not \
         wait longer), so the tunnel is ended"
            .into(),
    )
}

impl MaskResponse {
    fn ready(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.ready.push_back(Ready::Bytes(b));
        }
    }

    fn pushed(&mut self, (out, next): Pushed) {
        self.ready(out);
        if let Some(next) = next {
            self.ready.push_back(Ready::MessageEnd);
            self.ready(next);
        }
    }
}

impl ResponseFilter for MaskResponse {
    fn push(&mut self, chunk: Bytes) -> Result<(), FilterError> {
        // A new stream after `finish` (the next WebSocket message).
        self.input_done = false;
        self.tail_given = false;
        match self.decoder.as_mut() {
            Some(d) => d.push(&chunk),
            None => {
                // One stream for a body and for a WebSocket's messages alike.
                let pushed = self.echo.push_message(&chunk).map_err(split_secret)?;
                self.pushed(pushed);
            }
        }
        Ok(())
    }

    fn pull(&mut self) -> Result<Option<Bytes>, FilterError> {
        loop {
            match self.ready.front() {
                Some(Ready::Bytes(_)) => {
                    if let Some(Ready::Bytes(b)) = self.ready.pop_front() {
                        return Ok(Some(b));
                    }
                }
                // The held message's end: `message_ended` passes it.
                Some(Ready::MessageEnd) => return Ok(None),
                None => {}
            }
            if let Some(d) = self.decoder.as_mut() {
                if let Some(plain) = d.pull().map_err(filter_error)? {
                    let out = self.echo.push(&plain);
                    if !out.is_empty() {
                        return Ok(Some(out));
                    }
                    continue;
                }
            }
            if self.input_done && !self.tail_given {
                self.tail_given = true;
                let tail = self.echo.finish();
                if !tail.is_empty() {
                    return Ok(Some(tail));
                }
            }
            return Ok(None);
        }
    }

    fn finish(&mut self) -> Result<(), FilterError> {
        if let Some(d) = self.decoder.as_mut() {
            d.finish();
        }
        self.input_done = true;
        Ok(())
    }

    fn trailers(&mut self, trailers: &mut HeaderMap) {
        self.creds.mask_headers(trailers);
    }

    fn end_message(&mut self) -> Result<bool, FilterError> {
        if self.decoder.is_some() {
            // A compressed 101 is no WebSocket a client reads; each message
            // is its own stream, as the trait's default.
            self.finish()?;
            return Ok(false);
        }
        let (pushed, held) = self.echo.end_message().map_err(split_secret)?;
        self.pushed(pushed);
        Ok(held)
    }

    fn message_ended(&mut self) -> bool {
        let ended = matches!(self.ready.front(), Some(Ready::MessageEnd));
        if ended {
            self.ready.pop_front();
        }
        ended
    }

    fn release_message(&mut self) -> Result<(), FilterError> {
        let out = self.echo.release();
        self.ready(out);
        self.ready.push_back(Ready::MessageEnd);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charset_of(content_type: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().expect("value"));
        unreadable_charset(&h)
    }

    #[test]
    fn only_charsets_in_which_ascii_is_ascii_bytes_are_read() {
        for readable in [
            "application/json",
            "text/html; charset=utf-8",
            "text/html; charset=\"UTF-8\"",
            "text/plain; charset=ISO-8859-1",
            "text/plain; format=flowed; charset=windows-1252",
            "text/html;charset=Shift_JIS",
        ] {
            assert_eq!(charset_of(readable), None, "{readable}");
        }
        for (unreadable, label) in [
            ("text/plain; charset=utf-16le", "utf-16le"),
            ("application/json; charset=\"UTF-16\"", "utf-16"),
            ("text/plain; charset=utf-32", "utf-32"),
            ("text/plain; charset=UTF-7", "utf-7"),
            ("text/plain; charset=cp037", "cp037"),
            ("text/plain; charset=no-such-thing", "no-such-thing"),
        ] {
            assert_eq!(
                charset_of(unreadable).as_deref(),
                Some(label),
                "{unreadable}"
            );
        }
    }
}
