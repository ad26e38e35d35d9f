//! Approval brokers: who is asked when a decision says "approval", and how
//! the answer comes back. A terminal prompt (`openclaw run`), an API (the web
//! UI and `openclaw approve` list pending approvals and answer them by id), a
//! fan-out over several brokers, and a scripted broker for tests.
//!
//! The contract: [`ApprovalBroker::ask`] returns a receiver for the answer.
//! The gate waits at most the approval timeout; no answer in time is a
//! denial, and a broker that drops the sender without answering (it crashed
//! or went away) is a denial too. When the gate stops waiting it drops the
//! receiver, which tells the broker the question was withdrawn.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use capabilities::Action;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

/// Default time a held request waits for a human.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(120);

/// One question for a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRequest {
    /// Unique per session (the request number).
    pub id: u64,
    pub action: Action,
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
    /// `POST united.com/api/booking/purchase $487.00`.
    pub fn summary(&self) -> String {
        let a = &self.action;
        let mut s = format!("{} {}{}", a.method, a.host, a.path);
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
    /// Starts asking; the answer arrives on the receiver. Dropping the sender
    /// without answering means "denied: broker gone".
    fn ask(&self, request: ApprovalRequest) -> oneshot::Receiver<ApprovalAnswer>;
}

/// How waiting for an answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalOutcome {
    Answered(ApprovalAnswer),
    TimedOut,
    BrokerGone,
}

/// Asks `broker` and waits at most `timeout`.
pub async fn ask_and_wait(
    broker: &dyn ApprovalBroker,
    request: ApprovalRequest,
    timeout: Duration,
) -> ApprovalOutcome {
    let rx = broker.ask(request);
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(answer)) => ApprovalOutcome::Answered(answer),
        Ok(Err(_)) => ApprovalOutcome::BrokerGone,
        Err(_) => ApprovalOutcome::TimedOut,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Terminal

type Question = (ApprovalRequest, oneshot::Sender<ApprovalAnswer>);

/// Prompts `approve? [y/N]` on a terminal, one question at a time, showing
/// the time left. Only `y` or `yes` approves. A line typed before a prompt
/// appeared is discarded (it answered an earlier, withdrawn prompt). When the
/// terminal's input ends, every question is denied (broker gone).
#[derive(Debug, Clone)]
pub struct TerminalBroker {
    tx: mpsc::UnboundedSender<Question>,
}

impl TerminalBroker {
    /// Prompts on the controlling terminal (`/dev/tty`). Must be called
    /// inside a tokio runtime.
    pub fn open_tty() -> std::io::Result<Self> {
        Self::open(Path::new("/dev/tty"))
    }

