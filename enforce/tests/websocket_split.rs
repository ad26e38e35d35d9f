//! A WebSocket's server messages are one stream to the echo mask: a secret
//! split across two messages (a terminal, log tail or file streamed in
//! fixed-size chunks: `kubectl exec`, ttyd, ...; clients join them) is
//! masked when the messages come back to back; when the second comes after
//! the proxy stopped waiting for it, the tunnel ends before the secret's
//! end reaches the sandbox. A message that merely ends like a secret's
//! start is delivered as it is. Against a scripted raw upstream, so the
//! test sees exactly what the sandbox would.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use enforce::{Event, EventKind};
use support::*;
use test_support::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

fn policy() -> String {
    format!("{POLICY}\n[websocket]\nallow = [\"united.com/socket\"]\n")
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One unmasked server frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    assert!(payload.len() < 126);
    out.push(payload.len() as u8);
    out.extend_from_slice(payload);
    out
}

const CLOSE: [u8; 4] = [0x88, 0x02, 0x03, 0xe8];

/// What the scripted upstream does after its `101`, in order.
#[derive(Clone)]
enum Step {
    Send(Vec<u8>),
    /// At least this long (a lower bound only).
    Sleep(u64),
    /// Until the sandbox's client sends a frame (it got what came before).
    AwaitClient,
}

