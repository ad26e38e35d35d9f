//! Policy → biscuit datalog. Every block of a token (the authority block and
//! each attenuation) is rendered from a [`Policy`] the same way, as checks a
//! request must pass, so an appended block can only narrow. Policy strings
//! travel as datalog parameters, never spliced into source text.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::Term;
use biscuit_auth::BlockBuilder;
use serde::{Deserialize, Serialize};

use crate::policy::{Amount, ApprovalCondition, MicroUsd, Policy};
use crate::{ActionType, CapabilityError};

/// Name of the fact that carries a block's [`BlockRecord`] as JSON bytes.
pub(crate) const RECORD_FACT: &str = "openclaw_policy";
/// Version of the block record and of the datalog vocabulary below.
pub(crate) const RECORD_VERSION: u32 = 1;

/// What a block says, in a form `cap inspect` and block reasons read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlockRecord {
    pub version: u32,
    pub policy: Policy,
    /// Absolute expiry (unix seconds) computed from the policy's TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Why a check exists, so a failed check becomes a readable reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckKind {
    /// The request must fall within one of the block's grants.
    Scope,
    Expiry(u64),
    PaymentCeiling(Amount, String),
    PaymentTotal(Amount, String),
    EmailCount(u64),
    LlmBudget(MicroUsd),
    Approval(ApprovalCondition),
}

impl BlockRecord {
    pub(crate) fn new(policy: Policy, now: SystemTime) -> Result<BlockRecord, CapabilityError> {
        let expires_at = match policy.ttl {
            Some(ttl) => Some(
                unix_seconds(now)
                    .checked_add(ttl.0.as_secs())
                    .filter(|t| *t < i64::MAX as u64)
                    .ok_or_else(|| CapabilityError::PolicyInvalid("ttl is too long".into()))?,
            ),
            None => None,
        };
        Ok(BlockRecord {
            version: RECORD_VERSION,
            policy,
            expires_at,
        })
    }

    /// The kinds of this block's checks, in the order [`Self::block_builder`] emits them.
    pub(crate) fn check_kinds(&self) -> Vec<CheckKind> {
        render(self).1
    }

    pub(crate) fn block_builder(&self) -> Result<BlockBuilder, CapabilityError> {
        let (code, kinds, mut params) = render(self);
        debug_assert!(!kinds.is_empty());
        let json = serde_json::to_vec(self).expect("a block record is plain data");
        params.insert("record".to_owned(), Term::Bytes(json));
        let code = format!("{RECORD_FACT}({{record}});\n{code}");
        BlockBuilder::new()
            .code_with_params(code, params, HashMap::new())
            .map_err(|e| CapabilityError::Datalog(e.to_string()))
    }

    pub(crate) fn expiry_time(&self) -> Option<SystemTime> {
        self.expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }
}

pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Collects parameters while source text is written.
struct Params(HashMap<String, Term>);

impl Params {
    fn put(&mut self, term: Term) -> String {
        let name = format!("p{}", self.0.len());
        let placeholder = format!("{{{name}}}");
        self.0.insert(name, term);
        placeholder
    }
    fn str(&mut self, s: &str) -> String {
        self.put(Term::Str(s.to_owned()))
    }
    fn int(&mut self, v: u64) -> String {
        // Policy values are capped at MAX_VALUE when parsed, so this never saturates in practice.
        self.put(Term::Integer(i64::try_from(v).unwrap_or(i64::MAX)))
    }
    fn set<'a>(&mut self, items: impl IntoIterator<Item = &'a str>) -> String {
        let set: BTreeSet<Term> = items.into_iter().map(|s| Term::Str(s.to_owned())).collect();
        self.put(Term::Set(set))
    }
}

/// How `host` / `host/path-prefix` entries of a grant (`[web]`,
/// `[websocket]`) become scope branches: one per prefix entry, one for all
/// whole hosts; the hosts also answer DNS.
struct GrantScope {
    kind: &'static str,
    /// Facts and conditions a prefix branch adds after `path($p)`.
    prefix_facts: String,
    /// Those a whole-host branch adds after `host($h)`.
    host_facts: String,
    /// Whether the path without its format suffix (`route`) may equal the
    /// prefix.
    route_matches_prefix: bool,
}

