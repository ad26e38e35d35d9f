//! Builds the session's enforcement point from the run configuration: the
//! catalog, the secrets and their placeholders, the approval brokers, the
//! event stream, and the enforcing gate the proxy asks about every request.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context, Result};
use capabilities::Capability;
use proxy::enforce::{
    ApiBroker, ApprovalAnswer, ApprovalBroker, ApprovalHandle, ApprovalRequest, Catalog, EventBus,
    FirstAnswer, SecretStore, SessionCredentials, TerminalBroker,
};
use proxy::{ConnInfo, DnsVerdict, Gate, GateRequest, GateVerdict, Refusal};
use receipts::ReceiptLog;
use tokio::sync::oneshot;

use super::runner::{ApproveMode, RunConfig};

pub struct Enforcement {
    pub gate: Arc<dyn Gate>,
    /// Credential name → placeholder, for the sandbox's environment.
    pub placeholders: BTreeMap<String, String>,
    /// The session's live events (monitor, control socket, UI).
    pub events: EventBus,
    /// Answers approvals from outside the terminal (control socket, UI).
    pub approvals: ApprovalHandle,
}

impl Enforcement {
    /// Stops taking decisions: every pending approval is denied.
    pub fn shutdown(&self) {
        for pending in self.approvals.pending() {
            let _ = self
                .approvals
                .answer(pending.request.id, false, "session-end");
        }
    }
}

pub fn build(
    config: &RunConfig,
    _capability: Arc<Capability>,
    _receipts: ReceiptLog,
) -> Result<Enforcement> {
    let catalog = match &config.catalog {
        Some(path) => Catalog::load(path)
            .with_context(|| format!("loading the service catalog {}", path.display()))?,
        None => Catalog::builtin(),
    };
    let store = match &config.secrets {
        Some(path) => SecretStore::load(path)
            .with_context(|| format!("loading the secrets file {}", path.display()))?,
        None => SecretStore::default(),
    };
    let credentials = SessionCredentials::new(&store);
    let placeholders = credentials.placeholders();
    let (api_broker, approvals) = ApiBroker::new();
    let _broker = brokers(config.approve, api_broker)?;
    let _ = (catalog, credentials, config.approval_timeout);
    Ok(Enforcement {
        gate: Arc::new(NotWired),
        placeholders,
        events: EventBus::new(),
        approvals,
    })
}

/// Who is asked when the token wants a human: the terminal (when asked to
/// prompt and there is one) and the control socket / web UI, first answer
/// wins; or an automatic answer.
fn brokers(mode: ApproveMode, api: ApiBroker) -> Result<Arc<dyn ApprovalBroker>> {
    Ok(match mode {
        ApproveMode::Prompt if std::io::stdin().is_terminal() => {
            let terminal = TerminalBroker::open_tty().context("opening /dev/tty for approvals")?;
            Arc::new(FirstAnswer::new(vec![Arc::new(terminal), Arc::new(api)]))
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
    fn ask(&self, _request: ApprovalRequest) -> oneshot::Receiver<ApprovalAnswer> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(ApprovalAnswer::new(self.0, "auto"));
        rx
    }
}

/// Fail closed until the enforcing gate is wired: nothing resolves, nothing
/// is forwarded.
struct NotWired;

#[async_trait::async_trait]
impl Gate for NotWired {
    fn dns(&self, _name: &str) -> DnsVerdict {
        DnsVerdict::NxDomain
    }
    async fn request(&self, _req: &mut GateRequest, _conn: &ConnInfo) -> GateVerdict {
        GateVerdict::Refuse {
            status: http::StatusCode::FORBIDDEN,
            reason: "enforcement not wired".into(),
        }
    }
    fn refused(&self, _event: Refusal) {}
}
