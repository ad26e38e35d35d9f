//! `openclaw serve`'s tenant settings, rate card, readiness and the session
//! create options of issue 17 (policy, image, approval timeout, workdir
//! archive), from the outside: the real binary as a daemon on a free
//! loopback port, `curl` as the client, `tar` making the archives. The
//! session tests start real netns sessions (root), the rate card's
//! pricing test against the test provider of `test-support`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

mod support;

use support::serve::{
    call, cli, curl, mint_for_tenant, reply, start, start_env, start_with_upstream, wait_ended,
    Daemon, Reply, HOLDS, POLICY, POLICY_HELD,
};

fn get(d: &Daemon, path: &str, token: &str) -> Reply {
    call(d, "GET", path, Some(token), None)
}

fn put(d: &Daemon, path: &str, token: &str, body: &Value) -> Reply {
    call(d, "PUT", path, Some(token), Some(&body.to_string()))
}

fn post(d: &Daemon, path: &str, token: &str, body: &Value) -> Reply {
    call(d, "POST", path, Some(token), Some(&body.to_string()))
}

/// The audit log's lines with `action`.
fn audit_lines(home: &Path, action: &str) -> Vec<Value> {
    std::fs::read_to_string(home.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("audit line is JSON"))
        .filter(|l| l["action"] == action)
        .collect()
}

fn assert_invalid(r: &Reply, field: &str, what: &str) {
    assert_eq!(r.status, 400, "{what}: {:?}", r.body);
    assert_eq!(r.code(), "invalid", "{what}");
    assert_eq!(r.field(), field, "{what}: {:?}", r.body);
}

