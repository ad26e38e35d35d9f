//! `openclaw serve` from the outside: the real binary as a daemon on a free
//! loopback port, `curl` as the client. Tenant isolation against every id
//! trick (another tenant's id, `..`, `%2F`, `%2e%2e`, symlinks into another
//! tenant), tokens (wrong, rotated by the API and by the CLI, deleted),
//! admin routes refused to tenant tokens (404), audit completeness, no token
//! byte in any file or log, the OpenAPI document against what is served,
//! the SIGTERM drain, and sessions created and stopped over the API (real
//! `openclaw run` children on the netns backend: needs root).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

use support::serve::{
    call, call_with, cli, curl, mint_for, mint_for_tenant, start, start_with, wait_ended,
    write_session, Daemon, Reply, HOLDS, POLICY_HELD,
};

/// A GET whose answer may be a stream: curl with `-N`, stopped after
/// `max` seconds (an unfinished stream is not an error here); the status
/// and everything received.
fn get_stream(d: &Daemon, path: &str, token: Option<&str>, max: u32) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-i",
        "-N",
        "--path-as-is",
        "--max-time",
        &max.to_string(),
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("http://{}{path}", d.addr))
        .output()
        .expect("run curl");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

fn get(d: &Daemon, path: &str, token: Option<&str>) -> Reply {
    call(d, "GET", path, token, None)
}

/// Waits (up to 60 s) for the running session's first pending approval.
fn first_pending(d: &Daemon, token: &str, id: &str) -> Value {
    for _ in 0..600 {
        let r = get(d, &format!("/v1/sessions/{id}/approvals"), Some(token));
        assert_eq!(r.status, 200, "{:?}", r.body);
        if let Some(first) = r.body["pending"].get(0) {
            return first.clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no approval became pending in {id}");
}

fn session_ids(reply: &Reply) -> Vec<String> {
    reply.body["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{:?}", reply.body))
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            out.extend(files_under(&path));
        } else if meta.is_file() {
            out.push(path);
        }
    }
    out
}

const A_ID: &str = "20261203-120000-aaaaaa";
const B_ID: &str = "20261203-120000-bbbbbb";

