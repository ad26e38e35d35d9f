//! An incremental reader of server-sent events (the WHATWG `text/event-stream`
//! format): fed the response body in whatever chunks it arrives, it hands
//! each event's `data` to a sink as it passes and says where each event
//! ends. Nothing but a field name's first bytes is buffered.

/// Receives what [`SseReader::push`] reads.
pub(crate) trait SseSink {
    /// More of the current event's data (its `data` lines joined by `\n`).
    fn data(&mut self, bytes: &[u8]);
    /// The current event ended (a blank line) at offset `end` of the chunk
    /// being pushed (just after the line break).
    fn dispatch(&mut self, end: usize);
    /// Asked after each dispatch: stop reading there ([`SseReader::push`]
    /// then returns the offset), so the caller can read the rest otherwise.
    fn stop(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line.
    Start,
    /// Reading a field name: its first bytes (at most `data:`'s five).
    Name { buf: [u8; 5], len: usize },
    /// In a `data` value; `skip_space` until its first byte is seen.
    Data { skip_space: bool },
    /// Any other field, or a comment: skipped.
    Ignored,
}

/// The reader's state between chunks.
#[derive(Debug)]
pub(crate) struct SseReader {
    line: Line,
    /// The last line ended with `\r`: a `\n` right after belongs to it.
    after_cr: bool,
    /// `data` lines seen in the current event (the second and later are
    /// preceded by `\n`).
    data_lines: u32,
}

impl Default for SseReader {
    fn default() -> Self {
        SseReader {
            line: Line::Start,
            after_cr: false,
            data_lines: 0,
        }
    }
}

impl SseReader {
    /// Reads `chunk`; returns how much of it was read: all of it, unless
    /// the sink asked to stop after an event (then just past that event).
    pub(crate) fn push(&mut self, chunk: &[u8], sink: &mut impl SseSink) -> usize {
        let mut i = 0;
        while i < chunk.len() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match self.line {
                Line::Start => {
                    let b = chunk[i];
                    if b == b'\n' || b == b'\r' {
                        // A blank line ends the event. (A `\n` after this
                        // `\r` is swallowed above.)
                        i += 1;
                        self.after_cr = b == b'\r';
                        self.data_lines = 0;
                        sink.dispatch(i);
                        if sink.stop() {
                            return i;
                        }
                        continue;
                    }
                    // The common line, whole in this chunk: no byte-by-byte name.
                    if chunk[i..].starts_with(b"data:") {
                        i += 5;
                        self.data_line(sink);
                        self.line = Line::Data { skip_space: true };
                        continue;
                    }
                    self.line = Line::Name {
                        buf: [0; 5],
                        len: 0,
                    };
                }
                Line::Name { mut buf, mut len } => {
                    let b = chunk[i];
                    if b == b'\n' || b == b'\r' {
                        // A field with no colon: `data` alone is an empty data line.
                        if &buf[..len] == b"data" {
                            self.data_line(sink);
                        }
                        self.end_line(b);
                        i += 1;
                        continue;
                    }
                    i += 1;
                    // The bytes before matched `data:` (else the line is Ignored).
                    let matches = b == b"data:"[len];
                    buf[len] = b;
                    len += 1;
                    self.line = if !matches {
                        Line::Ignored
                    } else if len == 5 {
                        self.data_line(sink);
                        Line::Data { skip_space: true }
                    } else {
                        Line::Name { buf, len }
                    };
                }
                Line::Data { skip_space } => {
                    if skip_space {
                        self.line = Line::Data { skip_space: false };
                        if chunk[i] == b' ' {
                            i += 1;
                            continue;
                        }
                    }
                    let rest = &chunk[i..];
                    match memchr::memchr2(b'\n', b'\r', rest) {
                        Some(off) => {
                            if off > 0 {
                                sink.data(&rest[..off]);
                            }
                            self.end_line(rest[off]);
                            i += off + 1;
                        }
                        None => {
                            sink.data(rest);
                            i = chunk.len();
                        }
                    }
                }
                Line::Ignored => match memchr::memchr2(b'\n', b'\r', &chunk[i..]) {
                    Some(off) => {
                        self.end_line(chunk[i + off]);
                        i += off + 1;
                    }
                    None => i = chunk.len(),
                },
            }
        }
        chunk.len()
    }

    /// The last byte read was a `\r` (a `\n` next belongs to its line break).
    pub(crate) fn after_cr(&self) -> bool {
        self.after_cr
    }

    /// At the start of a line, and the current event has no data yet.
    pub(crate) fn before_any_data(&self) -> bool {
        self.line == Line::Start && self.data_lines == 0
    }

    /// A `data` field begins: lines after the first are joined by `\n`.
    fn data_line(&mut self, sink: &mut impl SseSink) {
        if self.data_lines > 0 {
            sink.data(b"\n");
        }
        self.data_lines += 1;
    }

    fn end_line(&mut self, brk: u8) {
        self.line = Line::Start;
        self.after_cr = brk == b'\r';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects events: (data, end offset in the whole stream).
    #[derive(Default)]
    struct Events {
        current: Vec<u8>,
        events: Vec<(String, usize)>,
        base: usize,
    }

    impl SseSink for Events {
        fn data(&mut self, bytes: &[u8]) {
            self.current.extend_from_slice(bytes);
        }
        fn dispatch(&mut self, end: usize) {
            let data = String::from_utf8(std::mem::take(&mut self.current)).expect("utf8");
            self.events.push((data, self.base + end));
        }
    }

    fn read(stream: &[u8], cuts: &[usize]) -> Vec<(String, usize)> {
        let mut r = SseReader::default();
        let mut sink = Events::default();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            sink.base = at;
            r.push(&stream[at..cut], &mut sink);
            at = cut;
        }
        sink.events
    }

    const STREAM: &[u8] = b": comment\nevent: message_start\ndata: {\"a\":1}\n\n\
        data:{\"b\"\r\ndata\r\ndata:  2}\r\n\r\nid: 7\nretry: 10\ndata: [DONE]\n\ndatax: no\n\n";

    #[test]
    fn events_are_the_same_whatever_the_cuts() {
        let whole = read(STREAM, &[]);
        assert_eq!(
            whole,
            vec![
                ("{\"a\":1}".to_owned(), 46),
                ("{\"b\"\n\n 2}".to_owned(), 75),
                ("[DONE]".to_owned(), 106),
                (String::new(), 117),
            ]
        );
        for a in 0..=STREAM.len() {
            assert_eq!(read(STREAM, &[a]), whole, "cut at {a}");
            for b in a..=STREAM.len() {
                assert_eq!(read(STREAM, &[a, b]), whole, "cuts at {a}, {b}");
            }
        }
    }

    #[test]
    fn a_lone_cr_ends_lines() {
        assert_eq!(
            read(b"data: x\r\rdata: y\n\n", &[]),
            vec![("x".to_owned(), 9), ("y".to_owned(), 18)]
        );
    }
}
