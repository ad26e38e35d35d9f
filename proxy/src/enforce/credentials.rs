//! Secrets and their per-session placeholders: loading the host's secrets
//! file, finding placeholders (whole or in pieces) in a request, swapping
//! them for the real values only where the token grants the credential,
//! injecting headers, and masking secrets a response echoes back.
//! Format and detection rules: `docs/credentials.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use rand::Rng;
use serde::Deserialize;

use super::catalog::normalize_host;

/// Every placeholder starts with this.
pub const PLACEHOLDER_PREFIX: &str = "ocs_";
/// Length of a placeholder's random part (lowercase letters and digits: ~124 bits).
pub const RANDOM_LEN: usize = 24;
/// A run of this many characters of a placeholder's random part, found
/// anywhere, counts as that placeholder (catches one split into pieces).
pub const FRAGMENT_LEN: usize = 8;

const RANDOM_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Why the secrets file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("secrets file {path} is readable by others (mode {mode:o}); run chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
    #[error("secrets file {path} is owned by uid {owner}, not by this user (uid {me})")]
    Owner { path: String, owner: u32, me: u32 },
    #[error("secrets file is not valid TOML: {0}")]
    Parse(String),
    #[error("secret {name:?}: {problem}")]
    Secret { name: String, problem: String },
}

/// A secret value. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
struct SecretValue(String);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    #[serde(default)]
    secret: Vec<SecretEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretEntry {
    name: String,
    value: SecretValue,
    header: Option<String>,
    format: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretValue)
    }
}

/// A header the proxy adds for granted hosts (e.g. an API key), with no
/// placeholder involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    pub header: HeaderName,
    /// Contains `{}` exactly once, where the secret goes.
    pub format: String,
}

/// One secret from the secrets file.
#[derive(Debug, Clone)]
pub struct Secret {
    name: String,
    value: SecretValue,
    injection: Option<Injection>,
    /// Extra narrowing from the secrets file: when non-empty, the secret is
    /// used only at these hosts *and* where the token grants it.
    hosts: Vec<String>,
}

impl Secret {
    /// Builds a secret (for tests and programmatic use).
    pub fn new(name: &str, value: &str) -> Result<Self, SecretsError> {
        Self::from_entry(SecretEntry {
            name: name.to_owned(),
            value: SecretValue(value.to_owned()),
            header: None,
            format: None,
            hosts: Vec::new(),
        })
    }

    /// Adds a header injection: `format` with `{}` replaced by the secret.
    pub fn with_injection(mut self, header: &str, format: &str) -> Result<Self, SecretsError> {
        self.injection = Some(injection(&self.name, header, format, &self.value)?);
        Ok(self)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn injection(&self) -> Option<&Injection> {
        self.injection.as_ref()
    }

    fn from_entry(e: SecretEntry) -> Result<Self, SecretsError> {
        let bad = |problem: &str| SecretsError::Secret {
            name: e.name.clone(),
            problem: problem.to_owned(),
        };
        if e.name.is_empty()
            || !e
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(bad("names are lowercase letters, digits and _"));
        }
        if e.value.0.is_empty() {
            return Err(bad("empty value"));
        }
        if e.value.0.contains(PLACEHOLDER_PREFIX) {
            return Err(bad("a value may not contain the placeholder prefix"));
        }
        let injection = match (&e.header, &e.format) {
            (None, None) => None,
            (Some(h), f) => Some(injection(
                &e.name,
                h,
                f.as_deref().unwrap_or("{}"),
                &e.value,
            )?),
            (None, Some(_)) => return Err(bad("`format` needs `header`")),
        };
        Ok(Secret {
            hosts: e.hosts.iter().map(|h| normalize_host(h)).collect(),
            name: e.name,
            value: e.value,
            injection,
        })
    }

    fn host_ok(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == host)
    }
}

fn injection(
    name: &str,
    header: &str,
    format: &str,
    value: &SecretValue,
) -> Result<Injection, SecretsError> {
    let bad = |problem: &str| SecretsError::Secret {
        name: name.to_owned(),
        problem: problem.to_owned(),
    };
    let header = HeaderName::from_bytes(header.as_bytes()).map_err(|_| bad("bad header name"))?;
    if format.matches("{}").count() != 1 {
        return Err(bad("`format` must contain {} exactly once"));
    }
    HeaderValue::from_str(&format.replace("{}", &value.0))
        .map_err(|_| bad("the value cannot go in a header"))?;
    Ok(Injection {
        header,
        format: format.to_owned(),
    })
}

