//! `openclaw verify`: verify a session's receipt chain offline, and re-run
//! each recorded decision against the session's capability token (both in
//! the `receipts` crate); this file reads the bundle and reports.
//!
//! Exit codes: 0 the chain is valid, 1 it is not (the first bad line is
//! named), 2 the input could not be read or no key was pinned. A chain that
//! recovery closed after its supervisor died is valid and says so.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use receipts::{
    Body, ChainError, Coverage, ReadChainError, Receipt, Rederiver, UnverifiedStream,
    VerifiedStream,
};
use serde::Serialize;

use crate::session::screen::{visible_inline, visible_json};
use crate::{bundle, keys};

/// Exit code: every check passed.
pub const EXIT_VALID: u8 = 0;
/// Exit code: the chain (or a decision in it) failed a check.
pub const EXIT_INVALID: u8 = 1;
/// Exit code: the input could not be read, or no key was pinned.
pub const EXIT_UNREADABLE: u8 = 2;

/// File names inside a session bundle.
const RECEIPTS_FILE: &str = "receipts.jsonl";
const TOKEN_FILE: &str = "capabilities.cap";

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw verify ~/.openclaw/sessions/<id> --key receipt.pub
  openclaw verify bundle/ --key receipt.pub --cap-pubkey root.pub   # also re-run every decision
  openclaw verify bundle/receipts.jsonl --key receipt.pub --json

Checks every signature against the pinned key, the prev links, seq continuity,
one session_start and one session_end (count and last hash). A chain closed
by `openclaw recover` after its supervisor died is complete and valid, and
says \"interrupted (supervisor died) at seq N, recovered at T\"; a chain cut
without any session_end is invalid. When the bundle
holds capabilities.cap and --cap-pubkey is given, every decision receipt is
re-authorized against the token with its recorded facts, counters and time.
Needs no network and no openclaw home.

An anchor is the chain head a session's supervisor printed and recorded
outside the bundle when the session ended (`receipts: N, chain head
sha256:…` at the end of `openclaw run`, and a line of
<home>/chain-heads.jsonl). Someone who can edit the bundle can cut a finished
chain and have recovery close it again as interrupted, which verifies on its
own; with --head or --heads the chain must end exactly at the anchored head.