    /// Prompts on the terminal device at `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let input = std::fs::File::open(path)?;
        let output = std::fs::OpenOptions::new().write(true).open(path)?;
        Ok(Self::with_io(std::io::BufReader::new(input), output))
    }

    /// Prompts on any line-oriented input and output. The input is read on
    /// its own thread (not a tokio blocking task, so a pending read never
    /// holds up runtime shutdown).
    pub fn with_io(
        input: impl BufRead + Send + 'static,
        output: impl Write + Send + 'static,
    ) -> Self {
        let (lines_tx, lines_rx) = mpsc::unbounded_channel::<(String, Instant)>();
        std::thread::Builder::new()
            .name("approval-tty".into())
            .spawn(move || {
                for line in input.lines() {
                    let Ok(line) = line else { break };
                    if lines_tx.send((line, Instant::now())).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| tracing::error!("approval terminal reader: {e}"))
            .ok();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(prompt_loop(rx, lines_rx, output));
        TerminalBroker { tx }
    }
}

impl ApprovalBroker for TerminalBroker {
    fn ask(&self, request: ApprovalRequest) -> oneshot::Receiver<ApprovalAnswer> {
        let (tx, rx) = oneshot::channel();
        // If the prompt loop is gone the sender drops here: denied.
        let _ = self.tx.send((request, tx));
        rx
    }
}

async fn prompt_loop(
    mut questions: mpsc::UnboundedReceiver<Question>,
    mut lines: mpsc::UnboundedReceiver<(String, Instant)>,
    mut out: impl Write + Send + 'static,
) {
    while let Some((req, mut reply)) = questions.recv().await {
        if reply.is_closed() {
            continue;
        }
        let shown = Instant::now();
        let deadline = tokio::time::Instant::now() + req.timeout;
        let _ = write!(
            out,
            "\n● approval {}\n  {}\n  approve? [y/N] ({} s) ",
            req.summary(),
            req.reason,
            req.timeout.as_secs()
        );
        let _ = out.flush();
        let answer = loop {
            tokio::select! {
                line = lines.recv() => match line {
                    None => {
                        let _ = writeln!(out, "\n  (no terminal input: denied)");
                        // Input is gone for good: deny this and all later questions.
                        return;
                    }
                    Some((_, at)) if at < shown => continue,
                    Some((line, _)) => {
                        let yes = matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
                        break Some(ApprovalAnswer::new(yes, "terminal"));
                    }
                },
                _ = reply.closed() => break None,
                _ = tokio::time::sleep_until(deadline) => break None,
            }
        };
        match answer {
            Some(a) => {
                let _ = writeln!(
                    out,
                    "  → {}",
                    if a.approved { "approved" } else { "denied" }
                );
                let _ = reply.send(a);
            }
            None => {
                let _ = writeln!(out, "\n  (no answer in time: denied)");
            }
        }
        let _ = out.flush();
    }
}

// ---------------------------------------------------------------------------
// API

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
}

#[derive(Default)]
struct ApiState {
    pending: BTreeMap<u64, Question>,
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
    fn ask(&self, request: ApprovalRequest) -> oneshot::Receiver<ApprovalAnswer> {
        let (tx, rx) = oneshot::channel();
        lock(&self.state).pending.insert(request.id, (request, tx));
        bump(&self.changed);
        rx
    }
}

impl ApprovalHandle {
    /// Questions still waiting (withdrawn and timed-out ones are dropped).
    pub fn pending(&self) -> Vec<PendingApproval> {
        let mut s = lock(&self.state);
        s.pending.retain(|_, (_, tx)| !tx.is_closed());
        s.pending
            .values()
            .map(|(r, _)| PendingApproval { request: r.clone() })
            .collect()
    }

    /// Answers question `id`.
    pub fn answer(&self, id: u64, approved: bool, approver: &str) -> Result<(), ApprovalError> {
        let entry = lock(&self.state).pending.remove(&id);
        bump(&self.changed);
        match entry {
            Some((_, tx)) => tx
                .send(ApprovalAnswer::new(approved, approver))
                .map_err(|_| ApprovalError::NotPending(id)),
            None => Err(ApprovalError::NotPending(id)),
        }
    }

