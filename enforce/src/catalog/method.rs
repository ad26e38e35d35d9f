//! Method overrides: a header (`X-HTTP-Method-Override`, `X-HTTP-Method`,
//! `X-Method-Override`) or a `_method` field (in the query, a form body or
//! a JSON body's top level) asking the server to run another method than
//! the request line's. Rails (Rack::MethodOverride), Laravel, Symfony,
//! Express's method-override, ASP.NET Core and Google APIs honour some of
//! them on a `POST`, Slim a header on any method, and other servers none:
//! the proxy cannot know which method the upstream runs, so the token could
//! decide (and the receipt record) a `POST` the server runs as a `DELETE`.
//! A request naming another method is refused; one naming its own method
//! changes nothing.

use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use serde_json::value::RawValue;

use super::error::ClassifyError;
use super::extract::RequestView;
use super::media::MediaType;
use super::multipart::parse_multipart;
use super::names::{eq_folded, form_name};
use super::BodyCap;
use crate::credentials::{BodyDecoder, Coding};
use crate::json_members::Members;

/// The override headers (lower case) and how a reason names them.
pub(super) const HEADERS: [(&str, &str); 3] = [
    ("x-http-method-override", "X-HTTP-Method-Override"),
    ("x-http-method", "X-HTTP-Method"),
    ("x-method-override", "X-Method-Override"),
];

/// The override field's name as [`form_name`] reads it.
const FIELD: &str = "_method";

/// Whether the part of a `POST` body past `prefix` (what was read of it)
/// could name `_method` for some server: a form, an untyped body,
/// multipart, a JSON object (or a content-encoded one of these). Such a
/// body is read whole before it is checked ([`super::Catalog::reads_whole`]).
pub(super) fn rest_may_override(req: &RequestView<'_>, prefix: &[u8]) -> bool {
    req.method.trim().eq_ignore_ascii_case("POST")
        && reads_fields(req.headers)
        && !json_without_members(req.headers, prefix)
}

/// Whether a (complete) `POST` body is decoded to be checked for
/// `_method`: content-encoded, of a type servers read `_method` from.
/// Every other request is answered without a header scan past the first.
pub(super) fn decoded_for_override(req: &RequestView<'_>) -> bool {
    req.method.trim().eq_ignore_ascii_case("POST")
        && req.headers.contains_key(CONTENT_ENCODING)
        && !identity_encoded(req.headers)
        && reads_fields(req.headers)
}

