//! The catalog file as written (TOML, `docs/catalog.md`): rules, where each
//! fact of a request is read from, and LLM prices. Checked when a
//! [`super::Catalog`] is built from it.

use serde::Deserialize;

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
    pub(super) fn needs_body(&self) -> bool {
        matches!(self, Field::Json(_) | Field::Form(_))
    }

    pub(super) fn describe(&self) -> String {
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
pub(super) struct RuleFile {
    pub name: Option<String>,
    pub host: String,
    #[serde(default)]
    pub method: Option<String>,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: RuleKind,
    pub amount: Option<Field>,
    #[serde(default)]
    pub amount_unit: AmountUnit,
    pub currency: Option<Field>,
    pub merchant: Option<Field>,
    #[serde(default)]
    pub recipients: Vec<Field>,
    pub subject: Option<Field>,
    pub credential: Option<String>,
    /// Where in a matched request the `credential`'s placeholder goes (the
    /// one place it is substituted by default; `docs/credentials.md`).
    #[serde(default)]
    pub credential_field: Option<Field>,
}

/// One `[[llm_price]]`: USD per million tokens, as decimal strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LlmPriceFile {
    pub model: String,
    pub input_usd_per_mtok: String,
    pub output_usd_per_mtok: String,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CatalogFile {
    pub max_body_bytes: Option<usize>,
    pub max_whole_body_bytes: Option<usize>,
    /// The older name of `max_whole_body_bytes` (when only LLM calls were
    /// read whole): still read, so existing catalogs load.
    pub max_llm_body_bytes: Option<usize>,
    #[serde(default = "yes")]
    pub builtin_llm: bool,
    #[serde(default)]
    pub rule: Vec<RuleFile>,
    #[serde(default)]
    pub llm_price: Vec<LlmPriceFile>,
}

fn yes() -> bool {
    true
}
