//! Reading a matched request's facts: the request as the catalog sees it,
//! each [`Field`] read from its source (JSON, form, query, header, constant),
//! and the facts each rule type fills in.

use capabilities::{Action, ActionType, Host};
use http::HeaderMap;

use super::decimal::decimal_to_scaled;
use super::error::ClassifyError;
use super::file::{AmountUnit, Field};
use super::json::{lookup, JsonLeaf};
use super::llm::{estimate_llm_cost, LlmPrice};
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

/// Fills in the kind and facts `extract` says a matched request carries.
/// `body` is the request body as read (`None`: not read), `complete`
/// whether it is all of it.
pub(super) fn read_facts(
    action: &mut Action,
    extract: &Extract,
    req: &RequestView<'_>,
    body: Option<&[u8]>,
    complete: bool,
    prices: &[LlmPrice],
) -> Result<(), ClassifyError> {
    let src = Sources {
        req,
        body: body.unwrap_or(&[]),
    };
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
                action.recipients.extend(src.list(field)?);
            }
            if action.recipients.is_empty() {
                return Err(ClassifyError::NoRecipients);
            }
            action.subject = subject.as_ref().map(|f| src.scalar(f)).transpose()?;
        }
        Extract::Llm => {
            action.kind = ActionType::Llm;
            if complete {
                action.cost_micro_usd = body.and_then(|b| estimate_llm_cost(b, prices));
            }
        }
    }
    Ok(())
}

/// Where [`Field`]s are read from for one request.
struct Sources<'a, 'r> {
    req: &'a RequestView<'r>,
    body: &'a [u8],
}

impl Sources<'_, '_> {
    /// One value; missing or repeated is an error.
    fn scalar(&self, field: &Field) -> Result<String, ClassifyError> {
        let mut values = self.values(field)?;
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
    /// comma-separated list, repeated form/query fields. Absent is empty.
    fn list(&self, field: &Field) -> Result<Vec<String>, ClassifyError> {
        Ok(self
            .values(field)?
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect())
    }

    fn values(&self, field: &Field) -> Result<Vec<String>, ClassifyError> {
        match field {
            Field::Value(v) => Ok(vec![v.clone()]),
            Field::Header(name) => self
                .req
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| {
                    v.to_str()
                        .map(str::to_owned)
                        .map_err(|_| ClassifyError::BadField {
                            field: field.describe(),
                            problem: "not text".into(),
                        })
                })
                .collect(),
            Field::Query(name) => {
                let query = self
                    .req
                    .path_and_query
                    .split_once('?')
                    .map_or("", |(_, q)| q);
                let query = query.split('#').next().unwrap_or("");
                Ok(form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
                    .collect())
            }
            Field::Form(name) => Ok(form_urlencoded::parse(self.body)
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .collect()),
            Field::Json(pointer) => {
                let text = std::str::from_utf8(self.body).map_err(|_| ClassifyError::BadUtf8)?;
                match lookup(text, pointer)? {
                    None | Some(JsonLeaf::Null) => Ok(Vec::new()),
                    Some(JsonLeaf::String(s)) | Some(JsonLeaf::Number(s)) => Ok(vec![s]),
                    Some(JsonLeaf::Array(items)) => items
                        .into_iter()
                        .map(|item| match item {
                            JsonLeaf::String(s) | JsonLeaf::Number(s) => Ok(s),
                            _ => Err(ClassifyError::BadField {
                                field: field.describe(),
                                problem: "array holds a non-string".into(),
                            }),
                        })
                        .collect(),
                    Some(JsonLeaf::Other) => Err(ClassifyError::BadField {
                        field: field.describe(),
                        problem: "not a string, number or array".into(),
                    }),
                }
            }
        }
    }
}
