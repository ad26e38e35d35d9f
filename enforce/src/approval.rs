//! Approval brokers: who is asked when a decision says "approval", and how
//! the answer comes back. An API (the web UI and `openclaw approve` list
//! pending approvals and answer them by id) and a fan-out over several
//! brokers live here; the terminal prompt is the binary's
//! (`src/session/approval_prompt.rs`), the scripted broker for tests is in
//! `test-support`.
//!
//! The contract: each held request has one decision slot ([`Decision`]),
//! filled once. [`ApprovalBroker::ask`] hands a broker an [`Answerer`] for
//! it; an answer is taken only if it fills the slot, and every other answer
//! is told it was not ([`NotTaken`]), so a human is never told "taken" for
//! an answer the gate did not act on. The gate waits at most the approval
//! timeout, then closes the slot as timed out (an answer racing it is either
//! the outcome or not taken); every answerer dropped without answering (the
//! brokers crashed or went away) fills it as gone. Both are denials. A gate
//! that stops waiting (the client went away) closes it as withdrawn.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use capabilities::Action;
use serde::Serialize;
use tokio::sync::watch;

/// Default time a held request waits for a human.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(120);

/// One question for a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRequest {
    /// Unique per session (the request number).
    pub id: u64,
    pub action: Action,
    /// The query string the request goes upstream with (the action's path
    /// has none), so the human sees the data it carries there too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Why the token wants a human (from the decision).
    pub reason: String,
    /// Seq of the decision receipt this approval answers.
    pub decision_seq: u64,
    /// RFC 3339 UTC.
    pub asked_at: String,
    /// How long the gate waits.
    #[serde(with = "secs")]
    pub timeout: Duration,
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

impl ApprovalRequest {
    /// `POST united.com/api/booking/purchase $487.00` (with `?query`, if any).
    pub fn summary(&self) -> String {
        let a = &self.action;
        let mut s = format!("{} {}{}", a.method, a.host, a.path);
        if let Some(q) = &self.query {
            s.push('?');
            s.push_str(q);
        }
        if let Some(c) = a.amount_cents {
            s.push_str(&format!(" ${}.{:02}", c / 100, c % 100));
            if let Some(cur) = &a.currency {
                if cur != "USD" {
                    s.push(' ');
                    s.push_str(cur);
                }
            }
        }
        if !a.recipients.is_empty() {
            s.push_str(&format!(" to {}", a.recipients.join(", ")));
        }
        s
    }
}

/// A human's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalAnswer {
    pub approved: bool,
    /// Who answered: `terminal`, `api`, `ui`, a user name...
    pub approver: String,
    pub answered_at: SystemTime,
    /// Optional note from the approver.
    pub note: Option<String>,
}

impl ApprovalAnswer {
    pub fn new(approved: bool, approver: &str) -> Self {
        ApprovalAnswer {
            approved,
            approver: approver.to_owned(),
            answered_at: SystemTime::now(),
            note: None,
        }
    }
}

/// Asks a human.
pub trait ApprovalBroker: Send + Sync + 'static {
    /// Starts asking; the answer goes through `answerer`. Dropping it (every
    /// clone) without answering means "denied: broker gone".
    fn ask(&self, request: ApprovalRequest, answerer: Answerer);
}

/// How waiting for an answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalOutcome {
    Answered(ApprovalAnswer),
    TimedOut,
    BrokerGone,
}

/// What fills a held request's decision slot; only the first is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Open,
    Answered(ApprovalAnswer),
    TimedOut,
    /// The gate stopped waiting (the request's client went away).
    Withdrawn,
    /// Every answerer was dropped without answering.
    Gone,
}

/// Why an answer was not taken: the decision slot was filled first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotTaken {
    /// Another answer was taken (the terminal's, another reviewer's).
    Answered { approved: bool, approver: String },
    /// The gate's timeout came first (the request was denied).
    TimedOut,
    /// The gate stopped waiting: the request's client went away.
    Withdrawn,
    /// The brokers went away (the request was denied).
    BrokerGone,
}

impl std::fmt::Display for NotTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotTaken::Answered { approved, approver } => write!(
                f,
                "already answered: {} by {approver}",
                if *approved { "approved" } else { "denied" }
            ),
            NotTaken::TimedOut => f.write_str("already answered: timed out (denied)"),
            NotTaken::Withdrawn => f.write_str("withdrawn: the request's client went away"),
            NotTaken::BrokerGone => f.write_str("already answered: broker gone (denied)"),
        }
    }
}

