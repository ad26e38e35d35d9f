//! Placement: where in a request a credential's placeholder may be swapped
//! for the secret. By default the field the matched catalog rule names for
//! that credential (`credential_field`) and the header the secret injects;
//! a secrets file's `placement` list widens that. A placeholder anywhere
//! else in a request, even to a host where the credential may be used, is
//! refused: a secret substituted into a query, another header or another
//! body field could be stored by the upstream and read back.
//!
//! Locating is strict where servers read leniently: a JSON member spelled
//! another way beside the named one (`"Password"` next to `"password"`), a
//! repeated member on the path, or a repeated form or query field, makes
//! the place ambiguous, and an ambiguous place takes no placeholder. A form
//! or query value is the part read as that field both by servers that
//! split pairs at `&` only and by those that also split at `;` (Rack 2, Go
//! before 1.17, Python's `parse_qsl` before 3.9.2): in `key=A;note=B` only
//! `A` is `key`'s, since the latter read `note=B` as another field.

use std::fmt;
use std::ops::Range;

use http::header::HeaderName;
use http::HeaderMap;
use serde_json::value::RawValue;

use crate::json_members::{unescape_token, Members};

/// One place a placeholder may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The value of this request header.
    Header(HeaderName),
    /// The string at this JSON pointer (RFC 6901) in a JSON body.
    Json(String),
    /// This field of an `application/x-www-form-urlencoded` body.
    Form(String),
    /// This query-string parameter.
    Query(String),
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Header(h) => write!(f, "header:{h}"),
            Placement::Json(p) => write!(f, "json:{p}"),
            Placement::Form(n) => write!(f, "form:{n}"),
            Placement::Query(n) => write!(f, "query:{n}"),
        }
    }
}

impl Placement {
    /// Reads `header:NAME`, `json:/pointer`, `form:field` or `query:name`.
    pub fn parse(text: &str) -> Result<Placement, String> {
        let (kind, what) = text
            .split_once(':')
            .ok_or_else(|| format!("placement {text:?} is not KIND:WHERE"))?;
        if what.is_empty() {
            return Err(format!("placement {text:?} names nothing"));
        }
        match kind {
            "header" => HeaderName::from_bytes(what.as_bytes())
                .map(Placement::Header)
                .map_err(|_| format!("placement {text:?}: not a header name")),
            "json" if what.starts_with('/') => Ok(Placement::Json(what.to_owned())),
            "json" => Err(format!("placement {text:?}: a JSON pointer starts with /")),
            "form" => Ok(Placement::Form(what.to_owned())),
            "query" => Ok(Placement::Query(what.to_owned())),
            _ => Err(format!(
                "placement {text:?}: the kind is header, json, form or query"
            )),
        }
    }
}

/// Where a request's allowed places are.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Spots {
    /// Ranges of query values in the path-and-query text.
    pub query: Vec<Range<usize>>,
    pub headers: Vec<HeaderName>,
    /// Ranges of form values or JSON string contents in the body.
    pub body: Vec<Range<usize>>,
    /// Places that were ambiguous (named twice, spelled two ways).
    pub ambiguous: Vec<String>,
    /// Form and query values that servers splitting at `;` cut short.
    pub split_at_semicolon: Vec<SemicolonSplit>,
}

/// A form or query value (as split at `&`) that servers splitting at `;`
/// too read only in part: the rest is other fields to them.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SemicolonSplit {
    /// In the query (else in the body).
    pub in_query: bool,
    /// The whole value as split at `&` only.
    pub whole: Range<usize>,
    /// The other fields' names (decoded, shortened for a message).
    pub fields: Vec<String>,
}

/// Is this a JSON media type (`application/json`, `*/*+json`)?
pub(super) fn is_json(content_type: &str) -> bool {
    let essence = media_type(content_type);
    essence == "application/json" || essence.ends_with("+json")
}

/// Is this `application/x-www-form-urlencoded`?
pub(super) fn is_form(content_type: &str) -> bool {
    media_type(content_type) == "application/x-www-form-urlencoded"
}

