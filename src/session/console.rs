//! The sandboxed command's output: shown on the operator's terminal line by
//! line, made visible and marked as the agent's (`screen.rs`), and kept raw
//! in the bundle's `console.log` up to its cap (`--console-max`), past which
//! it is counted, not kept. The netns backend pumps the sandbox's pipes; the
//! kvm backend writes what the guest's control channel delivers.
//!
//! Neither waits for the terminal: the log is written as output arrives,
//! and what waits for the screen is bounded ([`SCREEN_QUEUE_MAX`]); past it
//! the screen drops output and later says how much, with the log's path.
//!
//! `console.log` keeps the bytes as the command wrote them, escapes and
//! all: it is a file, read with tools that choose how to show it (`less`
//! shows escapes as `ESC[...` unless told `-R`), and an auditor needs what
//! was actually written.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};

use super::screen::{visible, visible_inline, Screen, Stream, STALL_LIMIT};
use crate::bundle::SessionBounds;

/// Default `--console-max`.
pub const DEFAULT_CONSOLE_MAX: u64 = 64 << 20;
/// The most output waiting for the terminal (bytes plus [`ENTRY_CHARGE`]
/// per queued piece; a piece's buffer may hold up to twice its bytes, so
/// at most about 2 MiB of memory). Past it output is not shown, only
/// counted and said; `console.log` is written before this queue and keeps
/// it all.
const SCREEN_QUEUE_MAX: usize = 1 << 20;
/// What one queued piece costs beyond its bytes, so a flood of one-byte
/// writes alternating stdout and stderr is bounded too.
const ENTRY_CHARGE: usize = 64;
/// Consecutive writes to one stream share a queued piece up to this size.
const PIECE_BYTES: usize = 64 << 10;
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
    /// Bytes lost before they reached the console (the kvm control queue
    /// was full), so neither `console.log` nor the screen has them.
    pub lost: AtomicU64,
}

/// Cloneable handle. The log is written by whoever calls
/// [`write`](Console::write), at once; the screen is fed by a worker thread
/// from a bounded queue, so a terminal that lags (Ctrl-S, a pager, a slow
/// ssh) never holds up the command or the log, and never makes the
/// supervisor hold more than [`SCREEN_QUEUE_MAX`].
#[derive(Clone)]
pub struct Console {
    shared: Arc<Shared>,
}

