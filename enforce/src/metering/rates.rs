//! The rate card: what each model's tokens cost, owned by the operator
//! (`<home>/rates.toml`) rather than the session, read exactly (decimal
//! strings, never floats), with built-in defaults for well-known models, and
//! hashed over canonical bytes so every usage receipt can name the prices it
//! was charged at. Format and matching rules: `docs/metering.md`.

use std::collections::BTreeMap;
use std::path::Path;

use receipts::{cost_micro_usd, ModelPrice, RateSnapshot, UsageTokens};
use serde::Deserialize;

use crate::catalog::{decimal_to_scaled, LlmPrice};

/// The date the built-in prices were copied from the providers' price pages.
pub const BUILTIN_AS_OF: &str = "2025-11-30";

/// The built-in defaults, in the rate card's own format (USD per million
/// tokens; OpenAI has no cache-write charge, so its writes are priced as
/// input and never occur). Anthropic: 5-minute cache writes 1.25× input,
/// 1-hour writes 2×, cache reads 0.1×.
///
/// The tiers and windows were taken from the same pages at the same date
/// (openai.com/api/pricing, "Priority" tier; docs.anthropic.com pricing,
/// "Long context pricing"; the providers' model pages for context windows):
/// OpenAI's priority prices per model (flex is cheaper than standard, so it
/// is charged as standard); Claude Sonnet 4 and 4.5 bill a request whose
/// input (cache reads and writes included) passes 200k tokens at 6 / 22.50
/// USD per million, cache multipliers on top. Sonnet's window is 1M tokens
/// with Anthropic's `context-1m` beta header, which the plan does not read,
/// so the card states the largest.
const BUILTIN: &str = r#"
as_of = "2025-11-30"

[[model]]
name = "gpt-4o"
match = "prefix"
input = "2.50"
cached_input = "1.25"
output = "10.00"
context_window = 128000
priority = { input = "4.25", cached_input = "2.125", output = "17.00" }

# The first GPT-4o snapshot kept its launch prices (no cached-input price:
# cached tokens are charged as input); `gpt-4o`'s dated-variant match would
# price it at half.
[[model]]
name = "gpt-4o-2024-05-13"
input = "5.00"
output = "15.00"
context_window = 128000
priority = { input = "8.75", output = "26.25" }

[[model]]
name = "gpt-4o-mini"
match = "prefix"
input = "0.15"
cached_input = "0.075"
output = "0.60"
context_window = 128000
priority = { input = "0.25", cached_input = "0.125", output = "1.00" }

[[model]]
name = "gpt-4.1"
match = "prefix"
input = "2.00"
cached_input = "0.50"
output = "8.00"
context_window = 1047576
priority = { input = "3.50", cached_input = "0.875", output = "14.00" }

[[model]]
name = "gpt-4.1-mini"
match = "prefix"
input = "0.40"
cached_input = "0.10"
output = "1.60"
context_window = 1047576
priority = { input = "0.70", cached_input = "0.175", output = "2.80" }

[[model]]
name = "gpt-4.1-nano"
match = "prefix"
input = "0.10"
cached_input = "0.025"
output = "0.40"
context_window = 1047576
priority = { input = "0.20", cached_input = "0.05", output = "0.80" }

[[model]]
name = "gpt-5"
match = "prefix"
input = "1.25"
cached_input = "0.125"
output = "10.00"
context_window = 400000
priority = { input = "2.50", cached_input = "0.25", output = "20.00" }

[[model]]
name = "gpt-5-mini"
match = "prefix"
input = "0.25"
cached_input = "0.025"
output = "2.00"
context_window = 400000
priority = { input = "0.45", cached_input = "0.045", output = "3.60" }

[[model]]
name = "gpt-5-nano"
match = "prefix"
input = "0.05"
cached_input = "0.005"
output = "0.40"
context_window = 400000

[[model]]
name = "o1"
match = "prefix"
input = "15.00"
cached_input = "7.50"
output = "60.00"
context_window = 200000

[[model]]
name = "o3"
match = "prefix"
input = "2.00"
cached_input = "0.50"
output = "8.00"
context_window = 200000
priority = { input = "3.50", cached_input = "0.875", output = "14.00" }

[[model]]
name = "o3-mini"
match = "prefix"
input = "1.10"
cached_input = "0.55"
output = "4.40"
context_window = 200000

[[model]]
name = "o4-mini"
match = "prefix"
input = "1.10"
cached_input = "0.275"
output = "4.40"
context_window = 200000
priority = { input = "2.00", cached_input = "0.50", output = "8.00" }

[[model]]
name = "text-embedding-3-small"
input = "0.02"
output = "0"
context_window = 8191

[[model]]
name = "text-embedding-3-large"
input = "0.13"
output = "0"
context_window = 8191

