//! The human-readable policy file (TOML): grants, TTL and approval rules,
//! parsed, validated and normalized so the datalog built from it compares
//! like with like (lowercase hosts, trimmed lowercase recipients, cents).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ActionType, CapabilityError, Host, HostPattern};

/// A parsed policy: what a token allows. Every section is optional; an
/// absent grant section means that kind of action is not allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Lifetime from minting (or attenuating) time, e.g. `"30m"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Ttl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<LoginGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebsocketGrant>,
    /// Which action types over which amount need a human.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval: Vec<ApprovalRule>,
}

/// `[web]`: hosts or host/path-prefixes the agent may reach with `methods`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebGrant {
    /// `united.com`, `google.com/flights`, `*.example.com` (subdomains only).
    pub allow: Vec<String>,
    /// HTTP methods; absent means read-only (`GET`, `HEAD`).
    #[serde(default = "read_only_methods")]
    pub methods: Vec<String>,
}

/// `[websocket]`: hosts or host/path-prefixes where the agent may open a
/// WebSocket. A `web` grant never covers one: after the handshake the
/// proxy no longer reads requests, so opening one is an action of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebsocketGrant {
    /// `chat.example.com`, `chat.example.com/socket`, `*.example.com`, as
    /// in `[web]`.
    pub allow: Vec<String>,
}

fn read_only_methods() -> Vec<String> {
    vec!["GET".to_owned(), "HEAD".to_owned()]
}

/// `[payment]`: charges at one merchant, in one currency, under ceilings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentGrant {
    /// Merchant host, compared exactly (`united.com`).
    pub merchant: String,
    /// ISO 4217 code, compared case-insensitively (`USD`).
    pub currency: String,
    /// Largest single charge allowed (inclusive).
    pub max_per_charge: Amount,
    /// Largest sum of charges in the session, this one included (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total: Option<Amount>,
    /// Charges strictly above this need a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_above: Option<Amount>,
    /// Name of the card credential the proxy may inject at the merchant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
}

/// `[email]`: mail sent through one mail API host to listed recipients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailGrant {
    /// The mail API host the proxy's catalog classifies as email.
    pub host: String,
    /// Every recipient of a message must be one of these (trimmed, lowercase).
    pub recipients: Vec<String>,
    /// The subject must contain this (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_contains: Option<String>,
    /// At most this many messages in the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
}

/// `[login]`: one service the named login credential may be used at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginGrant {
    /// Service host (`united.com`, or `*.united.com` written explicitly).
    pub service: String,
    /// Name (never value) of the login credential.
    pub credential: String,
    /// Scopes granted with the login, recorded and shown (the proxy's
    /// catalog does not classify scopes per request, so they are not matched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// `[llm]`: model API calls to provider hosts, under a spend budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmGrant {
    pub providers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Session budget in USD (`"5.00"`), inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<MicroUsd>,
}

/// `[[approval]]`: actions of `type` (over `above`, if given; for LLM calls,
/// once the session has spent `once_spent_usd`, if given) need a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    #[serde(rename = "type")]
    pub kind: ActionType,
    /// Payment amount (or LLM call cost, in USD) strictly above which a human
    /// is asked; absent means every action of this type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<Amount>,
    /// LLM only: once the session's LLM spend so far (settled calls, plus
    /// the reservations of calls in flight) reaches this many USD, each
    /// further call is held for a human. With `above` too, a call needs a
    /// human when both hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once_spent_usd: Option<MicroUsd>,
}

/// One approval condition as the token enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApprovalCondition {
    pub kind: ActionType,
    /// The payment amount (or LLM call cost) must be strictly above this.
    pub above: Option<Amount>,
    /// The session's LLM spend must have reached this.
    pub once_spent: Option<MicroUsd>,
}

/// A lifetime written like `30m`, `2h`, `1day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Duration);

/// Money in the smallest unit (cents). Written in files as `"600.00"`,
/// `"$600"` or a whole number `600`, never as a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(pub u64);

/// USD in micro-dollars, written as `"5.00"` or `5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MicroUsd(pub u64);

/// Largest magnitude datalog integers (i64) can add without overflow.
pub(crate) const MAX_VALUE: u64 = (i64::MAX / 4) as u64;

