//! Real LLM client libraries in the netns sandbox, through `openclaw run`:
//! the OpenAI Python SDK (streamed and not), the Anthropic Python SDK
//! (streamed) and Node's built-in fetch call a local HTTPS provider
//! (test-support's `llm` answers) as `api.openai.com` / `api.anthropic.com`.
//! Each: the call works, the client saw the provider's text, a client that did
//! not ask for OpenAI's usage chunk does not get one, the usage receipt and
//! the ledger row carry the provider's figures priced from `rates.toml`,
//! `verify` passes, and the sandbox only ever held a placeholder key.
//!
//! Gated on `scripts/bootstrap`'s SDK venv and `node`
//! (`Requirement::SdkClients`, docs/testing.md): ignored with the reason
//! where they are missing, a failure under `OPENCLAW_REQUIRE_HARNESS=1`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use test_requirements::{require, Requirement, SDK_VENV};
use test_support::llm::{CHAT_USAGE, MESSAGES_SERVICE_TIER, MESSAGES_USAGE, REPLY_TEXT};

mod support;
use support::llm_provider::{CHAT_COST, MESSAGES_COST, RATES};
use support::{openclaw, text};

/// The real keys: only the upstream may see them.
const OPENAI_KEY: &str = "sk-sdk-test-real-openai-7c41";
const ANTHROPIC_KEY: &str = "sk-ant-sdk-test-real-93d2";

/// A provider as the session sees it: its host, the grant and the secret.
struct Provider {
    host: &'static str,
    policy: &'static str,
    secrets: &'static str,
    real_key: &'static str,
}

/// OpenAI: the SDK sends `Authorization: Bearer <key>`; the secret says so
/// (docs/metering.md, "Provider keys").
const OPENAI: Provider = Provider {
    host: "api.openai.com",
    policy: "[llm]\nproviders = [\"api.openai.com\"]\ncredential = \"openai_key\"\nbudget_usd = \"1.00\"\n",
    secrets: "[[secret]]\nname = \"openai_key\"\nvalue = \"sk-sdk-test-real-openai-7c41\"\nheader = \"Authorization\"\nformat = \"Bearer {}\"\n",
    real_key: OPENAI_KEY,
};

/// Anthropic: the pinned SDK (anthropic 2.16.0) sends its `api_key` as
/// `Authorization: Bearer <key>`, not `x-api-key`: a secret placed in
/// `x-api-key` has its placeholder refused as exfiltration there.
const ANTHROPIC: Provider = Provider {
    host: "api.anthropic.com",
    policy: "[llm]\nproviders = [\"api.anthropic.com\"]\ncredential = \"anthropic_key\"\nbudget_usd = \"1.00\"\n",
    secrets: "[[secret]]\nname = \"anthropic_key\"\nvalue = \"sk-ant-sdk-test-real-93d2\"\nheader = \"Authorization\"\nformat = \"Bearer {}\"\n",
    real_key: ANTHROPIC_KEY,
};

/// What a session left: everything it printed, its bundle, the home, the
/// key header the upstream last saw.
struct Ran {
    all: String,
    bundle: PathBuf,
    upstream_key: Option<String>,
    _home: tempfile::TempDir,
}

fn python() -> String {
    format!("{SDK_VENV}/bin/python3")
}

/// Runs `command` in a netns session granted `provider`, against the test
/// provider answering as its host.
fn session(provider: &Provider, command: &[&str]) -> Ran {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = test_support::TestCa::new("llm sdk test provider");
    let upstream = rt.block_on(test_support::Upstream::https(
        &ca,
        &[provider.host],
        &[b"h2", b"http/1.1"],
    ));
    let home_dir = tempfile::tempdir().expect("home");
    let home = home_dir.path();
    support::keygen_and_mint(home, provider.policy);
    std::fs::write(home.join("rates.toml"), RATES).expect("rates");
    let secrets = home.join("secrets.toml");
    std::fs::write(&secrets, provider.secrets).expect("secrets");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let ca_pem = ca.write_pem(home);
    let out = openclaw(home)
        .arg("run")
        .arg("--capabilities")
        .arg(home.join("task.cap"))
        .arg("--secrets")
        .arg(&secrets)
        .args(["--backend", "netns", "--tenant", "acme", "--user", "alice"])
        .args(["--approve", "deny"])
        .arg("--upstream-ca")
        .arg(&ca_pem)
        .arg("--resolve")
        .arg(format!("{}={}", provider.host, upstream.addr))
        .arg("--")
        .args(command)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openclaw run");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let upstream_key = upstream.last_request().and_then(|r| {
        r.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let sessions: Vec<_> = std::fs::read_dir(home.join("sessions"))
        .expect("sessions")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(sessions.len(), 1, "{all}");
    support::assert_verifies(home, &sessions[0]);
    drop(upstream);
    Ran {
        all,
        bundle: sessions[0].clone(),
        upstream_key,
        _home: home_dir,
    }
}

