//! Exact JSON-pointer lookups for classification: numbers come back as their
//! literal text (never through `f64`); member names match as lenient
//! servers match them (case-insensitively under simple folding, `names.rs`,
//! after `\u` escapes are decoded, and with `_` ignored, as a pydantic model
//! bound by alias and by name reads `amountCents` as `amount_cents`); and a member written twice on the way
//! to the value, in one spelling or two, is an error, since servers
//! disagree on which copy wins (Go's `encoding/json` takes the last).

use serde_json::value::RawValue;

use super::error::ClassifyError;
use super::names::{binding_key, binds_to, fold};
use crate::json_members::{unescape_token, Members};

/// The value a pointer reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonLeaf {
    String(String),
    /// The number's literal text as written in the body.
    Number(String),
    Null,
    /// An array of scalar leaves (nested containers become `Other`).
    Array(Vec<JsonLeaf>),
    /// A bool, an object, or an array nested in an array.
    Other,
}

/// Follows an RFC 6901 pointer through `text`. `Ok(None)` when the path does
/// not exist; an error when the body is not JSON or a member on the path is
/// written more than once (in any spelling that folds to the same name).
pub fn lookup(text: &str, pointer: &str) -> Result<Option<JsonLeaf>, ClassifyError> {
    let mut current: &RawValue = serde_json::from_str(text).map_err(|_| ClassifyError::BadJson)?;
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(ClassifyError::BadField {
            field: pointer.to_owned(),
            problem: "JSON pointer must start with /".into(),
        });
    }
    let mut walked = String::new();
    for token in pointer.split('/').skip(1) {
        let token = unescape_token(token);
        walked.push('/');
        walked.push_str(&token);
        let raw = current.get().trim_start();
        if raw.starts_with('{') {
            let Members(members) =
                serde_json::from_str(current.get()).map_err(|_| ClassifyError::BadJson)?;
            let key = binding_key(&fold(&token));
            let mut hits: Vec<(String, &RawValue)> = members
                .into_iter()
                .filter(|(k, _)| binds_to(k, &key))
                .collect();
            match hits.len() {
                0 => return Ok(None),
                1 => current = hits.remove(0).1,
                _ => {
                    let mut spellings: Vec<String> =
                        hits.into_iter().map(|(k, _)| format!("{k:?}")).collect();
                    spellings.sort_unstable();
                    spellings.dedup();
                    return Err(if spellings.len() == 1 {
                        ClassifyError::DuplicateField(walked)
                    } else {
                        ClassifyError::FieldSpellings {
                            field: walked,
                            spellings,
                        }
                    });
                }
            }
        } else if raw.starts_with('[') {
            let items: Vec<&RawValue> =
                serde_json::from_str(current.get()).map_err(|_| ClassifyError::BadJson)?;
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
    Ok(Some(leaf(current, true)?))
}

fn leaf(raw: &RawValue, allow_array: bool) -> Result<JsonLeaf, ClassifyError> {
    let text = raw.get().trim();
    Ok(match text.as_bytes().first() {
        Some(b'"') => {
            JsonLeaf::String(serde_json::from_str(text).map_err(|_| ClassifyError::BadJson)?)
        }
        Some(b'-' | b'0'..=b'9') => JsonLeaf::Number(text.to_owned()),
        Some(b'n') => JsonLeaf::Null,
        Some(b'[') if allow_array => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|_| ClassifyError::BadJson)?;
            JsonLeaf::Array(
                items
                    .into_iter()
                    .map(|i| leaf(i, false))
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => JsonLeaf::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_literal_text() {
        let body = r#"{"a":{"b":[1, 487.10000000000000001, "x"]}, "c~/d": 2}"#;
        assert_eq!(
            lookup(body, "/a/b/1"),
            Ok(Some(JsonLeaf::Number("487.10000000000000001".into())))
        );
        assert_eq!(
            lookup(body, "/a/b/2"),
            Ok(Some(JsonLeaf::String("x".into())))
        );
        assert_eq!(
            lookup(body, "/c~0~1d"),
            Ok(Some(JsonLeaf::Number("2".into())))
        );
        assert_eq!(lookup(body, "/a/b/01"), Ok(None));
        assert_eq!(lookup(body, "/a/b/9"), Ok(None));
        assert_eq!(lookup(body, "/zz"), Ok(None));
        assert_eq!(lookup(body, "/a/b/0/deeper"), Ok(None));
        assert_eq!(
            lookup(body, "/a/b"),
            Ok(Some(JsonLeaf::Array(vec![
                JsonLeaf::Number("1".into()),
                JsonLeaf::Number("487.10000000000000001".into()),
                JsonLeaf::String("x".into())
            ])))
        );
    }

    #[test]
    fn escaped_and_duplicate_keys() {
        // `\u0074otal` is `total`: a duplicate in disguise.
        let body = r#"{"total":"1.00","\u0074otal":"900.00"}"#;
        assert_eq!(
            lookup(body, "/total"),
            Err(ClassifyError::DuplicateField("/total".into()))
        );
        let body = r#"{"o":{"t":1},"o":{"t":2}}"#;
        assert_eq!(
            lookup(body, "/o/t"),
            Err(ClassifyError::DuplicateField("/o".into()))
        );
        assert_eq!(lookup("{} {}", "/a"), Err(ClassifyError::BadJson));
        assert_eq!(
            lookup(r#"{"a":1}{"a":2}"#, "/a"),
            Err(ClassifyError::BadJson)
        );
        // A lone surrogate is not text: Go would read U+FFFD, others refuse.
        assert_eq!(
            lookup(r#"{"a\ud800":1}"#, "/a"),
            Err(ClassifyError::BadJson)
        );
        assert_eq!(lookup("nope", "/a"), Err(ClassifyError::BadJson));
    }

    #[test]
    fn member_names_match_as_lenient_servers_match_them() {
        for body in [
            r#"{"Total":"5.00"}"#,
            r#"{"TOTAL":"5.00"}"#,
            r#"{"\u0054otal":"5.00"}"#,
            r#"{"to\u0074al":"5.00"}"#,
            r#"{"pay":{"TOTAL":"5.00"}}"#,
        ] {
            let ptr = if body.contains("pay") {
                "/PAY/total"
            } else {
                "/total"
            };
            assert_eq!(
                lookup(body, ptr),
                Ok(Some(JsonLeaf::String("5.00".into()))),
                "{body}"
            );
        }
        // Go folds the long s and the Kelvin sign into ASCII.
        assert_eq!(
            lookup("{\"\u{17f}ubject\":\"x\"}", "/subject"),
            Ok(Some(JsonLeaf::String("x".into())))
        );
        assert_eq!(
            lookup("{\"\u{212a}ey\":\"x\"}", "/key"),
            Ok(Some(JsonLeaf::String("x".into())))
        );
        assert_eq!(
            lookup(r#"{"total":"1.00","TOTAL":"900.00"}"#, "/total"),
            Err(ClassifyError::FieldSpellings {
                field: "/total".into(),
                spellings: vec![r#""TOTAL""#.into(), r#""total""#.into()]
            })
        );
        // A pydantic alias (`to_camel`) is the field too, beside it refused.
        assert_eq!(
            lookup(r#"{"amountCents":5}"#, "/amount_cents"),
            Ok(Some(JsonLeaf::Number("5".into())))
        );
        assert!(matches!(
            lookup(r#"{"amount_cents":1,"amountCents":900}"#, "/amount_cents"),
            Err(ClassifyError::FieldSpellings { .. })
        ));
        assert!(matches!(
            lookup("{\"cc\":\"a\",\"\u{212a}\":1,\"Cc\":\"b\"}", "/cc"),
            Err(ClassifyError::FieldSpellings { .. })
        ));
    }
}
