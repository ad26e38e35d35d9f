//! Parameters servers read from the query and the body together. Many
//! frameworks hand a handler one bag of both: Spring's `@RequestParam`
//! (Tomcat's `getParameter`), Flask's `request.values` and Symfony's (and
//! so Laravel's) `Request::get` take the query's copy of a name first; Go's
//! `FormValue`, PHP's `$_REQUEST`, Rails' `params` and Laravel's `input`
//! take the body's; and a name only one side carries is read from that
//! side. So a field a rule reads from the body must not also be in the
//! query, and one it reads from the query must not also be in the body:
//! the catalog would read one copy and the server might act on the other
//! (or on a copy where the catalog found none). Such a request is refused.
//! PHP's `$_REQUEST` also reads cookies, after the query and the form when
//! no `php.ini` sets `request_order` (as in the official Docker images),
//! and ASP.NET's `Request[name]` falls back to them: a form or query field
//! named in a `Cookie` is refused too.

use http::header::CONTENT_TYPE;
use http::header::COOKIE;

use super::error::ClassifyError;
use super::extract::RequestView;
use super::file::Field;
use super::media::{check_identity_encoding, MediaType};
use super::multipart::parse_multipart;
use super::names::form_name;
use super::rule::Extract;
use crate::json_members::unescape_token;
use crate::json_members::Members;

/// Refuses a request carrying a field the rule reads from one side (body
/// or query) on the other side too, under any spelling a server binds to
/// it (`names.rs`). `body` is the body as buffered, `complete` whether it
/// is all of it.
pub(super) fn check(
    extract: &Extract,
    req: &RequestView<'_>,
    body: &[u8],
    complete: bool,
) -> Result<(), ClassifyError> {
    let from_body: Vec<(&Field, String)> = extract
        .fields()
        .filter_map(|f| match f {
            // A JSON pointer's first member is the parameter a merging
            // server sees (`/payment/total` is `payment[total]`).
            Field::Json(p) => first_member(p).map(|m| (f, form_name(&m).field)),
            Field::Form(n) => Some((f, form_name(n).field)),
            _ => None,
        })
        .collect();
    if !from_body.is_empty() {
        let names = urlencoded_names(req.query().as_bytes());
        if let Some((field, _)) = from_body.iter().find(|(_, n)| names.contains(n)) {
            return Err(ClassifyError::QueryAndBody {
                field: field.describe(),
                elsewhere: "the query",
                who: MERGING,
            });
        }
    }
    let mut form_or_query = extract.fields().filter_map(|f| match f {
        Field::Form(n) | Field::Query(n) => Some((f, form_name(n).field)),
        _ => None,
    });
    let cookies = cookie_names(req);
    if let Some((field, _)) = form_or_query.find(|(_, n)| cookies.contains(n)) {
        return Err(ClassifyError::QueryAndBody {
            field: field.describe(),
            elsewhere: "a cookie",
            who: "PHP's $_REQUEST (without a php.ini, the cookie's copy wins) and ASP.NET's \
                  Request[name] read cookies with the query and the form",
        });
    }
    let from_query: Vec<(&Field, String)> = extract
        .fields()
        .filter_map(|f| match f {
            Field::Query(n) => Some((f, form_name(n).field)),
            _ => None,
        })
        .collect();
    if from_query.is_empty() || body.is_empty() {
        return Ok(());
    }
    let unread = |why: String| ClassifyError::BodyUnread {
        field: from_query[0].0.describe(),
        why,
    };
    let Some(names) = body_names(req, body, complete).map_err(unread)? else {
        return Ok(());
    };
    match from_query.iter().find(|(_, n)| names.contains(n)) {
        Some((field, _)) => Err(ClassifyError::QueryAndBody {
            field: field.describe(),
            elsewhere: "the body",
            who: MERGING,
        }),
        None => Ok(()),
    }
}

/// Who reads a copy of a field on the other side than the rule's.
const MERGING: &str = "servers that read the query and the body as one set of parameters may \
                       act on that copy (Spring, Flask and Symfony prefer the query's, Go, PHP \
                       and Rails the body's)";

/// The names of the request's cookies (read by [`form_name`] after a
/// lenient percent-decoding, as PHP reads them), split at `;` and, as
/// older servers also do, at `,`.
fn cookie_names(req: &RequestView<'_>) -> Vec<String> {
    req.headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';' || b == b','))
        .filter_map(|pair| {
            let name = pair.split(|&b| b == b'=').next()?;
            let name = percent_encoding::percent_decode(name.trim_ascii()).decode_utf8_lossy();
            Some(form_name(&name).field)
        })
        .collect()
}

/// The first member name of an RFC 6901 pointer, unescaped.
fn first_member(pointer: &str) -> Option<String> {
    let token = pointer.strip_prefix('/')?.split('/').next()?;
    Some(unescape_token(token))
}

