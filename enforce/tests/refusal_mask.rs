//! A request the proxy refuses on its own (before any decision) is
//! receipted with the proxy's detail of why, and that detail may quote
//! request text (a Host header that is no host name): a secret the sandbox
//! wrote there itself is receipted as its placeholder, as a query is.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_a_refused_host_header_is_receipted_as_its_placeholder() {
    let mut s = Session::start(Options::default()).await;
    let card = s.placeholder("united_card");
    let host = format!("x_{CARD_SECRET}");
    let r = s
        .curl(
            "https://google.com/search",
            &["-H", &format!("host: {host}")],
        )
        .await;
    assert_eq!(r.blocked(), Some("malformed-request"), "{r:?}");
    assert!(s.mock.seen().is_empty());
    let events = serde_json::to_vec(&s.drain_events()).unwrap();
    let receipts = s.receipts_text();
    assert!(
        receipts.contains(&format!("x_{card}")),
        "the refusal's detail names the host as sent, masked: {receipts}"
    );
    for (what, bytes) in [("receipts.jsonl", receipts.as_bytes()), ("events", &events)] {
        assert!(
            !bytes
                .windows(CARD_SECRET.len())
                .any(|w| w == CARD_SECRET.as_bytes()),
            "the secret in {what}: {}",
            String::from_utf8_lossy(bytes)
        );
    }
    s.finish_and_verify();
}

/// A stage's refusal may quote what the sandbox wrote (an amount that is
/// no amount): a secret there is receipted, and sent out in the `blocked`
/// event, as its placeholder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_quoted_by_a_stage_refusal_is_receipted_as_its_placeholder() {
    let mut s = Session::start(Options::default()).await;
    let login = s.placeholder("united_login");
    let body = format!(r#"{{"flights":["UA 2847"],"total":"{LOGIN_SECRET}","currency":"USD"}}"#);
    let r = s
        .post_json("https://united.com/api/booking/purchase", &body)
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(s.mock.seen().is_empty());
    let events = serde_json::to_vec(&s.drain_events()).unwrap();
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, "block");
    assert!(
        d[0].3.contains(&format!("amount \"{login}\"")),
        "{:?}",
        d[0]
    );
    let receipts = s.receipts_text();
    for secret in [LOGIN_SECRET, "Hunter2-real-P"] {
        for (what, bytes) in [("receipts.jsonl", receipts.as_bytes()), ("events", &events)] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} in {what}: {}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
