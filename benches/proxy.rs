//! Benchmark: the egress proxy (transport, permissive gate) against the same
//! local HTTPS upstream reached directly, through nginx (a tuned TLS reverse
//! proxy, the fast peer) and through mitmproxy's `mitmdump` (reverse mode, TLS
//! both sides, the MITM peer) in the same run. Prints figures and ratios;
//! skips a peer that is not installed. Run: `cargo bench --bench proxy`.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use proxy::{AllowAll, Proxy, ProxyConfig, SessionCa};
use rustls::{client::Resumption, ClientConfig};
use test_support::{HttpsClient, Mitmdump, Nginx, TestCa, Upstream};

/// The product binary runs on mimalloc (src/main.rs); so does the proxy here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOST: &str = "api.example.com";
const RUN: Duration = Duration::from_secs(2);
const CONNS: usize = 8;

#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    ca_pem: String,
}

fn client(ca_pem: &str, alpn: &[u8], resume: bool) -> Arc<ClientConfig> {
    let mut cfg = (*test_support::client_config(ca_pem, &[alpn])).clone();
    if !resume {
        // Every new connection pays a full handshake, as a fresh client would.
        cfg.resumption = Resumption::disabled();
    }
    Arc::new(cfg)
}

async fn connect(t: &Target, cfg: Arc<ClientConfig>) -> HttpsClient {
    HttpsClient::connect(t.addr, HOST, cfg).await
}

async fn get(s: &mut HttpsClient) {
    s.get(HOST, "/hello").await
}

