//! Approval holds through the real proxy: no answer in time denies, a
//! crashed broker denies, the API broker answers by id, and a held payment's
//! reservation keeps a concurrent one from racing past the ceiling.
#![allow(clippy::unwrap_used)]

mod support;

use std::{sync::Arc, time::Duration};

use enforce::{ApiBroker, EventKind};
use support::*;
use test_support::Scripted;

const PURCHASE: &str = "https://united.com/api/booking/purchase";

fn purchase(total: &str) -> String {
    format!(r#"{{"flights":["UA 2847"],"total":"{total}","currency":"USD"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_in_time_is_denied() {
    let mut s = Session::start(Options {
        script: vec![Scripted::Never],
        approval_timeout: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    // Wall clock, not tokio's paused time: the request crosses real TLS
    // sockets, and a paused clock would jump to the timeout while they are
    // busy. Only a lower bound is asserted; the exact timing is tested with
    // paused time in `enforce::approval`'s own tests.
    let started = std::time::Instant::now();
    let r = s.post_json(PURCHASE, &purchase("487.00")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.blocked().unwrap().contains("timed out"), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(s.mock.seen().is_empty());
    // The reservation was released: nothing spent, nothing held.
    assert_eq!(s.ledger.committed().spent_cents, 0);
    assert_eq!(s.ledger.reserved().spent_cents, 0);
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, "approval");
    assert_eq!(
        approvals(&chain),
        vec![(d[0].0, false, "timeout".to_owned())]
    );
    let kinds: Vec<_> = s.drain_events().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventKind::Pending, EventKind::Denied]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_broker_denies() {
    let s = Session::start(Options {
        script: vec![Scripted::Crash],
        ..Options::default()
    })
    .await;
    let r = s.post_json(PURCHASE, &purchase("487.00")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.blocked().unwrap().contains("broker went away"), "{r:?}");
    assert!(s.mock.seen().is_empty());
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(
        approvals(&chain),
        vec![(d[0].0, false, "broker".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_saying_no_denies() {
    let s = Session::start(Options {
        script: vec![Scripted::Deny],
        ..Options::default()
    })
    .await;
    let r = s.post_json(PURCHASE, &purchase("450.00")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.blocked().unwrap().contains("denied by test"), "{r:?}");
    assert!(s.mock.seen().is_empty());
    assert_eq!(s.ledger.committed().spent_cents, 0);
    s.finish_and_verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_broker_answers_by_id_and_reservations_hold_the_ceiling() {
    let (api, handle) = ApiBroker::new();
    let s = Arc::new(
        Session::start(Options {
            broker: Some(Arc::new(api)),
            ..Options::default()
        })
        .await,
    );
    let mut changes = handle.changes();
    // A $487 purchase is held...
    let first = tokio::spawn({
        let s = s.clone();
        async move { s.post_json(PURCHASE, &purchase("487.00")).await }
    });
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .unwrap()
        .unwrap();
    let pending = handle.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].request.action.amount_cents, Some(48_700));
    assert_eq!(s.ledger.reserved().spent_cents, 48_700);
    // ...and while it waits, a $150 purchase (fine on its own, under the
    // approval threshold) would take the total to $637: over the $600 ceiling.
    let r = s.post_json(PURCHASE, &purchase("150.00")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(s.mock.seen().is_empty());
    // The reviewer approves by id; the held request goes through.
    handle.answer(pending[0].request.id, true, "ui").unwrap();
    let r = first.await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.mock.seen_for("united.com").len(), 1);
    assert_eq!(s.ledger.committed().spent_cents, 48_700);
    assert_eq!(s.ledger.reserved().spent_cents, 0);
    // $100 more fits (587 ≤ 600), no approval needed.
    let r = s.post_json(PURCHASE, &purchase("100.00")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(handle.pending().is_empty());
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    let verdicts: Vec<&str> = d.iter().map(|x| x.1.as_str()).collect();
    assert_eq!(verdicts, vec!["approval", "block", "allow"]);
    assert_eq!(approvals(&chain), vec![(d[0].0, true, "ui".to_owned())]);
    assert_eq!(s.rederive(&chain), 3);
}

/// Waits (up to 20 s) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

/// A held purchase whose client goes away (curl gives up) is withdrawn
/// from the human, a late "yes" finds nothing to approve, nothing goes
/// upstream, and the chain still says how the hold ended: one approval
/// receipt, denied by `client`. Over HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_whose_client_went_away_is_receipted_as_withdrawn() {
    for version in ["--http1.1", "--http2"] {
        let (api, handle) = ApiBroker::new();
        let mut s = Session::start(Options {
            broker: Some(Arc::new(api)),
            ..Options::default()
        })
        .await;
        let body = purchase("487.00");
        let port = s.proxy.https_addr().unwrap().port();
        let curl = tokio::process::Command::new("curl")
            .args(["-sS", version, "--max-time", "3", "--cacert"])
            .arg(&s.session_ca)
            .arg("--connect-to")
            .arg(format!("::127.0.0.1:{port}"))
            .args(["-X", "POST", "-H", "content-type: application/json"])
            .args(["--data-binary", &body, PURCHASE])
            .output();
        let curl = tokio::spawn(curl);
        eventually("the purchase is held", || handle.pending().len() == 1).await;
        let id = handle.pending()[0].request.id;
        let out = curl.await.unwrap().unwrap();
        assert!(!out.status.success(), "curl gave up waiting");
        eventually("the hold is withdrawn", || handle.pending().is_empty()).await;
        assert_eq!(
            handle.answer(id, true, "ui"),
            Err(enforce::ApprovalError::NotTaken {
                id,
                why: enforce::NotTaken::Withdrawn
            })
        );
        eventually("the withdrawal is receipted", || {
            s.receipts_text().contains("\"approver\":\"client\"")
        })
        .await;
        assert!(s.mock.seen().is_empty());
        let chain = s.finish_and_verify();
        let d = decisions(&chain);
        assert_eq!(d.len(), 1, "{version}");
        assert_eq!(d[0].1, "approval");
        assert_eq!(
            approvals(&chain),
            vec![(d[0].0, false, "client".to_owned())],
            "{version}"
        );
        let events = s.drain_events();
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![EventKind::Pending, EventKind::Denied],
            "{version}"
        );
        assert!(
            events[1]
                .reason
                .as_deref()
                .unwrap()
                .contains("client went away"),
            "{events:?}"
        );
    }
}

/// Every web request waits for a human.
const POLICY_HELD: &str = "ttl = \"30m\"\n[web]\nallow = [\"google.com\"]\nmethods = [\"get\"]\n\
    [[approval]]\ntype = \"web\"\n";

/// An agent floods the reviewer with holds (one HTTP/2 connection, many
/// streams): at most `MAX_HELD_APPROVALS` wait at once; the next is
/// refused at once, receipted as denied by `limit`, and never asked, so
/// the pending list (which every change sends whole to each subscriber)
/// and the memory of held bodies stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_past_the_limit_are_refused_without_asking() {
    let max = enforce::MAX_HELD_APPROVALS;
    let (api, handle) = ApiBroker::new();
    let s = Session::start(Options {
        policy: POLICY_HELD.to_owned(),
        broker: Some(Arc::new(api)),
        ..Options::default()
    })
    .await;
    let port = s.proxy.https_addr().unwrap().port();
    let mut curl = tokio::process::Command::new("curl");
    curl.args(["-sS", "--http2", "--parallel", "--parallel-immediate"])
        .args(["--parallel-max", "300", "--max-time", "60", "--cacert"])
        .arg(&s.session_ca)
        .arg("--connect-to")
        .arg(format!("::127.0.0.1:{port}"))
        .args(["-o", "/dev/null", "-w", "%{http_code}\\n"]);
    for n in 0..=max {
        curl.arg(format!("https://google.com/search?q={n}"));
    }
    let curl = tokio::spawn(curl.output());
    eventually("the limit is reached", || handle.pending().len() >= max).await;
    eventually("the one past it is receipted", || {
        s.receipts_text().contains("\"approver\":\"limit\"")
    })
    .await;
    assert_eq!(handle.pending().len(), max);
    for p in handle.pending() {
        handle.answer(p.request.id, false, "ui").unwrap();
    }
    let out = curl.await.unwrap().unwrap();
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        codes.lines().filter(|c| *c == "403").count(),
        max + 1,
        "{codes}"
    );
    assert!(s.mock.seen().is_empty());
    let chain = s.finish_and_verify();
    let answers = approvals(&chain);
    assert_eq!(answers.len(), max + 1);
    assert_eq!(answers.iter().filter(|a| a.2 == "limit").count(), 1);
    assert_eq!(answers.iter().filter(|a| a.2 == "ui").count(), max);
}

/// What the human is asked about is what goes upstream: a held GET whose
/// query carries data (here, what an agent would exfiltrate) shows the
/// query in the question, not only the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_question_shows_the_query_that_is_forwarded() {
    let s = Session::start(Options {
        policy: POLICY_HELD.to_owned(),
        script: vec![Scripted::Approve],
        ..Options::default()
    })
    .await;
    let r = s
        .curl("https://google.com/search?q=exfil-4f1d&page=2", &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen_for("google.com");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/search?q=exfil-4f1d&page=2");
    let asked = s.broker.asked();
    assert_eq!(asked.len(), 1);
    let question = serde_json::to_value(&asked[0]).unwrap();
    assert_eq!(question["query"], "q=exfil-4f1d&page=2", "{question}");
    assert_eq!(
        asked[0].summary(),
        "GET google.com/search?q=exfil-4f1d&page=2"
    );
    s.finish_and_verify();
}

/// A secret the sandbox writes into a held request's query itself (it is
/// never given one, but it may have learned one, say from an echoing
/// server) is shown to the human as its placeholder, as the receipt
/// records it: the question goes to terminals, the web UI and whatever
/// the approval API feeds, so no form of the secret may be in it, raw or
/// percent-encoded; nor in the receipts or the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_the_query_is_asked_about_as_its_placeholder() {
    let mut s = Session::start(Options {
        policy: POLICY_HELD.to_owned(),
        script: vec![Scripted::Deny],
        ..Options::default()
    })
    .await;
    let login = s.placeholder("united_login");
    let r = s
        .curl(
            "https://google.com/search?raw=Hunter2-real-P@ss&enc=Hunter2-real-P%40ss&page=2",
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.blocked().unwrap().contains("denied by test"), "{r:?}");
    assert!(s.mock.seen().is_empty());

    let masked = format!("raw={login}&enc={login}&page=2");
    let asked = s.broker.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].query.as_deref(), Some(masked.as_str()));
    assert_eq!(
        asked[0].summary(),
        format!("GET google.com/search?{masked}")
    );
    let question = serde_json::to_vec(&asked[0]).unwrap();
    let events = serde_json::to_vec(&s.drain_events()).unwrap();
    let receipts = s.receipts_text().into_bytes();
    for secret in [LOGIN_SECRET, "Hunter2-real-P%40ss", "Hunter2-real-P"] {
        for (what, bytes) in [
            ("the question", &question),
            ("receipts.jsonl", &receipts),
            ("events", &events),
        ] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} in {what}: {}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, "approval");
    assert_eq!(d[0].4["query"], masked.as_str());
    assert_eq!(approvals(&chain), vec![(d[0].0, false, "test".to_owned())]);
}
