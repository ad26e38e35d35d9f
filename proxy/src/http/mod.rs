//! HTTP on both legs: serving the sandbox's connections (HTTP/1.1 with the
//! smuggling guard, HTTP/2), forwarding each request through the gate to a
//! lazily opened upstream connection, streaming bodies back, and carrying
//! WebSockets.

pub(crate) mod client;
pub(crate) mod deadline;
pub(crate) mod forward;
pub(crate) mod guard;
pub(crate) mod h2client;
pub(crate) mod h2watch;
pub(crate) mod hpack;
pub(crate) mod metered;
pub(crate) mod pool;
pub(crate) mod serve;
pub(crate) mod stall;
pub(crate) mod websocket;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends, either way: streaming, type-erased.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A byte stream to or from either side (TCP or TLS over TCP).
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub(crate) const BLOCKED_HEADER: &str = "x-openclaw-blocked";

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including those named by
/// `Connection`. Upgrade negotiation headers survive when `keep_upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in [
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Several `Cookie` fields joined into one, with "; " (RFC 9113 §8.2.3):
/// HTTP/2 clients send one field per cookie, and HTTP/1.1 servers given
/// several `Cookie` lines read the first, the last, or all of them joined
/// with a comma (one cookie whose value runs on). Joined before the gate,
/// so the gate reads the one field upstream gets.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    let mut sensitive = false;
    for v in headers.get_all(header::COOKIE) {
        sensitive |= v.is_sensitive();
        if v.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Valid values joined by "; " make a valid value.
    if let Ok(mut v) = HeaderValue::from_bytes(&joined) {
        v.set_sensitive(sensitive);
        headers.insert(header::COOKIE, v);
    }
}

/// A `Content-Length` written with leading zeros, rewritten as the number
/// it was read as: a server that reads `010` as octal (C's `strtol` with
/// base 0) would frame the body differently. The value has been checked to
/// be digits (the HTTP/1.1 guard, the HTTP/2 watch, hyper) before this.
pub(crate) fn canonical_content_length(headers: &mut HeaderMap) {
    let Some(v) = headers.get(header::CONTENT_LENGTH) else {
        return;
    };
    if v.len() < 2 || v.as_bytes()[0] != b'0' {
        return;
    }
    let read = std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    if let Some(n) = read {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// The codings a coding-list header (`Content-Encoding`, `Transfer-Encoding`)
/// names, over all its lines, trimmed and lowercased, empty items dropped:
/// the one reading the proxy and the gate share.
pub fn coding_tokens<'h>(
    headers: &'h HeaderMap,
    name: &header::HeaderName,
) -> impl Iterator<Item = String> + 'h {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
}

/// Moves a response's transfer-codings other than `chunked` (which hyper
/// decodes) into `Content-Encoding`, after the content-codings: hyper hands
/// on a `Transfer-Encoding: gzip, chunked` body still gzipped, and the
/// header naming that coding is hop-by-hop, so without this the gate would
/// see a plain-looking head over compressed bytes.
pub(crate) fn fold_transfer_codings(headers: &mut HeaderMap) {
    let codings: Vec<String> = coding_tokens(headers, &header::TRANSFER_ENCODING)
        .filter(|c| c != "chunked" && c != "identity")
        .collect();
    if codings.is_empty() {
        return;
    }
    let mut all: Vec<String> = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    all.extend(codings);
    let joined = all.join(", ");
    // Printable text from header values and lowercased tokens: valid; if
    // not, a coding no one can decode stands in, and the gate refuses it.
    let value = HeaderValue::from_str(&joined)
        .unwrap_or_else(|_| HeaderValue::from_static("x-unreadable-transfer-coding"));
    headers.insert(header::CONTENT_ENCODING, value);
}

/// The response for a refused request: status, reason header, small JSON body.
pub(crate) fn blocked_response(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    let reason_value =
        HeaderValue::from_str(reason).unwrap_or_else(|_| HeaderValue::from_static("blocked"));
    let body = format!(
        "{{\"blocked\":true,\"reason\":{}}}\n",
        json_string(reason_value.to_str().unwrap_or("blocked"))
    );
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(BLOCKED_HEADER, reason_value);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A refusal whose status, headers and body the gate chose, marked with the
/// `X-Openclaw-Blocked` header like every refusal.
pub(crate) fn shaped_response(
    status: StatusCode,
    reason: &str,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    let reason_value =
        HeaderValue::from_str(reason).unwrap_or_else(|_| HeaderValue::from_static("blocked"));
    resp.headers_mut().insert(BLOCKED_HEADER, reason_value);
    resp
}

pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut ws = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(
            ws.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            ws.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }

    #[test]
    fn cookie_fields_are_joined_in_order() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static(""));
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        let mut one = HeaderMap::new();
        one.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1");
    }

    #[test]
    fn a_padded_content_length_is_written_as_its_number() {
        for (sent, want) in [("0010", "10"), ("00", "0"), ("0", "0"), ("10", "10")] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(sent));
            canonical_content_length(&mut h);
            assert_eq!(h[header::CONTENT_LENGTH], want, "{sent}");
        }
    }

    #[test]
    fn transfer_codings_join_the_content_codings() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("GZip, chunked"),
        );
        fold_transfer_codings(&mut h);
        assert_eq!(h[header::CONTENT_ENCODING], "br, gzip");
        let mut plain = HeaderMap::new();
        plain.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        fold_transfer_codings(&mut plain);
        assert!(!plain.contains_key(header::CONTENT_ENCODING));
    }

    #[test]
    fn blocked_response_carries_reason() {
        let r = blocked_response(StatusCode::FORBIDDEN, "no \"capability\"");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.headers().contains_key(BLOCKED_HEADER));
    }
}
