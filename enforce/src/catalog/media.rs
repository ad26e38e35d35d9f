//! The format a request body is in, read from its one `Content-Type` the
//! way servers pick their parser: JSON from `application/json` or any
//! `*/*+json`, form fields from `application/x-www-form-urlencoded` or
//! `multipart/form-data`. What two parsers could read differently is
//! refused: several `Content-Type` headers, a charset other than UTF-8, a
//! body the upstream would decompress first.

use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::HeaderMap;

use super::error::ClassifyError;

/// A body format the catalog reads fields from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BodyFormat {
    Json,
    Form,
    Multipart { boundary: String },
}

impl BodyFormat {
    pub(super) fn name(&self) -> &'static str {
        match self {
            BodyFormat::Json => "JSON",
            BodyFormat::Form => "application/x-www-form-urlencoded",
            BodyFormat::Multipart { .. } => "multipart/form-data",
        }
    }
}

fn refuse(problem: impl Into<String>) -> ClassifyError {
    ClassifyError::ContentType(problem.into())
}

/// Refuses a body the upstream would decode before reading: any
/// `Content-Encoding` other than `identity`, in any of its headers.
pub(super) fn check_identity_encoding(headers: &HeaderMap) -> Result<(), ClassifyError> {
    for value in headers.get_all(CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| ClassifyError::BodyEncoded("?".into()))?;
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("identity") {
                return Err(ClassifyError::BodyEncoded(coding.to_ascii_lowercase()));
            }
        }
    }
    Ok(())
}

/// The body's format from its one `Content-Type`.
pub(super) fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ClassifyError> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(refuse("the request has no Content-Type")),
        (Some(v), None) => v,
        (Some(_), Some(_)) => return Err(refuse("the request has several Content-Type headers")),
    };
    let text = value
        .to_str()
        .map_err(|_| refuse("the Content-Type is not text"))?;
    let media =
        MediaType::parse(text).ok_or_else(|| refuse(format!("malformed Content-Type {text:?}")))?;
    let charset_utf8 = |media: &MediaType| match media.param("charset") {
        None => Ok(()),
        Some(c) if c.eq_ignore_ascii_case("utf-8") => Ok(()),
        Some(c) => Err(refuse(format!(
            "charset {c:?} on a {} body (only UTF-8 is read)",
            media.essence()
        ))),
    };
    // `text/json` too: ASP.NET reads it as JSON by default.
    let json = matches!(media.kind.as_str(), "application" | "text") && media.subtype == "json"
        || media.subtype.ends_with("+json");
    if json {
        charset_utf8(&media)?;
        return Ok(BodyFormat::Json);
    }
    match (media.kind.as_str(), media.subtype.as_str()) {
        ("application", "x-www-form-urlencoded") => {
            charset_utf8(&media)?;
            Ok(BodyFormat::Form)
        }
        ("multipart", "form-data") => {
            if let Some((name, _)) = media.params.iter().find(|(n, _)| n != "boundary") {
                return Err(refuse(format!(
                    "parameter {name:?} on a multipart/form-data body"
                )));
            }
            let boundary = media
                .param("boundary")
                .filter(|b| valid_boundary(b))
                .ok_or_else(|| refuse("multipart/form-data without a valid boundary"))?;
            Ok(BodyFormat::Multipart {
                boundary: boundary.to_owned(),
            })
        }
        _ => Err(refuse(format!(
            "Content-Type {} is not a body format the catalog reads fields from",
            media.essence()
        ))),
    }
}

/// RFC 2046: 1 to 70 of its characters, not ending in a space.
fn valid_boundary(b: &str) -> bool {
    (1..=70).contains(&b.len())
        && !b.ends_with(' ')
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c))
}

/// A parsed media type: type and subtype lowercased, parameter names
/// lowercased, values as written.
pub(crate) struct MediaType {
    pub kind: String,
    pub subtype: String,
    pub params: Vec<(String, String)>,
}