[[model]]
name = "text-embedding-ada-002"
input = "0.10"
output = "0"
context_window = 8191

[[model]]
name = "claude-opus-4-5"
match = "prefix"
input = "5.00"
cached_input = "0.50"
cache_write_5m = "6.25"
cache_write_1h = "10.00"
output = "25.00"
context_window = 200000

[[model]]
name = "claude-opus-4-1"
match = "prefix"
input = "15.00"
cached_input = "1.50"
cache_write_5m = "18.75"
cache_write_1h = "30.00"
output = "75.00"
context_window = 200000

[[model]]
name = "claude-opus-4"
match = "prefix"
input = "15.00"
cached_input = "1.50"
cache_write_5m = "18.75"
cache_write_1h = "30.00"
output = "75.00"
context_window = 200000

[[model]]
name = "claude-sonnet-4-5"
match = "prefix"
input = "3.00"
cached_input = "0.30"
cache_write_5m = "3.75"
cache_write_1h = "6.00"
output = "15.00"
context_window = 1000000
long_context = { above_input_tokens = 200000, input = "6.00", cached_input = "0.60", cache_write_5m = "7.50", cache_write_1h = "12.00", output = "22.50" }

[[model]]
name = "claude-sonnet-4"
match = "prefix"
input = "3.00"
cached_input = "0.30"
cache_write_5m = "3.75"
cache_write_1h = "6.00"
output = "15.00"
context_window = 1000000
long_context = { above_input_tokens = 200000, input = "6.00", cached_input = "0.60", cache_write_5m = "7.50", cache_write_1h = "12.00", output = "22.50" }

[[model]]
name = "claude-3-7-sonnet"
match = "prefix"
input = "3.00"
cached_input = "0.30"
cache_write_5m = "3.75"
cache_write_1h = "6.00"
output = "15.00"
context_window = 200000

[[model]]
name = "claude-haiku-4-5"
match = "prefix"
input = "1.00"
cached_input = "0.10"
cache_write_5m = "1.25"
cache_write_1h = "2.00"
output = "5.00"
context_window = 200000

[[model]]
name = "claude-3-5-haiku"
match = "prefix"
input = "0.80"
cached_input = "0.08"
cache_write_5m = "1.00"
cache_write_1h = "1.60"
output = "4.00"
context_window = 200000
"#;

/// Why a rate card could not be read. Every variant names where.
#[derive(Debug, thiserror::Error)]
pub enum RateCardError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: model {model:?}: {problem}")]
    Entry {
        path: String,
        model: String,
        problem: String,
    },
}

/// How an entry's name is compared with the model a request names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelMatch {
    /// The request names exactly this model.
    #[default]
    Exact,
    /// The request names this model or a dated variant of it: the name,
    /// then `-YYYY-MM-DD` (`gpt-4o-2024-08-06`), `-YYYYMMDD`
    /// (`claude-sonnet-4-20250514`) or `-latest`. Never another model whose
    /// name merely starts the same (`o1` does not price `o1-pro`, nor
    /// `claude-opus-4` price `claude-opus-4-6`).
    Prefix,
}

/// One model's row of the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateEntry {
    pub matching: ModelMatch,
    /// Prices in micro-USD per million tokens (per request: micro-USD);
    /// `price.model` is the entry's name.
    pub price: ModelPrice,
    /// The most tokens a request's input may hold: what a request whose
    /// input is not all in its body is reserved for. `None`: unknown, so
    /// such a request cannot be reserved for.
    pub context_window: Option<u64>,
    /// The priority tier's prices: OpenAI's `"service_tier": "priority"`,
    /// Anthropic's Priority Tier (`usage.service_tier: "priority"`). Cache
    /// writes default to its input. `None`: a priority call to this model
    /// cannot be priced.
    pub priority: Option<ModelPrice>,
    /// Dearer prices for the whole request once its input passes a size.
    pub long_context: Option<LongContext>,
}

/// Prices for a whole request whose input tokens (every kind: plain,
/// cache reads, cache writes) are more than `above_input_tokens`
/// (Anthropic's long-context pricing; output is billed at them too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongContext {
    pub above_input_tokens: u64,
    pub price: ModelPrice,
}

/// The service tier a request asks for, as far as its price goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Standard prices (also flex, which costs less, and `auto`).
    Standard,
    /// OpenAI's priority processing, Anthropic's Priority Tier.
    Priority,
}

/// What a call to one model at one tier is charged at: its prices, the
/// long-context prices if any, its context window, and the card's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    pub card_sha256: String,
    pub base: ModelPrice,
    pub long_context: Option<LongContext>,
    pub context_window: Option<u64>,
}

