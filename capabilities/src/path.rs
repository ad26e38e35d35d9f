//! Request paths read the way servers route them: the spellings refused
//! outright because servers resolve them differently (dot segments in any
//! spelling, `..;`, backslashes, encoded slashes, ...), the readings a path
//! can route as (for the service catalog), and the canonical form a web
//! grant's path prefix is compared with. The list is `docs/catalog.md`
//! ("Paths") and `docs/capabilities.md` ("Matching rules").

use std::borrow::Cow;

use percent_encoding::percent_decode;

/// Why a request path is refused outright: some server would resolve it to
/// another endpoint than its text says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with /")]
    NotAbsolute,
    #[error("path contains a control character (raw or percent-encoded)")]
    ControlCharacter,
    #[error("path contains a backslash (raw or percent-encoded), which some servers read as /")]
    Backslash,
    #[error("path contains a dot segment (., .., ..;, ;.. or an encoded spelling of one)")]
    DotSegment,
    #[error("path percent-decodes to invalid UTF-8 (an overlong or stray byte)")]
    InvalidUtf8,
    #[error("path contains a look-alike of /, \\ or . that some servers fold into it")]
    LookAlike,
    #[error("path contains an encoded slash (%2F, raw or double-encoded)")]
    EncodedSlash,
}

/// Characters some servers (Windows "best fit" mappings, Unicode
/// normalization) fold into `.`, `/` or `\`.
const LOOK_ALIKES: [char; 9] = [
    '\u{2024}', // one dot leader
    '\u{FE52}', // small full stop
    '\u{FF0E}', // fullwidth full stop
    '\u{2044}', // fraction slash
    '\u{2215}', // division slash
    '\u{FF0F}', // fullwidth solidus
    '\u{2216}', // set minus
    '\u{FE68}', // small reverse solidus
    '\u{FF3C}', // fullwidth reverse solidus
];

/// Format names a web prefix's last segment may carry as a suffix
/// (`/flights.json` is `/flights` to Rails, Spring and others).
const FORMAT_SUFFIXES: [&str; 11] = [
    "json", "xml", "html", "htm", "txt", "csv", "yaml", "yml", "atom", "rss", "js",
];

/// The path part of a request target (before `?` or `#`).
pub fn path_part(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or(target)
}

/// Percent-decodes once; borrowed when nothing was encoded.
fn decode(bytes: &[u8]) -> Cow<'_, [u8]> {
    if bytes.contains(&b'%') {
        percent_decode(bytes).into()
    } else {
        Cow::Borrowed(bytes)
    }
}

/// `.` or `..`, with the trailing spaces Windows drops: a piece of a
/// segment (split at `;`) that resolves as a dot segment somewhere.
fn is_dot_piece(piece: &str) -> bool {
    matches!(piece.trim_end_matches(' '), "." | "..")
}

/// Refuses a request target whose path some server would route elsewhere
/// than its text says. Each spelling is checked raw, percent-decoded once
/// and decoded twice (servers and filters that decode twice exist). An
/// encoded slash is reported only when nothing else is wrong, so a reader
/// that tolerates it (the catalog, which routes `%2F` as `/`) still sees
/// every other problem.
pub fn check_path(target: &str) -> Result<(), PathError> {
    if !target.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if target.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    let plain = path_part(target).as_bytes();
    let once = decode(plain);
    let twice = decode(&once);
    let levels: [&[u8]; 3] = [plain, &once, &twice];
    // Nothing encoded: one level is enough.
    let levels = if plain.contains(&b'%') {
        &levels[..]
    } else {
        &levels[..1]
    };
    let mut slashes = None;
    let mut encoded_slash = false;
    for bytes in levels {
        let text = std::str::from_utf8(bytes).map_err(|_| PathError::InvalidUtf8)?;
        if text.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter);
        }
        if text.contains('\\') {
            return Err(PathError::Backslash);
        }
        if text.chars().any(|c| LOOK_ALIKES.contains(&c)) {
            return Err(PathError::LookAlike);
        }
        if text.split('/').any(|seg| seg.split(';').any(is_dot_piece)) {
            return Err(PathError::DotSegment);
        }
        // Decoding only ever adds a `/` from a `%2F`.
        let n = bytes.iter().filter(|&&b| b == b'/').count();
        encoded_slash |= slashes.is_some_and(|before| n > before);
        slashes = Some(n);
    }
    if encoded_slash {
        return Err(PathError::EncodedSlash);
    }
    Ok(())
}

