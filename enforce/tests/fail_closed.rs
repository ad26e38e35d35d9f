//! Fail closed: no receipt, no forward (disk full mid-session); a payment
//! body the catalog cannot read is refused, not guessed; the proxy's own
//! refusals and DNS refusals are receipted, once per blocked name.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{atomic::AtomicBool, atomic::Ordering, Arc};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RecordType},
};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_receipt_store_failing_nothing_is_forwarded() {
    let full = Arc::new(AtomicBool::new(false));
    let s = Session::start(Options {
        disk_full: Some(full.clone()),
        ..Options::default()
    })
    .await;
    // While the disk has room, requests go through.
    let r = s
        .curl("https://google.com/travel/flights/search", &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.mock.seen().len(), 1);
    let conns = s.mock.connections.load(Ordering::SeqCst);

    // The disk fills up: every request is refused, none forwarded, whether
    // the token would allow it, ask a human, or block it.
    full.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let r = s
            .curl("https://google.com/travel/flights/search", &[])
            .await;
        assert_eq!(r.status, 403, "{r:?}");
        assert!(
            r.blocked().unwrap().contains("receipt write failed"),
            "{r:?}"
        );
    }
    let r = s
        .post_json(
            "https://united.com/api/booking/purchase",
            r#"{"total":"487.00","currency":"USD"}"#,
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        s.broker.asked().is_empty(),
        "a human was asked without a receipt"
    );
    assert_eq!(s.mock.seen().len(), 1);
    assert_eq!(s.mock.connections.load(Ordering::SeqCst), conns);

    // What reached the disk is a valid chain prefix: start + one allow.
    let text = s.receipts_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let mut v = receipts::LineVerifier::new(s.receipt_key.verifying_key());
    for l in &lines {
        v.push(l.as_bytes()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_payment_bodies_are_refused_not_guessed() {
    // Read whole up to 64 KiB here (16 MiB by default): past that cap.
    let s = Session::start(Options {
        catalog: format!("max_whole_body_bytes = 65536\n{CATALOG}"),
        ..Options::default()
    })
    .await;
    let url = "https://united.com/api/booking/purchase";
    let padding = "x".repeat(70 * 1024);
    let big = format!(r#"{{"pad":"{padding}","total":"10.00","currency":"USD"}}"#);
    let body_file = s.dir.path().join("big.json");
    std::fs::write(&body_file, &big).unwrap();
    let r = s
        .curl(
            url,
            &[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data-binary",
                &format!("@{}", body_file.display()),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.blocked()
            .unwrap()
            .contains("over the 65536-byte cap (max_whole_body_bytes)"),
        "{r:?}"
    );
    // Two totals: which one would the merchant charge?
    let r = s
        .post_json(url, r#"{"total":"1.00","total":"599.00","currency":"USD"}"#)
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.blocked().unwrap().contains("more than once"), "{r:?}");
    // A total with a fraction of a cent.
    let r = s
        .post_json(url, r#"{"total":"10.005","currency":"USD"}"#)
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    // The path spelled differently is still the purchase endpoint.
    let r = s
        .post_json(
            "https://united.com/api/booking/%70urchase",
            r#"{"currency":"USD"}"#,
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(s.mock.seen().is_empty());
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), 4);
    assert!(
        d.iter().all(|x| x.1 == "block" && x.2 == "catalog"),
        "{d:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refusals_and_dns_refusals_are_receipted() {
    let s = Session::start(Options::default()).await;
    // Domain fronting: TLS to google.com, HTTP Host evil.example.
    let r = s
        .curl(
            "https://google.com/travel/flights",
            &["-H", "host: evil.example"],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(s.mock.seen().is_empty());

    // DNS over the real UDP listener: A and AAAA for a blocked name, twice.
    let dns = s.proxy.dns_addr().unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (name, t, want) in [
        ("hooks.slack.com.", RecordType::A, ResponseCode::NXDomain),
        ("hooks.slack.com.", RecordType::AAAA, ResponseCode::NXDomain),
        ("Hooks.Slack.com.", RecordType::A, ResponseCode::NXDomain),
        ("united.com.", RecordType::A, ResponseCode::NoError),
        ("kayak.com.", RecordType::A, ResponseCode::NoError),
    ] {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        udp.send_to(&q.to_vec().unwrap(), dns).await.unwrap();
        let mut buf = [0u8; 1500];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), udp.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.response_code, want, "{name} {t:?}");
    }

    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert_eq!((d[0].1.as_str(), d[0].2.as_str()), ("block", "proxy"));
    assert!(d[0].3.starts_with("domain-fronting"), "{:?}", d[0]);
    assert_eq!((d[1].1.as_str(), d[1].2.as_str()), ("block", "dns"));
    assert_eq!(d[1].4["host"], "hooks.slack.com");
}
