//! Benchmark: receipt append throughput (one fdatasync per receipt vs group
//! commit, several appending threads) and chain verification throughput on
//! one core. Targets: >= 20,000 receipts/s appended with group commit,
//! >= 50,000 receipts/s verified.
//!
//!     cargo bench --bench receipts
//!
//! One plain run for profilers (callgrind, strace -c), without criterion:
//! `RECEIPTS_LOAD=16x20000` appends 20,000 receipts from 16 threads to a
//! log file under the target directory (`RECEIPTS_LOAD_SINK=memory`: no
//! disk) and prints receipts/s, receipts per write + fdatasync, and the
//! process's CPU time and context switches per receipt (getrusage).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use capabilities::{Action, ActionType, Counters, Decision, Verdict};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use receipts::{
    CanonicalDecision, CommitStats, DurableSink, Entry, LogOptions, ReceiptLog, SessionStart,
    UnverifiedChain,
};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

fn start() -> SessionStart {
    SessionStart {
        session_id: "bench".into(),
        revocation_ids: vec!["a1b2c3".into()],
        sandbox: "netns".into(),
        capability_sha256: None,
        tenant: None,
        user: None,
    }
}

/// A typical decision: a payment with its facts, counters and decision,
/// encoded from the typed values as the proxy's gate encodes one.
fn entry(i: u64) -> Entry {
    let action = Action {
        amount_cents: Some(48_700 + i),
        currency: Some("USD".into()),
        merchant: Some("united.com".into()),
        ..Action::request(
            ActionType::Payment,
            "POST",
            "united.com",
            "/api/booking/purchase",
        )
    };
    let counters = Counters {
        spent_cents: i,
        ..Counters::default()
    };
    let decision = Decision {
        decision: Verdict::Approval,
        reason: "amount above $400.00".into(),
        grant: Some("payment".into()),
        revocation_ids: vec!["a1b2c3".into()],
    };
    let digest = receipts::sha256_hex(&i.to_le_bytes());
    Entry::CanonicalDecision {
        decided_at: SystemTime::now(),
        record: CanonicalDecision::new(&action, &counters, &decision, Some(&digest))
            .expect("encode"),
    }
}

/// Appends `total` receipts from `threads` threads to a fresh file; returns
/// the time from the first append to the last acknowledgement, and what the
/// writer committed.
fn append_run(
    threads: u64,
    total: u64,
    options: LogOptions,
    to_disk: bool,
) -> (Duration, CommitStats) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let log = if to_disk {
        // The log file as sessions write it (preallocated, zeroed ahead).
        ReceiptLog::create_with(&dir.path().join("receipts.jsonl"), key(), start(), options)
            .expect("log")
    } else {
        ReceiptLog::with_sink(Memory::default(), key(), start(), options).expect("log")
    };
    let per_thread = total.div_ceil(threads);
    let barrier = Arc::new(std::sync::Barrier::new(threads as usize + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..per_thread {
                    log.append(entry(t * per_thread + i)).expect("append");
                }
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    for h in handles {
        h.join().expect("join");
    }
    let elapsed = t0.elapsed();
    let stats = log.commit_stats();
    log.finish().expect("finish");
    (elapsed, stats)
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    // memory_sink: the same pipeline with no disk under it (encode, sign,
    // chain, batch, wake), i.e. the ceiling that fsync latency then lowers.
    let cases: [(&str, u64, usize); 5] = [
        ("fsync_each", 1, 1),
        ("fsync_each", 16, 1),
        ("group_commit", 16, 4096),
        ("group_commit", 64, 4096),
        ("memory_sink", 16, 4096),
    ];
    for (name, threads, max_batch) in cases {
        let to_disk = name != "memory_sink";
        let total = if max_batch == 1 { 200 } else { 20_000 };
        group.throughput(Throughput::Elements(total));
        group.bench_with_input(
            BenchmarkId::new(name, format!("{threads}_threads")),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            append_run(
                                threads,
                                total,
                                LogOptions {
                                    max_batch,
                                    ..LogOptions::default()
                                },
                                to_disk,
                            )
                            .0
                        })
                        .sum()
                })
            },
        );
    }
    group.finish();
}

/// A sink that keeps lines in memory, to build chains for verification.
#[derive(Clone, Default)]
struct Memory(Arc<std::sync::Mutex<Vec<u8>>>);