/// The field names (read by [`form_name`], with the property an ASP.NET
/// model prefix binds) of urlencoded text, decoded
/// leniently (a bad escape kept as written, as most parsers do) and split
/// at `&` and, when there is one, at `;` too: every name some server sees.
fn urlencoded_names(text: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|&b| b == b'&' || b == b';')
        .chain(text.split(|&b| b == b'&'))
        .filter_map(|pair| form_urlencoded::parse(pair).next())
        .flat_map(|(name, _)| {
            let name = form_name(&name);
            std::iter::once(name.field).chain(name.property)
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The parameter names a server merging the body with the query would
/// find in it, by each `Content-Type` it carries: form fields (a `POST`
/// without a type is a form to Rack), multipart fields, a JSON object's
/// top-level members (Rails and Laravel merge JSON too; Laravel takes any
/// type holding `json` as JSON). `None`: a body no such server reads as
/// parameters. `Err` says why the body cannot be read to tell.
fn body_names(
    req: &RequestView<'_>,
    body: &[u8],
    complete: bool,
) -> Result<Option<Vec<String>>, String> {
    let mut types: Vec<String> = req
        .headers
        .get_all(CONTENT_TYPE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if types.is_empty() {
        types.push(String::new());
    }
    let mut names = Vec::new();
    let mut read_any = false;
    for content_type in &types {
        let lower = content_type.to_ascii_lowercase();
        let essence = lower.split(';').next().unwrap_or("").trim();
        let json = lower.contains("json");
        let form = essence.is_empty() || essence == "application/x-www-form-urlencoded";
        let multipart = essence.starts_with("multipart/");
        if !(json || form || multipart) {
            continue;
        }
        if !read_any {
            check_identity_encoding(req.headers).map_err(|e| e.to_string())?;
            if !complete {
                return Err("it is longer than the classification cap".into());
            }
            read_any = true;
        }
        if json {
            let text = std::str::from_utf8(body).map_err(|_| "not UTF-8 JSON".to_owned())?;
            if text.trim_start().starts_with('{') {
                let Members(members) =
                    serde_json::from_str(text).map_err(|_| "not valid JSON".to_owned())?;
                names.extend(members.into_iter().map(|(n, _)| form_name(&n).field));
            }
        } else if form {
            names.extend(urlencoded_names(body));
        } else {
            let boundary = MediaType::parse(content_type)
                .and_then(|m| m.param("boundary").map(str::to_owned))
                .ok_or_else(|| "a multipart body without a readable boundary".to_owned())?;
            let pairs = parse_multipart(body, &boundary).map_err(|e| e.to_string())?;
            names.extend(
                pairs
                    .into_iter()
                    .flat_map(|p| std::iter::once(p.name.field).chain(p.name.property)),
            );
        }
    }
    Ok(read_any.then_some(names))
}

#[cfg(test)]
mod tests {
    use capabilities::Host;
    use http::HeaderMap;

    use super::*;
    use crate::catalog::Catalog;

    const CATALOG: &str = r#"
        [[rule]]
        name = "json"
        host = "shop.example"
        path = "/json"
        type = "email"
        recipients = [{ json = "/to" }, { json = "/mail/cc" }]

        [[rule]]
        name = "form"
        host = "shop.example"
        path = "/form"
        type = "payment"
        amount = { form = "amount_cents" }
        amount_unit = "minor"

        [[rule]]
        name = "query"
        host = "shop.example"
        path = "/query"
        type = "payment"
        amount = { query = "amount" }
        currency = { header = "x-currency" }
    "#;

    fn classify(
        target: &str,
        content_type: Option<&str>,
        body: &str,
        complete: bool,
    ) -> Result<(), ClassifyError> {
        classify_with_cookie(target, content_type, body, complete, None)
    }

    fn classify_with_cookie(
        target: &str,
        content_type: Option<&str>,
        body: &str,
        complete: bool,
        cookie: Option<&str>,
    ) -> Result<(), ClassifyError> {
        let cat = Catalog::from_toml(CATALOG).expect("catalog");
        let mut headers = HeaderMap::new();
        if let Some(c) = cookie {
            headers.insert("cookie", c.parse().expect("value"));
        }
        if let Some(ct) = content_type {
            headers.insert("content-type", ct.parse().expect("value"));
        }
        headers.insert("x-currency", "USD".parse().expect("value"));
        let host = Host::parse("shop.example").expect("host");
        let view = RequestView {
            method: "POST",
            host: &host,
            path_and_query: target,
            headers: &headers,
        };
        cat.match_request(&view)
            .classify(&view, Some(body.as_bytes()), complete)
            .map(|_| ())
    }

    const JSON: Option<&str> = Some("application/json");
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    fn both(r: Result<(), ClassifyError>) -> Option<(String, &'static str)> {
        match r {
            Err(ClassifyError::QueryAndBody {
                field, elsewhere, ..
            }) => Some((field, elsewhere)),
            _ => None,
        }
    }

    #[test]
    fn a_body_field_in_the_query_is_refused() {
        let mail = r#"{"to":"a@x.example"}"#;
        for (target, content_type, body, field) in [
            ("/json?to=b@x.example", JSON, mail, "json /to"),
            ("/json?TO[]=b@x.example", JSON, mail, "json /to"),
            ("/json?mail[cc]=b@x.example", JSON, mail, "json /mail/cc"),
            ("/json?x=1;%74o=b@x.example", JSON, mail, "json /to"),
            (
                "/form?amount.cents=9",
                FORM,
                "amount_cents=1",
                "form amount_cents",
            ),
            (
                "/form?Amount_Cents",
                FORM,
                "amount_cents=1",
                "form amount_cents",
            ),
        ] {
            assert_eq!(
                both(classify(target, content_type, body, true)),
                Some((field.into(), "the query")),
                "{target} {body}"
            );
        }
    }

    #[test]
    fn a_query_field_in_the_body_is_refused() {
        let multipart = "multipart/form-data; boundary=XyZ";
        for (content_type, body) in [
            (FORM, "amount=900"),
            (FORM, "x=1;AMOUNT=900"),
            (None, "amount=900"),
            (JSON, r#"{"x":1,"\u0061mount":"900"}"#),
            (Some("text/plain; x=/json"), r#"{"Amount":"900"}"#),
            (
                Some(multipart),
                "--XyZ\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n900\r\n--XyZ--\r\n",
            ),
        ] {
            assert_eq!(
                both(classify("/query?amount=1", content_type, body, true)),
                Some(("query amount".into(), "the body")),
                "{content_type:?} {body}"
            );
        }
        // A body that cannot be read to tell.
        for (content_type, body, complete) in [
            (FORM, "note=x", false),
            (JSON, r#"{"amount":"#, true),
            (Some(multipart), "--XyZ\n", true),
        ] {
            assert!(
                matches!(
                    classify("/query?amount=1", content_type, body, complete),
                    Err(ClassifyError::BodyUnread { .. })
                ),
                "{content_type:?} {body}"
            );
        }
    }

    #[test]
    fn a_form_or_query_field_in_a_cookie_is_refused() {
        for (target, body, cookie, field) in [
            (
                "/form",
                "amount_cents=1",
                "amount_cents=9",
                "form amount_cents",
            ),
            (
                "/form",
                "amount_cents=1",
                "a=1; Amount.Cents=9",
                "form amount_cents",
            ),
            (
                "/form",
                "amount_cents=1",
                "a=1, amount%5Fcents=9",
                "form amount_cents",
            ),
            ("/query?amount=1", "", "amount=9", "query amount"),
        ] {
            assert_eq!(
                both(classify_with_cookie(target, FORM, body, true, Some(cookie))),
                Some((field.into(), "a cookie")),
                "{target} {cookie}"
            );
        }
        // A JSON field: neither $_REQUEST nor Request[] reads JSON.
        assert_eq!(
            classify_with_cookie(
                "/json",
                JSON,
                r#"{"to":"a@x.example"}"#,
                true,
                Some("to=b@x.example; session=1")
            ),
            Ok(())
        );
        assert_eq!(
            classify_with_cookie("/form", FORM, "amount_cents=1", true, Some("amount=9")),
            Ok(())
        );
    }

    #[test]
    fn fields_on_one_side_only_are_read() {
        for (target, content_type, body) in [
            (
                "/json?note=1",
                JSON,
                r#"{"to":"a@x.example","mail":{"cc":"b@x.example"}}"#,
            ),
            ("/json?cc=1", JSON, r#"{"to":"a@x.example"}"#),
            ("/form?amount=1&ref=2", FORM, "amount_cents=1"),
            ("/query?amount=1", FORM, "note=amount"),
            ("/query?amount=1", JSON, r#"{"order":{"amount":"900"}}"#),
            ("/query?amount=1", JSON, r#"["amount"]"#),
            ("/query?amount=1", Some("text/plain"), "amount=900"),
            (
                "/query?amount=1",
                Some("application/octet-stream"),
                "amount=900",
            ),
            ("/query?amount=1", FORM, ""),
        ] {
            assert_eq!(
                classify(target, content_type, body, true),
                Ok(()),
                "{target} {content_type:?} {body}"
            );
        }
        // Only a body a merging server reads needs all of it.
        assert_eq!(
            classify("/query?amount=1", Some("image/png"), "x", false),
            Ok(())
        );
    }
}
