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
    let out = Command::new(env!("CARGO_BIN_EXE_openclaw"))
        .args(args)
        .env("OPENCLAW_HOME", home)
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
