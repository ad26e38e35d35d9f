//! The credential broker from the outside: `openclaw secrets` sealing a
//! tenant's secrets at rest (listed without values, each change audited
//! without the value), and `openclaw serve` sessions that name them — the
//! value handed to the session's proxy and gone from disk once it started,
//! `session.json` listing names only, and a placeholder of an ended session
//! refused and receipted in the next (real `openclaw run` children on the
//! netns backend: needs root); and `openclaw run`'s secrets file with
//! `value_from` references (`env:`, `file:`), resolved at its start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use ed25519_dalek::pkcs8::DecodePrivateKey;
use serde_json::{json, Value};

mod support;

use support::serve::{self, start, Daemon};

/// The value stored; it must appear in no file, log or output.
const VALUE: &str = "tenant-secret-9c1e7d-value";

/// Runs the CLI with `stdin`; (success, stdout, stderr).
fn cli_in(home: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_openclaw"))
        .args(args)
        .env("OPENCLAW_HOME", home)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openclaw");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    )
}

fn cli(home: &Path, args: &[&str]) -> String {
    let (ok, out, err) = cli_in(home, args, "");
    assert!(ok, "openclaw {args:?}: {err}");
    out.trim().to_owned()
}

/// One request with the tenant's or the admin's token: status and JSON body.
fn call(d: &Daemon, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(Value::to_string);
    let r = serve::call(d, method, path, Some(token), body.as_deref());
    (r.status, r.body)
}

fn mint(home: &Path, tenant: &str) -> String {
    let path = home.join("tenants").join(tenant).join("keys/root.key");
    let key =
        ed25519_dalek::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(path).expect("key"))
            .expect("pem");
    let policy = capabilities::Policy::from_toml_str(
        "ttl = \"30m\"\n[web]\nallow = [\"example.com\"]\nmethods = [\"get\"]\n",
    )
    .expect("policy");
    capabilities::mint(&policy, &key.to_bytes(), SystemTime::now()).expect("mint")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            out.extend(files_under(&path));
        } else if meta.is_file() {
            out.push(path);
        }
    }
    out
}

/// No file under `dir` (and none of `extra`) holds the value.
fn assert_value_nowhere(dir: &Path, extra: &[&Path]) {
    let mut paths = files_under(dir);
    paths.extend(extra.iter().map(|p| p.to_path_buf()));
    for path in paths {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
            "{} holds the secret's value",
            path.display()
        );
    }
}

fn audit_actions(home: &Path) -> Vec<(String, String, String)> {
    cli(home, &["audit", "--tenant", "a"])
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
            (s("action"), s("target"), s("outcome"))
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").mode() & 0o777
}

#[test]
fn secrets_are_sealed_listed_without_values_removed_and_audited() {
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    cli(h, &["tenants", "create", "a"]);
    let set = [
        "secrets",
        "set",
        "--tenant",
        "a",
        "api_key",
        "--host",
        "example.com",
        "--placement",
        "header:X-Api-Key",
    ];
    let (ok, out, err) = cli_in(h, &set, &format!("{VALUE}\n"));
    assert!(ok, "{err}");
    assert!(!out.contains(VALUE) && !err.contains(VALUE));
    // No such tenant; a bad name; a bad field: refused, nothing stored.
    let (ok, _, err) = cli_in(h, &["secrets", "set", "--tenant", "zz", "k"], VALUE);
    assert!(!ok && err.contains("no tenant zz"), "{err}");
    let (ok, _, err) = cli_in(h, &["secrets", "set", "--tenant", "a", "Bad-Name"], VALUE);
    assert!(!ok && err.contains("secret names"), "{err}");
    let bad_host = ["secrets", "set", "--tenant", "a", "k", "--host", "h:1"];
    let (ok, _, err) = cli_in(h, &bad_host, VALUE);
    assert!(!ok && !err.contains(VALUE), "{err}");
    let (ok, _, err) = cli_in(h, &["secrets", "set", "--tenant", "a", "k"], "");
    assert!(!ok && err.contains("no value"), "{err}");

    let listed: Value =
        serde_json::from_str(&cli(h, &["secrets", "list", "--tenant", "a", "--json"]))
            .expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["name"], "api_key");
    assert_eq!(listed[0]["hosts"], json!(["example.com"]));
    assert_eq!(listed[0]["placement"], json!(["header:X-Api-Key"]));
    assert!(listed[0].get("value").is_none(), "{listed}");
    let table = cli(h, &["secrets", "list", "--tenant", "a"]);
    assert!(
        table.contains("api_key") && table.contains("hosts=example.com"),
        "{table}"
    );

    assert_eq!(mode(&h.join("keys/secrets.key")), 0o600);
    assert_eq!(mode(&h.join("tenants/a/secrets/api_key.json")), 0o600);
    assert_eq!(mode(&h.join("tenants/a/secrets")), 0o700);
    assert_value_nowhere(h, &[]);

    cli(h, &["secrets", "rm", "--tenant", "a", "api_key"]);
    let (ok, _, _) = cli_in(h, &["secrets", "rm", "--tenant", "a", "api_key"], "");
    assert!(!ok, "a second rm finds nothing");
    assert!(!h.join("tenants/a/secrets/api_key.json").exists());
    let secret_lines: Vec<_> = audit_actions(h)
        .into_iter()
        .filter(|(action, _, _)| action.starts_with("secret."))
        .collect();
    let expect = |a: &str, t: &str, o: &str| (a.to_owned(), t.to_owned(), o.to_owned());
    assert_eq!(
        secret_lines,
        [
            expect("secret.set", "api_key", "ok"),
            expect("secret.set", "-", "refused"),
            expect("secret.set", "k", "refused"),
            expect("secret.remove", "api_key", "ok"),
            expect("secret.remove", "api_key", "refused"),
        ]
    );
    assert_value_nowhere(h, &[]);
}

