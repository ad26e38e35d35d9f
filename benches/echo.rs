//! Benchmark: what echo masking costs per byte of a response from a host
//! the session holds credentials for. Every such response passes through
//! `EchoFilter`, which looks for each secret in its raw spellings and in up
//! to two layers of escapes (JSON, HTML, percent, JavaScript `\xHH`) and
//! base64; a body dense with escapes makes it build more readings.
//!
//! Bodies (1 MiB each): `plain-json` (an API answer with no escapes),
//! `escaped-json` (a JSON string of HTML with `\"`, `\n`, `\u003c`,
//! `&amp;` and `%2F` every few bytes: the worst common case), `echoes` (the
//! plain body with the secret echoed raw, JSON-escaped, percent-encoded and
//! base64'd every 16 KiB). Each is filtered whole and in pieces of 16 KiB
//! and 1 KiB (as hyper hands them over), with one secret and with eight.
//! Peers in the same run: copying the body (the floor any filter pays) and
//! one Aho-Corasick pass over the raw secrets (what a mask that read no
//! escapes would cost). Figures are the thread's CPU time per MiB (not the
//! wall clock, which another process on the CPU inflates), min / median /
//! max over `ECHO_BENCH_ROUNDS` rounds (default 5).
//!
//!     cargo bench --bench echo
//!
//! Results: docs/credentials.md, "Echo masking", what it costs.

#[path = "support/cpu.rs"]
mod cpu;

use std::hint::black_box;
use std::time::Duration;

use aho_corasick::AhoCorasick;
use base64::Engine;
use cpu::cpu_now;
use enforce::credentials::Secret;
use enforce::{SecretStore, SessionCredentials};

/// The product binary runs on mimalloc (src/main.rs); so does this.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: usize = 1 << 20;
const SECRET: &str = "sk-live-4f9c2e7a1b8d6053e1f2a9c4";

fn fill(piece: impl Fn(usize) -> String) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY + 256);
    let mut i = 0;
    while body.len() < BODY {
        body.extend_from_slice(piece(i).as_bytes());
        i += 1;
    }
    body.truncate(BODY);
    body
}

fn plain_json() -> Vec<u8> {
    fill(|i| {
        format!(
            "{{\"id\":\"item_{i:08}\",\"name\":\"Widget number {i}\",\"price\":{}.99,\
             \"tags\":[\"blue\",\"large\"],\"in_stock\":true}},",
            i % 500
        )
    })
}

fn escaped_json() -> Vec<u8> {
    fill(|i| {
        format!(
            "\\u003cdiv class=\\\"row\\\"\\u003e\\n  \\u003ca href=\\\"/p?q={i}\\u0026amp;r=%2Fx\\\"\\u003e\
             Tom \\u0026amp; Jerry\\u003c/a\\u003e\\t\\\"{i}\\\"\\u003c/div\\u003e\\n"
        )
    })
}

fn echoes() -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let json = SECRET.replace('-', "\\u002d");
    let pct = SECRET.replace('-', "%2D");
    let spellings = [SECRET.to_owned(), json, pct, b64];
    let mut body = plain_json();
    for (n, at) in (0..BODY - 64).step_by(16 << 10).enumerate() {
        let s = spellings[n % spellings.len()].as_bytes();
        body[at..at + s.len()].copy_from_slice(s);
    }
    body
}

fn credentials(n: usize) -> SessionCredentials {
    let secrets = (0..n)
        .map(|i| {
            let value = if i == 0 {
                SECRET.to_owned()
            } else {
                format!("{SECRET}-{i:04}")
            };
            Secret::new(&format!("key_{i}"), &value).expect("secret")
        })
        .collect();
    SessionCredentials::new(&SecretStore::new(secrets).expect("store"))
}

/// CPU per MiB of running `f` over `body`, repeated until at least 0.2 s.
fn per_mib(body: &[u8], mut f: impl FnMut(&[u8]) -> usize) -> f64 {
    let start = cpu_now();
    let mut runs = 0u32;
    let mut out = 0usize;
    while runs < 3 || cpu_now() - start < Duration::from_millis(200) {
        out = out.wrapping_add(f(body));
        runs += 1;
    }
    black_box(out);
    let mib = body.len() as f64 / f64::from(1u32 << 20);
    (cpu_now() - start).as_secs_f64() * 1e3 / (f64::from(runs) * mib)
}

fn masked(creds: &SessionCredentials, body: &[u8], piece: usize) -> usize {
    let mut filter = creds.echo_filter().expect("secrets");
    let mut n = 0;
    for chunk in body.chunks(piece) {
        n += filter.push(chunk).len();
    }
    n + filter.finish().len()
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:>7.2} / {:>7.2} / {:>7.2}",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("ECHO_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let bodies = [
        ("plain-json", plain_json()),
        ("escaped-json", escaped_json()),
        ("echoes", echoes()),
    ];
    let one = credentials(1);
    let eight = credentials(8);
    // The figures mean something only if the mask finds what it should.
    let mut filter = one.echo_filter().expect("secrets");
    let mut out = filter.push(&bodies[2].1).to_vec();
    out.extend_from_slice(&filter.finish());
    let found = AhoCorasick::new([SECRET, &SECRET.replace('-', "%2D")]).expect("automaton");
    assert_eq!(
        found.find_iter(&out).count(),
        0,
        "a secret was left unmasked"
    );
    let raw = AhoCorasick::new([SECRET]).expect("automaton");
    println!("echo masking, ms of CPU per MiB (min / median / max over {rounds} rounds)");
    for (name, body) in &bodies {
        println!("{name}:");
        let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
        let mut run = |label: String, f: &mut dyn FnMut(&[u8]) -> usize| {
            let figure = per_mib(body, f);
            match rows.iter_mut().find(|(l, _)| *l == label) {
                Some((_, v)) => v.push(figure),
                None => rows.push((label, vec![figure])),
            }
        };
        for _ in 0..rounds {
            run("copy (peer)".into(), &mut |b| b.to_vec().len());
            run("aho-corasick raw (peer)".into(), &mut |b| {
                raw.find_iter(b).count()
            });
            for (secrets, creds) in [(1, &one), (8, &eight)] {
                for piece in [BODY, 16 << 10, 1 << 10] {
                    let pieces = if piece == BODY {
                        "whole".to_owned()
                    } else {
                        format!("{} KiB pieces", piece >> 10)
                    };
                    run(format!("mask, {secrets} secret(s), {pieces}"), &mut |b| {
                        masked(creds, b, piece)
                    });
                }
            }
        }
        for (label, v) in rows {
            println!("  {label:<36} {}", summary(v));
        }
    }
}
