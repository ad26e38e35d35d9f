//! A request's query from the sandbox to the report: a session through the
//! real proxy and enforcing gate (the harness of `enforce/tests`) whose
//! credential may go in the query (`placement = ["query:key"]`), its bundle
//! reported by the real `openclaw report`, the page opened in headless
//! Chromium. The decision receipts, report.json and the page's timeline show
//! each request's query after its path, with the placeholder the sandbox
//! sent; the secret the upstream received is in no file of the bundle, raw
//! or percent-encoded.
//!
//! Needs curl, Chromium and chromium-driver (`scripts/bootstrap`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePublicKey;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

#[path = "../enforce/tests/support/mod.rs"]
mod enforce_support;
mod support;

use enforce_support::{Options, Session, LOGIN_SECRET, SECRETS};
use support::{openclaw, Killed};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Every file under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else if path.is_file() {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// chromedriver on a free port and a headless Chromium session through it.
async fn browser(profile: &Path) -> (Killed, Client) {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "needs chromium and chromium-driver (scripts/bootstrap installs them)"
    );
    let port = free_port();
    let driver = Killed(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1440,1200",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::rustls()
            .expect("rustls connector")
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            Err(err) if Instant::now() < deadline => {
                eprintln!("waiting for chromedriver: {err}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => panic!("chromedriver never took a session: {err}"),
        }
    }
}

/// The timeline's request cells (method, host, path and query), in order,
/// once the page has rendered them.
async fn timeline_requests(client: &Client) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cells = client
            .execute(
                "return [...document.querySelectorAll('#timeline tr[data-seq] td:nth-child(2)')]\
                   .map(td => td.firstChild ? td.firstChild.textContent : '');",
                vec![],
            )
            .await
            .expect("read the timeline");
        let cells: Vec<String> = serde_json::from_value(cells).expect("strings");
        if !cells.is_empty() || Instant::now() > deadline {
            return cells;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_reaches_the_report_and_the_page_and_the_secret_does_not() {
    let secrets = SECRETS.replace(
        "value = \"Hunter2-real-P@ss\"",
        "value = \"Hunter2-real-P@ss\"\nplacement = [\"query:key\"]",
    );
    let mut s = Session::start(Options {
        secrets,
        ..Options::default()
    })
    .await;
    let login = s.placeholder("united_login");
    let allowed = format!("/flights?key={login}&to=mallory&amount=9999");
    let r = s.curl(&format!("https://united.com{allowed}"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen();
    assert_eq!(
        seen[0].path, "/flights?key=Hunter2-real-P%40ss&to=mallory&amount=9999",
        "the upstream received the secret"
    );
    let refused = format!("/flights?note={login}");
    let r = s.curl(&format!("https://united.com{refused}"), &[]).await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = s.curl("https://united.com/flights", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    s.finish_and_verify();

    // The bundle: receipts, events, session.json, the receipt key.
    let dir = s.dir.path().to_owned();
    let events: Vec<String> = s
        .drain_events()
        .iter()
        .map(|e| serde_json::to_string(e).expect("event"))
        .collect();
    std::fs::write(dir.join("events.jsonl"), events.join("\n") + "\n").expect("events");
    let session = json!({
        "id": "query-report", "status": "completed", "backend": "none", "backend_reason": "test",
        "started_at": "2026-12-06T00:00:00Z", "ended_at": "2026-12-06T00:01:00Z",
        "sandbox_ready_ms": null, "command": ["curl"], "task": null, "exit_code": 0,
        "capabilities": {"summary": "", "grants": [], "revocation_ids": [], "expires_at": null},
        "ca_fingerprint": "", "receipt_key_id": "", "resolve": [], "upstream_ca": [],
        "supervisor_pid": null,
    });
    std::fs::write(dir.join("session.json"), session.to_string()).expect("session.json");
    let key = dir.join("receipt.pub");
    let pem = s
        .receipt_key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    std::fs::write(&key, pem).expect("key");
    let home = tempfile::tempdir().expect("home");
    let out = openclaw(home.path())
        .arg("report")
        .arg(&dir)
        .arg("--key")
        .arg(&key)
        .output()
        .expect("openclaw report");
    assert!(out.status.success(), "{out:?}");

    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json"))
            .expect("json");
    assert_eq!(
        report["receipts"]["status"], "valid",
        "{}",
        report["receipts"]
    );
    let timeline: Vec<(String, Option<String>)> = report["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| {
            let a = &e["action"];
            (
                a["path"].as_str().expect("path").to_owned(),
                a["query"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let query = |target: &str| target.split_once('?').map(|(_, q)| q.to_owned());
    assert_eq!(
        timeline,
        [
            ("/flights".to_owned(), query(&allowed)),
            ("/flights".to_owned(), query(&refused)),
            ("/flights".to_owned(), None),
        ]
    );

    // No file of the bundle holds the secret, in any spelling the upstream
    // or a reader would see.
    let files = all_files(&dir);
    for name in [
        "receipts.jsonl",
        "events.jsonl",
        "report.json",
        "report.html",
    ] {
        assert!(files.iter().any(|(p, _)| p.ends_with(name)), "{name}");
    }
    for secret in [LOGIN_SECRET, "Hunter2-real-P%40ss", "Hunter2-real-P"] {
        for (path, bytes) in &files {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} in {}",
                path.display()
            );
        }
    }

    // The page, as a browser shows it: the query after the path.
    let profile = tempfile::tempdir().expect("profile");
    let (_driver, client) = browser(profile.path()).await;
    let url = format!("file://{}", dir.join("report.html").display());
    client.goto(&url).await.expect("open report.html");
    let shown = timeline_requests(&client).await;
    client.close().await.expect("close chromium");
    assert_eq!(
        shown,
        [
            format!("GET united.com{allowed}"),
            format!("GET united.com{refused}"),
            "GET united.com/flights".to_owned(),
        ]
    );
}
