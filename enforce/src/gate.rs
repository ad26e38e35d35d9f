//! The enforcing [`Gate`]: every request classified, decided against the
//! capability token with the session counters, receipted durably before it
//! is forwarded or refused, held for a human when the token says so, and
//! forwarded with credentials substituted only where granted.
//!
//! Fail closed: a classification, credential, approval or receipt error
//! refuses the request, and no upstream connection is opened for it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use capabilities::{Action, ActionType, Capability, Counters, Decision, Host, Verdict};
use http::{response, HeaderValue, StatusCode};
use proxy::{
    ConnInfo, DnsVerdict, Exchange, ExchangeOutcome, Gate, GateRequest, GateTag, GateVerdict,
    Refusal, RequestSummary, ResponseVerdict,
};
use receipts::{ApprovalRecord, CanonicalDecision, Entry, ReceiptLog, RecordedAction};
use tokio::sync::{broadcast, OwnedSemaphorePermit};
use tracing::Instrument;

use crate::approval::{ask_and_wait, ApprovalBroker, ApprovalOutcome, ApprovalRequest};
use crate::catalog::Catalog;
use crate::counters::{Ledger, Reservation};
use crate::credentials::{SecretStore, SessionCredentials};
use crate::events::{Event, EventBus, EventKind};
use crate::metering::{MeterSettings, Metering, Plan, RateCard, Ticket};
use crate::quota::{DayQuota, QuotaHold, QuotaRefusal};
use crate::stages::{fallback_action, path_only, Block, Prepared, Screened, Stage, Stages};
use crate::stats::{WaitHistogram, WaitSummary};

/// Why an LLM call the proxy cannot plan is refused under a tenant's day
/// quota (mirrors the token's refusal under a budget).
const UNPLANNED_UNDER_QUOTA: &str = "quota: llm call of unknown cost under the tenant's day \
    quota: the proxy could not meter it (its body must be JSON naming the model and fit the \
    catalog's max_whole_body_bytes; an LLM WebSocket is not metered)";

/// Most requests held for a human at once in one session; the next is
/// refused without asking (receipted as denied by `limit`). A reviewer
/// cannot weigh more at once, and each hold keeps its request (body up to
/// the catalog's cap) and an entry in the pending list that every change
/// sends whole to each UI subscriber.
pub const MAX_HELD_APPROVALS: usize = 64;

/// Longest `X-Openclaw-Blocked` reason sent to the sandbox.
const MAX_REASON: usize = 300;

/// How refused DNS names are receipted: the first `receipted` distinct names
/// one receipt each, then one aggregate receipt per `batch` further
/// refusals or per `interval` (and one at session end for the rest), so a
/// sandbox asking for a million random names costs a bounded number of
/// receipts and bounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsRefusalLimit {
    /// Distinct names receipted one by one (`openclaw run
    /// --dns-refusal-receipts`, default 256).
    pub receipted: usize,
    /// Most refusals one aggregate receipt covers.
    pub batch: usize,
    /// An aggregate receipt is written once its first refusal is this old
    /// (checked when the next refusal comes, and at session end).
    pub interval: Duration,
}

impl Default for DnsRefusalLimit {
    fn default() -> Self {
        DnsRefusalLimit {
            receipted: 256,
            batch: 1024,
            interval: Duration::from_secs(10),
        }
    }
}

/// Names beyond the limit remembered, so a name asked twice in a row (A
/// then AAAA) is counted once.
const RECENT_NAMES: usize = 64;

/// Everything the enforcing gate needs; see [`Enforcement::new`].
pub struct EnforceConfig {
    /// The session's verified capability token.
    pub capability: Capability,
    pub catalog: Catalog,
    pub secrets: SecretStore,
    /// The session's receipt chain (session_start already written).
    pub receipts: ReceiptLog,
    pub broker: Arc<dyn ApprovalBroker>,
    /// How long a held request waits for a human ([`crate::DEFAULT_APPROVAL_TIMEOUT`]).
    pub approval_timeout: Duration,
    /// The session counters ([`Ledger::new`]).
    pub counters: Arc<Ledger>,
    /// How refused DNS names are receipted.
    pub dns_refusals: DnsRefusalLimit,
    /// The LLM prices calls are charged at.
    pub rates: RateCard,
    /// Output limits and budget warnings of LLM metering.
    pub metering: MeterSettings,
    /// The tenant's day quotas, held before each metered LLM call leaves
    /// (`None`: no tenant quota, nothing changes).
    pub day_quota: Option<Arc<dyn DayQuota>>,
}

/// The session's enforcing gate, with what the sandbox and the monitor need.
pub struct Enforcement {
    /// Give this to [`proxy::Proxy::start`].
    pub gate: Arc<EnforcingGate>,
    /// Credential name → this session's placeholder, for the sandbox's
    /// environment (see [`Enforcement::sandbox_env`]).
    pub placeholders: BTreeMap<String, String>,
    /// The session's event stream (more receivers: [`EnforcingGate::subscribe`]).
    pub events: broadcast::Receiver<Event>,
}

