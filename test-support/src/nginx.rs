//! nginx as the benchmarks' fast reference: a TLS-terminating reverse proxy
//! in front of the same local HTTPS upstream, configured as a user tuning it
//! for speed would (a worker per core, keep-alive to the upstream, a TLS
//! session cache, HTTP/2 and HTTP/1.1 to clients, no access log).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use crate::TestCa;

/// A running nginx (master and workers); stopped when dropped.
pub struct Nginx {
    child: tokio::process::Child,
    /// Where it listens for TLS (loopback).
    pub addr: SocketAddr,
    /// The CA that signed its certificate, for the benchmark's client.
    pub ca_pem: String,
    /// Its error log, worth reading when it does not start.
    pub error_log: PathBuf,
}

impl Nginx {
    /// Starts nginx (`/usr/sbin/nginx` or `nginx` on PATH) serving `host`
    /// with a leaf of `ca`, proxying to `https://upstream` (whose certificate
    /// it verifies against `upstream_ca_pem`, as openclaw does), with its config,
    /// pid file and logs in `dir`. None when it is not installed or does not
    /// come up within 20 s: benchmarks then skip the reference.
    pub async fn start(
        ca: &TestCa,
        host: &str,
        upstream: SocketAddr,
        upstream_ca_pem: &str,
        dir: &Path,
    ) -> Option<Nginx> {
        let binary = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|b| std::process::Command::new(b).arg("-v").output().is_ok())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let (cert, key) = ca.leaf_pem(&[host]);
        std::fs::write(dir.join("leaf.pem"), cert).ok()?;
        std::fs::write(dir.join("leaf.key"), key).ok()?;
        std::fs::write(dir.join("upstream-ca.pem"), upstream_ca_pem).ok()?;
        let error_log = dir.join("error.log");
        let conf = config(dir, port, host, upstream);
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).ok()?;
        let child = tokio::process::Command::new(binary)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Some(Nginx {
                    child,
                    addr,
                    ca_pem: ca.cert_pem().to_owned(),
                    error_log,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Stops it (SIGTERM to the master, which stops its workers) and waits.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // The master stops its workers on SIGTERM; a kill of the master
            // alone would leave them serving.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// The configuration a user tuning nginx as a TLS reverse proxy would write.
fn config(dir: &Path, port: u16, host: &str, upstream: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        "# Written by test-support for the proxy benchmark.
daemon off;
master_process on;
# Root runs the benchmark; the workers read the temporary directory as root.
user root;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream bench_upstream {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2 reuseport;
        server_name {host};
        ssl_certificate {dir}/leaf.pem;
        ssl_certificate_key {dir}/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:10m;
        ssl_session_tickets on;
        http2_max_requests 1000000;
        location / {{
            proxy_pass https://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host {host};
            proxy_ssl_server_name on;
            proxy_ssl_name {host};
            proxy_ssl_session_reuse on;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {dir}/upstream-ca.pem;
            proxy_buffering on;
        }}
    }}
}}
"
    )
}
