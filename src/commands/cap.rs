//! `openclaw cap …`: mint, attenuate, inspect and check capability tokens.
//! A thin adapter: key files and JSON/TOML files here, decisions in `capabilities`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use capabilities::policy::{Amount, Ttl};
use capabilities::{Action, CapabilityError, Counters, Policy, Summary, UnverifiedToken, Verdict};
use clap::{Args, Subcommand};

use crate::{home, keys};

/// Exit status of `cap check` when the decision is `block`.
pub const EXIT_BLOCK: u8 = 2;
/// Exit status of `cap check` when the decision is `approval`.
pub const EXIT_APPROVAL: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum CapCommand {
    /// Mint a token from a policy file, signed by the capability root key.
    #[command(after_help = "Examples:
  openclaw cap mint examples/flight-booking/policy.toml -o flight-booking.cap
  openclaw cap mint policy.toml --key ./keys/root.key -o task.cap

A policy is TOML; every grant is optional, and what no grant allows is blocked.
This one is a valid policy as it stands (inline tables; `[web]` sections with
one key per line mean the same):

  ttl = \"30m\"
  web = { allow = [\"kayak.com\", \"google.com/flights\", \"*.example.com\"], methods = [\"GET\", \"HEAD\"] }
  payment = { merchant = \"united.com\", currency = \"USD\", max_per_charge = \"600.00\", max_total = \"600.00\", approval_above = \"400.00\", card = \"united_card\" }
  email = { host = \"api.mail.example\", recipients = [\"traveler@example.com\"], subject_contains = \"flight confirmation\", max_count = 2 }
  login = { service = \"united.com\", credential = \"united_login\", scopes = [\"booking\"] }
  llm = { providers = [\"api.openai.com\"], credential = \"openai_key\", budget_usd = \"5.00\" }
  websocket = { allow = [\"chat.example.com/socket\"] }
  approval = [{ type = \"email\" }, { type = \"llm\", once_spent_usd = \"0.50\" }]

`ttl` becomes an absolute expiry counted from now. The full schema and its
rules: docs/capabilities.md.")]
    Mint(MintArgs),
    /// Append a block that can only narrow what a token allows (or seal it).
    #[command(after_help = "Examples:
  openclaw cap attenuate task.cap --policy narrow.toml -o narrow.cap
  openclaw cap attenuate task.cap --domain kayak.com --ttl 5m -o kayak.cap
  openclaw cap attenuate task.cap --max-amount 300 --seal -o final.cap
  openclaw cap attenuate task.cap --seal -o sealed.cap

A narrowing policy lists what remains allowed: sections it leaves out are no
longer allowed at all. The flags build one from the token's own root policy,
replacing only what they name. No root key is needed; nothing can widen.")]
    Attenuate(AttenuateArgs),
    /// Show a token's grants, constraints, expiry, revocation ids and signature status.
    #[command(after_help = "Examples:
  openclaw cap inspect task.cap                      # uses ~/.openclaw/keys/root.pub if present
  openclaw cap inspect task.cap --pubkey root.pub --json

Without a public key the contents are shown marked \"signature NOT verified\".")]
    Inspect(InspectArgs),
    /// Decide one action against a token and print the decision as JSON.
    #[command(after_help = "Examples:
  openclaw cap check task.cap --action action.json
  openclaw cap check task.cap --pubkey root.pub --action buy.json --counters counters.json \\
      --now 2026-01-14T09:10:00Z

ACTION.json:   {\"type\": \"payment\", \"method\": \"POST\", \"host\": \"united.com\",
                \"path\": \"/api/booking/purchase\", \"amount_cents\": 48700,
                \"currency\": \"USD\", \"merchant\": \"united.com\", \"credential\": \"united_card\"}
COUNTERS.json: {\"spent_cents\": 0, \"emails_sent\": 1, \"llm_spent_micro_usd\": 0}

Prints {\"decision\": \"allow\"|\"block\"|\"approval\", \"reason\": …, \"grant\": …,
\"revocation_ids\": […]}. Exit status: 0 allow, 2 block, 3 approval, 1 error.")]
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct MintArgs {
    /// The policy file (TOML).
    policy: PathBuf,
    /// Capability root private key [default: $OPENCLAW_HOME/keys/root.key].
    #[arg(long, value_name = "ROOT.key")]
    key: Option<PathBuf>,
    /// Where to write the token (base64 text).
    #[arg(short, long, value_name = "FILE.cap")]
    output: PathBuf,
}

#[derive(Debug, Args)]
pub struct AttenuateArgs {
    /// The token to narrow.
    token: PathBuf,
    /// A narrowing policy file: what remains allowed.
    #[arg(long, value_name = "NARROW.toml", conflicts_with_all = ["domain", "max_amount", "ttl"])]
    policy: Option<PathBuf>,
    /// Keep web access only to these hosts or host/path-prefixes (repeatable).
    #[arg(long, value_name = "HOST[/PATH]")]
    domain: Vec<String>,
    /// Lower the payment per-charge ceiling (e.g. 300 or 299.99).
    #[arg(long, value_name = "AMOUNT")]
    max_amount: Option<String>,
    /// Shorten the lifetime, counted from now (e.g. 5m).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// Seal the result so no further block can be appended.
    #[arg(long)]
    seal: bool,
    /// Where to write the new token.
    #[arg(short, long, value_name = "OUT.cap")]
    output: PathBuf,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The token to describe.
    token: PathBuf,
    /// Capability root public key to verify the signature with.
    #[arg(long, value_name = "ROOT.pub")]
    pubkey: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The token to decide against.
    token: PathBuf,
    /// Capability root public key [default: $OPENCLAW_HOME/keys/root.pub].
    #[arg(long, value_name = "ROOT.pub")]
    pubkey: Option<PathBuf>,
    /// The action, as JSON (see below).
    #[arg(long, value_name = "ACTION.json")]
    action: PathBuf,
    /// What the session already spent and sent, as JSON [default: all zero].
    #[arg(long, value_name = "COUNTERS.json")]
    counters: Option<PathBuf>,
    /// Decide as of this time (RFC 3339) instead of now.
    #[arg(long, value_name = "RFC3339")]
    now: Option<String>,
    /// File of revoked revocation ids (hex, one per line); a match is an error.
    #[arg(long, value_name = "FILE")]
    revoked: Option<PathBuf>,
}

pub fn execute(cmd: CapCommand) -> Result<ExitCode> {
    match cmd {
        CapCommand::Mint(args) => mint(args),
        CapCommand::Attenuate(args) => attenuate(args),
        CapCommand::Inspect(args) => inspect(args),
        CapCommand::Check(args) => check(args),
    }
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn read_policy(path: &Path) -> Result<Policy> {
    let text = read_text(path, "policy")?;
    Policy::from_toml_str(&text).map_err(|e| {
        // A file that is not the schema's shape gets a pointer to the
        // schema; a bad value's message says all there is to say.
        let hint = match e {
            CapabilityError::PolicyParse(_) => {
                "\n(`openclaw cap mint --help` shows a policy with every section)"
            }
            _ => "",
        };
        anyhow::anyhow!("in {}: {e}{hint}", path.display())
    })
}

fn read_token(path: &Path) -> Result<UnverifiedToken> {
    let text = read_text(path, "token")?;
    UnverifiedToken::from_base64(&text).with_context(|| format!("in {}", path.display()))
}

fn write_token(path: &Path, token: &str) -> Result<()> {
    std::fs::write(path, format!("{token}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

fn default_key(explicit: Option<PathBuf>, name: &str) -> Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p),
        None => Ok(home::keys_dir()?.join(name)),
    }
}

fn mint(args: MintArgs) -> Result<ExitCode> {
    let policy = read_policy(&args.policy)?;
    let key_path = default_key(args.key, keys::ROOT_KEY)?;
    let key = keys::read_signing_key(&key_path)?;
    let token = capabilities::mint(&policy, &key.to_bytes(), SystemTime::now())
        .context("minting the token")?;
    write_token(&args.output, &token)?;
    let cap = UnverifiedToken::from_base64(&token)?.verify(key.verifying_key().as_bytes())?;
    let summary = cap.summary();
    println!("minted {}: {summary}", args.output.display());
    print_lines(&summary);
    Ok(ExitCode::SUCCESS)
}

/// Builds a narrowing policy from the token's root policy and the flags.
fn narrowing_from_flags(token: &UnverifiedToken, args: &AttenuateArgs) -> Result<Option<Policy>> {
    if args.domain.is_empty() && args.max_amount.is_none() && args.ttl.is_none() {
        return Ok(None);
    }
    let Some(mut policy) = token.root_policy_unverified() else {
        bail!("the token's root block was not written by openclaw; use --policy instead of flags")
    };
    // The root block already carries the root's TTL and approval rules.
    policy.ttl = None;
    policy.approval.clear();
    if let Some(p) = &mut policy.payment {
        p.approval_above = None;
    }
    if !args.domain.is_empty() {
        let Some(web) = &mut policy.web else {
            bail!("--domain: the token has no web grant to narrow")
        };
        web.allow = args.domain.clone();
    }
    if let Some(text) = &args.max_amount {
        let Some(pay) = &mut policy.payment else {
            bail!("--max-amount: the token has no payment grant to narrow")
        };
        let amount = Amount::parse(text).context("--max-amount")?;
        pay.max_per_charge = amount.min(pay.max_per_charge);
    }
    if let Some(ttl) = &args.ttl {
        policy.ttl = Some(Ttl::parse(ttl).context("--ttl")?);
    }
    Ok(Some(policy.normalized().context("the narrowed policy")?))
}

fn attenuate(args: AttenuateArgs) -> Result<ExitCode> {
    let token = read_token(&args.token)?;
    let narrowing = match &args.policy {
        Some(path) => Some(read_policy(path)?),
        None => narrowing_from_flags(&token, &args)?,
    };
    let mut out = match &narrowing {
        Some(policy) => token
            .attenuate(policy, SystemTime::now())
            .with_context(|| format!("attenuating {}", args.token.display()))?,
        None if args.seal => token.seal().context("sealing")?,
        None => bail!("nothing to do: give --policy, --domain, --max-amount, --ttl or --seal"),
    };
    if args.seal && narrowing.is_some() {
        out = UnverifiedToken::from_base64(&out)?
            .seal()
            .context("sealing")?;
    }
    write_token(&args.output, &out)?;
    let summary = UnverifiedToken::from_base64(&out)?.summary_unverified()?;
    println!(
        "wrote {}: {summary}{}",
        args.output.display(),
        if args.seal { " (sealed)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let token = read_token(&args.token)?;
    let (pubkey, explicit) = match args.pubkey {
        Some(p) => (Some(p), true),
        None => {
            let p = home::keys_dir()?.join(keys::ROOT_PUB);
            (p.exists().then_some(p), false)
        }
    };
    let mut status = "signature NOT verified (no --pubkey given)".to_owned();
    let mut summary = token.summary_unverified()?;
    if let Some(path) = &pubkey {
        let key = keys::read_verifying_key(path)?;
        match token.clone().verify(key.as_bytes()) {
            Ok(cap) => {
                summary = cap.summary();
                status = format!("signature verified against {}", path.display());
            }
            Err(e) if explicit => {
                return Err(e).with_context(|| format!("verifying against {}", path.display()))
            }
            Err(_) => {
                status = format!("signature does NOT verify against {}", path.display());
            }
        }
    }
    if args.json {
        let value = serde_json::json!({
            "file": args.token.display().to_string(),
            "signature": status,
            "summary": summary.to_string(),
            "details": summary,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: {status}", args.token.display());
    println!("{summary}");
    print_lines(&summary);
    if !summary.opaque_blocks.is_empty() {
        println!(
            "  (blocks {:?} were not written by openclaw: enforced, not described)",
            summary.opaque_blocks
        );
    }
    println!(
        "expires: {}",
        summary.expires_at.as_deref().unwrap_or("never")
    );
    println!("blocks: {}", summary.blocks);
    println!("revocation ids:");
    for id in &summary.revocation_ids {
        println!("  {id}");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_lines(summary: &Summary) {
    for line in &summary.grant_lines {
        println!("  grant       {line}");
    }
    for line in &summary.constraint_lines {
        println!("  constraint  {line}");
    }
}

fn check(args: CheckArgs) -> Result<ExitCode> {
    let token = read_token(&args.token)?;
    let key_path = default_key(args.pubkey, keys::ROOT_PUB)?;
    let key = keys::read_verifying_key(&key_path)?;
    let revoked: Vec<String> = match &args.revoked {
        Some(path) => read_text(path, "revocation list")?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let cap = token
        .verify_with_revocations(key.as_bytes(), &revoked)
        .with_context(|| format!("verifying {}", args.token.display()))?;
    let action: Action = serde_json::from_str(&read_text(&args.action, "action")?)
        .with_context(|| format!("parsing {}", args.action.display()))?;
    let counters: Counters = match &args.counters {
        Some(path) => serde_json::from_str(&read_text(path, "counters")?)
            .with_context(|| format!("parsing {}", path.display()))?,
        None => Counters::default(),
    };
    let now = match &args.now {
        Some(text) => humantime::parse_rfc3339_weak(text)
            .with_context(|| format!("--now {text:?} is not an RFC 3339 time"))?,
        None => SystemTime::now(),
    };
    let decision = cap.authorize(&action, &counters, now);
    println!("{}", serde_json::to_string(&decision)?);
    Ok(match decision.decision {
        Verdict::Allow => ExitCode::SUCCESS,
        Verdict::Block => ExitCode::from(EXIT_BLOCK),
        Verdict::Approval => ExitCode::from(EXIT_APPROVAL),
    })
}