impl GrantScope {
    fn branches<'e>(
        &self,
        p: &mut Params,
        entries: &'e [String],
        branches: &mut Vec<String>,
        dns_hosts: &mut Vec<&'e str>,
    ) {
        let kind = self.kind;
        let mut whole_hosts = Vec::new();
        for entry in entries {
            match entry.find('/') {
                None => whole_hosts.push(entry.as_str()),
                Some(i) => {
                    let (host, prefix) = entry.split_at(i);
                    let hosts = host_expr(p, &[host]);
                    let exact = p.str(prefix);
                    let dir = p.str(&format!("{prefix}/"));
                    let query = p.str(&format!("{prefix}?"));
                    let route = if self.route_matches_prefix {
                        format!(" || $r == {exact}")
                    } else {
                        String::new()
                    };
                    branches.push(format!(
                        "kind(\"{kind}\"), host($h), path($p), {}{hosts}, \
                         ($p == {exact} || $p.starts_with({dir}) || $p.starts_with({query}){route})",
                        self.prefix_facts
                    ));
                }
            }
            dns_hosts.push(entry.split('/').next().unwrap_or(entry));
        }
        if !whole_hosts.is_empty() {
            let hosts = host_expr(p, &whole_hosts);
            branches.push(format!(
                "kind(\"{kind}\"), host($h), {}{hosts}",
                self.host_facts
            ));
        }
    }
}

/// `$h` matches one of `patterns`: exact names through one set lookup,
/// `*.x` as a suffix `.x` (so `x` itself and `evilx` never match).
fn host_expr(p: &mut Params, patterns: &[&str]) -> String {
    let mut exact = Vec::new();
    let mut parts = Vec::new();
    for pat in patterns {
        match pat.strip_prefix('*') {
            Some(suffix) => {
                let s = p.str(suffix);
                parts.push(format!("$h.ends_with({s})"));
            }
            None => exact.push(*pat),
        }
    }
    if !exact.is_empty() {
        let s = p.set(exact);
        parts.insert(0, format!("{s}.contains($h)"));
    }
    if parts.is_empty() {
        return "false".to_owned();
    }
    format!("({})", parts.join(" || "))
}

