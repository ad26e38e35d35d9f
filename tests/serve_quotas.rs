//! Tenant quotas through the real daemon (`docs/control-plane.md`,
//! "Quotas"): set by the admin over the API and the CLI (audited as
//! `quota.set`), the requests-per-minute window answered 429 with
//! `Retry-After`, a create refused when the tenant's LLM usage of the UTC day
//! (its ledger) is at its quota, and concurrent creates at the sessions quota
//! of which only as many start as the quota leaves room for (real netns
//! sessions: needs root). And `GET /metrics`: its text parses line by line
//! and its figures move when a session runs, the ledger grows and a quota
//! refuses.

use std::path::Path;
use std::time::SystemTime;

use receipts::{
    cost_micro_usd, DecisionRecord, Entry, ModelPrice, RateSnapshot, ReceiptLog, SessionStart,
    UsageRecord, UsageTokens,
};
use serde_json::{json, Value};

mod support;

use support::serve::{
    call, cli, curl, mint_for, reply, start, tenant_key, wait_ended, Daemon, Reply,
};

fn put_quotas(d: &Daemon, admin: &str, tenant: &str, body: &Value) -> Reply {
    call(
        d,
        "PUT",
        &format!("/v1/tenants/{tenant}/quotas"),
        Some(admin),
        Some(&body.to_string()),
    )
}

fn audit_lines(home: &Path, tenant: &str) -> Vec<Value> {
    cli(home, &["audit", "--tenant", tenant])
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit json"))
        .collect()
}

fn retry_after(r: &Reply) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {}", r.head))
        .parse()
        .expect("seconds")
}

