//! `openclaw serve` and `openclaw tenants` on PostgreSQL (`--database`,
//! `OPENCLAW_DATABASE`) from the outside: a private server from Debian's
//! binaries (`test_support::PostgresServer`), two daemons with two homes on
//! one database, `curl` as the client. A tenant created through one daemon
//! is seen by the other at once, a rotation through one is refused by both,
//! `openclaw audit --database` reads both hosts' audit lines from the
//! database, and the database password is in no log, audit line, output or
//! help text. And the day quotas: sessions of two daemons, calling a local
//! LLM provider in parallel, never settle past the tenant's USD/day quota
//! together (needs root: netns sessions).
//! Gated on `Requirement::Postgres` (docs/testing.md).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use ed25519_dalek::pkcs8::DecodePrivateKey;
use serde_json::{json, Value};
use test_requirements::{require, Requirement};
use test_support::PostgresServer;

mod support;
use support::llm_provider::{
    answers, assert_openai_usd_refusal, parallel_chats, quota_blocks, usage_of, MockProvider,
    LLM_POLICY, RATES,
};

const DATABASE_ENV: &str = "OPENCLAW_DATABASE";

struct Daemon {
    child: Child,
    addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a process is told the database: the environment or argv.
#[derive(Clone, Copy)]
enum Given<'a> {
    Env(&'a str),
    Flag(&'a str),
}

fn openclaw(home: &Path, database: Given<'_>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openclaw"));
    cmd.args(args)
        .env("OPENCLAW_HOME", home)
        .env_remove(DATABASE_ENV);
    match database {
        Given::Env(url) => {
            cmd.env(DATABASE_ENV, url);
        }
        Given::Flag(url) => {
            cmd.args(["--database", url]);
        }
    }
    cmd
}

/// `openclaw serve` on a free port, logging at debug level into `log`.
fn start(home: &Path, database: Given<'_>, log: &Path) -> Daemon {
    start_with(home, database, log, &[])
}

/// [`start`] with more `openclaw serve` flags.
fn start_with(home: &Path, database: Given<'_>, log: &Path, flags: &[String]) -> Daemon {
    let mut child = openclaw(home, database, &["serve", "--addr", "127.0.0.1:0"])
        .args(flags)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start openclaw serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| {
            panic!(
                "unexpected first line {line:?}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .to_owned();
    Daemon { child, addr }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One request with curl: (status, JSON body or null).
fn call(d: &Daemon, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-X", method])
        .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd
        .arg(format!("http://{}{path}", d.addr))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {method} {path}: {out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (body, status) = text.rsplit_once('\n').expect("the status line");
    let status = status.parse().expect("a status");
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
    };
    (status, body)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            // Sockets and the like are not read.
            if path.is_dir() {
                todo.push(path);
            } else if path.is_file() {
                out.push(path);
            }
        }
    }
    out
}

fn assert_no_password(password: &str, what: &str, bytes: &[u8]) {
    assert!(
        !bytes
            .windows(password.len())
            .any(|w| w == password.as_bytes()),
        "the database password is in {what}"
    );
}

#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn two_daemons_on_one_postgres_share_tenants_and_rotations_without_logging_the_password() {
    require(
        &[Requirement::Postgres],
        "postgres_store::two_daemons_on_one_postgres_share_tenants_and_rotations_without_logging_the_password",
    );
    let server = PostgresServer::start();
    let url = server.create_database("shared");
    let password = server.password().to_owned();
    let (home1, home2) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let logs = tempfile::tempdir().expect("tempdir");
    let (log1, log2) = (logs.path().join("one.log"), logs.path().join("two.log"));

    let admin = openclaw(home1.path(), Given::Env(&url), &["tenants", "admin-token"])
        .output()
        .expect("admin-token");
    assert!(admin.status.success(), "{}", output_text(&admin));
    assert_no_password(
        &password,
        "admin-token's output",
        output_text(&admin).as_bytes(),
    );
    let admin = String::from_utf8(admin.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();

    // One daemon told by the environment, the other by the flag; two homes,
    // so what they share can only be the database.
    let one = start(home1.path(), Given::Env(&url), &log1);
    let two = start(home2.path(), Given::Flag(&url), &log2);

    let (status, created) = call(
        &one,
        "POST",
        "/v1/tenants",
        &admin,
        Some(r#"{"name":"acme"}"#),
    );
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().expect("token").to_owned();

    // The other daemon sees the tenant at once, and its token.
    let (status, listed) = call(&two, "GET", "/v1/tenants", &admin, None);
    assert_eq!(status, 200, "{listed}");
    assert!(listed.to_string().contains("\"acme\""), "{listed}");
    for d in [&one, &two] {
        assert_eq!(call(d, "GET", "/v1/usage", &token, None).0, 200);
    }
    assert_eq!(call(&one, "GET", "/v1/sessions", &token, None).0, 200);

    // Rotated through the second: the old token is refused by both, the new
    // one works on both.
    let (status, rotated) = call(&two, "POST", "/v1/tenants/acme/token", &admin, None);
    assert_eq!(status, 200, "{rotated}");
    let new_token = rotated["token"].as_str().expect("token").to_owned();
    for d in [&one, &two] {
        assert_eq!(call(d, "GET", "/v1/usage", &token, None).0, 401);
        assert_eq!(call(d, "GET", "/v1/usage", &new_token, None).0, 200);
    }

    // The CLI on the second home, by the flag, lists what the API made.
    let listed = openclaw(
        home2.path(),
        Given::Flag(&url),
        &["tenants", "list", "--json"],
    )
    .output()
    .expect("list");
    assert!(listed.status.success(), "{}", output_text(&listed));
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed[0]["name"], "acme");

    // Neither home has a SQLite store: the tenants are in PostgreSQL.
    for home in [home1.path(), home2.path()] {
        assert!(!home.join("control.db").exists());
    }
    // Each daemon audits the changes it made, in its own home.
    let audit1 = std::fs::read_to_string(home1.path().join("audit.jsonl")).expect("audit 1");
    let audit2 = std::fs::read_to_string(home2.path().join("audit.jsonl")).expect("audit 2");
    assert!(audit1.contains("\"tenant.create\""), "{audit1}");
    assert!(audit2.contains("\"tenant.token.rotate\""), "{audit2}");

    drop((one, two));
    // The database holds every host's lines: `openclaw audit --database`
    // from a third home prints exactly the lines of both files.
    let third = tempfile::tempdir().expect("tempdir");
    let shared = openclaw(third.path(), Given::Flag(&url), &["audit"])
        .output()
        .expect("audit");
    assert!(shared.status.success(), "{}", output_text(&shared));
    let mut from_db: Vec<String> = String::from_utf8(shared.stdout.clone())
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect();
    let mut from_files: Vec<String> = audit1
        .lines()
        .chain(audit2.lines())
        .map(str::to_owned)
        .collect();
    from_db.sort();
    from_files.sort();
    assert_eq!(from_db.len(), 3, "admin-token, create, rotate: {from_db:?}");
    assert_eq!(from_db, from_files);
    assert_no_password(
        &password,
        "openclaw audit's output",
        output_text(&shared).as_bytes(),
    );
    let only_acme = openclaw(
        third.path(),
        Given::Env(&url),
        &["audit", "--tenant", "acme"],
    )
    .output()
    .expect("audit --tenant");
    assert_eq!(
        String::from_utf8_lossy(&only_acme.stdout).lines().count(),
        2,
        "{}",
        output_text(&only_acme)
    );
    for path in [&log1, &log2]
        .into_iter()
        .cloned()
        .chain(files_under(home1.path()))
        .chain(files_under(home2.path()))
    {
        let bytes = std::fs::read(&path).expect("read");
        assert_no_password(&password, &path.display().to_string(), &bytes);
    }
}

#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn a_wrong_database_password_is_refused_and_no_password_is_echoed() {
    require(
        &[Requirement::Postgres],
        "postgres_store::a_wrong_database_password_is_refused_and_no_password_is_echoed",
    );
    let server = PostgresServer::start();
    let url = server.create_database("refusals");
    let home = tempfile::tempdir().expect("tempdir");
    let wrong = url.replace(server.password(), "wrong-secret-0123");
    for given in [Given::Env(&wrong), Given::Flag(&wrong)] {
        for args in [
            &["tenants", "list"][..],
            &["serve", "--addr", "127.0.0.1:0"],
        ] {
            let out = openclaw(home.path(), given, args)
                .env("RUST_LOG", "debug")
                .output()
                .expect("run");
            let text = output_text(&out);
            assert!(!out.status.success(), "{args:?}: {text}");
            assert!(
                text.contains("password authentication failed"),
                "{args:?}: {text}"
            );
            assert_no_password("wrong-secret-0123", "the error", text.as_bytes());
        }
    }
    // The help shows where the URL comes from, never its value.
    let help = openclaw(home.path(), Given::Env(&url), &["serve", "--help"])
        .output()
        .expect("help");
    let text = output_text(&help);
    assert!(text.contains(DATABASE_ENV), "{text}");
    assert_no_password(server.password(), "serve --help", text.as_bytes());
    // Nothing was made in the home that would hide a database that failed.
    assert!(!home.path().join("control.db").exists());
}

/// A capability token for the LLM providers, minted under `tenant`'s root
/// key in `home`.
fn mint_llm_cap(home: &Path, tenant: &str) -> String {
    let path = home.join("tenants").join(tenant).join("keys/root.key");
    let pem = std::fs::read_to_string(path).expect("tenant root key");
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).expect("pem");
    let policy = capabilities::Policy::from_toml_str(&format!("ttl = \"30m\"\n{LLM_POLICY}"))
        .expect("policy");
    capabilities::mint(&policy, &key.to_bytes(), SystemTime::now()).expect("mint")
}

/// The session's bundle once it ended (up to 120 s).
fn wait_ended(home: &Path, tenant: &str, id: &str) -> PathBuf {
    let dir = home.join("tenants").join(tenant).join("sessions").join(id);
    support::wait_until(
        &format!("session {id} to end"),
        Duration::from_secs(120),
        || {
            let info: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("session.json")).ok()?)
                    .ok()?;
            (info["status"] != "running").then_some(())
        },
    );
    dir
}