#[test]
fn a_tenant_sets_its_defaults_but_never_an_admin_key_and_every_change_is_audited() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let b = cli(h, &["tenants", "create", "b"]);
    let admin = cli(h, &["tenants", "admin-token"]);
    let d = start(h, &logs.path().join("serve.log"));

    // Nothing set: every key null.
    let r = get(&d, "/v1/settings", &a);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["tenant"]["backend"], Value::Null);
    assert_eq!(r.body["admin"]["allowed_backends"], Value::Null);

    // Each admin key is refused to the tenant by its name, and audited.
    for key in [
        "allowed_backends",
        "allowed_images",
        "max_approval_timeout",
        "allow_policy",
        "allowed_approve",
    ] {
        let r = put(
            &d,
            "/v1/settings",
            &a,
            &json!({"approve": "api", key: null}),
        );
        assert_invalid(&r, key, key);
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("admin-only"));
    }
    let refused = audit_lines(h, "settings.set");
    assert_eq!(refused.len(), 5, "{refused:?}");
    for line in &refused {
        assert_eq!(line["outcome"], "refused");
        assert_eq!(line["actor"], "tenant");
        assert_eq!(line["tenant"], "a");
        assert!(line["detail"]
            .as_str()
            .expect("detail")
            .starts_with("admin-only key: "));
    }
    // Nothing was written by the refusals.
    assert_eq!(
        get(&d, "/v1/settings", &a).body["tenant"]["approve"],
        Value::Null
    );

    // Bad values name their key; unknown keys name the body.
    assert_invalid(
        &put(&d, "/v1/settings", &a, &json!({"backend": "docker"})),
        "backend",
        "backend",
    );
    assert_invalid(
        &put(&d, "/v1/settings", &a, &json!({"approval_timeout": 0})),
        "approval_timeout",
        "0 s",
    );
    assert_invalid(
        &put(&d, "/v1/settings", &a, &json!({"image": "../../etc"})),
        "image",
        "a path",
    );
    assert_invalid(
        &put(&d, "/v1/settings", &a, &json!({"image": "nope"})),
        "image",
        "not in the store",
    );
    assert_invalid(
        &put(&d, "/v1/settings", &a, &json!({"sessions": 9})),
        "body",
        "unknown",
    );

    // The tenant's own keys.
    let r = put(
        &d,
        "/v1/settings",
        &a,
        &json!({"backend": "netns", "approve": "api", "approval_timeout": 300}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["tenant"]["approval_timeout"], 300);

    // The admin's keys: on the admin route only (404 both ways, as every
    // route of the other kind).
    assert_eq!(get(&d, "/v1/settings", &admin).status, 404);
    assert_eq!(get(&d, "/v1/tenants/a/settings", &a).status, 404);
    assert_eq!(get(&d, "/v1/tenants/zz/settings", &admin).status, 404);
    assert_invalid(
        &put(
            &d,
            "/v1/tenants/a/settings",
            &admin,
            &json!({"backend": "kvm"}),
        ),
        "backend",
        "a tenant's key on the admin route",
    );
    assert_invalid(
        &put(
            &d,
            "/v1/tenants/a/settings",
            &admin,
            &json!({"allowed_backends": ["docker"]}),
        ),
        "allowed_backends",
        "not a backend",
    );
    let r = put(
        &d,
        "/v1/tenants/a/settings",
        &admin,
        &json!({"allowed_backends": ["netns"], "max_approval_timeout": 60}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["name"], "a");
    assert_eq!(r.body["admin"]["max_approval_timeout"], 60);
    assert_eq!(
        r.body["tenant"]["approval_timeout"], 300,
        "the tenant's table kept"
    );

    // The tenant sees the bounds and must keep them.
    let r = get(&d, "/v1/settings", &a);
    assert_eq!(r.body["admin"]["allowed_backends"], json!(["netns"]));
    assert_invalid(
        &put(&d, "/v1/settings", &a, &json!({"backend": "kvm"})),
        "backend",
        "not allowed",
    );
    assert_invalid(
        &put(&d, "/v1/settings", &a, &json!({"approval_timeout": 61})),
        "approval_timeout",
        "past the bound",
    );
    let r = put(&d, "/v1/settings", &a, &json!({"approval_timeout": 60}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["admin"]["max_approval_timeout"], 60,
        "the admin's table kept"
    );

    // Another tenant's settings are its own.
    let r = get(&d, "/v1/settings", &b);
    assert_eq!(r.body["tenant"]["approval_timeout"], Value::Null);
    assert_eq!(r.body["admin"]["allowed_backends"], Value::Null);

    // On disk: two tables, the admin's untouched by the tenant.
    let text = std::fs::read_to_string(h.join("tenants/a/settings.toml")).expect("settings");
    let file: toml::Table = toml::from_str(&text).expect("toml");
    assert_eq!(file["admin"]["max_approval_timeout"].as_integer(), Some(60));
    assert_eq!(file["tenant"]["approval_timeout"].as_integer(), Some(60));

    // Audited: the tenant's three writes ok, the admin's one.
    let lines = audit_lines(h, "settings.set");
    let ok: Vec<&Value> = lines.iter().filter(|l| l["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 3, "{lines:?}");
    assert_eq!(ok[0]["actor"], "tenant");
    assert_eq!(
        ok[0]["detail"],
        "tenant approval_timeout=300 approve=api backend=netns image=-"
    );
    assert_eq!(ok[1]["actor"], "admin");
    assert_eq!(ok[1]["tenant"], "a");
    assert_eq!(ok[1]["target"], "a");
    assert_eq!(
        ok[1]["detail"],
        "admin allow_policy=- allowed_approve=- allowed_backends=netns allowed_images=- max_approval_timeout=60"
    );
    let audit = std::fs::read_to_string(h.join("audit.jsonl")).expect("audit");
    for token in [&a, &b, &admin] {
        assert!(!audit.contains(token.as_str()), "no token in the audit log");
    }
}

#[test]
fn the_rate_card_is_replaced_by_the_admin_only_whole_and_valid_and_audited() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let admin = cli(h, &["tenants", "admin-token"]);
    let d = start(h, &logs.path().join("serve.log"));

    assert_eq!(get(&d, "/v1/ratecard", &a).status, 404, "admin only");
    assert_eq!(
        put(&d, "/v1/ratecard", &a, &json!({"rates": ""})).status,
        404
    );
    // No file: the built-in card.
    let r = get(&d, "/v1/ratecard", &admin);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rates"], Value::Null);
    let builtin_sha = r.body["sha256"].as_str().expect("sha").to_owned();

    let card = "as_of = \"2026-12-04\"\n\n[[model]]\nname = \"gpt-4o-mini\"\ninput = \"1\"\noutput = \"4\"\n";
    let r = put(&d, "/v1/ratecard", &admin, &json!({"rates": card}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let sha = r.body["sha256"].as_str().expect("sha").to_owned();
    assert_ne!(sha, builtin_sha);
    assert_eq!(
        std::fs::read_to_string(h.join("rates.toml")).expect("file"),
        card
    );
    let r = get(&d, "/v1/ratecard", &admin);
    assert_eq!(r.body["rates"], card);
    assert_eq!(r.body["sha256"], sha.as_str());

    // Bad cards: 400 `rates` naming the line; the old card stays.
    let float_price = "[[model]]\nname = \"m1\"\ninput = \"1\"\noutput = \"1\"\n\n[[model]]\nname = \"m2\"\ninput = 0.5\noutput = \"1\"\n";
    let r = put(&d, "/v1/ratecard", &admin, &json!({"rates": float_price}));
    assert_invalid(&r, "rates", "a float price");
    let message = r.body["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("line 7: model \"m2\": input"),
        "{message}"
    );
    let r = put(
        &d,
        "/v1/ratecard",
        &admin,
        &json!({"rates": "as_of = \"x\"\n[[model]\n"}),
    );
    assert_invalid(&r, "rates", "bad TOML");
    let message = r.body["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("line 2: "), "{message}");
    let r = put(
        &d,
        "/v1/ratecard",
        &admin,
        &json!({"rates": "currency = \"EUR\"\n"}),
    );
    assert_invalid(&r, "rates", "unknown key");
    assert_invalid(
        &put(&d, "/v1/ratecard", &admin, &json!({"card": card})),
        "body",
        "shape",
    );
    assert_eq!(
        std::fs::read_to_string(h.join("rates.toml")).expect("file"),
        card,
        "the old card kept"
    );
    let leftovers: Vec<_> = std::fs::read_dir(h)
        .expect("home")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let lines = audit_lines(h, "ratecard.set");
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| l["outcome"].as_str().expect("o"))
        .collect();
    assert_eq!(
        outcomes,
        ["ok", "refused", "refused", "refused"],
        "{lines:?}"
    );
    assert_eq!(lines[0]["actor"], "admin");
    assert_eq!(lines[0]["detail"], format!("sha256 {sha}"));
    assert_eq!(lines[1]["detail"], "invalid at line 7");
    assert!(!std::fs::read_to_string(h.join("audit.jsonl"))
        .expect("audit")
        .contains("gpt-4o-mini"));
}

/// `openclaw doctor --json` of `home` with `env`.
fn doctor(home: &Path, env: &[(&str, &str)]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_openclaw"))
        .args(["doctor", "--json"])
        .env("OPENCLAW_HOME", home)
        .envs(env.iter().copied())
        .output()
        .expect("run doctor");
    serde_json::from_slice(&out.stdout).expect("doctor --json")
}

#[test]
fn readyz_says_what_openclaw_doctor_says_and_names_what_fails() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    cli(h, &["tenants", "create", "a"]);
    let here = doctor(h, &[]);
    let d = start(h, &logs.path().join("serve.log"));
    let r = call(&d, "GET", "/readyz", None, None);
    let can = here["can_run_sessions"].as_bool().expect("verdict");
    assert_eq!(
        r.status,
        if can { 200 } else { 503 },
        "{:?} vs {here}",
        r.body
    );
    assert_eq!(r.body["ready"], can);
    let backends = &r.body["checks"][2];
    assert_eq!(backends["name"], "backends");
    assert_eq!(backends["ok"], can);
    drop(d);

    // A host without iproute2, mkfs.ext4 or a guest image: no backend.
    let lacking = [
        ("PATH", "/nonexistent"),
        ("OPENCLAW_GUEST_IMAGE", "/nonexistent"),
    ];
    let there = doctor(h, &lacking);
    assert_eq!(there["can_run_sessions"], false, "{there}");
    let d = start_env(h, &logs.path().join("serve2.log"), &lacking);
    let r = call(&d, "GET", "/readyz", None, None);
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["ready"], false);
    let checks = r.body["checks"].as_array().expect("checks");
    assert_eq!(checks[0]["ok"], true, "the store answers");
    assert_eq!(checks[1]["ok"], true, "the tenant is complete");
    assert_eq!(checks[2]["ok"], false);
    let detail = checks[2]["detail"].as_str().expect("detail");
    for name in [
        "netns: not usable",
        "iproute2",
        "work_volume",
        "kvm: not usable",
        "guest_image",
    ] {
        assert!(detail.contains(name), "{name} in {detail}");
    }
    // Named, never located: no path of the host in an unauthenticated answer.
    let home_text = h.to_str().expect("utf-8");
    assert!(!r.text.contains(home_text), "{}", r.text);
    assert!(!r.text.contains("/nonexistent"), "{}", r.text);
    // Cached: a second probe answers the same.
    let again = call(&d, "GET", "/readyz", None, None);
    assert_eq!(again.body, r.body);
}

/// `dir` as a .tar.gz made by the `tar` program, in base64.
fn tar_gz(dir: &Path, out: &Path, extra: &[&str]) -> String {
    let status = Command::new("tar")
        .arg("-czf")
        .arg(out)
        .args(extra)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success());
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(out).expect("archive"))
}

