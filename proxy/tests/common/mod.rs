//! Shared setup for the proxy's whole-system tests: a local HTTPS upstream
//! with its own CA, a proxy on loopback trusting that CA, a recording gate,
//! and a curl runner.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Output,
    sync::{Arc, Mutex},
};

use proxy::{
    AllowAll, ConnInfo, DnsVerdict, Exchange, Gate, GateRequest, GateVerdict, Listeners, Proxy,
    ProxyConfig, ProxyHandle, Refusal,
};
use test_support::{TestCa, Upstream};

pub const HOST: &str = "api.example.com";
pub const OTHER: &str = "other.example.com";

/// Records every event; refuses paths starting with `/blocked`; reads the
/// body of paths starting with `/buffer` before forwarding (as a deciding
/// gate does) and forwards even when that read failed, so the proxy's own
/// fail-closed handling shows; resolves only names listed in `dns_allowed`
/// (all when empty).
#[derive(Default)]
pub struct Recorder {
    pub refusals: Mutex<Vec<Refusal>>,
    pub exchanges: Mutex<Vec<Exchange>>,
    pub dns_allowed: Vec<String>,
}

impl Recorder {
    /// The exchanges once at least `n` have completed (or what there is
    /// after 10 s): the proxy reports an exchange when it has finished with
    /// the response, which can be just after the client has exited.
    pub async fn exchanges_when(&self, n: usize) -> Vec<Exchange> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let ex = self.exchanges.lock().unwrap().clone();
            if ex.len() >= n || std::time::Instant::now() > deadline {
                return ex;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub fn refusal_reasons(&self) -> Vec<&'static str> {
        self.refusals
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.reason)
            .collect()
    }
}

#[async_trait::async_trait]
impl Gate for Recorder {
    fn dns(&self, name: &str) -> DnsVerdict {
        if self.dns_allowed.is_empty() || self.dns_allowed.iter().any(|n| n == name) {
            DnsVerdict::ResolveToProxy
        } else {
            DnsVerdict::NxDomain
        }
    }
    async fn request(&self, req: &mut GateRequest, conn: &ConnInfo) -> GateVerdict {
        if req.head.uri.path().starts_with("/buffer") {
            let _ = req.body.buffer_up_to(1 << 20).await;
        }
        if req.head.uri.path().starts_with("/blocked") {
            return GateVerdict::Refuse {
                status: http::StatusCode::FORBIDDEN,
                reason: "no-capability".into(),
            };
        }
        AllowAll.request(req, conn).await
    }
    fn refused(&self, event: Refusal) {
        self.refusals.lock().unwrap().push(event);
    }
    fn completed(&self, exchange: Exchange) {
        self.exchanges.lock().unwrap().push(exchange);
    }
}

pub struct Env {
    pub proxy: ProxyHandle,
    pub upstream: Upstream,
    pub gate: Arc<Recorder>,
    pub dir: tempfile::TempDir,
    /// The session CA, for curl's --cacert.
    pub session_ca: PathBuf,
    pub upstream_ca: TestCa,
}

impl Env {
    pub async fn start(upstream_alpn: &[&[u8]]) -> Env {
        Self::start_with(upstream_alpn, Recorder::default(), |_| {}).await
    }

    pub async fn start_with(
        upstream_alpn: &[&[u8]],
        gate: Recorder,
        tweak: impl FnOnce(&mut ProxyConfig),
    ) -> Env {
        Self::start_inside(upstream_alpn, gate, tweak, None).await
    }

    /// As [`Env::start_with`]; with `netns`, the listeners are bound inside
    /// the network namespace at that path (through the `netns` crate, as
    /// the binary binds them in the session's).
    pub async fn start_inside(
        upstream_alpn: &[&[u8]],
        gate: Recorder,
        tweak: impl FnOnce(&mut ProxyConfig),
        netns: Option<PathBuf>,
    ) -> Env {
        let upstream_ca = TestCa::new("upstream");
        let upstream = Upstream::https(&upstream_ca, &[HOST, OTHER], upstream_alpn).await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ProxyConfig::loopback("test");
        cfg.upstream.platform_roots = false;
        cfg.upstream.extra_ca_files = vec![upstream_ca.write_pem(dir.path())];
        cfg.upstream.overrides = HashMap::from([
            (HOST.to_owned(), upstream.addr),
            (OTHER.to_owned(), upstream.addr),
        ]);
        tweak(&mut cfg);
        let gate = Arc::new(gate);
        let proxy = match netns {
            None => Proxy::start(cfg, gate.clone()).await.unwrap(),
            Some(path) => {
                let addrs = cfg.listen.clone();
                let listeners = tokio::task::spawn_blocking(move || {
                    netns::run_in(&path, move || Listeners::bind(&addrs))
                })
                .await
                .unwrap()
                .unwrap()
                .unwrap();
                Proxy::start_with_listeners(cfg, listeners, gate.clone())
                    .await
                    .unwrap()
            }
        };
        let session_ca = dir.path().join("session-ca.pem");
        std::fs::write(&session_ca, proxy.ca_pem()).unwrap();
        Env {
            proxy,
            upstream,
            gate,
            dir,
            session_ca,
            upstream_ca,
        }
    }

    /// A TLS client connection to the proxy (SNI = HOST) offering `alpn`.
    pub async fn tls(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let cfg = test_support::client_config(self.proxy.ca_pem(), &[alpn]);
        test_support::tls_connect(self.proxy.https_addr().unwrap(), HOST, cfg)
            .await
            .unwrap()
    }

    /// curl against `https://HOST{path}` through the proxy's TLS listener.
    pub async fn curl(&self, path: &str, extra: &[&str]) -> Output {
        let port = self.proxy.https_addr().unwrap().port();
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "--cacert"])
            .arg(&self.session_ca)
            .arg("--connect-to")
            .arg(format!("{HOST}:443:127.0.0.1:{port}"))
            .args(extra)
            .arg(format!("https://{HOST}{path}"));
        cmd.output().await.unwrap()
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
