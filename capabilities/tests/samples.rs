//! Golden vectors for capability decisions, beside the token format (as
//! biscuit's `samples/`): the tokens checked in under `samples/tokens/`,
//! signed by a fixed test root key, and for each a list of actions decided at
//! a fixed time with fixed counters. `samples/decisions.json` holds what the
//! current code decides; a change in any decision, reason or grant, or in
//! how a checked-in token reads, shows up as a diff of that file.
//!
//! Regenerate after an intended change:
//!     REGENERATE_SAMPLES=1 cargo test -p capabilities --test samples
//! It rewrites `decisions.json` from the checked-in tokens. A token whose
//! file is missing is minted (or attenuated) anew from its policy file, so
//! delete a token to re-mint it (its bytes and revocation ids change: biscuit
//! signs each block with a fresh ephemeral key).

mod common;

use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, SystemTime};

use capabilities::{Action, Capability, Counters, Policy, UnverifiedToken, Verdict};
use common::*;
use serde::{Deserialize, Serialize};

const REGENERATE: &str = "REGENERATE_SAMPLES";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples")
}

/// A checked-in token and the actions decided against it.
struct Sample {
    /// `samples/tokens/<name>.cap`.
    name: &'static str,
    /// `samples/policies/<policy>.toml`: what it was minted from, or the
    /// narrowing block appended to `attenuates`.
    policy: &'static str,
    attenuates: Option<&'static str>,
    /// Seconds after `t0()` at which it was minted or attenuated.
    made_at: u64,
    cases: Vec<Case>,
}

struct Case {
    name: &'static str,
    /// Seconds after `t0()`.
    at: u64,
    action: Action,
    counters: Counters,
}

fn case(name: &'static str, at: u64, action: Action) -> Case {
    Case {
        name,
        at,
        action,
        counters: Counters::default(),
    }
}

fn with_counters(mut case: Case, counters: Counters) -> Case {
    case.counters = counters;
    case
}

fn with_credential(mut action: Action, credential: &str) -> Action {
    action.credential = Some(credential.to_owned());
    action
}

