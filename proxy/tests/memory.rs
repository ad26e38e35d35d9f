//! A 50 MiB download streams through the proxy without the proxy holding
//! it: the test process's peak resident memory (proxy and upstream live in
//! it; curl is a separate process) grows by far less than the body.
//! Alone in its own test binary so no other test disturbs the peak.
#![allow(clippy::unwrap_used)]

mod common;

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_download_streams_with_flat_memory() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let env = common::Env::start(&[b"h2", b"http/1.1"]).await;
    // Warm up (leaf minted, connections and buffers allocated once).
    let out = env.curl("/bytes/1048576", &["-o", "/dev/null"]).await;
    assert!(out.status.success());
    for proto in ["--http1.1", "--http2"] {
        let before = vm_hwm_kib();
        let out = env
            .curl(
                &format!("/bytes/{SIZE}"),
                &[proto, "-o", "/dev/null", "-w", "%{size_download}"],
            )
            .await;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(common::stdout(&out), SIZE.to_string());
        let grown = vm_hwm_kib().saturating_sub(before);
        eprintln!(
            "{proto}: peak RSS grew {grown} KiB for a {} KiB body",
            SIZE / 1024
        );
        assert!(grown < 16 * 1024, "{proto}: peak RSS grew {grown} KiB");
    }
    let ex = env.gate.exchanges.lock().unwrap().clone();
    assert_eq!(
        ex.iter().filter(|e| e.bytes_down == SIZE).count(),
        2,
        "{ex:?}"
    );
    env.proxy.shutdown().await;
}
