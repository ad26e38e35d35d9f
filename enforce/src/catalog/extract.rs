//! Reading a matched request's facts: the request as the catalog sees it,
//! each [`Field`] read from its source (JSON, form, multipart, query,
//! header, constant) under every spelling a lenient server binds to it, and
//! the facts each rule type fills in.

use capabilities::{Action, ActionType, Host};
use http::HeaderMap;
use serde_json::value::RawValue;

use super::decimal::decimal_to_scaled;
use super::error::ClassifyError;
use super::file::{AmountUnit, Field};
use super::form::{parse_urlencoded, read_field, FormPair};
use super::json::{lookup, JsonLeaf};
use super::media::{body_format, BodyFormat};
use super::multipart::parse_multipart;
use super::rule::Extract;

/// The request facts the catalog looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The request's host (HTTP Host / `:authority`, which the proxy has
    /// already checked against the TLS SNI).
    pub host: &'a Host,
    /// Path and query as sent.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestView<'_> {
    /// The query as sent: after the first `?`, before any `#`; empty
    /// without one. Every reader of query fields starts here.
    pub(super) fn query(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or("", |(_, q)| q.split('#').next().unwrap_or(""))
    }
}

/// Fills in the kind and facts `extract` says a matched request carries.
/// `body` is the request body as read (`None`: not read; the caller made
/// sure it is complete when the rule reads it). A rule that reads body fields reads them only
/// in the format the request's `Content-Type` names (`media.rs`).
pub(super) fn read_facts(
    action: &mut Action,
    extract: &Extract,
    req: &RequestView<'_>,
    body: Option<&[u8]>,
) -> Result<(), ClassifyError> {
    let parsed = if extract.fields().any(Field::needs_body) {
        parse_body(extract, req.headers, body.unwrap_or(&[]))?
    } else {
        Body::Unread
    };
    let src = Sources { req, body: parsed };
    match extract {
        Extract::Web => {}
        Extract::Login => action.kind = ActionType::Login,
        Extract::Payment {
            amount,
            unit,
            currency,
            merchant,
        } => {
            action.kind = ActionType::Payment;
            let raw = src.scalar(amount)?;
            let cents = match unit {
                AmountUnit::Major => decimal_to_scaled(&raw, 2),
                AmountUnit::Minor => decimal_to_scaled(&raw, 0),
            }
            .ok_or_else(|| ClassifyError::BadAmount(raw.clone()))?;
            action.amount_cents = Some(cents);
            action.currency = currency
                .as_ref()
                .map(|f| src.scalar(f).map(|c| c.trim().to_ascii_uppercase()))
                .transpose()?;
            action.merchant = merchant
                .as_ref()
                .map(|f| src.host(f))
                .transpose()?
                .map(|h| h.as_str().to_owned());
        }
        Extract::Email {
            recipients,
            subject,
        } => {
            action.kind = ActionType::Email;
            for field in recipients {
                let values = src.list(field)?;
                single_line(field, &values)?;
                action.recipients.extend(values);
            }
            if action.recipients.is_empty() {
                return Err(ClassifyError::NoRecipients);
            }
            if let Some(field) = subject {
                let value = src.scalar(field)?;
                single_line(field, std::slice::from_ref(&value))?;
                action.subject = Some(value);
            }
        }
        // Its cost is metering's: the worst case, set by the gate's stages.
        Extract::Llm => action.kind = ActionType::Llm,
    }
    Ok(())
}

/// Refuses a mail fact holding a line break or another control character:
/// a mail API that writes a subject or an address into the message's
/// header as is (no RFC 2047 encoding) sends each further line as a header
/// of its own, a `Bcc:` the token never saw.
fn single_line(field: &Field, values: &[String]) -> Result<(), ClassifyError> {
    if values.iter().any(|v| v.chars().any(char::is_control)) {
        return Err(ClassifyError::BadField {
            field: field.describe(),
            problem: "holds a line break or another control character, which a mail API \
                      writing it into a message header would send as headers of their own"
                .into(),
        });
    }
    Ok(())
}

