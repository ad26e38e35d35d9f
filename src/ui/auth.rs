//! Who may use the web UI: the holder of the access token printed at start.
//! The token (in the printed URL) is traded once for an HttpOnly,
//! SameSite=Strict cookie; every request needs the cookie, every
//! state-changing request also a CSRF header matching the token embedded in
//! the pages, and the Host header must name this server (no DNS rebinding).

use std::net::SocketAddr;

use http::header::{COOKIE, HOST, ORIGIN};
use http::HeaderMap;
use subtle::ConstantTimeEq;

/// The header carrying the CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-openclaw-csrf";

/// The server's secrets for one run of `openclaw ui`.
pub struct Access {
    token: String,
    csrf: String,
    cookie_name: String,
    /// Host header values a browser uses for this server (loopback only);
    /// `None` when serving remotely on purpose (any Host).
    hosts: Option<Vec<String>>,
}

/// 32 random bytes, hex.
pub(crate) fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

pub(crate) fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The request carries the CSRF header equal to `expected`, and if the
/// browser says where it comes from, it comes from here.
pub(crate) fn csrf_matches(headers: &HeaderMap, expected: &str) -> bool {
    let header_ok = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| ct_eq(v, expected));
    header_ok && same_origin(headers)
}

/// No `Origin`, or one naming the `Host` this request was sent to: a page
/// of another site cannot post here (`null`, from sandboxed frames and
/// some redirects, is refused).
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    match headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            match (host, headers.get(HOST).and_then(|h| h.to_str().ok())) {
                (Some(o), Some(h)) => o == h,
                _ => false,
            }
        }
    }
}

/// Every value of the cookie `name` the request carries (a browser may
/// send two of one name, set for different paths).
pub(crate) fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, value)| value)
}

impl Access {
    pub fn new(addr: SocketAddr, remote: bool) -> Self {
        let port = addr.port();
        let hosts = (!remote).then(|| {
            vec![
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
                addr.to_string(),
            ]
        });
        Access {
            token: random_secret(),
            csrf: random_secret(),
            // Cookies are not per port: name it after the port so two UIs on
            // one machine do not overwrite each other's.
            cookie_name: format!("openclaw_ui_{port}"),
            hosts,
        }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// True when `candidate` (from `?token=`) is the access token.
    pub fn token_matches(&self, candidate: &str) -> bool {
        ct_eq(candidate, &self.token)
    }

    /// The `Set-Cookie` value that trades the token for a session cookie.
    pub fn set_cookie(&self) -> String {
        format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            self.cookie_name, self.token
        )
    }

    /// The request carries our cookie.
    pub fn has_cookie(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == self.cookie_name && ct_eq(value, &self.token))
    }

    /// The Host header names this server (loopback mode), so a page on
    /// another name that resolves to 127.0.0.1 cannot talk to us.
    pub fn host_ok(&self, headers: &HeaderMap) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| hosts.iter().any(|ok| ok.eq_ignore_ascii_case(h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn access() -> Access {
        Access::new("127.0.0.1:7878".parse().expect("addr"), false)
    }

    #[test]
    fn cookie_is_http_only_strict_and_checked() {
        let a = access();
        let set = a.set_cookie();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let mut h = HeaderMap::new();
        assert!(!a.has_cookie(&h));
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("x=1; openclaw_ui_7878={}", a.token())).expect("hv"),
        );
        assert!(a.has_cookie(&h));
        h.insert(COOKIE, HeaderValue::from_static("openclaw_ui_7878=nope"));
        assert!(!a.has_cookie(&h));
        // Another port's cookie does not count.
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("openclaw_ui_7879={}", a.token())).expect("hv"),
        );
        assert!(!a.has_cookie(&h));
        assert_ne!(a.token(), access().token(), "tokens are random");
    }

    #[test]
    fn csrf_needs_the_header_and_a_same_origin() {
        let a = access();
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:7878"));
        assert!(!csrf_matches(&h, a.csrf()));
        h.insert(CSRF_HEADER, HeaderValue::from_str(a.csrf()).expect("hv"));
        assert!(csrf_matches(&h, a.csrf()));
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:7878"));
        assert!(csrf_matches(&h, a.csrf()));
        h.insert(ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!csrf_matches(&h, a.csrf()));
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(!csrf_matches(&h, a.csrf()));
        h.remove(ORIGIN);
        h.insert(CSRF_HEADER, HeaderValue::from_static("wrong"));
        assert!(!csrf_matches(&h, a.csrf()));
    }

    #[test]
    fn only_our_host_names_pass_in_loopback_mode() {
        let a = access();
        let mut h = HeaderMap::new();
        assert!(!a.host_ok(&h));
        for ok in ["127.0.0.1:7878", "localhost:7878", "LOCALHOST:7878"] {
            h.insert(HOST, HeaderValue::from_str(ok).expect("hv"));
            assert!(a.host_ok(&h), "{ok}");
        }
        for bad in ["evil.example:7878", "127.0.0.1:7879", "127.0.0.1"] {
            h.insert(HOST, HeaderValue::from_str(bad).expect("hv"));
            assert!(!a.host_ok(&h), "{bad}");
        }
        let remote = Access::new("0.0.0.0:7878".parse().expect("addr"), true);
        h.insert(HOST, HeaderValue::from_static("ui.internal:7878"));
        assert!(remote.host_ok(&h));
    }
}
