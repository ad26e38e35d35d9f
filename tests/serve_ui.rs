//! The browser UI as `openclaw serve` serves it (`/ui/`), from the outside:
//! the real daemon on a free loopback port, two tenants, plain HTTP/1.1 over
//! TCP as a browser sends it (cookies, CSRF header, Origin). A tenant token
//! posted to the login page becomes a cookie that shows and touches only
//! that tenant's sessions (another tenant's id and every path trick: 404);
//! a rotated token, a deleted tenant and a logout end the login at once;
//! answers need the CSRF token and are receipted and audited; and the
//! session list (API and UI) is never stale behind its cache.
//!
//! The tests with real sessions (`openclaw run` children on the netns
//! backend) need root, as `tests/serve_api.rs`'s do.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

use support::approval_receipts;
use support::raw_http::{exchange, Reply};
use support::serve::{
    call, cli, mint_for_tenant, start, wait_ended, write_session, Daemon, HOLDS, POLICY,
    POLICY_HELD,
};

const A_ID: &str = "20261204-120000-aaaaaa";
const B_ID: &str = "20261204-120000-bbbbbb";

/// One answer: status, raw head, body text.
/// One request on a fresh connection; `extra` are whole header lines.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    extra: &[String],
    body: Option<(&str, &str)>,
) -> Reply {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    if let Some((content_type, body)) = body {
        request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    exchange(addr, &request, Duration::from_secs(60))
}

/// A browser of one login: its cookie and the CSRF token its pages carry.
struct Browser<'a> {
    addr: &'a str,
    cookie: String,
}

impl Browser<'_> {
    fn cookie_line(&self) -> String {
        format!("Cookie: openclaw_serve_ui={}", self.cookie)
    }

    fn get(&self, path: &str) -> Reply {
        http(self.addr, "GET", path, &[self.cookie_line()], None)
    }

    /// An answer posted as the session page's script posts it.
    fn answer(&self, id: &str, approval: u64, csrf: Option<&str>) -> Reply {
        let mut extra = vec![self.cookie_line(), format!("Origin: http://{}", self.addr)];
        if let Some(token) = csrf {
            extra.push(format!("x-openclaw-csrf: {token}"));
        }
        http(
            self.addr,
            "POST",
            &format!("/ui/sessions/{id}/approvals"),
            &extra,
            Some((
                "application/json",
                &json!({"id": approval, "approve": true}).to_string(),
            )),
        )
    }

    /// The session ids `/ui/api/sessions` lists.
    fn listed(&self) -> Vec<String> {
        let r = self.get("/ui/api/sessions");
        assert_eq!(r.status, 200, "{}", r.body);
        ids_of(&r.json())
    }

    /// The CSRF token the session page carries.
    fn csrf(&self, id: &str) -> String {
        let page = self.get(&format!("/ui/sessions/{id}"));
        assert_eq!(page.status, 200, "{}", page.body);
        let start = page
            .body
            .find("\"csrf_token\":\"")
            .expect("csrf in the page")
            + 14;
        page.body[start..start + 64].to_owned()
    }
}

fn ids_of(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap_or_else(|| panic!("{rows}"))
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

fn login_with(addr: &str, token: &str, extra: &[String]) -> Reply {
    http(
        addr,
        "POST",
        "/ui/login",
        extra,
        Some((
            "application/x-www-form-urlencoded",
            &format!("token={token}"),
        )),
    )
}

/// Logs in with `token`, which must work; the browser holding the cookie.
fn login<'a>(d: &'a Daemon, token: &str) -> Browser<'a> {
    let origin = format!("Origin: http://{}", d.addr);
    let r = login_with(&d.addr, token, &[origin]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location").as_deref(), Some("/ui/"));
    let set = r.header("set-cookie").expect("a cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(part), "{part} in {set}");
    }
    let cookie = set
        .strip_prefix("openclaw_serve_ui=")
        .and_then(|v| v.split(';').next())
        .expect("cookie value")
        .to_owned();
    assert_eq!(cookie.len(), 64, "{set}");
    Browser {
        addr: &d.addr,
        cookie,
    }
}