#[test]
fn quotas_are_set_by_the_admin_over_the_api_and_the_cli_and_audited() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    let a = cli(h, &["tenants", "create", "a"]);
    cli(h, &["tenants", "create", "b"]);
    let d = start(h, &logs.path().join("serve.log"));

    let r = call(&d, "GET", "/v1/tenants/a/quotas", Some(&admin), None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"name": "a", "sessions": null, "requests_per_minute": null,
               "llm_tokens_per_day": null, "usd_per_day": null})
    );
    // A tenant does not see the route; no token is 401.
    assert_eq!(
        call(&d, "GET", "/v1/tenants/a/quotas", Some(&a), None).status,
        404
    );
    assert_eq!(
        call(&d, "GET", "/v1/tenants/a/quotas", None, None).status,
        401
    );
    let r = put_quotas(&d, &a, "a", &json!({"sessions": 100}));
    assert_eq!(r.status, 404, "a tenant cannot set its own quotas");

    let r = put_quotas(&d, &admin, "a", &json!({"sessions": 2, "usd_per_day": 1.5}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["sessions"], 2);
    assert_eq!(r.body["usd_per_day"], 1.5);
    assert_eq!(r.body["requests_per_minute"], Value::Null);
    // The CLI sees it, changes one quota and keeps the others.
    let shown: Value =
        serde_json::from_str(&cli(h, &["tenants", "quota", "a", "--json"])).expect("json");
    assert_eq!(
        shown,
        json!({"sessions": 2, "requests_per_minute": null, "llm_tokens_per_day": null, "usd_per_day": 1.5})
    );
    let text = cli(
        h,
        &["tenants", "quota", "a", "--llm-tokens-per-day", "5000"],
    );
    assert!(text.contains("5000") && text.contains("1.500000"), "{text}");
    let r = call(&d, "GET", "/v1/tenants/a/quotas", Some(&admin), None);
    assert_eq!(
        (
            &r.body["sessions"],
            &r.body["llm_tokens_per_day"],
            &r.body["usd_per_day"]
        ),
        (&json!(2), &json!(5000), &json!(1.5))
    );
    cli(h, &["tenants", "quota", "a", "--sessions", "none"]);
    let r = call(&d, "GET", "/v1/tenants/a/quotas", Some(&admin), None);
    assert_eq!(r.body["sessions"], Value::Null);
    assert_eq!(r.body["llm_tokens_per_day"], 5000);

    // Bad input names its field; an unknown tenant is 404; not JSON is 415.
    for (body, field) in [
        (json!({"usd_per_day": -1}), "usd_per_day"),
        (json!({"usd_per_day": 1e12}), "usd_per_day"),
        (json!({"sessions": -1}), "body"),
        (json!({"sessions": "two"}), "body"),
        (json!({"cpu": 1}), "body"),
    ] {
        let r = put_quotas(&d, &admin, "a", &body);
        assert_eq!((r.status, r.field()), (400, field), "{body}: {:?}", r.body);
    }
    assert_eq!(put_quotas(&d, &admin, "zz", &json!({})).status, 404);
    let r = put_quotas(&d, &admin, "A..", &json!({}));
    assert_eq!((r.status, r.field()), (400, "name"));
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "-X", "PUT", "--data-binary", "{}", "-H"])
        .arg(format!("Authorization: Bearer {admin}"))
        .arg(format!("http://{}/v1/tenants/a/quotas", d.addr))
        .output()
        .expect("curl");
    assert_eq!(reply(out, "PUT without JSON").status, 415);
    assert_eq!(
        call(&d, "POST", "/v1/tenants/a/quotas", Some(&admin), Some("{}")).status,
        405
    );

    // Every change is one line: the API's, the CLI's, the refused one.
    let lines: Vec<(String, String, String)> = audit_lines(h, "a")
        .into_iter()
        .chain(audit_lines(h, "zz"))
        .filter(|l| l["action"] == "quota.set")
        .map(|l| {
            (
                l["via"].as_str().expect("via").to_owned(),
                l["outcome"].as_str().expect("outcome").to_owned(),
                l["detail"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expect = |via: &str, outcome: &str, detail: &str| {
        (via.to_owned(), outcome.to_owned(), detail.to_owned())
    };
    assert_eq!(
        lines,
        [
            expect(
                "api",
                "ok",
                "sessions=2 requests_per_minute=- llm_tokens_per_day=- micro_usd_per_day=1500000"
            ),
            expect(
                "cli",
                "ok",
                "sessions=2 requests_per_minute=- llm_tokens_per_day=5000 micro_usd_per_day=1500000"
            ),
            expect(
                "cli",
                "ok",
                "sessions=- requests_per_minute=- llm_tokens_per_day=5000 micro_usd_per_day=1500000"
            ),
            expect("api", "refused", "no such tenant"),
        ]
    );
}

#[test]
fn past_the_requests_per_minute_quota_a_tenant_gets_429_with_retry_after() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    let a = cli(h, &["tenants", "create", "a"]);
    let b = cli(h, &["tenants", "create", "b"]);
    let d = start(h, &logs.path().join("serve.log"));
    let r = put_quotas(&d, &admin, "b", &json!({"requests_per_minute": 3}));
    assert_eq!(r.status, 200);
    for i in 0..3 {
        let r = call(&d, "GET", "/v1/sessions", Some(&b), None);
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
    }
    let r = call(&d, "GET", "/v1/sessions", Some(&b), None);
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(
        (r.code(), r.field()),
        ("quota_exceeded", "requests_per_minute")
    );
    let wait = retry_after(&r);
    assert!((1..=60).contains(&wait), "{wait}");
    // Any /v1 route counts, and refused requests do not make room.
    assert_eq!(call(&d, "GET", "/v1/usage", Some(&b), None).status, 429);
    // Other tenants and the admin are not held by b's quota.
    for _ in 0..5 {
        assert_eq!(call(&d, "GET", "/v1/sessions", Some(&a), None).status, 200);
        assert_eq!(
            call(&d, "GET", "/v1/tenants", Some(&admin), None).status,
            200
        );
    }
    // The admin lifting the quota applies at b's next request.
    put_quotas(&d, &admin, "b", &json!({}));
    assert_eq!(call(&d, "GET", "/v1/sessions", Some(&b), None).status, 200);
}

/// A finished session of `tenant` in its sessions directory whose chain
/// (signed with the tenant's receipt key) holds one LLM call of
/// 1000 + 500 tokens costing `cost` micro-USD.
fn write_llm_session(home: &Path, tenant: &str, id: &str, cost: u64) {
    let dir = home.join("tenants").join(tenant).join("sessions").join(id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let log = ReceiptLog::create(
        &dir.join("receipts.jsonl"),
        tenant_key(home, tenant, "receipt.key"),
        SessionStart {
            session_id: id.into(),
            revocation_ids: vec!["r0".into()],
            sandbox: "netns".into(),
            capability_sha256: None,
            tenant: Some(tenant.into()),
            user: None,
        },
    )
    .expect("chain");
    let d = log
        .append(Entry::Decision {
            decided_at: SystemTime::now(),
            record: DecisionRecord {
                action: json!({"type": "llm", "method": "POST", "host": "api.openai.com",
                    "path": "/v1/chat/completions"}),
                counters: json!({"spent_cents": 0, "emails_sent": 0, "llm_spent_micro_usd": 0}),
                decision: json!({"decision": "allow", "reason": "llm", "grant": "llm",
                    "revocation_ids": ["r0"]}),
                body_sha256: None,
            },
        })
        .expect("decision");
    let tokens = UsageTokens {
        input: 1000,
        output: 500,
        ..UsageTokens::default()
    };
    // Priced per request only, so the call costs exactly `cost`.
    let price = ModelPrice {
        model: "gpt-4o-mini".into(),
        input: 0,
        cached_input: 0,
        cache_write_5m: 0,
        cache_write_1h: 0,
        output: 0,
        per_request: cost,
    };
    assert_eq!(cost_micro_usd(&tokens, &price), cost);
    log.append(Entry::Usage(UsageRecord {
        decision_seq: d.seq,
        provider: "api.openai.com".into(),
        api: "openai.chat".into(),
        model: "gpt-4o-mini".into(),
        response_id: Some(format!("chatcmpl-{id}")),
        tokens,
        rates: RateSnapshot {
            card_sha256: receipts::sha256_hex(b"card"),
            price,
        },
        cost_micro_usd: cost,
        reserved_micro_usd: cost,
        estimated: false,
    }))
    .expect("usage");
    log.finish().expect("end");
}

/// The home's ledger rebuilt from every tenant's chains (each checked
/// against its tenant's receipt key), where API sessions' rows go.
fn rebuild_ledger(home: &Path) {
    cli(home, &["usage", "rebuild"]);
}

#[test]
fn a_create_is_refused_once_the_days_llm_tokens_or_usd_reach_the_quota() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    let a = cli(h, &["tenants", "create", "a"]);
    cli(h, &["tenants", "create", "b"]);
    // Today a has spent 1500 tokens and 200 micro-USD; b as much.
    write_llm_session(h, "a", "20261203-120000-aaaaaa", 200);
    write_llm_session(h, "b", "20261203-120000-bbbbbb", 200);
    rebuild_ledger(h);
    let d = start(h, &logs.path().join("serve.log"));
    let create = |token: &str| {
        let body = json!({"capabilities": mint_for(h, "a"), "command": ["true"]});
        call(
            &d,
            "POST",
            "/v1/sessions",
            Some(token),
            Some(&body.to_string()),
        )
    };
    for (quota, field) in [
        (json!({"usd_per_day": 0.0002}), "usd_per_day"),
        (json!({"usd_per_day": 0.0001}), "usd_per_day"),
        (json!({"llm_tokens_per_day": 1500}), "llm_tokens_per_day"),
        (
            json!({"llm_tokens_per_day": 10, "usd_per_day": 1}),
            "llm_tokens_per_day",
        ),
    ] {
        put_quotas(&d, &admin, "a", &quota);
        let r = create(&a);
        assert_eq!(r.status, 429, "{quota}: {:?}", r.body);
        assert_eq!((r.code(), r.field()), ("quota_exceeded", field), "{quota}");
        let wait = retry_after(&r);
        assert!((1..=86_400).contains(&wait), "until UTC midnight: {wait}");
    }
    // Below both quotas (b's spend is b's): the session starts.
    put_quotas(
        &d,
        &admin,
        "a",
        &json!({"llm_tokens_per_day": 1501, "usd_per_day": 0.000201}),
    );
    let r = create(&a);
    assert_eq!(r.status, 201, "{:?}", r.body);
    let refused = audit_lines(h, "a")
        .into_iter()
        .filter(|l| l["action"] == "session.create" && l["outcome"] == "refused")
        .map(|l| l["detail"].as_str().expect("detail").to_owned())
        .collect::<Vec<_>>();
    assert_eq!(
        refused,
        [
            "quota exceeded: usd_per_day",
            "quota exceeded: usd_per_day",
            "quota exceeded: llm_tokens_per_day",
            "quota exceeded: llm_tokens_per_day"
        ]
    );
}

fn stop_all(d: &Daemon, token: &str, ids: &[String], home: &Path, tenant: &str) {
    for id in ids {
        let r = call(
            d,
            "POST",
            &format!("/v1/sessions/{id}/stop"),
            Some(token),
            None,
        );
        assert!(matches!(r.status, 202 | 409), "{:?}", r.body);
    }
    wait_all_ended(ids, home, tenant);
}

/// Waits until each session's session.json says it is no longer running.
fn wait_all_ended(ids: &[String], home: &Path, tenant: &str) {
    for id in ids {
        wait_ended(home, tenant, id);
    }
}

/// Needs root (netns sessions). Two creates sent at once when one more
/// session fits: exactly one starts, the other is 429 `sessions`; a
/// session ending makes room again.
#[test]
fn concurrent_creates_at_the_sessions_quota_never_both_start() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    let a = cli(h, &["tenants", "create", "a"]);
    let d = start(h, &logs.path().join("serve.log"));
    put_quotas(&d, &admin, "a", &json!({"sessions": 2}));
    let body = json!({"capabilities": mint_for(h, "a"), "command": ["sleep", "60"]}).to_string();
    let mut ids = Vec::new();
    let first = call(&d, "POST", "/v1/sessions", Some(&a), Some(&body));
    assert_eq!(first.status, 201, "{:?}", first.body);
    ids.push(first.body["id"].as_str().expect("id").to_owned());
    for round in 0..3 {
        // Two curl processes started before either is answered.
        let racers: Vec<_> = (0..2)
            .map(|_| {
                curl(&d.addr, "POST", "/v1/sessions", Some(&a), Some(&body))
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("curl")
            })
            .collect();
        let replies: Vec<Reply> = racers
            .into_iter()
            .map(|c| reply(c.wait_with_output().expect("curl"), "racing create"))
            .collect();
        let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        statuses.sort();
        assert_eq!(statuses, [201, 429], "round {round}");
        for r in &replies {
            if r.status == 201 {
                ids.push(r.body["id"].as_str().expect("id").to_owned());
            } else {
                assert_eq!((r.code(), r.field()), ("quota_exceeded", "sessions"));
                assert_eq!(retry_after(r), 5);
            }
        }
        let running = call(&d, "GET", "/v1/sessions", Some(&a), None).body["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .filter(|s| s["live"] == true)
            .count();
        assert_eq!(running, 2, "round {round}");
        // Make room for the next round: the newest one stops.
        let newest = ids.pop().expect("one started");
        stop_all(&d, &a, std::slice::from_ref(&newest), h, "a");
    }
    stop_all(&d, &a, &ids, h, "a");
}

/// Checks the Prometheus text format line by line (`# HELP`/`# TYPE`
/// before a family's samples, names, quoted and escaped label values,
/// numeric values); the samples as `name{labels}` → value.
fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    assert!(text.ends_with('\n'), "the text ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("help text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("type");
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(typed.insert(name.to_owned()), "one TYPE per family: {line}");
        } else {
            let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let name = series.split('{').next().expect("name");
            assert!(valid_name(name), "{line}");
            assert!(typed.contains(name), "TYPE before samples: {line}");
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("labels in braces: {line}"));
                // name="value" pairs, comma-separated; values escape \ " and \n.
                let mut rest = inner;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").expect("key=\"value\"");
                    assert!(valid_name(key), "{line}");
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars
                            .next()
                            .unwrap_or_else(|| panic!("unclosed value: {line}"))
                        {
                            (_, '\\') => {
                                let (_, c) = chars.next().expect("escaped char");
                                assert!(matches!(c, '\\' | '"' | 'n'), "{line}");
                            }
                            (i, '"') => break i,
                            _ => {}
                        }
                    };
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
            }
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "one sample per series: {line}"
            );
        }
    }
    samples
}

