//! The main job end to end: `openclaw demo flight-booking` through the real
//! binary (netns sandbox, real proxy, real curl, mock HTTPS services), then
//! the report, the receipts and the secrets are checked from the outside.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod support;

use support::openclaw;

fn only_session(home: &Path) -> PathBuf {
    let sessions: Vec<PathBuf> = std::fs::read_dir(home.join("sessions"))
        .expect("sessions dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    sessions.into_iter().next().expect("one session")
}

/// Every file under `dir`, recursively, as bytes.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else if path.is_file() {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn secret_values(home: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(home.join("demo/flight-booking/secrets.toml"))
        .expect("demo secrets");
    let parsed: toml::Value = toml::from_str(&text).expect("secrets toml");
    parsed["secret"]
        .as_array()
        .expect("secrets")
        .iter()
        .map(|s| s["value"].as_str().expect("value").to_owned())
        .collect()
}

#[test]
fn flight_booking_demo_tells_the_seed_story_and_keeps_the_secrets_out() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = openclaw(home.path())
        .args(["demo", "flight-booking", "--approve", "auto"])
        .output()
        .expect("run the demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let dir = only_session(home.path());

    // The report tells the story: search, login, flights, compare allowed;
    // Slack blocked; the $487 purchase held and approved; the email sent.
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json"))
            .expect("report json");
    let counts = &report["counts"];
    assert_eq!(counts["blocked"], 1, "{counts}");
    assert_eq!(counts["approvals"]["approved"], 1, "{counts}");
    assert_eq!(counts["approvals"]["denied"], 0, "{counts}");
    assert_eq!(
        counts["allowed"], 5,
        "search, login, flights, compare, email: {counts}"
    );
    assert_eq!(report["spend"]["payments_cents"], 48700);
    assert_eq!(
        report["receipts"]["status"], "valid",
        "{}",
        report["receipts"]
    );
    assert_eq!(report["session"]["status"], "completed");
    assert_eq!(report["session"]["backend"], "netns");
    let timeline = report["timeline"].as_array().expect("timeline");
    let blocked: Vec<&Value> = timeline
        .iter()
        .filter(|e| e["decision"] == "block")
        .collect();
    assert_eq!(blocked[0]["action"]["host"], "hooks.slack.com");
    // At the moment of the approval: 4 allowed, 1 blocked, 1 pending.
    let approval_at = timeline
        .iter()
        .position(|e| e["decision"] == "approval")
        .expect("an approval");
    let before = &timeline[..approval_at];
    assert_eq!(
        before.iter().filter(|e| e["decision"] == "allow").count(),
        4
    );
    assert_eq!(
        before.iter().filter(|e| e["decision"] == "block").count(),
        1
    );

    // The offline verifier agrees, with the pinned demo receipt key.
    let verify = openclaw(home.path())
        .arg("verify")
        .arg(&dir)
        .arg("--key")
        .arg(home.path().join("demo/flight-booking/keys/receipt.pub"))
        .arg("--cap-pubkey")
        .arg(home.path().join("demo/flight-booking/keys/root.pub"))
        .output()
        .expect("verify");
    let verify_out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify_out.contains(", 0 differ"),
        "every decision re-derives from the token: {verify_out}"
    );
    assert!(
        verify.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // united.com saw the real password and card; Slack was never reached.
    let upstream: Value = serde_json::from_slice(
        &std::fs::read(dir.join("demo-upstream.json")).expect("upstream ledger"),
    )
    .expect("ledger json");
    let seen = upstream["requests"].as_array().expect("requests");
    let login = seen
        .iter()
        .find(|r| r["path"] == "/api/auth/login")
        .expect("login reached united.com");
    assert_eq!(login["real_secret_presented"], true);
    assert_eq!(login["status"], 200);
    let purchase = seen
        .iter()
        .find(|r| r["path"] == "/api/booking/purchase")
        .expect("purchase reached united.com");
    assert_eq!(purchase["real_secret_presented"], true);
    assert!(seen.iter().all(|r| r["host"] != "hooks.slack.com"));

    // The sandbox held placeholders only: its environment, its files, and
    // everything in the bundle (receipts, events, console, report) are free
    // of the real values.
    let env = std::fs::read_to_string(dir.join("work/sandbox-env.txt")).expect("sandbox env");
    assert!(env.contains("UNITED_LOGIN=ocs_"), "{env}");
    assert!(env.contains("UNITED_CARD=ocs_"), "{env}");
    let secrets = secret_values(home.path());
    assert_eq!(secrets.len(), 2);
    for (path, bytes) in all_files(&dir) {
        for secret in &secrets {
            assert!(
                !contains(&bytes, secret),
                "{} holds a secret value",
                path.display()
            );
        }
    }
    for secret in &secrets {
        assert!(!stderr.contains(secret.as_str()), "secret on stderr");
    }
}

#[test]
fn the_demo_takes_tenant_and_user_labels_as_run_does() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = openclaw(home.path())
        .args(["demo", "flight-booking", "--approve", "auto"])
        .args(["--tenant", "acme-demo", "--user", "bob"])
        .output()
        .expect("run the demo");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = only_session(home.path());
    let info: Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).expect("session.json"))
            .expect("session json");
    assert_eq!(
        (&info["tenant"], &info["user"]),
        (&Value::from("acme-demo"), &Value::from("bob")),
        "{info}"
    );
    // The signed chain carries them too (the ledger reads them from there).
    let chain = std::fs::read_to_string(dir.join("receipts.jsonl")).expect("receipts");
    let start: Value =
        serde_json::from_str(chain.lines().next().expect("first receipt")).expect("receipt json");
    assert_eq!(start["kind"], "session_start", "{start}");
    assert_eq!(
        (&start["tenant"], &start["user"]),
        (&Value::from("acme-demo"), &Value::from("bob")),
        "{start}"
    );

    // A label run would refuse, the demo refuses too, before any session.
    let home = tempfile::tempdir().expect("tempdir");
    let out = openclaw(home.path())
        .args(["demo", "flight-booking", "--approve", "auto"])
        .args(["--tenant", "bad\ntenant"])
        .output()
        .expect("run the demo");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tenant"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!home.path().join("sessions").exists());
}
