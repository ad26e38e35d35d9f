//! The usage ledger driven through the real binary: sessions' receipt chains
//! (written by the receipts crate's own writer, with usage receipts) are the
//! record; `openclaw usage rebuild` recreates `<home>/ledger.db` from them
//! after it was deleted, cut short, or its writer was SIGKILLed mid-way, and
//! `openclaw usage report` then sums the same figures as the chains hold.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::SigningKey;
use receipts::{
    cost_micro_usd, DecisionRecord, Entry, ModelPrice, RateSnapshot, ReceiptLog, SessionStart,
    UsageRecord, UsageTokens,
};
use serde_json::{json, Value};

mod support;

use support::{capped, chains, openclaw, run, text};

fn receipt_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

/// A home with the receipt public key where `openclaw usage rebuild` looks.
fn home() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("home");
    std::fs::create_dir_all(home.path().join("keys")).expect("keys dir");
    let pem = receipt_key()
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    std::fs::write(home.path().join("keys/receipt.pub"), pem).expect("write key");
    home
}

fn price(model: &str) -> RateSnapshot {
    RateSnapshot {
        card_sha256: receipts::sha256_hex(b"card of the day"),
        price: ModelPrice {
            model: model.into(),
            input: 2_500_000,
            cached_input: 1_250_000,
            cache_write_5m: 0,
            cache_write_1h: 0,
            output: 10_000_000,
            per_request: 0,
        },
    }
}

/// What one tenant's sessions hold, summed from the records written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Expected {
    calls: u64,
    tokens_in: u64,
    tokens_out: u64,
    cost_micro_usd: u64,
}

/// Writes `sessions` ended sessions for `tenant`, each with `calls` llm
/// decisions and their usage receipts; returns what they add up to.
fn write_sessions(home: &Path, tenant: &str, sessions: u64, calls: u64) -> Expected {
    let mut expected = Expected::default();
    for s in 0..sessions {
        let id = format!("{tenant}-{s:04}");
        let dir = home.join("sessions").join(&id);
        std::fs::create_dir_all(&dir).expect("session dir");
        let log = ReceiptLog::create(
            &dir.join("receipts.jsonl"),
            receipt_key(),
            SessionStart {
                session_id: id.clone(),
                revocation_ids: vec!["r0".into()],
                sandbox: "netns".into(),
                capability_sha256: None,
                tenant: Some(tenant.into()),
                user: Some(format!("user{}", s % 2)),
            },
        )
        .expect("create chain");
        for c in 0..calls {
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
                input: 100 + s * 7 + c,
                cached_input: 50 * (c % 3),
                output: 20 + c,
                reasoning: c % 5,
                ..UsageTokens::default()
            };
            let rates = price(if c % 2 == 0 { "gpt-4o" } else { "gpt-4o-mini" });
            let cost = cost_micro_usd(&tokens, &rates.price);
            log.append(Entry::Usage(UsageRecord {
                decision_seq: d.seq,
                provider: "api.openai.com".into(),
                api: "openai.chat".into(),
                model: rates.price.model.clone(),
                response_id: Some(format!("chatcmpl-{s}-{c}")),
                tokens,
                rates,
                cost_micro_usd: cost,
                reserved_micro_usd: cost + 1000,
                estimated: false,
            }))
            .expect("usage");
            expected.calls += 1;
            expected.tokens_in += tokens.input + tokens.cached_input;
            expected.tokens_out += tokens.output;
            expected.cost_micro_usd += cost;
        }
        log.finish().expect("end");
    }
    expected
}

/// `openclaw usage report --by tenant --period today --json`, as
/// tenant → (calls, tokens_in, tokens_out, cost in micro-USD).
fn report_by_tenant(home: &Path) -> BTreeMap<String, Expected> {
    let out = run(
        home,
        &[
            "usage", "report", "--by", "tenant", "--period", "today", "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    json["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().expect(k);
            (
                r["keys"][0].as_str().expect("tenant").to_owned(),
                Expected {
                    calls: n("calls"),
                    tokens_in: n("tokens_in"),
                    tokens_out: n("tokens_out"),
                    cost_micro_usd: n("cost_micro_usd"),
                },
            )
        })
        .collect()
}

