//! The sandbox is never given a secret's value, but if it learned one and
//! wrote it into a request's facts (the path, the host of a request or a
//! DNS name, a method, a mail's subject or recipients), the decision, its
//! receipt, the events and the approval question all read the fact with
//! the secret as its placeholder: the facts are masked once, before the
//! token decides, so an auditor re-deriving the decisions from the token
//! agrees with them. The request itself goes upstream as the sandbox sent
//! it (masking is of the record, not of the traffic).
#![allow(clippy::unwrap_used)]

mod support;

use capabilities::Host;
use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RecordType},
};
use proxy::{ConnInfo, Gate, Listener, Refusal};
use serde_json::Value;
use support::*;

/// A secret value that is also a DNS label.
const LABEL_SECRET: &str = "hunter2realpass42";

/// Asserts none of `forms` is anywhere in the receipts or the events.
fn nowhere(s: &mut Session, forms: &[&str]) -> Vec<u8> {
    let events = serde_json::to_vec(&s.drain_events()).unwrap();
    let receipts = s.receipts_text();
    for form in forms {
        let lower = form.to_ascii_lowercase();
        for (what, text) in [
            ("receipts.jsonl", receipts.to_ascii_lowercase()),
            (
                "events",
                String::from_utf8_lossy(&events).to_ascii_lowercase(),
            ),
        ] {
            assert!(!text.contains(&lower), "{form:?} in {what}: {text}");
        }
    }
    events
}

