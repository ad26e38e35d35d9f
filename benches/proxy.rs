//! Benchmark: the egress proxy (transport, permissive gate) against the same
//! local HTTPS upstream reached directly, through nginx (a tuned TLS reverse
//! proxy, the fast peer) and through mitmproxy's `mitmdump` (reverse mode, TLS
//! both sides, the MITM peer) in the same run. Prints figures and ratios;
//! skips a peer that is not installed. Run: `cargo bench --bench proxy`.
//!
//! direct, openclaw and nginx are measured in `PROXY_BENCH_ROUNDS` rounds
//! (default 3), each taking every target's figure back to back, because on a
//! shared machine the same target swings by tens of percent between runs: a
//! ratio is only worth judging when both of its figures saw the same noise.
//! Each round's ratios are printed, then their min / median / max; the table
//! shows medians. mitmdump, a distant reference, is measured in round 1 only.
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
use test_support::{
    median, median_difference, round_ratios, rounds_from_env, rounds_of, spread, HttpsClient,
    Mitmdump, Nginx, TestCa, Upstream,
};

/// The product binary runs on mimalloc (src/main.rs); so does the proxy here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOST: &str = "api.example.com";
const RUN: Duration = Duration::from_secs(2);
const CONNS: usize = 8;

/// One target's figures from one round: keep-alive req/s h1 and h2, new
/// connections/s, latency p50 / p99 µs on one connection h1 and h2.
#[derive(Clone, Copy)]
struct Figures {
    h1: f64,
    h2: f64,
    new_conn: f64,
    p50_1: f64,
    p99_1: f64,
    p50_2: f64,
    p99_2: f64,
}

