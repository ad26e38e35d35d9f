//! Placeholders: each credential's per-session stand-in (`ocs_<name>_<random>`),
//! minted fresh for every session, and the scan that finds them in a request
//! whole, by their `ocs_<name>_` start, or in pieces of their random part,
//! raw or percent-encoded, in any letter case.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use aho_corasick::AhoCorasick;
use http::HeaderMap;
use rand::Rng;

use super::finder::{build, OverlappingHack};

/// Every placeholder starts with this.
pub const PLACEHOLDER_PREFIX: &str = "ocs_";
/// Length of a placeholder's random part (lowercase letters and digits: ~124 bits).
pub const RANDOM_LEN: usize = 24;
/// A run of this many characters of a placeholder's random part, found
/// anywhere, counts as that placeholder (catches one split into pieces).
pub const FRAGMENT_LEN: usize = 8;

const RANDOM_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// What a found pattern is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    /// The whole placeholder.
    Whole(usize),
    /// `ocs_<name>_`: the start of a placeholder, whatever follows.
    Marker(usize),
    /// A run of [`FRAGMENT_LEN`] characters of its random part.
    Fragment(usize),
}

impl Hit {
    fn secret(self) -> usize {
        match self {
            Hit::Whole(i) | Hit::Marker(i) | Hit::Fragment(i) => i,
        }
    }
}

/// How much of a placeholder was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sighting {
    Fragment,
    Marker,
    Whole,
}

/// Where in the request a placeholder was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    Url,
    Headers,
    Body,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Place::Url => "url",
            Place::Headers => "headers",
            Place::Body => "body",
        })
    }
}

/// Placeholders found in one request, per credential name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Credential name → (strongest sighting, where).
    pub by_credential: BTreeMap<String, (Sighting, Place)>,
}

impl Findings {
    pub fn is_empty(&self) -> bool {
        self.by_credential.is_empty()
    }

    fn note(&mut self, name: &str, sighting: Sighting, place: Place) {
        let e = self
            .by_credential
            .entry(name.to_owned())
            .or_insert((sighting, place));
        if sighting > e.0 {
            *e = (sighting, place);
        }
    }
}

/// One session's placeholders, in secrets-file order, and the finder over
/// them: whole placeholders, their `ocs_<name>_` markers and every
/// [`FRAGMENT_LEN`]-long run of their random parts.
pub(super) struct Placeholders {
    names: Vec<String>,
    placeholders: Vec<String>,
    /// Case-insensitive finder over whole placeholders, markers and fragments.
    finder: Option<AhoCorasick>,
    hits: Vec<Hit>,
}

fn random_part() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..RANDOM_LEN)
        .map(|_| char::from(RANDOM_ALPHABET[rng.gen_range(0..RANDOM_ALPHABET.len())]))
        .collect()
}

impl Placeholders {
    /// Mints a fresh placeholder for each credential name.
    pub(super) fn mint(names: Vec<String>) -> Self {
        let randoms: Vec<String> = names.iter().map(|_| random_part()).collect();
        let placeholders: Vec<String> = names
            .iter()
            .zip(&randoms)
            .map(|(name, r)| format!("{PLACEHOLDER_PREFIX}{name}_{r}"))
            .collect();
        let mut patterns = Vec::new();
        let mut hits = Vec::new();
        for (i, name) in names.iter().enumerate() {
            patterns.push(placeholders[i].clone());
            hits.push(Hit::Whole(i));
            patterns.push(format!("{PLACEHOLDER_PREFIX}{name}_"));
            hits.push(Hit::Marker(i));
            let r = randoms[i].as_bytes();
            for w in r.windows(FRAGMENT_LEN) {
                patterns.push(String::from_utf8_lossy(w).into_owned());
                hits.push(Hit::Fragment(i));
            }
        }
        Placeholders {
            finder: build(&patterns, true),
            hits,
            names,
            placeholders,
        }
    }

    /// The placeholders, in the order of the names they were minted for.
    pub(super) fn all(&self) -> &[String] {
        &self.placeholders
    }

    fn scan_into(&self, hay: &[u8], place: Place, out: &mut Findings) {
        let Some(finder) = &self.finder else { return };
        // Overlapping search: a marker inside a whole placeholder must not
        // hide the whole one, and pieces may overlap.
        for m in finder.find_overlapping_iter_hack(hay) {
            let hit = self.hits[m];
            let sighting = match hit {
                Hit::Whole(_) => Sighting::Whole,
                Hit::Marker(_) => Sighting::Marker,
                Hit::Fragment(_) => Sighting::Fragment,
            };
            out.note(&self.names[hit.secret()], sighting, place);
        }
    }

    /// Looks for placeholders anywhere in a request: the URL (raw and
    /// percent-decoded, twice), each header value and all header values run
    /// together (a placeholder split over adjacent headers), and the body
    /// bytes given (raw and percent-decoded). Matching ignores ASCII case.
    pub(super) fn scan(&self, path_and_query: &str, headers: &HeaderMap, body: &[u8]) -> Findings {
        let mut out = Findings::default();
        if self.finder.is_none() {
            return out;
        }
        for form in decodings(path_and_query.as_bytes()) {
            self.scan_into(&form, Place::Url, &mut out);
        }
        let mut joined = Vec::new();
        let mut one = Vec::new();
        for (name, value) in headers {
            one.clear();
            one.extend_from_slice(name.as_str().as_bytes());
            one.push(b':');
            one.extend_from_slice(value.as_bytes());
            for form in decodings(&one) {
                self.scan_into(&form, Place::Headers, &mut out);
            }
            joined.extend_from_slice(value.as_bytes());
        }
        for form in decodings(&joined) {
            self.scan_into(&form, Place::Headers, &mut out);
        }
        for form in decodings(body) {
            self.scan_into(&form, Place::Body, &mut out);
        }
        out
    }
}

