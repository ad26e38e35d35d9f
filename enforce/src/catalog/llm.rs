//! LLM calls: the built-in endpoint rules, per-model prices, and the cost
//! estimate an LLM call is charged before it leaves.

use super::decimal::decimal_to_scaled;
use super::error::CatalogError;
use super::file::{AmountUnit, LlmPriceFile, RuleFile, RuleKind};
use super::json::{lookup, JsonLeaf};

/// The built-in LLM endpoints, matched on any host unless a catalog rule
/// matched first: OpenAI-style and Anthropic-style APIs.
const BUILTIN_LLM_PATHS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
];

/// Per-model prices for estimating an LLM call's cost, in micro-USD per
/// million tokens (so that whole numbers stay exact).
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

/// A conservative cost estimate for an LLM request: input tokens counted as
/// one per 4 body bytes (rounded up), output as the request's token limit.
/// `None` when the model has no price or no token limit is given.
pub(super) fn estimate_llm_cost(body: &[u8], prices: &[LlmPrice]) -> Option<u64> {
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
