//! Benchmark: what metering adds to one streamed LLM call, in one run —
//! the same Chat stream (300 content chunks, then the usage chunk) passed
//! through as the unmetered proxy passes it, and read by the metering
//! reader as the metered proxy does (SSE parsed on the fly); plus the
//! settlement's `usage` receipt (encoded, signed, chained; an in-memory
//! sink, so the disk is not measured). Target: under 20 µs CPU per call.
//! Ledger rows per second: `cargo bench -p usage-ledger --bench ledger`.
//!
//! Results (docs/catalog.md, "Metering"; session 8, load 3.6): the read
//! 29.5-30.1 µs per call (35.7-37.6 before the raw-byte event skip); under
//! `valgrind --tool=callgrind` 257,300 instructions per call (294,700
//! before): above the target. The usage receipt is ~226,000 instructions
//! more, counted apart (it is the settlement, not the reading).
//!
//!     cargo bench --bench metering

use std::hint::black_box;
use std::time::{Duration, Instant};

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

fn per_call(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(CALLS)
}

fn main() {
    let chunks = stream();
    let bytes: usize = chunks.iter().map(Vec::len).sum();

    // Unmetered: the body passes; the proxy only counts its bytes.
    let start = Instant::now();
    for _ in 0..CALLS {
        let mut n = 0usize;
        for c in &chunks {
            n += black_box(c).len();
        }
        black_box(n);
    }
    let unmetered = start.elapsed();

    // Metered: every chunk also read for usage.
    let start = Instant::now();
    let mut tokens = None;
    for _ in 0..CALLS {
        tokens = enforce::metering::usage_of(
            "/v1/chat/completions",
            true,
            chunks.iter().map(|c| black_box(c.as_slice())),
        );
    }
    let metered = start.elapsed();
    assert_eq!(
        tokens.map(|t| t.output),
        Some(300),
        "the bench stream's usage"
    );

    // Settlement: one usage receipt per call.
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
    let record = UsageRecord {
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
    };
    let start = Instant::now();
    let mut last = None;
    for _ in 0..CALLS {
        last = Some(log.submit(Entry::Usage(record.clone())).expect("submit"));
    }
    let receipting = start.elapsed();
    if let Some(p) = last {
        p.wait().expect("durable");
    }
    log.finish().expect("finish");

    let read = per_call(metered) - per_call(unmetered);
    println!(
        "streamed chat call ({} events, {bytes} bytes), {CALLS} calls:",
        chunks.len()
    );
    println!(
        "  unmetered pass        {:>8.2} µs/call",
        per_call(unmetered)
    );
    println!("  metered (SSE read)    {:>8.2} µs/call", per_call(metered));
    println!(
        "  usage receipt         {:>8.2} µs/call",
        per_call(receipting)
    );
    println!(
        "  metering adds         {:>8.2} µs/call CPU ({:.1} ns/byte read)",
        read + per_call(receipting),
        read * 1000.0 / bytes as f64
    );
}