/// Renders a block: (source with placeholders, check kinds in order, parameters).
fn render(record: &BlockRecord) -> (String, Vec<CheckKind>, HashMap<String, Term>) {
    let policy = &record.policy;
    let mut p = Params(HashMap::new());
    let mut checks: Vec<(String, CheckKind)> = Vec::new();

    // 1. Scope: one branch per way a request can fall within a grant.
    let mut branches = Vec::new();
    let mut dns_hosts: Vec<&str> = Vec::new();
    if let Some(web) = &policy.web {
        let methods = p.set(web.methods.iter().map(String::as_str));
        // `path` is the canonical path, `route` the same without a format
        // suffix (`authorize.rs`): `/flights.json` is the prefix `/flights`
        // itself to frameworks with suffixes.
        let scope = GrantScope {
            kind: "web",
            prefix_facts: format!("route($r), method($m), {methods}.contains($m), "),
            host_facts: format!("method($m), {methods}.contains($m), "),
            route_matches_prefix: true,
        };
        scope.branches(&mut p, &web.allow, &mut branches, &mut dns_hosts);
    }
    if let Some(pay) = &policy.payment {
        let merchant = p.str(&pay.merchant);
        let currency = p.str(&pay.currency);
        let card = match &pay.card {
            Some(card) => format!("($c == \"\" || $c == {})", p.str(card)),
            None => "$c == \"\"".to_owned(),
        };
        branches.push(format!(
            "kind(\"payment\"), merchant($mr), currency($cu), amount($a), credential($c), \
             $mr == {merchant}, $cu == {currency}, {card}"
        ));
        if let Some(card) = &pay.card {
            let c = p.str(card);
            branches.push(format!(
                "kind(\"credential\"), credential($c), host($h), $c == {c}, $h == {merchant}"
            ));
        }
        dns_hosts.push(&pay.merchant);
    }
    if let Some(email) = &policy.email {
        let host = p.str(&email.host);
        let allowed = p.set(email.recipients.iter().map(String::as_str));
        let subject = match &email.subject_contains {
            Some(s) => format!(", subject($s), $s.contains({})", p.str(s)),
            None => String::new(),
        };
        branches.push(format!(
            "kind(\"email\"), host($h), recipients($r), $h == {host}, $r.length() > 0, \
             {allowed}.contains($r){subject}"
        ));
        dns_hosts.push(&email.host);
    }
    if let Some(login) = &policy.login {
        let hosts = host_expr(&mut p, &[login.service.as_str()]);
        let cred = p.str(&login.credential);
        branches.push(format!(
            "kind(\"login\"), host($h), credential($c), {hosts}, ($c == \"\" || $c == {cred})"
        ));
        branches.push(format!(
            "kind(\"credential\"), credential($c), host($h), $c == {cred}, {hosts}"
        ));
        dns_hosts.push(&login.service);
    }
    if let Some(llm) = &policy.llm {
        let providers: Vec<&str> = llm.providers.iter().map(String::as_str).collect();
        let hosts = host_expr(&mut p, &providers);
        let cred = match &llm.credential {
            Some(c) => format!("($c == \"\" || $c == {})", p.str(c)),
            None => "$c == \"\"".to_owned(),
        };
        branches.push(format!(
            "kind(\"llm\"), host($h), credential($c), {hosts}, {cred}"
        ));
        if let Some(c) = &llm.credential {
            let c = p.str(c);
            branches.push(format!(
                "kind(\"credential\"), credential($c), host($h), $c == {c}, {hosts}"
            ));
        }
        dns_hosts.extend(providers);
    }
    if let Some(ws) = &policy.websocket {
        // As `[web]` entries, without methods: a WebSocket is always opened
        // by a GET (HTTP/2's extended CONNECT becomes one upstream).
        let scope = GrantScope {
            kind: "websocket",
            prefix_facts: String::new(),
            host_facts: String::new(),
            route_matches_prefix: false,
        };
        scope.branches(&mut p, &ws.allow, &mut branches, &mut dns_hosts);
    }
    if !dns_hosts.is_empty() {
        let hosts = host_expr(&mut p, &dns_hosts);
        branches.push(format!("kind(\"dns\"), host($h), {hosts}"));
    }
    if branches.is_empty() {
        branches.push("false".to_owned());
    }
    checks.push((
        format!("check if {}", branches.join("\n  or ")),
        CheckKind::Scope,
    ));

    // 2. Limits that depend on amounts and session counters.
    if let Some(pay) = &policy.payment {
        let max = p.int(pay.max_per_charge.0);
        checks.push((
            format!("check if kind($t), $t != \"payment\" or amount($a), $a <= {max}"),
            CheckKind::PaymentCeiling(pay.max_per_charge, pay.currency.clone()),
        ));
        if let Some(total) = pay.max_total {
            let max = p.int(total.0);
            checks.push((
                format!(
                    "check if kind($t), $t != \"payment\" or amount($a), spent($s), $s + $a <= {max}"
                ),
                CheckKind::PaymentTotal(total, pay.currency.clone()),
            ));
        }
    }
    if let Some(n) = policy.email.as_ref().and_then(|e| e.max_count) {
        let max = p.int(n);
        checks.push((
            format!("check if kind($t), $t != \"email\" or emails_sent($n), $n < {max}"),
            CheckKind::EmailCount(n),
        ));
    }
    if let Some(budget) = policy.llm.as_ref().and_then(|l| l.budget_usd) {
        let b = p.int(budget.0);
        checks.push((
            format!(
                "check if kind($t), $t != \"llm\" or llm_spent($s), cost($c), $s + $c <= {b}, $s < {b}"
            ),
            CheckKind::LlmBudget(budget),
        ));
    }

    // 3. Constraints: expiry and approval rules.
    if let Some(at) = record.expires_at {
        let date = p.put(Term::Date(at));
        checks.push((
            format!("check if time($t), $t <= {date}"),
            CheckKind::Expiry(at),
        ));
    }
    for rule in policy.approval_rules() {
        let name = p.str(kind_name(rule.kind));
        let mut over = match (rule.kind, rule.above) {
            (_, None) => String::new(),
            (ActionType::Llm, Some(a)) => {
                format!(" or cost($c), $c <= {}", p.int(a.0.saturating_mul(10_000)))
            }
            (_, Some(a)) => format!(" or amount($a), $a <= {}", p.int(a.0)),
        };
        // Each `or` is a way to pass without a human: below the spend
        // threshold is one, so a call needs approval when every condition holds.
        if let Some(spent) = rule.once_spent {
            over.push_str(&format!(" or llm_spent($s), $s < {}", p.int(spent.0)));
        }
        checks.push((
            format!("check if approved(true) or kind($t), $t != {name}{over}"),
            CheckKind::Approval(rule),
        ));
    }

    let code = checks
        .iter()
        .map(|(c, _)| format!("{c};\n"))
        .collect::<String>();
    let kinds = checks.into_iter().map(|(_, k)| k).collect();
    (code, kinds, p.0)
}

pub(crate) fn kind_name(kind: ActionType) -> &'static str {
    match kind {
        ActionType::Web => "web",
        ActionType::Login => "login",
        ActionType::Payment => "payment",
        ActionType::Email => "email",
        ActionType::Llm => "llm",
        ActionType::Websocket => "websocket",
    }
}

/// Reads the block record out of a block's printed source: the fact
/// `openclaw_policy(hex:…)`. Blocks without one (written by other tools)
/// yield `None` and are still enforced, only described less well.
pub(crate) fn record_from_source(source: &str) -> Option<BlockRecord> {
    let start = source.find(&format!("{RECORD_FACT}(hex:"))? + RECORD_FACT.len() + 5;
    let hex_text: String = source[start..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    let bytes = hex::decode(hex_text).ok()?;
    let record: BlockRecord = serde_json::from_slice(&bytes).ok()?;
    if record.version != RECORD_VERSION {
        return None;
    }
    let policy = record.policy.clone().normalized().ok()?;
    (policy == record.policy).then_some(record)
}