/// Refuses a request whose override headers or `_method` fields name a
/// method other than its own. `body` is the body as buffered (all of it
/// when `complete`); a content-encoded body is read as servers that decode
/// it first read it, at most `cap` of it decoded (past that it is read as
/// a body cut at the cap).
pub(super) fn check(
    req: &RequestView<'_>,
    body: Option<&[u8]>,
    complete: bool,
    cap: BodyCap,
) -> Result<(), ClassifyError> {
    let method = req.method.trim();
    let refuse = |requested: &str, via: String| {
        Err(ClassifyError::MethodOverride {
            method: method.to_ascii_uppercase(),
            requested: shown(requested),
            via,
        })
    };
    let other = |v: &str| {
        let v = v.trim();
        // An empty value names no method: servers ignore it.
        !v.is_empty() && !v.eq_ignore_ascii_case(method)
    };
    for (name, value) in req.headers {
        let Some((h, display)) = HEADERS.iter().find(|(h, _)| spelled_as(name.as_str(), h)) else {
            continue;
        };
        let value = String::from_utf8_lossy(value.as_bytes());
        if other(&value) {
            let via = if name.as_str() == *h {
                (*display).to_owned()
            } else {
                name.as_str().to_owned()
            };
            return refuse(&value, via);
        }
    }
    if let Some(v) = urlencoded_fields(req.query().as_bytes()).find(|v| other(v)) {
        return refuse(&v, format!("{FIELD} in the query"));
    }
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return Ok(());
    };
    let unread = |via: String| {
        Err(ClassifyError::MethodOverrideUnread {
            method: method.to_ascii_uppercase(),
            via,
        })
    };
    // Express's body-parser (and a server's decoding filter, such as
    // Apache's mod_deflate input filter) decode the body before a
    // `_method` is read from it: so is it here, for a body whose type
    // some server reads `_method` from.
    let decoded;
    let (body, complete) = if !identity_encoded(req.headers) && reads_fields(req.headers) {
        match decode(req.headers, body, complete, cap.bytes) {
            Ok(plain) => {
                decoded = plain;
                (decoded.0.as_slice(), decoded.1)
            }
            Err(coding) => return unread(format!("the {coding}-encoded body")),
        }
    } else {
        (body, complete)
    };
    let mut types = req.headers.get_all(CONTENT_TYPE).iter().peekable();
    // Rack reads a POST without a Content-Type as a form.
    let untyped = types.peek().is_none().then_some("");
    let types = types
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .chain(untyped.map(str::to_owned));
    for content_type in types {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let value = if essence.is_empty() || essence == "application/x-www-form-urlencoded" {
            // What was buffered, even short of the whole body: pairs are
            // read one by one.
            urlencoded_fields(body).find(|v| other(v))
        } else if essence.starts_with("multipart/") && complete {
            let pairs = MediaType::parse(&content_type)
                .and_then(|m| m.param("boundary").map(str::to_owned))
                .ok_or(())
                .and_then(|b| parse_multipart(body, &b).map_err(|_| ()));
            match pairs {
                Ok(pairs) => pairs
                    .into_iter()
                    .filter(|p| p.name.field == FIELD)
                    .map(|p| p.value)
                    .find(|v| other(v)),
                // A body the strict reader refuses may still hold a
                // `_method` part for a lenient one: refused if it could.
                Err(()) if may_name_method(body) => {
                    return Err(ClassifyError::MethodOverrideUnread {
                        method: method.to_ascii_uppercase(),
                        via: "the multipart body".into(),
                    })
                }
                Err(()) => None,
            }
        } else {
            None
        };
        if let Some(v) = value {
            return refuse(&v, format!("{FIELD} in the form body"));
        }
        // Laravel reads the body as JSON when the header holds `/json` or
        // `+json` anywhere, parameters too (Rack still reads a form by the
        // essence, above). Not parsable short of its end (docs/catalog.md);
        // and most bodies cannot name the member, so are not parsed for it.
        if content_type.to_ascii_lowercase().contains("json")
            && complete
            && may_name_method_json(body)
        {
            match json_fields(body) {
                Ok(values) => {
                    if let Some(v) = values.into_iter().find(|v| other(v)) {
                        return refuse(&v, format!("{FIELD} in the JSON body"));
                    }
                }
                // A body refused here may still name `_method` for a more
                // lenient decoder (one that stops after the first value).
                Err(()) => {
                    return Err(ClassifyError::MethodOverrideUnread {
                        method: method.to_ascii_uppercase(),
                        via: "the JSON body".into(),
                    })
                }
            }
        }
    }
    // Rack, Symfony, Express's method-override and ASP.NET read `_method`
    // from the whole body of a `POST` (of no other method). The gate reads
    // such a body whole (up to its cap); one cut short all the same (or
    // decoding past the cap) is refused rather than guessed.
    if !complete && rest_may_override(req, body) {
        return unread(format!("the body past the {cap}"));
    }
    Ok(())
}

/// Whether every `Content-Type` is a JSON one and the body's top-level
/// value (after a UTF-8 BOM, which Express's decoder drops, and
/// whitespace) is an array or a string: a value with no members, whose
/// `_method` no server reads, known from its first byte.
fn json_without_members(headers: &http::HeaderMap, body: &[u8]) -> bool {
    let json_only = headers
        .get_all(CONTENT_TYPE)
        .iter()
        .all(|v| !form_type(v.as_bytes()));
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    json_only
        && headers.contains_key(CONTENT_TYPE)
        && matches!(body.trim_ascii_start().first(), Some(b'[' | b'"'))
}

