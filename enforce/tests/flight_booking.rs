//! The seed scenario end to end: the flight-booking token, its catalog and
//! secrets, real curl through the real proxy to local HTTPS services.
#![allow(clippy::unwrap_used)]

mod support;

use enforce::EventKind;
use proxy::{DnsVerdict, Gate};
use support::*;
use test_support::Scripted;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_booking_token_end_to_end() {
    let mut s = Session::start(Options {
        script: vec![Scripted::Approve],
        ..Options::default()
    })
    .await;
    let login = s.placeholder("united_login");
    let card = s.placeholder("united_card");
    assert!(login.starts_with("ocs_united_login_"), "{login}");

    // 1. Search: web access, allowed.
    let r = s
        .curl(
            "https://google.com/travel/flights/search?from=SFO&to=JFK",
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.blocked().is_none());
    assert_eq!(s.mock.seen_for("google.com").len(), 1);

    // 2. Login: the sandbox sends the placeholder, the upstream sees the real
    //    password, and the echo coming back shows the placeholder again.
    let r = s
        .post_json(
            "https://united.com/api/auth/login",
            &format!(r#"{{"username":"traveler@example.com","password":"{login}"}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen_for("united.com");
    let upstream_body = String::from_utf8(seen[0].body.clone()).unwrap();
    assert!(upstream_body.contains(LOGIN_SECRET), "{upstream_body}");
    assert!(!upstream_body.contains(&login));
    assert!(
        !r.body.contains(LOGIN_SECRET),
        "secret leaked back: {}",
        r.body
    );
    assert!(r.body.contains(&login), "{}", r.body);

    // 3. Slack webhook: no capability, refused without reaching the upstream.
    let r = s
        .post_json(
            "https://hooks.slack.com/services/T024/B037/xHjk7",
            r#"{"text":"booking in progress"}"#,
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.blocked().is_some());
    let json: serde_json::Value = serde_json::from_str(r.body.trim()).unwrap();
    assert_eq!(json["blocked"], true);
    assert!(s.mock.seen_for("hooks.slack.com").is_empty());

    // 4. $487 purchase: over the $400 approval threshold, held, approved,
    //    forwarded with the real card number.
    let r = s
        .post_json(
            "https://united.com/api/booking/purchase",
            &format!(
                r#"{{"flights":["UA 2847","UA 1192"],"total":"487.00","currency":"USD","card_number":"{card}"}}"#
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.broker.asked().len(), 1);
    assert_eq!(s.broker.asked()[0].action.amount_cents, Some(48_700));
    // The human is asked with the placeholder, never the card it stands for
    // (the substitution is applied only once approved).
    let question = serde_json::to_string(&s.broker.asked()).unwrap();
    assert!(!question.contains(CARD_SECRET), "{question}");
    let purchase = s.mock.seen_for("united.com").pop().unwrap();
    assert_eq!(purchase.path, "/api/booking/purchase");
    assert!(String::from_utf8_lossy(&purchase.body).contains(CARD_SECRET));
    assert!(!r.body.contains(CARD_SECRET));
    assert_eq!(s.ledger.committed().spent_cents, 48_700);

    // 5. $700 purchase: over the ceiling, refused without asking anyone.
    let r = s
        .post_json(
            "https://united.com/api/booking/purchase",
            r#"{"flights":["UA 1"],"total":"700.00","currency":"USD"}"#,
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(s.broker.asked().len(), 1);
    assert_eq!(s.mock.seen_for("united.com").len(), 2);
    assert_eq!(s.ledger.committed().spent_cents, 48_700);

    // 6. Emails: the first goes, one to another recipient is refused (and
    //    does not count), the second goes, the third hits max_count = 2.
    let mail = |to: &str| {
        format!(r#"{{"to":"{to}","subject":"Your flight confirmation: SFO-JFK","body":"HKJX7M"}}"#)
    };
    let url = "https://api.mail.example/v1/send";
    let r = s.post_json(url, &mail("traveler@example.com")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s.post_json(url, &mail("someone@else.example")).await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = s
        .post_json(
            url,
            r#"{"to":"traveler@example.com","cc":["spy@else.example"],"subject":"flight confirmation"}"#,
        )
        .await;
    assert_eq!(r.status, 403, "a cc to someone else must be refused: {r:?}");
    let r = s.post_json(url, &mail("traveler@example.com")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s.post_json(url, &mail("traveler@example.com")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(s.mock.seen_for("api.mail.example").len(), 2);
    assert_eq!(s.ledger.committed().emails_sent, 2);

    // DNS: granted names resolve to the proxy, others are NXDOMAIN with one
    // receipt per name however often they are asked.
    assert_eq!(s.gate.dns("united.com"), DnsVerdict::ResolveToProxy);
    assert_eq!(s.gate.dns("hooks.slack.com"), DnsVerdict::NxDomain);
    assert_eq!(s.gate.dns("hooks.slack.com"), DnsVerdict::NxDomain);

    // The chain verifies, holds one decision per request (+1 DNS), the
    // approval names its answerer, and never a secret value.
    let chain = s.finish_and_verify();
    assert_eq!(s.rederive(&chain), 10);
    let d = decisions(&chain);
    let verdicts: Vec<&str> = d.iter().map(|x| x.1.as_str()).collect();
    assert_eq!(
        verdicts,
        vec![
            "allow", "allow", "block", "approval", "block", "allow", "block", "block", "allow",
            "block", "block"
        ],
        "{d:#?}"
    );
    assert!(d.iter().take(10).all(|x| x.2 == "token"), "{d:#?}");
    assert_eq!(d[10].2, "dns");
    assert_eq!(d[10].4["host"], "hooks.slack.com");
    assert_eq!(d[1].4["type"], "login");
    assert_eq!(d[1].4["credential"], "united_login");
    assert_eq!(d[3].4["amount_cents"], 48_700);
    assert_eq!(d[4].4["amount_cents"], 70_000);
    let a = approvals(&chain);
    assert_eq!(a, vec![(d[3].0, true, "test".to_owned())]);
    let text = s.receipts_text();
    assert!(!text.contains(LOGIN_SECRET) && !text.contains(CARD_SECRET));

    // The event stream told the same story.
    let events = s.drain_events();
    let kinds: Vec<EventKind> = events
        .iter()
        .filter(|e| e.kind != EventKind::Completed)
        .map(|e| e.kind)
        .collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        vec![
            Allowed, Allowed, Blocked, Pending, Approved, Blocked, Allowed, Blocked, Blocked,
            Allowed, Blocked, Blocked
        ],
        "{events:#?}"
    );
    let login_event = events
        .iter()
        .find(|e| e.kind == Allowed && e.path == "/api/auth/login")
        .unwrap();
    assert_eq!(login_event.credentials, vec!["united_login"]);
    let done = events
        .iter()
        .find(|e| e.kind == Completed && e.host == "google.com")
        .unwrap();
    assert_eq!(done.status, Some(200));
    assert!(done.bytes.unwrap() > 0);
    for e in &events {
        let json = serde_json::to_string(e).unwrap();
        assert!(!json.contains(LOGIN_SECRET) && !json.contains(CARD_SECRET));
    }
}
