//! Part 2 of the proxy: the enforcement point. Each request is classified
//! into an action by the service catalog, decided against the capability
//! token with the session's counters, receipted before it is forwarded or
//! refused, and forwarded with credentials injected only where granted.
//!
//! The public interface is:
//! - [`Catalog`]: the service catalog (`docs/catalog.md`);
//! - [`SecretStore`] and [`SessionCredentials`]: secrets and their
//!   per-session placeholders (`docs/credentials.md`);
//! - [`Ledger`]: the session counters, reserve-then-commit;
//! - [`ApprovalBroker`] and its terminal, API, fan-out and scripted
//!   implementations (`docs/approvals.md`);
//! - [`EventBus`] / [`Event`]: the session's live event stream;
//! - [`Enforcement::new`]: builds the session's enforcing [`crate::Gate`]
//!   ([`EnforcingGate`]) from an [`EnforceConfig`], with the sandbox
//!   placeholders and an event receiver.

/// Approval brokers (terminal, API, fan-out, scripted) and the wait with timeout.
pub mod approval;
/// The service catalog: request → action.
pub mod catalog;
/// The session counters ledger.
pub mod counters;
/// Secrets file, placeholders, substitution, exfiltration detection, echo masking.
pub mod credentials;
/// The session event stream.
pub mod events;
/// The enforcing gate tying it all together on part 1's seam.
pub mod gate;
/// Exact JSON-pointer lookups.
mod json;
/// Receipt-wait histogram.
pub mod stats;

pub use approval::{
    ApiBroker, ApprovalAnswer, ApprovalBroker, ApprovalError, ApprovalHandle, ApprovalRequest,
    FirstAnswer, PendingApproval, Scripted, ScriptedBroker, TerminalBroker,
    DEFAULT_APPROVAL_TIMEOUT,
};
pub use catalog::{Catalog, CatalogError, ClassifyError, RequestView};
pub use counters::{Ledger, Reservation};
pub use credentials::{SecretStore, SecretsError, SessionCredentials};
pub use events::{Event, EventBus, EventKind};
pub use gate::{EnforceConfig, Enforcement, EnforcingGate, Stage};
pub use stats::{WaitHistogram, WaitSummary};
