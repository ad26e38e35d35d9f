//! The sandboxed command's output: shown on the operator's terminal line by
//! line, made visible and marked as the agent's (`screen.rs`), and kept raw
//! in the bundle's `console.log` up to its cap (`--console-max`), past which
//! it is counted, not kept. The netns backend pumps the sandbox's pipes; the
//! kvm backend writes what the guest's control channel delivers.
//!
//! `console.log` keeps the bytes as the command wrote them, escapes and
//! all: it is a file, read with tools that choose how to show it (`less`
//! shows escapes as `ESC[...` unless told `-R`), and an auditor needs what
//! was actually written.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::screen::{visible, Screen, Stream};
use crate::bundle::SessionBounds;

/// Default `--console-max`.
pub const DEFAULT_CONSOLE_MAX: u64 = 64 << 20;
/// A line longer than this is shown in pieces (each marked).
const MAX_LINE_BYTES: usize = 4096;
/// A partial line (no newline yet) is shown after this long without more
/// output, so a prompt-less progress message does not wait forever, while a
/// line that a pipe delivered in two reads is still shown whole.
const PARTIAL_AFTER: Duration = Duration::from_millis(100);

/// How much output the command produced and how much `console.log` kept.
#[derive(Debug, Default)]
pub struct ConsoleTotals {
    /// Every byte the command wrote to stdout and stderr.
    pub bytes: AtomicU64,
    /// The bytes `console.log` holds (at most its cap).
    pub kept: AtomicU64,
    pub truncated: AtomicBool,
}

enum Msg {
    Output(Stream, Vec<u8>),
    /// Everything sent before is on screen and in the log: answer.
    Flush(mpsc::Sender<()>),
}

/// Cloneable handle; the worker thread ends when the last one drops.
#[derive(Clone)]
pub struct Console {
    tx: mpsc::Sender<Msg>,
    totals: Arc<ConsoleTotals>,
    max_bytes: u64,
}

impl Console {
    /// Creates `console.log` at `path` (kept up to `max_bytes`) and starts
    /// showing output on `screen`.
    pub fn create(path: &Path, max_bytes: u64, screen: Screen) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self::with_log(Box::new(file), max_bytes, screen))
    }

    /// Same, over any writer for the log (tests).
    pub fn with_log(log: Box<dyn Write + Send>, max_bytes: u64, screen: Screen) -> Self {
        let (tx, rx) = mpsc::channel();
        let totals = Arc::new(ConsoleTotals::default());
        let worker = Worker {
            log: CappedLog {
                out: log,
                cap: max_bytes,
                totals: totals.clone(),
            },
            screen,
            lines: [LineBuffer::default(), LineBuffer::default()],
        };
        if let Err(err) = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || worker.run(rx))
        {
            tracing::error!("console thread: {err}");
        }
        Console {
            tx,
            totals,
            max_bytes,
        }
    }

    /// Copies both streams until they close; the returned future ends when
    /// both have (after the sandbox exited) and their output is shown.
    pub fn pump(
        &self,
        stdout: Option<File>,
        stderr: Option<File>,
    ) -> impl std::future::Future<Output = ()> {
        let out = stdout.map(|f| self.spawn_copy(f, Stream::Out));
        let err = stderr.map(|f| self.spawn_copy(f, Stream::Err));
        let console = self.clone();
        async move {
            for handle in [out, err].into_iter().flatten() {
                let _ = handle.await;
            }
            let _ = tokio::task::spawn_blocking(move || console.flush()).await;
        }
    }

    /// Shows `bytes` (part of the command's stdout or stderr) and appends
    /// them to the log.
    pub fn write(&self, is_stderr: bool, bytes: &[u8]) {
        let stream = if is_stderr { Stream::Err } else { Stream::Out };
        let _ = self.tx.send(Msg::Output(stream, bytes.to_vec()));
    }

    /// Blocks until everything written so far is on screen (a partial last
    /// line too) and in the log.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// What the command wrote, and what `console.log` kept of it.
    pub fn totals(&self) -> (u64, u64, bool) {
        (
            self.totals.bytes.load(Ordering::Relaxed),
            self.totals.kept.load(Ordering::Relaxed),
            self.totals.truncated.load(Ordering::Relaxed),
        )
    }

    /// Writes what the command wrote, and what the log kept, into the
    /// session's bounds (after [`flush`](Self::flush)).
    pub fn record(&self, bounds: &mut SessionBounds) {
        let (bytes, kept, truncated) = self.totals();
        bounds.console_bytes = bytes;
        bounds.console_kept_bytes = kept;
        if truncated {
            bounds.hit.push(format!(
                "console.log kept {kept} of {bytes} bytes of output (--console-max {})",
                self.max_bytes
            ));
        }
    }

    fn spawn_copy(&self, mut from: File, stream: Stream) -> tokio::task::JoinHandle<()> {
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if tx.send(Msg::Output(stream, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        })
    }
}