/// Whether some `Content-Type` of the request (or its absence: Rack reads
/// an untyped `POST` as a form) is one servers read a `_method` field
/// from: a form, multipart, or any type holding `json` (Laravel). Read
/// without allocating: most requests carry one of these.
fn reads_fields(headers: &http::HeaderMap) -> bool {
    let mut types = headers.get_all(CONTENT_TYPE).iter().peekable();
    if types.peek().is_none() {
        return true;
    }
    types.any(|v| {
        let v = v.as_bytes();
        form_type(v) || v.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"))
    })
}

/// Whether a `Content-Type` value is one Rack reads as form fields: an
/// empty essence, urlencoded or multipart.
fn form_type(value: &[u8]) -> bool {
    let essence = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    essence.is_empty()
        || essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
        || essence.len() >= 10 && essence[..10].eq_ignore_ascii_case(b"multipart/")
}

/// Whether every `Content-Encoding` the request carries is `identity`.
fn identity_encoded(headers: &http::HeaderMap) -> bool {
    headers.get_all(CONTENT_ENCODING).iter().all(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .all(|c| c.is_empty() || c.eq_ignore_ascii_case(b"identity"))
    })
}

/// The body decoded by its `Content-Encoding`s (the last applied first),
/// at most `limit` bytes of it, and whether that is all of it (false when
/// the buffered body was not, or when it decodes past `limit`: a
/// decompression bomb is read no further). `Err` names a coding that could
/// not be decoded: unknown, or a stream that is corrupt.
fn decode(
    headers: &http::HeaderMap,
    body: &[u8],
    complete: bool,
    limit: usize,
) -> Result<(Vec<u8>, bool), String> {
    let mut codings = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        let text = value.to_str().map_err(|_| "?".to_owned())?;
        codings.extend(
            text.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
                .map(str::to_ascii_lowercase),
        );
    }
    let mut data = body.to_vec();
    let mut whole = complete;
    for name in codings.iter().rev() {
        let coding = Coding::parse(name).ok_or_else(|| name.clone())?;
        let mut decoder = BodyDecoder::new(coding).map_err(|_| name.clone())?;
        decoder.push(&data);
        if whole {
            decoder.finish();
        }
        let mut out = Vec::new();
        while let Some(piece) = decoder.pull().map_err(|_| name.clone())? {
            if out.len() + piece.len() > limit {
                out.extend_from_slice(&piece[..limit - out.len()]);
                whole = false;
                break;
            }
            out.extend_from_slice(&piece);
        }
        data = out;
    }
    Ok((data, whole))
}

/// Whether a (lower-case) header name is `want`, or a CGI spelling of it:
/// CGI-style servers read `x_http_method` as `x-http-method`. Checked for
/// every header of every request, so without allocating.
fn spelled_as(name: &str, want: &str) -> bool {
    name.len() == want.len()
        && name
            .bytes()
            .zip(want.bytes())
            .all(|(n, w)| n == w || (n == b'_' && w == b'-'))
}

/// The values of `_method` fields in urlencoded text (decoded leniently,
/// names read as PHP and Rails read them), split at `&` only and, when
/// there is a `;`, at `;` too (servers that do read other pairs).
fn urlencoded_fields(text: &[u8]) -> impl Iterator<Item = String> + '_ {
    let readings: &[bool] = if text.contains(&b';') {
        &[false, true]
    } else {
        &[false]
    };
    readings.iter().flat_map(move |&semicolons| {
        text.split(move |&b| b == b'&' || (semicolons && b == b';'))
            .filter_map(|pair| form_urlencoded::parse(pair).next())
            .filter(|(name, _)| form_name(name).field == FIELD)
            .map(|(_, value)| value.into_owned())
    })
}

