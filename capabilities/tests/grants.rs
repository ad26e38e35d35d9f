//! Each grant type: allowed, blocked and approval cases with their
//! boundaries and the usual tricks (host suffixes, path prefixes, recipient
//! case and whitespace, one cent over).

mod common;

use std::time::Duration;

use capabilities::{Counters, Policy, Verdict};
use common::*;

fn cap(toml: &str) -> capabilities::Capability {
    mint_verified(&Policy::from_toml_str(toml).expect("policy"))
}

fn now() -> std::time::SystemTime {
    t0() + Duration::from_secs(5)
}

/// Web prefixes match the path as frameworks route it (matrix parameters,
/// repeated and trailing slashes, percent-encoded characters, a format
/// suffix on the prefix itself), and every spelling that resolves to
/// another place on some server is refused outright.
#[test]
fn web_prefixes_match_routed_paths_and_refuse_escapes() {
    let c = cap(r#"
        [web]
        allow = ["google.com/travel/flights", "docs.example/guide.html"]
        methods = ["GET"]
    "#);
    let v = |h: &str, p: &str| c.authorize(&web("GET", h, p), &Counters::default(), now());
    for inside in [
        "/travel/flights",
        "/travel/flights/",
        "//travel//flights/search",
        "/travel;jsessionid=1/flights",
        "/travel/flights;jsessionid=1",
        "/travel/flights;a=1;b=2/search",
        "/travel/%66lights",
        "/%74ravel/flights/x",
        "/travel/flights.json",
        "/travel/flights.xml?q=1",
        "/travel/flights/search.json",
        "/travel/flights/...",
    ] {
        let d = v("google.com", inside);
        assert_eq!(d.decision, Verdict::Allow, "{inside}: {}", d.reason);
    }
    for outside in [
        "/travel/flightsx",
        "/travel/flights.exe",
        "/travel/flights%3Bx",
        "/travel/flights%3Fx",
        "/travel/flights%20",
        "/Travel/flights",
        "/travel",
        "/travel.json",
        "/travel/flights.json/../admin",
    ] {
        let d = v("google.com", outside);
        assert_eq!(d.decision, Verdict::Block, "{outside}: {}", d.reason);
    }
    for (refused, why) in [
        ("/travel/flights/..;/admin", "dot segment"),
        ("/travel/flights/..;x=1/admin", "dot segment"),
        ("/travel/flights/;../admin", "dot segment"),
        ("/travel/flights/%2e%2e;/admin", "dot segment"),
        ("/travel/flights/%2e%2e%3b/admin", "dot segment"),
        ("/travel/flights/%252e%252e/admin", "dot segment"),
        ("/travel/flights/..%20/admin", "dot segment"),
        ("/travel/flights/%5c..%5cadmin", "backslash"),
        ("/travel/flights%252F..%252Fadmin", "dot segment"),
        ("/travel/flights%252Fadmin", "encoded slash"),
        ("/travel/flights/%c0%ae%c0%ae/admin", "invalid UTF-8"),
        ("/travel/flights/\u{ff0e}\u{ff0e}/admin", "look-alike"),
        ("/travel/flights/%00", "control character"),
    ] {
        let d = v("google.com", refused);
        assert_eq!(d.decision, Verdict::Block, "{refused}");
        assert!(d.reason.contains(why), "{refused}: {}", d.reason);
    }
    // A prefix with a dot of its own still matches itself.
    assert_eq!(v("docs.example", "/guide.html").decision, Verdict::Allow);
    assert_eq!(v("docs.example", "/guide.html/x").decision, Verdict::Allow);
    assert_eq!(v("docs.example", "/guide").decision, Verdict::Block);
}

#[test]
fn web_hosts_match_exactly_unless_a_wildcard_is_written() {
    let c = cap(r#"
        [web]
        allow = ["united.com", "*.example.com", "google.com/flights"]
        methods = ["GET"]
    "#);
    let v = |m: &str, h: &str, p: &str| {
        c.authorize(&web(m, h, p), &Counters::default(), now())
            .decision
    };
    assert_eq!(v("GET", "united.com", "/"), Verdict::Allow);
    assert_eq!(v("GET", "UNITED.com.", "/x"), Verdict::Allow);
    for trick in [
        "united.com.evil.net",
        "evilunited.com",
        "www.united.com",
        "united.co",
        "united.com:443",
    ] {
        assert_eq!(v("GET", trick, "/"), Verdict::Block, "{trick}");
    }
    assert_eq!(v("GET", "a.example.com", "/"), Verdict::Allow);
    assert_eq!(v("GET", "a.b.example.com", "/"), Verdict::Allow);
    assert_eq!(v("GET", "example.com", "/"), Verdict::Block);
    assert_eq!(v("GET", "evilexample.com", "/"), Verdict::Block);
    assert_eq!(v("GET", "example.com.evil.net", "/"), Verdict::Block);
    // Methods.
    assert_eq!(v("POST", "united.com", "/"), Verdict::Block);
    assert_eq!(v("get", "united.com", "/"), Verdict::Allow);
    // Path prefixes: the prefix itself, below it, its query; nothing beside it.
    assert_eq!(v("GET", "google.com", "/flights"), Verdict::Allow);
    assert_eq!(v("GET", "google.com", "/flights/search"), Verdict::Allow);
    assert_eq!(v("GET", "google.com", "/flights?from=SFO"), Verdict::Allow);
    assert_eq!(v("GET", "google.com", "/flightsXYZ"), Verdict::Block);
    assert_eq!(v("GET", "google.com", "/"), Verdict::Block);
    assert_eq!(v("GET", "google.com", "/Flights"), Verdict::Block);
    // Traversal out of the prefix is refused outright.
    for sneaky in [
        "/flights/../admin",
        "/flights/%2e%2e/admin",
        "/flights%2f..%2fadmin",
        "/flights/.%2E/x",
        "/flights\\..\\x",
    ] {
        let d = c.authorize(
            &web("GET", "google.com", sneaky),
            &Counters::default(),
            now(),
        );
        assert_eq!(d.decision, Verdict::Block, "{sneaky}");
    }
    // Other action types are not web grants.
    assert_eq!(
        c.authorize(&login("united.com", "x"), &Counters::default(), now())
            .decision,
        Verdict::Block
    );
}

#[test]
fn web_methods_default_to_read_only() {
    let c = cap("[web]\nallow = [\"kayak.com\"]");
    let v = |m: &str| {
        c.authorize(&web(m, "kayak.com", "/"), &Counters::default(), now())
            .decision
    };
    assert_eq!(v("GET"), Verdict::Allow);
    assert_eq!(v("HEAD"), Verdict::Allow);
    assert_eq!(v("POST"), Verdict::Block);
    assert_eq!(v("DELETE"), Verdict::Block);
}

const PAYMENT: &str = r#"
    [payment]
    merchant = "united.com"
    currency = "USD"
    max_per_charge = "600.00"
    max_total = "1000.00"
    approval_above = "400.00"
    card = "united_card"
"#;

#[test]
fn payment_ceilings_are_inclusive_to_the_cent() {
    let c = cap(PAYMENT);
    let v = |cents: u64, spent: u64| {
        c.authorize(
            &payment("united.com", cents, "USD"),
            &Counters {
                spent_cents: spent,
                ..Counters::default()
            },
            now(),
        )
    };
    assert_eq!(
        v(40_000, 0).decision,
        Verdict::Allow,
        "exactly at the approval threshold"
    );
    let over = v(40_001, 0);
    assert_eq!(
        over.decision,
        Verdict::Approval,
        "one cent above the threshold"
    );
    assert_eq!(over.grant.as_deref(), Some("payment"));
    assert_eq!(
        v(60_000, 0).decision,
        Verdict::Approval,
        "exactly at the ceiling"
    );
    let d = v(60_001, 0);
    assert_eq!(d.decision, Verdict::Block, "one cent over the ceiling");
    assert!(
        d.reason.contains("$600.01") && d.reason.contains("$600.00"),
        "{}",
        d.reason
    );
    // Session total: 1000.00 inclusive.
    assert_eq!(v(30_000, 70_000).decision, Verdict::Allow);
    let d = v(30_001, 70_000);
    assert_eq!(d.decision, Verdict::Block);
    assert!(d.reason.contains("total"), "{}", d.reason);
    assert_eq!(v(1, 100_000).decision, Verdict::Block);
    // Huge values do not wrap around.
    assert_eq!(v(u64::MAX, 0).decision, Verdict::Block);
    assert_eq!(v(100, u64::MAX).decision, Verdict::Block);
    assert_eq!(v(100, i64::MAX as u64).decision, Verdict::Block);
}

#[test]
fn payment_merchant_currency_and_card_must_match() {
    let c = cap(PAYMENT);
    let d = |a| c.authorize(&a, &Counters::default(), now()).decision;
    assert_eq!(d(payment("united.com", 100, "usd")), Verdict::Allow);
    assert_eq!(d(payment("united.com", 100, "EUR")), Verdict::Block);
    assert_eq!(d(payment("evilunited.com", 100, "USD")), Verdict::Block);
    assert_eq!(
        d(payment("united.com.evil.net", 100, "USD")),
        Verdict::Block
    );
    let mut other_card = payment("united.com", 100, "USD");
    other_card.credential = Some("corporate_amex".into());
    assert_eq!(d(other_card), Verdict::Block);
    let mut no_amount = payment("united.com", 100, "USD");
    no_amount.amount_cents = None;
    assert_eq!(d(no_amount), Verdict::Block);
    let mut no_currency = payment("united.com", 100, "USD");
    no_currency.currency = None;
    assert_eq!(d(no_currency), Verdict::Block);
    // The merchant named in the action counts, not only the host.
    let mut elsewhere = payment("united.com", 100, "USD");
    elsewhere.merchant = Some("kayak.com".into());
    assert_eq!(d(elsewhere), Verdict::Block);
}

#[test]
fn approval_rules_apply_by_type_and_amount() {
    let c = cap(r#"
        [payment]
        merchant = "shop.example"
        currency = "EUR"
        max_per_charge = 100
        [email]
        host = "api.mail.example"
        recipients = ["a@example.com"]
        [[approval]]
        type = "payment"
        above = "50.00"
        [[approval]]
        type = "email"
    "#);
    let d = |a| c.authorize(&a, &Counters::default(), now());
    let mut p = payment("shop.example", 5_000, "EUR");
    p.credential = None;
    assert_eq!(d(p.clone()).decision, Verdict::Allow);
    p.amount_cents = Some(5_001);
    let approval = d(p);
    assert_eq!(approval.decision, Verdict::Approval);
    assert!(approval.reason.contains("50.00 EUR"), "{}", approval.reason);
    let mail = d(email(&["a@example.com"], "hi"));
    assert_eq!(mail.decision, Verdict::Approval);
    assert!(mail.reason.contains("every email"), "{}", mail.reason);
    // A block beats an approval.
    assert_eq!(d(email(&["b@example.com"], "hi")).decision, Verdict::Block);
}

const EMAIL: &str = r#"
    [email]
    host = "api.mail.example"
    recipients = ["traveler@example.com", "Boss@Example.com"]
    subject_contains = "Flight Confirmation"
    max_count = 2
"#;

#[test]
fn email_recipients_are_normalized_and_compared_exactly() {
    let c = cap(EMAIL);
    let d = |to: &[&str], subject: &str| {
        c.authorize(&email(to, subject), &Counters::default(), now())
            .decision
    };
    let s = "Your flight confirmation";
    assert_eq!(d(&["traveler@example.com"], s), Verdict::Allow);
    assert_eq!(d(&["  TRAVELER@example.COM "], s), Verdict::Allow);
    assert_eq!(
        d(&["boss@example.com", "traveler@example.com"], s),
        Verdict::Allow
    );
    assert_eq!(
        d(&["traveler@example.com", "attacker@evil.net"], s),
        Verdict::Block
    );
    assert_eq!(d(&["traveler@example.com.evil.net"], s), Verdict::Block);
    assert_eq!(d(&["xtraveler@example.com"], s), Verdict::Block);
    assert_eq!(d(&["traveler@example.com>"], s), Verdict::Block);
    assert_eq!(d(&[], s), Verdict::Block);
    // Subject must contain the phrase, case-insensitively.
    assert_eq!(
        d(&["traveler@example.com"], "FLIGHT CONFIRMATION #1"),
        Verdict::Allow
    );
    assert_eq!(
        d(&["traveler@example.com"], "flight confirm"),
        Verdict::Block
    );
    let mut no_subject = email(&["traveler@example.com"], s);
    no_subject.subject = None;
    assert_eq!(
        c.authorize(&no_subject, &Counters::default(), now())
            .decision,
        Verdict::Block
    );
    // Only through the mail API host.
    let mut other_host = email(&["traveler@example.com"], s);
    other_host.host = "smtp.evil.net".into();
    assert_eq!(
        c.authorize(&other_host, &Counters::default(), now())
            .decision,
        Verdict::Block
    );
}

#[test]
fn email_count_uses_the_session_counter() {
    let c = cap(EMAIL);
    let d = |sent: u64| {
        c.authorize(
            &email(&["traveler@example.com"], "flight confirmation"),
            &Counters {
                emails_sent: sent,
                ..Counters::default()
            },
            now(),
        )
    };
    assert_eq!(d(0).decision, Verdict::Allow);
    assert_eq!(d(1).decision, Verdict::Allow);
    let third = d(2);
    assert_eq!(third.decision, Verdict::Block);
    assert!(third.reason.contains("email limit"), "{}", third.reason);
}

#[test]
fn login_is_bound_to_its_service_and_credential() {
    let c = cap(r#"
        [login]
        service = "united.com"
        credential = "united_login"
        scopes = ["booking"]
    "#);
    let d = |a| c.authorize(&a, &Counters::default(), now()).decision;
    assert_eq!(d(login("united.com", "united_login")), Verdict::Allow);
    assert_eq!(d(login("united.com", "other_login")), Verdict::Block);
    assert_eq!(d(login("evilunited.com", "united_login")), Verdict::Block);
    assert_eq!(
        d(login("united.com.evil.net", "united_login")),
        Verdict::Block
    );
    assert_eq!(d(login("www.united.com", "united_login")), Verdict::Block);
    assert!(c.credential_allowed("united_login", "United.com", now()));
    assert!(!c.credential_allowed("united_login", "www.united.com", now()));
    assert!(!c.credential_allowed("united_login", "evilunited.com", now()));
    assert!(!c.credential_allowed("", "united.com", now()));
}

#[test]
fn llm_budget_uses_the_session_counter() {
    let c = cap(r#"
        [llm]
        providers = ["api.openai.com", "*.anthropic.com"]
        credential = "openai_key"
        budget_usd = "1.00"
        [[approval]]
        type = "llm"
        above = "0.50"
    "#);
    let d = |host: &str, cost: u64, spent: u64| {
        c.authorize(
            &llm(host, cost),
            &Counters {
                llm_spent_micro_usd: spent,
                ..Counters::default()
            },
            now(),
        )
        .decision
    };
    assert_eq!(d("api.openai.com", 10_000, 0), Verdict::Allow);
    assert_eq!(d("api.anthropic.com", 10_000, 0), Verdict::Allow);
    assert_eq!(d("anthropic.com", 10_000, 0), Verdict::Block);
    assert_eq!(d("api.openai.com.evil.net", 10_000, 0), Verdict::Block);
    assert_eq!(
        d("api.openai.com", 500_000, 500_000),
        Verdict::Allow,
        "exactly at budget"
    );
    assert_eq!(
        d("api.openai.com", 500_001, 500_000),
        Verdict::Block,
        "one micro-dollar over"
    );
    assert_eq!(
        d("api.openai.com", 0, 1_000_000),
        Verdict::Block,
        "budget spent, cost unknown"
    );
    assert_eq!(d("api.openai.com", 500_001, 0), Verdict::Approval);
    assert!(c.credential_allowed("openai_key", "api.openai.com", now()));
    assert!(!c.credential_allowed("openai_key", "evil.net", now()));
}

/// `[[approval]] type = "llm"` with `once_spent_usd`: calls are let out
/// until the session's LLM spend reaches the threshold, then each is held
/// for a human (with `above` too: only the costly ones); the reason names
/// the threshold and the spend; the rule is refused for other types.
#[test]
fn llm_approval_once_the_session_spent_a_threshold() {
    let c = cap(r#"
        [llm]
        providers = ["api.openai.com"]
        credential = "openai_key"
        budget_usd = "1.00"
        [[approval]]
        type = "llm"
        once_spent_usd = "0.50"
    "#);
    let d = |cost: u64, spent: u64| {
        c.authorize(
            &llm("api.openai.com", cost),
            &Counters {
                llm_spent_micro_usd: spent,
                ..Counters::default()
            },
            now(),
        )
    };
    assert_eq!(d(10_000, 0).decision, Verdict::Allow);
    assert_eq!(d(10_000, 499_999).decision, Verdict::Allow, "just under");
    let held = d(10_000, 500_000);
    assert_eq!(held.decision, Verdict::Approval, "reached exactly");
    assert_eq!(
        held.reason,
        "llm call after the session's llm spend reached $0.50 (500000 micro-USD spent): \
         needs approval"
    );
    assert_eq!(d(1, 900_000).decision, Verdict::Approval);
    // The budget still blocks, whatever a human would say.
    assert_eq!(d(200_000, 900_000).decision, Verdict::Block);

    // With `above`: once past the threshold, only calls above it are held.
    let c = cap(r#"
        [llm]
        providers = ["api.openai.com"]
        credential = "openai_key"
        [[approval]]
        type = "llm"
        above = "0.10"
        once_spent_usd = "0.50"
    "#);
    let d = |cost: u64, spent: u64| {
        c.authorize(
            &llm("api.openai.com", cost),
            &Counters {
                llm_spent_micro_usd: spent,
                ..Counters::default()
            },
            now(),
        )
    };
    assert_eq!(
        d(100_001, 0).decision,
        Verdict::Allow,
        "costly, spent little"
    );
    assert_eq!(
        d(100_000, 600_000).decision,
        Verdict::Allow,
        "cheap, spent much"
    );
    let held = d(100_001, 600_000);
    assert_eq!(held.decision, Verdict::Approval);
    assert!(
        held.reason
            .contains("is above $0.10 and the session's llm spend reached $0.50"),
        "{}",
        held.reason
    );
    let summary = c.summary();
    assert!(
        summary.constraint_lines.iter().any(|l| l
            == "approval: llm calls costing more than $0.10 once the session's llm spend \
                reaches $0.50 need a human"),
        "{:?}",
        summary.constraint_lines
    );

    // Only llm rules take a spend threshold.
    let err =
        Policy::from_toml_str("[[approval]]\ntype = \"payment\"\nonce_spent_usd = \"1.00\"\n")
            .expect_err("payment");
    assert!(err.to_string().contains("applies to llm only"), "{err}");
}

#[test]
fn an_empty_policy_allows_nothing() {
    let c = cap("ttl = \"5m\"");
    let d = c.authorize(&web("GET", "kayak.com", "/"), &Counters::default(), now());
    assert_eq!(d.decision, Verdict::Block);
    assert!(d.reason.contains("no web grant"), "{}", d.reason);
    assert_eq!(c.authorize_dns("kayak.com", now()).decision, Verdict::Block);
    assert_eq!(c.summary().to_string(), "0 grants, 1 constraint");
}

#[test]
fn malformed_actions_are_blocked_not_errors() {
    let c = cap("[web]\nallow = [\"kayak.com\"]");
    for host in [
        "",
        "kayak.com/x",
        "kay ak.com",
        "*.kayak.com",
        "kayak.com\n",
    ] {
        let d = c.authorize(&web("GET", host, "/"), &Counters::default(), now());
        assert_eq!(d.decision, Verdict::Block, "{host:?}");
    }
    let d = c.authorize(
        &web("GET", "kayak.com", "relative"),
        &Counters::default(),
        now(),
    );
    assert_eq!(d.decision, Verdict::Block);
}

#[test]
fn dns_and_credentials_stop_at_expiry_and_say_so() {
    let c = cap(r#"
        ttl = "10m"
        [login]
        service = "united.com"
        credential = "united_login"
        scopes = []
    "#);
    let before = t0() + Duration::from_secs(600);
    let after = t0() + Duration::from_secs(601);
    assert_eq!(
        c.authorize_dns("united.com", before).decision,
        Verdict::Allow
    );
    assert!(c.credential_allowed("united_login", "united.com", before));
    let dns = c.authorize_dns("united.com", after);
    assert_eq!(
        (dns.decision, dns.reason.as_str()),
        (Verdict::Block, "token expired")
    );
    assert!(!c.credential_allowed("united_login", "united.com", after));
    let other = c.authorize_dns("kayak.com", before);
    assert_eq!(
        (other.decision, other.reason.as_str()),
        (Verdict::Block, "no grant names kayak.com")
    );
}

/// A block written by another tool is enforced and its expiry still reads as
/// one (the failing check is printed and read, not assumed).
#[test]
fn an_opaque_blocks_expiry_reads_as_expiry() {
    let root = capabilities::mint(&seed_policy(), &ROOT_SECRET, t0()).expect("mint");
    let token = biscuit_auth::UnverifiedBiscuit::from_base64(&root).expect("parse");
    let block = biscuit_auth::BlockBuilder::new()
        .code("check if time($t), $t <= 2026-01-01T00:05:00Z;")
        .expect("datalog");
    let c = verify(
        &token
            .append(block)
            .expect("append")
            .to_base64()
            .expect("encode"),
    );
    let before = t0() + Duration::from_secs(300);
    let after = t0() + Duration::from_secs(301);
    assert_eq!(
        c.authorize_dns("kayak.com", before).decision,
        Verdict::Allow
    );
    let dns = c.authorize_dns("kayak.com", after);
    assert_eq!(
        (dns.decision, dns.reason.as_str()),
        (Verdict::Block, "token expired")
    );
    let web = c.authorize(&web("GET", "kayak.com", "/"), &Counters::default(), after);
    assert_eq!(web.decision, Verdict::Block);
    assert!(
        web.reason
            .ends_with("check failed in block 1: check if time($t), $t <= 2026-01-01T00:05:00Z"),
        "{}",
        web.reason
    );
}
