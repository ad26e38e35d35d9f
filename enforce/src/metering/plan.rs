//! Before an LLM call leaves: its worst-case cost (what is reserved against
//! the budget), and the request rewrites that make the bound hold and the
//! usage readable — an output limit when the request has none (or only a
//! `null` or 0 one), and `stream_options.include_usage` on a streamed Chat
//! request without it.
//!
//! The worst case is a true upper bound: every token of a tokenizer covers
//! at least one byte, so the input is at most the body's length in tokens,
//! priced at the dearest input rate (plain, cached or cache write); the
//! output is at most the request's largest limit (times `n` choices), priced
//! at the output rate. Input the body only points at (a previous response,
//! a conversation, a stored prompt, a file id, an image or document URL)
//! is bounded by the model's context window instead; a call whose cost the
//! card cannot bound (provider-executed tools, a tier it has no price for,
//! input by reference to a model of unknown window) gets no reservation and
//! a reason, and is refused under a budget. An OpenAI request that names no
//! tier (or `auto`) is served at the project's default tier, which may be
//! priority: it is reserved at the dearer of the standard and priority
//! prices.

use bytes::Bytes;
use receipts::{cost_micro_usd, ModelPrice, RateSnapshot, UsageTokens};
use serde::Deserialize;
use serde_json::Value;

use super::rates::{dearer, Pricing, RateCard, Tier};
use super::shapes::Api;

/// The operator's metering settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterSettings {
    /// The output limit the proxy sets on a request that has none (lowered
    /// to what the budget has left, when there is a budget).
    pub default_output_limit: u64,
    /// Percentages of the LLM budget at which a `budget_warning` receipt and
    /// event go out, once each (1 to 100; other values are ignored).
    pub warn_at_percent: Vec<u64>,
    /// How long a request body that must be read whole waits for one of
    /// the session's large-body read permits before it is refused (never
    /// longer than the body-read timeout, [`crate::BODY_READ_TIMEOUT`],
    /// which is the default).
    pub large_body_permit_wait: std::time::Duration,
}

impl Default for MeterSettings {
    fn default() -> Self {
        MeterSettings {
            default_output_limit: 4096,
            warn_at_percent: vec![50, 80],
            large_body_permit_wait: crate::BODY_READ_TIMEOUT,
        }
    }
}

/// What metering decided about one LLM request before it leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub api: Api,
    /// The model the request names.
    pub model: String,
    /// Its prices (all zero, with the card's hash, when the card has none:
    /// such a call is recorded but cannot be reserved for).
    pub rates: RateSnapshot,
    /// The worst case in micro-USD, when the model has a price and the
    /// cost can be bounded.
    pub reserved: Option<u64>,
    /// The prices settlement uses (tier and long context), when priced.
    pub pricing: Option<Pricing>,
    /// The tier it asked for (standard for none or `auto`): settled at it
    /// when the response names no tier (see `Metering::price`).
    pub tier: Tier,
    /// Why the proxy cannot bound this call's cost though its model may be
    /// priced (then `reserved` is `None`): said to the user when refused.
    pub unbounded: Option<String>,
    /// The worst case in billed tokens (`UsageTokens::total`): the input
    /// bound `reserved` prices plus the output limit times the choices,
    /// whether or not the model is priced. `Err`: why it cannot be bounded
    /// (input the provider adds or the body only points at, of no known
    /// length), said to the user when a tokens quota refuses the call.
    pub tokens: Result<u64, String>,
    /// The client did not ask for the usage chunk the proxy asked for: it
    /// is removed from what the client receives.
    pub strip_usage_chunk: bool,
    /// The body to send instead (the proxy set a limit or asked for usage).
    pub body: Option<Bytes>,
}

/// At most what the proxy adds to a body (an output limit and
/// `stream_options`), so a limit set from the budget leaves room for it.
const ADDED_BYTES: u64 = 96;

/// The members of a request body metering reads; the rest is skipped.
/// Those the proxy may set tell `null` from absent (`Some(None)`, or
/// `Some(Value::Null)`): a `null` stays in the body, and after a member of
/// the same name the proxy adds, a provider's parser (the last member wins)
/// would read the `null`.
#[derive(Debug, Deserialize)]
struct RequestFacts {
    model: Option<String>,
    stream: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    stream_options: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    max_tokens: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    max_completion_tokens: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    max_output_tokens: Option<Option<u64>>,
    n: Option<u64>,
    best_of: Option<u64>,
    service_tier: Option<Value>,
    // Input the body only points at, and tools the provider runs.
    previous_response_id: Option<Value>,
    conversation: Option<Value>,
    prompt: Option<Value>,
    container: Option<Value>,
    tools: Option<Value>,
    web_search_options: Option<Value>,
    mcp_servers: Option<Value>,
    input: Option<Value>,
    messages: Option<Value>,
    system: Option<Value>,
}

