//! Benchmark: authorization latency of a parsed, verified capability token
//! (the seed flight-booking token), per decision path, plus the per-lookup
//! `authorize_dns` and `credential_allowed`. Target: p50 ≤ 50 µs.
//!
//! Run: `cargo bench --bench authorization`. Criterion reports each path;
//! the closing lines print p50/p99 from individually timed decisions.
//! `AUTHZ_BENCH_LOOP=<case>:<n>` instead runs only `n` back-to-back calls of
//! one case (a name printed below) and exits: a fixed amount of work for
//! `perf stat -e task-clock` or `perf record`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capabilities::{Action, ActionType, Capability, Counters, Policy, UnverifiedToken};
use criterion::{black_box, criterion_group, Criterion};

const ROOT_SECRET: [u8; 32] = [7; 32];

fn minted_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

fn seed_token() -> Capability {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/flight-booking/policy.toml"
    ))
    .expect("seed policy file");
    let policy = Policy::from_toml_str(&text).expect("seed policy");
    let token = capabilities::mint(&policy, &ROOT_SECRET, minted_at()).expect("mint");
    let public = ed25519_dalek::SigningKey::from_bytes(&ROOT_SECRET)
        .verifying_key()
        .to_bytes();
    UnverifiedToken::from_base64(&token)
        .expect("parse")
        .verify(&public)
        .expect("verify")
}

fn action(kind: ActionType, method: &str, host: &str, path: &str) -> Action {
    Action::request(kind, method, host, path)
}

fn cases() -> Vec<(&'static str, Action)> {
    let search = action(
        ActionType::Web,
        "GET",
        "google.com",
        "/travel/flights/search?from=SFO",
    );
    // What benches/enforce.rs sends: a whole-host grant, after the two
    // google.com path-prefix branches fail.
    let kayak = action(ActionType::Web, "GET", "kayak.com", "/hello");
    let slack = action(ActionType::Web, "POST", "hooks.slack.com", "/services/T024");
    let purchase = Action {
        amount_cents: Some(48_700),
        currency: Some("USD".into()),
        merchant: Some("united.com".into()),
        credential: Some("united_card".into()),
        ..action(
            ActionType::Payment,
            "POST",
            "united.com",
            "/api/booking/purchase",
        )
    };
    let mail = Action {
        recipients: vec!["traveler@example.com".into()],
        subject: Some("Your flight confirmation".into()),
        ..action(ActionType::Email, "POST", "api.mail.example", "/v1/send")
    };
    vec![
        ("web_allow", search),
        ("web_allow_host", kayak),
        ("web_block", slack),
        ("payment_approval", purchase),
        ("email_allow", mail),
    ]
}

fn authorization(c: &mut Criterion) {
    let cap = seed_token();
    let counters = Counters::default();
    let now = minted_at() + Duration::from_secs(60);
    let mut group = c.benchmark_group("authorize");
    for (name, act) in cases() {
        group.bench_function(name, |b| {
            b.iter(|| cap.authorize(black_box(&act), black_box(&counters), now))
        });
    }
    group.bench_function("dns", |b| {
        b.iter(|| cap.authorize_dns(black_box("kayak.com"), now))
    });
    group.bench_function("credential", |b| {
        b.iter(|| cap.credential_allowed(black_box("united_card"), black_box("united.com"), now))
    });
    group.finish();
}

/// p50 and p99 of 20 000 individually timed calls of `f`.
fn timed(name: &str, mut f: impl FnMut()) {
    let mut samples: Vec<Duration> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    println!(
        "  {name:18} p50 {:>7.1} µs   p99 {:>7.1} µs   (target p50 ≤ 50 µs)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

/// p50/p99 of individually timed decisions, per path.
fn percentiles() {
    let cap = seed_token();
    let counters = Counters::default();
    let now = minted_at() + Duration::from_secs(60);
    println!("\nauthorization latency (seed token, 20000 decisions each):");
    for (name, act) in cases() {
        timed(name, || {
            black_box(cap.authorize(black_box(&act), &counters, now));
        });
    }
    timed("dns_allow", || {
        black_box(cap.authorize_dns(black_box("kayak.com"), now));
    });
    timed("dns_block", || {
        black_box(cap.authorize_dns(black_box("evil.example"), now));
    });
    timed("credential_allow", || {
        black_box(cap.credential_allowed(black_box("united_card"), "united.com", now));
    });
    timed("credential_block", || {
        black_box(cap.credential_allowed(black_box("united_card"), "kayak.com", now));
    });
}

/// `AUTHZ_BENCH_LOOP=<case>:<n>`: `n` calls of one case, nothing else.
fn fixed_loop(spec: &str) {
    let (name, n) = spec.split_once(':').expect("AUTHZ_BENCH_LOOP=<case>:<n>");
    let n: u64 = n.parse().expect("iteration count");
    let cap = seed_token();
    let counters = Counters::default();
    let now = minted_at() + Duration::from_secs(60);
    let mut run: Box<dyn FnMut()> = match name {
        "dns_allow" => Box::new(|| {
            black_box(cap.authorize_dns(black_box("kayak.com"), now));
        }),
        "credential_allow" => Box::new(|| {
            black_box(cap.credential_allowed(black_box("united_card"), "united.com", now));
        }),
        _ => {
            let (_, act) = cases()
                .into_iter()
                .find(|(c, _)| *c == name)
                .expect("a case name printed by the percentiles");
            Box::new(move || {
                black_box(cap.authorize(black_box(&act), &counters, now));
            })
        }
    };
    let start = Instant::now();
    for _ in 0..n {
        run();
    }
    let per = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("{name}: {n} calls, {per:.2} µs wall each");
}

criterion_group!(benches, authorization);

fn main() {
    if let Ok(spec) = std::env::var("AUTHZ_BENCH_LOOP") {
        fixed_loop(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
