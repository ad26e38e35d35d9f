//! The service catalog: which requests are payments, emails, logins or LLM
//! calls, and where in the request their facts (amount, recipients, ...) live.
//! Everything the catalog does not name is `web`. Format: `docs/catalog.md`.

use std::path::Path;

use capabilities::{Action, ActionType};
use http::HeaderMap;
use serde::Deserialize;

use super::json::{lookup, JsonLeaf};

/// Default cap on the body bytes read to classify a request (64 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// Headers some frameworks honour to turn one method into another; a rule
/// matches if either the request method or one of these names it.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Why a catalog file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("catalog is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("catalog rule {rule}: {problem}")]
    Rule { rule: String, problem: String },
}

/// Why a request the catalog names could not be turned into an action. Each
/// of these blocks the request: the proxy never guesses an amount or a
/// recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("request body over the {limit}-byte classification cap")]
    BodyTooLarge { limit: usize },
    #[error("request body is content-encoded ({0}); cannot read its fields")]
    BodyEncoded(String),
    #[error("body is not valid JSON")]
    BadJson,
    #[error("body is not valid UTF-8")]
    BadUtf8,
    #[error("field {0} appears more than once")]
    DuplicateField(String),
    #[error("field {0} is missing")]
    MissingField(String),
    #[error("field {field}: {problem}")]
    BadField { field: String, problem: String },
    #[error("amount {0:?} is not an exact non-negative amount in cents")]
    BadAmount(String),
    #[error("email with no recipients the catalog can read")]
    NoRecipients,
}

/// Where one fact of a request is read from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Field {
    /// A JSON pointer (RFC 6901) into a JSON body.
    Json(String),
    /// A field of an `application/x-www-form-urlencoded` body.
    Form(String),
    /// A query-string parameter.
    Query(String),
    /// A request header.
    Header(String),
    /// A constant written in the catalog.
    Value(String),
}

impl Field {
    fn needs_body(&self) -> bool {
        matches!(self, Field::Json(_) | Field::Form(_))
    }

    fn describe(&self) -> String {
        match self {
            Field::Json(p) => format!("json {p}"),
            Field::Form(f) => format!("form {f}"),
            Field::Query(q) => format!("query {q}"),
            Field::Header(h) => format!("header {h}"),
            Field::Value(_) => "value".to_owned(),
        }
    }
}

/// How a payment amount is written in the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmountUnit {
    /// Decimal major units (`"487.00"` or `487` dollars → 48700 cents).
    #[default]
    Major,
    /// Integer minor units (`48700` cents).
    Minor,
}

/// The `type` of a catalog rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Payment,
    Email,
    Login,
    Llm,
    Web,
}

/// One `[[rule]]` as written in the catalog file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Option<String>,
    host: String,
    #[serde(default)]
    method: Option<String>,
    path: String,
    #[serde(rename = "type")]
    kind: RuleKind,
    amount: Option<Field>,
    #[serde(default)]
    amount_unit: AmountUnit,
    currency: Option<Field>,
    merchant: Option<Field>,
    #[serde(default)]
    recipients: Vec<Field>,
    subject: Option<Field>,
    credential: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LlmPriceFile {
    model: String,
    input_usd_per_mtok: String,
    output_usd_per_mtok: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    max_body_bytes: Option<usize>,
    #[serde(default = "yes")]
    builtin_llm: bool,
    #[serde(default)]
    rule: Vec<RuleFile>,
    #[serde(default)]
    llm_price: Vec<LlmPriceFile>,
}

fn yes() -> bool {
    true
}

/// A host pattern: an exact name, or `*.example.com` for its subdomains only.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    Subdomains(String),
}

impl HostPattern {
    fn parse(s: &str) -> Result<Self, String> {
        let s = normalize_host(s);
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!("bad host pattern {s:?}"));
            }
            return Ok(HostPattern::Subdomains(rest.to_owned()));
        }
        if s.is_empty() || s.contains('*') {
            return Err(format!("bad host pattern {s:?}"));
        }
        Ok(HostPattern::Exact(s))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => host == h,
            HostPattern::Subdomains(base) => host
                .strip_suffix(base.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

/// Lower-cases a host and drops a trailing dot and any `:port`.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        // IPv6 literal: keep the brackets' content only.
        host.split(']')
            .next()
            .unwrap_or(host)
            .trim_start_matches('[')
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// A path pattern: literal segments, `*` for one segment, a final `**` for
/// any rest (including nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathPattern {
    segments: Vec<String>,
    rest: bool,
}