impl std::error::Error for NotTaken {}

impl Slot {
    fn not_taken(&self) -> Option<NotTaken> {
        match self {
            Slot::Open => None,
            Slot::Answered(a) => Some(NotTaken::Answered {
                approved: a.approved,
                approver: a.approver.clone(),
            }),
            Slot::TimedOut => Some(NotTaken::TimedOut),
            Slot::Withdrawn => Some(NotTaken::Withdrawn),
            Slot::Gone => Some(NotTaken::BrokerGone),
        }
    }
}

/// Fills the slot if it is still open (compare-and-set under the watch's
/// lock); otherwise says what filled it.
fn fill(slot: &watch::Sender<Slot>, with: Slot) -> Result<(), NotTaken> {
    let mut taken = Ok(());
    slot.send_if_modified(|s| match s.not_taken() {
        None => {
            *s = with;
            true
        }
        Some(why) => {
            taken = Err(why);
            false
        }
    });
    taken
}

/// The gate's side of one held request's decision slot. Dropped while
/// open, it closes the slot as withdrawn.
#[derive(Debug)]
pub struct Decision {
    slot: Arc<watch::Sender<Slot>>,
}

/// A broker's side of a decision slot: cloneable (a fan-out gives each
/// broker one); when the last clone goes unanswered, the brokers are gone.
#[derive(Debug, Clone)]
pub struct Answerer {
    slot: Arc<watch::Sender<Slot>>,
    _live: Arc<Live>,
}

/// Shared by an [`Answerer`]'s clones: dropped with the last one.
#[derive(Debug)]
struct Live(Arc<watch::Sender<Slot>>);

impl Drop for Live {
    fn drop(&mut self) {
        let _ = fill(&self.0, Slot::Gone);
    }
}

impl Decision {
    /// A fresh open slot and its first answerer.
    pub fn new() -> (Decision, Answerer) {
        let slot = Arc::new(watch::channel(Slot::Open).0);
        let answerer = Answerer {
            slot: slot.clone(),
            _live: Arc::new(Live(slot.clone())),
        };
        (Decision { slot }, answerer)
    }

    /// Waits at most `timeout` for the slot to fill, then closes it as
    /// timed out, and returns what filled it.
    pub async fn wait(self, timeout: Duration) -> ApprovalOutcome {
        let mut filled = self.slot.subscribe();
        // The borrow the wait returns is dropped here, before the slot is
        // written again.
        let _ = tokio::time::timeout(timeout, filled.wait_for(|s| *s != Slot::Open)).await;
        // Closed first, then read: an answer racing the timeout either
        // filled the slot before this line (and is the outcome) or is told
        // it was not taken.
        let _ = fill(&self.slot, Slot::TimedOut);
        let outcome = match &*self.slot.borrow() {
            Slot::Answered(a) => ApprovalOutcome::Answered(a.clone()),
            Slot::TimedOut => ApprovalOutcome::TimedOut,
            // Withdrawn only by this value's drop; Open cannot follow a
            // fill. Either way: denied.
            Slot::Gone | Slot::Withdrawn | Slot::Open => ApprovalOutcome::BrokerGone,
        };
        outcome
    }
}

impl Drop for Decision {
    fn drop(&mut self) {
        let _ = fill(&self.slot, Slot::Withdrawn);
    }
}

impl Answerer {
    /// Answers: taken only if nothing filled the slot before (another
    /// answer, the timeout, the gate going away).
    pub fn answer(&self, answer: ApprovalAnswer) -> Result<(), NotTaken> {
        fill(&self.slot, Slot::Answered(answer))
    }

    /// Whether the slot is filled (answered, timed out, withdrawn).
    pub fn is_closed(&self) -> bool {
        self.not_taken().is_some()
    }

    /// What filled the slot, if it is filled: why an answer now would not
    /// be taken.
    pub fn not_taken(&self) -> Option<NotTaken> {
        self.slot.borrow().not_taken()
    }

    /// Resolves when the slot is filled. Does not keep the question asked
    /// (it holds no answerer), so a watcher cannot stop "broker gone".
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut filled = self.slot.subscribe();
        async move {
            let _ = filled.wait_for(|s| *s != Slot::Open).await;
        }
    }
}