impl Pricing {
    /// The snapshot a call that used `tokens` is charged at (its cost is
    /// `cost_micro_usd(tokens, snapshot.price)`, so receipts verify as
    /// before): the long-context prices once its input passes the threshold.
    pub fn snapshot_for(&self, tokens: &UsageTokens) -> RateSnapshot {
        let input = tokens
            .input
            .saturating_add(tokens.cached_input)
            .saturating_add(tokens.cache_write_5m)
            .saturating_add(tokens.cache_write_1h);
        let price = match &self.long_context {
            Some(long) if input > long.above_input_tokens => long.price.clone(),
            _ => self.base.clone(),
        };
        RateSnapshot {
            card_sha256: self.card_sha256.clone(),
            price,
        }
    }

    /// The cost of `tokens` and the snapshot it was taken at.
    pub fn cost(&self, tokens: &UsageTokens) -> (u64, RateSnapshot) {
        let snapshot = self.snapshot_for(tokens);
        (cost_micro_usd(tokens, &snapshot.price), snapshot)
    }

    /// Prices no lower, kind by kind, than any a call with at most
    /// `max_input` input tokens is charged at (for its worst case).
    pub fn bound_for(&self, max_input: u64) -> ModelPrice {
        match &self.long_context {
            Some(long) if max_input > long.above_input_tokens => dearer(&self.base, &long.price),
            _ => self.base.clone(),
        }
    }
}

/// Prices no lower, kind by kind, than either `a` or `b` (named as `b`).
pub(crate) fn dearer(a: &ModelPrice, b: &ModelPrice) -> ModelPrice {
    ModelPrice {
        model: b.model.clone(),
        input: a.input.max(b.input),
        cached_input: a.cached_input.max(b.cached_input),
        cache_write_5m: a.cache_write_5m.max(b.cache_write_5m),
        cache_write_1h: a.cache_write_1h.max(b.cache_write_1h),
        output: a.output.max(b.output),
        per_request: a.per_request.max(b.per_request),
    }
}

/// The operator's prices for LLM calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCard {
    /// By name; a name appears once.
    entries: BTreeMap<String, RateEntry>,
    /// The date the prices were taken (`as_of` in the file), if stated.
    as_of: Option<String>,
    /// Hex SHA-256 of [`RateCard::canonical_bytes`], computed once.
    sha256: String,
}

/// The file's schema.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CardFile {
    /// The date the prices were taken, for the reader (not checked).
    as_of: Option<String>,
    /// Start from the built-in defaults (the file's entries replace built-in
    /// ones of the same name); `false` starts from an empty card.
    #[serde(default = "yes")]
    builtin_defaults: bool,
    #[serde(default)]
    model: Vec<EntryFile>,
}

fn yes() -> bool {
    true
}

/// One `[[model]]`: USD per million tokens (per request: USD), as decimal strings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    name: String,
    #[serde(default, rename = "match")]
    matching: ModelMatch,
    input: toml::Value,
    /// Defaults to `input`: a cache read is never charged less than the
    /// card says unless the card says so.
    cached_input: Option<toml::Value>,
    /// Default to `input`; set them for providers that charge more to write
    /// a cache (Anthropic).
    cache_write_5m: Option<toml::Value>,
    cache_write_1h: Option<toml::Value>,
    output: toml::Value,
    per_request: Option<toml::Value>,
    /// Tokens; an integer.
    context_window: Option<u64>,
    priority: Option<TierFile>,
    long_context: Option<LongContextFile>,
}

/// `priority = { input, cached_input, cache_write_5m, cache_write_1h,
/// output }`: USD per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFile {
    input: toml::Value,
    /// These default to this tier's `input` (OpenAI has no cache writes;
    /// Anthropic's Priority Tier charges them more).
    cached_input: Option<toml::Value>,
    cache_write_5m: Option<toml::Value>,
    cache_write_1h: Option<toml::Value>,
    output: toml::Value,
}

/// `long_context = { above_input_tokens, input, ... }`: the prices of a
/// whole request whose input passes `above_input_tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongContextFile {
    above_input_tokens: u64,
    input: toml::Value,
    /// These default to this tier's `input`.
    cached_input: Option<toml::Value>,
    cache_write_5m: Option<toml::Value>,
    cache_write_1h: Option<toml::Value>,
    output: toml::Value,
}

impl RateCard {
    /// The built-in defaults (prices as of [`BUILTIN_AS_OF`]).
    pub fn builtin() -> RateCard {
        Self::from_toml_text(BUILTIN, "built-in rate card", false)
            .expect("the built-in rate card is valid")
    }

    /// An empty card: every model unpriced.
    pub fn empty() -> RateCard {
        Self::from_entries(BTreeMap::new(), None)
    }

    /// Parses a rate card file's text (`source` names it in errors). Unless
    /// the file says `builtin_defaults = false`, its entries extend and
    /// replace the built-in ones.
    pub fn from_toml(text: &str, source: &str) -> Result<RateCard, RateCardError> {
        Self::from_toml_text(text, source, true)
    }

