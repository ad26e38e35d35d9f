//! The operator's terminal, shared by the agent's output (`console.rs`), the
//! live monitor and the approval prompt. Agent-controlled text reaches it
//! only made visible ([`visible`], [`visible_inline`]): a control character
//! (other than newline and tab), a C1 control, DEL, a bidi override or
//! isolate, or a byte that is not UTF-8 shows as an escape such as `\x1b`
//! or `\u{202e}`, so the agent cannot move the cursor, recolour, clear or
//! reorder what the operator reads. Each of the agent's lines carries an
//! `agent│ ` mark. While an approval prompt is on screen ([`Screen::hold`])
//! every other line waits, and is shown after the answer. Lines reach the
//! terminal through a writer thread, so a terminal that stops reading
//! stalls only that thread ([`Screen`]).

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most held-back output kept while a prompt is on screen; the rest is
/// counted and said (`console.log` keeps all of the agent's).
const MAX_HELD_BYTES: usize = 1 << 20;

/// Which of our streams a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// Whether `c` must not reach a terminal as itself.
fn must_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'
        // C1 controls: CSI (U+009B) alone moves the cursor on many terminals.
        | '\u{80}'..='\u{9f}'
        // Bidi embeddings, overrides and isolates, and the direction marks:
        // they reorder the text around them ("Trojan Source").
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        | '\u{200e}' | '\u{200f}' | '\u{61c}')
}

fn push_escaped(c: char, out: &mut String) {
    let n = c as u32;
    if n < 0x80 {
        out.push_str(&format!("\\x{n:02x}"));
    } else {
        out.push_str(&format!("\\u{{{n:x}}}"));
    }
}

/// Appends `bytes` to `out` with everything a terminal would act on made
/// visible; newlines too unless `keep_newlines`. Tabs stay.
fn render_into(bytes: &[u8], keep_newlines: bool, out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\n' && keep_newlines || c == '\t' {
                out.push(c);
            } else if c == '\n' {
                out.push_str("\\n");
            } else if must_escape(c) {
                push_escaped(c, out);
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
}

/// One of the agent's lines (without its newline), safe to print.
pub fn visible(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    render_into(bytes, true, &mut out);
    out
}

/// A value shown inside one of our lines (a path, a recipient, a reason):
/// safe to print, newlines included, and at most `max` characters (the rest
/// is counted, so a long value cannot push the prompt off the screen).
pub fn visible_inline(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    render_into(text.as_bytes(), false, &mut out);
    let len = out.chars().count();
    if len > max {
        let cut: String = out.chars().take(max).collect();
        return format!("{cut}… ({} more characters)", len - max);
    }
    out
}

/// JSON text (as serde_json writes it) safe to print: serde_json already
/// escapes C0 controls inside strings, but not DEL, C1 controls or bidi
/// overrides, which a terminal acts on. Those are written as `\uXXXX`
/// escapes (all are in the BMP, and can only occur inside strings), so the
/// JSON means exactly what it did.
pub fn visible_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if u32::from(c) >= 0x7f && must_escape(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// The most of our own lines (and released held lines) waiting for one
/// stream's writer; past it they are dropped, counted and said once the
/// stream takes output again. The console's lines wait for room instead
/// (its own queue is bounded and counts in bytes what it drops). Room for
/// everything a prompt held back, and the note saying what it left out.
const LANE_MAX_BYTES: usize = MAX_HELD_BYTES + (64 << 10);
/// How long [`Screen::drain`] and `Console::flush` wait for a terminal that
/// takes nothing at all before giving up on it (a paused terminal at the
/// session's end; `console.log` and the bundle have everything).
pub const STALL_LIMIT: Duration = Duration::from_secs(3);
/// How long [`Screen::hold`] waits for a line being written to finish
/// before the prompt goes up regardless.
const HOLD_WAIT: Duration = Duration::from_secs(1);

/// The operator's terminal: our stdout and stderr (or any writers, for
/// tests), with the hold the approval prompt takes. Cloneable; all clones
/// share the state.
///
/// Lines are written by a writer thread fed from a bounded queue, and no
/// lock is held while writing: a terminal that stops reading (Ctrl-S, a
/// full pipe) stalls only the writer. The live monitor, the approval
/// prompt and the session's end never wait for it (the session's end
/// waits at most [`STALL_LIMIT`] without progress). Streams that are one
/// terminal share one writer, in the order lines came; streams that go to
/// different places have one each, so a pipe nobody reads on stdout does
/// not keep the monitor's lines from stderr.
#[derive(Clone)]
pub struct Screen {
    shared: Arc<Shared>,
    /// Dropping the last handle lets the writers finish and end.
    _alive: Arc<Alive>,
}

struct Shared {
    state: Mutex<ScreenState>,
    /// Signalled on every change: a line queued or written, a hold ended,
    /// the screen closed.
    changed: Condvar,
}

struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.changed.notify_all();
    }
}