impl Policy {
    /// Parses and validates a policy file's text.
    pub fn from_toml_str(text: &str) -> Result<Policy, CapabilityError> {
        let policy: Policy =
            toml::from_str(text).map_err(|e| CapabilityError::PolicyParse(e.to_string()))?;
        policy.normalized()
    }

    /// Validates every field and returns the canonical form (lowercase
    /// hosts, uppercase methods and currency, trimmed lowercase recipients).
    pub fn normalized(mut self) -> Result<Policy, CapabilityError> {
        if let Some(web) = &mut self.web {
            if web.allow.is_empty() {
                return invalid("web.allow must list at least one host");
            }
            for entry in &mut web.allow {
                *entry = normalize_web_entry(entry)?;
            }
            if web.methods.is_empty() {
                return invalid("web.methods must not be empty (omit it for GET, HEAD)");
            }
            for m in &mut web.methods {
                let up = m.trim().to_ascii_uppercase();
                if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
                    return invalid(format!("web.methods: {m:?} is not an HTTP method"));
                }
                *m = up;
            }
            web.methods.sort();
            web.methods.dedup();
        }
        if let Some(p) = &mut self.payment {
            p.merchant = normalize_host(&p.merchant, false)?;
            p.currency = p.currency.trim().to_ascii_uppercase();
            if p.currency.len() != 3 || !p.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return invalid(format!(
                    "payment.currency {:?} is not a 3-letter code",
                    p.currency
                ));
            }
            if let Some(card) = &mut p.card {
                *card = normalize_name("payment.card", card)?;
            }
        }
        if let Some(e) = &mut self.email {
            e.host = normalize_host(&e.host, false)?;
            if e.recipients.is_empty() {
                return invalid("email.recipients must list at least one address");
            }
            for r in &mut e.recipients {
                let n = normalize_recipient(r);
                if n.is_empty() || !n.contains('@') || n.chars().any(char::is_whitespace) {
                    return invalid(format!("email.recipients: {r:?} is not an address"));
                }
                *r = n;
            }
            e.recipients.sort();
            e.recipients.dedup();
            if let Some(s) = &mut e.subject_contains {
                *s = s.to_lowercase();
            }
            if e.max_count.is_some_and(|n| n > MAX_VALUE) {
                return invalid("email.max_count is too large");
            }
        }
        if let Some(l) = &mut self.login {
            l.service = normalize_host(&l.service, true)?;
            l.credential = normalize_name("login.credential", &l.credential)?;
        }
        if let Some(l) = &mut self.llm {
            if l.providers.is_empty() {
                return invalid("llm.providers must list at least one host");
            }
            for h in &mut l.providers {
                *h = normalize_host(h, true)?;
            }
            if let Some(c) = &mut l.credential {
                *c = normalize_name("llm.credential", c)?;
            }
        }
        if let Some(ws) = &mut self.websocket {
            if ws.allow.is_empty() {
                return invalid("websocket.allow must list at least one host");
            }
            for entry in &mut ws.allow {
                *entry = normalize_web_entry(entry)?;
            }
        }
        for rule in &self.approval {
            if !matches!(rule.kind, ActionType::Payment | ActionType::Llm) && rule.above.is_some() {
                return invalid(format!(
                    "approval for {:?}: `above` applies to payment and llm only",
                    rule.kind
                ));
            }
            if rule.kind != ActionType::Llm && rule.once_spent_usd.is_some() {
                return invalid(format!(
                    "approval for {:?}: `once_spent_usd` applies to llm only",
                    rule.kind
                ));
            }
        }
        Ok(self)
    }

    /// Grant sections present, in a fixed order.
    pub fn grant_kinds(&self) -> Vec<ActionType> {
        let mut kinds = Vec::new();
        if self.web.is_some() {
            kinds.push(ActionType::Web);
        }
        if self.payment.is_some() {
            kinds.push(ActionType::Payment);
        }
        if self.email.is_some() {
            kinds.push(ActionType::Email);
        }
        if self.login.is_some() {
            kinds.push(ActionType::Login);
        }
        if self.llm.is_some() {
            kinds.push(ActionType::Llm);
        }
        if self.websocket.is_some() {
            kinds.push(ActionType::Websocket);
        }
        kinds
    }

    /// Approval rules, `payment.approval_above` included.
    pub(crate) fn approval_rules(&self) -> Vec<ApprovalCondition> {
        let mut rules: Vec<_> = self
            .payment
            .iter()
            .filter_map(|p| {
                p.approval_above.map(|a| ApprovalCondition {
                    kind: ActionType::Payment,
                    above: Some(a),
                    once_spent: None,
                })
            })
            .collect();
        rules.extend(self.approval.iter().map(|r| ApprovalCondition {
            kind: r.kind,
            above: r.above,
            once_spent: r.once_spent_usd,
        }));
        rules
    }

    /// One line per grant, as `cap inspect` prints them.
    pub fn grant_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(w) = &self.web {
            lines.push(format!(
                "web: {} ({})",
                w.allow.join(", "),
                w.methods.join(", ")
            ));
        }
        if let Some(p) = &self.payment {
            let mut line = format!(
                "payment: at most {} per charge at {}",
                p.max_per_charge.display(&p.currency),
                p.merchant
            );
            if let Some(t) = p.max_total {
                line.push_str(&format!(", {} in total", t.display(&p.currency)));
            }
            if let Some(card) = &p.card {
                line.push_str(&format!(", card {card}"));
            }
            lines.push(line);
        }
        if let Some(e) = &self.email {
            let mut line = format!("email: to {} via {}", e.recipients.join(", "), e.host);
            if let Some(s) = &e.subject_contains {
                line.push_str(&format!(", subject contains {s:?}"));
            }
            if let Some(n) = e.max_count {
                line.push_str(&format!(", at most {n}"));
            }
            lines.push(line);
        }
        if let Some(l) = &self.login {
            let mut line = format!("login: {} at {}", l.credential, l.service);
            if !l.scopes.is_empty() {
                line.push_str(&format!(" (scopes: {})", l.scopes.join(", ")));
            }
            lines.push(line);
        }
        if let Some(l) = &self.llm {
            let mut line = format!("llm: {}", l.providers.join(", "));
            if let Some(c) = &l.credential {
                line.push_str(&format!(" with {c}"));
            }
            if let Some(b) = l.budget_usd {
                line.push_str(&format!(", budget {b}"));
            }
            lines.push(line);
        }
        if let Some(w) = &self.websocket {
            lines.push(format!("websocket: {}", w.allow.join(", ")));
        }
        lines
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, CapabilityError> {
    Err(CapabilityError::PolicyInvalid(msg.into()))
}