/// The host's secrets, loaded from the secrets file.
#[derive(Debug, Clone, Default)]
pub struct SecretStore {
    secrets: Vec<Secret>,
}

impl SecretStore {
    /// Reads a secrets file, refusing one that group or others can read or
    /// that another user owns.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| SecretsError::Read {
            path: shown.clone(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::Permissions { path: shown, mode });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(SecretsError::Owner {
                path: shown,
                owner: meta.uid(),
                me,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
            path: shown,
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses secrets from TOML text (no file checks).
    pub fn from_toml(text: &str) -> Result<Self, SecretsError> {
        // The TOML error's message may quote the offending line, which may
        // hold a secret: keep only its position.
        let file: SecretsFile = toml::from_str(text).map_err(|e| {
            SecretsError::Parse(match e.span() {
                Some(span) => format!("syntax error at byte {}", span.start),
                None => "syntax error".to_owned(),
            })
        })?;
        let secrets = file
            .secret
            .into_iter()
            .map(Secret::from_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(secrets)
    }

    /// A store from secrets built in code.
    pub fn new(secrets: Vec<Secret>) -> Result<Self, SecretsError> {
        let mut seen = std::collections::BTreeSet::new();
        for s in &secrets {
            if !seen.insert(s.name.clone()) {
                return Err(SecretsError::Secret {
                    name: s.name.clone(),
                    problem: "defined twice".into(),
                });
            }
        }
        Ok(SecretStore { secrets })
    }

    pub fn names(&self) -> Vec<&str> {
        self.secrets.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

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

/// Why a granted substitution could not be made (the request is blocked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstituteError {
    #[error("credential {0} cannot be placed in a header (invalid header bytes)")]
    BadHeader(String),
    #[error("credential {0} is in a body over the inspection cap, where it cannot be substituted")]
    BodyNotBuffered(String),
    #[error("credential {0}: the request URL would not be valid after substitution")]
    BadUri(String),
}

/// What [`SessionCredentials::substitute`] did, by credential name (never values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Substituted {
    /// Placeholders replaced by their secret.
    pub replaced: Vec<String>,
    /// Headers added without a placeholder.
    pub injected: Vec<String>,
    /// The new body, when a placeholder in it was replaced.
    pub body: Option<Bytes>,
}

/// One session's view of the secrets: each secret with a fresh random
/// placeholder, and the matchers built from them.
pub struct SessionCredentials {
    secrets: Vec<Secret>,
    placeholders: Vec<String>,
    /// Case-insensitive finder over whole placeholders, markers and fragments.
    finder: Option<AhoCorasick>,
    hits: Vec<Hit>,
    /// Exact finder over whole placeholders (what gets substituted).
    exact: Option<AhoCorasick>,
    /// Finder over secret values as they may be echoed (raw, JSON-escaped,
    /// percent-encoded), each mapped to its secret's index.
    echo: Option<AhoCorasick>,
    echo_secret: Vec<usize>,
    longest_echo: usize,
}

impl fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCredentials")
            .field(
                "names",
                &self.secrets.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn random_part() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..RANDOM_LEN)
        .map(|_| char::from(RANDOM_ALPHABET[rng.gen_range(0..RANDOM_ALPHABET.len())]))
        .collect()
}

fn build(patterns: &[String], case_insensitive: bool) -> Option<AhoCorasick> {
    if patterns.is_empty() {
        return None;
    }
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(case_insensitive)
        .match_kind(MatchKind::LeftmostLongest)
        .build(patterns)
        .ok()
}

/// The value as it would look JSON-escaped inside a string.
fn json_escaped(v: &str) -> String {
    let quoted = serde_json::to_string(v).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_owned()
}

fn percent_encoded(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Percent-encodes for a URL path or query: everything but RFC 3986 unreserved.
fn uri_encoded(v: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(v, SET).to_string()
}

impl SessionCredentials {
    /// Mints a fresh placeholder for every secret.
    pub fn new(store: &SecretStore) -> Self {
        let secrets = store.secrets.clone();
        let randoms: Vec<String> = secrets.iter().map(|_| random_part()).collect();
        let placeholders: Vec<String> = secrets
            .iter()
            .zip(&randoms)
            .map(|(s, r)| format!("{PLACEHOLDER_PREFIX}{}_{r}", s.name))
            .collect();
        let mut patterns = Vec::new();
        let mut hits = Vec::new();
        for (i, s) in secrets.iter().enumerate() {
            patterns.push(placeholders[i].clone());
            hits.push(Hit::Whole(i));
            patterns.push(format!("{PLACEHOLDER_PREFIX}{}_", s.name));
            hits.push(Hit::Marker(i));
            let r = randoms[i].as_bytes();
            for w in r.windows(FRAGMENT_LEN) {
                patterns.push(String::from_utf8_lossy(w).into_owned());
                hits.push(Hit::Fragment(i));
            }
        }
        let mut echo_patterns = Vec::new();
        let mut echo_secret = Vec::new();
        for (i, s) in secrets.iter().enumerate() {
            let mut forms = vec![
                s.value.0.clone(),
                json_escaped(&s.value.0),
                percent_encoded(&s.value.0),
                uri_encoded(&s.value.0),
            ];
            forms.sort();
            forms.dedup();
            for f in forms {
                echo_patterns.push(f);
                echo_secret.push(i);
            }
        }
        SessionCredentials {
            finder: build(&patterns, true),
            hits,
            exact: build(&placeholders, false),
            longest_echo: echo_patterns.iter().map(String::len).max().unwrap_or(0),
            echo: build(&echo_patterns, false),
            echo_secret,
            secrets,
            placeholders,
        }
    }

    /// Credential name → placeholder, for the sandbox's environment.
    pub fn placeholders(&self) -> BTreeMap<String, String> {
        self.secrets
            .iter()
            .zip(&self.placeholders)
            .map(|(s, p)| (s.name.clone(), p.clone()))
            .collect()
    }

    /// The credential names, in secrets-file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(|s| s.name.as_str())
    }

    /// Whether the secrets file allows `name` at `host` (the token must
    /// allow it too: the caller asks the capability).
    pub fn file_allows(&self, name: &str, host: &str) -> bool {
        let host = normalize_host(host);
        self.secrets
            .iter()
            .any(|s| s.name == name && s.host_ok(&host))
    }

    /// Names of secrets that have a header injection.
    pub fn injectable(&self) -> impl Iterator<Item = &str> {
        self.secrets
            .iter()
            .filter(|s| s.injection.is_some())
            .map(|s| s.name.as_str())
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
            out.note(&self.secrets[hit.secret()].name, sighting, place);
        }
    }

    /// Looks for placeholders anywhere in a request: the URL (raw and
    /// percent-decoded, twice), each header value and all header values run
    /// together (a placeholder split over adjacent headers), and the body
    /// bytes given (raw and percent-decoded). Matching ignores ASCII case.
    pub fn scan(&self, path_and_query: &str, headers: &HeaderMap, body: &[u8]) -> Findings {
        let mut out = Findings::default();
        if self.finder.is_none() {
            return out;
        }
        for form in decodings(path_and_query.as_bytes()) {
            self.scan_into(&form, Place::Url, &mut out);
        }
        let mut joined = Vec::new();
        for (name, value) in headers {
            let mut one = name.as_str().as_bytes().to_vec();
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

    /// Replaces every exact placeholder of a credential in `granted` with its
    /// secret (encoded for where it sits: percent-encoding in the URL and
    /// form bodies, JSON escaping in JSON bodies, raw in headers and other
    /// bodies), and adds the injection headers of granted secrets. `body` is
    /// the buffered body and `complete` whether it is all of it.
    pub fn substitute(
        &self,
        granted: &dyn Fn(&str) -> bool,
        uri: &mut http::Uri,
        headers: &mut HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Result<Substituted, SubstituteError> {
        let mut out = Substituted::default();
        let Some(exact) = &self.exact else {
            return Ok(out);
        };
        let use_ok = |i: usize| granted(&self.secrets[i].name);
        let note = |list: &mut Vec<String>, i: usize| {
            let n = self.secrets[i].name.clone();
            if !list.contains(&n) {
                list.push(n);
            }
        };

        // URL.
        let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        if let Some(new) = self.replace_with(exact, &pq, use_ok, uri_encoded, &mut |i| {
            note(&mut out.replaced, i)
        }) {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(new.parse().map_err(|_| {
                SubstituteError::BadUri(out.replaced.last().cloned().unwrap_or_default())
            })?);
            *uri = http::Uri::from_parts(parts).map_err(|_| {
                SubstituteError::BadUri(out.replaced.last().cloned().unwrap_or_default())
            })?;
        }

        // Headers.
        let names: Vec<HeaderName> = headers.keys().cloned().collect();
        for name in names {
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            let mut changed = false;
            let mut new_values = Vec::with_capacity(values.len());
            for v in values {
                let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
                let mut used = Vec::new();
                match self.replace_with(exact, &text, use_ok, |s| s.to_owned(), &mut |i| {
                    used.push(i)
                }) {
                    Some(new) => {
                        let hv = HeaderValue::from_str(&new).map_err(|_| {
                            SubstituteError::BadHeader(
                                used.first()
                                    .map(|&i| self.secrets[i].name.clone())
                                    .unwrap_or_default(),
                            )
                        })?;
                        for i in used {
                            note(&mut out.replaced, i);
                        }
                        new_values.push(hv);
                        changed = true;
                    }
                    None => new_values.push(v),
                }
            }
            if changed {
                headers.remove(&name);
                for v in new_values {
                    headers.append(name.clone(), v);
                }
            }
        }

        // Body.
        if !body.is_empty() {
            let content_type = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let encode: fn(&str) -> String = if content_type.contains("json") {
                json_escaped
            } else if content_type.starts_with("application/x-www-form-urlencoded") {
                percent_encoded
            } else {
                |s: &str| s.to_owned()
            };
            let mut used = Vec::new();
            let text = String::from_utf8_lossy(body);
            let found_any = exact
                .find_iter(body)
                .any(|m| use_ok(m.pattern().as_usize()));
            if found_any {
                if !complete || std::str::from_utf8(body).is_err() {
                    let i = exact
                        .find_iter(body)
                        .map(|m| m.pattern().as_usize())
                        .find(|&i| use_ok(i))
                        .unwrap_or(0);
                    return Err(SubstituteError::BodyNotBuffered(
                        self.secrets[i].name.clone(),
                    ));
                }
                if let Some(new) =
                    self.replace_with(exact, &text, use_ok, encode, &mut |i| used.push(i))
                {
                    for i in used {
                        note(&mut out.replaced, i);
                    }
                    out.body = Some(Bytes::from(new));
                }
            }
        }

        // Header injection (overrides whatever the sandbox sent in that header).
        for (i, s) in self.secrets.iter().enumerate() {
            let Some(inj) = &s.injection else { continue };
            if !use_ok(i) {
                continue;
            }
            let value = HeaderValue::from_str(&inj.format.replace("{}", &s.value.0))
                .map_err(|_| SubstituteError::BadHeader(s.name.clone()))?;
            headers.insert(inj.header.clone(), value);
            note(&mut out.injected, i);
        }
        Ok(out)
    }

    /// `text` with each exact placeholder of an allowed secret replaced by
    /// `encode(secret)`; `None` when nothing was replaced.
    fn replace_with(
        &self,
        exact: &AhoCorasick,
        text: &str,
        allowed: impl Fn(usize) -> bool,
        encode: impl Fn(&str) -> String,
        used: &mut dyn FnMut(usize),
    ) -> Option<String> {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        let mut any = false;
        for m in exact.find_iter(text) {
            let i = m.pattern().as_usize();
            if !allowed(i) {
                continue;
            }
            out.push_str(&text[last..m.start()]);
            out.push_str(&encode(&self.secrets[i].value.0));
            last = m.end();
            any = true;
            used(i);
        }
        if !any {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }

    /// Replaces echoed secrets in response header values by their placeholders.
    pub fn mask_headers(&self, headers: &mut HeaderMap) {
        let Some(echo) = &self.echo else { return };
        let names: Vec<HeaderName> = headers.keys().cloned().collect();
        for name in names {
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            if !values.iter().any(|v| echo.is_match(v.as_bytes())) {
                continue;
            }
            headers.remove(&name);
            for v in values {
                let masked = self.mask_all(v.as_bytes());
                // A placeholder is always valid header text.
                let hv = HeaderValue::from_bytes(&masked)
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                headers.append(name.clone(), hv);
            }
        }
    }

    /// `text` with every secret (raw or encoded) replaced by its placeholder.
    pub fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask_all(text.as_bytes())).into_owned()
    }

    fn mask_all(&self, bytes: &[u8]) -> Vec<u8> {
        let Some(echo) = &self.echo else {
            return bytes.to_vec();
        };
        let mut out = Vec::with_capacity(bytes.len());
        let mut last = 0;
        for m in echo.find_iter(bytes) {
            out.extend_from_slice(&bytes[last..m.start()]);
            out.extend_from_slice(
                self.placeholders[self.echo_secret[m.pattern().as_usize()]].as_bytes(),
            );
            last = m.end();
        }
        out.extend_from_slice(&bytes[last..]);
        out
    }

    /// A streaming filter that replaces echoed secrets in a response body.
    /// `None` when there are no secrets.
    pub fn echo_filter(self: &std::sync::Arc<Self>) -> Option<EchoFilter> {
        self.echo.as_ref()?;
        Some(EchoFilter {
            creds: self.clone(),
            carry: BytesMut::new(),
        })
    }
}

/// Percent-decoded once and twice, besides the raw bytes (deduplicated).
fn decodings(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![raw.to_vec()];
    if raw.contains(&b'%') || raw.contains(&b'+') {
        let plus: Vec<u8> = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let once: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
        let twice: Vec<u8> = percent_encoding::percent_decode(&once).collect();
        for d in [once, twice] {
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

/// Overlapping search that works with leftmost-longest automata, which
/// `aho-corasick` only allows non-overlapping: restart one byte after each
/// match's start.
trait OverlappingHack {
    fn find_overlapping_iter_hack(&self, hay: &[u8]) -> Vec<usize>;
}

impl OverlappingHack for AhoCorasick {
    fn find_overlapping_iter_hack(&self, hay: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < hay.len() {
            let input = aho_corasick::Input::new(hay).span(at..hay.len());
            match self.find(input) {
                Some(m) => {
                    out.push(m.pattern().as_usize());
                    at = m.start() + 1;
                }
                None => break,
            }
        }
        out
    }
}

/// Replaces a secret echoed in a response body by its placeholder, across
/// chunk boundaries: it holds back a tail one byte shorter than the longest
/// pattern and releases it with the next chunk or at the end.
pub struct EchoFilter {
    creds: std::sync::Arc<SessionCredentials>,
    carry: BytesMut,
}

impl EchoFilter {
    /// Filters one chunk; returns what can be sent now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let creds = &self.creds;
        let Some(echo) = &creds.echo else {
            return Bytes::copy_from_slice(chunk);
        };
        self.carry.extend_from_slice(chunk);
        let buf = std::mem::take(&mut self.carry);
        let keep = creds.longest_echo.saturating_sub(1);
        let safe_end = buf.len().saturating_sub(keep);
        let mut out = BytesMut::with_capacity(buf.len());
        let mut pos = 0;
        for m in echo.find_iter(&buf[..]) {
            if m.start() >= safe_end {
                break;
            }
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(
                creds.placeholders[creds.echo_secret[m.pattern().as_usize()]].as_bytes(),
            );
            pos = m.end();
        }
        let cut = pos.max(safe_end);
        out.extend_from_slice(&buf[pos..cut]);
        self.carry.extend_from_slice(&buf[cut..]);
        out.freeze()
    }

    /// Releases the held-back tail.
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.carry);
        Bytes::from(self.creds.mask_all(&rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> SecretStore {
        SecretStore::from_toml(
            r#"
            [[secret]]
            name = "united_login"
            value = "hunter2 \"quoted\" &=+"

            [[secret]]
            name = "llm_key"
            value = "sk-live-123"
            header = "Authorization"
            format = "Bearer {}"
            hosts = ["api.openai.com"]
            "#,
        )
        .expect("parses")
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let s = store();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("sk-live"),
            "{dbg}"
        );
        let creds = SessionCredentials::new(&s);
        assert!(!format!("{creds:?}").contains("hunter2"));
        // A syntax error in a line holding a value does not quote it.
        let err = SecretStore::from_toml("[[secret]]\nname = \"a\"\nvalue = \"topsecret\nx")
            .expect_err("bad");
        assert!(!err.to_string().contains("topsecret"), "{err}");
    }

    #[test]
    fn bad_secret_entries_are_refused() {
        for (text, why) in [
            ("[[secret]]\nname='Bad-Name'\nvalue='x'", "lowercase"),
            ("[[secret]]\nname='a'\nvalue=''", "empty"),
            (
                "[[secret]]\nname='a'\nvalue='x'\nformat='{}'",
                "needs `header`",
            ),
            (
                "[[secret]]\nname='a'\nvalue='x'\nheader='X'\nformat='no slot'",
                "exactly once",
            ),
            (
                "[[secret]]\nname='a'\nvalue=\"x\\ny\"\nheader='X'",
                "cannot go in a header",
            ),
            (
                "[[secret]]\nname='a'\nvalue='x'\n[[secret]]\nname='a'\nvalue='y'",
                "twice",
            ),
        ] {
            let err = SecretStore::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn file_mode_and_owner_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, "[[secret]]\nname='a'\nvalue='v'\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = SecretStore::load(&path).expect_err("0644 refused");
        assert!(
            matches!(err, SecretsError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            SecretStore::load(&path).expect("0600 ok").names(),
            vec!["a"]
        );
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None)
                .expect("chown");
            let err = SecretStore::load(&path).expect_err("other owner refused");
            assert!(
                matches!(err, SecretsError::Owner { owner: 65534, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn placeholders_are_random_per_session_and_well_formed() {
        let s = store();
        let a = SessionCredentials::new(&s).placeholders();
        let b = SessionCredentials::new(&s).placeholders();
        let p = &a["united_login"];
        assert!(p.starts_with("ocs_united_login_"), "{p}");
        assert_eq!(p.len(), "ocs_united_login_".len() + RANDOM_LEN);
        assert_ne!(a["united_login"], b["united_login"]);
    }

    #[test]
    fn scan_finds_whole_split_encoded_and_partial_placeholders() {
        let creds = SessionCredentials::new(&store());
        let p = creds.placeholders()["united_login"].clone();
        let none = HeaderMap::new();
        let found = |f: Findings| f.by_credential.get("united_login").copied();

        assert_eq!(
            found(creds.scan(&format!("/x?q={p}"), &none, b"")),
            Some((Sighting::Whole, Place::Url))
        );
        let enc: String = p.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(
            found(creds.scan(&format!("/x?q={enc}"), &none, b"")),
            Some((Sighting::Whole, Place::Url))
        );
        let double = enc.replace('%', "%25");
        assert_eq!(
            found(creds.scan(&format!("/{double}"), &none, b"")),
            Some((Sighting::Whole, Place::Url))
        );
        assert_eq!(
            found(creds.scan("/", &none, p.to_uppercase().as_bytes())),
            Some((Sighting::Whole, Place::Body))
        );
        // Split across two headers: each header alone holds a piece; run
        // together they hold the whole.
        let (a, b) = p.split_at(p.len() - 10);
        let mut h = HeaderMap::new();
        h.insert("x-a", a.parse().expect("valid"));
        h.insert("x-b", b.parse().expect("valid"));
        assert_eq!(
            found(creds.scan("/", &h, b"")),
            Some((Sighting::Whole, Place::Headers))
        );
        // Only the random part, in pieces of 8 in a body: fragments.
        let random = &p["ocs_united_login_".len()..];
        let body = format!("a={}&b={}", &random[..8], &random[8..16]);
        assert_eq!(
            found(creds.scan("/", &none, body.as_bytes())),
            Some((Sighting::Fragment, Place::Body))
        );
        // Just the marker.
        assert_eq!(
            found(creds.scan("/ocs_united_login_", &none, b"")),
            Some((Sighting::Marker, Place::Url))
        );
        // Nothing here, and the other secret's placeholder is told apart.
        assert!(creds.scan("/docs_site/x", &none, b"ocs_ hello").is_empty());
        let other = creds.placeholders()["llm_key"].clone();
        let f = creds.scan("/", &none, other.as_bytes());
        assert_eq!(f.by_credential.keys().collect::<Vec<_>>(), vec!["llm_key"]);
    }

    #[test]
    fn substitution_encodes_for_each_place_and_only_granted() {
        let creds = SessionCredentials::new(&store());
        let p = creds.placeholders()["united_login"].clone();
        let k = creds.placeholders()["llm_key"].clone();
        let granted = |n: &str| n == "united_login";
        let mut uri: http::Uri = format!("/login?pw={p}&k={k}").parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert("x-pw", format!("pw {p}").parse().expect("valid"));
        headers.insert("content-type", "application/json".parse().expect("valid"));
        let body = format!(r#"{{"password":"{p}"}}"#);
        let out = creds
            .substitute(&granted, &mut uri, &mut headers, body.as_bytes(), true)
            .expect("substitutes");
        assert_eq!(out.replaced, vec!["united_login"]);
        assert!(out.injected.is_empty());
        assert_eq!(
            uri.to_string(),
            format!("/login?pw=hunter2%20%22quoted%22%20%26%3D%2B&k={k}")
        );
        assert_eq!(headers["x-pw"], "pw hunter2 \"quoted\" &=+");
        let new_body = out.body.expect("body replaced");
        let v: serde_json::Value = serde_json::from_slice(&new_body).expect("still JSON");
        assert_eq!(v["password"], "hunter2 \"quoted\" &=+");

        // Form body.
        let mut uri: http::Uri = "/login".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().expect("valid"),
        );
        let body = format!("user=a&pw={p}");
        let out = creds
            .substitute(&granted, &mut uri, &mut headers, body.as_bytes(), true)
            .expect("substitutes");
        let new_body = out.body.expect("replaced");
        let pw: Vec<_> = form_urlencoded::parse(&new_body)
            .filter(|(k, _)| k == "pw")
            .collect();
        assert_eq!(pw[0].1, "hunter2 \"quoted\" &=+");

        // Placeholder in an over-cap body cannot be substituted: an error.
        let err = creds
            .substitute(&granted, &mut uri, &mut headers, body.as_bytes(), false)
            .expect_err("over cap");
        assert_eq!(err, SubstituteError::BodyNotBuffered("united_login".into()));
    }

    #[test]
    fn header_injection_only_when_granted_and_allowed_by_file() {
        let creds = SessionCredentials::new(&store());
        assert!(creds.file_allows("llm_key", "API.openai.com."));
        assert!(!creds.file_allows("llm_key", "evil.example"));
        assert!(creds.file_allows("united_login", "anything.example"));
        let mut uri: http::Uri = "/v1/chat/completions".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer fake".parse().expect("valid"));
        let out = creds
            .substitute(&|n| n == "llm_key", &mut uri, &mut headers, b"", true)
            .expect("ok");
        assert_eq!(out.injected, vec!["llm_key"]);
        assert_eq!(headers["authorization"], "Bearer sk-live-123");
        let mut headers = HeaderMap::new();
        let out = creds
            .substitute(&|_| false, &mut uri, &mut headers, b"", true)
            .expect("ok");
        assert!(out.injected.is_empty() && headers.is_empty());
    }

    #[test]
    fn echoed_secrets_are_masked_across_chunk_boundaries() {
        let creds = Arc::new(SessionCredentials::new(&store()));
        let p = creds.placeholders()["llm_key"].clone();
        let body = b"{\"echo\":\"sk-live-123\",\"again\":\"sk-live-123\"}";
        for split in 0..body.len() {
            let mut f = creds.echo_filter().expect("filter");
            let mut out = Vec::new();
            out.extend_from_slice(&f.push(&body[..split]));
            out.extend_from_slice(&f.push(&body[split..]));
            out.extend_from_slice(&f.finish());
            let text = String::from_utf8(out).expect("utf8");
            assert_eq!(
                text,
                format!("{{\"echo\":\"{p}\",\"again\":\"{p}\"}}"),
                "split {split}"
            );
        }
        // JSON-escaped echo of the password is masked too.
        let mut f = creds.echo_filter().expect("filter");
        let mut out = f.push(br#"{"pw":"hunter2 \"quoted\" &=+"}"#).to_vec();
        out.extend_from_slice(&f.finish());
        assert!(!String::from_utf8_lossy(&out).contains("hunter2"));
        let mut h = HeaderMap::new();
        h.insert(
            "set-cookie",
            "t=sk-live-123; Path=/".parse().expect("valid"),
        );
        creds.mask_headers(&mut h);
        assert_eq!(creds.mask_str("/u/sk-live-123?x"), format!("/u/{p}?x"));
        assert_eq!(h["set-cookie"], format!("t={p}; Path=/").as_str());
    }
}
