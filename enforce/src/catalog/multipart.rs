//! A strict `multipart/form-data` reader over a whole body (the catalog
//! only reads bodies it has all of). Multipart parsers disagree on much
//! (preambles, a bare LF before a boundary, padding after it, header
//! continuations, RFC 2231 names, quoted escapes, per-part encodings), so
//! anything but the plain form browsers and HTTP clients send is refused:
//! the body opens with its boundary, every line ends in CRLF, each part has
//! one `Content-Disposition: form-data; name="…"` (optionally a `filename`)
//! and at most a `Content-Type`, no part holds the boundary text, and
//! nothing follows the closing boundary.

use super::error::ClassifyError;
use super::form::FormPair;
use super::media::{is_token, parse_params, MediaType};
use super::names::form_name;

fn bad(problem: impl Into<String>) -> ClassifyError {
    ClassifyError::BadField {
        field: "multipart body".into(),
        problem: problem.into(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One part's headers: its field name, whether it is a file.
struct PartHead {
    name: String,
    file: bool,
}

fn part_head(head: &[u8]) -> Result<PartHead, ClassifyError> {
    let head = std::str::from_utf8(head).map_err(|_| bad("part headers are not UTF-8"))?;
    let mut disposition = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        if line.contains(['\r', '\n']) || line.starts_with([' ', '\t']) {
            return Err(bad("a part header line is folded or has a bare CR/LF"));
        }
        let (name, value) = line
            .split_once(':')
            .filter(|(n, _)| is_token(n))
            .ok_or_else(|| bad("a part header is malformed"))?;
        let value = value.trim_matches([' ', '\t']);
        let slot = if name.eq_ignore_ascii_case("content-disposition") {
            &mut disposition
        } else if name.eq_ignore_ascii_case("content-type") {
            &mut content_type
        } else {
            return Err(bad(format!("part header {name:?} is not read")));
        };
        if slot.replace(value).is_some() {
            return Err(bad(format!("part header {name:?} repeated")));
        }
    }
    let disposition = disposition.ok_or_else(|| bad("a part has no Content-Disposition"))?;
    let mut parts = disposition.split(';');
    if !parts.next().is_some_and(|d| {
        d.trim_matches([' ', '\t'])
            .eq_ignore_ascii_case("form-data")
    }) {
        return Err(bad("a part is not form-data"));
    }
    let params = parse_params(parts).ok_or_else(|| bad("a Content-Disposition is malformed"))?;
    let mut name = None;
    let mut file = false;
    for (key, value) in params {
        match key.as_str() {
            "name" => name = Some(value),
            "filename" => file = true,
            other => return Err(bad(format!("Content-Disposition parameter {other:?}"))),
        }
    }
    let name = name.ok_or_else(|| bad("a part has no name"))?;
    if !file {
        if let Some(ct) = content_type {
            let plain_utf8 = MediaType::parse(ct).is_some_and(|m| {
                m.kind == "text"
                    && m.subtype == "plain"
                    && m.params
                        .iter()
                        .all(|(n, v)| n == "charset" && v.eq_ignore_ascii_case("utf-8"))
            });
            if !plain_utf8 {
                return Err(bad(format!("field part {name:?} has Content-Type {ct:?}")));
            }
        }
    }
    Ok(PartHead { name, file })
}

/// The parts of a multipart body, as form pairs (a file part's value is
/// left empty: files are not field values).
pub(super) fn parse_multipart(body: &[u8], boundary: &str) -> Result<Vec<FormPair>, ClassifyError> {
    let delimiter = format!("--{boundary}");
    let close = format!("\r\n{delimiter}");
    let mut rest = body
        .strip_prefix(delimiter.as_bytes())
        .and_then(|r| r.strip_prefix(b"\r\n"))
        .ok_or_else(|| bad("does not open with its boundary line (a preamble is refused)"))?;
    let mut pairs = Vec::new();
    loop {
        let head_end = find(rest, b"\r\n\r\n").ok_or_else(|| bad("a part's headers do not end"))?;
        let head = &rest[..head_end];
        let content_and_rest = &rest[head_end + 4..];
        let end = find(content_and_rest, close.as_bytes())
            .ok_or_else(|| bad("a part is not closed by its boundary"))?;
        let content = &content_and_rest[..end];
        if find(head, delimiter.as_bytes()).is_some()
            || find(content, delimiter.as_bytes()).is_some()
        {
            return Err(bad("a part holds its boundary text"));
        }
        let head = part_head(head)?;
        let value = if head.file {
            String::new()
        } else {
            String::from_utf8(content.to_vec())
                .map_err(|_| bad(format!("field part {:?} is not UTF-8", head.name)))?
        };
        pairs.push(FormPair {
            name: form_name(&head.name),
            value,
            file: head.file,
        });
        let after = &content_and_rest[end + close.len()..];
        if let Some(next) = after.strip_prefix(b"\r\n") {
            rest = next;
        } else if let Some(tail) = after.strip_prefix(b"--") {
            if tail.is_empty() || tail == b"\r\n" {
                return Ok(pairs);
            }
            return Err(bad("bytes after the closing boundary"));
        } else {
            return Err(bad("a boundary is followed by other bytes"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "XyZ";

    fn parse(body: &str) -> Result<Vec<(String, String, bool)>, ClassifyError> {
        Ok(parse_multipart(body.as_bytes(), B)?
            .into_iter()
            .map(|p| (p.name.field, p.value, p.file))
            .collect())
    }

    #[test]
    fn plain_forms_parse() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"Amount\"\r\n\r\n5.00\r\n\
                    --XyZ\r\ncontent-disposition: form-data; name=note\r\ncontent-type: text/plain; charset=UTF-8\r\n\r\nline1\r\nline2\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\x01\x02\r\n\
                    --XyZ--\r\n";
        assert_eq!(
            parse(body),
            Ok(vec![
                ("amount".into(), "5.00".into(), false),
                ("note".into(), "line1\r\nline2".into(), false),
                ("f".into(), String::new(), true),
            ])
        );
        let empty_value = "--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--XyZ--";
        assert_eq!(
            parse(empty_value),
            Ok(vec![("a".into(), String::new(), false)])
        );
    }

    #[test]
    fn what_parsers_disagree_on_is_refused() {
        let part = "Content-Disposition: form-data; name=a\r\n\r\n1";
        for body in [
            format!("preamble\r\n--XyZ\r\n{part}\r\n--XyZ--"),
            format!("--XyZ\n{part}\r\n--XyZ--"),
            format!("--XyZ \r\n{part}\r\n--XyZ--"),
            format!("--XyZ\r\n{part}\n--XyZ\r\n{part}\r\n--XyZ--"),
            format!("--XyZ\r\n{part}\r\n--XyZ--\r\nepilogue"),
            format!("--XyZ\r\n{part}\r\n--XyZ"),
            format!("--XyZ\r\n{part}"),
            "--XyZ\r\nContent-Disposition: form-data; name*=utf-8''a\r\n\r\n1\r\n--XyZ--".into(),
            "--XyZ\r\nContent-Disposition: form-data; name=a; name=b\r\n\r\n1\r\n--XyZ--".into(),
            "--XyZ\r\nContent-Disposition: form-data; name=\"a\\\"\"\r\n\r\n1\r\n--XyZ--".into(),
            "--XyZ\r\nContent-Disposition: form-data;\r\n name=a\r\n\r\n1\r\n--XyZ--".into(),
            "--XyZ\r\nContent-Disposition: attachment; name=a\r\n\r\n1\r\n--XyZ--".into(),
            "--XyZ\r\nContent-Disposition: form-data; name=a\r\nContent-Transfer-Encoding: base64\r\n\r\nMQ==\r\n--XyZ--".into(),
            "--XyZ\r\nContent-Disposition: form-data; name=a\r\nContent-Type: application/json\r\n\r\n1\r\n--XyZ--".into(),
            "--XyZ\r\nContent-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b\r\n\r\n1\r\n--XyZ--".into(),
            "--XyZ\r\nContent-Type: text/plain\r\n\r\n1\r\n--XyZ--".into(),
            "--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx--XyZy\r\n--XyZ--".into(),
        ] {
            assert!(
                matches!(parse(&body), Err(ClassifyError::BadField { .. })),
                "{body:?}: {:?}",
                parse(&body)
            );
        }
        assert!(parse_multipart(
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n\xff\r\n--XyZ--",
            B
        )
        .is_err());
    }
}
