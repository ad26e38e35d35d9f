//! What the binary-driving integration tests share: running `openclaw` with
//! a private home, reading its output, waiting for a live demo session, and
//! reading approval receipts back from a bundle.
//!
//! Each test binary uses a different subset, hence the allowance below.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Receipt chains written for tests that read them back (floods).
pub mod chains;
/// A local HTTPS LLM provider, its prices, and reading calls back.
pub mod llm_provider;
/// A hand-written HTTP/1.1 exchange (every request byte the test's).
pub mod raw_http;
/// `openclaw serve` driven over HTTP with curl.
pub mod serve;

/// Kills a child process at the end of the test, however the test ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary with `home` as its OPENCLAW_HOME and no inherited log
/// filter (tests read its output).
pub fn openclaw(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openclaw"));
    cmd.env("OPENCLAW_HOME", home).env_remove("RUST_LOG");
    cmd
}

pub fn run(home: &Path, args: &[&str]) -> Output {
    openclaw(home).args(args).output().expect("run openclaw")
}

/// [`run`] with the process's address space capped at 2 GiB, so a reader
/// that takes a huge file whole fails here instead of taking the machine's
/// memory.
pub fn capped(home: &Path, args: &[&str]) -> Output {
    capped_to(home, args, 2048)
}

/// [`capped`] at `mib` MiB of address space.
pub fn capped_to(home: &Path, args: &[&str], mib: u64) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(r#"ulimit -v {} && exec "$0" "$@""#, mib * 1024))
        .arg(env!("CARGO_BIN_EXE_openclaw"))
        .args(args)
        .env("OPENCLAW_HOME", home)
        .env_remove("RUST_LOG")
        .output()
        .expect("run openclaw")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout then stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    stdout(out) + &stderr(out)
}

/// Polls `f` every 100 ms until it yields a value; fails the test naming
/// `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The flight-booking demo with its purchase approval left to the control
/// socket (no terminal here, so `prompt` waits for `approve`/the UI).
pub fn start_demo_awaiting_approval(home: &Path) -> Killed {
    let child = openclaw(home)
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
        .expect("start the demo");
    Killed(child)
}

/// The id of the one session under `home` that has a live control socket
/// and is not in `not`.
pub fn running_session(home: &Path, not: &[String]) -> String {
    wait_until("a running session", Duration::from_secs(60), || {
        std::fs::read_dir(home.join("sessions"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|id| {
                !not.contains(id) && home.join("sessions").join(id).join("control.sock").exists()
            })
    })
}

/// Every receipt of a bundle, parsed.
pub fn receipts(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("receipts.jsonl"))
        .expect("receipts")
        .lines()
        .map(|l| serde_json::from_str(l).expect("receipt json"))
        .collect()
}

/// The approval receipts of a bundle: (approved, approver).
pub fn approval_receipts(dir: &Path) -> Vec<(bool, String)> {
    receipts(dir)
        .iter()
        .filter(|r| r["kind"] == "approval")
        .map(|r| {
            (
                r["approved"].as_bool().expect("approved"),
                r["approver"].as_str().expect("approver").to_owned(),
            )
        })
        .collect()
}

/// Makes `home` a ready openclaw home: keys from `openclaw keygen`,
/// `policy.toml` holding `policy`, and `task.cap` minted from it.
pub fn keygen_and_mint(home: &Path, policy: &str) {
    let keygen = run(home, &["keygen"]);
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let policy_file = home.join("policy.toml");
    std::fs::write(&policy_file, policy).expect("policy");
    let mint = openclaw(home)
        .args(["cap", "mint"])
        .arg(&policy_file)
        .arg("-o")
        .arg(home.join("task.cap"))
        .output()
        .expect("mint");
    assert!(mint.status.success(), "{}", stderr(&mint));
}

/// `openclaw verify` of `bundle` under `home`'s receipt key passes.
pub fn assert_verifies(home: &Path, bundle: &Path) {
    let verify = openclaw(home)
        .arg("verify")
        .arg(bundle)
        .arg("--key")
        .arg(home.join("keys/receipt.pub"))
        .output()
        .expect("verify");
    assert!(verify.status.success(), "verify: {}", text(&verify));
}