/// The one Content-Type a body is read by (none when there are several).
/// Placement and substitution read the same one, so a secret is encoded
/// for the syntax its place was found in.
pub(super) fn body_content_type(headers: &HeaderMap) -> &str {
    let mut types = headers.get_all(http::header::CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(v), None) => v.to_str().unwrap_or(""),
        _ => "",
    }
}

fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Finds the places `placements` name in a request. The body counts only
/// when complete and of the media type the place reads (exactly one
/// `Content-Type`).
pub(super) fn locate(
    placements: &[Placement],
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    complete: bool,
) -> Spots {
    let mut spots = Spots::default();
    let content_type = body_content_type(headers);
    for p in placements {
        match p {
            Placement::Header(name) => spots.headers.push(name.clone()),
            Placement::Query(name) => {
                let Some(q) = path_and_query.find('?') else {
                    continue;
                };
                let end = path_and_query.find('#').unwrap_or(path_and_query.len());
                let query = &path_and_query[q + 1..end.max(q + 1)];
                let shift = |r: Range<usize>| r.start + q + 1..r.end + q + 1;
                match field_value(query.as_bytes(), name) {
                    Ok(Some((r, split))) => {
                        spots.query.push(shift(r));
                        if let Some(mut split) = split {
                            split.whole = shift(split.whole);
                            split.in_query = true;
                            spots.split_at_semicolon.push(split);
                        }
                    }
                    Ok(None) => {}
                    Err(()) => spots.ambiguous.push(p.to_string()),
                }
            }
            Placement::Form(name) if complete && is_form(content_type) => {
                match field_value(body, name) {
                    Ok(Some((r, split))) => {
                        spots.body.push(r);
                        spots.split_at_semicolon.extend(split);
                    }
                    Ok(None) => {}
                    Err(()) => spots.ambiguous.push(p.to_string()),
                }
            }
            Placement::Json(pointer) if complete && is_json(content_type) => {
                match json_string_at(body, pointer) {
                    Ok(Some(r)) => spots.body.push(r),
                    Ok(None) => {}
                    Err(()) => spots.ambiguous.push(p.to_string()),
                }
            }
            Placement::Form(_) | Placement::Json(_) => {}
        }
    }
    spots
}

/// A field's value every server reads as its own, and what servers
/// splitting at `&` only read beyond it.
type FieldValue = (Range<usize>, Option<SemicolonSplit>);

/// The range of the value of the field `name` in urlencoded text that
/// every server reads as that field's: split at `&` only, and at `&` and
/// `;`. When the two readings differ, what the `&` reading adds is
/// returned too (as a [`SemicolonSplit`], `in_query` unset). `Err` when
/// the name appears more than once in either reading.
fn field_value(text: &[u8], name: &str) -> Result<Option<FieldValue>, ()> {
    let Some(amp) = pair_value(text, name, false)? else {
        return Ok(None);
    };
    if !text.contains(&b';') {
        return Ok(Some((amp, None)));
    }
    // Each `;`-split pair lies inside an `&`-split one, so the value both
    // read is their overlap (empty when the `;` reading has the field
    // elsewhere or not at all).
    let both = match pair_value(text, name, true)? {
        Some(semi) if semi.start < amp.end && amp.start < semi.end => {
            semi.start.max(amp.start)..semi.end.min(amp.end)
        }
        Some(_) | None => amp.start..amp.start,
    };
    if both == amp {
        return Ok(Some((amp, None)));
    }
    let fields = text[both.end..amp.end]
        .split(|&b| b == b';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let name = pair.split(|&b| b == b'=').next().unwrap_or_default();
            form_urlencoded::parse(name)
                .next()
                .map(|(k, _)| k.chars().filter(|c| !c.is_control()).take(40).collect())
                .unwrap_or_default()
        })
        .collect();
    Ok(Some((
        both,
        Some(SemicolonSplit {
            in_query: false,
            whole: amp,
            fields,
        }),
    )))
}

