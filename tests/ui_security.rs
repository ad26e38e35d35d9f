//! `openclaw ui` from the outside, over raw HTTP on loopback: the access
//! token becomes an HttpOnly SameSite=Strict cookie, nothing is served
//! without it, answers need the CSRF header, other Host names, other
//! origins, non-loopback addresses and path tricks are refused, and no CORS
//! header is ever sent.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod support;

use support::raw_http::{exchange, Reply};

struct Ui {
    child: Child,
    addr: SocketAddr,
    token: String,
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_ui(home: &Path) -> Ui {
    let mut child = Command::new(env!("CARGO_BIN_EXE_openclaw"))
        .args(["ui", "--addr", "127.0.0.1:0"])
        .env("OPENCLAW_HOME", home)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openclaw ui");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the URL line");
    let rest = line
        .trim()
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{line}"));
    let (addr, query) = rest.split_once("/?token=").expect("token in the URL");
    Ui {
        child,
        addr: addr.parse().expect("addr"),
        token: query.to_owned(),
    }
}

fn http(addr: SocketAddr, request: &str) -> Reply {
    exchange(addr, request, Duration::from_secs(10))
}

fn get(ui: &Ui, path: &str, extra: &str) -> Reply {
    http(
        ui.addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra}\r\n",
            ui.addr
        ),
    )
}

fn post(ui: &Ui, path: &str, extra: &str, body: &str) -> Reply {
    http(
        ui.addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            ui.addr,
            body.len()
        ),
    )
}

/// A session bundle that says it is running but has no supervisor.
fn fake_session(home: &Path, id: &str) {
    let dir = home.join("sessions").join(id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let info = serde_json::json!({
        "id": id, "status": "running", "backend": "netns", "backend_reason": "test",
        "started_at": "2026-11-22T04:00:00Z", "ended_at": null, "sandbox_ready_ms": 12,
        "command": ["/bin/true"], "task": null, "exit_code": null,
        "capabilities": {"summary": "1 grant, 0 constraints", "grants": [], "revocation_ids": [], "expires_at": null},
        "ca_fingerprint": "00", "receipt_key_id": "none", "resolve": [], "upstream_ca": [],
        "supervisor_pid": std::process::id(),
    });
    std::fs::write(dir.join("session.json"), info.to_string()).expect("write");
}

#[test]
fn token_cookie_csrf_host_and_cors_rules() {
    let home = tempfile::tempdir().expect("tempdir");
    let id = "20261122-040000-abcdef";
    fake_session(home.path(), id);
    let ui = start_ui(home.path());

    // No cookie: nothing, not even the list or the API.
    for path in ["/", "/api/sessions", &format!("/sessions/{id}")] {
        let r = get(&ui, path, "");
        assert_eq!(r.status, 401, "{path}: {}", r.head);
        assert!(!r.body.contains(id), "{path} leaked the session list");
    }
    assert_eq!(get(&ui, "/?token=0000", "").status, 401);

    // The token is traded for an HttpOnly, SameSite=Strict cookie and
    // dropped from the URL by a redirect.
    let r = get(&ui, &format!("/?token={}", ui.token), "");
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(r.header("location").as_deref(), Some("/"));
    let set_cookie = r.header("set-cookie").expect("cookie set");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie_pair = set_cookie.split(';').next().expect("pair").to_owned();
    let cookie = format!("Cookie: {cookie_pair}\r\n");

    let list = get(&ui, "/", &cookie);
    assert_eq!(list.status, 200, "{}", list.head);
    assert!(list.body.contains(id));
    let csp = list.header("content-security-policy").expect("CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let api = get(&ui, "/api/sessions", &cookie);
    assert_eq!(api.status, 200);
    let rows: serde_json::Value = serde_json::from_str(&api.body).expect("json");
    // It says running, but nothing serves its control socket: stale.
    assert_eq!(rows[0]["id"], id);
    assert_eq!(rows[0]["status"], "stale");

    // The session page carries the CSRF token the page must echo.
    let page = get(&ui, &format!("/sessions/{id}"), &cookie);
    assert_eq!(page.status, 200, "{}", page.head);
    let csrf = page
        .body
        .split("\"csrf_token\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf token in the page")
        .to_owned();
    assert_eq!(csrf.len(), 64);
    assert_ne!(csrf, ui.token);

    let answers = format!("/sessions/{id}/approvals");
    let body = r#"{"id":1,"approve":true}"#;
    // Cookie without CSRF header: refused before anything is asked.
    assert_eq!(post(&ui, &answers, &cookie, body).status, 403);
    // CSRF header without cookie: refused.
    let csrf_header = format!("x-openclaw-csrf: {csrf}\r\n");
    assert_eq!(post(&ui, &answers, &csrf_header, body).status, 401);
    // Wrong CSRF value, and a cross-origin post with the right one.
    assert_eq!(
        post(
            &ui,
            &answers,
            &format!("{cookie}x-openclaw-csrf: {}\r\n", "0".repeat(64)),
            body
        )
        .status,
        403
    );
    assert_eq!(
        post(
            &ui,
            &answers,
            &format!("{cookie}{csrf_header}Origin: http://evil.example\r\n"),
            body
        )
        .status,
        403
    );
    // Both: it reaches the session, which is not running.
    let r = post(&ui, &answers, &format!("{cookie}{csrf_header}"), body);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("not running"), "{}", r.body);

    // Not live (no control socket): its bundle downloads as a tar.gz.
    let r = get(&ui, &format!("/sessions/{id}/bundle.tar.gz"), &cookie);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/gzip")
    );
    assert!(
        r.header("content-disposition")
            .is_some_and(|d| d.contains(&format!("openclaw-session-{id}.tar.gz"))),
        "{}",
        r.head
    );
    assert_eq!(
        get(&ui, &format!("/sessions/{id}/bundle.tar.gz"), "").status,
        401
    );

    // Another Host name (DNS rebinding) gets nothing, cookie or not.
    let r = http(
        ui.addr,
        &format!(
            "GET / HTTP/1.1\r\nHost: evil.example:{}\r\nConnection: close\r\n{cookie}\r\n",
            ui.addr.port()
        ),
    );
    assert_eq!(r.status, 421);

    // Path tricks do not leave the sessions directory.
    for path in [
        "/sessions/../keys",
        "/sessions/..%2fkeys",
        "/sessions/.%2e/x",
        "/sessions/%2e%2e",
        "/sessions/a%00b",
    ] {
        let r = get(&ui, path, &cookie);
        assert_eq!(r.status, 404, "{path}: {}", r.head);
    }

    // A preflight or cross-origin read gets no CORS grant anywhere.
    let r = http(
        ui.addr,
        &format!(
            "OPTIONS {answers} HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n{cookie}\r\n",
            ui.addr
        ),
    );
    assert_ne!(r.status, 200);
    for reply in [&r, &list, &api, &page] {
        assert!(
            !reply.head.to_ascii_lowercase().contains("access-control-"),
            "{}",
            reply.head
        );
    }
}

#[test]
fn refuses_a_non_loopback_address_without_the_flag() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_openclaw"))
        .args(["ui", "--addr", "0.0.0.0:0"])
        .env("OPENCLAW_HOME", home.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not loopback") && stderr.contains("--allow-remote"),
        "{stderr}"
    );
}
