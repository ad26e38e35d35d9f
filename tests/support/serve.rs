//! Driving `openclaw serve` from a test: the daemon on a free loopback
//! port, the CLI beside it, and `curl` as the HTTP client (`--path-as-is`,
//! the answer's status, head and JSON body).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The daemon, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `openclaw serve` on a free port, logging at debug level into `log`.
pub fn start(home: &Path, log: &Path) -> Daemon {
    start_with(home, log, &[])
}

/// [`start`] with more `openclaw serve` flags.
pub fn start_with(home: &Path, log: &Path, flags: &[&str]) -> Daemon {
    let stderr = std::fs::File::create(log).expect("log file");
    spawn(home, "debug", stderr, flags)
}

/// [`start`] with more environment variables for the daemon (a host that
/// lacks what `openclaw doctor` looks for, say).
pub fn start_env(home: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
    let stderr = std::fs::File::create(log).expect("log file");
    spawn_env(home, "debug", stderr, &[], env)
}

/// [`start_env`] with more `openclaw serve` flags.
pub fn start_env_with(home: &Path, log: &Path, flags: &[&str], env: &[(&str, &str)]) -> Daemon {
    let stderr = std::fs::File::create(log).expect("log file");
    spawn_env(home, "debug", stderr, flags, env)
}

/// Starts `openclaw serve` on a free port with `RUST_LOG=level`, its log to
/// `stderr`; returns once it says where it listens.
pub fn start_logging(home: &Path, level: &str, stderr: impl Into<Stdio>) -> Daemon {
    spawn(home, level, stderr, &[])
}

fn spawn(home: &Path, level: &str, stderr: impl Into<Stdio>, flags: &[&str]) -> Daemon {
    spawn_env(home, level, stderr, flags, &[])
}

fn spawn_env(
    home: &Path,
    level: &str,
    stderr: impl Into<Stdio>,
    flags: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_openclaw"))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(flags)
        .envs(env.iter().copied())
        .env("OPENCLAW_HOME", home)
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start openclaw serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Daemon { child, addr }
}

/// Runs the CLI, which must succeed; its stdout, trimmed.
pub fn cli(home: &Path, args: &[&str]) -> String {
    cli_env(home, &[], args)
}

/// [`cli`] with variables added to its environment.
pub fn cli_env(home: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_openclaw"))
        .args(args)
        .env("OPENCLAW_HOME", home)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("run openclaw");
    assert!(
        out.status.success(),
        "openclaw {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// One answer: status, raw head, JSON body (`Null` when empty or not
/// JSON) and the body as text.
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or("")
    }
}

/// The curl command of one request (so callers may run several at once).
pub fn curl(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-i",
        "--path-as-is",
        "--max-time",
        "60",
        "-X",
        method,
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    cmd
}

/// A finished curl's output as a [`Reply`].
pub fn reply(out: std::process::Output, what: &str) -> Reply {
    assert!(out.status.success(), "curl {what}: {out:?}");
    let raw = out.stdout;
    let (head, body) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => (&raw[..], &b""[..]),
    };
    let head = std::str::from_utf8(head).expect("utf-8 head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    assert!(
        head.to_ascii_lowercase().contains("x-request-id:"),
        "{what}: every response names its request"
    );
    let text = String::from_utf8_lossy(body).into_owned();
    let body = if body.is_empty()
        || !head
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", String::from_utf8_lossy(body)))
    };
    Reply {
        status,
        head: head.to_owned(),
        body,
        text,
    }
}

/// One request, answered.
pub fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    call_with(d, method, path, token, body, &[])
}

/// [`call`] with more request headers (`Name: value`).
pub fn call_with(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[&str],
) -> Reply {
    let mut cmd = curl(&d.addr, method, path, token, body);
    for h in headers {
        cmd.args(["-H", h]);
    }
    reply(cmd.output().expect("run curl"), &format!("{method} {path}"))
}

/// One of a tenant's keys (`root.key`, `receipt.key`).
pub fn tenant_key(home: &Path, tenant: &str, name: &str) -> ed25519_dalek::SigningKey {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let path = home.join("tenants").join(tenant).join("keys").join(name);
    let pem = std::fs::read_to_string(path).expect("key");
    ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).expect("pem")
}

/// A capability token (the .cap text) for `policy`, minted under the
/// tenant's root key.
pub fn mint_for_tenant(home: &Path, tenant: &str, policy: &str) -> String {
    let policy = capabilities::Policy::from_toml_str(policy).expect("policy");
    let cap_key = tenant_key(home, tenant, "root.key");
    capabilities::mint(&policy, &cap_key.to_bytes(), std::time::SystemTime::now()).expect("mint")
}