/// A member that is present, `null` included (serde reads a `null` into
/// `Option`'s `None`, the same as absent).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Plans a request of shape `api` to `host` with the complete `body`.
/// `remaining` is what the LLM budget has left (micro-USD), if there is a
/// budget. `None` when the body is not a JSON object naming a model (the
/// call then has no cost the proxy can bound).
pub(crate) fn plan(
    api: Api,
    host: &str,
    body: &[u8],
    rates: &RateCard,
    settings: &MeterSettings,
    remaining: Option<u64>,
) -> Option<Plan> {
    let facts: RequestFacts = serde_json::from_slice(body).ok()?;
    let model = facts.model.clone()?;
    let (tier, project_default, mut unbounded) = match tier_of(api, facts.service_tier.as_ref()) {
        Ok((tier, project_default)) => (tier, project_default, None),
        Err(why) => (Tier::Standard, false, Some(why)),
    };
    let pricing = rates.pricing_for(&model, tier);
    // The project's default tier may be priority (its response will say
    // so): reserved for, where the card prices it. Where it does not, the
    // call is reserved at standard and, if served at priority, charged
    // that reservation (settlement cannot price it).
    let default_priority = project_default
        .then(|| rates.pricing_for(&model, Tier::Priority))
        .flatten();
    if tier == Tier::Priority && pricing.is_none() && rates.price_for(&model).is_some() {
        unbounded = Some(format!(
            "the rate card has no priority price for {model:?} (service_tier \"priority\" \
             costs more than standard): add one to rates.toml or send the default tier"
        ));
    }
    // Why the call's tokens cannot be bounded (its cost neither).
    let mut tokens_unbounded = None;
    if let Some(tool) = provider_tool(&facts) {
        let why = format!(
            "the request lets the provider run {tool}, billed per use and as input the proxy \
             cannot bound before it leaves: such calls are refused under an llm budget"
        );
        unbounded.get_or_insert(why.clone());
        tokens_unbounded = Some(why);
    }
    // Input the body only points at is bounded by the context window.
    let by_reference = by_reference(&facts);
    let mut input_bound = body.len() as u64;
    if let Some(what) = by_reference {
        match pricing.as_ref().and_then(|p| p.context_window) {
            Some(window) => input_bound = input_bound.max(window),
            None => {
                let why = format!(
                    "the request sends input by reference ({what}), which may be longer than \
                     its body, and the rate card states no context_window for {model:?} to \
                     reserve for it"
                );
                // An unpriced model's cost is unbounded for its price alone.
                if pricing.is_some() {
                    unbounded.get_or_insert(why.clone());
                }
                tokens_unbounded.get_or_insert(why);
            }
        }
    }
    let priced = pricing.as_ref().map(|p| RateSnapshot {
        card_sha256: p.card_sha256.clone(),
        price: p.base.clone(),
    });
    let rates_used = priced.clone().unwrap_or_else(|| RateSnapshot {
        card_sha256: rates.sha256().to_owned(),
        price: ModelPrice {
            model: model.clone(),
            ..ModelPrice::default()
        },
    });
    let bound_price = pricing.as_ref().map_or_else(
        || rates_used.price.clone(),
        |p| {
            let room = input_bound.saturating_add(ADDED_BYTES);
            let bound = p.bound_for(room);
            match &default_priority {
                Some(priority) => dearer(&bound, &priority.bound_for(room)),
                None => bound,
            }
        },
    );
    let price = &bound_price;
    let choices = facts.n.unwrap_or(1).max(facts.best_of.unwrap_or(1)).max(1);

    // The output limits the shape knows, and the one the proxy sets a
    // limit in when the request has none.
    let (names, member): (&[&str], &str) = match api {
        Api::Chat => (
            &["max_completion_tokens", "max_tokens"],
            // OpenAI's reasoning models refuse `max_tokens`; other
            // OpenAI-compatible servers know `max_tokens` best.
            if host == "api.openai.com" {
                "max_completion_tokens"
            } else {
                "max_tokens"
            },
        ),
        Api::Responses => (&["max_output_tokens"], "max_output_tokens"),
        Api::Messages => (&["max_tokens"], "max_tokens"),
        Api::Embeddings => (&[], ""),
    };
    // Those the request sends (name, value; `None` for a `null`).
    let sent: Vec<(&str, Option<u64>)> = [
        ("max_completion_tokens", facts.max_completion_tokens),
        ("max_tokens", facts.max_tokens),
        ("max_output_tokens", facts.max_output_tokens),
    ]
    .into_iter()
    .filter(|(name, _)| names.contains(name))
    .filter_map(|(name, value)| Some((name, value?)))
    .collect();
    // Servers read two limits differently (vLLM applies
    // `max_completion_tokens or max_tokens`, others the smaller), so the
    // largest is the bound. A 0 is no limit to some (vLLM's `or`) and a
    // `null` to all: neither bounds anything.
    let bound = sent.iter().filter_map(|&(_, v)| v).filter(|&n| n > 0).max();
    let limit = match (api, bound) {
        (Api::Embeddings, _) => 0,
        (_, Some(bound)) => bound,
        (_, None) => {
            let room = input_bound.saturating_add(ADDED_BYTES);
            proxy_limit(room, price, choices, settings, remaining)
        }
    };
    // The members the proxy sets, and whether one of them is the client's
    // own: a 0 (a server may read no limit), or the `null` in the member the
    // proxy sets its limit in (a `null` elsewhere reads as unset anyway).
    // Replaced, never added beside it: one member of each name.
    let mut set: Vec<(&str, String)> = Vec::new();
    for &(name, value) in &sent {
        if value == Some(0) || (value.is_none() && bound.is_none() && name == member) {
            set.push((name, limit.to_string()));
        }
    }
    let replacing = !set.is_empty();
    if api != Api::Embeddings && bound.is_none() && !replacing {
        set.push((member, limit.to_string()));
    }

    let streamed_chat = api == Api::Chat && facts.stream == Some(true);
    let asked_usage = facts
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let strip_usage_chunk = streamed_chat && !asked_usage;
    // The client's own `stream_options` (an object without `include_usage`,
    // a `null`, another type) is edited in place; else it is added.
    let edit_options = strip_usage_chunk && facts.stream_options.is_some();
    if strip_usage_chunk && !edit_options {
        set.push(("stream_options", r#"{"include_usage":true}"#.to_owned()));
    }
    // Adding keeps the body byte for byte; replacing a member the client
    // sent re-encodes it, so each name is in it once.
    let new_body = if replacing || edit_options {
        with_members(body, &set, edit_options)
    } else if set.is_empty() {
        None
    } else {
        insert_members(body, &set)
    };
    if (!set.is_empty() || edit_options) && new_body.is_none() {
        return None;
    }

    let sent_len = new_body.as_ref().map_or(body.len(), Vec::len) as u64;
    let input = if by_reference.is_some() {
        input_bound.max(sent_len)
    } else {
        sent_len
    };
    let reserved = priced
        .filter(|_| unbounded.is_none())
        .map(|_| worst_case(input, limit.saturating_mul(choices), price));
    // The same bound in tokens: each input byte at most a token, the output
    // at most its limit per choice.
    let tokens = match tokens_unbounded {
        Some(why) => Err(why),
        None => Ok(input.saturating_add(limit.saturating_mul(choices))),
    };
    Some(Plan {
        api,
        model,
        rates: rates_used,
        reserved,
        pricing,
        tier,
        unbounded,
        tokens,
        strip_usage_chunk,
        body: new_body.map(Bytes::from),
    })
}

/// The worst-case cost of a call with a body of `body_len` bytes and at
/// most `output` output tokens.
pub(crate) fn worst_case(body_len: u64, output: u64, price: &ModelPrice) -> u64 {
    let dearest_input = price
        .input
        .max(price.cached_input)
        .max(price.cache_write_5m)
        .max(price.cache_write_1h);
    let bound = ModelPrice {
        input: dearest_input,
        ..price.clone()
    };
    let tokens = UsageTokens {
        input: body_len,
        output,
        ..UsageTokens::default()
    };
    cost_micro_usd(&tokens, &bound)
}

/// The price tier a request asks for, and whether the provider may serve
/// it at priority without its asking (then it may be billed at priority:
/// OpenAI Chat and Responses with no tier, or `auto`, in a project whose
/// default tier is priority; Anthropic Messages with no tier, or `auto`,
/// for an organization with Priority Tier capacity); `Err` with a reason
/// for one the proxy cannot price. OpenAI: absent, `auto`, `default` and
/// `flex` (which costs less) are standard; `priority` its own prices;
/// `scale` (prepaid units) and others are unknown. Anthropic:
/// `standard_only` is standard.
fn tier_of(api: Api, tier: Option<&Value>) -> Result<(Tier, bool), String> {
    let may_be_priority = matches!(api, Api::Chat | Api::Responses | Api::Messages);
    let name = match tier {
        None | Some(Value::Null) => return Ok((Tier::Standard, may_be_priority)),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(format!("service_tier {other} is not a tier name")),
    };
    match (api, name) {
        (Api::Messages, "auto") => Ok((Tier::Standard, true)),
        (Api::Messages, "standard_only") => Ok((Tier::Standard, false)),
        (Api::Chat | Api::Responses, "auto") => Ok((Tier::Standard, true)),
        (Api::Chat | Api::Responses | Api::Embeddings, "auto" | "default" | "flex") => {
            Ok((Tier::Standard, false))
        }
        (Api::Chat | Api::Responses, "priority") => Ok((Tier::Priority, false)),
        _ => Err(format!(
            "service_tier {name:?} has no price on the rate card (default, auto, flex and \
             priority do)"
        )),
    }
}

/// A tool the provider runs itself, if the request offers one: it is
/// billed per use and its results are billed as input, neither bounded by
/// the body. Tools the client runs (functions, custom tools, computer use,
/// bash, text editor, shell, apply_patch, memory) are not.
fn provider_tool(f: &RequestFacts) -> Option<String> {
    let present = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if present(&f.web_search_options) {
        return Some("web search (web_search_options)".into());
    }
    if f.mcp_servers
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Some("MCP servers (mcp_servers)".into());
    }
    const CLIENT: [&str; 11] = [
        "function",
        "custom",
        "computer_use_preview",
        "computer",
        "local_shell",
        "shell",
        "apply_patch",
        "computer_",
        "bash_",
        "text_editor_",
        "memory_",
    ];
    for tool in f.tools.as_ref().and_then(Value::as_array)? {
        // An Anthropic tool without a type is a client tool (custom).
        let Some(kind) = tool.get("type").and_then(Value::as_str) else {
            continue;
        };
        let client = CLIENT.iter().any(|c| match c.strip_suffix('_') {
            Some(_) => kind.starts_with(c),
            None => kind == *c,
        });
        if !client {
            return Some(format!("the tool {kind:?}"));
        }
    }
    None
}

/// What the request sends by reference, if anything: input the provider
/// bills in full that the body does not hold.
fn by_reference(f: &RequestFacts) -> Option<&'static str> {
    let present = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if present(&f.previous_response_id) {
        return Some("previous_response_id");
    }
    if present(&f.conversation) {
        return Some("conversation");
    }
    // The Responses API's stored prompt (an object with an id).
    if f.prompt.as_ref().is_some_and(Value::is_object) {
        return Some("a stored prompt");
    }
    if present(&f.container) {
        return Some("a container");
    }
    [&f.input, &f.messages, &f.system]
        .into_iter()
        .flatten()
        .find_map(reference_in)
}