    /// Reads `path`; a missing file is the built-in card.
    pub fn load(path: &Path) -> Result<RateCard, RateCardError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::builtin()),
            Err(source) => Err(RateCardError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn from_toml_text(
        text: &str,
        source: &str,
        may_extend_builtin: bool,
    ) -> Result<RateCard, RateCardError> {
        let file: CardFile = toml::from_str(text).map_err(|e| RateCardError::Syntax {
            path: source.to_owned(),
            message: e.to_string(),
        })?;
        let mut entries = if may_extend_builtin && file.builtin_defaults {
            Self::builtin().entries
        } else {
            BTreeMap::new()
        };
        let mut seen = std::collections::BTreeSet::new();
        for entry in file.model {
            let bad = |problem: String| RateCardError::Entry {
                path: source.to_owned(),
                model: entry.name.clone(),
                problem,
            };
            if entry.name.is_empty() {
                return Err(bad("the name is empty".into()));
            }
            if !seen.insert(entry.name.clone()) {
                return Err(bad("named twice in this file".into()));
            }
            let usd = |what: &str, v: &toml::Value| -> Result<u64, RateCardError> {
                let toml::Value::String(text) = v else {
                    return Err(bad(format!(
                        "{what} must be a decimal string such as \"0.15\" (TOML numbers are floating point and would round)"
                    )));
                };
                decimal_to_scaled(text, 6).ok_or_else(|| {
                    bad(format!(
                        "{what} {text:?} is not a non-negative decimal with at most 6 places after the dollar"
                    ))
                })
            };
            let input = usd("input", &entry.input)?;
            let or_input = |what: &str, v: &Option<toml::Value>| match v {
                Some(v) => usd(what, v),
                None => Ok(input),
            };
            let price = ModelPrice {
                model: entry.name.clone(),
                input,
                cached_input: or_input("cached_input", &entry.cached_input)?,
                cache_write_5m: or_input("cache_write_5m", &entry.cache_write_5m)?,
                cache_write_1h: or_input("cache_write_1h", &entry.cache_write_1h)?,
                output: usd("output", &entry.output)?,
                per_request: match &entry.per_request {
                    Some(v) => usd("per_request", v)?,
                    None => 0,
                },
            };
            let priority = match &entry.priority {
                Some(t) => {
                    let input = usd("priority.input", &t.input)?;
                    let or_input = |what: &str, v: &Option<toml::Value>| match v {
                        Some(v) => usd(what, v),
                        None => Ok(input),
                    };
                    Some(ModelPrice {
                        model: format!("{} priority", entry.name),
                        input,
                        cached_input: or_input("priority.cached_input", &t.cached_input)?,
                        cache_write_5m: or_input("priority.cache_write_5m", &t.cache_write_5m)?,
                        cache_write_1h: or_input("priority.cache_write_1h", &t.cache_write_1h)?,
                        output: usd("priority.output", &t.output)?,
                        per_request: price.per_request,
                    })
                }
                None => None,
            };
            let long_context = match &entry.long_context {
                Some(l) => {
                    let input = usd("long_context.input", &l.input)?;
                    let or_input = |what: &str, v: &Option<toml::Value>| match v {
                        Some(v) => usd(what, v),
                        None => Ok(input),
                    };
                    Some(LongContext {
                        above_input_tokens: l.above_input_tokens,
                        price: ModelPrice {
                            model: format!(
                                "{} above {} input tokens",
                                entry.name, l.above_input_tokens
                            ),
                            input,
                            cached_input: or_input("long_context.cached_input", &l.cached_input)?,
                            cache_write_5m: or_input(
                                "long_context.cache_write_5m",
                                &l.cache_write_5m,
                            )?,
                            cache_write_1h: or_input(
                                "long_context.cache_write_1h",
                                &l.cache_write_1h,
                            )?,
                            output: usd("long_context.output", &l.output)?,
                            per_request: price.per_request,
                        },
                    })
                }
                None => None,
            };
            entries.insert(
                entry.name.clone(),
                RateEntry {
                    matching: entry.matching,
                    price,
                    context_window: entry.context_window,
                    priority,
                    long_context,
                },
            );
        }
        Ok(Self::from_entries(entries, file.as_of))
    }

    fn from_entries(entries: BTreeMap<String, RateEntry>, as_of: Option<String>) -> RateCard {
        let mut card = RateCard {
            entries,
            as_of,
            sha256: String::new(),
        };
        card.sha256 = receipts::sha256_hex(&card.canonical_bytes());
        card
    }

    /// Adds the catalog's deprecated `[[llm_price]]` entries for models this
    /// card does not name (the card wins where both do). Legacy entries have
    /// only input and output prices: cached input and cache writes are
    /// priced as input. Returns one warning per entry, for the operator.
    pub fn with_legacy_prices(self, legacy: &[LlmPrice]) -> (RateCard, Vec<String>) {
        if legacy.is_empty() {
            return (self, Vec::new());
        }
        let mut entries = self.entries;
        let mut warnings = Vec::new();
        for p in legacy {
            if entries.contains_key(&p.model) {
                warnings.push(format!(
                    "the catalog's [[llm_price]] for {:?} is deprecated and ignored: the rate card prices that model (docs/metering.md)",
                    p.model
                ));
                continue;
            }
            warnings.push(format!(
                "the catalog's [[llm_price]] for {:?} is deprecated: move it to rates.toml as [[model]] (docs/metering.md)",
                p.model
            ));
            entries.insert(
                p.model.clone(),
                RateEntry {
                    matching: ModelMatch::Exact,
                    price: ModelPrice {
                        model: p.model.clone(),
                        input: p.input_micro_usd_per_mtok,
                        cached_input: p.input_micro_usd_per_mtok,
                        cache_write_5m: p.input_micro_usd_per_mtok,
                        cache_write_1h: p.input_micro_usd_per_mtok,
                        output: p.output_micro_usd_per_mtok,
                        per_request: 0,
                    },
                    context_window: None,
                    priority: None,
                    long_context: None,
                },
            );
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        (Self::from_entries(entries, self.as_of), warnings)
    }

    /// The prices for `model` with this card's hash: an exact entry first,
    /// else the longest `prefix` entry the model is a dated variant of.
    /// `None`: the model is unpriced.
    pub fn price_for(&self, model: &str) -> Option<RateSnapshot> {
        let entry = self.entry_for(model)?;
        Some(RateSnapshot {
            card_sha256: self.sha256.clone(),
            price: entry.price.clone(),
        })
    }

    /// `model`'s pricing at `tier`: `None` when the model is unpriced, or
    /// the card has no price for the tier (a priority call to a model with
    /// long-context prices is unpriced too: no provider states those).
    pub fn pricing_for(&self, model: &str, tier: Tier) -> Option<Pricing> {
        let entry = self.entry_for(model)?;
        let (base, long_context) = match tier {
            Tier::Standard => (entry.price.clone(), entry.long_context.clone()),
            Tier::Priority if entry.long_context.is_none() => (entry.priority.clone()?, None),
            Tier::Priority => return None,
        };
        Some(Pricing {
            card_sha256: self.sha256.clone(),
            base,
            long_context,
            context_window: entry.context_window,
        })
    }

    fn entry_for(&self, model: &str) -> Option<&RateEntry> {
        self.entries.get(model).or_else(|| {
            self.entries
                .values()
                .filter(|e| {
                    e.matching == ModelMatch::Prefix && is_variant_of(model, &e.price.model)
                })
                .max_by_key(|e| e.price.model.len())
        })
    }

    /// Hex SHA-256 of [`RateCard::canonical_bytes`].
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The date the prices were taken, when the file states it.
    pub fn as_of(&self) -> Option<&str> {
        self.as_of.as_deref()
    }

    /// Every entry, by name.
    pub fn entries(&self) -> impl Iterator<Item = &RateEntry> {
        self.entries.values()
    }

    /// The bytes the card's hash is taken over: one line per entry, sorted
    /// by name, each a JSON object with its members in a fixed order and
    /// prices as integers in micro-USD. Whitespace, comments, key order and
    /// how a price was spelled (`"2.5"`, `"2.50"`) do not change them; the
    /// `as_of` note does not either (it prices nothing).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = b"openclaw rate card v1\n".to_vec();
        for e in self.entries.values() {
            let p = &e.price;
            let name = serde_json::to_string(&p.model).expect("a string serializes");
            let matching = match e.matching {
                ModelMatch::Exact => "exact",
                ModelMatch::Prefix => "prefix",
            };
            let mut line = format!(
                "{{\"name\":{name},\"match\":\"{matching}\",\"input\":{},\"cached_input\":{},\"cache_write_5m\":{},\"cache_write_1h\":{},\"output\":{},\"per_request\":{}",
                p.input, p.cached_input, p.cache_write_5m, p.cache_write_1h, p.output, p.per_request
            );
            // Only when set, so a card without them hashes as it did.
            if let Some(w) = e.context_window {
                line.push_str(&format!(",\"context_window\":{w}"));
            }
            if let Some(t) = &e.priority {
                // Cache writes only when not the tier's input (the only
                // value they could have before they could be set): a card
                // without them hashes as before.
                let writes = if t.cache_write_5m == t.input && t.cache_write_1h == t.input {
                    String::new()
                } else {
                    format!(
                        ",\"cache_write_5m\":{},\"cache_write_1h\":{}",
                        t.cache_write_5m, t.cache_write_1h
                    )
                };
                line.push_str(&format!(
                    ",\"priority\":{{\"input\":{},\"cached_input\":{}{writes},\"output\":{}}}",
                    t.input, t.cached_input, t.output
                ));
            }
            if let Some(l) = &e.long_context {
                let t = &l.price;
                line.push_str(&format!(
                    ",\"long_context\":{{\"above_input_tokens\":{},\"input\":{},\"cached_input\":{},\"cache_write_5m\":{},\"cache_write_1h\":{},\"output\":{}}}",
                    l.above_input_tokens, t.input, t.cached_input, t.cache_write_5m, t.cache_write_1h, t.output
                ));
            }
            line.push_str("}\n");
            out.extend_from_slice(line.as_bytes());
        }
        out
    }
}