/// What every handle shares; dropping the last one closes the log and lets
/// the worker finish what is queued.
struct Shared {
    log: Mutex<CappedLog>,
    queue: Arc<ScreenQueue>,
    screen: Screen,
    totals: Arc<ConsoleTotals>,
    max_bytes: u64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        lock(&self.log).close();
        self.queue.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Console {
    /// Creates `console.log` at `path` (kept up to `max_bytes`) and starts
    /// showing output on `screen`.
    pub fn create(path: &Path, max_bytes: u64, screen: Screen) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self::start(Box::new(file), Some(path), max_bytes, screen))
    }

    /// Same, over any writer for the log.
    #[cfg(test)]
    pub fn with_log(log: Box<dyn Write + Send>, max_bytes: u64, screen: Screen) -> Self {
        Self::start(log, None, max_bytes, screen)
    }

    fn start(
        log: Box<dyn Write + Send>,
        path: Option<&Path>,
        max_bytes: u64,
        screen: Screen,
    ) -> Self {
        let totals = Arc::new(ConsoleTotals::default());
        let queue = Arc::new(ScreenQueue::default());
        let worker = Worker {
            queue: queue.clone(),
            screen: screen.clone(),
            lines: [LineBuffer::default(), LineBuffer::default()],
            log_path: path.map(Path::to_path_buf),
            totals: totals.clone(),
        };
        if let Err(err) = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || worker.run())
        {
            // Nothing would ever be shown: the log still keeps it all.
            tracing::error!("console thread: {err}");
            queue.close();
        }
        Console {
            shared: Arc::new(Shared {
                log: Mutex::new(CappedLog {
                    out: log,
                    cap: max_bytes,
                    totals: totals.clone(),
                }),
                queue,
                screen,
                totals,
                max_bytes,
            }),
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

    /// Appends `bytes` (part of the command's stdout or stderr) to the log
    /// and queues them for the screen. Never waits for the terminal.
    pub fn write(&self, is_stderr: bool, bytes: &[u8]) {
        let stream = if is_stderr { Stream::Err } else { Stream::Out };
        self.output(stream, bytes);
    }

    fn output(&self, stream: Stream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // The log first: what the screen drops is still in it.
        lock(&self.shared.log).append(bytes);
        self.shared.queue.push(stream, bytes);
    }

    /// `bytes` of the command's output were lost before they reached the
    /// console (the kvm control queue was full): counted, and said in the
    /// log and on the screen where the gap is.
    pub fn lost(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let t = &self.shared.totals;
        t.bytes.fetch_add(bytes, Ordering::Relaxed);
        t.lost.fetch_add(bytes, Ordering::Relaxed);
        let note = format!(
            "[openclaw: {bytes} bytes of output were lost: the supervisor fell behind reading \
             the microVM's control channel]"
        );
        lock(&self.shared.log).note(&note);
        self.shared.queue.note(note);
    }

    /// Blocks until everything written so far is in the log and on screen
    /// (a partial last line too), or until the terminal took nothing for
    /// [`STALL_LIMIT`]: a paused terminal or a pipe nobody reads must not
    /// keep the session from ending (the log has it all).
    pub fn flush(&self) {
        let _ = lock(&self.shared.log).out.flush();
        let (tx, rx) = mpsc::channel();
        if self.shared.queue.flush(tx) {
            let screen = &self.shared.screen;
            let mut seen = screen.progress();
            loop {
                match rx.recv_timeout(STALL_LIMIT) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let now = screen.progress();
                        if now == seen {
                            tracing::warn!("the terminal is not taking output; not waiting for it");
                            return;
                        }
                        seen = now;
                    }
                }
            }
        }
        if !self.shared.screen.drain() {
            tracing::warn!("the terminal is not taking output; not waiting for it");
        }
    }

    /// What the command wrote, and what `console.log` kept of it.
    pub fn totals(&self) -> (u64, u64, bool) {
        let t = &self.shared.totals;
        (
            t.bytes.load(Ordering::Relaxed),
            t.kept.load(Ordering::Relaxed),
            t.truncated.load(Ordering::Relaxed),
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
                self.shared.max_bytes
            ));
        }
        let lost = self.shared.totals.lost.load(Ordering::Relaxed);
        if lost > 0 {
            bounds.hit.push(format!(
                "{lost} bytes of output were lost before console.log (the microVM's control \
                 queue was full)"
            ));
        }
    }

    /// What waits for the terminal now, as charged against
    /// [`SCREEN_QUEUE_MAX`] (tests).
    #[cfg(test)]
    fn screen_backlog(&self) -> usize {
        lock(&self.shared.queue.state).charged
    }

    fn spawn_copy(&self, mut from: File, stream: Stream) -> tokio::task::JoinHandle<()> {
        let console = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                console.output(stream, &buf[..n]);
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

    /// One of our own lines, while under the cap.
    fn note(&mut self, text: &str) {
        if !self.totals.truncated.load(Ordering::Relaxed) {
            let _ = writeln!(self.out, "\n{text}");
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

/// What waits for the terminal, in order.
enum Entry {
    Output(Stream, Vec<u8>),
    /// This many bytes were not queued (the queue was full) here.
    NotShown(u64),
    /// One of our own lines.
    Note(String),
    /// Everything before is on screen: answer.
    Flush(mpsc::Sender<()>),
}

impl Entry {
    fn charge(&self) -> usize {
        match self {
            Entry::Output(_, bytes) => bytes.len() + ENTRY_CHARGE,
            Entry::NotShown(_) | Entry::Flush(_) => ENTRY_CHARGE,
            Entry::Note(text) => text.len() + ENTRY_CHARGE,
        }
    }
}

/// The bounded queue from the writers to the screen worker. Writers never
/// wait on it beyond its lock, which the worker never holds while writing
/// to the terminal.
#[derive(Default)]
struct ScreenQueue {
    state: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    entries: VecDeque<Entry>,
    /// Invariant: the sum of the entries' charges; at most
    /// [`SCREEN_QUEUE_MAX`], plus one `NotShown` and one `Flush` entry per
    /// caller waiting in [`Console::flush`] (those are never dropped).
    charged: usize,
    /// Output dropped since the last `NotShown` entry.
    dropped: u64,
    /// No more writers (or no worker): nothing more is queued.
    closed: bool,
}

impl Pending {
    fn push(&mut self, entry: Entry) {
        self.charged += entry.charge();
        self.entries.push_back(entry);
    }

    /// Queues the pending count of dropped output, if any.
    fn say_dropped(&mut self) {
        if self.dropped > 0 {
            let n = std::mem::take(&mut self.dropped);
            self.push(Entry::NotShown(n));
        }
    }
}

impl ScreenQueue {
    fn push(&self, stream: Stream, bytes: &[u8]) {
        let mut q = lock(&self.state);
        if q.closed {
            return;
        }
        let joins = matches!(q.entries.back(), Some(Entry::Output(s, b))
            if *s == stream && b.len() + bytes.len() <= PIECE_BYTES);
        let cost = match (q.dropped > 0, joins) {
            // The count goes first, and then this cannot join.
            (true, _) => bytes.len() + 2 * ENTRY_CHARGE,
            (false, true) => bytes.len(),
            (false, false) => bytes.len() + ENTRY_CHARGE,
        };
        if q.charged + cost > SCREEN_QUEUE_MAX {
            q.dropped += bytes.len() as u64;
            return;
        }
        q.say_dropped();
        match q.entries.back_mut() {
            Some(Entry::Output(s, b)) if *s == stream && b.len() + bytes.len() <= PIECE_BYTES => {
                b.extend_from_slice(bytes);
                q.charged += bytes.len();
            }
            _ => q.push(Entry::Output(stream, bytes.to_vec())),
        }
        drop(q);
        self.wake.notify_one();
    }

    /// One of our own lines, in order with the output around it; within
    /// the bound like output (the log has it too).
    fn note(&self, text: String) {
        let mut q = lock(&self.state);
        if q.closed || q.charged + text.len() + 2 * ENTRY_CHARGE > SCREEN_QUEUE_MAX {
            return;
        }
        q.say_dropped();
        q.push(Entry::Note(text));
        drop(q);
        self.wake.notify_one();
    }

    /// Queues a flush; false when nothing will answer it.
    fn flush(&self, done: mpsc::Sender<()>) -> bool {
        let mut q = lock(&self.state);
        if q.closed {
            return false;
        }
        q.say_dropped();
        q.push(Entry::Flush(done));
        drop(q);
        self.wake.notify_one();
        true
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_all();
    }

    /// The next entry; waits at most `patience` when given. `None` when
    /// closed and drained, or when the wait ran out (`closed` tells which).
    fn next(&self, patience: Option<Duration>) -> (Option<Entry>, bool) {
        let mut q = lock(&self.state);
        loop {
            if let Some(entry) = q.entries.pop_front() {
                q.charged -= entry.charge();
                return (Some(entry), false);
            }
            // Caught up: say what was dropped since the last count.
            if q.dropped > 0 {
                return (Some(Entry::NotShown(std::mem::take(&mut q.dropped))), false);
            }
            if q.closed {
                return (None, true);
            }
            match patience {
                None => q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner()),
                Some(t) => {
                    let (guard, waited) = self
                        .wake
                        .wait_timeout(q, t)
                        .unwrap_or_else(|p| p.into_inner());
                    q = guard;
                    if waited.timed_out() && q.entries.is_empty() && q.dropped == 0 {
                        return (None, q.closed);
                    }
                }
            }
        }
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
    queue: Arc<ScreenQueue>,
    screen: Screen,
    /// Indexed by `Stream as usize`.
    lines: [LineBuffer; 2],
    /// Where the marker for dropped output says the output is.
    log_path: Option<PathBuf>,
    totals: Arc<ConsoleTotals>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let pending = self.lines.iter().any(|l| !l.partial.is_empty());
            let (entry, closed) = self.queue.next(pending.then_some(PARTIAL_AFTER));
            match entry {
                Some(Entry::Output(stream, bytes)) => {
                    for line in self.lines[stream as usize].push(&bytes) {
                        self.screen.agent_line(stream, &visible(&line));
                    }
                }
                Some(Entry::NotShown(bytes)) => {
                    // The line in progress ended where the gap starts.
                    self.show_partials();
                    self.screen
                        .console_line(Stream::Err, &self.not_shown(bytes));
                }
                Some(Entry::Note(text)) => {
                    self.show_partials();
                    self.screen.console_line(Stream::Err, &text);
                }
                Some(Entry::Flush(done)) => {
                    self.show_partials();
                    let _ = done.send(());
                }
                None if closed => break,
                None => self.show_partials(),
            }
        }
        self.show_partials();
    }

    /// The marker for output the terminal was too slow for: a count and
    /// our own path, nothing of the agent's.
    fn not_shown(&self, bytes: u64) -> String {
        let log = match &self.log_path {
            Some(path) => visible_inline(&path.display().to_string(), 400),
            None => "console.log".to_string(),
        };
        let kept = if self.totals.truncated.load(Ordering::Relaxed) {
            format!("{log} keeps the output up to --console-max")
        } else {
            format!("all of it is in {log}")
        };
        format!("[openclaw: {bytes} bytes of output not shown: the terminal fell behind; {kept}]")
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
    use crate::session::test_terminal::{Recorded, Stalled};

    fn console(max: u64) -> (Console, Recorded, Recorded) {
        let term = Recorded::default();
        let log = Recorded::default();
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

    fn stalled_console(log: Box<dyn Write + Send>, max: u64) -> (Console, Stalled) {
        let term = Stalled::default();
        let screen =
            Screen::with_writers(Box::new(term.clone()), Box::new(term.clone()), [false; 2]);
        (Console::with_log(log, max, screen), term)
    }

    /// Writes `chunks` MiB of `y` lines from another thread; returns once
    /// all were taken. A console that made the writer wait for the stalled
    /// terminal fails here instead of hanging the suite.
    fn flood(c: &Console, chunks: usize) {
        let (done_tx, done_rx) = mpsc::channel();
        let producer = {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut chunk = vec![b'y'; 1 << 20];
                for (i, b) in chunk.iter_mut().enumerate() {
                    if i % 64 == 63 {
                        *b = b'\n';
                    }
                }
                for i in 0..chunks {
                    c.write(i % 2 == 1, &chunk);
                }
                let _ = done_tx.send(());
            })
        };
        assert!(
            done_rx.recv_timeout(Duration::from_secs(120)).is_ok(),
            "the writer waited for the stalled terminal"
        );
        producer.join().expect("producer");
    }

    /// The command's output reaches the console faster than a terminal
    /// shows it (a guest over virtio-console, `yes` over a pipe): while the
    /// terminal lags, at most the queue's bound waits for it; the rest is
    /// dropped for the screen, never waited for (the netns pumps and the
    /// kvm control channel must keep going), and said with a count once
    /// the terminal catches up.
    #[test]
    fn a_stalled_terminal_does_not_let_output_pile_up_in_memory() {
        let (c, term) = stalled_console(Box::new(std::io::sink()), DEFAULT_CONSOLE_MAX);
        flood(&c, 64);
        let backlog = c.screen_backlog();
        assert!(
            backlog <= SCREEN_QUEUE_MAX,
            "{backlog} bytes wait for a terminal that took nothing"
        );
        term.open();
        c.flush();
        let text = term.shown.text();
        let not_shown: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("[openclaw: "))
            .map(|l| {
                let n = l.split(' ').next().expect("count");
                n.parse::<u64>().expect("a number")
            })
            .sum();
        let shown = text
            .lines()
            .filter_map(|l| l.strip_prefix("agent| "))
            .map(|l| l.len() as u64 + 1)
            .sum::<u64>();
        assert!(not_shown > 0, "nothing was dropped");
        assert_eq!(shown + not_shown, 64 << 20, "every byte shown or counted");
        assert!(
            text.contains(
                "bytes of output not shown: the terminal fell behind; all of it is in console.log]"
            ),
            "{}",
            &text[text.len().saturating_sub(300)..]
        );
    }

    /// What the screen drops is in `console.log`: the log is written
    /// before the screen's queue, at once, whatever the terminal does.
    #[test]
    fn console_log_has_every_byte_while_the_screen_drops() {
        let log = Recorded::default();
        let (c, term) = stalled_console(Box::new(log.clone()), DEFAULT_CONSOLE_MAX);
        flood(&c, 16);
        // Still stalled: the log already has it all, in order.
        let kept = log.bytes();
        assert_eq!(kept.len(), 16 << 20);
        assert!(kept
            .chunks(64)
            .all(|line| line[..63].iter().all(|&b| b == b'y') && line[63] == b'\n'));
        assert_eq!(c.totals(), (16 << 20, 16 << 20, false));
        term.open();
        c.flush();
        assert!(term.shown.text().contains("bytes of output not shown"));

        // Under a cap the log keeps exactly up to it, and the marker says so.
        let log = Recorded::default();
        let (c, term) = stalled_console(Box::new(log.clone()), 5 << 20);
        flood(&c, 16);
        let kept = log.bytes();
        assert!(kept.starts_with(&log_lines(5 << 20)));
        assert!(String::from_utf8_lossy(&kept[5 << 20..]).contains("reached its cap"));
        assert_eq!(c.totals(), (16 << 20, 5 << 20, true));
        term.open();
        c.flush();
        assert!(term.shown.text().contains(
            "the terminal fell behind; console.log keeps the output up to --console-max]"
        ));
    }

    /// Output the kvm control queue dropped before it reached the console
    /// is counted and said where the gap is, in the log, on screen and in
    /// the session's bounds.
    #[test]
    fn output_lost_before_the_console_is_said_and_counted() {
        let (c, term, log) = console(DEFAULT_CONSOLE_MAX);
        c.write(false, b"before\n");
        c.lost(12345);
        c.write(false, b"after\n");
        c.flush();
        let note = "[openclaw: 12345 bytes of output were lost: the supervisor fell behind \
                    reading the microVM's control channel]";
        assert_eq!(log.text(), format!("before\n\n{note}\nafter\n"));
        assert_eq!(
            term.text(),
            format!("agent| before\n{note}\nagent| after\n")
        );
        let mut bounds = SessionBounds::default();
        c.record(&mut bounds);
        assert_eq!(bounds.console_bytes, 12345 + 13);
        assert!(
            bounds
                .hit
                .iter()
                .any(|h| h.starts_with("12345 bytes of output were lost")),
            "{:?}",
            bounds.hit
        );
    }

    fn log_lines(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| if i % 64 == 63 { b'\n' } else { b'y' })
            .collect()
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
        c.flush();
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