/// A policy granting GET on example.com.
pub const POLICY: &str = "ttl = \"30m\"\n[web]\nallow = [\"example.com\"]\nmethods = [\"get\"]\n";
/// The same, every web request held for a human.
pub const POLICY_HELD: &str =
    "ttl = \"30m\"\n[web]\nallow = [\"example.com\"]\nmethods = [\"get\"]\n\
    [[approval]]\ntype = \"web\"\n";
/// A session command whose first request is held: it waits for the answer.
pub const HOLDS: &str = "curl -s -o /dev/null --max-time 100 https://example.com/held; sleep 30";

/// A capability token for [`POLICY`] under the tenant's root key.
pub fn mint_for(home: &Path, tenant: &str) -> String {
    mint_for_tenant(home, tenant, POLICY)
}

/// A finished session bundle under `<tenant>/sessions/<id>`: session.json,
/// a capability token minted under the tenant's root key and a one-receipt
/// chain, closed, signed with the tenant's receipt key.
pub fn write_session(home: &Path, tenant: &str, id: &str) -> std::path::PathBuf {
    use receipts::{ReceiptLog, SessionStart};
    let dir = home.join("tenants").join(tenant).join("sessions").join(id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (cap_key, receipt_key) = (
        tenant_key(home, tenant, "root.key"),
        tenant_key(home, tenant, "receipt.key"),
    );
    let token = mint_for(home, tenant);
    std::fs::write(dir.join("capabilities.cap"), &token).expect("cap");
    let cap = capabilities::UnverifiedToken::from_base64(&token)
        .expect("parse")
        .verify(&cap_key.verifying_key().to_bytes())
        .expect("verify");
    let log = ReceiptLog::create(
        &dir.join("receipts.jsonl"),
        receipt_key.clone(),
        SessionStart {
            session_id: id.into(),
            revocation_ids: cap.revocation_ids(),
            sandbox: "netns".into(),
            capability_sha256: Some(receipts::sha256_hex(token.as_bytes())),
            tenant: Some(tenant.into()),
            user: None,
        },
    )
    .expect("chain");
    log.finish().expect("finish");
    let info = serde_json::json!({
        "id": id, "status": "completed", "backend": "netns", "backend_reason": "test",
        "started_at": "2026-12-03T12:00:00Z", "ended_at": "2026-12-03T12:00:01Z",
        "sandbox_ready_ms": 1, "command": ["true"], "task": null, "exit_code": 0,
        "capabilities": {"summary": "1 grant", "grants": [], "revocation_ids": cap.revocation_ids(), "expires_at": null},
        "ca_fingerprint": "", "receipt_key_id": receipts::key_id(&receipt_key.verifying_key()),
        "resolve": [], "upstream_ca": [], "supervisor_pid": null,
        "bounds": {"work_max_bytes": 0, "console_max_bytes": 0, "dns_refusal_receipts": 0},
        "tenant": tenant
    });
    std::fs::write(dir.join("session.json"), info.to_string()).expect("session.json");
    dir
}

/// Waits (up to 60 s) until the session's session.json says it is no
/// longer running, and returns it.
pub fn wait_ended(home: &Path, tenant: &str, id: &str) -> Value {
    let path = home
        .join("tenants")
        .join(tenant)
        .join("sessions")
        .join(id)
        .join("session.json");
    // Inlined rather than `super::wait_until`: benches/serve.rs includes
    // this file without the rest of tests/support.
    for _ in 0..600 {
        let info: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(info) = info.filter(|i| i["status"] != "running") {
            return info;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("session {id} did not end in 60 s");
}

/// A local HTTPS upstream for `host` (its own test CA) and a daemon whose
/// sessions resolve `host` to it and trust that CA. Keep the runtime: the
/// upstream runs on it.
pub struct DaemonWithUpstream {
    pub daemon: Daemon,
    pub upstream: test_support::Upstream,
    pub runtime: tokio::runtime::Runtime,
}

pub fn start_with_upstream(home: &Path, logs: &Path, host: &str) -> DaemonWithUpstream {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = test_support::TestCa::new("serve test upstream");
    let upstream = runtime.block_on(test_support::Upstream::https(&ca, &[host], &[b"http/1.1"]));
    let ca_pem = ca.write_pem(logs);
    let resolve = format!("{host}={}", upstream.addr);
    let daemon = start_with(
        home,
        &logs.join("serve.log"),
        &[
            "--resolve",
            &resolve,
            "--upstream-ca",
            ca_pem.to_str().expect("utf-8"),
        ],
    );
    DaemonWithUpstream {
        daemon,
        upstream,
        runtime,
    }
}
