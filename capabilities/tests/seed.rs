//! The seed scenario's token (examples/flight-booking/policy.toml): its
//! summary and its decisions on the actions the demo's agent attempts.

mod common;

use std::time::Duration;

use capabilities::{Counters, Verdict};
use common::*;

#[test]
fn seed_token_reads_four_grants_two_constraints() {
    let cap = mint_verified(&seed_policy());
    let summary = cap.summary();
    assert_eq!(summary.to_string(), "4 grants, 2 constraints");
    assert_eq!(summary.grant_lines.len(), 4);
    assert!(summary.signature_verified);
    assert_eq!(summary.expires_at.as_deref(), Some("2026-01-01T00:30:00Z"));
    assert_eq!(cap.revocation_ids().len(), 1);
    assert_eq!(cap.expires_at(), Some(t0() + Duration::from_secs(1800)));
}

#[test]
fn seed_token_decisions() {
    let cap = mint_verified(&seed_policy());
    let none = Counters::default();
    let now = t0() + Duration::from_secs(60);
    let d = |a| cap.authorize(&a, &none, now);

    let search = d(web(
        "GET",
        "google.com",
        "/travel/flights/search?from=SFO&to=JFK",
    ));
    assert_eq!(search.decision, Verdict::Allow, "{search:?}");
    assert_eq!(search.grant.as_deref(), Some("web"));
    assert_eq!(search.revocation_ids, cap.revocation_ids());
    assert_eq!(
        d(web("GET", "united.com", "/api/flights")).decision,
        Verdict::Allow
    );
    assert_eq!(
        d(web("GET", "kayak.com", "/api/compare")).decision,
        Verdict::Allow
    );
    assert_eq!(
        d(web("GET", "google.com", "/search?q=x")).decision,
        Verdict::Block
    );
    let slack = d(web("POST", "hooks.slack.com", "/services/T024/B037/xHjk7"));
    assert_eq!(slack.decision, Verdict::Block);
    assert!(slack.reason.contains("no capability"), "{}", slack.reason);
    assert_eq!(slack.grant, None);

    let login_ok = d(login("united.com", "united_login"));
    assert_eq!(login_ok.decision, Verdict::Allow, "{login_ok:?}");
    assert_eq!(login_ok.grant.as_deref(), Some("login"));

    let purchase = d(payment("united.com", 48_700, "USD"));
    assert_eq!(purchase.decision, Verdict::Approval, "{purchase:?}");
    assert!(purchase.reason.contains("$487.00"), "{}", purchase.reason);
    assert_eq!(
        d(payment("united.com", 39_900, "USD")).decision,
        Verdict::Allow
    );
    assert_eq!(
        d(payment("united.com", 60_001, "USD")).decision,
        Verdict::Block
    );

    let mail = d(email(
        &["traveler@example.com"],
        "Your flight confirmation UA 123",
    ));
    assert_eq!(mail.decision, Verdict::Allow, "{mail:?}");
    let third = cap.authorize(
        &email(&["traveler@example.com"], "flight confirmation"),
        &Counters {
            emails_sent: 2,
            ..Counters::default()
        },
        now,
    );
    assert_eq!(third.decision, Verdict::Block);
    assert!(third.reason.contains("2 of 2"), "{}", third.reason);

    // DNS: every host a grant names, nothing else.
    for host in [
        "google.com",
        "kayak.com",
        "united.com",
        "api.mail.example",
        "KAYAK.com.",
    ] {
        assert_eq!(
            cap.authorize_dns(host, now).decision,
            Verdict::Allow,
            "{host}"
        );
    }
    for host in [
        "hooks.slack.com",
        "evil.com",
        "www.kayak.com",
        "united.com.evil.net",
    ] {
        assert_eq!(
            cap.authorize_dns(host, now).decision,
            Verdict::Block,
            "{host}"
        );
    }
    // Credentials go only where their grant says.
    assert!(cap.credential_allowed("united_login", "united.com", now));
    assert!(cap.credential_allowed("united_card", "united.com", now));
    assert!(!cap.credential_allowed("united_login", "kayak.com", now));
    assert!(!cap.credential_allowed("united_card", "api.mail.example", now));
    assert!(!cap.credential_allowed("other", "united.com", now));

    // After 30 minutes everything is blocked.
    let late = t0() + Duration::from_secs(1801);
    let expired = cap.authorize(&web("GET", "kayak.com", "/"), &none, late);
    assert_eq!(expired.decision, Verdict::Block);
    assert!(expired.reason.contains("expired"), "{}", expired.reason);
    assert_eq!(
        cap.authorize_dns("kayak.com", late).decision,
        Verdict::Block
    );
    assert!(!cap.credential_allowed("united_login", "united.com", late));
    let at_expiry = t0() + Duration::from_secs(1800);
    assert_eq!(
        cap.authorize(&web("GET", "kayak.com", "/"), &none, at_expiry)
            .decision,
        Verdict::Allow
    );
}