fn spawn_entries(home: &Path, tenant: &str) -> Vec<String> {
    std::fs::read_dir(home.join("tenants").join(tenant).join("spawn"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".log"))
                .collect()
        })
        .unwrap_or_default()
}

/// Needs root: real `openclaw run` children on the netns backend.
#[test]
fn sessions_start_from_a_policy_with_a_workdir_and_the_tenants_defaults() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    cli(h, &["tenants", "create", "b"]);
    let admin = cli(h, &["tenants", "admin-token"]);
    let d = start(h, &logs.path().join("serve.log"));
    let cmd = json!(["true"]);

    // Exactly one of capabilities and policy.
    let both =
        json!({"capabilities": mint_for_tenant(h, "a", POLICY), "policy": POLICY, "command": cmd});
    assert_invalid(&post(&d, "/v1/sessions", &a, &both), "policy", "both");
    assert_invalid(
        &post(&d, "/v1/sessions", &a, &json!({"command": cmd})),
        "capabilities",
        "neither",
    );
    let bad = json!({"policy": "[web\nallow = 1", "command": cmd});
    assert_invalid(&post(&d, "/v1/sessions", &a, &bad), "policy", "not TOML");
    let bad = json!({"policy": "[web]\nallow = [\"example.com\"]\n[spaceship]\nwarp = true\n", "command": cmd});
    assert_invalid(
        &post(&d, "/v1/sessions", &a, &bad),
        "policy",
        "not a policy",
    );
    // Another tenant's token still does not verify.
    let theirs = json!({"capabilities": mint_for_tenant(h, "b", POLICY), "command": cmd});
    assert_invalid(
        &post(&d, "/v1/sessions", &a, &theirs),
        "capabilities",
        "b's token",
    );

    // Images: kvm only, names of the store only.
    let r = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"policy": POLICY, "command": cmd, "image": "debian"}),
    );
    assert_invalid(&r, "image", "an image for netns");
    let kvm_field = if Path::new("/dev/kvm").exists() {
        "image"
    } else {
        "backend"
    };
    for name in ["no-such-image", "../../images/x", "/abs", "initramfs"] {
        let body = json!({"policy": POLICY, "command": cmd, "backend": "kvm", "image": name});
        assert_invalid(&post(&d, "/v1/sessions", &a, &body), kvm_field, name);
    }
    for secs in [0, 3601] {
        let body = json!({"policy": POLICY, "command": cmd, "approval_timeout": secs});
        assert_invalid(
            &post(&d, "/v1/sessions", &a, &body),
            "approval_timeout",
            "bounds",
        );
    }

    // Workdir archives that reach out are refused, leaving nothing behind.
    let outside = scratch.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::os::unix::fs::symlink("/etc", outside.join("escape")).expect("symlink");
    let escaping = tar_gz(&outside, &scratch.path().join("escape.tgz"), &[]);
    let absolute = {
        let out = scratch.path().join("abs.tgz");
        let status = Command::new("tar")
            .args(["-czPf"])
            .arg(&out)
            .arg("/etc/hostname")
            .status()
            .expect("tar");
        assert!(status.success());
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&out).expect("archive"))
    };
    for (what, archive) in [
        ("a link out", escaping),
        ("an absolute path", absolute),
        ("not base64", "%%%".to_owned()),
        (
            "not gzip",
            base64::engine::general_purpose::STANDARD.encode("plain"),
        ),
    ] {
        let body = json!({"policy": POLICY, "command": cmd, "workdir": archive});
        assert_invalid(&post(&d, "/v1/sessions", &a, &body), "workdir", what);
        assert_eq!(
            spawn_entries(h, "a"),
            Vec::<String>::new(),
            "{what}: nothing left"
        );
    }

    // Past 64 KiB, a create body is read only for a tenant's token: a big
    // (incompressible) archive reaches the workdir check, which refuses its
    // link out; the same body without a tenant's token is 413.
    let mut random = vec![0u8; 256 * 1024];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("urandom"),
        &mut random,
    )
    .expect("random bytes");
    std::fs::write(outside.join("noise.bin"), &random).expect("write");
    let big = tar_gz(&outside, &scratch.path().join("big.tgz"), &[]);
    assert!(big.len() > 256 * 1024);
    let body_file = scratch.path().join("big.json");
    let body = json!({"policy": POLICY, "command": cmd, "workdir": big});
    std::fs::write(&body_file, body.to_string()).expect("write");
    // From a file: the body is past what one argument of curl may hold.
    let post_file = |token: Option<&str>| {
        let mut cmd = curl(&d.addr, "POST", "/v1/sessions", token, None);
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", body_file.display()));
        reply(cmd.output().expect("curl"), "a big create")
    };
    assert_invalid(&post_file(Some(&a)), "workdir", "a big archive");
    assert_eq!(post_file(Some(&admin)).status, 413);
    let r = post_file(None);
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert_eq!(spawn_entries(h, "a"), Vec::<String>::new());

    // A session from a policy, with a workdir: it reads the archive's file
    // in /work and its result lands in the bundle.
    let work = scratch.path().join("work");
    std::fs::create_dir_all(work.join("data")).expect("mkdir");
    std::fs::write(work.join("data/in.txt"), "from the archive\n").expect("write");
    std::os::unix::fs::symlink("data/in.txt", work.join("alias")).expect("symlink");
    let archive = tar_gz(&work, &scratch.path().join("work.tgz"), &[]);
    let r = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"policy": POLICY, "workdir": archive,
                "command": ["sh", "-c", "cat alias data/in.txt > out.txt"]}),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        spawn_entries(h, "a"),
        Vec::<String>::new(),
        "token and workdir removed"
    );
    let info = wait_ended(h, "a", &id);
    assert_eq!(info["status"], "completed", "{info}");
    assert_eq!(info["exit_code"], 0, "{info}");
    let out = h.join("tenants/a/sessions").join(&id).join("work/out.txt");
    assert_eq!(
        std::fs::read_to_string(&out).expect("the result in the bundle"),
        "from the archive\nfrom the archive\n"
    );
    // Minted under a's root key: the chain verifies and decisions re-derive.
    let v = get(&d, &format!("/v1/sessions/{id}/receipts/verify"), &a);
    assert_eq!(v.status, 200, "{:?}", v.body);
    assert_eq!(v.body["status"], "valid", "{:?}", v.body);

    // The tenant's defaults fill what the body leaves out: held for the
    // API, with the tenant's timeout.
    let r = put(
        &d,
        "/v1/settings",
        &a,
        &json!({"approve": "api", "approval_timeout": 45}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"policy": POLICY_HELD, "command": ["sh", "-c", HOLDS]}),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let held = r.body["id"].as_str().expect("id").to_owned();
    let pending = first_pending(&d, &a, &held);
    assert_eq!(pending["timeout"], 45, "{pending}");
    // The body wins over the default.
    let r = post(
        &d,
        "/v1/sessions",
        &a,
        &json!({"policy": POLICY_HELD, "command": ["sh", "-c", HOLDS], "approval_timeout": 30}),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let second = r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(first_pending(&d, &a, &second)["timeout"], 30);
    for id in [&held, &second] {
        let r = call(
            &d,
            "POST",
            &format!("/v1/sessions/{id}/stop"),
            Some(&a),
            None,
        );
        assert_eq!(r.status, 202, "{:?}", r.body);
        wait_ended(h, "a", id);
    }

    // The admin narrows the bounds under the tenant's default: its sessions
    // are refused naming the field until it fits again.
    let r = put(
        &d,
        "/v1/tenants/a/settings",
        &admin,
        &json!({"max_approval_timeout": 20, "allowed_backends": ["netns"]}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = json!({"policy": POLICY, "command": cmd});
    assert_invalid(
        &post(&d, "/v1/sessions", &a, &body),
        "approval_timeout",
        "past the admin's bound",
    );
    let body = json!({"policy": POLICY, "command": cmd, "approval_timeout": 20, "backend": "kvm"});
    assert_invalid(
        &post(&d, "/v1/sessions", &a, &body),
        "backend",
        "kvm not allowed",
    );
    // With allow_policy false only the operator's tokens start sessions.
    let r = put(
        &d,
        "/v1/tenants/a/settings",
        &admin,
        &json!({"max_approval_timeout": 20, "allow_policy": false}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = json!({"policy": POLICY, "command": cmd, "approval_timeout": 20});
    assert_invalid(&post(&d, "/v1/sessions", &a, &body), "policy", "no policy");
    let body = json!({"capabilities": mint_for_tenant(h, "a", POLICY), "command": cmd, "approval_timeout": 20});
    let r = post(&d, "/v1/sessions", &a, &body);
    assert_eq!(r.status, 201, "{:?}", r.body);
    wait_ended(h, "a", r.body["id"].as_str().expect("id"));

    // The create lines are audited; no capability or policy text in them.
    let created = audit_lines(h, "session.create");
    assert_eq!(
        created.iter().filter(|l| l["outcome"] == "ok").count(),
        4,
        "{created:?}"
    );
    let audit = std::fs::read_to_string(h.join("audit.jsonl")).expect("audit");
    assert!(
        !audit.contains("example.com"),
        "no policy text in the audit log"
    );
}

/// Waits (up to 60 s) for the running session's first pending approval.
fn first_pending(d: &Daemon, token: &str, id: &str) -> Value {
    for _ in 0..600 {
        let r = get(d, &format!("/v1/sessions/{id}/approvals"), token);
        assert_eq!(r.status, 200, "{:?}", r.body);
        if let Some(first) = r.body["pending"].get(0) {
            return first.clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no approval became pending in {id}");
}

/// Needs root: netns sessions calling the test provider. A card replaced
/// over the API prices the sessions started after it; the ledger rows of
/// earlier sessions keep the prices they were charged at.
#[test]
fn new_sessions_price_with_a_replaced_rate_card_and_past_rows_keep_theirs() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let a = cli(h, &["tenants", "create", "a"]);
    let admin = cli(h, &["tenants", "admin-token"]);
    let served = start_with_upstream(h, logs.path(), "api.openai.com");
    let d = &served.daemon;
    let policy = "ttl = \"30m\"\n[llm]\nproviders = [\"api.openai.com\"]\nbudget_usd = \"1.00\"\n";
    let call_llm = json!([
        "curl",
        "-sS",
        "https://api.openai.com/v1/chat/completions",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":50}"#
    ]);
    let mut ids = Vec::new();
    for (input, cached, output) in [("1", "0.5", "4"), ("2", "1", "8")] {
        let card = format!(
            "[[model]]\nname = \"gpt-4o-mini\"\ninput = \"{input}\"\ncached_input = \"{cached}\"\noutput = \"{output}\"\n"
        );
        let r = put(d, "/v1/ratecard", &admin, &json!({"rates": card}));
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = post(
            d,
            "/v1/sessions",
            &a,
            &json!({"policy": policy, "command": call_llm}),
        );
        assert_eq!(r.status, 201, "{:?}", r.body);
        let id = r.body["id"].as_str().expect("id").to_owned();
        let info = wait_ended(h, "a", &id);
        assert_eq!(info["status"], "completed", "{info}");
        ids.push(id);
    }
    let r = get(d, "/v1/usage?period=today&by=session", &a);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let cost_of = |id: &str| -> u64 {
        r.body["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|row| row["keys"][0] == id)
            .unwrap_or_else(|| panic!("no row of {id}: {:?}", r.body))["cost_micro_usd"]
            .as_u64()
            .expect("cost")
    };
    // The test provider's answer: the first card prices it 230 micro-USD.
    assert_eq!(cost_of(&ids[0]), 230, "{:?}", r.body);
    assert_eq!(cost_of(&ids[1]), 460, "the new card, twice the prices");
}

/// An operator that keeps what a tenant's sessions may do (`allow_policy =
/// false`) and mints a token whose requests wait for a human keeps that
/// human: `"approve": "auto"` is refused on create and as the tenant's
/// default, until the operator lists `auto` in `allowed_approve`.
#[test]
fn a_tenant_cannot_auto_approve_what_the_operators_token_holds_for_a_human() {
    let home = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let admin = cli(h, &["tenants", "admin-token"]);
    let a = cli(h, &["tenants", "create", "a"]);
    let d = start(h, &logs.path().join("serve.log"));
    let r = put(
        &d,
        "/v1/tenants/a/settings",
        &admin,
        &json!({"allow_policy": false}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The operator's token: every web request held for a human.
    let cap = mint_for_tenant(h, "a", POLICY_HELD);
    let body = json!({"capabilities": cap, "command": ["true"], "approve": "auto"});
    let r = post(&d, "/v1/sessions", &a, &body);
    if r.status == 201 {
        wait_ended(h, "a", r.body["id"].as_str().unwrap_or(""));
    }
    assert_invalid(&r, "approve", "auto-approve on create");
    assert_invalid(
        &put(&d, "/v1/settings", &a, &json!({"approve": "auto"})),
        "approve",
        "auto-approve as the tenant's default",
    );
    // The operator may allow it, and may bound the other modes too.
    let r = put(
        &d,
        "/v1/tenants/a/settings",
        &admin,
        &json!({"allow_policy": false, "allowed_approve": ["auto", "deny"]}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = put(&d, "/v1/settings", &a, &json!({"approve": "auto"}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = json!({"capabilities": cap, "command": ["true"], "approve": "api"});
    assert_invalid(
        &post(&d, "/v1/sessions", &a, &body),
        "approve",
        "api not allowed",
    );
    assert_invalid(
        &put(
            &d,
            "/v1/tenants/a/settings",
            &admin,
            &json!({"allowed_approve": ["ask"]}),
        ),
        "allowed_approve",
        "not a mode",
    );
}