    /// Wakes on every change to the pending list (new question or answer),
    /// for pushing updates to a UI.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

// ---------------------------------------------------------------------------
// Fan-out

/// Asks several brokers at once (say the terminal and the web UI); the first
/// answer wins and the others' questions are withdrawn. Denied as "gone" only
/// when every broker is gone.
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
    fn ask(&self, request: ApprovalRequest) -> oneshot::Receiver<ApprovalAnswer> {
        let (tx, rx) = oneshot::channel();
        let mut set = tokio::task::JoinSet::new();
        for b in &self.brokers {
            set.spawn(b.ask(request.clone()));
        }
        tokio::spawn(async move {
            let mut tx = tx;
            loop {
                tokio::select! {
                    next = set.join_next() => match next {
                        None => return, // all gone: tx drops, denied
                        Some(Ok(Ok(answer))) => {
                            let _ = tx.send(answer);
                            return; // dropping `set` withdraws the others
                        }
                        Some(_) => continue,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }
}

// ---------------------------------------------------------------------------
// Tests

/// What a [`ScriptedBroker`] does with one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    Approve,
    Deny,
    /// Answer after a delay.
    ApproveAfter(Duration),
    /// Never answer (the gate's timeout decides).
    Never,
    /// The broker's task panics while holding the question.
    Crash,
}

/// A broker for tests: answers questions in script order (the last entry
/// repeats) and records every question asked.
#[derive(Clone)]
pub struct ScriptedBroker {
    script: Arc<Mutex<Vec<Scripted>>>,
    asked: Arc<Mutex<Vec<ApprovalRequest>>>,
    /// Senders of `Never` questions, kept so they are not dropped.
    parked: Arc<Mutex<Vec<oneshot::Sender<ApprovalAnswer>>>>,
}

impl ScriptedBroker {
    pub fn new(script: Vec<Scripted>) -> Self {
        ScriptedBroker {
            script: Arc::new(Mutex::new(script)),
            asked: Arc::default(),
            parked: Arc::default(),
        }
    }

    /// Every question asked so far.
    pub fn asked(&self) -> Vec<ApprovalRequest> {
        lock(&self.asked).clone()
    }
}

impl ApprovalBroker for ScriptedBroker {
    fn ask(&self, request: ApprovalRequest) -> oneshot::Receiver<ApprovalAnswer> {
        let (tx, rx) = oneshot::channel();
        lock(&self.asked).push(request);
        let step = {
            let mut s = lock(&self.script);
            if s.len() > 1 {
                s.remove(0)
            } else {
                s.first().cloned().unwrap_or(Scripted::Deny)
            }
        };
        match step {
            Scripted::Approve => {
                let _ = tx.send(ApprovalAnswer::new(true, "test"));
            }
            Scripted::Deny => {
                let _ = tx.send(ApprovalAnswer::new(false, "test"));
            }
            Scripted::ApproveAfter(d) => {
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = tx.send(ApprovalAnswer::new(true, "test"));
                });
            }
            Scripted::Never => lock(&self.parked).push(tx),
            Scripted::Crash => {
                tokio::spawn(async move {
                    let _held = tx;
                    panic!("scripted approval broker crash");
                });
            }
        }
        rx
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
            reason: "payments above $400.00 need approval".into(),
            decision_seq: 3,
            asked_at: receipts::format_time(SystemTime::now()),
            timeout,
        }
    }

    #[tokio::test]
    async fn scripted_answers_timeouts_and_crashes() {
        let b = ScriptedBroker::new(vec![
            Scripted::Approve,
            Scripted::Deny,
            Scripted::Never,
            Scripted::Crash,
        ]);
        let t = Duration::from_millis(200);
        assert!(
            matches!(ask_and_wait(&b, request(1, t), t).await, ApprovalOutcome::Answered(a) if a.approved)
        );
        assert!(
            matches!(ask_and_wait(&b, request(2, t), t).await, ApprovalOutcome::Answered(a) if !a.approved)
        );
        assert_eq!(
            ask_and_wait(&b, request(3, t), t).await,
            ApprovalOutcome::TimedOut
        );
        assert_eq!(
            ask_and_wait(&b, request(4, t), t).await,
            ApprovalOutcome::BrokerGone
        );
        assert_eq!(
            b.asked().iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    #[tokio::test]
    async fn api_broker_lists_answers_and_forgets_withdrawn() {
        let (broker, handle) = ApiBroker::new();
        let mut changes = handle.changes();
        let rx = broker.ask(request(7, Duration::from_secs(5)));
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
        let a = rx.await.expect("answer");
        assert!(a.approved);
        assert_eq!(a.approver, "ui");
        assert_eq!(
            handle.answer(7, true, "ui"),
            Err(ApprovalError::NotPending(7))
        );
        // A withdrawn question (gate timed out) disappears from the list.
        let rx = broker.ask(request(9, Duration::from_secs(5)));
        drop(rx);
        assert!(handle.pending().is_empty());
        assert_eq!(
            handle.answer(9, true, "ui"),
            Err(ApprovalError::NotPending(9))
        );
        // Dropping the broker's state entirely (all handles gone) denies.
        let (broker, handle) = ApiBroker::new();
        let rx = broker.ask(request(10, Duration::from_secs(5)));
        drop(broker);
        drop(handle);
        assert!(rx.await.is_err());
    }

    #[tokio::test]
    async fn first_answer_wins_and_withdraws_the_rest() {
        let (api, handle) = ApiBroker::new();
        let never = ScriptedBroker::new(vec![Scripted::Never]);
        let fan = FirstAnswer::new(vec![Arc::new(never), Arc::new(api)]);
        let t = Duration::from_secs(5);
        let mut changes = handle.changes();
        let wait = tokio::spawn({
            let fan = fan.clone();
            async move { ask_and_wait(&fan, request(1, t), t).await }
        });
        changes.changed().await.expect("asked");
        handle.answer(1, false, "ui").expect("answered");
        match wait.await.expect("join") {
            ApprovalOutcome::Answered(a) => assert!(!a.approved && a.approver == "ui"),
            other => panic!("{other:?}"),
        }
        // All brokers crashed: gone.
        let fan = FirstAnswer::new(vec![
            Arc::new(ScriptedBroker::new(vec![Scripted::Crash])),
            Arc::new(ScriptedBroker::new(vec![Scripted::Crash])),
        ]);
        assert_eq!(
            ask_and_wait(&fan, request(2, t), t).await,
            ApprovalOutcome::BrokerGone
        );
    }

    /// The terminal broker on a real pseudo-terminal: the prompt appears on
    /// the terminal, `y` approves, anything else denies, a line typed before
    /// the prompt is ignored, no answer in time denies, end of input denies.
    #[tokio::test]
    async fn terminal_broker_on_a_pty() {
        use std::io::Read;
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave_path = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&pty.slave)
        ))
        .expect("slave path");
        let mut master = std::fs::File::from(pty.master);
        let broker = TerminalBroker::open(&slave_path).expect("open tty");
        let mut screen = master.try_clone().expect("clone");
        let (screen_tx, mut screen_rx) = mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = screen.read(&mut buf) {
                if n == 0
                    || screen_tx
                        .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                        .is_err()
                {
                    break;
                }
            }
        });
        async fn wait_for(rx: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> String {
            let mut seen = String::new();
            while !seen.contains(needle) {
                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                    Ok(Some(s)) => seen.push_str(&s),
                    _ => panic!("never saw {needle:?} in {seen:?}"),
                }
            }
            seen
        }
        let t = Duration::from_secs(10);

        // A stale "y" typed before any prompt must not approve anything.
        master.write_all(b"y\n").expect("type");
        wait_for(&mut screen_rx, "y").await; // the tty echoes it
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = tokio::spawn({
            let b = broker.clone();
            async move { ask_and_wait(&b, request(1, t), t).await }
        });
        let screen = wait_for(&mut screen_rx, "approve? [y/N] (10 s)").await;
        assert!(
            screen.contains("POST united.com/api/booking/purchase $487.00"),
            "{screen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!asked.is_finished(), "the stale line answered the prompt");
        master.write_all(b"yes\n").expect("type");
        match asked.await.expect("join") {
            ApprovalOutcome::Answered(a) => assert!(a.approved && a.approver == "terminal"),
            other => panic!("{other:?}"),
        }

        let asked = tokio::spawn({
            let b = broker.clone();
            async move { ask_and_wait(&b, request(2, t), t).await }
        });
        wait_for(&mut screen_rx, "approve?").await;
        master.write_all(b"sure\n").expect("type");
        assert!(matches!(asked.await.expect("join"), ApprovalOutcome::Answered(a) if !a.approved));

        let short = Duration::from_millis(300);
        assert_eq!(
            ask_and_wait(&broker, request(3, short), short).await,
            ApprovalOutcome::TimedOut
        );
        wait_for(&mut screen_rx, "no answer in time").await;
    }

    #[tokio::test]
    async fn terminal_broker_denies_when_input_ends() {
        let broker =
            TerminalBroker::with_io(std::io::Cursor::new(Vec::<u8>::new()), std::io::sink());
        let t = Duration::from_secs(5);
        assert_eq!(
            ask_and_wait(&broker, request(1, t), t).await,
            ApprovalOutcome::BrokerGone
        );
        assert_eq!(
            ask_and_wait(&broker, request(2, t), t).await,
            ApprovalOutcome::BrokerGone
        );
    }
}
