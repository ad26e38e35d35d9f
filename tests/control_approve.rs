//! `openclaw approve` / `openclaw deny` against a real running session (the
//! flight-booking demo with its $487 purchase left to the control socket):
//! listing what waits, refusing an id that is not pending, answering, the
//! approval receipt naming `terminal:approve-cmd`, and a clear error once the
//! session has ended. Needs root (sessions create network namespaces).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openclaw(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openclaw"));
    cmd.env("OPENCLAW_HOME", home).env_remove("RUST_LOG");
    cmd
}

fn run(home: &Path, args: &[&str]) -> Output {
    openclaw(home).args(args).output().expect("run openclaw")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the demo and waits until its purchase is pending; returns the
/// demo, the session id and the approval id.
fn demo_waiting_for_approval(home: &Path, not: &[String]) -> (Killed, String, u64) {
    let demo = Killed(
        openclaw(home)
            .args([
                "demo",
                "flight-booking",
                "--approve",
                "prompt",
                "--approval-timeout",
                "120s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo"),
    );
    let id = wait_until("a running session", Duration::from_secs(60), || {
        std::fs::read_dir(home.join("sessions"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|id| {
                !not.contains(id) && home.join("sessions").join(id).join("control.sock").exists()
            })
    });
    // The socket is owner-only.
    let meta =
        std::fs::metadata(home.join("sessions").join(&id).join("control.sock")).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let approval = wait_until(
        "the purchase to be pending",
        Duration::from_secs(60),
        || {
            let out = run(home, &["approve", &id]);
            assert!(out.status.success(), "{}", text(&out));
            let listing = String::from_utf8_lossy(&out.stdout).into_owned();
            let line = listing
                .lines()
                .find(|l| l.contains("POST united.com/api/booking/purchase $487.00"))?;
            assert!(line.contains("s left"), "{line}");
            line.split_whitespace().next()?.parse::<u64>().ok()
        },
    );
    (demo, id, approval)
}

fn approvals(home: &Path, id: &str) -> Vec<(bool, String)> {
    std::fs::read_to_string(home.join("sessions").join(id).join("receipts.jsonl"))
        .expect("receipts")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|r| r["kind"] == "approval")
        .map(|r| {
            (
                r["approved"].as_bool().expect("approved"),
                r["approver"].as_str().expect("approver").to_owned(),
            )
        })
        .collect()
}

fn wait_exit(mut demo: Killed) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = demo.0.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the demo never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn approve_and_deny_from_the_terminal() {
    let home = tempfile::tempdir().expect("home");
    let home = home.path();

    let (demo, first, approval) = demo_waiting_for_approval(home, &[]);
    // An id that is not pending: refused, naming what is.
    let wrong = run(home, &["deny", &first, "9999"]);
    assert!(!wrong.status.success());
    let msg = text(&wrong);
    assert!(msg.contains("9999") && msg.contains("not pending"), "{msg}");
    assert!(msg.contains(&format!("pending now: {approval}")), "{msg}");

    let ok = run(home, &["approve", &first, &approval.to_string()]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains(&format!("approved approval {approval}")));
    assert!(wait_exit(demo).success(), "the approved demo completes");
    assert_eq!(
        approvals(home, &first),
        vec![(true, "terminal:approve-cmd".to_owned())]
    );
    let report: Value = serde_json::from_slice(
        &std::fs::read(home.join("sessions").join(&first).join("report.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(report["spend"]["payments_cents"], 48_700);
    // The socket is gone with the session; answering now says so.
    assert!(!home
        .join("sessions")
        .join(&first)
        .join("control.sock")
        .exists());
    let late = run(home, &["approve", &first, &approval.to_string()]);
    assert!(!late.status.success());
    assert!(text(&late).contains("not running"), "{}", text(&late));

    let (demo, second, approval) = demo_waiting_for_approval(home, std::slice::from_ref(&first));
    let no = run(home, &["deny", &second, &approval.to_string()]);
    assert!(no.status.success(), "{}", text(&no));
    wait_exit(demo);
    assert_eq!(
        approvals(home, &second),
        vec![(false, "terminal:approve-cmd".to_owned())]
    );
    let report: Value = serde_json::from_slice(
        &std::fs::read(home.join("sessions").join(&second).join("report.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(report["counts"]["approvals"]["denied"], 1);
    assert_eq!(report["spend"]["payments_cents"], 0);
}