/// `name=value` parameters (the parts after `;`), strictly: a parameter
/// named twice, an RFC 2231 `name*`, an empty parameter or a quoted string
/// with an escape is refused (parsers disagree on them). Names lowercased.
pub(super) fn parse_params<'a>(
    parts: impl Iterator<Item = &'a str>,
) -> Option<Vec<(String, String)>> {
    let mut params: Vec<(String, String)> = Vec::new();
    for part in parts {
        let part = part.trim_matches([' ', '\t']);
        let (name, value) = part.split_once('=')?;
        if !is_token(name) || name.contains('*') {
            return None;
        }
        let value = match value.strip_prefix('"') {
            Some(quoted) => {
                let inner = quoted.strip_suffix('"')?;
                if inner.contains(['"', '\\']) || inner.chars().any(char::is_control) {
                    return None;
                }
                inner
            }
            None if is_token(value) => value,
            None => return None,
        };
        let name = name.to_ascii_lowercase();
        if params.iter().any(|(n, _)| *n == name) {
            return None;
        }
        params.push((name, value.to_owned()));
    }
    Some(params)
}

pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl MediaType {
    /// RFC 9110 `type/subtype *(OWS ";" OWS name=value)`, parameters read
    /// by [`parse_params`].
    pub(crate) fn parse(text: &str) -> Option<MediaType> {
        let mut parts = text.split(';');
        let essence = parts.next()?.trim_matches([' ', '\t']);
        let (kind, subtype) = essence.split_once('/')?;
        if !is_token(kind) || !is_token(subtype) {
            return None;
        }
        let params = parse_params(parts)?;
        Some(MediaType {
            kind: kind.to_ascii_lowercase(),
            subtype: subtype.to_ascii_lowercase(),
            params,
        })
    }

    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn essence(&self) -> String {
        format!("{}/{}", self.kind, self.subtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(values: &[&str]) -> Result<BodyFormat, ClassifyError> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CONTENT_TYPE, v.parse().expect("header value"));
        }
        body_format(&h)
    }

    #[test]
    fn formats_by_media_type() {
        for ct in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/vnd.api+json",
            "application/merge-patch+json; v=2",
            "text/json",
        ] {
            assert_eq!(format(&[ct]), Ok(BodyFormat::Json), "{ct}");
        }
        for ct in [
            "application/x-www-form-urlencoded",
            "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
        ] {
            assert_eq!(format(&[ct]), Ok(BodyFormat::Form), "{ct}");
        }
        assert_eq!(
            format(&["multipart/form-data; boundary=\"a b'c\""]),
            Ok(BodyFormat::Multipart {
                boundary: "a b'c".into()
            })
        );
    }

    #[test]
    fn ambiguous_or_unknown_types_are_refused() {
        for (cts, why) in [
            (&[][..], "no Content-Type"),
            (&["application/json", "application/json"][..], "several"),
            (&["application/json; charset=utf-16"][..], "charset"),
            (&["application/json; charset=iso-8859-1"][..], "charset"),
            (
                &["application/x-www-form-urlencoded; charset=utf-7"][..],
                "charset",
            ),
            (&["text/plain"][..], "not a body format"),
            (&["application/jsonx"][..], "not a body format"),
            (
                &["application/json; charset=utf-8; charset=utf-16"][..],
                "malformed",
            ),
            (&["application/json; charset*=utf-8''x"][..], "malformed"),
            (&["application/json;;"][..], "malformed"),
            (&["application/json; a=\"x\\\"y\""][..], "malformed"),
            (&["json"][..], "malformed"),
            (&["multipart/form-data"][..], "boundary"),
            (
                &["multipart/form-data; boundary=a; charset=utf-8"][..],
                "parameter",
            ),
            (&["multipart/form-data; boundary=\"ends \""][..], "boundary"),
        ] {
            let err = format(cts).expect_err(why).to_string();
            assert!(err.contains(why), "{cts:?}: {err}");
        }
    }

    #[test]
    fn every_content_encoding_is_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(check_identity_encoding(&h), Ok(()));
        h.append(CONTENT_ENCODING, "identity".parse().expect("value"));
        assert_eq!(check_identity_encoding(&h), Ok(()));
        h.append(CONTENT_ENCODING, "Identity, GZIP".parse().expect("value"));
        assert_eq!(
            check_identity_encoding(&h),
            Err(ClassifyError::BodyEncoded("gzip".into()))
        );
    }
}
