//! Where a rule applies: its host (any, one, or the subdomains of one) and
//! its path pattern, matched against every way a server might route the
//! request's path (`docs/catalog.md`, "Paths").

use capabilities::{path_readings, Host, HostPattern};

use super::names::fold;

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
/// any rest (including nothing). Literals are folded (`names.rs`): servers
/// such as ASP.NET route without case, and a rule errs towards matching.
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
        if s.contains(['%', ';', '\\', '?', '#']) {
            return Err(format!(
                "path {s:?}: write segments plainly (no %, ;, \\, ? or #)"
            ));
        }
        let mut segments: Vec<String> = s
            .split('/')
            .filter(|seg| !seg.is_empty())
            .map(fold)
            .collect();
        if segments.iter().any(|seg| seg == "." || seg == "..") {
            return Err(format!("path {s:?}: no dot segments"));
        }
        let rest = segments.last().is_some_and(|l| l == "**");
        if rest {
            segments.pop();
        }
        if segments.iter().any(|seg| seg == "**") {
            return Err(format!("path {s:?}: ** only as the last segment"));
        }
        Ok(PathPattern { segments, rest })
    }

    /// Whether any reading of the request path (folded segments) falls
    /// under the pattern.
    pub(super) fn matches(&self, readings: &[Vec<String>]) -> bool {
        readings.iter().any(|r| self.matches_one(r))
    }

    /// One reading. The request's last segment may carry a format suffix
    /// (`purchase.json`, `purchase.xml`, ...): frameworks route it to the
    /// endpoint without it.
    fn matches_one(&self, segments: &[String]) -> bool {
        if segments.len() < self.segments.len()
            || (!self.rest && segments.len() != self.segments.len())
        {
            return false;
        }
        let last = segments.len() - 1;
        self.segments
            .iter()
            .zip(segments)
            .enumerate()
            .all(|(i, (p, s))| {
                p == "*"
                    || p == s
                    || (i == last
                        && s.strip_prefix(p.as_str())
                            .is_some_and(|x| x.starts_with('.')))
            })
    }
}

/// The readings of a request path the catalog matches rules against:
/// `capabilities::path_readings` (matrix parameters, empty segments,
/// percent-encoding in every order servers decode it), each segment folded.
pub(super) fn request_readings(target: &str) -> Vec<Vec<String>> {
    path_readings(target)
        .into_iter()
        .map(|r| r.iter().map(|seg| fold(seg)).collect())
        .collect()
}