/// Asks `broker` and waits at most `timeout`.
pub async fn ask_and_wait(
    broker: &dyn ApprovalBroker,
    request: ApprovalRequest,
    timeout: Duration,
) -> ApprovalOutcome {
    let (decision, answerer) = Decision::new();
    broker.ask(request, answerer);
    decision.wait(timeout).await
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// API

/// A question and where its answer goes.
type Question = (ApprovalRequest, Answerer);

/// A pending approval as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingApproval {
    #[serde(flatten)]
    pub request: ApprovalRequest,
}

/// Why an API answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("no pending approval with id {0} (answered, withdrawn or timed out)")]
    NotPending(u64),
    /// The question was closed before this answer (by another answer, the
    /// timeout, or the gate going away).
    #[error("approval {id} was not taken: {why}")]
    NotTaken { id: u64, why: NotTaken },
}

/// How many closed questions the API remembers, to tell a late answer what
/// closed its question rather than "not pending" (the gate holds at most
/// 64 at once).
const REMEMBERED_CLOSED: usize = 256;

#[derive(Default)]
struct ApiState {
    pending: BTreeMap<u64, Question>,
    /// Recently closed questions, oldest first, and what closed them.
    closed: VecDeque<(u64, NotTaken)>,
}

impl ApiState {
    fn remember(&mut self, id: u64, why: NotTaken) {
        if self.closed.len() == REMEMBERED_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back((id, why));
    }

    /// Moves closed questions out of the pending table.
    fn prune(&mut self) {
        let closed: Vec<(u64, NotTaken)> = self
            .pending
            .iter()
            .filter_map(|(id, (_, a))| a.not_taken().map(|why| (*id, why)))
            .collect();
        for (id, why) in closed {
            self.pending.remove(&id);
            self.remember(id, why);
        }
    }
}

/// Holds questions until someone answers them through an [`ApprovalHandle`].
#[derive(Clone)]
pub struct ApiBroker {
    state: Arc<Mutex<ApiState>>,
    changed: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for ApiBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiBroker")
            .field("pending", &lock(&self.state).pending.len())
            .finish()
    }
}

/// The answering side of an [`ApiBroker`] (cloneable; give one to the web UI).
#[derive(Clone)]
pub struct ApprovalHandle {
    state: Arc<Mutex<ApiState>>,
    changed: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for ApprovalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApprovalHandle")
    }
}

impl ApiBroker {
    pub fn new() -> (Self, ApprovalHandle) {
        let state = Arc::new(Mutex::new(ApiState::default()));
        let changed = Arc::new(watch::channel(0).0);
        (
            ApiBroker {
                state: state.clone(),
                changed: changed.clone(),
            },
            ApprovalHandle { state, changed },
        )
    }
}

fn bump(changed: &watch::Sender<u64>) {
    changed.send_modify(|v| *v = v.wrapping_add(1));
}

impl ApprovalBroker for ApiBroker {
    fn ask(&self, request: ApprovalRequest, answerer: Answerer) {
        // The list changes when the question closes, however it closes (the
        // terminal answered, the timeout): pushed so a page stops offering it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let closed = answerer.closed();
            let changed = Arc::downgrade(&self.changed);
            runtime.spawn(async move {
                closed.await;
                if let Some(changed) = changed.upgrade() {
                    bump(&changed);
                }
            });
        }
        lock(&self.state)
            .pending
            .insert(request.id, (request, answerer));
        bump(&self.changed);
    }
}

impl ApprovalHandle {
    /// Questions still waiting (answered, withdrawn and timed-out ones are
    /// dropped).
    pub fn pending(&self) -> Vec<PendingApproval> {
        let mut s = lock(&self.state);
        s.prune();
        s.pending
            .values()
            .map(|(r, _)| PendingApproval { request: r.clone() })
            .collect()
    }