/// Per-round ratios `num / den` of h1 keep-alive, h2 keep-alive and new
/// connections (only the rounds both were measured in).
fn ratios(figures: &[(&str, Vec<Figures>)], num: &str, den: &str) -> Option<[Vec<f64>; 3]> {
    let per = |pick: fn(&Figures) -> f64| round_ratios(figures, num, den, pick);
    Some([per(|f| f.h1)?, per(|f| f.h2)?, per(|f| f.new_conn)?])
}

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
    if let Some(what) = std::env::var_os("PROXY_BENCH_PROFILE") {
        // For `perf record`: one figure through openclaw only, for 10 s:
        // keep-alive `h1` or `h2`, otherwise new connections.
        // PROXY_BENCH_PROFILE_SECS: a shorter or longer run, so that two runs
        // under callgrind give the cost per request by difference.
        let secs = std::env::var("PROXY_BENCH_PROFILE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        let start = Instant::now();
        let mut n = 0.0;
        while start.elapsed() < Duration::from_secs(secs) {
            let rate = match what.to_str() {
                Some("h1") => keep_alive_rps(&ours, b"http/1.1").await,
                Some("h2") => keep_alive_rps(&ours, b"h2").await,
                _ => new_conn_rate(&ours).await,
            };
            n += rate * RUN.as_secs_f64();
        }
        println!(
            "profile run ({}): {:.0} per second, {n:.0} requests; {:?}",
            what.to_string_lossy(),
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
    let rounds = rounds_from_env("PROXY_BENCH_ROUNDS");
    println!(
        "\nGET https://{HOST}/hello, {CONNS} connections, {}s per figure, {rounds} round(s) \
         of every target back to back (mitmdump in round 1 only)",
        RUN.as_secs()
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    // Per target, one entry per round it was measured in.
    let mut figures: Vec<(&str, Vec<Figures>)> =
        targets.iter().map(|t| (t.name, Vec::new())).collect();
    for round in 1..=rounds {
        // mitmdump is some 50× slower than the rest; one round of it is
        // enough to see where it stands, and keeps the run short.
        let here: Vec<&Target> = targets
            .iter()
            .filter(|t| round == 1 || t.name != "mitmdump")
            .collect();
        // Every target's h1 figure, then h2, then new connections, then the
        // latencies: the two figures of a ratio are seconds apart, so they
        // saw about the same noise from the machine's other tenants.
        let (mut h1, mut h2, mut nc) = (Vec::new(), Vec::new(), Vec::new());
        for t in &here {
            h1.push(keep_alive_rps(t, b"http/1.1").await);
        }
        for t in &here {
            h2.push(keep_alive_rps(t, b"h2").await);
        }
        for t in &here {
            nc.push(new_conn_rate(t).await);
        }
        for (i, t) in here.iter().enumerate() {
            let l1 = latency(t, b"http/1.1").await;
            let l2 = latency(t, b"h2").await;
            let entry = figures.iter_mut().find(|(n, _)| *n == t.name).unwrap();
            entry.1.push(Figures {
                h1: h1[i],
                h2: h2[i],
                new_conn: nc[i],
                p50_1: us(l1.0),
                p99_1: us(l1.1),
                p50_2: us(l2.0),
                p99_2: us(l2.1),
            });
        }
        let r = round - 1;
        let mut parts = Vec::new();
        for peer in ["nginx", "direct"] {
            if let Some([h1, h2, nc]) = ratios(&figures, "openclaw", peer) {
                parts.push(format!(
                    "openclaw/{peer} h1 ka {:.2} h2 ka {:.2} new conn {:.2}",
                    h1[r], h2[r], nc[r]
                ));
            }
        }
        // The direct figure involves no proxy: how fast the machine was.
        parts.push(format!(
            "direct h1 ka {:.0}",
            rounds_of(&figures, "direct").unwrap()[r].h1
        ));
        println!("round {round}: {}", parts.join("; "));
    }

    println!("\nmedian of each figure over {rounds} round(s) (mitmdump: round 1 only):");
    println!(
        "{:<10} {:>14} {:>14} {:>14} {:>22} {:>22}",
        "target", "h1 ka req/s", "h2 ka req/s", "new conn/s", "h1 p50/p99 (µs)", "h2 p50/p99 (µs)"
    );
    for (name, f) in &figures {
        let m = |pick: fn(&Figures) -> f64| median(&f.iter().map(pick).collect::<Vec<_>>());
        println!(
            "{:<10} {:>14.0} {:>14.0} {:>14.0} {:>22} {:>22}",
            name,
            m(|f| f.h1),
            m(|f| f.h2),
            m(|f| f.new_conn),
            format!("{:.0} / {:.0}", m(|f| f.p50_1), m(|f| f.p99_1)),
            format!("{:.0} / {:.0}", m(|f| f.p50_2), m(|f| f.p99_2)),
        );
    }
    // Added latency: differences within each round, like the ratios.
    let added = |name: &str, pick: fn(&Figures) -> f64| {
        median_difference(&figures, name, "direct", pick).unwrap()
    };
    println!(
        "\nadded p50 latency through openclaw (median over rounds): h1 {:.0} µs, h2 {:.0} µs \
         (target ≤ 300 µs)",
        added("openclaw", |f| f.p50_1),
        added("openclaw", |f| f.p50_2),
    );
    let [h1, h2, nc] = ratios(&figures, "openclaw", "direct").unwrap();
    println!(
        "openclaw / direct over {rounds} round(s), min / median / max: h1 ka {}, h2 ka {}, new conn {}",
        spread(&h1).show(2, ""),
        spread(&h2).show(2, ""),
        spread(&nc).show(2, ""),
    );
    if let Some([h1, h2, nc]) = ratios(&figures, "openclaw", "nginx") {
        println!(
            "openclaw / nginx over {rounds} round(s), min / median / max: h1 ka {} (target ≥ 1), \
             h2 ka {} (target ≥ 1), new conn {}",
            spread(&h1).show(2, ""),
            spread(&h2).show(2, ""),
            spread(&nc).show(2, ""),
        );
    }
    if let Some([h1, h2, nc]) = ratios(&figures, "openclaw", "mitmdump") {
        println!(
            "openclaw / mitmdump, round 1: h1 ka {:.1}× (target ≥ 40×), h2 ka {:.1}×, new conn {:.1}× (target ≥ 15×)",
            h1[0], h2[0], nc[0]
        );
        println!(
            "added p50 latency through mitmdump, round 1: h1 {:.0} µs",
            added("mitmdump", |f| f.p50_1)
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
