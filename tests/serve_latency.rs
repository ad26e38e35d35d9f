//! `GET /metrics`'s proxy request latency histogram, from the outside: an
//! API session (real netns sandbox, root) makes requests through its proxy
//! to the test upstream of `test-support`; the daemon asks the session's
//! control socket and exposes the histogram by tenant and backend.

use std::time::Duration;

use serde_json::json;

mod support;

use support::serve::{call, cli, mint_for_tenant, start_with_upstream, Daemon};

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
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let admin = cli(h, &["tenants", "admin-token"]);
    let served = start_with_upstream(h, logs.path(), "example.com");
    let d = &served.daemon;
    // Before any session: the family, no samples.
    assert!(samples(d, &admin).is_empty());

    let policy = "ttl = \"30m\"\n[web]\nallow = [\"example.com\"]\nmethods = [\"get\"]\n";
    let three = "for i in 1 2 3; do curl -s -o /dev/null https://example.com/x$i; done; sleep 60";
    let body =
        json!({"capabilities": mint_for_tenant(h, "a", policy), "command": ["sh", "-c", three]});
    let r = call(d, "POST", "/v1/sessions", Some(&a), Some(&body.to_string()));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();

    // Scraped while it runs, until its three exchanges are in.
    let mut seen = Vec::new();
    for _ in 0..600 {
        seen = samples(d, &admin);
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
        d,
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
    let after = samples(d, &admin);
    assert_eq!(value(&after, "count"), 3.0, "{after:?}");
}
