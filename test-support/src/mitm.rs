//! mitmproxy's `mitmdump` as the benchmarks' reference proxy: reverse mode
//! with TLS on both sides in front of a local upstream, quiet, its CA in a
//! private config directory.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

/// Where `scripts/bootstrap` installs mitmproxy (its own venv).
const BOOTSTRAP_MITMDUMP: &str = "/usr/local/lib/openclaw/mitmproxy-venv/bin/mitmdump";

/// The bootstrap's pinned `mitmdump` when it is there, else whichever one
/// is on PATH.
fn mitmdump_program() -> &'static str {
    if Path::new(BOOTSTRAP_MITMDUMP).exists() {
        BOOTSTRAP_MITMDUMP
    } else {
        "mitmdump"
    }
}

/// A running `mitmdump`; killed when dropped.
pub struct Mitmdump {
    child: tokio::process::Child,
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    /// Its CA certificate, for the benchmark's client.
    pub ca_pem: String,
}

impl Mitmdump {
    /// Starts `mitmdump` in reverse mode to `https://upstream`, with its
    /// config (and generated CA) in `dir`. None when it is not installed or
    /// does not come up within 20 s: benchmarks then skip the reference.
    pub async fn start(upstream: SocketAddr, dir: &Path) -> Option<Mitmdump> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = tokio::process::Command::new(mitmdump_program())
            .args(["--mode", &format!("reverse:https://{upstream}")])
            .args(["--listen-host", "127.0.0.1"])
            .args(["--listen-port", &port.to_string()])
            // Quiet, as a fair peer: no per-flow output.
            .args(["--ssl-insecure", "-q", "--set", "flow_detail=0"])
            .args(["--set", "termlog_verbosity=error"])
            .args(["--set", &format!("confdir={}", dir.display())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let ca = dir.join("mitmproxy-ca-cert.pem");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..200 {
            if ca.exists() && tokio::net::TcpStream::connect(addr).await.is_ok() {
                let ca_pem = std::fs::read_to_string(&ca).ok()?;
                return Some(Mitmdump {
                    child,
                    addr,
                    ca_pem,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Stops it and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
