//! Shared helpers for the sandbox and session-network integration tests:
//! unique session ids, running a sandboxed shell snippet and capturing its
//! output, and leftover checks.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};

use netns::SessionNetwork;
use sandbox::{Sandbox, SandboxSpec, SandboxStdio};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A session id unique across test binaries and tests.
pub fn session_id(tag: &str) -> String {
    format!(
        "t{}{}{}",
        std::process::id(),
        tag,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn network(tag: &str) -> SessionNetwork {
    SessionNetwork::create(&session_id(tag)).expect("create session network")
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A spec running `sh -c script` in `net` with `ca` as trust anchor.
pub fn sh_spec(net: &SessionNetwork, script: &str, ca: &[u8]) -> SandboxSpec {
    let mut spec = SandboxSpec::new(net, "sh", ["-c", script], ca.to_vec());
    spec.stdin = SandboxStdio::Null;
    spec.stdout = SandboxStdio::Pipe;
    spec.stderr = SandboxStdio::Pipe;
    spec
}

/// Runs `spec` to completion and captures its output.
pub fn run(spec: SandboxSpec) -> Output {
    let mut child = Sandbox::spawn(spec).expect("spawn sandbox");
    let mut out = child.take_stdout().expect("stdout pipe");
    let mut err = child.take_stderr().expect("stderr pipe");
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut stdout = String::new();
    let _ = out.read_to_string(&mut stdout);
    let stderr = t.join().expect("stderr reader");
    let status = child.wait().expect("wait");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `sh -c script` in `net` and captures the result.
pub fn run_sh(net: &SessionNetwork, script: &str) -> Output {
    run(sh_spec(net, script, b"no CA in this test\n"))
}

/// Mount table lines mentioning `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// Every path under the cgroup roots whose name contains `needle`.
pub fn cgroups_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for root in [
        "/sys/fs/cgroup/memory/openclaw",
        "/sys/fs/cgroup/pids/openclaw",
        "/sys/fs/cgroup/openclaw",
    ] {
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.contains(needle) {
                    found.push(e.path().display().to_string());
                }
            }
        }
    }
    found
}

pub fn exists(p: impl AsRef<Path>) -> bool {
    p.as_ref().symlink_metadata().is_ok()
}

/// A throwaway CA and a leaf for `names`, signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub leaf_der: Vec<u8>,
    pub leaf_key_der: Vec<u8>,
}

pub fn test_pki(ca_name: &str, names: &[&str]) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    TestPki {
        ca_pem: ca.pem(),
        leaf_der: leaf.der().to_vec(),
        leaf_key_der: leaf_key.serialize_der(),
    }
}

/// Serves HTTPS on `listener` (already bound, e.g. inside a session
/// namespace) with `pki`'s leaf, answering every request with `body`.
/// Returns a counter of completed requests.
pub fn serve_https(
    listener: std::net::TcpListener,
    pki: &TestPki,
    body: &'static str,
) -> std::sync::Arc<AtomicU32> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::io::Write;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(pki.leaf_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.leaf_key_der.clone())),
        )
        .expect("server config");
    let config = std::sync::Arc::new(config);
    let served = std::sync::Arc::new(AtomicU32::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = config.clone();
            let counter = counter.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if tls.write_all(resp.as_bytes()).is_ok() {
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    served
}

/// A minimal DNS responder on `socket` answering every A query with
/// `answer` (AAAA and others get an empty NOERROR). Returns a counter of
/// queries seen.
pub fn serve_dns(
    socket: std::net::UdpSocket,
    answer: std::net::Ipv4Addr,
) -> std::sync::Arc<AtomicU32> {
    let seen = std::sync::Arc::new(AtomicU32::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let q = &buf[..n];
            if q.len() < 12 {
                continue;
            }
            // Walk the question name to find qtype.
            let mut i = 12;
            while i < q.len() && q[i] != 0 {
                i += 1 + q[i] as usize;
            }
            if i + 5 > q.len() {
                continue;
            }
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let question = &q[12..i + 5];
            let is_a = qtype == 1;
            let mut resp = Vec::new();
            resp.extend_from_slice(&q[0..2]);
            resp.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
            resp.extend_from_slice(question);
            if is_a {
                resp.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                resp.extend_from_slice(&answer.octets());
            }
            let _ = socket.send_to(&resp, peer);
        }
    });
    seen
}
