//! The web UI in real headless Chromium (Debian `chromium` +
//! `chromium-driver`, driven over WebDriver with fantoccini): the sessions
//! list, a running flight-booking demo whose $487 purchase waits for a
//! human, the approval appearing live, Approve (then, in a second session,
//! Deny) clicked in the page, the held request completing in the timeline,
//! and the approval receipt naming the approver `ui`. Screenshots of the list
//! and the session page land in `target/ui-screenshots/`.
//!
//! The same pages as `openclaw serve` serves them under `/ui/`: the login
//! form filled in with a tenant token, the tenant's running session, an
//! approval clicked, the receipt naming `ui:<tenant>`, logout.
//!
//! Needs root (sessions create network namespaces) and Chromium; a machine
//! without `/usr/bin/chromium` fails the test with the bootstrap hint.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::Value;

mod support;

use support::serve::{call, cli, mint_for_tenant};
use support::{approval_receipts, openclaw, running_session, start_demo_awaiting_approval, Killed};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `openclaw ui` on a free port; returns the process and the URL with the token.
fn start_ui(home: &Path) -> (Killed, String) {
    let mut child = openclaw(home)
        .args(["ui", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openclaw ui");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("URL line");
    assert!(line.contains("/?token="), "{line}");
    (Killed(child), line.trim().to_owned())
}

async fn chromium(port: u16, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1440,1200",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::rustls()
            .expect("rustls connector")
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            Err(err) if Instant::now() < deadline => {
                eprintln!("waiting for chromedriver: {err}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => panic!("chromedriver never took a session: {err}"),
        }
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let path = screenshots_dir().join(name);
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// The text of the first element matching `css`, read in one step in the
/// page (the live page re-renders, so a held element reference goes stale).
async fn text_of(client: &Client, css: &str) -> String {
    let value = client
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            vec![Value::from(css)],
        )
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    value
        .as_str()
        .unwrap_or_else(|| panic!("nothing matches {css}"))
        .to_owned()
}

/// Clicks the element matching `css`, again if the page re-rendered it
/// between finding and clicking (a stale reference is never clicked).
async fn click(client: &Client, css: &str) {
    let mut last = String::new();
    for _ in 0..10 {
        match client.find(Locator::Css(css)).await {
            Ok(element) => match element.click().await {
                Ok(()) => return,
                Err(err) => last = err.to_string(),
            },
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not click {css}: {last}");
}

/// Waits (in the page) until `css` matches, polling.
async fn wait_for(client: &Client, css: &str, timeout: Duration) {
    client
        .wait()
        .at_most(timeout)
        .every(Duration::from_millis(100))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
}

/// Opens the running session from the list, waits for the purchase
/// approval, clicks `button`, and waits for the timeline to show `outcome`.
async fn answer_in_browser(
    client: &Client,
    home: &Path,
    id: &str,
    button: &str,
    outcome: &str,
    shots: bool,
) {
    client
        .goto(&format!("{}/", base(client).await))
        .await
        .expect("list");
    let row = format!("tr[data-session=\"{id}\"]");
    wait_for(
        client,
        &format!("{row}[data-status=\"running\"]"),
        Duration::from_secs(30),
    )
    .await;
    // The list counts the purchase as pending (it refreshes by itself).
    wait_for(
        client,
        &format!("{row} td[data-pending=\"1\"]"),
        Duration::from_secs(60),
    )
    .await;
    if shots {
        screenshot(client, "sessions-list.png").await;
    }
    click(client, &format!("{row} a")).await;
    wait_for(client, "#conn.live", Duration::from_secs(15)).await;

    // The held purchase appears live, with what is asked.
    wait_for(
        client,
        "[data-approval] button.approve",
        Duration::from_secs(90),
    )
    .await;
    let box_text = text_of(client, "[data-approval]").await;
    for needle in [
        "$487.00",
        "united.com",
        "/api/booking/purchase",
        "payment",
        "s left",
    ] {
        assert!(box_text.contains(needle), "{needle:?} not in {box_text:?}");
    }
    let pending_row = text_of(client, "tr[data-outcome=\"pending\"]").await;
    assert!(
        pending_row.contains("/api/booking/purchase"),
        "{pending_row}"
    );
    if shots {
        screenshot(client, "session-pending-approval.png").await;
    }

    click(client, &format!("[data-approval] button.{button}")).await;

    // The pending box goes away and the timeline shows the answer by "ui".
    let row_css = format!("tr[data-outcome=\"{outcome}\"]");
    wait_for(client, &row_css, Duration::from_secs(30)).await;
    let row = text_of(client, &row_css).await;
    assert!(row.contains("/api/booking/purchase"), "{row}");
    assert!(row.contains("by ui"), "{row}");
    assert!(client
        .find_all(Locator::Css("[data-approval]"))
        .await
        .expect("query")
        .is_empty());

    // The session runs to its end; the page follows it.
    wait_for(
        client,
        "#status.completed, #status.failed",
        Duration::from_secs(90),
    )
    .await;
    if outcome == "approved" {
        // The purchase went through: status 200 on its row once completed.
        let row = text_of(client, &row_css).await;
        assert!(row.contains("200"), "{row}");
        assert_eq!(text_of(client, "#chain-status").await, "valid");
        if shots {
            screenshot(client, "session-after-approval.png").await;
        }
    }
    let dir = home.join("sessions").join(id);
    let approvals = approval_receipts(&dir);
    assert_eq!(
        approvals,
        vec![(outcome == "approved", "ui".to_owned())],
        "approval receipts of {id}"
    );
}

async fn base(client: &Client) -> String {
    let url = client.current_url().await.expect("url");
    format!(
        "{}://{}",
        url.scheme(),
        url.host_str().map_or(String::new(), |h| format!(
            "{h}:{}",
            url.port().unwrap_or(80)
        ))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn approve_and_deny_in_headless_chromium() {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "needs chromium and chromium-driver (scripts/bootstrap installs them)"
    );
    let home = tempfile::tempdir().expect("home");
    let profile = tempfile::tempdir().expect("chromium profile");
    let (_ui, url) = start_ui(home.path());
    let driver_port = free_port();
    let _driver = Killed(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let client = chromium(driver_port, profile.path()).await;

    // The token URL sets the cookie and lands on the list without the token.
    client.goto(&url).await.expect("open the UI");
    let landed = client.current_url().await.expect("url");
    assert_eq!(landed.path(), "/");
    assert!(landed.query().is_none(), "token left in the URL: {landed}");
    wait_for(&client, "#list .empty", Duration::from_secs(10)).await;
    // The cookie is HttpOnly: the page's script cannot read it.
    let cookies = client
        .execute("return document.cookie", vec![])
        .await
        .expect("js");
    assert_eq!(cookies, Value::String(String::new()));

    let _demo = start_demo_awaiting_approval(home.path());
    let first = running_session(home.path(), &[]);
    answer_in_browser(&client, home.path(), &first, "approve", "approved", true).await;

    let _demo = start_demo_awaiting_approval(home.path());
    let second = running_session(home.path(), std::slice::from_ref(&first));
    answer_in_browser(&client, home.path(), &second, "deny", "denied", false).await;

    // A finished session's page offers its bundle.
    let url_base = format!("{}/", base(&client).await);
    client
        .goto(&format!("{url_base}sessions/{first}"))
        .await
        .expect("finished page");
    wait_for(&client, "#bundle a", Duration::from_secs(10)).await;
    let report: Value = serde_json::from_slice(
        &std::fs::read(
            home.path()
                .join("sessions")
                .join(&second)
                .join("report.json"),
        )
        .expect("report"),
    )
    .expect("json");
    assert_eq!(
        report["counts"]["approvals"]["denied"], 1,
        "{}",
        report["counts"]
    );
    assert_eq!(report["spend"]["payments_cents"], 0);

    // From inside the page, an answer without the CSRF header is refused
    // (and one with it reaches the ended session, which says so).
    let refused = client
        .execute(
            "return fetch(location.pathname + '/approvals', {method: 'POST', \
             headers: {'content-type': 'application/json'}, body: '{\"id\":1,\"approve\":true}'}) \
             .then(r => r.status)",
            vec![],
        )
        .await
        .expect("fetch");
    assert_eq!(refused, Value::from(403));
    let ended = client
        .execute(
            "const live = JSON.parse(document.getElementById('live-data').textContent); \
             return fetch(live.answer_url, {method: 'POST', headers: {'content-type': \
             'application/json', 'x-openclaw-csrf': live.csrf_token}, \
             body: '{\"id\":1,\"approve\":true}'}).then(r => r.status)",
            vec![],
        )
        .await
        .expect("fetch");
    assert_eq!(ended, Value::from(409));

    // The report.html written into the bundle renders offline, as a file,
    // under its own hash-based CSP (a blocked script would show no rows).
    let file = home
        .path()
        .join("sessions")
        .join(&first)
        .join("report.html");
    client
        .goto(&format!("file://{}", file.display()))
        .await
        .expect("open report.html");
    wait_for(
        &client,
        "tr[data-outcome=\"approved\"]",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(text_of(&client, "#chain-status").await, "valid");
    assert!(client
        .find_all(Locator::Css("button"))
        .await
        .expect("query")
        .is_empty());

    // The list with both sessions finished.
    client.goto(&url_base).await.expect("list");
    wait_for(
        &client,
        &format!("tr[data-session=\"{second}\"]:not([data-status=\"running\"])"),
        Duration::from_secs(10),
    )
    .await;
    screenshot(&client, "sessions-list-finished.png").await;

    client.close().await.expect("close chromium");
}

/// chromedriver on a free port and a headless Chromium session through it.
async fn browser(profile: &Path) -> (Killed, Client) {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "needs chromium and chromium-driver (scripts/bootstrap installs them)"
    );
    let driver_port = free_port();
    let driver = Killed(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    (driver, chromium(driver_port, profile).await)
}

/// A policy whose every web request waits for a human, and a command whose
/// first request is held.
const POLICY_HELD: &str = "ttl = \"30m\"\n[web]\nallow = [\"example.com\"]\nmethods = [\"get\"]\n\
    [[approval]]\ntype = \"web\"\n";
const HOLDS: &str = "curl -s -o /dev/null --max-time 100 https://example.com/held; sleep 30";

#[tokio::test(flavor = "multi_thread")]
async fn log_in_and_approve_in_the_daemons_ui_in_headless_chromium() {
    let home = tempfile::tempdir().expect("home");
    let logs = tempfile::tempdir().expect("logs");
    let profile = tempfile::tempdir().expect("chromium profile");
    let h = home.path();
    let token = cli(h, &["tenants", "create", "a"]);
    let daemon = support::serve::start(h, &logs.path().join("serve.log"));
    let body = serde_json::json!({"capabilities": mint_for_tenant(h, "a", POLICY_HELD),
        "command": ["sh", "-c", HOLDS], "approve": "api"});
    let created = call(
        &daemon,
        "POST",
        "/v1/sessions",
        Some(&token),
        Some(&body.to_string()),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let (_driver, client) = browser(profile.path()).await;

    // Not logged in: the UI sends the browser to its login form; the token
    // is typed in and posted, and the list is what comes back.
    let base = format!("http://{}/ui/", daemon.addr);
    client.goto(&base).await.expect("open the UI");
    wait_for(&client, "input#token", Duration::from_secs(10)).await;
    assert_eq!(client.current_url().await.expect("url").path(), "/ui/login");
    client
        .find(Locator::Css("input#token"))
        .await
        .expect("token field")
        .send_keys(&token)
        .await
        .expect("type the token");
    click(&client, "button[type=submit]").await;
    let row = format!("tr[data-session=\"{id}\"]");
    wait_for(
        &client,
        &format!("{row}[data-status=\"running\"]"),
        Duration::from_secs(30),
    )
    .await;
    let landed = client.current_url().await.expect("url");
    assert_eq!((landed.path(), landed.query()), ("/ui/", None));
    let cookies = client
        .execute("return document.cookie", vec![])
        .await
        .expect("js");
    assert_eq!(cookies, Value::String(String::new()), "HttpOnly");

    // The session page, live: the held request appears and is approved.
    click(&client, &format!("{row} a")).await;
    wait_for(&client, "#conn.live", Duration::from_secs(15)).await;
    wait_for(
        &client,
        "[data-approval] button.approve",
        Duration::from_secs(60),
    )
    .await;
    let asked = text_of(&client, "[data-approval]").await;
    assert!(
        asked.contains("example.com") && asked.contains("/held"),
        "{asked}"
    );
    screenshot(&client, "daemon-ui-pending-approval.png").await;
    click(&client, "[data-approval] button.approve").await;
    wait_for(
        &client,
        "tr[data-outcome=\"approved\"]",
        Duration::from_secs(30),
    )
    .await;
    let approved = text_of(&client, "tr[data-outcome=\"approved\"]").await;
    assert!(approved.contains("by ui:a"), "{approved}");

    // Logout from the list: back at the login form, and the list is gone.
    client.goto(&base).await.expect("list");
    click(&client, ".logout button").await;
    wait_for(&client, "input#token", Duration::from_secs(10)).await;
    client.goto(&base).await.expect("list again");
    assert_eq!(client.current_url().await.expect("url").path(), "/ui/login");

    let stopped = call(
        &daemon,
        "POST",
        &format!("/v1/sessions/{id}/stop"),
        Some(&token),
        None,
    );
    assert_eq!(stopped.status, 202);
    let dir = h.join("tenants/a/sessions").join(&id);
    support::wait_until("the session to end", Duration::from_secs(60), || {
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("session.json")).ok()?).ok()?;
        (info["status"] != "running").then_some(())
    });
    assert_eq!(approval_receipts(&dir), [(true, "ui:a".to_owned())]);
    client.close().await.expect("close chromium");
}