/// Every decision receipt re-derives from the token; returns the receipts'
/// (verdict, stage, action) in chain order.
fn verified_decisions(s: &Session) -> Vec<(String, String, Value)> {
    let chain = s.finish_and_verify();
    assert!(s.rederive(&chain) > 0);
    decisions(&chain)
        .into_iter()
        .map(|(_, verdict, stage, _, action)| (verdict, stage, action))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_an_allowed_path_is_receipted_as_its_placeholder() {
    let mut s = Session::start(Options::default()).await;
    let login = s.placeholder("united_login");
    let sent = [
        "/search/Hunter2-real-P@ss/x".to_owned(),
        "/search/Hunter2-real-P%40ss/x".to_owned(),
        "/search/hunter2-REAL-p@ss/x?q=Hunter2-real-P@ss".to_owned(),
    ];
    for path in &sent {
        let r = s.curl(&format!("https://kayak.com{path}"), &[]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    // The upstream got what the sandbox wrote.
    let seen: Vec<String> = s.mock.seen().into_iter().map(|x| x.path).collect();
    assert_eq!(seen, sent);

    nowhere(
        &mut s,
        &[LOGIN_SECRET, "Hunter2-real-P%40ss", "Hunter2-real-P"],
    );
    let recorded = verified_decisions(&s);
    let paths: Vec<(&str, &str, &str, Option<&str>)> = recorded
        .iter()
        .map(|(verdict, stage, a)| {
            (
                verdict.as_str(),
                stage.as_str(),
                a["path"].as_str().unwrap(),
                a["query"].as_str(),
            )
        })
        .collect();
    let masked = format!("/search/{login}/x");
    let query = format!("q={login}");
    assert_eq!(
        paths,
        [
            ("allow", "token", masked.as_str(), None),
            ("allow", "token", masked.as_str(), None),
            ("allow", "token", masked.as_str(), Some(query.as_str())),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_as_a_host_label_is_refused_and_receipted_as_its_placeholder() {
    let mut s = Session::start(Options::with_login(LABEL_SECRET)).await;
    let login = s.placeholder("united_login");

    // DNS over the real UDP listener: the name with the secret is refused
    // (and receipted masked); a granted name still resolves.
    let dns = s.proxy.dns_addr().unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (name, want) in [
        ("hunter2realpass42.other.example.", ResponseCode::NXDomain),
        ("united.com.", ResponseCode::NoError),
    ] {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        udp.send_to(&q.to_vec().unwrap(), dns).await.unwrap();
        let mut buf = [0u8; 1500];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), udp.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.response_code, want, "{name}");
    }

    // An HTTPS request to such a host: refused by the token, whose grants
    // never name a host holding a placeholder (no host has a `_`).
    let r = s
        .curl(&format!("https://{LABEL_SECRET}.kayak.com/"), &[])
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    // A method is the sandbox's text too.
    let r = s
        .curl("https://kayak.com/", &["-X", "HUNTER2REALPASS42"])
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    // A request the proxy refuses on its own (TLS to the secret's host,
    // HTTP to another: fronting) is receipted with its host masked too.
    let r = s
        .curl(
            &format!("https://{LABEL_SECRET}.kayak.com/"),
            &["-H", "host: kayak.com"],
        )
        .await;
    assert_eq!(r.blocked(), Some("domain-fronting"), "{r:?}");
    assert!(s.mock.seen().is_empty(), "{:?}", s.mock.seen());
    // One it refuses before any request was read (the connection's TLS
    // name is all it has; here through the gate's hook, as the proxy
    // calls it for, say, bytes that are no HTTP after the handshake).
    s.gate.refused(Refusal {
        conn: ConnInfo {
            id: 99,
            peer: "127.0.0.1:9".parse().unwrap(),
            listener: Listener::Https,
            sni: Some(Host::parse(&format!("{LABEL_SECRET}.kayak.com")).unwrap()),
            alpn: None,
        },
        request: None,
        reason: "malformed-request",
        detail: "not HTTP".to_owned(),
    });

    nowhere(&mut s, &[LABEL_SECRET]);
    let recorded = verified_decisions(&s);
    let facts: Vec<(&str, &str, &str, &str)> = recorded
        .iter()
        .map(|(verdict, stage, a)| {
            (
                verdict.as_str(),
                stage.as_str(),
                a["method"].as_str().unwrap(),
                a["host"].as_str().unwrap(),
            )
        })
        .collect();
    let (dns_name, https_host) = (
        format!("{login}.other.example"),
        format!("{login}.kayak.com"),
    );
    assert_eq!(
        facts,
        [
            ("block", "dns", "DNS", dns_name.as_str()),
            ("block", "token", "GET", https_host.as_str()),
            ("block", "token", login.as_str(), "kayak.com"),
            ("block", "proxy", "GET", "kayak.com"),
            ("block", "proxy", "CONNECT", https_host.as_str()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_a_mail_subject_or_recipient_is_asked_about_and_receipted_masked() {
    // Every mail needs a human here.
    let policy = format!("{POLICY}\n[[approval]]\ntype = \"email\"\n");
    let mut s = Session::start(Options {
        policy,
        ..Options::default()
    })
    .await;
    let login = s.placeholder("united_login");
    let url = "https://api.mail.example/v1/send";
    let subject = format!("flight confirmation {LOGIN_SECRET}");
    let r = s
        .post_json(
            url,
            &format!(r#"{{"to":"traveler@example.com","subject":"{subject}"}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // A recipient holding the secret: no grant names it.
    let r = s
        .post_json(
            url,
            &format!(
                r#"{{"to":["traveler@example.com","{LOGIN_SECRET}@else.example"],"subject":"flight confirmation"}}"#
            ),
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    // The upstream got the subject as written.
    let seen = s.mock.seen_for("api.mail.example");
    assert_eq!(seen.len(), 1);
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["subject"], subject.as_str());

    let masked_subject = format!("flight confirmation {login}");
    let asked = s.broker.asked();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(
        asked[0].action.subject.as_deref(),
        Some(masked_subject.as_str())
    );
    let question = serde_json::to_string(&asked[0]).unwrap();
    assert!(!question.contains("Hunter2-real-P"), "{question}");

    nowhere(&mut s, &[LOGIN_SECRET, "Hunter2-real-P"]);
    let recorded = verified_decisions(&s);
    let facts: Vec<(&str, &str, &Value, &Value)> = recorded
        .iter()
        .map(|(verdict, stage, a)| {
            (
                verdict.as_str(),
                stage.as_str(),
                &a["subject"],
                &a["recipients"],
            )
        })
        .collect();
    let bad_recipient = format!("{login}@else.example").to_ascii_lowercase();
    assert_eq!(
        facts,
        [
            (
                "approval",
                "token",
                &Value::from(masked_subject.as_str()),
                &serde_json::json!(["traveler@example.com"])
            ),
            (
                "block",
                "token",
                &Value::from("flight confirmation"),
                &serde_json::json!(["traveler@example.com", bad_recipient])
            ),
        ]
    );
}
