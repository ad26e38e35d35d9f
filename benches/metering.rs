//! Benchmark: what metering adds to one streamed LLM call, in one run —
//! the same Chat stream (300 content chunks, then the usage chunk) passed
//! through as the unmetered proxy passes it, and read by the metering
//! reader as the metered proxy does (SSE parsed on the fly), with the usage
//! chunk kept and with it removed (the client did not ask for it); plus the
//! settlement's `usage` receipt: a call's receipts (its decision, waited
//! for, then its usage deferred as the proxy queues it) against the
//! decision alone, as process CPU (the receipt writer's thread counts), on
//! an in-memory sink so the disk is not measured. Target: under 20 µs CPU
//! per call for the read and the receipt together, the read reported as the
//! reading thread's CPU time beside the wall clock (which another process
//! on the CPU inflates). And the time to the first byte a client gets,
//! unmetered and with the read after or before the forward, over loopback
//! TCP (no added latency is the target).
//! Ledger rows per second: `cargo bench -p usage-ledger --bench ledger`.
//!
//! Results (docs/metering.md, "Reading usage as the stream passes";
//! session 10, idle machine): the read adds 5.96-5.98 µs CPU per call
//! (usage chunk kept), 7.98-8.00 (removed); the usage receipt 2.83-4.02 µs
//! (it rides with the next decision's write and signature); metering in all
//! 8.82-9.98 µs. Under `valgrind --tool=callgrind` the read is 143,820
//! instructions per call (kept), 145,314 (removed), against 257,257 in
//! session 8. First byte: the same with and without the read after the
//! forward (the proxy's order).
//!
//!     cargo bench --bench metering
//!     valgrind --tool=callgrind --toggle-collect='metering::read_kept*' \
//!         target/release/deps/metering-<hash> --read-only

#[path = "support/cpu.rs"]
mod cpu;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cpu::{cpu_now, process_cpu_now};
use ed25519_dalek::SigningKey;
use receipts::{
    DurableSink, Entry, LogOptions, ModelPrice, RateSnapshot, ReceiptLog, SessionStart,
    UsageRecord, UsageTokens,
};

/// The product binary runs on mimalloc (src/main.rs); so does this.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CALLS: u32 = 2_000;

/// One streamed Chat response, one event per chunk as providers send them.
fn stream() -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\
                 \"created\":1764700000,\"model\":\"gpt-4o-mini-2024-07-18\",\
                 \"system_fingerprint\":\"fp_1\",\"choices\":[{{\"index\":0,\
                 \"delta\":{{\"content\":\" word{i} \\\"quoted\\\"\"}},\"logprobs\":null,\
                 \"finish_reason\":null}}],\"usage\":null}}\n\n"
            )
            .into_bytes()
        })
        .collect();
    chunks.push(
        b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1764700000,\
          \"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":2007,\
          \"completion_tokens\":300,\"total_tokens\":2307,\"prompt_tokens_details\":\
          {\"cached_tokens\":1920},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n"
            .to_vec(),
    );
    chunks.push(b"data: [DONE]\n\n".to_vec());
    chunks
}

#[derive(Default)]
struct Memory(Vec<u8>);

impl DurableSink for Memory {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 1 << 20 {
            self.0.clear();
        }
        Ok(())
    }
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn per_call(d: Duration, calls: u32) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(calls)
}

/// Runs `f` `calls` times; returns (wall, CPU) per call in µs.
fn measure(calls: u32, mut f: impl FnMut()) -> (f64, f64) {
    let (wall, cpu) = (Instant::now(), cpu_now());
    for _ in 0..calls {
        f();
    }
    (
        per_call(wall.elapsed(), calls),
        per_call(cpu_now() - cpu, calls),
    )
}

/// One call's stream read as the proxy reads it when the client keeps the
/// usage chunk (kept out of line so `valgrind --tool=callgrind
/// --toggle-collect='metering::read_kept*'` counts exactly it).
#[inline(never)]
fn read_kept(chunks: &[Vec<u8>]) -> Option<UsageTokens> {
    enforce::metering::usage_of(
        "/v1/chat/completions",
        true,
        chunks.iter().map(|c| black_box(c.as_slice())),
    )
}

/// The same, as the proxy reads it when it removes the usage chunk the
/// client did not ask for (told where events end).
#[inline(never)]
fn read_stripping(chunks: &[Vec<u8>]) -> Option<UsageTokens> {
    let (tokens, usage_chunks) = enforce::metering::usage_and_usage_chunks_of(
        "/v1/chat/completions",
        chunks.iter().map(|c| black_box(c.as_slice())),
    );
    assert_eq!(usage_chunks, 1);
    tokens
}

