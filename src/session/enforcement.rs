//! Builds the session's enforcement point from the run configuration: the
//! catalog, the secrets and their placeholders, the approval brokers, the
//! event stream, and the enforcing gate the proxy asks about every request.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context, Result};
use capabilities::{Capability, Counters};
use enforce::{
    Answerer, ApiBroker, ApprovalAnswer, ApprovalBroker, ApprovalHandle, ApprovalRequest, Catalog,
    DnsRefusalLimit, EnforceConfig, EnforcingGate, Event, FirstAnswer, Ledger, SecretStore,
};
use receipts::ReceiptLog;
use tokio::sync::broadcast;

use super::approval_prompt::TerminalBroker;
use super::config::{ApproveMode, RunConfig};
use super::screen::Screen;
use crate::tenants::SessionDayQuota;

pub struct SessionEnforcement {
    pub gate: Arc<EnforcingGate>,
    /// `UNITED_LOGIN=ocs_…`: credential placeholders for the sandbox's environment.
    pub sandbox_env: Vec<(String, String)>,
    /// The session's live events (monitor, control socket, UI).
    pub events: EventSource,
    /// Answers approvals from outside the terminal (control socket, UI).
    pub approvals: ApprovalHandle,
    /// The tenant's day quotas (`--quota-db`), if the session has them.
    day_quota: Option<Arc<dyn SessionDayQuota>>,
}

/// A cloneable way to follow the session's events.
#[derive(Clone)]
pub struct EventSource(Arc<EnforcingGate>);

impl EventSource {
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}

impl SessionEnforcement {
    /// Stops taking decisions: every pending approval is denied, and the
    /// DNS refusals not yet receipted get their aggregate receipt (the
    /// sandbox is gone by now: no new query can come after it).
    pub fn shutdown(&self) {
        for pending in self.approvals.pending() {
            let _ = self
                .approvals
                .answer(pending.request.id, false, "session-end");
        }
        self.gate.flush_dns_refusals();
        if let Some(quota) = &self.day_quota {
            quota.end_session();
        }
    }
}

/// `screen` is the operator's terminal the approval prompt holds while it
/// is up.
/// `session` is the session's id (its quota holds are kept under it).
pub fn build(
    config: &RunConfig,
    session: &str,
    capability: Capability,
    receipts: ReceiptLog,
    screen: &Screen,
) -> Result<SessionEnforcement> {
    let catalog = match &config.catalog {
        Some(path) => Catalog::load(path)
            .with_context(|| format!("loading the service catalog {}", path.display()))?,
        None => Catalog::builtin(),
    };
    let secrets = match &config.secrets {
        Some(path) => SecretStore::load(path)
            .with_context(|| format!("loading the secrets file {}", path.display()))?,
        None => SecretStore::default(),
    };
    // The operator's rate card (`<home>/rates.toml`, else the built-in
    // prices); the catalog's deprecated `[[llm_price]]` entries price only
    // models the card does not.
    let rates_path = config.home.join("rates.toml");
    let card = enforce::RateCard::load(&rates_path)
        .with_context(|| format!("loading the rate card {}", rates_path.display()))?;
    let (rates, warnings) = card.with_legacy_prices(catalog.llm_prices());
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let day_quota = match &config.quota_db {
        Some(db) => Some(
            db.open(&config.labels.tenant, session)
                .with_context(|| format!("opening the quota store {db}"))?,
        ),
        None => None,
    };
    let (api_broker, approvals) = ApiBroker::new();
    let enforcement = enforce::Enforcement::new(EnforceConfig {
        capability,
        catalog,
        secrets,
        receipts,
        broker: brokers(config.approve, api_broker, screen)?,
        approval_timeout: config.approval_timeout,
        counters: Ledger::new(Counters::default()),
        dns_refusals: DnsRefusalLimit {
            receipted: config.bounds.dns_refusal_receipts,
            ..DnsRefusalLimit::default()
        },
        rates,
        metering: enforce::MeterSettings::default(),
        day_quota: day_quota
            .clone()
            .map(|q| -> Arc<dyn enforce::DayQuota> { q }),
    });
    Ok(SessionEnforcement {
        sandbox_env: enforcement.sandbox_env(),
        events: EventSource(enforcement.gate.clone()),
        gate: enforcement.gate,
        approvals,
        day_quota,
    })
}
/// Who is asked when the token wants a human: the terminal (when asked to
/// prompt and there is one) and the control socket / web UI, first answer
/// wins; or an automatic answer.
fn brokers(mode: ApproveMode, api: ApiBroker, screen: &Screen) -> Result<Arc<dyn ApprovalBroker>> {
    Ok(match mode {
        ApproveMode::Prompt if std::io::stdin().is_terminal() => {
            match TerminalBroker::open_tty(screen.clone()) {
                Ok(terminal) => Arc::new(FirstAnswer::new(vec![Arc::new(terminal), Arc::new(api)])),
                // A terminal on stdin without a controlling terminal (a VM's
                // console, `setsid`): asked like without a terminal.
                Err(err) => {
                    tracing::warn!("approvals: cannot open /dev/tty ({err}); answer them with `openclaw approve|deny` or the web UI");
                    Arc::new(api)
                }
            }
        }
        // No terminal to ask: only the control socket / UI can approve; the
        // timeout denies otherwise.
        ApproveMode::Prompt => Arc::new(api),
        ApproveMode::Deny => Arc::new(Automatic(false)),
        ApproveMode::Auto => Arc::new(Automatic(true)),
    })
}

/// Answers every approval at once (`--approve auto|deny`); receipted with
/// the approver `auto`.
struct Automatic(bool);

impl ApprovalBroker for Automatic {
    fn ask(&self, _request: ApprovalRequest, answerer: Answerer) {
        let _ = answerer.answer(ApprovalAnswer::new(self.0, "auto"));
    }
}
