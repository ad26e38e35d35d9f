//! The terminal approval prompt of `openclaw run`: `approve? [y/N]` on the
//! operator's terminal, one question at a time, with the time left and the
//! facts its decision receipt records (made visible: they come from the
//! agent's request). While it is on screen every other line waits
//! ([`Screen::hold`]), so nothing the agent prints can redraw it.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use enforce::{Answerer, ApprovalAnswer, ApprovalBroker, ApprovalRequest, NotTaken};
use tokio::sync::mpsc;

use super::screen::{visible_inline, Screen};

/// Longest fact value shown (the rest is counted): a path or subject cannot
/// push the question off the screen.
const MAX_FACT_CHARS: usize = 200;

type Question = (ApprovalRequest, Answerer);

/// After a question goes away unanswered (withdrawn, or timed out) while
/// on screen, a line typed this soon after the next one appears is not
/// taken as its answer: it was meant for the question that went away (an
/// agent can withdraw a harmless question at will, to put a risky one under
/// the operator's "y").
const SETTLE: Duration = Duration::from_secs(1);

/// Texts the prompt may have queued for a terminal that takes nothing (one
/// question is a handful): past this they are dropped, not held.
const TTY_QUEUE: usize = 64;

/// How long the prompt waits for its last line to reach the terminal
/// before letting the screen's other lines out again.
const TTY_WAIT: Duration = Duration::from_secs(1);

/// A text for the terminal, and who wants to know it was written.
type TtyText = (String, Option<tokio::sync::oneshot::Sender<()>>);

/// The prompt's output, written on a thread of its own: a write to a
/// terminal paused with Ctrl-S blocks until it is resumed, and the prompt
/// loop runs on the session's runtime (a blocked write there would hold a
/// worker, and the runtime's shutdown at the session's end, for as long).
struct TtyOut(std::sync::mpsc::SyncSender<TtyText>);