/// The session's usage receipts.
fn usages(bundle: &Path) -> Vec<Value> {
    support::receipts(bundle)
        .into_iter()
        .filter(|r| r["kind"] == "usage")
        .collect()
}

/// The ledger's rows for the session: (tokens by kind, cost, tenant).
fn ledger_rows(home: &Path) -> Vec<(Vec<u64>, u64, String)> {
    let db = rusqlite::Connection::open(home.join("ledger.db")).expect("ledger");
    let mut stmt = db
        .prepare(
            "SELECT tokens_input, tokens_cached_input, tokens_cache_write_5m + \
             tokens_cache_write_1h, tokens_output, tokens_reasoning, cost_micro_usd, tenant \
             FROM usage ORDER BY seq",
        )
        .expect("query");
    stmt.query_map([], |r| {
        Ok((
            (0..5)
                .map(|i| r.get::<_, u64>(i))
                .collect::<Result<_, _>>()?,
            r.get(5)?,
            r.get(6)?,
        ))
    })
    .expect("rows")
    .collect::<Result<_, _>>()
    .expect("row")
}

fn tokens(usage: &Value) -> Vec<u64> {
    let t = &usage["tokens"];
    vec![
        t["input"].as_u64().expect("input"),
        t["cached_input"].as_u64().expect("cached"),
        t["cache_write_5m"].as_u64().expect("5m") + t["cache_write_1h"].as_u64().expect("1h"),
        t["output"].as_u64().expect("output"),
        t["reasoning"].as_u64().expect("reasoning"),
    ]
}

/// The Chat figures as the receipt keeps them: input without the cached
/// part, output with the reasoning inside.
fn chat_tokens() -> Vec<u64> {
    let u = CHAT_USAGE;
    vec![u.prompt - u.cached, u.cached, 0, u.completion, u.reasoning]
}

/// Checks each usage receipt and ledger row against `expected` and `cost`.
fn check_metered(ran: &Ran, calls: usize, expected: &[u64], cost: u64) {
    let usages = usages(&ran.bundle);
    assert_eq!(usages.len(), calls, "{usages:#?}\n{}", ran.all);
    for u in &usages {
        assert_eq!(tokens(u), expected, "{u}");
        assert_eq!(u["cost_micro_usd"], cost, "{u}");
        assert_eq!(u["estimated"], false, "{u}");
    }
    let rows = ledger_rows(ran._home.path());
    assert_eq!(rows.len(), calls, "{rows:?}");
    for (t, c, tenant) in rows {
        assert_eq!((t.as_slice(), c, tenant.as_str()), (expected, cost, "acme"));
    }
}

/// The placeholder, never the key, reached the sandbox; the key reached the
/// provider.
fn check_key(ran: &Ran, provider: &Provider, env_prefix: &str) {
    assert!(
        ran.all.contains(&format!("KEY {env_prefix}")),
        "the SDK got a placeholder: {}",
        ran.all
    );
    assert!(!ran.all.contains(provider.real_key), "{}", ran.all);
    let seen = ran.upstream_key.as_deref().unwrap_or_default();
    assert!(seen.contains(provider.real_key), "upstream saw {seen:?}");
    let receipts = std::fs::read_to_string(ran.bundle.join("receipts.jsonl")).expect("chain");
    assert!(!receipts.contains(provider.real_key));
}

const OPENAI_PRELUDE: &str = r#"
import os
from openai import OpenAI
key = os.environ["OPENAI_KEY"]
print("KEY", key[:15], flush=True)
client = OpenAI(api_key=key, max_retries=0)
messages = [{"role": "user", "content": "hi"}]
"#;