fn audit_lines(home: &Path) -> Vec<Value> {
    std::fs::read_to_string(home.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit json"))
        .collect()
}

#[test]
fn a_tenants_login_sees_and_touches_only_its_own_sessions() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let b = cli(h, &["tenants", "create", "b"]);
    let admin = cli(h, &["tenants", "admin-token"]);
    write_session(h, "a", A_ID);
    write_session(h, "b", B_ID);
    let log = logs.path().join("serve.log");
    let d = start(h, &log);
    let addr = d.addr.as_str();
    let origin = format!("Origin: http://{addr}");

    // Without a login: pages send the browser to the login page, the rest
    // is 401.
    let r = http(addr, "GET", "/ui", &[], None);
    assert_eq!((r.status, r.header("location")), (303, Some("/ui/".into())));
    for path in ["/ui/", &format!("/ui/sessions/{A_ID}")] {
        let r = http(addr, "GET", path, &[], None);
        assert_eq!(r.status, 303, "{path}");
        assert_eq!(r.header("location").as_deref(), Some("/ui/login"), "{path}");
    }
    for path in ["/ui/api/sessions", &format!("/ui/sessions/{A_ID}/events")] {
        assert_eq!(http(addr, "GET", path, &[], None).status, 401, "{path}");
    }
    let forged = Browser {
        addr,
        cookie: "0".repeat(64),
    };
    assert_eq!(forged.get("/ui/api/sessions").status, 401);

    // The login page: a form posting to itself, under a strict CSP.
    let page = http(addr, "GET", "/ui/login", &[], None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"token\""), "{}", page.body);
    let csp = page.header("content-security-policy").expect("csp");
    assert!(
        csp.contains("form-action 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(page.header("access-control-allow-origin").is_none());
    // Under `no-referrer` a browser posts a form with `Origin: null`
    // (refused below); `same-origin` lets it name this origin.
    assert_eq!(
        page.header("referrer-policy").as_deref(),
        Some("same-origin")
    );
    // A token in the URL is not taken.
    let in_url = http(addr, "GET", &format!("/ui/login?token={a}"), &[], None);
    assert!(in_url.header("set-cookie").is_none(), "{}", in_url.head);

    // Wrong token, the admin token, another site's form, not a form: refused.
    let wrong = format!("tk_a_{}", "0".repeat(32));
    for (token, extra, status) in [
        (wrong.as_str(), vec![origin.clone()], 401),
        (admin.as_str(), vec![origin.clone()], 401),
        (
            a.as_str(),
            vec!["Origin: http://evil.example".to_owned()],
            403,
        ),
    ] {
        let r = login_with(addr, token, &extra);
        assert_eq!(r.status, status, "{extra:?}: {}", r.body);
        assert!(r.header("set-cookie").is_none());
    }
    let get_logout = http(addr, "GET", "/ui/logout", &[], None);
    assert_eq!(
        (get_logout.status, get_logout.header("allow")),
        (405, Some("POST".into()))
    );
    let as_json = http(
        addr,
        "POST",
        "/ui/login",
        std::slice::from_ref(&origin),
        Some(("application/json", &json!({"token": a}).to_string())),
    );
    assert_eq!(as_json.status, 415);

    // Logged in: each tenant sees its own sessions only.
    let ui_a = login(&d, &a);
    let ui_b = login(&d, &b);
    assert_eq!(ui_a.listed(), [A_ID]);
    assert_eq!(ui_b.listed(), [B_ID]);
    let list = ui_a.get("/ui/");
    assert_eq!(list.status, 200);
    assert!(list.body.contains(A_ID) && !list.body.contains(B_ID));
    assert!(list.body.contains("Log out"));
    assert!(list
        .header("content-security-policy")
        .is_some_and(|p| p.contains("form-action 'self'")));
    let csrf_a = ui_a.csrf(A_ID);
    let csrf_b = ui_b.csrf(B_ID);
    assert_ne!(csrf_a, csrf_b, "one CSRF token per login");

    // Every id trick is 404: another tenant's id, `..`, encoded slashes
    // and dots, a symlink to another tenant's session (under its own id or
    // another), a bundle file linked into another tenant.
    let b_dir = h.join("tenants/b/sessions").join(B_ID);
    let a_sessions = h.join("tenants/a/sessions");
    std::os::unix::fs::symlink(&b_dir, a_sessions.join(B_ID)).expect("symlink");
    std::os::unix::fs::symlink(&b_dir, a_sessions.join("20261204-130000-linked")).expect("symlink");
    let half = a_sessions.join("20261204-140000-halfln");
    std::fs::create_dir(&half).expect("mkdir");
    for file in ["session.json", "capabilities.cap"] {
        std::fs::copy(b_dir.join(file), half.join(file)).expect("copy");
    }
    std::os::unix::fs::symlink(b_dir.join("receipts.jsonl"), half.join("receipts.jsonl"))
        .expect("symlink");
    for id in [
        B_ID.to_owned(),
        "20261204-130000-linked".into(),
        "20261204-140000-halfln".into(),
        "..".into(),
        format!("..%2F..%2Fb%2Fsessions%2F{B_ID}"),
        format!("%2e%2e%2fb%2fsessions%2f{B_ID}"),
        format!("../../tenants/b/sessions/{B_ID}"),
        format!("{A_ID}%00"),
    ] {
        for tail in ["", "/events", "/bundle.tar.gz"] {
            let path = format!("/ui/sessions/{id}{tail}");
            assert_eq!(ui_a.get(&path).status, 404, "{path}");
        }
        let r = ui_a.answer(&id, 1, Some(&csrf_a));
        assert_eq!(r.status, 404, "answer to {id}");
    }
    assert_eq!(ui_a.listed(), [A_ID], "links are not listed");
    assert_eq!(ui_b.get(&format!("/ui/sessions/{A_ID}")).status, 404);

    // The bundle of an ended session: its own tenant only.
    let bundle = ui_a.get(&format!("/ui/sessions/{A_ID}/bundle.tar.gz"));
    assert_eq!(bundle.status, 200);
    assert_eq!(
        bundle.header("content-type").as_deref(),
        Some("application/gzip")
    );
    assert_eq!(
        ui_b.get(&format!("/ui/sessions/{A_ID}/bundle.tar.gz"))
            .status,
        404
    );

    // Answers need this login's CSRF token (not another login's); the
    // one with it reaches the ended session (409) and is audited.
    assert_eq!(ui_a.answer(A_ID, 1, None).status, 403);
    assert_eq!(ui_a.answer(A_ID, 1, Some(&csrf_b)).status, 403);
    let evil = http(
        addr,
        "POST",
        &format!("/ui/sessions/{A_ID}/approvals"),
        &[
            ui_a.cookie_line(),
            "Origin: http://evil.example".to_owned(),
            format!("x-openclaw-csrf: {csrf_a}"),
        ],
        Some(("application/json", "{\"id\":1,\"approve\":true}")),
    );
    assert_eq!(evil.status, 403, "another origin");
    let ended = ui_a.answer(A_ID, 1, Some(&csrf_a));
    assert_eq!(ended.status, 409, "{}", ended.body);
    let answers: Vec<Value> = audit_lines(h)
        .into_iter()
        .filter(|l| l["action"] == "approval.answer")
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["via"], "ui");
    assert_eq!(answers[0]["actor"], "tenant");
    assert_eq!(answers[0]["tenant"], "a");
    assert_eq!(answers[0]["target"], format!("{A_ID}/1"));
    assert_eq!(answers[0]["outcome"], "refused");

    // The token rotated: its login stops at the next request; the other
    // tenant's goes on; the new token logs in.
    let a2 = cli(h, &["tenants", "token", "rotate", "a"]);
    assert_eq!(ui_a.get("/ui/api/sessions").status, 401);
    let again = ui_a.get("/ui/");
    assert_eq!(
        (again.status, again.header("location")),
        (303, Some("/ui/login".into()))
    );
    assert_eq!(ui_b.listed(), [B_ID]);
    let ui_a2 = login(&d, &a2);
    assert_eq!(ui_a2.listed(), [A_ID]);
    let stale = login_with(addr, &a, std::slice::from_ref(&origin));
    assert_eq!(stale.status, 401, "the old token cannot log in");

    // The tenant deleted: its login stops.
    cli(h, &["tenants", "delete", "b"]);
    assert_eq!(ui_b.get("/ui/api/sessions").status, 401);

    // Logout needs the CSRF token (form field or header), then the cookie
    // is worth nothing even if the browser kept it.
    let no_csrf = http(
        addr,
        "POST",
        "/ui/logout",
        &[ui_a2.cookie_line(), origin.clone()],
        Some(("application/x-www-form-urlencoded", "csrf=00")),
    );
    assert_eq!(no_csrf.status, 403);
    assert_eq!(ui_a2.listed(), [A_ID]);
    let csrf_a2 = ui_a2.csrf(A_ID);
    let out = http(
        addr,
        "POST",
        "/ui/logout",
        &[ui_a2.cookie_line(), origin.clone()],
        Some((
            "application/x-www-form-urlencoded",
            &format!("csrf={csrf_a2}"),
        )),
    );
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(out.header("location").as_deref(), Some("/ui/login"));
    assert!(out
        .header("set-cookie")
        .is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(ui_a2.get("/ui/api/sessions").status, 401);

    // The API is untouched by the UI's cookie, and no token or login
    // cookie is in the daemon's log or the audit log.
    let api = call(&d, "GET", "/v1/sessions", None, None);
    assert_eq!(api.status, 401);
    let cookies = [
        ui_a.cookie.clone(),
        ui_a2.cookie.clone(),
        ui_b.cookie.clone(),
    ];
    drop(d);
    let log_text = std::fs::read_to_string(&log).expect("log");
    let audit_text = std::fs::read_to_string(h.join("audit.jsonl")).expect("audit");
    for secret in [&a, &a2, &b].into_iter().chain(&cookies) {
        assert!(!log_text.contains(secret.as_str()), "a secret in the log");
        assert!(
            !audit_text.contains(secret.as_str()),
            "a secret in the audit"
        );
    }
}

/// The UI's live stream of a session, past its status line (200).
fn open_stream(ui: &Browser, id: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(ui.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        stream,
        "GET /ui/sessions/{id}/events HTTP/1.1\r\nHost: {}\r\n{}\r\nConnection: close\r\n\r\n",
        ui.addr,
        ui.cookie_line()
    )
    .expect("send");
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    assert!(status.contains(" 200 "), "{status}");
    reader
}

/// Reads the UI's live stream of a session until a message has a pending
/// approval; returns its id.
fn first_pending_in_stream(ui: &Browser, id: &str) -> u64 {
    let mut reader = open_stream(ui, id);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).expect("read") == 0 {
            break;
        }
        let Some(data) = line.trim().strip_prefix("data: ") else {
            continue;
        };
        let message: Value = serde_json::from_str(data).expect("message");
        if let Some(first) = message["pending"].get(0) {
            assert_eq!(first["action"]["path"], "/held", "{first}");
            return first["id"].as_u64().expect("approval id");
        }
    }
    panic!("no pending approval in the UI's stream of {id}");
}