/// A body parsed in the one format its `Content-Type` names.
enum Body<'a> {
    /// The rule reads no body field.
    Unread,
    Json(&'a str),
    /// Form pairs split at `&`, and (when the body holds a `;`) split at
    /// `;` too: a field must read the same both ways.
    Form {
        pairs: Vec<FormPair>,
        semicolon_pairs: Option<Vec<FormPair>>,
    },
    Multipart(Vec<FormPair>),
}

fn parse_body<'a>(
    extract: &Extract,
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<Body<'a>, ClassifyError> {
    let format = body_format(headers)?;
    for field in extract.fields().filter(|f| f.needs_body()) {
        let fits = matches!(
            (field, &format),
            (Field::Json(_), BodyFormat::Json)
                | (
                    Field::Form(_),
                    BodyFormat::Form | BodyFormat::Multipart { .. }
                )
        );
        if !fits {
            return Err(ClassifyError::ContentType(format!(
                "the rule reads {} but the body is {}",
                field.describe(),
                format.name()
            )));
        }
    }
    Ok(match format {
        BodyFormat::Json => {
            Body::Json(std::str::from_utf8(body).map_err(|_| ClassifyError::BadUtf8)?)
        }
        // Handlers that decode JSON whatever the Content-Type (many Go
        // services, Express's json parser told to take any type) would
        // read such a body as JSON: another reading than the form's.
        // (A raw value: serde_json skips it without a nesting limit, and
        // Go's decoder nests 10000 deep.)
        BodyFormat::Form
            if std::str::from_utf8(body)
                .is_ok_and(|t| serde_json::from_str::<&RawValue>(t).is_ok()) =>
        {
            return Err(ClassifyError::ContentType(
                "the application/x-www-form-urlencoded body is also valid JSON, which servers \
                 that decode JSON whatever the Content-Type read instead"
                    .into(),
            ))
        }
        BodyFormat::Form => Body::Form {
            pairs: parse_urlencoded(body, false, "form body")?,
            semicolon_pairs: body
                .contains(&b';')
                .then(|| parse_urlencoded(body, true, "form body"))
                .transpose()?,
        },
        BodyFormat::Multipart { boundary } => Body::Multipart(parse_multipart(body, &boundary)?),
    })
}

/// Where [`Field`]s are read from for one request.
struct Sources<'a, 'r> {
    req: &'a RequestView<'r>,
    body: Body<'a>,
}

impl Sources<'_, '_> {
    /// One value; missing or repeated (in any spelling) is an error.
    fn scalar(&self, field: &Field) -> Result<String, ClassifyError> {
        let mut values = self.values(field, true)?;
        match values.len() {
            0 => Err(ClassifyError::MissingField(field.describe())),
            1 => Ok(values.remove(0)),
            _ => Err(ClassifyError::DuplicateField(field.describe())),
        }
    }

    /// One value naming a host (a merchant): surrounding spaces dropped,
    /// the rest read as a [`Host`] or refused.
    fn host(&self, field: &Field) -> Result<Host, ClassifyError> {
        let raw = self.scalar(field)?;
        Host::parse(raw.trim()).map_err(|_| ClassifyError::BadField {
            field: field.describe(),
            problem: "not a host name".into(),
        })
    }

