//! Host names: the one reading of a host that every crate compares
//! ([`Host`]), and a grant's wildcard over subdomains ([`HostPattern`]).
//!
//! The rules (also in `docs/capabilities.md`, "Host names"):
//! - the text is taken as given: surrounding spaces are not trimmed (a file
//!   reader trims its own fields first);
//! - ASCII letters are lower-cased and one trailing dot (the DNS root) is
//!   dropped;
//! - what remains is 1 to 253 bytes of labels separated by dots, each label
//!   1 to 63 bytes of `a-z`, `0-9` and `-`.
//!
//! So a dotted IPv4 literal (`192.0.2.1`) is a host, spelled as written; an
//! IPv6 literal, a port, `_`, `*`, spaces and non-ASCII text are not (the
//! sandbox's resolver only ever hands out names, and no grant can name
//! anything else).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest host name (RFC 1035 §2.3.4, without the root dot).
const MAX_HOST: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

/// Why text is not a [`Host`] or a [`HostPattern`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("{0:?} is not a host name")]
    NotAHost(String),
    #[error("{0:?} is not a host name or a `*.` wildcard over one")]
    NotAPattern(String),
}

/// A host name, parsed once (see the module's rules). Invariant: lower
/// case, no trailing dot, no port, only `a-z0-9-` labels. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Host(Arc<str>);

impl Host {
    /// Reads `text` as a host name.
    pub fn parse(text: &str) -> Result<Host, HostError> {
        let bare = text.strip_suffix('.').unwrap_or(text);
        let ok = !bare.is_empty()
            && bare.len() <= MAX_HOST
            && bare.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= MAX_LABEL
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(HostError::NotAHost(text.to_owned()));
        }
        Ok(Host(Arc::from(bare.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Is this host `base` with at least one more label in front
    /// (`a.example.com` under `example.com`; `example.com` itself is not)?
    pub fn is_subdomain_of(&self, base: &Host) -> bool {
        self.0
            .strip_suffix(&*base.0)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
    }
}

impl FromStr for Host {
    type Err = HostError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Host::parse(text)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Host({:?})", &*self.0)
    }
}

/// Where a grant (or a catalog rule) applies: one host, or `*.base` for
/// every subdomain of `base` but not `base` itself. Not a [`Host`]: it is
/// only ever matched against one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(Host),
    Subdomains(Host),
}

impl HostPattern {
    /// Reads `host` or `*.host` (the [`Host`] rules apply to `host`).
    pub fn parse(text: &str) -> Result<HostPattern, HostError> {
        let not = |_| HostError::NotAPattern(text.to_owned());
        match text.strip_prefix("*.") {
            Some(base) => Host::parse(base).map(HostPattern::Subdomains).map_err(not),
            None => Host::parse(text).map(HostPattern::Exact).map_err(not),
        }
    }

    pub fn matches(&self, host: &Host) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomains(base) => host.is_subdomain_of(base),
        }
    }
}

impl FromStr for HostPattern {
    type Err = HostError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        HostPattern::parse(text)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => write!(f, "{h}"),
            HostPattern::Subdomains(base) => write!(f, "*.{base}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn host(s: &str) -> Host {
        Host::parse(s).expect(s)
    }

    #[test]
    fn hosts_are_lower_case_without_the_root_dot() {
        assert_eq!(host("United.COM.").as_str(), "united.com");
        assert_eq!(host("united.com"), host("UNITED.com."));
        assert_eq!(host("192.0.2.1").as_str(), "192.0.2.1");
        assert_eq!(host("a-b.x").to_string(), "a-b.x");
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(host(&longest).as_str().len(), 253);
    }

    /// Everything the three former readings disagreed on, read one way
    /// (fail closed): no trimming, no port, no IPv6 literal, no `_`, no
    /// empty label (so only ONE trailing dot), nothing but ASCII.
    #[test]
    fn anything_else_is_not_a_host() {
        for bad in [
            "",
            ".",
            " united.com",
            "united.com ",
            "united.com:443",
            "[::1]",
            "::1",
            "[::1]:443",
            "foo_bar.example",
            "*.example.com",
            "*",
            "a..com",
            "united.com..",
            ".united.com",
            "bücher.example",
            "user@united.com",
            "united.com/path",
            &"a".repeat(64),
            &format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(62)),
        ] {
            assert_eq!(
                Host::parse(bad),
                Err(HostError::NotAHost(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn patterns_match_exactly_or_strict_subdomains() {
        let exact = HostPattern::parse("United.com.").expect("exact");
        assert_eq!(exact.to_string(), "united.com");
        assert!(exact.matches(&host("united.com")));
        assert!(!exact.matches(&host("www.united.com")));
        let sub = HostPattern::parse("*.Example.com").expect("wildcard");
        assert_eq!(sub.to_string(), "*.example.com");
        for h in ["a.example.com", "a.b.example.com"] {
            assert!(sub.matches(&host(h)), "{h}");
        }
        for h in ["example.com", "evilexample.com", "example.com.evil"] {
            assert!(!sub.matches(&host(h)), "{h}");
        }
        for bad in ["*", "*.", "*united.com", "a.*.com", "*.*.com", "*.a_b.com"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// Parsing is idempotent: a host's text reads back as the same host.
        #[test]
        fn a_host_reads_back_as_itself(text in "[a-zA-Z0-9.-]{1,40}\\.?") {
            if let Ok(h) = Host::parse(&text) {
                prop_assert_eq!(Host::parse(h.as_str()), Ok(h.clone()));
                prop_assert!(!h.as_str().ends_with('.'));
                prop_assert_eq!(h.as_str(), h.as_str().to_ascii_lowercase());
            }
        }
    }
}
