//! The chain head a session ends with, kept outside its bundle, against an
//! insider who cuts a finished chain and has recovery close it again: the
//! real `openclaw run` (netns backend), `openclaw recover` and `openclaw
//! verify`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::Value;

mod support;

use support::{keygen_and_mint, openclaw, stderr, text};

const POLICY: &str = r#"
ttl = "10m"

[web]
allow = ["api.example.com"]
methods = ["GET"]
"#;

fn only_session(home: &Path) -> PathBuf {
    let mut sessions: Vec<PathBuf> = std::fs::read_dir(home.join("sessions"))
        .expect("sessions")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    sessions.remove(0)
}

fn verify(home: &Path, bundle: &Path, extra: &[&str]) -> Output {
    openclaw(home)
        .arg("verify")
        .arg(bundle)
        .arg("--key")
        .arg(home.join("keys/receipt.pub"))
        .args(extra)
        .arg("--json")
        .output()
        .expect("verify")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

/// Makes a bundle look like one whose supervisor died while it ran: status
/// running, the pid of a process that is gone, this boot.
fn mark_running_with_a_dead_supervisor(bundle: &Path) {
    let path = bundle.join("session.json");
    let mut info: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("session.json")).expect("json");
    let mut gone = std::process::Command::new("true").spawn().expect("spawn");
    let pid = gone.id();
    gone.wait().expect("reap");
    info["status"] = "running".into();
    info["supervisor_pid"] = pid.into();
    info["supervisor_start"] = 1.into();
    info["supervisor_boot_id"] = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .into();
    std::fs::write(&path, serde_json::to_vec_pretty(&info).expect("json")).expect("write");
}

#[test]
fn a_finished_chain_cut_and_closed_again_by_recovery_fails_against_its_head() {
    let home = tempfile::tempdir().expect("tempdir");
    let home = home.path();
    keygen_and_mint(home, POLICY);
    let run = openclaw(home)
        .arg("run")
        .arg("--capabilities")
        .arg(home.join("task.cap"))
        .args(["--backend", "netns", "--", "/bin/sh", "-c", "exit 0"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));

    // The end-of-run line names the head; the home records it, 0600,
    // hashes only.
    let err = stderr(&run);
    let printed = err
        .split("chain head ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no chain head in: {err}"))
        .to_owned();
    assert!(
        printed.starts_with("sha256:") && printed.len() == 71,
        "{printed}"
    );
    let heads = home.join("chain-heads.jsonl");
    let mode = std::fs::metadata(&heads)
        .expect("heads")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let records: Vec<Value> = std::fs::read_to_string(&heads)
        .expect("heads")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    assert_eq!(records.len(), 1);
    let bundle = only_session(home);
    let id = bundle.file_name().and_then(|n| n.to_str()).expect("id");
    assert_eq!(records[0]["session"], id);
    assert_eq!(records[0]["head"], printed.as_str());
    let mut keys: Vec<&str> = records[0]
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["at", "head", "seq", "session"]);
    assert!(
        err.contains(&format!(
            "receipts: {}, chain head {printed}",
            records[0]["seq"].as_u64().expect("seq") + 1
        )),
        "{err}"
    );

    // The intact chain ends at its head.
    for anchor in [
        ["--head", printed.as_str()],
        ["--heads", heads.to_str().expect("utf8")],
    ] {
        let out = verify(home, &bundle, &anchor);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(json(&out)["anchor"]["status"], "matches");
    }

    // The insider: the chain cut before its session_end, the session
    // marked running again.
    let receipts_path = bundle.join("receipts.jsonl");
    let chain = std::fs::read(&receipts_path).expect("chain");
    let lines: Vec<&[u8]> = chain.split_inclusive(|&b| b == b'\n').collect();
    assert!(lines.len() >= 2);
    std::fs::write(&receipts_path, lines[..lines.len() - 1].concat()).expect("cut");
    mark_running_with_a_dead_supervisor(&bundle);
    let cut = std::fs::read(&receipts_path).expect("cut chain");
    let info = std::fs::read(bundle.join("session.json")).expect("info");

    // Recovery refuses: the session ended. Nothing is written.
    let recover = openclaw(home).arg("recover").output().expect("recover");
    assert_eq!(recover.status.code(), Some(1), "{}", text(&recover));
    let said = stderr(&recover);
    assert!(
        said.contains(&format!("{id}: refused to close its chain"))
            && said.contains("the bundle was edited after the session ended"),
        "{said}"
    );
    assert_eq!(std::fs::read(&receipts_path).expect("chain"), cut);
    assert_eq!(
        std::fs::read(bundle.join("session.json")).expect("info"),
        info
    );

    // What recovery did before the anchor existed: with the record out of
    // the way it closes the cut chain as interrupted, which verifies alone.
    let aside = home.join("heads.aside");
    std::fs::rename(&heads, &aside).expect("move aside");
    let recover = openclaw(home).arg("recover").output().expect("recover");
    assert_eq!(recover.status.code(), Some(0), "{}", text(&recover));
    std::fs::rename(&aside, &heads).expect("move back");
    let out = verify(home, &bundle, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(json(&out)["interrupted"].is_object());

    // Against the head it fails, whichever way the head is given.
    for anchor in [
        ["--head", printed.as_str()],
        ["--heads", heads.to_str().expect("utf8")],
    ] {
        let out = verify(home, &bundle, &anchor);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let report = json(&out);
        assert_eq!(report["status"], "invalid");
        assert_eq!(report["anchor"]["status"], "differs");
        let message = report["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(&format!("does not end at the anchored head {printed}"))
                && message.contains("cut, extended or replaced"),
            "{message}"
        );
    }
}