#[test]
#[cfg_attr(
    not(openclaw_has_sdk_clients),
    ignore = "needs scripts/bootstrap's SDK venv and node (test_requirements::Requirement::SdkClients)"
)]
fn the_openai_python_sdk_without_streaming_is_metered() {
    require(
        &[Requirement::SdkClients],
        "llm_sdks::the_openai_python_sdk_without_streaming_is_metered",
    );
    let script = format!(
        "{OPENAI_PRELUDE}
r = client.chat.completions.create(model='gpt-4o-mini', messages=messages, max_tokens=50)
print('SDK-TEXT', r.choices[0].message.content, flush=True)
print('SDK-USAGE', r.usage.prompt_tokens, r.usage.completion_tokens, flush=True)
"
    );
    let ran = session(&OPENAI, &[&python(), "-c", &script]);
    assert!(
        ran.all.contains(&format!("SDK-TEXT {REPLY_TEXT}")),
        "{}",
        ran.all
    );
    let u = CHAT_USAGE;
    assert!(
        ran.all
            .contains(&format!("SDK-USAGE {} {}", u.prompt, u.completion)),
        "{}",
        ran.all
    );
    check_key(&ran, &OPENAI, "ocs_openai_key_");
    check_metered(&ran, 1, &chat_tokens(), CHAT_COST);
}

/// A coding agent's prompt of 300 KiB, past the catalog's 64 KiB
/// `max_body_bytes`: the call to an LLM endpoint is read whole (up to
/// `max_whole_body_bytes`), so under the budget it is metered, not refused
/// as of unknown cost.
#[test]
#[cfg_attr(
    not(openclaw_has_sdk_clients),
    ignore = "needs scripts/bootstrap's SDK venv and node (test_requirements::Requirement::SdkClients)"
)]
fn the_openai_python_sdk_with_a_300_kib_prompt_is_metered() {
    require(
        &[Requirement::SdkClients],
        "llm_sdks::the_openai_python_sdk_with_a_300_kib_prompt_is_metered",
    );
    let script = format!(
        "{OPENAI_PRELUDE}
messages = [{{'role': 'user', 'content': 'word ' * (60 * 1024)}}]
r = client.chat.completions.create(model='gpt-4o-mini', messages=messages, max_tokens=50)
print('SDK-TEXT', r.choices[0].message.content, flush=True)
"
    );
    let ran = session(&OPENAI, &[&python(), "-c", &script]);
    assert!(
        ran.all.contains(&format!("SDK-TEXT {REPLY_TEXT}")),
        "{}",
        ran.all
    );
    check_key(&ran, &OPENAI, "ocs_openai_key_");
    check_metered(&ran, 1, &chat_tokens(), CHAT_COST);
    // The decision read the whole body: its digest is recorded.
    let allowed: Vec<Value> = support::receipts(&ran.bundle)
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["decision"]["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 1, "{allowed:#?}");
    assert!(allowed[0]["body_sha256"].is_string(), "{}", allowed[0]);
}

#[test]
#[cfg_attr(
    not(openclaw_has_sdk_clients),
    ignore = "needs scripts/bootstrap's SDK venv and node (test_requirements::Requirement::SdkClients)"
)]
fn the_openai_python_sdk_streaming_is_metered_and_sees_usage_only_when_it_asks() {
    require(
        &[Requirement::SdkClients],
        "llm_sdks::the_openai_python_sdk_streaming_is_metered_and_sees_usage_only_when_it_asks",
    );
    // Two streamed calls: one without include_usage (the proxy asks for it
    // and must hide the extra chunk), one with (the client gets its chunk).
    let script = format!(
        "{OPENAI_PRELUDE}
for ask in [False, True]:
    extra = {{'stream_options': {{'include_usage': True}}}} if ask else {{}}
    chunks = list(client.chat.completions.create(
        model='gpt-4o-mini', messages=messages, max_tokens=50, stream=True, **extra))
    text = ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None or not c.choices]
    print('SDK-TEXT', ask, text, flush=True)
    print('SDK-USAGE-CHUNKS', ask, len(usage),
          *[(x.prompt_tokens, x.completion_tokens) for x in usage if x is not None], flush=True)
"
    );
    let ran = session(&OPENAI, &[&python(), "-c", &script]);
    for ask in ["False", "True"] {
        assert!(
            ran.all.contains(&format!("SDK-TEXT {ask} {REPLY_TEXT}")),
            "{}",
            ran.all
        );
    }
    assert!(
        ran.all.contains("SDK-USAGE-CHUNKS False 0\n"),
        "no usage chunk reached the client that did not ask: {}",
        ran.all
    );
    let u = CHAT_USAGE;
    assert!(
        ran.all.contains(&format!(
            "SDK-USAGE-CHUNKS True 1 ({}, {})",
            u.prompt, u.completion
        )),
        "the client that asked got its usage chunk: {}",
        ran.all
    );
    check_key(&ran, &OPENAI, "ocs_openai_key_");
    check_metered(&ran, 2, &chat_tokens(), CHAT_COST);
}

