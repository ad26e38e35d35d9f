//! Benchmark: the full enforcement path (classify, credential scan,
//! authorize against the flight-booking token, durable signed receipt with
//! group commit, forward) under keep-alive load, beside the same proxy with a
//! permissive gate, the upstream reached directly, and mitmproxy's `mitmdump`
//! (reverse mode, TLS both sides) in the same run. Receipts go to a real file
//! on disk with fdatasync. Prints figures and ratios; skips mitmdump when it
//! is not installed. Run: `cargo bench --bench enforce`.
//!
//! The figures are taken in `ENFORCE_BENCH_ROUNDS` rounds (default 3), each
//! measuring every target back to back, because on a shared machine the same
//! target swings by tens of percent between runs: a ratio is only worth
//! judging when both of its figures saw the same noise. Each round's ratios
//! are printed, then their min / median / max; the table shows medians.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use capabilities::{Counters, Host, Policy, UnverifiedToken};
use ed25519_dalek::SigningKey;
use enforce::{
    Catalog, DnsRefusalLimit, EnforceConfig, Enforcement, Ledger, SecretStore, SessionCredentials,
};
use proxy::{AllowAll, Gate, Proxy, ProxyConfig, ProxyHandle};
use receipts::{LogOptions, ReceiptLog, SessionStart, UnverifiedChain};
use rustls::ClientConfig;
use test_support::{
    env_parse, median, median_difference, round_ratios, rounds_from_env, rounds_of, spread,
    HttpsClient, Mitmdump, Scripted, ScriptedBroker, TestCa, Upstream,
};

/// The product binary runs on mimalloc (src/main.rs); so does the proxy here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A host the flight-booking token lets the agent read.
const HOST: &str = "kayak.com";
const RUN: Duration = Duration::from_secs(3);
/// Keep-alive connections per figure (`ENFORCE_BENCH_CONNS`, default 32).
fn conns() -> usize {
    env_parse("ENFORCE_BENCH_CONNS").unwrap_or(32)
}
const POLICY: &str = include_str!("../examples/flight-booking/policy.toml");
const CATALOG: &str = include_str!("../examples/flight-booking/catalog.toml");
const SECRETS: &str = "[[secret]]\nname = \"united_login\"\nvalue = \"bench-password\"\n\n\
                       [[secret]]\nname = \"united_card\"\nvalue = \"4111111111111111\"\n";

#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    ca_pem: String,
}

fn client(ca_pem: &str, alpn: &[u8]) -> Arc<ClientConfig> {
    test_support::client_config(ca_pem, &[alpn])
}

async fn connect(t: &Target, alpn: &[u8]) -> HttpsClient {
    HttpsClient::connect(t.addr, HOST, client(&t.ca_pem, alpn)).await
}

async fn get(s: &mut HttpsClient) {
    s.get(HOST, "/hello").await
}

/// One target's figures from one round: keep-alive req/s, CPU µs per
/// request, latency p50 / p99 µs on one connection; h1 and h2.
#[derive(Clone, Copy)]
struct Figures {
    h1: f64,
    h2: f64,
    cpu1: f64,
    cpu2: f64,
    p50_1: f64,
    p99_1: f64,
    p50_2: f64,
    p99_2: f64,
}

/// Per-round keep-alive req/s ratios `num / den`, h1 and h2.
fn ratios(figures: &[(&str, Vec<Figures>)], num: &str, den: &str) -> Option<[Vec<f64>; 2]> {
    let per = |pick: fn(&Figures) -> f64| round_ratios(figures, num, den, pick);
    Some([per(|f| f.h1)?, per(|f| f.h2)?])
}

/// User + system CPU time this process has used so far (client, proxy,
/// upstream and receipt writer all live in it).
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

