//! Nothing outlives its supervisor (issue 19), through the real binary on
//! the netns backend: `openclaw run` with an agent looping requests is
//! SIGKILLed; its sandbox ends at once and no request reaches the upstream
//! afterwards; then `openclaw recover` (or, separately, the next
//! `openclaw run`) removes its namespace and cgroups and closes its chain
//! as interrupted, which `openclaw verify` accepts and names. A live session
//! beside it is untouched.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::{TestCa, Upstream};

mod support;

const POLICY: &str = r#"
ttl = "10m"

[web]
allow = ["api.example.com"]
methods = ["GET"]
"#;

/// The agent: requests in a loop, until it is stopped.
const LOOP: &str =
    "while :; do curl -sS -o /dev/null https://api.example.com/hello; sleep 0.1; done";

/// Only a guard against hanging: measured times are printed, not bounded.
const HANG_GUARD: Duration = Duration::from_secs(60);

struct Fixture {
    _rt: tokio::runtime::Runtime,
    home: tempfile::TempDir,
    ca_pem: PathBuf,
    /// One upstream per session, so each one's requests are counted apart.
    upstreams: Vec<Upstream>,
}

impl Fixture {
    fn new(sessions: usize) -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let ca = TestCa::new("supervisor-crash test upstream");
        let upstreams = (0..sessions)
            .map(|_| rt.block_on(Upstream::https(&ca, &["api.example.com"], &[b"http/1.1"])))
            .collect();
        let home = tempfile::tempdir().expect("tempdir");
        let ca_pem = ca.write_pem(home.path());
        support::keygen_and_mint(home.path(), POLICY);
        Fixture {
            _rt: rt,
            home,
            ca_pem,
            upstreams,
        }
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    /// `openclaw run` of `script` against upstream `n`.
    fn run(&self, n: usize, script: &str) -> Command {
        let mut cmd = support::openclaw(self.home());
        cmd.arg("run")
            .arg("--capabilities")
            .arg(self.home().join("task.cap"))
            .args(["--backend", "netns", "--upstream-ca"])
            .arg(&self.ca_pem)
            .arg("--resolve")
            .arg(format!("api.example.com={}", self.upstreams[n].addr))
            .args(["--", "/bin/bash", "-c", script])
            .stdin(Stdio::null());
        cmd
    }

    /// Starts the looping agent against upstream `n`; returns once its first
    /// request went through, with the session's directory.
    fn start_loop(&self, n: usize) -> Session {
        let before = self.sessions();
        let mut child = self
            .run(n, LOOP)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openclaw run");
        // Drained for the whole run: a full pipe would stall the supervisor.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, allowed) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("allowed") && line.contains("api.example.com") {
                    let _ = tx.send(());
                }
            }
        });
        allowed
            .recv_timeout(HANG_GUARD)
            .expect("the agent's first request");
        let dir = self
            .sessions()
            .into_iter()
            .find(|d| !before.contains(d))
            .expect("the new session");
        Session {
            child: support::Killed(child),
            dir,
        }
    }

    fn sessions(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.home().join("sessions"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn verify(&self, dir: &Path, json: bool) -> std::process::Output {
        let mut cmd = support::openclaw(self.home());
        cmd.arg("verify")
            .arg(dir)
            .arg("--key")
            .arg(self.home().join("keys/receipt.pub"));
        if json {
            cmd.arg("--json");
        }
        cmd.output().expect("verify")
    }
}

struct Session {
    child: support::Killed,
    dir: PathBuf,
}

impl Session {
    fn child(&mut self) -> &mut Child {
        &mut self.child.0
    }

    /// `openclaw-<id>`: the session's network namespace, and the prefix of
    /// its sandbox's cgroups.
    fn netns(&self) -> String {
        format!(
            "openclaw-{}",
            self.dir.file_name().expect("name").to_string_lossy()
        )
    }

    /// Kills the supervisor with SIGKILL and reaps it.
    fn kill_supervisor(&mut self) {
        self.child().kill().expect("SIGKILL the supervisor");
        self.child().wait().expect("reap the supervisor");
    }
}

/// Pids of processes inside the namespace (`ip netns pids`); empty when
/// none is left (or the namespace is gone).
fn pids_in(netns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn id_of(dir: &Path) -> String {
    dir.file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned()
}

fn netns_exists(netns: &str) -> bool {
    Path::new("/run/netns").join(netns).exists()
}

/// cgroup directories (any hierarchy) of the session's sandbox.
fn cgroups_of(netns: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/memory",
    ] {
        let Ok(entries) = std::fs::read_dir(Path::new(root).join("openclaw")) else {
            continue;
        };
        found.extend(
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(netns))
                .map(|e| e.path()),
        );
    }
    found
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "hung waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("json")
}