#[test]
#[cfg_attr(
    not(openclaw_has_sdk_clients),
    ignore = "needs scripts/bootstrap's SDK venv and node (test_requirements::Requirement::SdkClients)"
)]
fn the_anthropic_python_sdk_streaming_is_metered() {
    require(
        &[Requirement::SdkClients],
        "llm_sdks::the_anthropic_python_sdk_streaming_is_metered",
    );
    let script = r#"
import os, anthropic
key = os.environ["ANTHROPIC_KEY"]
print("KEY", key[:18], flush=True)
client = anthropic.Anthropic(api_key=key, max_retries=0)
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                            messages=[{"role": "user", "content": "hi"}]) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
print("SDK-TEXT", text, flush=True)
u = final.usage
print("SDK-USAGE", u.input_tokens, u.cache_read_input_tokens,
      u.cache_creation_input_tokens, u.output_tokens, u.service_tier, flush=True)
"#;
    let ran = session(&ANTHROPIC, &[&python(), "-c", script]);
    assert!(
        ran.all.contains(&format!("SDK-TEXT {REPLY_TEXT}")),
        "{}",
        ran.all
    );
    let u = MESSAGES_USAGE;
    assert!(
        ran.all.contains(&format!(
            "SDK-USAGE {} {} {} {} {MESSAGES_SERVICE_TIER}",
            u.input, u.cache_read, u.cache_write, u.output
        )),
        "{}",
        ran.all
    );
    check_key(&ran, &ANTHROPIC, "ocs_anthropic_key_");
    let expected = vec![u.input, u.cache_read, u.cache_write, u.output, 0];
    check_metered(&ran, 1, &expected, MESSAGES_COST);
}

#[test]
#[cfg_attr(
    not(openclaw_has_sdk_clients),
    ignore = "needs scripts/bootstrap's SDK venv and node (test_requirements::Requirement::SdkClients)"
)]
fn node_fetch_streaming_is_metered() {
    require(
        &[Requirement::SdkClients],
        "llm_sdks::node_fetch_streaming_is_metered",
    );
    // A streamed Chat call without include_usage, read line by line.
    let script = r#"
(async () => {
  const key = process.env.OPENAI_KEY;
  console.log("KEY", key.slice(0, 15));
  const r = await fetch("https://api.openai.com/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: "gpt-4o-mini", max_tokens: 50, stream: true,
                           messages: [{ role: "user", content: "hi" }] }),
  });
  const body = await r.text();
  let text = "", usage = 0;
  for (const line of body.split("\n")) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const c = JSON.parse(line.slice(6));
    if (c.usage || c.choices.length === 0) usage++;
    for (const ch of c.choices) text += ch.delta.content || "";
  }
  console.log("FETCH-STATUS", r.status);
  console.log("SDK-TEXT", text);
  console.log("SDK-USAGE-CHUNKS", usage);
})().catch((e) => { console.log("FETCH-ERROR", e, e.cause); process.exit(1); });
"#;
    let ran = session(&OPENAI, &["node", "-e", script]);
    assert!(ran.all.contains("FETCH-STATUS 200"), "{}", ran.all);
    assert!(
        ran.all.contains(&format!("SDK-TEXT {REPLY_TEXT}")),
        "{}",
        ran.all
    );
    assert!(
        ran.all.contains("SDK-USAGE-CHUNKS 0\n"),
        "no usage chunk reached fetch: {}",
        ran.all
    );
    check_key(&ran, &OPENAI, "ocs_openai_key_");
    check_metered(&ran, 1, &chat_tokens(), CHAT_COST);
}
