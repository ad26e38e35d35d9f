//! The API against its own OpenAPI document: schemathesis (PyPI, pinned in
//! `scripts/bootstrap`'s venv for it) generates requests from
//! `GET /openapi.json` — valid, invalid, undeclared methods, missing or
//! wrong authentication — and checks every answer against the document: no
//! 5xx, statuses, content types, headers and bodies as declared, 405 with
//! `Allow`, invalid input refused. Run twice, once per kind of caller,
//! because the other kind's routes answer 404 by design (docs/control-plane.md).
//! Gated on `Requirement::Schemathesis` (docs/testing.md).

mod support;

use std::path::Path;
use std::process::Command;

use support::serve::{cli, start, Daemon};
use test_requirements::{require, Requirement, SCHEMATHESIS_VENV};

/// The admin's routes (404 to a tenant token), as a path regex.
const ADMIN_PATHS: &str = "^/(metrics|v1/tenants|v1/ratecard)";

/// Checks left out, and why:
/// - `positive_data_acceptance` expects a schema-valid body to be accepted;
///   a capability token is an opaque string the schema cannot describe, so
///   every generated one is (rightly) 400.
const EXCLUDED_CHECKS: &str = "positive_data_acceptance";

/// Runs schemathesis with `token` over the operations `filter` selects; its
/// output, and whether it passed.
fn schemathesis(d: &Daemon, token: &str, filter: [&str; 2], reports: &Path) -> (bool, String) {
    let out = Command::new(Path::new(SCHEMATHESIS_VENV).join("bin/st"))
        .args(["run", &format!("http://{}/openapi.json", d.addr)])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--exclude-checks", EXCLUDED_CHECKS])
        .args(["--phases", "examples,coverage,fuzzing"])
        // Reproducible in CI: the same requests every run.
        .args(["--seed", "1", "--max-examples", "25", "--workers", "1"])
        .args(["--no-color", "--generation-database", "none"])
        .args(filter)
        .arg("--report-dir")
        .arg(reports)
        // Its caches (.hypothesis, .schemathesis) go there, not into the checkout.
        .current_dir(reports)
        .env("HOME", reports)
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
#[cfg_attr(
    not(openclaw_has_schemathesis),
    ignore = "schemathesis's venv is missing (scripts/bootstrap installs it)"
)]
fn schemathesis_finds_no_server_error_and_no_contract_violation() {
    require(
        &[Requirement::Schemathesis],
        "serve_schemathesis::schemathesis_finds_no_server_error_and_no_contract_violation",
    );
    let home = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let tenant = cli(h, &["tenants", "create", "acme"]);
    let admin = cli(h, &["tenants", "admin-token"]);
    let log = scratch.path().join("serve.log");
    let d = start(h, &log);

    let (ok, out) = schemathesis(
        &d,
        &tenant,
        ["--exclude-path-regex", ADMIN_PATHS],
        scratch.path(),
    );
    assert!(ok, "with the tenant's token:\n{out}");
    let (ok, out) = schemathesis(
        &d,
        &admin,
        ["--include-path-regex", ADMIN_PATHS],
        scratch.path(),
    );
    assert!(ok, "with the admin token:\n{out}");

    // Nothing the daemon did went wrong on its side either.
    let log = std::fs::read_to_string(&log).expect("daemon log");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("request failed"), "a 500 was logged:\n{log}");
}