fn samples() -> Vec<Sample> {
    let spent = |cents| Counters {
        spent_cents: cents,
        ..Counters::default()
    };
    let emails = |n| Counters {
        emails_sent: n,
        ..Counters::default()
    };
    let llm_spent = |micro| Counters {
        llm_spent_micro_usd: micro,
        ..Counters::default()
    };
    let subject = "Your flight confirmation: SFO-JFK";
    vec![
        Sample {
            name: "flight-booking",
            policy: "flight-booking",
            attenuates: None,
            made_at: 0,
            cases: vec![
                case(
                    "web: a flight search under an allowed path prefix",
                    60,
                    web("GET", "google.com", "/travel/flights/search?q=SFO-JFK"),
                ),
                case(
                    "web: HEAD on an exact host",
                    60,
                    web("HEAD", "kayak.com", "/"),
                ),
                case(
                    "web: POST is not an allowed method",
                    60,
                    web("POST", "kayak.com", "/search"),
                ),
                case(
                    "web: a path outside the prefix",
                    60,
                    web("GET", "google.com", "/maps"),
                ),
                case(
                    "web: a subdomain of an exact host",
                    60,
                    web("GET", "www.kayak.com", "/"),
                ),
                case(
                    "web: a host no grant names",
                    60,
                    web("POST", "hooks.slack.com", "/services/T024/B000/XXX"),
                ),
                case(
                    "payment: exactly at the approval threshold",
                    60,
                    payment("united.com", 40_000, "USD"),
                ),
                case(
                    "payment: above the approval threshold",
                    60,
                    payment("united.com", 48_700, "USD"),
                ),
                case(
                    "payment: one cent over the per-charge ceiling",
                    60,
                    payment("united.com", 60_001, "USD"),
                ),
                with_counters(
                    case(
                        "payment: past the session total",
                        60,
                        payment("united.com", 30_000, "USD"),
                    ),
                    spent(40_000),
                ),
                case(
                    "payment: another currency",
                    60,
                    payment("united.com", 30_000, "EUR"),
                ),
                case(
                    "payment: another merchant",
                    60,
                    payment("delta.com", 30_000, "USD"),
                ),
                case(
                    "payment: another card",
                    60,
                    with_credential(payment("united.com", 30_000, "USD"), "other_card"),
                ),
                case(
                    "email: to the traveler, with the subject",
                    60,
                    email(&["traveler@example.com"], subject),
                ),
                case(
                    "email: one recipient not listed",
                    60,
                    email(&["traveler@example.com", "attacker@evil.example"], subject),
                ),
                case(
                    "email: a subject without the phrase",
                    60,
                    email(&["traveler@example.com"], "hello"),
                ),
                with_counters(
                    case(
                        "email: the count is used up",
                        60,
                        email(&["traveler@example.com"], subject),
                    ),
                    emails(2),
                ),
                case(
                    "login: the granted credential at its service",
                    60,
                    login("united.com", "united_login"),
                ),
                case(
                    "login: another credential",
                    60,
                    login("united.com", "delta_login"),
                ),
                case("llm: no llm grant", 60, llm("api.openai.com", 1_000)),
                case(
                    "expired: one second after the 30-minute TTL",
                    1_801,
                    web("GET", "kayak.com", "/"),
                ),
            ],
        },
        Sample {
            name: "llm",
            policy: "llm",
            attenuates: None,
            made_at: 0,
            cases: vec![
                case(
                    "llm: a call within the budget",
                    60,
                    llm("api.openai.com", 100_000),
                ),
                case(
                    "llm: exactly at the approval threshold",
                    60,
                    llm("api.anthropic.com", 500_000),
                ),
                case(
                    "llm: above the approval threshold",
                    60,
                    llm("api.openai.com", 500_001),
                ),
                with_counters(
                    case(
                        "llm: exactly up to the budget",
                        60,
                        llm("api.openai.com", 100_000),
                    ),
                    llm_spent(4_900_000),
                ),
                with_counters(
                    case(
                        "llm: the call would pass the budget",
                        60,
                        llm("api.openai.com", 100_001),
                    ),
                    llm_spent(4_900_000),
                ),
                case(
                    "llm: a call the catalog could not price is not free under a budget",
                    60,
                    Action {
                        cost_micro_usd: None,
                        ..llm("api.openai.com", 0)
                    },
                ),
                case(
                    "llm: a provider not listed",
                    60,
                    llm("api.mistral.ai", 1_000),
                ),
                case(
                    "llm: another credential",
                    60,
                    with_credential(llm("api.openai.com", 1_000), "anthropic_key"),
                ),
                case(
                    "web: no web grant, even at a provider",
                    60,
                    web("GET", "api.openai.com", "/"),
                ),
                case(
                    "expired: one second after the 1-hour TTL",
                    3_601,
                    llm("api.openai.com", 1_000),
                ),
            ],
        },
        Sample {
            name: "flight-booking-united-only",
            policy: "united-only",
            attenuates: Some("flight-booking"),
            made_at: 600,
            cases: vec![
                case(
                    "web: allowed by both blocks",
                    660,
                    web("GET", "united.com", "/"),
                ),
                case(
                    "web: HEAD, which the narrowing block drops",
                    660,
                    web("HEAD", "united.com", "/"),
                ),
                case(
                    "web: a host the narrowing block drops",
                    660,
                    web("GET", "kayak.com", "/"),
                ),
                case(
                    "payment: under both ceilings and the threshold",
                    660,
                    payment("united.com", 35_000, "USD"),
                ),
                case(
                    "payment: under the narrowed ceiling, above the root's threshold",
                    660,
                    payment("united.com", 42_000, "USD"),
                ),
                case(
                    "payment: over the narrowed ceiling, under the root's",
                    660,
                    payment("united.com", 46_000, "USD"),
                ),
                case(
                    "email: a grant the narrowing block leaves out",
                    660,
                    email(&["traveler@example.com"], subject),
                ),
                case(
                    "login: a grant the narrowing block leaves out",
                    660,
                    login("united.com", "united_login"),
                ),
                case(
                    "expired: the narrowing block's 5 minutes are over, the root's 30 are not",
                    901,
                    web("GET", "united.com", "/"),
                ),
            ],
        },
    ]
}

/// `decisions.json`, field order fixed by these structs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decisions {
    /// Hex ed25519 public key every token verifies against.
    root_public_key: String,
    samples: Vec<SampleRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleRecord {
    token: String,
    policy: String,
    attenuates: Option<String>,
    made_at: String,
    summary: String,
    expires_at: Option<String>,
    revocation_ids: Vec<String>,
    cases: Vec<CaseRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRecord {
    name: String,
    now: String,
    action: Action,
    counters: Counters,
    expected: Expected,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    decision: Verdict,
    reason: String,
    grant: Option<String>,
}

fn time(offset: u64) -> SystemTime {
    t0() + Duration::from_secs(offset)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn token_path(name: &str) -> PathBuf {
    dir().join("tokens").join(format!("{name}.cap"))
}

fn policy(name: &str) -> Policy {
    let path = dir().join("policies").join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Policy::from_toml_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The checked-in token, minted or attenuated first when regenerating and
/// its file is missing.
fn load_token(sample: &Sample, regenerate: bool) -> Capability {
    let path = token_path(sample.name);
    if regenerate && !path.exists() {
        let made_at = time(sample.made_at);
        let token = match sample.attenuates {
            None => capabilities::mint(&policy(sample.policy), &ROOT_SECRET, made_at),
            Some(parent) => {
                read_verified(&token_path(parent)).attenuate(&policy(sample.policy), made_at)
            }
        }
        .expect("mint or attenuate");
        std::fs::create_dir_all(dir().join("tokens")).expect("mkdir");
        std::fs::write(&path, format!("{token}\n")).expect("write token");
    }
    read_verified(&path)
}

fn read_verified(path: &std::path::Path) -> Capability {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; make it with {REGENERATE}=1 cargo test -p capabilities --test samples",
            path.display()
        )
    });
    UnverifiedToken::from_base64(text.trim())
        .expect("a checked-in token parses")
        .verify(&public_of(&ROOT_SECRET))
        .expect("a checked-in token verifies against the samples' root key")
}

