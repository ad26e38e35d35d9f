//! `openclaw demo`: run a built-in scenario offline, with its own mock
//! services, through the real session path, and show its report.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::demo::flight_booking::{self, DemoOptions};
use crate::home;
use crate::session::config::{ApproveMode, SessionLabels, EXIT_SETUP};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw demo flight-booking                  # answer the $487 approval yourself
  openclaw demo flight-booking --approve auto   # unattended (the default without a terminal)
  openclaw demo flight-booking --tenant acme --user alice   # labels, as `openclaw run`
  cargo run --release -- demo flight-booking

The flight-booking scenario retells the product page: an agent searches
Google Flights, logs into United with a password it never sees, compares
flights, tries to post to a Slack webhook (blocked: no capability), buys
the $487 round trip (held for approval above $400) and emails the
confirmation. Everything runs offline: the services are local mocks with
their own CA. The session bundle lands in <home>/sessions/<id>; the demo's
keys, token and secrets in <home>/demo/flight-booking/. Needs root.")]
pub struct DemoArgs {
    /// The scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// How the purchase approval is answered [default: prompt on a
    /// terminal, else auto].
    #[arg(long, value_enum)]
    approve: Option<ApproveArg>,
    /// How long the approval waits before it is denied.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    approval_timeout: Duration,
    /// Live action stream as NDJSON on stderr.
    #[arg(long)]
    json_events: bool,
    /// Who the session is billed to, as `openclaw run --tenant`.
    #[arg(long, value_name = "TENANT", default_value = "local")]
    tenant: String,
    /// Who ran it, as `openclaw run --user` [default: the invoking user].
    #[arg(long, value_name = "USER")]
    user: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    FlightBooking,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ApproveArg {
    Prompt,
    Deny,
    Auto,
}

pub fn execute(args: DemoArgs) -> Result<ExitCode> {
    let Scenario::FlightBooking = args.scenario;
    let labels = SessionLabels::new(Some(args.tenant), args.user).map_err(anyhow::Error::msg)?;
    let options = DemoOptions {
        home: home::home_dir()?,
        approve: args.approve.map(|a| match a {
            ApproveArg::Prompt => ApproveMode::Prompt,
            ApproveArg::Deny => ApproveMode::Deny,
            ApproveArg::Auto => ApproveMode::Auto,
        }),
        json_events: args.json_events,
        approval_timeout: args.approval_timeout,
        labels,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (outcome, seen) = match runtime.block_on(flight_booking::run(options)) {
        Ok(done) => done,
        Err(err) => {
            eprintln!("error: {err:#}");
            return Ok(ExitCode::from(EXIT_SETUP));
        }
    };
    let report = &outcome.report;
    let c = &report.counts;
    let login_real = seen
        .iter()
        .any(|r| r.path == "/api/auth/login" && r.real_secret_presented == Some(true));
    let slack_reached = seen.iter().any(|r| r.host == "hooks.slack.com");
    eprintln!();
    eprintln!(
        "Session report: {}",
        outcome.dir.join("report.html").display()
    );
    eprintln!(
        "  {} actions: {} allowed, {} blocked, approvals {} approved / {} denied · spent ${}.{:02}",
        c.actions,
        c.allowed,
        c.blocked,
        c.approvals.approved,
        c.approvals.denied + c.approvals.expired,
        report.spend.payments_cents / 100,
        report.spend.payments_cents % 100
    );
    eprintln!(
        "  united.com received the real password: {} · Slack webhook reached: {}",
        yes_no(login_real),
        yes_no(slack_reached)
    );
    eprintln!(
        "  receipts: {} ({})",
        report.receipts.status, report.receipts.detail
    );
    eprintln!(
        "  verify offline: openclaw verify {} --key {}",
        outcome.dir.display(),
        home::home_dir()?
            .join("demo/flight-booking/keys/receipt.pub")
            .display()
    );
    Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
