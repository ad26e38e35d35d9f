//! Bodies read whole past `max_body_bytes`: a `POST` whose body could name
//! `_method` anywhere (Rack, Symfony, Express's method-override and
//! ASP.NET read it from the whole body) is read on, under one of the
//! session's large-body read permits, up to `max_whole_body_bytes`,
//! checked whole and forwarded whole; past that cap it is refused naming
//! it. A content-encoded one is decoded as far. Real proxy, real TLS, the
//! echoing mock upstream of `support`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use receipts::Body;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOCS: &str = "https://kayak.com/account/docs";
const JSON: &str = "content-type: application/json";
/// curl waits for `100 Continue` before a large body otherwise.
const NO_EXPECT: &str = "expect:";
const FORM: &str = "content-type: application/x-www-form-urlencoded";

/// A token granting `POST` (and reads) on the scenario's sites.
fn policy_granting_post() -> String {
    let policy = POLICY.replace(
        r#"methods = ["GET", "HEAD"]"#,
        r#"methods = ["GET", "HEAD", "POST"]"#,
    );
    assert_ne!(policy, POLICY);
    policy
}

async fn session_with(catalog: &str, metering: enforce::MeterSettings) -> Session {
    Session::start(Options {
        policy: policy_granting_post(),
        catalog: catalog.into(),
        metering,
        ..Options::default()
    })
    .await
}

async fn session() -> Session {
    session_with(CATALOG, enforce::MeterSettings::default()).await
}

/// POSTs `body` (from a file: it is large) with these headers.
async fn post_bytes(s: &Session, url: &str, headers: &[&str], body: &[u8]) -> Reply {
    let file = s.dir.path().join(format!("body-{}", next_file_number()));
    std::fs::write(&file, body).unwrap();
    let data = format!("@{}", file.display());
    let mut args = vec!["-X", "POST"];
    for h in headers {
        args.extend(["-H", *h]);
    }
    args.extend(["--data-binary", &data]);
    let r = s.curl(url, &args).await;
    std::fs::remove_file(&file).unwrap();
    r
}

/// A number for a body file no other request of the test uses.
fn next_file_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A JSON object of about `size` bytes, `tail` written as its last members.
fn json_document(size: usize, tail: &str) -> String {
    format!(
        r#"{{"title":"report","text":"{}"{tail}}}"#,
        "a".repeat(size)
    )
}

/// The body digests of the decision receipts, in chain order.
fn digests(chain: &receipts::VerifiedChain) -> Vec<Option<String>> {
    chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            Body::Decision(d) => Some(d.body_sha256.clone()),
            _ => None,
        })
        .collect()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(body).unwrap();
    z.finish().unwrap()
}

/// A 200 KiB JSON document to a REST API (no rule of the catalog's) goes,
/// whole, and its receipt's digest is what the upstream got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kib_json_object_post_goes_whole() {
    let s = session().await;
    let body = json_document(200 * 1024, "");
    let r = post_bytes(&s, DOCS, &[JSON], body.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen_for("kayak.com");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body.as_bytes(), "the upstream got it whole");
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!((d[0].1.as_str(), d[0].2.as_str()), ("allow", "token"));
    assert_eq!(
        digests(&chain),
        vec![Some(receipts::sha256_hex(body.as_bytes()))]
    );
}

/// The same document with `_method: DELETE` as its last member, past
/// `max_body_bytes`: read whole, the override is seen and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_override_at_the_end_of_a_200_kib_json_object_is_refused() {
    let s = session().await;
    let body = json_document(200 * 1024, r#","_method":"DELETE""#);
    let r = post_bytes(&s, DOCS, &[JSON], body.as_bytes()).await;
    assert_eq!(r.status, 403, "{r:?}");
    let reason = r.blocked().unwrap();
    assert!(
        reason.contains("run DELETE instead of POST (_method in the JSON body)"),
        "{reason}"
    );
    assert!(s.mock.seen().is_empty());
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!((d[0].1.as_str(), d[0].2.as_str()), ("block", "catalog"));
    assert_eq!(
        digests(&chain),
        vec![Some(receipts::sha256_hex(body.as_bytes()))],
        "the body was read whole"
    );
}