#[test]
fn tenants_are_isolated_tokens_rotate_and_every_change_is_audited_without_tokens() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    let a = cli(h, &["tenants", "create", "a"]);
    let b = cli(h, &["tenants", "create", "b"]);
    assert!(admin.starts_with("tkadm_") && a.starts_with("tk_a_") && b.starts_with("tk_b_"));
    write_session(h, "a", A_ID);
    let b_dir = write_session(h, "b", B_ID);
    let log = logs.path().join("serve.log");
    let d = start(h, &log);
    let mut tokens = vec![admin.clone(), a.clone(), b.clone()];

    // Each tenant sees its own sessions only.
    assert_eq!(session_ids(&get(&d, "/v1/sessions", Some(&a))), [A_ID]);
    assert_eq!(session_ids(&get(&d, "/v1/sessions", Some(&b))), [B_ID]);
    let own = get(&d, &format!("/v1/sessions/{A_ID}"), Some(&a));
    assert_eq!(own.status, 200, "{:?}", own.body);
    assert_eq!(own.body["session"]["id"], A_ID);
    let verified = get(
        &d,
        &format!("/v1/sessions/{A_ID}/receipts/verify"),
        Some(&a),
    );
    assert_eq!(verified.status, 200, "{:?}", verified.body);
    assert_eq!(verified.body["status"], "valid", "{:?}", verified.body);
    assert_eq!(
        verified.body["receipts_file"],
        "sessions/20261203-120000-aaaaaa/receipts.jsonl"
    );

    // Every way for A to name B's session is 404, never 403, never B's data.
    let b_path = format!("b/sessions/{B_ID}");
    let tricks = [
        format!("/v1/sessions/{B_ID}"),
        format!("/v1/sessions/{B_ID}/receipts/verify"),
        format!("/v1/sessions/{B_ID}/bundle"),
        format!("/v1/sessions/../../{b_path}"),
        format!(
            "/v1/sessions/..%2F..%2F{}/bundle",
            b_path.replace('/', "%2F")
        ),
        format!("/v1/sessions/..%2F..%2F{}", b_path.replace('/', "%2F")),
        format!(
            "/v1/sessions/%2e%2e%2f%2e%2e%2f{}",
            b_path.replace('/', "%2f")
        ),
        format!("/v1/sessions/.%2e/.%2e/{b_path}"),
        "/v1/sessions/..".to_owned(),
        "/v1/sessions/%2e%2e".to_owned(),
        format!("/v1/sessions/%2F{}", b_dir.display()),
        format!("/v1/sessions/{}", b_dir.display()),
    ];
    for path in &tricks {
        let r = get(&d, path, Some(&a));
        assert_eq!((r.status, r.code()), (404, "not_found"), "{path}");
        assert!(!r.body.to_string().contains(B_ID), "{path}");
    }
    // A symlink in A's sessions/ to B's session, and a real directory whose
    // files are symlinks into B's: neither exists for A.
    let a_sessions = h.join("tenants/a/sessions");
    std::os::unix::fs::symlink(&b_dir, a_sessions.join("20261203-130000-linked")).expect("link");
    let half = a_sessions.join("20261203-140000-halflink");
    std::fs::create_dir(&half).expect("mkdir");
    for f in ["session.json", "receipts.jsonl", "capabilities.cap"] {
        std::os::unix::fs::symlink(b_dir.join(f), half.join(f)).expect("link");
    }
    for id in ["20261203-130000-linked", "20261203-140000-halflink"] {
        for path in [
            format!("/v1/sessions/{id}"),
            format!("/v1/sessions/{id}/receipts/verify"),
            format!("/v1/sessions/{id}/bundle"),
        ] {
            let r = get(&d, &path, Some(&a));
            assert_eq!(r.status, 404, "{path}: {:?}", r.body);
        }
    }
    assert_eq!(session_ids(&get(&d, "/v1/sessions", Some(&a))), [A_ID]);

    // Tokens: missing, malformed, wrong, another scheme.
    let mut wrong = a.clone();
    let last = wrong.pop().expect("non-empty");
    wrong.push(if last == '0' { '1' } else { '0' });
    for token in [
        None,
        Some(""),
        Some(wrong.as_str()),
        Some("tk_a_zz"),
        Some("nonsense"),
    ] {
        let r = get(&d, "/v1/sessions", token);
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "{token:?}");
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    }
    let basic = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", "a:b"])
        .arg(format!("http://{}/v1/sessions", d.addr))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&basic.stdout), "401");
    // Unknown paths under /v1 are 401 before anything is revealed.
    assert_eq!(get(&d, "/v1/nothing", None).status, 401);
    assert_eq!(get(&d, "/v1/nothing", Some(&a)).status, 404);

    // Admin routes are 404 to tenant tokens (and change nothing); tenant
    // routes are 404 to the admin token.
    for (method, path, body) in [
        ("GET", "/v1/tenants", None),
        ("POST", "/v1/tenants", Some(r#"{"name":"evil"}"#)),
        ("DELETE", "/v1/tenants/b", None),
        ("POST", "/v1/tenants/b/token", None),
    ] {
        let r = call(&d, method, path, Some(&a), body);
        assert_eq!((r.status, r.code()), (404, "not_found"), "{method} {path}");
    }
    assert_eq!(get(&d, "/v1/sessions", Some(&b)).status, 200, "b untouched");
    assert_eq!(get(&d, "/v1/sessions", Some(&admin)).status, 404);

    // Rotation over the API: the old token is refused at once.
    let rotated = call(&d, "POST", "/v1/tenants/a/token", Some(&admin), None);
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let rotate_request_id = rotated.header("x-request-id").expect("request id");
    let a2 = rotated.body["token"].as_str().expect("token").to_owned();
    tokens.push(a2.clone());
    assert_eq!(get(&d, "/v1/sessions", Some(&a)).status, 401, "old token");
    assert_eq!(session_ids(&get(&d, "/v1/sessions", Some(&a2))), [A_ID]);
    // Rotation at the terminal while the daemon runs: the same.
    let b2 = cli(h, &["tenants", "token", "rotate", "b"]);
    tokens.push(b2.clone());
    assert_eq!(get(&d, "/v1/sessions", Some(&b)).status, 401, "old token");
    assert_eq!(get(&d, "/v1/sessions", Some(&b2)).status, 200);

    // Tenant management over the API, with its input errors.
    let created = call(
        &d,
        "POST",
        "/v1/tenants",
        Some(&admin),
        Some(r#"{"name":"c"}"#),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let c = created.body["token"].as_str().expect("token").to_owned();
    tokens.push(c.clone());
    assert_eq!(
        get(&d, "/v1/sessions", Some(&c)).body["sessions"],
        json!([])
    );
    let again = call(
        &d,
        "POST",
        "/v1/tenants",
        Some(&admin),
        Some(r#"{"name":"c"}"#),
    );
    assert_eq!((again.status, again.code()), (409, "conflict"));
    for (body, field) in [
        (r#"{"name":"../x"}"#, "name"),
        (r#"{"name":"C"}"#, "name"),
        (r#"{"nom":"x"}"#, "body"),
        ("not json", "body"),
    ] {
        let r = call(&d, "POST", "/v1/tenants", Some(&admin), Some(body));
        assert_eq!((r.status, r.code()), (400, "invalid"), "{body}");
        assert_eq!(r.body["error"]["field"], field, "{body}");
    }
    let no_type = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-d",
            "{}",
        ])
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .args(["-H", "Content-Type: text/plain"])
        .arg(format!("http://{}/v1/tenants", d.addr))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&no_type.stdout), "415");
    let bad_name = call(&d, "DELETE", "/v1/tenants/..%2Fa", Some(&admin), None);
    assert_eq!(
        (bad_name.status, bad_name.body["error"]["field"].as_str()),
        (400, Some("name"))
    );
    let listed = get(&d, "/v1/tenants", Some(&admin));
    let names: Vec<&str> = listed.body["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    let deleted = call(&d, "DELETE", "/v1/tenants/c", Some(&admin), None);
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert_eq!(
        get(&d, "/v1/sessions", Some(&c)).status,
        401,
        "deleted tenant"
    );
    assert_eq!(
        call(&d, "DELETE", "/v1/tenants/c", Some(&admin), None).status,
        404
    );

    // Usage: scoped to the tenant; the admin sees all or one.
    let mine = get(&d, "/v1/usage?period=today", Some(&a2));
    assert_eq!(mine.status, 200, "{:?}", mine.body);
    assert_eq!(mine.body["tenant"], "a");
    assert_eq!(get(&d, "/v1/usage?tenant=b", Some(&a2)).status, 404);
    assert_eq!(get(&d, "/v1/usage?tenant=a", Some(&a2)).status, 200);
    let bad = get(&d, "/v1/usage?period=someday", Some(&a2));
    assert_eq!(
        (bad.status, bad.body["error"]["field"].as_str()),
        (400, Some("period"))
    );
    let bad = get(&d, "/v1/usage?by=color", Some(&a2));
    assert_eq!(
        (bad.status, bad.body["error"]["field"].as_str()),
        (400, Some("by"))
    );
    let all = get(&d, "/v1/usage", Some(&admin));
    assert_eq!(all.status, 200);
    assert!(all.body.get("tenant").is_none(), "{:?}", all.body);

    // The audit log: one line per state change that reached the registry
    // (refused ones included), in order, each with its request id.
    let audit = cli(h, &["audit"]);
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let summary: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("-").to_owned();
            (s("action"), s("target"), s("via"), s("outcome"))
        })
        .collect();
    let expect = |action: &str, target: &str, via: &str, outcome: &str| {
        (
            action.to_owned(),
            target.to_owned(),
            via.to_owned(),
            outcome.to_owned(),
        )
    };
    assert_eq!(
        summary,
        [
            expect("admin.token.set", "admin", "cli", "ok"),
            expect("tenant.create", "a", "cli", "ok"),
            expect("tenant.create", "b", "cli", "ok"),
            expect("tenant.token.rotate", "a", "api", "ok"),
            expect("tenant.token.rotate", "b", "cli", "ok"),
            expect("tenant.create", "c", "api", "ok"),
            expect("tenant.create", "c", "api", "refused"),
            expect("tenant.delete", "c", "api", "ok"),
            expect("tenant.delete", "c", "api", "refused"),
        ]
    );
    assert_eq!(lines[3]["request_id"], rotate_request_id.as_str());
    assert!(lines
        .iter()
        .all(|l| l["actor"] == "admin" && l["time"].is_string()));
    let only_b = cli(h, &["audit", "--tenant", "b", "--since", "1h"]);
    assert_eq!(only_b.lines().count(), 2, "{only_b}");

    // SIGTERM, then no token byte anywhere: the home (database, WAL, audit,
    // tenant directories), the daemon's debug log, the audit command's output.
    kill_term(&d);
    let mut d = d;
    let status = wait_exit(&mut d.child);
    assert_eq!(status.code(), Some(0));
    let mut files = files_under(h);
    files.push(log.clone());
    assert!(files.iter().any(|f| f.ends_with("control.db")));
    assert!(
        std::fs::metadata(&log).expect("log").len() > 0,
        "debug logging happened"
    );
    for token in &tokens {
        for file in &files {
            let bytes = std::fs::read(file).expect("read");
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "a token is in {}",
                file.display()
            );
        }
        assert!(!audit.contains(token.as_str()));
    }
}

fn kill_term(d: &Daemon) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(d.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
}

/// Waits for the child to exit (a hang is a failure, reported after a minute).
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the daemon did not exit after SIGTERM");
}

#[test]
fn sigterm_closes_idle_connections_stops_listening_and_exits_zero() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let mut d = start(home.path(), &logs.path().join("serve.log"));
    assert_eq!(get(&d, "/healthz", None).body, json!({"status": "ok"}));
    // An idle keep-alive connection does not hold the drain up.
    let idle = std::net::TcpStream::connect(&d.addr).expect("connect");
    kill_term(&d);
    let status = wait_exit(&mut d.child);
    assert_eq!(status.code(), Some(0));
    drop(idle);
    assert!(
        std::net::TcpStream::connect(&d.addr).is_err(),
        "no longer listening"
    );
}