/// Requests per second over `CONNS` keep-alive connections.
async fn keep_alive_rps(t: &Target, alpn: &'static [u8]) -> f64 {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let (t, done, count) = (t.clone(), done.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&t, client(&t.ca_pem, alpn, true)).await;
            get(&mut s).await; // warm
            while !done.load(Ordering::Relaxed) {
                get(&mut s).await;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(RUN).await;
    let n = count.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / secs
}

/// New TLS connections (one request each) per second, `CONNS` at a time.
async fn new_conn_rate(t: &Target) -> f64 {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let cfg = client(&t.ca_pem, b"http/1.1", false);
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let (t, done, count, cfg) = (t.clone(), done.clone(), count.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let mut s = connect(&t, cfg.clone()).await;
                get(&mut s).await;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(RUN).await;
    let n = count.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / secs
}

/// p50 and p99 latency of sequential requests on one keep-alive connection.
async fn latency(t: &Target, alpn: &'static [u8]) -> (Duration, Duration) {
    let mut s = connect(t, client(&t.ca_pem, alpn, true)).await;
    for _ in 0..50 {
        get(&mut s).await;
    }
    let mut v = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let start = Instant::now();
        get(&mut s).await;
        v.push(start.elapsed());
    }
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn leaf_minting() {
    let ca = SessionCa::generate("bench").unwrap();
    let n = 200;
    let start = Instant::now();
    for i in 0..n {
        ca.leaf(&format!("host{i}.example.com")).unwrap();
    }
    let cold = start.elapsed() / n;
    let m = 200_000u32;
    let start = Instant::now();
    for _ in 0..m {
        std::hint::black_box(ca.leaf("host7.example.com").unwrap());
    }
    let cached = start.elapsed() / m;
    println!(
        "leaf minting: cold {:.1} µs/leaf, cached lookup {:.2} µs (target ≤ 10 µs)",
        cold.as_secs_f64() * 1e6,
        cached.as_secs_f64() * 1e6
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    leaf_minting();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let upstream_ca = TestCa::new("bench upstream");
    let upstream = Upstream::https(&upstream_ca, &[HOST], &[b"h2", b"http/1.1"]).await;
    let mut cfg = ProxyConfig::loopback("bench");
    cfg.listen.http = None;
    cfg.listen.dns = None;
    cfg.upstream.platform_roots = false;
    cfg.upstream.extra_ca_files = vec![upstream_ca.write_pem(dir.path())];
    cfg.upstream.overrides.insert(HOST.into(), upstream.addr);
    let handle = Proxy::start(cfg, Arc::new(AllowAll)).await.unwrap();
    let direct = Target {
        name: "direct",
        addr: upstream.addr,
        ca_pem: upstream_ca.cert_pem().to_owned(),
    };
    let ours = Target {
        name: "openclaw",
        addr: handle.https_addr().unwrap(),
        ca_pem: handle.ca_pem().to_owned(),
    };
    let nginx_dir = tempfile::tempdir().unwrap();
    let nginx_ca = TestCa::new("bench nginx");
    let nginx = Nginx::start(
        &nginx_ca,
        HOST,
        upstream.addr,
        upstream_ca.cert_pem(),
        nginx_dir.path(),
    )
    .await;
    if nginx.is_none() {
        println!("nginx: not found or did not start; peer skipped (apt-get install nginx)");
    }
    let mitm_dir = tempfile::tempdir().unwrap();
    let mitm = Mitmdump::start(upstream.addr, mitm_dir.path()).await;
    if mitm.is_none() {
        println!("mitmdump: not found or did not start; reference skipped (pip install mitmproxy)");
    }
    if std::env::var_os("PROXY_BENCH_PROFILE").is_some() {
        // For `perf record`: only new connections through openclaw, longer.
        let start = Instant::now();
        let mut n = 0.0;
        while start.elapsed() < Duration::from_secs(10) {
            n += new_conn_rate(&ours).await * RUN.as_secs_f64();
        }
        println!(
            "profile run: {:.0} new conn/s; {:?}",
            n / start.elapsed().as_secs_f64(),
            handle.stats()
        );
        handle.shutdown().await;
        return;
    }
    let mut targets = vec![direct, ours];
    if let Some(n) = &nginx {
        targets.push(Target {
            name: "nginx",
            addr: n.addr,
            ca_pem: n.ca_pem.clone(),
        });
    }
    if let Some(m) = &mitm {
        targets.push(Target {
            name: "mitmdump",
            addr: m.addr,
            ca_pem: m.ca_pem.clone(),
        });
    }
    println!(
        "\n{:<10} {:>14} {:>14} {:>14} {:>22} {:>22}",
        "target", "h1 ka req/s", "h2 ka req/s", "new conn/s", "h1 p50/p99 (µs)", "h2 p50/p99 (µs)"
    );
    let mut results = Vec::new();
    for t in &targets {
        let h1 = keep_alive_rps(t, b"http/1.1").await;
        let h2 = keep_alive_rps(t, b"h2").await;
        let nc = new_conn_rate(t).await;
        let l1 = latency(t, b"http/1.1").await;
        let l2 = latency(t, b"h2").await;
        println!(
            "{:<10} {:>14.0} {:>14.0} {:>14.0} {:>22} {:>22}",
            t.name,
            h1,
            h2,
            nc,
            format!(
                "{:.0} / {:.0}",
                l1.0.as_secs_f64() * 1e6,
                l1.1.as_secs_f64() * 1e6
            ),
            format!(
                "{:.0} / {:.0}",
                l2.0.as_secs_f64() * 1e6,
                l2.1.as_secs_f64() * 1e6
            ),
        );
        results.push((t.name, (h1, h2, nc, l1.0, l2.0)));
    }
    let result = |name: &str| results.iter().find(|r| r.0 == name).map(|r| r.1);
    let (d, o) = (result("direct").unwrap(), result("openclaw").unwrap());
    println!(
        "\nadded p50 latency through openclaw: h1 {:.0} µs, h2 {:.0} µs (target ≤ 300 µs)",
        (o.3.as_secs_f64() - d.3.as_secs_f64()) * 1e6,
        (o.4.as_secs_f64() - d.4.as_secs_f64()) * 1e6
    );
    println!(
        "openclaw / direct: h1 ka {:.2}, h2 ka {:.2}, new conn {:.2}",
        o.0 / d.0,
        o.1 / d.1,
        o.2 / d.2
    );
    if let Some(n) = result("nginx") {
        println!(
            "openclaw / nginx: h1 ka {:.2} (target ≥ 1), h2 ka {:.2} (target ≥ 1), new conn {:.2}",
            o.0 / n.0,
            o.1 / n.1,
            o.2 / n.2
        );
    }
    if let Some(m) = result("mitmdump") {
        println!(
            "openclaw / mitmdump: h1 ka {:.1}× (target ≥ 40×), h2 ka {:.1}×, new conn {:.1}× (target ≥ 15×)",
            o.0 / m.0, o.1 / m.1, o.2 / m.2
        );
        println!(
            "added p50 latency through mitmdump: h1 {:.0} µs",
            (m.3.as_secs_f64() - d.3.as_secs_f64()) * 1e6
        );
    }
    let stats = handle.stats();
    println!("proxy stats: {stats:?}");
    if let Some(m) = mitm {
        m.stop().await;
    }
    if let Some(n) = nginx {
        n.stop().await;
    }
    handle.shutdown().await;
}
