//! The escapes servers write text in, undone so echo masking can find a
//! secret whatever characters of it were escaped: JSON's backslash escapes
//! (`\u00XX` for any character, surrogate pairs, `\/`, `\"`, ...) with
//! JavaScript's `\xHH` and `\'`, HTML's character references (`&#NN;`,
//! `&#xHH;`, and the names of the characters a secret can hold: ASCII
//! punctuation and Latin-1), and URL percent-encoding (`%HH`). Each decoded
//! byte keeps the raw range it came from, so a match is replaced in the raw
//! text; [`compose`] reads a reading again (an HTML fragment in a JSON
//! string) and maps its bytes through both layers.

/// Longest run of digits read in a numeric character reference (leading
/// zeros included); longer ones are left as text.
const MAX_DIGITS: usize = 8;
/// Longest character reference name read.
const MAX_NAME: usize = 32;

/// Text with its escapes undone.
#[derive(Debug, Default)]
pub(super) struct Unescaped {
    pub bytes: Vec<u8>,
    /// Per decoded byte: the raw range (start, end) it was decoded from.
    pub from: Vec<(usize, usize)>,
    /// Raw offset of an escape cut off by the end of the input (more bytes
    /// could complete it): decoding stopped there.
    pub incomplete: Option<usize>,
    /// Whether some escape was undone (else `bytes` is the raw text, up to
    /// `incomplete`).
    pub changed: bool,
}

impl Unescaped {
    fn byte(&mut self, b: u8, start: usize, end: usize) {
        self.changed |= end - start != 1;
        self.bytes.push(b);
        self.from.push((start, end));
    }

    /// Whether this reading can differ from the raw text: something was
    /// undone, or an escape is cut (a streaming filter must hold it back).
    pub fn matters(&self) -> bool {
        self.changed || self.incomplete.is_some()
    }

    fn char(&mut self, c: char, start: usize, end: usize) {
        let mut buf = [0u8; 4];
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            self.byte(b, start, end);
        }
    }

    /// The raw offset decoding reached.
    pub fn raw_len(&self, raw_len: usize) -> usize {
        self.incomplete.unwrap_or(raw_len)
    }
}

