//! The terminal approval prompt of `openclaw run`: `approve? [y/N]` on the
//! operator's terminal, one question at a time, with the time left.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use enforce::{ApprovalAnswer, ApprovalBroker, ApprovalRequest};
use tokio::sync::{mpsc, oneshot};

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

#[cfg(test)]
mod tests {
    use super::*;
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
