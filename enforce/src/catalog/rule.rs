//! One catalog rule, validated from its file form: where it applies (host,
//! method, path) and what it reads from a request it matches.

use capabilities::Host;

use super::error::CatalogError;
use super::file::{AmountUnit, Field, RuleFile, RuleKind};
use super::pattern::{PathPattern, RuleHost};
use crate::credentials::Placement;

/// What a rule does with a request, checked at load time.
#[derive(Debug, Clone)]
pub(super) enum Extract {
    Payment {
        amount: Field,
        unit: AmountUnit,
        currency: Option<Field>,
        merchant: Option<Field>,
    },
    Email {
        recipients: Vec<Field>,
        subject: Option<Field>,
    },
    Login,
    Llm,
    Web,
}

impl Extract {
    /// Every field the rule reads.
    pub(super) fn fields(&self) -> Box<dyn Iterator<Item = &Field> + '_> {
        match self {
            Extract::Payment {
                amount,
                currency,
                merchant,
                ..
            } => Box::new(std::iter::once(amount).chain(currency).chain(merchant)),
            Extract::Email {
                recipients,
                subject,
            } => Box::new(recipients.iter().chain(subject)),
            Extract::Login | Extract::Llm | Extract::Web => Box::new(std::iter::empty()),
        }
    }
}

/// One catalog rule, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    name: String,
    host: RuleHost,
    /// Upper-case; `None` matches any method.
    method: Option<String>,
    path: PathPattern,
    pub(super) extract: Extract,
    pub(super) credential: Option<String>,
    /// Where the credential's placeholder goes in a matched request.
    credential_field: Option<Placement>,
}

impl Rule {
    /// The rule's name (from the file, else `host path`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The credential the rule names, and where its placeholder goes in a
    /// request the rule matches (`credential_field`), if the rule says.
    pub fn credential(&self) -> Option<(&str, Option<&Placement>)> {
        self.credential
            .as_deref()
            .map(|c| (c, self.credential_field.as_ref()))
    }

    /// The kind of action the rule reads (`None`: plain web access).
    pub fn kind(&self) -> Option<capabilities::ActionType> {
        use capabilities::ActionType;
        match self.extract {
            Extract::Payment { .. } => Some(ActionType::Payment),
            Extract::Email { .. } => Some(ActionType::Email),
            Extract::Login => Some(ActionType::Login),
            Extract::Llm => Some(ActionType::Llm),
            Extract::Web => None,
        }
    }

    /// Whether classifying needs the request body. (The model and token
    /// limit of an LLM call are read when present, but an LLM call is
    /// classified and budget-checked without them.)
    pub fn needs_body(&self) -> bool {
        self.extract.fields().any(Field::needs_body)
    }

    pub(super) fn from_file(file: RuleFile) -> Result<Self, CatalogError> {
        let name = file
            .name
            .clone()
            .unwrap_or_else(|| format!("{} {}", file.host, file.path));
        let bad = |problem: String| CatalogError::Rule {
            rule: name.clone(),
            problem,
        };
        let host = RuleHost::parse(&file.host).map_err(bad)?;
        let path = PathPattern::parse(&file.path).map_err(bad)?;
        let method = match file.method.as_deref().map(str::trim) {
            None | Some("*") => None,
            Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Some(m.to_ascii_uppercase())
            }
            Some(m) => return Err(bad(format!("bad method {m:?}"))),
        };
        let unused = |what: &str, present: bool| -> Result<(), CatalogError> {
            if present {
                Err(bad(format!("{what} does not apply to this type")))
            } else {
                Ok(())
            }
        };
        let payment_fields = file.amount.is_some()
            || file.currency.is_some()
            || file.merchant.is_some()
            || file.amount_unit != AmountUnit::default();
        let email_fields = !file.recipients.is_empty() || file.subject.is_some();
        let extract = match file.kind {
            RuleKind::Payment => {
                unused("recipients/subject", email_fields)?;
                let amount = file
                    .amount
                    .ok_or_else(|| bad("a payment rule needs `amount`".into()))?;
                Extract::Payment {
                    amount,
                    unit: file.amount_unit,
                    currency: file.currency,
                    merchant: file.merchant,
                }
            }
            RuleKind::Email => {
                unused("amount/currency/merchant", payment_fields)?;
                if file.recipients.is_empty() {
                    return Err(bad("an email rule needs `recipients`".into()));
                }
                Extract::Email {
                    recipients: file.recipients,
                    subject: file.subject,
                }
            }
            RuleKind::Login => {
                unused("amount/currency/merchant", payment_fields)?;
                unused("recipients/subject", email_fields)?;
                if file.credential.is_none() {
                    return Err(bad("a login rule needs `credential`".into()));
                }
                Extract::Login
            }
            RuleKind::Llm | RuleKind::Web => {
                unused("amount/currency/merchant", payment_fields)?;
                unused("recipients/subject", email_fields)?;
                if file.kind == RuleKind::Llm {
                    Extract::Llm
                } else {
                    Extract::Web
                }
            }
        };
        for field in [&file.credential].into_iter().flatten() {
            if field.trim().is_empty() {
                return Err(bad("empty credential name".into()));
            }
        }
        let credential_field = match (&file.credential, file.credential_field) {
            (_, None) => None,
            (None, Some(_)) => return Err(bad("`credential_field` needs `credential`".into())),
            (Some(_), Some(f)) => Some(match f {
                Field::Json(p) if p.starts_with('/') => Placement::Json(p),
                Field::Form(n) => Placement::Form(n),
                Field::Query(n) => Placement::Query(n),
                Field::Header(h) => Placement::parse(&format!("header:{h}")).map_err(bad)?,
                Field::Json(_) | Field::Value(_) => return Err(bad(
                    "`credential_field` is a json pointer, form field, query parameter or header"
                        .into(),
                )),
            }),
        };
        Ok(Rule {
            name,
            host,
            method,
            path,
            extract,
            credential: file.credential,
            credential_field,
        })
    }

    /// Whether the rule's host and path cover a request, whatever its method.
    pub(super) fn covers(&self, host: &Host, readings: &[Vec<String>]) -> bool {
        self.host.matches(host) && self.path.matches(readings)
    }

    /// Whether a request (its candidate methods, host and path readings)
    /// falls under the rule. A `GET` rule covers `HEAD` too: servers run a
    /// `GET` route's handler for a `HEAD` (Go's `GET /path` patterns,
    /// Express's `app.get`, Rails, Flask, Spring's `@GetMapping`) and only
    /// drop the response body, so its effects are the `GET`'s.
    pub(super) fn matches(
        &self,
        methods: &[String],
        host: &Host,
        readings: &[Vec<String>],
    ) -> bool {
        let method_matches = |m: &String| {
            methods
                .iter()
                .any(|rm| rm == m || (m == "GET" && rm == "HEAD"))
        };
        self.host.matches(host)
            && self.method.as_ref().is_none_or(method_matches)
            && self.path.matches(readings)
    }
}