/// Needs root (a netns session).
#[test]
fn metrics_parse_and_move_when_a_session_runs_the_ledger_grows_and_a_quota_refuses() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    let a = cli(h, &["tenants", "create", "a"]);
    let b = cli(h, &["tenants", "create", "b"]);
    let d = start(h, &logs.path().join("serve.log"));
    assert_eq!(call(&d, "GET", "/metrics", None, None).status, 401);
    assert_eq!(call(&d, "GET", "/metrics", Some(&a), None).status, 404);
    let r = call(&d, "GET", "/metrics", Some(&admin), None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let before = parse_metrics(&r.text);
    assert!(
        !before.keys().any(|k| k.starts_with("openclaw_sessions{")),
        "{before:?}"
    );
    assert_eq!(before["openclaw_llm_tokens_today{tenant=\"b\"}"], 0.0);

    // A session of a whose one request is blocked (POST is not granted).
    let body = json!({"capabilities": mint_for(h, "a"),
        "command": ["sh", "-c", "curl -s -o /dev/null -X POST https://example.com/x; true"]});
    let r = call(
        &d,
        "POST",
        "/v1/sessions",
        Some(&a),
        Some(&body.to_string()),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    // The command ends by itself once its request was decided; stopping it
    // at once could end it before the request was sent.
    wait_all_ended(&[id], h, "a");
    // b spent today, and hit its request quota once.
    write_llm_session(h, "b", "20261203-120000-bbbbbb", 200);
    rebuild_ledger(h);
    put_quotas(&d, &admin, "b", &json!({"requests_per_minute": 1}));
    assert_eq!(call(&d, "GET", "/v1/sessions", Some(&b), None).status, 200);
    assert_eq!(call(&d, "GET", "/v1/sessions", Some(&b), None).status, 429);

    let after = parse_metrics(&call(&d, "GET", "/metrics", Some(&admin), None).text);
    let get = |k: &str| {
        *after
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in {after:?}"))
    };
    let state = after
        .keys()
        .find(|k| k.starts_with("openclaw_sessions{tenant=\"a\""))
        .expect("a's session");
    assert!(
        state.contains("backend=\"netns\"") && get(state) == 1.0,
        "{state}"
    );
    assert!(get("openclaw_decisions{tenant=\"a\",kind=\"blocked\"}") >= 1.0);
    // session_start, the decision, session_end at least.
    assert!(get("openclaw_receipts{tenant=\"a\"}") >= 3.0);
    assert_eq!(get("openclaw_llm_tokens_today{tenant=\"b\"}"), 1500.0);
    assert_eq!(get("openclaw_llm_micro_usd_today{tenant=\"b\"}"), 200.0);
    assert_eq!(
        get("openclaw_quota_refusals_total{tenant=\"b\",quota=\"requests_per_minute\"}"),
        1.0
    );
}

/// "A new tenant of the same name starts empty": the ledger rows of a
/// deleted tenant are relabelled `tenants-deleted/<name>-<ns>`, so a new
/// tenant of its name reads none of them, and the admin still does.
#[test]
fn a_recreated_tenant_does_not_see_its_deleted_namesakes_usage_which_the_admin_still_reads() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    cli(h, &["tenants", "create", "acme"]);
    // The first "acme" (say, a former customer) spent 200 micro-USD today.
    write_llm_session(h, "acme", "20261203-120000-aaaaaa", 200);
    rebuild_ledger(h);
    let d = start(h, &logs.path().join("serve.log"));

    let r = call(&d, "DELETE", "/v1/tenants/acme", Some(&admin), None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = call(
        &d,
        "POST",
        "/v1/tenants",
        Some(&admin),
        Some(&json!({"name": "acme"}).to_string()),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let new_token = r.body["token"].as_str().expect("token").to_owned();

    let usage = call(&d, "GET", "/v1/usage?by=session", Some(&new_token), None);
    assert_eq!(usage.status, 200, "{:?}", usage.body);
    assert_eq!(
        usage.body["rows"].as_array().map(Vec::len),
        Some(0),
        "a new tenant reads its deleted namesake's ledger rows: {}",
        usage.body
    );
    // The operator still reads what the deleted tenant spent, under the
    // label naming where its directory went.
    let all = call(&d, "GET", "/v1/usage?by=tenant", Some(&admin), None);
    assert_eq!(all.status, 200, "{:?}", all.body);
    let rows = all.body["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{}", all.body);
    assert!(
        rows[0].to_string().contains("tenants-deleted/acme-"),
        "{}",
        all.body
    );
    assert_eq!(all.body["total"]["cost_micro_usd"], 200, "{}", all.body);
}

/// `openclaw usage rebuild` keeps a deleted tenant's rows under its archive
/// label: the chains moved to `tenants-deleted/<name>-<ns>/sessions` are read
/// with that directory's key and labelled as the deletion labelled them, so
/// a rebuild neither loses them nor hands them back to a new namesake.
#[test]
fn a_rebuild_keeps_a_deleted_tenants_usage_under_its_archive_label() {
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    cli(h, &["tenants", "create", "acme"]);
    write_llm_session(h, "acme", "20261203-120000-aaaaaa", 200);
    rebuild_ledger(h);
    cli(h, &["tenants", "delete", "acme"]);
    cli(h, &["tenants", "create", "acme"]);
    write_llm_session(h, "acme", "20261203-130000-bbbbbb", 30);
    let by_tenant = || -> Value {
        serde_json::from_str(&cli(h, &["usage", "report", "--by", "tenant", "--json"]))
            .expect("report json")
    };
    // What the deletion left, before any rebuild: the old rows archived.
    rebuild_ledger(h);
    let rows = by_tenant();
    let rows = rows["rows"].as_array().expect("rows").clone();
    let label = |r: &Value| r["keys"][0].as_str().unwrap_or_default().to_owned();
    let cost = |r: &Value| r["cost_micro_usd"].as_u64().unwrap_or_default();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let archived: Vec<&Value> = rows
        .iter()
        .filter(|r| label(r).starts_with("tenants-deleted/acme-"))
        .collect();
    assert_eq!(archived.len(), 1, "{rows:?}");
    assert_eq!(cost(archived[0]), 200, "{rows:?}");
    let live: Vec<&Value> = rows.iter().filter(|r| label(r) == "acme").collect();
    assert_eq!(live.len(), 1, "{rows:?}");
    assert_eq!(cost(live[0]), 30, "{rows:?}");
    // The label is the archive directory's name.
    let dir = h.join(label(archived[0]));
    assert!(
        dir.join("sessions/20261203-120000-aaaaaa").is_dir(),
        "{}",
        dir.display()
    );
}

/// The same through the day quota: a new tenant with a usd_per_day of 100
/// micro-USD that spent nothing starts a session though its deleted
/// namesake spent 200 micro-USD today.
#[test]
fn a_recreated_tenants_day_quota_is_not_used_up_by_its_deleted_namesake() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    cli(h, &["tenants", "create", "acme"]);
    write_llm_session(h, "acme", "20261203-120000-aaaaaa", 200);
    rebuild_ledger(h);
    let d = start(h, &logs.path().join("serve.log"));
    assert_eq!(
        call(&d, "DELETE", "/v1/tenants/acme", Some(&admin), None).status,
        200
    );
    let r = call(
        &d,
        "POST",
        "/v1/tenants",
        Some(&admin),
        Some(&json!({"name": "acme"}).to_string()),
    );
    let new_token = r.body["token"].as_str().expect("token").to_owned();
    let r = put_quotas(&d, &admin, "acme", &json!({"usd_per_day": 0.0001}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = json!({"capabilities": mint_for(h, "acme"), "command": ["true"]});
    let r = call(
        &d,
        "POST",
        "/v1/sessions",
        Some(&new_token),
        Some(&body.to_string()),
    );
    if r.status == 201 {
        wait_ended(h, "acme", r.body["id"].as_str().unwrap_or(""));
    }
    assert_ne!(
        (r.status, r.field()),
        (429, "usd_per_day"),
        "a new tenant that spent nothing is refused for its namesake's spend: {:?}",
        r.body
    );
}

/// A SQLite delete that fails half way (here the ledger cannot be opened:
/// `ledger.db` is briefly a directory, after the record was marked and
/// before anything was archived) is finished by running it again — the
/// CLI says it completed an interrupted delete — and, for another tenant,
/// by the next daemon's start (a log line). Meanwhile the half-deleted
/// tenant is neither listed, nor authenticated, nor re-creatable.
#[test]
fn an_interrupted_delete_is_finished_by_the_next_delete_or_daemon_start() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let acme = cli(h, &["tenants", "create", "acme"]);
    cli(h, &["tenants", "create", "beta"]);
    write_llm_session(h, "acme", "20261203-120000-aaaaaa", 200);
    write_llm_session(h, "beta", "20261203-120000-bbbbbb", 30);
    rebuild_ledger(h);
    let ledger = h.join("ledger.db");
    let aside = h.join("ledger.db.aside");
    let delete = |name: &str| {
        support::openclaw(h)
            .args(["tenants", "delete", name])
            .output()
            .expect("run openclaw")
    };
    let interrupt = |name: &str| {
        std::fs::rename(&ledger, &aside).expect("ledger aside");
        std::fs::create_dir(&ledger).expect("a directory in its place");
        let out = delete(name);
        std::fs::remove_dir(&ledger).expect("rmdir");
        std::fs::rename(&aside, &ledger).expect("ledger back");
        assert!(!out.status.success(), "{}", support::text(&out));
    };
    interrupt("acme");
    assert!(h.join("tenants/acme").is_dir(), "nothing moved yet");
    let listed = cli(h, &["tenants", "list", "--json"]);
    assert!(!listed.contains("\"acme\""), "{listed}");
    let again = support::openclaw(h)
        .args(["tenants", "create", "acme"])
        .output()
        .expect("run openclaw");
    assert!(!again.status.success(), "{}", support::text(&again));

    let out = delete("acme");
    assert!(out.status.success(), "{}", support::text(&out));
    assert!(
        support::text(&out).contains("completed an interrupted delete"),
        "{}",
        support::text(&out)
    );
    let archived = |name: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(h.join("tenants-deleted"))
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&format!("{name}-")))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let by_tenant = || -> Vec<(String, u64)> {
        let report: Value =
            serde_json::from_str(&cli(h, &["usage", "report", "--by", "tenant", "--json"]))
                .expect("report json");
        report["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r["keys"][0].as_str().unwrap_or_default().to_owned(),
                    r["cost_micro_usd"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    };
    assert!(!h.join("tenants/acme").exists());
    let moved = archived("acme");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(moved[0].join("sessions/20261203-120000-aaaaaa").is_dir());
    let label = format!(
        "tenants-deleted/{}",
        moved[0].file_name().and_then(|n| n.to_str()).expect("name")
    );
    assert!(
        by_tenant().contains(&(label, 200)),
        "the ledger rows carry the directory's label: {:?}",
        by_tenant()
    );
    // Gone for good: the old token is refused, a third delete is NotFound,
    // and the name is free again.
    let d = start(h, &logs.path().join("serve.log"));
    assert_eq!(
        call(&d, "GET", "/v1/sessions", Some(&acme), None).status,
        401
    );
    drop(d);
    assert!(!delete("acme").status.success());
    cli(h, &["tenants", "create", "acme"]);

    // The daemon finishes the one it finds at its start.
    interrupt("beta");
    let log = logs.path().join("serve2.log");
    let _d = start(h, &log);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("completed an interrupted delete") && text.contains("beta"),
        "{text}"
    );
    assert!(!h.join("tenants/beta").exists());
    assert_eq!(archived("beta").len(), 1);
    assert!(
        by_tenant()
            .iter()
            .any(|(k, c)| k.starts_with("tenants-deleted/beta-") && *c == 30),
        "{:?}",
        by_tenant()
    );
}