fn create(d: &Daemon, token: &str, body: &Value) -> String {
    let r = call(
        d,
        "POST",
        "/v1/sessions",
        Some(token),
        Some(&body.to_string()),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

#[test]
fn an_approval_answered_in_the_ui_is_receipted_and_audited() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let b = cli(h, &["tenants", "create", "b"]);
    let d = start(h, &logs.path().join("serve.log"));
    let id = create(
        &d,
        &a,
        &json!({"capabilities": mint_for_tenant(h, "a", POLICY_HELD),
                "command": ["sh", "-c", HOLDS], "approve": "api"}),
    );
    let ui_a = login(&d, &a);
    let ui_b = login(&d, &b);
    let rows = ui_a.get("/ui/api/sessions").json();
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["live"], true, "{rows}");

    // The live page: its stream shows the held request; another tenant's
    // login gets nothing of it.
    let page = ui_a.get(&format!("/ui/sessions/{id}"));
    assert!(
        page.body.contains(&format!("/ui/sessions/{id}/events")),
        "a live page"
    );
    assert_eq!(ui_b.get(&format!("/ui/sessions/{id}/events")).status, 404);
    assert_eq!(ui_b.get(&format!("/ui/sessions/{id}")).status, 404);
    let approval = first_pending_in_stream(&ui_a, &id);
    let csrf = ui_a.csrf(&id);
    let csrf_b = ui_b.csrf_of_list();
    assert_eq!(ui_b.answer(&id, approval, Some(&csrf_b)).status, 404);

    let answered = ui_a.answer(&id, approval, Some(&csrf));
    assert_eq!(answered.status, 200, "{}", answered.body);
    assert_eq!(answered.json()["ok"], true);
    let again = ui_a.answer(&id, approval, Some(&csrf));
    assert_eq!(again.status, 409, "answered once: {}", again.body);

    // A live stream open when the token is rotated ends while the session
    // still runs: the login is re-checked at every refresh.
    let mut stream = open_stream(&ui_a, &id);
    let a2 = cli(h, &["tenants", "token", "rotate", "a"]);
    let mut rest = String::new();
    stream.read_to_string(&mut rest).expect("the stream ends");
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(h.join("tenants/a/sessions").join(&id).join("session.json"))
            .expect("session.json"),
    )
    .expect("json");
    assert_eq!(info["status"], "running", "ended before the session did");
    assert_eq!(ui_a.get(&format!("/ui/sessions/{id}")).status, 303);

    let stopped = call(
        &d,
        "POST",
        &format!("/v1/sessions/{id}/stop"),
        Some(&a2),
        None,
    );
    assert_eq!(stopped.status, 202);
    wait_ended(h, "a", &id);
    let dir = h.join("tenants/a/sessions").join(&id);
    assert_eq!(
        approval_receipts(&dir),
        [(true, "ui:a".to_owned())],
        "the receipt names the UI and the tenant"
    );
    let answers: Vec<Value> = audit_lines(h)
        .into_iter()
        .filter(|l| l["action"] == "approval.answer")
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    let target = format!("{id}/{approval}");
    assert_eq!(
        (
            &answers[0]["via"],
            &answers[0]["tenant"],
            &answers[0]["target"],
            &answers[0]["outcome"],
            &answers[0]["detail"]
        ),
        (
            &json!("ui"),
            &json!("a"),
            &json!(target),
            &json!("ok"),
            &json!("approved")
        )
    );
    assert_eq!(answers[1]["outcome"], "refused", "{}", answers[1]);
}

