//! LLM calls: the built-in endpoint rules, and the catalog's deprecated
//! per-model prices (`[[llm_price]]`, read into the rate card; what a call
//! costs is metering's, `metering/plan.rs`).

use super::decimal::decimal_to_scaled;
use super::error::CatalogError;
use super::file::{AmountUnit, LlmPriceFile, RuleFile, RuleKind};

/// The built-in LLM endpoints, matched on any host unless a catalog rule
/// matched first: OpenAI-style and Anthropic-style APIs, under any prefix
/// (gateways mount them under their own: OpenRouter's `/api/v1/…`, Azure's
/// `/openai/deployments/<name>/chat/completions`). Metering reads a call's
/// shape from the same last segments (`metering/shapes.rs`); a call under
/// a prefix that was not an `llm` action would escape the `llm` grant and
/// the budget wherever the token allows web POSTs to the host.
const BUILTIN_LLM_PATHS: [&str; 5] = [
    "/**/chat/completions",
    "/**/v1/completions",
    "/**/v1/responses",
    "/**/v1/embeddings",
    "/**/v1/messages",
];

/// A catalog's `[[llm_price]]`: micro-USD per million tokens (so that whole
/// numbers stay exact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmPrice {
    pub model: String,
    pub input_micro_usd_per_mtok: u64,
    pub output_micro_usd_per_mtok: u64,
}

/// The built-in LLM rules, as if written at the end of the catalog file.
pub(super) fn builtin_rules() -> impl Iterator<Item = RuleFile> {
    BUILTIN_LLM_PATHS.into_iter().map(|path| RuleFile {
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
        credential_field: None,
    })
}

/// The file's `[[llm_price]]` entries, exactly.
pub(super) fn prices(file: Vec<LlmPriceFile>) -> Result<Vec<LlmPrice>, CatalogError> {
    file.into_iter()
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
        .collect()
}