/// Requests per second over `CONNS` keep-alive connections, and the CPU
/// time the whole process spent per request meanwhile.
async fn keep_alive_rps(t: &Target, alpn: &'static [u8]) -> (f64, u64, Duration) {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns() {
        let (t, done, count) = (t.clone(), done.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&t, alpn).await;
            get(&mut s).await;
            count.fetch_add(1, Ordering::Relaxed);
            while !done.load(Ordering::Relaxed) {
                get(&mut s).await;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (n0, start, cpu0) = (count.load(Ordering::Relaxed), Instant::now(), cpu_time());
    tokio::time::sleep(RUN).await;
    let n = count.load(Ordering::Relaxed) - n0;
    let secs = start.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0) / n.max(1) as u32;
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (n as f64 / secs, count.load(Ordering::Relaxed), cpu)
}

/// Exactly `total` requests over `conns()` keep-alive connections (the
/// connections opened first, outside the count's own work but inside the
/// process): for instruction counts under callgrind, where wall-clock runs
/// say nothing. Two runs with different totals give instructions per request
/// by difference, setup cancelled out.
async fn fixed_count(t: &Target, alpn: &'static [u8], total: u64) -> u64 {
    let per = total / conns() as u64;
    let mut tasks = Vec::new();
    for _ in 0..conns() {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&t, alpn).await;
            for _ in 0..per {
                get(&mut s).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    per * conns() as u64
}

/// p50 and p99 of sequential requests on one keep-alive connection.
async fn latency(t: &Target, alpn: &'static [u8]) -> (Duration, Duration, u64) {
    let mut s = connect(t, alpn).await;
    for _ in 0..50 {
        get(&mut s).await;
    }
    let mut v = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        get(&mut s).await;
        v.push(start.elapsed());
    }
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100], 1050)
}

async fn start_proxy(upstream: &Upstream, ca_file: &Path, gate: Arc<dyn Gate>) -> ProxyHandle {
    let mut cfg = ProxyConfig::loopback("bench");
    cfg.listen.http = None;
    cfg.listen.dns = None;
    cfg.upstream.platform_roots = false;
    cfg.upstream.extra_ca_files = vec![ca_file.to_owned()];
    cfg.upstream.overrides.insert(HOST.into(), upstream.addr);
    Proxy::start(cfg, gate).await.unwrap()
}

/// What one thread waking another and being woken back costs here, wall
/// and process CPU per round trip. On a VM a cross-CPU wake-up is an IPI
/// through the hypervisor; this is the floor under the receipt writer's
/// hand-offs (request worker → writer, fdatasync's two waits, writer →
/// request worker), printed so a run's enforcing cost can be read against it.
fn wake_round_trip() -> (Duration, Duration) {
    use std::sync::{Condvar, Mutex};
    const TRIPS: u32 = 20_000;
    // The turn: false = the peer's move, true = ours.
    let turn = Arc::new((Mutex::new(false), Condvar::new()));
    let peer = {
        let turn = turn.clone();
        std::thread::spawn(move || {
            let (lock, cv) = &*turn;
            for _ in 0..TRIPS {
                let mut ours = cv.wait_while(lock.lock().unwrap(), |o| *o).unwrap();
                *ours = true;
                cv.notify_one();
            }
        })
    };
    let (lock, cv) = &*turn;
    let (cpu0, start) = (cpu_time(), Instant::now());
    for _ in 0..TRIPS {
        let mut ours = cv.wait_while(lock.lock().unwrap(), |o| !*o).unwrap();
        *ours = false;
        cv.notify_one();
    }
    let (wall, cpu) = (start.elapsed(), cpu_time() - cpu0);
    peer.join().unwrap();
    (wall / TRIPS, cpu / TRIPS)
}

