//! The decision layer behind the proxy's [`proxy::Gate`]: each request is
//! classified into an action by the service catalog, decided against the
//! capability token with the session's counters, receipted before it is
//! forwarded or refused, and forwarded with credentials injected only where
//! granted. The proxy carries traffic; this crate decides it.
//!
//! The public interface is:
//! - [`Enforcement::new`]: builds the session's enforcing gate
//!   ([`EnforcingGate`], a [`proxy::Gate`]) from an [`EnforceConfig`], with
//!   the sandbox placeholders and an event receiver;
//! - [`Catalog`]: the service catalog (`docs/catalog.md`);
//! - [`SecretStore`] and [`SessionCredentials`]: secrets and their
//!   per-session placeholders (`docs/credentials.md`);
//! - [`Ledger`]: the session counters, reserve-then-commit;
//! - [`RateCard`] and [`MeterSettings`]: LLM prices (`docs/metering.md`) and
//!   metering settings (each LLM call reserved at its worst case, settled to
//!   the provider's reported usage with a `usage` receipt);
//! - [`ApprovalBroker`] with its API and fan-out implementations, and
//!   [`ask_and_wait`] over a held request's one-answer [`Decision`]
//!   (`docs/approvals.md`);
//! - [`EventBus`] / [`Event`]: the session's live event stream;
//! - [`DayQuota`]: a tenant's day quotas, held before each LLM call leaves
//!   (implemented by the binary over `control.db`);
//! - [`WaitHistogram`]: how long requests waited for their receipts.
#![forbid(unsafe_code)]

/// Approval brokers (API, fan-out) and the wait with timeout.
pub mod approval;
/// The service catalog: request → action.
pub mod catalog;
/// The session counters ledger.
pub mod counters;
/// Secrets file, placeholders, substitution, exfiltration detection, echo masking.
pub mod credentials;
/// The session event stream.
pub mod events;
/// The enforcing gate: the token, receipts, approvals, forwarding.
pub mod gate;
/// A JSON object's members in body order (catalog and placement share it).
mod json_members;
/// LLM metering: worst-case reservation, usage read from responses, settlement.
pub mod metering;
/// A tenant's day quotas held before an LLM call leaves (the hook the binary implements).
pub mod quota;
/// Responses from hosts where a credential may be used: decoded, masked.
mod response;
/// The stages before the token: body, catalog, credentials.
mod stages;
/// Receipt-wait histogram.
pub mod stats;

pub use approval::{
    ask_and_wait, Answerer, ApiBroker, ApprovalAnswer, ApprovalBroker, ApprovalError,
    ApprovalHandle, ApprovalOutcome, ApprovalRequest, Decision, FirstAnswer, NotTaken,
    PendingApproval, DEFAULT_APPROVAL_TIMEOUT,
};
pub use catalog::{Catalog, CatalogError, ClassifyError, RequestView};
pub use counters::{Ledger, Reservation};
pub use credentials::{SecretStore, SecretsError, SessionCredentials};
pub use events::{BudgetWarning, Event, EventBus, EventKind, UsageEvent};
pub use gate::{DnsRefusalLimit, EnforceConfig, Enforcement, EnforcingGate, MAX_HELD_APPROVALS};
pub use metering::{MeterSettings, RateCard, RateCardError};
pub use quota::{DayQuota, QuotaRefusal};
pub use stages::{Stage, BODY_READ_TIMEOUT};
pub use stats::{WaitHistogram, WaitSummary};