/// The values of a JSON object's top-level `_method` members (names
/// compared after `\u` escapes are decoded, without case), as text: a
/// string as it reads, any other value but `null` as written (it names no
/// method a server would accept, and is refused). `Err` when the body is
/// not a JSON object serde_json reads.
fn json_fields(body: &[u8]) -> Result<Vec<String>, ()> {
    let text = std::str::from_utf8(body).map_err(|_| ())?;
    if !text.trim_start().starts_with('{') {
        // An array or a scalar has no members for a server to read.
        return serde_json::from_str::<&RawValue>(text)
            .map(|_| Vec::new())
            .map_err(|_| ());
    }
    let Members(members) = serde_json::from_str(text).map_err(|_| ())?;
    Ok(members
        .into_iter()
        .filter(|(name, _)| eq_folded(name, FIELD))
        .filter_map(|(_, value)| {
            let raw = value.get();
            match serde_json::from_str::<Option<String>>(raw) {
                Ok(v) => v,
                Err(_) => Some(raw.to_owned()),
            }
        })
        .collect())
}

/// Whether a JSON body could name a `_method` member: the word, or a `\u`
/// escape that could spell it.
fn may_name_method_json(body: &[u8]) -> bool {
    body.windows(6).any(|w| w.eq_ignore_ascii_case(b"method"))
        || body.windows(2).any(|w| w == b"\\u")
}

/// Whether a multipart body could name a `_method` part: the word, or an
/// RFC 2231 `name*` that could spell it encoded.
fn may_name_method(body: &[u8]) -> bool {
    body.windows(6).any(|w| w.eq_ignore_ascii_case(b"method"))
        || body.windows(5).any(|w| w.eq_ignore_ascii_case(b"name*"))
}