/// A host field of the policy file, trimmed and read as a [`Host`] (or,
/// where `wildcard` is allowed, a [`HostPattern`]: never a bare `*`), in
/// its canonical text.
pub(crate) fn normalize_host(raw: &str, wildcard: bool) -> Result<String, CapabilityError> {
    let text = raw.trim();
    let read = if wildcard {
        HostPattern::parse(text).map(|p| p.to_string())
    } else if text.starts_with("*.") {
        return invalid(format!("{raw:?}: a wildcard is not allowed here"));
    } else {
        Host::parse(text).map(|h| h.to_string())
    };
    read.or_else(|_| invalid(format!("{raw:?} is not a host name")))
}

/// `host` or `host/path-prefix`; the prefix keeps its case (paths are case-sensitive).
fn normalize_web_entry(raw: &str) -> Result<String, CapabilityError> {
    let raw = raw.trim();
    let (host, path) = match raw.find('/') {
        Some(i) => (&raw[..i], Some(&raw[i..])),
        None => (raw, None),
    };
    let host = normalize_host(host, true)?;
    match path {
        None | Some("/") => Ok(host),
        Some(p) => {
            let p = p.trim_end_matches('/');
            if p.contains(['?', '#', '%', '\\'])
                || p.split('/').any(|seg| seg == "." || seg == "..")
                || p.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return invalid(format!("{raw:?}: the path prefix must be a plain path"));
            }
            Ok(format!("{host}{p}"))
        }
    }
}

fn normalize_name(field: &str, raw: &str) -> Result<String, CapabilityError> {
    let name = raw.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return invalid(format!(
            "{field}: {raw:?} is not a credential name (letters, digits, _ - .)"
        ));
    }
    Ok(name.to_owned())
}