/// The range of the value of the one `name=value` pair named `name` in
/// urlencoded text split at `&` (and at `;` when `semicolons`); `Err` when
/// the name appears more than once.
fn pair_value(text: &[u8], name: &str, semicolons: bool) -> Result<Option<Range<usize>>, ()> {
    let mut found = None;
    let mut at = 0;
    for pair in text.split(|&b| b == b'&' || (semicolons && b == b';')) {
        let start = at;
        at += pair.len() + 1;
        let (key, value_at) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], start + eq + 1),
            None => (pair, start + pair.len()),
        };
        let key: String = form_urlencoded::parse(key)
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default();
        if key == name {
            if found.is_some() {
                return Err(());
            }
            found = Some(value_at..start + pair.len());
        }
    }
    Ok(found)
}

/// The range of the contents (inside the quotes) of the string at
/// `pointer`; `Ok(None)` when there is none (or the body is not JSON),
/// `Err` when the path is ambiguous: a member on it repeated or spelled
/// another way beside it (ASCII case, or a Unicode folding such as `ſ`/`s`
/// that some servers apply: any other member equal to it ignoring case).
fn json_string_at(body: &[u8], pointer: &str) -> Result<Option<Range<usize>>, ()> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Ok(None);
    };
    let Ok(mut current) = serde_json::from_str::<&RawValue>(text) else {
        return Ok(None);
    };
    for token in pointer.split('/').skip(1) {
        let token = unescape_token(token);
        let raw = current.get().trim_start();
        if raw.starts_with('{') {
            let Ok(Members(members)) = serde_json::from_str::<Members>(current.get()) else {
                return Ok(None);
            };
            let folded = fold(&token);
            let mut same = members.iter().filter(|(k, _)| fold(k) == folded);
            match (same.next(), same.next()) {
                (Some((k, v)), None) if *k == token => current = v,
                (None, _) | (Some(_), None) => return Ok(None),
                (Some(_), Some(_)) => return Err(()),
            }
        } else if raw.starts_with('[') {
            let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(current.get()) else {
                return Ok(None);
            };
            let index = (token == "0" || !token.starts_with('0'))
                .then(|| token.parse::<usize>().ok())
                .flatten();
            match index.and_then(|i| items.get(i).copied()) {
                Some(v) => current = v,
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        }
    }
    let raw = current.get();
    if !raw.starts_with('"') {
        return Ok(None);
    }
    // A RawValue borrows from `text`: its offset is where it sits.
    let start = raw.as_ptr() as usize - text.as_ptr() as usize;
    Ok(Some(start + 1..start + raw.len() - 1))
}

