//! A tenant's USD/day quota held at the proxy, through the real binary:
//! `openclaw tenants create` + `tenants quota` make the control store,
//! `openclaw run --tenant acme --quota-db <home>/control.db` sessions (netns,
//! real proxy, curl in the sandbox) call a local HTTPS provider (test-support's
//! `llm` answers) as `api.openai.com` / `api.anthropic.com`. Calls pass until
//! the quota, then get the provider-shaped 429 with `retry-after` and a
//! `quota`-stage blocked receipt naming the quota; the chain verifies; two
//! sessions calling in parallel never settle past the quota.

use std::path::PathBuf;

use serde_json::Value;

mod support;
use support::llm_provider::{
    answers, assert_openai_usd_refusal, parallel_chats, quota_blocks, usage_of, MockProvider, CHAT,
    CHAT_COST, LLM_POLICY, MESSAGES, RATES,
};
use support::{openclaw, text};

/// A home with keys, the token, prices, tenant `acme` with a USD/day quota
/// of `usd`, and the test provider.
struct Setup {
    provider: MockProvider,
    home: tempfile::TempDir,
}

fn setup(usd: &str) -> Setup {
    setup_with(&["--usd-per-day", usd])
}

/// As [`setup`], with `tenants quota acme` given `quota`.
fn setup_with(quota: &[&str]) -> Setup {
    let home = tempfile::tempdir().expect("home");
    let provider = MockProvider::start(home.path());
    support::keygen_and_mint(home.path(), LLM_POLICY);
    std::fs::write(home.path().join("rates.toml"), RATES).expect("rates");
    support::serve::cli(home.path(), &["tenants", "create", "acme"]);
    let mut args = vec!["tenants", "quota", "acme"];
    args.extend_from_slice(quota);
    support::serve::cli(home.path(), &args);
    Setup { provider, home }
}

impl Setup {
    fn run(&self, script: &str) -> std::process::Command {
        let home = self.home.path();
        let mut cmd = openclaw(home);
        cmd.arg("run")
            .arg("--capabilities")
            .arg(home.join("task.cap"))
            .args([
                "--backend",
                "netns",
                "--tenant",
                "acme",
                "--approve",
                "deny",
            ])
            .arg("--quota-db")
            .arg(home.join("control.db"))
            .args(self.provider.flags())
            .args(["--", "/bin/sh", "-c", script])
            .stdin(std::process::Stdio::null());
        cmd
    }

    fn bundles(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.home.path().join("sessions"))
            .expect("sessions")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.join("receipts.jsonl").exists())
            .collect()
    }

    /// `day_spend` tokens of acme, from control.db.
    fn day_tokens(&self) -> u64 {
        let db = rusqlite::Connection::open(self.home.path().join("control.db")).expect("db");
        let tokens: i64 = db
            .query_row(
                "SELECT COALESCE(SUM(tokens), 0) FROM day_spend WHERE tenant = 'acme'",
                [],
                |r| r.get(0),
            )
            .expect("tokens");
        u64::try_from(tokens).expect("tokens")
    }

    /// `day_spend` of acme today and the open holds, from control.db.
    fn day_spend(&self) -> (u64, i64) {
        let db = rusqlite::Connection::open(self.home.path().join("control.db")).expect("db");
        let spent: i64 = db
            .query_row(
                "SELECT COALESCE(SUM(micro_usd), 0) FROM day_spend WHERE tenant = 'acme'",
                [],
                |r| r.get(0),
            )
            .expect("spend");
        let holds: i64 = db
            .query_row("SELECT COUNT(*) FROM quota_holds", [], |r| r.get(0))
            .expect("holds");
        (u64::try_from(spent).expect("spent"), holds)
    }
}

#[test]
fn calls_pass_until_the_usd_quota_then_a_provider_shaped_429_and_a_receipt() {
    // 1000 micro-USD: a few 230 micro-USD calls fit, not eight.
    let s = setup("0.001");
    let mut script = String::new();
    for i in 1..=8 {
        script.push_str(&format!("echo '=== chat {i}'; {CHAT} 2>&1; echo\n"));
    }
    script.push_str(&format!("echo '=== messages'; {MESSAGES} 2>&1; echo\n"));
    let out = s.run(&script).output().expect("openclaw run");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let answers = answers(&all);
    assert_eq!(answers.len(), 9, "{all}");

    let chats = &answers[..8];
    let passed = chats.iter().take_while(|a| a.status == 200).count();
    assert!(passed >= 1, "the first call fits the quota: {all}");
    assert!(passed < 8, "eight calls cannot fit: {chats:#?}");
    // Once past, every call is refused.
    chats[passed..].iter().for_each(assert_openai_usd_refusal);
    let m = &answers[8];
    assert_eq!((m.name.as_str(), m.status), ("messages", 429), "{m:#?}");
    assert!(m.retry_after.is_some(), "{m:#?}");
    let body: Value = serde_json::from_str(&m.body).expect("json body");
    assert_eq!(body["type"], "error", "{m:#?}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{m:#?}");

    let bundles = s.bundles();
    assert_eq!(bundles.len(), 1);
    let bundle = &bundles[0];
    let blocks = quota_blocks(bundle);
    assert_eq!(blocks.len(), 8 - passed + 1, "{blocks:#?}");
    assert!(
        blocks.iter().all(|r| r.starts_with("quota: usd_per_day: ")),
        "{blocks:#?}"
    );
    let (cost, excess, calls) = usage_of(bundle);
    assert_eq!(calls, passed);
    assert_eq!(cost, CHAT_COST * passed as u64);
    let (spent, holds) = s.day_spend();
    assert_eq!(spent, cost, "day_spend holds what the receipts settled");
    assert!(spent <= 1000 + excess, "settled {spent} past the quota");
    assert_eq!(holds, 0, "no hold outlives its session");
    support::assert_verifies(s.home.path(), bundle);
}