/// The receive queue (bytes not yet read by the daemon) of the daemon's
/// end of the connection from `client` to `server`, from /proc/net/tcp.
fn server_rx_queue(server: std::net::SocketAddr, client: std::net::SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |f: &str| u16::from_str_radix(f.rsplit_once(':')?.1, 16).ok();
        if port(fields.get(1)?)? != server.port() || port(fields.get(2)?)? != client.port() {
            return None;
        }
        let (_, rx) = fields.get(4)?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    use std::io::{Read, Write};
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let admin = cli(home.path(), &["tenants", "admin-token"]);
    let mut d = start(home.path(), &logs.path().join("serve.log"));
    let server: std::net::SocketAddr = d.addr.parse().expect("addr");
    let mut conn = std::net::TcpStream::connect(server).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let body = r#"{"name":"late"}"#;
    let (first, rest) = body.split_at(5);
    write!(
        conn,
        "POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    )
    .expect("send head");
    // In flight: the daemon has read the head and part of the body (its
    // receive queue is empty) and waits for the rest.
    let client = conn.local_addr().expect("local addr");
    for _ in 0..300 {
        if server_rx_queue(server, client) == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        server_rx_queue(server, client),
        Some(0),
        "the daemon read the head"
    );
    kill_term(&d);
    // New connections are refused once the listener is closed, while the
    // request in flight is still being served.
    let mut refused = false;
    for _ in 0..300 {
        if std::net::TcpStream::connect(server).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(refused, "the listener closed after SIGTERM");
    conn.write_all(rest.as_bytes()).expect("send the rest");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    assert!(reply.contains("\"name\":\"late\""), "{reply}");
    assert_eq!(wait_exit(&mut d.child).code(), Some(0));
    assert!(home.path().join("tenants/late/keys/root.pub").is_file());
}

/// The session's supervisor (its `openclaw run`) from session.json.
fn supervisor_of(home: &Path, tenant: &str, id: &str) -> i32 {
    let path = home.join("tenants").join(tenant).join("sessions").join(id);
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(path.join("session.json")).expect("session.json"),
    )
    .expect("json");
    i32::try_from(info["supervisor_pid"].as_u64().expect("a supervisor")).expect("pid")
}

/// Whether `pid` runs (a zombie has exited: this host's pid 1 may never
/// reap the orphans of a killed daemon).
fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
    })
}

/// The session's chain checked through the (new) daemon's API.
fn assert_chain_valid(d: &Daemon, token: &str, id: &str) {
    let verified = get(
        d,
        &format!("/v1/sessions/{id}/receipts/verify"),
        Some(token),
    );
    assert_eq!(verified.status, 200, "{:?}", verified.body);
    assert_eq!(verified.body["status"], "valid", "{:?}", verified.body);
}

/// The drain: SIGTERM closes the listener, a create whose request was in
/// flight is answered 503 (and audited as refused), the running session is
/// signalled and ends `interrupted` with its chain closed, and the daemon
/// exits 0 once it has.
#[test]
fn sigterm_stops_running_sessions_with_their_chains_closed_and_starts_none() {
    use std::io::{Read, Write};
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let cap = mint_for(h, "a");
    let mut d = start(h, &logs.path().join("serve.log"));
    let created = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"capabilities": cap, "command": ["sleep", "300"]}),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let pid = supervisor_of(h, "a", &id);
    assert!(runs(pid));

    // A create in flight: head and half the body read by the daemon.
    let server: std::net::SocketAddr = d.addr.parse().expect("addr");
    let mut conn = std::net::TcpStream::connect(server).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = json!({"capabilities": cap, "command": ["sleep", "300"]}).to_string();
    let (first, rest) = body.split_at(10);
    write!(
        conn,
        "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {a}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    )
    .expect("send head");
    let client = conn.local_addr().expect("local addr");
    for _ in 0..300 {
        if server_rx_queue(server, client) == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        server_rx_queue(server, client),
        Some(0),
        "the daemon read the head"
    );
    kill_term(&d);
    let mut refused = false;
    for _ in 0..300 {
        if std::net::TcpStream::connect(server).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(refused, "the listener closed after SIGTERM");
    conn.write_all(rest.as_bytes()).expect("send the rest");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("\"code\":\"unavailable\""), "{reply}");

    assert_eq!(wait_exit(&mut d.child).code(), Some(0));
    assert!(
        !runs(pid),
        "the session's process ended before the daemon did"
    );
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(h.join("tenants/a/sessions").join(&id).join("session.json"))
            .expect("session.json"),
    )
    .expect("json");
    assert_eq!(info["status"], "interrupted", "{info}");
    let sessions = std::fs::read_dir(h.join("tenants/a/sessions"))
        .expect("sessions")
        .count();
    assert_eq!(sessions, 1, "the refused create started nothing");
    let audit = std::fs::read_to_string(h.join("audit.jsonl")).expect("audit");
    let refused_line = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
        .find(|l| l["action"] == "session.create" && l["outcome"] == "refused")
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(refused_line["detail"], "the daemon is shutting down");

    // A new daemon finds nothing to settle; the chain verifies.
    let d2 = start(h, &logs.path().join("serve2.log"));
    assert_chain_valid(&d2, &a, &id);
}

/// A daemon SIGKILLed with a session running: the session's process
/// (its `openclaw run`, the daemon's child) is told at once (its parent
/// death signal, SIGTERM) and ends as a stop request ends it — sandbox
/// stopped, chain closed with an interrupted `session_end` — without
/// waiting for the next daemon, so it never runs past its lease uncounted.
#[test]
fn a_killed_daemons_sessions_end_with_it_and_close_their_chains() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let cap = mint_for(h, "a");
    let mut d = start(h, &logs.path().join("serve.log"));
    let created = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"capabilities": cap, "command": ["sleep", "300"]}),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let pid = supervisor_of(h, "a", &id);
    assert!(runs(pid));
    d.child.kill().expect("SIGKILL the daemon");
    d.child.wait().expect("reap the daemon");
    // Generous: the point is that it ends by itself, not how fast.
    let deadline = Instant::now() + Duration::from_secs(90);
    while runs(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let still = runs(pid);
    if still {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    assert!(!still, "session {id} (pid {pid}) outlived its daemon");
    let bundle = h.join("tenants/a/sessions").join(&id);
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("session.json")).expect("session.json"),
    )
    .expect("json");
    assert_eq!(info["status"], "interrupted", "{info}");
    let receipts = std::fs::read_to_string(bundle.join("receipts.jsonl")).expect("receipts");
    assert!(
        receipts
            .lines()
            .last()
            .is_some_and(|l| l.contains("session_end")),
        "the chain is closed: {receipts}"
    );
    let d2 = start(h, &logs.path().join("serve2.log"));
    assert_chain_valid(&d2, &a, &id);
}

