//! The usage record of one metered LLM call and the cost formula. Both live
//! here, beside the receipt format, so the offline verifier recomputes every
//! cost from a usage receipt's own snapshot without the enforcing crate.

use serde::{Deserialize, Serialize};

/// Tokens of one call by kind, normalized across providers.
///
/// `input` is the uncached input that is neither read from nor written to a
/// prompt cache (OpenAI: `prompt_tokens − cached_tokens`; Anthropic:
/// `input_tokens` as reported, which already excludes both).
/// `output` includes reasoning tokens; `reasoning` is informational, a
/// subset of `output`, and is not priced separately.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTokens {
    pub input: u64,
    /// Input read from a prompt cache.
    pub cached_input: u64,
    /// Input written to a prompt cache kept 5 minutes (Anthropic).
    pub cache_write_5m: u64,
    /// Input written to a prompt cache kept 1 hour (Anthropic).
    pub cache_write_1h: u64,
    pub output: u64,
    /// Of `output`, the reasoning tokens.
    pub reasoning: u64,
}

impl UsageTokens {
    /// Every token the provider billed: input of each kind (uncached,
    /// cache reads, cache writes) and output (reasoning is part of it).
    /// What a tenant's `llm_tokens_per_day` counts; the usage report's
    /// input and output columns (`src/usage/report.rs`) add up to it.
    pub fn total(&self) -> u64 {
        self.input
            .saturating_add(self.cached_input)
            .saturating_add(self.cache_write_5m)
            .saturating_add(self.cache_write_1h)
            .saturating_add(self.output)
    }
}

/// One model's prices: micro-USD per million tokens of each kind, and
/// micro-USD per request. Integers, so costs are exact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// The model name the price applies to (as the rate card names it).
    pub model: String,
    pub input: u64,
    pub cached_input: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub output: u64,
    /// Micro-USD charged once per request.
    pub per_request: u64,
}

/// The prices a cost was computed with, and which rate card they came from:
/// a usage receipt carries it, so changing the card never changes history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSnapshot {
    /// Hex SHA-256 of the rate card's canonical bytes.
    pub card_sha256: String,
    pub price: ModelPrice,
}

/// What one metered LLM call used and cost (receipt kind `usage`), written
/// when its response ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Seq of the allowed `llm` decision receipt this call went out under.
    pub decision_seq: u64,
    /// The provider's host.
    pub provider: String,
    /// The API shape: `openai.chat`, `openai.responses`, `openai.embeddings`
    /// or `anthropic.messages`.
    pub api: String,
    pub model: String,
    /// The provider's id for the response, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    pub tokens: UsageTokens,
    pub rates: RateSnapshot,
    /// `cost_micro_usd(tokens, rates.price)`, or the reservation when
    /// `estimated`.
    pub cost_micro_usd: u64,
    /// What was reserved against the budget before the call left.
    pub reserved_micro_usd: u64,
    /// The provider reported no usage (stream cut, client gone): tokens are
    /// zero and the cost is the reservation.
    pub estimated: bool,
}

/// The session's LLM spend reached a warning level of its budget (receipt
/// kind `budget_warning`), written once per level per session, after the
/// usage receipt whose settlement reached it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetWarningRecord {
    /// Seq of the `usage` receipt that brought the spend to the level.
    pub usage_seq: u64,
    /// The level, in percent of the budget (1 to 100).
    pub percent: u64,
    /// The session's LLM spend then, in micro-USD: every settled call's
    /// cost, plus the reservations of calls still in flight.
    pub spent_micro_usd: u64,
    /// The token's LLM budget, in micro-USD.
    pub budget_micro_usd: u64,
}

impl UsageRecord {
    /// What this record must have been charged: the reservation when
    /// estimated, otherwise the cost of its tokens at its snapshot's prices.
    pub fn expected_cost(&self) -> u64 {
        if self.estimated {
            self.reserved_micro_usd
        } else {
            cost_micro_usd(&self.tokens, &self.rates.price)
        }
    }
}

/// The cost of `tokens` at `price`, in micro-USD: the sum over kinds of
/// tokens × rate, divided by one million and rounded up once (on the whole
/// sum, in 128-bit arithmetic), plus the per-request fee. Saturates rather
/// than wraps. Reasoning tokens are part of output and not added again.
pub fn cost_micro_usd(tokens: &UsageTokens, price: &ModelPrice) -> u64 {
    let terms = [
        (tokens.input, price.input),
        (tokens.cached_input, price.cached_input),
        (tokens.cache_write_5m, price.cache_write_5m),
        (tokens.cache_write_1h, price.cache_write_1h),
        (tokens.output, price.output),
    ];
    let numerator = terms.iter().fold(0u128, |sum, &(n, rate)| {
        sum.saturating_add(u128::from(n).saturating_mul(u128::from(rate)))
    });
    let per_tokens = u64::try_from(numerator.div_ceil(1_000_000)).unwrap_or(u64::MAX);
    per_tokens.saturating_add(price.per_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> ModelPrice {
        ModelPrice {
            model: "m".into(),
            input: 2_500_000,
            cached_input: 1_250_000,
            cache_write_5m: 3_125_000,
            cache_write_1h: 5_000_000,
            output: 10_000_000,
            per_request: 0,
        }
    }

    #[test]
    fn one_rounding_on_the_whole_sum() {
        // 1 input token (2.5 µ$) and 1 cached (1.25 µ$): 3.75 → 4, not 3 + 2.
        let t = UsageTokens {
            input: 1,
            cached_input: 1,
            ..UsageTokens::default()
        };
        assert_eq!(cost_micro_usd(&t, &price()), 4);
        assert_eq!(cost_micro_usd(&UsageTokens::default(), &price()), 0);
    }

    #[test]
    fn reasoning_is_not_priced_twice_and_fees_are_added() {
        let t = UsageTokens {
            output: 100,
            reasoning: 60,
            ..UsageTokens::default()
        };
        let mut p = price();
        assert_eq!(cost_micro_usd(&t, &p), 1_000);
        p.per_request = 7;
        assert_eq!(cost_micro_usd(&t, &p), 1_007);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let t = UsageTokens {
            input: u64::MAX,
            output: u64::MAX,
            ..UsageTokens::default()
        };
        let p = ModelPrice {
            input: u64::MAX,
            output: u64::MAX,
            per_request: u64::MAX,
            ..price()
        };
        assert_eq!(cost_micro_usd(&t, &p), u64::MAX);
    }
}
