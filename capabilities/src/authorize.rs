//! Deciding one action against a verified token: the request becomes
//! authorizer facts added to the token's world (loaded once, `world.rs`),
//! every block's checks run under explicit limits, and the outcome (or any
//! error) becomes a [`Decision`]. Fail closed.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::datalog::Term;

use crate::datalog::{kind_name, unix_seconds, CheckKind};
use crate::path::{canonical_path, without_format_suffix};
use crate::policy::{normalize_recipient, Amount, MAX_VALUE};
use crate::token::Capability;
use crate::world::{FailedCheck, RequestFacts, TokenWorld};
use crate::{Action, ActionType, Counters, Decision, Host, Verdict};

/// The facts of one request, normalized the way policies are (borrowed
/// from the action where normalizing changes nothing).
struct Request<'a> {
    kind: &'static str,
    method: Cow<'a, str>,
    host: Host,
    /// The path as sent, for block reasons.
    raw_path: &'a str,
    /// The canonical path (`path::canonical_path`) a web prefix is compared with.
    path: Cow<'a, str>,
    amount: Option<i64>,
    currency: Option<String>,
    /// `None`: the host.
    merchant: Option<String>,
    recipients: BTreeSet<String>,
    subject: Option<String>,
    credential: Cow<'a, str>,
    /// `None`: an LLM call the catalog could not price. It adds no `cost`
    /// fact, so a budget or an approval threshold (which read `cost`) can
    /// never take it for free.
    cost: Option<i64>,
    spent: i64,
    emails_sent: i64,
    llm_spent: i64,
    time: u64,
}

/// Hosts from requests are read as [`Host`]s: lowercased and the root dot
/// dropped, but surrounding whitespace (or anything else) is malformed.
fn request_host(raw: &str) -> Result<Host, String> {
    Host::parse(raw).map_err(|_| format!("malformed host {raw:?}"))
}

fn value(v: u64, what: &str) -> Result<i64, String> {
    if v > MAX_VALUE {
        return Err(format!("{what} {v} is out of range"));
    }
    i64::try_from(v).map_err(|_| format!("{what} {v} is out of range"))
}

/// Refuses paths whose meaning upstream could differ from their text
/// (`path.rs`), with the reason a block receipt carries.
fn check_path(path: &str) -> Result<(), String> {
    crate::path::check_path(path).map_err(|e| e.to_string())
}

/// `s` trimmed and uppercased, borrowed when it already is.
fn upper_trimmed(s: &str) -> Cow<'_, str> {
    let t = s.trim();
    if t.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(t.to_ascii_uppercase())
    } else {
        Cow::Borrowed(t)
    }
}

impl<'a> Request<'a> {
    fn from_action(a: &'a Action, c: &Counters, now: SystemTime) -> Result<Request<'a>, String> {
        let host = request_host(&a.host)?;
        check_path(&a.path)?;
        let merchant = a
            .merchant
            .as_deref()
            .map(request_host)
            .transpose()?
            .map(|m| m.to_string());
        if a.kind == ActionType::Payment && a.amount_cents.is_none() {
            return Err("payment without an amount".to_owned());
        }
        if a.kind == ActionType::Email && a.recipients.is_empty() {
            return Err("email without recipients".to_owned());
        }
        Ok(Request {
            kind: kind_name(a.kind),
            method: upper_trimmed(&a.method),
            host,
            raw_path: &a.path,
            path: Cow::Owned(canonical_path(&a.path)),
            amount: a.amount_cents.map(|v| value(v, "amount")).transpose()?,
            currency: a.currency.as_ref().map(|c| c.trim().to_ascii_uppercase()),
            merchant,
            recipients: a
                .recipients
                .iter()
                .map(|r| normalize_recipient(r))
                .collect(),
            subject: a.subject.as_ref().map(|s| s.to_lowercase()),
            credential: Cow::Borrowed(a.credential.as_deref().unwrap_or_default()),
            cost: match (a.kind, a.cost_micro_usd) {
                (ActionType::Llm, None) => None,
                (_, c) => Some(value(c.unwrap_or(0), "cost")?),
            },
            spent: value(c.spent_cents, "spent_cents")?,
            emails_sent: value(c.emails_sent, "emails_sent")?,
            llm_spent: value(c.llm_spent_micro_usd, "llm_spent_micro_usd")?,
            time: unix_seconds(now),
        })
    }

    fn merchant(&self) -> &str {
        self.merchant.as_deref().unwrap_or(self.host.as_str())
    }

    /// A pseudo-request that only names a host (`dns`) or a credential use.
    fn pseudo(kind: &'static str, host: Host, credential: &'a str, now: SystemTime) -> Request<'a> {
        Request {
            kind,
            method: Cow::Borrowed(""),
            host,
            raw_path: "/",
            path: Cow::Borrowed("/"),
            amount: None,
            currency: None,
            merchant: Some(String::new()),
            recipients: BTreeSet::new(),
            subject: None,
            credential: Cow::Borrowed(credential),
            cost: Some(0),
            spent: 0,
            emails_sent: 0,
            llm_spent: 0,
            time: unix_seconds(now),
        }
    }