fn expected(cap: &Capability, action: &Action, counters: &Counters, now: SystemTime) -> Expected {
    let d = cap.authorize(action, counters, now);
    assert_eq!(
        d.revocation_ids,
        cap.revocation_ids(),
        "a decision names the token's revocation ids"
    );
    Expected {
        decision: d.decision,
        reason: d.reason,
        grant: d.grant,
    }
}

fn derive_all(regenerate: bool) -> Decisions {
    let mut records: Vec<SampleRecord> = Vec::new();
    for sample in samples() {
        let cap = load_token(&sample, regenerate);
        if let Some(parent) = sample.attenuates {
            let parent = records
                .iter()
                .find(|r| r.token == format!("tokens/{parent}.cap"))
                .expect("a parent is listed before its attenuations");
            assert_eq!(
                cap.revocation_ids()[..parent.revocation_ids.len()],
                parent.revocation_ids[..],
                "{} is {parent:?} with one block appended",
                sample.name
            );
            assert_eq!(cap.revocation_ids().len(), parent.revocation_ids.len() + 1);
        }
        let cases = sample
            .cases
            .into_iter()
            .map(|c| CaseRecord {
                name: c.name.to_owned(),
                now: rfc3339(time(c.at)),
                expected: expected(&cap, &c.action, &c.counters, time(c.at)),
                action: c.action,
                counters: c.counters,
            })
            .collect();
        records.push(SampleRecord {
            token: format!("tokens/{}.cap", sample.name),
            policy: format!("policies/{}.toml", sample.policy),
            attenuates: sample.attenuates.map(|p| format!("tokens/{p}.cap")),
            made_at: rfc3339(time(sample.made_at)),
            summary: cap.summary().to_string(),
            expires_at: cap.expires_at().map(rfc3339),
            revocation_ids: cap.revocation_ids(),
            cases,
        });
    }
    Decisions {
        root_public_key: hex::encode(public_of(&ROOT_SECRET)),
        samples: records,
    }
}

/// The lines of `old` and `new` that differ, as `-`/`+` lines with their
/// line numbers (a longest-common-subsequence diff; the files are small).
fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("-{:>4} {}\n", i + 1, a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{:>4} {}\n", j + 1, b[j]));
            j += 1;
        }
    }
    out
}

/// `decisions.json` as the code derives it now.
fn render(decisions: &Decisions) -> String {
    let mut text = serde_json::to_string_pretty(decisions).expect("json");
    text.push('\n');
    text
}

/// With `REGENERATE_SAMPLES` set: mints missing tokens and rewrites
/// `decisions.json`, once per run, before either test reads it.
fn regenerate_if_asked() {
    static ONCE: Once = Once::new();
    if std::env::var_os(REGENERATE).is_some() {
        ONCE.call_once(|| {
            let text = render(&derive_all(true));
            std::fs::write(dir().join("decisions.json"), text).expect("write decisions.json");
        });
    }
}

#[test]
fn checked_in_tokens_decide_as_decisions_json_says() {
    regenerate_if_asked();
    let text = render(&derive_all(false));
    let recorded = std::fs::read_to_string(dir().join("decisions.json")).unwrap_or_default();
    assert!(
        recorded == text,
        "capability decisions differ from samples/decisions.json \
         (- recorded, + derived now); if intended, regenerate with \
         {REGENERATE}=1 cargo test -p capabilities --test samples\n{}",
        line_diff(&recorded, &text)
    );
}

/// The file alone is a usable vector set: its actions and counters parse
/// with today's types and decide as it says, with nothing from this file's
/// case list.
#[test]
fn decisions_json_replays_from_its_own_facts() {
    regenerate_if_asked();
    let text = std::fs::read_to_string(dir().join("decisions.json")).expect("decisions.json");
    let recorded: Decisions = serde_json::from_str(&text).expect("decisions.json parses");
    assert_eq!(
        recorded.root_public_key,
        hex::encode(public_of(&ROOT_SECRET))
    );
    let mut cases = 0;
    let mut verdicts = std::collections::BTreeSet::new();
    for sample in &recorded.samples {
        let cap = read_verified(&dir().join(&sample.token));
        assert_eq!(
            cap.revocation_ids(),
            sample.revocation_ids,
            "{}",
            sample.token
        );
        for c in &sample.cases {
            let now = humantime::parse_rfc3339(&c.now).expect("now");
            let got = expected(&cap, &c.action, &c.counters, now);
            assert_eq!(got, c.expected, "{}: {}", sample.token, c.name);
            verdicts.insert(format!("{:?}", got.decision));
            cases += 1;
        }
    }
    assert!(cases >= 30, "{cases} cases");
    assert_eq!(verdicts.len(), 3, "allow, block and approval all appear");
}

#[test]
fn the_line_diff_shows_what_changed() {
    assert_eq!(line_diff("a\nb\nc\n", "a\nb\nc\n"), "");
    assert_eq!(
        line_diff("a\nb\nc\n", "a\nB\nc\nd\n"),
        "-   2 b\n+   2 B\n+   4 d\n"
    );
}