/// A 1 MiB file uploaded as multipart/form-data goes, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_multipart_upload_goes_whole() {
    let s = session().await;
    let file = s.dir.path().join("upload.bin");
    let content: Vec<u8> = (0..1 << 20)
        .map(|i: u32| b"abcdefgh"[(i % 8) as usize])
        .collect();
    std::fs::write(&file, &content).unwrap();
    let field = format!("file=@{}", file.display());
    let r = s.curl(DOCS, &["-F", "title=report", "-F", &field]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen_for("kayak.com");
    assert_eq!(seen.len(), 1);
    let got = &seen[0].body;
    assert!(got.len() > content.len(), "{}", got.len());
    assert!(
        got.windows(content.len()).any(|w| w == content.as_slice()),
        "the file reached the upstream whole"
    );
    let chain = s.finish_and_verify();
    assert_eq!(digests(&chain), vec![Some(receipts::sha256_hex(got))]);
}

/// Past `max_whole_body_bytes` a body that must be read whole is refused,
/// the reason naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_max_whole_body_bytes_is_refused_naming_it() {
    let catalog = format!("max_whole_body_bytes = 131072\n{CATALOG}");
    let s = session_with(&catalog, enforce::MeterSettings::default()).await;
    let within = post_bytes(&s, DOCS, &[JSON], json_document(100 * 1024, "").as_bytes()).await;
    assert_eq!(within.status, 200, "{within:?}");
    let past = post_bytes(&s, DOCS, &[JSON], json_document(200 * 1024, "").as_bytes()).await;
    assert_eq!(past.status, 403, "{past:?}");
    let reason = past.blocked().unwrap();
    assert!(
        reason.contains("request body over the 131072-byte cap (max_whole_body_bytes)")
            && reason.contains("raise max_whole_body_bytes"),
        "{reason}"
    );
    assert_eq!(s.mock.seen().len(), 1, "only the one within the cap went");
}

/// A gzip-encoded form whose `_method` sits past 64 KiB of decoded output
/// is decoded as far as a body read whole is read: the override is seen
/// (not refused as unreadable), and the same body without one goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_body_is_decoded_as_far_as_a_body_read_whole() {
    let s = session().await;
    let gz = "content-encoding: gzip";
    let pad = "a".repeat(200 * 1024);
    let late = gzip(format!("note={pad}&_method=DELETE").as_bytes());
    assert!(late.len() < 64 * 1024, "{}", late.len());
    let r = post_bytes(&s, DOCS, &[FORM, gz], &late).await;
    assert_eq!(r.status, 403, "{r:?}");
    let reason = r.blocked().unwrap();
    assert!(
        reason.contains("run DELETE instead of POST (_method in the form body)"),
        "{reason}"
    );
    let plain = gzip(format!("note={pad}&kind=memo").as_bytes());
    let r = post_bytes(&s, DOCS, &[FORM, gz], &plain).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen_for("kayak.com");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, plain, "forwarded as sent");
    // A bomb decoding past the cap on bodies read whole is read no
    // further, and refused where the rest could name an override.
    let catalog = format!("max_whole_body_bytes = 1048576\n{CATALOG}");
    let s = session_with(&catalog, enforce::MeterSettings::default()).await;
    let bomb = gzip(format!("note={}&_method=DELETE", "a".repeat(4 << 20)).as_bytes());
    let r = post_bytes(&s, DOCS, &[FORM, gz], &bomb).await;
    assert_eq!(r.status, 403, "{r:?}");
    let reason = r.blocked().unwrap();
    assert!(
        reason.contains("the body past the 1048576-byte cap (max_whole_body_bytes)"),
        "{reason}"
    );
    assert!(s.mock.seen().is_empty());
}

