//! `GET /metrics`'s proxy request latency histogram, from the outside: an
//! API session (real netns sandbox, root) makes requests through its proxy
//! to the test upstream of `test-support`; the daemon asks the session's
//! control socket and exposes the histogram by tenant and backend.

use std::path::Path;
use std::time::{Duration, SystemTime};

use ed25519_dalek::pkcs8::DecodePrivateKey;
use serde_json::json;

mod support;

use support::serve::{call, cli, start_with, Daemon};

fn mint(home: &Path, tenant: &str, policy: &str) -> String {
    let path = home.join("tenants").join(tenant).join("keys/root.key");
    let key =
        ed25519_dalek::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(path).expect("key"))
            .expect("pem");
    let policy = capabilities::Policy::from_toml_str(policy).expect("policy");
    capabilities::mint(&policy, &key.to_bytes(), SystemTime::now()).expect("mint")
}

/// The histogram's samples for tenant `a` on netns: (suffix and le, value).
fn samples(d: &Daemon, admin: &str) -> Vec<(String, f64)> {
    let r = call(d, "GET", "/metrics", Some(admin), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r
        .text
        .contains("# TYPE openclaw_proxy_request_duration_seconds histogram"));
    let prefix = "openclaw_proxy_request_duration_seconds_";
    r.text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter(|l| l.contains("backend=\"netns\",tenant=\"a\""))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("sample");
            (name.to_owned(), value.parse().expect("number"))
        })
        .collect()
}

fn value(samples: &[(String, f64)], starts: &str) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n.starts_with(starts))
        .unwrap_or_else(|| panic!("no {starts} in {samples:?}"))
        .1
}

/// Needs root: a netns session.
#[test]
fn a_sessions_proxied_requests_are_in_the_latency_histogram_and_stay_after_it_ends() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = test_support::TestCa::new("serve latency test upstream");
    let upstream = rt.block_on(test_support::Upstream::https(
        &ca,
        &["example.com"],
        &[b"http/1.1"],
    ));
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let admin = cli(h, &["tenants", "admin-token"]);
    let ca_pem = ca.write_pem(logs.path());
    let resolve = format!("example.com={}", upstream.addr);
    let d = start_with(
        h,
        &logs.path().join("serve.log"),
        &[
            "--resolve",
            &resolve,
            "--upstream-ca",
            ca_pem.to_str().expect("utf-8"),
        ],
    );
    // Before any session: the family, no samples.
    assert!(samples(&d, &admin).is_empty());

    let policy = "ttl = \"30m\"\n[web]\nallow = [\"example.com\"]\nmethods = [\"get\"]\n";
    let three = "for i in 1 2 3; do curl -s -o /dev/null https://example.com/x$i; done; sleep 60";
    let body = json!({"capabilities": mint(h, "a", policy), "command": ["sh", "-c", three]});
    let r = call(
        &d,
        "POST",
        "/v1/sessions",
        Some(&a),
        Some(&body.to_string()),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();

    // Scraped while it runs, until its three exchanges are in.
    let mut seen = Vec::new();
    for _ in 0..600 {
        seen = samples(&d, &admin);
        if seen
            .iter()
            .any(|(n, v)| n.starts_with("count") && *v == 3.0)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(value(&seen, "count"), 3.0, "{seen:?}");
    assert_eq!(
        value(&seen, "bucket{backend=\"netns\",tenant=\"a\",le=\"+Inf\"}"),
        3.0
    );
    assert!(value(&seen, "sum") > 0.0, "{seen:?}");
    // Cumulative buckets: never decreasing, the last one everything.
    let buckets: Vec<f64> = seen
        .iter()
        .filter(|(n, _)| n.starts_with("bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(buckets.len(), 14, "13 bounds and +Inf: {seen:?}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    // Stopped: what it reported stays in the histogram.
    let r = call(
        &d,
        "POST",
        &format!("/v1/sessions/{id}/stop"),
        Some(&a),
        None,
    );
    assert_eq!(r.status, 202, "{:?}", r.body);
    let info = h.join("tenants/a/sessions").join(&id).join("session.json");
    for _ in 0..600 {
        let text = std::fs::read_to_string(&info).unwrap_or_default();
        if !text.is_empty() && !text.contains("\"status\":\"running\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = samples(&d, &admin);
    assert_eq!(value(&after, "count"), 3.0, "{after:?}");
    drop(upstream);
}