impl PathPattern {
    fn parse(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("path {s:?} must start with /"));
        }
        let mut segments: Vec<String> = normalize_path(s);
        let rest = segments.last().is_some_and(|l| l == "**");
        if rest {
            segments.pop();
        }
        if segments.iter().any(|seg| seg == "**") {
            return Err(format!("path {s:?}: ** only as the last segment"));
        }
        Ok(PathPattern { segments, rest })
    }

    fn matches(&self, segments: &[String]) -> bool {
        if segments.len() < self.segments.len()
            || (!self.rest && segments.len() != self.segments.len())
        {
            return false;
        }
        self.segments
            .iter()
            .zip(segments)
            .all(|(p, s)| p == "*" || p == s)
    }
}

/// Splits a request path into the segments a server might route on, erring
/// on the side of matching: percent-escapes decoded (`%2F` becomes a
/// separator), `.`/`..` resolved, empty segments and `;params` dropped,
/// lower-cased. A request that *might* reach a rule's endpoint is classified
/// by that rule, since `web` is the permissive class.
fn normalize_path(path: &str) -> Vec<String> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    // Decode twice: a double-encoded `%252F` must not hide a separator.
    let once = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let twice = percent_encoding::percent_decode_str(&once).decode_utf8_lossy();
    let mut out: Vec<String> = Vec::new();
    for seg in twice.split(['/', '\\']) {
        let seg = seg.split(';').next().unwrap_or("").trim();
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_lowercase()),
        }
    }
    out
}

/// What a rule does with a request, checked at load time.
#[derive(Debug, Clone)]
enum Extract {
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

/// One catalog rule, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    name: String,
    host: HostPattern,
    /// Upper-case; `None` matches any method.
    method: Option<String>,
    path: PathPattern,
    extract: Extract,
    credential: Option<String>,
}

impl Rule {
    /// The rule's name (from the file, else `host path`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether classifying needs the request body.
    pub fn needs_body(&self) -> bool {
        match &self.extract {
            Extract::Payment {
                amount,
                currency,
                merchant,
                ..
            } => {
                amount.needs_body()
                    || currency.as_ref().is_some_and(Field::needs_body)
                    || merchant.as_ref().is_some_and(Field::needs_body)
            }
            Extract::Email {
                recipients,
                subject,
            } => {
                recipients.iter().any(Field::needs_body)
                    || subject.as_ref().is_some_and(Field::needs_body)
            }
            // The model and token limit are read when present, but an LLM
            // call is classified (and budget-checked) without them.
            Extract::Llm => false,
            Extract::Login | Extract::Web => false,
        }
    }

    fn from_file(file: RuleFile) -> Result<Self, CatalogError> {
        let name = file
            .name
            .clone()
            .unwrap_or_else(|| format!("{} {}", file.host, file.path));
        let bad = |problem: String| CatalogError::Rule {
            rule: name.clone(),
            problem,
        };
        let host = HostPattern::parse(&file.host).map_err(bad)?;
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
        Ok(Rule {
            name,
            host,
            method,
            path,
            extract,
            credential: file.credential,
        })
    }

    fn matches(&self, methods: &[String], host: &str, segments: &[String]) -> bool {
        self.host.matches(host)
            && self
                .method
                .as_ref()
                .is_none_or(|m| methods.iter().any(|rm| rm == m))
            && self.path.matches(segments)
    }
}

/// Per-model prices for estimating an LLM call's cost, in micro-USD per
/// million tokens (so that whole numbers stay exact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmPrice {
    pub model: String,
    pub input_micro_usd_per_mtok: u64,
    pub output_micro_usd_per_mtok: u64,
}

/// A loaded service catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    rules: Vec<Rule>,
    max_body_bytes: usize,
    prices: Vec<LlmPrice>,
}

