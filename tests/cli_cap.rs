//! `openclaw cap …` through the real binary: mint the seed policy, inspect
//! it (verified and not), check actions, attenuate with flags and a policy,
//! seal, and the failures (wrong key, expired, revoked, sealed).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;

use support::{stderr, stdout};

const SEED_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/flight-booking/policy.toml"
);

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    /// A fresh OPENCLAW_HOME with keys from `openclaw keygen`.
    fn new() -> Home {
        let home = Home {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let out = home.run(&["keygen"]);
        assert!(out.status.success(), "{}", stderr(&out));
        home
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_openclaw"))
            .env("OPENCLAW_HOME", self.dir.path())
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .expect("run openclaw")
    }

    fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.path(name), text).expect("write");
        self.path(name).display().to_string()
    }

    fn mint_seed(&self) -> String {
        let out = self.run(&["cap", "mint", SEED_POLICY, "-o", "seed.cap"]);
        assert!(out.status.success(), "{}", stderr(&out));
        self.path("seed.cap").display().to_string()
    }

    /// Runs `cap check` and returns (exit code, parsed decision JSON).
    fn check(&self, token: &str, action: &str, extra: &[&str]) -> (i32, serde_json::Value) {
        let action_file = self.write("action.json", action);
        let mut args = vec!["cap", "check", token, "--action", &action_file];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let code = out.status.code().expect("exit code");
        let json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: stdout {} stderr {}", stdout(&out), stderr(&out)));
        (code, json)
    }
}

const SEARCH: &str = r#"{"type": "web", "method": "GET", "host": "google.com", "path": "/travel/flights/search?from=SFO&to=JFK"}"#;
const SLACK: &str = r#"{"type": "web", "method": "POST", "host": "hooks.slack.com", "path": "/services/T024/B037/xHjk7"}"#;
const PURCHASE: &str = r#"{"type": "payment", "method": "POST", "host": "united.com", "path": "/api/booking/purchase",
    "amount_cents": 48700, "currency": "USD", "merchant": "united.com", "credential": "united_card"}"#;