/// The log file, raw, up to its cap; then a marker and counting only.
struct CappedLog {
    out: Box<dyn Write + Send>,
    cap: u64,
    totals: Arc<ConsoleTotals>,
}

impl CappedLog {
    fn append(&mut self, bytes: &[u8]) {
        let t = &self.totals;
        t.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let kept = t.kept.load(Ordering::Relaxed);
        let room = self.cap.saturating_sub(kept);
        let take = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        // A failing log (disk full) must not stop the session or the screen.
        if take > 0 && self.out.write_all(&bytes[..take]).is_ok() {
            t.kept.fetch_add(take as u64, Ordering::Relaxed);
        }
        if take < bytes.len() && !t.truncated.swap(true, Ordering::Relaxed) {
            let _ = write!(
                self.out,
                "\n[openclaw: console.log reached its cap of {} bytes (--console-max); the rest \
                 of the output is counted, not kept]\n",
                self.cap
            );
        }
    }

    /// The closing count, when output was left out.
    fn close(&mut self) {
        let t = &self.totals;
        if t.truncated.load(Ordering::Relaxed) {
            let all = t.bytes.load(Ordering::Relaxed);
            let kept = t.kept.load(Ordering::Relaxed);
            let _ = writeln!(
                self.out,
                "[openclaw: {} of {all} bytes of output were not kept]",
                all - kept
            );
        }
        let _ = self.out.flush();
    }
}

/// One stream's line in progress, as raw bytes.
#[derive(Default)]
struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Adds `bytes`; returns the complete lines (raw, without newline; a
    /// trailing `\r` of a CRLF dropped), cutting lines over the limit.
    fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                lines.push(line);
                continue;
            }
            self.partial.push(b);
            if self.partial.len() >= MAX_LINE_BYTES {
                lines.push(self.take_whole_chars());
            }
        }
        lines
    }

    /// The partial line so far, up to its last complete UTF-8 character
    /// (the rest stays for the next piece).
    fn take_whole_chars(&mut self) -> Vec<u8> {
        let keep = match std::str::from_utf8(&self.partial) {
            Err(e) if e.error_len().is_none() => self.partial.len() - e.valid_up_to(),
            _ => 0,
        };
        let rest = self.partial.split_off(self.partial.len() - keep);
        std::mem::replace(&mut self.partial, rest)
    }
}

struct Worker {
    log: CappedLog,
    screen: Screen,
    /// Indexed by `Stream as usize`.
    lines: [LineBuffer; 2],
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let pending = self.lines.iter().any(|l| !l.partial.is_empty());
            let msg = if pending {
                match rx.recv_timeout(PARTIAL_AFTER) {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => {
                        self.show_partials();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            };
            match msg {
                Msg::Output(stream, bytes) => {
                    self.log.append(&bytes);
                    for line in self.lines[stream as usize].push(&bytes) {
                        self.screen.agent_line(stream, &visible(&line));
                    }
                }
                Msg::Flush(done) => {
                    self.show_partials();
                    let _ = self.log.out.flush();
                    let _ = done.send(());
                }
            }
        }
        self.show_partials();
        self.log.close();
    }