/// A part of the input that points elsewhere: a file id or URL, an image
/// or document by URL (not a `data:` URL, which is in the body), an
/// Anthropic source of type `url` or `file`, a Responses item reference.
fn reference_in(v: &Value) -> Option<&'static str> {
    let remote = |u: &Value| u.as_str().is_some_and(|u| !u.starts_with("data:"));
    match v {
        Value::Array(items) => items.iter().find_map(reference_in),
        Value::Object(map) => {
            if map.get("file_id").is_some_and(|v| !v.is_null()) {
                return Some("a file id");
            }
            if map.get("file_url").is_some_and(|v| !v.is_null()) {
                return Some("a file URL");
            }
            match map.get("image_url") {
                Some(u) if remote(u) || u.get("url").is_some_and(remote) => {
                    return Some("an image URL")
                }
                _ => {}
            }
            if let Some(Value::Object(source)) = map.get("source") {
                match source.get("type").and_then(Value::as_str) {
                    Some("url") => return Some("a document or image URL"),
                    Some("file") => return Some("a file id"),
                    _ => {}
                }
            }
            if map.get("type").and_then(Value::as_str) == Some("item_reference") {
                return Some("an item reference");
            }
            map.values().find_map(reference_in)
        }
        _ => None,
    }
}

/// The output limit for a request without one: the default, lowered to
/// what the budget has left after the input's worst case.
fn proxy_limit(
    body_len: u64,
    price: &ModelPrice,
    choices: u64,
    settings: &MeterSettings,
    remaining: Option<u64>,
) -> u64 {
    let cap = settings.default_output_limit.max(1);
    let (Some(remaining), true) = (remaining, price.output > 0) else {
        return cap;
    };
    let input_only = worst_case(body_len, 0, price);
    let left = u128::from(remaining.saturating_sub(input_only)) * 1_000_000;
    let affordable = left / (u128::from(price.output) * u128::from(choices));
    u64::try_from(affordable).unwrap_or(u64::MAX).clamp(1, cap)
}