#[test]
fn two_sessions_calling_in_parallel_never_settle_past_the_quota() {
    // 2000 micro-USD; 2 sessions × 8 parallel calls × 230 would be 3680.
    let s = setup("0.002");
    let script = parallel_chats(8);
    // Both sessions run at once, each with its calls in parallel.
    let spawn = || {
        s.run(&script)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openclaw run")
    };
    let (a, b) = (spawn(), spawn());
    let a = a.wait_with_output().expect("session a");
    let b = b.wait_with_output().expect("session b");
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let mut all = answers(&text(&a));
    all.extend(answers(&text(&b)));
    assert_eq!(all.len(), 16, "{all:#?}");
    let ok = all.iter().filter(|x| x.status == 200).count();
    let refused = all.iter().filter(|x| x.status == 429).count();
    assert_eq!(ok + refused, 16, "{all:#?}");
    assert!(ok >= 1 && refused >= 1, "{all:#?}");

    let bundles = s.bundles();
    assert_eq!(bundles.len(), 2);
    let (mut cost, mut excess, mut calls) = (0, 0, 0);
    for bundle in &bundles {
        let (c, e, n) = usage_of(bundle);
        cost += c;
        excess += e;
        calls += n;
        support::assert_verifies(s.home.path(), bundle);
    }
    assert_eq!(calls, ok);
    let (spent, holds) = s.day_spend();
    assert_eq!(spent, cost, "day_spend holds what the receipts settled");
    assert!(
        spent <= 2000 + excess,
        "two sessions settled {spent} past the quota of 2000 (excess {excess})"
    );
    assert_eq!(holds, 0);
    eprintln!(
        "two sessions, 16 parallel calls: {ok} passed, {refused} refused, \
         {spent} micro-USD settled of 2000 (excess over reservations {excess})"
    );
}

#[test]
fn past_the_tokens_quota_calls_get_the_anthropic_shaped_429_naming_it() {
    let s = setup_with(&["--llm-tokens-per-day", "300"]);
    let mut script = String::new();
    for i in 1..=6 {
        script.push_str(&format!("echo '=== messages {i}'; {MESSAGES} 2>&1; echo\n"));
    }
    let out = s.run(&script).output().expect("openclaw run");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let answers = answers(&all);
    assert_eq!(answers.len(), 6, "{all}");
    let passed = answers.iter().take_while(|a| a.status == 200).count();
    assert!((1..6).contains(&passed), "{all}");
    for a in &answers[passed..] {
        assert_eq!(a.status, 429, "{a:#?}");
        assert!(a.retry_after.is_some(), "{a:#?}");
        let body: Value = serde_json::from_str(&a.body).expect("json body");
        assert_eq!(body["error"]["type"], "rate_limit_error", "{a:#?}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("llm_tokens_per_day"), "{message}");
    }
    let bundle = &s.bundles()[0];
    let blocks = quota_blocks(bundle);
    assert_eq!(blocks.len(), 6 - passed, "{blocks:#?}");
    assert!(
        blocks
            .iter()
            .all(|r| r.starts_with("quota: llm_tokens_per_day: ")),
        "{blocks:#?}"
    );
    // Each call held its worst case (a token per body byte, plus its
    // max_tokens of 50): never past the quota, and refused only once that
    // worst case no longer fit beside what was settled.
    let body = MESSAGES.split("-d '").nth(1).expect("body");
    let worst = body.trim_end_matches('\'').len() as u64 + 50;
    let tokens = s.day_tokens();
    assert!(tokens <= 300, "settled past the quota: {tokens}");
    assert!(
        tokens + worst > 300,
        "refused though {tokens} + {worst} fit the quota"
    );
    support::assert_verifies(s.home.path(), bundle);
}

#[test]
fn two_sessions_calling_in_parallel_never_pass_the_tokens_quota() {
    // Each Chat call holds a token per body byte plus its max_tokens of 50;
    // the quota fits three such holds, not the sixteen calls fired at once
    // (without the token holds they all passed on the settled figure, 0,
    // and the day settled far past the quota).
    let body = CHAT.split("-d '").nth(1).expect("body");
    let worst = body.trim_end_matches('\'').len() as u64 + 50;
    let quota = 3 * worst + worst / 2;
    let s = setup_with(&["--llm-tokens-per-day", &quota.to_string()]);
    let script = parallel_chats(8);
    let spawn = || {
        s.run(&script)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openclaw run")
    };
    let (a, b) = (spawn(), spawn());
    let a = a.wait_with_output().expect("session a");
    let b = b.wait_with_output().expect("session b");
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let mut all = answers(&text(&a));
    all.extend(answers(&text(&b)));
    assert_eq!(all.len(), 16, "{all:#?}");
    let ok = all.iter().filter(|x| x.status == 200).count() as u64;
    let refused = all.iter().filter(|x| x.status == 429).count() as u64;
    assert_eq!(ok + refused, 16, "{all:#?}");
    assert!(ok >= 1, "{all:#?}");
    let tokens = s.day_tokens();
    assert!(
        tokens <= quota,
        "{ok} calls settled {tokens} tokens past the quota of {quota}"
    );
    assert_eq!(s.day_spend().1, 0, "every hold settled");
    for bundle in &s.bundles() {
        support::assert_verifies(s.home.path(), bundle);
    }
}