/// A member name as lenient servers compare it: simple case folding.
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c.to_lowercase().next().unwrap_or(c),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_parse_and_refuse_what_is_not_one() {
        assert_eq!(
            Placement::parse("header:X-Api-Key"),
            Ok(Placement::Header(HeaderName::from_static("x-api-key")))
        );
        assert_eq!(
            Placement::parse("json:/a/0/b"),
            Ok(Placement::Json("/a/0/b".into()))
        );
        assert_eq!(
            Placement::parse("form:pw"),
            Ok(Placement::Form("pw".into()))
        );
        assert_eq!(
            Placement::parse("query:k"),
            Ok(Placement::Query("k".into()))
        );
        for bad in [
            "json:a",
            "body:/x",
            "header:bad header",
            "query:",
            "nothing",
        ] {
            assert!(Placement::parse(bad).is_err(), "{bad}");
        }
    }

    fn body_spots(ct: &str, body: &str, p: &str) -> Spots {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, ct.parse().expect("valid"));
        locate(
            &[Placement::parse(p).expect("placement")],
            "/",
            &h,
            body.as_bytes(),
            true,
        )
    }

    #[test]
    fn json_strings_are_located_exactly() {
        let body = r#"{"user":"a","password":"ocs_x","nested":{"list":["q","ocs_y"]}}"#;
        let s = body_spots("application/json; charset=utf-8", body, "json:/password");
        assert_eq!(s.body.len(), 1);
        assert_eq!(&body[s.body[0].clone()], "ocs_x");
        let s = body_spots("application/vnd.api+json", body, "json:/nested/list/1");
        assert_eq!(&body[s.body[0].clone()], "ocs_y");
        // Not a string, absent, not JSON, the wrong media type: nowhere.
        for (ct, b, p) in [
            ("application/json", r#"{"password":5}"#, "json:/password"),
            ("application/json", r#"{"pass":"x"}"#, "json:/password"),
            ("application/json", r#"{"password":"x""#, "json:/password"),
            ("text/plain", body, "json:/password"),
            ("application/x-www-form-urlencoded", body, "json:/password"),
        ] {
            let s = body_spots(ct, b, p);
            assert!(s.body.is_empty() && s.ambiguous.is_empty(), "{ct} {b}");
        }
        // Another spelling beside the field, or a repeat: ambiguous.
        for b in [
            r#"{"password":"x","Password":"y"}"#,
            r#"{"password":"x","password":"y"}"#,
            r#"{"pa\u017fsword":"y","password":"x"}"#,
        ] {
            let s = body_spots("application/json", b, "json:/password");
            assert!(s.body.is_empty(), "{b}");
            assert_eq!(s.ambiguous, vec!["json:/password"], "{b}");
        }
        // Another spelling alone is not the field named.
        let s = body_spots("application/json", r#"{"PASSWORD":"x"}"#, "json:/password");
        assert!(s.body.is_empty() && s.ambiguous.is_empty());
    }

    #[test]
    fn form_and_query_values_are_located() {
        let body = "user=a&pw=ocs_x%20y&other=1";
        let s = body_spots("application/x-www-form-urlencoded", body, "form:pw");
        assert_eq!(&body[s.body[0].clone()], "ocs_x%20y");
        let s = body_spots(
            "application/x-www-form-urlencoded",
            "pw=a&p%77=b",
            "form:pw",
        );
        assert_eq!(s.ambiguous, vec!["form:pw"]);
        let pq = "/x/ocs_path?a=1&key=ocs_k#frag";
        let s = locate(
            &[Placement::Query("key".into())],
            pq,
            &HeaderMap::new(),
            b"",
            true,
        );
        assert_eq!(&pq[s.query[0].clone()], "ocs_k");
    }

    #[test]
    fn a_value_is_what_both_semicolon_readings_give_the_field() {
        let form = "application/x-www-form-urlencoded";
        // Cut at the `;`: the rest is `note` to servers that split there.
        let body = "pw=ocs_x;note=ocs_y&u=1";
        let s = body_spots(form, body, "form:pw");
        assert_eq!(&body[s.body[0].clone()], "ocs_x");
        assert_eq!(
            s.split_at_semicolon,
            vec![SemicolonSplit {
                in_query: false,
                whole: 3..19,
                fields: vec!["note".into()],
            }]
        );
        // The field only after a `;` is not the field for `&`-only servers.
        let s = body_spots(form, "x=1;pw=ocs_x", "form:pw");
        assert_eq!(s, Spots::default());
        // Named twice for `;` servers: ambiguous.
        let s = body_spots(form, "pw=ocs_x;pw=ocs_y", "form:pw");
        assert_eq!(s.ambiguous, vec!["form:pw"]);
        // A `;` elsewhere changes nothing.
        let body = "a=1;b=2&pw=ocs_x";
        let s = body_spots(form, body, "form:pw");
        assert_eq!(&body[s.body[0].clone()], "ocs_x");
        assert!(s.split_at_semicolon.is_empty());
        // In the query, the ranges are the path-and-query's.
        let pq = "/f?key=ocs_k;n%6fte=ocs_k#x";
        let s = locate(
            &[Placement::Query("key".into())],
            pq,
            &HeaderMap::new(),
            b"",
            true,
        );
        assert_eq!(&pq[s.query[0].clone()], "ocs_k");
        let split = &s.split_at_semicolon[0];
        assert!(split.in_query);
        assert_eq!(&pq[split.whole.clone()], "ocs_k;n%6fte=ocs_k");
        assert_eq!(split.fields, vec!["note"]);
    }
}