struct ScreenState {
    /// Per stream: whether it is a terminal (the agent mark is dimmed there).
    tty: [bool; 2],
    /// Prompts on screen right now.
    holds: usize,
    /// Lines waiting for the prompt to go: (stream, line with newline).
    held: VecDeque<(Stream, String)>,
    held_bytes: usize,
    dropped_lines: u64,
    /// One per writer: one for both streams, or indexed by `Stream as usize`.
    lanes: Vec<Lane>,
    /// No handle is left: the writers finish their queues and end.
    closed: bool,
}

/// What waits for one stream's writer.
#[derive(Default)]
struct Lane {
    queue: VecDeque<(Stream, String)>,
    queued_bytes: usize,
    /// The writer is writing a line now (without the lock).
    writing: bool,
    /// Lines written so far: progress, for the waits with a stall limit.
    written: u64,
    /// Our own lines dropped because the queue was full, not said yet.
    dropped: u64,
    /// The writer could not start (nothing will ever be written).
    dead: bool,
}

impl Lane {
    fn idle(&self) -> bool {
        self.queue.is_empty() && !self.writing
    }

    fn has_room(&self, len: usize) -> bool {
        self.queued_bytes + len <= LANE_MAX_BYTES
    }

    fn push(&mut self, stream: Stream, line: String) {
        self.queued_bytes += line.len();
        self.queue.push_back((stream, line));
    }

    /// Queues `line`, or counts it when full.
    fn offer(&mut self, stream: Stream, line: String) {
        if self.dead {
            return;
        }
        if self.has_room(line.len()) {
            self.push(stream, line);
        } else {
            self.dropped += 1;
        }
    }
}

impl ScreenState {
    fn show(&mut self, stream: Stream, line: String) {
        if self.holds > 0 {
            if self.held_bytes + line.len() <= MAX_HELD_BYTES {
                self.held_bytes += line.len();
                self.held.push_back((stream, line));
            } else {
                self.dropped_lines += 1;
            }
            return;
        }
        let lane = self.lane(stream);
        self.say_dropped(lane);
        self.lanes[lane].offer(stream, line);
    }

    /// Says on stderr how many lines `lane` dropped, once it has taken
    /// half its queue (so a terminal that takes a line now and then does
    /// not get a count after each).
    fn say_dropped(&mut self, lane: usize) {
        let dropped = &self.lanes[lane];
        if dropped.dropped == 0 || dropped.queued_bytes > LANE_MAX_BYTES / 2 {
            return;
        }
        let note = format!(
            "  ({} lines not shown: the terminal was not taking output; console.log, \
             events.jsonl and the receipts have them)\n",
            dropped.dropped
        );
        let to = self.lane(Stream::Err);
        if self.lanes[to].has_room(note.len()) {
            self.lanes[lane].dropped = 0;
            self.lanes[to].push(Stream::Err, note);
        }
    }

    /// The lane `stream`'s lines go to.
    fn lane(&self, stream: Stream) -> usize {
        if self.lanes.len() == 1 {
            0
        } else {
            stream as usize
        }
    }