fn hex4(b: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(b.get(..4)?).ok()?;
    if !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// Could `tail` still become `\uXXXX` once more bytes arrive?
fn could_be_u_escape(tail: &[u8]) -> bool {
    tail.iter().enumerate().all(|(i, &b)| match i {
        0 => b == b'\\',
        1 => b == b'u',
        2..=5 => b.is_ascii_hexdigit(),
        _ => false,
    })
}

/// JSON string escapes undone (RFC 8259 §7), and JavaScript's `\xHH` and
/// `\'` (a string literal in a script); anything else is kept as is.
pub(super) fn json(raw: &[u8]) -> Unescaped {
    let mut u = Unescaped::default();
    let n = raw.len();
    let mut i = 0;
    while i < n {
        if raw[i] != b'\\' {
            u.byte(raw[i], i, i + 1);
            i += 1;
            continue;
        }
        let Some(&c) = raw.get(i + 1) else {
            u.incomplete = Some(i);
            return u;
        };
        let simple = match c {
            // `\'` is JavaScript's, like `\xHH` below.
            b'"' | b'\\' | b'/' | b'\'' => Some(c),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(b) = simple {
            u.byte(b, i, i + 2);
            i += 2;
            continue;
        }
        if c == b'x' {
            // JavaScript's `\xHH`: the character U+00HH.
            match two_hex(&raw[i + 2..]) {
                TwoHex::Value(v) => {
                    u.char(char::from(v), i, i + 4);
                    i += 4;
                }
                TwoHex::Cut => {
                    u.incomplete = Some(i);
                    return u;
                }
                TwoHex::Not => {
                    u.byte(b'\\', i, i + 1);
                    i += 1;
                }
            }
            continue;
        }
        if c != b'u' {
            u.byte(b'\\', i, i + 1);
            i += 1;
            continue;
        }
        if n - i < 6 && could_be_u_escape(&raw[i..]) {
            u.incomplete = Some(i);
            return u;
        }
        let Some(cp) = hex4(&raw[i + 2..]) else {
            u.byte(b'\\', i, i + 1);
            i += 1;
            continue;
        };
        if (0xd800..0xdc00).contains(&cp) {
            // A high surrogate: its low half follows as another escape.
            let low_at = i + 6;
            if n - low_at < 6 && could_be_u_escape(&raw[low_at..]) {
                u.incomplete = Some(i);
                return u;
            }
            let low = (raw.get(low_at..low_at + 2) == Some(b"\\u"))
                .then(|| hex4(&raw[low_at + 2..]))
                .flatten()
                .filter(|l| (0xdc00..0xe000).contains(l));
            if let Some(low) = low {
                let c = char::from_u32(0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00))
                    .expect("a surrogate pair is a scalar value");
                u.char(c, i, i + 12);
                i += 12;
                continue;
            }
        }
        match char::from_u32(cp) {
            Some(ch) => {
                u.char(ch, i, i + 6);
                i += 6;
            }
            None => {
                // A lone surrogate: left as text.
                u.byte(b'\\', i, i + 1);
                i += 1;
            }
        }
    }
    u
}

/// HTML character references undone (numeric, and the named ones in
/// [`NAMED`], with or without the final `;` as browsers read them).
pub(super) fn html(raw: &[u8]) -> Unescaped {
    let mut u = Unescaped::default();
    let n = raw.len();
    let mut i = 0;
    while i < n {
        if raw[i] != b'&' {
            u.byte(raw[i], i, i + 1);
            i += 1;
            continue;
        }
        match reference(raw, i) {
            Reference::Incomplete => {
                u.incomplete = Some(i);
                return u;
            }
            Reference::Text => {
                u.byte(b'&', i, i + 1);
                i += 1;
            }
            Reference::Char(c, end) => {
                u.char(c, i, end);
                i = end;
            }
        }
    }
    u
}

/// What follows `\x` or `%`: two hex digits, or fewer where the text ends
/// (the escape may complete in the next chunk), or not an escape.
enum TwoHex {
    Value(u8),
    Cut,
    Not,
}

fn two_hex(tail: &[u8]) -> TwoHex {
    let digits = tail
        .iter()
        .take(2)
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    match digits {
        2 => {
            let text = std::str::from_utf8(&tail[..2]).expect("hex is ASCII");
            TwoHex::Value(u8::from_str_radix(text, 16).expect("two hex digits"))
        }
        d if d == tail.len() => TwoHex::Cut,
        _ => TwoHex::Not,
    }
}

/// URL percent-encoding undone: `%HH` is the byte 0xHH (`+` stays: it
/// only means a space in forms, and a secret's `+` is sent as `%2B`).
pub(super) fn percent(raw: &[u8]) -> Unescaped {
    let mut u = Unescaped::default();
    let n = raw.len();
    let mut i = 0;
    while i < n {
        if raw[i] != b'%' {
            u.byte(raw[i], i, i + 1);
            i += 1;
            continue;
        }
        match two_hex(&raw[i + 1..]) {
            TwoHex::Value(v) => {
                u.byte(v, i, i + 3);
                i += 3;
            }
            TwoHex::Cut => {
                u.incomplete = Some(i);
                return u;
            }
            TwoHex::Not => {
                u.byte(b'%', i, i + 1);
                i += 1;
            }
        }
    }
    u
}

/// `inner`, a reading of `outer.bytes`, as a reading of the raw text
/// `outer` was read from (`raw_len` bytes): each byte's range, and where
/// decoding stopped, mapped through both layers.
pub(super) fn compose(outer: &Unescaped, inner: Unescaped, raw_len: usize) -> Unescaped {
    let from = inner
        .from
        .iter()
        .map(|&(s, e)| (outer.from[s].0, outer.from[e - 1].1))
        .collect();
    let incomplete = match inner.incomplete {
        Some(at) => Some(outer.from.get(at).map_or(outer.raw_len(raw_len), |r| r.0)),
        None => outer.incomplete,
    };
    Unescaped {
        bytes: inner.bytes,
        from,
        incomplete,
        changed: outer.changed || inner.changed,
    }
}

enum Reference {
    /// Not a reference: `&` is text.
    Text,
    /// More bytes could make (or extend) one.
    Incomplete,
    /// The character, and the raw offset after the reference.
    Char(char, usize),
}

/// The character reference starting with the `&` at `at`.
fn reference(raw: &[u8], at: usize) -> Reference {
    let n = raw.len();
    if raw.get(at + 1) == Some(&b'#') {
        let mut j = at + 2;
        let hex = matches!(raw.get(j), Some(b'x' | b'X'));
        if hex {
            j += 1;
        }
        let digit = |b: &u8| {
            if hex {
                b.is_ascii_hexdigit()
            } else {
                b.is_ascii_digit()
            }
        };
        let digits = raw[j.min(n)..]
            .iter()
            .take(MAX_DIGITS + 1)
            .take_while(|b| digit(b))
            .count();
        let end = j + digits;
        if digits > MAX_DIGITS {
            return Reference::Text;
        }
        if end >= n {
            return Reference::Incomplete;
        }
        if digits == 0 {
            return Reference::Text;
        }
        let text = std::str::from_utf8(&raw[j..end]).expect("digits are ASCII");
        let value = u32::from_str_radix(text, if hex { 16 } else { 10 }).ok();
        let Some(c) = value.and_then(char::from_u32).filter(|&c| c != '\0') else {
            return Reference::Text;
        };
        let end = if raw[end] == b';' { end + 1 } else { end };
        return Reference::Char(c, end);
    }
    let start = at + 1;
    let len = raw[start..]
        .iter()
        .take(MAX_NAME + 1)
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    if len > MAX_NAME {
        return Reference::Text;
    }
    if start + len >= n {
        return Reference::Incomplete;
    }
    let name = &raw[start..start + len];
    // The whole name first, then (as browsers do for legacy names) the
    // longest known name it starts with.
    for l in (1..=len).rev() {
        if let Some(&(_, c)) = NAMED.iter().find(|(k, _)| k.as_bytes() == &name[..l]) {
            let mut end = start + l;
            if l == len && raw[end] == b';' {
                end += 1;
            }
            return Reference::Char(c, end);
        }
    }
    Reference::Text
}

/// Named character references for the characters a secret can hold:
/// ASCII punctuation and whitespace (HTML5 names) and Latin-1 (HTML 4).
const NAMED: &[(&str, char)] = &[
    ("Tab", '\t'),
    ("NewLine", '\n'),
    ("excl", '!'),
    ("quot", '"'),
    ("QUOT", '"'),
    ("num", '#'),
    ("dollar", '$'),
    ("percnt", '%'),
    ("amp", '&'),
    ("AMP", '&'),
    ("apos", '\''),
    ("lpar", '('),
    ("rpar", ')'),
    ("ast", '*'),
    ("midast", '*'),
    ("plus", '+'),
    ("comma", ','),
    ("period", '.'),
    ("sol", '/'),
    ("colon", ':'),
    ("semi", ';'),
    ("lt", '<'),
    ("LT", '<'),
    ("equals", '='),
    ("gt", '>'),
    ("GT", '>'),
    ("quest", '?'),
    ("commat", '@'),
    ("lsqb", '['),
    ("lbrack", '['),
    ("bsol", '\\'),
    ("rsqb", ']'),
    ("rbrack", ']'),
    ("Hat", '^'),
    ("lowbar", '_'),
    ("UnderBar", '_'),
    ("grave", '`'),
    ("DiacriticalGrave", '`'),
    ("lcub", '{'),
    ("lbrace", '{'),
    ("verbar", '|'),
    ("vert", '|'),
    ("VerticalLine", '|'),
    ("rcub", '}'),
    ("rbrace", '}'),
    ("NonBreakingSpace", '\u{a0}'),
    ("nbsp", '\u{a0}'),
    ("iexcl", '\u{a1}'),
    ("cent", '\u{a2}'),
    ("pound", '\u{a3}'),
    ("curren", '\u{a4}'),
    ("yen", '\u{a5}'),
    ("brvbar", '\u{a6}'),
    ("sect", '\u{a7}'),
    ("uml", '\u{a8}'),
    ("copy", '\u{a9}'),
    ("ordf", '\u{aa}'),
    ("laquo", '\u{ab}'),
    ("not", '\u{ac}'),
    ("shy", '\u{ad}'),
    ("reg", '\u{ae}'),
    ("macr", '\u{af}'),
    ("deg", '\u{b0}'),
    ("plusmn", '\u{b1}'),
    ("sup2", '\u{b2}'),
    ("sup3", '\u{b3}'),
    ("acute", '\u{b4}'),
    ("micro", '\u{b5}'),
    ("para", '\u{b6}'),
    ("middot", '\u{b7}'),
    ("cedil", '\u{b8}'),
    ("sup1", '\u{b9}'),
    ("ordm", '\u{ba}'),
    ("raquo", '\u{bb}'),
    ("frac14", '\u{bc}'),
    ("frac12", '\u{bd}'),
    ("frac34", '\u{be}'),
    ("iquest", '\u{bf}'),
    ("Agrave", '\u{c0}'),
    ("Aacute", '\u{c1}'),
    ("Acirc", '\u{c2}'),
    ("Atilde", '\u{c3}'),
    ("Auml", '\u{c4}'),
    ("Aring", '\u{c5}'),
    ("AElig", '\u{c6}'),
    ("Ccedil", '\u{c7}'),
    ("Egrave", '\u{c8}'),
    ("Eacute", '\u{c9}'),
    ("Ecirc", '\u{ca}'),
    ("Euml", '\u{cb}'),
    ("Igrave", '\u{cc}'),
    ("Iacute", '\u{cd}'),
    ("Icirc", '\u{ce}'),
    ("Iuml", '\u{cf}'),
    ("ETH", '\u{d0}'),
    ("Ntilde", '\u{d1}'),
    ("Ograve", '\u{d2}'),
    ("Oacute", '\u{d3}'),
    ("Ocirc", '\u{d4}'),
    ("Otilde", '\u{d5}'),
    ("Ouml", '\u{d6}'),
    ("times", '\u{d7}'),
    ("Oslash", '\u{d8}'),
    ("Ugrave", '\u{d9}'),
    ("Uacute", '\u{da}'),
    ("Ucirc", '\u{db}'),
    ("Uuml", '\u{dc}'),
    ("Yacute", '\u{dd}'),
    ("THORN", '\u{de}'),
    ("szlig", '\u{df}'),
    ("agrave", '\u{e0}'),
    ("aacute", '\u{e1}'),
    ("acirc", '\u{e2}'),
    ("atilde", '\u{e3}'),
    ("auml", '\u{e4}'),
    ("aring", '\u{e5}'),
    ("aelig", '\u{e6}'),
    ("ccedil", '\u{e7}'),
    ("egrave", '\u{e8}'),
    ("eacute", '\u{e9}'),
    ("ecirc", '\u{ea}'),
    ("euml", '\u{eb}'),
    ("igrave", '\u{ec}'),
    ("iacute", '\u{ed}'),
    ("icirc", '\u{ee}'),
    ("iuml", '\u{ef}'),
    ("eth", '\u{f0}'),
    ("ntilde", '\u{f1}'),
    ("ograve", '\u{f2}'),
    ("oacute", '\u{f3}'),
    ("ocirc", '\u{f4}'),
    ("otilde", '\u{f5}'),
    ("ouml", '\u{f6}'),
    ("divide", '\u{f7}'),
    ("oslash", '\u{f8}'),
    ("ugrave", '\u{f9}'),
    ("uacute", '\u{fa}'),
    ("ucirc", '\u{fb}'),
    ("uuml", '\u{fc}'),
    ("yacute", '\u{fd}'),
    ("thorn", '\u{fe}'),
    ("yuml", '\u{ff}'),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn text(u: &Unescaped) -> String {
        String::from_utf8(u.bytes.clone()).expect("utf8")
    }

    #[test]
    fn json_escapes_of_any_character_are_undone() {
        let u = json(br#"H\u0075nter2 \"q\" a\/b \u00e9 \ud83d\ude00 \\u0041 \xZZ"#);
        assert_eq!(text(&u), "Hunter2 \"q\" a/b \u{e9} \u{1f600} \\u0041 \\xZZ");
        assert_eq!(u.incomplete, None);
        // Every decoded byte maps into the raw text; `u` came from `\u0075`.
        assert_eq!(u.from[1], (1, 7));
        // Cut escapes wait for more bytes; a lone surrogate stays text.
        assert_eq!(json(b"ab\\").incomplete, Some(2));
        assert_eq!(json(b"ab\\u00").incomplete, Some(2));
        assert_eq!(json(b"\\ud83d\\ude").incomplete, Some(0));
        assert_eq!(text(&json(br"\ud83d!")), "\\ud83d!");
        assert_eq!(json(br"\uZZZZ").incomplete, None);
        // JavaScript's `\xHH` and `\'`.
        assert_eq!(
            text(&json(br"H\x75nter\x21\xe9 \'q\' \x4")),
            "Hunter!\u{e9} 'q' "
        );
        assert_eq!(json(br"a\x4").incomplete, Some(1));
        assert_eq!(json(br"a\x").incomplete, Some(1));
        assert!(!json(b"plain").changed);
    }

    #[test]
    fn percent_encoding_is_undone_and_plus_stays() {
        let u = percent(b"P%40ss+%2b%C3%A9 %zz 100%");
        assert_eq!(u.bytes, "P@ss++\u{e9} %zz 100".as_bytes());
        assert_eq!(u.from[1], (1, 4));
        assert_eq!(u.incomplete, Some(24));
        assert_eq!(percent(b"a%4").incomplete, Some(1));
    }

    #[test]
    fn composed_readings_map_to_raw_bytes_through_both_layers() {
        // An HTML reference in JSON, as Go writes it: `\u0026#34;` is `"`.
        let raw = br#"a\u0026#34;b\\u0041"#;
        let outer = json(raw);
        assert_eq!(outer.bytes, br"a&#34;b\u0041");
        let u = compose(&outer, html(&outer.bytes), raw.len());
        assert_eq!(text(&u), "a\"b\\u0041");
        assert_eq!(u.from[1], (1, 11));
        let u = compose(&outer, json(&outer.bytes), raw.len());
        assert_eq!(text(&u), "a&#34;bA");
        assert_eq!(u.from[7], (12, 19));
        // Where the inner reading stopped, in raw bytes: the `\\` that
        // began `\\u00`.
        let raw = br"ab\\u00";
        let outer = json(raw);
        assert_eq!(outer.incomplete, None);
        assert_eq!(
            compose(&outer, json(&outer.bytes), raw.len()).incomplete,
            Some(2)
        );
    }

    #[test]
    fn html_references_numeric_and_named_are_undone() {
        let u = html(b"H&#117;nter&#x32; &amp;&lt;&quot &eacute;&copy&#x000041; &bogus; &#;");
        assert_eq!(text(&u), "Hunter2 &<\" \u{e9}\u{a9}A &bogus; &#;");
        assert_eq!(u.from[1], (1, 7));
        assert_eq!(html(b"a &am").incomplete, Some(2));
        assert_eq!(html(b"a &#x4").incomplete, Some(2));
        // Too many digits, or a zero: text.
        assert_eq!(text(&html(b"&#0000000065; &#0;")), "&#0000000065; &#0;");
    }
}