/// Recipients compare exactly after trimming and lowercasing.
pub(crate) fn normalize_recipient(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Parses `"600"`, `"600.5"`, `"$600.00"` or `"1,200.00"` into units of 10^-decimals.
fn parse_decimal(raw: &str, decimals: u32) -> Result<u64, String> {
    let s = raw.trim().trim_start_matches('$').replace(',', "");
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s.as_str(), ""),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (!frac.is_empty() && !digits(frac)) || frac.len() > decimals as usize {
        return Err(format!(
            "{raw:?} is not an amount with at most {decimals} decimals"
        ));
    }
    let scale = 10u64.pow(decimals);
    let frac_value = format!("{frac:0<width$}", width = decimals as usize);
    let value = whole
        .parse::<u64>()
        .ok()
        .and_then(|w| w.checked_mul(scale))
        .and_then(|w| {
            let f = if decimals == 0 {
                0
            } else {
                frac_value.parse::<u64>().ok()?
            };
            w.checked_add(f)
        })
        .filter(|v| *v <= MAX_VALUE)
        .ok_or_else(|| format!("{raw:?} is too large"))?;
    Ok(value)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Whole(u64),
    Text(String),
}

impl Amount {
    /// Parses `"600"`, `"299.99"` or `"$600.00"` (at most two decimals).
    pub fn parse(text: &str) -> Result<Amount, CapabilityError> {
        parse_decimal(text, 2)
            .map(Amount)
            .map_err(CapabilityError::PolicyInvalid)
    }