/// A requested method as a reason shows it: a short token upper-cased,
/// anything else quoted and cut short (the sandbox wrote it).
fn shown(value: &str) -> String {
    let v = value.trim();
    if v.len() <= 24
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        v.to_ascii_uppercase()
    } else {
        format!("{:?}", v.chars().take(24).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use capabilities::Host;
    use http::HeaderMap;

    use super::*;

    fn check_one(
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(), ClassifyError> {
        check_request(method, target, headers, body.as_bytes(), true, 64 * 1024)
    }

    /// [`check`] on a request to `shop.example` with these parts, a body
    /// cut at (or decoded to) `limit` bytes of `max_body_bytes`.
    fn check_request(
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        complete: bool,
        limit: usize,
    ) -> Result<(), ClassifyError> {
        let cap = BodyCap {
            bytes: limit,
            setting: "max_body_bytes",
        };
        check_capped(method, target, headers, body, complete, cap)
    }

    /// [`check_request`] under any cap.
    fn check_capped(
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        complete: bool,
        cap: BodyCap,
    ) -> Result<(), ClassifyError> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let host = Host::parse("shop.example").expect("host");
        let view = RequestView {
            method,
            host: &host,
            path_and_query: target,
            headers: &map,
        };
        check(&view, Some(body), complete, cap)
    }

    const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

    fn via(r: Result<(), ClassifyError>) -> Option<(String, String, String)> {
        match r {
            Err(ClassifyError::MethodOverride {
                method,
                requested,
                via,
            }) => Some((method, requested, via)),
            _ => None,
        }
    }

    #[test]
    fn overrides_to_another_method_are_refused() {
        let cases = [
            (
                "POST",
                "/x",
                vec![("x-http-method-override", "DELETE")],
                "",
                "DELETE",
                "X-HTTP-Method-Override",
            ),
            (
                "GET",
                "/x",
                vec![("x-http-method", " delete ")],
                "",
                "DELETE",
                "X-HTTP-Method",
            ),
            (
                "POST",
                "/x",
                vec![("x-method-override", "PUT")],
                "",
                "PUT",
                "X-Method-Override",
            ),
            (
                "POST",
                "/x",
                vec![("x_http_method_override", "PUT")],
                "",
                "PUT",
                "x_http_method_override",
            ),
            (
                "POST",
                "/x?_method=put",
                vec![],
                "",
                "PUT",
                "_method in the query",
            ),
            (
                "POST",
                "/x?a=1;_method=PATCH",
                vec![],
                "",
                "PATCH",
                "_method in the query",
            ),
            (
                "POST",
                "/x",
                vec![FORM],
                "a=1&_method=DELETE",
                "DELETE",
                "_method in the form body",
            ),
            (
                "POST",
                "/x",
                vec![FORM],
                "_method=PUT;a=1",
                "\"PUT;a=1\"",
                "_method in the form body",
            ),
            (
                "POST",
                "/x",
                vec![],
                "%5Fmethod=PUT",
                "PUT",
                "_method in the form body",
            ),
            (
                "POST",
                "/x",
                vec![FORM],
                ".method=PUT",
                "PUT",
                "_method in the form body",
            ),
        ];
        for (method, target, headers, body, requested, how) in cases {
            assert_eq!(
                via(check_one(method, target, &headers, body)),
                Some((method.into(), requested.into(), how.into())),
                "{method} {target} {headers:?} {body}"
            );
        }
        let multipart = ("content-type", "multipart/form-data; boundary=XyZ");
        let body =
            "--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nPUT\r\n--XyZ--";
        assert_eq!(
            via(check_one("POST", "/x", &[multipart], body)),
            Some((
                "POST".into(),
                "PUT".into(),
                "_method in the form body".into()
            ))
        );
        let json = |ct: &'static str, body: &str| {
            via(check_one("POST", "/x", &[("content-type", ct)], body))
        };
        for (ct, body, requested) in [
            (
                "application/json",
                r#"{"a":1,"_method":"DELETE"}"#,
                "DELETE",
            ),
            ("application/json", r#"{"\u005F\u006Dethod":"put"}"#, "PUT"),
            ("application/json", r#"{"_METHOD":"put"}"#, "PUT"),
            (
                "application/json",
                r#"{"_method":"POST","_method":"PUT"}"#,
                "PUT",
            ),
            (
                "application/json",
                r#"{"_method":["PUT"]}"#,
                "\"[\\\"PUT\\\"]\"",
            ),
            ("application/problem+json", r#"{"_method":"PUT"}"#, "PUT"),
            ("text/plain; x=/json", r#"{"_method":"PUT"}"#, "PUT"),
        ] {
            assert_eq!(
                json(ct, body),
                Some((
                    "POST".into(),
                    requested.into(),
                    "_method in the JSON body".into()
                )),
                "{ct} {body}"
            );
        }
        // A form whose type's parameters mention JSON is still a form to
        // Rack.
        assert_eq!(
            via(check_one(
                "POST",
                "/x",
                &[(
                    "content-type",
                    "application/x-www-form-urlencoded; x=\"/json\""
                )],
                "a=1&_method=DELETE"
            ))
            .map(|v| v.2),
            Some("_method in the form body".into())
        );
        // Nested deeper than serde_json builds values (128): its members
        // are still read.
        let deep = format!(
            "{{\"a\":{}{},\"_method\":\"PUT\"}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(
            json("application/json", &deep).map(|v| v.1),
            Some("PUT".into())
        );
        // Not JSON serde_json reads (a lenient decoder stops after the
        // first value), and may name it.
        for body in [r#"{"_method":"PUT"} x"#, r#"{"\u005fm\u0065thod":"PUT""#] {
            assert!(
                matches!(
                    check_one("POST", "/x", &[("content-type", "application/json")], body),
                    Err(ClassifyError::MethodOverrideUnread { .. })
                ),
                "{body}"
            );
        }
        assert_eq!(
            check_one(
                "POST",
                "/x",
                &[("content-type", "application/json")],
                "{\"a\":"
            ),
            Ok(())
        );
        // Unreadable for the strict reader, and may name it: refused.
        let body = "--XyZ\r\nContent-Disposition: form-data; name*=utf-8''%5Fm%65thod\r\n\r\nPUT\r\n--XyZ--";
        assert!(matches!(
            check_one("POST", "/x", &[multipart], body),
            Err(ClassifyError::MethodOverrideUnread { .. })
        ));
    }

    fn gzip(body: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(body).expect("in memory");
        z.finish().expect("in memory")
    }

    /// Checks a `POST` whose body is `body` with these headers, complete,
    /// under a `limit`-byte cap.
    fn check_bytes(
        headers: &[(&str, &str)],
        body: &[u8],
        limit: usize,
    ) -> Result<(), ClassifyError> {
        check_request("POST", "/x", headers, body, true, limit)
    }

    /// A body servers decode before reading `_method` (Express's
    /// body-parser) is read decoded: an override in it is refused, one
    /// that cannot be decoded is refused when its type is one `_method` is
    /// read from, and one without an override goes.
    #[test]
    fn encoded_bodies_are_read_decoded() {
        let gz = ("content-encoding", "gzip");
        let json = ("content-type", "application/json");
        let found = check_bytes(&[FORM, gz], &gzip(b"a=1&_method=DELETE"), 1024);
        assert_eq!(
            via(found),
            Some((
                "POST".into(),
                "DELETE".into(),
                "_method in the form body".into()
            ))
        );
        let found = check_bytes(
            &[json, ("content-encoding", "identity, gzip")],
            &gzip(br#"{"_method":"PUT"}"#),
            1024,
        );
        assert_eq!(
            via(found).map(|v| v.2),
            Some("_method in the JSON body".into())
        );
        // Applied in order: decoded last to first.
        let twice = check_bytes(
            &[
                FORM,
                ("content-encoding", "gzip"),
                ("content-encoding", "gzip"),
            ],
            &gzip(&gzip(b"_method=PUT")),
            1024,
        );
        assert_eq!(via(twice).map(|v| v.1), Some("PUT".into()));
        for (coding, body, why) in [
            ("gzip", b"_method=PUT".to_vec(), "the gzip-encoded body"),
            (
                "x-unknown",
                b"_method=PUT".to_vec(),
                "the x-unknown-encoded body",
            ),
        ] {
            assert_eq!(
                check_bytes(&[FORM, ("content-encoding", coding)], &body, 1024),
                Err(ClassifyError::MethodOverrideUnread {
                    method: "POST".into(),
                    via: why.into()
                })
            );
        }
        for (headers, body) in [
            (vec![json, gz], gzip(br#"{"note":"x","method":"card"}"#)),
            (vec![FORM, gz], gzip(b"_method=post")),
            (
                vec![("content-type", "image/png"), gz],
                b"not gzip".to_vec(),
            ),
        ] {
            assert_eq!(check_bytes(&headers, &body, 1024), Ok(()), "{headers:?}");
        }
    }

    /// A `POST` body past the cap is refused where its unread rest could
    /// name `_method` for a server (a form, multipart, an untyped body, a
    /// JSON object); one whose first bytes rule that out, one of another
    /// type and one of another method are not.
    #[test]
    fn a_post_body_past_the_cap_is_refused_where_it_could_name_an_override() {
        let check_cut = |method: &str, headers: &[(&str, &str)], body: &[u8]| {
            check_request(method, "/x", headers, body, false, 1024)
        };
        let unread = Err(ClassifyError::MethodOverrideUnread {
            method: "POST".into(),
            via: "the body past the 1024-byte classification cap (max_body_bytes)".into(),
        });
        let json = ("content-type", "application/json");
        let multipart = ("content-type", "multipart/form-data; boundary=XyZ");
        for (headers, body) in [
            (vec![FORM], &b"note=aaaa"[..]),
            (vec![], b"note=aaaa"),
            (vec![json], b"  {\"note\":\"aaaa"),
            (vec![json, FORM], b"[\"aaaa"),
            (vec![multipart], b"--XyZ\r\n"),
            (vec![("content-type", "text/plain; x=json")], b"{\"a\":1"),
        ] {
            assert_eq!(check_cut("POST", &headers, body), unread, "{headers:?}");
        }
        // An override in the part read is named as such.
        assert_eq!(
            via(check_cut("POST", &[FORM], b"_method=PUT&note=aaaa")).map(|v| v.1),
            Some("PUT".into())
        );
        for (method, headers, body) in [
            ("POST", vec![json], &b"\xEF\xBB\xBF [\"aaaa"[..]),
            ("POST", vec![json], b"\"aaaa"),
            (
                "POST",
                vec![("content-type", "application/octet-stream")],
                b"note=aaaa",
            ),
            ("PUT", vec![FORM], b"note=aaaa"),
        ] {
            assert_eq!(
                check_cut(method, &headers, body),
                Ok(()),
                "{method} {headers:?}"
            );
        }
        // A complete compressed body that decodes past the cap (a bomb) is
        // read no further, and is then such a body.
        let bomb = gzip(&[b'a'; 1 << 20]);
        assert!(bomb.len() * 100 < 1 << 20, "{}", bomb.len());
        let gz = ("content-encoding", "gzip");
        assert_eq!(check_bytes(&[FORM, gz], &bomb, 1024), unread);
        assert_eq!(
            check_bytes(&[("content-type", "image/png"), gz], &bomb, 1024),
            Ok(())
        );
    }

    /// A body the gate read whole under a read permit is decoded up to the
    /// cap on bodies read whole: an override past `max_body_bytes` of
    /// decoded output is read and named; one past that cap (a bomb) is
    /// refused as unread, naming the cap.
    #[test]
    fn a_body_read_whole_is_decoded_to_the_whole_cap() {
        let gz = ("content-encoding", "gzip");
        let late = gzip(format!("note={}&_method=DELETE", "a".repeat(100 * 1024)).as_bytes());
        assert_eq!(
            check_bytes(&[FORM, gz], &late, 64 * 1024),
            Err(ClassifyError::MethodOverrideUnread {
                method: "POST".into(),
                via: "the body past the 65536-byte classification cap (max_body_bytes)".into()
            })
        );
        let whole = BodyCap {
            bytes: 1 << 20,
            setting: "max_whole_body_bytes",
        };
        let named = check_capped("POST", "/x", &[FORM, gz], &late, true, whole);
        assert_eq!(
            via(named),
            Some((
                "POST".into(),
                "DELETE".into(),
                "_method in the form body".into()
            ))
        );
        let json = ("content-type", "application/json");
        let late_json =
            gzip(format!(r#"{{"note":"{}","_method":"PUT"}}"#, "a".repeat(100 * 1024)).as_bytes());
        let named = check_capped("POST", "/x", &[json, gz], &late_json, true, whole);
        assert_eq!(via(named).map(|v| v.1), Some("PUT".into()));
        let plain = gzip(format!(r#"{{"note":"{}"}}"#, "a".repeat(100 * 1024)).as_bytes());
        assert_eq!(
            check_capped("POST", "/x", &[json, gz], &plain, true, whole),
            Ok(())
        );
        let bomb = gzip(&[b'a'; 2 << 20]);
        assert_eq!(
            check_capped("POST", "/x", &[FORM, gz], &bomb, true, whole),
            Err(ClassifyError::MethodOverrideUnread {
                method: "POST".into(),
                via: "the body past the 1048576-byte cap (max_whole_body_bytes)".into()
            })
        );
    }

    #[test]
    fn overrides_naming_the_request_method_and_other_fields_pass() {
        let multipart = ("content-type", "multipart/form-data; boundary=XyZ");
        for (method, target, headers, body) in [
            ("POST", "/x", vec![("x-http-method-override", "post")], ""),
            ("GET", "/x?_method=GET&method=DELETE", vec![], ""),
            ("POST", "/x", vec![FORM], "_method=POST&my_method=PUT"),
            ("POST", "/x", vec![FORM], "_method="),
            (
                "POST",
                "/x",
                vec![("content-type", "application/json")],
                r#"{"_method":null,"a":{"_method":"PUT"},"method":"PUT"}"#,
            ),
            (
                "POST",
                "/x",
                vec![("content-type", "application/json")],
                r#"["_method","PUT"]"#,
            ),
            (
                "POST",
                "/x",
                vec![("content-type", "text/plain")],
                r#"{"_method":"PUT"}"#,
            ),
            (
                "POST",
                "/x",
                vec![multipart],
                "--XyZ\r\nX-Other: 1\r\n\r\nhi\r\n--XyZ--",
            ),
        ] {
            assert_eq!(
                check_one(method, target, &headers, body),
                Ok(()),
                "{method} {target} {headers:?} {body}"
            );
        }
    }
}
