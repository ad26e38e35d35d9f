//! Per-model LLM prices as the proxy side uses them: a price snapshot for
//! a model, with the hash of the card it came from. This card is built from
//! the catalog's `[[llm_price]]` entries (input and output prices only) and
//! has no built-in prices; the operator's `rates.toml` replaces it.

use receipts::{ModelPrice, RateSnapshot};

use crate::catalog::LlmPrice;

/// The prices a session's LLM calls are charged at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCard {
    /// Sorted by model, one entry per model.
    entries: Vec<ModelPrice>,
    sha256: String,
}

impl Default for RateCard {
    fn default() -> Self {
        RateCard::from_entries(Vec::new())
    }
}

impl RateCard {
    /// The card with no prices of its own.
    pub fn builtin() -> RateCard {
        RateCard::default()
    }

    fn from_entries(mut entries: Vec<ModelPrice>) -> RateCard {
        entries.sort_by(|a, b| a.model.cmp(&b.model));
        entries.dedup_by(|a, b| a.model == b.model);
        let canonical = serde_json::to_vec(&entries).expect("prices serialize");
        RateCard {
            sha256: receipts::sha256_hex(&canonical),
            entries,
        }
    }

    /// This card with the catalog's `[[llm_price]]` entries added (an
    /// entry of the card wins over one for the same model); the strings are
    /// warnings for the operator.
    pub fn with_legacy_prices(self, legacy: &[LlmPrice]) -> (RateCard, Vec<String>) {
        let mut entries = self.entries;
        let mut warnings = Vec::new();
        for p in legacy {
            if entries.iter().any(|e| e.model == p.model) {
                continue;
            }
            warnings.push(format!(
                "catalog [[llm_price]] for {} is deprecated: put LLM prices in the rate card",
                p.model
            ));
            entries.push(ModelPrice {
                model: p.model.clone(),
                input: p.input_micro_usd_per_mtok,
                cached_input: p.input_micro_usd_per_mtok,
                cache_write_5m: p.input_micro_usd_per_mtok,
                cache_write_1h: p.input_micro_usd_per_mtok,
                output: p.output_micro_usd_per_mtok,
                per_request: 0,
            });
        }
        (RateCard::from_entries(entries), warnings)
    }

    /// The prices for `model` (exact name), with the card's hash.
    pub fn price_for(&self, model: &str) -> Option<RateSnapshot> {
        self.entries
            .binary_search_by(|e| e.model.as_str().cmp(model))
            .ok()
            .map(|i| RateSnapshot {
                card_sha256: self.sha256.clone(),
                price: self.entries[i].clone(),
            })
    }

    /// Hex SHA-256 of the card's canonical bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_prices_become_entries_and_change_the_hash() {
        let empty = RateCard::builtin();
        assert_eq!(empty.price_for("gpt-test"), None);
        let (card, warnings) = empty.clone().with_legacy_prices(&[LlmPrice {
            model: "gpt-test".into(),
            input_micro_usd_per_mtok: 2_500_000,
            output_micro_usd_per_mtok: 10_000_000,
        }]);
        assert_eq!(warnings.len(), 1);
        let snap = card.price_for("gpt-test").expect("priced");
        assert_eq!(
            (snap.price.input, snap.price.output),
            (2_500_000, 10_000_000)
        );
        assert_eq!(snap.card_sha256, card.sha256());
        assert_ne!(card.sha256(), empty.sha256());
        assert_eq!(card.price_for("gpt-test-2"), None);
    }
}
