//! `openclaw approve` / `openclaw deny` against a real running session (the
//! flight-booking demo with its $487 purchase left to the control socket):
//! listing what waits, refusing an id that is not pending, answering, the
//! approval receipt naming `terminal:approve-cmd`, and a clear error once the
//! session has ended. Needs root (sessions create network namespaces).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod support;

use support::{
    approval_receipts, run, running_session, start_demo_awaiting_approval, stdout, text,
    wait_until, Killed,
};

/// Starts the demo and waits until its purchase is pending; returns the
/// demo, the session id and the approval id.
fn demo_waiting_for_approval(home: &Path, not: &[String]) -> (Killed, String, u64) {
    let demo = start_demo_awaiting_approval(home);
    let id = running_session(home, not);
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
            let listing = stdout(&out);
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
    approval_receipts(&home.join("sessions").join(id))
}

fn wait_exit(mut demo: Killed) -> std::process::ExitStatus {
    wait_until("the demo to end", Duration::from_secs(60), || {
        demo.0.try_wait().expect("wait")
    })
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
