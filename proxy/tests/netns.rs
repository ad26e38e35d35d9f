//! Listeners bound inside a network namespace this test creates (through
//! the `netns` crate, as the binary binds them): the
//! sandbox side (curl run in the namespace) reaches the proxy, the proxy
//! reaches an upstream in the host namespace, and the host namespace cannot
//! see the proxy's listener. Needs root (as CI runs).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

struct Netns(String);

impl Netns {
    fn create() -> Option<Self> {
        let name = format!("ocproxy-test-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        let ns = Netns(name);
        let up = Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .ok()?;
        up.success().then_some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_listens_inside_the_session_namespace() {
    let ns = Netns::create().expect("ip netns add (tests run as root)");
    let path = format!("/run/netns/{}", ns.0);
    let env = common::Env::start_inside(
        &[b"h2", b"http/1.1"],
        common::Recorder::default(),
        |cfg| {
            cfg.listen.https = Some("127.0.0.1:8443".parse().unwrap());
            cfg.listen.http = None;
            cfg.listen.dns = Some("127.0.0.1:5353".parse().unwrap());
        },
        Some(path.into()),
    )
    .await;
    let out = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--cacert",
        ])
        .arg(&env.session_ca)
        // The request names no port: the proxy refuses one other than 443,
        // the port it reaches upstream on.
        .args([
            "--connect-to",
            "api.example.com:443:127.0.0.1:8443",
            "https://api.example.com/hello",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        common::stdout(&out),
        "hello api.example.com HTTP/2.0 GET",
        "{out:?}"
    );
    assert_eq!(
        env.upstream.connections(),
        1,
        "upstream reached from the host namespace"
    );
    // The host namespace has no such listener.
    assert!(std::net::TcpStream::connect("127.0.0.1:8443").is_err());
    env.proxy.shutdown().await;
}
