//! Upgrades are actions, not tunnels: a WebSocket opens only where a
//! `[websocket]` grant names its host and path (a `web` grant is not
//! enough), anything but a WebSocket upgrade is refused and the connection
//! closed, the `101` and every server message pass the echo mask, and the
//! bytes after the switch are counted in the completion event. A WebSocket
//! to an LLM endpoint is an LLM call, refused until metering covers it.
//! Raw sockets, so the test sees exactly what the sandbox would.
#![allow(clippy::unwrap_used)]

mod support;

use enforce::EventKind;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn policy() -> String {
    format!("{POLICY}\n[websocket]\nallow = [\"united.com/socket\"]\n")
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(s: &Session, host: &str) -> Tls {
    let ca = std::fs::read_to_string(&s.session_ca).unwrap();
    let cfg = test_support::client_config(&ca, &[b"http/1.1"]);
    test_support::tls_connect(s.proxy.https_addr().unwrap(), host, cfg)
        .await
        .unwrap()
}

fn upgrade_request(host: &str, path: &str, protocol: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads until the peer closes (or 30 s pass: a hang fails below).
async fn read_bytes(io: &mut Tls) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), io.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection");
    out
}

async fn read_to_end(io: &mut Tls) -> String {
    String::from_utf8_lossy(&read_bytes(io).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_websocket_is_masked_and_counted() {
    let mut s = Session::start(Options {
        policy: policy(),
        ..Options::default()
    })
    .await;
    // The real login stored at united.com; the socket's server sends it back.
    s.store_login().await;
    let login = s.placeholder("united_login");

    let mut io = connect(&s, "united.com").await;
    io.write_all(upgrade_request("united.com", "/socket/chat", "websocket").as_bytes())
        .await
        .unwrap();
    // The 101 head.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(io.read(&mut b).await.unwrap(), 1, "{head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains(&login) && !head.contains(LOGIN_SECRET),
        "{head}"
    );
    // One masked client frame: "hello".
    let key = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&key);
    frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    io.write_all(&frame).await.unwrap();
    let raw = read_bytes(&mut io).await;
    // The tunnel ends when both sides have closed.
    drop(io);
    let rest = String::from_utf8_lossy(&raw);
    assert!(rest.contains("stored: "), "{rest:?}");
    assert!(
        rest.contains(&login) && !rest.contains(LOGIN_SECRET),
        "{rest:?}"
    );

    // The upstream got the upgrade request as decided, and the frame.
    let seen = s.mock.seen();
    let upgrade = seen.iter().find(|x| x.path == "/socket/chat").unwrap();
    assert_eq!(upgrade.method, "GET");
    assert_eq!(upgrade.headers["upgrade"], "websocket");
    let data = seen.iter().find(|x| x.path == "/ws-data").unwrap();
    assert_eq!(data.body, frame);

    // The completion event counts the bytes both ways after the switch.
    let mut completed = None;
    for _ in 0..100 {
        completed = s
            .drain_events()
            .into_iter()
            .find(|e| e.kind == EventKind::Completed && e.path.starts_with("/socket"));
        if completed.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let completed = completed.expect("a completion event for the socket");
    assert_eq!(completed.status, Some(101));
    assert!(
        completed.bytes_up.unwrap() >= frame.len() as u64,
        "{completed:?}"
    );
    assert_eq!(completed.bytes, Some(raw.len() as u64), "{completed:?}");

    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d[1].1, "allow");
    assert_eq!(d[1].4["type"], "websocket", "{:?}", d[1]);
    assert_eq!(s.rederive(&chain), 2);
    assert!(!s.receipts_text().contains(LOGIN_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_without_a_websocket_grant_are_refused_and_closed() {
    let s = Session::start(Options {
        policy: policy(),
        ..Options::default()
    })
    .await;
    let cases = [
        // A web grant covers google.com/travel/flights, not a socket there.
        (
            "google.com",
            "/travel/flights/live",
            "websocket",
            "no capability",
        ),
        // Outside the websocket grant's path.
        ("united.com", "/other", "websocket", ""),
        // Not a WebSocket at all.
        ("united.com", "/socket", "h2c", "upgrade-refused"),
        // A payment endpoint, whatever the grant says, is not read frame by frame.
        (
            "united.com",
            "/api/booking/purchase",
            "websocket",
            "cannot be read",
        ),
    ];
    for (host, path, protocol, why) in cases {
        let mut io = connect(&s, host).await;
        io.write_all(upgrade_request(host, path, protocol).as_bytes())
            .await
            .unwrap();
        let reply = read_to_end(&mut io).await;
        assert!(reply.starts_with("HTTP/1.1 403"), "{path}: {reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{path}: {reply}"
        );
        assert!(reply.contains(why), "{path} {why}: {reply}");
    }
    assert!(s.mock.seen().is_empty(), "{:?}", s.mock.seen());
    s.finish_and_verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_to_an_llm_endpoint_is_refused_until_metered() {
    // Even a websocket grant naming the provider does not open it.
    let policy = "[llm]\nproviders = [\"api.openai.com\"]\nbudget_usd = \"1\"\n\n\
                  [websocket]\nallow = [\"api.openai.com\"]\n";
    let s = Session::start(Options {
        policy: policy.into(),
        ..Options::default()
    })
    .await;
    let mut io = connect(&s, "api.openai.com").await;
    io.write_all(upgrade_request("api.openai.com", "/v1/realtime?model=x", "websocket").as_bytes())
        .await
        .unwrap();
    let reply = read_to_end(&mut io).await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(reply.contains("not metered yet"), "{reply}");
    assert!(s.mock.seen().is_empty());
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!((d[0].1.as_str(), d[0].2.as_str()), ("block", "catalog"));
    assert_eq!(d[0].4["type"], "llm");
}

/// Section 10: after a refused upgrade the guard keeps reading the
/// connection as HTTP/1.1, and the refusal closes it: a request pipelined
/// behind the refused upgrade never reaches an upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_smuggled_behind_a_refused_upgrade_goes_nowhere() {
    let s = Session::start(Options {
        policy: policy(),
        ..Options::default()
    })
    .await;
    for first in [
        upgrade_request("united.com", "/", "h2c"),
        "CONNECT united.com:443 HTTP/1.1\r\nHost: united.com:443\r\n\r\n".to_owned(),
        upgrade_request("united.com", "/not-granted", "websocket"),
    ] {
        let mut io = connect(&s, "united.com").await;
        let smuggled = "GET /flights HTTP/1.1\r\nHost: united.com\r\n\r\n";
        io.write_all(format!("{first}{smuggled}").as_bytes())
            .await
            .unwrap();
        let reply = read_to_end(&mut io).await;
        assert!(reply.starts_with("HTTP/1.1 403"), "{first}: {reply}");
        // One answer, then the connection closed.
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{first}: {reply}");
    }
    assert!(s.mock.seen().is_empty(), "{:?}", s.mock.seen());
    s.finish_and_verify();
}

/// HTTP/2 extended CONNECT (RFC 8441) is decided and carried as the
/// HTTP/1.1 upgrade upstream receives: `200` to the sandbox, the upstream
/// sees a `GET` with `Upgrade: websocket`, messages masked. Outside the
/// grant it is refused like an HTTP/1.1 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_extended_connect_is_a_websocket_too() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let s = Session::start(Options {
        policy: policy(),
        ..Options::default()
    })
    .await;
    s.store_login().await;
    let login = s.placeholder("united_login");

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
    let connect = |path: &str| {
        let mut req = http::Request::connect(format!("https://united.com{path}"))
            .header("sec-websocket-version", "13")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };

    // Outside the grant: refused on its stream, the connection carries on.
    let resp = send.send_request(connect("/elsewhere")).await.unwrap();
    assert_eq!(resp.status(), 403);

    let resp = send.send_request(connect("/socket/h2")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let stored = resp.headers()["x-stored"].to_str().unwrap().to_owned();
    assert!(
        stored.contains(&login) && !stored.contains(LOGIN_SECRET),
        "{stored}"
    );
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    let key = [9u8, 8, 7, 6];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&key);
    frame.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    io.write_all(&frame).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), io.read_to_end(&mut out))
        .await
        .expect("the stream ends")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("stored: "), "{text:?}");
    assert!(
        text.contains(&login) && !text.contains(LOGIN_SECRET),
        "{text:?}"
    );

    let seen = s.mock.seen();
    let upgrade = seen.iter().find(|x| x.path == "/socket/h2").unwrap();
    assert_eq!(upgrade.method, "GET");
    assert_eq!(upgrade.headers["upgrade"], "websocket");
    assert!(upgrade.headers.contains_key("sec-websocket-key"));
    assert_eq!(
        seen.iter().find(|x| x.path == "/ws-data").unwrap().body,
        frame
    );
    assert!(!seen.iter().any(|x| x.path == "/elsewhere"));
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!((d[1].1.as_str(), d[2].1.as_str()), ("block", "allow"));
    assert_eq!(d[2].4["type"], "websocket");
}