impl DurableSink for Memory {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(())
    }
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn verify(c: &mut Criterion) {
    const N: u64 = 10_000;
    let sink = Memory::default();
    let log =
        ReceiptLog::with_sink(sink.clone(), key(), start(), LogOptions::default()).expect("log");
    for i in 0..N {
        log.append(entry(i)).expect("append");
    }
    log.finish().expect("finish");
    let bytes = sink.0.lock().expect("lock").clone();
    let chain = UnverifiedChain::from_bytes(bytes);
    let public = key().verifying_key();
    let mut group = c.benchmark_group("verify");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N + 2));
    group.bench_function("one_core_10k_chain", |b| {
        b.iter(|| chain.verify(&public).expect("valid"))
    });
    // The same, timed in CPU time of the verifying thread: on a machine
    // shared with other work, wall time mostly measures the other work.
    group.bench_function("one_core_10k_chain_cpu_time", |b| {
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                criterion::black_box(chain.verify(&public).expect("valid"));
            }
            thread_cpu_time() - t0
        })
    });
    group.finish();
}

/// CPU time this thread has run, from /proc/thread-self/schedstat (ns).
fn thread_cpu_time() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("schedstat run time");
    Duration::from_nanos(ns)
}

criterion_group!(benches, append, verify, components);

fn main() {
    match std::env::var("RECEIPTS_LOAD") {
        Ok(spec) => load(&spec),
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}

/// The profiling run: `THREADSxTOTAL` receipts, once, with commit stats.
fn load(spec: &str) {
    let (threads, total) = spec
        .split_once('x')
        .and_then(|(t, n)| Some((t.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
        .expect("RECEIPTS_LOAD=THREADSxTOTAL, e.g. 16x20000");
    let to_disk = std::env::var("RECEIPTS_LOAD_SINK").as_deref() != Ok("memory");
    let before = usage();
    let (elapsed, stats) = append_run(threads, total, LogOptions::default(), to_disk);
    let after = usage();
    let n = total.div_ceil(threads) * threads;
    let cpu =
        (after.user_time() + after.system_time()) - (before.user_time() + before.system_time());
    let cpu_us = nix::sys::time::TimeValLike::num_microseconds(&cpu) as f64;
    let switches = (after.voluntary_context_switches() + after.involuntary_context_switches())
        - (before.voluntary_context_switches() + before.involuntary_context_switches());
    println!(
        "{n} receipts from {threads} threads in {elapsed:?}: {:.0} receipts/s, \
         {} batches, {:.1} receipts per write + fdatasync, {} signatures, sync p50 {:?}, \
         queued->durable p50 {:?} p99 {:?}, CPU {:.1} µs and {:.2} context switches per receipt",
        n as f64 / elapsed.as_secs_f64(),
        stats.batches,
        stats.receipts as f64 / stats.batches.max(1) as f64,
        stats.signed,
        stats.sync_quantile(0.5),
        stats.queued_quantile(0.5),
        stats.queued_quantile(0.99),
        cpu_us / n as f64,
        switches as f64 / n as f64,
    );
}

/// This process's resource usage so far (every thread, ended ones included).
fn usage() -> nix::sys::resource::Usage {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("getrusage")
}

/// Where verification time goes (CPU time, 10k lines): line hashing, the
/// generic ed25519 batch verifier (for reference: the chain verifier uses a
/// one-signer batch that merges the key's terms), and line-at-a-time
/// verification with strict single signatures (`LineVerifier`, as recovery
/// uses it).
fn components(c: &mut Criterion) {
    const N: u64 = 10_000;
    let sink = Memory::default();
    let log =
        ReceiptLog::with_sink(sink.clone(), key(), start(), LogOptions::default()).expect("log");
    for i in 0..N {
        log.append(entry(i)).expect("append");
    }
    log.finish().expect("finish");
    let bytes = sink.0.lock().expect("lock").clone();
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut group = c.benchmark_group("verify_parts");
    group.sample_size(10);
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("sha256_lines", |b| {
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                for l in &lines {
                    criterion::black_box(receipts::line_hash(l));
                }
            }
            thread_cpu_time() - t0
        })
    });
    group.bench_function("ed25519_batch_verify", |b| {
        use ed25519_dalek::Signer;
        let k = key();
        let sigs: Vec<ed25519_dalek::Signature> = lines.iter().map(|l| k.sign(l)).collect();
        let keys = vec![k.verifying_key(); 64];
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                for (ls, ss) in lines.chunks(64).zip(sigs.chunks(64)) {
                    ed25519_dalek::verify_batch(ls, ss, &keys[..ls.len()]).expect("valid");
                }
            }
            thread_cpu_time() - t0
        })
    });
    group.bench_function("line_verifier_push", |b| {
        let public = key().verifying_key();
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                let mut v = receipts::LineVerifier::new(public);
                for l in &lines {
                    criterion::black_box(v.push(l).expect("valid"));
                }
            }
            thread_cpu_time() - t0
        })
    });
    group.finish();
}