/// The request facts the catalog looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The request's host (HTTP Host / `:authority`, which the proxy has
    /// already checked against the TLS SNI).
    pub host: &'a str,
    /// Path and query as sent.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
}

/// The catalog rule (if any) a request falls under; say whether the body must
/// be read before [`Matched::classify`] can run.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'c> {
    rule: Option<&'c Rule>,
    max_body_bytes: usize,
    prices: &'c [LlmPrice],
}

/// The built-in LLM endpoints, matched on any host unless a catalog rule
/// matched first: OpenAI-style and Anthropic-style APIs.
const BUILTIN_LLM_PATHS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
];

impl Catalog {
    /// A catalog with only the built-in LLM rules.
    pub fn builtin() -> Self {
        Self::from_file(CatalogFile {
            max_body_bytes: None,
            builtin_llm: true,
            rule: Vec::new(),
            llm_price: Vec::new(),
        })
        .expect("the built-in rules are valid")
    }

    /// Parses a catalog from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, CatalogError> {
        Self::from_file(toml::from_str(text)?)
    }

    /// Reads and parses a catalog file.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    fn from_file(file: CatalogFile) -> Result<Self, CatalogError> {
        let mut rules = file
            .rule
            .into_iter()
            .map(Rule::from_file)
            .collect::<Result<Vec<_>, _>>()?;
        if file.builtin_llm {
            for path in BUILTIN_LLM_PATHS {
                rules.push(Rule::from_file(RuleFile {
                    name: Some(format!("built-in llm {path}")),
                    host: "*".into(),
                    method: Some("POST".into()),
                    path: path.into(),
                    kind: RuleKind::Llm,
                    amount: None,
                    amount_unit: AmountUnit::default(),
                    currency: None,
                    merchant: None,
                    recipients: Vec::new(),
                    subject: None,
                    credential: None,
                })?);
            }
        }
        let prices = file
            .llm_price
            .into_iter()
            .map(|p| {
                let parse = |s: &str| {
                    decimal_to_scaled(s, 6).ok_or_else(|| CatalogError::Rule {
                        rule: format!("llm_price {}", p.model),
                        problem: format!("bad price {s:?}"),
                    })
                };
                Ok(LlmPrice {
                    input_micro_usd_per_mtok: parse(&p.input_usd_per_mtok)?,
                    output_micro_usd_per_mtok: parse(&p.output_usd_per_mtok)?,
                    model: p.model,
                })
            })
            .collect::<Result<Vec<_>, CatalogError>>()?;
        let max_body_bytes = file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(CatalogError::Rule {
                rule: "max_body_bytes".into(),
                problem: "must be positive".into(),
            });
        }
        Ok(Catalog {
            rules,
            max_body_bytes,
            prices,
        })
    }

    /// The cap on body bytes read for classification.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The rules in match order (catalog rules first, then built-ins).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Finds the first rule a request falls under.
    pub fn match_request<'c>(&'c self, req: &RequestView<'_>) -> Matched<'c> {
        let host = normalize_host(req.host);
        let segments = normalize_path(req.path_and_query);
        let mut methods = vec![req.method.trim().to_ascii_uppercase()];
        for name in METHOD_OVERRIDE_HEADERS {
            for v in req.headers.get_all(name) {
                if let Ok(v) = v.to_str() {
                    methods.push(v.trim().to_ascii_uppercase());
                }
            }
        }
        Matched {
            rule: self
                .rules
                .iter()
                .find(|r| r.matches(&methods, &host, &segments)),
            max_body_bytes: self.max_body_bytes,
            prices: &self.prices,
        }
    }
}