impl Enforcement {
    /// Builds the gate for one session. Mints this session's placeholders.
    pub fn new(config: EnforceConfig) -> Self {
        let creds = Arc::new(SessionCredentials::new(&config.secrets));
        let events = EventBus::new();
        let rx = events.subscribe();
        let placeholders = creds.placeholders();
        let metering = Arc::new(Metering::new(
            config.rates,
            config.metering,
            config.counters.clone(),
            config.receipts.clone(),
            events.clone(),
            config.capability.llm_budget_micro_usd(),
        ));
        let gate = Arc::new(EnforcingGate {
            revocation_ids: config.capability.revocation_ids(),
            cap: config.capability,
            catalog: config.catalog,
            creds,
            receipts: config.receipts,
            broker: config.broker,
            approval_timeout: config.approval_timeout,
            ledger: config.counters,
            events,
            next_id: AtomicU64::new(1),
            held: AtomicUsize::new(0),
            dns: Mutex::new(DnsRefusals::new(config.dns_refusals)),
            in_flight: Mutex::new(HashMap::new()),
            credential_hosts: Mutex::new(HashMap::new()),
            receipt_waits: WaitHistogram::default(),
            metering,
            day_quota: config.day_quota,
        });
        Enforcement {
            gate,
            placeholders,
            events: rx,
        }
    }

    /// Environment variables for the sandbox: `UNITED_LOGIN=ocs_united_login_…`
    /// (the credential name upper-cased).
    pub fn sandbox_env(&self) -> Vec<(String, String)> {
        self.placeholders
            .iter()
            .map(|(name, p)| (name.to_ascii_uppercase(), p.clone()))
            .collect()
    }
}

/// Refused DNS names of one session (see [`DnsRefusalLimit`]).
struct DnsRefusals {
    limit: DnsRefusalLimit,
    /// Names receipted one by one (at most `limit.receipted`).
    receipted: HashSet<String>,
    /// Beyond the limit: the last few names counted.
    recent: VecDeque<String>,
    /// Beyond the limit: the refusals not yet in an aggregate receipt.
    pending: Option<DnsBatch>,
    /// Beyond the limit: refusals in aggregate receipts so far.
    aggregated: u64,
}

/// Refusals gathered for one aggregate receipt.
struct DnsBatch {
    names: Vec<String>,
    opened: Instant,
    first_at: SystemTime,
    last_at: SystemTime,
}

impl DnsRefusals {
    fn new(limit: DnsRefusalLimit) -> Self {
        DnsRefusals {
            limit,
            receipted: HashSet::new(),
            recent: VecDeque::new(),
            pending: None,
            aggregated: 0,
        }
    }
}

/// What to do about one refused name.
enum DnsRefusalFate {
    /// Already receipted or just counted: nothing more.
    Seen,
    /// Receipt it alone.
    Receipt,
    /// Counted into the pending aggregate, which is also due now when given.
    Aggregated(Option<DnsBatch>),
}

impl DnsRefusals {
    fn refuse(&mut self, name: &str, now: SystemTime) -> DnsRefusalFate {
        if self.receipted.contains(name) || self.recent.iter().any(|n| n == name) {
            return DnsRefusalFate::Seen;
        }
        if self.receipted.len() < self.limit.receipted {
            self.receipted.insert(name.to_owned());
            return DnsRefusalFate::Receipt;
        }
        if self.recent.len() == RECENT_NAMES {
            self.recent.pop_front();
        }
        self.recent.push_back(name.to_owned());
        let batch = self.pending.get_or_insert_with(|| DnsBatch {
            names: Vec::new(),
            opened: Instant::now(),
            first_at: now,
            last_at: now,
        });
        batch.names.push(name.to_owned());
        batch.last_at = now;
        let due = batch.names.len() >= self.limit.batch.max(1)
            || batch.opened.elapsed() >= self.limit.interval;
        DnsRefusalFate::Aggregated(if due { self.take() } else { None })
    }

    fn take(&mut self) -> Option<DnsBatch> {
        let batch = self.pending.take()?;
        self.aggregated += batch.names.len() as u64;
        Some(batch)
    }
}

/// A forwarded request waiting for its `completed` call.
struct InFlight {
    action: Action,
    grant: Option<String>,
    credentials: Vec<String>,
    receipt: Option<u64>,
}

/// The enforcing gate. One per session.
pub struct EnforcingGate {
    cap: Capability,
    catalog: Catalog,
    creds: Arc<SessionCredentials>,
    receipts: ReceiptLog,
    broker: Arc<dyn ApprovalBroker>,
    approval_timeout: Duration,
    ledger: Arc<Ledger>,
    events: EventBus,
    revocation_ids: Vec<String>,
    next_id: AtomicU64,
    /// Requests held for a human right now (at most [`MAX_HELD_APPROVALS`]).
    held: AtomicUsize,
    /// Refused DNS names: receipted one by one, then in aggregate.
    dns: Mutex<DnsRefusals>,
    /// Forwarded requests by request number (their [`GateTag`]): the tag
    /// comes back with the exchange, so no path is re-read or masked to
    /// find the request again, and concurrent HTTP/2 streams with the
    /// same method and path are told apart.
    in_flight: Mutex<HashMap<u64, InFlight>>,
    /// Hosts where some credential may be used (their responses are masked).
    credential_hosts: Mutex<HashMap<Host, bool>>,
    /// How long each request waited for its decision receipt to be durable.
    receipt_waits: WaitHistogram,
    /// LLM calls: worst case before, usage after.
    metering: Arc<Metering>,
    /// The tenant's day quotas, if any.
    day_quota: Option<Arc<dyn DayQuota>>,
}

impl std::fmt::Debug for EnforcingGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnforcingGate")
            .field("session", &self.receipts.session_id())
            .field("credentials", &self.creds)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Header-safe, bounded reason text.