/// Restart recovery: the daemon is SIGKILLed while two sessions of its
/// tenant are marked running. One is an `openclaw run` started by hand into
/// the tenant's sessions directory (no child of the daemon: it outlives
/// it, an orphan); the other is the daemon's own, frozen (SIGSTOP) so that
/// it cannot act on its daemon's death, then SIGKILLed. The next daemon,
/// before it listens, stops the orphan (its runner closes the chain:
/// `interrupted`) and recovers the other (`supervisor_died`, chain closed
/// by the daemon); both chains verify.
#[test]
fn a_restarted_daemon_stops_orphans_and_recovers_the_dead_ones_sessions() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let cap = mint_for(h, "a");
    let mut d = start(h, &logs.path().join("serve.log"));
    let created = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"capabilities": cap, "command": ["sleep", "300"]}),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let dead = created.body["id"].as_str().expect("id").to_owned();
    let dead_pid = supervisor_of(h, "a", &dead);
    // The orphan: run by hand, as the daemon would run it.
    let root = h.join("tenants/a");
    let cap_file = logs.path().join("orphan.cap");
    std::fs::write(&cap_file, &cap).expect("cap file");
    let mut by_hand = Command::new(env!("CARGO_BIN_EXE_openclaw"));
    by_hand
        .arg("run")
        .arg("--capabilities")
        .arg(&cap_file)
        .arg("--pubkey")
        .arg(root.join("keys/root.pub"))
        .arg("--receipt-key")
        .arg(root.join("keys/receipt.key"))
        .arg("--sessions-dir")
        .arg(root.join("sessions"))
        .arg("--home")
        .arg(h)
        .args(["--backend", "netns", "--approve", "deny", "--tenant", "a"])
        .args(["--", "sleep", "300"])
        .env("OPENCLAW_HOME", h)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut orphan_child = by_hand.spawn().expect("openclaw run by hand");
    let orphan = support::wait_until("the orphan's session", Duration::from_secs(60), || {
        std::fs::read_dir(root.join("sessions"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|id| {
                // Ready as the daemon counts it: its runner watches for
                // SIGTERM from then on.
                let dir = root.join("sessions").join(id);
                let ready = std::fs::read_to_string(dir.join("session.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .is_some_and(|info| {
                        !info["sandbox_ready_ms"].is_null() && !info["supervisor_pid"].is_null()
                    });
                *id != dead && ready && dir.join("control.sock").exists()
            })
    });
    let orphan_pid = supervisor_of(h, "a", &orphan);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead_pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("freeze one session's process");
    d.child.kill().expect("SIGKILL the daemon");
    d.child.wait().expect("reap the daemon");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL one session's process");
    for _ in 0..300 {
        if !runs(dead_pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!runs(dead_pid));
    assert!(runs(orphan_pid), "the other outlived the daemon");
    for id in [&orphan, &dead] {
        let info: Value = serde_json::from_str(
            &std::fs::read_to_string(h.join("tenants/a/sessions").join(id).join("session.json"))
                .expect("session.json"),
        )
        .expect("json");
        assert_eq!(info["status"], "running", "{info}");
    }

    // Settled before the new daemon listens.
    let d2 = start(h, &logs.path().join("serve2.log"));
    let _ = orphan_child.wait();
    assert!(!runs(orphan_pid), "the orphan was stopped");
    let list = get(&d2, "/v1/sessions", Some(&a));
    let status_of = |id: &str| {
        list.body["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("{:?}", list.body))["status"]
            .clone()
    };
    assert_eq!(status_of(&orphan), "interrupted", "{:?}", list.body);
    assert_eq!(status_of(&dead), "supervisor_died", "{:?}", list.body);
    for id in [&orphan, &dead] {
        assert_chain_valid(&d2, &a, id);
        let receipts =
            std::fs::read_to_string(h.join("tenants/a/sessions").join(id).join("receipts.jsonl"))
                .expect("receipts");
        assert!(
            receipts
                .lines()
                .last()
                .is_some_and(|l| l.contains("session_end")),
            "{id}: the chain is closed"
        );
    }
}

/// Identity through a trusted reverse proxy: the same requests from
/// 127.0.0.1 to a daemon trusting 127.0.0.1/32 and to one trusting only
/// 10.0.0.0/8. Trusted: the header names the user (the session's `--user`,
/// the audit actor `user` with the name), a bad value is 400 naming the
/// header, after the token (no token is still 401). Untrusted: the header is
/// ignored, whatever it holds; the tenant acts.
#[test]
fn a_trusted_proxys_identity_header_names_the_user_and_an_untrusted_ones_is_ignored() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let cap = mint_for(h, "a");
    let body = json!({"capabilities": cap, "command": ["true"]}).to_string();
    let alice = "X-Remote-User: alice@example.com";
    let user_of = |id: &str| -> Value {
        let info: Value = serde_json::from_str(
            &std::fs::read_to_string(h.join("tenants/a/sessions").join(id).join("session.json"))
                .expect("session.json"),
        )
        .expect("json");
        info["user"].clone()
    };
    let last_create = || -> Value {
        let audit = std::fs::read_to_string(h.join("audit.jsonl")).expect("audit");
        audit
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
            .rfind(|l| l["action"] == "session.create")
            .unwrap_or_else(|| panic!("{audit}"))
    };

    let trusted = start_with(
        h,
        &logs.path().join("trusted.log"),
        &[
            "--trusted-proxy",
            "127.0.0.1/32",
            "--identity-header",
            "X-Remote-User",
        ],
    );
    let created = call_with(
        &trusted,
        "POST",
        "/v1/sessions",
        Some(&a),
        Some(&body),
        &[alice],
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    wait_ended(h, "a", &id);
    assert_eq!(user_of(&id), "alice@example.com");
    let line = last_create();
    assert_eq!(line["actor"], "user", "{line}");
    assert_eq!(line["user"], "alice@example.com", "{line}");
    assert_eq!(line["tenant"], "a", "{line}");
    assert_eq!(line["target"], id.as_str(), "{line}");
    for bad in ["../../etc", "alice bob", "-rf", &"a".repeat(129)] {
        let header = format!("X-Remote-User: {bad}");
        let r = call_with(&trusted, "GET", "/v1/sessions", Some(&a), None, &[&header]);
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid"),
            "{bad:?}: {:?}",
            r.body
        );
        assert_eq!(r.body["error"]["field"], "x-remote-user", "{bad:?}");
    }
    let twice = call_with(
        &trusted,
        "GET",
        "/v1/sessions",
        Some(&a),
        None,
        &[alice, "X-Remote-User: bob"],
    );
    assert_eq!(twice.status, 400, "{:?}", twice.body);
    // The header is no token: without one, 401 before anything else.
    let anonymous = call_with(&trusted, "GET", "/v1/sessions", None, None, &[alice]);
    assert_eq!(anonymous.status, 401);
    drop(trusted);

    let untrusted = start_with(
        h,
        &logs.path().join("untrusted.log"),
        &[
            "--trusted-proxy",
            "10.0.0.0/8",
            "--identity-header",
            "X-Remote-User",
        ],
    );
    let created = call_with(
        &untrusted,
        "POST",
        "/v1/sessions",
        Some(&a),
        Some(&body),
        &[alice],
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    wait_ended(h, "a", &id);
    assert_ne!(user_of(&id), "alice@example.com", "the header was ignored");
    let line = last_create();
    assert_eq!(line["actor"], "tenant", "{line}");
    assert!(line.get("user").is_none(), "{line}");
    let bad = call_with(
        &untrusted,
        "GET",
        "/v1/sessions",
        Some(&a),
        None,
        &["X-Remote-User: ../../etc"],
    );
    assert_eq!(bad.status, 200, "ignored, not validated: {:?}", bad.body);
}

/// The operator's price of the test model (USD per million tokens): 100
/// uncached·1 + 20 cached·0.5 + 30 out·4 = 230 micro-USD a call.
const RATES: &str =
    "[[model]]\nname = \"gpt-4o-mini\"\ninput = \"1\"\ncached_input = \"0.5\"\noutput = \"4\"\n";

/// An API session's home is the daemon's: its LLM call is priced from the
/// daemon's `rates.toml`, its ledger row lands in `<home>/ledger.db` and
/// `GET /v1/usage` shows it to its tenant (and to the admin), never to
/// another tenant. What `openclaw run` printed is kept in the bundle.
#[test]
fn an_api_sessions_llm_call_is_in_its_tenants_usage_and_its_output_in_its_bundle() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = test_support::TestCa::new("serve usage test provider");
    let upstream = rt.block_on(test_support::Upstream::https(
        &ca,
        &["api.openai.com"],
        &[b"http/1.1"],
    ));
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let b = cli(h, &["tenants", "create", "b"]);
    let admin = cli(h, &["tenants", "admin-token"]);
    std::fs::write(h.join("rates.toml"), RATES).expect("rates");
    let ca_pem = ca.write_pem(logs.path());
    let resolve = format!("api.openai.com={}", upstream.addr);
    let ca_arg = ca_pem.to_str().expect("utf-8 path");
    let d = start_with(
        h,
        &logs.path().join("serve.log"),
        &["--resolve", &resolve, "--upstream-ca", ca_arg],
    );
    let cap = mint_for_tenant(
        h,
        "a",
        "ttl = \"30m\"\n[llm]\nproviders = [\"api.openai.com\"]\nbudget_usd = \"1.00\"\n",
    );
    let created = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"capabilities": cap, "command": [
            "curl", "-sS", "https://api.openai.com/v1/chat/completions",
            "-H", "content-type: application/json", "-d",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":50}"#
        ]}),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let ended = wait_ended(h, "a", &id);
    assert_eq!(ended["status"], "completed", "{ended}");

    // The child's output is in the bundle, not left in spawn/.
    let dir = h.join("tenants/a/sessions").join(&id);
    let run_log = std::fs::read_to_string(dir.join("run.log")).expect("run.log in the bundle");
    assert!(
        run_log.contains("chatcmpl-test"),
        "the agent got the answer: {run_log}"
    );
    let spawn: Vec<_> = std::fs::read_dir(h.join("tenants/a/spawn"))
        .expect("spawn dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(spawn.is_empty(), "{spawn:?}");
    assert!(
        !h.join("tenants/a/ledger.db").exists(),
        "no ledger in the tenant's root"
    );

    // The row is the daemon's home's, under tenant a.
    let mine = get(&d, "/v1/usage?period=today&by=tenant,session", Some(&a));
    assert_eq!(mine.status, 200, "{:?}", mine.body);
    assert_eq!(mine.body["total"]["calls"], 1, "{:?}", mine.body);
    assert_eq!(mine.body["total"]["cost_micro_usd"], 230, "{:?}", mine.body);
    assert!(
        mine.body["rows"].to_string().contains(&id),
        "{:?}",
        mine.body
    );
    let theirs = get(&d, "/v1/usage?period=today", Some(&b));
    assert_eq!(theirs.status, 200, "{:?}", theirs.body);
    assert_eq!(theirs.body["total"]["calls"], 0, "{:?}", theirs.body);
    assert_eq!(theirs.body["rows"], json!([]), "{:?}", theirs.body);
    let all = get(&d, "/v1/usage?period=today&tenant=a", Some(&admin));
    assert_eq!(all.body["total"]["calls"], 1, "{:?}", all.body);
    drop(upstream);
}

