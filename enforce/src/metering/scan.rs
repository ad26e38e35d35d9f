//! Picks chosen members (`usage`, `id`, `model`, ...) out of a JSON
//! document fed in pieces as it streams past, keeping only their text:
//! memory is bounded by the captures, never by the document.

/// Paths of the members to capture, each a list of keys from the root
/// object (`["response", "usage"]`). Members inside arrays never match.
pub(crate) type Paths = &'static [&'static [&'static str]];

/// Containers tracked with their keys; deeper ones are only counted (no
/// path is that deep).
const TRACKED: usize = 4;
/// Longest key remembered; longer keys match nothing.
const MAX_KEY: usize = 64;
/// Longest captured value; a longer one is dropped (and reads as absent).
const MAX_CAPTURE: usize = 64 * 1024;

#[derive(Debug, Clone)]
struct Frame {
    object: bool,
    /// In an object: the last key read.
    key: Option<String>,
    /// In an object: the next string is a key.
    expect_key: bool,
    /// In an object: a `:` was read and its value has not begun.
    value_pending: bool,
}

#[derive(Debug)]
struct Capture {
    path: usize,
    /// Container depth when the value began (before it, if a container).
    depth: usize,
    /// The first byte: `{`, `[`, `"` or a scalar's.
    first: u8,
    text: Vec<u8>,
    too_long: bool,
}

/// The scanner. Feed with [`MemberScanner::push`], read with
/// [`MemberScanner::take`]; [`MemberScanner::reset`] for the next document.
#[derive(Debug)]
pub(crate) struct MemberScanner {
    paths: Paths,
    frames: Vec<Frame>,
    /// Containers open beyond `TRACKED`.
    deep: usize,
    in_string: bool,
    escaped: bool,
    /// Reading a key: its bytes so far (`None` once too long).
    key: Option<Vec<u8>>,
    reading_key: bool,
    capture: Option<Capture>,
    found: Vec<(usize, Vec<u8>)>,
}

impl MemberScanner {
    pub(crate) fn new(paths: Paths) -> Self {
        MemberScanner {
            paths,
            frames: Vec::with_capacity(TRACKED),
            deep: 0,
            in_string: false,
            escaped: false,
            key: None,
            reading_key: false,
            capture: None,
            found: Vec::new(),
        }
    }

    /// Forgets everything: the next byte starts a new document.
    pub(crate) fn reset(&mut self) {
        self.frames.clear();
        self.deep = 0;
        self.in_string = false;
        self.escaped = false;
        self.key = None;
        self.reading_key = false;
        self.capture = None;
        self.found.clear();
    }

    /// The captured members so far: (index into the paths, raw JSON text).
    pub(crate) fn take(&mut self) -> Vec<(usize, Vec<u8>)> {
        std::mem::take(&mut self.found)
    }

    fn depth(&self) -> usize {
        self.frames.len() + self.deep
    }

    /// Whether the value about to begin sits at one of the paths.
    fn matching_path(&self) -> Option<usize> {
        if self.deep > 0 {
            return None;
        }
        self.paths.iter().position(|p| {
            p.len() == self.frames.len()
                && self
                    .frames
                    .iter()
                    .zip(p.iter())
                    .all(|(f, k)| f.object && f.key.as_deref() == Some(*k))
        })
    }

    fn record(&mut self, b: u8) {
        if let Some(c) = &mut self.capture {
            if c.text.len() < MAX_CAPTURE {
                c.text.push(b);
            } else {
                c.too_long = true;
            }
        }
    }

    /// [`Self::record`] for several bytes.
    fn record_all(&mut self, bytes: &[u8]) {
        if let Some(c) = &mut self.capture {
            if c.text.len() + bytes.len() <= MAX_CAPTURE {
                c.text.extend_from_slice(bytes);
            } else {
                c.too_long = true;
            }
        }
    }

    fn end_capture(&mut self) {
        if let Some(c) = self.capture.take() {
            if !c.too_long {
                self.found.push((c.path, c.text));
            }
        }
    }

    /// Called on the first byte of a value (not whitespace).
    fn value_begins(&mut self, b: u8) {
        let in_object_value = match self.frames.last_mut() {
            Some(f) if f.object && f.value_pending && self.deep == 0 => {
                f.value_pending = false;
                true
            }
            _ => false,
        };
        if in_object_value && self.capture.is_none() {
            if let Some(path) = self.matching_path() {
                self.capture = Some(Capture {
                    path,
                    depth: self.depth(),
                    first: b,
                    text: Vec::new(),
                    too_long: false,
                });
            }
        }
    }

    /// A scalar being captured ends before `b` (a delimiter or whitespace).
    fn scalar_ends(&mut self) {
        if self
            .capture
            .as_ref()
            .is_some_and(|c| !matches!(c.first, b'{' | b'[' | b'"') && c.depth == self.depth())
        {
            self.end_capture();
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            if self.in_string {
                i = self.string_bytes(data, i);
                continue;
            }
            let b = data[i];
            i += 1;
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => self.scalar_ends(),
                b'"' => {
                    self.scalar_ends();
                    let is_key = self
                        .frames
                        .last()
                        .is_some_and(|f| f.object && f.expect_key && self.deep == 0);
                    if is_key {
                        if let Some(f) = self.frames.last_mut() {
                            f.expect_key = false;
                        }
                        self.reading_key = true;
                        self.key = Some(Vec::new());
                    } else {
                        self.value_begins(b);
                    }
                    self.record(b);
                    self.in_string = true;
                    self.escaped = false;
                }
                b'{' | b'[' => {
                    self.scalar_ends();
                    self.value_begins(b);
                    self.record(b);
                    if self.frames.len() < TRACKED && self.deep == 0 {
                        self.frames.push(Frame {
                            object: b == b'{',
                            key: None,
                            expect_key: b == b'{',
                            value_pending: false,
                        });
                    } else {
                        self.deep += 1;
                    }
                }
                b'}' | b']' => {
                    self.scalar_ends();
                    self.record(b);
                    if self.deep > 0 {
                        self.deep -= 1;
                    } else {
                        self.frames.pop();
                    }
                    if self
                        .capture
                        .as_ref()
                        .is_some_and(|c| matches!(c.first, b'{' | b'[') && c.depth == self.depth())
                    {
                        self.end_capture();
                    }
                }
                b':' => {
                    self.record(b);
                    if self.deep == 0 {
                        if let Some(f) = self.frames.last_mut() {
                            f.value_pending = f.object;
                        }
                    }
                }
                b',' => {
                    self.scalar_ends();
                    self.record(b);
                    if self.deep == 0 {
                        if let Some(f) = self.frames.last_mut() {
                            f.expect_key = f.object;
                            f.value_pending = false;
                        }
                    }
                }
                _ => {
                    // A scalar's byte (digit, sign, letter of true/false/null).
                    let starts = self
                        .frames
                        .last()
                        .is_some_and(|f| f.object && f.value_pending && self.deep == 0);
                    if starts {
                        self.value_begins(b);
                    }
                    self.record(b);
                }
            }
        }
    }

    /// Consumes string bytes from `data[i..]`; returns where it stopped.
    fn string_bytes(&mut self, data: &[u8], mut i: usize) -> usize {
        if !self.reading_key && !self.escaped {
            // Fast path: to the next quote or backslash at once (copied
            // whole when captured).
            let rest = &data[i..];
            let run = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
            self.record_all(&rest[..run]);
            i += run;
            if i == data.len() {
                return i;
            }
        }
        let b = data[i];
        i += 1;
        self.record(b);
        if self.escaped {
            self.escaped = false;
            self.key_byte(b);
            return i;
        }
        match b {
            b'\\' => {
                self.escaped = true;
                self.key_byte(b);
            }
            b'"' => {
                self.in_string = false;
                if self.reading_key {
                    self.reading_key = false;
                    let key = self.key.take().and_then(|k| String::from_utf8(k).ok());
                    if let Some(f) = self.frames.last_mut() {
                        f.key = key;
                    }
                } else if self
                    .capture
                    .as_ref()
                    .is_some_and(|c| c.first == b'"' && c.depth == self.depth())
                {
                    self.end_capture();
                }
            }
            _ => self.key_byte(b),
        }
        i
    }

    fn key_byte(&mut self, b: u8) {
        if !self.reading_key {
            return;
        }
        if let Some(k) = &mut self.key {
            if k.len() < MAX_KEY {
                k.push(b);
            } else {
                self.key = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATHS: Paths = &[&["usage"], &["id"], &["response", "usage"], &["n"]];

    fn scan_in_pieces(doc: &[u8], cut: usize) -> Vec<(usize, String)> {
        let mut s = MemberScanner::new(PATHS);
        s.push(&doc[..cut]);
        s.push(&doc[cut..]);
        let mut found: Vec<(usize, String)> = s
            .take()
            .into_iter()
            .map(|(p, t)| (p, String::from_utf8(t).expect("utf8")))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn captures_members_at_their_paths_whatever_the_cuts() {
        let doc =
            br#"{"id":"r\"1","choices":[{"usage":{"x":1},"id":"no"}],"text":"a \"usage\": {} \\",
            "response" : { "id": 3, "usage" : {"input_tokens": 5, "d": {"c": [1, {"e": 2}]}} },
            "usage":null, "n": -12.5e3}"#;
        let expected = vec![
            (0, "null".to_owned()),
            (1, r#""r\"1""#.to_owned()),
            // Whitespace between tokens is not kept.
            (2, r#"{"input_tokens":5,"d":{"c":[1,{"e":2}]}}"#.to_owned()),
            (3, "-12.5e3".to_owned()),
        ];
        for cut in 0..=doc.len() {
            assert_eq!(scan_in_pieces(doc, cut), expected, "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte_and_reset_between_documents() {
        let mut s = MemberScanner::new(PATHS);
        for b in br#"{"usage":{"a":[1,2]},"n":7}"# {
            s.push(&[*b]);
        }
        let found = s.take();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].1, br#"{"a":[1,2]}"#);
        assert_eq!(found[1].1, b"7");
        s.reset();
        s.push(br#"{"x":{"usage":1}}"#);
        assert!(s.take().is_empty());
    }

    #[test]
    fn oversized_values_and_deep_nesting_stay_bounded() {
        let mut s = MemberScanner::new(PATHS);
        let big = format!(
            r#"{{"usage":"{}","id":"ok"}}"#,
            "x".repeat(MAX_CAPTURE + 10)
        );
        s.push(big.as_bytes());
        let found = s.take();
        assert_eq!(found, vec![(1, br#""ok""#.to_vec())]);
        let deep = format!(r#"{{"a":{}1{},"n":2}}"#, "[".repeat(1000), "]".repeat(1000));
        s.reset();
        s.push(deep.as_bytes());
        assert_eq!(s.take(), vec![(3, b"2".to_vec())]);
        assert!(s.frames.capacity() <= TRACKED.max(4));
    }
}