    /// The request's facts, added to the token's world the way biscuit's
    /// authorizer would add them (strings interned, recipients as a set).
    fn facts<'w>(&self, world: &'w TokenWorld) -> RequestFacts<'w> {
        let mut f = world.request();
        f.add("kind", |f| vec![f.str(self.kind)]);
        f.add("method", |f| vec![f.str(&self.method)]);
        f.add("host", |f| vec![f.str(self.host.as_str())]);
        f.add("path", |f| vec![f.str(&self.path)]);
        f.add("route", |f| vec![f.str(without_format_suffix(&self.path))]);
        f.add("merchant", |f| vec![f.str(self.merchant())]);
        f.add("recipients", |f| {
            vec![Term::Set(
                self.recipients.iter().map(|r| f.str(r)).collect(),
            )]
        });
        f.add("credential", |f| vec![f.str(&self.credential)]);
        if let Some(c) = self.cost {
            f.add("cost", |_| vec![Term::Integer(c)]);
        }
        f.add("spent", |_| vec![Term::Integer(self.spent)]);
        f.add("emails_sent", |_| vec![Term::Integer(self.emails_sent)]);
        f.add("llm_spent", |_| vec![Term::Integer(self.llm_spent)]);
        f.add("time", |_| vec![Term::Date(self.time)]);
        if let Some(a) = self.amount {
            f.add("amount", |_| vec![Term::Integer(a)]);
        }
        if let Some(c) = &self.currency {
            f.add("currency", |f| vec![f.str(c)]);
        }
        if let Some(subject) = &self.subject {
            f.add("subject", |f| vec![f.str(subject)]);
        }
        f
    }
}

fn money(cents: i64, currency: &str) -> String {
    Amount(u64::try_from(cents).unwrap_or(0)).display(currency)
}

impl Capability {
    /// Decides `action` given what the session already did and the time.
    /// Never fails: any error is a `block` whose reason says why.
    pub fn authorize(&self, action: &Action, counters: &Counters, now: SystemTime) -> Decision {
        let req = match Request::from_action(action, counters, now) {
            Ok(r) => r,
            Err(reason) => return self.decision(Verdict::Block, reason, None),
        };
        let grant = Some(req.kind.to_owned());
        match self.run(&req, action) {
            Ok(None) => self.decision(
                Verdict::Allow,
                format!("allowed by the {} grant", req.kind),
                grant,
            ),
            Ok(Some((Verdict::Approval, reason))) => {
                self.decision(Verdict::Approval, reason, grant)
            }
            Ok(Some((_, reason))) | Err(reason) => self.decision(Verdict::Block, reason, None),
        }
    }

    /// May the token reach `name` at all (does any grant name this host)?
    /// The proxy's DNS responder answers only such names.
    pub fn authorize_dns(&self, name: &str, now: SystemTime) -> Decision {
        let host = match request_host(name) {
            Ok(h) => h,
            Err(_) => {
                return self.decision(Verdict::Block, format!("malformed name {name:?}"), None)
            }
        };
        let req = Request::pseudo("dns", host.clone(), "", now);
        match self.run_pseudo(&req) {
            Ok(()) => self.decision(Verdict::Allow, format!("{host} is named by a grant"), None),
            Err(reason) => self.decision(Verdict::Block, reason, None),
        }
    }

    /// May the credential named `credential` be injected into a request to
    /// `host`? True only where a grant binds that name to that host: the
    /// login credential to its service, the card to the payment merchant,
    /// the LLM key to the providers; and the token has not expired at `now`.
    pub fn credential_allowed(&self, credential: &str, host: &str, now: SystemTime) -> bool {
        let Ok(host) = request_host(host) else {
            return false;
        };
        let req = Request::pseudo("credential", host, credential.trim(), now);
        self.run_pseudo(&req).is_ok()
    }

    /// The token's world, or why it could not be loaded (then all blocks).
    fn world(&self) -> Result<&TokenWorld, String> {
        self.world.as_ref().as_ref().map_err(Clone::clone)
    }