    fn release(&mut self) {
        self.holds = self.holds.saturating_sub(1);
        if self.holds > 0 {
            return;
        }
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        for (stream, line) in held {
            self.show(stream, line);
        }
        if self.dropped_lines > 0 {
            let note = format!(
                "  ({} more lines of output came while the prompt was open; console.log has the agent's)\n",
                std::mem::take(&mut self.dropped_lines)
            );
            self.show(Stream::Err, note);
        }
    }

    fn written(&self) -> u64 {
        self.lanes.iter().map(|l| l.written).sum()
    }
}

/// Whether our stdout and stderr are different files (a pipe and a
/// terminal, two pipes); when unknown, taken to be one terminal.
fn stdout_and_stderr_differ() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let identity = |fd: std::os::fd::BorrowedFd<'_>| {
        let meta = std::fs::File::from(fd.try_clone_to_owned().ok()?)
            .metadata()
            .ok()?;
        Some((meta.dev(), meta.ino()))
    };
    match (
        identity(std::io::stdout().as_fd()),
        identity(std::io::stderr().as_fd()),
    ) {
        (Some(out), Some(err)) => out != err,
        _ => false,
    }
}

/// One writer thread's writers, indexed by `Stream as usize`: both, or the
/// one stream it carries.
type Writers = [Option<Box<dyn Write + Send>>; 2];