/// A raw HTTPS upstream for every host: reads one request head, answers
/// `101`, plays `steps`, waits a little and closes.
async fn scripted_upstream(steps: Vec<Step>) -> ExternalUpstream {
    let ca = TestCa::new("ws split");
    let acceptor = TlsAcceptor::from(ca.server_config(HOSTS, &[b"http/1.1"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, steps) = (acceptor.clone(), steps.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                          Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                    )
                    .await;
                for step in steps {
                    match step {
                        Step::Send(bytes) => {
                            let _ = tls.write_all(&bytes).await;
                            let _ = tls.flush().await;
                        }
                        Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                        Step::AwaitClient => {
                            let mut b = [0u8; 64];
                            if tls.read(&mut b).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    ExternalUpstream {
        addr,
        ca_pem: ca.cert_pem().to_owned(),
    }
}

async fn session(steps: Vec<Step>) -> Session {
    Session::start(Options {
        policy: policy(),
        upstream: Some(scripted_upstream(steps).await),
        ..Options::default()
    })
    .await
}

/// Opens the granted socket and reads its `101` head.
async fn open_socket(s: &Session) -> Tls {
    let ca = std::fs::read_to_string(&s.session_ca).unwrap();
    let cfg = test_support::client_config(&ca, &[b"http/1.1"]);
    let mut io = test_support::tls_connect(s.proxy.https_addr().unwrap(), "united.com", cfg)
        .await
        .unwrap();
    io.write_all(
        b"GET /socket/chat HTTP/1.1\r\nHost: united.com\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(io.read(&mut b).await.unwrap(), 1, "{head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    io
}

/// Every byte until the proxy closes (a hang fails after 20 s).
async fn read_rest(io: &mut Tls) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), io.read_to_end(&mut all))
        .await
        .expect("the proxy closes the socket");
    all
}

/// Reads whole frames until a data message ends (a hang fails after 20 s).
async fn read_message(io: &mut Tls) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(20), async {
        while data_messages(&parse_frames(&got)).is_empty() {
            let n = io.read(&mut b).await.unwrap();
            assert!(n > 0, "closed before a message: {got:?}");
            got.extend_from_slice(&b[..n]);
        }
    })
    .await
    .expect("a message");
    got
}

/// A masked client frame.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let key = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Frames as (fin, opcode, payload); a cut last frame is left out.
fn parse_frames(mut b: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let (fin, op) = (b[0] & 0x80 != 0, b[0] & 0x0f);
        let (len, h) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        if b.len() < h + len {
            break;
        }
        out.push((fin, op, b[h..h + len].to_vec()));
        b = &b[h + len..];
    }
    out
}

/// Whole data messages, in order.
fn data_messages(frames: &[(bool, u8, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    for (fin, op, p) in frames {
        if *op >= 8 {
            continue;
        }
        cur.get_or_insert_with(Vec::new).extend_from_slice(p);
        if *fin {
            out.push(cur.take().unwrap());
        }
    }
    out
}

fn text(msgs: &[Vec<u8>]) -> Vec<String> {
    msgs.iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

/// The socket's completion event (it comes when the tunnel ends).
async fn completion(s: &mut Session) -> Event {
    for _ in 0..200 {
        let done = s
            .drain_events()
            .into_iter()
            .find(|e| e.kind == EventKind::Completed && e.path.starts_with("/socket"));
        if let Some(e) = done {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no completion event for the socket");
}

/// The secret split at byte 9.
fn halves() -> (&'static [u8], &'static [u8]) {
    LOGIN_SECRET.as_bytes().split_at(9)
}

/// Back to back, a secret across two fragments of one message and across
/// two messages: masked both times, the whole placeholder in the message
/// the secret began in; three messages, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_split_across_two_messages_is_masked() {
    let (a, b) = halves();
    let mut frames = Vec::new();
    frames.extend(frame(false, 1, &[b"one: ".as_slice(), a].concat()));
    frames.extend(frame(true, 0, &[b, b" end".as_slice()].concat()));
    frames.extend(frame(
        true,
        2,
        &[b"$ cat ~/.netrc\npassword ".as_slice(), a].concat(),
    ));
    frames.extend(frame(true, 2, &[b, b"\n$ ".as_slice()].concat()));
    frames.extend(CLOSE);
    let mut s = session(vec![Step::Send(frames)]).await;
    let mut io = open_socket(&s).await;
    let rest = read_rest(&mut io).await;
    let login = s.placeholder("united_login");
    assert_eq!(
        text(&data_messages(&parse_frames(&rest))),
        [
            format!("one: {login} end"),
            format!("$ cat ~/.netrc\npassword {login}"),
            "\n$ ".to_owned(),
        ]
    );
    assert_eq!(parse_frames(&rest).last().unwrap().1, 8, "the close last");
    // The tunnel ends when both sides have closed.
    let _ = io.shutdown().await;
    drop(io);
    let done = completion(&mut s).await;
    assert_eq!(done.reason, None, "{done:?}");
}

/// The second half comes after the proxy stopped waiting for it (the
/// server pauses far longer than the hold): the first message went out as
/// it was, so the proxy cannot mask the secret any more and ends the
/// tunnel; the second half never reaches the sandbox, nor what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_completed_after_a_pause_ends_the_tunnel() {
    let (a, b) = halves();
    let mut s = session(vec![
        Step::Send(frame(true, 1, &[b"password ".as_slice(), a].concat())),
        Step::Sleep(1000),
        Step::Send(frame(true, 1, &[b, b" end".as_slice()].concat())),
        Step::Send(frame(true, 1, b"after")),
        Step::Send(CLOSE.to_vec()),
    ])
    .await;
    let mut io = open_socket(&s).await;
    let rest = read_rest(&mut io).await;
    let msgs = text(&data_messages(&parse_frames(&rest)));
    let first = format!("password {}", String::from_utf8_lossy(a));
    assert_eq!(msgs, [first], "{rest:?}");
    let tail = String::from_utf8_lossy(b);
    assert!(!String::from_utf8_lossy(&rest).contains(&*tail), "{rest:?}");
    // The tunnel ends when both sides have closed.
    let _ = io.shutdown().await;
    drop(io);
    let done = completion(&mut s).await;
    let reason = done.reason.clone().unwrap_or_default();
    assert!(reason.contains("websocket-split-secret"), "{done:?}");
    assert!(!reason.contains(LOGIN_SECRET));
    assert_eq!(done.bytes, Some(rest.len() as u64), "{done:?}");
}

/// A message ending in a secret's first bytes with no continuation is
/// delivered as it is: when a close follows it (before the close), and
/// when the server goes quiet (the server sends nothing more until the
/// client has answered that message, so a frame held for good would hang
/// the test), then a message that does not complete the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_ending_in_a_secrets_start_is_delivered_as_it_is() {
    let (a, _) = halves();
    let first = [b"password ".as_slice(), a].concat();
    let want = String::from_utf8_lossy(&first).into_owned();

    let mut frames = frame(true, 1, &first);
    frames.extend(CLOSE);
    let s = session(vec![Step::Send(frames)]).await;
    let mut io = open_socket(&s).await;
    let rest = read_rest(&mut io).await;
    let got = parse_frames(&rest);
    assert_eq!(text(&data_messages(&got)), std::slice::from_ref(&want));
    assert_eq!(got.last().unwrap(), &(true, 8, CLOSE[2..].to_vec()));
    s.finish_and_verify();

    let mut s = session(vec![
        Step::Send(frame(true, 1, &first)),
        Step::AwaitClient,
        Step::Send(frame(true, 1, b"! no secret")),
        Step::Send(CLOSE.to_vec()),
    ])
    .await;
    let mut io = open_socket(&s).await;
    let got = read_message(&mut io).await;
    assert_eq!(
        text(&data_messages(&parse_frames(&got))),
        std::slice::from_ref(&want)
    );
    io.write_all(&client_frame(b"ok")).await.unwrap();
    let rest = [got, read_rest(&mut io).await].concat();
    assert_eq!(
        text(&data_messages(&parse_frames(&rest))),
        [want, "! no secret".to_owned()]
    );
    // The tunnel ends when both sides have closed.
    let _ = io.shutdown().await;
    drop(io);
    let done = completion(&mut s).await;
    assert_eq!(done.reason, None, "{done:?}");
}
