//! The operator's terminal, shared by the agent's output (`console.rs`), the
//! live monitor and the approval prompt. Agent-controlled text reaches it
//! only made visible ([`visible`], [`visible_inline`]): a control character
//! (other than newline and tab), a C1 control, DEL, a bidi override or
//! isolate, or a byte that is not UTF-8 shows as an escape such as `\x1b`
//! or `\u{202e}`, so the agent cannot move the cursor, recolour, clear or
//! reorder what the operator reads. Each of the agent's lines carries an
//! `agent│ ` mark. While an approval prompt is on screen ([`Screen::hold`])
//! every other line waits, and is shown after the answer.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// The operator's terminal: our stdout and stderr (or any writers, for
/// tests), with the hold the approval prompt takes. Cloneable; all clones
/// share the state.
#[derive(Clone)]
pub struct Screen {
    state: Arc<Mutex<ScreenState>>,
}

struct ScreenState {
    out: Box<dyn Write + Send>,
    err: Box<dyn Write + Send>,
    /// Per stream: whether it is a terminal (the agent mark is dimmed there).
    tty: [bool; 2],
    /// Prompts on screen right now.
    holds: usize,
    /// Lines waiting for the prompt to go: (stream, line with newline).
    held: VecDeque<(Stream, String)>,
    held_bytes: usize,
    dropped_lines: u64,
}

impl ScreenState {
    fn writer(&mut self, stream: Stream) -> &mut (dyn Write + Send) {
        match stream {
            Stream::Out => self.out.as_mut(),
            Stream::Err => self.err.as_mut(),
        }
    }

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
        // A closed terminal must not stop the session.
        let w = self.writer(stream);
        let _ = w.write_all(line.as_bytes()).and_then(|()| w.flush());
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
}

/// While alive, every line waits (see [`Screen::hold`]).
pub struct Hold {
    screen: Screen,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.screen.lock().release();
    }
}

impl Screen {
    /// Our own stdout and stderr.
    pub fn stdio() -> Self {
        let tty = [
            std::io::stdout().is_terminal(),
            std::io::stderr().is_terminal(),
        ];
        Self::with_writers(
            Box::new(std::io::stdout()),
            Box::new(std::io::stderr()),
            tty,
        )
    }

    /// Any two writers; `tty` says which are terminals (for the dim mark).
    pub fn with_writers(
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
        tty: [bool; 2],
    ) -> Self {
        Screen {
            state: Arc::new(Mutex::new(ScreenState {
                out,
                err,
                tty,
                holds: 0,
                held: VecDeque::new(),
                held_bytes: 0,
                dropped_lines: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ScreenState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds every other line back until the returned guard drops: taken by
    /// the approval prompt for as long as it is on screen. Returns once any
    /// line being written has been written whole.
    pub fn hold(&self) -> Hold {
        self.lock().holds += 1;
        Hold {
            screen: self.clone(),
        }
    }

    /// One of our own lines (its agent-controlled parts already made
    /// visible).
    pub fn line(&self, stream: Stream, text: &str) {
        self.lock().show(stream, format!("{text}\n"));
    }

    /// One of the agent's lines, already made [`visible`], with its mark.
    pub fn agent_line(&self, stream: Stream, rendered: &str) {
        let mut state = self.lock();
        let tty = state.tty[stream as usize];
        let mark = if tty {
            "\x1b[2magent│\x1b[0m "
        } else {
            "agent| "
        };
        state.show(stream, format!("{mark}{rendered}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
        }
    }

    #[test]
    fn lines_wait_while_held_and_come_in_order_after() {
        let term = Shared::default();
        let screen =
            Screen::with_writers(Box::new(term.clone()), Box::new(term.clone()), [false; 2]);
        screen.agent_line(Stream::Out, "before");
        let hold = screen.hold();
        screen.agent_line(Stream::Out, "during 1");
        screen.line(Stream::Err, "  ✓ allowed GET x");
        screen.agent_line(Stream::Err, "during 2");
        assert_eq!(term.text(), "agent| before\n");
        drop(hold);
        assert_eq!(
            term.text(),
            "agent| before\nagent| during 1\n  ✓ allowed GET x\nagent| during 2\n"
        );
    }

    #[test]
    fn held_output_is_bounded_and_the_rest_counted() {
        let term = Shared::default();
        let screen =
            Screen::with_writers(Box::new(term.clone()), Box::new(term.clone()), [true; 2]);
        let hold = screen.hold();
        let line = "y".repeat(1000);
        for _ in 0..2000 {
            screen.agent_line(Stream::Out, &line);
        }
        drop(hold);
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
}