/// The segments a path may be routed as, for matching catalog rules: each
/// reading drops empty segments (repeated and trailing slashes) and matrix
/// parameters (`;jsessionid=…`), in the orders servers apply them —
/// decode then split (a `%2F` separates, a `%3B` starts parameters), split
/// then decode (Tomcat's order), and decode twice. Case is kept. Call
/// [`check_path`] first: this reading does not refuse anything.
pub fn path_readings(target: &str) -> Vec<Vec<String>> {
    let plain = path_part(target).as_bytes();
    let split = |bytes: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(bytes)
            .split('/')
            .map(|seg| seg.split(';').next().unwrap_or(""))
            .filter(|seg| !seg.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let once = decode(plain);
    let mut readings = vec![split(&once)];
    if plain.contains(&b'%') {
        let strip_first: Vec<String> = String::from_utf8_lossy(plain)
            .split('/')
            .map(|seg| seg.split(';').next().unwrap_or(""))
            .map(|seg| String::from_utf8_lossy(&decode(seg.as_bytes())).into_owned())
            .filter(|seg| !seg.is_empty())
            .collect();
        readings.push(strip_first);
        if once.contains(&b'%') {
            readings.push(split(&decode(&once)));
        }
        readings.dedup();
        if readings.len() == 3 && readings[0] == readings[2] {
            readings.pop();
        }
    }
    readings
}

/// Appends a decoded segment to a canonical path, encoding again the
/// characters that could fake a boundary a prefix compares (`%`, `?`, `#`,
/// `;`) and whitespace (a prefix holds none of them).
fn push_canonical_segment(out: &mut String, segment: &str) {
    out.push('/');
    for c in segment.chars() {
        if matches!(c, '%' | '?' | '#' | ';') || c.is_whitespace() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

/// The path a web grant's prefix is compared with: empty segments and
/// matrix parameters dropped (before decoding, as Tomcat does, so a `%3B`
/// stays part of its segment), each segment percent-decoded once. Case is
/// kept. `/` when nothing is left.
pub(crate) fn canonical_path(target: &str) -> String {
    let plain = path_part(target);
    let mut out = String::with_capacity(plain.len());
    for seg in plain.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        if seg.is_empty() {
            continue;
        }
        push_canonical_segment(&mut out, &String::from_utf8_lossy(&decode(seg.as_bytes())));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A canonical path without a format suffix on its last segment
/// (`/flights.json` → `/flights`): the endpoint a framework with format
/// suffixes routes it to. Unchanged when there is none.
pub(crate) fn without_format_suffix(canonical: &str) -> &str {
    let last = canonical.rfind('/').map_or(0, |i| i + 1);
    match canonical[last..].rfind('.') {
        Some(dot) if dot > 0 && FORMAT_SUFFIXES.contains(&&canonical[last + dot + 1..]) => {
            &canonical[..last + dot]
        }
        _ => canonical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_spellings() {
        for (p, want) in [
            ("x", PathError::NotAbsolute),
            ("/a/..;/b", PathError::DotSegment),
            ("/a/..;x=1/b", PathError::DotSegment),
            ("/a/;../b", PathError::DotSegment),
            ("/a/x;../b", PathError::DotSegment),
            ("/a/.;/b", PathError::DotSegment),
            ("/a/%2e%2e%3b/b", PathError::DotSegment),
            ("/a/%252e%252e/b", PathError::DotSegment),
            ("/a/..%20/b", PathError::DotSegment),
            ("/a/%2E./b", PathError::DotSegment),
            ("/a\\b", PathError::Backslash),
            ("/a%5cb", PathError::Backslash),
            ("/a%255Cb", PathError::Backslash),
            ("/a%00b", PathError::ControlCharacter),
            ("/a%2500b", PathError::ControlCharacter),
            ("/a\u{7f}", PathError::ControlCharacter),
            ("/a/%c0%ae%c0%ae/b", PathError::InvalidUtf8),
            ("/a/%ff", PathError::InvalidUtf8),
            ("/a/\u{ff0e}\u{ff0e}/b", PathError::LookAlike),
            ("/a/%ef%bc%8f", PathError::LookAlike),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%252Fb", PathError::EncodedSlash),
            // A dot segment is reported before an encoded slash.
            ("/a%2f../b", PathError::DotSegment),
        ] {
            assert_eq!(check_path(p), Err(want), "{p}");
        }
        for p in [
            "/",
            "/a/.../b",
            "/a/.x/b",
            "/a;jsessionid=1/b",
            "/a/b.json",
            "/caf%C3%A9",
            "/a%3bb",
            "/a?x=/../",
            "/a%2570",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn readings_cover_both_decoding_orders() {
        assert_eq!(
            path_readings("//api//booking/purchase;jsessionid=1/"),
            vec![vec!["api", "booking", "purchase"]]
        );
        // Decode then split: `%3B` starts parameters; split then decode:
        // it is part of the segment.
        assert_eq!(
            path_readings("/api/booking/purchase%3Bx"),
            vec![
                vec!["api", "booking", "purchase"],
                vec!["api", "booking", "purchase;x"]
            ]
        );
        // A `;` before an encoded slash hides it from one order only.
        assert_eq!(
            path_readings("/api;x%2Fy/booking/purchase"),
            vec![
                vec!["api", "y", "booking", "purchase"],
                vec!["api", "booking", "purchase"]
            ]
        );
        assert_eq!(
            path_readings("/api/booking/%2570urchase"),
            vec![
                vec!["api", "booking", "%70urchase"],
                vec!["api", "booking", "purchase"]
            ]
        );
    }

    #[test]
    fn canonical_paths_for_prefixes() {
        for (raw, canonical, route) in [
            ("/", "/", "/"),
            ("", "/", "/"),
            ("//flights//search/", "/flights/search", "/flights/search"),
            ("/flights;jsessionid=1/x", "/flights/x", "/flights/x"),
            ("/%66lights", "/flights", "/flights"),
            ("/flights%3Bx", "/flights%3Bx", "/flights%3Bx"),
            ("/flights%3Fx", "/flights%3Fx", "/flights%3Fx"),
            ("/flights%2520", "/flights%2520", "/flights%2520"),
            ("/flights%20x", "/flights%20x", "/flights%20x"),
            ("/flights.json", "/flights.json", "/flights"),
            ("/flights.JSON", "/flights.JSON", "/flights.JSON"),
            ("/flights.exe", "/flights.exe", "/flights.exe"),
            ("/a.b.xml?q", "/a.b.xml", "/a.b"),
            ("/.json", "/.json", "/.json"),
            ("/Flights", "/Flights", "/Flights"),
        ] {
            let c = canonical_path(raw);
            assert_eq!(c, canonical, "{raw}");
            assert_eq!(without_format_suffix(&c), route, "{raw}");
        }
    }
}