    /// `"$600.00"` for USD, `"600.00 EUR"` otherwise.
    pub fn display(self, currency: &str) -> String {
        let plain = format!("{}.{:02}", self.0 / 100, self.0 % 100);
        if currency.eq_ignore_ascii_case("USD") {
            format!("${plain}")
        } else {
            format!("{plain} {currency}")
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Whole(n) => n
                .checked_mul(100)
                .filter(|v| *v <= MAX_VALUE)
                .map(Amount)
                .ok_or_else(|| serde::de::Error::custom("amount too large")),
            NumberOrText::Text(t) => parse_decimal(&t, 2)
                .map(Amount)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for MicroUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frac = format!("{:06}", self.0 % 1_000_000);
        let frac = frac.trim_end_matches('0');
        let frac = if frac.len() < 2 {
            format!("{frac:0<2}")
        } else {
            frac.to_owned()
        };
        write!(f, "${}.{frac}", self.0 / 1_000_000)
    }
}

impl Serialize for MicroUsd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MicroUsd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Whole(n) => n
                .checked_mul(1_000_000)
                .filter(|v| *v <= MAX_VALUE)
                .map(MicroUsd)
                .ok_or_else(|| serde::de::Error::custom("amount too large")),
            NumberOrText::Text(t) => parse_decimal(&t, 6)
                .map(MicroUsd)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Ttl {
    /// Parses `"30m"`, `"2h"`, `"1day"`.
    pub fn parse(text: &str) -> Result<Ttl, CapabilityError> {
        let dur = humantime::parse_duration(text.trim()).map_err(|e| {
            CapabilityError::PolicyInvalid(format!("ttl {text:?}: {e} (write e.g. \"30m\")"))
        })?;
        if dur.is_zero() {
            return Err(CapabilityError::PolicyInvalid(
                "ttl must be positive".into(),
            ));
        }
        Ok(Ttl(dur))
    }
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ttl::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly_and_refuse_floats_and_extra_decimals() {
        assert_eq!(parse_decimal("600", 2), Ok(60_000));
        assert_eq!(parse_decimal("$600.00", 2), Ok(60_000));
        assert_eq!(parse_decimal("487.5", 2), Ok(48_750));
        assert_eq!(parse_decimal("1,200.01", 2), Ok(120_001));
        assert!(parse_decimal("600.001", 2).is_err());
        assert!(parse_decimal("-1", 2).is_err());
        assert!(parse_decimal("", 2).is_err());
        assert!(parse_decimal("99999999999999999999", 2).is_err());
        assert_eq!(parse_decimal("0.000001", 6), Ok(1));
        let err = Policy::from_toml_str(
            "[payment]\nmerchant='a.com'\ncurrency='USD'\nmax_per_charge=600.5",
        )
        .expect_err("floats are refused");
        assert!(matches!(err, CapabilityError::PolicyParse(_)), "{err:?}");
    }

    #[test]
    fn hosts_normalize_and_wildcards_must_be_explicit() {
        assert_eq!(
            normalize_host(" United.COM. ", false),
            Ok("united.com".into())
        );
        assert_eq!(
            normalize_host("*.example.com", true),
            Ok("*.example.com".into())
        );
        assert!(normalize_host("*.example.com", false).is_err());
        assert!(normalize_host("*", true).is_err());
        assert!(normalize_host("*united.com", true).is_err());
        assert!(normalize_host("a..com", true).is_err());
        assert!(normalize_host("united.com:443", true).is_err());
        // One root dot, not several (they used to be trimmed): fail closed.
        assert!(normalize_host("united.com..", false).is_err());
        assert_eq!(
            normalize_web_entry("Google.com/flights/"),
            Ok("google.com/flights".into())
        );
        assert_eq!(normalize_web_entry("kayak.com/"), Ok("kayak.com".into()));
        assert!(normalize_web_entry("google.com/flights/../admin").is_err());
        assert!(normalize_web_entry("google.com/a?b").is_err());
    }

    #[test]
    fn policy_normalizes_recipients_methods_and_currency() {
        let p = Policy::from_toml_str(
            r#"
            ttl = "30m"
            [web]
            allow = ["Kayak.com"]
            methods = ["get", "post"]
            [payment]
            merchant = "united.com"
            currency = "usd"
            max_per_charge = "600.00"
            approval_above = 400
            [email]
            host = "api.mail.example"
            recipients = ["  Traveler@Example.com "]
            subject_contains = "Flight Confirmation"
            "#,
        )
        .expect("valid");
        assert_eq!(p.ttl, Some(Ttl(Duration::from_secs(1800))));
        let web = p.web.as_ref().expect("web");
        assert_eq!(web.allow, vec!["kayak.com"]);
        assert_eq!(web.methods, vec!["GET", "POST"]);
        let pay = p.payment.as_ref().expect("payment");
        assert_eq!(pay.currency, "USD");
        assert_eq!(pay.approval_above, Some(Amount(40_000)));
        let email = p.email.as_ref().expect("email");
        assert_eq!(email.recipients, vec!["traveler@example.com"]);
        assert_eq!(
            email.subject_contains.as_deref(),
            Some("flight confirmation")
        );
        // The JSON form stored in tokens round-trips.
        let json = serde_json::to_vec(&p).expect("json");
        let back: Policy = serde_json::from_slice(&json).expect("parse");
        assert_eq!(back.normalized(), Ok(p));
    }

    #[test]
    fn unknown_fields_and_bad_sections_are_refused() {
        assert!(Policy::from_toml_str("[web]\nallow=['a.com']\nhosts=['b.com']").is_err());
        assert!(Policy::from_toml_str("[web]\nallow=[]").is_err());
        assert!(Policy::from_toml_str("[shell]\nallow=true").is_err());
        assert!(Policy::from_toml_str("ttl='soon'").is_err());
        assert!(
            Policy::from_toml_str("[email]\nhost='m.example'\nrecipients=['not an address']")
                .is_err()
        );
        assert!(Policy::from_toml_str("[[approval]]\ntype='email'\nabove=5").is_err());
        assert!(Policy::from_toml_str("[[approval]]\ntype='email'").is_ok());
        assert!(Policy::from_toml_str("[websocket]\nallow=[]").is_err());
        assert!(Policy::from_toml_str("[websocket]\nallow=['a.com/x/../y']").is_err());
        assert!(Policy::from_toml_str("[websocket]\nallow=['a.com']\nmethods=['GET']").is_err());
    }

    #[test]
    fn websocket_grants_normalize_like_web_entries() {
        let p = Policy::from_toml_str(
            "[websocket]\nallow=[' Chat.Example.COM/Socket/ ', '*.ws.example']",
        )
        .expect("valid");
        let ws = p.websocket.as_ref().expect("websocket");
        assert_eq!(ws.allow, vec!["chat.example.com/Socket", "*.ws.example"]);
        assert_eq!(p.grant_kinds(), vec![ActionType::Websocket]);
        assert_eq!(
            p.grant_lines(),
            vec!["websocket: chat.example.com/Socket, *.ws.example"]
        );
    }
}