#[test]
fn mint_then_inspect_shows_four_grants_two_constraints() {
    let home = Home::new();
    let out = home.run(&["cap", "mint", SEED_POLICY, "-o", "seed.cap"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("4 grants, 2 constraints"),
        "{}",
        stdout(&out)
    );
    let token = std::fs::read_to_string(home.path("seed.cap")).expect("token file");
    assert!(token.trim().len() > 100 && !token.contains(' '));

    // Default root.pub from OPENCLAW_HOME: verified.
    let out = home.run(&["cap", "inspect", "seed.cap"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("signature verified"), "{text}");
    assert!(text.contains("4 grants, 2 constraints"), "{text}");
    for needle in [
        "web: google.com/travel/flights",
        "payment: at most $600.00",
        "email: to traveler@example.com",
        "login: united_login at united.com",
        "approval: payments above $400.00",
        "revocation ids:",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }

    // JSON form.
    let out = home.run(&["cap", "inspect", "seed.cap", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["summary"], "4 grants, 2 constraints");
    assert_eq!(json["details"]["grants"], 4);
    assert_eq!(
        json["details"]["revocation_ids"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(json["details"]["signature_verified"], true);

    // Without any root.pub: shown, marked unverified.
    std::fs::remove_file(home.path("keys/root.pub")).expect("rm");
    let out = home.run(&["cap", "inspect", "seed.cap"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("signature NOT verified"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_prints_the_decision_json_with_exit_codes() {
    let home = Home::new();
    let token = home.mint_seed();
    let (code, d) = home.check(&token, SEARCH, &[]);
    assert_eq!(code, 0);
    assert_eq!(d["decision"], "allow");
    assert_eq!(d["grant"], "web");
    assert_eq!(d["revocation_ids"].as_array().map(Vec::len), Some(1));

    let (code, d) = home.check(&token, SLACK, &[]);
    assert_eq!(code, 2);
    assert_eq!(d["decision"], "block");
    assert!(
        d["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no capability")),
        "{d}"
    );

    let (code, d) = home.check(&token, PURCHASE, &[]);
    assert_eq!(code, 3);
    assert_eq!(d["decision"], "approval");
    assert_eq!(d["grant"], "payment");

    // Counters: $200 already spent, $487 more would pass the $600 total.
    let counters = home.write("counters.json", r#"{"spent_cents": 20000}"#);
    let (code, d) = home.check(&token, PURCHASE, &["--counters", &counters]);
    assert_eq!(code, 2, "{d}");
    assert!(
        d["reason"].as_str().is_some_and(|r| r.contains("total")),
        "{d}"
    );

    // An hour later the token has expired.
    let later = humantime::format_rfc3339(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    )
    .to_string();
    let (code, d) = home.check(&token, SEARCH, &["--now", &later]);
    assert_eq!(code, 2);
    assert!(
        d["reason"].as_str().is_some_and(|r| r.contains("expired")),
        "{d}"
    );
}

#[test]
fn check_fails_for_another_root_key_and_revoked_ids() {
    let home = Home::new();
    let token = home.mint_seed();
    let other = Home::new();
    let action = home.write("search.json", SEARCH);
    let other_pub = other.path("keys/root.pub").display().to_string();
    let out = home.run(&[
        "cap", "check", &token, "--pubkey", &other_pub, "--action", &action,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("signature"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let out = home.run(&["cap", "inspect", &token, "--pubkey", &other_pub]);
    assert_eq!(out.status.code(), Some(1), "explicit --pubkey must verify");

    let (_, d) = home.check(&token, SEARCH, &[]);
    let id = d["revocation_ids"][0].as_str().expect("id").to_owned();
    let revoked = home.write("revoked.txt", &format!("# revoked\n{id}\n"));
    let out = home.run(&[
        "cap",
        "check",
        &token,
        "--action",
        &action,
        "--revoked",
        &revoked,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
}

#[test]
fn attenuate_with_flags_and_policy_only_narrows_and_seal_is_final() {
    let home = Home::new();
    let token = home.mint_seed();
    let out = home.run(&[
        "cap",
        "attenuate",
        &token,
        "--domain",
        "kayak.com",
        "--max-amount",
        "300",
        "--ttl",
        "5m",
        "-o",
        "narrow.cap",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let narrow = home.path("narrow.cap").display().to_string();
    let kayak = r#"{"type": "web", "method": "GET", "host": "kayak.com", "path": "/api/compare"}"#;
    assert_eq!(home.check(&narrow, kayak, &[]).1["decision"], "allow");
    let (_, d) = home.check(&narrow, SEARCH, &[]);
    assert_eq!(d["decision"], "block");
    assert!(
        d["reason"].as_str().is_some_and(|r| r.contains("block 1")),
        "{d}"
    );
    assert_eq!(d["revocation_ids"].as_array().map(Vec::len), Some(2));
    let (_, d) = home.check(&narrow, PURCHASE, &[]);
    assert_eq!(d["decision"], "block", "$487 is over the narrowed $300");
    // Widening attempts stay blocked.
    let wide = home.write(
        "wide.toml",
        "[web]\nallow = [\"hooks.slack.com\"]\nmethods = [\"POST\"]\n",
    );
    let out = home.run(&[
        "cap",
        "attenuate",
        &token,
        "--policy",
        &wide,
        "-o",
        "wide.cap",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let wide_cap = home.path("wide.cap").display().to_string();
    assert_eq!(home.check(&wide_cap, SLACK, &[]).1["decision"], "block");
    assert_eq!(home.check(&wide_cap, SEARCH, &[]).1["decision"], "block");

    // Sealed: still checks, cannot be attenuated.
    let out = home.run(&["cap", "attenuate", &narrow, "--seal", "-o", "sealed.cap"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sealed = home.path("sealed.cap").display().to_string();
    assert_eq!(home.check(&sealed, kayak, &[]).1["decision"], "allow");
    let out = home.run(&[
        "cap",
        "attenuate",
        &sealed,
        "--ttl",
        "1m",
        "-o",
        "again.cap",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("sealed"), "{}", stderr(&out));
    assert!(!Path::new(&home.path("again.cap")).exists());
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let home = Home::new();
    let bad = home.write("bad.toml", "[web]\nallow = [\"*\"]\n");
    let out = home.run(&["cap", "mint", &bad, "-o", "x.cap"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && err.contains("bad.toml") && err.contains("not a host name"),
        "{err}"
    );
    let out = home.run(&["cap", "inspect", "missing.cap"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.cap"), "{}", stderr(&out));
    let token = home.mint_seed();
    let action = home.write(
        "a.json",
        r#"{"type": "web", "method": "GET", "host": "kayak.com", "extra": 1}"#,
    );
    let out = home.run(&["cap", "check", &token, "--action", &action]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("a.json"), "{}", stderr(&out));
}

#[test]
fn help_teaches_with_examples() {
    let home = Home::new();
    for sub in ["mint", "attenuate", "inspect", "check"] {
        let out = home.run(&["cap", sub, "--help"]);
        assert!(out.status.success());
        assert!(
            stdout(&out).contains("Examples:"),
            "{sub}: {}",
            stdout(&out)
        );
    }
}

/// The policy `cap mint --help` shows is one that mints, with every grant
/// (the help cannot drift from the schema), and a file of another shape is
/// pointed at it.
#[test]
fn the_policy_in_mint_help_mints_and_a_misshapen_one_points_to_it() {
    let home = Home::new();
    let out = home.run(&["cap", "mint", "--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    let policy: String = help
        .lines()
        .skip_while(|l| !l.contains("valid policy as it stands"))
        .skip_while(|l| !l.trim().is_empty())
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    assert!(policy.starts_with("ttl = "), "{help}");
    let file = home.write("from-help.toml", &policy);
    let out = home.run(&["cap", "mint", &file, "-o", "help.cap"]);
    assert!(out.status.success(), "{policy}\n{}", stderr(&out));
    assert!(stdout(&out).contains("6 grants"), "{}", stdout(&out));

    // `[[web]]` (an array of tables) where the schema has one `[web]`.
    let wrong = home.write("wrong.toml", "[[web]]\nallow = [\"kayak.com\"]\n");
    let out = home.run(&["cap", "mint", &wrong, "-o", "x.cap"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("wrong.toml") && err.contains("`openclaw cap mint --help` shows a policy"),
        "{err}"
    );
}