#[test]
fn the_openapi_document_describes_what_is_served() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    let mut tenant = cli(h, &["tenants", "create", "t"]);
    write_session(h, "t", A_ID);
    let d = start(h, &logs.path().join("serve.log"));
    let doc = get(&d, "/openapi.json", None);
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().expect("paths");
    let mut ops: Vec<(&String, &String, &Value)> = paths
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .expect("operations")
                .iter()
                .map(move |(method, op)| (path, method, op))
        })
        .collect();
    // The tenant's deletion last: everything else still has a tenant to act on.
    ops.sort_by_key(|(_, method, _)| *method == "delete");
    let mut served = Vec::new();
    let session_body = json!({
        "capabilities": mint_for_tenant(h, "t", POLICY_HELD),
        "command": ["sh", "-c", HOLDS],
        "approve": "api"
    })
    .to_string();
    let mut started: Option<String> = None;
    {
        for (path, method, op) in ops {
            let documented: Vec<u16> = op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .map(|k| k.parse().expect("numeric status"))
                .collect();
            // Stopping needs a running session: the one `post /v1/sessions`
            // started (paths are walked in order, so it comes first).
            let id = if path.ends_with("/stop")
                || path.ends_with("/events")
                || path.contains("/approvals")
            {
                started.clone().expect("a session was started before")
            } else {
                A_ID.to_owned()
            };
            let mut concrete = path.replace("{id}", &id).replace("{name}", "t");
            if path.contains("{approval_id}") {
                let held = first_pending(&d, &tenant, &id);
                concrete = concrete.replace("{approval_id}", &held["id"].to_string());
            }
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/v1/tenants") => Some(r#"{"name":"n"}"#.to_owned()),
                ("put", "/v1/tenants/{name}/quotas") => {
                    Some(r#"{"sessions":50,"usd_per_day":100}"#.to_owned())
                }
                ("post", "/v1/sessions") => Some(session_body.clone()),
                ("post", p) if p.contains("/approvals/") => Some(r#"{"answer":"deny"}"#.to_owned()),
                ("put", "/v1/secrets/{name}") => Some(r#"{"value":"v"}"#.to_owned()),
                ("put", "/v1/settings") => {
                    Some(r#"{"approve":"api","approval_timeout":100}"#.to_owned())
                }
                ("put", "/v1/tenants/{name}/settings") => {
                    Some(r#"{"allowed_backends":["netns"],"max_approval_timeout":600}"#.to_owned())
                }
                ("put", "/v1/ratecard") => {
                    Some(r#"{"rates":"as_of = \"2026-12-04\"\n"}"#.to_owned())
                }
                _ => None,
            };
            let mut success = false;
            let mut rotated = None;
            // No token, the tenant's, the admin's: each answer documented,
            // one of them a success.
            for token in [None, Some(tenant.as_str()), Some(admin.as_str())] {
                if path.ends_with("/events") {
                    // A stream: its status, then it is cut off.
                    let (status, text) = get_stream(&d, &concrete, token, 2);
                    assert!(
                        documented.contains(&status),
                        "{method} {path} answered {status}: {text}"
                    );
                    success |= status == 200;
                    continue;
                }
                let r = call(
                    &d,
                    &method.to_ascii_uppercase(),
                    &concrete,
                    token,
                    body.as_deref(),
                );
                if r.status == 201 && path == "/v1/sessions" {
                    started = r.body["id"].as_str().map(str::to_owned);
                }
                // The tenant's token, rotated: later tenant routes use the new one.
                if r.status == 200 && path == "/v1/tenants/{name}/token" {
                    rotated = r.body["token"].as_str().map(str::to_owned);
                }
                assert!(
                    documented.contains(&r.status),
                    "{method} {path} answered {} (documented: {documented:?})",
                    r.status
                );
                success |= (200..300).contains(&r.status);
                if r.status >= 400 {
                    assert!(
                        r.body["error"]["code"].is_string(),
                        "{method} {path}: {:?}",
                        r.body
                    );
                }
            }
            assert!(success, "{method} {path} never succeeded");
            if let Some(new) = rotated {
                tenant = new;
            }
            if path.ends_with("/stop") {
                // Ended before the tenant (and its directory) is deleted.
                wait_ended(h, "t", &id);
            }
            served.push(format!("{method} {path}"));
        }
    }
    served.sort();
    assert_eq!(
        served,
        [
            "delete /v1/secrets/{name}",
            "delete /v1/tenants/{name}",
            "get /healthz",
            "get /metrics",
            "get /openapi.json",
            "get /readyz",
            "get /v1/ratecard",
            "get /v1/secrets",
            "get /v1/sessions",
            "get /v1/sessions/{id}",
            "get /v1/sessions/{id}/approvals",
            "get /v1/sessions/{id}/bundle",
            "get /v1/sessions/{id}/events",
            "get /v1/sessions/{id}/receipts/verify",
            "get /v1/settings",
            "get /v1/tenants",
            "get /v1/tenants/{name}/quotas",
            "get /v1/tenants/{name}/settings",
            "get /v1/usage",
            "post /v1/sessions",
            "post /v1/sessions/{id}/approvals/{approval_id}",
            "post /v1/sessions/{id}/stop",
            "post /v1/tenants",
            "post /v1/tenants/{name}/token",
            "put /v1/ratecard",
            "put /v1/secrets/{name}",
            "put /v1/settings",
            "put /v1/tenants/{name}/quotas",
            "put /v1/tenants/{name}/settings",
        ]
    );
    assert!(started.is_some(), "a session was started");
    // What the document does not list is not served.
    for (method, path) in [
        ("PUT", "/v1/tenants"),
        ("GET", "/v1/tenants/t"),
        ("POST", "/healthz"),
    ] {
        let r = call(&d, method, path, Some(&admin), None);
        assert!(
            matches!(r.status, 404 | 405),
            "{method} {path}: {}",
            r.status
        );
    }
}

fn post(d: &Daemon, path: &str, token: &str, body: &Value) -> Reply {
    call(d, "POST", path, Some(token), Some(&body.to_string()))
}

#[test]
fn sessions_are_created_listed_stopped_and_their_chains_verify() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let b = cli(h, &["tenants", "create", "b"]);
    let admin = cli(h, &["tenants", "admin-token"]);
    let (cap_a, cap_b) = (mint_for(h, "a"), mint_for(h, "b"));
    let log = logs.path().join("serve.log");
    let d = start(h, &log);

    // Bad input: 400 naming the field, and nothing started.
    let sleep = json!(["sleep", "30"]);
    for (body, field) in [
        (
            json!({"capabilities": cap_b, "command": sleep}),
            "capabilities",
        ),
        (
            json!({"capabilities": "not a token", "command": sleep}),
            "capabilities",
        ),
        (json!({"capabilities": cap_a, "command": []}), "command"),
        (json!({"capabilities": cap_a, "command": [""]}), "command"),
        (
            json!({"capabilities": cap_a, "command": sleep, "backend": "xen"}),
            "backend",
        ),
        (
            json!({"capabilities": cap_a, "command": sleep, "approve": "prompt"}),
            "approve",
        ),
        // An image is for the kvm backend (tests/serve_settings.rs has the rest).
        (
            json!({"capabilities": cap_a, "command": sleep, "image": "x"}),
            "image",
        ),
        (
            json!({"capabilities": cap_a, "command": sleep, "colour": "x"}),
            "body",
        ),
        (json!({"command": sleep}), "capabilities"),
    ] {
        let r = post(&d, "/v1/sessions", &a, &body);
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid"),
            "{body}: {:?}",
            r.body
        );
        assert_eq!(r.body["error"]["field"], field, "{body}");
    }
    assert!(session_ids(&get(&d, "/v1/sessions", Some(&a))).is_empty());
    assert_eq!(
        post(
            &d,
            "/v1/sessions",
            &admin,
            &json!({"capabilities": cap_a, "command": sleep})
        )
        .status,
        404,
        "the admin has no sessions"
    );

    // Created: 201 once session.json exists; listed as running, live.
    let created = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"capabilities": cap_a, "command": sleep, "task": "wait"}),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let dir = h.join("tenants/a/sessions").join(&id);
    assert!(
        dir.join("session.json").is_file(),
        "in the tenant's sessions"
    );
    let list = get(&d, "/v1/sessions", Some(&a));
    let row = list.body["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{:?}", list.body))
        .clone();
    assert_eq!(row["status"], "running", "{row}");
    assert_eq!(row["live"], true, "{row}");
    assert_eq!(row["backend"], "netns", "{row}");
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("session.json")).expect("info"))
            .expect("json");
    assert_eq!(info["tenant"], "a");
    assert_eq!(info["task"], "wait");
    assert_eq!(info["command"], sleep);
    // The token file the daemon handed to `openclaw run` is gone.
    let spawn: Vec<_> = std::fs::read_dir(h.join("tenants/a/spawn"))
        .expect("spawn dir")
        .flatten()
        .map(|e| e.file_name().into_string().expect("utf-8"))
        .collect();
    assert!(spawn.iter().all(|n| !n.ends_with(".cap")), "{spawn:?}");

    let live_bundle = get(&d, &format!("/v1/sessions/{id}/bundle"), Some(&a));
    assert_eq!((live_bundle.status, live_bundle.code()), (409, "conflict"));

    // Another tenant: the session does not exist.
    for (method, path) in [
        ("POST", format!("/v1/sessions/{id}/stop")),
        ("GET", format!("/v1/sessions/{id}")),
    ] {
        let r = call(&d, method, &path, Some(&b), None);
        assert_eq!((r.status, r.code()), (404, "not_found"), "{method} {path}");
    }
    assert_eq!(
        call(&d, "POST", "/v1/sessions/nothing-here/stop", Some(&a), None).status,
        404
    );
    assert_eq!(
        get(&d, &format!("/v1/sessions/{id}/stop"), Some(&a)).status,
        405
    );

    // Stopped: 202, the session ends interrupted, its chain closed.
    let stopped = call(
        &d,
        "POST",
        &format!("/v1/sessions/{id}/stop"),
        Some(&a),
        None,
    );
    assert_eq!(stopped.status, 202, "{:?}", stopped.body);
    let ended = wait_ended(h, "a", &id);
    assert_eq!(ended["status"], "interrupted", "{ended}");
    let report = get(&d, &format!("/v1/sessions/{id}"), Some(&a));
    assert_eq!(
        report.body["session"]["status"], "interrupted",
        "{:?}",
        report.body
    );
    let verified = get(&d, &format!("/v1/sessions/{id}/receipts/verify"), Some(&a));
    assert_eq!(verified.status, 200, "{:?}", verified.body);
    assert_eq!(verified.body["status"], "valid", "{:?}", verified.body);
    let receipts = std::fs::read_to_string(dir.join("receipts.jsonl")).expect("receipts");
    assert!(
        receipts
            .lines()
            .last()
            .is_some_and(|l| l.contains("session_end")),
        "the chain is closed"
    );
    // Once ended, stopping again is refused (409).
    let again = call(
        &d,
        "POST",
        &format!("/v1/sessions/{id}/stop"),
        Some(&a),
        None,
    );
    assert_eq!((again.status, again.code()), (409, "conflict"));

    // The ended session's bundle: a .tar.gz of its directory, the same
    // receipts as on disk; 404 to another tenant.
    let bundle = logs.path().join("bundle.tar.gz");
    let url = format!("http://{}/v1/sessions/{id}/bundle", d.addr);
    let fetched = Command::new("curl")
        .args(["-sS", "-f", "-o"])
        .arg(&bundle)
        .args(["-H", &format!("Authorization: Bearer {a}"), &url])
        .status()
        .expect("curl");
    assert!(fetched.success(), "bundle download");
    let unpacked = logs.path().join("unpacked");
    std::fs::create_dir(&unpacked).expect("mkdir");
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(&bundle)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("tar");
    assert!(untar.success(), "the archive unpacks");
    assert_eq!(
        std::fs::read_to_string(unpacked.join(&id).join("receipts.jsonl")).expect("receipts"),
        receipts
    );
    assert!(unpacked.join(&id).join("session.json").is_file());
    assert!(!unpacked.join(&id).join("control.sock").exists());
    assert_eq!(
        get(&d, &format!("/v1/sessions/{id}/bundle"), Some(&b)).status,
        404
    );

    // Live events: a session making three requests (refused: POST is not
    // granted) after a pause; the stream gives them in order, then `end`
    // when the session ends. An ended session has no stream (409).
    let ended_events = get(&d, &format!("/v1/sessions/{id}/events"), Some(&a));
    assert_eq!(
        (ended_events.status, ended_events.code()),
        (409, "conflict")
    );
    let script = "sleep 3; for p in one two three; do \
        curl -s -o /dev/null --max-time 10 -X POST https://example.com/$p; done";
    let talker = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"capabilities": cap_a, "command": ["sh", "-c", script]}),
    );
    assert_eq!(talker.status, 201, "{:?}", talker.body);
    let talker = talker.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        get(&d, &format!("/v1/sessions/{talker}/events"), Some(&b)).status,
        404
    );
    let (status, text) = get_stream(&d, &format!("/v1/sessions/{talker}/events"), Some(&a), 60);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    let mut ids = Vec::new();
    let mut kinds = Vec::new();
    let mut paths = Vec::new();
    for message in text.split("\n\n").filter(|m| m.contains("event: ")) {
        let field = |name: &str| {
            message
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {message:?}"))
                .to_owned()
        };
        ids.push(field("id: ").parse::<u64>().expect("numeric id"));
        let kind = field("event: ");
        if kind == "action" {
            let data: Value = serde_json::from_str(&field("data: ")).expect("json data");
            if data["kind"] == "blocked" && data["method"] == "POST" {
                paths.push(data["path"].as_str().expect("path").to_owned());
            }
        }
        kinds.push(kind);
    }
    assert_eq!(paths, ["/one", "/two", "/three"], "{text}");
    assert_eq!(kinds.last().map(String::as_str), Some("end"), "{text}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    wait_ended(h, "a", &talker);

    // Approvals over the API: a session whose token holds every web
    // request; the pending one is listed, answered (deny), the answer is in
    // the chain under approver api:a.
    let held = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"capabilities": mint_for_tenant(h, "a", POLICY_HELD),
                "command": ["sh", "-c", HOLDS], "approve": "api"}),
    );
    assert_eq!(held.status, 201, "{:?}", held.body);
    let held = held.body["id"].as_str().expect("id").to_owned();
    let pending = first_pending(&d, &a, &held);
    assert_eq!(pending["action"]["host"], "example.com", "{pending}");
    assert_eq!(pending["action"]["path"], "/held", "{pending}");
    let approval = pending["id"].as_u64().expect("approval id");
    let answer_path = format!("/v1/sessions/{held}/approvals/{approval}");
    let deny = json!({"answer": "deny"});
    assert_eq!(
        get(&d, &format!("/v1/sessions/{held}/approvals"), Some(&b)).status,
        404
    );
    assert_eq!(
        post(&d, &answer_path, &b, &deny).status,
        404,
        "another tenant"
    );
    for (path, body, field) in [
        (answer_path.clone(), json!({"answer": "maybe"}), "answer"),
        (
            answer_path.clone(),
            json!({"answer": "deny", "x": 1}),
            "body",
        ),
        (
            format!("/v1/sessions/{held}/approvals/x"),
            deny.clone(),
            "approval_id",
        ),
    ] {
        let r = post(&d, &path, &a, &body);
        assert_eq!(
            (r.status, r.body["error"]["field"].as_str()),
            (400, Some(field)),
            "{path} {body}"
        );
    }
    let unknown = format!("/v1/sessions/{held}/approvals/{}", approval + 1000);
    assert_eq!(
        post(&d, &unknown, &a, &deny).status,
        404,
        "no such approval"
    );
    let answered = post(&d, &answer_path, &a, &deny);
    assert_eq!(answered.status, 200, "{:?}", answered.body);
    // A second answer is not taken: 409, naming the answer that was.
    let again = post(&d, &answer_path, &a, &json!({"answer": "approve"}));
    assert_eq!(
        (again.status, again.code()),
        (409, "conflict"),
        "answered once"
    );
    let message = again.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("denied by api:a"), "{message}");
    let stopped = call(
        &d,
        "POST",
        &format!("/v1/sessions/{held}/stop"),
        Some(&a),
        None,
    );
    assert_eq!(stopped.status, 202);
    wait_ended(h, "a", &held);
    let chain = std::fs::read_to_string(
        h.join("tenants/a/sessions")
            .join(&held)
            .join("receipts.jsonl"),
    )
    .expect("receipts");
    assert!(
        chain.contains("api:a"),
        "the approval receipt names the API"
    );
    let ended_approvals = get(&d, &format!("/v1/sessions/{held}/approvals"), Some(&a));
    assert_eq!(ended_approvals.status, 409);

    // A session process that dies (SIGKILL: no chance to close anything)
    // does not take the daemon down; the daemon recovers the session: its
    // sandbox and network are removed, its chain closed and verifiable.
    let crashed = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"capabilities": cap_a, "command": sleep}),
    );
    assert_eq!(crashed.status, 201, "{:?}", crashed.body);
    let crashed = crashed.body["id"].as_str().expect("id").to_owned();
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(
            h.join("tenants/a/sessions")
                .join(&crashed)
                .join("session.json"),
        )
        .expect("info"),
    )
    .expect("json");
    let pid = info["supervisor_pid"]
        .as_i64()
        .expect("the supervisor's pid");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let ended = wait_ended(h, "a", &crashed);
    assert_eq!(ended["status"], "supervisor_died", "{ended}");
    assert!(ended["recovered_at"].is_string(), "{ended}");
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&crashed),
        "the crashed session's network is removed"
    );
    assert_eq!(get(&d, "/healthz", None).status, 200, "the daemon lives on");
    let verified = get(
        &d,
        &format!("/v1/sessions/{crashed}/receipts/verify"),
        Some(&a),
    );
    assert_eq!(verified.body["status"], "valid", "{:?}", verified.body);

    // Audit: one line per create/stop, refusals included; no token or
    // capability text in it. The crashed session's end is written by the
    // daemon's recovery, after its session.json.
    let audit = support::wait_until(
        "the crashed session's end line",
        Duration::from_secs(60),
        || {
            let audit = std::fs::read_to_string(h.join("audit.jsonl")).expect("audit");
            audit
                .lines()
                .any(|l| l.contains("\"session.end\"") && l.contains(&crashed))
                .then_some(audit)
        },
    );
    let all: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    // Each session that ended by itself or by a stop has its end, written
    // by its own `openclaw run` (so in no fixed order with the daemon's
    // lines); the one killed with its supervisor has its end from the
    // daemon's recovery, `supervisor_died`.
    let mut ended: Vec<&str> = all
        .iter()
        .filter(|l| l["action"] == "session.end")
        .map(|l| {
            assert_eq!(
                (&l["actor"], &l["via"], &l["tenant"], &l["outcome"]),
                (&json!("tenant"), &json!("api"), &json!("a"), &json!("ok")),
                "{l}"
            );
            let detail = l["detail"].as_str().expect("detail");
            assert!(detail.contains(" receipts; chain head "), "{detail}");
            let target = l["target"].as_str().expect("target");
            assert_eq!(
                detail.starts_with("supervisor_died; "),
                target == crashed,
                "{detail}"
            );
            target
        })
        .collect();
    ended.sort_unstable();
    let mut expected = vec![
        id.as_str(),
        talker.as_str(),
        held.as_str(),
        crashed.as_str(),
    ];
    expected.sort_unstable();
    assert_eq!(ended, expected, "{audit}");
    let lines: Vec<Value> = all
        .into_iter()
        .filter(|l: &Value| {
            l["action"].as_str().is_some_and(|a| {
                (a.starts_with("session.") && a != "session.end") || a.starts_with("approval.")
            })
        })
        .collect();
    let summary: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["action"].as_str().expect("action").to_owned(),
                l["tenant"].as_str().expect("tenant").to_owned(),
                l["target"].as_str().expect("target").to_owned(),
                l["outcome"].as_str().expect("outcome").to_owned(),
            )
        })
        .collect();
    let line = |action: &str, target: &str, outcome: &str| {
        (
            action.to_owned(),
            "a".to_owned(),
            target.to_owned(),
            outcome.to_owned(),
        )
    };
    assert_eq!(
        summary,
        [
            line("session.create", &id, "ok"),
            line("session.stop", &id, "ok"),
            line("session.stop", &id, "refused"),
            line("session.create", &talker, "ok"),
            line("session.create", &held, "ok"),
            line(
                "approval.answer",
                &format!("{held}/{}", approval + 1000),
                "refused"
            ),
            line("approval.answer", &format!("{held}/{approval}"), "ok"),
            line("approval.answer", &format!("{held}/{approval}"), "refused"),
            line("session.stop", &held, "ok"),
            line("session.create", &crashed, "ok"),
        ]
    );
    assert!(lines
        .iter()
        .all(|l| l["actor"] == "tenant" && l["via"] == "api"));
    // The answer not taken is audited as such, never as approved.
    let not_taken = lines
        .iter()
        .find(|l| l["target"] == format!("{held}/{approval}") && l["outcome"] == "refused")
        .expect("the second answer's line");
    let detail = not_taken["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("not taken:") && detail.contains("denied by api:a"),
        "{detail}"
    );
    let daemon_log = std::fs::read_to_string(&log).expect("log");
    for secret in [&a, &b, &admin, &cap_a, &cap_b] {
        assert!(!audit.contains(secret.as_str()), "a token in the audit log");
        assert!(
            !daemon_log.contains(secret.as_str()),
            "a token in the daemon's log"
        );
    }
}