fn header_reason(reason: &str) -> String {
    let mut s: String = reason
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    if s.len() > MAX_REASON {
        s.truncate(MAX_REASON);
    }
    if HeaderValue::from_str(&s).is_err() || s.is_empty() {
        "blocked".to_owned()
    } else {
        s
    }
}

/// A decision receipt's `decision` member: the decision, the stage that
/// made it and, for refused DNS names receipted together, what the batch
/// covered.
#[derive(serde::Serialize)]
struct ReceiptedDecision<'a> {
    #[serde(flatten)]
    decision: &'a Decision,
    stage: Stage,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregate: Option<DnsAggregate>,
}

/// A batch of refused DNS names: how many, the SHA-256 of the names (one
/// per line, in the order refused), the first and last refusal's time.
#[derive(serde::Serialize)]
struct DnsAggregate {
    count: usize,
    names_sha256: String,
    first: String,
    last: String,
}

impl ReceiptedDecision<'_> {
    /// The receipt's content: typed values straight to canonical bytes.
    fn encode(
        &self,
        action: &RecordedAction<'_, Action>,
        counters: &Counters,
        body_sha256: Option<&str>,
    ) -> Result<CanonicalDecision, ReceiptFailed> {
        CanonicalDecision::new(action, counters, self, body_sha256)
            .map_err(|e| ReceiptFailed(format!("encoding receipt: {e}")))
    }
}

/// An action receipted without a query (a DNS name has none).
fn unqueried(action: &Action) -> RecordedAction<'_, Action> {
    RecordedAction {
        facts: action,
        query: None,
    }
}

/// The query of a request target (path and query, no fragment): what
/// follows its first `?`, `""` after a bare one; `None` without one.
fn query_of(target: &str) -> Option<&str> {
    target.split_once('?').map(|(_, query)| query)
}

/// One of the [`MAX_HELD_APPROVALS`] places for a held request; given back
/// when dropped.
struct HeldSlot<'a>(&'a AtomicUsize);

impl<'a> HeldSlot<'a> {
    fn take(held: &'a AtomicUsize) -> Option<Self> {
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_HELD_APPROVALS).then_some(n + 1)
        })
        .ok()
        .map(|_| HeldSlot(held))
    }
}

impl Drop for HeldSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a hold ended when its request's client went away.
const WITHDRAWN: &str = "withdrawn: the client went away while the request was held";

/// Armed while a request is held: dropped armed (the proxy dropped the
/// request because its client went away), it receipts the hold as denied by
/// `client` and emits the `denied` event, so the chain and the monitor say
/// how the hold ended. Nothing is forwarded or refused: nobody is left to
/// answer.
struct Withdrawn<'a> {
    gate: &'a EnforcingGate,
    id: u64,
    conn: u64,
    action: &'a Action,
    decision_seq: u64,
    armed: bool,
}

impl Drop for Withdrawn<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let record = ApprovalRecord {
            decision_seq: self.decision_seq,
            approved: false,
            approver: "client".to_owned(),
            answered_at: receipts::format_time(SystemTime::now()),
            reason: Some(WITHDRAWN.to_owned()),
        };
        // Queued in the chain now; the writer makes it durable without
        // anyone waiting (a drop cannot wait).
        let seq = match self.gate.receipts.submit(Entry::Approval(record)) {
            Ok(pending) => Some(pending.seq()),
            Err(e) => {
                ratelog::error!(
                    request = self.id,
                    "receipt for a withdrawn hold failed: {e}"
                );
                None
            }
        };
        self.gate
            .emit(EventKind::Denied, self.id, self.conn, self.action, |e| {
                e.reason = Some(WITHDRAWN.to_owned());
                e.approver = Some("client".to_owned());
                e.receipt = seq;
            });
    }
}

/// A receipt could not be written: the request is refused (no receipt).
struct ReceiptFailed(String);

/// The reason given when a decision's receipt could not be written.
fn receipt_failed(why: &str) -> String {
    format!("receipt write failed: {why}")
}

/// A request the token allowed (or wants approved), its decision receipt
/// written: what forwarding it needs.
struct Decided {
    action: Action,
    decision: Decision,
    /// Seq of the decision receipt.
    seq: u64,
    prepared: Prepared,
    /// Counted once the request is forwarded.
    reservation: Reservation,
    /// An LLM call the proxy meters.
    metered: Option<Plan>,
    /// Its hold on the tenant's day quota (released if it never leaves).
    quota: Option<QuotaHold>,
    /// The read permit of a body read whole, held with the body.
    large_body: Option<OwnedSemaphorePermit>,
}

