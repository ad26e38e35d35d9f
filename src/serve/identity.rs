//! Users named by a trusted reverse proxy (`openclaw serve --trusted-proxy
//! CIDR --identity-header NAME`): when the TCP peer is inside a listed
//! network, the header names the user acting inside the tenant; from any
//! other peer the header is ignored. The tenant is always the bearer
//! token's: the proxy vouches for who the person is, the token for which
//! tenant the request may touch, so a proxy (or a spoofed peer address)
//! alone never reaches a tenant.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The longest user name taken (the session label's limit).
pub const MAX_USER_LEN: usize = 128;

/// The operator's setting; no networks: no header is ever read.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    pub networks: Vec<IpNet>,
    /// Lower case; leaked once at start so errors can name it as a field.
    pub header: &'static str,
}

/// What the request says about its user, put into the request's
/// extensions by the listener (which knows the peer) for the routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyUser {
    /// Not from a trusted proxy, or no header: the tenant acts.
    None,
    /// From a trusted proxy, a valid name.
    User(String),
    /// From a trusted proxy, a header that is not a valid name (400 naming
    /// the header, after the token is checked).
    Invalid { header: &'static str, why: String },
}

impl TrustedProxies {
    /// `--identity-header` without `--trusted-proxy` (or the reverse) is a
    /// configuration error; the header name must be a valid HTTP name.
    pub fn new(networks: Vec<IpNet>, header: Option<String>) -> Result<Option<Self>, String> {
        match (networks.is_empty(), header) {
            (true, None) => Ok(None),
            (false, None) => Err("--trusted-proxy needs --identity-header NAME".into()),
            (true, Some(_)) => {
                Err("--identity-header needs at least one --trusted-proxy CIDR".into())
            }
            (false, Some(name)) => {
                let name = name.to_ascii_lowercase();
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name == "authorization"
                {
                    return Err(format!(
                        "--identity-header {name:?} is not a usable header name"
                    ));
                }
                Ok(Some(TrustedProxies {
                    networks,
                    header: Box::leak(name.into_boxed_str()),
                }))
            }
        }
    }

    fn trusts(&self, peer: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        self.networks.iter().any(|net| net.contains(&peer))
    }

    /// The user a request from `peer` names.
    pub fn user_of(&self, peer: SocketAddr, headers: &HeaderMap) -> ProxyUser {
        if !self.trusts(peer.ip()) {
            return ProxyUser::None;
        }
        let mut values = headers.get_all(self.header).iter();
        let Some(value) = values.next() else {
            return ProxyUser::None;
        };
        let invalid = |why: &str| ProxyUser::Invalid {
            header: self.header,
            why: why.to_owned(),
        };
        if values.next().is_some() {
            return invalid("sent more than once");
        }
        match value.to_str().ok().and_then(|v| check_user(v).ok()) {
            Some(name) => ProxyUser::User(name.to_owned()),
            None => invalid(
                "expected 1 to 128 characters of letters, digits and . _ @ + -, not starting \
                 with - or .",
            ),
        }
    }
}

/// A user name as a proxy may give it: 1 to [`MAX_USER_LEN`] ASCII
/// letters, digits and `. _ @ + -`, not starting with `-` or `.` (it
/// becomes a `--user` argument and a label in files, reports and CSV).
pub fn check_user(value: &str) -> Result<&str, ()> {
    let ok = !value.is_empty()
        && value.len() <= MAX_USER_LEN
        && !value.starts_with(['-', '.'])
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b));
    if ok {
        Ok(value)
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter().map(|n| n.parse().expect("cidr")).collect(),
            Some("X-Remote-User".into()),
        )
        .expect("config")
        .expect("some")
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-remote-user", v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn the_header_is_read_only_from_a_trusted_peer() {
        let local: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().expect("addr");
        let trusted = proxies(&["127.0.0.1/32"]);
        assert_eq!(
            trusted.user_of(local, &headers(&["alice@example.com"])),
            ProxyUser::User("alice@example.com".into())
        );
        assert_eq!(
            trusted.user_of(mapped, &headers(&["alice"])),
            ProxyUser::User("alice".into())
        );
        assert_eq!(trusted.user_of(local, &headers(&[])), ProxyUser::None);
        let other = proxies(&["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(other.user_of(local, &headers(&["alice"])), ProxyUser::None);
        assert_eq!(
            other.user_of(local, &headers(&["../../x"])),
            ProxyUser::None
        );
    }

    #[test]
    fn header_values_are_validated() {
        let local: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let trusted = proxies(&["127.0.0.0/8"]);
        let long = "a".repeat(MAX_USER_LEN + 1);
        for bad in [
            "",
            "-rm",
            ".hidden",
            "a b",
            "a/b",
            "a;b",
            "\u{7f}",
            long.as_str(),
        ] {
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(bad) {
                h.insert("x-remote-user", v);
            } else {
                continue;
            }
            assert!(
                matches!(
                    trusted.user_of(local, &h),
                    ProxyUser::Invalid {
                        header: "x-remote-user",
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            trusted.user_of(local, &headers(&["alice", "bob"])),
            ProxyUser::Invalid { .. }
        ));
        assert_eq!(
            check_user(&"a".repeat(MAX_USER_LEN)).map(str::len),
            Ok(MAX_USER_LEN)
        );
    }

    #[test]
    fn the_two_flags_go_together() {
        assert!(TrustedProxies::new(vec![], None).expect("ok").is_none());
        assert!(TrustedProxies::new(vec!["127.0.0.1/32".parse().expect("cidr")], None).is_err());
        assert!(TrustedProxies::new(vec![], Some("x-user".into())).is_err());
        assert!(TrustedProxies::new(
            vec!["127.0.0.1/32".parse().expect("cidr")],
            Some("Authorization".into())
        )
        .is_err());
    }
}