fn rebuild(home: &Path) {
    let out = run(home, &["usage", "rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn rebuild_restores_a_deleted_or_truncated_ledger_complete() {
    let home = home();
    let acme = write_sessions(home.path(), "acme", 3, 5);
    let globex = write_sessions(home.path(), "globex", 2, 4);
    let want = BTreeMap::from([("acme".to_owned(), acme), ("globex".to_owned(), globex)]);

    let out = run(home.path(), &["usage", "report"]);
    assert_ne!(out.status.code(), Some(0), "no ledger yet");
    assert!(text(&out).contains("usage rebuild"), "{}", text(&out));

    let out = run(home.path(), &["usage", "rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("23 usage row(s) from 5 session(s)"),
        "{}",
        text(&out)
    );
    assert_eq!(report_by_tenant(home.path()), want);
    // Idempotent: again, same rows.
    rebuild(home.path());
    assert_eq!(report_by_tenant(home.path()), want);

    // Deleted.
    let db = home.path().join("ledger.db");
    std::fs::remove_file(&db).expect("delete");
    rebuild(home.path());
    assert_eq!(report_by_tenant(home.path()), want);

    // Cut to half its size (what SQLite then reads of it, if anything, is
    // not the point): the rebuild does not read the damaged file.
    let len = std::fs::metadata(&db).expect("db").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    drop(f);
    rebuild(home.path());
    assert_eq!(report_by_tenant(home.path()), want);

    // A rate card change does not change past reports: costs come from
    // the prices recorded with each call.
    std::fs::write(
        home.path().join("rates.toml"),
        "[[model]]\nname = \"gpt-4o\"\ninput = \"99\"\noutput = \"99\"\n",
    )
    .expect("rates");
    rebuild(home.path());
    assert_eq!(report_by_tenant(home.path()), want);
}

#[test]
fn a_rebuild_killed_mid_way_leaves_no_partial_ledger_and_the_next_one_is_complete() {
    let home = home();
    let want = BTreeMap::from([(
        "acme".to_owned(),
        write_sessions(home.path(), "acme", 40, 25),
    )]);
    let db = home.path().join("ledger.db");
    // Kill rebuilds at growing delays: early (before any row), mid-way,
    // and around the rename. Whatever the moment, the ledger is then either
    // absent or complete, never partial.
    for delay_ms in [0u64, 5, 20, 60, 150, 400] {
        let mut child = openclaw(home.path())
            .args(["usage", "rebuild"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SIGKILL: no chance to clean up.
        child.kill().expect("kill");
        child.wait().expect("reap");
        if db.exists() {
            assert_eq!(
                report_by_tenant(home.path()),
                want,
                "after a kill at {delay_ms} ms"
            );
        }
    }
    rebuild(home.path());
    assert_eq!(report_by_tenant(home.path()), want);
    assert!(!home.path().join("ledger.db.rebuild").exists());
}

#[test]
fn rebuild_skips_and_names_chains_that_do_not_verify() {
    let home = home();
    let want = write_sessions(home.path(), "acme", 2, 3);
    write_sessions(home.path(), "evil", 1, 3);
    // Edit a usage receipt's cost in the evil session (not re-signed).
    let path = home.path().join("sessions/evil-0000/receipts.jsonl");
    let chain = std::fs::read_to_string(&path).expect("chain");
    let line = chain
        .lines()
        .find(|l| l.contains("\"kind\":\"usage\""))
        .expect("usage line");
    let cost = serde_json::from_str::<Value>(line).expect("json")["cost_micro_usd"]
        .as_u64()
        .expect("cost");
    let edited = line.replace(
        &format!("\"cost_micro_usd\":{cost}"),
        &format!("\"cost_micro_usd\":{}", cost / 2),
    );
    std::fs::write(&path, chain.replace(line, &edited)).expect("tamper");
    // And a session still running (no session_end).
    let open = home.path().join("sessions/open-0000");
    std::fs::create_dir_all(&open).expect("dir");
    let log = ReceiptLog::create(
        &open.join("receipts.jsonl"),
        receipt_key(),
        SessionStart {
            session_id: "open-0000".into(),
            revocation_ids: vec![],
            sandbox: "netns".into(),
            capability_sha256: None,
            tenant: Some("acme".into()),
            user: None,
        },
    )
    .expect("open chain");
    drop(log);

    let out = run(home.path(), &["usage", "rebuild"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("6 usage row(s) from 2 session(s)"), "{said}");
    assert!(
        said.contains("skipped") && said.contains("evil-0000"),
        "{said}"
    );
    assert!(
        said.contains("open-0000") && said.contains("without session_end"),
        "{said}"
    );
    assert_eq!(
        report_by_tenant(home.path()),
        BTreeMap::from([("acme".to_owned(), want)])
    );
}

/// A chain flooded with lines no signature covers, then a 4 GiB hole and a
/// byte: under a 2 GiB address-space cap a rebuild that reads each chain
/// file whole cannot hold it. One that reads as it verifies skips that
/// session at the line past the writer's bound, naming it, and rebuilds
/// the others.
#[test]
fn rebuild_skips_a_flooded_chain_without_reading_the_rest_of_the_file() {
    let home = home();
    let want = write_sessions(home.path(), "acme", 1, 2);
    let dir = home.path().join("sessions/flood-0000");
    std::fs::create_dir_all(&dir).expect("dir");
    let flood = chains::unsigned_flood(
        &receipt_key(),
        "flood-0000",
        "acme",
        receipts::MAX_BATCH + 500,
    );
    std::fs::write(dir.join("receipts.jsonl"), flood).expect("flood");
    chains::add_a_4gib_hole(&dir.join("receipts.jsonl"));

    let out = capped(home.path(), &["usage", "rebuild"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("2 usage row(s) from 1 session(s)"), "{said}");
    assert!(
        said.contains("skipped") && said.contains("flood-0000"),
        "{said}"
    );
    assert!(
        said.contains(&format!("line {}", receipts::MAX_BATCH + 1)),
        "{said}"
    );
    assert_eq!(
        report_by_tenant(home.path()),
        BTreeMap::from([("acme".to_owned(), want)])
    );
}

#[test]
fn csv_and_table_carry_the_documented_columns() {
    let home = home();
    write_sessions(home.path(), "acme", 1, 2);
    rebuild(home.path());
    let out = run(
        home.path(),
        &["usage", "report", "--period", "today", "--csv"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let csv = String::from_utf8(out.stdout).expect("utf8");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("date,tenant,model,calls,tokens_in,tokens_cached_in,tokens_cache_write,tokens_out,tokens_reasoning,cost_usd,estimated_calls")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(rows.iter().all(|r| r.contains(",acme,gpt-4o")), "{csv}");

    let out = run(
        home.path(),
        &["usage", "report", "--by", "user", "--period", "today"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        table.contains("user") && table.contains("user0") && table.contains("total"),
        "{table}"
    );

    let out = run(home.path(), &["usage", "report", "--period", "last-week"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("current-month"), "{}", text(&out));
    let out = run(home.path(), &["usage", "report", "--help"]);
    assert!(text(&out).contains("tokens_cached_in") && text(&out).contains("Examples"));
}

/// A home whose token grants `api.openai.com` under a $1 budget and whose
/// rate card prices gpt-4o-mini (1 USD per million input, 0.5 cached, 4
/// output: the test provider's usage of 100 in, 20 cached, 30 out costs
/// 100·1 + 20·0.5 + 30·4 = 230 micro-USD), with that provider running.
struct PricedProvider {
    home: tempfile::TempDir,
    ca_pem: std::path::PathBuf,
    upstream: test_support::Upstream,
    _rt: tokio::runtime::Runtime,
}

impl PricedProvider {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let ca = test_support::TestCa::new("usage-ledger test provider");
        let upstream = rt.block_on(test_support::Upstream::https(
            &ca,
            &["api.openai.com"],
            &[b"http/1.1"],
        ));
        let home = tempfile::tempdir().expect("home");
        support::keygen_and_mint(
            home.path(),
            "[llm]\nproviders = [\"api.openai.com\"]\nbudget_usd = \"1.00\"\n",
        );
        std::fs::write(
            home.path().join("rates.toml"),
            "[[model]]\nname = \"gpt-4o-mini\"\ninput = \"1\"\ncached_input = \"0.5\"\noutput = \"4\"\n",
        )
        .expect("rates");
        let ca_pem = ca.write_pem(home.path());
        PricedProvider {
            home,
            ca_pem,
            upstream,
            _rt: rt,
        }
    }

    /// `openclaw run` of a netns session labelled acme/alice that reaches the
    /// provider as api.openai.com; the caller adds the command.
    fn run(&self) -> std::process::Command {
        let home = self.home.path();
        let mut cmd = openclaw(home);
        cmd.arg("run")
            .arg("--capabilities")
            .arg(home.join("task.cap"))
            .args(["--backend", "netns", "--tenant", "acme", "--user", "alice"])
            .arg("--upstream-ca")
            .arg(&self.ca_pem)
            .arg("--resolve")
            .arg(format!("api.openai.com={}", self.upstream.addr));
        cmd
    }
}

/// The whole path through the real binary: an agent in the netns sandbox
/// posts a Chat Completions call to a local HTTPS provider; the proxy reads
/// the provider's usage, writes a usage receipt priced from the rate card,
/// the session's end puts its row in the ledger, and the report sums it
/// under the session's tenant. The chain verifies with the cost re-derived.
#[test]
fn a_sessions_llm_call_reaches_the_ledger_priced_from_the_rate_card() {
    let provider = PricedProvider::start();
    let home = provider.home.path();
    let out = provider
        .run()
        .args([
            "--",
            "curl",
            "-sS",
            "https://api.openai.com/v1/chat/completions",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":50}"#,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openclaw run");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("chatcmpl-test"),
        "the agent got the answer: {all}"
    );

    let report = run(
        home,
        &[
            "usage",
            "report",
            "--by",
            "tenant,model",
            "--json",
            "--period",
            "today",
        ],
    );
    assert!(report.status.success(), "{}", text(&report));
    let rows: Value = serde_json::from_slice(&report.stdout).expect("report json");
    let text_rows = rows.to_string();
    assert!(text_rows.contains("\"acme\""), "{text_rows}");
    assert!(text_rows.contains("gpt-4o-mini"), "{text_rows}");
    assert!(text_rows.contains("230"), "cost 230 micro-USD: {text_rows}");

    let sessions: Vec<_> = std::fs::read_dir(home.join("sessions"))
        .expect("sessions")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(sessions.len(), 1);
    let usage: Vec<Value> = support::receipts(&sessions[0])
        .into_iter()
        .filter(|r| r["body"]["kind"] == "usage" || r["kind"] == "usage")
        .collect();
    assert_eq!(usage.len(), 1, "one usage receipt");
    let u = usage[0].to_string();
    assert!(u.contains("\"cost_micro_usd\":230"), "{u}");
    // The session report shows the spend against the token's budget.
    let report: Value = serde_json::from_slice(
        &std::fs::read(sessions[0].join("report.json")).expect("report.json"),
    )
    .expect("report json");
    assert_eq!(report["spend"]["llm_micro_usd"], 230, "{report}");
    assert_eq!(
        report["spend"]["llm_budget_micro_usd"], 1_000_000,
        "{report}"
    );
    let html = std::fs::read_to_string(sessions[0].join("report.html")).expect("report.html");
    assert!(
        html.contains("\"llm_budget_micro_usd\":1000000"),
        "the page's data"
    );
    support::assert_verifies(home, &sessions[0]);
}

/// Every row of the ledger at `home`, all columns, in key order.
fn ledger_dump(home: &Path) -> Vec<Vec<String>> {
    try_ledger_dump(home).expect("read the ledger")
}

/// The same, or the error of a ledger not there yet (or being created).
fn try_ledger_dump(home: &Path) -> rusqlite::Result<Vec<Vec<String>>> {
    let db = rusqlite::Connection::open_with_flags(
        home.join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut stmt = db.prepare("SELECT * FROM usage ORDER BY session, seq")?;
    let columns = stmt.column_count();
    let rows = stmt.query_map([], |r| {
        (0..columns)
            .map(|i| {
                r.get::<_, rusqlite::types::Value>(i)
                    .map(|v| format!("{v:?}"))
            })
            .collect()
    })?;
    rows.collect()
}

#[test]
fn a_calls_ledger_row_is_written_while_the_session_runs() {
    let provider = PricedProvider::start();
    let home = provider.home.path();
    // One LLM call, then the session waits until the test lets it end.
    let script = r#"curl -sS https://api.openai.com/v1/chat/completions -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":50}' && echo CALLED && while [ ! -e /work/go ]; do sleep 0.1; done"#;
    let child = provider
        .run()
        .args(["--work-max", "0"])
        .args(["--", "sh", "-c", script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openclaw run");
    let mut child = support::Killed(child);
    let session = support::wait_until("the session's bundle", Duration::from_secs(30), || {
        std::fs::read_dir(home.join("sessions"))
            .ok()?
            .next()
            .map(|e| e.expect("entry").path())
    });
    let id = session
        .file_name()
        .expect("id")
        .to_string_lossy()
        .into_owned();
    // The row is there while the session still runs.
    let live = support::wait_until("the live ledger row", Duration::from_secs(60), || {
        let rows = try_ledger_dump(home).ok()?;
        (!rows.is_empty()).then_some(rows)
    });
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "the session is still running"
    );
    assert_eq!(live.len(), 1, "{live:?}");
    let row = live[0].join(" ");
    assert!(row.contains(&format!("Text(\"{id}\")")), "{row}");
    assert!(
        row.contains("Text(\"acme\")") && row.contains("Integer(230)"),
        "{row}"
    );

    std::fs::write(session.join("work/go"), "").expect("let it end");
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "the session ended well");
    // The end-of-session fill kept the live row as it was, and a rebuild
    // from the verified chains gives the same ledger.
    let at_end = ledger_dump(home);
    assert_eq!(at_end, live);
    let rebuild = run(home, &["usage", "rebuild"]);
    assert!(rebuild.status.success(), "{}", text(&rebuild));
    assert_eq!(ledger_dump(home), at_end);
}