impl EnforcingGate {
    /// Another receiver of the session's events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The session counters.
    pub fn counters(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The receipt log the gate writes to.
    pub fn receipts(&self) -> &ReceiptLog {
        &self.receipts
    }

    /// How long requests have waited for their decision receipt to be
    /// durable (submit to acknowledgement), over the session so far.
    pub fn receipt_waits(&self) -> WaitSummary {
        self.receipt_waits.summary()
    }

    /// Refused DNS names so far: (receipted one by one, counted in aggregate
    /// receipts, counted but not yet receipted).
    pub fn dns_refusals(&self) -> (usize, u64, usize) {
        let d = lock(&self.dns);
        (
            d.receipted.len(),
            d.aggregated,
            d.pending.as_ref().map_or(0, |b| b.names.len()),
        )
    }

    /// Writes the aggregate receipt of DNS refusals not yet receipted (at
    /// session end, before the chain closes).
    pub fn flush_dns_refusals(&self) {
        let batch = lock(&self.dns).take();
        if let Some(batch) = batch {
            self.receipt_dns_batch(batch);
        }
    }

    /// One decision receipt for many refused names: stage `dns`, verdict
    /// block, the action's host `*`, and in the decision an `aggregate`
    /// with their number, the SHA-256 of the names (one per line, in the
    /// order refused) and the first and last refusal's time. The names
    /// themselves are not kept: that is the bound.
    fn receipt_dns_batch(&self, batch: DnsBatch) {
        let now = SystemTime::now();
        let count = batch.names.len();
        let mut joined = batch.names.join("\n");
        joined.push('\n');
        let digest = receipts::sha256_hex(joined.as_bytes());
        let limit = lock(&self.dns).limit.receipted;
        let action = fallback_action("DNS", "*", "/");
        let decision = self.block(format!(
            "{count} further DNS names refused, receipted together (past the first {limit} \
             names receipted one by one)"
        ));
        let receipted = ReceiptedDecision {
            decision: &decision,
            stage: Stage::Dns,
            aggregate: Some(DnsAggregate {
                count,
                names_sha256: digest,
                first: receipts::format_time(batch.first_at),
                last: receipts::format_time(batch.last_at),
            }),
        };
        let record = receipted.encode(&unqueried(&action), &self.ledger.committed(), None);
        let seq = match record.and_then(|r| self.receipt_decision_blocking(now, r)) {
            Ok(seq) => Some(seq),
            Err(ReceiptFailed(why)) => {
                ratelog::error!(
                    count,
                    "aggregate receipt of refused DNS names failed: {why}"
                );
                None
            }
        };
        self.emit(EventKind::Blocked, 0, 0, &action, |e| {
            e.reason = Some(format!("dns: {}", decision.reason));
            e.receipt = seq;
        });
    }

    /// The stages before the token, over this session's catalog,
    /// credentials and token.
    fn stages(&self) -> Stages<'_> {
        Stages {
            catalog: &self.catalog,
            creds: &self.creds,
            cap: &self.cap,
            metering: &self.metering,
        }
    }

    /// A refusal for `reason`. A stage's or the proxy's reason may quote
    /// what the sandbox wrote (an amount that is no amount, a Host that is
    /// no host name): a secret there is masked like the query, since the
    /// reason goes into the receipt and the `blocked` event.
    fn block(&self, reason: String) -> Decision {
        Decision {
            decision: Verdict::Block,
            reason: self.creds.mask_str(&reason),
            grant: None,
            revocation_ids: self.revocation_ids.clone(),
        }
    }

    fn decision_record(
        action: &RecordedAction<'_, Action>,
        counters: &Counters,
        decision: &Decision,
        stage: Stage,
        body_sha256: Option<String>,
    ) -> Result<CanonicalDecision, ReceiptFailed> {
        let receipted = ReceiptedDecision {
            decision,
            stage,
            aggregate: None,
        };
        receipted.encode(action, counters, body_sha256.as_deref())
    }

    /// The record of a decision made in one of the proxy's synchronous
    /// hooks (a DNS name, a refusal): no body, the counters as committed.
    fn hook_record(
        &self,
        action: &RecordedAction<'_, Action>,
        decision: &Decision,
        stage: Stage,
    ) -> Result<CanonicalDecision, ReceiptFailed> {
        Self::decision_record(action, &self.ledger.committed(), decision, stage, None)
    }

    /// Appends a decision receipt and waits until it is durable.
    async fn receipt_decision(
        &self,
        now: SystemTime,
        record: CanonicalDecision,
    ) -> Result<u64, ReceiptFailed> {
        // Submitting fixes the receipt's place in the chain and returns at
        // once; only this request waits for the group commit that makes it
        // durable, others keep deciding and submitting meanwhile.
        let submitted = Instant::now();
        let pending = self
            .receipts
            .submit(Entry::CanonicalDecision {
                decided_at: now,
                record,
            })
            .map_err(|e| ReceiptFailed(e.to_string()))?;
        let acked = pending.await;
        self.receipt_waits.record(submitted.elapsed());
        acked
            .map(|a| a.seq)
            .map_err(|e| ReceiptFailed(e.to_string()))
    }

    /// Encodes a decision receipt, appends it and waits until it is durable.
    async fn write_decision(
        &self,
        now: SystemTime,
        action: &RecordedAction<'_, Action>,
        counters: &Counters,
        decision: &Decision,
        stage: Stage,
        body_sha256: Option<String>,
    ) -> Result<u64, ReceiptFailed> {
        let record = Self::decision_record(action, counters, decision, stage, body_sha256)?;
        self.receipt_decision(now, record).await
    }