/// Deleting a tenant stops its running sessions (SIGTERM, waited for)
/// before its directory moves to tenants-deleted/: no sandbox keeps its
/// egress and decrypted secrets under a tenant no API can reach any more
/// (needs root: a real netns session).
#[test]
fn deleting_a_tenant_stops_its_running_sessions() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    let a = cli(h, &["tenants", "create", "a"]);
    let d = start(h, &logs.path().join("serve.log"));
    let body = json!({"capabilities": mint_for(h, "a"), "command": ["sleep", "25"]});
    let r = call(
        &d,
        "POST",
        "/v1/sessions",
        Some(&a),
        Some(&body.to_string()),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    let pid = supervisor_of(h, "a", &id);
    assert!(runs(pid));

    // The delete answers once the session has ended.
    let r = call(&d, "DELETE", "/v1/tenants/a", Some(&admin), None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let still = runs(pid);
    if still {
        // Clean up the session this test started (its supervisor, by pid).
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    assert!(
        !still,
        "session {id} (supervisor {pid}) runs after its tenant's deletion"
    );
    // Its chain was closed by the stop, in the moved directory.
    let moved: Vec<_> = std::fs::read_dir(h.join("tenants-deleted"))
        .expect("tenants-deleted")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(moved[0].join("sessions").join(&id).join("session.json"))
            .expect("session.json"),
    )
    .expect("json");
    assert_ne!(info["status"], "running", "{info}");
}

/// A rotated token ends an open `GET /v1/sessions/{id}/events` stream
/// within a few seconds (the token is checked again every 2 s, as the
/// UI's live view does), while the session runs on (needs root).
#[test]
fn an_api_event_stream_ends_when_its_token_is_rotated() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let d = start(h, &logs.path().join("serve.log"));
    let body = json!({"capabilities": mint_for(h, "a"), "command": ["sleep", "25"]});
    let r = call(
        &d,
        "POST",
        "/v1/sessions",
        Some(&a),
        Some(&body.to_string()),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    let mut stream = curl(
        &d.addr,
        "GET",
        &format!("/v1/sessions/{id}/events"),
        Some(&a),
        None,
    )
    .arg("-N")
    .stdout(Stdio::piped())
    .spawn()
    .expect("curl");
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        stream.try_wait().expect("wait").is_none(),
        "the stream is open"
    );
    let a2 = cli(h, &["tenants", "token", "rotate", "a"]);
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut ended = false;
    while Instant::now() < deadline {
        if stream.try_wait().expect("wait").is_some() {
            ended = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let running = call(&d, "GET", &format!("/v1/sessions/{id}"), Some(&a2), None);
    // Clean up: the session this test started, and the curl it spawned.
    call(
        &d,
        "POST",
        &format!("/v1/sessions/{id}/stop"),
        Some(&a2),
        None,
    );
    if !ended {
        let _ = stream.kill();
    }
    let _ = stream.wait();
    let mut seen = String::new();
    if let Some(mut out) = stream.stdout.take() {
        let _ = out.read_to_string(&mut seen);
    }
    wait_ended(h, "a", &id);
    assert_eq!(
        running.body["session"]["status"], "running",
        "{:?}",
        running.body
    );
    assert!(
        ended,
        "6 s after rotation the old token's event stream is still open: {seen}"
    );
}