impl Browser<'_> {
    /// The CSRF token of this login from the list page's logout form.
    fn csrf_of_list(&self) -> String {
        let list = self.get("/ui/");
        let start = list
            .body
            .find("name=\"csrf\" value=\"")
            .expect("logout form")
            + 19;
        list.body[start..start + 64].to_owned()
    }
}

#[test]
fn the_session_list_follows_new_and_ended_sessions() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let d = start(h, &logs.path().join("serve.log"));
    let ui = login(&d, &a);
    let api_rows = || {
        let r = call(&d, "GET", "/v1/sessions", Some(&a), None);
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["sessions"].clone()
    };
    assert_eq!(ids_of(&api_rows()), Vec::<String>::new());

    // A bundle that appears is in the next list, API and UI.
    write_session(h, "a", A_ID);
    assert_eq!(ids_of(&api_rows()), [A_ID]);
    assert_eq!(ui.listed(), [A_ID]);

    // A session started over the API is listed running at once, and
    // completed once it ended.
    let id = create(
        &d,
        &a,
        &json!({"capabilities": mint_for_tenant(h, "a", POLICY), "command": ["sleep", "1"]}),
    );
    let rows = api_rows();
    assert_eq!(ids_of(&rows), [id.as_str(), A_ID]);
    assert_eq!(
        (&rows[0]["status"], &rows[0]["live"]),
        (&json!("running"), &json!(true))
    );
    wait_ended(h, "a", &id);
    let rows = api_rows();
    assert_eq!(rows[0]["status"], "completed", "{}", rows[0]);
    assert_eq!(rows[0]["live"], false);
    let ui_rows = ui.get("/ui/api/sessions").json();
    assert_eq!(ui_rows[0]["status"], "completed", "{}", ui_rows[0]);

    // A bundle removed is gone from the next list.
    std::fs::remove_dir_all(h.join("tenants/a/sessions").join(A_ID)).expect("rm");
    assert_eq!(ids_of(&api_rows()), [id.as_str()]);
    assert_eq!(ui.listed(), [id.as_str()]);
}