/// Opens a TLS connection to the proxy as kayak.com and sends the head of
/// a JSON `POST` of `body.len()` bytes and its first `sent` bytes.
async fn start_post(s: &Session, body: &str, sent: usize) -> SandboxTls {
    let head = format!(
        "POST /account/docs HTTP/1.1\r\nHost: kayak.com\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.stalled_upload("kayak.com", &head, &body.as_bytes()[..sent])
        .await
}

/// Four large bodies whose senders stall past `max_body_bytes` hold the
/// session's four read permits; a fifth waits for one within the permit
/// wait (shortened here) and, none freeing, is refused saying why. The
/// four then go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_large_body_is_refused_when_no_read_permit_frees() {
    let metering = enforce::MeterSettings {
        large_body_permit_wait: Duration::from_secs(1),
        ..enforce::MeterSettings::default()
    };
    let s = session_with(CATALOG, metering).await;
    let body = json_document(200 * 1024, "");
    let stalled_at = 100 * 1024;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(start_post(&s, &body, stalled_at).await);
    }
    // The four hold the permits once the proxy has read their heads: a
    // moment for that, then until a fifth cannot get one (an early try may
    // still, and a stalled body then takes the permit when it is done).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fifth = loop {
        let r = post_bytes(&s, DOCS, &[JSON], body.as_bytes()).await;
        if r.status == 403 {
            break r;
        }
        assert_eq!(r.status, 200, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = fifth.blocked().unwrap();
    assert!(
        reason.contains(
            "a request body over max_body_bytes (65536 bytes) not read: it must be read whole \
             to be checked, and this session already reads 4 such bodies at once (none ended \
             within 1 s)"
        ),
        "{reason}"
    );
    for io in stalled {
        let reply = finish_upload(io, &body, stalled_at).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    let chain = s.finish_and_verify();
    let refused = decisions(&chain)
        .into_iter()
        .filter(|d| d.1 == "block")
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].2, "catalog");
}

/// A body read whole keeps its read permit while the request waits for a
/// human: four 100 KiB payments held for approval hold the four permits,
/// so a fifth is refused for want of one (it is not read, and no human is
/// asked), rather than a fifth (and a sixty-fourth) 16 MiB body held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_held_for_approval_keep_their_read_permits() {
    // Payments above $400 need a human; room for several at once.
    let policy = POLICY.replace(r#"max_total = "600.00""#, r#"max_total = "6000.00""#);
    assert_ne!(policy, POLICY);
    let s = Session::start(Options {
        policy,
        script: vec![test_support::Scripted::Never],
        approval_timeout: Duration::from_secs(10),
        metering: enforce::MeterSettings {
            large_body_permit_wait: Duration::from_secs(1),
            ..enforce::MeterSettings::default()
        },
        ..Options::default()
    })
    .await;
    let purchase = "https://united.com/api/booking/purchase";
    let body = format!(
        r#"{{"itinerary":"{}","total":"500.00","currency":"USD"}}"#,
        "a".repeat(100 * 1024)
    );
    let held = futures_util::future::join_all(
        (0..4).map(|_| post_bytes(&s, purchase, &[JSON], body.as_bytes())),
    );
    let fifth = async {
        while s.broker.asked().len() < 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = post_bytes(&s, purchase, &[JSON], body.as_bytes()).await;
        (r, s.broker.asked().len())
    };
    let (held, (fifth, asked)) = tokio::join!(held, fifth);
    assert_eq!(asked, 4, "the fifth was held for a human too: {fifth:?}");
    assert_eq!(fifth.status, 403, "{fifth:?}");
    let reason = fifth.blocked().unwrap();
    assert!(
        reason.contains("this session already reads 4 such bodies at once"),
        "{reason}"
    );
    for r in &held {
        assert_eq!(r.status, 403, "{r:?}");
        assert!(r.blocked().unwrap().contains("approval timed out"), "{r:?}");
    }
    assert!(s.mock.seen().is_empty());
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), 5, "{d:?}");
    assert_eq!(approvals(&chain).len(), 4);
}

