//! Concurrency through the enforcing proxy with real curl: payments and
//! emails racing their ceilings are decided one counter at a time (exactly
//! the allowed number forwarded), a payment held for a human keeps its
//! amount reserved while other requests carry on, and every receipt verifies
//! and re-derives from the token.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use enforce::{ApiBroker, EventKind};
use support::{decisions, Options, Session};

const PURCHASE: &str = "https://united.com/api/booking/purchase";

fn purchase(dollars: u32) -> String {
    format!(r#"{{"flights":["UA 1"],"total":"{dollars}.00","currency":"USD"}}"#)
}

/// Starts all `n` requests at once and returns their statuses.
async fn race(s: &Session, n: usize, url: &str, body: &str) -> Vec<u16> {
    let replies = futures_util::future::join_all((0..n).map(|_| s.post_json(url, body))).await;
    replies.into_iter().map(|r| r.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_payments_and_emails_cannot_pass_their_ceilings() {
    let s = Session::start(Options::default()).await;

    // Twelve $100 purchases at once against max_total = $600: six go.
    let statuses = race(&s, 12, PURCHASE, &purchase(100)).await;
    assert_eq!(
        statuses.iter().filter(|&&c| c == 200).count(),
        6,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&c| c == 403).count(),
        6,
        "{statuses:?}"
    );
    assert_eq!(s.mock.seen_for("united.com").len(), 6);
    assert_eq!(s.ledger.committed().spent_cents, 60_000);
    assert_eq!(s.ledger.reserved().spent_cents, 0);

    // Five emails at once against max_count = 2: two go.
    let mail = r#"{"to":"traveler@example.com","subject":"Your flight confirmation","body":"x"}"#;
    let statuses = race(&s, 5, "https://api.mail.example/v1/send", mail).await;
    assert_eq!(
        statuses.iter().filter(|&&c| c == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(s.mock.seen_for("api.mail.example").len(), 2);
    assert_eq!(s.ledger.committed().emails_sent, 2);

    let chain = s.finish_and_verify();
    assert_eq!(s.rederive(&chain), 17);
    // Each allowed payment saw every earlier one (reserved or committed):
    // the counters they were decided with are 0, 100, ..., 500 dollars.
    let mut seen: Vec<u64> = chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            receipts::Body::Decision(d)
                if d.action["type"] == "payment" && d.decision["decision"] == "allow" =>
            {
                d.counters["spent_cents"].as_u64()
            }
            _ => None,
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 10_000, 20_000, 30_000, 40_000, 50_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_payment_reserves_its_amount_while_others_carry_on() {
    let (broker, approvals) = ApiBroker::new();
    let mut s = Session::start(Options {
        broker: Some(Arc::new(broker)),
        ..Options::default()
    })
    .await;

    // $450 is above the $400 approval threshold: held until answered below.
    let held = {
        let body = purchase(450);
        let s = &s;
        async move { s.post_json(PURCHASE, &body).await }
    };
    let others = async {
        let mut pending = Vec::new();
        for _ in 0..2400 {
            pending = approvals.pending();
            if !pending.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(pending.len(), 1);
        // Web requests are not held up by the pending approval.
        let web = futures_util::future::join_all(
            (0..4).map(|_| s.curl("https://kayak.com/flights?q=SFO-JFK", &[])),
        )
        .await;
        let web: Vec<u16> = web.iter().map(|r| r.status).collect();
        // $450 held + $100 fits under $600; a second $100 does not.
        let pay = race(&s, 4, PURCHASE, &purchase(100)).await;
        let forwarded_while_held = s.mock.seen_for("united.com").len();
        approvals
            .answer(pending[0].request.id, true, "reviewer")
            .unwrap();
        (web, pay, forwarded_while_held)
    };
    let (held, (web, pay, forwarded_while_held)) = tokio::join!(held, others);
    assert_eq!(held.status, 200, "{held:?}");
    assert_eq!(web, vec![200; 4]);
    assert_eq!(pay.iter().filter(|&&c| c == 200).count(), 1, "{pay:?}");
    assert_eq!(
        forwarded_while_held, 1,
        "only the $100 went while $450 was held"
    );
    assert_eq!(s.mock.seen_for("united.com").len(), 2);
    assert_eq!(s.ledger.committed().spent_cents, 55_000);
    assert_eq!(s.ledger.reserved().spent_cents, 0);
    let events = s.drain_events();
    assert!(events.iter().any(|e| e.kind == EventKind::Approved));

    let chain = s.finish_and_verify();
    assert_eq!(s.rederive(&chain), 9);
    let blocked = decisions(&chain)
        .into_iter()
        .filter(|d| d.1 == "block")
        .count();
    assert_eq!(blocked, 3);
    assert_eq!(approvals_of(&chain), vec![(true, "reviewer".to_owned())]);
}

fn approvals_of(chain: &receipts::VerifiedChain) -> Vec<(bool, String)> {
    support::approvals(chain)
        .into_iter()
        .map(|(_, ok, who)| (ok, who))
        .collect()
}

/// Concurrent HTTP/2 streams with the same method and path on one
/// connection: each forwarded request completes once, under its own request
/// number and receipt (the gate finds it again by the tag it set, not by its
/// connection, method and path, which these share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_path_streams_on_one_connection_complete_under_their_own_numbers() {
    let mut s = Session::start(Options::default()).await;
    let url = "https://google.com/travel/flights/search?from=SFO&to=JFK";
    // `-Z`: curl sends the transfers in parallel, multiplexed on one HTTP/2
    // connection.
    let mut args = vec!["--http2", "-Z"];
    args.extend(std::iter::repeat_n(url, 7));
    let reply = s.curl(url, &args).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(s.mock.seen_for("google.com").len(), 8);
    // A stream's `completed` comes when its body has been handed over,
    // which may be just after curl has read it: wait for all eight.
    let mut events = s.drain_events();
    let done = |events: &[enforce::Event]| {
        events
            .iter()
            .filter(|e| e.kind == EventKind::Completed)
            .count()
    };
    while done(&events) < 8 {
        match tokio::time::timeout(Duration::from_secs(30), s.events.recv()).await {
            Ok(Ok(e)) => events.push(e),
            _ => break,
        }
    }
    let of = |kind: EventKind| {
        let mut v: Vec<(u64, u64, Option<u64>)> = events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| (e.request, e.conn, e.receipt))
            .collect();
        v.sort_unstable();
        v
    };
    let (allowed, completed) = (of(EventKind::Allowed), of(EventKind::Completed));
    assert_eq!(allowed.len(), 8, "{events:#?}");
    assert_eq!(completed, allowed, "{events:#?}");
    let conns: std::collections::BTreeSet<u64> = allowed.iter().map(|a| a.1).collect();
    assert!(conns.len() < 8, "streams shared a connection: {conns:?}");
    assert!(events
        .iter()
        .filter(|e| e.kind == EventKind::Completed)
        .all(|e| e.status == Some(200)));
    let chain = s.finish_and_verify();
    assert_eq!(s.rederive(&chain), 8);
}