    /// Answers question `id`; `Ok` only if this answer is the one the gate
    /// acts on.
    pub fn answer(&self, id: u64, approved: bool, approver: &str) -> Result<(), ApprovalError> {
        let taken = {
            let mut s = lock(&self.state);
            match s.pending.remove(&id) {
                Some((_, answerer)) => {
                    let taken = answerer.answer(ApprovalAnswer::new(approved, approver));
                    let why = match &taken {
                        Ok(()) => NotTaken::Answered {
                            approved,
                            approver: approver.to_owned(),
                        },
                        Err(why) => why.clone(),
                    };
                    s.remember(id, why);
                    taken.map_err(|why| ApprovalError::NotTaken { id, why })
                }
                None => match s.closed.iter().rev().find(|(closed, _)| *closed == id) {
                    Some((_, why)) => Err(ApprovalError::NotTaken {
                        id,
                        why: why.clone(),
                    }),
                    None => Err(ApprovalError::NotPending(id)),
                },
            }
        };
        bump(&self.changed);
        taken
    }

    /// Wakes on every change to the pending list (new question, answer,
    /// question closed), for pushing updates to a UI.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

// ---------------------------------------------------------------------------
// Fan-out

/// Asks several brokers at once (say the terminal and the web UI), each
/// with its own answerer for the one decision slot: the first answer fills
/// it, the others are told they were not taken and see their questions
/// closed. Denied as "gone" only when every broker is gone.
#[derive(Clone)]
pub struct FirstAnswer {
    brokers: Vec<Arc<dyn ApprovalBroker>>,
}

impl FirstAnswer {
    pub fn new(brokers: Vec<Arc<dyn ApprovalBroker>>) -> Self {
        FirstAnswer { brokers }
    }
}

impl ApprovalBroker for FirstAnswer {
    fn ask(&self, request: ApprovalRequest, answerer: Answerer) {
        for b in &self.brokers {
            b.ask(request.clone(), answerer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capabilities::ActionType;

    fn request(id: u64, timeout: Duration) -> ApprovalRequest {
        ApprovalRequest {
            id,
            action: Action {
                kind: ActionType::Payment,
                method: "POST".into(),
                host: "united.com".into(),
                path: "/api/booking/purchase".into(),
                amount_cents: Some(48_700),
                currency: Some("USD".into()),
                merchant: Some("united.com".into()),
                recipients: Vec::new(),
                subject: None,
                credential: None,
                cost_micro_usd: None,
            },
            query: None,
            reason: "payments above $400.00 need approval".into(),
            decision_seq: 3,
            asked_at: receipts::format_time(SystemTime::now()),
            timeout,
        }
    }

    #[tokio::test]
    async fn api_broker_lists_answers_and_forgets_withdrawn() {
        let (broker, handle) = ApiBroker::new();
        let mut changes = handle.changes();
        let (decision, answerer) = Decision::new();
        broker.ask(request(7, Duration::from_secs(5)), answerer);
        changes.changed().await.expect("change seen");
        let pending = handle.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].request.id, 7);
        let json = serde_json::to_value(&pending[0]).expect("json");
        assert_eq!(json["id"], 7);
        assert_eq!(json["action"]["amount_cents"], 48_700);
        assert_eq!(
            handle.answer(8, true, "ui"),
            Err(ApprovalError::NotPending(8))
        );
        handle.answer(7, true, "ui").expect("answered");
        match decision.wait(Duration::from_secs(5)).await {
            ApprovalOutcome::Answered(a) => assert!(a.approved && a.approver == "ui", "{a:?}"),
            other => panic!("{other:?}"),
        }
        // A second answer is told what the first was.
        assert_eq!(
            handle.answer(7, false, "ui2"),
            Err(ApprovalError::NotTaken {
                id: 7,
                why: NotTaken::Answered {
                    approved: true,
                    approver: "ui".into()
                }
            })
        );
        // A withdrawn question (the gate stopped waiting) disappears from
        // the list, and the page is told.
        let (decision, answerer) = Decision::new();
        broker.ask(request(9, Duration::from_secs(5)), answerer);
        changes.borrow_and_update();
        drop(decision);
        changes.changed().await.expect("closing seen");
        assert!(handle.pending().is_empty());
        assert_eq!(
            handle.answer(9, true, "ui"),
            Err(ApprovalError::NotTaken {
                id: 9,
                why: NotTaken::Withdrawn
            })
        );
        // Dropping the broker's state entirely (all handles gone) denies.
        let (broker, handle) = ApiBroker::new();
        let (decision, answerer) = Decision::new();
        broker.ask(request(10, Duration::from_secs(5)), answerer);
        drop(broker);
        drop(handle);
        assert_eq!(
            decision.wait(Duration::from_secs(5)).await,
            ApprovalOutcome::BrokerGone
        );
    }

    /// Answers every question at once (a terminal operator who typed `y`
    /// for yes).
    struct AnswersAtOnce(bool);
    impl ApprovalBroker for AnswersAtOnce {
        fn ask(&self, _request: ApprovalRequest, answerer: Answerer) {
            let _ = answerer.answer(ApprovalAnswer::new(self.0, "terminal"));
        }
    }

    /// Two humans answer the same question at once, through the terminal
    /// (yes) and the web UI (no). The UI's "no" is accepted (the reviewer
    /// is told it was taken, the audit log says denied) but the gate acts
    /// on the terminal's "yes": an accepted denial must not end in an
    /// approval.
    #[tokio::test]
    async fn an_accepted_denial_never_ends_in_an_approval() {
        let (api, handle) = ApiBroker::new();
        let both = FirstAnswer::new(vec![Arc::new(AnswersAtOnce(true)), Arc::new(api)]);
        let (decision, answerer) = Decision::new();
        both.ask(request(3, Duration::from_secs(30)), answerer);
        let taken = handle.answer(3, false, "ui");
        let outcome = decision.wait(Duration::from_secs(30)).await;
        let ApprovalOutcome::Answered(answer) = &outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            taken.is_err() || !answer.approved,
            "the UI was told its denial was taken ({taken:?}), the gate got {answer:?}"
        );
        // And the UI is told whose answer was taken.
        assert_eq!(
            taken,
            Err(ApprovalError::NotTaken {
                id: 3,
                why: NotTaken::Answered {
                    approved: true,
                    approver: "terminal".into()
                }
            })
        );
    }