/// The body with `members` (name, JSON text) added at the start of its top
/// object, the rest byte for byte; `None` if it does not start with `{`.
fn insert_members(body: &[u8], members: &[(&str, String)]) -> Option<Vec<u8>> {
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let rest = &body[open + 1..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'}');
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(&body[..=open]);
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(serde_json::to_string(name).ok()?.as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    }
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The body re-encoded with `members` set (replacing the client's members
/// of those names) and, if `ask_usage`, `stream_options.include_usage` true
/// (`stream_options` made an object if it is not one).
fn with_members(body: &[u8], members: &[(&str, String)], ask_usage: bool) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let map = v.as_object_mut()?;
    for (name, value) in members {
        map.insert((*name).to_owned(), serde_json::from_str(value).ok()?);
    }
    if ask_usage {
        let options = map
            .entry("stream_options")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if !options.is_object() {
            *options = Value::Object(serde_json::Map::new());
        }
        options
            .as_object_mut()?
            .insert("include_usage".into(), Value::Bool(true));
    }
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::LlmPrice;

    fn card() -> RateCard {
        RateCard::builtin()
            .with_legacy_prices(&[LlmPrice {
                model: "gpt-test".into(),
                input_micro_usd_per_mtok: 2_500_000,
                output_micro_usd_per_mtok: 10_000_000,
            }])
            .0
    }

    fn plan_of(api: Api, body: &str, remaining: Option<u64>) -> Plan {
        plan(
            api,
            "api.openai.com",
            body.as_bytes(),
            &card(),
            &MeterSettings::default(),
            remaining,
        )
        .expect("planned")
    }

    #[test]
    fn the_worst_case_is_every_byte_a_token_and_the_whole_limit() {
        let body = r#"{"model":"gpt-test","max_tokens":1000,"messages":[]}"#;
        let p = plan_of(Api::Chat, body, None);
        // input: 52 tokens × 2.5 µ$ = 130; output: 1000 × 10 µ$ = 10000.
        assert_eq!(body.len(), 52);
        assert_eq!(p.reserved, Some(10_130));
        // The same bound in tokens (what llm_tokens_per_day holds).
        assert_eq!(p.tokens, Ok(52 + 1000));
        assert_eq!((p.body, p.strip_usage_chunk), (None, false));
        // n choices multiply the output side.
        let body = r#"{"model":"gpt-test","max_tokens":1000,"n":3,"messages":[]}"#;
        assert_eq!(plan_of(Api::Chat, body, None).reserved, Some(30_145));
        assert_eq!(plan_of(Api::Chat, body, None).tokens, Ok(58 + 3000));
        // An unpriced model's tokens are bounded all the same.
        let body = r#"{"model":"gpt-unknown","max_tokens":1000,"messages":[]}"#;
        let p = plan_of(Api::Chat, body, None);
        assert_eq!((p.reserved, p.tokens), (None, Ok(55 + 1000)));
        // The dearest input rate counts (a cache write costs more than input).
        let price = ModelPrice {
            input: 3_000_000,
            cached_input: 300_000,
            cache_write_1h: 6_000_000,
            output: 15_000_000,
            ..ModelPrice::default()
        };
        assert_eq!(worst_case(1000, 100, &price), 6_000 + 1_500);
    }

    #[test]
    fn a_request_without_a_limit_gets_one() {
        let body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
        let p = plan_of(Api::Chat, body, None);
        let sent = String::from_utf8(p.body.expect("rewritten").to_vec()).expect("utf8");
        assert_eq!(
            sent,
            r#"{"max_completion_tokens":4096,"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#
        );
        assert_eq!(
            p.reserved,
            Some(worst_case(
                sent.len() as u64,
                4096,
                &card().price_for("gpt-test").expect("p").price
            ))
        );
        // Under a budget with little left, the limit is what it can pay for:
        // 2000 µ$ left, the input's worst case (64 bytes and room for what
        // the proxy adds: 160 × 2.5 µ$ = 400), so 160 tokens at 10 µ$.
        let p = plan_of(Api::Chat, body, Some(2_000));
        let sent = p.body.expect("rewritten");
        assert!(
            sent.starts_with(br#"{"max_completion_tokens":160,"#),
            "{sent:?}"
        );
        assert_eq!(p.reserved, Some(1_830));
        // Another host's OpenAI-compatible server gets max_tokens; an empty
        // object stays valid JSON.
        let p = plan(
            Api::Messages,
            "llm.internal",
            br#" {"model":"gpt-test"}"#,
            &card(),
            &MeterSettings::default(),
            None,
        )
        .expect("planned");
        let sent = p.body.expect("rewritten");
        let v: Value = serde_json::from_slice(&sent).expect("json");
        assert_eq!(v["max_tokens"], 4096);
        assert_eq!(
            insert_members(b"{ }", &[("a", "1".into())]).expect("object"),
            b"{\"a\":1 }"
        );
    }

    #[test]
    fn a_streamed_chat_request_is_asked_for_usage() {
        let body = r#"{"model":"gpt-test","max_tokens":5,"stream":true,"messages":[]}"#;
        let p = plan_of(Api::Chat, body, None);
        assert!(p.strip_usage_chunk);
        let sent: Value = serde_json::from_slice(&p.body.expect("rewritten")).expect("json");
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert_eq!(sent["max_tokens"], 5);
        // stream_options without include_usage: edited in place.
        let body = r#"{"model":"gpt-test","max_tokens":5,"stream":true,"stream_options":{"include_obfuscation":false}}"#;
        let p = plan_of(Api::Chat, body, None);
        let sent: Value = serde_json::from_slice(&p.body.expect("rewritten")).expect("json");
        assert_eq!(
            sent["stream_options"],
            serde_json::json!({"include_obfuscation": false, "include_usage": true})
        );
        // A client that asked gets its stream as is, and its body unchanged.
        let body = r#"{"model":"gpt-test","max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}"#;
        let p = plan_of(Api::Chat, body, None);
        assert_eq!((p.body, p.strip_usage_chunk), (None, false));
        // Responses and Messages streams carry usage anyway.
        let body = r#"{"model":"gpt-test","max_output_tokens":5,"stream":true}"#;
        let p = plan_of(Api::Responses, body, None);
        assert_eq!((p.body, p.strip_usage_chunk), (None, false));
    }

    #[test]
    fn unpriced_models_are_recorded_but_not_reserved_and_bad_bodies_are_not_planned() {
        let p = plan_of(
            Api::Chat,
            r#"{"model":"gpt-unknown","max_tokens":10}"#,
            None,
        );
        assert_eq!(p.reserved, None);
        assert_eq!(p.rates.price.model, "gpt-unknown");
        assert_eq!(p.rates.card_sha256, card().sha256());
        let settings = MeterSettings::default();
        for bad in [
            &b"not json"[..],
            b"[1]",
            br#"{"messages":[]}"#,
            br#"{"model":"gpt-test","max_tokens":1.5}"#,
            br#"{"model":"gpt-test","model":"other","max_tokens":1}"#,
            br#"{"model":"gpt-test","max_tokens":5,"max_tokens":null}"#,
            br#"{"model":"gpt-test","max_tokens":-1}"#,
            br#"{"model":"gpt-test","max_tokens":"5"}"#,
        ] {
            assert_eq!(plan(Api::Chat, "h", bad, &card(), &settings, None), None);
        }
        // Embeddings have no output side.
        let p = plan_of(
            Api::Embeddings,
            r#"{"model":"gpt-test","input":"abc"}"#,
            None,
        );
        // 34 bytes × 2.5 µ$.
        assert_eq!(p.reserved, Some(85));
        assert_eq!(p.body, None);
    }

    #[test]
    fn input_by_reference_and_provider_tools_are_told_from_the_body() {
        let facts = |body: &str| -> RequestFacts { serde_json::from_str(body).expect("facts") };
        for (body, what) in [
            (r#"{"previous_response_id":"r"}"#, "previous_response_id"),
            (r#"{"conversation":{"id":"c"}}"#, "conversation"),
            (
                r#"{"input":[{"content":[{"type":"input_file","file_id":"f"}]}]}"#,
                "a file id",
            ),
            (
                r#"{"input":[{"content":[{"type":"input_image","image_url":"https://x/a.png"}]}]}"#,
                "an image URL",
            ),
            (
                r#"{"messages":[{"content":[{"type":"image_url","image_url":{"url":"http://x"}}]}]}"#,
                "an image URL",
            ),
            (
                r#"{"messages":[{"content":[{"type":"image","source":{"type":"url","url":"u"}}]}]}"#,
                "a document or image URL",
            ),
            (
                r#"{"input":[{"type":"item_reference","id":"i"}]}"#,
                "an item reference",
            ),
        ] {
            assert_eq!(by_reference(&facts(body)), Some(what), "{body}");
        }
        for body in [
            r#"{"previous_response_id":null,"input":"hi"}"#,
            r#"{"messages":[{"content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}]}"#,
            r#"{"messages":[{"content":[{"type":"image","source":{"type":"base64","data":"AA"}}]}]}"#,
            r#"{"messages":[{"content":"file_id https://x"}]}"#,
        ] {
            assert_eq!(by_reference(&facts(body)), None, "{body}");
        }
        for body in [
            r#"{"tools":[{"type":"web_search_20250305"}]}"#,
            r#"{"tools":[{"type":"function"},{"type":"file_search"}]}"#,
            r#"{"web_search_options":{}}"#,
            r#"{"mcp_servers":[{"url":"u"}]}"#,
        ] {
            assert!(provider_tool(&facts(body)).is_some(), "{body}");
        }
        for body in [
            r#"{"tools":[{"name":"f","input_schema":{}},{"type":"bash_20250124"},{"type":"computer_20250124"}]}"#,
            r#"{"tools":[{"type":"function"},{"type":"custom"},{"type":"computer_use_preview"}]}"#,
            r#"{"mcp_servers":[]}"#,
        ] {
            assert_eq!(provider_tool(&facts(body)), None, "{body}");
        }
    }

    #[test]
    fn input_by_reference_is_reserved_for_the_window_or_unbounded() {
        let body = r#"{"model":"gpt-4o","service_tier":"default","max_output_tokens":10,"previous_response_id":"r"}"#;
        let p = plan_of(Api::Responses, body, None);
        assert_eq!(p.reserved, Some(128_000 * 5 / 2 + 100));
        assert_eq!(p.tokens, Ok(128_000 + 10));
        // Naming no tier, it may be served at priority (4.25 / 17).
        let body = r#"{"model":"gpt-4o","max_output_tokens":10,"previous_response_id":"r"}"#;
        let p = plan_of(Api::Responses, body, None);
        assert_eq!(p.reserved, Some(128_000 * 17 / 4 + 170));
        // gpt-test's card entry has no window.
        let body = r#"{"model":"gpt-test","max_output_tokens":10,"previous_response_id":"r"}"#;
        let p = plan_of(Api::Responses, body, None);
        assert_eq!(p.reserved, None);
        assert!(p.tokens.expect_err("why").contains("context_window"));
        assert!(p.unbounded.expect("why").contains("context_window"));
        // A tier without a price: unbounded, saying which.
        let body = r#"{"model":"gpt-4o","max_tokens":10,"service_tier":"scale"}"#;
        let p = plan_of(Api::Chat, body, None);
        assert_eq!(p.reserved, None);
        assert!(p.unbounded.expect("why").contains("\"scale\""));
    }

    /// A request naming no tier, or `auto`, is served at the project's
    /// default tier, which may be priority: reserved, and its output limit
    /// set under a budget, at the dearer prices. `default` and `flex` are
    /// standard; a model without a priority price, and Anthropic, too.
    #[test]
    fn a_request_the_projects_default_tier_serves_is_reserved_at_priority() {
        let card = card();
        let standard = card.pricing_for("gpt-4o", Tier::Standard).expect("p").base;
        let priority = card.pricing_for("gpt-4o", Tier::Priority).expect("p").base;
        for (api, body, price) in [
            (
                Api::Chat,
                r#"{"model":"gpt-4o","max_tokens":1000}"#,
                &priority,
            ),
            (
                Api::Chat,
                r#"{"model":"gpt-4o","max_tokens":1000,"service_tier":null}"#,
                &priority,
            ),
            (
                Api::Responses,
                r#"{"model":"gpt-4o","max_output_tokens":1000,"service_tier":"auto"}"#,
                &priority,
            ),
            (
                Api::Chat,
                r#"{"model":"gpt-4o","max_tokens":1000,"service_tier":"default"}"#,
                &standard,
            ),
            (
                Api::Responses,
                r#"{"model":"gpt-4o","max_output_tokens":1000,"service_tier":"flex"}"#,
                &standard,
            ),
        ] {
            let p = plan_of(api, body, None);
            let want = worst_case(body.len() as u64, 1000, price);
            assert_eq!(p.reserved, Some(want), "{body}");
            // Settled at the tier it asked for unless the response says.
            assert_eq!(
                (p.tier, p.pricing.expect("priced").base),
                (Tier::Standard, standard.clone())
            );
        }
        // o1 has no priority price: standard (settled at its reservation
        // if served at priority).
        let body = r#"{"model":"o1","max_tokens":1000}"#;
        let o1 = card.price_for("o1").expect("p").price;
        assert_eq!(
            plan_of(Api::Chat, body, None).reserved,
            Some(worst_case(body.len() as u64, 1000, &o1))
        );
        // Anthropic's tiers are not OpenAI's.
        let claude = card.price_for("claude-sonnet-4-5").expect("p").price;
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":1000}"#;
        let p = plan_of(Api::Messages, body, None);
        assert_eq!(
            p.reserved,
            Some(worst_case(body.len() as u64, 1000, &claude))
        );
        // The limit set from what the budget has left is paid for at
        // priority: 2000 µ$ left, 128 bytes of input (the body's 32 and
        // room for what the proxy adds) at 4.25 is 544, so 85 tokens at 17
        // (at standard it would be 168).
        let body = r#"{"model":"gpt-4o","messages":[]}"#;
        let p = plan_of(Api::Chat, body, Some(2_000));
        let sent = p.body.expect("rewritten");
        assert!(
            sent.starts_with(br#"{"max_completion_tokens":85,"#),
            "{sent:?}"
        );
        assert!(p.reserved.expect("reserved") <= 2_000);
    }

    /// Anthropic serves a request with no tier, or `auto`, from Priority
    /// Tier capacity when the organization has some: where the card prices
    /// the model's priority tier, reserved at the dearer prices;
    /// `standard_only` at standard. Settled at standard unless the response
    /// names the tier.
    #[test]
    fn an_anthropic_request_that_may_use_priority_capacity_is_reserved_at_priority() {
        let card = RateCard::from_toml(
            "[[model]]\nname = \"claude-haiku-4-5\"\nmatch = \"prefix\"\ninput = \"1\"\n\
             output = \"5\"\npriority = { input = \"2\", output = \"10\" }\n",
            "t",
        )
        .expect("card");
        let standard = card
            .pricing_for("claude-haiku-4-5", Tier::Standard)
            .expect("p")
            .base;
        let priority = card
            .pricing_for("claude-haiku-4-5", Tier::Priority)
            .expect("p")
            .base;
        for (body, price) in [
            (
                r#"{"model":"claude-haiku-4-5","max_tokens":1000}"#,
                &priority,
            ),
            (
                r#"{"model":"claude-haiku-4-5","max_tokens":1000,"service_tier":"auto"}"#,
                &priority,
            ),
            (
                r#"{"model":"claude-haiku-4-5","max_tokens":1000,"service_tier":"standard_only"}"#,
                &standard,
            ),
        ] {
            let p = plan(
                Api::Messages,
                "api.anthropic.com",
                body.as_bytes(),
                &card,
                &MeterSettings::default(),
                None,
            )
            .expect("planned");
            let want = worst_case(body.len() as u64, 1000, price);
            assert_eq!((p.reserved, p.unbounded), (Some(want), None), "{body}");
            assert_eq!(p.tier, Tier::Standard);
        }
    }

    /// The body the upstream receives, and its members named `name` in
    /// body order (duplicates kept, as a first-wins parser would see them).
    fn sent_members(p: &Plan, body: &str, name: &str) -> (Vec<u8>, Vec<Value>) {
        let sent = p
            .body
            .as_ref()
            .map_or(body.as_bytes().to_vec(), |b| b.to_vec());
        let members: crate::json_members::Members<'_> =
            serde_json::from_slice(&sent).expect("an object");
        let named = members
            .0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| serde_json::from_str(v.get()).expect("json"))
            .collect();
        (sent, named)
    }

    fn reserved_for(sent: &[u8], output: u64) -> Option<u64> {
        let price = card().price_for("gpt-test").expect("priced").price;
        Some(worst_case(sent.len() as u64, output, &price))
    }

    /// A `null` limit is no limit: left beside the limit the proxy adds, a
    /// last-wins parser (Python, JS, Go, serde_json's `Value`) would read
    /// the `null`, not the bound reserved for.
    #[test]
    fn a_null_limit_is_replaced_by_the_proxys_not_left_beside_it() {
        for (api, host, member, body) in [
            (
                Api::Chat,
                "api.openai.com",
                "max_completion_tokens",
                r#"{"model":"gpt-test","max_completion_tokens":null,"messages":[]}"#,
            ),
            (
                Api::Chat,
                "llm.internal",
                "max_tokens",
                r#"{"model":"gpt-test","max_tokens":null,"messages":[]}"#,
            ),
            (
                Api::Responses,
                "api.openai.com",
                "max_output_tokens",
                r#"{"model":"gpt-test","max_output_tokens":null,"input":"hi"}"#,
            ),
            (
                Api::Messages,
                "api.anthropic.com",
                "max_tokens",
                r#"{"model":"gpt-test","max_tokens":null,"messages":[]}"#,
            ),
        ] {
            let p = plan(
                api,
                host,
                body.as_bytes(),
                &card(),
                &MeterSettings::default(),
                None,
            )
            .expect("planned");
            let (sent, limits) = sent_members(&p, body, member);
            assert_eq!(limits, [4096], "{}", String::from_utf8_lossy(&sent));
            assert_eq!(p.reserved, reserved_for(&sent, 4096));
        }
        // A `null` in the limit the proxy does not set reads as unset,
        // like no member: it stays, and the proxy's limit is added.
        let body = r#"{"model":"gpt-test","max_tokens":null,"messages":[]}"#;
        let p = plan_of(Api::Chat, body, None);
        assert_eq!(
            p.body.as_deref(),
            Some(&br#"{"max_completion_tokens":4096,"model":"gpt-test","max_tokens":null,"messages":[]}"#[..])
        );
    }

    /// vLLM applies `max_completion_tokens or max_tokens`, other servers
    /// the smaller: the larger is what a call may generate.
    #[test]
    fn differing_limits_are_reserved_for_the_largest() {
        for body in [
            r#"{"model":"gpt-test","max_completion_tokens":100000,"max_tokens":10,"messages":[]}"#,
            r#"{"model":"gpt-test","max_completion_tokens":10,"max_tokens":100000,"messages":[]}"#,
        ] {
            let p = plan_of(Api::Chat, body, None);
            assert_eq!(p.body, None);
            assert_eq!(p.reserved, reserved_for(body.as_bytes(), 100_000));
        }
    }

    /// A limit of 0 is no limit to some servers (vLLM's `0 or None`): it is
    /// replaced by the bound reserved for.
    #[test]
    fn a_zero_limit_is_replaced_by_the_bound_reserved_for() {
        // A host that is not OpenAI's: the proxy's limit goes in `max_tokens`.
        let chat_elsewhere = |body: &str| {
            plan(
                Api::Chat,
                "llm.internal",
                body.as_bytes(),
                &card(),
                &MeterSettings::default(),
                None,
            )
            .expect("planned")
        };
        let body = r#"{"model":"gpt-test","max_completion_tokens":0,"messages":[]}"#;
        let p = chat_elsewhere(body);
        let (sent, limits) = sent_members(&p, body, "max_completion_tokens");
        assert_eq!(limits, [4096]);
        // The replaced member carries the limit: none added beside it.
        assert_eq!(sent_members(&p, body, "max_tokens").1, Vec::<Value>::new());
        assert_eq!(p.reserved, reserved_for(&sent, 4096));
        // Beside a limit a server reads, the 0 takes that limit.
        let body =
            r#"{"model":"gpt-test","max_completion_tokens":0,"max_tokens":10,"messages":[]}"#;
        let p = chat_elsewhere(body);
        let (sent, limits) = sent_members(&p, body, "max_completion_tokens");
        assert_eq!(limits, [10]);
        assert_eq!(sent_members(&p, body, "max_tokens").1, [10]);
        assert_eq!(p.reserved, reserved_for(&sent, 10));
    }

    /// The proxy removes the usage chunk it asked for; a `stream_options`
    /// the provider reads without `include_usage` true would send none.
    #[test]
    fn stream_options_without_include_usage_true_is_replaced_not_left_beside_ours() {
        for options in [
            "null",
            "5",
            r#"{"include_usage":null}"#,
            r#"{"include_usage":"yes"}"#,
        ] {
            let body = format!(
                r#"{{"model":"gpt-test","max_tokens":5,"stream":true,"stream_options":{options},"messages":[]}}"#
            );
            let p = plan_of(Api::Chat, &body, None);
            assert!(p.strip_usage_chunk);
            let (_, sent) = sent_members(&p, &body, "stream_options");
            assert_eq!(
                sent,
                [serde_json::json!({"include_usage": true})],
                "{options}"
            );
        }
    }
}
