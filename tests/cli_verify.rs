//! `openclaw verify` driven as an auditor would: the real binary, a bundle on
//! disk, a public key, no network and no openclaw home.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use capabilities::{Action, ActionType, Counters, Policy};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use receipts::{DecisionRecord, Entry, ReceiptLog, SessionStart};

mod support;

use support::{stderr, stdout};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("receipts/fixtures/golden")
}

/// Runs `openclaw verify ARGS` with no home directory at all.
fn verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_openclaw"))
        .arg("verify")
        .args(args)
        .env_remove("OPENCLAW_HOME")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run openclaw")
}

fn write_pub(path: &Path, key: &VerifyingKey) {
    let pem = key.to_public_key_pem(LineEnding::LF).expect("pem");
    std::fs::write(path, pem).expect("write key");
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

#[test]
fn the_golden_bundle_verifies_with_its_pinned_key() {
    let key = golden_dir().join("receipt.pub");
    let out = verify(&[p(&golden_dir()), "--key", p(&key)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("✓ valid: 7 receipts"), "{text}");
    assert!(
        text.contains("signatures: every receipt carries its own"),
        "{text}"
    );
    assert!(text.contains("session golden-0001 · sandbox kvm"), "{text}");
    assert!(text.contains("2 allow, 1 approval, 1 block"), "{text}");
    assert!(text.contains("no capabilities.cap"), "{text}");

    // The receipts.jsonl itself works as PATH too, and --json is machine-readable.
    let file = golden_dir().join("receipts.jsonl");
    let out = verify(&[p(&file), "--key", p(&key), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["status"], "valid");
    assert_eq!(json["receipts"], 7);
    assert_eq!(json["key_source"], "pinned");
}

#[test]
fn an_unpinned_key_is_refused_unless_explicitly_trusted() {
    let out = verify(&[p(&golden_dir())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--trust-embedded-key"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());

    let out = verify(&[p(&golden_dir()), "--trust-embedded-key"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("not who wrote it"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn another_key_or_a_changed_byte_is_invalid_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("other.pub");
    write_pub(&other, &SigningKey::from_bytes(&[1; 32]).verifying_key());
    let out = verify(&[p(&golden_dir()), "--key", p(&other)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("✕ invalid: line 1: signed by key"),
        "{}",
        stdout(&out)
    );

    // One byte of line 3 changed: "block" becomes "blocc".
    let mut bytes = std::fs::read(golden_dir().join("receipts.jsonl")).expect("fixture");
    let text = String::from_utf8(bytes.clone()).expect("utf8");
    let at = text
        .find("\"decision\":\"block\"")
        .expect("line 3 holds a block")
        + 16;
    bytes[at] = b'c';
    let file = dir.path().join("receipts.jsonl");
    std::fs::write(&file, &bytes).expect("write");
    let key = golden_dir().join("receipt.pub");
    let out = verify(&[p(&file), "--key", p(&key), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["status"], "invalid");
    assert_eq!(json["error"]["line"], 3);
    assert_eq!(
        json["error"]["message"],
        "line 3: signature does not verify"
    );

    // Cut after line 5.
    let cut: Vec<&str> = text.lines().take(5).collect();
    std::fs::write(&file, cut.join("\n") + "\n").expect("write");
    let out = verify(&[p(&file), "--key", p(&key)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("line 6: the chain ends without session_end"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn unreadable_input_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = golden_dir().join("receipt.pub");
    let out = verify(&[p(&dir.path().join("missing")), "--key", p(&key)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("reading"), "{}", stderr(&out));
    // A directory without receipts.jsonl.
    let out = verify(&[p(dir.path()), "--key", p(&key), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["status"], "unreadable");
    // A key file that is not a key.
    let bad = dir.path().join("bad.pub");
    std::fs::write(&bad, "not a key").expect("write");
    let out = verify(&[p(&golden_dir()), "--key", p(&bad)]);
    assert_eq!(out.status.code(), Some(2));
}

/// A session bundle: a token minted from the seed policy, and a chain whose
/// decisions are recorded by the caller (honestly or not).
struct Bundle {
    dir: tempfile::TempDir,
    receipt_pub: PathBuf,
    root_pub: PathBuf,
}

fn web(method: &str, host: &str, path: &str) -> Action {
    serde_json::from_value(
        serde_json::json!({"type": "web", "method": method, "host": host, "path": path}),
    )
    .expect("action")
}

/// A seed-token session of three decisions (search, Slack, purchase);
/// `tweak(i, decision_json)` may forge decision `i` before it is signed.
fn bundle(tweak: impl Fn(usize, &mut serde_json::Value)) -> Bundle {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = SigningKey::from_bytes(&[3; 32]);
    let receipt_key = SigningKey::from_bytes(&[4; 32]);
    let policy_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flight-booking/policy.toml"),
    )
    .expect("seed policy");
    let policy = Policy::from_toml_str(&policy_text).expect("policy");
    let now = SystemTime::now();
    let token = capabilities::mint(&policy, &root.to_bytes(), now).expect("mint");
    std::fs::write(dir.path().join("capabilities.cap"), &token).expect("write cap");
    let capability = capabilities::UnverifiedToken::from_base64(&token)
        .expect("parse")
        .verify(&root.verifying_key().to_bytes())
        .expect("verify");

    let log = ReceiptLog::create(
        &dir.path().join("receipts.jsonl"),
        receipt_key.clone(),
        SessionStart {
            session_id: "rederive".into(),
            revocation_ids: capability.revocation_ids(),
            sandbox: "netns".into(),
            capability_sha256: Some(receipts::sha256_hex(token.as_bytes())),
            tenant: None,
            user: None,
        },
    )
    .expect("create log");
    let counters = Counters::default();
    let actions = [
        web("GET", "google.com", "/travel/flights/search"),
        web("POST", "hooks.slack.com", "/services/T024"),
        Action {
            kind: ActionType::Payment,
            amount_cents: Some(48_700),
            currency: Some("USD".into()),
            merchant: Some("united.com".into()),
            ..web("POST", "united.com", "/api/booking/purchase")
        },
    ];
    for (i, action) in actions.iter().enumerate() {
        let mut decision =
            serde_json::to_value(capability.authorize(action, &counters, now)).expect("json");
        decision["stage"] = "token".into();
        tweak(i, &mut decision);
        log.append(Entry::Decision {
            decided_at: now,
            record: DecisionRecord {
                action: serde_json::to_value(action).expect("json"),
                counters: serde_json::to_value(counters).expect("json"),
                decision,
                body_sha256: None,
            },
        })
        .expect("append");
    }
    log.finish().expect("finish");
    let receipt_pub = dir.path().join("receipt.pub");
    write_pub(&receipt_pub, &receipt_key.verifying_key());
    let root_pub = dir.path().join("root.pub");
    write_pub(&root_pub, &root.verifying_key());
    Bundle {
        dir,
        receipt_pub,
        root_pub,
    }
}

#[test]
fn honest_decisions_re_derive_from_the_token() {
    let b = bundle(|_, _| {});
    let out = verify(&[
        p(b.dir.path()),
        "--key",
        p(&b.receipt_pub),
        "--cap-pubkey",
        p(&b.root_pub),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out)
            .contains("re-derivation: 3 decision(s) re-run against capabilities.cap, 0 differ"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("1 allow, 1 approval, 1 block"),
        "{}",
        stdout(&out)
    );

    // Without the root key it says what re-derivation needs.
    let out = verify(&[p(b.dir.path()), "--key", p(&b.receipt_pub)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("pass --cap-pubkey ROOT.pub"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_allow_for_an_action_the_token_blocks_is_flagged() {
    let b = bundle(|i, decision| {
        if i == 1 {
            assert_eq!(decision["decision"], "block");
            decision["decision"] = "allow".into();
            decision["reason"] = "web_access".into();
        }
    });
    let out = verify(&[
        p(b.dir.path()),
        "--key",
        p(&b.receipt_pub),
        "--cap-pubkey",
        p(&b.root_pub),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["status"], "invalid");
    let mismatches = json["mismatches"].as_array().expect("array");
    assert_eq!(mismatches.len(), 1, "{json:#}");
    assert_eq!(mismatches[0]["line"], 3);
    let msg = mismatches[0]["message"].as_str().expect("message");
    assert!(
        msg.starts_with("line 3: decision does not follow from the token: recorded allow"),
        "{msg}"
    );
    assert!(msg.contains("the token says block"), "{msg}");
}

#[test]
fn a_swapped_token_or_wrong_root_key_is_invalid() {
    let b = bundle(|_, _| {});
    // A token from another root key, put in the bundle afterwards.
    let other_root = SigningKey::from_bytes(&[9; 32]);
    let policy = Policy::from_toml_str("[web]\nallow = [\"hooks.slack.com\"]\n").expect("policy");
    let token =
        capabilities::mint(&policy, &other_root.to_bytes(), SystemTime::now()).expect("mint");
    std::fs::write(b.dir.path().join("capabilities.cap"), token).expect("write");
    let out = verify(&[
        p(b.dir.path()),
        "--key",
        p(&b.receipt_pub),
        "--cap-pubkey",
        p(&b.root_pub),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("line 1: session_start binds a different capabilities.cap"),
        "{text}"
    );
    assert!(
        text.contains("does not verify with the given root key"),
        "{text}"
    );
}

#[test]
fn blocks_by_other_stages_pass_but_they_may_not_allow() {
    // The proxy's credential stage refused a search the token allows (say, a
    // placeholder sent to the wrong host): a valid chain.
    let credential_block = |i: usize, decision: &mut serde_json::Value| {
        if i == 0 {
            decision["decision"] = "block".into();
            decision["reason"] = "credential exfiltration".into();
            decision["stage"] = "credential".into();
        }
    };
    let b = bundle(credential_block);
    let args = |b: &Bundle| {
        verify(&[
            p(b.dir.path()),
            "--key",
            p(&b.receipt_pub),
            "--cap-pubkey",
            p(&b.root_pub),
        ])
    };
    let out = args(&b);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // A stage other than the token claiming to allow is not believed.
    let b = bundle(|i, decision| {
        if i == 1 {
            decision["decision"] = "allow".into();
            decision["stage"] = "catalog".into();
        }
    });
    let out = args(&b);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("line 3: the catalog stage can only block, but recorded allow"),
        "{}",
        stdout(&out)
    );
}

/// A bundle whose chain has one allowed llm call and its usage receipt,
/// with the usage receipt's cost changed to `cost` (and the chain re-signed
/// with the session's own key, so every signature and link holds).
fn metered_bundle(cost: Option<u64>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::from_bytes(&[0x33; 32]);
    let log = ReceiptLog::create(
        &dir.path().join("receipts.jsonl"),
        key.clone(),
        SessionStart {
            session_id: "metered".into(),
            revocation_ids: vec![],
            sandbox: "netns".into(),
            capability_sha256: None,
            tenant: Some("acme".into()),
            user: Some("alice".into()),
        },
    )
    .expect("create log");
    let d = log
        .append(Entry::Decision {
            decided_at: SystemTime::now(),
            record: DecisionRecord {
                action: serde_json::json!({"type": "llm", "method": "POST",
                    "host": "api.openai.com", "path": "/v1/chat/completions"}),
                counters: serde_json::json!({}),
                decision: serde_json::json!({"decision": "allow", "reason": "llm",
                    "grant": "llm", "revocation_ids": []}),
                body_sha256: None,
            },
        })
        .expect("decision");
    let tokens = receipts::UsageTokens {
        input: 1200,
        cached_input: 3000,
        output: 800,
        ..Default::default()
    };
    let rates = receipts::RateSnapshot {
        card_sha256: receipts::sha256_hex(b"card"),
        price: receipts::ModelPrice {
            model: "gpt-4o".into(),
            input: 2_500_000,
            cached_input: 1_250_000,
            output: 10_000_000,
            ..Default::default()
        },
    };
    // Deferred, as the proxy settles a call: it rides with the next write
    // (here session_end's), without a signature of its own.
    log.submit_deferred(Entry::Usage(receipts::UsageRecord {
        decision_seq: d.seq,
        provider: "api.openai.com".into(),
        api: "openai.chat".into(),
        model: "gpt-4o-2024-08-06".into(),
        response_id: Some("chatcmpl-1".into()),
        cost_micro_usd: receipts::cost_micro_usd(&tokens, &rates.price),
        tokens,
        rates,
        reserved_micro_usd: 50_000,
        estimated: false,
    }))
    .expect("usage");
    log.finish().expect("finish");
    let text = std::fs::read_to_string(dir.path().join("receipts.jsonl")).expect("read");
    assert!(
        !text.lines().nth(2).expect("line 3").contains("\"sig\""),
        "the usage line rode with session_end's signature"
    );
    let path = dir.path().join("receipts.jsonl");
    if let Some(cost) = cost {
        // Edit line 3 and re-sign it and the end with the session's key.
        let text = std::fs::read_to_string(&path).expect("read");
        let mut receipts: Vec<receipts::Receipt> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("receipt"))
            .collect();
        if let receipts::Body::Usage(u) = &mut receipts[2].body {
            u.cost_micro_usd = cost;
        }
        let mut out = Vec::new();
        let mut prev = receipts::GENESIS_PREV.to_owned();
        for r in &mut receipts {
            r.prev = prev.clone();
            // Each line re-signed on its own, at the version that needs.
            r.v = receipts::version_of(&r.body);
            if let receipts::Body::SessionEnd { last, .. } = &mut r.body {
                *last = prev.clone();
            }
            let line = receipts::sign_line(r, &key).expect("sign");
            prev = hex::encode(receipts::line_hash(&line));
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
        std::fs::write(&path, out).expect("write");
    }
    let public = dir.path().join("receipt.pub");
    write_pub(&public, &key.verifying_key());
    (dir, public)
}

#[test]
fn verify_re_derives_usage_costs_and_names_an_edited_one() {
    // 1200 × 2.5 + 3000 × 1.25 + 800 × 10 = 3000 + 3750 + 8000 micro-USD.
    let (dir, key) = metered_bundle(None);
    let out = verify(&[p(dir.path()), "--key", p(&key)]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("llm usage: 1 call(s), $0.014750"), "{text}");
    assert!(text.contains("tenant acme · user alice"), "{text}");
    assert!(
        text.contains("signatures: 3 for 4 receipts (one per write; a receipt without its own"),
        "{text}"
    );
    let out = verify(&[p(dir.path()), "--key", p(&key), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (json["receipts"].clone(), json["signatures"].clone()),
        (4.into(), 3.into())
    );
    assert_eq!(json["usage_receipts"], 1);
    assert_eq!(json["cost_micro_usd"], 14_750);

    let (dir, key) = metered_bundle(Some(1_475));
    let out = verify(&[p(dir.path()), "--key", p(&key)]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("line 3: usage cost is 1475 micro-USD, but 14750 is what its tokens cost at its recorded prices"),
        "{text}"
    );
}

/// A first line whose members are in canonical order and whose `sig` is
/// spelled canonically, so the checks reach `field` before the signature.
fn crafted_first_line(kind: &str, signer: &str) -> String {
    format!(
        concat!(
            r#"{{"kind":"{kind}","prev":"{zeros}","public_key":"{zeros}","#,
            r#""revocation_ids":[],"sandbox":"kvm","seq":0,"session":"s","sig":"{sig}","#,
            r#""signer":"{signer}","ts":"2026-01-01T00:00:00.000000Z","v":1}}"#
        ),
        kind = kind,
        zeros = "0".repeat(64),
        sig = "0".repeat(128),
        signer = signer,
    )
}

#[test]
fn text_from_the_file_reaches_the_terminal_only_made_visible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = golden_dir().join("receipt.pub");
    let file = dir.path().join("receipts.jsonl");
    // Each would print the file's own words to the auditor's terminal: an
    // unknown signer, an unknown kind. The escapes move up a line, clear it
    // and write a verdict of their own; set the title (OSC ... BEL); CSI
    // as one C1 character; a bidi override.
    let forged = r"\u001b[1A\u001b[2K\r\u2713 valid: 7 receipts\u0007\u009b2J\u202e";
    for line in [
        crafted_first_line("session_start", forged),
        crafted_first_line(&format!(r"\u001b]0;title\u0007{forged}"), "x"),
    ] {
        std::fs::write(&file, format!("{line}\n")).expect("write");
        let out = verify(&[p(&file), "--key", p(&key)]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        let text = stdout(&out);
        for c in ['\u{1b}', '\u{7}', '\r', '\u{9b}', '\u{202e}'] {
            assert!(!text.contains(c), "{c:?} reached the terminal: {text:?}");
        }
        assert!(text.contains(r"\x1b[2K"), "shown, not acted on: {text}");
        assert!(text.contains(r"\u{202e}"), "{text}");
    }
}

/// `openclaw verify ARGS` with its address space capped, so a verifier that
/// reads without bound fails here instead of taking the machine's memory.
fn verify_capped(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 2097152 && exec "$0" verify "$@""#)
        .arg(env!("CARGO_BIN_EXE_openclaw"))
        .args(args)
        .env_remove("OPENCLAW_HOME")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run openclaw")
}

#[test]
fn a_bundle_file_that_is_a_device_is_refused_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = golden_dir().join("receipt.pub");
    let golden = golden_dir().join("receipts.jsonl");
    // A crafted bundle: its receipts are endless zeros.
    let zeros = dir.path().join("zeros");
    std::fs::create_dir(&zeros).expect("mkdir");
    std::os::unix::fs::symlink("/dev/zero", zeros.join("receipts.jsonl")).expect("symlink");
    let out = verify_capped(&[p(&zeros), "--key", p(&key)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a regular file"),
        "{}",
        stderr(&out)
    );
    // The chain is fine, but its capabilities.cap is endless.
    let cap = dir.path().join("cap");
    std::fs::create_dir(&cap).expect("mkdir");
    std::fs::copy(&golden, cap.join("receipts.jsonl")).expect("copy");
    std::os::unix::fs::symlink("/dev/zero", cap.join("capabilities.cap")).expect("symlink");
    let out = verify_capped(&[p(&cap), "--key", p(&key), "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("is not a regular file"), "{json}");
}

#[test]
fn a_fifo_is_refused_rather_than_waited_on() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = golden_dir().join("receipt.pub");
    let fifo = dir.path().join("receipts.jsonl");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let golden = std::fs::read(golden_dir().join("receipts.jsonl")).expect("fixture");
    let mut child = Command::new(env!("CARGO_BIN_EXE_openclaw"))
        .args(["verify", p(&fifo), "--key", p(&key)])
        .env("HOME", "/nonexistent")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Whoever reads the FIFO gets a valid chain, once; a verifier that
    // waits for a writer would otherwise wait forever. Opening the write
    // end without blocking fails while no reader has it open.
    let mut fed = false;
    while child.try_wait().expect("wait").is_none() {
        if !fed {
            if let Ok(mut w) = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&fifo)
            {
                let _ = w.write_all(&golden);
                fed = true;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = child.wait_with_output().expect("output");
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("is not a regular file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn json_output_escapes_what_a_terminal_would_act_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = golden_dir().join("receipt.pub");
    let file = dir.path().join("receipts.jsonl");
    // JSON escapes C0 controls itself, but not DEL, C1 controls (CSI as one
    // character clears a screen on many terminals) or bidi overrides.
    let signer = "\u{9b}2J\u{9b}1;1H\u{202e}\u{7f}";
    let escaped: String = signer
        .chars()
        .map(|c| format!("\\u{:04x}", u32::from(c)))
        .collect();
    let line = crafted_first_line("session_start", &escaped);
    std::fs::write(&file, format!("{line}\n")).expect("write");
    let out = verify(&[p(&file), "--key", p(&key), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    for c in ['\u{9b}', '\u{202e}', '\u{7f}'] {
        assert!(!text.contains(c), "{c:?} reached the terminal: {text:?}");
    }
    // Still the same JSON: the message quotes the signer exactly.
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let message = json["error"]["message"].as_str().expect("message");
    assert!(message.contains(signer), "{message:?}");
}

#[test]
fn asked_to_re_derive_a_bundle_without_its_token_is_invalid() {
    // A recorded allow the token blocks, and the token taken out of the
    // bundle so nothing can show it.
    let b = bundle(|i, decision| {
        if i == 1 {
            decision["decision"] = "allow".into();
            decision["reason"] = "web_access".into();
        }
    });
    std::fs::remove_file(b.dir.path().join("capabilities.cap")).expect("remove token");
    let out = verify(&[
        p(b.dir.path()),
        "--key",
        p(&b.receipt_pub),
        "--cap-pubkey",
        p(&b.root_pub),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["status"], "invalid", "{json:#}");
    assert_eq!(json["rederivation"]["status"], "no_token", "{json:#}");
    let mismatches = json["mismatches"].as_array().expect("array");
    assert_eq!(mismatches.len(), 1, "{json:#}");
    // session_start binds the token by its SHA-256: the line at fault.
    assert_eq!(mismatches[0]["line"], 1, "{json:#}");
    let msg = mismatches[0]["message"].as_str().expect("message");
    assert!(msg.contains("no capabilities.cap"), "{msg}");

    // Not asked to re-derive: valid, with the note saying it was not done.
    let out = verify(&[p(b.dir.path()), "--key", p(&b.receipt_pub)]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("were not re-derived"),
        "{}",
        stdout(&out)
    );
}

/// A file that is the golden chain's session_start and then `n` lines
/// without a sig, each chained to the one before: what anyone can write,
/// without the key, to make a verifier wait for a signature.
fn unsigned_flood(dir: &Path, n: usize) {
    let golden = std::fs::read(golden_dir().join("receipts.jsonl")).expect("golden");
    let first = golden
        .split(|&b| b == b'\n')
        .next()
        .expect("line 1")
        .to_vec();
    let bytes = support::chains::unsigned_flood_after(first, n);
    std::fs::write(dir.join("receipts.jsonl"), bytes).expect("write flood");
}

#[test]
fn a_flood_of_unsigned_lines_is_refused_at_the_first_line_the_writer_could_not_have_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    unsigned_flood(dir.path(), receipts::MAX_BATCH + 500);
    let key = golden_dir().join("receipt.pub");
    let out = verify(&[p(dir.path()), "--key", p(&key), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["status"], "invalid");
    // Lines 2 to MAX_BATCH wait for a signature, as the writer's longest
    // run would; the next is one more than it ever writes.
    assert_eq!(json["error"]["line"], receipts::MAX_BATCH + 1);
    let message = json["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&format!(
            "lines 2 to {} carry no sig of their own",
            receipts::MAX_BATCH + 1
        )) && message.contains(&format!("every {}th line", receipts::MAX_BATCH)),
        "{message}"
    );
}

/// The flood again, followed by a 4 GiB hole (sparse: it takes no disk)
/// and a last byte. Under a 2 GiB address-space cap, a verifier that reads
/// the whole file before judging it cannot even hold it (exit 2); one that
/// reads as it verifies refuses the flood where it passes the bound, having
/// read a few megabytes.
#[test]
fn the_flood_is_refused_without_reading_the_rest_of_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    unsigned_flood(dir.path(), receipts::MAX_BATCH + 500);
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("receipts.jsonl"))
        .expect("open flood");
    let len = file.metadata().expect("stat").len();
    file.set_len(len + (4 << 30)).expect("extend with a hole");
    std::io::Write::write_all(&mut &file, b"x").expect("last byte");
    drop(file);
    let key = golden_dir().join("receipt.pub");
    let out = verify_capped(&[p(dir.path()), "--key", p(&key), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["error"]["line"], receipts::MAX_BATCH + 1, "{json}");
}

#[test]
fn a_chain_must_end_at_the_anchored_head_and_a_missing_record_is_a_note_unless_required() {
    let key = golden_dir().join("receipt.pub");
    let dir = golden_dir();
    let json_of =
        |out: &Output| -> serde_json::Value { serde_json::from_slice(&out.stdout).expect("json") };
    let valid = verify(&[p(&dir), "--key", p(&key), "--json"]);
    let last = json_of(&valid)["last_hash"]
        .as_str()
        .expect("last hash")
        .to_owned();
    let head = format!("sha256:{last}");
    let out = verify(&[p(&dir), "--key", p(&key), "--head", &head]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("ends at the anchored head {head} (--head)")),
        "{}",
        stdout(&out)
    );
    // Another head: cut, extended or replaced.
    let other = format!("sha256:{}", "ab".repeat(32));
    let out = verify(&[p(&dir), "--key", p(&key), "--head", &other]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("does not end at the anchored head {other}")),
        "{}",
        stdout(&out)
    );
    // Not a head at all: unreadable input.
    let out = verify(&[p(&dir), "--key", p(&key), "--head", "sha256:xyz"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // A heads file: the entry for the chain's session counts.
    let tmp = tempfile::tempdir().expect("tempdir");
    let heads = tmp.path().join("chain-heads.jsonl");
    let record = |session: &str, head: &str| {
        format!("{{\"session\":\"{session}\",\"seq\":6,\"head\":\"{head}\",\"at\":\"2026-11-18T11:07:00.000000Z\"}}\n")
    };
    std::fs::write(
        &heads,
        record("someone-else", &other) + &record("golden-0001", &head),
    )
    .expect("heads");
    let out = verify(&[p(&dir), "--key", p(&key), "--heads", p(&heads), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(json_of(&out)["anchor"]["status"], "matches");
    std::fs::write(&heads, record("golden-0001", &other)).expect("heads");
    let out = verify(&[p(&dir), "--key", p(&key), "--heads", p(&heads), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(json_of(&out)["anchor"]["status"], "differs");
    // No entry for the session: a note, or invalid when required.
    std::fs::write(&heads, record("someone-else", &head)).expect("heads");
    let out = verify(&[p(&dir), "--key", p(&key), "--heads", p(&heads), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let report = json_of(&out);
    assert_eq!(report["anchor"]["status"], "no_entry");
    assert!(
        report["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("no chain head for session golden-0001")),
        "{report}"
    );
    let out = verify(&[
        p(&dir),
        "--key",
        p(&key),
        "--heads",
        p(&heads),
        "--require-head",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}