/// Polls `f` for up to 60 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..600 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn session_json(home: &Path, id: &str) -> Value {
    let path = home
        .join("tenants/a/sessions")
        .join(id)
        .join("session.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("session.json")).expect("json")
}

#[test]
fn sessions_get_named_secrets_and_an_ended_sessions_placeholder_is_refused() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let set = [
        "secrets",
        "set",
        "--tenant",
        "a",
        "api_key",
        "--host",
        "example.com",
        "--placement",
        "header:X-Api-Key",
    ];
    let (ok, _, err) = cli_in(h, &set, VALUE);
    assert!(ok, "{err}");
    let cap = mint(h, "a");
    let log = logs.path().join("serve.log");
    let d = start(h, &log);

    // The tenant's own secrets over the API: stored, listed without the
    // value, removed; the admin token is told the routes do not exist.
    let admin = cli(h, &["tenants", "admin-token"]);
    let put = json!({"value": VALUE, "hosts": ["example.com"]});
    let (status, body) = call(&d, "PUT", "/v1/secrets/api2", &a, Some(&put));
    assert_eq!((status, &body["stored"]), (200, &json!(true)), "{body}");
    let (status, _) = call(&d, "PUT", "/v1/secrets/api2", &admin, Some(&put));
    assert_eq!(status, 404);
    let (status, body) = call(&d, "PUT", "/v1/secrets/Bad", &a, Some(&put));
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("name")),
        "{body}"
    );
    let bad_host = json!({"value": VALUE, "hosts": ["h:1"]});
    let (status, body) = call(&d, "PUT", "/v1/secrets/k", &a, Some(&bad_host));
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("body")),
        "{body}"
    );
    assert!(!body.to_string().contains(VALUE), "{body}");
    let (status, listed) = call(&d, "GET", "/v1/secrets", &a, None);
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["api2", "api_key"], "{listed}");
    assert!(!listed.to_string().contains(VALUE), "{listed}");
    let (status, _) = call(&d, "DELETE", "/v1/secrets/api2", &a, None);
    assert_eq!(status, 200);
    let (status, body) = call(&d, "DELETE", "/v1/secrets/api2", &a, None);
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let api_lines: Vec<(String, String, String)> = audit_actions(h)
        .into_iter()
        .filter(|(action, target, _)| action.starts_with("secret.") && target != "api_key")
        .collect();
    let line = |a: &str, t: &str, o: &str| (a.to_owned(), t.to_owned(), o.to_owned());
    assert_eq!(
        api_lines,
        [
            line("secret.set", "api2", "ok"),
            line("secret.set", "-", "refused"),
            line("secret.set", "k", "refused"),
            line("secret.remove", "api2", "ok"),
            line("secret.remove", "api2", "refused"),
        ]
    );

    // Unknown or repeated names: 400 naming `secrets`, nothing started.
    for names in [
        json!(["nope"]),
        json!(["api_key", "api_key"]),
        json!(["../x"]),
    ] {
        let (status, body) = call(
            &d,
            "POST",
            "/v1/sessions",
            &a,
            Some(&json!({"capabilities": cap, "command": ["true"], "secrets": names})),
        );
        assert_eq!(status, 400, "{names}: {body}");
        assert_eq!(body["error"]["field"], "secrets", "{body}");
    }

    // The first session: its sandbox sees only the placeholder.
    let (status, body) = call(
        &d,
        "POST",
        "/v1/sessions",
        &a,
        Some(&json!({"capabilities": cap, "secrets": ["api_key"],
            "command": ["sh", "-c", "echo \"ph=$API_KEY\"; sleep 60"]})),
    );
    assert_eq!(status, 201, "{body}");
    let first = body["id"].as_str().expect("id").to_owned();
    assert_eq!(session_json(h, &first)["secrets"], json!(["api_key"]));
    let spawn: Vec<String> = std::fs::read_dir(h.join("tenants/a/spawn"))
        .expect("spawn dir")
        .flatten()
        .map(|e| e.file_name().into_string().expect("utf-8"))
        .collect();
    assert!(
        spawn
            .iter()
            .all(|n| !n.ends_with(".secrets.toml") && !n.ends_with(".cap")),
        "the files handed to the session are gone once it started: {spawn:?}"
    );
    let console = h
        .join("tenants/a/sessions")
        .join(&first)
        .join("console.log");
    let placeholder = wait_for("the placeholder in the console", || {
        let text = std::fs::read_to_string(&console).ok()?;
        let line = text.lines().find_map(|l| l.strip_prefix("ph="))?;
        Some(line.trim().to_owned())
    });
    assert!(placeholder.starts_with("ocs_api_key_"), "{placeholder}");
    let (status, _) = call(&d, "POST", &format!("/v1/sessions/{first}/stop"), &a, None);
    assert_eq!(status, 202);
    wait_for("the first session's end", || {
        (session_json(h, &first)["status"] != "running").then_some(())
    });

    // The second session presents the first one's placeholder: refused
    // before any upstream, with a credential-stage receipt.
    let script = format!(
        "curl -s -o /dev/null --max-time 10 -H 'X-Api-Key: {placeholder}' https://example.com/x; \
         echo curl-exit=$?"
    );
    let (status, body) = call(
        &d,
        "POST",
        "/v1/sessions",
        &a,
        Some(&json!({"capabilities": cap, "command": ["sh", "-c", script]})),
    );
    assert_eq!(status, 201, "{body}");
    let second = body["id"].as_str().expect("id").to_owned();
    wait_for("the second session's end", || {
        (session_json(h, &second)["status"] != "running").then_some(())
    });
    let receipts = std::fs::read_to_string(
        h.join("tenants/a/sessions")
            .join(&second)
            .join("receipts.jsonl"),
    )
    .expect("receipts");
    let refused: Vec<Value> = receipts
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("receipt"))
        .filter(|r| r.to_string().contains("credential revoked"))
        .collect();
    assert_eq!(refused.len(), 1, "{receipts}");
    let text = refused[0].to_string();
    assert!(
        text.contains("\"block\"") && text.contains("api_key") && text.contains("example.com"),
        "{text}"
    );
    let (status, verified) = call(
        &d,
        "GET",
        &format!("/v1/sessions/{second}/receipts/verify"),
        &a,
        None,
    );
    assert_eq!(
        (status, &verified["status"]),
        (200, &json!("valid")),
        "{verified}"
    );

    let actions = audit_actions(h);
    assert!(actions.contains(&("secret.set".into(), "api_key".into(), "ok".into())));
    drop(d);
    assert_value_nowhere(h, &[&log]);
}