    fn show_partials(&mut self) {
        for stream in [Stream::Out, Stream::Err] {
            let buffer = &mut self.lines[stream as usize];
            if !buffer.partial.is_empty() {
                let piece = std::mem::take(&mut buffer.partial);
                self.screen.agent_line(stream, &visible(&piece));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Shared {
        fn bytes(&self) -> Vec<u8> {
            self.0.lock().expect("lock").clone()
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.bytes()).into_owned()
        }
    }

    fn console(max: u64) -> (Console, Shared, Shared) {
        let term = Shared::default();
        let log = Shared::default();
        let screen =
            Screen::with_writers(Box::new(term.clone()), Box::new(term.clone()), [false; 2]);
        (
            Console::with_log(Box::new(log.clone()), max, screen),
            term,
            log,
        )
    }

    #[test]
    fn lines_are_marked_and_escapes_visible_while_the_log_keeps_raw_bytes() {
        let (c, term, log) = console(DEFAULT_CONSOLE_MAX);
        c.write(false, b"hello\r\nwor");
        c.write(false, "ld \x1b[1A\x1b[2K\u{202e}\n".as_bytes());
        c.write(true, b"oops \x9b\n");
        c.write(false, b"no newline at the end");
        c.flush();
        assert_eq!(
            term.text(),
            "agent| hello\nagent| world \\x1b[1A\\x1b[2K\\u{202e}\nagent| oops \\x9b\n\
             agent| no newline at the end\n"
        );
        let mut raw = b"hello\r\nworld \x1b[1A\x1b[2K".to_vec();
        raw.extend_from_slice("\u{202e}\n".as_bytes());
        raw.extend_from_slice(b"oops \x9b\nno newline at the end");
        assert_eq!(log.bytes(), raw);
        assert_eq!(c.totals(), (raw.len() as u64, raw.len() as u64, false));
    }

    /// A terminal that takes nothing until opened (paused with Ctrl-S, a
    /// pager not reading, a slow remote terminal).
    #[derive(Clone, Default)]
    struct Stalled(Arc<(Mutex<bool>, std::sync::Condvar)>);
    impl Stalled {
        fn open(&self) {
            *self.0 .0.lock().expect("lock") = true;
            self.0 .1.notify_all();
        }
    }
    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.0;
            let mut open = open.lock().expect("lock");
            while !*open {
                open = cv.wait(open).expect("wait");
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The command's output reaches the console faster than a terminal
    /// shows it (a guest over virtio-console, `yes` over a pipe): while the
    /// terminal lags, what is not yet shown waits in the console's queue,
    /// which has no bound, so the supervisor's memory grows with the
    /// command's output. A bound needs either backpressure (the netns
    /// pumps and the kvm control channel, whose own queue from the vCPU
    /// thread is unbounded too, waiting; the vCPU must still stop on
    /// kill) or dropping for the screen while the log keeps up: a design
    /// choice, left to the lead.
    #[test]
    #[ignore = "gap: output piles up in memory while the terminal lags (no bound on the console's queue)"]
    fn a_stalled_terminal_does_not_let_output_pile_up_in_memory() {
        let term = Stalled::default();
        let screen =
            Screen::with_writers(Box::new(term.clone()), Box::new(term.clone()), [false; 2]);
        let c = Console::with_log(Box::new(std::io::sink()), DEFAULT_CONSOLE_MAX, screen);
        let (done_tx, done_rx) = mpsc::channel();
        let producer = {
            let c = c.clone();
            std::thread::spawn(move || {
                let chunk = vec![b'y'; 1 << 20];
                for _ in 0..64 {
                    c.write(false, &chunk);
                }
                let _ = done_tx.send(());
            })
        };
        // All 64 MiB taken while the terminal took none is 64 MiB held.
        let all_taken = done_rx.recv_timeout(Duration::from_secs(5)).is_ok();
        term.open();
        producer.join().expect("producer");
        assert!(
            !all_taken,
            "64 MiB of output queued in memory while the terminal took nothing"
        );
    }

    #[test]
    fn long_lines_are_cut_at_character_boundaries() {
        let (c, term, _) = console(DEFAULT_CONSOLE_MAX);
        let mut line = "a".repeat(MAX_LINE_BYTES - 1).into_bytes();
        line.extend_from_slice("é and more\n".as_bytes());
        c.write(false, &line);
        c.flush();
        let text = term.text();
        let shown: Vec<&str> = text.lines().collect();
        assert_eq!(shown.len(), 2, "{text}");
        assert!(shown[0].ends_with('a') && !shown[0].contains('\\'));
        assert_eq!(shown[1], "agent| é and more");
    }

    #[test]
    fn the_log_stops_at_its_cap_with_a_marker_and_counts_the_rest() {
        let (c, term, log) = console(100);
        for _ in 0..10 {
            c.write(false, &[b'x'; 49]);
            c.write(false, b"\n");
        }
        drop(c);
        // The worker ends once the last handle is gone; wait for its close.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !log.text().contains("were not kept") {
            assert!(std::time::Instant::now() < deadline, "{}", log.text());
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = log.text();
        assert!(text.starts_with(&format!("{}\n{}\n", "x".repeat(49), "x".repeat(49))));
        assert!(
            text.contains("reached its cap of 100 bytes (--console-max)"),
            "{text}"
        );
        assert!(
            text.ends_with("[openclaw: 400 of 500 bytes of output were not kept]\n"),
            "{text}"
        );
        // The screen still showed every line.
        assert_eq!(term.text().lines().count(), 10);
    }
}
