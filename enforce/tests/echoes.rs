//! A secret stored at a granted host by one request and read back by the
//! next never reaches the sandbox: the upstream (`/vault/<how>`) sends it
//! back raw, compressed whatever the request asked for (gzip, deflate, br,
//! zstd), escaped (JSON `\u00XX` and `\/`, HTML character references), in
//! a header and in a trailer; the proxy decodes and masks it, or refuses a
//! body it cannot decode. Requests to such a host ask for `identity`.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

/// Stores the real login at united.com (the server keeps the body).
async fn store_login(s: &Session) -> String {
    s.store_login().await;
    let stored = s.mock.seen_for("united.com");
    assert_eq!(stored.len(), 1);
    // The upstream really holds the secret: what follows reads it back.
    assert!(String::from_utf8_lossy(&stored[0].body).contains(LOGIN_SECRET));
    s.placeholder("united_login")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_secret_read_back_in_any_form_is_masked() {
    let s = Session::start(Options::default()).await;
    let login = store_login(&s).await;
    for how in ["plain", "gzip", "deflate", "br", "zstd", "json", "html"] {
        let r = s
            .curl(
                &format!("https://united.com/vault/{how}"),
                &["-H", "accept-encoding: gzip, br, zstd"],
            )
            .await;
        assert_eq!(r.status, 200, "{how}: {r:?}");
        assert!(!r.body.contains(LOGIN_SECRET), "{how}: {r:?}");
        // Decoded and masked, not merely unreadable: the placeholder stands
        // where the secret was, and the body is no longer compressed.
        assert!(r.body.contains(&login), "{how}: {r:?}");
        assert_eq!(r.header("content-encoding"), None, "{how}: {r:?}");
        let header = r.header("x-stored").unwrap();
        assert!(
            header.contains(&login) && !header.contains(LOGIN_SECRET),
            "{how}: {r:?}"
        );
    }
    // The upstream was asked for an uncompressed body every time.
    let reads: Vec<Seen> = s
        .mock
        .seen_for("united.com")
        .into_iter()
        .filter(|x| x.path.starts_with("/vault/"))
        .collect();
    assert_eq!(reads.len(), 7);
    for x in &reads {
        assert_eq!(x.headers["accept-encoding"], "identity", "{x:?}");
    }
    let chain = s.finish_and_verify();
    assert!(!s.receipts_text().contains(LOGIN_SECRET));
    assert_eq!(s.rederive(&chain), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_a_coding_the_proxy_cannot_read_is_refused() {
    let s = Session::start(Options::default()).await;
    store_login(&s).await;
    let r = s.curl("https://united.com/vault/compress", &[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.blocked().unwrap().contains("response-encoding"), "{r:?}");
    assert!(
        !r.body.contains(LOGIN_SECRET) && !r.body.contains("password"),
        "{r:?}"
    );
    s.finish_and_verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_are_masked_too() {
    let s = Session::start(Options::default()).await;
    let login = store_login(&s).await;
    // HTTP/2 carries trailers whatever `TE` says; hyper's client reads them.
    let ca = std::fs::read_to_string(&s.session_ca).unwrap();
    let cfg = test_support::client_config(&ca, &[b"h2"]);
    let tls = test_support::tls_connect(s.proxy.https_addr().unwrap(), "united.com", cfg)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://united.com/vault/trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("the trailer arrives");
    let body = collected.to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains(&login) && !body.contains(LOGIN_SECRET),
        "{body}"
    );
    let t = trailers["x-stored"].to_str().unwrap();
    assert!(t.contains(&login) && !t.contains(LOGIN_SECRET), "{t}");
    s.finish_and_verify();
}