/// `openclaw run --secrets` with `value_from` references: resolved when the
/// session starts (the sandbox sees placeholders, session.json the names,
/// the bundle no value); a variable that is not set or a file that cannot
/// be read stops it with exit 125 naming it, before any session exists.
#[test]
fn run_resolves_env_and_file_references_and_refuses_missing_ones_before_the_sandbox() {
    let home = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    support::keygen_and_mint(
        h,
        "ttl = \"30m\"\n[web]\nallow = [\"example.com\"]\nmethods = [\"get\"]\n",
    );
    let from_env = "value-from-the-env-41d2";
    let from_file = "value-from-the-file-8be0";
    let file = outside.path().join("pw");
    std::fs::write(&file, format!("{from_file}\n")).expect("pw");
    let var = "OPENCLAW_TEST_SECRET_REF_5E1B";
    let write_secrets = |path: &Path| {
        let secrets = outside.path().join("secrets.toml");
        std::fs::write(
            &secrets,
            format!(
                "[[secret]]\nname = \"a\"\nvalue_from = \"env:{var}\"\n\n\
                 [[secret]]\nname = \"b\"\nvalue_from = \"file:{}\"\n\n\
                 [[secret]]\nname = \"c\"\nvalue = \"env:{var}\"\n",
                path.display()
            ),
        )
        .expect("secrets");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        secrets
    };
    let run = |secrets: &Path, set: bool| {
        let mut cmd = support::openclaw(h);
        cmd.arg("run")
            .arg("--capabilities")
            .arg(h.join("task.cap"))
            .args(["--backend", "netns", "--approve", "deny", "--work-max", "0"])
            .arg("--secrets")
            .arg(secrets)
            .args(["--", "sh", "-c", "echo \"a=$A b=$B c=$C\""])
            .stdin(Stdio::null());
        if set {
            cmd.env(var, from_env);
        } else {
            cmd.env_remove(var);
        }
        cmd.output().expect("openclaw run")
    };
    let sessions = || -> Vec<PathBuf> {
        std::fs::read_dir(h.join("sessions"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };

    let secrets = write_secrets(&file);
    let out = run(&secrets, false);
    assert_eq!(out.status.code(), Some(125), "{}", support::text(&out));
    let err = support::stderr(&out);
    assert!(err.contains(var) && err.contains("not set"), "{err}");
    assert!(
        sessions().is_empty(),
        "no session before the secrets resolve"
    );
    let missing = write_secrets(&outside.path().join("missing"));
    let out = run(&missing, true);
    assert_eq!(out.status.code(), Some(125), "{}", support::text(&out));
    assert!(
        support::stderr(&out).contains("cannot read the file"),
        "{}",
        support::text(&out)
    );
    assert!(sessions().is_empty());

    let secrets = write_secrets(&file);
    let out = run(&secrets, true);
    assert!(out.status.success(), "{}", support::text(&out));
    let made = sessions();
    assert_eq!(made.len(), 1, "{made:?}");
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(made[0].join("session.json")).expect("session.json"),
    )
    .expect("json");
    assert_eq!(info["secrets"], json!(["a", "b", "c"]), "{info}");
    let console = std::fs::read_to_string(made[0].join("console.log")).expect("console");
    assert!(
        console.contains("a=ocs_a_")
            && console.contains("b=ocs_b_")
            && console.contains("c=ocs_c_"),
        "{console}"
    );
    for value in [from_env, from_file] {
        for path in files_under(h) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{} holds a secret's value",
                path.display()
            );
        }
    }
}