/// The credential name of the first placeholder-shaped text in a request
/// (`ocs_<name>_<24 of a-z0-9>`, any ASCII case, where the scan looks) that
/// is none of `own`: one minted for another session (one that ended, or
/// another tenant's). With where it was seen.
pub(super) fn foreign(
    own: &[String],
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<(String, Place)> {
    let mut joined = Vec::new();
    for form in decodings(path_and_query.as_bytes()) {
        if let Some(name) = foreign_in(&form, own) {
            return Some((name, Place::Url));
        }
    }
    for value in headers.values() {
        for form in decodings(value.as_bytes()) {
            if let Some(name) = foreign_in(&form, own) {
                return Some((name, Place::Headers));
            }
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Some(name) = decodings(&joined).find_map(|f| foreign_in(&f, own)) {
        return Some((name, Place::Headers));
    }
    decodings(body)
        .find_map(|f| foreign_in(&f, own))
        .map(|name| (name, Place::Body))
}

fn foreign_in(hay: &[u8], own: &[String]) -> Option<String> {
    let prefix = PLACEHOLDER_PREFIX.as_bytes();
    if !hay
        .windows(prefix.len())
        .any(|w| w.eq_ignore_ascii_case(prefix))
    {
        return None;
    }
    let mut text = hay.to_ascii_lowercase();
    // This session's own placeholders blanked first: a name that itself
    // ends in 24 letters or digits must not make one of them look foreign.
    for p in own {
        let p = p.as_bytes();
        let mut i = 0;
        while i + p.len() <= text.len() {
            if &text[i..i + p.len()] == p {
                text[i..i + p.len()].fill(b' ');
                i += p.len();
            } else {
                i += 1;
            }
        }
    }
    let word = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_';
    let random = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut from = 0;
    while let Some(at) = text[from..].windows(prefix.len()).position(|w| w == prefix) {
        let start = from + at + prefix.len();
        let run: Vec<u8> = text[start..]
            .iter()
            .take_while(|b| word(b))
            .copied()
            .collect();
        // The whole run a placeholder (the usual case): its name is all
        // before the last 24; else the first placeholder-shaped start.
        let n = run.len();
        if n > RANDOM_LEN + 1
            && run[n - RANDOM_LEN - 1] == b'_'
            && run[n - RANDOM_LEN..].iter().all(random)
        {
            return Some(String::from_utf8_lossy(&run[..n - RANDOM_LEN - 1]).into_owned());
        }
        for (i, &b) in run.iter().enumerate() {
            if b == b'_'
                && i > 0
                && run.len() >= i + 1 + RANDOM_LEN
                && run[i + 1..i + 1 + RANDOM_LEN].iter().all(random)
            {
                return Some(String::from_utf8_lossy(&run[..i]).into_owned());
            }
        }
        from = start;
    }
    None
}

/// The raw bytes, then percent-decoded once and twice where that changes
/// them (deduplicated). Borrowed when there is nothing to decode, the
/// common case, so a scan of a plain request copies nothing.
fn decodings(raw: &[u8]) -> impl Iterator<Item = Cow<'_, [u8]>> {
    let mut forms = [Some(Cow::Borrowed(raw)), None, None];
    if raw.contains(&b'%') || raw.contains(&b'+') {
        let plus: Vec<u8> = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let once: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
        let twice: Vec<u8> = percent_encoding::percent_decode(&once).collect();
        if once.as_slice() != raw {
            forms[1] = Some(Cow::Owned(once));
        }
        if twice.as_slice() != raw && forms[1].as_deref() != Some(twice.as_slice()) {
            forms[2] = Some(Cow::Owned(twice));
        }
    }
    forms.into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(raw: &str) -> Vec<(String, bool)> {
        decodings(raw.as_bytes())
            .map(|f| {
                let borrowed = matches!(f, Cow::Borrowed(_));
                (String::from_utf8_lossy(&f).into_owned(), borrowed)
            })
            .collect()
    }

    #[test]
    fn plain_text_is_read_once_and_not_copied() {
        assert_eq!(forms("/api/ocs_x"), [("/api/ocs_x".into(), true)]);
    }

    #[test]
    fn encoded_text_is_read_raw_once_and_twice_decoded_without_repeats() {
        assert_eq!(
            forms("a%252Fb"),
            [
                ("a%252Fb".into(), true),
                ("a%2Fb".into(), false),
                ("a/b".into(), false)
            ]
        );
        // Decoding twice gives nothing new: two forms.
        assert_eq!(
            forms("a+%2F"),
            [("a+%2F".into(), true), ("a /".into(), false)]
        );
        // A `%` that decodes to itself: one form.
        assert_eq!(forms("100%"), [("100%".into(), true)]);
    }
}