/// SIGKILLs the session's supervisor and waits until no process of its
/// sandbox is left and its upstream sees no further request.
fn kill_and_watch_it_die(fx: &Fixture, upstream: usize, session: &mut Session) {
    let netns = session.netns();
    assert!(!pids_in(&netns).is_empty(), "the sandbox runs");
    let killed = Instant::now();
    session.kill_supervisor();
    wait_for("the sandbox to end", || {
        pids_in(&netns).is_empty().then_some(())
    });
    println!(
        "SIGKILL of the supervisor to no process of its sandbox left: {:?}",
        killed.elapsed()
    );
    let seen = fx.upstreams[upstream].requests();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        fx.upstreams[upstream].requests(),
        seen,
        "a request reached the upstream after the sandbox ended"
    );
    let info = read_json(&session.dir.join("session.json"));
    assert_eq!(info["status"], "running", "nobody closed it yet");
}

/// What recovery must leave: no namespace, no cgroup, a chain that verifies
/// as interrupted, `session.json` and the report saying so.
fn assert_recovered(fx: &Fixture, session: &Session) {
    let netns = session.netns();
    assert!(!netns_exists(&netns), "{netns} left behind");
    assert!(cgroups_of(&netns).is_empty(), "{:?}", cgroups_of(&netns));

    let out = fx.verify(&session.dir, false);
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("✓ valid"), "{text}");
    assert!(
        text.contains("interrupted (supervisor died) at seq "),
        "{text}"
    );
    let json: Value = serde_json::from_slice(&fx.verify(&session.dir, true).stdout).expect("json");
    let receipts = json["receipts"].as_u64().expect("receipts");
    assert_eq!(json["interrupted"]["cause"], "supervisor_died", "{json}");
    assert_eq!(json["interrupted"]["at_seq"], receipts - 2, "{json}");

    let info = read_json(&session.dir.join("session.json"));
    assert_eq!(info["status"], "supervisor_died", "{info}");
    assert!(info["recovered_at"].is_string(), "{info}");
    assert!(info["supervisor_pid"].is_null(), "{info}");
    let report = read_json(&session.dir.join("report.json"));
    assert_eq!(report["receipts"]["status"], "interrupted", "{report}");
    let html = std::fs::read_to_string(session.dir.join("report.html")).expect("report.html");
    assert!(html.contains("interrupted (supervisor died)"));
}

#[test]
fn a_killed_supervisor_takes_its_sandbox_down_and_recover_closes_its_chain() {
    let fx = Fixture::new(2);
    let mut dead = fx.start_loop(0);
    let mut live = fx.start_loop(1);
    let (live_netns, live_id) = (live.netns(), id_of(&live.dir));

    kill_and_watch_it_die(&fx, 0, &mut dead);

    let out = support::run(fx.home(), &["recover"]);
    let text = support::text(&out);
    assert!(out.status.success(), "{text}");
    let dead_id = id_of(&dead.dir);
    assert!(
        text.contains(&format!(
            "✓ {dead_id}: interrupted (supervisor died) at seq "
        )),
        "{text}"
    );
    assert!(
        !text.contains(&live_id),
        "the live session was touched: {text}"
    );
    assert_recovered(&fx, &dead);

    // The live session carries on: its namespace, its status, its requests.
    assert!(netns_exists(&live_netns));
    assert!(!pids_in(&live_netns).is_empty());
    assert_eq!(
        read_json(&live.dir.join("session.json"))["status"],
        "running"
    );
    let before = fx.upstreams[1].requests();
    wait_for("the live session's next request at its upstream", || {
        (fx.upstreams[1].requests() > before).then_some(())
    });

    // A second recovery finds nothing more to do for the dead one.
    let again = support::run(fx.home(), &["recover"]);
    assert!(!support::text(&again).contains(&dead_id));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(live.child().id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = live.child().wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(!netns_exists(&live_netns));
    let out = fx.verify(&live.dir, true);
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["status"], "valid", "{json}");
    assert!(json["interrupted"].is_null(), "{json}");
}

#[test]
fn the_next_run_recovers_a_killed_session() {
    let fx = Fixture::new(1);
    let mut dead = fx.start_loop(0);
    kill_and_watch_it_die(&fx, 0, &mut dead);

    let out = fx
        .run(0, "curl -sS -o /dev/null https://api.example.com/hello")
        .output()
        .expect("the next run");
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let dead_id = id_of(&dead.dir);
    assert!(
        text.contains(&format!(
            "recovered session {dead_id}: interrupted (supervisor died)"
        )),
        "{text}"
    );
    assert_recovered(&fx, &dead);
}