    fn run_pseudo(&self, req: &Request) -> Result<(), String> {
        let world = self.world()?;
        let mut facts = req.facts(world);
        match world.failed_checks(&mut facts)?.first() {
            None => Ok(()),
            Some(&failed @ (block, _)) => {
                let what = if req.kind == "dns" {
                    format!("no grant names {}", req.host)
                } else {
                    format!(
                        "no grant lets credential {:?} be used at {}",
                        req.credential, req.host
                    )
                };
                // Our expiry check is the only one of ours reading `time`;
                // an opaque block's check is printed and read.
                let expired = match self.check_kind(failed) {
                    Some(kind) => matches!(kind, CheckKind::Expiry(_)),
                    None => world.check_source(failed).contains("time($t)"),
                };
                Err(if expired {
                    "token expired".to_owned()
                } else if block == 0 {
                    what
                } else {
                    format!("narrowed by block {block}: {what}")
                })
            }
        }
    }

    /// `Ok(None)`: allowed; `Ok(Some((verdict, reason)))`: approval or block.
    fn run(&self, req: &Request, action: &Action) -> Result<Option<(Verdict, String)>, String> {
        let world = self.world()?;
        let mut facts = req.facts(world);
        let first = world.failed_checks(&mut facts)?;
        let Some(first_failure) = first.first() else {
            return Ok(None);
        };
        // A failed check of ours that is not an approval rule never mentions
        // `approved`, so it fails the second run too: block without it.
        if let Some(hard) = first.iter().find(|f| self.is_hard_check(f)) {
            return Ok(Some((Verdict::Block, self.reason(hard, req, action))));
        }
        // Only approval checks accept `approved(true)`: if everything passes
        // with it, the action is allowed once a human says yes.
        // Datalog only grows: adding the fact and re-running the rules
        // reaches the same world as a fresh run with it; every check is
        // evaluated again (`check all` and `reject if` can turn on more facts).
        let second = world.failed_checks_approved(&mut facts, &first)?;
        match second.first() {
            None => Ok(Some((
                Verdict::Approval,
                self.reason(first_failure, req, action),
            ))),
            Some(failure) => Ok(Some((Verdict::Block, self.reason(failure, req, action)))),
        }
    }

    fn reason(&self, &(block, check): &FailedCheck, req: &Request, a: &Action) -> String {
        let info = self.blocks.get(block as usize);
        let kind = info.and_then(|b| b.checks.get(check as usize));
        let prefix = if block == 0 {
            String::new()
        } else {
            format!("narrowed by block {block}: ")
        };
        let currency = req.currency.as_deref().unwrap_or("USD");
        let text = match kind {
            None => {
                let rule = self
                    .world()
                    .map(|w| w.check_source((block, check)))
                    .unwrap_or_default();
                format!("check failed in block {block}: {rule}")
            }
            Some(CheckKind::Scope) => {
                let policy = info.and_then(|b| b.record.as_ref()).map(|r| &r.policy);
                let has_grant = policy.is_some_and(|p| p.grant_kinds().contains(&a.kind));
                if has_grant {
                    format!(
                        "no capability: {} is outside the {} grant",
                        describe(req),
                        req.kind
                    )
                } else {
                    format!("no capability: no {} grant ({})", req.kind, describe(req))
                }
            }
            Some(CheckKind::Expiry(at)) => format!(
                "token expired at {}",
                humantime::format_rfc3339(UNIX_EPOCH + Duration::from_secs(*at))
            ),
            Some(CheckKind::PaymentCeiling(max, cur)) => format!(
                "payment of {} exceeds the {} per-charge ceiling",
                money(req.amount.unwrap_or(0), currency),
                max.display(cur)
            ),
            Some(CheckKind::PaymentTotal(max, cur)) => format!(
                "payment of {} would bring the session total to {}, over the {} limit",
                money(req.amount.unwrap_or(0), currency),
                money(req.amount.unwrap_or(0).saturating_add(req.spent), currency),
                max.display(cur)
            ),
            Some(CheckKind::EmailCount(max)) => format!(
                "email limit reached: {} of {max} already sent",
                req.emails_sent
            ),
            Some(CheckKind::LlmBudget(budget)) => match req.cost {
                Some(cost) => format!(
                    "llm budget of {budget} exhausted ({} micro-USD spent, this call {cost})",
                    req.llm_spent
                ),
                None => format!(
                    "llm call of unknown cost under a budget of {budget}: the proxy could not \
                     price it (add its model to the rate card, rates.toml; its body must be JSON \
                     naming the model and fit the classification cap)"
                ),
            },
            Some(CheckKind::Approval(rule)) => {
                let kind = rule.kind;
                let what = match rule.above {
                    Some(limit) if kind == ActionType::Payment => format!(
                        "payment of {} is above {}",
                        money(req.amount.unwrap_or(0), currency),
                        limit.display(currency)
                    ),
                    Some(limit) => match req.cost {
                        Some(cost) => format!(
                            "{} call costing {cost} micro-USD is above {}",
                            kind_name(kind),
                            limit.display("USD")
                        ),
                        None => format!(
                            "{} call of unknown cost (its model is not on the rate card)",
                            kind_name(kind)
                        ),
                    },
                    None if rule.once_spent.is_some() => format!("{} call", kind_name(kind)),
                    None => format!("every {}", kind_name(kind)),
                };
                match (rule.once_spent, rule.above, req.cost) {
                    (Some(threshold), above, _) => format!(
                        "{what}{} the session's llm spend reached {threshold} ({} micro-USD \
                         spent): needs approval",
                        if above.is_some() { " and" } else { " after" },
                        req.llm_spent
                    ),
                    (None, Some(limit), None) if kind == ActionType::Llm => {
                        format!("{what}: needs approval above {}", limit.display("USD"))
                    }
                    _ if rule.above.is_none() => format!("{what} needs approval"),
                    _ => format!("{what}: needs approval"),
                }
            }
        };
        format!("{prefix}{text}")
    }