/// `GET /v1/sessions` per second with `OPENCLAW_LIST_SESSIONS` (12) ended
/// sessions (one-receipt chains) over 8 connections for 3 s; `OPENCLAW_LIST_BIN` names another
/// build of `openclaw` to compare (an older one, say). A measurement, not a
/// check: run by hand.
#[test]
#[ignore = "a measurement: cargo test --test serve_ui -- --ignored --nocapture list_rate"]
fn list_rate() {
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let bin = std::env::var("OPENCLAW_LIST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_openclaw").to_owned());
    let token = cli(h, &["tenants", "create", "a"]);
    let sessions: usize = std::env::var("OPENCLAW_LIST_SESSIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12);
    for n in 0..sessions {
        write_session(h, "a", &format!("20261204-12{n:04}-aaaaaa"));
    }
    let mut child = Command::new(&bin)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("OPENCLAW_HOME", h)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let addr = line
        .trim()
        .trim_start_matches("listening on http://")
        .to_owned();
    let daemon = Daemon { child, addr };
    let run = Duration::from_secs(3);
    let started = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while started.elapsed() < run {
                        let r = http(
                            &daemon.addr,
                            "GET",
                            "/v1/sessions",
                            &[format!("Authorization: Bearer {token}")],
                            None,
                        );
                        assert_eq!(r.status, 200);
                        assert_eq!(
                            r.json()["sessions"].as_array().map(Vec::len),
                            Some(sessions)
                        );
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let total: u64 = counts.iter().sum();
    println!(
        "GET /v1/sessions, {sessions} sessions, {bin}: {:.0} req/s ({total} in {:?})",
        total as f64 / started.elapsed().as_secs_f64(),
        started.elapsed()
    );
}

/// UI logins are capped per tenant (the tenant's oldest goes): tenant a
/// logging in 4,096 times (the old shared cap) ends only its own oldest
/// logins, and tenant b's user stays logged in.
#[test]
fn one_tenant_cannot_end_another_tenants_ui_logins() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let b = cli(h, &["tenants", "create", "b"]);
    let d = start(h, &logs.path().join("serve.log"));
    let victim = login(&d, &b);
    assert_eq!(victim.get("/ui/api/sessions").status, 200, "b is logged in");
    let first_of_a = login(&d, &a);
    for _ in 0..4096 {
        login(&d, &a);
    }
    let after = victim.get("/ui/api/sessions");
    assert_eq!(
        after.status, 200,
        "tenant a's 4,096 logins ended tenant b's: {}",
        after.body
    );
    assert_ne!(
        first_of_a.get("/ui/api/sessions").status,
        200,
        "a's oldest login went to make room for its newest"
    );
}