impl TtyOut {
    fn new(mut out: impl Write + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<TtyText>(TTY_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("approval-tty-out".into())
            .spawn(move || {
                for (text, written) in rx {
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                    if let Some(w) = written {
                        let _ = w.send(());
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("approval terminal writer: {e}");
        }
        TtyOut(tx)
    }

    fn say(&self, text: impl Into<String>) {
        let _ = self.0.try_send((text.into(), None));
    }

    /// [`say`](Self::say), then wait (up to [`TTY_WAIT`]) until it is written.
    async fn say_and_wait(&self, text: impl Into<String>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.0.try_send((text.into(), Some(tx))).is_ok() {
            let _ = tokio::time::timeout(TTY_WAIT, rx).await;
        }
    }
}

/// How long after the gate's timeout the prompt gives up by itself.
const BACKSTOP: Duration = Duration::from_secs(1);

/// Shown when the prompt's own time ran out.
const NO_ANSWER_IN_TIME: &str = "no answer in time: denied";

/// Shown when the question went away first, or when the operator's answer
/// was not taken because something else filled its decision first: what
/// did (the web UI's answer, the gate's timeout, the client going away).
fn closed_text(why: &NotTaken) -> String {
    match why {
        NotTaken::Answered { approved, approver } => format!(
            "answered elsewhere: {} by {}",
            if *approved { "approved" } else { "denied" },
            visible_inline(approver, MAX_FACT_CHARS)
        ),
        NotTaken::TimedOut => NO_ANSWER_IN_TIME.to_owned(),
        NotTaken::Withdrawn => "withdrawn: the request's client went away".to_owned(),
        NotTaken::BrokerGone => "no longer asked here: denied".to_owned(),
    }
}

/// Prompts `approve? [y/N]` on a terminal, one question at a time, showing
/// the time left. Only `y` or `yes` approves. A line typed before a prompt
/// appeared is discarded (it answered an earlier, withdrawn prompt). When the
/// terminal's input ends, every question is denied (broker gone).
#[derive(Debug, Clone)]
pub struct TerminalBroker {
    tx: mpsc::UnboundedSender<Question>,
}

impl TerminalBroker {
    /// Prompts on the controlling terminal (`/dev/tty`), holding `screen`'s
    /// other lines while a question is up. Must be called inside a tokio
    /// runtime.
    pub fn open_tty(screen: Screen) -> std::io::Result<Self> {
        Self::open(Path::new("/dev/tty"), screen)
    }

    /// Prompts on the terminal device at `path`.
    pub fn open(path: &Path, screen: Screen) -> std::io::Result<Self> {
        let input = std::fs::File::open(path)?;
        let output = std::fs::OpenOptions::new().write(true).open(path)?;
        Ok(Self::with_io(
            std::io::BufReader::new(input),
            output,
            screen,
        ))
    }

    /// Prompts on any line-oriented input and output. The input is read on
    /// its own thread (not a tokio blocking task, so a pending read never
    /// holds up runtime shutdown).
    pub fn with_io(
        input: impl BufRead + Send + 'static,
        output: impl Write + Send + 'static,
        screen: Screen,
    ) -> Self {
        Self::with_io_settle(input, output, screen, SETTLE)
    }

    /// [`with_io`](Self::with_io) with another settle time (see [`SETTLE`]).
    fn with_io_settle(
        input: impl BufRead + Send + 'static,
        output: impl Write + Send + 'static,
        screen: Screen,
        settle: Duration,
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
        tokio::spawn(prompt_loop(rx, lines_rx, output, screen, settle));
        TerminalBroker { tx }
    }
}

impl ApprovalBroker for TerminalBroker {
    fn ask(&self, request: ApprovalRequest, answerer: Answerer) {
        // If the prompt loop is gone the answerer drops here: denied.
        let _ = self.tx.send((request, answerer));
    }
}

/// `487.00 USD` from cents (no floats).
fn amount(cents: u64, currency: Option<&str>) -> String {
    let mut s = format!("{}.{:02}", cents / 100, cents % 100);
    if let Some(c) = currency {
        s.push(' ');
        s.push_str(c);
    }
    s
}

/// The question as shown: a headline, then each fact the decision receipt
/// records, one per line, every agent-supplied value made visible and
/// bounded.
fn question_text(req: &ApprovalRequest, left: Duration) -> String {
    let v = |text: &str| visible_inline(text, MAX_FACT_CHARS);
    let a = &req.action;
    let kind = serde_json::to_value(a.kind)
        .ok()
        .and_then(|k| k.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut facts: Vec<(&str, String)> = vec![
        ("type", kind),
        (
            "request",
            format!("{} {}{}", v(&a.method), v(&a.host), v(&a.path)),
        ),
    ];
    // Data can ride in the query as well as the body: shown, not only the path.
    if let Some(q) = &req.query {
        facts.push(("query", v(q)));
    }
    if let Some(cents) = a.amount_cents {
        facts.push(("amount", v(&amount(cents, a.currency.as_deref()))));
    } else if let Some(c) = &a.currency {
        facts.push(("currency", v(c)));
    }
    if let Some(m) = &a.merchant {
        facts.push(("merchant", v(m)));
    }
    if !a.recipients.is_empty() {
        let all: Vec<String> = a.recipients.iter().map(|r| v(r)).collect();
        facts.push(("recipients", all.join(", ")));
    }
    if let Some(s) = &a.subject {
        facts.push(("subject", v(s)));
    }
    if let Some(c) = &a.credential {
        facts.push(("credential", v(c)));
    }
    if let Some(micro) = a.cost_micro_usd {
        facts.push((
            "cost",
            format!(
                "${}.{:06} (estimated)",
                micro / 1_000_000,
                micro % 1_000_000
            ),
        ));
    }
    facts.push(("reason", v(&req.reason)));
    facts.push(("receipt", format!("decision #{}", req.decision_seq)));
    let mut text = format!(
        "\n● approval {} · #{}\n",
        visible_inline(&req.summary(), MAX_FACT_CHARS),
        req.id
    );
    for (name, value) in facts {
        text.push_str(&format!("  {name:<11}{value}\n"));
    }
    // Whole seconds, rounded up: "0 s" only when nothing is left.
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    text.push_str(&format!("  approve? [y/N] ({secs} s) "));
    text
}

/// How long the gate still waits for `req`: its timeout counts from when
/// it was asked, and a question may have waited behind others (the whole
/// timeout if `asked_at` does not read, which our own never fails to).
fn time_left(req: &ApprovalRequest, now: SystemTime) -> Duration {
    match humantime::parse_rfc3339(&req.asked_at) {
        Ok(asked) => (asked + req.timeout)
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
        Err(_) => req.timeout,
    }
}

async fn prompt_loop(
    mut questions: mpsc::UnboundedReceiver<Question>,
    mut lines: mpsc::UnboundedReceiver<(String, Instant)>,
    out: impl Write + Send + 'static,
    screen: Screen,
    settle: Duration,
) {
    let out = TtyOut::new(out);
    // Whether the last question on screen went away without the operator's
    // answer: the next one must settle before a line answers it.
    let mut replaced = false;
    while let Some((req, reply)) = questions.recv().await {
        if reply.is_closed() {
            continue;
        }
        // Nothing else reaches the screen until the answer line is out.
        let hold = screen.hold();
        let shown = Instant::now();
        let settled = if replaced { shown + settle } else { shown };
        let left = time_left(&req, SystemTime::now());
        // The gate's timeout ends the question first (receipted as a
        // timeout); this deadline is only the prompt's backstop, so it
        // lies a little after the gate's (which `asked_at` precedes).
        let deadline = tokio::time::Instant::now() + left + BACKSTOP;
        if replaced {
            out.say("\n  (the question before this one went away unanswered: this is another)");
        }
        out.say(question_text(&req, left));
        let answer = loop {
            tokio::select! {
                line = lines.recv() => match line {
                    None => {
                        out.say("\n  (no terminal input: denied)\n");
                        // Input is gone for good: deny this and all later questions.
                        return;
                    }
                    Some((_, at)) if at < shown => continue,
                    Some((_, at)) if at < settled => {
                        out.say(
                            "\n  (ignored: typed as the question changed; answer again) \
                             approve? [y/N] ",
                        );
                        continue;
                    }
                    Some((line, _)) => {
                        let yes = matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
                        break Ok(ApprovalAnswer::new(yes, "terminal"));
                    }
                },
                // Answered in the web UI, or the gate stopped waiting: the
                // decision says which.
                _ = reply.closed() => break Err(reply.not_taken()),
                _ = tokio::time::sleep_until(deadline) => break Err(None),
            }
        };
        replaced = answer.is_err();
        match answer {
            // Taken only if nothing filled the decision first; otherwise
            // the operator is told what did.
            Ok(a) => match reply.answer(a.clone()) {
                Ok(()) => {
                    out.say_and_wait(format!(
                        "  → {}\n",
                        if a.approved { "approved" } else { "denied" }
                    ))
                    .await;
                }
                Err(why) => {
                    out.say_and_wait(format!("  → not taken: {}\n", closed_text(&why)))
                        .await;
                }
            },
            Err(Some(why)) => {
                out.say_and_wait(format!("\n  ({})\n", closed_text(&why)))
                    .await;
            }
            Err(None) => {
                out.say_and_wait(format!("\n  ({NO_ANSWER_IN_TIME})\n"))
                    .await;
            }
        }
        drop(hold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::test_terminal::{Recorded, Stalled};
    use enforce::{ask_and_wait, ApprovalOutcome};
    use std::time::Duration;
    use test_support::purchase_question as request;

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
        let broker = TerminalBroker::open(&slave_path, Screen::stdio()).expect("open tty");
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
        // The gate's timeout withdraws it, or the prompt's own runs out.
        wait_for(&mut screen_rx, "\n  (no ").await;
    }

    #[tokio::test]
    async fn terminal_broker_denies_when_input_ends() {
        let broker = TerminalBroker::with_io(
            std::io::Cursor::new(Vec::<u8>::new()),
            std::io::sink(),
            Screen::stdio(),
        );
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

    async fn until(term: &Recorded, needle: &str) -> String {
        for _ in 0..500 {
            let text = term.text();
            if text.contains(needle) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never saw {needle:?} in {:?}", term.text());
    }

    /// A terminal broker on a pipe: what it prints lands in the returned
    /// `Recorded`, what is written to the returned file is what the operator
    /// types.
    fn typed_terminal(settle: Duration) -> (Recorded, Screen, std::fs::File, TerminalBroker) {
        let term = Recorded::default();
        let screen =
            Screen::with_writers(Box::new(term.clone()), Box::new(term.clone()), [false; 2]);
        let (input, keyboard) = nix::unistd::pipe().expect("pipe");
        let broker = TerminalBroker::with_io_settle(
            std::io::BufReader::new(std::fs::File::from(input)),
            term.clone(),
            screen.clone(),
            settle,
        );
        (term, screen, std::fs::File::from(keyboard), broker)
    }

    /// An agent that prints cursor movements while a purchase waits for
    /// approval: its output stays off the screen until the answer, then
    /// shows with the escapes made visible and marked as the agent's; the
    /// prompt's facts stay as the decision receipt has them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agent_output_waits_during_a_prompt_and_cannot_redraw_it() {
        use crate::session::console::{Console, DEFAULT_CONSOLE_MAX};
        let (term, screen, mut keyboard, broker) = typed_terminal(SETTLE);
        let console = Console::with_log(
            Box::new(std::io::sink()),
            DEFAULT_CONSOLE_MAX,
            screen.clone(),
        );
        console.write(false, b"booking the flight\n");
        console.flush();
        assert_eq!(term.text(), "agent| booking the flight\n");

        let t = Duration::from_secs(30);
        let asked = tokio::spawn({
            let b = broker.clone();
            async move { ask_and_wait(&b, request(4, t), t).await }
        });
        let prompt = until(&term, "approve? [y/N] (30 s) ").await;
        assert!(prompt.contains("  amount     487.00 USD\n"), "{prompt}");
        assert!(prompt.contains("  merchant   united.com\n"), "{prompt}");
        assert!(prompt.contains("  receipt    decision #3\n"), "{prompt}");

        // Up two lines, clear, write a cheaper amount over the prompt's.
        console.write(false, b"\x1b[s\x1b[8A\x1b[2K  amount     5.00 USD\x1b[u");
        console.write(true, b"\x1b]0;title\x07err line\n");
        console.flush();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            term.text(),
            prompt,
            "nothing reaches the screen while the prompt is up"
        );
        assert!(!asked.is_finished());

        std::io::Write::write_all(&mut keyboard, b"y\n").expect("type");
        match asked.await.expect("join") {
            ApprovalOutcome::Answered(a) => assert!(a.approved),
            other => panic!("{other:?}"),
        }
        let after = until(&term, "err line").await;
        assert!(
            !after.contains('\x1b'),
            "no raw escape reached the screen: {after:?}"
        );
        let answer = after.find("→ approved").expect("answer shown");
        let moved = after
            .find("agent| \\x1b[s\\x1b[8A\\x1b[2K  amount     5.00 USD\\x1b[u\n")
            .expect("the agent's line, escapes visible");
        let err = after
            .find("agent| \\x1b]0;title\\x07err line\n")
            .expect("stderr line");
        assert!(answer < moved && answer < err, "{after}");
    }

    /// The terminal and the web UI are asked together; the reviewer
    /// approves in the UI. The terminal must not tell its operator the
    /// request was denied (it went upstream), and says who answered. Then
    /// the reviewer denies the next one as the operator types "y": the
    /// operator's "y" is not taken, and the terminal never says approved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_question_answered_elsewhere_is_not_shown_as_denied() {
        use enforce::{ApiBroker, FirstAnswer};
        let (term, _screen, mut keyboard, terminal) = typed_terminal(SETTLE);
        let (api, handle) = ApiBroker::new();
        let both = FirstAnswer::new(vec![
            std::sync::Arc::new(terminal),
            std::sync::Arc::new(api),
        ]);
        let t = Duration::from_secs(30);
        let asked = tokio::spawn({
            let both = both.clone();
            async move { ask_and_wait(&both, request(5, t), t).await }
        });
        until(&term, "approve? [y/N]").await;
        handle.answer(5, true, "ui").expect("pending in the UI");
        match asked.await.expect("join") {
            ApprovalOutcome::Answered(a) => assert!(a.approved && a.approver == "ui"),
            other => panic!("{other:?}"),
        }
        let shown = until(&term, "(answered elsewhere: approved by ui)").await;
        assert!(!shown.contains("denied"), "{shown}");

        let asked = tokio::spawn(async move { ask_and_wait(&both, request(6, t), t).await });
        until(&term, "$487.00 · #6").await;
        handle.answer(6, false, "ui").expect("pending in the UI");
        std::io::Write::write_all(&mut keyboard, b"y\n").expect("type");
        match asked.await.expect("join") {
            ApprovalOutcome::Answered(a) => assert!(!a.approved && a.approver == "ui"),
            other => panic!("{other:?}"),
        }
        let shown = until(&term, "answered elsewhere: denied by ui").await;
        assert!(!shown.contains("→ approved"), "{shown}");
    }

    /// A terminal paused with Ctrl-S takes nothing: the prompt's writes
    /// must not hold the session's runtime (here one thread, as blocking
    /// there shows at once), so a question answered in the UI still ends,
    /// the next one is asked, and the runtime shuts down.
    #[test]
    fn a_paused_terminal_holds_up_neither_the_runtime_nor_answers_from_elsewhere() {
        use enforce::{ApiBroker, FirstAnswer};
        let paused = Stalled::default();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let out = paused.clone();
        let (input, keyboard) = nix::unistd::pipe().expect("pipe");
        let runner = std::thread::spawn(move || {
            let finished = done_tx.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let screen = Screen::with_writers(
                    Box::new(Recorded::default()),
                    Box::new(Recorded::default()),
                    [false; 2],
                );
                let terminal = TerminalBroker::with_io(
                    std::io::BufReader::new(std::fs::File::from(input)),
                    out,
                    screen,
                );
                let (api, handle) = ApiBroker::new();
                let both = FirstAnswer::new(vec![
                    std::sync::Arc::new(terminal),
                    std::sync::Arc::new(api),
                ]);
                let t = Duration::from_secs(30);
                for id in [5, 6] {
                    let asked = tokio::spawn({
                        let both = both.clone();
                        async move { ask_and_wait(&both, request(id, t), t).await }
                    });
                    // Answered in the UI once it is pending there.
                    while handle.answer(id, id == 5, "ui").is_err() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let outcome = asked.await.expect("join");
                    let _ = done_tx.send(format!("{id}: {outcome:?}"));
                }
            });
            drop(rt);
            let _ = finished.send("runtime shut down".into());
        });
        let mut seen = Vec::new();
        for _ in 0..3 {
            match done_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        // Let a blocked writer go, so the thread can end either way.
        paused.open();
        drop(keyboard);
        let _ = runner.join();
        assert_eq!(seen.len(), 3, "held up by the paused terminal: {seen:?}");
        assert!(
            seen[0].starts_with("5: Answered") && seen[0].contains("approved: true"),
            "{seen:?}"
        );
        assert!(
            seen[1].starts_with("6: Answered") && seen[1].contains("approved: false"),
            "{seen:?}"
        );
    }

    /// The agent withdraws a harmless question (its client goes away)
    /// just as the operator answers it: the risky one queued behind it
    /// takes the screen, and the "y" meant for the first must not approve
    /// it. (The settle time is long here so the test cannot be too slow
    /// for it; the question's own timeout ends it instead.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_typed_as_a_withdrawn_question_is_replaced_is_not_taken() {
        let (term, _screen, mut keyboard, broker) = typed_terminal(Duration::from_secs(60));
        let long = Duration::from_secs(60);
        let mut harmless = request(1, long);
        harmless.action.amount_cents = Some(40_100);
        let (withdrawn, answerer) = enforce::Decision::new();
        broker.ask(harmless, answerer);
        until(&term, "$401.00 · #1").await;
        let short = Duration::from_secs(3);
        let risky = tokio::spawn({
            let b = broker.clone();
            async move { ask_and_wait(&b, request(2, short), short).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(withdrawn);
        until(&term, "$487.00 · #2").await;
        std::io::Write::write_all(&mut keyboard, b"y\n").expect("type");
        assert_eq!(risky.await.expect("join"), ApprovalOutcome::TimedOut);
        let shown = term.text();
        assert!(shown.contains("ignored"), "{shown}");
        assert!(!shown.contains("→ approved"), "{shown}");
    }

    /// A question that waited behind others (or for the terminal) shows
    /// the time the gate still waits, not its whole timeout: the gate
    /// withdraws it when its time is up, whatever the prompt said.
    #[tokio::test]
    async fn the_prompt_shows_the_time_the_gate_still_waits() {
        let (term, _screen, _keyboard, broker) = typed_terminal(SETTLE);
        let mut req = request(1, Duration::from_secs(120));
        req.asked_at =
            receipts::format_time(std::time::SystemTime::now() - Duration::from_secs(100));
        let (_decision, answerer) = enforce::Decision::new();
        broker.ask(req, answerer);
        until(&term, "approve? [y/N] (").await;
        let shown = until(&term, " s) ").await;
        assert!(
            shown.contains("(20 s) ") || shown.contains("(19 s) "),
            "{shown}"
        );
    }

    #[test]
    fn hostile_facts_are_shown_visible_and_bounded() {
        let mut req = request(9, Duration::from_secs(5));
        req.action.path = "/buy\x1b[2J\x1b[H".into();
        req.action.recipients = vec![
            "a@x.com\u{202e}moc.live@".into(),
            "b@y.com\nreason ok".into(),
        ];
        req.action.subject = Some("s".repeat(500));
        req.query = Some("q=exfil\x1b[1A".into());
        let text = question_text(&req, Duration::from_secs(5));
        assert!(
            !text.contains('\x1b') && !text.contains('\u{202e}'),
            "{text:?}"
        );
        assert!(text.contains("/buy\\x1b[2J\\x1b[H"), "{text}");
        assert!(
            text.contains("  recipients a@x.com\\u{202e}moc.live@, b@y.com\\nreason ok\n"),
            "{text}"
        );
        assert!(text.contains("… (300 more characters)"), "{text}");
        assert!(text.contains("  query      q=exfil\\x1b[1A\n"), "{text}");
        // Our own line breaks only: one per fact, the headline and the question.
        assert_eq!(text.matches('\n').count(), 11, "{text}");
    }
}
