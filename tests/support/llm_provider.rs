//! A local HTTPS LLM provider for sessions (test-support's `llm` answers,
//! served as `api.openai.com` and `api.anthropic.com` under a throwaway CA),
//! the rate card that prices its answers, the agent's curl calls, and what
//! the tests read back: each call's answer from the agent's output, the
//! usage and quota receipts of a bundle.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Prices of the two test models (USD per million tokens): a Chat call of
/// the mock provider costs [`CHAT_COST`] micro-USD, a Messages call 517.
pub const RATES: &str = r#"
[[model]]
name = "gpt-4o-mini"
input = "1"
cached_input = "0.5"
output = "4"

[[model]]
name = "claude-sonnet-4-5"
input = "3"
cached_input = "0.3"
cache_write_5m = "3.75"
cache_write_1h = "3.75"
output = "15"
"#;

/// What one Chat Completions call of the mock provider costs at [`RATES`]:
/// 100 uncached·1 + 20 cached·0.5 + 30 out·4 = 230 micro-USD.
pub const CHAT_COST: u64 = 230;
/// And one Messages call: 40 in·3 + 8 cache-read·0.3 + 5 cache-write·3.75 +
/// 25 out·15 = 516.15, rounded up once: 517 micro-USD.
pub const MESSAGES_COST: u64 = 517;

/// A policy whose token may call both providers (with a session budget far
/// above any test quota).
pub const LLM_POLICY: &str =
    "[llm]\nproviders = [\"api.openai.com\", \"api.anthropic.com\"]\nbudget_usd = \"1.00\"\n";

/// One Chat Completions call as the agent's shell runs it.
pub const CHAT: &str = r#"curl -sS -i https://api.openai.com/v1/chat/completions -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}'"#;

/// One Messages call as the agent's shell runs it.
pub const MESSAGES: &str = r#"curl -sS -i https://api.anthropic.com/v1/messages -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' -d '{"model":"claude-sonnet-4-5","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}'"#;

/// An agent script making `n` Chat calls at once, then printing their
/// answers (each after a `=== chat I` line).
pub fn parallel_chats(n: usize) -> String {
    let mut script = String::new();
    for i in 1..=n {
        script.push_str(&format!(
            "( out=$({CHAT} 2>&1); printf '=== chat {i}\\n%s\\n' \"$out\" > /work/answer{i} ) &\n"
        ));
    }
    script.push_str("wait; cat /work/answer*\n");
    script
}

/// The provider, on its own runtime; stops when dropped.
pub struct MockProvider {
    _rt: tokio::runtime::Runtime,
    pub upstream: test_support::Upstream,
    /// The CA the sessions must trust for it (`--upstream-ca`).
    pub ca_pem: PathBuf,
}

impl MockProvider {
    /// Starts it, its CA's certificate written into `dir`.
    pub fn start(dir: &Path) -> MockProvider {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let ca = test_support::TestCa::new("test LLM provider");
        let upstream = rt.block_on(test_support::Upstream::https(
            &ca,
            &["api.openai.com", "api.anthropic.com"],
            &[b"h2", b"http/1.1"],
        ));
        let ca_pem = ca.write_pem(dir);
        MockProvider {
            _rt: rt,
            upstream,
            ca_pem,
        }
    }

    /// `--resolve` and `--upstream-ca` flags (of `run` or `serve`) sending
    /// both providers' traffic here.
    pub fn flags(&self) -> Vec<String> {
        let addr = self.upstream.addr;
        vec![
            "--upstream-ca".into(),
            self.ca_pem.to_str().expect("utf-8 path").into(),
            "--resolve".into(),
            format!("api.openai.com={addr}"),
            "--resolve".into(),
            format!("api.anthropic.com={addr}"),
        ]
    }
}

/// One call's answer as curl -i printed it after a `=== NAME` line.
#[derive(Debug)]
pub struct Answer {
    pub name: String,
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: String,
}

/// The answers in what `openclaw run` printed (the monitor prefixes the
/// agent's lines with `agent| `).
pub fn answers(out: &str) -> Vec<Answer> {
    let agent: String = out
        .lines()
        .filter_map(|l| l.strip_prefix("agent| ").or((l == "agent|").then_some("")))
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\n");
    agent
        .split("=== ")
        .skip(1)
        .map(|part| {
            let (name, rest) = part.split_once('\n').unwrap_or((part, ""));
            let status_line = rest.lines().next().unwrap_or("");
            let status = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let (head, body) = rest.split_once("\n\n").unwrap_or((rest, ""));
            let retry_after = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("retry-after")
                    .then(|| v.trim().parse().ok())?
            });
            Answer {
                name: name.trim().to_owned(),
                status,
                retry_after,
                body: body.trim().to_owned(),
            }
        })
        .collect()
}

/// Checks a refused OpenAI-shaped answer: 429, `Retry-After` within the
/// day, `insufficient_quota` naming the USD/day quota.
pub fn assert_openai_usd_refusal(a: &Answer) {
    assert_eq!(a.status, 429, "{a:#?}");
    let wait = a.retry_after.expect("retry-after");
    assert!((1..=86_400).contains(&wait), "{a:#?}");
    let body: Value = serde_json::from_str(&a.body).expect("json body");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{a:#?}");
    assert_eq!(body["error"]["type"], "insufficient_quota", "{a:#?}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("usd_per_day"), "{message}");
}

/// Settled usage in a bundle: (Σ cost, Σ max(0, cost − reservation), calls).
pub fn usage_of(bundle: &Path) -> (u64, u64, usize) {
    let mut cost = 0;
    let mut excess = 0;
    let mut calls = 0;
    for r in super::receipts(bundle)
        .iter()
        .filter(|r| r["kind"] == "usage")
    {
        let c = r["cost_micro_usd"].as_u64().expect("cost");
        let reserved = r["reserved_micro_usd"].as_u64().expect("reserved");
        cost += c;
        excess += c.saturating_sub(reserved);
        calls += 1;
    }
    (cost, excess, calls)
}

/// The `quota`-stage blocked decisions of a bundle: their reasons.
pub fn quota_blocks(bundle: &Path) -> Vec<String> {
    super::receipts(bundle)
        .iter()
        .filter(|r| r["kind"] == "decision" && r["decision"]["stage"] == "quota")
        .map(|r| {
            assert_eq!(r["decision"]["decision"], "block", "{r}");
            r["decision"]["reason"].as_str().expect("reason").to_owned()
        })
        .collect()
}