    /// Every value a field holds: a JSON string or array of strings, a
    /// comma-separated list, repeated form/query fields or their `name[]`
    /// items. Absent is empty.
    fn list(&self, field: &Field) -> Result<Vec<String>, ClassifyError> {
        Ok(self
            .values(field, false)?
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The values of `field`; `one` when a single value is wanted (a list
    /// spelling is then refused).
    fn values(&self, field: &Field, one: bool) -> Result<Vec<String>, ClassifyError> {
        let describe = || field.describe();
        match field {
            Field::Value(v) => Ok(vec![v.clone()]),
            Field::Header(name) => header_values(self.req.headers, name, one, &describe()),
            Field::Query(name) => {
                let query = self.req.query().as_bytes();
                let pairs = parse_urlencoded(query, false, "query")?;
                let semicolon_pairs = query
                    .contains(&b';')
                    .then(|| parse_urlencoded(query, true, "query"))
                    .transpose()?;
                read_both_ways(&pairs, semicolon_pairs.as_deref(), name, one, &describe())
            }
            Field::Form(name) => match &self.body {
                Body::Form {
                    pairs,
                    semicolon_pairs,
                } => read_both_ways(pairs, semicolon_pairs.as_deref(), name, one, &describe()),
                Body::Multipart(pairs) => read_field(pairs, name, one, &describe()),
                Body::Unread | Body::Json(_) => Err(ClassifyError::ContentType(format!(
                    "the rule reads {} but the body is not a form",
                    describe()
                ))),
            },
            Field::Json(pointer) => {
                let Body::Json(text) = self.body else {
                    return Err(ClassifyError::ContentType(format!(
                        "the rule reads {} but the body is not JSON",
                        describe()
                    )));
                };
                let scalar = |leaf: JsonLeaf| match leaf {
                    JsonLeaf::String(s) | JsonLeaf::Number(s) => Ok(s),
                    _ => Err(ClassifyError::BadField {
                        field: describe(),
                        problem: "array holds a non-string".into(),
                    }),
                };
                match lookup(text, pointer)? {
                    None | Some(JsonLeaf::Null) => Ok(Vec::new()),
                    Some(JsonLeaf::String(s)) | Some(JsonLeaf::Number(s)) => Ok(vec![s]),
                    Some(JsonLeaf::Array(_)) if one => Err(ClassifyError::BadField {
                        field: describe(),
                        problem: "an array where one value is expected".into(),
                    }),
                    Some(JsonLeaf::Array(items)) => items.into_iter().map(scalar).collect(),
                    Some(JsonLeaf::Other) => Err(ClassifyError::BadField {
                        field: describe(),
                        problem: "not a string, number or array".into(),
                    }),
                }
            }
        }
    }
}

/// A form or query field read from the `&`-split pairs, and from the
/// `;`-split ones when there are any: servers that split at `;` must read
/// the same values, or the request is refused.
fn read_both_ways(
    pairs: &[FormPair],
    semicolon_pairs: Option<&[FormPair]>,
    name: &str,
    one: bool,
    describe: &str,
) -> Result<Vec<String>, ClassifyError> {
    let values = read_field(pairs, name, one, describe)?;
    let differs = |why: String| ClassifyError::BadField {
        field: describe.to_owned(),
        problem: format!("reads differently when ';' also separates fields{why}"),
    };
    match semicolon_pairs.map(|other| read_field(other, name, one, describe)) {
        None => Ok(values),
        Some(Ok(other)) if other == values => Ok(values),
        Some(Ok(_)) => Err(differs(String::new())),
        Some(Err(e)) => Err(differs(format!(" ({e})"))),
    }
}

/// A header field's values. CGI-style servers (PHP, and anything behind
/// one) read `X_Merchant` as `X-Merchant`: both spellings are that field,
/// and both present is a duplicate.
fn header_values(
    headers: &HeaderMap,
    name: &str,
    one: bool,
    describe: &str,
) -> Result<Vec<String>, ClassifyError> {
    let want = name.trim().to_ascii_lowercase().replace('_', "-");
    let mut spellings: Vec<&str> = Vec::new();
    let mut values = Vec::new();
    for (n, v) in headers {
        if n.as_str().replace('_', "-") != want {
            continue;
        }
        if !spellings.contains(&n.as_str()) {
            spellings.push(n.as_str());
        }
        values.push(
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ClassifyError::BadField {
                    field: describe.to_owned(),
                    problem: "not text".into(),
                })?,
        );
    }
    if spellings.len() > 1 {
        return Err(ClassifyError::FieldSpellings {
            field: describe.to_owned(),
            spellings: spellings.iter().map(|s| format!("{s:?}")).collect(),
        });
    }
    if one && values.len() > 1 {
        return Err(ClassifyError::DuplicateField(describe.to_owned()));
    }
    Ok(values)
}