/// What one enforced request costs, piece by piece, on this machine.
fn components(cap: &capabilities::Capability, dir: &Path, key: &SigningKey) {
    let headers = http::HeaderMap::new();
    let host = Host::parse(HOST).unwrap();
    let view = enforce::RequestView {
        method: "GET",
        host: &host,
        path_and_query: "/hello",
        headers: &headers,
    };
    let catalog = Catalog::from_toml(CATALOG).unwrap();
    let creds = SessionCredentials::new(&SecretStore::from_toml(SECRETS).unwrap());
    let n = 20_000u32;
    let start = Instant::now();
    let mut action = None;
    for _ in 0..n {
        let m = catalog.match_request(&view);
        action = Some(m.classify(&view, Some(b""), true).unwrap());
        std::hint::black_box(creds.scan("/hello", &headers, b""));
    }
    let classify = start.elapsed() / n;
    let action = action.unwrap();
    let mut v = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        std::hint::black_box(cap.authorize(&action, &Counters::default(), SystemTime::now()));
        v.push(t.elapsed());
    }
    v.sort();
    let authorize = v[v.len() / 2];
    let log = ReceiptLog::create(
        &dir.join("probe.jsonl"),
        key.clone(),
        SessionStart {
            session_id: "probe".into(),
            revocation_ids: Vec::new(),
            sandbox: "none".into(),
            capability_sha256: None,
            tenant: None,
            user: None,
        },
    )
    .unwrap();
    let mut v = Vec::new();
    for _ in 0..200 {
        let record = receipts::DecisionRecord {
            action: serde_json::to_value(&action).unwrap(),
            counters: serde_json::to_value(Counters::default()).unwrap(),
            decision: serde_json::json!({"decision": "allow"}),
            body_sha256: None,
        };
        let t = Instant::now();
        log.append(receipts::Entry::Decision {
            decided_at: SystemTime::now(),
            record,
        })
        .unwrap();
        v.push(t.elapsed());
    }
    v.sort();
    // The same log under the benchmark's concurrency, without the proxy:
    // what group commit alone sustains on this disk right now. 40 receipts
    // per appender (≈ 25 ms in all) read 36k to 60k/s in four runs minutes
    // apart; 400 (≈ 0.2 s) read 58k to 77k.
    let threads = conns();
    let per = 400;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..per {
                    let record = receipts::DecisionRecord {
                        action: serde_json::to_value(&action).unwrap(),
                        counters: serde_json::to_value(Counters::default()).unwrap(),
                        decision: serde_json::json!({"decision": "allow"}),
                        body_sha256: None,
                    };
                    log.append(receipts::Entry::Decision {
                        decided_at: SystemTime::now(),
                        record,
                    })
                    .unwrap();
                }
            });
        }
    });
    let concurrent = (threads * per) as f64 / start.elapsed().as_secs_f64();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "receipt log alone, {threads} concurrent appenders: {concurrent:.0} durable receipts/s"
    );
    let (wall, cpu) = wake_round_trip();
    println!(
        "this machine: a sleep/wake round trip between two threads (Mutex + Condvar) {:.1} µs \
         wall, {:.1} µs CPU (the receipt writer sleeps about 3 times per write + fdatasync)",
        us(wall),
        us(cpu)
    );
    println!(
        "components: classify + placeholder scan {:.1} µs, authorize p50 {:.0} µs, \
         one receipt append (sign + write + fdatasync, alone) p50 {:.0} µs / p99 {:.0} µs",
        us(classify),
        us(authorize),
        us(v[v.len() / 2]),
        us(v[v.len() * 99 / 100])
    );
}

