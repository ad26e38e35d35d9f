//! Benchmark: the control plane on one host (issue 17), through the real
//! daemon (`openclaw serve`, this build's binary) and real sessions on the
//! netns backend:
//! - API session create → sandbox ready: the time to `201` of
//!   `POST /v1/sessions`, which answers once the session's sandbox is ready
//!   (p50, p99 of `SERVE_BENCH_CREATES` sequential creates);
//! - sessions started per second with `SERVE_BENCH_PARALLEL` clients
//!   creating at once;
//! - concurrent running sessions held (`SERVE_BENCH_HOLD`, all running at
//!   once) and the memory of each session's supervisor (`openclaw run`:
//!   proxy, receipt writer, sandbox parent): proportional set size, so pages
//!   the supervisors share are split between them, and RSS beside it;
//! - `GET /v1/sessions` requests per second over keep-alive connections
//!   while those sessions run.
//!
//! Needs root (network namespaces); without it only the API figure runs.
//!
//!     cargo bench --bench serve
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// The tests' driver of `openclaw serve` and the CLI (this build's binary).
#[allow(dead_code)]
#[path = "../tests/support/serve.rs"]
mod serve_support;

use serve_support::{cli, start_logging};

const TENANT: &str = "bench";
const POLICY: &str = "ttl = \"30m\"\n[web]\nallow = [\"example.com\"]\nmethods = [\"get\"]\n";
const LIST_RUN: Duration = Duration::from_secs(3);
const LIST_CONNS: usize = 8;

fn env_count(name: &str, default: usize) -> usize {
    test_support::env_parse(name).unwrap_or(default)
}

/// A capability token minted under the tenant's own root key.
fn mint(home: &Path) -> String {
    let pem =
        std::fs::read_to_string(home.join("tenants").join(TENANT).join("keys/root.key")).unwrap();
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let policy = capabilities::Policy::from_toml_str(POLICY).unwrap();
    capabilities::mint(&policy, &key.to_bytes(), SystemTime::now()).unwrap()
}

#[derive(Clone)]
struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let resp = self.client.request(req.body(body).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    /// Creates a session running `sleep`; its id and the time to 201.
    async fn create(&self, cap: &str, seconds: u32) -> (String, Duration) {
        let started = Instant::now();
        let (status, body) = self
            .call(
                "POST",
                "/v1/sessions",
                Some(json!({"capabilities": cap, "command": ["sleep", seconds.to_string()]})),
            )
            .await;
        let took = started.elapsed();
        assert_eq!(status, 201, "create: {body}");
        (body["id"].as_str().unwrap().to_owned(), took)
    }

    async fn stop_all(&self, ids: &[String], home: &Path) {
        for id in ids {
            let (status, body) = self
                .call("POST", &format!("/v1/sessions/{id}/stop"), None)
                .await;
            // 409: it ended on its own first.
            assert!(status == 202 || status == 409, "stop {id}: {status} {body}");
        }
        for id in ids {
            wait_ended(home, id).await;
        }
    }
}

async fn wait_ended(home: &Path, id: &str) {
    let path = home
        .join("tenants")
        .join(TENANT)
        .join("sessions")
        .join(id)
        .join("session.json");
    for _ in 0..1200 {
        let info: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if info.is_some_and(|i| i["status"] != "running") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("session {id} did not end");
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Pids of the daemon's children (the sessions' supervisors).
fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            kids.push(child);
        }
    }
    kids
}

/// (PSS, RSS) in KiB from `/proc/PID/smaps_rollup`.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("Pss:")?, field("Rss:")?))
}

async fn list_rate(api: &Api) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + LIST_RUN;
    let workers: Vec<_> = (0..LIST_CONNS)
        .map(|_| {
            let api = api.clone();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let (status, _) = api.call("GET", "/v1/sessions", None).await;
                    assert_eq!(status, 200);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    for w in workers {
        w.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    (n as f64 / started.elapsed().as_secs_f64(), n)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let token = cli(h, &["tenants", "create", TENANT]);
    let cap = mint(h);
    // Warnings only: request logging would be part of what is measured.
    let daemon = start_logging(h, "warn", std::process::Stdio::null());
    let api = Api {
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(LIST_CONNS)
            .build_http(),
        base: format!("http://{}", daemon.addr),
        token,
    };
    println!("openclaw serve on {} (this build)", daemon.addr);

    if !nix::unistd::geteuid().is_root() {
        println!("not root: sessions need network namespaces; only GET /v1/sessions measured");
        let (rate, n) = list_rate(&api).await;
        println!("GET /v1/sessions (no sessions): {rate:.0} req/s ({n} in {LIST_RUN:?}, {LIST_CONNS} connections)");
        return;
    }

    let creates = env_count("SERVE_BENCH_CREATES", 20);
    let parallel = env_count("SERVE_BENCH_PARALLEL", 4);
    let hold = env_count("SERVE_BENCH_HOLD", 32);

    // 1. Create → sandbox ready, one at a time.
    let mut times = Vec::with_capacity(creates);
    let mut ids = Vec::new();
    for _ in 0..creates {
        let (id, took) = api.create(&cap, 600).await;
        times.push(took);
        ids.push(id);
    }
    api.stop_all(&ids, h).await;
    times.sort_unstable();
    println!(
        "create -> sandbox ready ({creates} sequential): p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(quantile(&times, 0.5)),
        ms(quantile(&times, 0.99)),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );

    // 2. Sessions started per second, `parallel` clients at once.
    let started = Instant::now();
    let per_client = creates.div_ceil(parallel);
    let clients: Vec<_> = (0..parallel)
        .map(|_| {
            let api = api.clone();
            let cap = cap.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..per_client {
                    ids.push(api.create(&cap, 600).await.0);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for c in clients {
        ids.extend(c.await.unwrap());
    }
    let elapsed = started.elapsed();
    println!(
        "sessions started per second ({} by {parallel} clients at once): {:.1}/s",
        ids.len(),
        ids.len() as f64 / elapsed.as_secs_f64()
    );
    api.stop_all(&ids, h).await;

    // 3. Many running at once, and what each supervisor costs.
    let mut ids = Vec::new();
    for _ in 0..hold {
        ids.push(api.create(&cap, 600).await.0);
    }
    let (running_status, running) = api.call("GET", "/v1/sessions", None).await;
    assert_eq!(running_status, 200);
    let live = running["sessions"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|r| r["status"] == "running").count());
    let supervisors = children_of(daemon.child.id());
    let mems: Vec<(u64, u64)> = supervisors.iter().filter_map(|&p| memory_kib(p)).collect();
    let pss: u64 = mems.iter().map(|m| m.0).sum();
    let rss: u64 = mems.iter().map(|m| m.1).sum();
    let daemon_mem = memory_kib(daemon.child.id()).unwrap_or_default();
    println!(
        "running at once: {live} of {hold} created; {} supervisors: PSS {:.1} MiB each ({:.0} MiB total), RSS {:.1} MiB each; daemon PSS {:.1} MiB",
        mems.len(),
        pss as f64 / 1024.0 / mems.len().max(1) as f64,
        pss as f64 / 1024.0,
        rss as f64 / 1024.0 / mems.len().max(1) as f64,
        daemon_mem.0 as f64 / 1024.0,
    );

    // 4. The list while they run.
    let (rate, n) = list_rate(&api).await;
    println!(
        "GET /v1/sessions ({live} running, {} ended listed): {rate:.0} req/s ({n} in {LIST_RUN:?}, {LIST_CONNS} keep-alive connections)",
        running["sessions"].as_array().map_or(0, Vec::len) - live
    );
    api.stop_all(&ids, h).await;
}