fn main() {
    // `--read-only`: the reads alone, 200 calls, for callgrind.
    let read_only = std::env::args().any(|a| a == "--read-only");
    let calls = if read_only { 200 } else { CALLS };
    let chunks = stream();
    let bytes: usize = chunks.iter().map(Vec::len).sum();

    // Unmetered: the body passes; the proxy only counts its bytes.
    let unmetered = measure(calls, || {
        let mut n = 0usize;
        for c in &chunks {
            n += black_box(c).len();
        }
        black_box(n);
    });
    // Metered: every chunk also read for usage, the usage chunk kept.
    let mut tokens = None;
    let kept = measure(calls, || tokens = read_kept(&chunks));
    assert_eq!(
        tokens.map(|t| t.output),
        Some(300),
        "the bench stream's usage"
    );
    // Metered, the usage chunk found to be removed.
    tokens = None;
    let stripping = measure(calls, || tokens = read_stripping(&chunks));
    assert_eq!(tokens.map(|t| t.output), Some(300));

    println!(
        "streamed chat call ({} events, {bytes} bytes), {calls} calls; µs/call, wall and CPU (this thread):",
        chunks.len()
    );
    let row = |name: &str, (wall, cpu): (f64, f64)| {
        println!("  {name:<34} {wall:>8.2} wall {cpu:>8.2} CPU");
    };
    row("unmetered pass", unmetered);
    row("metered (SSE read), chunk kept", kept);
    row("metered, usage chunk removed", stripping);
    println!(
        "  CPU the read adds: {:.2} µs/call (usage chunk kept), {:.2} (removed)",
        kept.1 - unmetered.1,
        stripping.1 - unmetered.1,
    );
    if read_only {
        return;
    }

    // Settlement: what a call's receipts cost with and without metering.
    // Every call has its decision receipt (the request waits for it to be
    // durable); a metered call adds a usage receipt after its response.
    // Process CPU (every thread: the writer's share counts), an in-memory
    // sink so the disk is not measured.
    let record = usage_record();
    let receipt_rounds = [
        ("decision only (unmetered call)", Settle::None),
        ("decision + usage, deferred", Settle::Deferred),
        ("decision + usage, submit", Settle::Submit),
    ];
    // Rounds interleaved and medians taken: one call's receipts cost tens
    // of µs of thread hand-offs, whose drift would swamp a few µs.
    const ROUNDS_PER_WAY: usize = 7;
    let mut samples: [Vec<(f64, f64)>; 3] = Default::default();
    let mut last_stats: [Option<receipts::CommitStats>; 3] = Default::default();
    for round in 0..ROUNDS_PER_WAY * 3 {
        let way = (round + round / 3) % 3;
        let (wall, cpu, stats) = receipts_per_call(receipt_rounds[way].1, &record);
        samples[way].push((wall, cpu));
        last_stats[way] = Some(stats);
    }
    let mut settled = [0f64; 3];
    println!(
        "receipts per call, {CALLS} calls, median of {ROUNDS_PER_WAY} interleaved rounds; µs/call, wall and CPU (whole process):"
    );
    for (way, (name, _)) in receipt_rounds.iter().enumerate() {
        let median = |f: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = samples[way].iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (wall, cpu) = (median(|s| s.0), median(|s| s.1));
        settled[way] = cpu;
        let stats = last_stats[way].as_ref().expect("measured");
        println!(
            "  {name:<34} {wall:>8.2} wall {cpu:>8.2} CPU  ({} receipts, {} signatures, {} writes)",
            stats.receipts, stats.signed, stats.batches
        );
    }
    println!(
        "  CPU the usage receipt adds: {:.2} µs/call deferred (the proxy's way), {:.2} submitted",
        settled[1] - settled[0],
        settled[2] - settled[0],
    );
    println!(
        "  metering in all (read, usage chunk kept, + usage receipt deferred): {:.2} µs/call",
        kept.1 - unmetered.1 + settled[1] - settled[0]
    );

    let [plain, after, before] = first_byte(&chunks[0]);
    println!("first byte to the client over loopback TCP, median of {ROUNDS} rounds each:");
    println!(
        "  unmetered                       {:>8.2} µs",
        micros(plain)
    );
    println!(
        "  metered, read after the forward {:>8.2} µs (the proxy's order)",
        micros(after)
    );
    println!(
        "  metered, read before it         {:>8.2} µs (the order until session 9)",
        micros(before)
    );
}

const ROUNDS: usize = 2_000;

/// How a call's usage receipt is written.
#[derive(Clone, Copy)]
enum Settle {
    /// Not at all: an unmetered call.
    None,
    /// `submit_deferred`, as the proxy settles a call: covered by the next
    /// call's decision signature and written with it.
    Deferred,
    /// `submit`: it wakes the writer, which signs it alone unless the next
    /// decision is chained before the writer takes it.
    Submit,
}

fn usage_record() -> UsageRecord {
    UsageRecord {
        decision_seq: 1,
        provider: "api.openai.com".into(),
        api: "openai.chat".into(),
        model: "gpt-4o-mini".into(),
        response_id: Some("chatcmpl-bench".into()),
        tokens: UsageTokens {
            input: 87,
            cached_input: 1920,
            output: 300,
            ..UsageTokens::default()
        },
        rates: RateSnapshot {
            card_sha256: receipts::sha256_hex(b"rates"),
            price: ModelPrice {
                model: "gpt-4o-mini".into(),
                input: 150_000,
                cached_input: 75_000,
                output: 600_000,
                ..ModelPrice::default()
            },
        },
        cost_micro_usd: 206,
        reserved_micro_usd: 3_000,
        estimated: false,
    }
}

