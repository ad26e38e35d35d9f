//! The usage record of one metered LLM call (a `usage` receipt) and the cost
//! formula, here so the offline verifier can recompute every cost from the
//! receipt alone, without the proxy or the rate card file.

use serde::{Deserialize, Serialize};

/// Tokens of one call by kind, normalized across providers.
///
/// `input` is uncached input that was neither read from nor written to a
/// cache (OpenAI: `prompt_tokens - cached_tokens`; Anthropic: `input_tokens`
/// as reported). `output` includes reasoning tokens; `reasoning` is the
/// reasoning share of `output`, kept for reports and never priced again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTokens {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub output: u64,
    pub reasoning: u64,
}

/// One model's prices: micro-USD per million tokens of each kind, and
/// micro-USD per request. Integers, so every cost is exact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// The rate card entry's name (for a dated variant matched by prefix,
    /// the entry, not the variant).
    pub model: String,
    pub input: u64,
    pub cached_input: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub output: u64,
    pub per_request: u64,
}

/// The prices a call was charged at, and which rate card they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSnapshot {
    /// Hex SHA-256 of the rate card's canonical bytes.
    pub card_sha256: String,
    pub price: ModelPrice,
}

/// A `usage` receipt's content: what one metered call used and cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// `seq` of the decision receipt that let the call out.
    pub decision_seq: u64,
    /// The provider's host.
    pub provider: String,
    /// `openai.chat`, `openai.responses`, `openai.embeddings` or `anthropic.messages`.
    pub api: String,
    /// The model the request named.
    pub model: String,
    /// The provider's id for the response, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    pub tokens: UsageTokens,
    pub rates: RateSnapshot,
    /// What the call was charged: [`cost_micro_usd`] of `tokens` at
    /// `rates.price`, or, when `estimated`, the reservation.
    pub cost_micro_usd: u64,
    /// The worst case reserved before the call left.
    pub reserved_micro_usd: u64,
    /// The provider reported no usage (a stream cut, a client gone): the
    /// tokens are zero and the call is charged its reservation.
    pub estimated: bool,
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

/// Micro-USD for `tokens` at `price`: one rounding, up, of the whole sum
/// (Σ tokens × rate per million, over the kinds; reasoning is part of output
/// and not added again), plus the per-request fee. Saturates rather than
/// wrapping.
pub fn cost_micro_usd(tokens: &UsageTokens, price: &ModelPrice) -> u64 {
    let numerator: u128 = [
        (tokens.input, price.input),
        (tokens.cached_input, price.cached_input),
        (tokens.cache_write_5m, price.cache_write_5m),
        (tokens.cache_write_1h, price.cache_write_1h),
        (tokens.output, price.output),
    ]
    .into_iter()
    .map(|(n, rate)| u128::from(n) * u128::from(rate))
    .fold(0u128, u128::saturating_add);
    let tokens_cost = u64::try_from(numerator.div_ceil(1_000_000)).unwrap_or(u64::MAX);
    tokens_cost.saturating_add(price.per_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> ModelPrice {
        ModelPrice {
            model: "m".into(),
            input: 3_000_000,
            cached_input: 300_000,
            cache_write_5m: 3_750_000,
            cache_write_1h: 6_000_000,
            output: 15_000_000,
            per_request: 0,
        }
    }

    #[test]
    fn one_rounding_up_over_the_whole_sum() {
        // 1 input token at $3/Mtok is 3 micro-USD exactly.
        let t = UsageTokens {
            input: 1,
            ..Default::default()
        };
        assert_eq!(cost_micro_usd(&t, &price()), 3);
        // 1 cached token is 0.3 micro-USD, 2 are 0.6: each rounds up to 1 alone,
        // the sum rounds once.
        let t = UsageTokens {
            cached_input: 1,
            ..Default::default()
        };
        assert_eq!(cost_micro_usd(&t, &price()), 1);
        // 1 cached (0.3) + 2 cache writes (7.5) = 7.8 → 8; rounding each kind
        // alone would charge 1 + 8 = 9.
        let t = UsageTokens {
            cached_input: 1,
            cache_write_5m: 2,
            ..Default::default()
        };
        assert_eq!(cost_micro_usd(&t, &price()), 8);
    }

    #[test]
    fn reasoning_is_not_charged_twice_and_fees_add() {
        let t = UsageTokens {
            output: 1000,
            reasoning: 800,
            ..Default::default()
        };
        let mut p = price();
        assert_eq!(cost_micro_usd(&t, &p), 15_000);
        p.per_request = 7;
        assert_eq!(cost_micro_usd(&t, &p), 15_007);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let t = UsageTokens {
            input: u64::MAX,
            output: u64::MAX,
            ..Default::default()
        };
        let mut p = price();
        p.per_request = u64::MAX;
        assert_eq!(cost_micro_usd(&t, &p), u64::MAX);
    }
}
