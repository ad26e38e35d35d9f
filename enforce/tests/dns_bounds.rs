//! Refused DNS names are bounded: the first few distinct names get a
//! receipt each, the rest signed aggregate receipts (count, digest of the
//! names), the chain verifies and re-derives, memory stays bounded, and a
//! flood of refusals makes a bounded number of log lines.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enforce::{DnsRefusalLimit, EventKind};
use proxy::{DnsVerdict, Gate};
use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_past_the_limit_are_receipted_in_aggregate() {
    let mut s = Session::start(Options {
        dns_refusals: DnsRefusalLimit {
            receipted: 8,
            batch: 100,
            interval: Duration::from_secs(3600),
        },
        ..Options::default()
    })
    .await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);

    let started = std::time::Instant::now();
    let names: Vec<String> = (0..1000).map(|i| format!("n{i}.exfil.example")).collect();
    for name in &names {
        // A and AAAA: the second ask of a name is not counted again.
        assert_eq!(s.gate.dns(name), DnsVerdict::NxDomain);
        assert_eq!(s.gate.dns(name), DnsVerdict::NxDomain);
    }
    // A granted name still resolves.
    assert_eq!(s.gate.dns("united.com"), DnsVerdict::ResolveToProxy);
    // 8 alone, 992 beyond: 9 full batches written, 92 pending.
    assert_eq!(s.gate.dns_refusals(), (8, 900, 92));
    s.gate.flush_dns_refusals();
    assert_eq!(s.gate.dns_refusals(), (8, 992, 0));
    drop(guard);

    let chain = s.finish_and_verify();
    let dns: Vec<_> = decisions(&chain)
        .into_iter()
        .filter(|d| d.2 == "dns")
        .collect();
    assert_eq!(
        dns.len(),
        8 + 10,
        "one receipt per early name, ten aggregates"
    );
    for (i, d) in dns.iter().take(8).enumerate() {
        assert_eq!(d.1, "block");
        assert_eq!(d.4["host"], names[i].as_str());
    }
    let aggregates: Vec<serde_json::Value> = chain
        .receipts
        .iter()
        .filter_map(|r| match &r.receipt.body {
            receipts::Body::Decision(d) if d.decision.get("aggregate").is_some() => {
                assert_eq!(d.decision["decision"], "block");
                assert_eq!(d.decision["stage"], "dns");
                assert_eq!(d.action["host"], "*");
                Some(d.decision["aggregate"].clone())
            }
            _ => None,
        })
        .collect();
    let counts: Vec<u64> = aggregates
        .iter()
        .map(|a| a["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [vec![100; 9], vec![92]].concat());
    // The digest is of the names, one per line, in the order refused.
    let mut last = names[908..].join("\n");
    last.push('\n');
    assert_eq!(
        aggregates[9]["names_sha256"],
        receipts::sha256_hex(last.as_bytes())
    );
    // Every decision still follows from the token (DNS stage: only blocks).
    s.rederive(&chain);
    let events = s.drain_events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::Blocked && e.host == "*")
            .count(),
        10
    );

    // 2000 refusals made at most a burst of log lines per window.
    let windows =
        (started.elapsed().as_secs_f64() / ratelog::INTERVAL.as_secs_f64()).ceil() as usize + 1;
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let refused_lines = text
        .lines()
        .filter(|l| l.contains("DNS name refused"))
        .count();
    assert!(refused_lines >= 1, "{text}");
    assert!(
        refused_lines <= windows * ratelog::BURST as usize,
        "{refused_lines} log lines for 2000 refusals"
    );
}