/// Whether `model` is `name` followed by a date stamp: `-YYYYMMDD`,
/// `-YYYY-MM-DD`, or `-latest`. Only a date: a version number after the name
/// (`claude-opus-4` → `claude-opus-4-6`) is another model, maybe another price.
fn is_variant_of(model: &str, name: &str) -> bool {
    let Some(rest) = model.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let dashed = || {
        let mut parts = rest.split('-');
        matches!(
            (parts.next(), parts.next(), parts.next(), parts.next()),
            (Some(y), Some(m), Some(d), None) if digits(y, 4) && digits(m, 2) && digits(d, 2)
        )
    };
    rest == "latest" || digits(rest, 8) || dashed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_card_states_its_date_and_prices_well_known_models() {
        let card = RateCard::builtin();
        assert_eq!(card.as_of(), Some(BUILTIN_AS_OF));
        let mini = card.price_for("gpt-4o-mini").expect("priced");
        assert_eq!(mini.price.input, 150_000);
        assert_eq!(mini.price.cached_input, 75_000);
        assert_eq!(mini.price.output, 600_000);
        assert_eq!(mini.card_sha256, card.sha256());
        assert_eq!(mini.card_sha256.len(), 64);
        let sonnet = card.price_for("claude-sonnet-4-20250514").expect("dated");
        assert_eq!(sonnet.price.model, "claude-sonnet-4");
        assert_eq!(sonnet.price.cache_write_5m, 3_750_000);
        assert_eq!(sonnet.price.cache_write_1h, 6_000_000);
        assert_eq!(sonnet.price.cached_input, 300_000);
        // A snapshot priced apart from its family is not read as a variant.
        let first = card
            .pricing_for("gpt-4o-2024-05-13", Tier::Standard)
            .expect("priced");
        assert_eq!(first.base.model, "gpt-4o-2024-05-13");
        assert_eq!(
            (first.base.input, first.base.output),
            (5_000_000, 15_000_000)
        );
        assert_eq!(first.base.cached_input, 5_000_000);
        let priority = card
            .pricing_for("gpt-4o-2024-05-13", Tier::Priority)
            .expect("priority");
        assert_eq!(
            (priority.base.input, priority.base.output),
            (8_750_000, 26_250_000)
        );
        let later = card.price_for("gpt-4o-2024-08-06").expect("dated");
        assert_eq!(
            (later.price.input, later.price.output),
            (2_500_000, 10_000_000)
        );
        for model in [
            "gpt-4o",
            "gpt-4.1-nano",
            "o3-mini",
            "o4-mini-2025-04-16",
            "text-embedding-3-small",
            "claude-opus-4-1-20250805",
            "claude-haiku-4-5-20251001",
            "claude-3-5-haiku-latest",
        ] {
            assert!(card.price_for(model).is_some(), "{model}");
        }
    }

    #[test]
    fn prefix_entries_price_dated_variants_only() {
        let card = RateCard::builtin();
        // The longest matching entry wins: the mini, not gpt-4o.
        let p = card.price_for("gpt-4o-mini-2024-07-18").expect("priced");
        assert_eq!(p.price.model, "gpt-4o-mini");
        let p = card.price_for("gpt-4o-2024-08-06").expect("priced");
        assert_eq!(p.price.model, "gpt-4o");
        // Another model that merely starts the same is not priced by it.
        for unpriced in [
            "o1-pro",
            "gpt-4o-audio-preview",
            "gpt-4o-",
            "gpt-4o-x1",
            "o3-pro-2025-06-10",
            "llama3",
            "claude-opus-4-6",
            "claude-sonnet-4-7-20270101",
            "gpt-4o-2024-08",
            "gpt-4o-202408061",
        ] {
            assert_eq!(card.price_for(unpriced), None, "{unpriced}");
        }
        // Exact entries do not match variants.
        let card = RateCard::from_toml(
            "builtin_defaults = false\n[[model]]\nname = \"m\"\ninput = \"1\"\noutput = \"2\"\n",
            "t",
        )
        .expect("card");
        assert!(card.price_for("m").is_some());
        assert_eq!(card.price_for("m-2025-01-01"), None);
    }

    #[test]
    fn prices_are_exact_decimals_and_floats_are_refused() {
        let card = RateCard::from_toml(
            r#"
builtin_defaults = false
[[model]]
name = "local-llama"
input = "0.000001"
output = "1e1"
per_request = "0.0025"
"#,
            "rates.toml",
        )
        .expect("card");
        let p = card.price_for("local-llama").expect("priced").price;
        assert_eq!(p.input, 1);
        assert_eq!(p.output, 10_000_000);
        assert_eq!(p.per_request, 2_500);
        // Unset cache prices are the input price.
        assert_eq!(
            (p.cached_input, p.cache_write_5m, p.cache_write_1h),
            (1, 1, 1)
        );

        for (bad, says) in [
            ("input = 0.15\noutput = \"1\"", "decimal string"),
            ("input = \"0.0000001\"\noutput = \"1\"", "at most 6 places"),
            ("input = \"-1\"\noutput = \"1\"", "non-negative"),
            ("input = \"1\"", "missing field `output`"),
            (
                "input = \"1\"\noutput = \"1\"\nmatch = \"glob\"",
                "unknown variant",
            ),
            (
                "input = \"1\"\noutput = \"1\"\ncolour = \"red\"",
                "unknown field",
            ),
        ] {
            let text = format!("[[model]]\nname = \"m\"\n{bad}\n");
            let err = RateCard::from_toml(&text, "rates.toml")
                .expect_err(bad)
                .to_string();
            assert!(
                err.contains(says) && err.starts_with("rates.toml"),
                "{bad}: {err}"
            );
        }
        let twice = "[[model]]\nname = \"m\"\ninput = \"1\"\noutput = \"1\"\n".repeat(2);
        let err = RateCard::from_toml(&twice, "r")
            .expect_err("twice")
            .to_string();
        assert!(err.contains("named twice"), "{err}");
    }

    #[test]
    fn the_hash_covers_prices_not_spelling() {
        let a = RateCard::from_toml(
            "[[model]]\nname = \"gpt-4o\"\ninput = \"2.5\"\noutput = \"10\"\n",
            "a",
        )
        .expect("a");
        let b = RateCard::from_toml(
            "# same prices, other spelling\nas_of = \"2026-01-01\"\n[[model]]\noutput = \"10.000\"\ninput = \"2.50\"\nname = \"gpt-4o\"\n",
            "b",
        )
        .expect("b");
        assert_eq!(a.sha256(), b.sha256());
        assert_eq!(a.canonical_bytes(), b.canonical_bytes());
        // The file's entry replaced the built-in one of the same name.
        let p = a.price_for("gpt-4o").expect("priced").price;
        assert_eq!(p.cached_input, 2_500_000);
        assert_ne!(a.sha256(), RateCard::builtin().sha256());
        let c = RateCard::from_toml(
            "[[model]]\nname = \"gpt-4o\"\ninput = \"2.5\"\noutput = \"10.000001\"\n",
            "c",
        )
        .expect("c");
        assert_ne!(a.sha256(), c.sha256());
        // The file extends the defaults.
        assert!(a.price_for("claude-sonnet-4").is_some());
        assert_eq!(RateCard::empty().price_for("gpt-4o"), None);
    }

    #[test]
    fn tiers_price_a_whole_call_and_a_card_without_them_hashes_as_before() {
        let card = RateCard::builtin();
        let p = card
            .pricing_for("gpt-4o-2024-08-06", Tier::Priority)
            .expect("priority");
        assert_eq!((p.base.input, p.base.output), (4_250_000, 17_000_000));
        assert_eq!(p.context_window, Some(128_000));
        // No priority price: unpriced at that tier.
        assert_eq!(card.pricing_for("o1", Tier::Priority), None);
        let sonnet = card
            .pricing_for("claude-sonnet-4-5-20250929", Tier::Standard)
            .expect("priced");
        let at = |input| UsageTokens {
            input,
            output: 1_000,
            ..UsageTokens::default()
        };
        assert_eq!(sonnet.cost(&at(200_000)).0, 600_000 + 15_000);
        assert_eq!(sonnet.cost(&at(200_001)).0, 1_200_006 + 22_500);
        // Cache reads count toward the threshold.
        let cached = UsageTokens {
            input: 1,
            cached_input: 200_000,
            ..UsageTokens::default()
        };
        assert_eq!(sonnet.snapshot_for(&cached).price.input, 6_000_000);
        assert_eq!(sonnet.bound_for(200_000).output, 15_000_000);
        assert_eq!(sonnet.bound_for(200_001).cache_write_1h, 12_000_000);
        // The optional members are hashed only when set.
        let plain = RateCard::from_toml(
            "builtin_defaults = false\n[[model]]\nname = \"m\"\ninput = \"1\"\noutput = \"2\"\n",
            "t",
        )
        .expect("card");
        assert_eq!(
            String::from_utf8(plain.canonical_bytes()).expect("utf8"),
            "openclaw rate card v1\n{\"name\":\"m\",\"match\":\"exact\",\"input\":1000000,\"cached_input\":1000000,\"cache_write_5m\":1000000,\"cache_write_1h\":1000000,\"output\":2000000,\"per_request\":0}\n"
        );
        let windowed = RateCard::from_toml(
            "builtin_defaults = false\n[[model]]\nname = \"m\"\ninput = \"1\"\noutput = \"2\"\ncontext_window = 8\n",
            "t",
        )
        .expect("card");
        assert_ne!(plain.sha256(), windowed.sha256());
    }

    /// A priority tier may state its own cache-write prices (Anthropic's
    /// Priority Tier charges writes more than reads and input); unset, they
    /// are the tier's input, and a card that leaves them so (or states the
    /// input) hashes as before they could be set.
    #[test]
    fn a_priority_tier_prices_cache_writes_and_hashes_them_only_when_they_differ() {
        let card = |priority: &str| {
            RateCard::from_toml(
                &format!(
                    "builtin_defaults = false\n[[model]]\nname = \"m\"\ninput = \"1\"\n\
                     output = \"2\"\npriority = {{ {priority} }}\n"
                ),
                "t",
            )
            .expect("card")
        };
        let before = card(r#"input = "3", output = "4""#);
        let stated =
            card(r#"input = "3", cache_write_5m = "3", cache_write_1h = "3", output = "4""#);
        let dearer =
            card(r#"input = "3", cache_write_5m = "3.75", cache_write_1h = "6", output = "4""#);
        assert_eq!(
            String::from_utf8(before.canonical_bytes()).expect("utf8"),
            "openclaw rate card v1\n{\"name\":\"m\",\"match\":\"exact\",\"input\":1000000,\"cached_input\":1000000,\"cache_write_5m\":1000000,\"cache_write_1h\":1000000,\"output\":2000000,\"per_request\":0,\"priority\":{\"input\":3000000,\"cached_input\":3000000,\"output\":4000000}}\n"
        );
        assert_eq!(before.sha256(), stated.sha256());
        assert_ne!(before.sha256(), dearer.sha256());
        let p = dearer
            .pricing_for("m", Tier::Priority)
            .expect("priced")
            .base;
        assert_eq!(
            (p.input, p.cache_write_5m, p.cache_write_1h),
            (3_000_000, 3_750_000, 6_000_000)
        );
        let p = before
            .pricing_for("m", Tier::Priority)
            .expect("priced")
            .base;
        assert_eq!((p.cache_write_5m, p.cache_write_1h), (3_000_000, 3_000_000));
    }

    #[test]
    fn missing_file_is_the_builtin_card() {
        let dir = tempfile::tempdir().expect("tempdir");
        let card = RateCard::load(&dir.path().join("rates.toml")).expect("builtin");
        assert_eq!(card, RateCard::builtin());
        std::fs::write(dir.path().join("rates.toml"), "[[model]]\nname = 1\n").expect("write");
        let err = RateCard::load(&dir.path().join("rates.toml")).expect_err("bad");
        assert!(err.to_string().contains("rates.toml"), "{err}");
    }

    #[test]
    fn legacy_catalog_prices_are_read_with_a_deprecation_warning() {
        let legacy = [
            LlmPrice {
                model: "house-model".into(),
                input_micro_usd_per_mtok: 1_000_000,
                output_micro_usd_per_mtok: 2_000_000,
            },
            LlmPrice {
                model: "gpt-4o".into(),
                input_micro_usd_per_mtok: 1,
                output_micro_usd_per_mtok: 1,
            },
        ];
        let before = RateCard::builtin();
        let (card, warnings) = before.clone().with_legacy_prices(&legacy);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("deprecated") && warnings[0].contains("rates.toml"));
        assert!(warnings[1].contains("ignored"));
        let p = card.price_for("house-model").expect("priced").price;
        assert_eq!(
            (p.input, p.cached_input, p.output),
            (1_000_000, 1_000_000, 2_000_000)
        );
        // The card wins where both price a model.
        assert_eq!(card.price_for("gpt-4o"), {
            let mut s = before.price_for("gpt-4o").expect("priced");
            s.card_sha256 = card.sha256().to_owned();
            Some(s)
        });
        // The hash covers the merged card.
        assert_ne!(card.sha256(), before.sha256());
        let (same, none) = before.clone().with_legacy_prices(&[]);
        assert_eq!((same, none.len()), (before, 0));
    }
}
