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
/// any rest (including nothing), or a leading `**` for any prefix
/// (including nothing: an API a gateway mounts under a path of its own).
/// Literals are folded (`names.rs`): servers such as ASP.NET route without
/// case, and a rule errs towards matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PathPattern {
    segments: Vec<String>,
    /// A final `**`.
    rest: bool,
    /// A leading `**`: the pattern's segments are the request's last ones.
    prefix: bool,
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
        let prefix = segments.first().is_some_and(|f| f == "**");
        if prefix {
            segments.remove(0);
            if rest {
                return Err(format!("path {s:?}: ** at one end only"));
            }
        }
        if segments.iter().any(|seg| seg == "**") {
            return Err(format!(
                "path {s:?}: ** only as the first or the last segment"
            ));
        }
        Ok(PathPattern {
            segments,
            rest,
            prefix,
        })
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
            || (!self.rest && !self.prefix && segments.len() != self.segments.len())
        {
            return false;
        }
        // With a leading `**`, the request's last segments are compared.
        let skip = if self.prefix {
            segments.len() - self.segments.len()
        } else {
            0
        };
        let last = segments.len() - 1;
        self.segments
            .iter()
            .zip(&segments[skip..])
            .enumerate()
            .all(|(i, (p, s))| {
                p == "*"
                    || p == s
                    || (i + skip == last
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

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern)
            .expect("pattern")
            .matches(&request_readings(path))
    }

    #[test]
    fn a_leading_double_star_matches_any_prefix_and_a_final_one_any_rest() {
        let p = "/**/v1/chat/completions";
        for path in [
            "/v1/chat/completions",
            "/api/v1/chat/completions",
            "/a/b/c/v1/chat/completions",
            "/api/V1/Chat/Completions",
        ] {
            assert!(matches(p, path), "{path}");
        }
        for path in [
            "/v1/chat/completions/x",
            "/v1/chat",
            "/api/v2/chat/completions",
        ] {
            assert!(!matches(p, path), "{path}");
        }
        assert!(matches("/api/**", "/api"));
        assert!(matches("/api/**", "/api/a/b"));
        assert!(!matches("/api/**", "/apix"));
        assert!(matches("/**", "/anything/at/all"));
        assert!(matches("/a/*/c", "/a/b/c"));
        assert!(!matches("/a/*/c", "/a/b/c/d"));
    }

    #[test]
    fn a_double_star_is_only_at_one_end() {
        for bad in ["/**/a/**", "/a/**/b", "/**/**/a"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