/// A secret set or removed by a user a trusted proxy names is audited as
/// that user (`actor: user`, `user: <name>`), as a settings change is:
/// who changed a credential is kept.
#[test]
fn a_secret_set_by_a_trusted_proxys_user_is_audited_as_that_user() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let d = serve::start_with(
        h,
        &logs.path().join("serve.log"),
        &[
            "--trusted-proxy",
            "127.0.0.1/32",
            "--identity-header",
            "X-Remote-User",
        ],
    );
    let alice = "X-Remote-User: alice@example.com";
    let r = serve::call_with(
        &d,
        "PUT",
        "/v1/secrets/llm_key",
        Some(&a),
        Some(&json!({"value": "sk-test-123", "hosts": ["api.openai.com"]}).to_string()),
        &[alice],
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = serve::call_with(
        &d,
        "DELETE",
        "/v1/secrets/llm_key",
        Some(&a),
        None,
        &[alice],
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Without a named user: the tenant.
    let (status, _) = call(
        &d,
        "PUT",
        "/v1/secrets/other",
        &a,
        Some(&json!({"value": "sk-test-456", "hosts": ["api.openai.com"]})),
    );
    assert_eq!(status, 200);
    let lines: Vec<Value> = std::fs::read_to_string(h.join("audit.jsonl"))
        .expect("audit")
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit json"))
        .collect();
    for (action, target, actor, user) in [
        (
            "secret.set",
            "llm_key",
            json!("user"),
            json!("alice@example.com"),
        ),
        (
            "secret.remove",
            "llm_key",
            json!("user"),
            json!("alice@example.com"),
        ),
        ("secret.set", "other", json!("tenant"), Value::Null),
    ] {
        let line = lines
            .iter()
            .find(|l| l["action"] == action && l["target"] == target)
            .unwrap_or_else(|| panic!("no {action} {target} line: {lines:?}"));
        assert_eq!((&line["actor"], &line["user"]), (&actor, &user), "{line}");
    }
}