/// Every process's (pid, argv bytes, environment bytes) the test can read.
fn processes() -> Vec<(u32, Vec<u8>, Vec<u8>)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            Some((pid, argv, env))
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The issue's test: two daemons (two homes, as two hosts, sharing only
/// the database and the tenant's keys) each run two sessions whose agents
/// make eight LLM calls at once against a tenant USD/day quota. Together
/// they never settle past quota + Σ max(0, actual − reservation); some
/// calls are refused with the provider-shaped 429 and a blocked receipt;
/// every hold is gone once the sessions end; the database password is in
/// no process's argv, no sandbox's environment and no file of either home.
#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn two_daemons_on_one_postgres_never_let_a_tenant_past_its_usd_per_day_quota() {
    require(
        &[Requirement::Postgres],
        "postgres_store::two_daemons_on_one_postgres_never_let_a_tenant_past_its_usd_per_day_quota",
    );
    const QUOTA: u64 = 2000;
    let server = PostgresServer::start();
    let url = server.create_database("dayquota");
    let password = server.password().to_owned();
    let (home1, home2) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let logs = tempfile::tempdir().expect("tempdir");
    let provider = MockProvider::start(logs.path());
    let homes = [home1.path(), home2.path()];

    let cli = |home: &Path, args: &[&str]| -> String {
        let out = openclaw(home, Given::Env(&url), args)
            .output()
            .expect("openclaw");
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let token = cli(home1.path(), &["tenants", "create", "acme"]);
    // 2000 micro-USD: 4 sessions × 8 calls × 230 would be 7360.
    cli(
        home1.path(),
        &["tenants", "quota", "acme", "--usd-per-day", "0.002"],
    );
    // The second host has the tenant's directory (its keys) as the first's.
    let copied = Command::new("cp")
        .arg("-a")
        .arg(home1.path().join("tenants"))
        .arg(home2.path())
        .status()
        .expect("cp");
    assert!(copied.success());
    for home in homes {
        std::fs::write(home.join("rates.toml"), RATES).expect("rates");
    }
    let flags = provider.flags();
    let daemons = [
        start_with(
            home1.path(),
            Given::Env(&url),
            &logs.path().join("one.log"),
            &flags,
        ),
        start_with(
            home2.path(),
            Given::Env(&url),
            &logs.path().join("two.log"),
            &flags,
        ),
    ];

    // The agents wait a moment, so all four are up (and can be looked at)
    // before their calls race.
    let script = format!("sleep 4\n{}", parallel_chats(8));
    let body = json!({
        "capabilities": mint_llm_cap(home1.path(), "acme"),
        "command": ["/bin/sh", "-c", script],
        "approve": "deny",
    })
    .to_string();
    let created: Vec<(usize, String)> = std::thread::scope(|s| {
        let creates: Vec<_> = (0..4)
            .map(|i| {
                let (d, body, token) = (&daemons[i % 2], &body, &token);
                s.spawn(move || {
                    let (status, answer) = call(d, "POST", "/v1/sessions", token, Some(body));
                    assert_eq!(status, 201, "{answer}");
                    (i % 2, answer["id"].as_str().expect("id").to_owned())
                })
            })
            .collect();
        creates
            .into_iter()
            .map(|t| t.join().expect("create"))
            .collect()
    });

    // While the sessions run: the URL's password is in no process's argv
    // (the daemons hand it to `openclaw run` through its environment) and
    // in no sandboxed process's environment.
    let mut sandboxed = 0;
    for (pid, argv, env) in processes() {
        assert!(
            !contains(&argv, password.as_bytes()),
            "the password is in the argv of process {pid}: {}",
            String::from_utf8_lossy(&argv).replace('\0', " ")
        );
        if contains(&env, b"OPENCLAW_SESSION=") {
            sandboxed += 1;
            assert!(
                !contains(&env, password.as_bytes()) && !contains(&env, b"OPENCLAW_QUOTA_DB"),
                "a sandboxed process ({pid}) sees the database URL"
            );
        }
    }
    assert!(sandboxed >= 1, "no sandboxed agent was looked at");

    let bundles: Vec<PathBuf> = created
        .iter()
        .map(|(host, id)| wait_ended(homes[*host], "acme", id))
        .collect();
    let (mut ok, mut refused, mut blocked) = (0, 0, 0);
    let (mut cost, mut excess, mut calls) = (0, 0, 0);
    for bundle in &bundles {
        let log = std::fs::read_to_string(bundle.join("run.log")).expect("run.log");
        let all = answers(&log);
        assert_eq!(all.len(), 8, "{log}");
        let passed: Vec<_> = all.iter().filter(|a| a.status == 200).collect();
        let others: Vec<_> = all.iter().filter(|a| a.status != 200).collect();
        others.iter().copied().for_each(assert_openai_usd_refusal);
        let blocks = quota_blocks(bundle);
        assert_eq!(blocks.len(), others.len(), "one blocked receipt per 429");
        assert!(
            blocks.iter().all(|r| r.starts_with("quota: usd_per_day: ")),
            "{blocks:#?}"
        );
        let (c, e, n) = usage_of(bundle);
        assert_eq!(n, passed.len(), "one usage receipt per call that passed");
        (ok, refused, blocked) = (
            ok + passed.len(),
            refused + others.len(),
            blocked + blocks.len(),
        );
        (cost, excess, calls) = (cost + c, excess + e, calls + n);
        let verify = support::openclaw(homes[0])
            .arg("verify")
            .arg(bundle)
            .arg("--key")
            .arg(home1.path().join("tenants/acme/keys/receipt.pub"))
            .output()
            .expect("verify");
        assert!(verify.status.success(), "{}", output_text(&verify));
    }
    assert!(ok >= 1 && refused >= 1, "{ok} passed, {refused} refused");
    assert_eq!(calls, ok);
    assert_eq!(blocked, refused);

    // The database's figures are the receipts' and within the quota.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let spent: i64 = db
        .query_one(
            "SELECT COALESCE(SUM(micro_usd), 0)::BIGINT FROM day_spend WHERE tenant = 'acme'",
            &[],
        )
        .expect("spend")
        .get(0);
    let holds: i64 = db
        .query_one("SELECT COUNT(*) FROM quota_holds", &[])
        .expect("holds")
        .get(0);
    let spent = u64::try_from(spent).expect("spent");
    assert_eq!(spent, cost, "day_spend holds what the receipts settled");
    assert!(
        spent <= QUOTA + excess,
        "two daemons settled {spent} past the quota of {QUOTA} (excess {excess})"
    );
    assert_eq!(holds, 0, "no hold outlives its session");
    // One ledger in the database: both daemons report every host's calls,
    // and so does `openclaw usage report --database` from a third home.
    for d in &daemons {
        let (status, usage) = call(d, "GET", "/v1/usage?period=today", &token, None);
        assert_eq!(status, 200, "{usage}");
        assert_eq!(usage["total"]["calls"], ok, "{usage}");
        assert_eq!(usage["total"]["cost_micro_usd"], spent, "{usage}");
    }
    let third = tempfile::tempdir().expect("tempdir");
    let report = openclaw(
        third.path(),
        Given::Env(&url),
        &[
            "usage", "report", "--period", "today", "--by", "session", "--json",
        ],
    )
    .output()
    .expect("usage report");
    assert!(report.status.success(), "{}", output_text(&report));
    let report: Value = serde_json::from_slice(&report.stdout).expect("json");
    assert_eq!(report["total"]["calls"], ok, "{report}");
    assert_eq!(report["total"]["cost_micro_usd"], spent, "{report}");
    assert!(
        !third.path().join("ledger.db").exists(),
        "the report read the database"
    );
    for home in homes {
        assert!(
            !home.join("ledger.db").exists(),
            "rows went to the database"
        );
    }
    eprintln!(
        "two daemons, 4 sessions, 32 parallel calls: {ok} passed, {refused} refused, \
         {spent} micro-USD settled of {QUOTA} (excess over reservations {excess})"
    );

    drop(daemons);
    for path in files_under(logs.path())
        .into_iter()
        .chain(files_under(home1.path()))
        .chain(files_under(home2.path()))
    {
        let bytes = std::fs::read(&path).expect("read");
        assert_no_password(&password, &path.display().to_string(), &bytes);
    }
}