fn main() {
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
    let ca_file = upstream_ca.write_pem(dir.path());

    // The session: token, catalog, secrets, receipts on disk, broker.
    let root = SigningKey::generate(&mut rand::rngs::OsRng);
    let policy = Policy::from_toml_str(POLICY).unwrap();
    let token = capabilities::mint(&policy, &root.to_bytes(), SystemTime::now()).unwrap();
    let cap = UnverifiedToken::from_base64(&token)
        .unwrap()
        .verify(&root.verifying_key().to_bytes())
        .unwrap();
    let receipt_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let receipts_path = dir.path().join("receipts.jsonl");
    // `ENFORCE_BENCH_GATHER_US` overrides the writer's gathering window.
    let mut options = LogOptions::default();
    if let Some(us) = env_parse("ENFORCE_BENCH_GATHER_US") {
        options.gather = Duration::from_micros(us);
    }
    // `ENFORCE_BENCH_WRITER_NICE` sets the writer thread's nice value.
    if let Some(nice) = env_parse("ENFORCE_BENCH_WRITER_NICE") {
        options.writer_nice = nice;
    }
    let log = ReceiptLog::create_with(
        &receipts_path,
        receipt_key.clone(),
        SessionStart {
            session_id: "bench".into(),
            revocation_ids: cap.revocation_ids(),
            sandbox: "none".into(),
            capability_sha256: None,
            tenant: None,
            user: None,
        },
        options,
    )
    .unwrap();
    let cap_for_parts = cap.clone();
    let catalog = Catalog::from_toml(CATALOG).unwrap();
    let rates = enforce::RateCard::builtin()
        .with_legacy_prices(catalog.llm_prices())
        .0;
    let enforcement = Enforcement::new(EnforceConfig {
        capability: cap,
        catalog,
        secrets: SecretStore::from_toml(SECRETS).unwrap(),
        receipts: log,
        broker: Arc::new(ScriptedBroker::new(vec![Scripted::Deny])),
        approval_timeout: Duration::from_secs(5),
        counters: Ledger::new(Counters::default()),
        dns_refusals: DnsRefusalLimit::default(),
        rates,
        metering: enforce::MeterSettings::default(),
        day_quota: None,
    });
    let gate = enforcement.gate.clone();
    // `ENFORCE_BENCH_REQUESTS=N`: a fixed number of requests per target and
    // protocol, no timing (for `valgrind --tool=callgrind`, docs/proxy.md).
    let fixed: Option<u64> = env_parse("ENFORCE_BENCH_REQUESTS");
    if fixed.is_none() {
        components(&cap_for_parts, dir.path(), &receipt_key);
    }

    let permissive = start_proxy(&upstream, &ca_file, Arc::new(AllowAll)).await;
    let enforcing = start_proxy(&upstream, &ca_file, gate.clone()).await;
    let mitm_dir = tempfile::tempdir().unwrap();
    // `ENFORCE_BENCH_ONLY=enforcing` (comma list) measures only those
    // targets, e.g. under a profiler.
    let only = std::env::var("ENFORCE_BENCH_ONLY").ok();
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|w| w == name))
    };
    let mitm = if wanted("mitmdump") {
        Mitmdump::start(upstream.addr, mitm_dir.path()).await
    } else {
        None
    };
    let mut targets = vec![
        Target {
            name: "direct",
            addr: upstream.addr,
            ca_pem: upstream_ca.cert_pem().to_owned(),
        },
        Target {
            name: "permissive",
            addr: permissive.https_addr().unwrap(),
            ca_pem: permissive.ca_pem().to_owned(),
        },
        Target {
            name: "enforcing",
            addr: enforcing.https_addr().unwrap(),
            ca_pem: enforcing.ca_pem().to_owned(),
        },
    ];
    match &mitm {
        Some(m) => targets.push(Target {
            name: "mitmdump",
            addr: m.addr,
            ca_pem: m.ca_pem.clone(),
        }),
        None if wanted("mitmdump") => {
            println!("mitmdump: not found or did not start; reference skipped")
        }
        None => {}
    }

    if let Some(total) = fixed {
        let mut enforced_requests = 0;
        for t in targets.iter().filter(|t| wanted(t.name)) {
            let n1 = fixed_count(t, b"http/1.1", total).await;
            let n2 = fixed_count(t, b"h2", total).await;
            println!("{}: {n1} h1 + {n2} h2 requests", t.name);
            if t.name == "enforcing" {
                enforced_requests = n1 + n2;
            }
        }
        gate.receipts().clone().finish().unwrap();
        let chain = UnverifiedChain::from_bytes(std::fs::read(&receipts_path).unwrap())
            .verify(&receipt_key.verifying_key())
            .unwrap();
        assert_eq!(chain.receipts.len() as u64 - 2, enforced_requests);
        permissive.shutdown().await;
        enforcing.shutdown().await;
        return;
    }
    let rounds = rounds_from_env("ENFORCE_BENCH_ROUNDS");
    println!(
        "\nGET https://{HOST}/hello, {} keep-alive connections, {}s per figure, {rounds} round(s) \
         of every target back to back; `enforcing` writes one fdatasync'ed receipt per request",
        conns(),
        RUN.as_secs()
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let selected: Vec<&Target> = targets.iter().filter(|t| wanted(t.name)).collect();
    // Per target, one entry per round.
    let mut figures: Vec<(&str, Vec<Figures>)> =
        selected.iter().map(|t| (t.name, Vec::new())).collect();
    let mut enforced_requests = 0;
    for round in 1..=rounds {
        // Every target's h1 figure, then every target's h2 figure, then the
        // latencies: the two figures of a ratio are seconds apart, so they
        // saw about the same noise from the machine's other tenants.
        let mut keep_alive = [Vec::new(), Vec::new()];
        for (p, alpn) in [&b"http/1.1"[..], &b"h2"[..]].into_iter().enumerate() {
            for t in &selected {
                let (rps, n, cpu) = keep_alive_rps(t, alpn).await;
                if t.name == "enforcing" {
                    enforced_requests += n;
                }
                keep_alive[p].push((rps, us(cpu)));
            }
        }
        for (i, t) in selected.iter().enumerate() {
            let l1 = latency(t, b"http/1.1").await;
            let l2 = latency(t, b"h2").await;
            if t.name == "enforcing" {
                enforced_requests += l1.2 + l2.2;
            }
            figures[i].1.push(Figures {
                h1: keep_alive[0][i].0,
                h2: keep_alive[1][i].0,
                cpu1: keep_alive[0][i].1,
                cpu2: keep_alive[1][i].1,
                p50_1: us(l1.0),
                p99_1: us(l1.1),
                p50_2: us(l2.0),
                p99_2: us(l2.1),
            });
        }
        let r = round - 1;
        let mut parts = Vec::new();
        if let Some([h1, h2]) = ratios(&figures, "enforcing", "permissive") {
            parts.push(format!(
                "enforcing/permissive h1 {:.2} h2 {:.2}",
                h1[r], h2[r]
            ));
        }
        if let Some([h1, h2]) = ratios(&figures, "enforcing", "mitmdump") {
            parts.push(format!(
                "enforcing/mitmdump h1 {:.1}× h2 {:.1}×",
                h1[r], h2[r]
            ));
        }
        // The direct figure involves no proxy: how fast the machine was.
        if let Some(d) = rounds_of(&figures, "direct") {
            parts.push(format!("direct h1 {:.0}", d[r].h1));
        }
        if !parts.is_empty() {
            println!("round {round}: {}", parts.join("; "));
        }
    }

    println!("\nmedian of each figure over {rounds} round(s):");
    println!(
        "{:<11} {:>10} {:>10} {:>16} {:>16} {:>14}",
        "target", "h1 req/s", "h2 req/s", "h1 p50/p99 µs", "h2 p50/p99 µs", "CPU µs/req h1/h2"
    );
    // Cores this process kept busy: below the machine's count, a target is
    // held back by waiting (for enforcing: each request's receipt, in a
    // closed loop of `conns()` connections), not by CPU. mitmdump runs in
    // its own process, so it is left out.
    let mut cores = Vec::new();
    for (name, f) in &figures {
        let m = |pick: fn(&Figures) -> f64| median(&f.iter().map(pick).collect::<Vec<_>>());
        if *name != "mitmdump" {
            cores.push(format!(
                "{name} {:.2} / {:.2}",
                m(|f| f.h1 * f.cpu1 / 1e6),
                m(|f| f.h2 * f.cpu2 / 1e6)
            ));
        }
        println!(
            "{:<11} {:>10.0} {:>10.0} {:>16} {:>16} {:>14}",
            name,
            m(|f| f.h1),
            m(|f| f.h2),
            format!("{:.0} / {:.0}", m(|f| f.p50_1), m(|f| f.p99_1)),
            format!("{:.0} / {:.0}", m(|f| f.p50_2), m(|f| f.p99_2)),
            format!("{:.0} / {:.0}", m(|f| f.cpu1), m(|f| f.cpu2)),
        );
    }
    println!(
        "cores busy h1 / h2 (req/s × CPU per request, this process, median) of {}: {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        cores.join("; ")
    );
    if let Some([h1, h2]) = ratios(&figures, "enforcing", "permissive") {
        // Differences within each round, like the ratios.
        let added = |pick: fn(&Figures) -> f64| {
            median_difference(&figures, "enforcing", "permissive", pick).unwrap()
        };
        println!(
            "\nenforcing / permissive over {rounds} round(s), min / median / max: h1 {}, h2 {} \
             (target ≥ 0.5); added p50 per request (median): h1 {:.0} µs, h2 {:.0} µs \
             (classify + authorize + signed receipt + fdatasync)",
            spread(&h1).show(2, ""),
            spread(&h2).show(2, ""),
            added(|f| f.p50_1),
            added(|f| f.p50_2),
        );
    }
    if let Some([h1, h2]) = ratios(&figures, "enforcing", "mitmdump") {
        println!(
            "enforcing / mitmdump over {rounds} round(s), min / median / max: h1 {}, h2 {} (target ≥ 30×)",
            spread(&h1).show(1, "×"),
            spread(&h2).show(1, "×"),
        );
    }

    // The receipt wait each enforced request saw (submit to durable ack),
    // beside what one append costs alone: with group commit working, the
    // wait stays within about one commit interval however many wait.
    let w = gate.receipt_waits();
    if w.count > 0 {
        println!(
            "receipt wait per enforced request (submit → durable ack): mean {:.0} µs, \
             p50 ≤ {:.0} µs, p99 ≤ {:.0} µs, max {:.0} µs over {} requests",
            us(w.mean),
            us(w.p50),
            us(w.p99),
            us(w.max),
            w.count
        );
    }

    // Group commit at work: each receipt rides the first batch taken after
    // it was queued, so it waits at most for the sync in progress and its own.
    let c = gate.receipts().commit_stats();
    if c.batches > 0 {
        println!(
            "group commit: {} receipts in {} batches (mean {:.1} per write + fdatasync, {} signatures); \
             write + fdatasync p50 ≤ {:.0} µs, p99 ≤ {:.0} µs, mean {:.0} µs; \
             queued → durable p50 ≤ {:.0} µs, p99 ≤ {:.0} µs; \
             receipts that missed the batch after them: {}; gathering mean {:.0} µs; \
             writer thread nice: {}",
            c.receipts,
            c.batches,
            c.receipts as f64 / c.batches as f64,
            c.signed,
            us(c.sync_quantile(0.5)),
            us(c.sync_quantile(0.99)),
            us(c.sync_total) / c.batches as f64,
            us(c.queued_quantile(0.5)),
            us(c.queued_quantile(0.99)),
            c.late,
            us(c.gather_total) / c.batches as f64,
            c.writer_nice
                .map_or("the process's".into(), |n| n.to_string()),
        );
    }

    // Every enforced request left exactly one receipt, and the chain verifies.
    gate.receipts().clone().finish().unwrap();
    let bytes = std::fs::read(&receipts_path).unwrap();
    let started = Instant::now();
    let chain = UnverifiedChain::from_bytes(bytes)
        .verify(&receipt_key.verifying_key())
        .unwrap();
    let decisions = chain.receipts.len() - 2;
    println!(
        "receipts: {decisions} decisions for {enforced_requests} enforced requests; chain verified in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(decisions as u64, enforced_requests);
    if let Some(m) = mitm {
        m.stop().await;
    }
    permissive.shutdown().await;
    enforcing.shutdown().await;
}
