//! The bound on each call to the PostgreSQL store: `--database-timeout`,
//! `OPENCLAW_DATABASE_TIMEOUT` as its fallback, 5 s by default (the cap on
//! connections left stuck after a timeout is tested in
//! `tenants::postgres::tests`). Nothing here reaches a database.

mod support;

use support::{openclaw, text};

/// `--database-timeout` is a flag on the commands that take `--database`
/// (and on `openclaw run`, for its PostgreSQL quota store and ledger), with
/// `OPENCLAW_DATABASE_TIMEOUT` as its fallback; a value that is not a
/// positive duration is refused, naming the flag, before anything connects;
/// `--help` says what it bounds.
#[test]
fn the_database_timeout_is_a_flag_with_the_environment_as_fallback() {
    let home = tempfile::tempdir().expect("home");
    let nowhere = "postgres://openclaw@127.0.0.1:1/none";
    for (flag, env) in [
        (Some("soon"), None),
        (None, Some("soon")),
        (Some("0s"), None),
    ] {
        let mut cmd = openclaw(home.path());
        cmd.args(["tenants", "list", "--database", nowhere]);
        if let Some(value) = flag {
            cmd.args(["--database-timeout", value]);
        }
        match env {
            Some(value) => cmd.env("OPENCLAW_DATABASE_TIMEOUT", value),
            None => cmd.env_remove("OPENCLAW_DATABASE_TIMEOUT"),
        };
        let out = cmd.output().expect("openclaw tenants list");
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{flag:?} {env:?}: {said}");
        assert!(said.contains("--database-timeout"), "{said}");
        assert!(
            said.contains("not a duration") || said.contains("cannot be given no time"),
            "{said}"
        );
        assert!(
            !said.contains("connecting"),
            "refused before connecting: {said}"
        );
    }
    // A good value bounds the connection (refused here: nothing listens).
    let out = openclaw(home.path())
        .args(["tenants", "list", "--database", nowhere])
        .args(["--database-timeout", "2s"])
        .output()
        .expect("openclaw tenants list");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("connecting to the postgresql database none"),
        "{}",
        text(&out)
    );
    for command in [
        &["serve", "--help"][..],
        &["tenants", "--help"],
        &["audit", "--help"],
        &["usage", "rebuild", "--help"],
        &["usage", "report", "--help"],
        &["run", "--help"],
    ] {
        let out = openclaw(home.path())
            .args(command)
            .output()
            .expect("--help");
        let help = support::stdout(&out);
        assert!(
            help.contains("--database-timeout <DURATION>")
                && help.contains("connecting included")
                && help.contains("OPENCLAW_DATABASE_TIMEOUT"),
            "{command:?}:\n{help}"
        );
    }
}