    /// What a check of ours is for; `None` for opaque blocks.
    fn check_kind(&self, (block, check): FailedCheck) -> Option<&CheckKind> {
        self.blocks
            .get(block as usize)
            .and_then(|b| b.checks.get(check as usize))
    }

    /// Known to be a non-approval check (opaque blocks are never assumed).
    fn is_hard_check(&self, failed: &FailedCheck) -> bool {
        self.check_kind(*failed)
            .is_some_and(|k| !matches!(k, CheckKind::Approval(..)))
    }

    fn decision(&self, verdict: Verdict, reason: String, grant: Option<String>) -> Decision {
        Decision {
            decision: verdict,
            reason,
            grant,
            revocation_ids: self.revocation_ids(),
        }
    }
}

/// `GET google.com/flights`, `payment of $487.00 at united.com`, …
fn describe(r: &Request) -> String {
    match r.kind {
        // `money` already names the currency ("$487.00", "300.00 EUR").
        "payment" => match r.currency.as_deref() {
            Some(currency) => format!(
                "payment of {} at {}",
                money(r.amount.unwrap_or(0), currency),
                r.merchant()
            ),
            None => format!(
                "payment of {} (no currency) at {}",
                Amount(u64::try_from(r.amount.unwrap_or(0)).unwrap_or(0)),
                r.merchant()
            ),
        },
        "email" => {
            let to: Vec<&str> = r.recipients.iter().map(String::as_str).collect();
            format!(
                "email to {} via {} with subject {:?}",
                to.join(", "),
                r.host,
                r.subject.as_deref().unwrap_or("")
            )
        }
        "login" | "llm" if !r.credential.is_empty() => {
            format!("{} at {} with {}", r.kind, r.host, r.credential)
        }
        _ => format!("{} {}{}", r.method, r.host, r.raw_path),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The path check as first written (lowercase copy, `%2e` replaced per
    /// segment). The check now refuses more spellings (`..;`, double
    /// encoding, ...; `path.rs`), never fewer.
    fn check_path_by_copying(path: &str) -> Result<(), String> {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} does not start with /"));
        }
        let plain = path.split(['?', '#']).next().unwrap_or(path);
        let lower = plain.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
            return Err("path contains an encoded slash or backslash".to_owned());
        }
        let dotty = lower.split('/').any(|seg| {
            let seg = seg.replace("%2e", ".");
            seg == "." || seg == ".."
        });
        if dotty {
            return Err("path contains a dot segment".to_owned());
        }
        if path.chars().any(char::is_control) {
            return Err("path contains control characters".to_owned());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        #[test]
        fn path_check_refuses_what_the_copying_check_refused(
            path in "/?((\\.|%|2|e|E|f|F|5|c|C|/|\\\\|\\?|#|a|\u{7f}|é){0,12})",
        ) {
            if check_path_by_copying(&path).is_err() {
                prop_assert!(check_path(&path).is_err(), "{:?}", path);
            }
        }

        #[test]
        fn methods_uppercase_as_before(method in "[ \tgGeEtTpP\u{e9}]{0,6}") {
            prop_assert_eq!(upper_trimmed(&method), method.trim().to_ascii_uppercase());
        }
    }

    #[test]
    fn dot_segments_in_every_spelling_are_refused() {
        for p in ["/a/./b", "/a/../b", "/%2e/x", "/%2E%2e", "/.%2E/", "/a/.."] {
            assert!(check_path(p).is_err(), "{p}");
        }
        for p in ["/a/.../b", "/%2e%2e%2e", "/.x", "/%2ex", "/a?/../b"] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }
}