/// An llm call's decision as the gate records it.
fn decision_entry() -> Entry {
    Entry::Decision {
        decided_at: std::time::SystemTime::now(),
        record: receipts::DecisionRecord {
            action: serde_json::json!({
                "type": "llm", "method": "POST", "host": "api.openai.com",
                "path": "/v1/chat/completions", "model": "gpt-4o-mini",
                "stream": true, "max_tokens": 1024, "body_bytes": 8030,
            }),
            counters: serde_json::json!({"requests": 12, "llm_calls": 6, "llm_spent_micro_usd": 1236}),
            decision: serde_json::json!({
                "decision": "allow", "reason": "granted by llm api.openai.com",
                "grant": "llm api.openai.com", "revocation_ids": ["a1b2c3"],
            }),
            body_sha256: Some(receipts::sha256_hex(b"body")),
        },
    }
}

/// `CALLS` calls' receipts on a fresh log: each call's decision submitted
/// and waited for (as the request waits), then its usage as `settle` says.
/// Returns (wall, process CPU) per call and the log's commit stats.
fn receipts_per_call(settle: Settle, record: &UsageRecord) -> (f64, f64, receipts::CommitStats) {
    let log = ReceiptLog::with_sink(
        Memory::default(),
        SigningKey::from_bytes(&[0x42; 32]),
        SessionStart {
            session_id: "bench".into(),
            revocation_ids: vec!["a1b2c3".into()],
            sandbox: "netns".into(),
            capability_sha256: None,
            tenant: None,
            user: None,
        },
        LogOptions::default(),
    )
    .expect("log");
    let (wall, cpu) = (Instant::now(), process_cpu_now());
    for _ in 0..CALLS {
        log.append(decision_entry()).expect("decision");
        let usage = Entry::Usage(record.clone());
        match settle {
            Settle::None => {}
            Settle::Deferred => drop(log.submit_deferred(usage).expect("usage")),
            Settle::Submit => drop(log.submit(usage).expect("usage")),
        }
    }
    let (wall, cpu) = (wall.elapsed(), process_cpu_now() - cpu);
    let stats = log.commit_stats();
    log.finish().expect("finish");
    (per_call(wall, CALLS), per_call(cpu, CALLS), stats)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A connected loopback TCP pair (writer, reader), without Nagle's delay.
fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let writer =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (reader, _) = listener.accept().expect("accept");
    writer.set_nodelay(true).expect("nodelay");
    (writer, reader)
}

/// No added latency to the first streamed byte: the stream's first event
/// goes upstream → proxy → client over two loopback TCP connections, the
/// client on a thread of its own noting when its first byte arrives. The
/// proxy forwards the event as received (unmetered), or reads it for usage
/// as the metering filter does — after the forward (as the proxy does
/// now) or before it (as it did until session 9); a whole reader is made,
/// fed and finished each time, more than the filter's share. Rounds
/// rotate the three. Returns the median times from the upstream's write to
/// the client's first byte: [unmetered, read after, read before].
fn first_byte(first: &[u8]) -> [Duration; 3] {
    use std::io::{Read, Write};
    use std::sync::mpsc;
    let (mut upstream, mut proxy_in) = tcp_pair();
    let (mut proxy_out, mut client) = tcp_pair();
    let (arrived_tx, arrived) = mpsc::channel::<Instant>();
    let expected = first.to_vec();
    let client = std::thread::spawn(move || {
        let mut got = vec![0u8; expected.len()];
        for _ in 0..3 * ROUNDS {
            client.read_exact(&mut got[..1]).expect("client read");
            let at = Instant::now();
            client.read_exact(&mut got[1..]).expect("client read");
            assert_eq!(got, expected);
            arrived_tx.send(at).expect("send");
        }
    });
    let read = |buf: &[u8]| {
        black_box(enforce::metering::usage_of(
            "/v1/chat/completions",
            true,
            [buf],
        ));
    };
    let mut buf = vec![0u8; first.len()];
    let mut times: [Vec<Duration>; 3] = std::array::from_fn(|_| Vec::with_capacity(ROUNDS));
    for round in 0..3 * ROUNDS {
        let order = round % 3;
        let start = Instant::now();
        upstream.write_all(first).expect("upstream write");
        proxy_in.read_exact(&mut buf).expect("proxy read");
        if order == 2 {
            read(&buf);
        }
        proxy_out.write_all(&buf).expect("proxy write");
        if order == 1 {
            read(&buf);
        }
        let at = arrived.recv().expect("client");
        times[order].push(at.duration_since(start));
    }
    client.join().expect("client thread");
    times.map(|mut t| {
        t.sort_unstable();
        t[ROUNDS / 2]
    })
}