Exit status: 0 valid, 1 invalid (the first bad line is named), 2 unreadable
input or no pinned key.")]
pub struct VerifyArgs {
    /// A session directory (its receipts.jsonl, and capabilities.cap if
    /// present) or a receipts.jsonl file (capabilities.cap beside it is used).
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// The receipt-signing public key to check against (receipt.pub from `openclaw keygen`).
    #[arg(long, value_name = "RECEIPT.pub")]
    key: Option<PathBuf>,
    /// Check against the public key the chain names for itself. This proves
    /// the chain is self-consistent, not who wrote it.
    #[arg(long, conflicts_with = "key")]
    trust_embedded_key: bool,
    /// The capability root public key (root.pub), to re-derive each decision
    /// from the bundle's capabilities.cap.
    #[arg(long, value_name = "ROOT.pub")]
    cap_pubkey: Option<PathBuf>,
    /// The chain head the session ended with (`sha256:HEX`, as `openclaw
    /// run` printed it): the chain must end at a receipt with that hash.
    #[arg(long, value_name = "sha256:HEX", conflicts_with = "heads")]
    head: Option<String>,
    /// A chain-heads.jsonl (<home>/chain-heads.jsonl): the chain must end at
    /// the head recorded for its session, if one is.
    #[arg(long, value_name = "FILE")]
    heads: Option<PathBuf>,
    /// With --heads: a session without a recorded head is invalid.
    #[arg(long, requires = "heads")]
    require_head: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What `--json` prints; the text output says the same.
#[derive(Debug, Default, Serialize)]
struct Report {
    /// `valid`, `invalid` or `unreadable`.
    status: &'static str,
    receipts_file: String,
    /// The first failure (or why the input could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Problem>,
    /// Every re-derivation mismatch, in line order.
    mismatches: Vec<Problem>,
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    /// `pinned` (--key) or `embedded` (--trust-embedded-key).
    #[serde(skip_serializing_if = "Option::is_none")]
    key_source: Option<&'static str>,
    receipts: usize,
    /// Receipts that carry their own signature; the others (format version
    /// 5) are covered by the next signed line's, one signature per write.
    signatures: usize,
    /// Decision receipts by recorded verdict.
    decisions: BTreeMap<String, usize>,
    approvals: usize,
    /// Usage receipts (metered LLM calls), each cost re-derived from its
    /// rate snapshot by the chain check.
    usage_receipts: usize,
    /// The usage receipts' costs, summed (micro-USD).
    cost_micro_usd: u64,
    /// The session's labels, when its session_start carries them.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_hash: Option<String>,
    /// Set when recovery (not the supervisor) closed the chain; `null` for
    /// a normal end or an invalid chain.
    interrupted: Option<Interrupted>,
    /// The check against an anchored head (--head, --heads), if asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    anchor: Option<Anchor>,
    rederivation: Rederivation,
}

/// `--json`'s view of the anchor check.
#[derive(Debug, Serialize)]
struct Anchor {
    /// `matches`, `differs` (the chain does not end at the head: invalid),
    /// `no_entry` (--heads has none for the session) or `not_checked` (the
    /// chain itself is invalid).
    status: &'static str,
    /// The anchored head, `sha256:HEX`.
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<String>,
    /// Where it came from: `--head`, or the --heads file.
    source: String,
}

/// `--json`'s view of a chain closed by recovery after its supervisor died.
#[derive(Debug, Serialize)]
struct Interrupted {
    /// `supervisor_died`.
    cause: receipts::InterruptionCause,
    /// seq of the supervisor's last receipt.
    at_seq: u64,
    /// When recovery closed the chain.
    recovered_at: String,
    /// "interrupted (supervisor died) at seq N, recovered at T".
    summary: String,
}

#[derive(Debug, Default, Serialize)]
struct Problem {
    /// 1-based line in receipts.jsonl; 0 when no line is at fault.
    line: usize,
    message: String,
}

#[derive(Debug, Default, Serialize)]
struct Rederivation {
    /// `checked`, `skipped` (no --cap-pubkey) or `no_token` (no capabilities.cap).
    status: &'static str,
    checked: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// Input that could not be read: exit 2.
struct Unreadable(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Unreadable {
    fn from(e: E) -> Self {
        Unreadable(e.into())
    }
}

pub fn execute(args: VerifyArgs) -> Result<ExitCode> {
    let (report, code) = run(&args);
    if args.json {
        println!("{}", visible_json(&serde_json::to_string_pretty(&report)?));
    } else {
        print_human(&report);
    }
    Ok(ExitCode::from(code))
}

/// What `openclaw verify DIR --key KEY [--cap-pubkey ROOT] --json` prints,
/// as a value: `openclaw serve` answers `GET /v1/sessions/{id}/receipts/verify`
/// with it (the same checks, the tenant's keys).
pub(crate) fn verify_bundle_json(
    dir: &std::path::Path,
    key: &std::path::Path,
    cap_pubkey: Option<&std::path::Path>,
) -> serde_json::Value {
    let args = VerifyArgs {
        path: dir.to_path_buf(),
        key: Some(key.to_path_buf()),
        trust_embedded_key: false,
        cap_pubkey: cap_pubkey.map(std::path::Path::to_path_buf),
        head: None,
        heads: None,
        require_head: false,
        json: true,
    };
    let (report, _) = run(&args);
    serde_json::to_value(&report).unwrap_or(serde_json::Value::Null)
}

/// Runs every check; the report and the exit code.
fn run(args: &VerifyArgs) -> (Report, u8) {
    let mut report = Report::default();
    let code = match check(args, &mut report) {
        Ok(()) if report.error.is_none() && report.mismatches.is_empty() => {
            report.status = "valid";
            EXIT_VALID
        }
        Ok(()) => {
            report.status = "invalid";
            EXIT_INVALID
        }
        Err(Unreadable(e)) => {
            report.status = "unreadable";
            report.error = Some(Problem {
                line: 0,
                message: format!("{e:#}"),
            });
            EXIT_UNREADABLE
        }
    };
    (report, code)
}

fn check(args: &VerifyArgs, report: &mut Report) -> Result<(), Unreadable> {
    let (receipts_path, bundle_dir) = if args.path.is_dir() {
        (args.path.join(RECEIPTS_FILE), args.path.clone())
    } else {
        let dir = match args.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        (args.path.clone(), dir)
    };
    report.receipts_file = receipts_path.display().to_string();
    let reading = || format!("reading {}", receipts_path.display());
    // Read as it is verified: memory stays bounded by the chain's bounds
    // whatever the file's size, and reading stops at the first bad line.
    let (file, len) = bundle::open_regular_file(&receipts_path).with_context(reading)?;
    let mut stream = UnverifiedStream::new(std::io::Read::take(file, len));
    let token_path = bundle_dir.join(TOKEN_FILE);
    let token_bytes = match bundle::read_regular_file(&token_path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(anyhow!(e)
                .context(format!("reading {}", token_path.display()))
                .into())
        }
    };
    let root_key = args
        .cap_pubkey
        .as_deref()
        .map(keys::read_verifying_key)
        .transpose()?;

    let key = match (&args.key, args.trust_embedded_key) {
        (Some(path), _) => {
            let key = keys::read_verifying_key(path)?;
            report.key_source = Some("pinned");
            report.key_id = Some(receipts::key_id(&key));
            Ok(key)
        }
        (None, true) => {
            report.key_source = Some("embedded");
            report.warnings.push(
                "checked against the key the chain names for itself (--trust-embedded-key): \
                 this shows the chain is self-consistent, not who wrote it"
                    .into(),
            );
            let key = stream.embedded_key();
            if let Ok(key) = &key {
                report.key_id = Some(receipts::key_id(key));
            }
            key
        }
        (None, false) => {
            return Err(Unreadable(anyhow!(
                "no receipt key pinned: pass --key RECEIPT.pub (the receipt public key you \
                 trust), or --trust-embedded-key to accept the key the chain names for itself \
                 (which proves consistency, not authorship)"
            )))
        }
    };
    // Read before judging the chain: a head that cannot be read is
    // unreadable input whatever the chain holds.
    let anchored = anchored_heads(args)?;
    let mut tally = Tally::default();
    let mut rederiver: Option<Rederiver> = None;
    let verified = key.and_then(|key| {
        stream.verify(&key, |r| {
            tally.count(&r.receipt);
            if let Some(token) = &token_bytes {
                let line = tally.receipts;
                rederiver
                    .get_or_insert_with(|| Rederiver::new(&r.receipt, token, root_key.as_ref()))
                    .push(line, &r.receipt);
            }
        })
    });
    let chain = match verified {
        Ok(chain) => chain,
        Err(ReadChainError::Read(e)) => return Err(anyhow!(e).context(reading()).into()),
        Err(ReadChainError::Chain(e)) => {
            report.error = Some(chain_problem(&e));
            if let Some((_, source)) = &anchored {
                report.anchor = Some(Anchor {
                    status: "not_checked",
                    head: None,
                    source: source.clone(),
                });
            }
            return Ok(());
        }
    };
    summarize(&chain, tally, report);
    if let Some((heads, source)) = anchored {
        check_anchor(&chain, &heads, source, args.require_head, report);
        if report.error.is_some() {
            return Ok(());
        }
    }
    match rederiver {
        None => {
            if root_key.is_some() {
                // Asked to re-derive, and nothing to re-derive against: a
                // token taken out of the bundle must not hide a decision it
                // would refute.
                let bound = match &chain.start().body {
                    Body::SessionStart {
                        capability_sha256: Some(digest),
                        ..
                    } => Some(digest),
                    _ => None,
                };
                report.mismatches.push(Problem {
                    line: usize::from(bound.is_some()),
                    message: match bound {
                        Some(digest) => format!(
                            "line 1: session_start binds a {TOKEN_FILE} (SHA-256 {digest}), but \
                             the bundle has no {TOKEN_FILE}: decisions cannot be re-derived"
                        ),
                        None => format!(
                            "--cap-pubkey was given, but the bundle has no {TOKEN_FILE}: \
                             decisions cannot be re-derived"
                        ),
                    },
                });
            }
            report.rederivation = Rederivation {
                status: "no_token",
                checked: 0,
                note: Some(format!(
                    "no {TOKEN_FILE} in the bundle: decisions were not re-derived"
                )),
            };
        }
        Some(rederiver) => record_rederivation(rederiver.finish(), report),
    }
    Ok(())
}

/// The anchored heads asked for: --head's (for any session), or the
/// records of a --heads file; and where they came from.
type Heads = Vec<crate::home::ChainHead>;

fn anchored_heads(args: &VerifyArgs) -> Result<Option<(Heads, String)>, Unreadable> {
    if let Some(text) = &args.head {
        let hash = crate::home::parse_head(text)?;
        let head = crate::home::ChainHead {
            session: String::new(),
            seq: 0,
            head: format!("{}{}", crate::home::HEAD_PREFIX, hex::encode(hash)),
            at: String::new(),
        };
        return Ok(Some((vec![head], "--head".to_owned())));
    }
    let Some(path) = &args.heads else {
        return Ok(None);
    };
    // A missing file is unreadable too: an auditor who names one expects it.
    bundle::read_regular_file(path).with_context(|| format!("reading {}", path.display()))?;
    let heads = crate::home::read_chain_heads(path)?;
    Ok(Some((heads, path.display().to_string())))
}

/// The chain (valid by itself) must end at the anchored head: else it was
/// cut, extended or replaced after the head was recorded.
fn check_anchor(
    chain: &VerifiedStream,
    heads: &Heads,
    source: String,
    require: bool,
    report: &mut Report,
) {
    let from_flag = source == "--head";
    let head = if from_flag {
        heads.first()
    } else {
        heads.iter().rev().find(|h| h.session == chain.session())
    };
    let Some(head) = head else {
        let message = format!(
            "{source} holds no chain head for session {}",
            chain.session()
        );
        if require {
            report.error = Some(Problem {
                line: 0,
                message: format!("{message} (--require-head)"),
            });
        } else {
            report.warnings.push(format!(
                "{message}: the chain was not checked against an anchor"
            ));
        }
        report.anchor = Some(Anchor {
            status: "no_entry",
            head: None,
            source,
        });
        return;
    };
    let ends_at = format!(
        "{}{}",
        crate::home::HEAD_PREFIX,
        hex::encode(chain.last_hash())
    );
    let expected = crate::home::parse_head(&head.head).map(hex::encode);
    let matches = expected.as_deref().ok() == Some(&ends_at[crate::home::HEAD_PREFIX.len()..]);
    if !matches {
        let last_seq = chain.receipts.saturating_sub(1);
        let seq = if from_flag {
            String::new()
        } else {
            format!(" (seq {})", head.seq)
        };
        report.error = Some(Problem {
            line: chain.receipts,
            message: format!(
                "the chain does not end at the anchored head {}{seq} from {source}: it ends at \
                 {ends_at} (seq {last_seq}), so it was cut, extended or replaced after the \
                 session ended",
                head.head
            ),
        });
    }
    report.anchor = Some(Anchor {
        status: if matches { "matches" } else { "differs" },
        head: Some(head.head.clone()),
        source,
    });
}

fn chain_problem(e: &ChainError) -> Problem {
    Problem {
        line: e.line(),
        message: e.to_string(),
    }
}

/// What the summary counts of a chain's receipts, gathered as they are
/// read (and used only once the whole chain verified).
#[derive(Debug, Default)]
struct Tally {
    receipts: usize,
    sandbox: Option<String>,
    tenant: Option<String>,
    user: Option<String>,
    decisions: BTreeMap<String, usize>,
    approvals: usize,
    usage_receipts: usize,
    cost_micro_usd: u64,
}

impl Tally {
    fn count(&mut self, receipt: &Receipt) {
        self.receipts += 1;
        match &receipt.body {
            Body::SessionStart {
                sandbox,
                tenant,
                user,
                ..
            } => {
                self.sandbox = Some(sandbox.clone());
                self.tenant.clone_from(tenant);
                self.user.clone_from(user);
            }
            Body::Decision(d) => {
                let verdict = d
                    .decision
                    .get("decision")
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown");
                *self.decisions.entry(verdict.to_owned()).or_default() += 1;
            }
            Body::Approval(_) => self.approvals += 1,
            Body::Usage(u) => {
                self.usage_receipts += 1;
                self.cost_micro_usd = self.cost_micro_usd.saturating_add(u.cost_micro_usd);
            }
            Body::BudgetWarning(_) | Body::SessionEnd { .. } => {}
        }
    }
}

fn summarize(chain: &VerifiedStream, tally: Tally, report: &mut Report) {
    report.session = Some(chain.session().to_owned());
    report.receipts = chain.receipts;
    report.signatures = chain.signatures;
    report.last_hash = Some(hex::encode(chain.last_hash()));
    report.interrupted = chain.interruption().map(|i| Interrupted {
        cause: i.cause,
        at_seq: i.at_seq,
        recovered_at: i.recovered_at.clone(),
        summary: i.to_string(),
    });
    report.sandbox = tally.sandbox;
    report.tenant = tally.tenant;
    report.user = tally.user;
    report.decisions = tally.decisions;
    report.approvals = tally.approvals;
    report.usage_receipts = tally.usage_receipts;
    report.cost_micro_usd = tally.cost_micro_usd;
}

/// Records what re-running every decision against the bundle's token
/// (`receipts::Rederiver`) found.
fn record_rederivation(found: receipts::Rederivation, report: &mut Report) {
    report
        .mismatches
        .extend(found.mismatches.iter().map(|m| Problem {
            line: m.line(),
            message: m.to_string(),
        }));
    report
        .warnings
        .extend(found.reason_changes.iter().map(ToString::to_string));
    report.rederivation = match found.coverage {
        Coverage::Checked { decisions } => Rederivation {
            status: "checked",
            checked: decisions,
            note: None,
        },
        Coverage::NoRootKey => Rederivation {
            status: "skipped",
            checked: 0,
            note: Some(format!(
                "{TOKEN_FILE} is present but decisions were not re-derived: pass --cap-pubkey ROOT.pub"
            )),
        },
        // The mismatches say why; nothing was re-run.
        Coverage::TokenUnusable => Rederivation::default(),
    };
}

/// The longest any one value from the file is shown (the rest is counted):
/// a crafted line cannot push the verdict off the auditor's screen.
const MAX_SHOWN_CHARS: usize = 1000;

/// Text that came from the bundle (any string in the report may: the
/// messages quote the file), made visible for the auditor's terminal: its
/// control characters, C1 controls and bidi overrides shown as escapes, so
/// a crafted file cannot move the cursor, clear the verdict or write one of
/// its own.
fn shown(text: &str) -> String {
    visible_inline(text, MAX_SHOWN_CHARS)
}

fn print_human(report: &Report) {
    let file = shown(&report.receipts_file);
    match report.status {
        "unreadable" => {
            let msg = report.error.as_ref().map_or("", |p| p.message.as_str());
            eprintln!("error: {}", shown(msg));
            return;
        }
        "valid" => {
            println!("✓ valid: {} receipts in {file}", report.receipts);
            if let Some(i) = &report.interrupted {
                println!("  {}", shown(&i.summary));
            }
        }
        _ => match &report.error {
            Some(p) => println!("✕ invalid: {} ({file})", shown(&p.message)),
            None => println!(
                "✕ invalid: {} decision(s) do not follow from the token ({file})",
                report.mismatches.len()
            ),
        },
    }
    for p in &report.mismatches {
        println!("  ✕ {}", shown(&p.message));
    }
    if report.error.is_none() {
        let key = match (report.key_id.as_deref(), report.key_source) {
            (Some(id), Some("pinned")) => format!("pinned key {id}"),
            (Some(id), _) => format!("embedded key {id} (not pinned)"),
            _ => "unknown key".to_owned(),
        };
        println!(
            "  session {} · sandbox {} · signed by {key}",
            shown(report.session.as_deref().unwrap_or("?")),
            shown(report.sandbox.as_deref().unwrap_or("?"))
        );
        if report.signatures == report.receipts {
            println!("  signatures: every receipt carries its own");
        } else {
            println!(
                "  signatures: {} for {} receipts (one per write; a receipt without its own is \
                 bound to the next signed line by prev hashes)",
                report.signatures, report.receipts
            );
        }
        let decisions: Vec<String> = report
            .decisions
            .iter()
            .map(|(k, n)| format!("{n} {}", shown(k)))
            .collect();
        println!(
            "  decisions: {} · approval answers: {}",
            if decisions.is_empty() {
                "none".to_owned()
            } else {
                decisions.join(", ")
            },
            report.approvals
        );
        if report.usage_receipts > 0 {
            println!(
                "  llm usage: {} call(s), ${} (each cost re-derived from its rate snapshot)",
                report.usage_receipts,
                crate::usage::format_usd(report.cost_micro_usd)
            );
        }
        if let (Some(tenant), Some(user)) = (&report.tenant, &report.user) {
            println!("  tenant {} · user {}", shown(tenant), shown(user));
        }
        if let Some(h) = &report.last_hash {
            println!("  last hash {h}");
        }
        if let Some(a) = report.anchor.as_ref().filter(|a| a.status == "matches") {
            println!(
                "  ends at the anchored head {} ({})",
                shown(a.head.as_deref().unwrap_or("?")),
                shown(&a.source)
            );
        }
        match report.rederivation.status {
            "checked" => println!(
                "  re-derivation: {} decision(s) re-run against {TOKEN_FILE}, {} differ",
                report.rederivation.checked,
                report.mismatches.iter().filter(|p| p.line > 1).count()
            ),
            _ => {
                if let Some(note) = &report.rederivation.note {
                    println!("  note: {}", shown(note));
                }
            }
        }
    }
    for w in &report.warnings {
        println!("warning: {}", shown(w));
    }
}