impl<'c> Matched<'c> {
    /// The rule matched, if any (`None` means plain web access).
    pub fn rule(&self) -> Option<&'c Rule> {
        self.rule
    }

    /// Whether [`Matched::classify`] needs the body.
    pub fn needs_body(&self) -> bool {
        self.rule.is_some_and(Rule::needs_body)
    }

    /// Whether an LLM rule matched (its body is read when available, to
    /// estimate cost).
    pub fn wants_body(&self) -> bool {
        self.needs_body() || self.rule.is_some_and(|r| matches!(r.extract, Extract::Llm))
    }

    /// The body cap in force.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Builds the action. `body` is the request body as read, `None` when it
    /// was not read; `complete` says whether it is the whole body (false when
    /// the cap cut it).
    pub fn classify(
        &self,
        req: &RequestView<'_>,
        body: Option<&[u8]>,
        complete: bool,
    ) -> Result<Action, ClassifyError> {
        let host = normalize_host(req.host);
        let path = req
            .path_and_query
            .split(['?', '#'])
            .next()
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        let mut action = Action {
            kind: ActionType::Web,
            method: req.method.to_ascii_uppercase(),
            host,
            path,
            amount_cents: None,
            currency: None,
            merchant: None,
            recipients: Vec::new(),
            subject: None,
            credential: None,
            cost_micro_usd: None,
        };
        let Some(rule) = self.rule else {
            return Ok(action);
        };
        action.credential = rule.credential.clone();
        if rule.needs_body() {
            if !complete {
                return Err(ClassifyError::BodyTooLarge {
                    limit: self.max_body_bytes,
                });
            }
            if let Some(enc) = req.headers.get(http::header::CONTENT_ENCODING) {
                let enc = enc.to_str().unwrap_or("?").trim().to_ascii_lowercase();
                if enc != "identity" {
                    return Err(ClassifyError::BodyEncoded(enc));
                }
            }
        }
        let src = Sources {
            req,
            body: body.unwrap_or(&[]),
        };
        match &rule.extract {
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
                    .map(|f| src.scalar(f).map(|m| normalize_host(&m)))
                    .transpose()?;
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
                    action.cost_micro_usd = body.and_then(|b| estimate_llm_cost(b, self.prices));
                }
            }
        }
        Ok(action)
    }
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

/// Parses a non-negative decimal literal (`487`, `487.5`, `4.875e2`) exactly
/// into an integer scaled by `10^scale`. Anything not exactly representable
/// (a third decimal for cents, a sign, spaces, thousands separators, overflow)
/// is `None`: the proxy never rounds money.
pub fn decimal_to_scaled(text: &str, scale: u32) -> Option<u64> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => {
            let exp = &text[i + 1..];
            let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if exp_digits.is_empty() || !exp_digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exp: i64 = exp.parse().ok()?;
            (&text[..i], exp)
        }
        None => (text, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || (mantissa.contains('.') && frac_part.is_empty())
    {
        return None;
    }
    // value = digits × 10^(exponent − frac_len); scaled = that × 10^scale.
    let digits = format!("{int_part}{frac_part}");
    let shift = exponent
        .checked_add(i64::from(scale))
        .and_then(|e| e.checked_sub(i64::try_from(frac_part.len()).ok()?))?;
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    let (kept, dropped) = if shift >= 0 {
        (digits, "")
    } else {
        let cut = usize::try_from(-shift).ok()?;
        if cut >= digits.len() {
            ("", digits)
        } else {
            digits.split_at(digits.len() - cut)
        }
    };
    if dropped.bytes().any(|b| b != b'0') {
        return None;
    }
    let mut value: u64 = if kept.is_empty() {
        0
    } else {
        kept.parse().ok()?
    };
    if shift > 0 {
        let pow = 10u64.checked_pow(u32::try_from(shift).ok()?);
        value = pow.and_then(|p| value.checked_mul(p))?;
    }
    Some(value)
}