    /// Same as [`Self::receipt_decision`], blocking (for the synchronous
    /// DNS and refusal hooks).
    fn receipt_decision_blocking(
        &self,
        now: SystemTime,
        record: CanonicalDecision,
    ) -> Result<u64, ReceiptFailed> {
        let pending = self
            .receipts
            .submit(Entry::CanonicalDecision {
                decided_at: now,
                record,
            })
            .map_err(|e| ReceiptFailed(e.to_string()))?;
        let wait = move || pending.wait();
        let result = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        };
        result
            .map(|a| a.seq)
            .map_err(|e| ReceiptFailed(e.to_string()))
    }

    fn emit(
        &self,
        kind: EventKind,
        id: u64,
        conn: u64,
        action: &Action,
        fill: impl FnOnce(&mut Event),
    ) {
        let mut e = Event::about(kind, id, conn, action);
        fill(&mut e);
        self.events.send(e);
    }

    fn refuse(
        &self,
        id: u64,
        conn: u64,
        action: &Action,
        reason: &str,
        receipt: Option<u64>,
    ) -> GateVerdict {
        // The sandbox decides how often this happens: rate-limited.
        ratelog::debug!(request = id, conn, host = %action.host, reason, "blocked");
        self.emit(EventKind::Blocked, id, conn, action, |e| {
            e.reason = Some(reason.to_owned());
            e.receipt = receipt;
            e.status = Some(StatusCode::FORBIDDEN.as_u16());
        });
        GateVerdict::Refuse {
            status: StatusCode::FORBIDDEN,
            reason: header_reason(reason),
        }
    }

    async fn decide_request(&self, id: u64, req: &mut GateRequest, conn: &ConnInfo) -> GateVerdict {
        let now = SystemTime::now();
        let counters_now = self.ledger.committed();
        // Every receipt of this request records its query as the sandbox
        // sent it: substitution is only prepared until the decision
        // forwards, so placeholders stand where secrets will go. A secret
        // the sandbox wrote out itself is masked all the same. The
        // approval question shows this same string (it goes to terminals,
        // the UI and the approval API, never the secret).
        let masked_query = req.head.uri.query().map(|q| self.creds.mask_str(q));
        let query = masked_query.as_deref();
        let Screened {
            action,
            body_sha256,
            prepared,
            metered,
            large_body,
        } = match self.stages().run(req, now).await {
            Ok(screened) => screened,
            Err(block) => {
                return self
                    .record_block(id, conn, now, &counters_now, block, query)
                    .await
            }
        };

        // The tenant's day quota first: a call past it never reaches the token.
        let quota = match (&self.day_quota, &metered) {
            (Some(_), None) if action.kind == ActionType::Llm => {
                // Without a plan nothing could be held or settled: the call
                // would pass the quota unseen (fail closed, as a budget does).
                let block = Block {
                    stage: Stage::Quota,
                    reason: UNPLANNED_UNDER_QUOTA.to_owned(),
                    action,
                    body_sha256,
                };
                return self
                    .record_block(id, conn, now, &counters_now, block, query)
                    .await;
            }
            (Some(q), Some(plan)) => {
                match QuotaHold::reserve(q, plan.reserved, plan.tokens.clone().ok()) {
                    Ok(hold) => Some(hold),
                    Err(refusal) => {
                        let block = Block {
                            stage: Stage::Quota,
                            reason: String::new(),
                            action,
                            body_sha256,
                        };
                        return self
                            .quota_refused(
                                id,
                                conn,
                                now,
                                &counters_now,
                                block,
                                query,
                                plan,
                                refusal,
                            )
                            .await;
                    }
                }
            }
            _ => None,
        };
        // Decide against the token with the counters (reserving if it may forward).
        let (decision, seen, reservation) = self
            .ledger
            .decide(&action, |c| self.cap.authorize(&action, c, now));
        let seq = match self
            .write_decision(
                now,
                &RecordedAction {
                    facts: &action,
                    query,
                },
                &seen,
                &decision,
                Stage::Token,
                body_sha256,
            )
            .await
        {
            Ok(seq) => seq,
            Err(ReceiptFailed(why)) => {
                return self.refuse(id, conn.id, &action, &receipt_failed(&why), None)
            }
        };
        let verdict = decision.decision;
        if verdict == Verdict::Block {
            return self.refuse(id, conn.id, &action, &decision.reason, Some(seq));
        }
        let decided = Decided {
            action,
            decision,
            seq,
            prepared,
            reservation,
            metered,
            quota,
            large_body,
        };
        if verdict == Verdict::Approval {
            self.hold_for_approval(id, req, conn, decided, query).await
        } else {
            self.forward(id, req, conn, decided)
        }
    }

    /// The one place a stage's [`Block`] becomes a decision receipt, a
    /// `blocked` event and the sandbox's answer.
    async fn record_block(
        &self,
        id: u64,
        conn: &ConnInfo,
        now: SystemTime,
        counters: &Counters,
        block: Block,
        query: Option<&str>,
    ) -> GateVerdict {
        let Block {
            stage,
            reason,
            action,
            body_sha256,
        } = block;
        let decision = self.block(reason);
        match self
            .write_decision(
                now,
                &RecordedAction {
                    facts: &action,
                    query,
                },
                counters,
                &decision,
                stage,
                body_sha256,
            )
            .await
        {
            Ok(seq) => self.refuse(id, conn.id, &action, &decision.reason, Some(seq)),
            Err(ReceiptFailed(why)) => {
                self.refuse(id, conn.id, &action, &receipt_failed(&why), None)
            }
        }
    }

    /// A call the tenant's day quota refused: a `quota`-stage blocked
    /// receipt naming the quota, then the provider-shaped `429` with
    /// `retry-after` (or, when the quota could not be consulted, the plain
    /// refusal: fail closed).
    #[allow(clippy::too_many_arguments)]
    async fn quota_refused(
        &self,
        id: u64,
        conn: &ConnInfo,
        now: SystemTime,
        counters: &Counters,
        mut block: Block,
        query: Option<&str>,
        plan: &Plan,
        refusal: QuotaRefusal,
    ) -> GateVerdict {
        let api = plan.api;
        let (quota, detail, retry_after) = match refusal {
            QuotaRefusal::Exceeded {
                quota,
                detail,
                retry_after,
            } => (quota, detail, retry_after),
            QuotaRefusal::Unavailable(why) => {
                block.reason = format!("quota: unavailable: {why}");
                return self
                    .record_block(id, conn, now, counters, block, query)
                    .await;
            }
            QuotaRefusal::Unpriced { quota } => {
                block.reason = format!(
                    "quota: {quota}: llm call of unknown cost: model {} has no price on the rate \
                     card, so the tenant's {quota} quota could not count it (add its model to the \
                     rate card, rates.toml)",
                    plan.model
                );
                return self
                    .record_block(id, conn, now, counters, block, query)
                    .await;
            }
            QuotaRefusal::Unbounded { quota } => {
                let why = plan.tokens.clone().err().unwrap_or_default();
                block.reason = format!(
                    "quota: {quota}: llm call of unbounded tokens: the tenant's {quota} quota \
                     could not hold them: {why}"
                );
                return self
                    .record_block(id, conn, now, counters, block, query)
                    .await;
            }
        };
        let Block {
            stage,
            action,
            body_sha256,
            ..
        } = block;
        let decision = self.block(format!("quota: {quota}: {detail}"));
        let seq = match self
            .write_decision(
                now,
                &RecordedAction {
                    facts: &action,
                    query,
                },
                counters,
                &decision,
                stage,
                body_sha256,
            )
            .await
        {
            Ok(seq) => seq,
            Err(ReceiptFailed(why)) => {
                return self.refuse(id, conn.id, &action, &receipt_failed(&why), None)
            }
        };
        let (status, headers, body) = api.quota_refusal(quota, &detail, retry_after);
        ratelog::debug!(
            request = id,
            conn = conn.id,
            quota,
            "refused by the tenant's quota"
        );
        self.emit(EventKind::Blocked, id, conn.id, &action, |e| {
            e.reason = Some(decision.reason.clone());
            e.receipt = Some(seq);
            e.status = Some(status.as_u16());
        });
        GateVerdict::Respond {
            status,
            reason: header_reason(&decision.reason),
            headers,
            body,
        }
    }

    /// Holds an approval-gated request until a human answers or the
    /// timeout passes, receipts the answer, and forwards it if approved.
    /// `query` is the query as its decision receipt records it (masked).
    async fn hold_for_approval(
        &self,
        id: u64,
        req: &mut GateRequest,
        conn: &ConnInfo,
        decided: Decided,
        query: Option<&str>,
    ) -> GateVerdict {
        let Decided {
            action,
            decision,
            seq,
            ..
        } = &decided;
        self.emit(EventKind::Pending, id, conn.id, action, |e| {
            e.reason = Some(decision.reason.clone());
            e.grant = decision.grant.clone();
            e.receipt = Some(*seq);
        });
        let question = ApprovalRequest {
            id,
            action: action.clone(),
            // As the receipt records it: placeholders, never secret values
            // (not even one the sandbox wrote out itself).
            query: query.map(str::to_owned),
            reason: decision.reason.clone(),
            decision_seq: *seq,
            asked_at: receipts::format_time(SystemTime::now()),
            timeout: self.approval_timeout,
        };
        // Until the answer's receipt has its place in the chain, a dropped
        // hold (the client went away: hyper drops this future) is receipted
        // as withdrawn, so every hold ends in exactly one approval receipt.
        let mut withdrawn = Withdrawn {
            gate: self,
            id,
            conn: conn.id,
            action,
            decision_seq: *seq,
            armed: true,
        };
        // A slot among the holds (freed when this hold ends, however it
        // ends); none left: refused without asking anyone.
        let slot = HeldSlot::take(&self.held);
        let outcome = match &slot {
            Some(_) => {
                Some(ask_and_wait(self.broker.as_ref(), question, self.approval_timeout).await)
            }
            None => None,
        };
        drop(slot);
        let (approved, approver, answered_at, why) = match outcome {
            None => (
                false,
                "limit".to_owned(),
                SystemTime::now(),
                Some(format!(
                    "approval: {MAX_HELD_APPROVALS} requests already wait for a human: \
                     refused without asking"
                )),
            ),
            Some(ApprovalOutcome::Answered(a)) => {
                let why = if a.approved {
                    None
                } else {
                    Some(format!("approval denied by {}", a.approver))
                };
                (a.approved, a.approver, a.answered_at, why)
            }
            Some(ApprovalOutcome::TimedOut) => (
                false,
                "timeout".to_owned(),
                SystemTime::now(),
                Some(format!(
                    "approval timed out after {} s",
                    self.approval_timeout.as_secs_f64()
                )),
            ),
            Some(ApprovalOutcome::BrokerGone) => (
                false,
                "broker".to_owned(),
                SystemTime::now(),
                Some("approval broker went away: denied".to_owned()),
            ),
        };
        let record = ApprovalRecord {
            decision_seq: *seq,
            approved,
            approver: approver.clone(),
            answered_at: receipts::format_time(answered_at),
            reason: why.clone(),
        };
        let submitted = self.receipts.submit(Entry::Approval(record));
        // Its place in the chain is fixed (or the log refused it): from
        // here the hold's end is the answer's, not a withdrawal.
        withdrawn.armed = false;
        drop(withdrawn);
        let appended = match submitted {
            Ok(p) => p.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let approval_seq = match appended {
            Ok(a) => a.seq,
            Err(why) => return self.refuse(id, conn.id, action, &receipt_failed(&why), None),
        };
        if !approved {
            let reason = why.unwrap_or_else(|| "approval denied".to_owned());
            self.emit(EventKind::Denied, id, conn.id, action, |e| {
                e.reason = Some(reason.clone());
                e.approver = Some(approver.clone());
                e.receipt = Some(approval_seq);
                e.status = Some(StatusCode::FORBIDDEN.as_u16());
            });
            return GateVerdict::Refuse {
                status: StatusCode::FORBIDDEN,
                reason: header_reason(&reason),
            };
        }
        self.emit(EventKind::Approved, id, conn.id, action, |e| {
            e.approver = Some(approver.clone());
            e.grant = decision.grant.clone();
            e.receipt = Some(approval_seq);
        });
        self.forward(id, req, conn, decided)
    }

    /// Lets a decided request go upstream (allowed, or approved): applies
    /// the prepared substitution, records the request as in flight, and
    /// commits its counter reservation (it counts from now on).
    fn forward(
        &self,
        id: u64,
        req: &mut GateRequest,
        conn: &ConnInfo,
        decided: Decided,
    ) -> GateVerdict {
        let Decided {
            action,
            decision,
            seq,
            prepared,
            reservation,
            metered,
            quota,
            large_body,
        } = decided;
        let mut credentials = Vec::new();
        if let Some((uri, headers, substituted)) = prepared {
            credentials = substituted.replaced;
            for n in substituted.injected {
                if !credentials.contains(&n) {
                    credentials.push(n);
                }
            }
            req.head.uri = uri;
            req.head.headers = headers;
            if let Some(body) = substituted.body {
                // Cannot fail: substitute() only returns a body when it was complete.
                if req.body.replace(body).is_err() {
                    tracing::error!("replacing a complete body failed");
                }
            }
        }
        // The tag finds this request again at its response and completion
        // (metering settles a metered call there).
        req.tag = Some(GateTag(id));
        if let Some(plan) = metered {
            let mut quota = quota;
            if let Some(hold) = &mut quota {
                hold.forwarded();
            }
            self.metering.forwarded(Ticket {
                request: id,
                conn: conn.id,
                action: action.clone(),
                decision_seq: seq,
                reserved: action.cost_micro_usd.unwrap_or(0),
                plan,
                quota,
            });
            // Its usage is read from the body: uncompressed, please (a
            // credential host's compressed body is decoded anyway).
            req.head.headers.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if self.host_has_credentials(&req.host) {
            // Its responses are masked: ask for them uncompressed (a body
            // compressed anyway is decoded before masking, `response.rs`),
            // and for WebSocket messages without extensions
            // (permessage-deflate would hide them from the mask).
            req.head.headers.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            // A stored secret read back a few bytes per `Range` request
            // would reach the sandbox in pieces no mask recognises; without
            // `Range` the server sends the whole representation.
            req.head.headers.remove(http::header::RANGE);
            req.head.headers.remove(http::header::IF_RANGE);
            // A server that honours `Accept-Charset` could answer in a
            // charset whose escapes the mask does not read (UTF-16 with
            // `\u` escapes, UTF-7): the sandbox does not get to ask.
            req.head.headers.remove(http::header::ACCEPT_CHARSET);
            if req.websocket {
                req.head
                    .headers
                    .remove(http::header::SEC_WEBSOCKET_EXTENSIONS);
            }
        }
        if decision.decision == Verdict::Allow {
            self.emit(EventKind::Allowed, id, conn.id, &action, |e| {
                e.grant = decision.grant.clone();
                e.credentials = credentials.clone();
                e.receipt = Some(seq);
            });
        }
        if let Some(permit) = large_body {
            // The body goes upstream from the gate's buffer: the permit
            // lives as long as those bytes do, through an upstream that
            // answers before it has read them, not to the response head.
            req.body.hold_with_buffer(Box::new(permit));
        }
        lock(&self.in_flight).insert(
            id,
            InFlight {
                action,
                grant: decision.grant,
                credentials,
                receipt: Some(seq),
            },
        );
        reservation.commit();
        GateVerdict::Forward
    }

    fn host_has_credentials(&self, host: &Host) -> bool {
        if self.creds.names().next().is_none() {
            return false;
        }
        if let Some(&known) = lock(&self.credential_hosts).get(host) {
            return known;
        }
        let now = SystemTime::now();
        let any = self
            .creds
            .names()
            .any(|name| self.stages().credential_granted(name, host, "https", now));
        lock(&self.credential_hosts).insert(host.clone(), any);
        any
    }
}

#[async_trait::async_trait]
impl Gate for EnforcingGate {
    fn dns(&self, name: &str) -> DnsVerdict {
        let now = SystemTime::now();
        // A secret the sandbox wrote into the name (`<secret>.evil.example`)
        // is decided and receipted as its placeholder, as a request's facts
        // are (`Stages::run`); no host has a `_`, so such a name is refused.
        let name = self.creds.masked(name);
        let decision = self.cap.authorize_dns(&name, now);
        if decision.decision == Verdict::Allow {
            return DnsVerdict::ResolveToProxy;
        }
        // The receipt names the host, or the name as asked when it is none.
        let name = Host::parse(&name).map_or_else(|_| name.into_owned(), |h| h.to_string());
        ratelog::debug!(name = %name, "DNS name refused");
        // One receipt per blocked name (curl asks A and AAAA), up to the
        // limit; beyond it, aggregate receipts.
        let fate = lock(&self.dns).refuse(&name, now);
        match fate {
            DnsRefusalFate::Seen => {}
            DnsRefusalFate::Aggregated(None) => {}
            DnsRefusalFate::Aggregated(Some(batch)) => self.receipt_dns_batch(batch),
            DnsRefusalFate::Receipt => {
                let mut action = fallback_action("DNS", &name, "/");
                action.kind = ActionType::Web;
                let decision = Decision {
                    revocation_ids: self.revocation_ids.clone(),
                    ..decision
                };
                let receipt = self
                    .hook_record(&unqueried(&action), &decision, Stage::Dns)
                    .and_then(|r| self.receipt_decision_blocking(now, r));
                let seq = match receipt {
                    Ok(seq) => Some(seq),
                    Err(ReceiptFailed(why)) => {
                        ratelog::error!(name = %name, "receipt for a blocked DNS name failed: {why}");
                        None
                    }
                };
                self.emit(EventKind::Blocked, 0, 0, &action, |e| {
                    e.reason = Some(format!("dns: {}", decision.reason));
                    e.receipt = seq;
                });
            }
        }
        DnsVerdict::NxDomain
    }

    async fn request(&self, req: &mut GateRequest, conn: &ConnInfo) -> GateVerdict {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Inside the proxy's `proxy{session}:conn{conn}` spans; the request
        // number ties log lines to events, receipts and approvals.
        let span = tracing::error_span!("decide", request = id);
        self.decide_request(id, req, conn).instrument(span).await
    }

    fn response(
        &self,
        req: &RequestSummary,
        head: &mut response::Parts,
        _conn: &ConnInfo,
    ) -> ResponseVerdict {
        let verdict = if self.host_has_credentials(&req.host) {
            self.creds.mask_headers(&mut head.headers);
            crate::response::masked(&self.creds, head)
        } else {
            ResponseVerdict::Pass
        };
        match req.tag {
            Some(GateTag(request)) => {
                let event_stream =
                    crate::metering::is_event_stream(head.headers.get(http::header::CONTENT_TYPE));
                self.metering.response(request, event_stream, verdict)
            }
            None => verdict,
        }
    }

    fn refused(&self, event: Refusal) {
        let now = SystemTime::now();
        // The path and query may be as forwarded, after substitution: secrets
        // masked back to their placeholders.
        let target = event.request.as_ref().map(|r| self.creds.mask_str(&r.path));
        let mut action = match (&event.request, &target) {
            (Some(r), Some(target)) => {
                fallback_action(&r.method, r.host.as_str(), &path_only(target))
            }
            _ => fallback_action(
                "CONNECT",
                event.conn.sni.as_ref().map_or("", Host::as_str),
                "/",
            ),
        };
        // The host (request or SNI) and method are the sandbox's text too.
        self.creds.mask_facts(&mut action);
        let decision = self.block(format!("{}: {}", event.reason, event.detail));
        let recorded = RecordedAction {
            facts: &action,
            query: target.as_deref().and_then(query_of),
        };
        let receipt = self
            .hook_record(&recorded, &decision, Stage::Proxy)
            .and_then(|r| self.receipt_decision_blocking(now, r));
        let seq = match receipt {
            Ok(seq) => Some(seq),
            Err(ReceiptFailed(why)) => {
                ratelog::error!(
                    conn = event.conn.id,
                    "receipt for a proxy refusal failed: {why}"
                );
                None
            }
        };
        ratelog::debug!(
            conn = event.conn.id,
            reason = event.reason,
            "refused by the proxy"
        );
        self.emit(EventKind::Blocked, 0, event.conn.id, &action, |e| {
            e.reason = Some(event.reason.to_owned());
            e.receipt = seq;
        });
    }

    fn completed(&self, exchange: Exchange) {
        // Only forwarded requests carry a tag.
        let Some(GateTag(request)) = exchange.request.tag else {
            return;
        };
        // A metered call is settled by its response already, unless none came.
        self.metering.ended(request);
        let entry = lock(&self.in_flight).remove(&request);
        if exchange.outcome == ExchangeOutcome::Refused {
            return; // already reported as blocked or denied
        }
        let Some(f) = entry else { return };
        self.emit(
            EventKind::Completed,
            request,
            exchange.conn.id,
            &f.action,
            |e| {
                e.grant = f.grant;
                e.credentials = f.credentials;
                e.status = exchange.status.map(|s| s.as_u16());
                e.bytes = Some(exchange.bytes_down);
                e.bytes_up = Some(exchange.bytes_up);
                e.receipt = f.receipt;
                match &exchange.outcome {
                    ExchangeOutcome::Failed(why) => {
                        e.reason = Some(format!("{}{why}", crate::events::FAILED_PREFIX))
                    }
                    ExchangeOutcome::ClientGone => e.reason = Some("client went away".into()),
                    ExchangeOutcome::Completed | ExchangeOutcome::Refused => {}
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_header_safe_and_bounded() {
        assert_eq!(
            header_reason("no grant allows POST x"),
            "no grant allows POST x"
        );
        assert_eq!(header_reason("a\nb\u{e9}"), "a?b?");
        assert_eq!(header_reason(&"x".repeat(1000)).len(), MAX_REASON);
        assert_eq!(header_reason(""), "blocked");
        assert_eq!(path_only("/a/b?c=1#f"), "/a/b");
        assert_eq!(path_only("?x"), "/");
    }
}