    /// The gate's timeout and a reviewer's answer meet: the gate stops
    /// waiting (receipted as a timeout) and the reviewer answers before the
    /// fan-out has withdrawn the UI's question. The answer must be told it
    /// was not taken, and an answer at the very instant of the timeout is
    /// either the outcome or not taken, never both or neither.
    #[tokio::test(start_paused = true)]
    async fn an_answer_after_the_timeout_is_not_taken() {
        let t = Duration::from_secs(30);
        let (api, handle) = ApiBroker::new();
        let fan = FirstAnswer::new(vec![Arc::new(api)]);
        let outcome = ask_and_wait(&fan, request(1, t), t).await;
        assert_eq!(outcome, ApprovalOutcome::TimedOut);
        let late = handle.answer(1, true, "ui");
        assert!(late.is_err(), "told {late:?} after the gate timed out");

        for (id, delay) in [(2, t), (3, t - Duration::from_nanos(1))] {
            let answering = handle.clone();
            let answer = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                answering.answer(id, true, "ui")
            });
            let outcome = ask_and_wait(&fan, request(id, t), t).await;
            let taken = answer.await.expect("answerer");
            match (&outcome, &taken) {
                (ApprovalOutcome::Answered(a), Ok(())) => assert!(a.approved && a.approver == "ui"),
                (ApprovalOutcome::TimedOut, Err(_)) => {}
                _ => panic!("the gate got {outcome:?}, the reviewer was told {taken:?}"),
            }
        }
    }

    // Paused time: a 30 s timeout tested exactly, in no real time.
    #[tokio::test(start_paused = true)]
    async fn no_answer_times_out_at_the_timeout_and_an_answer_before_wins() {
        let (broker, handle) = ApiBroker::new();
        let start = tokio::time::Instant::now();
        let outcome = ask_and_wait(
            &broker,
            request(1, Duration::from_secs(30)),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(outcome, ApprovalOutcome::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert!(
            handle.pending().is_empty(),
            "the timed-out question is withdrawn"
        );

        let start = tokio::time::Instant::now();
        let answering = handle.clone();
        let answer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(29_999)).await;
            answering.answer(2, false, "ui").expect("still pending");
        });
        let outcome = ask_and_wait(
            &broker,
            request(2, Duration::from_secs(30)),
            Duration::from_secs(30),
        )
        .await;
        answer.await.expect("answerer");
        match outcome {
            ApprovalOutcome::Answered(a) => assert!(!a.approved && a.approver == "ui", "{a:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_millis(29_999));
    }
}