/// A conservative cost estimate for an LLM request: input tokens counted as
/// one per 4 body bytes (rounded up), output as the request's token limit.
/// `None` when the model has no price or no token limit is given.
fn estimate_llm_cost(body: &[u8], prices: &[LlmPrice]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let model = match lookup(text, "/model").ok()?? {
        JsonLeaf::String(m) => m,
        _ => return None,
    };
    let price = prices.iter().find(|p| p.model == model)?;
    let mut max_out = None;
    for ptr in [
        "/max_tokens",
        "/max_completion_tokens",
        "/max_output_tokens",
    ] {
        if let Ok(Some(JsonLeaf::Number(n))) = lookup(text, ptr) {
            max_out = decimal_to_scaled(&n, 0);
            break;
        }
    }
    let input_tokens = u64::try_from(body.len().div_ceil(4)).ok()?;
    let micro = |tokens: u64, per_mtok: u64| {
        u128::from(tokens)
            .checked_mul(u128::from(per_mtok))
            .map(|v| v.div_ceil(1_000_000))
    };
    let total = micro(input_tokens, price.input_micro_usd_per_mtok)?
        .checked_add(micro(max_out?, price.output_micro_usd_per_mtok)?)?;
    u64::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLIGHT: &str = include_str!("../../../examples/flight-booking/catalog.toml");

    fn view<'a>(
        method: &'a str,
        host: &'a str,
        path: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method,
            host,
            path_and_query: path,
            headers,
        }
    }

    fn classify(
        cat: &Catalog,
        method: &str,
        host: &str,
        path: &str,
        body: &str,
    ) -> Result<Action, ClassifyError> {
        let headers = HeaderMap::new();
        let v = view(method, host, path, &headers);
        cat.match_request(&v)
            .classify(&v, Some(body.as_bytes()), true)
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal_to_scaled("487", 2), Some(48700));
        assert_eq!(decimal_to_scaled("487.00", 2), Some(48700));
        assert_eq!(decimal_to_scaled("487.5", 2), Some(48750));
        assert_eq!(decimal_to_scaled("0.07", 2), Some(7));
        assert_eq!(decimal_to_scaled("4.875e2", 2), Some(48750));
        assert_eq!(decimal_to_scaled("48750E-2", 2), Some(48750));
        assert_eq!(decimal_to_scaled("487.000", 2), Some(48700));
        assert_eq!(decimal_to_scaled("0", 2), Some(0));
        assert_eq!(decimal_to_scaled("600.01", 2), Some(60001));
        for bad in [
            "487.001",
            "-1",
            "+1",
            " 1",
            "1,000",
            "",
            ".5",
            "5.",
            "1e",
            "0x10",
            "1.2.3",
            "NaN",
            "4.87501e2",
            "99999999999999999999",
            "1e400",
        ] {
            assert_eq!(decimal_to_scaled(bad, 2), None, "{bad:?}");
        }
        assert_eq!(decimal_to_scaled("48700", 0), Some(48700));
        assert_eq!(decimal_to_scaled("487.5", 0), None);
        assert_eq!(decimal_to_scaled("18446744073709551615", 0), Some(u64::MAX));
        assert_eq!(decimal_to_scaled("18446744073709551616", 0), None);
    }

    #[test]
    fn flight_catalog_classifies_purchase_login_email_and_web() {
        let cat = Catalog::from_toml(FLIGHT).expect("example catalog parses");
        let a = classify(
            &cat,
            "POST",
            "united.com",
            "/api/booking/purchase",
            r#"{"flight":"UA 123","total":"487.00","currency":"usd"}"#,
        )
        .expect("purchase classifies");
        assert_eq!(a.kind, ActionType::Payment);
        assert_eq!(a.amount_cents, Some(48700));
        assert_eq!(a.currency.as_deref(), Some("USD"));
        assert_eq!(a.merchant.as_deref(), Some("united.com"));
        // A JSON number works too, exactly.
        let a = classify(
            &cat,
            "POST",
            "united.com",
            "/api/booking/purchase",
            r#"{"total":700.10,"currency":"USD"}"#,
        )
        .expect("numeric total");
        assert_eq!(a.amount_cents, Some(70010));

        let a = classify(
            &cat,
            "POST",
            "united.com",
            "/api/auth/login",
            r#"{"user":"a","password":"ocs_x"}"#,
        )
        .expect("login classifies");
        assert_eq!(a.kind, ActionType::Login);
        assert_eq!(a.credential.as_deref(), Some("united_login"));

        let a = classify(
            &cat,
            "POST",
            "api.mail.example",
            "/v1/send",
            r#"{"to":["me@example.com"],"cc":"x@y.z, w@v.u","subject":"Your flight confirmation"}"#,
        )
        .expect("email classifies");
        assert_eq!(a.kind, ActionType::Email);
        assert_eq!(a.recipients, vec!["me@example.com", "x@y.z", "w@v.u"]);
        assert_eq!(a.subject.as_deref(), Some("Your flight confirmation"));

        let a = classify(
            &cat,
            "GET",
            "google.com",
            "/travel/flights/search?q=SFO",
            "",
        )
        .expect("web");
        assert_eq!(a.kind, ActionType::Web);
        assert_eq!(a.path, "/travel/flights/search");
    }

    #[test]
    fn purchase_path_tricks_still_match_the_payment_rule() {
        let cat = Catalog::from_toml(FLIGHT).expect("example catalog parses");
        let body = r#"{"total":"1.00","currency":"USD"}"#;
        for path in [
            "/api/booking/purchase",
            "/api/booking/purchase/",
            "//api//booking/purchase",
            "/API/Booking/Purchase",
            "/api/booking/%70urchase",
            "/api/booking%2Fpurchase",
            "/api/booking%252Fpurchase",
            "/api/x/../booking/./purchase",
            "/api/booking/purchase;jsessionid=1",
            "/api/booking/purchase?x=1",
        ] {
            let a = classify(&cat, "POST", "United.COM.", path, body).expect(path);
            assert_eq!(a.kind, ActionType::Payment, "{path}");
        }
        // Method override headers count too.
        let mut headers = HeaderMap::new();
        headers.insert("x-http-method-override", "POST".parse().expect("valid"));
        let v = view("GET", "united.com", "/api/booking/purchase", &headers);
        assert!(cat.match_request(&v).needs_body());
        // Another host with the same path is not united's purchase.
        let a = classify(
            &cat,
            "POST",
            "evilunited.com",
            "/api/booking/purchase",
            body,
        )
        .expect("web");
        assert_eq!(a.kind, ActionType::Web);
    }

    #[test]
    fn unreadable_payment_bodies_block_instead_of_guessing() {
        let cat = Catalog::from_toml(FLIGHT).expect("example catalog parses");
        let p = "/api/booking/purchase";
        assert_eq!(
            classify(&cat, "POST", "united.com", p, r#"{"currency":"USD"}"#),
            Err(ClassifyError::MissingField("json /total".into()))
        );
        assert_eq!(
            classify(
                &cat,
                "POST",
                "united.com",
                p,
                r#"{"total":"1.00","total":"900.00","currency":"USD"}"#
            ),
            Err(ClassifyError::DuplicateField("/total".into()))
        );
        assert_eq!(
            classify(
                &cat,
                "POST",
                "united.com",
                p,
                r#"{"total":"1.005","currency":"USD"}"#
            ),
            Err(ClassifyError::BadAmount("1.005".into()))
        );
        assert_eq!(
            classify(&cat, "POST", "united.com", p, r#"{"total":"1.00""#),
            Err(ClassifyError::BadJson)
        );
        assert_eq!(
            classify(&cat, "POST", "united.com", p, "total=1.00"),
            Err(ClassifyError::BadJson)
        );
        let headers = HeaderMap::new();
        let v = view("POST", "united.com", p, &headers);
        let m = cat.match_request(&v);
        assert!(m.needs_body());
        assert_eq!(
            m.classify(&v, Some(b"{\"total\":"), false),
            Err(ClassifyError::BodyTooLarge {
                limit: DEFAULT_MAX_BODY_BYTES
            })
        );
        let mut gz = HeaderMap::new();
        gz.insert("content-encoding", "gzip".parse().expect("valid"));
        let v = view("POST", "united.com", p, &gz);
        assert_eq!(
            cat.match_request(&v).classify(&v, Some(b"{}"), true),
            Err(ClassifyError::BodyEncoded("gzip".into()))
        );
        // An email with no readable recipient is blocked, not sent unchecked.
        assert_eq!(
            classify(
                &cat,
                "POST",
                "api.mail.example",
                "/v1/send",
                r#"{"subject":"hi"}"#
            ),
            Err(ClassifyError::NoRecipients)
        );
    }

    #[test]
    fn form_query_header_and_minor_units() {
        let cat = Catalog::from_toml(
            r#"
            max_body_bytes = 1024
            [[rule]]
            host = "*.shop.example"
            method = "post"
            path = "/pay/*/go/**"
            type = "payment"
            amount = { form = "amount_cents" }
            amount_unit = "minor"
            currency = { query = "cur" }
            merchant = { header = "x-merchant" }
            "#,
        )
        .expect("parses");
        assert_eq!(cat.max_body_bytes(), 1024);
        let mut headers = HeaderMap::new();
        headers.insert("x-merchant", "Shop.Example".parse().expect("valid"));
        let v = view(
            "POST",
            "a.shop.example",
            "/pay/123/go/now/please?cur=eur",
            &headers,
        );
        let a = cat
            .match_request(&v)
            .classify(&v, Some(b"item=1&amount_cents=1999"), true)
            .expect("classifies");
        assert_eq!(
            (a.amount_cents, a.currency.as_deref(), a.merchant.as_deref()),
            (Some(1999), Some("EUR"), Some("shop.example"))
        );
        // `*.shop.example` does not match the bare domain or a lookalike.
        for host in ["shop.example", "evilshop.example", "shop.example.evil"] {
            let v = view("POST", host, "/pay/1/go", &headers);
            assert!(cat.match_request(&v).rule().is_none(), "{host}");
        }
        let v = view("POST", "a.shop.example", "/pay/go", &headers);
        assert!(cat.match_request(&v).rule().is_none());
    }

    #[test]
    fn bad_catalogs_are_refused() {
        for (text, why) in [
            (
                "[[rule]]\nhost='a'\npath='/x'\ntype='payment'\n",
                "needs `amount`",
            ),
            (
                "[[rule]]\nhost='a'\npath='/x'\ntype='email'\n",
                "needs `recipients`",
            ),
            (
                "[[rule]]\nhost='a'\npath='/x'\ntype='login'\n",
                "needs `credential`",
            ),
            (
                "[[rule]]\nhost='a'\npath='x'\ntype='web'\n",
                "must start with /",
            ),
            (
                "[[rule]]\nhost='a'\npath='/x'\ntype='web'\namount={json='/a'}\n",
                "does not apply",
            ),
            ("[[rule]]\nhost='a*'\npath='/x'\ntype='web'\n", "bad host"),
            ("[[rule]]\nhost='a'\npath='/**/x'\ntype='web'\n", "** only"),
            (
                "[[rule]]\nhost='a'\npath='/x'\ntype='web'\nbogus=1\n",
                "unknown field",
            ),
            ("max_body_bytes = 0\n", "positive"),
        ] {
            let err = Catalog::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn builtin_llm_endpoints_and_cost_estimate() {
        let cat = Catalog::from_toml(
            r#"
            [[llm_price]]
            model = "gpt-test"
            input_usd_per_mtok = "2.50"
            output_usd_per_mtok = "10"
            "#,
        )
        .expect("parses");
        let body = r#"{"model":"gpt-test","max_tokens":1000,"messages":[]}"#;
        let a =
            classify(&cat, "POST", "api.openai.com", "/v1/chat/completions", body).expect("llm");
        assert_eq!(a.kind, ActionType::Llm);
        // input: ceil(52/4)=13 tokens × 2.5 µ$ = 32.5 → 33; output: 1000 × 10 µ$ = 10000.
        assert_eq!(body.len(), 52);
        assert_eq!(a.cost_micro_usd, Some(10_033));
        let a = classify(
            &cat,
            "POST",
            "api.anthropic.com",
            "/v1/messages",
            r#"{"model":"other"}"#,
        )
        .expect("llm");
        assert_eq!((a.kind, a.cost_micro_usd), (ActionType::Llm, None));
        let a = classify(&cat, "GET", "api.anthropic.com", "/v1/messages", "").expect("web");
        assert_eq!(a.kind, ActionType::Web);
        let off = Catalog::from_toml("builtin_llm = false").expect("parses");
        let a =
            classify(&off, "POST", "api.openai.com", "/v1/chat/completions", body).expect("web");
        assert_eq!(a.kind, ActionType::Web);
    }
}
