//! Where a rule applies: its host (any, one, or the subdomains of one) and
//! its path pattern, matched against a request's path read the way a server
//! might route it.

use capabilities::{Host, HostPattern};

/// A rule's host: `*` for any host, else a [`HostPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RuleHost {
    Any,
    Pattern(HostPattern),
}

impl RuleHost {
    /// Reads a rule's `host` (surrounding spaces are the file's, not the
    /// host's: trimmed).
    pub(super) fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(RuleHost::Any);
        }
        HostPattern::parse(s)
            .map(RuleHost::Pattern)
            .map_err(|_| format!("bad host pattern {s:?}"))
    }

    pub(super) fn matches(&self, host: &Host) -> bool {
        match self {
            RuleHost::Any => true,
            RuleHost::Pattern(p) => p.matches(host),
        }
    }
}

/// A path pattern: literal segments, `*` for one segment, a final `**` for
/// any rest (including nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PathPattern {
    segments: Vec<String>,
    rest: bool,
}

impl PathPattern {
    pub(super) fn parse(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("path {s:?} must start with /"));
        }
        let mut segments: Vec<String> = normalize_path(s);
        let rest = segments.last().is_some_and(|l| l == "**");
        if rest {
            segments.pop();
        }
        if segments.iter().any(|seg| seg == "**") {
            return Err(format!("path {s:?}: ** only as the last segment"));
        }
        Ok(PathPattern { segments, rest })
    }

    pub(super) fn matches(&self, segments: &[String]) -> bool {
        if segments.len() < self.segments.len()
            || (!self.rest && segments.len() != self.segments.len())
        {
            return false;
        }
        self.segments
            .iter()
            .zip(segments)
            .all(|(p, s)| p == "*" || p == s)
    }
}

/// Splits a request path into the segments a server might route on, erring
/// on the side of matching: percent-escapes decoded (`%2F` becomes a
/// separator), `.`/`..` resolved, empty segments and `;params` dropped,
/// lower-cased. A request that *might* reach a rule's endpoint is classified
/// by that rule, since `web` is the permissive class.
pub(super) fn normalize_path(path: &str) -> Vec<String> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    // Decode twice: a double-encoded `%252F` must not hide a separator.
    let once = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let twice = percent_encoding::percent_decode_str(&once).decode_utf8_lossy();
    let mut out: Vec<String> = Vec::new();
    for seg in twice.split(['/', '\\']) {
        let seg = seg.split(';').next().unwrap_or("").trim();
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_lowercase()),
        }
    }
    out
}