/// While alive, every line waits (see [`Screen::hold`]).
pub struct Hold {
    screen: Screen,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.screen.shared.lock().release();
        self.screen.shared.changed.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ScreenState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, ScreenState>,
        limit: Duration,
    ) -> MutexGuard<'a, ScreenState> {
        self.changed
            .wait_timeout(guard, limit)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// One lane's writer: takes lines off it while no prompt holds the
    /// screen, and writes each without the lock. `writers` is indexed by
    /// `Stream as usize`; a lane has the writers of the streams it carries.
    fn write_lane(&self, lane: usize, mut writers: Writers) {
        let mut state = self.lock();
        loop {
            if state.holds == 0 {
                if let Some((stream, line)) = state.lanes[lane].queue.pop_front() {
                    let l = &mut state.lanes[lane];
                    l.queued_bytes -= line.len();
                    l.writing = true;
                    drop(state);
                    // A closed terminal must not stop the session.
                    if let Some(out) = writers[stream as usize].as_mut() {
                        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
                    }
                    state = self.lock();
                    let l = &mut state.lanes[lane];
                    l.writing = false;
                    l.written += 1;
                    state.say_dropped(lane);
                    self.changed.notify_all();
                    continue;
                }
            }
            if state.closed && (state.lanes[lane].queue.is_empty() || state.holds > 0) {
                return;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Screen {
    /// Our own stdout and stderr.
    pub fn stdio() -> Self {
        let tty = [
            std::io::stdout().is_terminal(),
            std::io::stderr().is_terminal(),
        ];
        Self::start(
            Box::new(std::io::stdout()),
            Box::new(std::io::stderr()),
            tty,
            !stdout_and_stderr_differ(),
        )
    }

    /// Any two writers, taken to be one terminal (one writer, lines in the
    /// order they came); `tty` says which are terminals (for the dim mark).
    #[cfg(test)]
    pub fn with_writers(
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
        tty: [bool; 2],
    ) -> Self {
        Self::start(out, err, tty, true)
    }

    /// Two writers that go to different places: each has its own writer,
    /// so one that takes nothing does not hold up the other (tests).
    #[cfg(test)]
    pub fn with_separate_writers(
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
        tty: [bool; 2],
    ) -> Self {
        Self::start(out, err, tty, false)
    }

    fn start(
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
        tty: [bool; 2],
        one_terminal: bool,
    ) -> Self {
        let lanes: Vec<(&str, Writers)> = if one_terminal {
            vec![("screen", [Some(out), Some(err)])]
        } else {
            vec![
                ("screen-stdout", [Some(out), None]),
                ("screen-stderr", [None, Some(err)]),
            ]
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(ScreenState {
                tty,
                holds: 0,
                held: VecDeque::new(),
                held_bytes: 0,
                dropped_lines: 0,
                lanes: lanes.iter().map(|_| Lane::default()).collect(),
                closed: false,
            }),
            changed: Condvar::new(),
        });
        for (lane, (name, writers)) in lanes.into_iter().enumerate() {
            let writer = shared.clone();
            if let Err(err) = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || writer.write_lane(lane, writers))
            {
                // Nothing would be shown on it: the bundle still has it all.
                tracing::error!("{name} thread: {err}");
                shared.lock().lanes[lane].dead = true;
            }
        }
        Screen {
            _alive: Arc::new(Alive(shared.clone())),
            shared,
        }
    }

    /// Holds every other line back until the returned guard drops: taken by
    /// the approval prompt for as long as it is on screen. Returns once a
    /// line being written has been written whole, or after [`HOLD_WAIT`]
    /// if the terminal is not taking it (the prompt then goes up anyway).
    pub fn hold(&self) -> Hold {
        let mut state = self.shared.lock();
        state.holds += 1;
        let deadline = Instant::now() + HOLD_WAIT;
        while state.lanes.iter().any(|l| l.writing) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self.shared.wait_timeout(state, deadline - now);
        }
        Hold {
            screen: self.clone(),
        }
    }

    /// One of our own lines (its agent-controlled parts already made
    /// visible). Never waits: past the stream's bound it is counted.
    pub fn line(&self, stream: Stream, text: &str) {
        self.shared.lock().show(stream, format!("{text}\n"));
        self.shared.changed.notify_all();
    }

    /// One of the console's lines: waits for room on its stream (not for
    /// the line to be written), so the console's own bounded queue counts
    /// what the terminal was too slow for. Only the console's worker
    /// thread calls this.
    pub fn console_line(&self, stream: Stream, text: &str) {
        self.wait_for_room(stream, text.len() + 1);
        self.line(stream, text);
    }

    /// One of the agent's lines, already made [`visible`], with its mark;
    /// waits for room like [`console_line`](Self::console_line).
    pub fn agent_line(&self, stream: Stream, rendered: &str) {
        let tty = self.shared.lock().tty[stream as usize];
        let mark = if tty {
            "\x1b[2magent│\x1b[0m "
        } else {
            "agent| "
        };
        self.console_line(stream, &format!("{mark}{rendered}"));
    }

    fn wait_for_room(&self, stream: Stream, len: usize) {
        let mut state = self.shared.lock();
        loop {
            let lane = &state.lanes[state.lane(stream)];
            if state.holds > 0 || lane.dead || lane.has_room(len) || lane.queue.is_empty() {
                return;
            }
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Lines written so far, on both streams: progress, for waits that
    /// give up on a terminal that takes nothing.
    pub fn progress(&self) -> u64 {
        self.shared.lock().written()
    }

    /// Waits until every line queued so far is written (lines a prompt
    /// holds back excepted), or until the terminal took nothing for
    /// [`STALL_LIMIT`]; true when all was written.
    pub fn drain(&self) -> bool {
        let mut state = self.shared.lock();
        let mut seen = state.written();
        let mut since = Instant::now();
        loop {
            if state.holds > 0 || state.lanes.iter().all(|l| l.idle() || l.dead) {
                return true;
            }
            let now = Instant::now();
            let written = state.written();
            if written != seen {
                (seen, since) = (written, now);
            } else if now.duration_since(since) >= STALL_LIMIT {
                return false;
            }
            state = self.shared.wait_timeout(state, STALL_LIMIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::test_terminal::{Recorded, Stalled};

    #[test]
    fn controls_c1_del_bidi_and_bad_utf8_are_made_visible() {
        assert_eq!(
            visible(b"\x1b[2J\x1b[1;1Hpaid $5\x07\x08\x7f\r"),
            "\\x1b[2J\\x1b[1;1Hpaid $5\\x07\\x08\\x7f\\x0d"
        );
        assert_eq!(visible("a\u{9b}31mb".as_bytes()), "a\\u{9b}31mb");
        assert_eq!(
            visible("amount: \u{202e}09$\u{202c} \u{2067}x\u{2069}".as_bytes()),
            "amount: \\u{202e}09$\\u{202c} \\u{2067}x\\u{2069}"
        );
        assert_eq!(visible(b"raw csi \x9b2J"), "raw csi \\x9b2J");
        assert_eq!(
            visible("tab\tand ünïcödé ✓".as_bytes()),
            "tab\tand ünïcödé ✓"
        );
        assert_eq!(visible_inline("a\nb\x1bc", 80), "a\\nb\\x1bc");
        let json = serde_json::to_string("\u{9b}2J\u{202e}\u{7f}\u{1b}é").expect("json");
        let shown = visible_json(&json);
        assert_eq!(shown, r#""\u009b2J\u202e\u007f\u001bé""#);
        assert_eq!(
            serde_json::from_str::<String>(&shown).expect("still json"),
            "\u{9b}2J\u{202e}\u{7f}\u{1b}é"
        );
        assert_eq!(
            visible_inline(&"x".repeat(10), 4),
            "xxxx… (6 more characters)"
        );
    }

    #[test]
    fn lines_wait_while_held_and_come_in_order_after() {
        let term = Recorded::default();
        let screen =
            Screen::with_writers(Box::new(term.clone()), Box::new(term.clone()), [false; 2]);
        screen.agent_line(Stream::Out, "before");
        assert!(screen.drain());
        let hold = screen.hold();
        screen.agent_line(Stream::Out, "during 1");
        screen.line(Stream::Err, "  ✓ allowed GET x");
        screen.agent_line(Stream::Err, "during 2");
        assert!(screen.drain());
        assert_eq!(term.text(), "agent| before\n");
        drop(hold);
        // One writer per stream: wait for each line in turn, so the
        // order checked is the order queued.
        assert!(screen.drain());
        assert_eq!(
            term.text(),
            "agent| before\nagent| during 1\n  ✓ allowed GET x\nagent| during 2\n"
        );
    }

    #[test]
    fn held_output_is_bounded_and_the_rest_counted() {
        let term = Recorded::default();
        let screen =
            Screen::with_writers(Box::new(term.clone()), Box::new(term.clone()), [true; 2]);
        let hold = screen.hold();
        let line = "y".repeat(1000);
        for _ in 0..2000 {
            screen.agent_line(Stream::Out, &line);
        }
        drop(hold);
        assert!(screen.drain());
        let text = term.text();
        assert!(text.len() <= MAX_HELD_BYTES + 200, "{}", text.len());
        assert!(
            text.starts_with("\x1b[2magent│\x1b[0m yyy"),
            "dim mark on a terminal"
        );
        assert!(
            text.contains("more lines of output came while the prompt was open"),
            "{}",
            &text[text.len() - 200..]
        );
    }

    /// stdout taking nothing: our own lines for it are queued up to the
    /// bound and then counted, never waited for; stderr, somewhere else,
    /// still shows at once; a prompt can still take the screen. Once stdout
    /// reads again it gets what was queued, and stderr the count of the
    /// rest.
    #[test]
    fn a_stdout_that_takes_nothing_holds_up_neither_callers_nor_stderr() {
        let (out, err) = (Stalled::default(), Recorded::default());
        let screen =
            Screen::with_separate_writers(Box::new(out.clone()), Box::new(err.clone()), [false; 2]);
        let line = "z".repeat(999);
        let lines = 2 * LANE_MAX_BYTES / 1000;
        for _ in 0..lines {
            screen.line(Stream::Out, &line);
        }
        screen.line(Stream::Err, "  ✓ allowed GET api.example.com/x");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !err.text().contains("allowed GET") {
            assert!(Instant::now() < deadline, "stderr waited for stdout");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(screen.hold());

        out.open();
        assert!(screen.drain());
        let text = out.shown.text();
        let shown = text.lines().filter(|l| *l == line).count();
        let notes = err.text();
        let said: usize = notes
            .lines()
            .filter_map(|l| l.strip_prefix("  ("))
            .map(|l| {
                l.split(' ')
                    .next()
                    .expect("count")
                    .parse::<usize>()
                    .expect("a number")
            })
            .sum();
        assert!(shown < lines, "all {shown} lines were queued");
        assert_eq!(shown + said, lines, "{notes}");
        assert!(notes.contains("lines not shown: the terminal was not taking output"));
    }
}