/// An upstream that answers `413` to every request as soon as it has its
/// head and then never reads the body: the proxy is left sending each body
/// from its buffer. Its receive buffer is kept small so the kernel does not
/// swallow the bodies either. `release` closes every connection it holds.
struct EarlyAnswerUpstream {
    addr: std::net::SocketAddr,
    ca_pem: String,
    held: std::sync::Arc<
        std::sync::Mutex<Vec<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>,
    >,
    task: tokio::task::JoinHandle<()>,
}

impl EarlyAnswerUpstream {
    async fn start() -> EarlyAnswerUpstream {
        let ca = test_support::TestCa::new("early-answer");
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(HOSTS, &[b"http/1.1"]));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // Accepted sockets inherit it: the upstream's window stays small.
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let keep = keep.clone();
                tokio::spawn(async move {
                    let Ok(mut io) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // Up to the end of the head, one byte at a time: not
                    // one byte of the body is read.
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        if io.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let answer = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";
                    if io.write_all(answer.as_bytes()).await.is_err() || io.flush().await.is_err() {
                        return;
                    }
                    keep.lock().unwrap().push(io);
                });
            }
        });
        EarlyAnswerUpstream {
            addr,
            ca_pem: ca.cert_pem().to_owned(),
            held,
            task,
        }
    }

    fn holding(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Drops every connection held: the proxy's uploads on them fail.
    fn release(&self) {
        self.held.lock().unwrap().clear();
    }
}

impl Drop for EarlyAnswerUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that answers before it reads the body does not end the
/// body's hold on its read permit: the proxy still holds the body and goes
/// on sending it from its buffer. Four 8 MiB bodies answered `413` at once
/// by an upstream that never reads them keep the four permits, so a fifth
/// is refused for want of one (not read whole: a fifth, and a sixty-fourth,
/// 16 MiB buffer); once those uploads end (their connections dropped) the
/// permits come back and a large body is read whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_answered_before_they_are_read_keep_their_read_permits() {
    let upstream = EarlyAnswerUpstream::start().await;
    let s = Session::start(Options {
        policy: policy_granting_post(),
        catalog: CATALOG.into(),
        metering: enforce::MeterSettings {
            large_body_permit_wait: Duration::from_secs(1),
            ..enforce::MeterSettings::default()
        },
        upstream: Some(ExternalUpstream {
            addr: upstream.addr,
            ca_pem: upstream.ca_pem.clone(),
        }),
        ..Options::default()
    })
    .await;
    // Larger than the kernel's socket buffers hold between proxy and
    // upstream: each upload is still under way when its answer comes.
    let body = json_document(8 * 1024 * 1024, "");
    for n in 0..4 {
        let r = post_bytes(&s, DOCS, &[JSON, NO_EXPECT], body.as_bytes()).await;
        assert_eq!(r.status, 413, "large body {n}: {r:?}");
    }
    while upstream.holding() < 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fifth = post_bytes(&s, DOCS, &[JSON, NO_EXPECT], body.as_bytes()).await;
    assert_eq!(
        fifth.status, 403,
        "a fifth large body was read whole while four were still being sent: {fifth:?}"
    );
    let reason = fifth.blocked().unwrap();
    assert!(
        reason.contains("this session already reads 4 such bodies at once"),
        "{reason}"
    );
    assert_eq!(upstream.holding(), 4, "the fifth reached the upstream");
    // The four uploads end (their connections dropped): the permits come
    // back as the bodies are dropped, so a large body is read whole again.
    upstream.release();
    let again = loop {
        let r = post_bytes(&s, DOCS, &[JSON, NO_EXPECT], body.as_bytes()).await;
        if r.status != 403 {
            break r;
        }
        assert!(
            r.blocked().unwrap().contains("already reads 4 such bodies"),
            "{r:?}"
        );
    };
    assert_eq!(again.status, 413, "{again:?}");
    upstream.release();
    let chain = s.finish_and_verify();
    let refused = decisions(&chain)
        .into_iter()
        .filter(|d| d.1 == "block")
        .count();
    assert!(refused >= 1, "the fifth was not refused in the chain");
}
