//! The gate's verdict on a response from a host where some credential may
//! be used: secrets the server echoes are masked in the head, the body and
//! the trailers. The body is decoded first when it is compressed (requests
//! to such hosts ask for `identity`, but a server may ignore that), so the
//! sandbox gets it decoded and masked; a coding the proxy cannot decode, or
//! several stacked, is refused rather than passed on unread.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, response, HeaderMap};
use proxy::{FilterError, ResponseFilter, ResponseVerdict};

use crate::credentials::{BodyDecoder, Coding, EchoFilter, SessionCredentials};

/// The verdict for a response head from such a host (its header values
/// already masked by the caller).
pub(crate) fn masked(
    creds: &Arc<SessionCredentials>,
    head: &mut response::Parts,
) -> ResponseVerdict {
    let Some(echo) = creds.echo_filter() else {
        return ResponseVerdict::Pass;
    };
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

/// Decode (when compressed), then mask; see the module doc.
struct MaskResponse {
    creds: Arc<SessionCredentials>,
    decoder: Option<BodyDecoder>,
    echo: EchoFilter,
    /// Masked output not given out yet.
    ready: VecDeque<Bytes>,
    input_done: bool,
    /// After `finish`: the echo filter's held-back tail was given out.
    tail_given: bool,
}

fn filter_error(e: impl std::fmt::Display) -> FilterError {
    FilterError(e.to_string())
}

impl ResponseFilter for MaskResponse {
    fn push(&mut self, chunk: Bytes) -> Result<(), FilterError> {
        // A new stream after `finish` (the next WebSocket message).
        self.input_done = false;
        self.tail_given = false;
        match self.decoder.as_mut() {
            Some(d) => d.push(&chunk),
            None => {
                let out = self.echo.push(&chunk);
                if !out.is_empty() {
                    self.ready.push_back(out);
                }
            }
        }
        Ok(())
    }

    fn pull(&mut self) -> Result<Option<Bytes>, FilterError> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Ok(Some(b));
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
}