/// The requests-per-minute window on PostgreSQL is one for every daemon:
/// with a quota of 3, two requests through one daemon and one through the
/// other use it up, and the next through either is 429 with a
/// `Retry-After` within the minute; another tenant has its own window.
#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn two_daemons_on_one_postgres_share_the_requests_per_minute_window() {
    require(
        &[Requirement::Postgres],
        "postgres_store::two_daemons_on_one_postgres_share_the_requests_per_minute_window",
    );
    let server = PostgresServer::start();
    let url = server.create_database("window");
    let (home1, home2) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let logs = tempfile::tempdir().expect("tempdir");
    let cli = |args: &[&str]| -> String {
        let out = openclaw(home1.path(), Given::Env(&url), args)
            .output()
            .expect("openclaw");
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let limited = cli(&["tenants", "create", "acme"]);
    let other = cli(&["tenants", "create", "other"]);
    cli(&["tenants", "quota", "acme", "--requests-per-minute", "3"]);
    cli(&["tenants", "quota", "other", "--requests-per-minute", "1"]);
    let one = start(home1.path(), Given::Env(&url), &logs.path().join("one.log"));
    let two = start(home2.path(), Given::Env(&url), &logs.path().join("two.log"));

    let curl_status = |d: &Daemon, token: &str| -> (u16, Option<u64>) {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-D", "-", "--max-time", "30"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("http://{}/v1/sessions", d.addr))
            .output()
            .expect("curl");
        assert!(out.status.success(), "{out:?}");
        let head = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let retry = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("retry-after")
                .then(|| v.trim().parse().ok())?
        });
        (status, retry)
    };
    assert_eq!(curl_status(&one, &limited).0, 200);
    assert_eq!(curl_status(&one, &limited).0, 200);
    assert_eq!(curl_status(&two, &limited).0, 200, "the third of three");
    for d in [&two, &one] {
        let (status, retry) = curl_status(d, &limited);
        assert_eq!(status, 429, "the window is full on every daemon");
        let retry = retry.expect("Retry-After");
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // Another tenant's window is its own.
    assert_eq!(curl_status(&two, &other).0, 200);
    assert_eq!(curl_status(&one, &other).0, 429);
}
